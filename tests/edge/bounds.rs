//! Time bounds: a stalled origin, a slow or stalled upload, silent and resting connections.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

#[tokio::test]
async fn an_origin_that_stalls_mid_body_is_cut_off_and_nothing_is_stored() {
    let o = Origin::start().await;
    let body = "x".repeat(1000);
    let b = body.clone();
    o.script("/stall", move |_, n| {
        let r = Reply::ok(&b).header("cache-control", "max-age=60");
        if n == 1 {
            r.stall_after(100)
        } else {
            r
        }
    });
    o.always(
        "/stream",
        Reply::ok(&body)
            .header("cache-control", "private")
            .stall_after(100),
    );
    let edge = Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            "origin_read_timeout = \"500ms\"",
        ),
        "",
    )
    .await;

    // Cacheable: streamed to the client while it is stored, so the head went out and the body
    // is aborted after the read timeout; nothing is stored and the next request fetches again.
    let start = Instant::now();
    let text = raw(
        edge.addr,
        b"GET /stall HTTP/1.1\r\nHost: demo.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let got = text.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(got.len() < 1000, "the connection closed short of the body");
    let r = edge.get("/stall").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, body.clone()));
    assert!(!r.is_hit());
    assert_eq!(o.count("/stall"), 2);

    // Streamed through: the head went out, so the body is aborted, never ended cleanly.
    let start = Instant::now();
    let text = raw(
        edge.addr,
        b"GET /stream HTTP/1.1\r\nHost: demo.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let got = text.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(got.len() < 1000, "the connection closed short of the body");

    // Over HTTP/2 the stream is reset.
    let mut send = h2c::<http_body_util::Empty<Bytes>>(edge.addr).await;
    let req = Request::get("http://demo.test/stream")
        .version(http::Version::HTTP_2)
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    use http_body_util::BodyExt;
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("ended within the read timeout");
    assert!(body.is_err(), "reset, not a clean end");
}

/// A request body that sends `parts` with `gap` between them.
fn slow_body(parts: Vec<&'static str>, gap: Duration) -> ChannelBody {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for (i, p) in parts.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if tx.send(Bytes::from_static(p.as_bytes())).await.is_err() {
                return;
            }
        }
    });
    ChannelBody(rx)
}

#[tokio::test]
async fn the_first_byte_timer_starts_when_the_upload_is_done() {
    let o = Origin::start().await;
    o.always("/up", Reply::ok("got it"));
    let edge = Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            "first_byte_timeout = \"700ms\"",
        ),
        "",
    )
    .await;
    let req = Request::post(edge.url("/up"))
        .header("host", "demo.test")
        .body(slow_body(
            vec!["one ", "two ", "three"],
            Duration::from_millis(600),
        ))
        .unwrap();
    let r = send_request(req).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "got it"));
    assert_eq!(&o.last("/up").body[..], b"one two three");
}

#[tokio::test]
async fn a_stalled_upload_gets_408() {
    let o = Origin::start().await;
    o.always("/up", Reply::ok("got it"));
    let edge = Edge::for_origin_with(&o, "client_body_timeout = \"500ms\"").await;
    let req = Request::post(edge.url("/up"))
        .header("host", "demo.test")
        .body(slow_body(vec!["one ", "two"], Duration::from_secs(4)))
        .unwrap();
    let start = Instant::now();
    let r = send_request(req).await;
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let o = Origin::start().await;
    let edge = Edge::for_origin_with(
        &o,
        "header_read_timeout = \"500ms\"\nidle_timeout = \"30s\"",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("closed by the edge")
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_keep_alive_connection_rests_up_to_the_idle_timeout() {
    let o = Origin::start().await;
    o.always("/", Reply::ok("x"));
    let edge =
        Edge::for_origin_with(&o, "header_read_timeout = \"500ms\"\nidle_timeout = \"5s\"").await;
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo.test\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        // Longer than the header read timeout, shorter than the idle timeout.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // A head begun and never finished is cut off after the header read timeout.
    s.write_all(b"GET / HTTP/1.1\r\nHost: demo").await.unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed")
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// An origin that reads a request head, writes `answer` at once (before the body) and reads on
/// for 6 s, so that no reset loses the answer.
async fn answers_before_the_body(answer: &'static [u8]) -> std::net::SocketAddr {
    raw_origin(move |mut s| async move {
        if !read_request_head(&mut s).await {
            return;
        }
        let _ = s.write_all(answer).await;
        let mut buf = vec![0u8; 65536];
        let _ = tokio::time::timeout(Duration::from_secs(6), async {
            while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .await;
    })
    .await
}

/// A POST of two parts 4 s apart to `addr`'s site `demo.test`, with the site settings `extra`;
/// what came back and when.
async fn slow_post(addr: std::net::SocketAddr, extra: &str) -> (Got, Duration) {
    let edge = Edge::start(
        &site("demo", "demo.test", &format!("http://{addr}"), extra),
        "",
    )
    .await;
    let req = Request::post(edge.url("/up"))
        .header("host", "demo.test")
        .body(slow_body(
            vec!["the first part ", "the rest"],
            Duration::from_secs(4),
        ))
        .unwrap();
    let start = Instant::now();
    let r = send_request(req).await;
    (r, start.elapsed())
}

#[tokio::test]
async fn an_origin_that_refuses_an_upload_is_heard_while_the_client_still_sends() {
    // The origin answers 413 once it has the head, while the client sends the rest of its
    // body only 4 s later: the client hears the 413 at once (RFC 9112 §9.5), not after.
    let addr = answers_before_the_body(
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!",
    )
    .await;
    let (r, took) = slow_post(addr, "").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (413, "too big!"));
    assert!(took < Duration::from_secs(3), "heard after {took:?}");
}

#[tokio::test]
async fn an_early_answer_that_stalls_is_bounded_by_the_first_byte_timeout() {
    // Half a head before the body, then nothing: the first-byte timer runs from there.
    let addr = answers_before_the_body(b"HTTP/1.1 413 Pay").await;
    let (r, took) = slow_post(addr, "first_byte_timeout = \"700ms\"").await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
}

#[tokio::test]
async fn an_origin_that_stops_reading_an_upload_fails_it_after_its_read_timeout() {
    // The origin reads the head and nothing more: once the sockets' buffers are full, the edge
    // can write no more of the 64 MiB body. It gives up after origin_read_timeout.
    let addr = raw_origin(|mut s| async move {
        if read_request_head(&mut s).await {
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
    })
    .await;
    let edge = Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{addr}"),
            "origin_read_timeout = \"1s\"",
        ),
        "",
    )
    .await;
    let body = "x".repeat(64 << 20);
    let start = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        request_body("POST", edge.addr, "demo.test", "/up", &body),
    )
    .await
    .expect("no answer within 15 s");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "answered after {:?}",
        start.elapsed()
    );
}

/// A client that asks for a large answer and never reads it: once the connection has moved no
/// byte for `idle_timeout` and then `send_timeout`, the edge drops it, and with it the
/// response's origin connection (here the site's one origin slot, which the next request
/// then gets). Before, hyper waited to write the answer for as long as the client kept its
/// socket open.
#[tokio::test]
async fn a_client_that_never_reads_its_answer_is_dropped_after_send_timeout() {
    let o = Origin::start().await;
    big_and_next(&o);
    let edge = one_slot_edge(&o, "idle_timeout = \"500ms\"\nsend_timeout = \"500ms\"").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(edge.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: demo.test\r\n\r\n")
        .await
        .unwrap();
    // While it holds the slot, the next request finds none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = edge.get("/next").await;
    assert_eq!(r.status.as_u16(), 503, "{}", r.text());
    // 1 s of silence, and ticks: dropped well within 3 s.
    until_served(
        edge.addr,
        "demo.test",
        "/next",
        "the client that does not read still holds its answer",
    )
    .await;
    // Its connection is closed: what it reads now ends.
    let mut sink = vec![0u8; 1 << 20];
    let mut got = 0usize;
    let read_all = async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read_all)
        .await
        .expect("the connection was closed");
    assert!(got < 32 << 20, "the whole answer arrived after all");
}
