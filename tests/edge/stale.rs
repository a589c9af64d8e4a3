//! 5. RFC 5861: stale-while-revalidate and stale-if-error; never stale without permission.

use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let o = Origin::start().await;
    o.script("/swr", |_, n| {
        Reply::ok(&format!("v{n}"))
            .header("cache-control", "max-age=1, stale-while-revalidate=30")
            .delay(if n > 1 {
                Duration::from_millis(300)
            } else {
                Duration::ZERO
            })
    });
    let edge = Edge::for_origin(&o).await;
    assert_eq!(edge.get("/swr").await.text(), "v1");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Ten clients at once, all get the stale copy immediately; one refresh happens.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let addr = edge.addr;
        tasks.push(tokio::spawn(async move {
            get(addr, "demo.test", "/swr", &[]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.text(), "v1");
        assert!(
            r.cache_status().contains("detail=stale-while-revalidate"),
            "{}",
            r.cache_status()
        );
        assert!(param(r.cache_status(), "ttl").unwrap().starts_with('-'));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(o.count("/swr"), 2, "exactly one background refresh");
    let r = edge.get("/swr").await;
    assert_eq!(r.text(), "v2");
    assert!(r.is_hit());
}

#[tokio::test]
async fn stale_if_error_on_5xx_and_on_timeout() {
    let o = Origin::start().await;
    o.script("/sie", |_, n| match n {
        1 => Reply::ok("good").header("cache-control", "max-age=1, stale-if-error=60"),
        2 => Reply::ok("broken").status(503),
        _ => Reply::ok("slow").delay(Duration::from_secs(3)),
    });
    let edge = Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            "first_byte_timeout = \"500ms\"",
        ),
        "",
    )
    .await;
    edge.get("/sie").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = edge.get("/sie").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "good");
    let cs = r.cache_status();
    assert!(
        cs.contains("fwd=stale")
            && cs.contains("fwd-status=503")
            && cs.contains("detail=stale-if-error"),
        "{cs}"
    );
    let r = edge.get("/sie").await;
    assert_eq!(
        r.text(),
        "good",
        "served stale after a first-byte timeout too"
    );
    assert!(r.cache_status().contains("detail=stale-if-error"));
}

#[tokio::test]
async fn never_stale_without_permission() {
    let o = Origin::start().await;
    o.script("/strict", |_, n| match n {
        1 => Reply::ok("good").header("cache-control", "max-age=1"),
        _ => Reply::ok("broken").status(503),
    });
    let dead_after = Origin::start().await;
    dead_after.script("/mr", |_, n| match n {
        1 => Reply::ok("good").header(
            "cache-control",
            "max-age=1, must-revalidate, stale-if-error=60, stale-while-revalidate=60",
        ),
        _ => Reply::ok("broken").status(500),
    });
    let edge = Edge::for_origin(&o).await;
    let edge2 = Edge::for_origin(&dead_after).await;
    edge.get("/strict").await;
    edge2.get("/mr").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = edge.get("/strict").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "broken");
    // must-revalidate wins over the RFC 5861 windows.
    let r = edge2.get("/mr").await;
    assert_eq!(r.status, 500);
}
