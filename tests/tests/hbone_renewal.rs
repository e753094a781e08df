//! Certificate renewal under HBONE: with short-lived workload certificates, a tunnel opened
//! before a renewal keeps carrying bytes past the old certificate's expiry (TLS does not
//! re-check an established session), and a connection opened after the renewal gets a new
//! mTLS handshake with the new certificate (the pool keys connections by certificate epoch).
#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use marrow_tests::metrics::sum;
use marrow_tests::two_nodes::{
    APP_PORT, Mesh, OPENED, eventually, ip, labels, namespaces, principals, v4,
};
use marrow_tests::{Conversation, require_env, spiffe_id};

/// Lifetime of every workload certificate in this test; renewal comes at half of it.
const TTL_SECS: u64 = 6;
const EXPIRY: &str = "marrow_certificate_expiry_timestamp_seconds";
const HBONE_CONNECTIONS: &str = "marrow_hbone_connections_total";

#[test]
fn renewal_keeps_live_tunnels_and_new_connections_use_the_new_certificate() {
    require_env!();
    let mesh = Mesh::start_with("hbone-renew", &["--cert-ttl-secs", &TTL_SECS.to_string()]);
    let client = mesh.n1.add_pod("client", "shop", true);
    let server = mesh.n2.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    mesh.apply(&namespaces().pod(&client, "client").pod(&server, "web"));

    let mut held = Conversation::open(&client, v4(&server, APP_PORT))
        .unwrap_or_else(|f| panic!("opening the long connection: {f:?}"));
    assert_eq!(held.greeting().peer.ip(), ip(&client));
    let client_id = spiffe_id("shop", "client");
    let identity = [("identity", client_id.as_str())];
    let mut first_expiry = 0.0;
    eventually("node 1 exports the client certificate's expiry", || {
        first_expiry = sum(&mesh.p1.metrics(), EXPIRY, &identity);
        if first_expiry > 0.0 {
            Ok(())
        } else {
            Err("no expiry yet".into())
        }
    });
    let handshakes_before = sum(
        &mesh.p1.metrics(),
        HBONE_CONNECTIONS,
        &[("direction", "outbound")],
    );
    assert_eq!(handshakes_before, 1.0, "one pooled connection so far");

    // Talk through the held tunnel until the first certificate has expired.
    let deadline = Instant::now() + Duration::from_secs(TTL_SECS * 3);
    let mut exchanges = 0;
    while unix_now() <= first_expiry + 1.0 {
        assert!(
            Instant::now() < deadline,
            "the first certificate never expired: expiry {first_expiry}, now {}",
            unix_now()
        );
        let text = format!("tick-{exchanges}");
        assert_eq!(
            held.say(&text).expect("the held tunnel keeps working"),
            text
        );
        exchanges += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    let renewed_expiry = sum(&mesh.p1.metrics(), EXPIRY, &identity);
    assert!(
        renewed_expiry > first_expiry,
        "renewed: {first_expiry} -> {renewed_expiry}"
    );
    assert_eq!(
        held.say("after-expiry").expect("still open"),
        "after-expiry"
    );

    // A new connection: a new handshake with the new certificate, and it works.
    let outcome = client.connect(v4(&server, APP_PORT), "after-renewal");
    assert_eq!(outcome.connected().echo, "after-renewal");
    let handshakes_after = sum(
        &mesh.p1.metrics(),
        HBONE_CONNECTIONS,
        &[("direction", "outbound")],
    );
    assert!(
        handshakes_after > handshakes_before,
        "a renewed certificate gets a new connection"
    );
    held.close().expect("a clean close");
    let ids = principals("client", "web");
    eventually(
        "both connections counted as mutual TLS at the server",
        || {
            let m = mesh.p2.metrics();
            match sum(&m, OPENED, &labels("destination", "mutual_tls", &ids)) as u64 {
                2 => Ok(()),
                n => Err(format!("{n} opened\n{m}")),
            }
        },
    );
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}
