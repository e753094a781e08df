//! The report's medians, tables and JSON, on made-up samples.

use super::*;

#[test]
fn medians() {
    assert_eq!(median(&[]), None);
    assert_eq!(median(&[3.0]), Some(3.0));
    assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
}

#[test]
fn each_topology_compares_with_its_own_baseline() {
    let mut samples = Samples::default();
    for (d, m) in [(100.0, 50.0), (110.0, 40.0), (90.0, 60.0)] {
        samples.record(Figure::ConnRate1, SetUp::Direct, d);
        samples.record(Figure::ConnRate1, SetUp::Marrow, m);
    }
    samples.record(Figure::ConnRate1, SetUp::DirectX, 80.0);
    samples.record(Figure::ConnRate1, SetUp::Hbone, 20.0);
    samples.record(Figure::PingP50, SetUp::Direct, 20.0);
    samples.record(Figure::PingP50, SetUp::Marrow, 50.0);
    samples.record(Figure::PingP50, SetUp::DirectX, 30.0);
    samples.record(Figure::PingP50, SetUp::Hbone, 90.0);
    samples.record(Figure::BulkPlaneCpu, SetUp::Marrow, 1.5);
    samples.record(Figure::Tunnels, SetUp::Hbone, 3.0);
    samples.add_errors(SetUp::Marrow, 2, Some("reset".to_owned()));
    let report = Report {
        load_average: [0.1, 0.2, 0.3],
        cpus: 2,
        parameters: json!({}),
        order: vec![
            SetUp::Direct,
            SetUp::Marrow,
            SetUp::DirectX,
            SetUp::Hbone,
            SetUp::Hbone,
            SetUp::DirectX,
            SetUp::Marrow,
            SetUp::Direct,
        ],
        samples,
        memory: None,
        handshakes: None,
    };
    let table = report.table();
    let (same, cross) = table.split_once("### Cross node").unwrap();
    let row = |table: &str, label: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.contains(label)).unwrap();
        line.split('|')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    assert_eq!(
        row(same, "connections/s, 1")[1..],
        ["100", "50", "0.50×"],
        "{table}"
    );
    assert_eq!(
        row(cross, "connections/s, 1")[1..],
        ["80", "20", "0.25×"],
        "{table}"
    );
    assert_eq!(row(same, "ping-pong p50")[3], "2.50× (+30.0 µs)", "{table}");
    assert_eq!(
        row(cross, "ping-pong p50")[3],
        "3.00× (+60.0 µs)",
        "{table}"
    );
    assert_eq!(
        row(same, "data-plane CPU-s per GB")[1..],
        ["—", "1.50", "—"],
        "{table}"
    );
    assert_eq!(
        row(cross, "mTLS connections")[1..],
        ["—", "3", "—"],
        "{table}"
    );
    assert!(
        !same.contains("mTLS connections"),
        "rows without samples are left out"
    );
    assert_eq!(row(same, "failed")[1..], ["0", "2", "—"], "{table}");
    assert_eq!(row(cross, "failed")[1..], ["0", "0", "—"], "{table}");
    assert!(cross.contains("pooled mTLS connection"), "the HBONE note");
    assert!(
        same.lines().nth(3).unwrap().ends_with(": |"),
        "numbers align right"
    );
    let v = report.json();
    assert_eq!(v["figures"]["conn_rate_t1"]["ratio"]["marrow"], json!(0.5));
    assert_eq!(v["figures"]["conn_rate_t1"]["ratio"]["hbone"], json!(0.25));
    assert_eq!(v["figures"]["ping_p50_us"]["added"]["marrow"], json!(30.0));
    assert_eq!(v["figures"]["ping_p50_us"]["added"]["hbone"], json!(60.0));
    assert_eq!(v["setups"]["hbone"]["baseline"], json!("direct-x"));
    assert_eq!(
        v["figures"]["bulk_proxy_cpu_s_per_gb"]["median"]["direct"],
        Value::Null
    );
    assert_eq!(v["connection_errors"]["marrow"]["count"], json!(2));
    assert_eq!(v["tls_handshakes"], Value::Null);
}

#[test]
fn a_run_of_one_topology_has_one_table() {
    let mut samples = Samples::default();
    samples.record(Figure::BulkGbps, SetUp::DirectX, 10.0);
    samples.record(Figure::BulkGbps, SetUp::Hbone, 4.0);
    let report = Report {
        load_average: [0.0; 3],
        cpus: 2,
        parameters: json!({}),
        order: vec![SetUp::DirectX, SetUp::Hbone, SetUp::Hbone, SetUp::DirectX],
        samples,
        memory: None,
        handshakes: None,
    };
    let table = report.table();
    assert!(!table.contains("Same node"), "{table}");
    assert!(table.contains("| 0.40× |"), "{table}");
    assert!(report.json()["figures"]["bulk_gbit_s"]["median"]["direct"].is_null());
    assert!(
        report.json()["figures"]["bulk_gbit_s"]["median"]
            .get("direct")
            .is_none(),
        "set-ups that did not run are left out"
    );
}

#[test]
fn small_ratios_keep_two_significant_digits() {
    assert_eq!(times(0.5), "0.50×");
    assert_eq!(times(13.984), "13.98×");
    assert_eq!(times(0.0042), "0.0042×");
    assert_eq!(times(0.02), "0.020×");
    assert_eq!(times(0.0), "0.00×");
    assert_eq!(ratio(Some(0.0), Some(1.0)), "—");
    assert_eq!(ratio(None, Some(1.0)), "—");
    assert_eq!(ratio(Some(4.0), Some(1.0)), "0.25×");
}

#[test]
fn the_l7_table_compares_the_waypoint_with_direct_and_with_envoy() {
    let mut samples = Samples::default();
    for (setup, rps, p50) in [
        (SetUp::L7Direct, 20_000.0, 100.0),
        (SetUp::Waypoint, 5_000.0, 400.0),
        (SetUp::EnvoyL7, 4_000.0, 500.0),
    ] {
        samples.record(Figure::L7Rps1, setup, rps);
        samples.record(Figure::L7P50, setup, p50);
    }
    samples.record(Figure::L7PlaneCpu, SetUp::Waypoint, 300.0);
    samples.record(Figure::L7PlaneCpu, SetUp::EnvoyL7, 600.0);
    samples.record(Figure::BulkGbps, SetUp::DirectX, 10.0);
    samples.record(Figure::BulkGbps, SetUp::Hbone, 5.0);
    samples.record(Figure::BulkGbps, SetUp::Sidecars, 2.5);
    let report = Report {
        load_average: [0.1, 0.2, 0.3],
        cpus: 2,
        parameters: json!({}),
        order: vec![
            SetUp::DirectX,
            SetUp::Hbone,
            SetUp::Sidecars,
            SetUp::L7Direct,
            SetUp::Waypoint,
            SetUp::EnvoyL7,
        ],
        samples,
        memory: None,
        handshakes: None,
    };
    let table = report.table();
    let (cross, l7) = table.split_once("### L7").unwrap();
    assert!(
        !cross.contains("requests/s"),
        "L7 rows stay in their table: {table}"
    );
    assert!(!l7.contains("bulk"), "L4 rows stay in theirs: {table}");
    let row = |label: &str| -> Vec<String> {
        let line = l7.lines().find(|l| l.contains(label)).unwrap();
        line.split('|')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    assert!(l7.contains("waypoint/envoy-l7"), "{table}");
    assert_eq!(
        row("requests/s at saturation, 1")[1..],
        ["20000", "5000", "4000", "0.25×", "0.20×", "1.25×"],
        "{table}"
    );
    assert_eq!(
        row("latency p50")[4..],
        ["4.00× (+300.0 µs)", "5.00× (+400.0 µs)", "0.80×"],
        "{table}"
    );
    assert_eq!(
        row("data-plane CPU millicores")[1..],
        ["—", "300", "600", "—", "—", "0.50×"],
        "{table}"
    );
    let json = report.json();
    let rps = &json["figures"]["l7_rps_c1"];
    assert_eq!(rps["waypoint_vs_envoy-l7"], json!(1.25));
    assert_eq!(rps["ratio"]["waypoint"], json!(0.25));
    assert!(rps.get("hbone_vs_sidecars").is_none(), "{rps}");
    assert_eq!(
        json["figures"]["bulk_gbit_s"]["hbone_vs_sidecars"],
        json!(2.0)
    );
}
