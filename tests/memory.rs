//! Memory of a running edge (the `meridian` binary, so its resident memory is its own): requests
//! that nobody scrapes metrics for do not make it grow, and `cache_memory` bounds it under a
//! flood of small objects and gives memory back after a purge. Linux only (reads /proc).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

/// An origin that answers any GET with `size` bytes, fresh for an hour, on keep-alive
/// connections.
async fn any_path_origin(size: usize) -> SocketAddr {
    raw_origin(move |mut s| async move {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nCache-Control: max-age=3600\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let mut reply = head.into_bytes();
        reply.extend(std::iter::repeat_n(b'x', size));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            // Requests have no bodies: one answer per complete head.
            while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..i + 4);
                if s.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// A `meridian run` child with one site in front of `origin`; killed on drop.
struct EdgeProcess {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EdgeProcess {
    fn start(origin: SocketAddr, edge: &str) -> EdgeProcess {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("origins.toml"),
            site("demo", "demo.test", &format!("http://{origin}"), ""),
        )
        .unwrap();
        std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(
            dir.path().join("node.toml"),
            format!(
                "id = \"mem\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[log]\nformat = \"json\"\naccess_log = false\n\
[edge]\nlisten = [\"127.0.0.1:0\"]\n{edge}\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["run", "-c"])
            .arg(dir.path().join("node.toml"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap())
            .lines()
            .map_while(Result::ok);
        let started: serde_json::Value = serde_json::from_str(&lines.next().unwrap()).unwrap();
        std::thread::spawn(move || lines.for_each(drop));
        // Space-separated addresses: the first.
        let addr = |k: &str| -> SocketAddr {
            let text = started[k].as_str().unwrap();
            text.split(' ').next().unwrap().parse().unwrap()
        };
        EdgeProcess {
            http: addr("http"),
            admin: addr("admin"),
            child,
            _dir: dir,
        }
    }

    fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }
}

/// Sends `count` GETs (paths from `path(i)`) pipelined in batches on `conns` connections and
/// reads every answer; returns how many were 200.
async fn pipelined(
    addr: SocketAddr,
    count: usize,
    conns: usize,
    path: impl Fn(usize) -> String + Send + Sync + Clone + 'static,
) -> usize {
    const BATCH: usize = 200;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut ok = 0;
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 65536];
            let mine: Vec<usize> = (c..count).step_by(conns).collect();
            for batch in mine.chunks(BATCH) {
                let mut out = Vec::new();
                for &i in batch {
                    out.extend_from_slice(
                        format!("GET {} HTTP/1.1\r\nHost: demo.test\r\n\r\n", path(i)).as_bytes(),
                    );
                }
                s.write_all(&out).await.unwrap();
                let mut answered = 0;
                while answered < batch.len() {
                    // Parse as many complete responses as the buffer holds.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        if head.starts_with("http/1.1 200") {
                            ok += 1;
                        }
                        buf.drain(..end + 4 + len);
                        answered += 1;
                    }
                    if answered < batch.len() {
                        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk))
                            .await
                            .expect("answers keep coming")
                            .unwrap();
                        assert!(n > 0, "the edge closed the connection");
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    ok
}

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_nobody_scrapes_metrics_for_do_not_grow_memory() {
    let origin = any_path_origin(64).await;
    let edge = EdgeProcess::start(origin, "");
    // Warm up: connections, buffers, the object itself.
    assert_eq!(
        pipelined(edge.http, 10_000, 4, |_| "/hot".into()).await,
        10_000
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = edge.rss();
    let n = 200_000;
    assert_eq!(pipelined(edge.http, n, 4, |_| "/hot".into()).await, n);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = edge.rss();
    let growth = after.saturating_sub(before);
    eprintln!(
        "RSS {:.1} -> {:.1} MiB after {n} hits",
        before as f64 / MIB as f64,
        after as f64 / MIB as f64
    );
    assert!(
        growth < 2 * MIB,
        "grew {:.1} MiB over {n} hits without a scrape",
        growth as f64 / MIB as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_memory_bounds_the_process_under_a_flood_of_small_objects() {
    let origin = any_path_origin(1024).await;
    let cache = 32 * MIB;
    let edge = EdgeProcess::start(
        origin,
        "cache_memory = \"32MiB\"\nmax_object_size = \"1MiB\"",
    );
    // Warm up with a few hundred objects, so connection buffers count in the base.
    assert_eq!(
        pipelined(edge.http, 400, 4, |i| format!("/warm/{i}")).await,
        400
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let base = edge.rss();
    // Three times the cache's worth of new 1 KiB objects.
    let n = (3 * cache / 1024) as usize;
    assert_eq!(pipelined(edge.http, n, 4, |i| format!("/new/{i}")).await, n);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let flooded = edge.rss();
    let bound = base + cache * 5 / 4;
    eprintln!(
        "RSS base {:.1} MiB, after {n} new objects {:.1} MiB (bound {:.1})",
        base as f64 / MIB as f64,
        flooded as f64 / MIB as f64,
        bound as f64 / MIB as f64
    );
    assert!(flooded <= bound, "{flooded} > {bound}");

    let purge = send_request(
        http::Request::post(format!("http://{}/purge", edge.admin))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"{\"prefix\": \"http://demo.test/\"}",
            )))
            .unwrap(),
    )
    .await;
    assert_eq!(purge.status, 200, "{}", purge.text());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let purged = edge.rss();
    eprintln!(
        "after purging everything {:.1} MiB",
        purged as f64 / MIB as f64
    );
    // What the heap can give back: the objects' own pages, not those they share with the
    // small allocations that outlive them (moka's tombstones for removed keys among them), so
    // about half of the flood's growth returns here; the README gives the measured figures.
    let grown = flooded.saturating_sub(base);
    let returned = flooded.saturating_sub(purged);
    assert!(
        returned * 3 >= grown,
        "a purge of everything returned {:.1} of the {:.1} MiB the flood added",
        returned as f64 / MIB as f64,
        grown as f64 / MIB as f64
    );
}

/// Clients that each ask for a different large object and then read nothing: every fill is
/// stored and then evicted by the next while its client still holds the body. Those bodies
/// count in the fills' budget until they are dropped, so once it is full the rest are passed
/// through unstored, and the process stays near `cache_memory` and that budget (plus what each
/// connection buffers). Before, 200 such clients on 4 MiB objects took an edge with 16 MiB of
/// cache from 23 to 600 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_do_not_keep_evicted_bodies_beyond_the_bound() {
    const SIZE: usize = 4 << 20;
    let origin = any_path_origin(SIZE).await;
    let edge = EdgeProcess::start(
        origin,
        "cache_memory = \"16MiB\"\nmax_object_size = \"4MiB\"",
    );
    let warm = get(edge.http, "demo.test", "/warm", &[]).await;
    assert_eq!(warm.body.len(), SIZE);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = edge.rss();
    let mut clients = Vec::new();
    for i in 0..60 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(edge.http).await.unwrap();
        s.write_all(format!("GET /o/{i} HTTP/1.1\r\nHost: demo.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        clients.push(s);
        // One after another, so that each fill is stored (and evicts) before the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = edge.rss();
    eprintln!(
        "RSS {:.1} -> {:.1} MiB with 60 clients holding 4 MiB answers",
        before as f64 / MIB as f64,
        during as f64 / MIB as f64
    );
    assert!(
        during < before + 120 * MIB,
        "grew {:.1} MiB: the evicted bodies the clients hold are not bounded",
        (during - before) as f64 / MIB as f64
    );
    // Gone: their bodies are dropped, and new objects are stored again.
    drop(clients);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = get(edge.http, "demo.test", "/after", &[]).await;
    assert_eq!(r.body.len(), SIZE);
    assert!(r.cache_status().contains("stored"), "{}", r.cache_status());
}
