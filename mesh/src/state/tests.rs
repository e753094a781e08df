//! Tests of the state module: the file format, refusals, reloads, the store and routing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::file::{FileError, LocalFileSource, Location, parse};
use super::*;
use crate::objects::{PodUid, WorkloadType};

const CLUSTER: &str = include_str!("testdata/cluster.yaml");

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cluster() -> Arc<Snapshot> {
    let store = StateStore::new();
    store.apply(parse(Path::new("cluster.yaml"), CLUSTER.as_bytes()).unwrap())
}

fn pod(ns: &str, name: &str, uid: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  uid: {uid}\n\
         spec:\n  containers: [{{name: c, image: x}}]\n  nodeName: node-1\n\
         status:\n  phase: Running\n  podIP: {ip}\n"
    )
}

#[test]
fn a_realistic_cluster_dump_parses() {
    let snap = cluster();
    assert_eq!(snap.generation(), 1);
    // web, db-0, batch, plain, pending, kube-proxy, kindnet; the finished Job pod is left out.
    assert_eq!(snap.workload_count(), 7);
    assert_eq!(snap.namespaces().count(), 2);
    let kinds: Vec<_> = snap.raw_objects().map(|d| d.kind).collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");

    let web = snap.workload_by_ip(ip("10.244.1.5")).unwrap();
    assert_eq!(web.name, "web-7d9f8b6c5-x2x9q");
    assert_eq!(web.uid, PodUid::new("0b5f4c1e-8d52-4f6a-9d7e-1f2e3d4c5b6a"));
    assert_eq!(web.spiffe_id_parts(), ("shop", "web"));
    assert_eq!(web.node_name.as_deref(), Some("node-1"));
    assert_eq!(web.ips, vec![ip("10.244.1.5"), ip("fd00:10:244:1::5")]);
    assert_eq!(web.workload_name, "web");
    assert_eq!(web.workload_type, WorkloadType::Deployment);
    assert_eq!(web.canonical_service, "web");
    assert_eq!(web.canonical_revision, "v2");
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    assert!(web.captured(&snap));
    assert!(Arc::ptr_eq(
        web,
        snap.workload_by_ip(ip("fd00:10:244:1::5")).unwrap()
    ));
    assert!(Arc::ptr_eq(web, snap.workload_by_uid(&web.uid).unwrap()));
    assert!(Arc::ptr_eq(
        web,
        snap.workload_by_name("shop", "web-7d9f8b6c5-x2x9q")
            .unwrap()
    ));

    let db = snap.workload_by_name("shop", "db-0").unwrap();
    assert_eq!(
        (db.workload_name.as_str(), db.canonical_revision.as_str()),
        ("db", "latest")
    );
    assert_eq!(db.workload_type, WorkloadType::Pod, "a StatefulSet's pod");
    assert!(
        !db.captured(&snap),
        "opted out with istio.io/dataplane-mode=none"
    );

    let pending = snap.workload_by_name("legacy", "pending").unwrap();
    assert!(pending.ips.is_empty());
    assert_eq!(pending.node_name, None);
    assert_eq!(pending.service_account, DEFAULT_SERVICE_ACCOUNT);

    let proxy = snap
        .workload_by_name("kube-system", "kube-proxy-7xq2v")
        .unwrap();
    assert!(proxy.host_network && !proxy.captured(&snap));
    assert!(snap.workload_by_ip(ip("192.168.49.2")).is_none());
    assert!(
        snap.workload_by_name("shop", "migrate-28901234-abcde")
            .is_none()
    );
}

/// The workload kind is Istio's ambient one: deployment (through a ReplicaSet), job, cronjob,
/// else pod (another controller, or none).
#[test]
fn workload_kinds_follow_istio() {
    let owned = |kind: &str, owner: &str, hash: Option<&str>| {
        let mut pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p-1", "namespace": "ns",
                "ownerReferences": [{"apiVersion": "v1", "kind": kind, "name": owner,
                                     "uid": "u", "controller": true}],
            },
            "status": {"phase": "Running", "podIP": "10.0.0.9"},
        }))
        .unwrap();
        if let Some(hash) = hash {
            pod.metadata.labels = Some([("pod-template-hash".to_owned(), hash.to_owned())].into());
        }
        let w = k8s::workload(&pod).unwrap().unwrap();
        (w.workload_name, w.workload_type)
    };
    let cases = [
        (
            ("ReplicaSet", "web-5d8f", Some("5d8f")),
            ("web", WorkloadType::Deployment),
        ),
        (
            ("ReplicaSet", "web-5d8f", None),
            ("web-5d8f", WorkloadType::Pod),
        ),
        (
            ("Job", "migrate-2890", None),
            ("migrate-2890", WorkloadType::Job),
        ),
        (
            ("CronJob", "nightly", None),
            ("nightly", WorkloadType::CronJob),
        ),
        (("StatefulSet", "db", None), ("db", WorkloadType::Pod)),
    ];
    for ((kind, owner, hash), (name, ty)) in cases {
        assert_eq!(
            owned(kind, owner, hash),
            (name.to_owned(), ty),
            "{kind} {owner}"
        );
    }
}

/// The refused object's reason, when the error is about one object.
fn reason(e: &FileError) -> Option<&ObjectError> {
    match e {
        FileError::Object { source, .. } => Some(source.as_ref()),
        _ => None,
    }
}

fn located(e: &FileError) -> Option<Location> {
    match e {
        FileError::Object { location, .. } | FileError::NotAnObject { location, .. } => {
            Some(*location)
        }
        _ => None,
    }
}

const DOC_1: Option<Location> = Some(Location {
    document: 1,
    item: None,
});
const DOC_2: Option<Location> = Some(Location {
    document: 2,
    item: None,
});

#[test]
fn every_bad_input_is_refused_with_where_and_why() {
    type Is = fn(&FileError) -> bool;
    let a = pod("shop", "a", "uid-a", "10.0.0.1");
    let b_ip = |ip| format!("{a}---\n{}", pod("shop", "b", "uid-b", ip));
    // (file, where, what, words the message must contain)
    let cases: Vec<(String, Option<Location>, Is, &[&str])> = vec![
        (
            // `a` is 12 lines, the separator line 13: the bad line is the file's 16th.
            format!("{a}---\napiVersion: v1\nkind: Pod\n  name: x\n"),
            None,
            |e| {
                matches!(
                    e,
                    FileError::Syntax {
                        document: 2,
                        line: Some((16, 7)),
                        ..
                    }
                )
            },
            &[
                "document 2",
                "YAML syntax error at line 16 column 7",
                "mapping values",
            ],
        ),
        (
            format!("{a}---\nkind: Pod\nkind: Pod\n"),
            None,
            |e| matches!(e, FileError::Syntax { document: 2, .. }),
            &["duplicate entry"],
        ),
        (
            pod("shop", "x", "u", "10.0.0.1").replace("  name: x\n", ""),
            DOC_1,
            |e| matches!(reason(e), Some(ObjectError::MissingName)),
            &[
                "document 1",
                "Pod shop/<unnamed>",
                "metadata.name is missing",
            ],
        ),
        (
            b_ip("10.0.0.300"),
            DOC_2,
            |e| matches!(reason(e), Some(ObjectError::InvalidIp { .. })),
            &[
                "document 2",
                "Pod shop/b",
                "\"10.0.0.300\" is not an IP address",
            ],
        ),
        (
            b_ip("127.0.0.1"),
            DOC_2,
            |e| matches!(reason(e), Some(ObjectError::UnusableIp { .. })),
            &["cannot be a pod address"],
        ),
        (
            b_ip("10.0.0.1"),
            DOC_2,
            |e| matches!(reason(e), Some(ObjectError::DuplicateIp { .. })),
            &["Pod shop/b", "IP 10.0.0.1 is also an IP of Pod shop/a"],
        ),
        (
            format!("{a}---\n{}", pod("shop", "b", "uid-a", "10.0.0.2")),
            DOC_2,
            |e| matches!(reason(e), Some(ObjectError::DuplicateUid { .. })),
            &["Pod shop/b", "uid uid-a is also the uid of Pod shop/a"],
        ),
        (
            format!("{a}---\n{}", pod("shop", "a", "uid-b", "10.0.0.2")),
            DOC_2,
            |e| matches!(reason(e), Some(ObjectError::Duplicate { .. })),
            &["Pod shop/a is defined twice"],
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
                .into(),
            DOC_2,
            |e| matches!(reason(e), Some(ObjectError::Duplicate { .. })),
            &["Namespace shop is defined twice"],
        ),
        (
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: Shop_1}\n".into(),
            DOC_1,
            |e| {
                matches!(
                    reason(e),
                    Some(ObjectError::InvalidName {
                        field: "metadata.name",
                        ..
                    })
                )
            },
            &["Namespace Shop_1", "DNS label"],
        ),
        (
            a.replace("  nodeName: node-1\n", "  serviceAccountName: ../admin\n"),
            DOC_1,
            |e| matches!(reason(e), Some(ObjectError::InvalidName { .. })),
            &["spec.serviceAccountName \"../admin\" is not valid"],
        ),
        (
            a.replace("  phase: Running\n", "  phase: [Running]\n"),
            DOC_1,
            |e| matches!(reason(e), Some(ObjectError::Malformed { .. })),
            &["Pod shop/a", "does not match the schema"],
        ),
        (
            "- just\n- a list\n".into(),
            DOC_1,
            |e| matches!(e, FileError::NotAnObject { .. }),
            &["not a Kubernetes object: the document is not a mapping"],
        ),
        (
            "apiVersion: v1\nmetadata: {name: x}\n".into(),
            DOC_1,
            |e| {
                matches!(
                    e,
                    FileError::NotAnObject {
                        reason: "no kind",
                        ..
                    }
                )
            },
            &["not a Kubernetes object: no kind"],
        ),
        (
            "kind: Pod\nmetadata: {name: x}\n".into(),
            DOC_1,
            |e| {
                matches!(
                    e,
                    FileError::NotAnObject {
                        reason: "no apiVersion",
                        ..
                    }
                )
            },
            &["no apiVersion"],
        ),
        (
            format!(
                "apiVersion: v1\nkind: List\nitems:\n- {}- {}",
                indent(&a),
                indent(&pod("shop", "b", "uid-b", "not-an-ip"))
            ),
            Some(Location {
                document: 1,
                item: Some(1),
            }),
            |e| matches!(reason(e), Some(ObjectError::InvalidIp { .. })),
            &["document 1, items[1]", "Pod shop/b"],
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {namespace: shop}\n"
                .into(),
            DOC_1,
            |e| matches!(reason(e), Some(ObjectError::MissingName)),
            &["AuthorizationPolicy shop/<unnamed>"],
        ),
    ];
    for (index, (yaml, location, is, says)) in cases.iter().enumerate() {
        let error = match parse(Path::new("/etc/marrow/state.yaml"), yaml.as_bytes()) {
            Ok(_) => panic!("case {index} was accepted:\n{yaml}"),
            Err(error) => error,
        };
        assert!(is(&error), "case {index}: {error:?}");
        assert_eq!(located(&error), *location, "case {index}: {error:?}");
        let message = error.to_string();
        assert!(
            message.starts_with("state file /etc/marrow/state.yaml"),
            "case {index}: {message}"
        );
        for word in *says {
            assert!(
                message.contains(word),
                "case {index}: {message:?} lacks {word:?}"
            );
        }
    }
}

/// Indents a document to sit under a `- ` list item.
fn indent(doc: &str) -> String {
    doc.lines().collect::<Vec<_>>().join("\n  ") + "\n"
}

#[test]
fn tolerated_inputs() {
    // No uid: derived from namespace and name. Unknown kinds and empty documents: ignored.
    let yaml = format!(
        "---\n{}---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n---\n\
         apiVersion: example.com/v9\nkind: Widget\nmetadata: {{name: w}}\n---\n\
         apiVersion: v1\nkind: PodList\nitems:\n- metadata: {{name: p, namespace: shop}}\n  status: {{podIP: 10.0.0.9}}\n",
        pod("shop", "a", "\"\"", "10.0.0.1")
    );
    let update = parse(Path::new("f"), yaml.as_bytes()).unwrap();
    let snap = StateStore::new().apply(update);
    assert_eq!(snap.workload_count(), 2);
    let a = snap.workload_by_ip(ip("10.0.0.1")).unwrap();
    assert_eq!(a.uid.as_str(), "shop.a");
    let p = snap.workload_by_ip(ip("10.0.0.9")).unwrap();
    assert_eq!((p.name.as_str(), p.uid.as_str()), ("p", "shop.p"));
    assert_eq!(
        StateStore::new()
            .apply(parse(Path::new("f"), b"").unwrap())
            .workload_count(),
        0
    );
}

#[test]
fn snapshot_reads_never_wait_for_writers() {
    let store = Arc::new(StateStore::new());
    // A writer in the middle of apply holds this lock; a read must still complete.
    let held = store.writer.lock().unwrap();
    assert_eq!(store.snapshot().generation(), 0);
    drop(held);

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut last = 0;
                while last < 200 {
                    let generation = store.snapshot().generation();
                    assert!(generation >= last, "generations went backwards");
                    last = generation;
                }
            })
        })
        .collect();
    for _ in 0..200 {
        store.apply(StateUpdate::new());
    }
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(*store.subscribe().borrow(), 200);
}

/// Writes `content` by rename (a new inode, as editors do) with a modification time already
/// past the settle time.
pub(super) fn write_settled(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    let file = std::fs::File::options().write(true).open(&tmp).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(1))
        .unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub(super) fn state_file(content: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    write_settled(&path, content);
    (dir, path)
}

#[test]
fn a_refused_reload_keeps_the_last_good_snapshot() {
    use super::file::poll::{Check, Poller};
    let one = pod("shop", "a", "uid-a", "10.0.0.1");
    let (_dir, path) = state_file(&one);
    let store = StateStore::new();
    let mut poller = Poller::new(
        path.clone(),
        crate::policy::DEFAULT_ROOT_NAMESPACE.to_owned(),
    );
    let Check::Changed(update) = poller.check() else {
        panic!("first read")
    };
    store.apply(*update);
    assert!(matches!(poller.check(), Check::Unchanged));

    // Same IP twice: refused once, then not reported again while the file stays so.
    write_settled(
        &path,
        &format!("{one}---\n{}", pod("shop", "b", "uid-b", "10.0.0.1")),
    );
    assert!(matches!(
        poller.check(),
        Check::Refused(FileError::Object { .. })
    ));
    assert!(matches!(poller.check(), Check::Unchanged));
    let snap = store.snapshot();
    assert_eq!(snap.generation(), 1);
    assert!(snap.workload_by_name("shop", "a").is_some());

    // Fixed: applied as the next generation.
    write_settled(
        &path,
        &format!("{one}---\n{}", pod("shop", "b", "uid-b", "10.0.0.2")),
    );
    let Check::Changed(update) = poller.check() else {
        panic!("fixed file")
    };
    let snap = store.apply(*update);
    assert_eq!((snap.generation(), snap.workload_count()), (2, 2));

    // Rewritten with the same content: nothing to apply.
    write_settled(
        &path,
        &format!("{one}---\n{}", pod("shop", "b", "uid-b", "10.0.0.2")),
    );
    assert!(matches!(poller.check(), Check::Unchanged));

    // Gone: reported, snapshot kept; back with the same content: no change.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(poller.check(), Check::Unreadable(_)));
    write_settled(
        &path,
        &format!("{one}---\n{}", pod("shop", "b", "uid-b", "10.0.0.2")),
    );
    assert!(matches!(poller.check(), Check::Unchanged));
}

#[tokio::test]
async fn the_watcher_applies_rewrites_and_keeps_state_when_the_file_goes() {
    let (_dir, path) = state_file(&pod("shop", "a", "uid-a", "10.0.0.1"));
    let store = Arc::new(StateStore::new());
    let mut generations = store.subscribe();
    let watch = LocalFileSource::new(&path)
        .with_interval(Duration::from_millis(20))
        .start(Arc::clone(&store))
        .await
        .unwrap();
    assert_eq!(store.snapshot().generation(), 1);

    // An in-place rewrite, as `cat > file` does: picked up once it settles.
    std::fs::write(&path, pod("shop", "b", "uid-b", "10.0.0.2")).unwrap();
    tokio::time::timeout(Duration::from_secs(10), generations.wait_for(|g| *g >= 2))
        .await
        .expect("the rewrite was not applied within 10 s")
        .unwrap();
    let snap = store.snapshot();
    assert!(snap.workload_by_name("shop", "b").is_some());
    assert!(snap.workload_by_name("shop", "a").is_none());

    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        store.snapshot().generation(),
        2,
        "a vanished file changes nothing"
    );
    drop(watch);
}

#[tokio::test]
async fn start_refuses_a_missing_or_invalid_file() {
    let store = Arc::new(StateStore::new());
    let missing = LocalFileSource::new("/nonexistent/marrow/state.yaml")
        .start(Arc::clone(&store))
        .await;
    assert!(
        matches!(&missing, Err(FileError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound),
        "{missing:?}"
    );
    let (_dir, path) = state_file("apiVersion: v1\nkind: Pod\nmetadata: {}\n");
    let invalid = LocalFileSource::new(&path).start(Arc::clone(&store)).await;
    assert!(matches!(invalid, Err(FileError::Object { .. })));
    assert_eq!(store.snapshot().generation(), 0);
}
