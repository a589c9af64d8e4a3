//! 1. Sites by Host; unknown hosts and foreign absolute-form targets get 421.

use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn host_picks_the_site_case_insensitively_and_ignores_port() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    a.always(
        "/",
        Reply::ok("from a").header("cache-control", "max-age=60"),
    );
    b.always(
        "/",
        Reply::ok("from b").header("cache-control", "max-age=60"),
    );
    let sites = site("a", "a.test", &format!("http://{}", a.addr), "")
        + &site("b", "b.test", &format!("http://{}", b.addr), "");
    let edge = Edge::start(&sites, "").await;
    assert_eq!(get(edge.addr, "a.test", "/", &[]).await.text(), "from a");
    assert_eq!(
        get(edge.addr, "B.Test:8080", "/", &[]).await.text(),
        "from b"
    );
    assert_eq!(get(edge.addr, "b.test.", "/", &[]).await.text(), "from b");
    // Each site has its own cache: both were fetched once, the repeat is a hit.
    assert!(get(edge.addr, "A.TEST", "/", &[]).await.is_hit());
    assert_eq!(a.count("/"), 1);
    assert_eq!(b.count("/"), 1);
}

#[tokio::test]
async fn unknown_host_is_misdirected_and_nothing_reaches_an_origin() {
    let o = Origin::start().await;
    o.always("/", Reply::ok("x"));
    let edge = Edge::for_origin(&o).await;
    let r = get(edge.addr, "evil.test", "/", &[]).await;
    assert_eq!(r.status, 421);
    // A request with no Host at all (HTTP/1.0 style) is refused too.
    let raw = raw(edge.addr, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(2)).await;
    assert!(
        raw.starts_with("HTTP/1.0 421") || raw.starts_with("HTTP/1.1 421"),
        "{raw}"
    );
    assert_eq!(o.total(), 0);
}

#[tokio::test]
async fn absolute_form_for_another_host_is_refused_never_proxied() {
    let o = Origin::start().await;
    o.always("/", Reply::ok("ours"));
    let edge = Edge::for_origin(&o).await;
    // An open proxy would fetch http://example.invalid/; the edge must not.
    let r = raw(
        edge.addr,
        b"GET http://example.invalid/ HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 421"), "{r}");
    // Absolute-form naming our own host is served.
    let r = raw(
        edge.addr,
        b"GET http://demo.test/ HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(o.total(), 1);
}

#[tokio::test]
async fn wildcard_site_takes_any_host() {
    let o = Origin::start().await;
    o.always("/x", Reply::ok("any"));
    let edge = Edge::start(&site("all", "*", &format!("http://{}", o.addr), ""), "").await;
    assert_eq!(
        get(edge.addr, "whatever.example", "/x", &[]).await.text(),
        "any"
    );
    assert_eq!(get(edge.addr, "other.example", "/x", &[]).await.status, 200);
}
