//! The route objects of the waypoint's traffic-management set-ups: the VirtualService each puts
//! in the state file for the Service the client calls, the server's extra flags, and the rule
//! the waypoint's `/routes` must show for the bench's request before anything is measured.

use crate::topology::SetUp;

/// Rules of [`SetUp::WaypointRoutes`]'s VirtualService.
pub const MANY_RULES: usize = 1_000;

/// What a waypoint set-up adds to the plain waypoint bed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    /// VirtualService YAML (one document, ending with a newline).
    pub yaml: String,
    /// The index of the rule the bench's `POST /` must match.
    pub rule: usize,
    /// The retries in force on that rule.
    pub attempts: u32,
    /// Extra flags of the server's `testpod http-serve`.
    pub server_flags: &'static [&'static str],
}

/// The route objects of `setup` for the Service `namespace/service`; `None` for a set-up
/// without any (the plain waypoint: the Service as addressed).
pub fn routes(setup: SetUp, namespace: &str, service: &str) -> Option<Routes> {
    let head = format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {service}, namespace: {namespace}}}
spec:
  hosts: [{service}]
  http:
"
    );
    let last = |retries: &str| {
        format!(
            "  - match: [{{uri: {{prefix: /}}}}]
    route: [{{destination: {{host: {service}}}}}]
    retries: {retries}
"
        )
    };
    let no_retries = "{attempts: 0}";
    match setup {
        SetUp::WaypointRoute => Some(Routes {
            yaml: head + &last(no_retries),
            rule: 0,
            attempts: 0,
            server_flags: &[],
        }),
        SetUp::WaypointRoutes => {
            // The worst case for a first-match list: every rule before the last is tried and
            // fails (exact paths the bench never asks for).
            let mut yaml = head;
            for i in 0..MANY_RULES - 1 {
                yaml.push_str(&format!(
                    "  - match: [{{uri: {{exact: /r{i}}}}}]
    route: [{{destination: {{host: {service}}}}}]
"
                ));
            }
            yaml.push_str(&last(no_retries));
            Some(Routes {
                yaml,
                rule: MANY_RULES - 1,
                attempts: 0,
                server_flags: &[],
            })
        }
        SetUp::WaypointRetry => Some(Routes {
            yaml: head + &last("{attempts: 2, retryOn: 5xx}"),
            rule: 0,
            attempts: 2,
            server_flags: &["--fail-percent", "50"],
        }),
        _ => None,
    }
}

/// Whether the waypoint's `/routes` answer (JSON) shows `want` applied: the VirtualService's
/// rule `want.rule` and its retries.
pub fn applied(answer: &serde_json::Value, want: &Routes) -> bool {
    let route = &answer["route"];
    route["kind"] == "VirtualService"
        && route["rule"].as_u64() == u64::try_from(want.rule).ok()
        && answer["retries"]["attempts"].as_u64().unwrap_or(0) == u64::from(want.attempts)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_traffic_set_up_has_its_virtual_service() {
        assert_eq!(routes(SetUp::Waypoint, "bench", "web"), None);
        assert_eq!(routes(SetUp::L7Direct, "bench", "web"), None);
        let one = routes(SetUp::WaypointRoute, "bench", "web").unwrap();
        assert_eq!(one.yaml.matches("- match:").count(), 1, "{}", one.yaml);
        assert!(one.yaml.contains("metadata: {name: web, namespace: bench}"));
        assert!(one.yaml.contains("{attempts: 0}"));
        let many = routes(SetUp::WaypointRoutes, "bench", "web").unwrap();
        assert_eq!(many.yaml.matches("- match:").count(), MANY_RULES);
        assert_eq!(many.yaml.matches("exact: /r").count(), MANY_RULES - 1);
        assert!(many.yaml.contains("exact: /r998}") && !many.yaml.contains("/r999"));
        assert_eq!(many.rule, 999);
        let retry = routes(SetUp::WaypointRetry, "bench", "web").unwrap();
        assert!(retry.yaml.contains("{attempts: 2, retryOn: 5xx}"));
        assert_eq!(retry.server_flags, ["--fail-percent", "50"]);
        for r in [one, many, retry] {
            assert!(
                r.yaml
                    .starts_with("apiVersion: networking.istio.io/v1\nkind: VirtualService\n")
            );
            assert!(
                r.yaml.ends_with("\n") && !r.yaml.contains("---"),
                "one document"
            );
        }
    }

    #[test]
    fn the_rule_is_applied_only_when_routes_shows_it() {
        let want = routes(SetUp::WaypointRetry, "bench", "web").unwrap();
        let shown = |kind: &str, rule: u64, attempts: Option<u64>| {
            let retries = attempts.map(|a| json!({ "attempts": a }));
            json!({ "route": { "kind": kind, "rule": rule }, "retries": retries })
        };
        assert!(applied(&shown("VirtualService", 0, Some(2)), &want));
        assert!(
            !applied(&shown("VirtualService", 0, None), &want),
            "old rule"
        );
        assert!(!applied(&shown("HTTPRoute", 0, Some(2)), &want));
        assert!(!applied(
            &json!({ "route": null, "action": "default" }),
            &want
        ));
        let many = routes(SetUp::WaypointRoutes, "bench", "web").unwrap();
        assert!(applied(&shown("VirtualService", 999, None), &many));
        assert!(!applied(&shown("VirtualService", 998, None), &many));
    }
}
