//! The schedule and the set-up selection of a run.

use super::*;

#[test]
fn rounds_mirror_the_order() {
    use SetUp::{
        Direct, DirectX, EnvoyL7, Hbone, HboneUnpooled, L7Direct, Marrow, Sidecars, Waypoint,
    };
    let quick = selected(&[], true, false);
    assert_eq!(
        schedule(1, &quick),
        [
            Direct,
            Marrow,
            DirectX,
            Hbone,
            HboneUnpooled,
            Sidecars,
            L7Direct,
            Waypoint,
            EnvoyL7,
            EnvoyL7,
            Waypoint,
            L7Direct,
            Sidecars,
            HboneUnpooled,
            Hbone,
            DirectX,
            Marrow,
            Direct
        ]
    );
    assert_eq!(schedule(2, &quick).len(), 36);
    assert_eq!(schedule(1, &selected(&[], false, false)).len(), 24);
    let same = [Direct, Marrow];
    assert_eq!(&schedule(3, &same)[4..8], [Direct, Marrow, Marrow, Direct]);
}

#[test]
fn named_set_ups_bring_their_baselines() {
    use SetUp::{Direct, DirectX, Hbone, Marrow};
    let all: Vec<SetUp> = SetUp::ALL
        .into_iter()
        .filter(|s| *s != SetUp::Ztunnel)
        .collect();
    assert_eq!(selected(&[], false, false), all);
    assert_eq!(selected(&[Hbone], false, false), [DirectX, Hbone]);
    assert_eq!(
        selected(&[SetUp::HboneUnpooled], true, false),
        [DirectX, SetUp::HboneUnpooled]
    );
    assert_eq!(
        selected(&[Hbone, Direct], true, false),
        [Direct, DirectX, Hbone]
    );
    assert_eq!(selected(&[Marrow, Marrow], false, false), [Direct, Marrow]);
    assert_eq!(
        selected(&[SetUp::Sidecars], false, false),
        [DirectX, SetUp::Sidecars]
    );
    assert_eq!(
        selected(&[SetUp::Waypoint], false, false),
        [SetUp::L7Direct, SetUp::Waypoint]
    );
}

#[test]
fn quick_leaves_the_traffic_variants_out_unless_named() {
    use SetUp::{L7Direct, Waypoint, WaypointRetry, WaypointRoute, WaypointRoutes};
    let traffic = [WaypointRoute, WaypointRoutes, WaypointRetry];
    let quick = selected(&[], true, false);
    assert!(traffic.iter().all(|s| !quick.contains(s)), "{quick:?}");
    assert!(quick.contains(&Waypoint) && quick.contains(&SetUp::EnvoyL7));
    let full = selected(&[], false, false);
    assert!(traffic.iter().all(|s| full.contains(s)), "{full:?}");
    assert_eq!(
        selected(
            &[Waypoint, WaypointRoute, WaypointRoutes, WaypointRetry],
            true,
            false
        ),
        [
            L7Direct,
            Waypoint,
            WaypointRoute,
            WaypointRoutes,
            WaypointRetry
        ]
    );
}

#[test]
fn ztunnel_runs_only_with_its_binary() {
    use SetUp::{DirectX, Hbone, Sidecars, Ztunnel};
    assert!(!selected(&[], true, false).contains(&Ztunnel));
    assert!(!selected(&[], false, false).contains(&Ztunnel));
    assert_eq!(selected(&[], false, true), SetUp::ALL);
    assert!(selected(&[], true, true).contains(&Ztunnel));
    assert_eq!(
        selected(&[Hbone, Ztunnel], true, true),
        [DirectX, Hbone, Ztunnel]
    );
    let quick = selected(&[], true, true);
    assert_eq!(
        &schedule(1, &quick)[2..7],
        [DirectX, Hbone, SetUp::HboneUnpooled, Sidecars, Ztunnel],
        "ztunnel runs in the cross-node group, A B B A"
    );
}
