//! 11. Limits: header read timeout, idle timeout, header size (431), connections, framing.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

#[tokio::test]
async fn oversized_headers_get_431() {
    let o = Origin::start().await;
    let edge = Edge::for_origin_with(&o, "max_header_size = \"8KiB\"").await;
    let big = "x".repeat(10_000);
    let req = format!("GET / HTTP/1.1\r\nHost: demo.test\r\nX-Big: {big}\r\n\r\n");
    let r = raw(edge.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    assert_eq!(o.total(), 0);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_rejected() {
    let o = Origin::start().await;
    let edge = Edge::for_origin(&o).await;
    let smuggle = b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let r = raw(edge.addr, smuggle, Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let dup = b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde";
    let r = raw(edge.addr, dup, Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(o.total(), 0);
    // The edge is still up.
    o.always("/", Reply::ok("up"));
    assert_eq!(edge.get("/").await.text(), "up");
}

/// Lines may end in a bare LF (hyper reads them so, RFC 9112 §2.2): the same conflicts are
/// refused there, and the requests after such a head are numbered right.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_rejected_with_bare_line_feeds_too() {
    let o = Origin::start().await;
    o.always("/", Reply::ok("up"));
    let edge = Edge::for_origin(&o).await;
    let smuggle = b"POST / HTTP/1.1\nHost: demo.test\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\r\n\r\n";
    let r = raw(edge.addr, smuggle, Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // A bare-LF POST with a body, then a conflicting head: the conflict is the second request's.
    let two = b"POST / HTTP/1.1\nHost: demo.test\nContent-Length: 2\n\nok\
POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let r = raw(edge.addr, two, Duration::from_secs(3)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("HTTP/1.1 400"), "{r}");
    assert_eq!(o.total(), 1);
}

#[tokio::test]
async fn slow_request_heads_are_cut_off() {
    let o = Origin::start().await;
    let edge = Edge::for_origin_with(&o, "header_read_timeout = \"500ms\"").await;
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: demo.test\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed after the header read timeout"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let o = Origin::start().await;
    o.always("/", Reply::ok("x"));
    let edge = Edge::for_origin_with(
        &o,
        "idle_timeout = \"700ms\"\nheader_read_timeout = \"30s\"",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: demo.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let start = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed by the edge")
        .unwrap();
    assert_eq!(n, 0, "EOF");
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait() {
    let o = Origin::start().await;
    o.always("/", Reply::ok("x"));
    let edge = Edge::for_origin_with(&o, "max_connections = 2\nidle_timeout = \"1s\"").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: demo.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        held.push(s);
    }
    // A third connection is not served while two are open...
    let mut third = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_to_end(&mut buf)).await;
    assert!(early.is_err() && buf.is_empty(), "served beyond the limit");
    // ...and is once one closes.
    drop(held.pop());
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let o = Origin::start().await;
    o.always(
        "/slow",
        Reply::ok("finished").delay(Duration::from_millis(600)),
    );
    let mut edge = Edge::for_origin(&o).await;
    let addr = edge.addr;
    let inflight = tokio::spawn(async move { get(addr, "demo.test", "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let node = edge.node.take().unwrap();
    let done = tokio::spawn(node.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused once shutdown began.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let r = inflight.await.unwrap();
    assert_eq!(r.text(), "finished");
    assert!(done.await.unwrap(), "finished within the grace period");
}

/// A start that fails half way (here at the second listener, whose port is taken) leaves
/// nothing serving: the HTTP threads the first listener had started end with it. (No other
/// test of this binary starts HTTP threads, so any left would be this one's.)
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_start_that_fails_half_way_leaves_no_http_thread_running() {
    // A new thread names itself once it runs; until then it has the name of the thread that
    // made it (this one). So this thread takes a name no other has, and a thread counts while
    // it has either name: one not yet running cannot be missed.
    const OURS: &str = "failed-start";
    std::fs::write("/proc/thread-self/comm", OURS).unwrap();
    let http_threads = || {
        let unnamed = threads_named(std::process::id(), OURS).saturating_sub(1);
        http_threads(std::process::id()).len() + unnamed
    };
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        site("a", "a.test", "http://127.0.0.1:1", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        format!("id = \"e\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[edge]\nlisten = [\"127.0.0.1:0\", \"{taken}\"]\nthreads = 2\n"),
    )
    .unwrap();
    let config = meridian::config::load(&dir.path().join("node.toml")).unwrap();
    let err = match meridian::app::Node::start(config).await {
        Ok(_) => panic!("started on a taken port"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&taken.to_string()), "{err}");
    let t = Instant::now();
    while http_threads() > 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        http_threads(),
        0,
        "HTTP threads left running after a failed start"
    );
}
