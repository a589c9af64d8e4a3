//! HTTP/1.1 as the edge speaks it itself (`GET`, `HEAD`, and requests with a short
//! `Content-Length` body), and the hand-over to hyper for everything else on the same
//! connection: persistence, pipelining, framing of the answers.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// One response read off `s`: its status line, its fields (names lower-case) and its body,
/// delimited as a client must (none when `bodiless`, else chunked, `Content-Length`, or to the
/// connection's end).
struct Answer {
    status: String,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection to the edge, and what it has read past the answers taken so far.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn to(edge: &Edge) -> Client {
        Client {
            s: TcpStream::connect(edge.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Sends `req` and reads its answer.
    async fn ask(&mut self, req: &[u8], bodiless: bool) -> Answer {
        self.send(req).await;
        self.answer(bodiless).await
    }

    /// `GET path` of `demo.test`, and its answer.
    async fn get(&mut self, path: &str) -> Answer {
        let req = format!("GET {path} HTTP/1.1\r\nHost: demo.test\r\n\r\n");
        self.ask(req.as_bytes(), false).await
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "the connection ended inside a line");
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "the connection ended inside a body");
        }
        self.buf.drain(..n).collect()
    }

    /// The next answer, delimited as a client must (none when `bodiless`, else chunked,
    /// `Content-Length`, or to the connection's end).
    async fn answer(&mut self, bodiless: bool) -> Answer {
        let status = self.line().await;
        let mut fields = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').expect("a field line");
            fields.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let mut a = Answer {
            status,
            fields,
            body: Vec::new(),
        };
        if bodiless {
            return a;
        }
        if a.field("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.line().await;
                let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
                if size == 0 {
                    assert_eq!(self.line().await, "", "no trailers");
                    break;
                }
                let data = self.take(size).await;
                a.body.extend_from_slice(&data);
                assert_eq!(self.line().await, "", "a chunk ends in CRLF");
            }
        } else if let Some(n) = a.field("content-length") {
            let n = n.parse().expect("a length");
            a.body = self.take(n).await;
        } else {
            while self.fill().await {}
            a.body = std::mem::take(&mut self.buf);
        }
        a
    }

    /// Whether the edge closes the connection (within 5 s) with nothing more to say.
    async fn closes(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        ) && self.buf.is_empty()
    }
}

/// An origin with a stored-for-a-minute `/a` (ETag `"v1"`), and an edge in front of it.
async fn edge_for_a() -> (Origin, Edge) {
    let o = Origin::start().await;
    o.always("/a", cached("body of a"));
    let edge = Edge::for_origin(&o).await;
    (o, edge)
}

fn cached(body: &str) -> Reply {
    Reply::ok(body)
        .header("cache-control", "max-age=60")
        .header("etag", "\"v1\"")
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_a_post_among_them_too() {
    let o = Origin::start().await;
    o.always("/a", cached("body of a"));
    o.always("/b", cached("body of b"));
    o.always("/post", Reply::ok("posted"));
    let edge = Edge::for_origin(&o).await;
    let mut s = Client::to(&edge).await;
    // All in one write: the edge's own requests, one with a body (read whole with its head),
    // then more.
    s.send(
        b"GET /a HTTP/1.1\r\nHost: demo.test\r\n\r\n\
          GET /b HTTP/1.1\r\nHost: demo.test\r\n\r\n\
          GET /a HTTP/1.1\r\nHost: demo.test\r\n\r\n\
          POST /post HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 5\r\n\r\nhello\
          GET /b HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let a = s.answer(false).await;
        assert_eq!(a.status, "HTTP/1.1 200 OK");
        bodies.push(String::from_utf8(a.body).unwrap());
    }
    assert_eq!(
        bodies,
        ["body of a", "body of b", "body of a", "posted", "body of b"]
    );
    assert!(s.closes().await, "closed after Connection: close");
    assert_eq!(o.last("/post").body.as_ref(), b"hello");
    assert_eq!(o.count("/a"), 1, "the second /a was a hit");
}

#[tokio::test]
async fn bodiless_answers_keep_the_connection_in_step() {
    let (_o, edge) = edge_for_a().await;
    let mut s = Client::to(&edge).await;
    let head = s
        .ask(b"HEAD /a HTTP/1.1\r\nHost: demo.test\r\n\r\n", true)
        .await;
    assert_eq!(head.status, "HTTP/1.1 200 OK");
    assert_eq!(head.field("content-length"), Some("9"));
    assert!(head.field("date").is_some(), "{:?}", head.fields);
    let not_modified = s
        .ask(
            b"GET /a HTTP/1.1\r\nHost: demo.test\r\nIf-None-Match: \"v1\"\r\n\r\n",
            true,
        )
        .await;
    assert_eq!(not_modified.status, "HTTP/1.1 304 Not Modified");
    let full = s.get("/a").await;
    assert_eq!(full.status, "HTTP/1.1 200 OK");
    assert_eq!(full.body, b"body of a");
    assert!(s.buf.is_empty(), "nothing beyond the answers: {:?}", s.buf);
}

#[tokio::test]
async fn http_1_0_keeps_the_connection_only_when_asked() {
    let (_o, edge) = edge_for_a().await;
    let mut s = Client::to(&edge).await;
    let kept = s
        .ask(
            b"GET /a HTTP/1.0\r\nHost: demo.test\r\nConnection: keep-alive\r\n\r\n",
            false,
        )
        .await;
    assert_eq!(kept.status, "HTTP/1.0 200 OK");
    assert_eq!(kept.field("connection"), Some("keep-alive"));
    assert_eq!(kept.body, b"body of a");
    let last = s
        .ask(b"GET /a HTTP/1.0\r\nHost: demo.test\r\n\r\n", false)
        .await;
    assert_eq!(last.status, "HTTP/1.0 200 OK");
    assert_eq!(last.body, b"body of a");
    assert!(s.closes().await, "closed after an HTTP/1.0 answer");
}

#[tokio::test]
async fn an_answer_of_unknown_length_is_chunked_and_to_http_1_0_runs_to_the_close() {
    let o = Origin::start().await;
    let big: String = (0..40_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    o.always(
        "/s",
        Reply::ok(&big)
            .header("cache-control", "max-age=60")
            .chunked(),
    );
    o.always(
        "/t",
        Reply::ok(&big)
            .header("cache-control", "max-age=60")
            .chunked(),
    );
    let edge = Edge::for_origin(&o).await;
    let mut s = Client::to(&edge).await;
    let first = s.get("/s").await;
    assert_eq!(first.field("transfer-encoding"), Some("chunked"));
    assert_eq!(first.field("content-length"), None);
    assert_eq!(first.body, big.as_bytes());
    // Stored whole by now: its length is known.
    let hit = s.get("/s").await;
    assert_eq!(hit.field("content-length"), Some("40000"));
    assert_eq!(hit.body, big.as_bytes());

    let mut s = Client::to(&edge).await;
    let old = s
        .ask(
            b"GET /t HTTP/1.0\r\nHost: demo.test\r\nConnection: keep-alive\r\n\r\n",
            false,
        )
        .await;
    assert_eq!(old.status, "HTTP/1.0 200 OK");
    assert_eq!(old.field("transfer-encoding"), None);
    assert_ne!(old.field("connection"), Some("keep-alive"));
    assert_eq!(old.body, big.as_bytes(), "the body runs to the close");
}

#[tokio::test]
async fn a_head_that_comes_in_pieces_is_answered_and_close_is_said() {
    let (_o, edge) = edge_for_a().await;
    let mut s = Client::to(&edge).await;
    let head = b"GET /a HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n";
    for piece in head.chunks(7) {
        s.send(piece).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let a = s.answer(false).await;
    assert_eq!(a.status, "HTTP/1.1 200 OK");
    assert_eq!(a.field("connection"), Some("close"));
    assert_eq!(a.body, b"body of a");
    assert!(s.closes().await);
}

#[tokio::test]
async fn a_short_body_that_comes_after_its_head_is_forwarded_whole_and_the_connection_stays_in_step(
) {
    let o = Origin::start().await;
    o.always("/a", cached("body of a"));
    o.always("/post", Reply::ok("posted"));
    let edge = Edge::for_origin(&o).await;
    let mut s = Client::to(&edge).await;
    s.send(b"PUT /post HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 11\r\n\r\nhel")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.send(b"lo wo").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The body's last bytes and the next request in one write.
    s.send(b"rldGET /a HTTP/1.1\r\nHost: demo.test\r\n\r\n")
        .await;
    let put = s.answer(false).await;
    assert_eq!(put.status, "HTTP/1.1 200 OK");
    assert_eq!(put.body, b"posted");
    let seen = o.last("/post");
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body.as_ref(), b"hello world");
    let a = s.answer(false).await;
    assert_eq!(a.body, b"body of a");
    // A body of its own, then the same object again: a hit on the same connection.
    let del = s
        .ask(
            b"DELETE /post HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
    assert_eq!(del.body, b"posted");
    assert_eq!(o.last("/post").method, "DELETE");
    assert_eq!(s.get("/a").await.body, b"body of a");
    assert_eq!(o.count("/a"), 1);
}

#[tokio::test]
async fn a_body_longer_than_the_head_limit_streams_through_hyper_and_later_requests_are_answered() {
    let o = Origin::start().await;
    o.always("/a", cached("body of a"));
    o.always("/post", Reply::ok("posted"));
    let edge = Edge::for_origin_with(&o, "max_header_size = \"8KiB\"").await;
    let mut s = Client::to(&edge).await;
    let body = vec![b'x'; 100 * 1024];
    let head = format!(
        "POST /post HTTP/1.1\r\nHost: demo.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.send(head.as_bytes()).await;
    s.send(&body).await;
    let post = s.answer(false).await;
    assert_eq!(post.status, "HTTP/1.1 200 OK");
    assert_eq!(o.last("/post").body.len(), body.len());
    assert_eq!(s.get("/a").await.body, b"body of a");
    assert_eq!(s.get("/a").await.body, b"body of a");
    assert_eq!(o.count("/a"), 1);
}

#[tokio::test]
async fn a_short_body_that_stops_coming_never_reaches_the_origin_and_its_connection_is_closed() {
    let o = Origin::start().await;
    o.always("/post", Reply::ok("posted"));
    let edge = Edge::for_origin_with(&o, "header_read_timeout = \"300ms\"").await;
    let mut s = Client::to(&edge).await;
    s.send(b"POST /post HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 10\r\n\r\nabc")
        .await;
    assert!(s.closes().await, "closed once header_read_timeout passed");
    assert_eq!(o.count("/post"), 0);
    // Others are served.
    let mut t = Client::to(&edge).await;
    let ok = t
        .ask(
            b"POST /post HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 3\r\n\r\nabc",
            false,
        )
        .await;
    assert_eq!(ok.body, b"posted");
}

#[tokio::test]
async fn a_client_that_waits_for_100_continue_gets_it_before_it_sends_its_short_body() {
    // curl's way with a body: the head alone, then the body once told to go on. The edge's own
    // path never says 100 Continue; such a request is hyper's.
    let o = Origin::start().await;
    o.always("/post", Reply::ok("posted"));
    let edge = Edge::for_origin(&o).await;
    let mut s = Client::to(&edge).await;
    s.send(
        b"POST /post HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let go_on = s.answer(true).await;
    assert_eq!(go_on.status, "HTTP/1.1 100 Continue");
    s.send(b"hello").await;
    let a = s.answer(false).await;
    assert_eq!(a.body, b"posted");
    assert_eq!(o.last("/post").body.as_ref(), b"hello");
}

#[tokio::test]
async fn a_malformed_head_is_refused_and_the_edge_stays_up() {
    let (o, edge) = edge_for_a().await;
    for bad in [
        &b"GET /a HTTP/1.1\r\nHost: demo.test\r\nBad Name: x\r\n\r\n"[..],
        b"GET /a HTTP/1.1\r\nHost: demo.test\r\nX: a\r\n folded\r\n\r\n",
        b"GET /a HTTP/9.9\r\nHost: demo.test\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\nHost: demo.test\r\n\r\n",
    ] {
        let r = raw(edge.addr, bad, Duration::from_secs(3)).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r:?} for {bad:?}");
    }
    assert_eq!(o.total(), 0);
    assert_eq!(edge.get("/a").await.text(), "body of a");
}

#[tokio::test]
async fn a_hit_from_kept_header_lines_says_what_a_hit_from_the_map_says() {
    let o = Origin::start().await;
    o.always(
        "/a",
        cached("body of a")
            .header("x-one", "1")
            .header("x-many", "a")
            .header("content-type", "text/plain"),
    );
    let edge = Edge::for_origin(&o).await;
    let mut s = Client::to(&edge).await;
    let mut got = Vec::new();
    // The miss, a hit whose thread notes the entry (a header map), then hits from its lines.
    for _ in 0..4 {
        let a = s.get("/a");
        got.push(a.await);
    }
    let fields = |a: &Answer| {
        let mut f: Vec<_> = a
            .fields
            .iter()
            .filter(|(n, _)| n != "date" && n != "age")
            .cloned()
            .collect();
        f.sort();
        f
    };
    assert!(got[1].field("cache-status").unwrap().contains("hit"));
    for later in &got[2..] {
        assert_eq!(later.status, "HTTP/1.1 200 OK");
        assert_eq!(fields(later), fields(&got[1]));
        assert_eq!(later.body, b"body of a");
        assert_eq!(
            later.fields.iter().filter(|(n, _)| n == "date").count(),
            1,
            "one Date: {:?}",
            later.fields
        );
    }
    let head = s
        .ask(b"HEAD /a HTTP/1.1\r\nHost: demo.test\r\n\r\n", true)
        .await;
    assert_eq!(fields(&head), fields(&got[1]));
    let part = s
        .ask(
            b"GET /a HTTP/1.1\r\nHost: demo.test\r\nRange: bytes=0-3\r\n\r\n",
            false,
        )
        .await;
    assert_eq!(part.status, "HTTP/1.1 206 Partial Content");
    assert_eq!(part.body, b"body");
    assert_eq!(o.count("/a"), 1);
}

#[tokio::test]
async fn on_shutdown_a_resting_connection_ends_and_one_in_flight_is_answered_with_close() {
    let o = Origin::start().await;
    o.always("/a", cached("body of a"));
    o.always(
        "/slow",
        Reply::ok("finished").delay(Duration::from_millis(600)),
    );
    let mut edge = Edge::for_origin(&o).await;
    let mut resting = Client::to(&edge).await;
    let a = resting.get("/a");
    assert_eq!(a.await.body, b"body of a");
    let mut busy = Client::to(&edge).await;
    busy.send(b"GET /slow HTTP/1.1\r\nHost: demo.test\r\n\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let done = tokio::spawn(edge.node.take().unwrap().shutdown());
    let t = std::time::Instant::now();
    assert!(resting.closes().await, "the resting connection ended");
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let last = busy.answer(false).await;
    assert_eq!(last.body, b"finished");
    assert_eq!(last.field("connection"), Some("close"));
    assert!(busy.closes().await);
    assert!(done.await.unwrap(), "finished within the grace period");
}

/// An edge before the origin of the pass-through tests: every answer `private`, with every
/// kind of field a client must not see; `/chunked` without a length, `/both` chunked with a
/// length as well.
async fn edge_before_fields_no_client_may_see() -> Edge {
    let origin = raw_origin(|mut s| async move {
        let mut buf = Vec::new();
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            buf.drain(..head_end + length);
            let (framing, body): (&str, &[u8]) = if head.starts_with("get /chunked ") {
                (
                    "Transfer-Encoding: chunked\r\n",
                    b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
                )
            } else if head.starts_with("get /both ") {
                (
                    "Transfer-Encoding: chunked\r\nContent-Length: 100\r\n",
                    b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
                )
            } else {
                ("Content-Length: 5\r\n", b"hello")
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\nServer: origin\r\nDate: {}\r\nContent-Type: text/plain\r\n\
                 {framing}Cache-Control: private\r\nConnection: keep-alive, X-Secret\r\n\
                 X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n\
                 Trailer: X-T\r\nSurrogate-Key: tag\r\nSurrogate-Control: no-store\r\n\
                 Meridian-Fetched: 1\r\nSet-Cookie: a=b\r\nX-Kept: yes\r\nX-Kept: again\r\n\r\n",
                httpdate::fmt_http_date(std::time::SystemTime::now())
            );
            let mut out = answer.into_bytes();
            out.extend_from_slice(body);
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    })
    .await;
    Edge::start(
        &site("demo", "demo.test", &format!("http://{origin}"), ""),
        "",
    )
    .await
}

#[tokio::test]
async fn a_pass_through_answer_written_from_its_lines_says_what_one_from_the_map_says() {
    let edge = edge_before_fields_no_client_may_see().await;
    let mut s = Client::to(&edge).await;
    // The first answer comes through the fill (a header map); the URL is then known
    // uncacheable, and the later ones pass through (their fields as lines), as a POST does.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(s.get("/p").await);
    }
    got.push(
        s.ask(
            b"POST /p HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 3\r\n\r\nabc",
            false,
        )
        .await,
    );
    got.push(s.get("/chunked").await);
    got.push(s.get("/chunked").await);
    fn names(a: &Answer) -> Vec<&str> {
        let mut n: Vec<&str> = a.fields.iter().map(|(n, _)| n.as_str()).collect();
        n.sort();
        n
    }
    let want = [
        "cache-control",
        "cache-status",
        "content-length",
        "content-type",
        "date",
        "server",
        "set-cookie",
        "via",
        "x-kept",
        "x-kept",
    ];
    for (i, a) in got.iter().enumerate() {
        assert_eq!(a.status, "HTTP/1.1 200 OK", "answer {i}");
        assert_eq!(a.body, b"hello", "answer {i}");
        let mut want = want.to_vec();
        if i >= 4 {
            want[2] = "transfer-encoding";
            want.sort();
        }
        assert_eq!(names(a), want, "answer {i}: {:?}", a.fields);
        assert_eq!(a.field("via"), Some(format!("1.1 {}", edge.id).as_str()));
        let kept: Vec<&str> = a
            .fields
            .iter()
            .filter(|(n, _)| n == "x-kept")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(kept, ["yes", "again"], "answer {i}");
    }
    let status = |i: usize| got[i].field("cache-status").unwrap();
    assert!(status(0).contains("fwd=miss"), "{}", status(0));
    assert!(
        status(1).contains("fwd=uri-miss") && status(1).contains("detail=uncacheable"),
        "{}",
        status(1)
    );
    assert!(status(3).contains("fwd=method"), "{}", status(3));
    assert!(status(5).contains("detail=uncacheable"), "{}", status(5));
    assert_eq!(got[1].fields.len(), got[0].fields.len());
}

#[tokio::test]
async fn an_answer_framed_by_both_chunks_and_a_length_reaches_the_client_without_the_length() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a proxy that forwards such
    // a message removes the length first. Kept, it would frame the re-framed body wrongly.
    let edge = edge_before_fields_no_client_may_see().await;
    let mut s = Client::to(&edge).await;
    // Through a header map (the fill), then as lines (a pass-through), on one connection.
    for i in 0..2 {
        let a = s.get("/both").await;
        assert_eq!(a.status, "HTTP/1.1 200 OK", "answer {i}");
        assert_eq!(
            a.field("content-length"),
            None,
            "answer {i}: {:?}",
            a.fields
        );
        assert_eq!(a.field("transfer-encoding"), Some("chunked"), "answer {i}");
        assert_eq!(a.body, b"hello", "answer {i}");
    }
}
