//! Live reconfiguration of an edge: the origin map swapped whole on reload (SIGHUP's path) or
//! when a watched file changes; a broken new map rejected with the old one kept.

use std::time::{Duration, Instant};

use crate::common::{get, site, Edge, Origin, Reply};

async fn origin() -> Origin {
    let origin = Origin::start().await;
    origin.always("/", Reply::ok("page").header("cache-control", "max-age=60"));
    origin
}

#[tokio::test]
async fn a_reloaded_origin_map_serves_new_sites_and_a_broken_one_changes_nothing() {
    let origin = origin().await;
    let a = site("a", "a.test", &format!("http://{}", origin.addr), "");
    let edge = Edge::start(&a, "").await;
    let node = edge.node.as_ref().unwrap();
    assert_eq!(get(edge.addr, "a.test", "/", &[]).await.status, 200);
    assert_eq!(get(edge.addr, "b.test", "/", &[]).await.status, 421);
    let cached = get(edge.addr, "a.test", "/", &[]).await;
    assert!(cached.is_hit());

    let map = edge.dir.path().join("origins.toml");
    let b = site("b", "b.test", &format!("http://{}", origin.addr), "");
    std::fs::write(&map, format!("{a}{b}")).unwrap();
    node.reload().unwrap();
    assert_eq!(get(edge.addr, "b.test", "/", &[]).await.status, 200);
    assert!(
        get(edge.addr, "a.test", "/", &[]).await.is_hit(),
        "the cache outlives a reload"
    );

    // A map with a problem is rejected whole: b.test keeps working, c.test does not appear.
    let c = site("c", "c.test", "ftp://nowhere", "");
    std::fs::write(&map, format!("{a}{b}{c}")).unwrap();
    let err = node.reload().unwrap_err();
    assert!(
        err.contains("origins.toml") && err.contains("site[2].origins[0]"),
        "{err}"
    );
    assert_eq!(get(edge.addr, "b.test", "/", &[]).await.status, 200);
    assert_eq!(get(edge.addr, "c.test", "/", &[]).await.status, 421);
}

#[tokio::test]
async fn a_watched_origin_map_reloads_when_it_changes() {
    let origin = origin().await;
    let a = site("a", "a.test", &format!("http://{}", origin.addr), "");
    let edge = Edge::start(&a, "[reload]\nwatch = \"50ms\"\n").await;
    assert_eq!(get(edge.addr, "b.test", "/", &[]).await.status, 421);
    let b = site("b", "b.test", &format!("http://{}", origin.addr), "");
    std::fs::write(edge.dir.path().join("origins.toml"), format!("{a}{b}")).unwrap();
    let t = Instant::now();
    while get(edge.addr, "b.test", "/", &[]).await.status != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the changed map was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_reload_that_adds_a_role_or_gossip_asks_for_a_restart() {
    let origin = origin().await;
    let a = site("a", "a.test", &format!("http://{}", origin.addr), "");
    let edge = Edge::start(&a, "").await;
    let node_file = edge.dir.path().join("node.toml");
    let node = std::fs::read_to_string(&node_file).unwrap();
    std::fs::write(
        &node_file,
        format!("{node}\n[gossip]\nlisten = \"127.0.0.1:7946\"\ninsecure = true\n"),
    )
    .unwrap();
    let err = edge.node.as_ref().unwrap().reload().unwrap_err();
    assert!(err.contains("gossip") && err.contains("restart"), "{err}");
    assert_eq!(get(edge.addr, "a.test", "/", &[]).await.status, 200);
}
