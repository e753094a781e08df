//! Open connections follow policy, on two nodes: a held HBONE connection and a held plaintext
//! connection are closed soon after a new DENY reaches the destination's proxy, counted with
//! `response_flags="DENY"` and logged with the deciding policy, while an unrelated connection
//! held beside them goes on echoing.

use std::time::{Duration, Instant};

use marrow_tests::metrics::count;
use marrow_tests::two_nodes::{APP_PORT, CLOSED, Cast, DENY_PORT_8080, eventually, v4};
use marrow_tests::{Conversation, require_env};

const OTHER_PORT: u16 = 9090;

/// Says `ping` every 50 ms until the connection fails; how long that took, or `None` when it
/// still echoed after `within`.
fn closed_within(conversation: &mut Conversation, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        match conversation.say("ping") {
            Ok(echo) => assert_eq!(echo, "ping"),
            Err(_) => return Some(started.elapsed()),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_new_deny_closes_the_open_connections_it_denies_and_only_those() {
    require_env!();
    let cast = Cast::start("live-policy", &[APP_PORT, OTHER_PORT]);
    let (mesh, client, outsider, web) = (&cast.mesh, &cast.client, &cast.outsider, &cast.web);

    let mut hbone = Conversation::open(client, v4(web, APP_PORT)).expect("HBONE connection");
    let mut plain = Conversation::open(outsider, v4(web, APP_PORT)).expect("plaintext one");
    let mut other = Conversation::open(client, v4(web, OTHER_PORT)).expect("unrelated one");
    for c in [&mut hbone, &mut plain, &mut other] {
        assert_eq!(c.say("before").expect("echo before the policy"), "before");
    }

    // Returns once node 2's proxy has applied the new state.
    mesh.apply_with(&cast.state, DENY_PORT_8080);
    let within = Duration::from_secs(1);
    let hbone_closed = closed_within(&mut hbone, within);
    let plain_closed = closed_within(&mut plain, within);
    println!("closed {hbone_closed:?} (HBONE) and {plain_closed:?} (plaintext) after the state");
    assert!(
        hbone_closed.is_some(),
        "the HBONE connection still echoes {within:?} after the DENY"
    );
    assert!(
        plain_closed.is_some(),
        "the plaintext connection still echoes {within:?} after the DENY"
    );
    assert_eq!(
        other
            .say("after")
            .expect("the unrelated connection is untouched"),
        "after"
    );

    eventually("both closures counted as DENY and logged", || {
        let m = mesh.p2.metrics();
        let closed = count(
            &m,
            CLOSED,
            &[("reporter", "destination"), ("response_flags", "DENY")],
        );
        let denials = count(
            &m,
            "marrow_policy_denials_total",
            &[("reason", "deny_policy")],
        );
        let log = mesh.p2.log();
        let logged = log
            .lines()
            .filter(|l| l.contains("no longer allowed by policy") && l.contains("shop/no-8080"))
            .count();
        if closed == 2 && denials == 2 && logged == 2 {
            Ok(())
        } else {
            Err(format!(
                "closed DENY {closed}, denials {denials}, logged {logged}\n{m}"
            ))
        }
    });
    // New connections are refused as before, and the unrelated one still works afterwards.
    assert!(!client.connect(v4(web, APP_PORT), "new").is_ok());
    assert_eq!(other.say("still").expect("still echoing"), "still");
    other
        .close()
        .expect("the unrelated connection closes cleanly");
}
