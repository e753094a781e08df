//! The demo's L7 section: a Service that asks for a waypoint. For the section only, node 2 gets
//! the pod `shop/web` (an HTTP app) and the unenrolled pod `shop/waypoint` running marrow's
//! `waypoint` for the Gateway `shop/waypoint`; the state gains the Gateway, the Service `web`
//! labelled `istio.io/use-waypoint: waypoint`, and an L7 AuthorizationPolicy bound to the
//! Gateway that denies `DELETE` on `/api*`. frontend's GET goes through, its DELETE gets the
//! waypoint's 403; the waypoint explains why and counts both. Everything it added is removed
//! at its end, so the sections after it see the cluster as before.

use marrow_tests::metrics::matching;
use marrow_tests::peers::{self, curl};
use marrow_tests::state_file::PodRecord;
use marrow_tests::stop::Stop;
use marrow_tests::waypoint::{ADMIN_PORT, Waypoint, bound_service, gateway_objects};

use super::cluster::{Cluster, add_pod};
use super::report::Report;
use super::scenarios::abbreviate;

/// The Service `web`'s ClusterIP.
const WEB_VIP: &str = "10.96.0.50";
/// The waypoint's own Service's ClusterIP.
const WAYPOINT_VIP: &str = "10.96.0.51";
/// The port the web app listens on.
const WEB_PORT: u16 = 8080;

/// The Gateway, the two Services and their endpoints, and the L7 policy.
fn objects(web_ip: &str, waypoint_ip: &str) -> String {
    let gateway = gateway_objects("shop", "waypoint", WAYPOINT_VIP, &[waypoint_ip.to_owned()]);
    let ports = [("http", 80, WEB_PORT)];
    let web = bound_service(
        ("shop", "web"),
        WEB_VIP,
        "waypoint",
        &ports,
        &[web_ip.to_owned()],
    );
    format!(
        "{gateway}---
{web}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-deletes, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}]
  action: DENY
  rules:
  - to: [{{operation: {{methods: [DELETE], paths: [\"/api*\"]}}}}]
"
    )
}

/// The section (see the module documentation).
///
/// # Errors
/// When set-up fails or a signal interrupts the demo.
pub fn through_a_waypoint(
    cluster: &Cluster,
    stop: &Stop,
    report: &mut Report<'_>,
) -> anyhow::Result<()> {
    report.section("frontend calls the Service web through its waypoint: HTTP-aware policy (L7)");
    if let Some(tool) = peers::missing_tool() {
        report.check(
            false,
            format!("{tool} is not installed (run `cargo xtask setup`)"),
        )?;
        return Ok(());
    }
    let web = add_pod(&cluster.node2, "web", "shop", true, stop)?;
    let waypoint_pod = add_pod(&cluster.node2, "waypoint", "shop", false, stop)?;
    let app = peers::http_echo(&web, WEB_PORT, "web");
    let pods = cluster.state.clone().pod(&web, "web").with_pod(
        PodRecord::of(&waypoint_pod, "waypoint")
            .with_label("gateway.networking.k8s.io/gateway-name", "waypoint")
            .with_label("istio.io/dataplane-mode", "none"),
    );
    let objects = objects(&web.ipv4().to_string(), &waypoint_pod.ipv4().to_string());
    cluster.apply(&pods, &objects, stop)?;
    report.note(
        "(state: Gateway shop/waypoint of class istio-waypoint, Service web labelled \
         istio.io/use-waypoint=waypoint, and AuthorizationPolicy shop/no-deletes: targetRefs the \
         Gateway, DENY DELETE on /api*)",
    );
    let mut waypoint = Waypoint::start(
        &waypoint_pod,
        &cluster.ca,
        &cluster.state_files[1],
        ("shop", "waypoint"),
        &["--log-json"],
    );
    waypoint.wait_ready();
    stop.check()?;

    let url = format!("http://{WEB_VIP}/api");
    report.action(format!("from shop/frontend: curl {url}"));
    let get = curl(&cluster.frontend, &[&url]);
    let served = serde_json::from_str::<serde_json::Value>(&get.body).ok();
    report.check(
        get.status == 200 && served.as_ref().is_some_and(|b| b["server"] == "web"),
        format!(
            "{} from web, through the waypoint (x-forwarded-for: {})",
            get.status,
            served
                .as_ref()
                .and_then(|b| b["headers"]["x-forwarded-for"].as_str())
                .unwrap_or("-")
        ),
    )?;
    report.action(format!("from shop/frontend: curl -X DELETE {url}"));
    let delete = curl(&cluster.frontend, &["-X", "DELETE", &url]);
    report.check(
        delete.status == 403 && delete.body == "RBAC: access denied",
        format!(
            "{} {:?}, answered by the waypoint",
            delete.status, delete.body
        ),
    )?;
    let query = format!("from=shop/frontend&to=shop/web&port={WEB_PORT}&method=DELETE&path=/api");
    report.action(format!(
        "ask the waypoint why: GET http://127.0.0.1:{ADMIN_PORT}/explain?{query}"
    ));
    let explained = waypoint.get(ADMIN_PORT, &format!("/explain?{query}"));
    let answer = explained
        .ok()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .unwrap_or_default();
    report.check(
        answer["decision"] == "deny",
        format!(
            "decision: {}",
            answer["decision"].as_str().unwrap_or("(none)")
        ),
    )?;
    report.note(format!(
        "policy:   {}",
        answer["policy"].as_str().unwrap_or("(none)")
    ));
    report.note(format!(
        "reason:   {}",
        answer["reason"].as_str().unwrap_or("(none)")
    ));

    report.action(
        "GET the waypoint's /metrics: its request counts, as Istio's waypoint reports them",
    );
    let metrics = waypoint.metrics();
    let want = [
        ("reporter", "waypoint"),
        ("destination_service_name", "web"),
    ];
    let samples = matching(&metrics, "istio_requests_total", &want);
    let code = |c: &str| {
        samples
            .iter()
            .any(|s| s.labels.get("response_code").is_some_and(|v| v == c))
    };
    report.check(
        code("200") && code("403"),
        "istio_requests_total has the GET (200) and the denied DELETE (403, response_flags=\"DENY\"):",
    )?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("reporter=\"waypoint\""))
        .take(2)
    {
        report.note(abbreviate(line, &SHOWN));
    }

    // Gone again: the waypoint and the app, the pods (while the proxies run, for their CNI DEL),
    // then the objects.
    drop(waypoint);
    drop(app);
    drop((web, waypoint_pod));
    cluster.apply(&cluster.state, "", stop)
}

/// The labels of an `istio_requests_total` sample a newcomer reads first.
const SHOWN: [&str; 6] = [
    "reporter",
    "source_principal",
    "destination_service",
    "request_protocol",
    "response_code",
    "response_flags",
];

#[cfg(test)]
mod tests {
    use super::SHOWN;
    use crate::demo::scenarios::abbreviate;

    #[test]
    fn the_sample_keeps_the_labels_a_newcomer_reads() {
        let line = "istio_requests_total{reporter=\"waypoint\",source_workload=\"frontend\",\
                    source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\",\
                    destination_service=\"web.shop.svc.cluster.local\",request_protocol=\"http\",\
                    response_code=\"403\",grpc_response_status=\"\",response_flags=\"DENY\"} 1";
        assert_eq!(
            abbreviate(line, &SHOWN),
            "istio_requests_total{reporter=\"waypoint\",\
             source_principal=\"spiffe://cluster.local/ns/shop/sa/frontend\",\
             destination_service=\"web.shop.svc.cluster.local\",request_protocol=\"http\",\
             response_code=\"403\",response_flags=\"DENY\"} 1"
        );
    }
}
