//! `meridian demo`: the topology of `config/local/` in one process, on its embedded files.
//!
//! Starts a sample origin on `127.0.0.1:8000` (an index page and a handful of objects with varied
//! cache headers), then the edges and the DNS node of `config/local/`, prints lines to try, and
//! runs until Ctrl-C. The config files are compiled in and written to a private temporary
//! directory, then loaded through the same `config::load` as any node file: the demo needs no
//! file outside the binary and no network beyond loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{Node, Signals, StartError};

/// `println!` that gives up quietly when stdout is gone (`meridian demo | head`): the demo goes
/// on, and stops on Ctrl-C as before.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
use crate::config;

/// Address of the sample origin (before `--port-offset`).
pub const ORIGIN: &str = "127.0.0.1:8000";

/// Moves every port written after an IPv4 address (`127.0.0.11:8080`) in `text` by `offset`,
/// outside comments; `None` if a port would pass 65535.
fn shift_ports(text: &str, offset: u16) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') || offset == 0 {
            out.push_str(line);
            continue;
        }
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            // An address: four dotted numbers, a colon, digits.
            let start = i;
            let mut j = i;
            let mut dots = 0;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                dots += usize::from(b[j] == b'.');
                j += 1;
            }
            let is_addr = j > start
                && dots == 3
                && (start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'.'))
                && b.get(j) == Some(&b':')
                && b.get(j + 1).is_some_and(u8::is_ascii_digit);
            if !is_addr {
                // The run of digits and dots, or one character.
                let next = if j > i {
                    j
                } else {
                    i + line[i..].chars().next().map_or(1, char::len_utf8)
                };
                out.push_str(&line[i..next]);
                i = next;
                continue;
            }
            let mut k = j + 1;
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            let port: u32 = line[j + 1..k].parse().ok()?;
            let shifted = u16::try_from(port + u32::from(offset)).ok()?;
            out.push_str(&line[start..=j]);
            out.push_str(&shifted.to_string());
            i = k;
        }
    }
    Some(out)
}

/// The files of `config/local/` (and the test GeoIP database they name), compiled in, at the
/// same relative places as in the repository.
const FILES: [(&str, &[u8]); 12] = [
    (
        "config/local/edge-a.toml",
        include_bytes!("../config/local/edge-a.toml"),
    ),
    (
        "config/local/edge-b.toml",
        include_bytes!("../config/local/edge-b.toml"),
    ),
    (
        "config/local/edge-c.toml",
        include_bytes!("../config/local/edge-c.toml"),
    ),
    (
        "config/local/dns.toml",
        include_bytes!("../config/local/dns.toml"),
    ),
    (
        "config/local/origins.toml",
        include_bytes!("../config/local/origins.toml"),
    ),
    (
        "config/local/cluster.toml",
        include_bytes!("../config/local/cluster.toml"),
    ),
    (
        "config/local/admin.token",
        include_bytes!("../config/local/admin.token"),
    ),
    (
        "config/local/gossip.key",
        include_bytes!("../config/local/gossip.key"),
    ),
    (
        "config/local/tls/demo.pem",
        include_bytes!("../config/local/tls/demo.pem"),
    ),
    (
        "config/local/tls/demo.key",
        include_bytes!("../config/local/tls/demo.key"),
    ),
    (
        "config/local/tls/ca.pem",
        include_bytes!("../config/local/tls/ca.pem"),
    ),
    (
        "geo/test-city.mmdb",
        include_bytes!("../geo/test-city.mmdb"),
    ),
];

/// The nodes the demo runs.
const NODES: [&str; 4] = ["edge-a.toml", "edge-b.toml", "edge-c.toml", "dns.toml"];

/// Size of the sample large object (for ranges).
const LARGE: usize = 8 << 20;

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing the embedded files failed.
    #[error("cannot write the demo's config files to {path}: {source}")]
    Files {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded config did not validate (a bug in the repository's files).
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    /// A node could not start (typically: an address is in use).
    #[error("{0}{hint}", hint = bind_hint(.0))]
    Start(#[from] StartError),
    /// The sample origin could not listen.
    #[error("cannot listen on {0} for the sample origin: {1} (another demo or program has it: `meridian demo --port-offset 100` moves every port the demo uses)")]
    Origin(SocketAddr, std::io::Error),
    /// `--port-offset` would move a port past 65535.
    #[error("--port-offset {0} moves a port of the demo past 65535")]
    Offset(u16),
}

/// What to do when a listener's address is taken.
fn bind_hint(e: &StartError) -> &'static str {
    match e {
        StartError::Bind { .. } => " (another demo or program has it: `meridian demo --port-offset 100` moves every port the demo uses)",
        _ => "",
    }
}

/// The demo's scratch directory, removed when dropped: on every exit, a failed start included.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

/// Writes the embedded files to a fresh private directory.
///
/// Hazard: the files hold the admin token and the gossip key. The directory has a name nobody
/// can guess, is created new (never an existing directory or a link someone planted in the
/// shared temporary directory) and is readable by this user only.
fn write_files(port_offset: u16) -> Result<Scratch, DemoError> {
    let mut suffix = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut suffix);
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("meridian-demo-{}-{suffix}", std::process::id()));
    let err = |source| DemoError::Files {
        path: dir.clone(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir).map_err(err)?;
    let scratch = Scratch(dir.clone());
    for (name, bytes) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let bytes = match std::str::from_utf8(bytes) {
            Ok(text) if name.ends_with(".toml") => shift_ports(text, port_offset)
                .ok_or(DemoError::Offset(port_offset))?
                .into_bytes(),
            _ => bytes.to_vec(),
        };
        std::fs::write(path, bytes).map_err(err)?;
    }
    Ok(scratch)
}

/// Runs the demo until Ctrl-C, every port moved by `port_offset`.
pub async fn run(port_offset: u16) -> Result<(), DemoError> {
    // Caught from now on: a Ctrl-C as soon as the instructions show is a clean stop.
    let mut signals = Signals::new();
    let dir = write_files(port_offset)?;
    let origin_addr: SocketAddr = shift_ports(ORIGIN, port_offset)
        .and_then(|a| a.parse().ok())
        .ok_or(DemoError::Offset(port_offset))?;
    let listener = TcpListener::bind(origin_addr)
        .await
        .map_err(|e| DemoError::Origin(origin_addr, e))?;
    let stop = CancellationToken::new();
    let origin = tokio::spawn(serve_origin(listener, stop.clone()));

    crate::app::DEMO.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut nodes = Vec::new();
    for name in NODES {
        let mut cfg = config::load(&dir.join("config/local").join(name))?;
        // One access log line per request from three edges would drown the instructions.
        cfg.node.log.access_log = false;
        let node = Node::start(cfg).await?;
        nodes.push((name.trim_end_matches(".toml").to_string(), node));
    }
    // Everything is read: the token and key need not stay on disk.
    drop(dir);

    say!("\nMeridian demo: a sample origin on http://{origin_addr}, three edges in front of it and a DNS node.\n");
    for (name, node) in &nodes {
        if let (Some(http), Some(admin)) = (node.http_addrs().first(), node.admin_addr()) {
            say!("  {name}: http://{http}  (admin http://{admin})");
        }
    }
    for (_, node) in &nodes {
        if let Some(dns) = node.dns_addrs().first() {
            say!("  dns:    {dns} (UDP and TCP), authoritative for meridian.test");
            say!("\nAsk where a client would be sent (London, Seattle, Tokyo):\n");
            for (who, subnet) in [
                ("London", "81.2.69.142/32"),
                ("Seattle", "216.160.83.56/29"),
                ("Tokyo", "2001:218::/32"),
            ] {
                say!(
                    "  dig @{} -p {} demo.meridian.test +subnet={subnet} +short    # {who}",
                    dns.ip(),
                    dns.port()
                );
            }
            say!("  meridian route -c config/local/dns.toml 81.2.69.142                      # and why");
        }
        if let (Some(_), Some(admin)) = (node.dns_addrs().first(), node.admin_addr()) {
            say!(
                "\nThe cluster at a glance (members, load, requests/s, hit ratio, DNS answers):\n"
            );
            say!("  http://{admin}/    (a status page; in a terminal: meridian top -c config/local/dns.toml)");
        }
    }
    // edge-b, in eu-west: where the London client is sent.
    if let Some((_, node)) = nodes.get(1) {
        if let Some(a) = node.http_addrs().first() {
            print_tries(
                *a,
                node.https_addrs().first().copied(),
                node.h3_addrs().first().copied(),
                node.admin_addr(),
            );
        }
    }
    say!("\nCtrl-C stops the demo.\n");

    // A live status line, when someone is watching.
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = signals.stop() => break,
            _ = tick.tick(), if live => {
                use std::io::Write;
                let line = status_line(&nodes);
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\r\x1b[2K{line}");
                let _ = out.flush();
            }
        }
    }
    say!("\nstopping… (Ctrl-C again stops at once)");
    // All at once, as separate machines would: each announces draining, waits, drains, leaves.
    let mut stopping = tokio::task::JoinSet::new();
    for (_, node) in nodes {
        stopping.spawn(node.shutdown());
    }
    let all_stopped = async { while stopping.join_next().await.is_some() {} };
    tokio::select! {
        () = all_stopped => {}
        () = signals.stop() => {
            say!("stopped at once");
            std::process::exit(130);
        }
    }
    stop.cancel();
    let _ = origin.await;
    Ok(())
}

/// `edge-a: 12 req, 58% hit, load 0.01 | edge-b: ...`
fn status_line(nodes: &[(String, Node)]) -> String {
    nodes
        .iter()
        .filter_map(|(name, node)| {
            let s = node.edge_status()?;
            let ratio = if s.requests == 0 {
                0.0
            } else {
                100.0 * s.hits as f64 / s.requests as f64
            };
            Some(format!(
                "{name}: {} req, {ratio:.0}% hit, load {:.2}",
                s.requests, s.load
            ))
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn print_tries(
    edge: SocketAddr,
    tls: Option<SocketAddr>,
    h3: Option<SocketAddr>,
    admin: Option<SocketAddr>,
) {
    let (ip, port) = (edge.ip(), edge.port());
    let url = format!("http://demo.meridian.test:{port}");
    let resolve = format!("--resolve demo.meridian.test:{port}:{ip}");
    say!("\nThen fetch through the edge the answer names (London's is {ip}); run each twice:");
    say!("Cache-Status goes from fwd=miss to hit.\n");
    say!("  curl -si {resolve} {url}/ | grep -i -e '^HTTP' -e cache-status -e '^age'");
    say!("  curl -si {resolve} {url}/news | grep -i cache-status        # stale-while-revalidate");
    say!("  curl -si {resolve} -H 'Accept-Language: fr' {url}/hello   # Vary");
    say!("  curl -si {resolve} -r 0-99 {url}/large.bin | head -12     # ranges from cache");
    if let Some(tls) = tls {
        let (ip, port) = (tls.ip(), tls.port());
        say!(
            "  curl -si --cacert config/local/tls/ca.pem --resolve demo.meridian.test:{port}:{ip} https://demo.meridian.test:{port}/ | head -1   # HTTPS, HTTP/2"
        );
    }
    if let Some(h3) = h3 {
        say!("{}", h3_line(h3, curl_has_http3()));
    }
    if let Some(admin) = admin {
        say!(
            "  curl -s -X POST -H \"Authorization: Bearer $(cat config/local/admin.token)\" \\\n       -d '{{\"tag\":\"products\"}}' http://{admin}/purge          # purge by Surrogate-Key"
        );
        say!("  curl -s http://{admin}/metrics | grep meridian_http_requests_total");
        say!("  curl -s http://{admin}/cluster                                  # members, health, load");
    }
}

/// Whether the `curl` on this machine speaks HTTP/3 (its `--version` lists the feature).
fn curl_has_http3() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP3"))
}

/// The line that fetches the demo site over HTTP/3 from the edge at `tls` (UDP, the TLS port):
/// with curl where it has HTTP/3, else with the project's own client.
fn h3_line(tls: SocketAddr, curl: bool) -> String {
    let (ip, port) = (tls.ip(), tls.port());
    let target = format!(
        "--cacert config/local/tls/ca.pem --resolve demo.meridian.test:{port}:{ip} https://demo.meridian.test:{port}/"
    );
    if curl {
        format!("  curl -si --http3-only {target} | head -1   # HTTP/3")
    } else {
        format!(
            "  cargo run -q --release --example h3get -- -I {target} | head -1   # HTTP/3 (this curl has none)"
        )
    }
}

async fn serve_origin(listener: TcpListener, stop: CancellationToken) {
    let large = Bytes::from((0..LARGE).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
            _ = stop.cancelled() => break,
        };
        let large = large.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let large = large.clone();
                async move { Ok::<_, Infallible>(sample(req, &large).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

const INDEX: &str = "<!doctype html>
<title>Meridian demo origin</title>
<h1>Meridian demo origin</h1>
<ul>
<li><a href=\"/static/logo.svg\">/static/logo.svg</a>: long-lived (max-age=31536000, immutable)</li>
<li><a href=\"/news\">/news</a>: short-lived (max-age=5, stale-while-revalidate=30)</li>
<li><a href=\"/hello\">/hello</a>: Vary: Accept-Language (en, fr, de)</li>
<li><a href=\"/products/1\">/products/1</a>, <a href=\"/products/2\">/products/2</a>: Surrogate-Key tags</li>
<li><a href=\"/large.bin\">/large.bin</a>: 8 MiB, for ranges</li>
<li><a href=\"/account\">/account</a>: private, never cached by the edge</li>
</ul>
";

const LOGO: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\"><circle cx=\"32\" cy=\"32\" r=\"30\" fill=\"#1a73e8\"/><path d=\"M2 32h60M32 2v60\" stroke=\"#fff\"/></svg>\n";

async fn sample(req: Request<Incoming>, large: &Bytes) -> Response<Full<Bytes>> {
    let now = httpdate::fmt_http_date(SystemTime::now());
    let (status, ctype, cc, body, extra): (StatusCode, &str, &str, Bytes, Vec<(&str, String)>) =
        match req.uri().path() {
            "/" => (
                StatusCode::OK,
                "text/html; charset=utf-8",
                "max-age=60",
                Bytes::from_static(INDEX.as_bytes()),
                vec![],
            ),
            "/static/logo.svg" => (
                StatusCode::OK,
                "image/svg+xml",
                "public, max-age=31536000, immutable",
                Bytes::from_static(LOGO.as_bytes()),
                vec![("etag", "\"logo-1\"".into())],
            ),
            "/news" => {
                // Slow to generate: the point of stale-while-revalidate.
                tokio::time::sleep(Duration::from_millis(300)).await;
                (
                    StatusCode::OK,
                    "text/plain",
                    "max-age=5, stale-while-revalidate=30, stale-if-error=300",
                    Bytes::from(format!("news generated at {now}\n")),
                    vec![],
                )
            }
            "/hello" => {
                let lang = req
                    .headers()
                    .get(header::ACCEPT_LANGUAGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("en");
                let text = if lang.starts_with("fr") {
                    "bonjour\n"
                } else if lang.starts_with("de") {
                    "hallo\n"
                } else {
                    "hello\n"
                };
                (
                    StatusCode::OK,
                    "text/plain",
                    "max-age=300",
                    Bytes::from_static(text.as_bytes()),
                    vec![("vary", "Accept-Language".into())],
                )
            }
            p @ ("/products/1" | "/products/2") => {
                let id = &p[10..];
                (
                    StatusCode::OK,
                    "application/json",
                    "max-age=3600",
                    Bytes::from(format!("{{\"id\":{id},\"generated\":\"{now}\"}}\n")),
                    vec![("surrogate-key", format!("products product-{id}"))],
                )
            }
            "/large.bin" => (
                StatusCode::OK,
                "application/octet-stream",
                "max-age=3600",
                large.clone(),
                vec![("etag", "\"large-1\"".into())],
            ),
            "/account" => (
                StatusCode::OK,
                "text/plain",
                "private, max-age=60",
                Bytes::from_static(b"your account\n"),
                vec![],
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "max-age=10",
                Bytes::from_static(b"not found\n"),
                vec![],
            ),
        };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
    );
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_directory_is_private_new_and_removed() {
        let a = write_files(0).unwrap();
        let b = write_files(0).unwrap();
        assert_ne!(*a, *b, "unguessable, new each time");
        assert!(a.join("config/local/admin.token").is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&*a).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        }
        let path = a.to_path_buf();
        drop(a);
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn ports_move_after_addresses_only() {
        let text = "# at 127.0.0.1:8000\nlisten = [\"127.0.0.11:8080\"]\nseeds = [\"127.0.0.10:7946\", \"10.0.0.1:1\"]\nname = \"São 1.2:3\"\nv = 1.2.3.4.5:6\n";
        assert_eq!(
            shift_ports(text, 100).unwrap(),
            "# at 127.0.0.1:8000\nlisten = [\"127.0.0.11:8180\"]\nseeds = [\"127.0.0.10:8046\", \"10.0.0.1:101\"]\nname = \"São 1.2:3\"\nv = 1.2.3.4.5:6\n"
        );
        assert_eq!(shift_ports("a = \"127.0.0.1:65535\"", 1), None);
        assert_eq!(shift_ports(ORIGIN, 0).as_deref(), Some(ORIGIN));
    }
}
