use super::*;

fn m(rss_kib: u64) -> Memory {
    Memory {
        rss_kib,
        pss_kib: rss_kib - 100,
    }
}

fn step(pods: u64, idle: u64, held: u64, cpu: Option<f64>) -> Step {
    Step {
        pods,
        processes: 1,
        idle: m(idle),
        held: 1000,
        with_held: m(held),
        after_close: m(held),
        server_with_held: Some(m(held / 2)),
        server_idle: Some(m(idle / 2)),
        server_after_close: Some(m(idle)),
        many: None,
        idle_cpu_ms_per_s: cpu,
    }
}

#[test]
fn rows_compare_every_set_up_with_a_node_without_a_data_plane() {
    let mut figures = MemoryFigures {
        held: 1000,
        steps: BTreeMap::new(),
    };
    figures.steps.insert(
        SetUp::Hbone,
        vec![
            step(1, 10_240, 30_720, None),
            step(50, 11_220, 31_000, Some(0.5)),
        ],
    );
    figures.steps.insert(
        SetUp::Sidecars,
        vec![
            step(1, 20_480, 40_960, None),
            step(50, 1_024_000, 1_050_000, Some(20.0)),
        ],
    );
    let rows = figures.rows();
    let find = |label: &str| {
        rows.iter()
            .find(|(l, _)| l.contains(label))
            .unwrap()
            .1
            .clone()
    };
    let idle1 = find("1 pod, idle");
    assert_eq!(idle1[&SetUp::Direct], 0.0);
    assert_eq!(idle1[&SetUp::Hbone], 10.0);
    assert_eq!(idle1[&SetUp::Sidecars], 20.0);
    let per_pod = find("RSS KiB per added idle pod (1 → 50 pods)");
    assert_eq!(per_pod[&SetUp::Hbone], 20.0);
    assert_eq!(per_pod[&SetUp::Sidecars], (1_024_000.0 - 20_480.0) / 49.0);
    assert_eq!(find("per open connection")[&SetUp::Hbone], 20.48);
    assert_eq!(find("server node")[&SetUp::Hbone], 15.0);
    assert_eq!(find("CPU ms/s")[&SetUp::Sidecars], 20.0);
    assert_eq!(find("PSS KiB per added")[&SetUp::Hbone], 20.0);
    assert_eq!(rows[1].0, "  PSS MiB, idle");
    assert!(
        rows[2].0.starts_with("  RSS MiB with 1000 open"),
        "{rows:?}"
    );
    assert!(rows.iter().all(|(l, _)| !l.contains("pod(s)")));
    let v = figures.json();
    assert_eq!(v["pod_counts"], json!([1, 50]));
    assert_eq!(v["setups"]["hbone"]["steps"][1]["idle"]["rss_kib"], 11_220);
    assert_eq!(
        v["setups"]["sidecars"]["rss_kib_per_pod"],
        json!(per_pod[&SetUp::Sidecars])
    );
    assert!(MemoryFigures::default().rows().is_empty());
    assert!(
        rows.iter().all(|(l, _)| !l.contains("node 2")),
        "no node-2 block without many held connections: {rows:?}"
    );
}

#[test]
fn many_held_connections_give_each_node_proxy_its_own_rows() {
    let mut first = step(1, 10_240, 30_720, None);
    first.server_idle = Some(m(8_192));
    first.server_after_close = Some(m(9_216));
    first.many = Some(Many {
        held: 10_000,
        client: m(10_240 + 40_000),
        server: Some(m(8_192 + 30_000)),
    });
    let mut figures = MemoryFigures {
        held: 1000,
        steps: BTreeMap::new(),
    };
    figures.steps.insert(SetUp::Hbone, vec![first]);
    let rows = figures.rows();
    let find = |label: &str| {
        rows.iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no row {label:?} in {rows:?}"))
            .1
            .clone()
    };
    let hbone = |label: &str| find(label)[&SetUp::Hbone];
    assert_eq!(hbone("node 1 RSS MiB, fresh idle"), 10.0);
    assert!(
        rows.iter()
            .all(|(l, _)| l != "RSS MiB after every held connection closed (1 pod)"),
        "node 1 after close is in the per-node block alone: {rows:?}"
    );
    assert_eq!(
        hbone("node 1 RSS MiB after every held connection closed"),
        30.0
    );
    assert_eq!(
        hbone("node 1 RSS MiB with 10,000 held connections"),
        49.0625
    );
    assert_eq!(hbone("node 1 RSS KiB per held connection (10,000)"), 4.0);
    assert_eq!(hbone("node 2 RSS MiB, fresh idle"), 8.0);
    assert_eq!(
        hbone("node 2 RSS MiB with 10,000 held connections"),
        37.296875
    );
    assert_eq!(
        hbone("node 2 RSS MiB after every held connection closed"),
        9.0
    );
    assert_eq!(hbone("node 2 RSS KiB per held connection (10,000)"), 3.0);
    assert_eq!(find("node 2 RSS MiB, fresh idle")[&SetUp::Direct], 0.0);
    let v = figures.json();
    assert_eq!(v["held_connections_many"], 10_000);
    let many = &v["setups"]["hbone"]["steps"][0]["many"];
    assert_eq!(many["rss_kib_per_connection"], 4.0);
    assert_eq!(many["server_rss_kib_per_connection"], 3.0);
    assert_eq!(
        v["setups"]["hbone"]["steps"][0]["server_node_idle"]["rss_kib"],
        8_192
    );
}

#[test]
fn counts_are_written_with_thousands_separators() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1_000), "1,000");
    assert_eq!(thousands(10_000), "10,000");
    assert_eq!(thousands(1_234_567), "1,234,567");
}
