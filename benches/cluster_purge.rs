//! Cluster purges at scale, with real edges: `PURGE_EDGES` edge nodes (default 200) in one
//! process, each on its own loopback address with its HTTP, admin and sealed gossip listeners
//! (gossip every 250 ms), as `meridian run` starts them.
//!
//! Reports how long after `POST /purge` on one edge the issuing node's `GET /purge/{id}` says
//! every live edge has applied it (pushed to each edge at once, and by gossip): 20 purges, each
//! from another edge; median and p99 (= worst of 20).
//!
//! Run: `cargo bench --bench cluster_purge` (`PURGE_EDGES=50 cargo bench --bench cluster_purge`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const TOKEN: &str = "bench-admin-token-0123456789";

type Http = Client<HttpConnector, Full<Bytes>>;

async fn call(client: &Http, method: &str, addr: SocketAddr, path: &str, body: &str) -> String {
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"cluster_purge".contains(&a))
    {
        return;
    }
    let n: usize = std::env::var("PURGE_EDGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(n));
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    std::fs::write(
        p("gossip.key"),
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n",
    )
    .unwrap();
    std::fs::write(p("admin.token"), TOKEN).unwrap();
    std::fs::write(
        p("origins.toml"),
        "[[site]]\nname = \"b\"\nhosts = [\"bench.test\"]\norigins = [\"http://127.0.0.1:9\"]\n",
    )
    .unwrap();
    // Each edge on its own address: 127.0.2.1, 127.0.2.2, ...
    let ips: Vec<IpAddr> = (0..n)
        .map(|i| IpAddr::from([127, 0, 2 + (i / 250) as u8, 1 + (i % 250) as u8]))
        .collect();
    let gossip: Vec<SocketAddr> = ips
        .iter()
        .map(|ip| {
            std::net::UdpSocket::bind((*ip, 0))
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let seeds: Vec<String> = gossip.iter().take(3).map(|g| format!("\"{g}\"")).collect();
    println!(
        "cluster purge: {n} edges in one process, gossip every 250ms, sealed UDP and HTTP on loopback"
    );
    let t = Instant::now();
    let mut nodes = Vec::new();
    for (i, (ip, g)) in ips.iter().zip(&gossip).enumerate() {
        let node = meridian::bench::start_node(
            &p(&format!("edge-{i:03}.toml")),
            &format!(
                "id = \"edge-{i:03}\"\nregion = \"r\"\nroles = [\"edge\"]\norigin_map = \"origins.toml\"\n[log]\nlevel = \"error\"\n[edge]\nlisten = [\"{ip}:0\"]\ncache_memory = \"16MiB\"\nmax_object_size = \"1MiB\"\ndrain_wait = \"0s\"\nshutdown_grace = \"1s\"\n[admin]\nlisten = \"{ip}:0\"\ntoken_file = \"admin.token\"\n[gossip]\nlisten = \"{g}\"\nseeds = [{}]\ncluster = \"bench\"\nkey_file = \"gossip.key\"\n",
                seeds.join(", ")
            ),
        )
        .await;
        nodes.push(node);
    }
    let client: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    // Until every edge hears all N alive with their peer addresses.
    meridian::bench::wait_for_all_peers(&nodes, n, Duration::from_secs(300)).await;
    println!(
        "  converged (every edge hears {n} alive): {:.1} s after the first start",
        t.elapsed().as_secs_f64()
    );

    let mut times = Vec::new();
    let mut answers = Vec::new();
    for round in 0..20 {
        let admin = nodes[(round * 53 + 7) % n].admin_addr().unwrap();
        let t = Instant::now();
        let answer: serde_json::Value = serde_json::from_str(
            &call(
                &client,
                "POST",
                admin,
                "/purge",
                &format!("{{\"url\": \"http://bench.test/{round}\"}}"),
            )
            .await,
        )
        .unwrap();
        let id = answer["id"].as_str().unwrap().to_string();
        let answered = t.elapsed();
        loop {
            let s: serde_json::Value = serde_json::from_str(
                &call(&client, "GET", admin, &format!("/purge/{id}"), "").await,
            )
            .unwrap();
            if s["complete"] == true {
                times.push(t.elapsed());
                answers.push(answered);
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                println!("  purge {round}: {} edges waiting after 30 s", s["waiting"]);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    times.sort();
    answers.sort();
    if !answers.is_empty() {
        println!(
            "  POST /purge answered (issued, applied on the issuing edge, pushes started): median {:.0} ms, worst {:.0} ms",
            answers[answers.len() / 2].as_secs_f64() * 1000.0,
            answers[answers.len() - 1].as_secs_f64() * 1000.0,
        );
    }
    if !times.is_empty() {
        println!(
            "  a purge is applied on all {n} edges (the issuer's GET /purge/{{id}} says complete): median {:.0} ms, p99 (worst of {}) {:.0} ms",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times.len(),
            times[times.len() - 1].as_secs_f64() * 1000.0,
        );
    }
    // 200 ordered shutdowns would take longer than the measurement: the process just ends.
    std::process::exit(0);
}
