//! Time to first byte of one GET, then of N more sent at once 100 ms later (while the object is
//! still arriving at a cache): the streaming-fill measurement of `benches/http-load.sh`. A
//! client in Rust, so that reading a hundred responses' backlogs does not itself delay the last
//! ones' first bytes (the Python client did, by about 1 ms per response). For the same reason a
//! connection reads at most 64 KiB at a time and then lets the others read: a hundred users are
//! a hundred machines, and one's backlog does not hold up another's first read. (Reading up to
//! 1 MiB at a time into a buffer of that size each, the client itself delayed the last
//! follower's first byte behind a cache that sends them a backlog: 19.4 and 31.2 ms against 9.8
//! and 10.8 ms with this client, the same edge, two A/B pairs of 3 rounds each.)
//!
//! `cargo run --release --example ttfb -- 127.0.0.1:18001 slow.test /trickle/x 100`
//! prints `ok=<n> lead_ttfb_ms=.. lead_full_ms=.. ttfb_p50_ms=.. ttfb_max_ms=.. full_p50_ms=..`

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// (status 200 and whole body, first body byte, whole body), in ms from the request's send.
async fn one(addr: String, host: String, path: String) -> (bool, f64, f64) {
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    let _ = s.set_nodelay(true);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let start = Instant::now();
    let mut buf = vec![0u8; 64 << 10];
    let mut head = Vec::new();
    let mut first = None;
    let mut body = 0usize;
    let mut length = None;
    let mut ok = false;
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => break,
        };
        if n == 0 {
            break;
        }
        if length.is_none() {
            head.extend_from_slice(&buf[..n]);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            ok = text.starts_with("http/1.1 200");
            length = Some(
                text.lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(usize::MAX),
            );
            body = head.len() - end - 4;
        } else {
            body += n;
        }
        if body > 0 && first.is_none() {
            first = Some(start.elapsed());
        }
        tokio::task::yield_now().await;
    }
    let full = start.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ok && length == Some(body),
        ms(first.unwrap_or(full)),
        ms(full),
    )
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18001".into());
    let host = args.next().unwrap_or_else(|| "slow.test".into());
    let path = args.next().unwrap_or_else(|| "/trickle/x".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let leader = tokio::spawn(one(addr.clone(), host.clone(), path.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let followers: Vec<_> = (0..n)
        .map(|_| tokio::spawn(one(addr.clone(), host.clone(), path.clone())))
        .collect();
    let lead = leader.await.expect("leader");
    let mut ok = usize::from(lead.0);
    let (mut firsts, mut fulls) = (Vec::new(), Vec::new());
    for f in followers {
        let (good, first, full) = f.await.expect("follower");
        ok += usize::from(good);
        firsts.push(first);
        fulls.push(full);
    }
    let max = firsts.iter().copied().fold(0.0, f64::max);
    println!(
        "ok={ok} lead_ttfb_ms={:.1} lead_full_ms={:.1} ttfb_p50_ms={:.1} ttfb_max_ms={max:.1} full_p50_ms={:.1}",
        lead.1,
        lead.2,
        median(&mut firsts),
        median(&mut fulls)
    );
}
