//! HTTP/2 as an attacker speaks it, in raw frames over cleartext (prior knowledge): streams
//! opened and reset in bulk (CVE-2023-44487), a header block that never ends (CONTINUATION
//! flood), a flood of pings and settings from a client that never reads, and a connection's
//! streams held open at the origin. Each ends or stalls that connection, costs the origin no
//! more than the site allows, and leaves the edge serving everyone else.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::h2raw::*;
use crate::common::*;

/// A connection that has sent the preface and empty settings.
async fn open(edge: &Edge) -> TcpStream {
    let mut s = TcpStream::connect(edge.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

/// How the edge ended a connection: the GOAWAY's error code if it sent one, and whether it
/// closed the connection.
#[derive(Debug, Default)]
struct End {
    goaway: Option<u32>,
    closed: bool,
    /// HEADERS frames the edge sent (answers).
    answers: usize,
}

/// A frame the edge sent.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The first frame in `buf`, taken off it, once it is whole.
fn take_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    if buf.len() < 9 {
        return None;
    }
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
    if buf.len() < 9 + len {
        return None;
    }
    let frame = Frame {
        kind: buf[3],
        flags: buf[4],
        stream: u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff,
        payload: buf[9..9 + len].to_vec(),
    };
    buf.drain(..9 + len);
    Some(frame)
}

/// Reads the edge's frames until it closes the connection or `limit` passes.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> End {
    let deadline = Instant::now() + limit;
    let mut end = End::default();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some(f) = take_frame(&mut buf) {
            match f.kind {
                GOAWAY if f.payload.len() >= 8 => {
                    end.goaway = Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()))
                }
                HEADERS => end.answers += 1,
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                end.closed = true;
                return end;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return end,
        }
    }
}

/// Writes `batch` again and again until `limit` bytes went, the edge stops taking them (a
/// write waits 2 s) or closes, or 10 s pass; the bytes it took.
async fn send_until_refused(s: &mut TcpStream, batch: &[u8], limit: usize) -> usize {
    let mut sent = 0usize;
    let start = Instant::now();
    while sent < limit && start.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(_)) | Err(_) => break,
        }
    }
    sent
}

/// Another client, after the attack, is served as usual.
async fn still_serves(edge: &Edge) {
    let r = edge.get("/ok").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "fine".to_string()));
}

async fn edge_and_origin() -> (Origin, Edge) {
    let o = Origin::start().await;
    o.always("/ok", Reply::ok("fine"));
    let edge = Edge::for_origin(&o).await;
    (o, edge)
}

/// Rapid reset: a thousand streams, each reset as soon as it is opened, on distinct paths (so
/// nothing collapses). The edge answers with GOAWAY `ENHANCE_YOUR_CALM` and closes, and the
/// origin is asked for at most a few of them.
#[tokio::test]
async fn streams_opened_and_reset_in_bulk_end_the_connection() {
    let (o, edge) = edge_and_origin().await;
    let mut s = open(&edge).await;
    let mut attack = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        attack.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            id,
            &get_block(&format!("/r/{i}"), "demo.test"),
        ));
        attack.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The edge may close while this is still being written.
    let _ = s.write_all(&attack).await;
    let end = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(end.closed, "the connection stayed open: {end:?}");
    assert_eq!(end.goaway, Some(ENHANCE_YOUR_CALM), "{end:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(o.total() < 100, "the origin was asked {} times", o.total());
    still_serves(&edge).await;
}

/// CONTINUATION flood: a header block that never ends, one small frame after another, far
/// past the edge's header limit. The edge ends the connection without reading it all.
#[tokio::test]
async fn a_header_block_that_never_ends_ends_the_connection() {
    let (o, edge) = edge_and_origin().await;
    let mut s = open(&edge).await;
    s.write_all(&frame(
        HEADERS,
        END_STREAM,
        1,
        &get_block("/flood", "demo.test"),
    ))
    .await
    .unwrap();
    // A literal field with a new name: 0x00, name length, name, value length, value.
    let mut field = vec![0x00, 3];
    field.extend_from_slice(b"x-a");
    field.push(100);
    field.extend_from_slice(&[b'a'; 100]);
    let one = frame(CONTINUATION, 0, 1, &field);
    let batch: Vec<u8> = one.repeat(1000);
    // Up to 16 MiB, 250 times the edge's limit on a head; it should stop reading long before
    // (with no limit on the header list, h2 read about 38 MiB of this before giving up).
    let sent = send_until_refused(&mut s, &batch, 16 << 20).await;
    assert!(sent < 16 << 20, "the edge read 16 MiB of one header block");
    let end = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(end.closed, "the connection stayed open: {end:?}");
    assert_eq!(end.answers, 0, "{end:?}");
    assert_eq!(o.count("/flood"), 0);
    still_serves(&edge).await;
}

/// A client that sends pings and settings without end and never reads: the edge's answers
/// (PING acks, SETTINGS acks) pile up nowhere; it stops reading that connection (TCP pushes
/// back) instead of queueing them, and serves the rest.
#[tokio::test]
async fn pings_and_settings_from_a_client_that_never_reads_are_not_queued() {
    let (_o, edge) = edge_and_origin().await;
    let mut s = open(&edge).await;
    let mut batch = Vec::new();
    for i in 0..1000u64 {
        batch.extend(frame(PING, 0, 0, &i.to_be_bytes()));
        batch.extend(frame(SETTINGS, 0, 0, &[]));
    }
    // 64 MiB of them at most: with nothing read on our side, the edge's writes fill the
    // socket buffers, and then it must stop taking more, or end the connection.
    let sent = send_until_refused(&mut s, &batch, 64 << 20).await;
    assert!(sent < 64 << 20, "the edge took 64 MiB of pings unanswered");
    still_serves(&edge).await;
    // Empty DATA frames on a stream that does not exist are a connection error, not work.
    let mut s = open(&edge).await;
    let _ = s.write_all(&frame(DATA, 0, 1, &[])).await;
    let end = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(end.closed, "{end:?}");
    assert!(end.goaway.is_some(), "{end:?}");
}

/// One connection's 64 streams, each on a private object whose origin sends a few bytes and
/// then nothing (so every one would hold an origin connection until `origin_read_timeout`):
/// the origin sees no more of them at once than the client's share of the site's slots
/// (`max_origin_requests_per_client`, a quarter of `max_origin_requests` by default); past it
/// they get 429 once `connect_timeout` has passed; the same client's next request too, while
/// another client is still served from the slots left; the slots come back when the connection
/// goes. Before the share, the one connection held all of the site's slots and every other
/// client got 503.
#[tokio::test]
async fn one_connection_holds_no_more_origin_requests_than_its_clients_share() {
    let o = Origin::start().await;
    o.always(
        "/ok",
        Reply::ok("fine").header("cache-control", "max-age=60"),
    );
    o.always("/after", Reply::ok("after"));
    for i in 0..64 {
        o.always(
            &format!("/hold/{i}"),
            Reply::ok(&"x".repeat(1000))
                .header("cache-control", "private")
                .stall_after(10),
        );
    }
    let edge = Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            "max_origin_requests = 8\nconnect_timeout = \"300ms\"",
        ),
        "",
    )
    .await;
    still_serves(&edge).await;
    let mut s = open(&edge).await;
    let mut attack = Vec::new();
    for i in 0..64u32 {
        attack.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &get_block(&format!("/hold/{i}"), "demo.test"),
        ));
    }
    s.write_all(&attack).await.unwrap();
    // The 62 past the share are answered 429 after 300 ms; the 2 stay open.
    let end = read_until_closed(&mut s, Duration::from_secs(2)).await;
    assert!(!end.closed, "{end:?}");
    assert_eq!(end.answers, 64, "{end:?}");
    assert_eq!(o.total(), 1 + 2, "the origin was asked {} times", o.total());
    let metrics = edge.admin_get("/metrics").await.text();
    let in_flight = metrics
        .lines()
        .find(|l| {
            l.starts_with("meridian_origin_requests{")
                && l.contains(&format!("node=\"{}\"", edge.id))
                && l.contains("site=\"demo\"")
        })
        .unwrap_or_default();
    assert!(in_flight.ends_with(" 2"), "{in_flight:?}");
    still_serves(&edge).await;
    let r = edge.get("/after").await;
    assert_eq!(
        (r.status.as_u16(), r.text()),
        (429, "too many of your requests at the origin\n".to_string())
    );
    // Another client reaches the origin meanwhile.
    let r = get_from([127, 0, 0, 2].into(), edge.addr, "demo.test", "/after").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "after".to_string()));
    // Gone: its streams' slots are free again.
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = edge.get("/after").await;
        if r.status == 200 {
            assert_eq!(r.text(), "after");
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back: {}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client that opens a large answer with every stream's window shut (initial window 0) and
/// never opens it, keeping its connection alive with pings (which the edge acknowledges, so
/// the connection itself keeps moving bytes): once the answer has waited on the client for
/// `send_timeout`, the edge lets go of it, and with it of its origin connection (here the
/// site's one origin slot, which the next request then gets); the stream is reset when the
/// window opens. (A `send_timeout` longer than the next request's wait for a slot, so that
/// the first one asked finds it held.) Before, the pings' acknowledgements counted as
/// progress and the slot was held for as long as they came.
#[tokio::test]
async fn an_http2_answer_whose_window_never_opens_is_let_go_after_send_timeout() {
    let o = Origin::start().await;
    big_and_next(&o);
    let edge = one_slot_edge(&o, "idle_timeout = \"500ms\"\nsend_timeout = \"1s\"").await;
    // Once asked for, `/big` is known to be private: from then on it is passed through, its
    // body read from the origin only as the client takes it.
    assert_eq!(edge.get("/big").await.body.len(), 32 << 20);
    let shut = WindowShut::ask(&edge, "/big").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = edge.get("/next").await;
    assert_eq!(
        r.status.as_u16(),
        503,
        "the answer holds the slot: {}",
        r.text()
    );
    until_served(
        edge.addr,
        "demo.test",
        "/next",
        "the answer whose window never opens still holds its origin slot",
    )
    .await;
    // Opened now, the stream gets what hyper had of it, then its reset.
    let (reset, _) = shut.open().await;
    assert!(reset.is_some(), "stream 1 was reset, not ended cleanly");
}

/// An origin with `path`, `len` bytes under `cache_control`, and an edge in front of it whose
/// idle and send timeouts are 300 ms.
async fn quick_to_time_out(path: &str, len: usize, cache_control: &str) -> (Origin, Edge) {
    let o = Origin::start().await;
    o.always(
        path,
        Reply::ok("")
            .body_bytes(vec![b'y'; len])
            .header("cache-control", cache_control),
    );
    let edge = Edge::start(
        &site("demo", "demo.test", &format!("http://{}", o.addr), ""),
        "idle_timeout = \"300ms\"\nsend_timeout = \"300ms\"",
    )
    .await;
    (o, edge)
}

/// The other side of the rule above: a client that reads a large answer slowly but steadily
/// (its windows opening as it reads, 64 KiB every 100 ms) gets all of it, though the whole
/// takes many times `send_timeout`.
#[tokio::test]
async fn an_http2_answer_read_slowly_but_steadily_is_sent_whole() {
    use http_body_util::BodyExt;
    let (_o, edge) = quick_to_time_out("/slow", 2 << 20, "private").await;
    let mut send = h2c(edge.addr).await;
    let req = hyper::Request::get("http://demo.test/slow")
        .version(hyper::Version::HTTP_2)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let start = Instant::now();
    let mut body = resp.into_body();
    let (mut got, mut since_pause) = (0usize, 0usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("no reset");
        if let Ok(data) = frame.into_data() {
            got += data.len();
            since_pause += data.len();
        }
        if since_pause >= 64 * 1024 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{got} bytes in 20 s"
        );
    }
    assert_eq!(got, 2 << 20);
    assert!(start.elapsed() > Duration::from_millis(900), "read slowly");
}

/// An HTTP/2 connection that asks for a path on stream 1 with every stream's window shut
/// (SETTINGS_INITIAL_WINDOW_SIZE 0), keeps itself alive with a ping every 50 ms, and reads
/// what the edge sends.
struct WindowShut {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pinger: tokio::task::JoinHandle<tokio::net::tcp::OwnedWriteHalf>,
    /// Stream 1's reset code (`None`: it ended whole, or the connection ended) and the DATA
    /// bytes it got.
    reader: tokio::task::JoinHandle<(Option<u32>, usize)>,
}

impl WindowShut {
    async fn ask(edge: &Edge, path: &str) -> WindowShut {
        let mut s = TcpStream::connect(edge.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut hello = PREFACE.to_vec();
        let mut setting = 4u16.to_be_bytes().to_vec();
        setting.extend_from_slice(&0u32.to_be_bytes());
        hello.extend(frame(SETTINGS, 0, 0, &setting));
        hello.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            1,
            &get_block(path, "demo.test"),
        ));
        s.write_all(&hello).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let pinger = tokio::spawn(async move {
            for i in 0..400u64 {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                wr.write_all(&frame(PING, 0, 0, &i.to_be_bytes()))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            wr
        });
        let reader = tokio::spawn(async move {
            let (mut buf, mut got) = (Vec::new(), 0usize);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                while let Some(f) = take_frame(&mut buf) {
                    if f.stream == 1 && f.kind == RST_STREAM {
                        let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                        return (Some(code), got);
                    }
                    if f.stream == 1 && f.kind == DATA {
                        got += f.payload.len();
                        if f.flags & END_STREAM != 0 {
                            return (None, got);
                        }
                    }
                }
                match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return (None, got),
                }
            }
        });
        WindowShut {
            stop,
            pinger,
            reader,
        }
    }

    /// Stops the pings, opens stream 1's window and the connection's all the way, and says how
    /// stream 1 ended.
    async fn open(self) -> (Option<u32>, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut wr = self.pinger.await.unwrap();
        let mut opening = frame(WINDOW_UPDATE, 0, 1, &(1u32 << 30).to_be_bytes());
        opening.extend(frame(WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes()));
        wr.write_all(&opening).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.reader)
            .await
            .expect("the edge's frames end")
            .unwrap()
    }
}

/// The same for an answer from the store: hyper took a stored body whole and kept what the
/// window held back, out of reach, for as long as the pings came (256 streams of 1 MiB bodies
/// read back from disk held 256 MiB). Now it is handed over 64 KiB at a time, and what the
/// client never took goes with the answer after `send_timeout`: opened then, the stream gets
/// a piece or so and its reset, not the whole body.
#[tokio::test]
async fn a_stored_answer_whose_window_never_opens_is_let_go_after_send_timeout() {
    let (o, edge) = quick_to_time_out("/stored", 1 << 20, "max-age=60").await;
    assert_eq!(edge.get("/stored").await.body.len(), 1 << 20);
    let shut = WindowShut::ask(&edge, "/stored").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (reset, got) = shut.open().await;
    assert!(
        reset.is_some(),
        "stream 1 was reset, not ended cleanly ({got} bytes)"
    );
    assert!(got < 1 << 20, "{got} bytes: the whole body was kept for it");
    assert_eq!(o.count("/stored"), 1);
}
