//! 8. Collapsing: one origin request for many concurrent ones.

use std::time::{Duration, Instant};

use crate::common::*;

#[tokio::test]
async fn two_hundred_concurrent_requests_make_one_origin_request() {
    let o = Origin::start().await;
    o.always(
        "/cold",
        Reply::ok("shared")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(500)),
    );
    let edge = Edge::for_origin(&o).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let addr = edge.addr;
        tasks.push(tokio::spawn(async move {
            let r = get(addr, "demo.test", "/cold", &[]).await;
            (r, start.elapsed())
        }));
    }
    let mut collapsed = 0;
    for t in tasks {
        let (r, _elapsed) = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "shared");
        if r.cache_status().contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(o.count("/cold"), 1, "exactly one origin request");
    assert!(
        collapsed >= 100,
        "most requests were collapsed onto the leader: {collapsed}"
    );
}

#[tokio::test]
async fn uncacheable_response_releases_waiters_to_fetch_at_once() {
    let o = Origin::start().await;
    o.always(
        "/private",
        Reply::ok("mine")
            .header("cache-control", "private")
            .delay(Duration::from_millis(300)),
    );
    let edge = Edge::for_origin(&o).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = edge.addr;
        tasks.push(tokio::spawn(async move {
            get(addr, "demo.test", "/private", &[]).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().text(), "mine");
    }
    // Released waiters go in parallel, not one after another: about two origin delays in all.
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert!(o.count("/private") >= 2);
}

#[tokio::test]
async fn a_client_that_disconnects_does_not_cancel_the_shared_fetch() {
    let o = Origin::start().await;
    o.always(
        "/d",
        Reply::ok("done")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(400)),
    );
    let edge = Edge::for_origin(&o).await;
    // The leader gives up after 100 ms.
    let addr = edge.addr;
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        get(addr, "demo.test", "/d", &[]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = edge.get("/d").await;
    assert!(
        r.is_hit(),
        "the fetch completed and was stored: {}",
        r.cache_status()
    );
    assert_eq!(o.count("/d"), 1);
}

#[tokio::test]
async fn waiters_with_another_variant_fetch_their_own() {
    let o = Origin::start().await;
    o.script("/var", |seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Reply::ok(&lang)
            .header("cache-control", "max-age=60")
            .header("vary", "accept-language")
            .delay(Duration::from_millis(200))
    });
    let edge = Edge::for_origin(&o).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let addr = edge.addr;
        let lang = if i % 2 == 0 { "en" } else { "fr" };
        tasks.push(tokio::spawn(async move {
            (
                lang,
                get(addr, "demo.test", "/var", &[("accept-language", lang)]).await,
            )
        }));
    }
    for t in tasks {
        let (lang, r) = t.await.unwrap();
        assert_eq!(r.text(), lang, "each client gets its own variant");
    }
}
