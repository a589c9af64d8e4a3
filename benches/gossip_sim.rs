//! Gossip at scale, simulated on one machine: N agents (default 150; `GOSSIP_NODES` sets it) on
//! the real sealed transport over loopback UDP, each on its own port of 127.0.0.1, joining
//! through three seeds, gossiping every 250 ms (the default).
//!
//! Reports: how long the cluster takes to converge (every node sees N alive), the gossip bytes
//! each node sends per second in steady state, how long a load change published by one node
//! takes to reach every other node (several rounds; median and worst), and how long a cluster
//! purge issued on one node takes to be held by every other (20 purges; median, p99 = worst).
//!
//! Run: `cargo bench --bench gossip_sim` (`GOSSIP_NODES=200 GOSSIP_INTERVAL_MS=500 cargo bench
//! --bench gossip_sim` for other sizes and rounds).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian::bench::GossipNode;

/// Gossip interval (`GOSSIP_INTERVAL_MS`, default 250 as in a node file without one).
fn interval() -> Duration {
    Duration::from_millis(
        std::env::var("GOSSIP_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(250),
    )
}

/// `n` distinct UDP ports free on 127.0.0.1 (all held until all are picked).
fn free_ports(n: usize) -> Vec<SocketAddr> {
    let held: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter().map(|s| s.local_addr().unwrap()).collect()
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument (a filter) that does not name us skips.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"gossip_sim".contains(&a))
    {
        return;
    }
    let n: usize = std::env::var("GOSSIP_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(simulate(n));
}

async fn simulate(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("gossip.key");
    std::fs::write(&key, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    let addrs = free_ports(n);
    let seeds: Vec<String> = addrs.iter().take(3).map(|a| a.to_string()).collect();
    let regions = ["us-west", "eu-west", "ap-east"];
    let t = Instant::now();
    let mut nodes = Vec::with_capacity(n);
    for (i, addr) in addrs.iter().enumerate() {
        nodes.push(
            GossipNode::start(
                &format!("edge-{i:03}"),
                regions[i % 3],
                *addr,
                seeds.clone(),
                &key,
                interval(),
            )
            .await,
        );
    }
    println!(
        "gossip simulation: {n} nodes, gossip every {:?}, sealed (AES-256-GCM) UDP on loopback",
        interval()
    );
    // Convergence: every node holds every node alive.
    let converged = wait_until(Duration::from_secs(120), || {
        nodes.iter().all(|node| node.alive() == n)
    })
    .await;
    match converged {
        Some(_) => println!(
            "  converged (every node sees {n} alive): {:.2} s after the first start",
            t.elapsed().as_secs_f64()
        ),
        None => {
            let least = nodes.iter().map(|node| node.alive()).min().unwrap_or(0);
            println!("  did not converge within 120 s (least-informed node sees {least} of {n})");
            return;
        }
    }

    // Steady-state traffic.
    let window = Duration::from_secs(10);
    let before: u64 = nodes.iter().map(|node| node.bytes_sent()).sum();
    tokio::time::sleep(window).await;
    let after: u64 = nodes.iter().map(|node| node.bytes_sent()).sum();
    let per_node = (after - before) as f64 / n as f64 / window.as_secs_f64();
    println!(
        "  gossip sent per node: {:.1} KiB/s ({:.0} B/s) over {:?}",
        per_node / 1024.0,
        per_node,
        window
    );

    // Load changes: one node publishes a new figure; how long until every node has it?
    let mut times = Vec::new();
    for round in 0..7 {
        let who = (round * 37) % n;
        let load = 0.1 + round as f64 / 10.0 + who as f64 / 100_000.0;
        let id = format!("edge-{who:03}");
        let expect = format!("{load:.3}").parse::<f64>().unwrap();
        let t = Instant::now();
        nodes[who].set_load(load).await;
        let reached = wait_until(Duration::from_secs(30), || {
            nodes.iter().all(|node| node.load_of(&id) == Some(expect))
        })
        .await;
        match reached {
            Some(_) => times.push(t.elapsed()),
            None => println!("  round {round}: the load change did not reach every node in 30 s"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    times.sort();
    if !times.is_empty() {
        println!(
            "  load change reaches all {n} nodes: median {:.0} ms, worst {:.0} ms ({} rounds)",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times[times.len() - 1].as_secs_f64() * 1000.0,
            times.len()
        );
    }
    purges(&nodes, n).await;
}

/// Issues 20 purges, each from another node, and times how long until every node holds it.
async fn purges(nodes: &[GossipNode], n: usize) {
    let mut times = Vec::new();
    for round in 0..20 {
        let who = (round * 53 + 7) % n;
        let issuer = format!("edge-{who:03}");
        let t = Instant::now();
        let at = nodes[who]
            .issue_purge(&format!("http://www.example.com/{round}"))
            .await;
        let mut missing: Vec<usize> = (0..n).collect();
        while !missing.is_empty() && t.elapsed() < Duration::from_secs(30) {
            let mut still = Vec::new();
            for i in missing {
                if !nodes[i].holds_purge(&issuer, at).await {
                    still.push(i);
                }
            }
            missing = still;
            if !missing.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if missing.is_empty() {
            times.push(t.elapsed());
        } else {
            println!(
                "  purge {round}: {} nodes never heard it in 30 s",
                missing.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    times.sort();
    if !times.is_empty() {
        println!(
            "  a purge reaches all {n} nodes: median {:.0} ms, p99 (worst of {}) {:.0} ms; an edge applies it within 50 ms more",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            times.len(),
            times[times.len() - 1].as_secs_f64() * 1000.0,
        );
    }
}

/// Polls `f` every 10 ms until it holds (returns the time taken) or `limit` passes.
async fn wait_until(limit: Duration, f: impl Fn() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
