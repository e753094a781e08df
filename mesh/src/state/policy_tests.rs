//! A state holding Istio security objects marrow does not enforce as written (AUDIT, CUSTOM,
//! a field of a newer Istio, dry-run, RequestAuthentication, a malformed policy) still applies
//! whole: its pods and its ordinary policies take effect, read by the file source with the
//! code the API server source uses (`StateUpdate::build_policies`). (That each set-aside object
//! is reported by the metric and `/config_dump` is the node proxy's admin test.)

use std::net::IpAddr;
use std::sync::Arc;

use super::file::poll::{Check, Poller};
use super::tests::{state_file, write_settled};
use super::*;
use crate::identity::{SpiffeId, TrustDomain};
use crate::policy::{ConnectionAttrs, Destination, Verdict, evaluate};

const UNSUPPORTED: &str = include_str!("../../testdata/unsupported-policies.yaml");

fn pod(ns: &str, name: &str, sa: &str, ip: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, uid: uid-{ns}-{name}, labels: {{app: {app}}}}}\n\
         spec: {{nodeName: node-1, serviceAccountName: {sa}}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n---\n"
    )
}

/// Two ambient namespaces; web only admits the service account `client` of its own namespace,
/// named bare, as istiod reads it.
fn base() -> String {
    let mut yaml = String::new();
    for ns in ["shop", "other"] {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n"
        ));
    }
    yaml.push_str(&pod("shop", "web", "web", "10.0.2.2", "web"));
    yaml.push_str(&pod("shop", "client", "client", "10.0.1.2", "client"));
    yaml.push_str(&pod("other", "client", "client", "10.0.3.2", "client"));
    yaml.push_str(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {name: web-from-client, namespace: shop}\n\
         spec:\n  selector: {matchLabels: {app: web}}\n  rules:\n  - from: [{source: {serviceAccounts: [client]}}]\n---\n",
    );
    yaml
}

/// What web's proxy decides for `ns/sa` at `src` connecting to `port`.
fn decide(snap: &Snapshot, ns: &str, sa: &str, src: &str, port: u16) -> crate::policy::Decision {
    let web = snap.workload_by_name("shop", "web").unwrap();
    let view = Destination {
        namespace: &web.namespace,
        name: &web.name,
        labels: &web.labels,
    };
    let conn = ConnectionAttrs {
        source_principal: Some(SpiffeId::new(&TrustDomain::default(), ns, sa).unwrap()),
        source_ip: src.parse::<IpAddr>().unwrap(),
        destination_ip: web.ips[0],
        destination_port: port,
    };
    evaluate(snap.policies(), &view, &conn)
}

#[tokio::test]
async fn unsupported_policies_never_refuse_the_state() {
    let (_dir, path) = state_file(&base());
    let store = Arc::new(StateStore::new());
    let mut poller = Poller::new(
        path.clone(),
        crate::policy::DEFAULT_ROOT_NAMESPACE.to_owned(),
    );
    let Check::Changed(update) = poller.check() else {
        panic!("first read")
    };
    store.apply(*update);

    // One update adds a pod and every object marrow does not enforce as written.
    let late = pod("shop", "late", "late", "10.0.1.9", "late");
    write_settled(&path, &format!("{}{late}{UNSUPPORTED}", base()));
    let update = match poller.check() {
        Check::Changed(update) => update,
        other => panic!("the update must apply, got {other:?}"),
    };
    let snap = store.apply(*update);
    assert_eq!(snap.generation(), 2);
    assert!(
        snap.workload_by_name("shop", "late").is_some(),
        "the pod added with them"
    );

    // The ordinary ALLOW is enforced: the bare name is shop's client, not other's.
    let d = decide(&snap, "shop", "client", "10.0.1.2", 8080);
    assert_eq!(
        (d.verdict, d.policy.map(|p| p.to_string())),
        (Verdict::Allow, Some("shop/web-from-client".to_owned())),
        "{}",
        d.reason
    );
    assert!(
        d.reason
            .contains("dry-run: DENY policy shop/try-deny-client rule 0 would deny"),
        "dry-run is logged, not enforced: {}",
        d.reason
    );
    let d = decide(&snap, "other", "client", "10.0.3.2", 8080);
    assert_eq!((d.verdict, d.policy), (Verdict::Deny, None), "{}", d.reason);
    let d = decide(&snap, "shop", "late", "10.0.1.9", 8080);
    assert_eq!(d.verdict, Verdict::Deny, "{}", d.reason);
    // CUSTOM denies what its rules match, naming itself.
    let d = decide(&snap, "shop", "client", "10.0.1.2", 9090);
    assert_eq!(
        d.policy.map(|p| p.to_string()).as_deref(),
        Some("shop/ext-authz")
    );
    assert!(d.reason.contains("CUSTOM"), "{}", d.reason);
    // The malformed DENY costs only itself: without its bad address it denies all of 7070.
    let d = decide(&snap, "shop", "client", "10.0.1.2", 7070);
    assert_eq!(
        d.policy.map(|p| p.to_string()).as_deref(),
        Some("shop/typo")
    );
}
