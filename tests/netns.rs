//! Multi-host: three edge hosts and a DNS host, each in its own network namespace with its own
//! address, joined by veth pairs to a bridge, gossiping across it as separate machines would.
//! Killing one edge host's process moves the DNS answers within 3 s.
//!
//! Needs root and iproute2 (`.ci/run` installs it); anywhere else it is skipped with the reason.

#[path = "common/dns.rs"]
mod dns;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dns::{addresses, ask, Ask};
use hickory_proto::rr::RecordType;

/// Runs `ip ARGS`; returns stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The test network: a bridge in this namespace and one namespace per host; removed on drop.
struct Net {
    tag: String,
    subnet: String,
    hosts: Vec<String>,
    procs: Vec<Child>,
}

impl Net {
    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn host_ip(&self, n: u8) -> String {
        format!("{}.{n}", self.subnet)
    }

    fn build(&mut self, hosts: &[(&str, u8)]) -> Result<(), String> {
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.host_ip(1)),
            "dev",
            &br,
        ])?;
        ip(&["link", "set", &br, "up"])?;
        for (i, (name, n)) in hosts.iter().enumerate() {
            let ns = format!("{}{name}", self.tag);
            ip(&["netns", "add", &ns])?;
            self.hosts.push(ns.clone());
            let (inner, outer) = (format!("{}i{i}", self.tag), format!("{}o{i}", self.tag));
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&["link", "set", &outer, "master", &br])?;
            ip(&["link", "set", &outer, "up"])?;
            let addr = format!("{}/24", self.host_ip(*n));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inner])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Starts `meridian run -c FILE` inside host `name`'s namespace.
    fn run(&mut self, name: &str, file: &std::path::Path) -> usize {
        let ns = format!("{}{name}", self.tag);
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                env!("CARGO_BIN_EXE_meridian"),
                "run",
                "-c",
            ])
            .arg(file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"level\":\"ERROR\"") {
                    eprintln!("{line}");
                }
            }
        });
        self.procs.push(child);
        self.procs.len() - 1
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for (i, ns) in self.hosts.iter().enumerate() {
            let _ = ip(&["link", "del", &format!("{}o{i}", self.tag)]);
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

fn skip(reason: &str) {
    eprintln!("skipped: the multi-host test {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_edge_host_leaves_the_answers_within_3s() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root (network namespaces); run the suite as root to include it");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return skip("needs iproute2 (`apt-get install iproute2`, as .ci/run does)");
    }
    let pid = std::process::id();
    let mut net = Net {
        tag: format!("mr{}", pid % 100_000),
        subnet: format!("10.213.{}", pid % 250),
        hosts: Vec::new(),
        procs: Vec::new(),
    };
    let hosts = [("dns", 10u8), ("ea", 11), ("eb", 12), ("ec", 13)];
    if let Err(e) = net.build(&hosts) {
        return skip(&format!("could not build its network here ({e})"));
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cluster = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local/cluster.toml"),
    )
    .unwrap();
    let mut cluster = cluster;
    for (n, local) in [(11, "127.0.0.11"), (12, "127.0.0.12"), (13, "127.0.0.13")] {
        cluster = cluster.replace(local, &net.host_ip(n));
    }
    std::fs::write(d.join("cluster.toml"), cluster).unwrap();
    std::fs::write(
        d.join("origins.toml"),
        "[[site]]\nname = \"demo\"\nhosts = [\"demo.meridian.test\"]\norigins = [\"http://127.0.0.1:8000\"]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("gossip.key"),
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n",
    )
    .unwrap();
    let seeds: Vec<String> = hosts
        .iter()
        .map(|(_, n)| format!("\"{}:7946\"", net.host_ip(*n)))
        .collect();
    let gossip = |n: u8| {
        format!(
            "[gossip]\nlisten = \"{}:7946\"\nseeds = [{}]\ncluster = \"netns\"\nkey_file = \"gossip.key\"\n",
            net.host_ip(n),
            seeds.join(", ")
        )
    };
    let geo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("geo/test-city.mmdb");
    std::fs::write(
        d.join("dns.toml"),
        format!(
            "id = \"dns\"\nregion = \"eu-west\"\nroles = [\"dns\"]\ncluster_map = \"cluster.toml\"\n[log]\nformat = \"json\"\n[dns]\nlisten = [\"{}:5353\"]\ngeoip = {:?}\n{}",
            net.host_ip(10),
            geo.display().to_string(),
            gossip(10)
        ),
    )
    .unwrap();
    for (id, region, n) in [
        ("edge-a", "us-west", 11u8),
        ("edge-b", "eu-west", 12),
        ("edge-c", "ap-east", 13),
    ] {
        std::fs::write(
            d.join(format!("{id}.toml")),
            format!(
                "id = \"{id}\"\nregion = \"{region}\"\norigin_map = \"origins.toml\"\ncluster_map = \"cluster.toml\"\n[log]\nformat = \"json\"\naccess_log = false\n[edge]\nlisten = [\"{}:8080\"]\n{}",
                net.host_ip(n),
                gossip(n)
            ),
        )
        .unwrap();
    }
    net.run("dns", &d.join("dns.toml"));
    let a = net.run("ea", &d.join("edge-a.toml"));
    net.run("eb", &d.join("edge-b.toml"));
    net.run("ec", &d.join("edge-c.toml"));

    // Queried across the bridge, from this namespace, as a resolver elsewhere would.
    let server: SocketAddr = format!("{}:5353", net.host_ip(10)).parse().unwrap();
    let seattle = || async {
        let m = ask(
            server,
            &Ask::new("demo.meridian.test.", RecordType::A).ecs("216.160.83.56/29"),
        )
        .await;
        addresses(&m).first().copied()
    };
    let edge_a: IpAddr = net.host_ip(11).parse().unwrap();
    // Up and converged: past the DNS host's settling time (its failure timeout, 2 s) it answers
    // only with edge hosts it has heard.
    let t = Instant::now();
    loop {
        if t.elapsed() > Duration::from_secs(3) && seattle().await == Some(edge_a) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the DNS host never answered with edge-a's host ({:?})",
            seattle().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    net.procs[a].kill().unwrap();
    net.procs[a].wait().unwrap();
    let t = Instant::now();
    while seattle().await == Some(edge_a) {
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "the answers still name the killed edge host after 3 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "multi-host: the killed edge host left the answers after {:?}",
        t.elapsed()
    );
    let now = seattle().await.unwrap();
    assert!(
        [net.host_ip(12), net.host_ip(13)].contains(&now.to_string()),
        "{now}"
    );
}
