//! The edge's cache-hit path.
//!
//! - `hit_path/lookup/SIZE`: key, store lookup, reuse decision and response headers, in process.
//! - `hit_path/loopback/SIZE`: one whole HTTP/1.1 request over a kept-alive loopback connection to
//!   a running edge, answered from cache (client and server on this machine).
//! - `hit_path/tls_h2_frames/{whole_records,unaligned}/SIZE`: a response's HTTP/2 DATA frames
//!   written as the edge writes them over TLS (the coalescing layer over rustls, in memory),
//!   encrypted and read back by a rustls client: whole records as the edge does, and each frame
//!   as it comes (a full record and a 9-byte one), as before.
//!
//! - `hit_path/forward/{get_private,post}`: one whole HTTP/1.1 request over a kept-alive
//!   loopback connection to a running edge that must forward it (the origin answers 1 KiB
//!   `private`; a 7-byte form `POST`, which the edge reads whole with its head), origin on the
//!   same machine: issue 16's item 3 in process.
//! - `hit_path/metrics/{exporter,per_thread}`: what a forwarded request counts and times (three
//!   counters, two latency samples), recorded by two threads at once, one request each per
//!   iteration: through the exporter's handles as before, and as the edge does now (a part per
//!   thread, published when shown).
//!
//! Run: `cargo bench --bench hit_path`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn lookup(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("hit_path/lookup");
    for size in [1024usize, 100 * 1024] {
        let hp = rt.block_on(meridian::bench::HitPath::new(size));
        assert_eq!(rt.block_on(hp.hit()), size);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.to_async(&rt).iter(|| hp.hit());
        });
    }
    g.finish();
}

async fn origin(body: Bytes) -> std::net::SocketAddr {
    origin_saying(body, "max-age=3600").await
}

async fn origin_saying(body: Bytes, cache_control: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                break;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut r = http::Response::new(Full::new(body));
                        r.headers_mut().insert(
                            "cache-control",
                            http::HeaderValue::from_static(cache_control),
                        );
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// An edge on loopback whose one site, for every host, is the origin at `o`; its files in
/// `dir`.
async fn edge_for(o: std::net::SocketAddr, dir: &std::path::Path) -> meridian::app::Node {
    std::fs::write(
        dir.join("origins.toml"),
        format!("[[site]]\nname = \"b\"\nhosts = [\"*\"]\norigins = [\"http://{o}\"]\n"),
    )
    .unwrap();
    meridian::bench::start_node(
        &dir.join("node.toml"),
        "id = \"bench\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[log]\naccess_log = false\nlevel = \"warn\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .await
}

fn loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("hit_path/loopback");
    g.measurement_time(Duration::from_secs(5));
    for size in [1024usize, 100 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        let (node, client, uri) = rt.block_on(async {
            let o = origin(Bytes::from(vec![b'x'; size])).await;
            let node = edge_for(o, dir.path()).await;
            let uri: http::Uri = format!("http://{}/object", node.http_addrs()[0])
                .parse()
                .unwrap();
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            (node, client, uri)
        });
        let fetch = || async {
            let resp = client.get(uri.clone()).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes().len()
        };
        assert_eq!(rt.block_on(fetch()), size);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.to_async(&rt).iter(fetch);
        });
        rt.block_on(node.shutdown());
    }
    g.finish();
}

/// A TLS connection in memory: the server's stream and the client's.
async fn tls_pair() -> (
    tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
    tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
) {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = rustls::pki_types::CertificateDer::from(cert.der().to_vec());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (a, b) = tokio::io::duplex(4 << 20);
    let accept = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(a);
    let name = rustls::pki_types::ServerName::try_from("bench.test").unwrap();
    let connect = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, b);
    let (s, c) = tokio::join!(accept, connect);
    (s.unwrap(), c.unwrap())
}

fn tls_h2_frames(c: &mut Criterion) {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("hit_path/tls_h2_frames");
    let size = 100 * 1024;
    let body = vec![b'x'; size];
    for (name, whole) in [("whole_records", true), ("unaligned", false)] {
        let (server, mut client) = rt.block_on(tls_pair());
        let mut frames = meridian::bench::H2Frames::new(server, whole);
        let wire = size + size.div_ceil(16 * 1024) * 9;
        let mut got = vec![0u8; wire];
        let mut one = || {
            let (sent, read) = rt.block_on(async {
                tokio::join!(frames.response(&body), client.read_exact(&mut got))
            });
            assert_eq!((sent.unwrap(), read.unwrap()), (wire, wire));
        };
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new(name, size), |b| b.iter(&mut one));
    }
    g.finish();
}

fn forward(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("hit_path/forward");
    g.measurement_time(Duration::from_secs(5));
    let dir = tempfile::tempdir().unwrap();
    let (node, client, uri) = rt.block_on(async {
        let o = origin_saying(Bytes::from(vec![b'x'; 1024]), "private").await;
        let node = edge_for(o, dir.path()).await;
        let uri: http::Uri = format!("http://{}/form", node.http_addrs()[0])
            .parse()
            .unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        (node, client, uri)
    });
    for (name, method, body) in [
        ("get_private", http::Method::GET, ""),
        ("post", http::Method::POST, "a=1&b=2"),
    ] {
        let fetch = || async {
            let req = http::Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            let resp = client.request(req).await.unwrap();
            resp.into_body().collect().await.unwrap().to_bytes().len()
        };
        assert_eq!(rt.block_on(fetch()), 1024);
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| b.to_async(&rt).iter(fetch));
    }
    rt.block_on(node.shutdown());
    g.finish();
}

fn metrics(c: &mut Criterion) {
    use std::sync::{Arc, Barrier};
    let mut g = c.benchmark_group("hit_path/metrics");
    g.measurement_time(Duration::from_secs(5));
    let edge = Arc::new(meridian::bench::RequestMetrics::new("bench-metrics"));
    let took = Duration::from_micros(700);
    // The same families and labels, through the exporter's handles (what the edge did before).
    let h = Arc::new((
        metrics::counter!("meridian_http_protocol_requests_total", "node" => "bench-metrics-exporter", "protocol" => "http/1.1"),
        metrics::counter!("meridian_origin_fetches_total", "node" => "bench-metrics-exporter"),
        metrics::histogram!("meridian_origin_fetch_duration_seconds", "node" => "bench-metrics-exporter"),
        metrics::counter!("meridian_http_requests_total", "node" => "bench-metrics-exporter", "cache" => "pass", "code" => "200"),
        metrics::histogram!("meridian_http_request_duration_seconds", "node" => "bench-metrics-exporter", "cache" => "pass", "protocol" => "http/1.1"),
    ));
    let kept = move || {
        h.0.increment(1);
        h.1.increment(1);
        h.2.record(took.as_secs_f64());
        h.3.increment(1);
        h.4.record(took.as_secs_f64());
    };
    let ours = {
        let edge = edge.clone();
        move || edge.forwarded(took)
    };
    type Record = Arc<dyn Fn() + Send + Sync>;
    let variants: [(&str, Record); 2] =
        [("exporter", Arc::new(kept)), ("per_thread", Arc::new(ours))];
    for (name, record) in variants {
        g.throughput(Throughput::Elements(2));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Arc::new(Barrier::new(3));
                let threads: Vec<_> = (0..2)
                    .map(|_| {
                        let (start, record) = (start.clone(), record.clone());
                        std::thread::spawn(move || {
                            start.wait();
                            for _ in 0..iters {
                                record();
                            }
                        })
                    })
                    .collect();
                start.wait();
                let t = std::time::Instant::now();
                for th in threads {
                    th.join().unwrap();
                }
                t.elapsed()
            })
        });
    }
    // Shown as `/metrics` would: what both recorded is there.
    assert!(edge.render().contains("node=\"bench-metrics\""));
    g.finish();
}

criterion_group!(benches, lookup, loopback, tls_h2_frames, forward, metrics);
criterion_main!(benches);
