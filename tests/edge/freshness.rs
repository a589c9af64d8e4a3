//! 4. RFC 9111 shared-cache semantics.

use std::time::Duration;

use crate::common::*;

async fn setup() -> (Origin, Edge) {
    let o = Origin::start().await;
    let e = Edge::for_origin(&o).await;
    (o, e)
}

#[tokio::test]
async fn miss_then_hit_with_age_and_cache_status() {
    let (o, edge) = setup().await;
    o.always(
        "/a",
        Reply::ok("hello").header("cache-control", "max-age=60"),
    );
    let r = edge.get("/a").await;
    r.assert_cache_status("meridian; fwd=miss; fwd-status=200; stored; ttl=60");
    let r = edge.get("/a").await;
    assert!(
        r.cache_status().starts_with("meridian; hit; ttl="),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.text(), "hello");
    assert!(r.header("age").parse::<u64>().unwrap() <= 1);
    assert_eq!(o.count("/a"), 1);
}

#[tokio::test]
async fn what_a_shared_cache_must_not_store() {
    let (o, edge) = setup().await;
    let cases = [
        (
            "/nostore",
            Reply::ok("x").header("cache-control", "no-store, max-age=60"),
            "no-store",
        ),
        (
            "/private",
            Reply::ok("x").header("cache-control", "private, max-age=60"),
            "private",
        ),
        (
            "/cookie",
            Reply::ok("x")
                .header("cache-control", "max-age=60")
                .header("set-cookie", "s=1"),
            "set-cookie",
        ),
        (
            "/varystar",
            Reply::ok("x")
                .header("cache-control", "max-age=60")
                .header("vary", "*"),
            "vary-star",
        ),
        (
            "/302",
            Reply::ok("x").status(302).header("location", "/"),
            "status",
        ),
        ("/nofresh", Reply::ok("x"), "no-freshness"),
    ];
    for (path, reply, detail) in cases {
        o.always(path, reply);
        let r = edge.get(path).await;
        assert!(
            r.cache_status().contains(&format!("detail={detail}")),
            "{path}: {}",
            r.cache_status()
        );
        let r = edge.get(path).await;
        assert!(!r.is_hit(), "{path} must not be served from cache");
        assert_eq!(o.count(path), 2, "{path}");
    }
}

#[tokio::test]
async fn authorization_needs_an_explicit_shared_directive() {
    let (o, edge) = setup().await;
    o.always(
        "/plain",
        Reply::ok("x").header("cache-control", "max-age=60"),
    );
    o.always(
        "/public",
        Reply::ok("x").header("cache-control", "public, max-age=60"),
    );
    o.always(
        "/smax",
        Reply::ok("x").header("cache-control", "s-maxage=60"),
    );
    let auth = [("authorization", "Bearer t")];
    edge.get_with("/plain", &auth).await;
    assert!(!edge.get("/plain").await.is_hit());
    edge.get_with("/public", &auth).await;
    assert!(edge.get("/public").await.is_hit());
    edge.get_with("/smax", &auth).await;
    assert!(edge.get("/smax").await.is_hit());
}

#[tokio::test]
async fn default_cacheable_statuses_with_explicit_freshness() {
    let (o, edge) = setup().await;
    o.always(
        "/gone",
        Reply::ok("gone")
            .status(404)
            .header("cache-control", "max-age=60"),
    );
    assert_eq!(edge.get("/gone").await.status, 404);
    let r = edge.get("/gone").await;
    assert_eq!(r.status, 404);
    assert!(r.is_hit());
}

#[tokio::test]
async fn s_maxage_over_max_age_over_expires() {
    let (o, edge) = setup().await;
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let exp = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(500));
    o.always(
        "/s",
        Reply::ok("x")
            .header("cache-control", "max-age=10, s-maxage=100")
            .header("expires", &exp)
            .header("date", &date),
    );
    o.always(
        "/m",
        Reply::ok("x")
            .header("cache-control", "max-age=10")
            .header("expires", &exp)
            .header("date", &date),
    );
    o.always(
        "/e",
        Reply::ok("x").header("expires", &exp).header("date", &date),
    );
    // `Date` has whole seconds: a second boundary crossed since it was made ages the answer by
    // one second (the ttl then reads one less).
    let ttl = |r: Got| -> i64 { param(r.cache_status(), "ttl").unwrap().parse().unwrap() };
    let s = ttl(edge.get("/s").await);
    assert!((99..=100).contains(&s), "s-maxage wins: {s}");
    let m = ttl(edge.get("/m").await);
    assert!((9..=10).contains(&m), "max-age over Expires: {m}");
    let e = ttl(edge.get("/e").await);
    assert!((498..=500).contains(&e), "{e}");
}

#[tokio::test]
async fn upstream_age_counts_against_freshness() {
    let (o, edge) = setup().await;
    o.always(
        "/aged",
        Reply::ok("x")
            .header("cache-control", "max-age=100")
            .header("age", "40"),
    );
    let r = edge.get("/aged").await;
    assert!(ttl_about(r.cache_status(), 60), "{}", r.cache_status());
    let r = edge.get("/aged").await;
    assert!(r.is_hit());
    assert_eq!(r.header("age"), "40");
}

#[tokio::test]
async fn heuristic_freshness_only_where_the_site_enables_it() {
    let o = Origin::start().await;
    let began = std::time::Instant::now();
    let lm = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(10_000));
    o.always("/lm", Reply::ok("x").header("last-modified", &lm));
    let off = Edge::for_origin(&o).await;
    off.get("/lm").await;
    // Stored (it has a validator) but never fresh: each use revalidates.
    assert!(!off.get("/lm").await.is_hit());
    let on = Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            "heuristic_freshness = true",
        ),
        "",
    )
    .await;
    let r = on.get("/lm").await;
    let ttl: i64 = param(r.cache_status(), "ttl").unwrap().parse().unwrap();
    // The origin sends no Date: the edge dates the answer on arrival, so a slow machine adds
    // a tenth of the time this test has run so far; `Last-Modified` has whole seconds (up to a
    // second older than meant), and the ttl is rounded up: one more second.
    let most = (10_000 + began.elapsed().as_secs() as i64 + 1) / 10 + 1;
    assert!((990..=most).contains(&ttl), "10% of 10000s: {ttl}");
    assert!(on.get("/lm").await.is_hit());
}

#[tokio::test]
async fn vary_stores_a_variant_per_request_header_value() {
    let (o, edge) = setup().await;
    o.script("/v", |seen, _| {
        let enc = seen
            .headers
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Reply::ok(&format!("enc={enc}"))
            .header("cache-control", "max-age=60")
            .header("vary", "Accept-Encoding")
    });
    assert_eq!(
        edge.get_with("/v", &[("accept-encoding", "gzip")])
            .await
            .text(),
        "enc=gzip"
    );
    let r = edge.get_with("/v", &[("accept-encoding", "br")]).await;
    assert_eq!(r.text(), "enc=br");
    assert!(
        r.cache_status().contains("fwd=vary-miss"),
        "{}",
        r.cache_status()
    );
    let r = edge.get_with("/v", &[("accept-encoding", "gzip")]).await;
    assert!(r.is_hit());
    assert_eq!(r.text(), "enc=gzip");
    let r = edge.get_with("/v", &[("accept-encoding", "br")]).await;
    assert!(r.is_hit());
    assert_eq!(r.text(), "enc=br");
    assert_eq!(o.count("/v"), 2);
}

#[tokio::test]
async fn conditional_revalidation_updates_stored_headers() {
    let (o, edge) = setup().await;
    o.script("/etag", |seen, n| {
        if n > 1
            && seen
                .headers
                .get("if-none-match")
                .map(|v| v == "\"v1\"")
                .unwrap_or(false)
        {
            Reply::ok("")
                .status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=60")
                .header("x-version", "2")
        } else {
            Reply::ok("body-v1")
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=0")
                .header("x-version", "1")
        }
    });
    let r = edge.get("/etag").await;
    assert_eq!(r.header("x-version"), "1");
    let r = edge.get("/etag").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body-v1");
    r.assert_cache_status("meridian; fwd=stale; fwd-status=304; stored; ttl=60");
    assert_eq!(
        r.header("x-version"),
        "2",
        "a 304 updates the stored headers"
    );
    assert_eq!(o.last("/etag").headers["if-none-match"], "\"v1\"");
    let r = edge.get("/etag").await;
    assert!(r.is_hit());
    assert_eq!(r.header("x-version"), "2");
    assert_eq!(o.count("/etag"), 2);
}

#[tokio::test]
async fn if_modified_since_revalidation() {
    let (o, edge) = setup().await;
    let lm = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(3600));
    let lm2 = lm.clone();
    o.script("/ims", move |seen, n| {
        if n > 1 && seen.headers.get("if-modified-since").is_some() {
            Reply::ok("")
                .status(304)
                .header("cache-control", "max-age=60")
        } else {
            Reply::ok("dated")
                .header("last-modified", &lm2)
                .header("cache-control", "no-cache")
        }
    });
    edge.get("/ims").await;
    let r = edge.get("/ims").await;
    assert_eq!(r.text(), "dated");
    assert_eq!(param(r.cache_status(), "fwd-status"), Some("304"));
    assert_eq!(o.last("/ims").headers["if-modified-since"], lm.as_str());
}

#[tokio::test]
async fn no_cache_response_is_revalidated_every_time() {
    let (o, edge) = setup().await;
    o.script("/nc", |seen, _| {
        if seen.headers.get("if-none-match").is_some() {
            Reply::ok("")
                .status(304)
                .header("etag", "\"a\"")
                .header("cache-control", "no-cache, max-age=600")
        } else {
            Reply::ok("nc")
                .header("etag", "\"a\"")
                .header("cache-control", "no-cache, max-age=600")
        }
    });
    for _ in 0..3 {
        assert_eq!(edge.get("/nc").await.text(), "nc");
    }
    assert_eq!(o.count("/nc"), 3);
}

#[tokio::test]
async fn client_conditionals_are_answered_from_cache() {
    let (o, edge) = setup().await;
    o.always(
        "/c",
        Reply::ok("c")
            .header("etag", "\"e1\"")
            .header("cache-control", "max-age=60"),
    );
    edge.get("/c").await;
    let r = edge
        .get_with("/c", &[("if-none-match", "\"zz\", \"e1\"")])
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), "\"e1\"");
    assert!(r.is_hit());
    let r = edge.get_with("/c", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, 200);
    // A cold conditional request is fetched whole (no client validator to origin), then answered.
    o.always(
        "/cold",
        Reply::ok("cold")
            .header("etag", "\"k\"")
            .header("cache-control", "max-age=60"),
    );
    let r = edge.get_with("/cold", &[("if-none-match", "\"k\"")]).await;
    assert_eq!(r.status, 304);
    assert!(o.last("/cold").headers.get("if-none-match").is_none());
    assert_eq!(edge.get("/cold").await.text(), "cold");
}

#[tokio::test]
async fn request_directives() {
    let (o, edge) = setup().await;
    o.always("/r", Reply::ok("r").header("cache-control", "max-age=60"));
    edge.get("/r").await;
    // no-cache: goes forward.
    let r = edge.get_with("/r", &[("cache-control", "no-cache")]).await;
    assert!(
        r.cache_status().contains("fwd=request"),
        "{}",
        r.cache_status()
    );
    assert_eq!(o.count("/r"), 2);
    // Pragma: no-cache without Cache-Control also.
    let r = edge.get_with("/r", &[("pragma", "no-cache")]).await;
    assert!(r.cache_status().contains("fwd=request"));
    // min-fresh beyond the remaining lifetime: forward.
    let r = edge
        .get_with("/r", &[("cache-control", "min-fresh=120")])
        .await;
    assert!(r.cache_status().contains("fwd=request"));
    // max-age=0 from the client: forward.
    let r = edge.get_with("/r", &[("cache-control", "max-age=0")]).await;
    assert!(r.cache_status().contains("fwd=request"));
    // An acceptable max-age: hit.
    assert!(edge
        .get_with("/r", &[("cache-control", "max-age=30")])
        .await
        .is_hit());
    // only-if-cached: hit when stored, 504 otherwise, never forwarded.
    assert!(edge
        .get_with("/r", &[("cache-control", "only-if-cached")])
        .await
        .is_hit());
    let before = o.total();
    let r = edge
        .get_with("/unknown", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 504);
    assert_eq!(o.total(), before);
    // no-store from the client: forwarded and not stored.
    o.always("/ns", Reply::ok("ns").header("cache-control", "max-age=60"));
    edge.get_with("/ns", &[("cache-control", "no-store")]).await;
    assert!(!edge.get("/ns").await.cache_status().contains("hit"));
}

/// `ignore_client_cache_control`: what a client's `Cache-Control` or `Pragma` asks cannot send
/// a stored response back to the origin (a browser's reload sends `no-cache` or `max-age=0`),
/// nor keep one from being stored or used.
#[tokio::test]
async fn a_site_can_ignore_what_clients_ask_of_the_cache() {
    let o = Origin::start().await;
    let sites = site(
        "demo",
        "demo.test",
        &format!("http://{}", o.addr),
        "ignore_client_cache_control = true",
    );
    let edge = Edge::start(&sites, "").await;
    o.always("/r", Reply::ok("r").header("cache-control", "max-age=60"));
    edge.get("/r").await;
    for asks in [
        ("cache-control", "no-cache"),
        ("pragma", "no-cache"),
        ("cache-control", "max-age=0"),
        ("cache-control", "min-fresh=120"),
        ("cache-control", "no-store"),
    ] {
        let r = edge.get_with("/r", &[asks]).await;
        assert!(r.is_hit(), "{asks:?}: {}", r.cache_status());
        assert_eq!(r.text(), "r");
    }
    assert_eq!(o.count("/r"), 1, "the origin was asked once");
    // A client's no-store does not keep a response from being stored either.
    o.always("/ns", Reply::ok("ns").header("cache-control", "max-age=60"));
    edge.get_with("/ns", &[("cache-control", "no-store")]).await;
    assert!(edge.get("/ns").await.is_hit());
    // The origin's own directives still hold.
    o.always("/oc", Reply::ok("oc").header("cache-control", "no-cache"));
    edge.get("/oc").await;
    edge.get("/oc").await;
    assert_eq!(o.count("/oc"), 2);
}

#[tokio::test]
async fn max_stale_allows_stale_but_not_against_must_revalidate() {
    let (o, edge) = setup().await;
    o.always("/ms", Reply::ok("ms").header("cache-control", "max-age=1"));
    o.always(
        "/mr",
        Reply::ok("mr").header("cache-control", "max-age=1, must-revalidate"),
    );
    edge.get("/ms").await;
    edge.get("/mr").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = edge
        .get_with("/ms", &[("cache-control", "max-stale=60")])
        .await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert!(param(r.cache_status(), "ttl").unwrap().starts_with('-'));
    let r = edge
        .get_with("/mr", &[("cache-control", "max-stale=60")])
        .await;
    assert!(!r.is_hit(), "{}", r.cache_status());
    assert_eq!(o.count("/mr"), 2);
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let (o, edge) = setup().await;
    o.always(
        "/h",
        Reply::ok("twelve bytes").header("cache-control", "max-age=60"),
    );
    edge.get("/h").await;
    let r = request("HEAD", edge.addr, "demo.test", "/h", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), "12");
    assert!(r.is_hit());
    assert_eq!(o.count("/h"), 1);
    // A cold HEAD fills the cache with a GET.
    o.always(
        "/h2",
        Reply::ok("abc").header("cache-control", "max-age=60"),
    );
    let r = request("HEAD", edge.addr, "demo.test", "/h2", &[]).await;
    assert!(r.body.is_empty());
    assert_eq!(o.last("/h2").method, "GET");
    assert_eq!(edge.get("/h2").await.text(), "abc");
    assert_eq!(o.count("/h2"), 1);
}

#[tokio::test]
async fn unsafe_methods_are_forwarded_and_invalidate() {
    let (o, edge) = setup().await;
    o.always(
        "/doc",
        Reply::ok("doc").header("cache-control", "max-age=600"),
    );
    o.always(
        "/other",
        Reply::ok("other").header("cache-control", "max-age=600"),
    );
    o.always(
        "/loc",
        Reply::ok("loc").header("cache-control", "max-age=600"),
    );
    o.script("/doc-post", |_, _| {
        Reply::ok("posted")
            .status(201)
            .header("location", "/loc")
            .header("content-location", "http://demo.test/other")
    });
    o.always("/fail", Reply::ok("no").status(500));
    for p in ["/doc", "/other", "/loc"] {
        edge.get(p).await;
        assert!(edge.get(p).await.is_hit());
    }
    // A POST to a stored URL reaches the origin with its body, and its 200 invalidates the URL.
    let r = request_body("POST", edge.addr, "demo.test", "/doc", "payload").await;
    assert_eq!(r.status, 200);
    assert_eq!(o.last("/doc").method, "POST");
    assert_eq!(o.last("/doc").body, "payload");
    assert!(r.cache_status().contains("fwd=method"));
    assert!(!edge.get("/doc").await.is_hit());
    // A POST elsewhere whose Location/Content-Location name stored URLs invalidates those too.
    request_body("POST", edge.addr, "demo.test", "/doc-post", "x").await;
    assert!(!edge.get("/loc").await.is_hit());
    assert!(!edge.get("/other").await.is_hit());
    // A failed unsafe request invalidates nothing.
    o.always(
        "/keep",
        Reply::ok("keep").header("cache-control", "max-age=600"),
    );
    edge.get("/keep").await;
    o.always("/keep", Reply::ok("err").status(500));
    request_body("DELETE", edge.addr, "demo.test", "/keep", "").await;
    assert!(edge.get("/keep").await.is_hit());
    for m in ["PUT", "DELETE", "PATCH"] {
        let r = request_body(m, edge.addr, "demo.test", "/fail", "").await;
        assert_eq!(r.status, 500);
        assert_eq!(o.last("/fail").method, m);
    }
}

/// A `304` that does not repeat `Surrogate-Control` leaves the stored one in force (RFC 9111
/// §4.3.4: what a 304 leaves out stays as stored). Before, the cache kept no copy of it once
/// consumed, and judged the refreshed response by its `Cache-Control` alone (here `max-age=0`:
/// every later request revalidated again).
#[tokio::test]
async fn a_304_without_surrogate_control_keeps_the_stored_one() {
    let (o, edge) = setup().await;
    o.script("/sc304", |seen, n| {
        if n > 1 && seen.headers.get("if-none-match").is_some() {
            Reply::ok("")
                .status(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=0")
        } else {
            Reply::ok("body")
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=0")
                .header("surrogate-control", "max-age=2")
        }
    });
    let r = edge.get("/sc304").await;
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = edge.get("/sc304").await;
    assert_eq!(r.text(), "body");
    assert!(
        r.cache_status()
            .contains("fwd=stale; fwd-status=304; stored"),
        "{}",
        r.cache_status()
    );
    assert_eq!(r.header("surrogate-control"), "");
    let r = edge.get("/sc304").await;
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(o.count("/sc304"), 2);
}
