//! 2. Origins: failover in order, timeouts, proxy headers, hop-by-hop removal, HTTPS origins.

use std::time::{Duration, Instant};

use crate::common::*;

/// An edge whose site's first origin refuses connections (nothing listens on its port) and
/// whose second is `live`; and what keeps the first refusing.
async fn dead_then(live: &Origin) -> (Edge, Refusing) {
    let dead = Refusing::new();
    let edge = Edge::start(
        &site(
            "s",
            "demo.test",
            &format!("http://{}, http://{}", dead.addr, live.addr),
            "",
        ),
        "",
    )
    .await;
    (edge, dead)
}

#[tokio::test]
async fn failover_to_the_next_origin_on_connect_failure() {
    let live = Origin::start().await;
    live.always("/", Reply::ok("live").header("cache-control", "max-age=60"));
    let (edge, _dead) = dead_then(&live).await;
    let r = edge.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "live");
}

#[tokio::test]
async fn a_short_request_body_goes_to_the_next_origin_on_connect_failure() {
    let live = Origin::start().await;
    live.always("/form", Reply::ok("taken"));
    let (edge, _dead) = dead_then(&live).await;
    // Nothing reached the first origin, so even a POST goes on, its body with it.
    let r = request_body("POST", edge.addr, "demo.test", "/form", "a=1&b=2").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "taken");
    assert_eq!(live.last("/form").body.as_ref(), b"a=1&b=2");
}

/// Two origins for `path`, the first answering after `delay`, behind an edge that gives an
/// origin 300 ms for the first byte.
async fn slow_then_fast(path: &str, delay: Duration) -> (Origin, Origin, Edge) {
    let slow = Origin::start().await;
    slow.always(path, Reply::ok("slow").delay(delay));
    let fast = Origin::start().await;
    fast.always(path, Reply::ok("fast"));
    let edge = Edge::start(
        &site(
            "s",
            "demo.test",
            &format!("http://{}, http://{}", slow.addr, fast.addr),
            "first_byte_timeout = \"300ms\"",
        ),
        "",
    )
    .await;
    (slow, fast, edge)
}

#[tokio::test]
async fn failover_on_first_byte_timeout_then_504_when_all_time_out() {
    let (slow, _fast, edge) = slow_then_fast("/", Duration::from_secs(5)).await;
    let t = Instant::now();
    let r = edge.get("/").await;
    assert_eq!(r.text(), "fast");
    assert!(t.elapsed() < Duration::from_secs(3));

    let edge = Edge::start(
        &site(
            "s",
            "demo.test",
            &format!("http://{}", slow.addr),
            "first_byte_timeout = \"300ms\"",
        ),
        "",
    )
    .await;
    let r = edge.get("/").await;
    assert_eq!(r.status, 504);
    assert!(
        !r.text().contains("127.0.0.1"),
        "the origin address must not leak: {}",
        r.text()
    );
}

#[tokio::test]
async fn all_origins_down_is_502() {
    let dead = Refusing::new();
    let edge = Edge::start(
        &site("s", "demo.test", &format!("http://{}", dead.addr), ""),
        "",
    )
    .await;
    let r = edge.get("/").await;
    assert_eq!(r.status, 502);
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test]
async fn a_connection_value_with_a_byte_past_ascii_still_names_its_fields_both_ways() {
    let o = Origin::start().await;
    o.always(
        "/h",
        Reply::ok("x")
            .header("cache-control", "max-age=60")
            .header("connection", "x-origin-secret, caf\u{e9}")
            .header("x-origin-secret", "1"),
    );
    let edge = Edge::for_origin(&o).await;
    let asked = [
        ("connection", "x-client-secret, caf\u{e9}"),
        ("x-client-secret", "1"),
    ];
    // A miss (stored), then a hit of what was stored.
    for _ in 0..2 {
        let r = edge.get_with("/h", &asked).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-origin-secret"), "", "{}", r.cache_status());
    }
    assert!(o.last("/h").headers.get("x-client-secret").is_none());
}

#[tokio::test]
async fn proxy_headers_added_and_hop_by_hop_removed_both_ways() {
    let o = Origin::start().await;
    o.always(
        "/h",
        Reply::ok("x")
            .header("connection", "x-origin-secret")
            .header("x-origin-secret", "1")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "yes"),
    );
    let edge = Edge::for_origin(&o).await;
    let r = edge
        .get_with(
            "/h",
            &[
                ("connection", "x-client-secret"),
                ("x-client-secret", "1"),
                ("x-forwarded-for", "192.0.2.1"),
                ("proxy-authorization", "Basic abc"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-kept"), "yes");
    assert_eq!(r.header("x-origin-secret"), "");
    assert_eq!(r.header("keep-alive"), "");
    assert_eq!(r.header("via"), format!("1.1 {}", edge.id));
    let seen = o.last("/h");
    assert!(seen.headers.get("x-client-secret").is_none());
    assert!(seen.headers.get("proxy-authorization").is_none());
    assert_eq!(seen.headers["x-forwarded-for"], "192.0.2.1, 127.0.0.1");
    assert_eq!(
        seen.headers["forwarded"],
        "for=127.0.0.1;proto=http;host=\"demo.test\""
    );
    assert_eq!(seen.headers["via"], format!("1.1 {}", edge.id).as_str());
    assert_eq!(seen.headers["host"], "demo.test");
}

#[tokio::test]
async fn host_header_override_is_sent_to_the_origin() {
    let o = Origin::start().await;
    o.always("/", Reply::ok("x"));
    let edge = Edge::start(
        &site(
            "s",
            "demo.test",
            &format!("http://{}", o.addr),
            "host_header = \"origin.internal\"",
        ),
        "",
    )
    .await;
    edge.get("/").await;
    assert_eq!(o.last("/").headers["host"], "origin.internal");
}

#[tokio::test]
async fn a_request_that_loops_back_is_refused() {
    let o = Origin::start().await;
    let edge = Edge::for_origin(&o).await;
    let via = format!("1.1 other, 1.1 {}", edge.id);
    let r = edge.get_with("/", &[("via", &via)]).await;
    assert_eq!(r.status, 508);
    assert_eq!(o.total(), 0);
}

/// An HTTPS origin on `localhost` whose connections `serve` answers, with a certificate of a new
/// CA; and an edge before it that trusts that CA (its `ca_file` lives as long as the `TempDir`).
async fn edge_before_https_origin<F, Fut>(serve: F) -> (Edge, u16, tempfile::TempDir)
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::Arc;
    let (ca_pem, server_config) = server_signed_by_a_new_ca("localhost");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    serve(tls).await;
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();
    let edge = Edge::start(
        &site(
            "s",
            "demo.test",
            &format!("https://localhost:{port}"),
            &format!("ca_file = {:?}", ca_path.display().to_string()),
        ),
        "",
    )
    .await;
    (edge, port, dir)
}

#[tokio::test]
async fn https_origin_with_a_ca_file() {
    let (edge, port, _dir) = edge_before_https_origin(|tls| async move {
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"over tls"),
            )))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
            .await;
    })
    .await;
    let r = edge.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "over tls");

    // Without the CA, the origin's certificate is not trusted: 502, not a silent plaintext fallback.
    let edge = Edge::start(
        &site("s", "demo.test", &format!("https://localhost:{port}"), ""),
        "",
    )
    .await;
    assert_eq!(edge.get("/").await.status, 502);
}

#[tokio::test]
async fn an_https_origins_answer_framed_by_both_chunks_and_a_length_loses_the_length() {
    // RFC 9112 §6.3, as for plain-HTTP origins (`direct` tests): hyper's client reads the
    // chunks and keeps both fields, and a length kept would frame the decoded body.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (edge, _, _dir) = edge_before_https_origin(|mut tls| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = tls.read(&mut chunk).await {
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let answer = b"HTTP/1.1 200 OK\r\nCache-Control: private\r\n\
                    Transfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n\
                    3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
                if tls.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    for _ in 0..2 {
        let r = edge.get("/both").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello");
        assert_eq!(r.header("content-length"), "");
    }
}

#[tokio::test]
async fn an_https_origin_gets_the_edges_framing_never_the_clients() {
    // A GET's body is dropped on its way (RFC 9110 §9.3.1): the client's `Content-Length` must
    // go with it, or hyper's client frames an empty body by it. An upload's length is the
    // edge's to write.
    let (edge, _, _dir) = edge_before_https_origin(|tls| async move {
        let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async {
            let field = |name| {
                req.headers()
                    .get(name)
                    .map_or("-".to_string(), |v: &http::HeaderValue| {
                        v.to_str().unwrap().to_string()
                    })
            };
            let framing = format!(
                "{} {} ",
                field(http::header::CONTENT_LENGTH),
                field(http::header::TRANSFER_ENCODING)
            );
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut answer = framing.into_bytes();
            answer.extend_from_slice(&body);
            let mut resp =
                http::Response::new(http_body_util::Full::new(bytes::Bytes::from(answer)));
            resp.headers_mut()
                .insert("cache-control", "private".parse().unwrap());
            Ok::<_, std::convert::Infallible>(resp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
            .await;
    })
    .await;
    let get = request_with_body(
        "GET",
        edge.addr,
        "demo.test",
        "/g",
        &[("cache-control", "no-store")],
        "hello",
    )
    .await;
    assert_eq!(get.status, 200);
    assert_eq!(get.text(), "- - ");
    let post = request_body("POST", edge.addr, "demo.test", "/p", "payload").await;
    assert_eq!(post.status, 200);
    assert_eq!(post.text(), "7 - payload");
}

#[tokio::test]
async fn a_post_that_timed_out_is_not_sent_to_the_next_origin() {
    // The first origin may have acted on it: sending it again elsewhere could apply it twice.
    let (_slow, fast, edge) = slow_then_fast("/pay", Duration::from_secs(3)).await;
    let r = request("POST", edge.addr, "demo.test", "/pay", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(fast.count("/pay"), 0);
    // An idempotent method does fail over.
    let r = request("PUT", edge.addr, "demo.test", "/pay", &[]).await;
    assert_eq!(r.text(), "fast");
}

#[tokio::test]
async fn an_origin_caches_cache_status_comes_first_and_is_not_stored() {
    // An origin that is a cache itself (RFC 9211 §2: keep what is there, nearest the origin
    // first); a later hit is this edge's alone.
    let o = Origin::start().await;
    o.always(
        "/c",
        Reply::ok("c")
            .header("cache-control", "max-age=60")
            .header("cache-status", "OriginCache; hit; ttl=100"),
    );
    o.always(
        "/p",
        Reply::ok("p")
            .header("cache-control", "private")
            .header("cache-status", "OriginCache; fwd=uri-miss"),
    );
    let edge = Edge::for_origin(&o).await;
    let r = edge.get("/c").await;
    r.assert_cache_status(
        "OriginCache; hit; ttl=100, meridian; fwd=miss; fwd-status=200; stored; ttl=60",
    );
    let r = edge.get("/c").await;
    assert!(r.is_hit());
    assert!(
        r.cache_status().starts_with("meridian; hit"),
        "{}",
        r.cache_status()
    );
    let r = edge.get("/p").await;
    assert!(
        r.cache_status()
            .starts_with("OriginCache; fwd=uri-miss, meridian; fwd=miss"),
        "{}",
        r.cache_status()
    );
}

/// An origin whose `paths` answer their own path, `private`, after `delay_ms`; and an edge
/// in front of it with `max_origin_requests = limit` and `connect_timeout = wait`.
async fn slow_private_origin(
    paths: &[&str],
    delay_ms: u64,
    limit: usize,
    wait: &str,
) -> (Origin, Edge) {
    let o = Origin::start().await;
    for p in paths {
        o.always(
            p,
            Reply::ok(p)
                .header("cache-control", "private")
                .delay(Duration::from_millis(delay_ms)),
        );
    }
    let edge = Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            // The site's limit, which one client may take whole here.
            &format!("max_origin_requests = {limit}\nmax_origin_requests_per_client = {limit}\nconnect_timeout = \"{wait}\""),
        ),
        "",
    )
    .await;
    (o, edge)
}

/// `max_origin_requests` bounds the requests a site has at its origins at once: one past it
/// waits up to `connect_timeout` for one to end, and gets 503 if none does; a slot is free
/// again once a response body has been read, so later requests go through.
#[tokio::test]
async fn a_site_has_no_more_requests_at_its_origins_than_max_origin_requests() {
    let (o, edge) = slow_private_origin(&["/s1", "/s2", "/s3", "/s4"], 800, 2, "300ms").await;
    let start = Instant::now();
    let (a, b, c) = tokio::join!(edge.get("/s1"), edge.get("/s2"), async {
        // Asked once the other two hold the slots.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = edge.get("/s3").await;
        (r, start.elapsed())
    });
    assert_eq!((a.text(), b.text()), ("/s1".into(), "/s2".into()));
    let (c, after) = c;
    assert_eq!((c.status.as_u16(), c.text()), (503, "origin busy\n".into()));
    assert!(
        after < Duration::from_millis(790),
        "the third waited for a slot past connect_timeout: {after:?}"
    );
    assert_eq!(o.count("/s3"), 0);
    // Both bodies were read: their slots are free.
    let r = edge.get("/s4").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "/s4".into()));
    let metrics = edge.admin_get("/metrics").await.text();
    let busy = metrics
        .lines()
        .find(|l| {
            l.starts_with("meridian_origin_errors_total")
                && l.contains("kind=\"busy\"")
                && l.contains(&format!("node=\"{}\"", edge.id))
        })
        .unwrap_or_default();
    assert!(busy.ends_with(" 1"), "{busy:?}");
    // The third waited for a slot (and gave up); nobody waited for a client's share.
    assert_eq!(origin_waits(&edge, "site_slot").await, 1);
    assert_eq!(origin_waits(&edge, "client_share").await, 0);
}

/// `meridian_origin_waits_total{for}` of the edge's site `demo`, as its `/metrics` shows it.
async fn origin_waits(edge: &Edge, waited_for: &str) -> u64 {
    let metrics = edge.admin_get("/metrics").await.text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("meridian_origin_waits_total")
                && l.contains(&format!("for=\"{waited_for}\""))
                && l.contains("site=\"demo\"")
                && l.contains(&format!("node=\"{}\"", edge.id))
        })
        .unwrap_or_else(|| panic!("no waits for {waited_for} in {metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A request that finds every slot taken gets the first one that frees up.
#[tokio::test]
async fn a_request_past_the_limit_goes_when_a_slot_frees_up() {
    let (_o, edge) = slow_private_origin(&["/a", "/b"], 300, 1, "5s").await;
    let start = Instant::now();
    let (a, b) = tokio::join!(edge.get("/a"), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = edge.get("/b").await;
        (r, start.elapsed())
    });
    assert_eq!(a.text(), "/a");
    let (b, after) = b;
    assert_eq!((b.status.as_u16(), b.text()), (200, "/b".into()));
    // One after the other: /b could only start once /a had ended.
    assert!(after >= Duration::from_millis(590), "{after:?}");
    // A wait that ended in time counts too (the share of one client is the whole site's here).
    assert_eq!(origin_waits(&edge, "site_slot").await, 1);
    assert_eq!(origin_waits(&edge, "client_share").await, 0);
}

/// A client past its share of the site's origin slots (`max_origin_requests_per_client`) waits
/// `connect_timeout` for one of its own and then gets 429; another client asking for the same
/// object meanwhile, collapsed onto the first one's fetch, is not turned away with it: it goes
/// to the origin on its own share.
#[tokio::test]
async fn a_client_past_its_share_gets_429_and_others_collapsed_onto_it_are_still_served() {
    let o = Origin::start().await;
    for p in ["/slow1", "/slow2"] {
        o.always(
            p,
            Reply::ok(p)
                .header("cache-control", "private")
                .delay(Duration::from_millis(1500)),
        );
    }
    o.always(
        "/c",
        Reply::ok("c")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(100)),
    );
    let edge = Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            "max_origin_requests = 8\nmax_origin_requests_per_client = 2\nconnect_timeout = \"300ms\"",
        ),
        "",
    )
    .await;
    let other: std::net::IpAddr = [127, 0, 0, 2].into();
    let (s1, s2, (mine, theirs)) = tokio::join!(edge.get("/slow1"), edge.get("/slow2"), async {
        // Once the two slow ones hold this client's share.
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::join!(edge.get("/c"), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            get_from(other, edge.addr, "demo.test", "/c").await
        })
    });
    assert_eq!((s1.text(), s2.text()), ("/slow1".into(), "/slow2".into()));
    assert_eq!(
        (mine.status.as_u16(), mine.text()),
        (429, "too many of your requests at the origin\n".into())
    );
    assert_eq!((theirs.status.as_u16(), theirs.text()), (200, "c".into()));
}

/// A client at its share waits for one of its own requests to end and then goes on: within
/// `connect_timeout`, it is served, not refused.
#[tokio::test]
async fn a_client_at_its_share_is_served_once_one_of_its_own_ends() {
    let o = Origin::start().await;
    o.always(
        "/slow",
        Reply::ok("slow")
            .header("cache-control", "private")
            .delay(Duration::from_millis(300)),
    );
    o.always("/x", Reply::ok("x").header("cache-control", "private"));
    let edge = Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            "max_origin_requests = 4\nmax_origin_requests_per_client = 1\nconnect_timeout = \"2s\"",
        ),
        "",
    )
    .await;
    let start = Instant::now();
    let (slow, (x, done)) = tokio::join!(edge.get("/slow"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let x = edge.get("/x").await;
        (x, start.elapsed())
    });
    assert_eq!(slow.text(), "slow");
    assert_eq!((x.status.as_u16(), x.text()), (200, "x".into()));
    assert!(
        done >= Duration::from_millis(290),
        "/x waited for /slow's slot: answered after {done:?}"
    );
    // Counted, though it ended in time: an operator sees clients held at their share.
    assert_eq!(origin_waits(&edge, "client_share").await, 1);
    assert_eq!(origin_waits(&edge, "site_slot").await, 0);
}
