//! The headers both ways: what marrow writes is what ztunnel writes (its own test strings), what
//! ztunnel writes parses, and hostile values are dropped field by field.

use super::*;

fn web() -> Baggage {
    Baggage {
        cluster: Some("Kubernetes".into()),
        namespace: Some("shop".into()),
        workload: Some((WorkloadType::Deployment, "web".into())),
        service: Some("web".into()),
        version: Some("v1".into()),
        ..Baggage::default()
    }
}

#[test]
fn baggage_is_written_as_ztunnel_writes_it_and_read_back() {
    let text = web().encode();
    assert_eq!(
        text,
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=web,\
         service.name=web,service.version=v1"
    );
    assert_eq!(Baggage::parse([text.as_str()]), web());
    assert_eq!(Baggage::default().encode(), "");
    assert_eq!(Baggage::parse([""]), Baggage::default());
    let everything = Baggage {
        workload: Some((WorkloadType::CronJob, "nightly".into())),
        region: Some("eu-west-1".into()),
        zone: Some("eu-west-1a".into()),
        ..web()
    };
    assert_eq!(Baggage::parse([everything.encode().as_str()]), everything);
}

#[test]
fn baggage_reads_what_ztunnel_sends_in_one_header_or_several() {
    // ztunnel's src/baggage.rs test strings.
    let one = Baggage::parse([
        "k8s.cluster.name=K1,k8s.namespace.name=NS1,k8s.deployment.name=N1,service.name=N2,service.version=V1",
    ]);
    let several = Baggage::parse([
        "k8s.cluster.name=K1",
        "k8s.namespace.name=NS1",
        "k8s.deployment.name=N1",
        "service.name=N2",
        "service.version=V1",
    ]);
    let expected = Baggage {
        cluster: Some("K1".into()),
        namespace: Some("NS1".into()),
        workload: Some((WorkloadType::Deployment, "N1".into())),
        service: Some("N2".into()),
        version: Some("V1".into()),
        ..Baggage::default()
    };
    assert_eq!(one, expected);
    assert_eq!(several, expected);
    for kind in WorkloadType::ALL {
        let text = format!("k8s.{}.name=w", kind.as_str());
        assert_eq!(
            Baggage::parse([text.as_str()]).workload,
            Some((kind, "w".to_owned())),
            "{text}"
        );
    }
    assert_eq!(
        Baggage::parse(["k8s.statefulset.name=db"]).workload,
        None,
        "not a kind ztunnel reads"
    );
    let empty = Baggage::parse([
        "k8s.cluster.name=,k8s.namespace.name=,k8s.deployment.name=,service.name=,service.version=",
    ]);
    assert_eq!(empty, Baggage::default());
}

#[test]
fn baggage_drops_junk_and_keeps_the_rest() {
    let parsed = Baggage::parse([
        "garbage,=x,other=1, k8s.namespace.name = shop ;prop=1;p2,service.name=web;ttl=5",
    ]);
    assert_eq!(
        parsed,
        Baggage {
            namespace: Some("shop".into()),
            service: Some("web".into()),
            ..Baggage::default()
        }
    );
}

#[test]
fn baggage_values_are_escaped_and_unescaped() {
    let odd = Baggage {
        cluster: Some("east, \"1\"; 100%".into()),
        ..Baggage::default()
    };
    let text = odd.encode();
    assert_eq!(text, "k8s.cluster.name=east%2C%20%221%22%3B%20100%25");
    assert_eq!(Baggage::parse([text.as_str()]), odd);
    assert_eq!(
        Baggage::parse(["k8s.cluster.name=caf%C3%A9"])
            .cluster
            .as_deref(),
        Some("café")
    );
}

#[test]
fn baggage_drops_hostile_values() {
    let long = "a".repeat(MAX_BAGGAGE_VALUE_LEN + 1);
    let cases = [
        format!("k8s.namespace.name={long}"),
        "k8s.namespace.name=%zz".into(),
        "k8s.namespace.name=%4".into(),
        "k8s.namespace.name=%+1".into(),
        "k8s.namespace.name=bad%".into(),
        "k8s.namespace.name=two words".into(),
        "k8s.namespace.name=line%0Abreak".into(),
        "k8s.namespace.name=%FF%FE".into(),
        "k8s.namespace.name=quote\"d".into(),
        "k8s.namespace.name=caf\u{e9}".into(),
    ];
    for case in &cases {
        assert_eq!(
            Baggage::parse([case.as_str(), "service.name=web"]),
            Baggage {
                service: Some("web".into()),
                ..Baggage::default()
            },
            "{case}"
        );
    }
    let just_fits = "a".repeat(MAX_BAGGAGE_VALUE_LEN);
    let text = format!("k8s.namespace.name={just_fits}");
    assert_eq!(
        Baggage::parse([text.as_str()]).namespace.as_deref(),
        Some(just_fits.as_str())
    );
    // A header over W3C's limit is ignored whole; the next one still counts.
    let oversize = format!("service.name=web,other={}", "x".repeat(MAX_BAGGAGE_LEN));
    assert_eq!(
        Baggage::parse([oversize.as_str(), "k8s.namespace.name=shop"]),
        Baggage {
            namespace: Some("shop".into()),
            ..Baggage::default()
        }
    );
}

#[test]
fn baggage_keys_given_twice_must_agree() {
    let agreeing = Baggage::parse(["k8s.namespace.name=shop", "k8s.namespace.name=shop"]);
    assert_eq!(agreeing.namespace.as_deref(), Some("shop"));
    let differing =
        Baggage::parse(["k8s.namespace.name=shop,service.name=web,k8s.namespace.name=kube-system"]);
    assert_eq!(differing.namespace, None, "ambiguous");
    assert_eq!(
        differing.service.as_deref(),
        Some("web"),
        "the rest is kept"
    );
    let two_kinds = Baggage::parse(["k8s.deployment.name=web,k8s.pod.name=web"]);
    assert_eq!(two_kinds.workload, None, "two workload kinds are ambiguous");
    // A bad copy of a key does not hide a good one.
    let bad_copy = Baggage::parse(["k8s.namespace.name=%zz,k8s.namespace.name=shop"]);
    assert_eq!(bad_copy.namespace.as_deref(), Some("shop"));
}

#[test]
fn forwarded_is_written_as_ztunnel_writes_it() {
    // ztunnel's src/proxy/outbound.rs `build_forwarded` test strings.
    let plain = Forwarded {
        for_addr: Some("127.0.0.1:80".parse().unwrap()),
        host: None,
    };
    assert_eq!(plain.encode(), r#"for="127.0.0.1:80""#);
    let v6 = Forwarded {
        for_addr: Some("[::1]:80".parse().unwrap()),
        host: None,
    };
    assert_eq!(v6.encode(), r#"for="[::1]:80""#);
    let service = Forwarded {
        host: Some("example.com".into()),
        ..plain.clone()
    };
    assert_eq!(service.encode(), r#"for="127.0.0.1:80";host=example.com"#);
    for f in [plain, v6, service] {
        assert_eq!(Forwarded::parse(&f.encode()), f);
    }
}

#[test]
fn forwarded_host_reads_as_ztunnel_reads_it() {
    // ztunnel's src/proxy.rs `parse_forwarded_host` test strings.
    let host = |text: &str| Forwarded::parse(text).host;
    assert_eq!(
        host("by=identifier;for=identifier;host=example.com;proto=https").as_deref(),
        Some("example.com")
    );
    assert_eq!(
        host("by=identifier;for=identifier;host=\"example.com\";proto=https").as_deref(),
        Some("example.com")
    );
    assert_eq!(host("by=identifier;for=identifier;proto=https"), None);
    assert_eq!(host("by=identifier;for=identifier;host=;proto=https"), None);
    assert_eq!(host(r#"for=for;by=by;host=host;proto="pröto""#), None);
}

#[test]
fn forwarded_drops_hostile_parameters() {
    let parse = Forwarded::parse;
    let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
    // Names are case-insensitive; host names are compared in lowercase.
    let mixed = parse(r#"FOR="10.0.0.1:5000";Host=Web.Shop.svc.cluster.local"#);
    assert_eq!(mixed.for_addr, addr("10.0.0.1:5000"));
    assert_eq!(mixed.host.as_deref(), Some("web.shop.svc.cluster.local"));
    // A parameter twice in one element is ambiguous: dropped, the other kept.
    let twice = parse(r#"for="10.0.0.1:5000";host=a.svc;host=b.svc"#);
    assert_eq!((twice.for_addr, twice.host), (addr("10.0.0.1:5000"), None));
    // Only the first element counts (a later proxy's cannot name the Service).
    let chain = parse(r#"for="10.0.0.1:5000", for="10.9.9.9:1";host=evil.svc"#);
    assert_eq!((chain.for_addr, chain.host), (addr("10.0.0.1:5000"), None));
    // Host names that are not DNS names are dropped.
    for bad in [
        r#"host="a b""#,
        r#"host="evil.svc\",x""#,
        "host=-lead.svc",
        "host=a..b",
        "host=under_score.svc",
        &format!("host={}", "a".repeat(64)),
    ] {
        assert_eq!(parse(bad).host, None, "{bad}");
    }
    // Malformed elements yield nothing.
    for bad in [r#"for="10.0.0.1:5000"#, "for", "for=\"1.2.3.4:5\"x;host=a"] {
        assert_eq!(parse(bad), Forwarded::default(), "{bad}");
    }
    assert_eq!(parse("for=unknown").for_addr, None);
    assert_eq!(parse(r#"for="_hidden""#).for_addr, None);
    assert_eq!(
        parse(r#"proto=https;for="[fd00::1]:5000""#).for_addr,
        addr("[fd00::1]:5000")
    );
    let oversize = format!("host=a.svc;x={}", "y".repeat(MAX_FORWARDED_LEN));
    assert_eq!(parse(&oversize), Forwarded::default());
}

#[test]
fn traceparent_formats_and_parses() {
    let t = TraceParent::random();
    assert_eq!(TraceParent::parse(&t.to_string()), Some(t));
    let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(TraceParent::parse(good).unwrap().to_string(), good);
    for bad in [
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert_eq!(TraceParent::parse(bad), None, "{bad}");
    }
}
