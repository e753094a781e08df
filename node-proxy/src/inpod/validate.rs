//! Validation of what the CNI plugin sends: it comes from outside the proxy.

use std::collections::HashSet;
use std::net::IpAddr;

use marrow_wire::enrollment::AddPod;

/// Most addresses one pod may have.
const MAX_IPS: usize = 8;

/// Checks an ADD request; the error names the field and the reason.
pub fn add_pod(add: &AddPod) -> Result<(), String> {
    let uid = &add.pod.uid;
    if uid.is_empty()
        || uid.len() > 128
        || !uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || uid.starts_with('.')
    {
        return Err(format!(
            "uid {uid:?} must be 1-128 characters of [A-Za-z0-9._-]"
        ));
    }
    dns_name("namespace", &add.pod.namespace, 63)?;
    dns_name("name", &add.pod.name, 253)?;
    if let Some(sa) = &add.pod.service_account {
        dns_name("service account", sa, 253)?;
    }
    let cid = &add.attachment.container_id;
    if cid.is_empty() || cid.len() > 256 {
        return Err("container id must be 1-256 characters".into());
    }
    let ifname = &add.attachment.ifname;
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') {
        return Err(format!(
            "interface name {ifname:?} is not a valid Linux interface name"
        ));
    }
    if !add.netns_path.starts_with('/') || add.netns_path.len() > 4096 {
        return Err(format!(
            "netns path {:?} must be an absolute path",
            add.netns_path
        ));
    }
    if add.ips.is_empty() {
        return Err("no pod addresses (does redirect-cni run after the IPAM plugin?)".into());
    }
    if add.ips.len() > MAX_IPS {
        return Err(format!("{} addresses; at most {MAX_IPS}", add.ips.len()));
    }
    let mut seen = HashSet::new();
    for ip in &add.ips {
        if !usable(ip) {
            return Err(format!("address {ip} cannot be a pod address"));
        }
        if !seen.insert(ip) {
            return Err(format!("address {ip} is listed twice"));
        }
    }
    Ok(())
}

fn usable(ip: &IpAddr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
        || matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()))
}

fn dns_name(what: &str, value: &str, max: usize) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !value.starts_with(['-', '.'])
        && !value.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} is not a valid Kubernetes name (lowercase DNS name, at most {max} characters)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marrow_wire::enrollment::{Attachment, PodIdentity};

    fn good() -> AddPod {
        AddPod {
            pod: PodIdentity {
                uid: "0b5f4c1e-8d52-4f6a-9d7e-1f2e3d4c5b6a".into(),
                namespace: "shop".into(),
                name: "web-7d9f-abcde".into(),
                service_account: Some("web".into()),
            },
            attachment: Attachment {
                container_id: "abc123".into(),
                ifname: "eth0".into(),
            },
            netns_path: "/var/run/netns/cni-1".into(),
            ips: vec!["10.244.1.5".parse().unwrap(), "fd00:1::5".parse().unwrap()],
        }
    }

    #[test]
    fn a_well_formed_pod_passes() {
        add_pod(&good()).unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut AddPod)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|a| a.pod.uid = "../../etc/passwd".into()), "uid"),
            (Box::new(|a| a.pod.uid = String::new()), "uid"),
            (Box::new(|a| a.pod.namespace = "Shop".into()), "namespace"),
            (Box::new(|a| a.pod.name = "-x".into()), "name"),
            (
                Box::new(|a| a.pod.service_account = Some("a b".into())),
                "service account",
            ),
            (
                Box::new(|a| a.attachment.ifname = "a/b".into()),
                "interface",
            ),
            (
                Box::new(|a| a.attachment.container_id = String::new()),
                "container id",
            ),
            (Box::new(|a| a.netns_path = "relative".into()), "netns path"),
            (Box::new(|a| a.ips.clear()), "no pod addresses"),
            (
                Box::new(|a| a.ips = vec!["127.0.0.1".parse().unwrap()]),
                "cannot be a pod address",
            ),
            (
                Box::new(|a| a.ips = vec!["0.0.0.0".parse().unwrap()]),
                "cannot be a pod address",
            ),
            (
                Box::new(|a| a.ips.push("10.244.1.5".parse().unwrap())),
                "listed twice",
            ),
        ];
        for (mutate, expected) in cases {
            let mut add = good();
            mutate(&mut add);
            let err = add_pod(&add).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }
}
