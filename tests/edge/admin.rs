//! 10. The admin listener: health, metrics, purge with a bearer token.

use crate::common::*;

async fn setup() -> (Origin, Edge) {
    let o = Origin::start().await;
    for p in ["/a", "/img/1", "/img/2", "/tagged", "/b"] {
        let mut r = Reply::ok(p).header("cache-control", "max-age=600");
        if p == "/tagged" || p == "/b" {
            r = r.header("surrogate-key", "red blue");
        }
        o.always(p, r);
    }
    let e = Edge::for_origin(&o).await;
    for p in ["/a", "/img/1", "/img/2", "/tagged", "/b"] {
        e.get(p).await;
        assert!(e.get(p).await.is_hit());
    }
    (o, e)
}

#[tokio::test]
async fn healthz_and_metrics() {
    let (_o, edge) = setup().await;
    let h = edge.admin_get("/healthz").await;
    assert_eq!(h.status, 200);
    let m = edge.admin_get("/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    let node = format!("node=\"{}\"", edge.id);
    for name in [
        format!("meridian_http_requests_total{{{node},cache=\"hit\",code=\"200\"}} 5"),
        format!("meridian_http_requests_total{{{node},cache=\"miss\",code=\"200\"}} 5"),
        format!("meridian_origin_fetches_total{{{node}}} 5"),
        format!("meridian_cache_stored_objects{{{node}}} 5"),
        format!("meridian_http_sent_bytes_total{{{node}}}"),
        format!("meridian_http_received_bytes_total{{{node}}}"),
        format!("meridian_cache_stored_bytes{{{node}}}"),
        format!("meridian_http_request_duration_seconds_bucket{{{node},cache=\"hit\""),
        format!("meridian_origin_fetch_duration_seconds_bucket{{{node}"),
    ] {
        assert!(text.contains(&name), "missing {name} in\n{text}");
    }
}

#[tokio::test]
async fn purge_needs_the_token_and_changes_nothing_without_it() {
    let (_o, edge) = setup().await;
    let r = edge
        .admin_post("/purge", None, r#"{"url":"http://demo.test/a"}"#)
        .await;
    assert_eq!(r.status, 401);
    let r = edge
        .admin_post("/purge", Some("wrong"), r#"{"url":"http://demo.test/a"}"#)
        .await;
    assert_eq!(r.status, 401);
    assert!(edge.get("/a").await.is_hit());
}

#[tokio::test]
async fn purge_by_url_prefix_and_tag() {
    let (o, edge) = setup().await;
    let r = edge
        .admin_post("/purge", Some(TOKEN), r#"{"url":"http://demo.test/a"}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), r#"{"purged":1}"#);
    assert!(!edge.get("/a").await.is_hit());
    let r = edge
        .admin_post(
            "/purge",
            Some(TOKEN),
            r#"{"prefix":"http://demo.test/img/"}"#,
        )
        .await;
    assert_eq!(r.text().trim(), r#"{"purged":2}"#);
    assert!(!edge.get("/img/1").await.is_hit());
    assert!(!edge.get("/img/2").await.is_hit());
    let r = edge
        .admin_post("/purge", Some(TOKEN), r#"{"tag":"blue"}"#)
        .await;
    assert_eq!(r.text().trim(), r#"{"purged":2}"#);
    assert!(!edge.get("/tagged").await.is_hit());
    assert!(!edge.get("/b").await.is_hit());
    assert_eq!(o.count("/a"), 2);
}

#[tokio::test]
async fn bad_purge_requests_are_400() {
    let (_o, edge) = setup().await;
    for body in [
        "not json",
        r#"{"url":"/relative"}"#,
        r#"{"url":"http://unknown.test/a"}"#,
        r#"{"url":"http://demo.test/a","tag":"x"}"#,
        "{}",
    ] {
        let r = edge.admin_post("/purge", Some(TOKEN), body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains("error"));
    }
    assert!(edge.get("/a").await.is_hit());
}

#[tokio::test]
async fn the_edge_status_counts_requests_and_hits() {
    // What `meridian demo`'s status line shows: five misses then five hits (no gossip, so no
    // load is metered).
    let (_o, e) = setup().await;
    let status = e.node.as_ref().unwrap().edge_status().unwrap();
    assert_eq!((status.requests, status.hits, status.load), (10, 5, 0.0));
}
