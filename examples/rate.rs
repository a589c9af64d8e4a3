//! Open-loop load at a fixed rate over HTTP/1.1 keep-alive connections, for the tail-latency
//! measurement of `benches/http-load.sh` (what wrk2 does; Debian has no wrk2). RATE requests a
//! second are spread evenly over CONNS connections for SECS seconds, and each request's latency
//! counts from the time it was due, not from when it went out: a server that stalls delays the
//! requests queued behind the stall, and they count as late instead of vanishing from the
//! statistics (no coordinated omission). A `{n}` in PATH becomes a number unique to the request
//! (every request a cache miss); METHOD is GET unless given (POST sends a 64-byte body).
//!
//! `cargo run --release --example rate -- 127.0.0.1:18001 bench.test /1k 20000 64 10 [METHOD]`
//! prints `sent=.. ok=.. errors=.. rate=.. p50_ms=.. p90_ms=.. p99_ms=.. p999_ms=.. max_ms=..`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Appends what `s` has to `buf` (at least a byte; end of stream is an error).
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 64 * 1024];
    let n = s.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Reads one response from `s` (whole body: Content-Length or chunked), keeping what follows in
/// `buf`. Returns whether its status was 2xx.
async fn response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        fill(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let ok = head.as_bytes().get(9) == Some(&b'2');
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    buf.drain(..end);
    if chunked {
        loop {
            let line = loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                fill(s, buf).await?;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            // The size line, the data and its CRLF (the last chunk: its CRLF ends the body).
            let need = line + 2 + size + 2;
            while buf.len() < need {
                fill(s, buf).await?;
            }
            buf.drain(..need);
            if size == 0 {
                return Ok(ok);
            }
        }
    }
    let length = length.unwrap_or(0);
    while buf.len() < length {
        fill(s, buf).await?;
    }
    buf.drain(..length);
    Ok(ok)
}

struct Job {
    addr: String,
    host: String,
    path: String,
    method: String,
    every: Duration,
    until: Instant,
    /// The request when the path has no `{n}`.
    request: String,
    next_n: AtomicU64,
    errors: AtomicU64,
    ok: AtomicU64,
}

/// The request for `path` (POST with a 64-byte body).
fn request(job: &Job, path: &str) -> String {
    let body = if job.method == "POST" {
        "x".repeat(64)
    } else {
        String::new()
    };
    format!(
        "{} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
        job.method,
        job.host,
        body.len()
    )
}

/// One connection's share: requests due at `start + k * every`, latencies in ms.
async fn connection(job: Arc<Job>, start: Instant) -> Vec<f64> {
    let mut latencies = Vec::new();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::new();
    let mut due = start;
    while due < job.until {
        tokio::time::sleep_until(due.into()).await;
        let n = job.next_n.fetch_add(1, Ordering::Relaxed);
        // The request: written once unless each one has a path of its own.
        let unique;
        let req = if job.path.contains("{n}") {
            unique = request(&job, &job.path.replace("{n}", &n.to_string()));
            &unique
        } else {
            &job.request
        };
        let done = async {
            if conn.is_none() {
                let s = TcpStream::connect(&job.addr).await?;
                s.set_nodelay(true)?;
                conn = Some(s);
                buf.clear();
            }
            let s = conn.as_mut().expect("connected above");
            s.write_all(req.as_bytes()).await?;
            response(s, &mut buf).await
        };
        match tokio::time::timeout(Duration::from_secs(10), done).await {
            Ok(Ok(true)) => {
                job.ok.fetch_add(1, Ordering::Relaxed);
                latencies.push(due.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(Ok(false)) => {
                job.errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                job.errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
        due += job.every;
    }
    latencies
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        eprintln!("usage: rate ADDR HOST PATH RATE CONNS SECS [METHOD]");
        std::process::exit(2);
    }
    let rate: f64 = args[3].parse().expect("RATE: requests per second");
    let conns: usize = args[4].parse().expect("CONNS: a number");
    let secs: f64 = args[5].parse().expect("SECS: seconds");
    let start = Instant::now() + Duration::from_millis(100);
    let mut job = Job {
        addr: args[0].clone(),
        host: args[1].clone(),
        path: args[2].clone(),
        method: args.get(6).cloned().unwrap_or_else(|| "GET".into()),
        every: Duration::from_secs_f64(conns as f64 / rate),
        until: start + Duration::from_secs_f64(secs),
        request: String::new(),
        next_n: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        ok: AtomicU64::new(0),
    };
    job.request = request(&job, &job.path);
    let job = Arc::new(job);
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            // Connection i's requests fall between the others': the rate is even, not bursts.
            let offset = Duration::from_secs_f64(i as f64 / rate);
            tokio::spawn(connection(job.clone(), start + offset))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a connection task panicked"));
    }
    all.sort_by(f64::total_cmp);
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let sent = job.next_n.load(Ordering::Relaxed);
    println!(
        "sent={sent} ok={} errors={} rate={:.0} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3}",
        job.ok.load(Ordering::Relaxed),
        job.errors.load(Ordering::Relaxed),
        sent as f64 / secs,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        all.last().copied().unwrap_or(f64::NAN)
    );
}
