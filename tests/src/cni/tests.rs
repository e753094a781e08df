//! Unit tests of the CNI runtime: stdin/env construction and result/error parsing.

use super::*;

fn chain() -> CniChain {
    CniChain::new(
        "net",
        vec![
            json!({"type": "bridge"}),
            json!({"type": "redirect-cni", "prevResult": 1}),
        ],
        PathBuf::from("/nonexistent"),
    )
}

#[test]
fn stdin_injects_name_version_and_prev_result() {
    let c = chain();
    let prev = json!({"ips": []});
    let s = c.plugin_stdin(0, Some(&prev));
    assert_eq!(s["name"], "net");
    assert_eq!(s["cniVersion"], CNI_VERSION);
    assert_eq!(s["prevResult"], prev);
    assert_eq!(s["type"], "bridge");
    // a stale prevResult in the config is dropped when there is none
    assert!(c.plugin_stdin(1, None).get("prevResult").is_none());
}

#[test]
fn cni_args_carry_the_pod() {
    let a = CniArgs {
        container_id: "c1".into(),
        netns: "/var/run/netns/p".into(),
        ifname: "eth0".into(),
        pod_namespace: "ns".into(),
        pod_name: "p".into(),
        pod_uid: "u".into(),
    };
    assert_eq!(
        a.cni_args(),
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u"
    );
    let env = a.env(CniCommand::Del, &[PathBuf::from("/a"), PathBuf::from("/b")]);
    assert!(env.contains(&("CNI_COMMAND".into(), "DEL".into())));
    assert!(env.contains(&("CNI_PATH".into(), "/a:/b".into())));
}

#[test]
fn parses_result_ips() {
    let r = json!({"ips": [{"address": "10.244.1.2/24"}, {"address": "fd00:1::2/64"}]});
    let ips = result_ips(&r).unwrap();
    assert_eq!(ips[0], "10.244.1.2".parse::<IpAddr>().unwrap());
    assert_eq!(ips[1], "fd00:1::2".parse::<IpAddr>().unwrap());
}

#[test]
fn rejects_bad_results() {
    assert!(result_ips(&json!({})).is_err());
    assert!(result_ips(&json!({"ips": [{}]})).is_err());
    assert!(result_ips(&json!({"ips": [{"address": "banana/24"}]})).is_err());
}

#[test]
fn parses_cni_error_objects() {
    let out = PluginOutput {
        plugin: "redirect-cni".into(),
        exit_code: Some(1),
        stdout: r#"{"cniVersion":"1.0.0","code":11,"msg":"proxy down"}"#.into(),
        stderr: String::new(),
        timed_out: false,
    };
    let body = out.error_body().unwrap();
    assert_eq!(body.code, 11);
    assert_eq!(body.msg, "proxy down");
    assert_eq!(body.details, "");
    let garbage = PluginOutput {
        stdout: "not json".into(),
        ..out
    };
    assert_eq!(garbage.error_body(), None);
}
