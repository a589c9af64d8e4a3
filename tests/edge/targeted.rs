//! 6. RFC 9213 targeted fields and 7. RFC 9211 Cache-Status.

use crate::common::*;

#[tokio::test]
async fn cdn_cache_control_overrides_cache_control_for_this_cache_only() {
    let o = Origin::start().await;
    o.always(
        "/t",
        Reply::ok("t")
            .header("cache-control", "no-store")
            .header("cdn-cache-control", "max-age=120"),
    );
    let edge = Edge::for_origin(&o).await;
    let r = edge.get("/t").await;
    assert!(ttl_about(r.cache_status(), 120), "{}", r.cache_status());
    let r = edge.get("/t").await;
    assert!(r.is_hit());
    // Clients still see the origin's Cache-Control.
    assert_eq!(r.header("cache-control"), "no-store");
}

#[tokio::test]
async fn surrogate_control_is_obeyed_and_not_passed_on() {
    let o = Origin::start().await;
    o.always(
        "/sc",
        Reply::ok("sc")
            .header("cache-control", "max-age=5")
            .header("surrogate-control", "max-age=300")
            .header("surrogate-key", "a b"),
    );
    o.always(
        "/nostore",
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("surrogate-control", "no-store"),
    );
    let edge = Edge::for_origin(&o).await;
    let r = edge.get("/sc").await;
    assert!(ttl_about(r.cache_status(), 300), "{}", r.cache_status());
    assert_eq!(r.header("surrogate-control"), "");
    assert_eq!(r.header("surrogate-key"), "");
    assert_eq!(r.header("cache-control"), "max-age=5");
    let r = edge.get("/sc").await;
    assert!(r.is_hit());
    assert_eq!(r.header("surrogate-key"), "");
    edge.get("/nostore").await;
    assert!(!edge.get("/nostore").await.is_hit());
    // CDN-Cache-Control beats Surrogate-Control.
    o.always(
        "/both",
        Reply::ok("b")
            .header("cdn-cache-control", "max-age=7")
            .header("surrogate-control", "max-age=300"),
    );
    let r = edge.get("/both").await;
    assert!(ttl_about(r.cache_status(), 7), "{}", r.cache_status());
}

#[tokio::test]
async fn every_response_carries_cache_status() {
    let o = Origin::start().await;
    o.always("/x", Reply::ok("x").header("cache-control", "max-age=60"));
    let edge = Edge::for_origin(&o).await;
    let miss = edge.get("/x").await;
    // The origin's Date has whole seconds: an answer that crosses a second on its way (a busy
    // test machine) arrives a second old, and its ttl is a second shorter.
    let age: i64 = miss.header("age").parse().unwrap();
    assert!(age <= 1, "age {age}");
    assert_eq!(
        miss.cache_status(),
        format!(
            "meridian; fwd=miss; fwd-status=200; stored; ttl={}",
            60 - age
        )
    );
    let hit = edge.get("/x").await;
    assert!(hit.cache_status().starts_with("meridian; hit"));
    assert!(!hit.header("age").is_empty());
    let post = request_body("POST", edge.addr, "demo.test", "/x", "b").await;
    assert!(
        post.cache_status()
            .starts_with("meridian; fwd=method; fwd-status=200"),
        "{}",
        post.cache_status()
    );
    let refused = get(edge.addr, "nope.test", "/", &[]).await;
    assert!(
        refused.cache_status().starts_with("meridian"),
        "{}",
        refused.cache_status()
    );
    let unknown = edge.get("/not-scripted").await;
    assert!(
        unknown.cache_status().contains("fwd-status=404"),
        "{}",
        unknown.cache_status()
    );
}
