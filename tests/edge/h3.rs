//! HTTP/3 (`[edge.quic]`) with a real QUIC client (quinn + h3, `meridian::h3client`): the same
//! cache, collapsing, ranges, certificates and reload as the TCP listeners.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use meridian::h3client::H3Client;

use crate::common::{big_and_next, get, get_from, until_served, Edge, Origin, Reply};
use crate::tls::{connect, https, tls_site, write, Ca};

const LISTENERS: &str =
    "[edge.tls]\nlisten = [\"127.0.0.1:0\"]\n[edge.quic]\nlisten = [\"127.0.0.1:0\"]\n";

fn h3_addr(edge: &Edge) -> SocketAddr {
    edge.node.as_ref().unwrap().h3_addrs()[0]
}

async fn h3(edge: &Edge, ca: &Ca, name: &str) -> Result<H3Client, String> {
    H3Client::connect(h3_addr(edge), name, ca.client(&[&rustls::version::TLS13])).await
}

/// An edge serving site `a` (`a.test`) over HTTP, TLS and QUIC, with a certificate from a new CA.
struct Setup {
    ca: Ca,
    edge: Edge,
    dir: tempfile::TempDir,
    origin: Origin,
}

impl Setup {
    /// `extra` goes in `[edge.quic]`.
    async fn start(extra: &str) -> Setup {
        Setup::start_with("", extra).await
    }

    /// `edge` goes in `[edge]`, `quic` in `[edge.quic]`.
    async fn start_with(edge: &str, quic: &str) -> Setup {
        let (ca, dir) = (Ca::new(), tempfile::tempdir().unwrap());
        let files = write(dir.path(), "a", &ca.issue(&["a.test"]));
        let origin = Origin::start().await;
        let site = tls_site("a", "a.test", &origin, &files) + "origin_read_timeout = \"500ms\"\n";
        let edge = Edge::start(&site, &format!("{edge}{LISTENERS}{quic}")).await;
        Setup {
            ca,
            edge,
            dir,
            origin,
        }
    }

    async fn metrics(&self) -> String {
        get(self.edge.admin, "admin", "/metrics", &[]).await.text()
    }

    /// The value of this edge's sample of `name` whose labels include `label`.
    async fn sample(&self, name: &str, label: &str) -> Option<f64> {
        let node = format!("node=\"{}\"", self.edge.id);
        self.metrics()
            .await
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&node) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

fn header<'a>(resp: &'a http::Response<()>, name: &str) -> &'a str {
    resp.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_hit_stored_over_http1_is_served_over_http3_and_tls_responses_advertise_it() {
    let s = Setup::start("").await;
    s.origin.always(
        "/page",
        Reply::ok("shared").header("cache-control", "max-age=60"),
    );
    let plain = get(s.edge.addr, "a.test", "/page", &[]).await;
    assert_eq!(plain.status, 200);
    assert!(
        plain.header("alt-svc").is_empty(),
        "plain HTTP does not advertise HTTP/3"
    );
    // The scheme is part of the cache key by default: an https request stores its own.
    let mut tls = connect(https(&s.edge), &s.ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    let first = tls.response("a.test", "/page").await;
    assert!(
        first.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("; fwd="),
        "{first:?}"
    );

    let client = h3(&s.edge, &s.ca, "a.test").await.unwrap();
    let (resp, body) = client.get("https://a.test/page").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_3);
    assert_eq!(body, "shared");
    assert!(
        header(&resp, "cache-status").starts_with("meridian; hit"),
        "{resp:?}"
    );
    assert_eq!(header(&resp, "content-length"), "6");
    assert!(!header(&resp, "date").is_empty(), "{resp:?}");
    assert!(!header(&resp, "age").is_empty(), "{resp:?}");
    assert!(
        header(&resp, "alt-svc").is_empty(),
        "HTTP/3 needs no advertisement"
    );
    assert_eq!(s.origin.count("/page"), 2, "one for http, one for https");

    let port = h3_addr(&s.edge).port();
    let advert = format!("h3=\":{port}\"; ma=86400");
    for alpn in ["http/1.1", "h2"] {
        let mut tls = connect(https(&s.edge), &s.ca, Some("a.test"), &[alpn])
            .await
            .unwrap();
        let resp = tls.response("a.test", "/page").await;
        assert_eq!(resp.headers()["alt-svc"], advert.as_str(), "over {alpn}");
    }

    let h3_requests = s
        .sample("meridian_http_protocol_requests_total", "protocol=\"h3\"")
        .await;
    assert_eq!(h3_requests, Some(1.0));
    // Latency per protocol: the one hit over HTTP/3 has its own histogram.
    let h3_timed = s
        .sample(
            "meridian_http_request_duration_seconds_count",
            "protocol=\"h3\"",
        )
        .await;
    assert_eq!(h3_timed, Some(1.0));
    let accepted = s
        .sample("meridian_quic_connections_total", "outcome=\"accepted\"")
        .await;
    assert_eq!(accepted, Some(1.0));

    // A purge reaches what HTTP/3 reads: the next request goes to the origin.
    let purged = s
        .edge
        .admin_post(
            "/purge",
            Some(crate::common::TOKEN),
            r#"{"prefix":"https://a.test/"}"#,
        )
        .await;
    assert_eq!(purged.text().trim(), r#"{"purged":1}"#);
    let (resp, _) = client.get("https://a.test/page").await.unwrap();
    assert!(
        header(&resp, "cache-status").contains("fwd=miss"),
        "{resp:?}"
    );
    assert_eq!(s.origin.count("/page"), 3);
    client.close().await;
}

#[tokio::test]
async fn one_origin_fetch_serves_an_object_asked_over_http1_http2_and_http3_at_once() {
    let s = Setup::start("").await;
    s.origin.always(
        "/slow",
        Reply::ok("collapsed")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(500)),
    );
    let client = h3(&s.edge, &s.ca, "a.test").await.unwrap();
    let mut tls = connect(https(&s.edge), &s.ca, Some("a.test"), &["h2"])
        .await
        .unwrap();
    let mut tls1 = connect(https(&s.edge), &s.ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    let (h1, h2, h3) = tokio::join!(
        tls1.get("a.test", "/slow"),
        tls.get("a.test", "/slow"),
        client.get("https://a.test/slow"),
    );
    let (h3_resp, h3_body) = h3.unwrap();
    assert_eq!((h1.1, h1.3.as_str()), (http::Version::HTTP_11, "collapsed"));
    assert_eq!(h2.1, http::Version::HTTP_2);
    assert_eq!((h2.0, h2.3.as_str()), (http::StatusCode::OK, "collapsed"));
    assert_eq!(
        (h3_resp.status(), &h3_body[..]),
        (http::StatusCode::OK, &b"collapsed"[..])
    );
    assert_eq!(s.origin.count("/slow"), 1, "one origin fetch for all three");
    client.close().await;
}

/// Past `handshakes_before_retry` handshakes at once, a new client gets a Retry and must come
/// back with its token (proving it receives at its address); a real client does, and is
/// served. Here the threshold is 0, so every new client is retried once.
#[tokio::test]
async fn clients_prove_their_address_with_a_retry_when_handshakes_pile_up() {
    for (threshold, retries) in [("handshakes_before_retry = 0\n", 1.0), ("", 0.0)] {
        let s = Setup::start(threshold).await;
        s.origin.always(
            "/r",
            Reply::ok("retried").header("cache-control", "max-age=60"),
        );
        let client = h3(&s.edge, &s.ca, "a.test").await.unwrap();
        let (resp, body) = client.get("https://a.test/r").await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body, "retried");
        let retried = s
            .sample("meridian_quic_connections_total", "outcome=\"retried\"")
            .await;
        assert_eq!(retried.unwrap_or(0.0), retries, "{threshold:?}");
        let accepted = s
            .sample("meridian_quic_connections_total", "outcome=\"accepted\"")
            .await;
        assert_eq!(accepted, Some(1.0), "{threshold:?}");
    }
}

#[tokio::test]
async fn ranges_head_and_uploads_work_over_http3() {
    let s = Setup::start("").await;
    s.origin.always(
        "/r",
        Reply::ok("0123456789").header("cache-control", "max-age=60"),
    );
    s.origin.always(
        "/post",
        Reply::ok("taken").header("cache-control", "no-store"),
    );
    let client = h3(&s.edge, &s.ca, "a.test").await.unwrap();

    let req = Request::get("https://a.test/r")
        .header("range", "bytes=2-4")
        .body(Bytes::new())
        .unwrap();
    let (resp, body) = client.send(req).await.unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(body, "234");
    assert_eq!(header(&resp, "content-range"), "bytes 2-4/10");

    let req = Request::head("https://a.test/r")
        .body(Bytes::new())
        .unwrap();
    let (resp, body) = client.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-length"), "10");
    assert!(body.is_empty());

    let req = Request::post("https://a.test/post")
        .header("content-type", "text/plain")
        .body(Bytes::from_static(b"hello over quic"))
        .unwrap();
    let (resp, body) = client.send(req).await.unwrap();
    assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"taken"[..]));
    let seen = s.origin.last("/post");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body, "hello over quic");
    assert!(
        seen.headers["via"].to_str().unwrap().starts_with("3 "),
        "{:?}",
        seen.headers
    );
    client.close().await;
}

#[tokio::test]
async fn a_stalled_origin_body_resets_the_http3_stream_and_nothing_is_stored() {
    let s = Setup::start("").await;
    let big = vec![b'x'; 200_000];
    s.origin.always(
        "/cut",
        Reply::ok("")
            .body_bytes(big)
            .header("cache-control", "max-age=60")
            .stall_after(50_000),
    );
    let client = h3(&s.edge, &s.ca, "a.test").await.unwrap();
    let err = match client.get("https://a.test/cut").await {
        Ok((resp, body)) => panic!("a clean end: {} and {} bytes", resp.status(), body.len()),
        Err(e) => e,
    };
    assert!(err.contains("cut off"), "{err}");
    let again = client.get("https://a.test/cut").await;
    assert!(again.is_err(), "never a clean end over a cut body");
    assert_eq!(s.origin.count("/cut"), 2, "nothing stored: fetched again");
    // The connection survives a reset stream.
    s.origin.always("/ok", Reply::ok("fine"));
    assert_eq!(client.get("https://a.test/ok").await.unwrap().1, "fine");
    client.close().await;
}

#[tokio::test]
async fn certificates_reload_for_new_http3_connections_and_bad_handshakes_are_counted() {
    let s = Setup::start("").await;
    s.origin.always("/", Reply::ok("site"));
    let old = h3(&s.edge, &s.ca, "a.test").await.unwrap();
    let first = old.server_certificate().unwrap();

    let second = s.ca.issue(&["a.test"]);
    write(s.dir.path(), "a", &second);
    s.edge.node.as_ref().unwrap().reload().unwrap();
    let new = h3(&s.edge, &s.ca, "a.test").await.unwrap();
    assert_eq!(new.server_certificate().unwrap(), second.der);
    assert_ne!(first, second.der);
    assert_eq!(new.get("https://a.test/").await.unwrap().1, "site");
    assert_eq!(
        old.get("https://a.test/").await.unwrap().1,
        "site",
        "the old connection keeps working"
    );

    // Garbage datagrams are dropped; a handshake for a name no site serves (no default site)
    // fails; the listener keeps serving.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for n in [0usize, 1, 20, 1200, 1500] {
        udp.send_to(&vec![0xc3; n], h3_addr(&s.edge)).unwrap();
    }
    let err = h3(&s.edge, &s.ca, "nobody.test").await.err().unwrap();
    assert!(err.contains("handshake"), "{err}");
    assert_eq!(new.get("https://a.test/").await.unwrap().1, "site");
    let failed = s
        .sample("meridian_quic_connections_total", "outcome=\"failed\"")
        .await;
    assert!(failed >= Some(1.0), "{failed:?}");
    old.close().await;
    new.close().await;
}

#[tokio::test]
async fn alt_svc_names_the_advertised_port_and_max_age_and_zero_turns_it_off() {
    let s = Setup::start("advertise_port = 443\nalt_svc_max_age = \"1h\"\n").await;
    s.origin.always("/", Reply::ok("site"));
    let mut tls = connect(https(&s.edge), &s.ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    let resp = tls.response("a.test", "/").await;
    assert_eq!(resp.headers()["alt-svc"], "h3=\":443\"; ma=3600");

    let off = Setup::start("alt_svc_max_age = \"0s\"\n").await;
    off.origin.always("/", Reply::ok("site"));
    let mut tls = connect(https(&off.edge), &off.ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    assert!(tls
        .response("a.test", "/")
        .await
        .headers()
        .get("alt-svc")
        .is_none());
}

#[tokio::test]
async fn a_request_over_http3_reaches_the_origin_with_its_body_streamed() {
    // An upload the origin reads as it comes: the body crosses as DATA frames, not collected.
    let s = Setup::start("").await;
    s.origin.always("/up", Reply::ok("ok"));
    let client = h3(&s.edge, &s.ca, "a.test").await.unwrap();
    let body = Bytes::from(vec![b'u'; 300_000]);
    let req = Request::put("https://a.test/up")
        .body(body.clone())
        .unwrap();
    let (resp, _) = client.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(s.origin.last("/up").body, body);
    client.close().await;
}

#[tokio::test]
async fn http3_without_any_certificate_is_refused_at_check_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        crate::common::site("a", "a.test", "http://127.0.0.1:1", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "id = \"e\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\n[edge.quic]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let config = meridian::config::load(&dir.path().join("node.toml")).unwrap();
    let err = meridian::app::validate(&config).unwrap_err().to_string();
    assert!(err.contains("HTTP/3 (edge.quic) needs one"), "{err}");
    let err = match meridian::app::Node::start(config).await {
        Ok(_) => panic!("started without a certificate"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("QUIC listeners need one"), "{err}");
}

/// A raw QUIC connection offering ALPN h3, for the transport limits.
async fn quic(edge: &Edge, ca: &Ca) -> (quinn::Endpoint, quinn::Connection) {
    let mut tls = ca.client(&[&rustls::version::TLS13]);
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let conn = endpoint
        .connect(h3_addr(edge), "a.test")
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

#[tokio::test]
async fn a_client_cannot_open_more_streams_than_allowed_and_idle_connections_close() {
    let s = Setup::start("max_concurrent_streams = 2\nidle_timeout = \"1500ms\"\n").await;
    let (_endpoint, conn) = quic(&s.edge, &s.ca).await;
    let _a = conn.open_bi().await.unwrap();
    let _b = conn.open_bi().await.unwrap();
    let third = tokio::time::timeout(Duration::from_millis(300), conn.open_bi()).await;
    // Not opened: still waiting for credit (or, on a machine slow enough to reach the idle
    // timeout meanwhile, the connection gone).
    if let Ok(Ok((send, _))) = third {
        panic!("a third stream ({}) opened past the limit of 2", send.id());
    }

    // Silence past the idle timeout closes the connection (the client's own default is 30 s).
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("the edge kept an idle connection");
    assert!(
        matches!(closed, quinn::ConnectionError::TimedOut),
        "{closed:?}"
    );
}

#[tokio::test]
async fn shutdown_lets_an_http3_request_in_flight_finish_and_refuses_new_connections() {
    let mut s = Setup::start("").await;
    s.origin.always(
        "/slow",
        Reply::ok("finished").delay(Duration::from_millis(1500)),
    );
    let client = h3(&s.edge, &s.ca, "a.test").await.unwrap();
    let inflight = tokio::spawn(async move {
        let r = client.get("https://a.test/slow").await;
        client.close().await;
        r
    });
    // Until the origin has the request (bounded).
    for _ in 0..200 {
        if s.origin.count("/slow") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.origin.count("/slow"), 1);
    let addr = h3_addr(&s.edge);
    let node = s.edge.node.take().unwrap();
    let done = tokio::spawn(node.shutdown());
    // While the request finishes, a new connection is refused at once (not left to time out).
    // The drain has begun once the TCP listener refuses (bounded wait).
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(s.edge.addr).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refused = tokio::time::timeout(
        Duration::from_secs(5),
        H3Client::connect(addr, "a.test", s.ca.client(&[&rustls::version::TLS13])),
    )
    .await
    .expect("a new connection during the drain was left to time out");
    assert!(refused.is_err(), "a new connection during the drain");
    let (_, body) = inflight.await.unwrap().unwrap();
    assert_eq!(body, "finished");
    assert!(done.await.unwrap(), "finished within the grace period");
}

#[tokio::test]
async fn a_request_stream_that_never_finishes_its_head_is_let_go_in_time() {
    let s = Setup::start_with("header_read_timeout = \"1s\"\n", "").await;
    let (_endpoint, conn) = quic(&s.edge, &s.ca).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // A HEADERS frame type and the first byte of a two-byte length, and then nothing.
    send.write_all(&[0x01, 0x40]).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await;
    assert!(
        ended.is_ok(),
        "the edge kept a stream with half a head past header_read_timeout"
    );
    let errors = s.sample("meridian_quic_stream_errors_total", "").await;
    assert_eq!(errors, Some(1.0));
}

#[tokio::test]
async fn an_http3_body_that_disagrees_with_its_content_length_never_reaches_the_origin_whole() {
    // RFC 9114 §4.1.2: such a request is malformed. An origin must not get a body other than
    // the one the length declared (on a pooled HTTP/1.1 connection the rest would be read as
    // the next request).
    let s = Setup::start("").await;
    s.origin.always("/post", Reply::ok("taken"));
    let client = h3(&s.edge, &s.ca, "a.test").await.unwrap();
    for (declared, sent) in [("3", "hello over quic"), ("40", "hello over quic")] {
        let req = Request::post("https://a.test/post")
            .header("content-length", declared)
            .body(Bytes::from_static(sent.as_bytes()))
            .unwrap();
        let got = client.send(req).await;
        let status = got.as_ref().map(|(r, _)| r.status().as_u16());
        assert!(
            !matches!(status, Ok(200..=299)),
            "declared {declared}, sent {}: {status:?}",
            sent.len()
        );
    }
    assert!(
        s.origin.seen().iter().all(|r| r.path != "/post"),
        "{:?}",
        s.origin.seen()
    );
    client.close().await;
}

/// A client that opens a large answer over HTTP/3 and then reads none of it, its connection
/// alive all the while (QUIC acknowledges on its own): once the stream has taken no bytes for
/// `send_timeout` it is reset, which lets go of its origin connection (here the site's one
/// origin slot, which the next request then gets). Before, the stream waited for credit for
/// as long as the connection lived.
#[tokio::test]
async fn an_http3_answer_the_client_takes_nothing_of_is_reset_after_send_timeout() {
    let (ca, dir) = (Ca::new(), tempfile::tempdir().unwrap());
    let files = write(dir.path(), "a", &ca.issue(&["a.test"]));
    let origin = Origin::start().await;
    big_and_next(&origin);
    let site = tls_site("a", "a.test", &origin, &files)
        + "max_origin_requests = 1\nconnect_timeout = \"300ms\"\n";
    let edge = Edge::start(&site, &format!("send_timeout = \"500ms\"\n{LISTENERS}")).await;
    let client = h3(&edge, &ca, "a.test").await.unwrap();
    let req = Request::get("https://a.test/big")
        .body(Bytes::new())
        .unwrap();
    let mut big = client.open(req).await.unwrap();
    assert_eq!(big.head.status(), 200);
    // Held: the next request (from another client) finds no slot.
    let r = get_from([127, 0, 0, 2].into(), edge.addr, "a.test", "/next").await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    until_served(
        edge.addr,
        "a.test",
        "/next",
        "the stream nobody reads still holds its answer",
    )
    .await;
    // What the client reads now ends in a reset, short of the whole body.
    let mut got = 0usize;
    let ended = loop {
        match big.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(ended.is_err() && got < 32 << 20, "{got} bytes, {ended:?}");
}
