//! Hardening: what an attacker on the internet can make the edge do to the origin, to the cache
//! and to other users. Raw sockets where a client library would refuse to send the bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An origin that answers each request head at once and only then reads past the body its
/// Content-Length announced, on a keep-alive connection (as nginx does for static files and
/// `return`). It answers with the path of the request line it parsed, and records the lines.
async fn eager_origin(lines: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    raw_origin(move |mut s| {
        let lines = lines.clone();
        async move {
            let mut buf = Vec::new();
            let mut skip = 0usize;
            let mut chunk = [0u8; 4096];
            loop {
                while skip > 0 {
                    if buf.is_empty() {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let n = skip.min(buf.len());
                    buf.drain(..n);
                    skip -= n;
                }
                let end = loop {
                    if let Some(i) = find(&buf, b"\r\n\r\n") {
                        break i + 4;
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end);
                let line = head.lines().next().unwrap_or("").to_string();
                lines.lock().unwrap().push(line.clone());
                skip = head
                    .lines()
                    .find_map(|l| {
                        let l = l.to_ascii_lowercase();
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                let path = line.split(' ').nth(1).unwrap_or("?").to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=60\r\n\r\n{path}",
                    path.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

fn demo_site(origin: SocketAddr, extra: &str) -> String {
    site("demo", "demo.test", &format!("http://{origin}"), extra)
}

// ---- Request bodies on GET and HEAD ---------------------------------------------------------

#[tokio::test]
async fn a_get_with_a_body_reaches_the_origin_without_it_or_its_framing() {
    let o = Origin::start().await;
    o.always("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    o.always("/h", Reply::ok("h").header("cache-control", "max-age=60"));
    let edge = Edge::start(&demo_site(o.addr, "first_byte_timeout = \"3s\""), "").await;
    let smuggled = "GET /evil HTTP/1.1\r\nHost: demo.test\r\n\r\n";
    let attack = format!(
        "GET /a HTTP/1.1\r\nHost: demo.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let start = Instant::now();
    let r = raw(edge.addr, attack.as_bytes(), Duration::from_secs(5)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("\r\n\r\na"), "{r}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "answered at once, not after the first-byte timeout: {:?}",
        start.elapsed()
    );
    let seen = o.last("/a");
    assert!(seen.headers.get("content-length").is_none(), "{seen:?}");
    assert!(seen.headers.get("transfer-encoding").is_none(), "{seen:?}");
    assert!(seen.body.is_empty());
    assert_eq!(o.count("/evil"), 0);

    // A HEAD with a chunked body: the same rule.
    let attack = b"HEAD /h HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let r = raw(edge.addr, attack, Duration::from_secs(5)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = o.last("/h");
    assert!(seen.headers.get("content-length").is_none(), "{seen:?}");
    assert!(seen.headers.get("transfer-encoding").is_none(), "{seen:?}");
    assert!(seen.body.is_empty());
}

#[tokio::test]
async fn a_get_with_a_body_cannot_desync_a_pooled_origin_connection() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let addr = eager_origin(lines.clone()).await;
    let edge = Edge::start(&demo_site(addr, ""), "").await;
    let attack = b"GET /a HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 16\r\nConnection: close\r\n\r\nxxxxxxxxxxxxxxxx";
    let r = raw(edge.addr, attack, Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The next user's request travels on the same pooled origin connection and is read whole.
    let r = edge.get("/b").await;
    assert_eq!(r.text(), "/b");
    assert_eq!(
        *lines.lock().unwrap(),
        ["GET /a HTTP/1.1", "GET /b HTTP/1.1"]
    );
}

#[tokio::test]
async fn an_http2_get_with_data_frames_reaches_the_origin_without_them() {
    let o = Origin::start().await;
    o.always("/a", Reply::ok("a").header("cache-control", "max-age=60"));
    let edge = Edge::start(&demo_site(o.addr, "first_byte_timeout = \"3s\""), "").await;
    let mut send = h2c::<Full<Bytes>>(edge.addr).await;
    let req = Request::get("http://demo.test/a")
        .version(Version::HTTP_2)
        .header("content-length", "5")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(start.elapsed() < Duration::from_secs(2));
    let seen = o.last("/a");
    assert!(seen.headers.get("content-length").is_none(), "{seen:?}");
    assert!(seen.body.is_empty());
}

#[tokio::test]
async fn bodies_of_other_methods_reach_the_origin_whole_with_matching_framing() {
    let o = Origin::start().await;
    o.always("/p", Reply::ok("done"));
    let edge = Edge::for_origin(&o).await;
    let r = request_body("POST", edge.addr, "demo.test", "/p", "hello world").await;
    assert_eq!(r.text(), "done");
    let seen = o.last("/p");
    assert_eq!(&seen.body[..], b"hello world");
    assert_eq!(seen.headers["content-length"], "11");
    // A chunked upload stays chunked.
    let chunked = b"PUT /p HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = raw(edge.addr, chunked, Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = o.last("/p");
    assert_eq!(seen.method, "PUT");
    assert_eq!(&seen.body[..], b"hello world");
}

// ---- Set-Cookie -----------------------------------------------------------------------------

/// The origin gives each request its own session cookie: alice, then bob, ...
fn cookie_per_request(o: &Origin, path: &str, control: (&'static str, &'static str)) {
    o.script(path, move |_, n| {
        let who = ["alice", "bob", "carol", "dave"][(n - 1).min(3)];
        Reply::ok("page")
            .header(control.0, control.1)
            .header("set-cookie", &format!("session={who}"))
    });
}

#[tokio::test]
async fn a_response_with_set_cookie_is_not_stored_whatever_its_cache_directives() {
    let o = Origin::start().await;
    cookie_per_request(&o, "/s", ("cache-control", "s-maxage=60"));
    cookie_per_request(&o, "/c", ("cdn-cache-control", "max-age=60"));
    cookie_per_request(&o, "/p", ("cache-control", "public, max-age=60"));
    let edge = Edge::for_origin(&o).await;
    for path in ["/s", "/c", "/p"] {
        let alice = edge.get(path).await;
        assert_eq!(alice.header("set-cookie"), "session=alice");
        assert!(
            alice.cache_status().contains("detail=set-cookie"),
            "{path}: {}",
            alice.cache_status()
        );
        let bob = edge.get(path).await;
        assert_eq!(bob.header("set-cookie"), "session=bob", "{path}");
        assert!(!bob.is_hit());
        assert_eq!(o.count(path), 2);
    }
}

#[tokio::test]
async fn a_site_that_opts_in_stores_such_responses_without_the_cookie() {
    let o = Origin::start().await;
    cookie_per_request(&o, "/s", ("cache-control", "max-age=60"));
    let edge = Edge::start(&demo_site(o.addr, "strip_set_cookie = true"), "").await;
    // Concurrent requests: the one that caused the fetch gets its cookie, followers do not.
    let (a, b) = tokio::join!(edge.get("/s"), edge.get("/s"));
    let cookies: Vec<&str> = [&a, &b].iter().map(|r| r.header("set-cookie")).collect();
    assert_eq!(
        cookies.iter().filter(|c| **c == "session=alice").count(),
        1,
        "{cookies:?}"
    );
    assert!(cookies
        .iter()
        .all(|c| *c == "session=alice" || c.is_empty()));
    let hit = edge.get("/s").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert!(hit.headers.get("set-cookie").is_none());
    assert_eq!(o.count("/s"), 1);
}

#[tokio::test]
async fn a_cookie_on_a_304_never_reaches_the_stored_copy() {
    for strip in [false, true] {
        let o = Origin::start().await;
        o.script("/r", |seen, _| {
            let r = Reply::ok("r")
                .header("etag", "\"v1\"")
                .header("cache-control", "s-maxage=1");
            if seen.headers.contains_key("if-none-match") {
                r.status(304).header("set-cookie", "session=bob")
            } else {
                r
            }
        });
        let edge = Edge::start(
            &demo_site(o.addr, &format!("strip_set_cookie = {strip}")),
            "",
        )
        .await;
        assert_eq!(edge.get("/r").await.text(), "r");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let revalidated = edge.get("/r").await;
        assert_eq!(revalidated.text(), "r");
        assert!(
            revalidated.cache_status().contains("fwd-status=304"),
            "{}",
            revalidated.cache_status()
        );
        let next = edge.get("/r").await;
        assert!(
            next.headers.get("set-cookie").is_none(),
            "strip_set_cookie = {strip}: {:?}",
            next.headers
        );
    }
}

// ---- Connection, Host and scheme ------------------------------------------------------------

#[tokio::test]
async fn connection_cannot_remove_host_or_desynchronise_a_variant() {
    let o = Origin::start().await;
    o.script("/h", |seen, _| {
        let host = seen
            .headers
            .get("host")
            .map(|h| h.to_str().unwrap().to_string());
        Reply::ok(&host.unwrap_or_else(|| "none".into())).header("cache-control", "max-age=60")
    });
    o.script("/lang", |seen, _| {
        let lang = seen
            .headers
            .get("accept-language")
            .map(|h| h.to_str().unwrap().to_string());
        Reply::ok(&lang.unwrap_or_else(|| "none".into()))
            .header("vary", "accept-language")
            .header("cache-control", "max-age=60")
    });
    let edge = Edge::for_origin(&o).await;
    let r = raw(
        edge.addr,
        b"GET /h HTTP/1.1\r\nHost: demo.test\r\nConnection: close, Host\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(r.ends_with("\r\n\r\ndemo.test"), "{r}");
    assert_eq!(o.last("/h").headers["host"], "demo.test");

    // A client that names a selecting header in Connection gets the variant the origin made
    // without it, stored for requests without it.
    let r = raw(
        edge.addr,
        b"GET /lang HTTP/1.1\r\nHost: demo.test\r\nAccept-Language: fr\r\nConnection: close, Accept-Language\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(r.ends_with("none"), "{r}");
    let french = edge.get_with("/lang", &[("accept-language", "fr")]).await;
    assert_eq!(french.text(), "fr", "{}", french.cache_status());
    let plain = edge.get("/lang").await;
    assert_eq!(plain.text(), "none");
    assert!(plain.is_hit());
}

#[tokio::test]
async fn the_origin_sees_the_host_the_cache_holds_answers_for() {
    let o = Origin::start().await;
    o.script("/redir", |seen, _| {
        let host = seen.headers["host"].to_str().unwrap().to_string();
        Reply::ok("")
            .status(301)
            .header("location", &format!("http://{host}/home"))
            .header("cache-control", "max-age=60")
    });
    let edge = Edge::for_origin(&o).await;
    let attack = raw(
        edge.addr,
        b"GET /redir HTTP/1.1\r\nHost: DEMO.test.:666\r\nX-Forwarded-Host: evil.test\r\n\
X-Forwarded-Proto: https\r\nForwarded: host=evil.test;proto=https\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(attack.starts_with("HTTP/1.1 301"), "{attack}");
    let seen = o.last("/redir");
    assert_eq!(seen.headers["host"], "demo.test");
    let forwarded: Vec<_> = seen.headers.get_all("forwarded").iter().collect();
    assert_eq!(forwarded.len(), 1, "{forwarded:?}");
    let forwarded = forwarded[0].to_str().unwrap();
    assert!(forwarded.contains("host=\"demo.test\""), "{forwarded}");
    assert!(seen.headers.get("x-forwarded-host").is_none());
    assert!(seen.headers.get("x-forwarded-proto").is_none());
    let user = edge.get("/redir").await;
    assert_eq!(user.header("location"), "http://demo.test/home");
    assert!(user.is_hit(), "one object for every spelling of the host");
    assert_eq!(o.count("/redir"), 1);
}

#[tokio::test]
async fn a_wildcard_site_keeps_each_hosts_answers_apart() {
    let o = Origin::start().await;
    o.script("/who", |seen, _| {
        Reply::ok(seen.headers["host"].to_str().unwrap()).header("cache-control", "max-age=60")
    });
    let edge = Edge::start(&site("any", "*", &format!("http://{}", o.addr), ""), "").await;
    assert_eq!(
        get(edge.addr, "evil.test", "/who", &[]).await.text(),
        "evil.test"
    );
    assert_eq!(
        get(edge.addr, "good.test", "/who", &[]).await.text(),
        "good.test"
    );
    let again = get(edge.addr, "good.test", "/who", &[]).await;
    assert_eq!(again.text(), "good.test");
    assert!(again.is_hit());
}

#[tokio::test]
async fn with_a_fixed_host_header_every_host_of_a_site_shares_one_object() {
    let o = Origin::start().await;
    o.always("/x", Reply::ok("x").header("cache-control", "max-age=60"));
    let sites = format!(
        "[[site]]\nname = \"demo\"\nhosts = [\"a.test\", \"b.test\"]\norigins = [\"http://{}\"]\nhost_header = \"origin.test\"\n",
        o.addr
    );
    let edge = Edge::start(&sites, "").await;
    assert_eq!(get(edge.addr, "a.test", "/x", &[]).await.text(), "x");
    let seen = o.last("/x");
    assert_eq!(seen.headers["host"], "origin.test");
    let forwarded = seen.headers["forwarded"].to_str().unwrap();
    assert!(!forwarded.contains("host="), "{forwarded}");
    assert!(get(edge.addr, "b.test", "/x", &[]).await.is_hit());
}

// ---- Ranges ---------------------------------------------------------------------------------

#[tokio::test]
async fn overlapping_ranges_are_coalesced_and_too_many_get_the_whole_object() {
    let o = Origin::start().await;
    let body: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).collect();
    o.always(
        "/o",
        Reply::ok("")
            .body_bytes(body.clone())
            .header("cache-control", "max-age=60")
            .header("content-type", "text/plain"),
    );
    let edge = Edge::for_origin(&o).await;
    edge.get("/o").await;
    let same = vec!["0-"; 32].join(",");
    let r = edge
        .get_with("/o", &[("range", &format!("bytes={same}"))])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), "bytes 0-999/1000");
    assert_eq!(r.body.len(), 1000, "not 32 copies");

    let r = edge
        .get_with("/o", &[("range", "bytes=100-109,0-9,5-19,20-29")])
        .await;
    assert_eq!(r.status, 206);
    let text = r.text();
    assert_eq!(text.matches("Content-Range:").count(), 2, "{text}");
    assert!(text.contains("Content-Range: bytes 0-29/1000"), "{text}");
    assert!(text.contains("Content-Range: bytes 100-109/1000"), "{text}");

    let many: Vec<String> = (0..40).map(|i| format!("{}-{}", i * 10, i * 10)).collect();
    let r = edge
        .get_with("/o", &[("range", &format!("bytes={}", many.join(",")))])
        .await;
    assert_eq!(r.status, 200, "too many ranges: the whole object");
    assert_eq!(r.body.len(), 1000);
}

// ---- Malformed requests ---------------------------------------------------------------------

async fn status_of(addr: SocketAddr, bytes: &[u8]) -> String {
    let r = raw(addr, bytes, Duration::from_secs(3)).await;
    r.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn malformed_heads_get_400_and_never_reach_the_origin() {
    let o = Origin::start().await;
    o.always("/", Reply::ok("root"));
    let edge = Edge::for_origin(&o).await;
    let cases: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: demo.test:abc\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: demo.test:99999\r\nConnection: close\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    ];
    for case in cases {
        let status = status_of(edge.addr, case).await;
        assert_eq!(
            status,
            "HTTP/1.1 400 Bad Request",
            "{}",
            String::from_utf8_lossy(case)
        );
    }
    assert_eq!(o.total(), 0);
    assert_eq!(edge.get("/").await.text(), "root", "the edge is still up");
}

#[tokio::test]
async fn trace_and_connect_are_refused_without_touching_the_origin() {
    let o = Origin::start().await;
    o.always("/", Reply::ok("root"));
    let edge = Edge::for_origin(&o).await;
    let trace = b"TRACE / HTTP/1.1\r\nHost: demo.test\r\nCookie: session=alice\r\nConnection: close\r\n\r\n";
    let r = raw(edge.addr, trace, Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(!r.contains("alice"), "{r}");
    assert!(r.to_ascii_lowercase().contains("allow: "), "{r}");
    let connect = b"CONNECT demo.test:443 HTTP/1.1\r\nHost: demo.test:443\r\n\r\n";
    let r = raw(edge.addr, connect, Duration::from_secs(2)).await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert_eq!(o.total(), 0);
}

#[tokio::test]
async fn malformed_chunked_bodies_get_400_not_an_origin_error() {
    let o = Origin::start().await;
    o.always("/p", Reply::ok("done"));
    let edge = Edge::for_origin(&o).await;
    let head = "POST /p HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let bodies: [&[u8]; 5] = [
        b"5\r\nhello\r\nzz\r\n\r\n",
        b"8000000000000000\r\nhello",
        b"10000000000000000\r\nhello",
        b"5;ext=\"a\0b\"\r\nhello\r\n0\r\n\r\n",
        b"5;ext=\"abc\r\nhello\r\n0\r\n\r\n",
    ];
    for body in bodies {
        let mut req = head.as_bytes().to_vec();
        req.extend_from_slice(body);
        let status = status_of(edge.addr, &req).await;
        assert_eq!(
            status,
            "HTTP/1.1 400 Bad Request",
            "{}",
            String::from_utf8_lossy(body).escape_debug()
        );
    }
    let metrics = edge.admin_get("/metrics").await.text();
    let node = format!("node=\"{}\"", edge.id);
    let errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("meridian_origin_errors_total") && l.contains(&node))
        .collect();
    assert!(!errors.is_empty(), "{metrics}");
    assert!(
        errors.iter().all(|l| l.ends_with(" 0")),
        "a client's bad body is not an origin error: {errors:?}"
    );
}

// ---- Conformance ----------------------------------------------------------------------------

/// `httpdate` formats IMF-fixdate; the obsolete forms are rebuilt from it.
fn obsolete_dates(t: std::time::SystemTime) -> (String, String) {
    let imf = httpdate::fmt_http_date(t); // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (wday, day, mon, year, time) = (
        &imf[0..3],
        &imf[5..7],
        &imf[8..11],
        &imf[12..16],
        &imf[17..25],
    );
    let day_num: u32 = day.parse().unwrap();
    let asctime = format!("{wday} {mon} {day_num:>2} {time} {year}");
    let long = match wday {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let rfc850 = format!("{long}, {day}-{mon}-{} {time} GMT", &year[2..]);
    (asctime, rfc850)
}

#[tokio::test]
async fn response_heads_are_read_as_the_caching_specifications_say() {
    let o = Origin::start().await;
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    let (asctime, rfc850) = obsolete_dates(later);
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    let huge = "9".repeat(30);
    // (path, response fields, whether the second request is a hit)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, bool);
    let cases: Vec<Case> = vec![
        // A delta-seconds too large for any integer is 2^31, not 0 (RFC 9111 §1.2.2).
        (
            "/huge",
            vec![("cache-control", format!("max-age={huge}"))],
            true,
        ),
        // Age: the first value counts.
        (
            "/age",
            vec![
                ("cache-control", "max-age=3600".into()),
                ("age", "7200, 0".into()),
            ],
            false,
        ),
        // A repeated directive: the first wins.
        (
            "/twice",
            vec![("cache-control", "max-age=0, max-age=1800".into())],
            false,
        ),
        // Targeted fields that are not valid structured-field dictionaries are ignored whole.
        (
            "/cdn-junk",
            vec![
                ("cdn-cache-control", "max-age=10000, &&&&&".into()),
                ("cache-control", "no-store".into()),
            ],
            false,
        ),
        (
            "/cdn-string",
            vec![
                ("cdn-cache-control", "max-age=\"10000\"".into()),
                ("cache-control", "no-store".into()),
            ],
            false,
        ),
        (
            "/surrogate-junk",
            vec![
                ("surrogate-control", "max-age=10000, &&&&&".into()),
                ("cache-control", "no-store".into()),
            ],
            false,
        ),
        // The obsolete date formats are dates (RFC 9110 §5.6.7).
        (
            "/asctime",
            vec![("expires", asctime), ("date", now.clone())],
            true,
        ),
        (
            "/rfc850",
            vec![("expires", rfc850), ("date", now.clone())],
            true,
        ),
    ];
    for (path, headers, _) in &cases {
        let mut reply = Reply::ok(path);
        for (n, v) in headers {
            reply = reply.header(n, v);
        }
        o.always(path, reply);
    }
    let edge = Edge::for_origin(&o).await;
    for (path, headers, cached) in &cases {
        edge.get(path).await;
        let second = edge.get(path).await;
        assert_eq!(
            second.is_hit(),
            *cached,
            "{path} {headers:?}: {}",
            second.cache_status()
        );
    }
}

#[tokio::test]
async fn interim_responses_are_never_stored() {
    let addr = raw_origin(|mut s| async move {
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        loop {
            let Ok(n) = s.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            if find(&seen, b"\r\n\r\n").is_some() {
                break;
            }
        }
        let _ = s
            .write_all(
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok",
            )
            .await;
        let _ = s.read(&mut buf).await;
    })
    .await;
    let edge = Edge::start(&demo_site(addr, ""), "").await;
    let first = edge.get("/").await;
    assert_eq!((first.status.as_u16(), first.text().as_str()), (200, "ok"));
    let second = edge.get("/").await;
    assert!(second.is_hit());
    assert_eq!(second.status, 200);
    assert!(second.headers.get("link").is_none());
}

#[tokio::test]
async fn a_peer_mark_from_a_client_never_reaches_the_origin_nor_purges() {
    // An edge that does not gossip has no peers: a client's `Meridian-Peer` is dropped, its
    // forwarding fields are not trusted, and the peer endpoints are nobody's.
    let o = Origin::start().await;
    o.always("/p", Reply::ok("p").header("cache-control", "max-age=60"));
    let edge = Edge::for_origin(&o).await;
    let mark = format!("1.{}.{}", 1_800_000_000u64, "00".repeat(32));
    let r = edge
        .get_with(
            "/p",
            &[("meridian-peer", &mark), ("x-forwarded-for", "6.6.6.6")],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = o.last("/p");
    assert!(seen.headers.get("meridian-peer").is_none());
    assert!(
        seen.headers["x-forwarded-for"]
            .to_str()
            .unwrap()
            .starts_with("6.6.6.6, "),
        "{:?}",
        seen.headers
    );
    assert!(edge.get("/p").await.is_hit());
    let body = r#"{"issuer":"x","at":1,"purge":{"url":"http://demo.test/p"}}"#;
    for (host, path) in [
        ("meridian.peer", "/.meridian/purge?sha256=00"),
        ("demo.test", "/.meridian/purge?sha256=00"),
    ] {
        let r = request_with_body(
            "POST",
            edge.addr,
            host,
            path,
            &[(
                "meridian-peer",
                &format!("3.1800000000.{}", "00".repeat(32)),
            )],
            body,
        )
        .await;
        assert_ne!(r.status, 200, "{host}{path}");
    }
    assert!(edge.get("/p").await.is_hit(), "purged by an unsigned push");
}

/// A client that hangs up while its forwarded request waits for the origin: the edge gives the
/// request up (and with it the origin connection) instead of holding both until the origin
/// answers. Seen from the origin: the edge's connection closes before the answer.
#[tokio::test]
async fn a_client_that_hangs_up_before_its_answer_ends_the_forward() {
    let (origin, mut closed) = hanging_origin().await;
    let edge = Edge::start(&site("s", "demo.test", &format!("http://{origin}"), ""), "").await;
    for (what, head) in [
        (
            "POST",
            "POST /pay HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "GET the edge must not cache",
            "GET /private HTTP/1.1\r\nHost: demo.test\r\nCache-Control: no-store\r\n\r\n",
        ),
    ] {
        let mut client = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        client.write_all(head.as_bytes()).await.unwrap();
        // Once the origin has it, the client goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(client);
        let after = closed
            .next(what)
            .await
            .unwrap_or_else(|| panic!("{what}: the edge held the origin connection"));
        assert!(
            after < Duration::from_secs(2),
            "{what}: closed after {after:?}"
        );
    }
}
