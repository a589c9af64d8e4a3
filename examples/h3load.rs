//! The client of `benches/h3-load.sh`: the same Rust client over HTTP/3 (quinn + h3) and over
//! TLS on TCP (HTTP/2 or HTTP/1.1, hyper + rustls), so the protocols are compared with like
//! clients (h2load has no HTTP/3 in Debian).
//!
//! `h3load load PROTO ADDR HOST PATH CONNS STREAMS SECS CAFILE`: CONNS connections with STREAMS
//! requests in flight on each (HTTP/1.1: one), for SECS seconds; prints
//! `rps=.. p50_ms=.. p99_ms=.. errors=..`.
//!
//! `h3load ttfb PROTO ADDR HOST PATH COUNT CAFILE`: COUNT times in a row, a new connection and
//! one GET; the time from the start of the connection to the first byte of the response body
//! (with a full handshake each time: no session resumption); prints `p50_ms=.. p99_ms=..`.
//!
//! PROTO is `h3`, `h2` or `h1`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian::h3client::{tls_config, H3Client};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
    H3,
}

/// One connection, of any protocol.
enum Conn {
    H3(Arc<H3Client>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
}

async fn connect(
    proto: Proto,
    addr: SocketAddr,
    host: &str,
    tls: &rustls::ClientConfig,
) -> Result<Conn, String> {
    if proto == Proto::H3 {
        return H3Client::connect(addr, host, tls.clone())
            .await
            .map(|c| Conn::H3(Arc::new(c)));
    }
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![if proto == Proto::H2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    if proto == Proto::H2 {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Conn::H2(send))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Conn::H1(send))
    }
}

impl Conn {
    /// Another handle on the same connection (HTTP/2 and HTTP/3 multiplex; HTTP/1.1 does not).
    fn share(&self) -> Option<Conn> {
        match self {
            Conn::H3(c) => Some(Conn::H3(c.clone())),
            Conn::H2(s) => Some(Conn::H2(s.clone())),
            Conn::H1(_) => None,
        }
    }

    /// One GET; the time its first body byte came, and whether it was a 200 with a body.
    async fn get(&mut self, host: &str, path: &str, start: Instant) -> Result<Duration, String> {
        match self {
            Conn::H3(c) => {
                // First byte: the response head and the first DATA frame (read by `send`
                // whole; the objects here are small enough that the difference is the body's
                // transfer, the same for every protocol).
                let (resp, body) = c.get(&format!("https://{host}{path}")).await?;
                if resp.status() != 200 || body.is_empty() {
                    return Err(format!("status {}", resp.status()));
                }
                Ok(start.elapsed())
            }
            Conn::H2(s) => {
                let req = Request::get(format!("https://{host}{path}"))
                    .version(http::Version::HTTP_2)
                    .body(Empty::new())
                    .map_err(|e| e.to_string())?;
                read(s.send_request(req).await.map_err(|e| e.to_string())?, start).await
            }
            Conn::H1(s) => {
                let req = Request::get(path)
                    .header("host", host)
                    .body(Empty::new())
                    .map_err(|e| e.to_string())?;
                s.ready().await.map_err(|e| e.to_string())?;
                read(s.send_request(req).await.map_err(|e| e.to_string())?, start).await
            }
        }
    }
}

async fn read(
    resp: http::Response<hyper::body::Incoming>,
    start: Instant,
) -> Result<Duration, String> {
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            if d.remaining() > 0 && first.is_none() {
                first = Some(start.elapsed());
            }
        }
    }
    first.ok_or_else(|| "empty body".to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What to ask, and how.
struct Target {
    proto: Proto,
    addr: SocketAddr,
    host: String,
    path: String,
    tls: rustls::ClientConfig,
}

async fn load(t: Target, conns: usize, streams: usize, secs: u64) -> Result<(), String> {
    let Target {
        proto,
        addr,
        host,
        path,
        tls,
    } = t;
    let streams = if proto == Proto::H1 { 1 } else { streams };
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let conn = connect(proto, addr, &host, &tls).await?;
        let mut handles: Vec<Conn> = (1..streams).filter_map(|_| conn.share()).collect();
        handles.push(conn);
        for mut conn in handles {
            let (stop, errors, host, path) =
                (stop.clone(), errors.clone(), host.clone(), path.clone());
            tasks.spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match conn.get(&host, &path, t).await {
                        Ok(_) => lat.push(ms(t.elapsed())),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                lat
            });
        }
    }
    let begun = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| e.to_string())?);
    }
    let elapsed = begun.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    println!(
        "rps={:.0} p50_ms={:.2} p99_ms={:.2} errors={}",
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn ttfb(t: Target, count: usize) -> Result<(), String> {
    let Target {
        proto,
        addr,
        host,
        path,
        mut tls,
    } = t;
    // A full handshake every time, as a new visitor's.
    tls.resumption = rustls::client::Resumption::disabled();
    let mut all = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let mut conn = connect(proto, addr, &host, &tls).await?;
        let first = conn.get(&host, &path, start).await?;
        all.push(ms(first));
        if let Conn::H3(c) = conn {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        }
    }
    all.sort_by(f64::total_cmp);
    println!(
        "p50_ms={:.2} p99_ms={:.2}",
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: h3load load PROTO ADDR HOST PATH CONNS STREAMS SECS CAFILE | ttfb PROTO ADDR HOST PATH COUNT CAFILE";
    let proto = match a.get(1).map(String::as_str) {
        Some("h3") => Proto::H3,
        Some("h2") => Proto::H2,
        Some("h1") => Proto::H1,
        _ => return Err(usage.into()),
    };
    let num = |i: usize| -> Result<u64, String> {
        a.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| usage.to_string())
    };
    let addr: SocketAddr = a.get(2).and_then(|v| v.parse().ok()).ok_or(usage)?;
    let (host, path) = (
        a.get(3).ok_or(usage)?.clone(),
        a.get(4).ok_or(usage)?.clone(),
    );
    let (mode, ca) = match a.first().map(String::as_str) {
        Some("load") => ("load", a.get(8)),
        Some("ttfb") => ("ttfb", a.get(6)),
        _ => return Err(usage.into()),
    };
    let target = Target {
        proto,
        addr,
        host,
        path,
        tls: tls_config(Some(std::path::Path::new(ca.ok_or(usage)?)))?,
    };
    if mode == "load" {
        load(target, num(5)? as usize, num(6)? as usize, num(7)?).await
    } else {
        ttfb(target, num(5)? as usize).await
    }
}
