//! Multi-node tests of the cluster on loopback: edges run as real `meridian` processes (so they
//! can be killed with SIGKILL), each on its own 127.0.0.x address with real UDP gossip; the DNS
//! node runs in-process and is queried with a real DNS client. Every wait is bounded.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/dns.rs"]
mod dns;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::{get, Origin, Reply, TOKEN};
use dns::{addresses, ask, Ask};
use hickory_proto::rr::RecordType;

const KEY_1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const KEY_2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
const KEY_WRONG: &str = "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=";

/// A Seattle-area client (GeoIP test network 216.160.83.56/29): nearest region us-west.
const SEATTLE: &str = "216.160.83.56/29";

/// A fresh loopback address for each node of this test process (127.0.0.x, x from 20 up, and
/// 127.0.1.x after that), so nodes sit on their own addresses as on separate hosts.
fn next_ip() -> IpAddr {
    static NEXT: AtomicU8 = AtomicU8::new(20);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    IpAddr::from([127, 0, (n < 20) as u8, n])
}

/// A UDP port free on `ip` right now.
fn free_udp(ip: IpAddr) -> SocketAddr {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One test cluster: a directory with the cluster map, key files and node files.
struct Cluster {
    dir: tempfile::TempDir,
    seeds: Vec<SocketAddr>,
    name: String,
    /// edge-b's node file, where `Two` wrote one.
    b_file: Option<PathBuf>,
}

impl Cluster {
    /// `regions_edges`: the cluster map's edges as (id, region, public address, capacity).
    fn new(edges: &[(&str, &str, &str)], extra_map: &str, name: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut map = String::from(
            r#"
[[region]]
name = "us-west"
lat = 47.6
lon = -122.3
countries = ["US"]
[[region]]
name = "eu-west"
lat = 51.5
lon = -0.1
countries = ["GB"]
[[zone]]
apex = "meridian.test"
names = ["demo"]
default_region = "eu-west"
ttl = "30s"
answers = 1
high_water = 0.8
ns = [{ name = "ns1.meridian.test", addresses = ["127.0.0.10"] }]
[zone.soa]
mname = "ns1.meridian.test"
rname = "hostmaster.meridian.test"
serial = 1
"#,
        );
        for (id, region, addr) in edges {
            map.push_str(&format!(
                "[[edge]]\nid = \"{id}\"\nregion = \"{region}\"\naddresses = [\"{addr}\"]\n"
            ));
        }
        map.push_str(extra_map);
        std::fs::write(dir.path().join("cluster.toml"), map).unwrap();
        std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
        for (file, keys) in [
            ("k1.key", vec![KEY_1]),
            ("k21.key", vec![KEY_2, KEY_1]),
            ("k12.key", vec![KEY_1, KEY_2]),
            ("wrong.key", vec![KEY_WRONG]),
        ] {
            std::fs::write(dir.path().join(file), keys.join("\n")).unwrap();
        }
        Cluster {
            dir,
            seeds: Vec::new(),
            name: name.to_string(),
            b_file: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a node file; returns its path and gossip address.
    fn node_file(&mut self, id: &str, role: &str, key: &str, section: &str) -> (PathBuf, IpAddr) {
        let ip = next_ip();
        let gossip = free_udp(ip);
        // A fixed admin port, so that `meridian route --live -c FILE` can find the node.
        let admin = std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let seeds: Vec<String> = self
            .seeds
            .iter()
            .chain(std::iter::once(&gossip))
            .map(|s| format!("\"{s}\""))
            .collect();
        self.seeds.push(gossip);
        let file = self.path(&format!("{id}-{}.toml", gossip.port()));
        std::fs::write(
            &file,
            format!(
                r#"id = "{id}"
region = "us-west"
roles = ["{role}"]
origin_map = "origins.toml"
cluster_map = "cluster.toml"
[log]
format = "json"
level = "info"
access_log = false
{section}
[admin]
listen = "{admin}"
token_file = "admin.token"
[gossip]
listen = "{gossip}"
seeds = [{seeds}]
cluster = "{cluster}"
key_file = "{key}"
interval = "200ms"
failure_timeout = "1600ms"
"#,
                seeds = seeds.join(", "),
                cluster = self.name,
            ),
        )
        .unwrap();
        (file, ip)
    }

    /// Starts the DNS node in process, with the key file `key`.
    async fn dns_with_key(&mut self, key: &str) -> DnsNode {
        let (file, _) = self.node_file(
            &format!("dns-{}", self.name),
            "dns",
            key,
            &format!(
                "[dns]\nlisten = [\"127.0.0.1:0\"]\ngeoip = {:?}\n",
                geoip().display().to_string(),
            ),
        );
        let config = meridian::config::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let node = meridian::app::Node::start(config).await.unwrap();
        DnsNode {
            udp: node.dns_addrs()[0],
            admin: node.admin_addr().unwrap(),
            node,
            file,
        }
    }

    /// Writes an edge's node file (region from the cluster map entry of `id`).
    fn edge_file(&mut self, id: &str, region: &str, key: &str, edge_extra: &str) -> PathBuf {
        let (file, ip) = self.node_file(
            id,
            "edge",
            key,
            &format!("[edge]\nlisten = [\"IP:0\"]\ndrain_wait = \"2s\"\n{edge_extra}"),
        );
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("IP:0", &format!("{ip}:0"))
            .replace("region = \"us-west\"", &format!("region = \"{region}\""));
        std::fs::write(&file, text).unwrap();
        file
    }

    fn origins(&self, origin: SocketAddr) {
        std::fs::write(
            self.path("origins.toml"),
            common::site(
                "demo",
                "demo.meridian.test",
                &format!("http://{origin}"),
                "",
            ),
        )
        .unwrap();
    }
}

fn geoip() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geo/test-city.mmdb")
}

struct DnsNode {
    node: meridian::app::Node,
    /// Its node file.
    file: PathBuf,
    udp: SocketAddr,
    admin: SocketAddr,
}

impl DnsNode {
    /// The address answered for `demo.meridian.test` to a client in `subnet`.
    async fn answer(&self, subnet: &str) -> Option<IpAddr> {
        let m = ask(
            self.udp,
            &Ask::new("demo.meridian.test.", RecordType::A).ecs(subnet),
        )
        .await;
        addresses(&m).first().copied()
    }

    /// Waits (bounded) until the answer for `subnet` is `want`; returns how long it took.
    async fn wait_answer(&self, subnet: &str, want: &str, limit: Duration) -> Duration {
        let want: IpAddr = want.parse().unwrap();
        let t = Instant::now();
        loop {
            if self.answer(subnet).await == Some(want) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < limit,
                "the answer for {subnet} did not become {want} within {limit:?} (still {:?}); members: {}",
                self.answer(subnet).await,
                self.cluster().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cluster(&self) -> serde_json::Value {
        admin_json(self.admin, "/cluster").await
    }

    /// The member `id` as this node sees it.
    async fn member(&self, id: &str) -> Option<serde_json::Value> {
        self.cluster().await["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
    }

    /// Waits (10 s at most) until member `id` is no longer alive here.
    async fn wait_gone(&self, id: &str) {
        self.wait_member(id, "gone", Duration::from_secs(10), |m| {
            m["state"] != "alive"
        })
        .await;
    }

    async fn wait_member(
        &self,
        id: &str,
        what: &str,
        limit: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let t = Instant::now();
        loop {
            if let Some(m) = self.member(id).await {
                if f(&m) {
                    return m;
                }
            }
            assert!(
                t.elapsed() < limit,
                "{id} did not become {what} within {limit:?}: {}",
                self.cluster().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let r = get(admin, "admin", path, &[]).await;
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.text()))
}

async fn admin_send(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> u16 {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    common::request(method, admin, "admin", path, &headers)
        .await
        .status
        .as_u16()
}

/// An edge as a real `meridian run` process.
struct Proc {
    child: Child,
    http: SocketAddr,
    /// The first TLS listener, where the node file has one.
    https: Option<SocketAddr>,
    admin: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn start(file: &Path) -> Proc {
        Proc::start_env(file, &[])
    }

    fn start_env(file: &Path, env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["run", "-c"])
            .arg(file)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not start", file.display());
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "node started" {
                let field = |k: &str| -> SocketAddr {
                    v[k].as_str()
                        .unwrap()
                        .split(' ')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                return Proc {
                    http: field("http"),
                    https: v["https"]
                        .as_str()
                        .and_then(|l| l.split(' ').next()?.parse().ok()),
                    admin: field("admin"),
                    child,
                    lines,
                };
            }
        }
    }

    fn signal(&self, sig: &str) {
        // The shell's builtin kill: no procps needed on a minimal machine.
        let kill = format!("kill -{sig} {}", self.child.id());
        assert!(Command::new("sh")
            .args(["-c", &kill])
            .status()
            .unwrap()
            .success());
    }

    /// A clean stop: SIGTERM, and the process exits 0 (within 20 s).
    fn stop(mut self) {
        self.signal("TERM");
        assert_eq!(self.wait(Duration::from_secs(20)), Some(0));
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                t.elapsed() < limit,
                "the edge did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The JSON log lines so far.
    fn events(&self) -> Vec<serde_json::Value> {
        self.lines
            .try_iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .collect()
    }

    /// The log lines so far.
    fn messages(&self) -> Vec<String> {
        self.lines
            .try_iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter_map(|v| v["message"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn origin() -> Origin {
    let origin = Origin::start().await;
    origin.always(
        "/",
        Reply::ok("hello").header("cache-control", "max-age=60"),
    );
    origin
}

/// A DNS node and two edges: edge-a in us-west (127.0.0.11) and edge-b in eu-west (127.0.0.12),
/// in front of one origin, converged (the DNS node hears both alive). Bind every field: the
/// directory, the origin and the edge processes end when their field is dropped.
struct Two {
    c: Cluster,
    dns: DnsNode,
    a: Proc,
    b: Proc,
    a_file: PathBuf,
    _origin: Origin,
}

impl Two {
    /// `keys`: the key files of the DNS node, edge-a and edge-b; `a_extra`: edge-a's extra
    /// `[edge]` lines.
    async fn start(name: &str, map_extra: &str, keys: [&str; 3], a_extra: &str) -> Two {
        Two::start_with(name, map_extra, keys, a_extra, &[]).await
    }

    /// The same, with `a_env` in edge-a's environment.
    async fn start_with(
        name: &str,
        map_extra: &str,
        keys: [&str; 3],
        a_extra: &str,
        a_env: &[(&str, &str)],
    ) -> Two {
        let origin = origin().await;
        let mut c = Cluster::new(
            &[
                ("edge-a", "us-west", "127.0.0.11"),
                ("edge-b", "eu-west", "127.0.0.12"),
            ],
            map_extra,
            name,
        );
        c.origins(origin.addr);
        let dns = c.dns_with_key(keys[0]).await;
        let a_file = c.edge_file("edge-a", "us-west", keys[1], a_extra);
        let b_file = c.edge_file("edge-b", "eu-west", keys[2], "");
        let a = Proc::start_env(&a_file, a_env);
        let b = Proc::start(&b_file);
        c.b_file = Some(b_file);
        for id in ["edge-a", "edge-b"] {
            dns.wait_member(id, "alive", Duration::from_secs(10), |m| {
                m["state"] == "alive" && m["peer"].is_string()
            })
            .await;
        }
        Two {
            c,
            dns,
            a,
            b,
            a_file,
            _origin: origin,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_fails_over_on_kill_and_takes_a_restarted_edge_back() {
    // Convergence: the DNS node hears both edges alive, with what they publish.
    let t = Instant::now();
    let Two {
        c: _c,
        dns,
        mut a,
        b: _b,
        a_file,
        _origin,
    } = Two::start("kill", "", ["k1.key", "k1.key", "k1.key"], "").await;
    println!("converged in {:?}", t.elapsed());
    for id in ["edge-a", "edge-b"] {
        let m = dns.member(id).await.unwrap();
        assert_eq!(m["roles"], serde_json::json!(["edge"]));
    }
    let a_seen = dns.member("edge-a").await.unwrap();
    assert_eq!(a_seen["region"], "us-west");
    assert_eq!(a_seen["addresses"], serde_json::json!(["127.0.0.11"]));
    dns.wait_answer(SEATTLE, "127.0.0.11", Duration::from_secs(5))
        .await;
    // The edges hear each other too.
    let t = Instant::now();
    loop {
        let from_a = admin_json(a.admin, "/cluster").await;
        let alive: Vec<&str> = from_a["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "alive")
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        if alive.contains(&"edge-b") && alive.iter().any(|i| i.starts_with("dns-")) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{from_a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let generation = a_seen["generation"].as_u64().unwrap();

    // SIGKILL: no goodbye. The answer moves to eu-west once the failure detector gives up.
    a.signal("KILL");
    a.wait(Duration::from_secs(5));
    let took = dns
        .wait_answer(SEATTLE, "127.0.0.12", Duration::from_secs(5))
        .await;
    println!("killed edge left the answers after {took:?}");
    let m = dns.member("edge-a").await.unwrap();
    assert_eq!(m["state"], "dead", "{m}");
    // `meridian route --live` explains the decision on what the running node hears.
    let route = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["route", "--live", "-c"])
        .arg(&dns.file)
        .arg("216.160.83.56")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.status.success(),
        "{}",
        String::from_utf8_lossy(&route.stderr)
    );
    assert!(text.contains("view     live:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("edge-a") && l.contains("down")),
        "{text}"
    );
    assert!(text.contains("-> edge-b"), "{text}");

    // Restarted (a new generation on the same address), it comes back.
    let a2 = Proc::start(&a_file);
    let took = dns
        .wait_answer(SEATTLE, "127.0.0.11", Duration::from_secs(5))
        .await;
    println!("restarted edge back in the answers after {took:?}");
    let m = dns.member("edge-a").await.unwrap();
    assert_eq!(m["state"], "alive");
    assert!(m["generation"].as_u64().unwrap() > generation, "{m}");
    drop(a2);
    drop(dns.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_leaves_the_answers_at_once_and_shuts_down_in_order() {
    let Two {
        c: _c,
        dns,
        mut a,
        b: _b,
        a_file: _,
        _origin,
    } = Two::start("drain", "", ["k1.key", "k1.key", "k1.key"], "").await;
    dns.wait_answer(SEATTLE, "127.0.0.11", Duration::from_secs(5))
        .await;

    // POST /drain needs the token; without it nothing changes.
    assert_eq!(admin_send(a.admin, "POST", "/drain", None).await, 401);
    assert_eq!(get(a.admin, "admin", "/healthz", &[]).await.status, 200);
    assert_eq!(
        admin_send(a.admin, "POST", "/drain", Some(TOKEN)).await,
        200
    );
    let took = dns
        .wait_answer(SEATTLE, "127.0.0.12", Duration::from_secs(2))
        .await;
    println!("drained (POST /drain) edge left the answers after {took:?}");
    assert_eq!(get(a.admin, "admin", "/healthz", &[]).await.status, 503);
    let m = dns.member("edge-a").await.unwrap();
    assert_eq!(
        (m["state"].as_str(), m["draining"].as_bool()),
        (Some("alive"), Some(true))
    );
    // DELETE /drain takes it back.
    assert_eq!(
        admin_send(a.admin, "DELETE", "/drain", Some(TOKEN)).await,
        200
    );
    dns.wait_answer(SEATTLE, "127.0.0.11", Duration::from_secs(2))
        .await;

    // SIGTERM: draining is announced at once, the edge keeps serving through its drain wait,
    // then stops accepting, leaves the cluster and exits 0.
    let _ = a.messages();
    let t = Instant::now();
    a.signal("TERM");
    let took = dns
        .wait_answer(SEATTLE, "127.0.0.12", Duration::from_secs(2))
        .await;
    println!("SIGTERM: edge left the answers after {took:?}");
    let r = get(a.http, "demo.meridian.test", "/", &[]).await;
    assert_eq!(r.status, 200, "still serving during the drain wait");
    assert_eq!(r.text(), "hello");
    assert_eq!(a.wait(Duration::from_secs(10)), Some(0));
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "the drain wait was honoured"
    );
    assert!(
        TcpStream::connect_timeout(&a.http, Duration::from_millis(500)).is_err(),
        "the listener is closed"
    );
    let order: Vec<String> = a
        .messages()
        .into_iter()
        .filter(|m| {
            [
                "signal received; draining",
                "draining announced",
                "shutdown complete",
                "left the cluster",
            ]
            .contains(&m.as_str())
                || m.starts_with("draining: serving")
        })
        .collect();
    assert_eq!(
        order,
        [
            "signal received; draining",
            "draining announced",
            "draining: serving until resolvers let go of this edge",
            "shutdown complete",
            "left the cluster"
        ]
    );
    let m = dns
        .wait_member("edge-a", "left", Duration::from_secs(3), |m| {
            m["state"] == "left"
        })
        .await;
    assert_eq!(m["healthy"], false);
    drop(dns.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_key_neither_joins_nor_changes_the_view() {
    // A key rotation in progress: the DNS node and edge-a hold the new key 2 besides key 1
    // (step 1: every node opens it), edge-b already seals with it (step 2).
    let Two {
        mut c,
        dns,
        a,
        b,
        a_file: _,
        _origin,
    } = Two::start("keys", "", ["k12.key", "k12.key", "k21.key"], "").await;
    dns.wait_answer(SEATTLE, "127.0.0.11", Duration::from_secs(5))
        .await;
    let before = dns.member("edge-a").await.unwrap();

    // An impostor with the wrong key claims to be edge-a, drains itself, and gossips to all.
    let bad_file = c.edge_file("edge-a", "us-west", "wrong.key", "");
    let bad = Proc::start(&bad_file);
    assert_eq!(
        admin_send(bad.admin, "POST", "/drain", Some(TOKEN)).await,
        200
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The DNS node still sees the real edge-a, undrained, and answers with it.
    let after = dns.member("edge-a").await.unwrap();
    assert_eq!(after["generation"], before["generation"]);
    assert_eq!(after["draining"], false);
    assert_eq!(after["gossip"], before["gossip"]);
    assert_eq!(
        dns.answer(SEATTLE).await,
        Some("127.0.0.11".parse().unwrap())
    );
    // The impostor heard no one.
    let its_view = admin_json(bad.admin, "/cluster").await;
    assert_eq!(
        its_view["members"].as_array().unwrap().len(),
        1,
        "{its_view}"
    );
    // Its packets were counted as rejected (waited for, bounded: on a loaded machine the
    // impostor's first rounds can come late; once in a full run they had not after 3 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = get(dns.admin, "admin", "/metrics", &[]).await.text();
        let rejected: f64 = metrics
            .lines()
            .find(|l| {
                l.starts_with("meridian_gossip_packets_total")
                    && l.contains("direction=\"rejected\"")
                    && l.contains("dns-keys")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if rejected > 0.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Given the key (a SIGHUP re-reads the key file), the same node is heard: its newer
    // generation of edge-a, draining, now decides. The key is what admits a node.
    std::fs::write(c.path("wrong.key"), format!("{KEY_1}\n{KEY_2}\n")).unwrap();
    bad.signal("HUP");
    let m = dns
        .wait_member(
            "edge-a",
            "the keyed impostor",
            Duration::from_secs(5),
            |m| m["generation"] != before["generation"] && m["draining"] == true,
        )
        .await;
    assert_ne!(
        m["gossip"], before["gossip"],
        "the impostor's address, not edge-a's"
    );
    dns.wait_answer(SEATTLE, "127.0.0.12", Duration::from_secs(2))
        .await;
    drop((a, b, bad));
    drop(dns.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_impostor_from_the_future_hides_no_one() {
    let Two {
        mut c,
        dns,
        a,
        b,
        a_file: _,
        _origin,
    } = Two::start("future", "", ["k1.key", "k1.key", "k1.key"], "").await;
    dns.wait_answer(SEATTLE, "127.0.0.11", Duration::from_secs(5))
        .await;
    let before = dns.member("edge-a").await.unwrap();

    // A node holding the key claims to be edge-a with a generation a day ahead, and drains.
    let bad_file = c.edge_file("edge-a", "us-west", "k1.key", "");
    let bad = Proc::start_env(
        &bad_file,
        &[("MERIDIAN_TEST_GENERATION_AHEAD_MS", "86400000")],
    );
    assert_eq!(
        admin_send(bad.admin, "POST", "/drain", Some(TOKEN)).await,
        200
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every node still takes the real edge-a: the DNS node answers with it, undrained...
    let after = dns.member("edge-a").await.unwrap();
    assert_eq!(after["generation"], before["generation"], "{after}");
    assert_eq!(after["draining"], false);
    assert_eq!(
        dns.answer(SEATTLE).await,
        Some("127.0.0.11".parse().unwrap())
    );
    // ... and edge-a sees itself, not the claim about its id.
    let own = admin_json(a.admin, "/cluster").await;
    let me = own["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "edge-a")
        .cloned()
        .unwrap();
    assert_eq!(me["generation"], before["generation"], "{own}");
    // The refused claim is counted.
    let metrics = get(dns.admin, "admin", "/metrics", &[]).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meridian_cluster_members")
                && l.contains("state=\"refused\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
    drop((a, b, bad));
    drop(dns.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_sealed_packet_changes_nothing() {
    // A listener every node takes for a seed: it sees the sealed packets sent to it.
    let tap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let origin = origin().await;
    let mut c = Cluster::new(
        &[
            ("edge-a", "us-west", "127.0.0.11"),
            ("edge-b", "eu-west", "127.0.0.12"),
        ],
        "",
        "replay",
    );
    c.seeds.push(tap.local_addr().unwrap());
    c.origins(origin.addr);
    let dns = c.dns_with_key("k1.key").await;
    // The DNS node's first packet to the seed: a SYN whose digest knows only the DNS node.
    let mut buf = vec![0u8; 65536];
    let (n, dns_gossip) = tokio::time::timeout(Duration::from_secs(5), tap.recv_from(&mut buf))
        .await
        .expect("the DNS node gossips to its seeds")
        .unwrap();
    let old_syn = buf[..n].to_vec();
    let a = Proc::start(&c.edge_file("edge-a", "us-west", "k1.key", ""));
    let b = Proc::start(&c.edge_file("edge-b", "eu-west", "k1.key", ""));
    let b_member = dns
        .wait_member("edge-b", "alive", Duration::from_secs(10), |m| {
            m["state"] == "alive"
        })
        .await;
    let b_gossip: SocketAddr = b_member["gossip"].as_str().unwrap().parse().unwrap();
    // Joining, neither edge logged a peer as dead the first time it heard of it.
    for (name, p) in [("edge-a", &a), ("edge-b", &b)] {
        for e in p.events() {
            assert!(
                !(e["message"] == "cluster member changed"
                    && e["state"] == "dead"
                    && e["was"] == "unknown"),
                "{name} logged a peer dead when first heard: {e}"
            );
        }
    }

    // Replayed to edge-b, that SYN draws its answer: edge-b's whole state, draining off.
    tap.send_to(&old_syn, b_gossip).await.unwrap();
    let synack = loop {
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), tap.recv_from(&mut buf))
            .await
            .expect("edge-b answers the replayed SYN")
            .unwrap();
        if from == b_gossip && n > 100 {
            break buf[..n].to_vec();
        }
    };

    // edge-b drains; the DNS node hears it and stops answering with it.
    assert_eq!(
        admin_send(b.admin, "POST", "/drain", Some(TOKEN)).await,
        200
    );
    dns.wait_member("edge-b", "draining", Duration::from_secs(5), |m| {
        m["draining"] == true
    })
    .await;

    // The captured answer, with its older state, replayed to the DNS node (several times):
    // it opens (the key sealed it), and chitchat's versions are newer where they stand, so
    // nothing goes back.
    let count = |metrics: &str, direction: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("meridian_gossip_packets_total")
                    && l.contains(&format!("direction=\"{direction}\""))
                    && l.contains("dns-replay")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = get(dns.admin, "admin", "/metrics", &[]).await.text();
    for _ in 0..3 {
        tap.send_to(&synack, dns_gossip).await.unwrap();
        tap.send_to(&old_syn, dns_gossip).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = get(dns.admin, "admin", "/metrics", &[]).await.text();
    assert_eq!(
        count(&metrics, "rejected"),
        count(&before, "rejected"),
        "the replay opened"
    );
    let after = dns.member("edge-b").await.unwrap();
    assert_eq!(after["draining"], true, "{after}");
    assert_eq!(after["generation"], b_member["generation"]);
    assert_eq!(
        dns.answer("81.2.69.142/32").await,
        Some("127.0.0.11".parse().unwrap()),
        "a draining edge-b stays out of the answers"
    );
    drop((a, b));
    drop(dns.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_region_spills_a_proportional_share_and_takes_it_back() {
    // Clients of 10.0.0.0/8 belong to us-west (a coverage zone), so each /24 in it is a client
    // subnet with its own hash. edge-a is built for 10 connections; 20 open ones put it at 2.0.
    let Two {
        c: _c,
        dns,
        a,
        b: _b,
        a_file: _,
        _origin,
    } = Two::start(
        "spill",
        "[[coverage]]\ncidr = \"10.0.0.0/8\"\nregion = \"us-west\"\n",
        ["k1.key", "k1.key", "k1.key"],
        "[edge.capacity]\nconnections = 10\n",
    )
    .await;
    let subnets: Vec<String> = (0..300)
        .map(|i| format!("10.{}.{}.0/24", i / 200, i % 200))
        .collect();
    let spilled = |answers: &[Option<IpAddr>]| {
        answers
            .iter()
            .filter(|a| **a == Some("127.0.0.12".parse().unwrap()))
            .count() as f64
            / answers.len() as f64
    };
    let answers = |dns: &DnsNode| {
        let subnets = subnets.clone();
        let udp = dns.udp;
        async move {
            let mut out = Vec::new();
            for s in &subnets {
                let m = ask(udp, &Ask::new("demo.meridian.test.", RecordType::A).ecs(s)).await;
                out.push(addresses(&m).first().copied());
            }
            out
        }
    };
    assert_eq!(spilled(&answers(&dns).await), 0.0, "idle: nobody spills");

    // Real requests on 20 keep-alive connections, held open.
    let mut conns = Vec::new();
    for _ in 0..20 {
        let stream = tokio::net::TcpStream::connect(a.http).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", "demo.meridian.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        // Read to its end: a client that drops a body still arriving (a miss streams) closes
        // the connection.
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        conns.push(send);
    }
    let m = dns
        .wait_member("edge-a", "loaded", Duration::from_secs(10), |m| {
            m["load"].as_f64().unwrap() > 1.9
        })
        .await;
    let load = m["load"].as_f64().unwrap();
    let share = spilled(&answers(&dns).await);
    let expected = (load - 0.8) / load;
    println!("load {load:.2}: {share:.3} of us-west's clients spilled (expected {expected:.3})");
    assert!(
        (share - expected).abs() < 0.1,
        "spilled {share}, expected {expected} at load {load}"
    );

    // The load falls: everyone comes back.
    drop(conns);
    dns.wait_member("edge-a", "unloaded", Duration::from_secs(10), |m| {
        m["load"].as_f64().unwrap() < 0.8
    })
    .await;
    assert_eq!(
        spilled(&answers(&dns).await),
        0.0,
        "unloaded: nobody spills"
    );
    drop(a);
    drop(dns.node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_edge_gossips_its_requests_per_second_and_hit_ratio_to_the_status_page() {
    let Two {
        c: _c,
        dns,
        a,
        b: _b,
        a_file: _,
        _origin,
    } = Two::start("traffic", "", ["k1.key", "k1.key", "k1.key"], "").await;
    // Traffic on edge-a until the DNS node has heard of it (bounded): one miss, then hits.
    let edge = a.http;
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            for _ in 0..1000 {
                if stop.is_cancelled() {
                    break;
                }
                assert_eq!(get(edge, "demo.meridian.test", "/", &[]).await.status, 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let m = dns
        .wait_member("edge-a", "busy", Duration::from_secs(10), |m| {
            m["requests_per_second"].as_f64().unwrap_or(0.0) > 5.0
                && m["hit_ratio"].as_f64().unwrap_or(0.0) > 0.9
        })
        .await;
    stop.cancel();
    load.await.unwrap();
    println!("edge-a as the DNS node hears it: {m}");
    let idle = dns.member("edge-b").await.unwrap();
    assert_eq!(idle["requests_per_second"], 0.0, "{idle}");
    assert!(
        idle["hit_ratio"].is_null(),
        "an idle edge has no ratio: {idle}"
    );

    // The status page's JSON: the same members, the map's regions with their coordinates.
    let status = admin_json(dns.admin, "/status.json").await;
    let ids: Vec<&str> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["dns-traffic", "edge-a", "edge-b"], "{status}");
    let regions: Vec<&str> = status["regions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(regions, ["us-west", "eu-west"], "{status}");
    assert!(status["regions"][0]["lat"].is_f64(), "{status}");
    let page = get(dns.admin, "admin", "/", &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<script src=\"/status.js\""));
    let policy = page.headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
}

/// `POST /purge` with the cluster's token on `admin`; the answer.
/// Asks `edge` for demo.meridian.test/ until it answers from cache (bounded).
async fn warm(edge: SocketAddr) {
    for _ in 0..100 {
        if get(edge, "demo.meridian.test", "/", &[]).await.is_hit() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{edge}: no hit");
}

/// When a purge was issued (ms): the first part of its id (`<ms>.<node>`), from a purge id or
/// a `POST /purge` answer.
fn issued_at(id: &str) -> u64 {
    id.split('.').next().unwrap().parse().unwrap()
}

async fn purge_via(admin: SocketAddr, body: &str) -> serde_json::Value {
    let auth = format!("Bearer {TOKEN}");
    let r = common::request_with_body(
        "POST",
        admin,
        "admin",
        "/purge",
        &[("authorization", auth.as_str())],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// Follows `GET /purge/{id}` on `admin` until every live edge has applied it (bounded);
/// returns the last answer and how long it took.
async fn wait_applied(
    admin: SocketAddr,
    id: &str,
    limit: Duration,
) -> (serde_json::Value, Duration) {
    let t = Instant::now();
    loop {
        let s = admin_json(admin, &format!("/purge/{id}")).await;
        if s["complete"] == true {
            return (s, t.elapsed());
        }
        assert!(t.elapsed() < limit, "not applied within {limit:?}: {s}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_sent_to_any_node_applies_on_every_edge_and_says_when() {
    let Two {
        c: _c,
        dns,
        a,
        b,
        a_file: _,
        _origin,
    } = Two::start("purge", "", ["k1.key", "k1.key", "k1.key"], "").await;
    warm(a.http).await;
    warm(b.http).await;

    // Without the token: refused, and nothing purged anywhere.
    let r = common::request_with_body(
        "POST",
        dns.admin,
        "admin",
        "/purge",
        &[],
        r#"{"url": "http://demo.meridian.test/"}"#,
    )
    .await;
    assert_eq!(r.status, 401);
    // Not even by gossip, a round later.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(get(a.http, "demo.meridian.test", "/", &[]).await.is_hit());

    // On the DNS node, which caches nothing: every edge applies it, and the answer says when.
    let answer = purge_via(dns.admin, r#"{"url": "http://demo.meridian.test/"}"#).await;
    let id = answer["id"].as_str().unwrap().to_string();
    assert!(id.ends_with(".dns-purge"), "{answer}");
    let (status, took) = wait_applied(dns.admin, &id, Duration::from_secs(5)).await;
    println!("purge {id} applied on every edge in {took:?}: {status}");
    assert_eq!(status["applied"], 2, "{status}");
    for edge in [a.http, b.http] {
        let r = get(edge, "demo.meridian.test", "/", &[]).await;
        assert!(!r.is_hit(), "{edge} still serves it: {}", r.cache_status());
    }
    // Every member shows its applied purges in /cluster (its watermark moves with gossip, a
    // round or so after the push).
    let at = issued_at(&id);
    dns.wait_member("edge-b", "its watermark", Duration::from_secs(5), |m| {
        m["purged"]["dns-purge"].as_u64().is_some_and(|w| w >= at)
    })
    .await;

    // The command line, through an edge's node file, by tag; --wait returns once all have it.
    warm(a.http).await;
    warm(b.http).await;
    let out = tokio::task::spawn_blocking({
        let file = dns.file.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_meridian"))
                .args([
                    "purge",
                    "--url",
                    "http://demo.meridian.test/",
                    "--wait",
                    "-c",
                ])
                .arg(file)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("applied on every live edge (2 of 2 edges)"),
        "{text}"
    );
    for edge in [a.http, b.http] {
        assert!(!get(edge, "demo.meridian.test", "/", &[]).await.is_hit());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_was_down_applies_the_purges_it_missed_before_serving_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = format!(
        "cache_disk = {{ path = {:?}, size = \"64MiB\" }}\n",
        dir.path().join("disk").display().to_string()
    );
    let Two {
        c: _c,
        dns,
        a,
        b: _b,
        a_file,
        _origin,
    } = Two::start("missed", "", ["k1.key", "k1.key", "k1.key"], &disk).await;
    _origin.always(
        "/kept",
        Reply::ok("kept").header("cache-control", "max-age=60"),
    );
    for path in ["/", "/kept"] {
        assert_eq!(
            get(a.http, "demo.meridian.test", path, &[]).await.status,
            200
        );
    }
    // Written to disk, then a clean stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.stop();
    dns.wait_gone("edge-a").await;

    // Purged while edge-a was down: only the DNS node and edge-b heard it.
    let answer = purge_via(dns.admin, r#"{"url": "http://demo.meridian.test/"}"#).await;
    let id = answer["id"].as_str().unwrap().to_string();

    // Back: the first request for the purged URL is not the old copy from disk.
    let a = Proc::start(&a_file);
    let r = get(a.http, "demo.meridian.test", "/", &[]).await;
    assert!(
        !r.is_hit(),
        "a purged object came back from disk: {}",
        r.cache_status()
    );
    // Back in the cluster, it says it has applied it.
    let at = issued_at(&id);
    dns.wait_member("edge-a", "caught up", Duration::from_secs(10), |m| {
        m["state"] == "alive" && m["purged"]["dns-missed"].as_u64().is_some_and(|w| w >= at)
    })
    .await;
    let (status, _) = wait_applied(dns.admin, &id, Duration::from_secs(10)).await;
    assert_eq!(status["applied"], 2, "{status}");
    // What was not purged is served from disk once the edge has caught up (disk reads resume).
    let t = Instant::now();
    loop {
        let r = get(a.http, "demo.meridian.test", "/kept", &[]).await;
        if r.is_hit() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{}",
            r.cache_status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three shielding edges, as real processes: edge-a1 and edge-a2 in us-west, edge-b in eu-west,
/// the shield region. Returns once every edge hears the three alive with their peer addresses.
async fn shielded(c: &mut Cluster, origin: SocketAddr) -> Vec<(String, Proc, PathBuf)> {
    shielded_with(c, origin, "", "").await
}

/// The cluster map of the shielding tests: edge-a1 and edge-a2 in us-west, edge-b in eu-west.
fn shield_cluster(name: &str) -> Cluster {
    Cluster::new(
        &[
            ("edge-a1", "us-west", "127.0.0.11"),
            ("edge-a2", "us-west", "127.0.0.14"),
            ("edge-b", "eu-west", "127.0.0.12"),
        ],
        "",
        name,
    )
}

/// [`shielded`], with `site_extra` in the site and `edge_extra` in each edge's `[edge]`.
async fn shielded_with(
    c: &mut Cluster,
    origin: SocketAddr,
    site_extra: &str,
    edge_extra: &str,
) -> Vec<(String, Proc, PathBuf)> {
    std::fs::write(
        c.path("origins.toml"),
        common::site(
            "demo",
            "demo.meridian.test",
            &format!("http://{origin}"),
            &format!("shield = \"region\"\nshield_region = \"eu-west\"\n{site_extra}"),
        ),
    )
    .unwrap();
    start_shielded(c, edge_extra, |_, _| {}).await
}

/// Starts the three edges of [`shield_cluster`] on the origin map already written, each node
/// file passed to `edit` (its id, its path) first; returns once every edge hears the three
/// alive with their peer addresses.
async fn start_shielded(
    c: &mut Cluster,
    edge_extra: &str,
    edit: impl Fn(&str, &Path),
) -> Vec<(String, Proc, PathBuf)> {
    let mut edges = Vec::new();
    for (id, region) in [
        ("edge-a1", "us-west"),
        ("edge-a2", "us-west"),
        ("edge-b", "eu-west"),
    ] {
        let file = c.edge_file(
            id,
            region,
            "k1.key",
            &format!("peer_timeout = \"500ms\"\n{edge_extra}"),
        );
        edit(id, &file);
        edges.push((id.to_string(), Proc::start(&file), file));
    }
    for (_, p, _) in &edges {
        meridian::bench::wait_for_peers(p.admin, 3, Duration::from_secs(15))
            .await
            .unwrap();
    }
    edges
}

/// `meridian owner` through an edge's node file: its stdout.
fn owner(file: &Path, url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["owner", "-c"])
        .arg(file)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn metric(text: &str, family: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shielded_misses_make_one_origin_fetch_for_the_whole_cluster() {
    let origin = Origin::start().await;
    let slow = |body: &str| {
        Reply::ok(body)
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(300))
    };
    for path in ["/x", "/forged"] {
        origin.always(path, slow(&path[1..]));
    }
    // Slower than peer_timeout (500 ms): owners waiting on it answer pings, and are waited for.
    origin.always(
        "/cold",
        Reply::ok("cold")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(800)),
    );
    for i in 0..16 {
        origin.always(
            &format!("/late{i}"),
            Reply::ok("late")
                .header("cache-control", "max-age=60")
                .delay(Duration::from_millis(100)),
        );
    }
    let mut c = shield_cluster("shield");
    let edges = shielded(&mut c, origin.addr).await;
    let http: Vec<SocketAddr> = edges.iter().map(|(_, p, _)| p.http).collect();

    // 300 concurrent requests for one cold object, spread over the three edges: one origin
    // fetch (each region's owner asks eu-west's owner, which alone asks the origin).
    let all: Vec<_> = (0..300)
        .map(|i| {
            let edge = http[i % 3];
            tokio::spawn(async move { get(edge, "demo.meridian.test", "/cold", &[]).await })
        })
        .collect();
    for r in all {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.cache_status());
        assert_eq!(r.text(), "cold");
    }
    assert_eq!(origin.count("/cold"), 1, "origin fetches for 300 requests");

    // Who owns /x, and the hop seen from an edge that does not: both caches in Cache-Status.
    let a1_file = &edges[0].2;
    let told = owner(a1_file, "http://demo.meridian.test/x");
    println!("{told}");
    let region_owner = told
        .lines()
        .find_map(|l| l.strip_prefix("owners in region us-west: "))
        .and_then(|l| l.split(", then ").next())
        .unwrap_or_else(|| panic!("{told}"))
        .to_string();
    assert!(
        told.contains("owners in the shield region eu-west: edge-b"),
        "{told}"
    );
    let (not_owner, _, _) = edges[..2]
        .iter()
        .find(|(id, _, _)| *id != region_owner)
        .unwrap();
    let at = edges
        .iter()
        .find(|(id, _, _)| id == not_owner)
        .unwrap()
        .1
        .http;
    let r = get(at, "demo.meridian.test", "/x", &[]).await;
    assert_eq!(r.text(), "x");
    let cs = r.cache_status().to_string();
    assert!(
        cs.contains(&format!("meridian-{region_owner}; fwd=miss"))
            && cs.contains("meridian-edge-b; fwd=miss")
            && cs
                .rsplit(", ")
                .next()
                .is_some_and(|last| last.contains("stored") && common::ttl_about(last, 60))
            && cs.matches(", ").count() == 2,
        "{cs}"
    );
    // The origin saw the user, not the edges in between, and every hop in Via.
    let seen = origin.last("/x");
    let xff = seen.headers["x-forwarded-for"].to_str().unwrap();
    assert!(!xff.contains(','), "{xff}");
    let via: Vec<&str> = seen
        .headers
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let via = via.join(", ");
    for id in [not_owner.as_str(), region_owner.as_str(), "edge-b"] {
        assert!(via.contains(id), "{via}");
    }
    assert!(seen.headers.get("meridian-peer").is_none());
    // Now a hit on the requesting edge, with only its own entry.
    let r = get(at, "demo.meridian.test", "/x", &[]).await;
    assert!(
        r.is_hit() && !r.cache_status().contains(','),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count("/x"), 1);

    // A forged peer mark is a client's request like any other: dropped before the origin, and
    // the client's forwarding fields are not taken as a peer's.
    let b = &edges[2].1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mark = format!("2.{now}.{}", "00".repeat(32));
    let r = get(
        b.http,
        "demo.meridian.test",
        "/forged",
        &[("meridian-peer", &mark), ("x-forwarded-for", "6.6.6.6")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        !r.cache_status().contains("meridian-edge-b"),
        "{}",
        r.cache_status()
    );
    let seen = origin.last("/forged");
    assert!(seen.headers.get("meridian-peer").is_none());
    let xff = seen.headers["x-forwarded-for"].to_str().unwrap();
    assert!(xff.starts_with("6.6.6.6, "), "{xff}");
    let m = get(b.admin, "admin", "/metrics", &[]).await.text();
    assert!(
        metric(&m, "meridian_peer_served_total", "signature=\"invalid\"") >= 1.0,
        "{m}"
    );
    assert!(metric(&m, "meridian_peer_served_total", "signature=\"valid\"") >= 1.0);
    let m = get(edges[0].1.admin, "admin", "/metrics", &[]).await.text();
    assert!(
        metric(&m, "meridian_peer_requests_total", "result=") >= 1.0,
        "{m}"
    );

    // A stalled shield owner (SIGSTOP: it accepts connections and never answers) is passed
    // over once it fails a ping, without waiting for gossip to call it dead; asked for an
    // object edge-a2 owns, edge-a1 waits for edge-a2 (which answers pings) while edge-a2 passes
    // edge-b over and fetches: one origin fetch.
    let late = (0..16)
        .map(|i| format!("/late{i}"))
        .find(|p| {
            owner(a1_file, &format!("http://demo.meridian.test{p}"))
                .contains("owners in region us-west: edge-a2")
        })
        .expect("edge-a2 owns one of 16 paths");
    b.signal("STOP");
    let t = Instant::now();
    let r = get(http[0], "demo.meridian.test", &late, &[]).await;
    let took = t.elapsed();
    assert_eq!(r.text(), "late");
    assert_eq!(origin.count(&late), 1);
    assert!(took < Duration::from_secs(3), "{took:?}");
    println!("stalled owner passed over in {took:?}");
    // (Woken, it still answers the request it had taken: a second fetch, after the fact.)
    b.signal("CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_restarted_on_a_clock_behind_its_last_purges_is_still_heard() {
    let Two {
        c: _c,
        dns,
        a,
        b,
        a_file,
        _origin,
    } = Two::start("behind", "", ["k1.key", "k1.key", "k1.key"], "").await;
    // edge-a issues a purge; edge-b applies it and publishes its watermark for edge-a.
    let first = purge_via(a.admin, r#"{"url": "http://demo.meridian.test/"}"#).await;
    let (_, _) = wait_applied(
        a.admin,
        first["id"].as_str().unwrap(),
        Duration::from_secs(5),
    )
    .await;
    let w1 = issued_at(first["id"].as_str().unwrap());

    // edge-a comes back on a clock a minute behind (a stepped clock, a replaced host).
    a.stop();
    let a = Proc::start_env(&a_file, &[("MERIDIAN_TEST_PURGE_CLOCK_BEHIND_MS", "60000")]);
    // Until it hears what edge-b applied of its purges.
    let t = Instant::now();
    loop {
        let v = admin_json(a.admin, "/cluster").await;
        let heard = v["members"].as_array().unwrap().iter().any(|m| {
            m["id"] == "edge-b" && m["purged"]["edge-a"].as_u64().is_some_and(|w| w >= w1)
        });
        if heard {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    warm(b.http).await;
    let second = purge_via(a.admin, r#"{"url": "http://demo.meridian.test/"}"#).await;
    let id = second["id"].as_str().unwrap();
    let at = issued_at(id);
    assert!(at > w1, "issued at {at}, before its last purge {w1}");
    let (status, _) = wait_applied(dns.admin, id, Duration::from_secs(5)).await;
    assert_eq!(status["applied"], 2, "{status}");
    let r = get(b.http, "demo.meridian.test", "/", &[]).await;
    assert!(
        !r.is_hit(),
        "edge-b skipped the purge: {}",
        r.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_pushes_each_purge_to_the_live_edges_ahead_of_gossip() {
    // edge-a applies nothing gossip brings: only the issuer's push can purge it.
    let Two {
        c: _c,
        dns,
        a,
        b,
        a_file: _,
        _origin,
    } = Two::start_with(
        "push",
        "",
        ["k1.key", "k1.key", "k1.key"],
        "",
        &[("MERIDIAN_TEST_PURGES_BY_PUSH_ONLY", "1")],
    )
    .await;
    warm(a.http).await;
    warm(b.http).await;

    // A push without a valid signature is a request for no site: 421, nothing purged.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = r#"{"issuer":"dns-push","at":1,"purge":{"url":"http://demo.meridian.test/"}}"#;
    let r = common::request_with_body(
        "POST",
        a.http,
        "meridian.peer",
        "/.meridian/purge?sha256=00",
        &[("meridian-peer", &format!("3.{now}.{}", "ab".repeat(32)))],
        body,
    )
    .await;
    assert_eq!(r.status, 421);
    assert!(get(a.http, "demo.meridian.test", "/", &[]).await.is_hit());

    let answer = purge_via(dns.admin, r#"{"url": "http://demo.meridian.test/"}"#).await;
    let id = answer["id"].as_str().unwrap().to_string();
    let (status, took) = wait_applied(dns.admin, &id, Duration::from_secs(5)).await;
    println!("pushed purge applied on every edge in {took:?}: {status}");
    assert_eq!(status["applied"], 2, "{status}");
    for edge in [a.http, b.http] {
        let r = get(edge, "demo.meridian.test", "/", &[]).await;
        assert!(!r.is_hit(), "{edge} still serves it: {}", r.cache_status());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_outlives_its_issuer_for_an_edge_that_was_down() {
    // edge-b is down when edge-a issues a purge; edge-a dies (SIGKILL) before edge-b is back;
    // the DNS node still holds edge-a's gossip state (a dead member's state is kept), so
    // edge-b, back, gets the purge from it.
    let Two {
        c,
        dns,
        a,
        b,
        a_file: _,
        _origin,
    } = Two::start("outlive", "", ["k1.key", "k1.key", "k1.key"], "").await;
    let b_file = c.b_file.clone().unwrap();
    b.stop();
    dns.wait_gone("edge-b").await;
    let answer = purge_via(a.admin, r#"{"url": "http://demo.meridian.test/"}"#).await;
    let at = issued_at(answer["id"].as_str().unwrap());
    // Five gossip rounds: the DNS node holds the purge in its copy of edge-a's state.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.signal("KILL");
    dns.wait_member("edge-a", "dead", Duration::from_secs(10), |m| {
        m["state"] == "dead"
    })
    .await;
    let _b = Proc::start(&b_file);
    dns.wait_member(
        "edge-b",
        "back, with edge-a's purge applied",
        Duration::from_secs(10),
        |m| m["state"] == "alive" && m["purged"]["edge-a"].as_u64().is_some_and(|w| w >= at),
    )
    .await;
}

/// An edge's TLS listener, for `edge_file`'s `edge_extra`.
const TLS_LISTENER: &str = "[edge.tls]\nlisten = [\"IP:0\"]\n";

/// A site's certificate lines.
fn site_tls(cert: &Path, key: &Path) -> String {
    format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// `GET path` over HTTPS (HTTP/1.1) at `addr` for `demo.meridian.test`, trusting
/// `config/local`'s CA: (status, `Location`, body).
async fn get_https(addr: SocketAddr, path: &str) -> (u16, String, String) {
    use http_body_util::BodyExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read(root.join("config/local/tls/ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("demo.meridian.test").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "demo.meridian.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// An HTTPS user's miss goes up the tiers as an HTTPS user's, though the hops between edges are
/// plain HTTP: each owner keys the variant, and the origin hears, the user's scheme. Before,
/// the owners took the hop's (`http`), so an origin that redirects plain HTTP to HTTPS had its
/// redirect, stored for a plain user, handed to HTTPS users too: a redirect loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_users_miss_is_an_https_miss_at_every_tier() {
    let origin = Origin::start().await;
    let redirect = |seen: &common::Seen, _: usize| {
        let forwarded = seen
            .headers
            .get("forwarded")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        if forwarded.contains("proto=https") {
            Reply::ok("secure").header("cache-control", "max-age=60")
        } else {
            Reply::ok("")
                .status(301)
                .header("location", "https://demo.meridian.test/r")
                .header("cache-control", "max-age=60")
        }
    };
    origin.script("/r", redirect);
    let mut c = shield_cluster("scheme");
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local/tls");
    let edges = shielded_with(
        &mut c,
        origin.addr,
        &site_tls(&tls.join("demo.pem"), &tls.join("demo.key")),
        // HTTP/3 too, so that each edge advertises it (Alt-Svc) on its TLS answers, peers' included.
        &format!("{TLS_LISTENER}[edge.quic]\nlisten = [\"IP:0\"]\n"),
    )
    .await;
    let (a1, b) = (&edges[0].1, &edges[2].1);

    // A plain user first, at a us-west edge: the origin redirects it, and every tier stores
    // that for plain users.
    let r = get(a1.http, "demo.meridian.test", "/r", &[]).await;
    assert_eq!(r.status, 301, "{}", r.cache_status());
    // A peer's Alt-Svc names its listeners, not this edge's: not kept (this user came over
    // plain HTTP, where an edge advertises nothing of its own).
    assert_eq!(r.header("alt-svc"), "", "{}", r.cache_status());
    assert_eq!(origin.count("/r"), 1);
    // Then an HTTPS user at the same edge: up the tiers as HTTPS, to the origin as HTTPS.
    let (status, location, body) = get_https(a1.https.unwrap(), "/r").await;
    assert_eq!((status, body.as_str()), (200, "secure"), "{location}");
    assert_eq!(origin.count("/r"), 2);
    assert!(origin.last("/r").headers["forwarded"]
        .to_str()
        .unwrap()
        .contains("proto=https"));
    // The shield owner now holds both variants: each user gets their own.
    let (status, _, body) = get_https(b.https.unwrap(), "/r").await;
    assert_eq!((status, body.as_str()), (200, "secure"));
    assert_eq!(
        get(b.http, "demo.meridian.test", "/r", &[]).await.status,
        301
    );
    assert_eq!(
        origin.count("/r"),
        2,
        "both answered from the shield's store"
    );
}

/// What an origin says to the cache alone (`Surrogate-Key`, `Surrogate-Control`) reaches every
/// tier, not only the edge that asked the origin: an edge that got an object from its peer
/// stores it for as long as the origin told caches (before, only by `Cache-Control`, here
/// `max-age=0`: so it stored nothing, marked the URL uncacheable and, as a region's owner,
/// sent its peers' misses straight to the origin), and keeps its purge tags (before, a tag
/// purge left the peers' copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_copy_keeps_its_purge_tags_and_cdn_freshness() {
    let origin = Origin::start().await;
    origin.script("/t", |_, n| {
        Reply::ok(if n == 1 { "old" } else { "new" })
            .header("cache-control", "max-age=0")
            .header("surrogate-control", "max-age=60")
            .header("surrogate-key", "t1 other")
    });
    let mut c = shield_cluster("tags");
    let edges = shielded(&mut c, origin.addr).await;
    let host = "demo.meridian.test";
    for (id, p, _) in &edges {
        let r = get(p.http, host, "/t", &[]).await;
        assert_eq!(r.text(), "old", "{id}");
        assert!(
            r.header("surrogate-key").is_empty(),
            "{id}: clients never see it"
        );
        assert!(r.header("surrogate-control").is_empty(), "{id}");
        assert!(r.header("meridian-fetched").is_empty(), "{id}");
    }
    assert_eq!(origin.count("/t"), 1, "one origin fetch for the cluster");
    // Every edge stored it for the 60 s the origin gave caches, its peers' copies included.
    for (id, p, _) in &edges {
        let r = get(p.http, host, "/t", &[]).await;
        assert!(r.is_hit(), "{id}: {}", r.cache_status());
        assert!(r.header("meridian-fetched").is_empty(), "{id}");
        assert!(r.header("surrogate-key").is_empty(), "{id}");
    }
    // A tag purge, issued at one edge: no edge serves the old copy any more (and the new one
    // is fetched once, for the whole cluster again).
    let answer = purge_via(edges[0].1.admin, r#"{"tag": "t1"}"#).await;
    let id = answer["id"].as_str().unwrap().to_string();
    wait_applied(edges[0].1.admin, &id, Duration::from_secs(5)).await;
    // (Past the moment after it in which an edge refuses even a copy stored since: see
    // `a_purged_copy_is_not_taken_back_from_a_peer_that_still_has_it`.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (id, p, _) in &edges {
        let r = get(p.http, host, "/t", &[]).await;
        assert_eq!(r.text(), "new", "{id}: {}", r.cache_status());
    }
    assert_eq!(origin.count("/t"), 2);
}

/// An edge that applied a purge does not take back, from a peer that has not applied it yet,
/// the copy it purged: it asks the origin (`meridian_peer_requests_total{result="purged"}`).
/// Before, the shield owner handed the old copy back, and the edge served it until it expired.
/// Here the purge names the site by an alias that only the us-west edges' origin map has, so
/// that edge-b (the shield owner) does not apply it, as a peer whose push was lost and whose
/// gossip is a round behind would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_copy_is_not_taken_back_from_a_peer_that_still_has_it() {
    let origin = Origin::start().await;
    origin.script("/p", |_, n| {
        Reply::ok(if n == 1 { "old" } else { "new" }).header("cache-control", "max-age=600")
    });
    let mut c = shield_cluster("recent");
    let shield = "shield = \"region\"\nshield_region = \"eu-west\"";
    let site = |hosts: &str| {
        common::site(
            "demo",
            "demo.meridian.test",
            &format!("http://{}", origin.addr),
            shield,
        )
        .replace(
            "hosts = [\"demo.meridian.test\"]",
            &format!("hosts = [{hosts}]"),
        )
    };
    std::fs::write(
        c.path("origins.toml"),
        site("\"demo.meridian.test\", \"alias.meridian.test\""),
    )
    .unwrap();
    std::fs::write(c.path("origins-b.toml"), site("\"demo.meridian.test\"")).unwrap();
    let edges: Vec<Proc> = start_shielded(&mut c, "", |id, file| {
        if id == "edge-b" {
            let text = std::fs::read_to_string(file).unwrap();
            std::fs::write(file, text.replace("origins.toml", "origins-b.toml")).unwrap();
        }
    })
    .await
    .into_iter()
    .map(|(_, p, _)| p)
    .collect();
    let host = "demo.meridian.test";
    for p in &edges {
        assert_eq!(get(p.http, host, "/p", &[]).await.text(), "old");
    }
    assert_eq!(origin.count("/p"), 1);
    // Purged by the alias: the us-west edges apply it, edge-b has no such host.
    let answer = purge_via(edges[0].admin, r#"{"url": "http://alias.meridian.test/p"}"#).await;
    let id = answer["id"].as_str().unwrap().to_string();
    wait_applied(edges[0].admin, &id, Duration::from_secs(5)).await;
    // (Peers' clocks may differ: for 250 ms after a purge, a copy stored after it is refused
    // too, and fetched again. Past that, only the old one is.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        get(edges[2].http, host, "/p", &[]).await.is_hit(),
        "edge-b kept it"
    );
    for (p, name) in edges[..2].iter().zip(["edge-a1", "edge-a2"]) {
        let r = get(p.http, host, "/p", &[]).await;
        assert_eq!(r.text(), "new", "{name}: {}", r.cache_status());
    }
    assert_eq!(
        origin.count("/p"),
        2,
        "one fetch for the region (its owner's)"
    );
    let m = get(edges[0].admin, "admin", "/metrics", &[]).await.text()
        + &get(edges[1].admin, "admin", "/metrics", &[]).await.text();
    assert!(
        metric(&m, "meridian_peer_requests_total", "result=\"purged\"") >= 1.0,
        "{m}"
    );
}

/// Edges with a TLS listener ask each other over TLS, and take for a peer only an edge that
/// proves it holds one of their own sites' certificates (every edge has the same origin map):
/// no CA is trusted for it. Here edge-b, the shield owner, serves the site with a certificate
/// of its own: the us-west edges refuse it, pass it over, and ask the origin. (Over plain HTTP,
/// as before, they would have taken its answer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_meet_over_tls_and_know_each_other_by_their_sites_certificates() {
    let origin = Origin::start().await;
    origin.always("/c", Reply::ok("c").header("cache-control", "max-age=60"));
    let mut c = shield_cluster("peertls");
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local/tls");
    let other = rcgen::generate_simple_self_signed(vec!["demo.meridian.test".to_string()]).unwrap();
    std::fs::write(c.path("other.pem"), other.cert.pem()).unwrap();
    std::fs::write(c.path("other.key"), other.key_pair.serialize_pem()).unwrap();
    let shield = "shield = \"region\"\nshield_region = \"eu-west\"\n";
    let site = |tls: String| {
        common::site(
            "demo",
            "demo.meridian.test",
            &format!("http://{}", origin.addr),
            &format!("{shield}{tls}"),
        )
    };
    std::fs::write(
        c.path("origins.toml"),
        site(site_tls(&tls.join("demo.pem"), &tls.join("demo.key"))),
    )
    .unwrap();
    std::fs::write(
        c.path("origins-b.toml"),
        site(site_tls(&c.path("other.pem"), &c.path("other.key"))),
    )
    .unwrap();
    let edges = start_shielded(&mut c, TLS_LISTENER, |id, file| {
        if id == "edge-b" {
            let text = std::fs::read_to_string(file).unwrap();
            std::fs::write(file, text.replace("origins.toml", "origins-b.toml")).unwrap();
        }
    })
    .await;
    let host = "demo.meridian.test";
    // us-west's owner asks edge-b over TLS, refuses its certificate, and asks the origin.
    let r = get(edges[0].1.http, host, "/c", &[]).await;
    assert_eq!(r.text(), "c");
    assert!(
        !r.cache_status().contains("meridian-edge-b"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count("/c"), 1);
    // edge-b was never given the object: asked itself, it fetches it.
    assert_eq!(get(edges[2].1.http, host, "/c", &[]).await.text(), "c");
    assert_eq!(origin.count("/c"), 2);
    let west = get(edges[0].1.admin, "admin", "/metrics", &[]).await.text()
        + &get(edges[1].1.admin, "admin", "/metrics", &[]).await.text();
    assert!(
        metric(&west, "meridian_peer_requests_total", "result=\"failed\"") >= 1.0,
        "{west}"
    );
    let b = get(edges[2].1.admin, "admin", "/metrics", &[]).await.text();
    assert!(
        metric(&b, "meridian_tls_handshake_failures_total", "") >= 1.0,
        "{b}"
    );
}
