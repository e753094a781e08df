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

#[test]
fn the_traffic_set_ups_sit_next_to_the_waypoint_and_read_against_it() {
    let mut samples = Samples::default();
    for (setup, p50, cpu) in [
        (SetUp::L7Direct, 100.0, None),
        (SetUp::Waypoint, 400.0, Some(300.0)),
        (SetUp::WaypointRoute, 390.0, Some(290.0)),
        (SetUp::WaypointRoutes, 450.0, Some(400.0)),
        (SetUp::WaypointRetry, 10_390.0, Some(490.0)),
    ] {
        samples.record(Figure::L7P50, setup, p50);
        samples.record_opt(Figure::L7PlaneCpu, setup, cpu);
    }
    // 1 s / requests/s over one connection: 400, 390, 450 and 10,390 µs per request.
    for (setup, rps) in [
        (SetUp::WaypointRoute, 1e6 / 390.0),
        (SetUp::WaypointRetry, 1e6 / 10_390.0),
        (SetUp::WaypointRoutes, 1e6 / 450.0),
        (SetUp::Waypoint, 2_500.0),
    ] {
        samples.record(Figure::L7Rps1, setup, rps);
    }
    samples.record(Figure::L7RetriesPerRequest, SetUp::WaypointRoute, 0.0);
    samples.record(Figure::L7RetriesPerRequest, SetUp::WaypointRetry, 0.5);
    let report = Report {
        load_average: [0.0; 3],
        cpus: 2,
        parameters: json!({}),
        order: vec![
            SetUp::L7Direct,
            SetUp::Waypoint,
            SetUp::WaypointRoute,
            SetUp::WaypointRoutes,
            SetUp::WaypointRetry,
        ],
        samples,
        memory: None,
        handshakes: None,
    };
    let table = report.table();
    let (l7, traffic) = table
        .split_once("Traffic management at the waypoint")
        .unwrap();
    let cells = |text: &str, label: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.contains(label)).unwrap();
        line.split('|')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    let header = cells(l7, "| figure");
    assert_eq!(
        header[1..6],
        [
            "l7-direct",
            "waypoint",
            "waypoint-1-route",
            "waypoint-1000-routes",
            "waypoint-retry"
        ],
        "{table}"
    );
    assert_eq!(
        cells(l7, "latency p50")[2..6],
        ["400", "390", "450", "10390"],
        "{table}"
    );
    assert_eq!(
        cells(l7, "latency p50")[7],
        "3.90× (+290.0 µs)",
        "waypoint-1-route against l7-direct: {table}"
    );
    assert!(
        !l7.contains("waypoint/envoy-l7"),
        "Envoy did not run: {table}"
    );
    // Routing, 1,000 rules and their difference per request; the retry per retry on the
    // serial row only (half the requests were retried, so 10 ms added per request is 20 ms
    // per retry).
    assert_eq!(
        cells(traffic, "time per request")[1..],
        ["-10 µs", "+50 µs", "+60 µs", "+20000 µs"],
        "{table}"
    );
    assert_eq!(
        cells(traffic, "latency p50")[1..],
        ["-10 µs", "+50 µs", "+60 µs", "—"],
        "{table}"
    );
    assert_eq!(
        cells(traffic, "data-plane CPU")[1..],
        ["-10 millicores", "+100 millicores", "+110 millicores", "—"],
        "{table}"
    );
    assert_eq!(
        cells(traffic, "p90")[1..],
        ["—", "—", "—", "—"],
        "no sample, no reading: {table}"
    );
    assert_eq!(
        cells(l7, "retries per request")[1..6],
        ["—", "—", "0.00", "—", "0.50"],
        "{table}"
    );
    let json = report.json();
    let p50 = &json["traffic_vs_waypoint"]["l7_p50_us"];
    assert_eq!(p50["routing_1_rule"], json!(-10.0));
    assert_eq!(p50["routing_1000_rules"], json!(50.0));
    assert_eq!(p50["per_retry"], Value::Null);
    let serial = &json["traffic_vs_waypoint"]["l7_serial_request_us"];
    assert!(
        (serial["per_retry"].as_f64().unwrap() - 20_000.0).abs() < 1e-6,
        "{serial}"
    );
    assert_eq!(
        json["setups"]["waypoint-retry"]["baseline"],
        json!("l7-direct")
    );
}

#[test]
fn without_a_traffic_set_up_there_is_no_traffic_table() {
    let mut samples = Samples::default();
    samples.record(Figure::L7P50, SetUp::L7Direct, 100.0);
    samples.record(Figure::L7P50, SetUp::Waypoint, 400.0);
    samples.record(Figure::L7P50, SetUp::WaypointRetry, 900.0);
    let report = Report {
        load_average: [0.0; 3],
        cpus: 2,
        parameters: json!({}),
        order: vec![SetUp::L7Direct, SetUp::Waypoint, SetUp::WaypointRetry],
        samples,
        memory: None,
        handshakes: None,
    };
    let table = report.table();
    assert!(
        !table.contains("Traffic management at the waypoint"),
        "a retry reads against waypoint-1-route, which did not run: {table}"
    );
    assert_eq!(report.json()["traffic_vs_waypoint"], Value::Null);
}

#[test]
fn ztunnel_gets_its_own_ratio_column_beside_the_sidecars() {
    let mut samples = Samples::default();
    for (setup, gbps) in [
        (SetUp::DirectX, 10.0),
        (SetUp::Hbone, 5.0),
        (SetUp::Sidecars, 2.5),
        (SetUp::Ztunnel, 4.0),
    ] {
        samples.record(Figure::BulkGbps, setup, gbps);
    }
    let report = |order: Vec<SetUp>, samples| Report {
        load_average: [0.1, 0.2, 0.3],
        cpus: 2,
        parameters: json!({}),
        order,
        samples,
        memory: None,
        handshakes: None,
    };
    let all = vec![
        SetUp::DirectX,
        SetUp::Hbone,
        SetUp::Sidecars,
        SetUp::Ztunnel,
    ];
    let with = report(all, samples);
    let table = with.table();
    assert!(
        table.contains("| hbone/sidecars | hbone/ztunnel |"),
        "{table}"
    );
    let bulk = table.lines().find(|l| l.contains("bulk")).unwrap();
    let cells: Vec<&str> = bulk.split('|').map(str::trim).collect();
    assert_eq!(
        cells[cells.len() - 3..cells.len() - 1],
        ["2.00×", "1.25×"],
        "{table}"
    );
    assert!(
        table.contains("hbone/ztunnel is marrow's figure"),
        "{table}"
    );
    let json = with.json();
    assert_eq!(
        json["figures"]["bulk_gbit_s"]["hbone_vs_ztunnel"],
        json!(1.25)
    );

    // Without ztunnel, no trace of it.
    let mut samples = Samples::default();
    samples.record(Figure::BulkGbps, SetUp::DirectX, 10.0);
    samples.record(Figure::BulkGbps, SetUp::Hbone, 5.0);
    let without = report(vec![SetUp::DirectX, SetUp::Hbone], samples).table();
    assert!(!without.contains("ztunnel"), "{without}");
}

#[test]
fn cross_node_has_four_streams_the_fixed_rate_and_the_unpooled_column() {
    let mut samples = Samples::default();
    for (setup, gbps, p50, p99, rate) in [
        (SetUp::DirectX, 16.0, 100.0, 300.0, 2000.0),
        (SetUp::Hbone, 8.0, 150.0, 420.0, 800.0),
        (SetUp::Sidecars, 4.0, 250.0, 900.0, 300.0),
    ] {
        samples.record(Figure::Bulk4Gbps, setup, gbps);
        samples.record(Figure::RateP50, setup, p50);
        samples.record(Figure::RateP90, setup, p50 * 2.0);
        samples.record(Figure::RateP99, setup, p99);
        samples.record(Figure::ConnRate1, setup, rate);
    }
    samples.record(Figure::Bulk4PlaneCpu, SetUp::Hbone, 1.25);
    samples.record(Figure::ConnRate1, SetUp::HboneUnpooled, 500.0);
    samples.record(Figure::ConnP50Thread1, SetUp::HboneUnpooled, 1900.0);
    let report = Report {
        load_average: [0.1, 0.2, 0.3],
        cpus: 2,
        parameters: json!({}),
        order: vec![
            SetUp::DirectX,
            SetUp::Hbone,
            SetUp::HboneUnpooled,
            SetUp::Sidecars,
        ],
        samples,
        memory: None,
        handshakes: None,
    };
    let table = report.table();
    let row = |label: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("no row {label:?} in {table}"));
        line.split('|')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    };
    // figure | direct-x | hbone | hbone-unpooled | sidecars | three ratios | hbone/sidecars
    let header = row("| figure");
    assert_eq!(
        header[1..5],
        ["direct-x", "hbone", "hbone-unpooled", "sidecars"],
        "{table}"
    );
    assert_eq!(header[6], "hbone-unpooled/direct-x", "{table}");
    assert_eq!(
        row("bulk, 4 parallel streams")[1..],
        ["16.00", "8.00", "—", "4.00", "0.50×", "—", "0.25×", "2.00×"],
        "{table}"
    );
    assert_eq!(row("data-plane CPU-s per GB")[2], "1.25", "{table}");
    assert_eq!(
        row("at 1,000 req/s p50")[5..],
        ["1.50× (+50.0 µs)", "—", "2.50× (+150.0 µs)", "0.60×"],
        "{table}"
    );
    assert_eq!(row("at 1,000 req/s p90")[1], "200", "{table}");
    assert_eq!(row("at 1,000 req/s p99")[5], "1.40× (+120.0 µs)", "{table}");
    assert_eq!(
        row("new connections/s, 1")[1..],
        [
            "2000", "800", "500", "300", "0.40×", "0.25×", "0.15×", "2.67×"
        ],
        "{table}"
    );
    assert!(
        table.contains("--hbone-no-pool"),
        "the note on the unpooled set-up"
    );
    let v = report.json();
    assert_eq!(v["figures"]["bulk4_gbit_s"]["ratio"]["hbone"], json!(0.5));
    assert_eq!(v["figures"]["rate_p50_us"]["added"]["hbone"], json!(50.0));
    assert_eq!(
        v["figures"]["rate_p99_us"]["added"]["sidecars"],
        json!(600.0)
    );
    assert_eq!(
        v["figures"]["conn_rate_t1"]["ratio"]["hbone-unpooled"],
        json!(0.25)
    );
    assert_eq!(v["figures"]["rate_p90_us"]["hbone_vs_sidecars"], json!(0.6));
    assert_eq!(v["setups"]["hbone-unpooled"]["baseline"], json!("direct-x"));
}
