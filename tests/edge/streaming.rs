//! Streaming fill (read-while-write): a cacheable miss reaches its clients as it arrives from
//! the origin, the leader and every collapsed follower alike, while it is stored; a body that
//! breaks off aborts every reader and stores nothing.
//!
//! The origin here holds its body at a gate the test opens, so "before the origin finished" is
//! an order of events, not a timing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::common::*;

const LEN: usize = 200_000;
const FIRST: usize = 50_000;

fn body() -> Vec<u8> {
    (0..LEN).map(|i| (i % 251) as u8).collect()
}

/// How the held origin ends the body of its first answer once the gate opens.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Sends the rest.
    Finish,
    /// Closes the connection short of the declared length.
    Cut,
}

/// An HTTP/1.1 origin whose first answer sends its head and `FIRST` bytes of a `LEN`-byte
/// cacheable body, then waits for the gate; later answers send the whole body at once.
struct HeldOrigin {
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    requests: Arc<AtomicUsize>,
}

impl HeldOrigin {
    async fn start(then: Then) -> HeldOrigin {
        let gate = Arc::new(Semaphore::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (g, n) = (gate.clone(), requests.clone());
        let addr = raw_origin(move |mut s| {
            let (gate, requests) = (g.clone(), n.clone());
            async move {
                let body = body();
                loop {
                    if !read_request_head(&mut s).await {
                        return;
                    }
                    let nth = requests.fetch_add(1, Ordering::SeqCst);
                    let resp_head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\ncache-control: max-age=60\r\n\
                         content-type: application/octet-stream\r\netag: \"v1\"\r\n\r\n"
                    );
                    if s.write_all(resp_head.as_bytes()).await.is_err() {
                        return;
                    }
                    if nth > 0 {
                        let _ = s.write_all(&body).await;
                        continue;
                    }
                    let _ = s.write_all(&body[..FIRST]).await;
                    let _ = s.flush().await;
                    let _permit = gate.acquire().await;
                    if then == Then::Cut {
                        return;
                    }
                    let _ = s.write_all(&body[FIRST..]).await;
                }
            }
        })
        .await;
        HeldOrigin {
            addr,
            gate,
            requests,
        }
    }

    fn open(&self) {
        self.gate.add_permits(1000);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn edge_for(o: &HeldOrigin) -> Edge {
    edge_at(o.addr, "").await
}

/// An edge for site `demo` (`demo.test`) on the origin at `origin`; `extra` goes in `[edge]`.
async fn edge_at(origin: SocketAddr, extra: &str) -> Edge {
    Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{origin}"),
            "origin_read_timeout = \"5s\"",
        ),
        extra,
    )
    .await
}

/// Sends a GET and returns the response with its body still streaming.
async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Response<Incoming> {
    let mut req = Request::get(format!("http://{addr}{path}")).header("host", "demo.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("the head arrives while the origin holds its body")
    .expect("request failed")
}

/// Reads body bytes until at least `n` have come (or the body ends or fails).
async fn read_at_least(body: &mut Incoming, n: usize) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), body.frame()).await {
            Err(_) => return Err(format!("stalled after {} bytes", got.len())),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(format!("{e} after {} bytes", got.len())),
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    got.extend_from_slice(&d);
                }
            }
        }
    }
    Ok(got)
}

/// Reads the body to its end; an error if it was aborted.
async fn read_rest(body: &mut Incoming) -> Result<Vec<u8>, String> {
    read_at_least(body, usize::MAX).await
}

#[tokio::test]
async fn the_leader_and_its_followers_read_the_body_while_it_arrives() {
    let o = HeldOrigin::start(Then::Finish).await;
    let edge = edge_for(&o).await;
    let whole = body();

    let mut leader = open(edge.addr, "/v", &[]).await;
    assert_eq!(leader.status(), 200);
    let cs = leader.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(cs.contains("fwd=miss") && cs.contains("stored"), "{cs}");
    assert_eq!(leader.headers()["content-length"], LEN.to_string().as_str());
    let first = read_at_least(leader.body_mut(), FIRST).await.unwrap();
    assert_eq!(first[..], whole[..FIRST], "the leader got the first bytes");

    // Followers that come while the body is still held get its head and what has arrived.
    let mut followers = Vec::new();
    for _ in 0..20 {
        let mut f = open(edge.addr, "/v", &[]).await;
        assert_eq!(f.status(), 200);
        let cs = f.headers()["cache-status"].to_str().unwrap();
        assert!(cs.contains("collapsed"), "{cs}");
        let got = read_at_least(f.body_mut(), FIRST).await.unwrap();
        assert_eq!(got[..], whole[..FIRST]);
        followers.push((f, got));
    }
    // A HEAD joins too, and needs no body.
    let head = request("HEAD", edge.addr, "demo.test", "/v", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(o.requests(), 1, "one origin request while the body is held");

    o.open();
    let rest = read_rest(leader.body_mut()).await.unwrap();
    assert_eq!(
        [first, rest].concat(),
        whole,
        "the leader got the whole body"
    );
    for (mut f, got) in followers {
        let rest = read_rest(f.body_mut()).await.unwrap();
        assert_eq!([got, rest].concat(), whole, "a follower got the whole body");
    }
    let hit = edge.get("/v").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.body[..], whole[..]);
    assert_eq!(o.requests(), 1);
}

#[tokio::test]
async fn a_body_cut_off_while_filling_aborts_every_reader_and_is_not_stored() {
    let o = HeldOrigin::start(Then::Cut).await;
    let edge = edge_for(&o).await;

    let mut leader = open(edge.addr, "/c", &[]).await;
    read_at_least(leader.body_mut(), FIRST).await.unwrap();
    let mut follower = open(edge.addr, "/c", &[]).await;
    read_at_least(follower.body_mut(), FIRST).await.unwrap();
    // An HTTP/2 follower too: its stream must be reset, not ended.
    let mut send = h2c::<Empty<Bytes>>(edge.addr).await;
    let req = Request::get("http://demo.test/c")
        .version(http::Version::HTTP_2)
        .body(Empty::new())
        .unwrap();
    let mut h2 = send.send_request(req).await.unwrap();
    assert_eq!(h2.status(), 200);
    read_at_least(h2.body_mut(), FIRST).await.unwrap();

    o.open();
    for (who, body) in [
        ("leader", leader.body_mut()),
        ("follower", follower.body_mut()),
        ("h2 follower", h2.body_mut()),
    ] {
        let end = read_rest(body).await;
        assert!(end.is_err(), "{who}: aborted, not a clean end: {end:?}");
    }

    // Nothing was stored: the next request fetches again and gets the whole body.
    let again = edge.get("/c").await;
    assert_eq!(again.status, 200);
    assert!(!again.is_hit(), "{}", again.cache_status());
    assert_eq!(again.body[..], body()[..]);
    assert_eq!(o.requests(), 2);
    let metrics = edge.admin_get("/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meridian_origin_errors_total") && l.contains("body")),
        "the cut is counted as an origin body error"
    );
}

#[tokio::test]
async fn ranges_of_an_object_being_filled_come_from_the_fill() {
    let o = HeldOrigin::start(Then::Finish).await;
    let edge = edge_for(&o).await;
    let whole = body();

    let mut leader = open(edge.addr, "/r", &[]).await;
    read_at_least(leader.body_mut(), FIRST).await.unwrap();

    // A range within what has arrived is answered at once.
    let mut early = open(edge.addr, "/r", &[("range", "bytes=1000-1999")]).await;
    assert_eq!(early.status(), 206);
    assert_eq!(
        early.headers()["content-range"],
        format!("bytes 1000-1999/{LEN}")
    );
    let got = read_rest(early.body_mut()).await.unwrap();
    assert_eq!(got[..], whole[1000..2000]);

    // A range past it waits for its bytes; several ranges wait for the whole body.
    let late = tokio::spawn({
        let addr = edge.addr;
        async move {
            let mut r = open(addr, "/r", &[("range", "bytes=-100")]).await;
            let status = r.status();
            (status, read_rest(r.body_mut()).await.unwrap())
        }
    });
    let multi = tokio::spawn({
        let addr = edge.addr;
        async move {
            let mut r = open(addr, "/r", &[("range", "bytes=0-9,150000-150009")]).await;
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            (r.status(), ct, read_rest(r.body_mut()).await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!late.is_finished(), "the suffix has not arrived yet");
    o.open();
    let (status, got) = late.await.unwrap();
    assert_eq!(status, 206);
    assert_eq!(got[..], whole[LEN - 100..]);
    let (status, ct, _) = multi.await.unwrap();
    assert_eq!(status, 206);
    assert!(ct.starts_with("multipart/byteranges"), "{ct}");
    read_rest(leader.body_mut()).await.unwrap();
    assert_eq!(o.requests(), 1, "no range went to the origin");
}

#[tokio::test]
async fn a_client_that_leaves_mid_body_does_not_stop_the_fill() {
    let o = HeldOrigin::start(Then::Finish).await;
    let edge = edge_for(&o).await;
    let mut leader = open(edge.addr, "/l", &[]).await;
    read_at_least(leader.body_mut(), FIRST).await.unwrap();
    drop(leader);
    o.open();
    for _ in 0..100 {
        let r = edge.get("/l").await;
        if r.is_hit() {
            assert_eq!(r.body[..], body()[..]);
            assert_eq!(o.requests(), 1);
            return;
        }
        // A request between the open gate and the stored entry reads the fill.
        assert!(
            r.cache_status().contains("collapsed"),
            "{}",
            r.cache_status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the fill never completed");
}

/// Reads an HTTP/3 body until at least `n` bytes have come (or it ends or fails).
async fn read_h3(resp: &mut meridian::h3client::H3Response, n: usize) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
            Err(_) => return Err(format!("stalled after {} bytes", got.len())),
            Ok(Ok(Some(b))) => got.extend_from_slice(&b),
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e),
        }
    }
    Ok(got)
}

#[tokio::test]
async fn http3_clients_read_a_fill_as_it_arrives_and_see_a_cut_one_reset() {
    for then in [Then::Finish, Then::Cut] {
        let o = HeldOrigin::start(then).await;
        let (ca, dir) = (crate::tls::Ca::new(), tempfile::tempdir().unwrap());
        let files = crate::tls::write(dir.path(), "demo", &ca.issue(&["demo.test"]));
        let site = site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            &format!(
                "origin_read_timeout = \"5s\"\ntls_cert = {:?}\ntls_key = {:?}\n",
                files.0, files.1
            ),
        );
        let edge = Edge::start(&site, "[edge.quic]\nlisten = [\"127.0.0.1:0\"]\n").await;
        let quic = edge.node.as_ref().unwrap().h3_addrs()[0];
        let client = meridian::h3client::H3Client::connect(
            quic,
            "demo.test",
            ca.client(&[&rustls::version::TLS13]),
        )
        .await
        .unwrap();
        let get = || {
            Request::get("https://demo.test/h")
                .body(Bytes::new())
                .unwrap()
        };
        let whole = body();

        // The leader and a follower over HTTP/3 get the first bytes while the origin holds the
        // rest.
        let mut leader = client.open(get()).await.unwrap();
        assert_eq!(leader.head.status(), 200);
        let first = read_h3(&mut leader, FIRST).await.unwrap();
        assert_eq!(first[..], whole[..FIRST]);
        let mut follower = client.open(get()).await.unwrap();
        let cs = follower.head.headers()["cache-status"].to_str().unwrap();
        assert!(cs.contains("collapsed"), "{cs}");
        let got = read_h3(&mut follower, FIRST).await.unwrap();
        assert_eq!(got[..], whole[..FIRST]);
        assert_eq!(o.requests(), 1);

        o.open();
        for (who, resp, got) in [
            ("leader", &mut leader, first),
            ("follower", &mut follower, got),
        ] {
            let rest = read_h3(resp, usize::MAX).await;
            match then {
                Then::Finish => assert_eq!([got, rest.unwrap()].concat(), whole, "{who}"),
                Then::Cut => assert!(rest.is_err(), "{who}: a clean end over a cut body"),
            }
        }
        client.close().await;
    }
}

/// What fills hold in memory until their bodies are stored is bounded (a quarter of
/// `cache_memory`, at least the largest object kept in memory: 4 MiB here). A miss whose
/// declared length does not fit beside the fills in progress is passed through unstored, at its
/// client's pace, and a later request stores it once there is room. Without the bound, enough
/// misses at once for large objects would hold any amount of memory.
#[tokio::test]
async fn fills_in_progress_hold_at_most_their_share_of_memory() {
    const BIG: usize = 3 << 19;
    let big: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    let gate = Arc::new(Semaphore::new(0));
    let (g, b) = (gate.clone(), big.clone());
    let addr = raw_origin(move |mut s| {
        let (gate, big) = (g.clone(), b.clone());
        async move {
            loop {
                if !read_request_head(&mut s).await {
                    return;
                }
                let resp_head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\ncache-control: max-age=60\r\n\r\n"
                );
                if s.write_all(resp_head.as_bytes()).await.is_err() {
                    return;
                }
                let _ = s.write_all(&big[..FIRST]).await;
                let _ = s.flush().await;
                drop(gate.acquire().await);
                if s.write_all(&big[FIRST..]).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let edge = edge_at(addr, "cache_memory = \"16MiB\"\nmax_object_size = \"4MiB\"").await;
    let status =
        |r: &http::Response<Incoming>| r.headers()["cache-status"].to_str().unwrap().to_string();
    // Three misses at once, each held by the origin: two fit (3 MiB of 4), the third does not.
    let mut a = open(edge.addr, "/a", &[]).await;
    let mut b = open(edge.addr, "/b", &[]).await;
    let mut c = open(edge.addr, "/c", &[]).await;
    assert!(!status(&a).contains("fills-full"), "{}", status(&a));
    assert!(!status(&b).contains("fills-full"), "{}", status(&b));
    assert!(status(&c).contains("fills-full"), "{}", status(&c));
    gate.add_permits(1000);
    for body in [&mut a, &mut b, &mut c] {
        let got = read_rest(body.body_mut()).await.unwrap();
        assert!(got == big, "a whole body ({} bytes)", got.len());
    }
    let metrics = get(edge.admin, "admin", "/metrics", &[]).await.text();
    let full = format!("meridian_cache_fills_full_total{{node=\"{}\"}} 1", edge.id);
    assert!(metrics.contains(&full), "{full} in\n{metrics}");
    // The two stored are hits (once their stores are done); the third is fetched again, and
    // stored now.
    let hit = |path: &'static str| {
        let edge = &edge;
        async move {
            for _ in 0..100 {
                let r = edge.get(path).await;
                if r.is_hit() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    assert!(hit("/a").await && hit("/b").await);
    let r = edge.get("/c").await;
    assert!(
        r.cache_status().contains("fwd=miss"),
        "{}",
        r.cache_status()
    );
    assert!(r.body[..] == big[..]);
    assert!(hit("/c").await);
}

/// A fill that is not stored (no declared length, and past `max_object_size`) reads its origin
/// no further ahead of its slowest client than about a megabyte, plus what the sockets buffer:
/// a client that reads nothing cannot make the edge hold the origin's whole body.
#[tokio::test]
async fn a_fill_not_stored_reads_its_origin_no_faster_than_its_client() {
    const TOTAL: usize = 96 << 20;
    const PIECE: usize = 64 << 10;
    let sent = Arc::new(AtomicUsize::new(0));
    let s2 = sent.clone();
    let addr = raw_origin(move |mut s| {
        let sent = s2.clone();
        async move {
            if !read_request_head(&mut s).await {
                return;
            }
            let resp_head = "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\
                             transfer-encoding: chunked\r\n\r\n";
            if s.write_all(resp_head.as_bytes()).await.is_err() {
                return;
            }
            let mut piece = format!("{PIECE:x}\r\n").into_bytes();
            piece.extend(std::iter::repeat_n(b'x', PIECE));
            piece.extend_from_slice(b"\r\n");
            while sent.load(Ordering::SeqCst) < TOTAL {
                if s.write_all(&piece).await.is_err() {
                    return;
                }
                sent.fetch_add(PIECE, Ordering::SeqCst);
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
        }
    })
    .await;
    let edge = edge_at(addr, "cache_memory = \"4MiB\"\nmax_object_size = \"1MiB\"").await;
    let mut resp = open(edge.addr, "/huge", &[]).await;
    // The client reads nothing for a while: the origin gets as far as the edge reads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ahead = sent.load(Ordering::SeqCst);
    assert!(
        ahead < TOTAL / 2,
        "the origin sent {} MiB to a client that read none",
        ahead >> 20
    );
    // Then it reads everything.
    let got = read_rest(resp.body_mut()).await.unwrap();
    assert_eq!(got.len(), TOTAL);
    assert!(got.iter().all(|&b| b == b'x'));
}
