//! `cargo xtask demo --keep` and `--down`: leave the demo's cluster running to explore it, and
//! remove it afterwards.
//!
//! `--keep` forgets the fixtures instead of dropping them (see [`Cluster::keep`]) and prints, with
//! the real names and addresses of this run, how to run a command inside a pod so that marrow
//! captures it, and how to read each proxy's metrics, `/explain` and log.
//!
//! `--down` removes a kept cluster by name, with the harness's own sweep of stale fixtures:
//! creating a node named like a kept one kills the processes of the old node's cgroup (its proxy
//! and its pods' processes), deletes its pods' and its own network namespaces (and with them the
//! veths and the underlay), its bpffs pins and its temporary directories; dropping the new node
//! removes what it made. The CA's temporary directory is removed by its name prefix.

use marrow_tests::names::PREFIX;
use marrow_tests::{Node, NodeOptions, Pod, Proxy};

use super::cluster::{ADMIN_PORT, API_PORT, Cluster, NODE_NAMES};
use marrow_tests::proxy::METRICS_PORT;

/// The name the demo gives its CA (`MeshCa::create`), whose directory is `marrow-test-<name>-ca-*`.
pub const CA_NAME: &str = "demo";

/// Leaves `cluster` running and prints how to reach its pods and proxies.
///
/// # Errors
/// When the api app cannot be restarted detached from the demo.
pub fn keep(cluster: Cluster) -> anyhow::Result<()> {
    let testpod = marrow_tests::binaries::testpod();
    let api = cluster.api_addr();
    let pods = [
        (&cluster.frontend, "allowed by shop/api-from-frontend"),
        (&cluster.batch, "in the mesh, denied by the policy"),
        (
            &cluster.old,
            "outside the mesh: plaintext, refused by STRICT",
        ),
    ];
    let mut lines = vec![
        String::new(),
        "The cluster is still running (--keep). Remove it with: cargo xtask demo --down".to_owned(),
        String::new(),
        "Run a command in a pod: join the pod's cgroup (where marrow's eBPF programs are \
         attached)\nand its network namespace. Each of these calls shop/api at {api}:"
            .replace("{api}", &api.to_string()),
    ];
    for (pod, outcome) in pods {
        lines.push(format!(
            "   # {}/{}: {outcome}",
            pod.namespace(),
            pod.name()
        ));
        lines.push(format!(
            "   {} {} connect {api} --send hello",
            enter(pod),
            testpod.display()
        ));
    }
    lines.push(String::new());
    lines.push("The pods (node, address, network namespace):".to_owned());
    for pod in [
        &cluster.frontend,
        &cluster.batch,
        &cluster.old,
        &cluster.api,
    ] {
        lines.push(format!(
            "   {:<14} {} {:<11} {}",
            format!("{}/{}", pod.namespace(), pod.name()),
            pod.node().name(),
            pod.ipv4(),
            pod.netns().name()
        ));
    }
    lines.push(String::new());
    lines.push("The node proxies (they listen on 127.0.0.1 in their node's namespace):".to_owned());
    for (proxy, node) in [
        (&cluster.proxy1, &cluster.node1),
        (&cluster.proxy2, cluster.api.node()),
    ] {
        lines.extend(proxy_lines(proxy, node));
    }
    lines.push(format!(
        "   why was batch refused?  ip netns exec {} curl -s \
         '127.0.0.1:{ADMIN_PORT}/explain?from=shop/batch&to=shop/api&port={API_PORT}'",
        cluster.api.node().netns().name()
    ));
    let kept = cluster.keep()?;
    lines.push(format!(
        "   shop/api's app: pid {}, output in {}",
        kept.api_app_pid,
        kept.api_app_log.display()
    ));
    println!("{}", lines.join("\n"));
    Ok(())
}

/// The shell prefix that runs a program inside `pod`: its cgroup, then its namespace.
fn enter(pod: &Pod) -> String {
    format!(
        "sh -c 'echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"' ip netns exec {}",
        pod.cgroup().path().display(),
        pod.netns().name()
    )
}

/// How to reach one node's proxy.
fn proxy_lines(proxy: &Proxy, node: &Node) -> Vec<String> {
    vec![
        format!(
            "   {}: pid {}, log {}",
            node.name(),
            proxy.pid().unwrap_or_default(),
            proxy.log_path().display()
        ),
        format!(
            "      ip netns exec {} curl -s 127.0.0.1:{METRICS_PORT}/metrics",
            node.netns().name()
        ),
    ]
}

/// Removes a cluster left by `--keep` (see the module documentation). Harmless when there is
/// none.
pub fn down() {
    println!(
        "Removing the demo's cluster (nodes {})",
        NODE_NAMES.join(", ")
    );
    for (index, name) in (1u8..).zip(NODE_NAMES) {
        let options = NodeOptions {
            dual_stack: false,
            index: Some(index),
        };
        drop(Node::with_options(name, options));
    }
    let prefix = format!("{PREFIX}{CA_NAME}-ca-");
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let path = entry.path();
            eprintln!("removing the demo CA's directory {}", path.display());
            if let Err(e) = std::fs::remove_dir_all(&path) {
                eprintln!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// Whether a CA directory of the demo is still there.
pub fn ca_left() -> Vec<String> {
    let prefix = format!("{PREFIX}{CA_NAME}-ca-");
    std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| format!("CA directory {}", entry.path().display()))
        .collect()
}
