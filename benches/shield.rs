//! Tiered caching over three edges, in one process on loopback: edge-a (us-west), edge-b
//! (eu-west, the shield region) and edge-c (ap-east), as in config/local, in front of one
//! origin that answers after `SHIELD_ORIGIN_MS` (default 20 ms, a distant origin's round trip).
//!
//! Reports, without and with `shield = "region"` + `shield_region = "eu-west"`: origin fetches
//! and origin bytes for a Zipf workload (`SHIELD_REQUESTS` requests, default 20,000, over
//! `SHIELD_OBJECTS` objects of 10 KiB, default 2,000, exponent 1.0, each request to a random
//! edge, 32 at a time), and, with shielding, the latency of a miss on edge-a answered by a peer
//! hit on edge-b against one fetched from the origin, and of a local hit (medians and p99 of 200).
//!
//! Run: `cargo bench --bench shield`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const EDGES: [(&str, &str, &str); 3] = [
    ("edge-a", "us-west", "127.0.0.61"),
    ("edge-b", "eu-west", "127.0.0.62"),
    ("edge-c", "ap-east", "127.0.0.63"),
];
const OBJECT: usize = 10 << 10;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct OriginCounts {
    fetches: AtomicU64,
    bytes: AtomicU64,
}

/// An origin serving 10 KiB objects at any path, fresh for an hour, after `delay`.
async fn origin(delay: Duration) -> (SocketAddr, Arc<OriginCounts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(OriginCounts::default());
    let c = counts.clone();
    let body = Bytes::from(vec![b'x'; OBJECT]);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let (c, body) = (c.clone(), body.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let (c, body) = (c.clone(), body.clone());
                    async move {
                        tokio::time::sleep(delay).await;
                        c.fetches.fetch_add(1, Ordering::Relaxed);
                        c.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("cache-control", "max-age=3600")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, counts)
}

struct Cluster {
    nodes: Vec<meridian::app::Node>,
    http: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

async fn cluster(origin: SocketAddr, shield: bool) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    std::fs::write(
        p("gossip.key"),
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n",
    )
    .unwrap();
    let shield = if shield {
        "shield = \"region\"\nshield_region = \"eu-west\"\n"
    } else {
        ""
    };
    std::fs::write(
        p("origins.toml"),
        format!("[[site]]\nname = \"b\"\nhosts = [\"bench.test\"]\norigins = [\"http://{origin}\"]\n{shield}"),
    )
    .unwrap();
    let mut map = String::new();
    for (name, lat, lon) in [
        ("us-west", 47.6, -122.3),
        ("eu-west", 51.5, -0.1),
        ("ap-east", 35.7, 139.7),
    ] {
        map.push_str(&format!(
            "[[region]]\nname = \"{name}\"\nlat = {lat}\nlon = {lon}\n"
        ));
    }
    for (id, region, ip) in EDGES {
        map.push_str(&format!(
            "[[edge]]\nid = \"{id}\"\nregion = \"{region}\"\naddresses = [\"{ip}\"]\n"
        ));
    }
    map.push_str("[[zone]]\napex = \"bench.test\"\nnames = [\"www\"]\ndefault_region = \"eu-west\"\n[zone.soa]\nmname = \"ns.bench.test\"\nrname = \"h.bench.test\"\nserial = 1\n");
    std::fs::write(p("cluster.toml"), map).unwrap();
    let gossip: Vec<SocketAddr> = EDGES
        .iter()
        .map(|(_, _, ip)| {
            std::net::UdpSocket::bind((ip.parse::<std::net::IpAddr>().unwrap(), 0))
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let seeds: Vec<String> = gossip.iter().map(|g| format!("\"{g}\"")).collect();
    let mut nodes = Vec::new();
    for ((id, region, ip), g) in EDGES.iter().zip(&gossip) {
        let node = meridian::bench::start_node(
            &p(&format!("{id}.toml")),
            &format!(
                "id = \"{id}\"\nregion = \"{region}\"\nroles = [\"edge\"]\norigin_map = \"origins.toml\"\ncluster_map = \"cluster.toml\"\n[edge]\nlisten = [\"{ip}:0\"]\ncache_memory = \"512MiB\"\ndrain_wait = \"0s\"\nshutdown_grace = \"1s\"\n[admin]\nlisten = \"{ip}:0\"\n[gossip]\nlisten = \"{g}\"\nseeds = [{}]\ncluster = \"bench\"\nkey_file = \"gossip.key\"\n",
                seeds.join(", ")
            ),
        )
        .await;
        nodes.push(node);
    }
    // Until every edge hears the three with their peer addresses.
    meridian::bench::wait_for_all_peers(&nodes, 3, Duration::from_secs(20)).await;
    Cluster {
        http: nodes.iter().map(|n| n.http_addrs()[0]).collect(),
        nodes,
        _dir: dir,
    }
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build(HttpConnector::new())
}

/// GET `path` from `addr` with `host`: its Cache-Status and body.
async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
    host: &str,
) -> (String, Bytes) {
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

/// A small xorshift generator: the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Object ranks drawn with Zipf(1.0) popularity over `objects`.
fn zipf(objects: usize, n: usize, seed: u64) -> Vec<usize> {
    let weights: Vec<f64> = (1..=objects).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(objects);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let u = rng.unit();
            cdf.partition_point(|&c| c < u).min(objects - 1)
        })
        .collect()
}

struct Run {
    fetches: u64,
    bytes: u64,
    hits: u64,
    elapsed: Duration,
}

async fn workload(c: &Cluster, counts: &OriginCounts, requests: usize, objects: usize) -> Run {
    let ranks = Arc::new(zipf(objects, requests, 0x9e37_79b9_7f4a_7c15));
    let hits = Arc::new(AtomicU64::new(0));
    let before = (
        counts.fetches.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed),
    );
    let t = Instant::now();
    let workers: Vec<_> = (0..32)
        .map(|w| {
            let (ranks, hits, http) = (ranks.clone(), hits.clone(), c.http.clone());
            tokio::spawn(async move {
                let client = client();
                let mut rng = Rng(w as u64 + 1);
                for i in (w..ranks.len()).step_by(32) {
                    let edge = http[(rng.next() % 3) as usize];
                    let (status, body) =
                        fetch(&client, edge, &format!("/o/{}", ranks[i]), "bench.test").await;
                    assert_eq!(body.len(), OBJECT, "{status}");
                    // This edge's own entry is the last one.
                    let ours = status.rsplit(", ").next().unwrap_or("");
                    if ours.split("; ").any(|p| p == "hit") {
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    Run {
        fetches: counts.fetches.load(Ordering::Relaxed) - before.0,
        bytes: counts.bytes.load(Ordering::Relaxed) - before.1,
        hits: hits.load(Ordering::Relaxed),
        elapsed: t.elapsed(),
    }
}

fn quantiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(v[v.len() / 2]),
        ms(v[(v.len() * 99 / 100).min(v.len() - 1)]),
    )
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"shield".contains(&a))
    {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let delay = Duration::from_millis(env("SHIELD_ORIGIN_MS", 20));
        let requests = env("SHIELD_REQUESTS", 20_000) as usize;
        let objects = env("SHIELD_OBJECTS", 2_000) as usize;
        println!(
            "3 edges (us-west, eu-west, ap-east), origin after {delay:?}; {requests} requests, Zipf(1.0) over {objects} objects of 10 KiB, random edge, 32 at a time"
        );
        println!("| shielding | origin fetches | origin bytes | requests/s | edge hits |");
        println!("|---|---|---|---|---|");
        for shield in [false, true] {
            let (addr, counts) = origin(delay).await;
            let c = cluster(addr, shield).await;
            let r = workload(&c, &counts, requests, objects).await;
            println!(
                "| {} | {} | {:.1} MiB | {:.0} | {:.1}% |",
                if shield { "region + shield_region eu-west" } else { "off" },
                r.fetches,
                r.bytes as f64 / f64::from(1 << 20),
                requests as f64 / r.elapsed.as_secs_f64(),
                100.0 * r.hits as f64 / requests as f64,
            );
            if shield {
                // Fresh objects: fetched by edge-b (the shield owner) from the origin, then asked
                // of edge-a (a miss there, a peer hit on edge-b), then a hit on edge-a.
                let client = client();
                let (mut origin_miss, mut peer_hit, mut hit) = (vec![], vec![], vec![]);
                for i in 0..200 {
                    let path = format!("/fresh/{i}");
                    for (edge, into) in [
                        (c.http[1], &mut origin_miss),
                        (c.http[0], &mut peer_hit),
                        (c.http[0], &mut hit),
                    ] {
                        let t = Instant::now();
                        let (status, _) = fetch(&client, edge, &path, "bench.test").await;
                        into.push(t.elapsed());
                        assert!(!status.is_empty());
                    }
                }
                let (o50, o99) = quantiles(origin_miss);
                let (p50, p99) = quantiles(peer_hit);
                let (h50, h99) = quantiles(hit);
                println!();
                println!("| answer on edge-a | median | p99 |");
                println!("|---|---|---|");
                println!("| origin fetch (by edge-b, origin after {delay:?}) | {o50:.2} ms | {o99:.2} ms |");
                println!("| peer hit (miss on edge-a, hit on edge-b) | {p50:.2} ms | {p99:.2} ms |");
                println!("| local hit | {h50:.2} ms | {h99:.2} ms |");
            }
            for n in c.nodes {
                n.shutdown().await;
            }
        }
    });
}
