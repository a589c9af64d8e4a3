//! The `meridian` binary itself: `check` lists every problem with file and key; `run` logs JSON
//! access lines when configured, serves HTTP on threads of its own and drains in-flight requests
//! on SIGTERM, exiting 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `meridian run -c NODE` with its log on a pipe.
fn spawn_run(node: &std::path::Path) -> std::process::Child {
    meridian()
        .args(["run", "-c"])
        .arg(node)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops a child process when dropped, so a test that fails does not leave it holding ports
/// that the next run needs.
struct Kill(u32);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.to_string()).status();
    }
}

/// The same, only when the test is failing (a passing test stops its child itself, and after it
/// has been waited for its pid may belong to another process).
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill").arg(self.0.to_string()).status();
        }
    }
}

fn meridian() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
}

/// Writes `text` as `DIR/node.toml` and runs `meridian check` on it, which must accept it;
/// returns its stderr (warnings).
fn check_passes(dir: &std::path::Path, text: &str) -> String {
    check_passes_with(dir, text, None)
}

/// The same, with `GLIBC_TUNABLES` set to `tunables` (or unset) in its environment.
fn check_passes_with(dir: &std::path::Path, text: &str, tunables: Option<&str>) -> String {
    std::fs::write(dir.join("node.toml"), text).unwrap();
    let mut cmd = meridian();
    cmd.args(["check", "-c"]).arg(dir.join("node.toml"));
    match tunables {
        Some(t) => cmd.env("GLIBC_TUNABLES", t),
        None => cmd.env_remove("GLIBC_TUNABLES"),
    };
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Runs `meridian check -c NODE`, expects exit status 1 and every `expected` line on stderr;
/// returns stderr.
fn check_lists(node: &std::path::Path, expected: &[&str]) -> String {
    let out = meridian().args(["check", "-c"]).arg(node).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for e in expected {
        assert!(err.contains(e), "missing {e:?} in:\n{err}");
    }
    err.into_owned()
}

#[test]
fn check_accepts_the_local_cluster() {
    for f in ["edge-a", "edge-b", "edge-c"] {
        let out = meridian()
            .args(["check", "-c", &format!("config/local/{f}.toml")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
        // Loopback addresses pass, with a warning: DNS would hand them to users.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with(&format!(
                "warning: config/local/{f}.toml: edge.public_addresses: 127.0.0.1"
            )) && stderr.contains("loopback"),
            "{stderr}"
        );
    }
}

#[test]
fn check_warns_of_http_threads_run_with_glibcs_per_thread_caches() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        site("s", "s.test", "http://127.0.0.1:1", ""),
    )
    .unwrap();
    let node = "id = \"e\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\npublic_addresses = [\"192.0.2.10\"]\nthreads = 2\n";
    let check = |tunables| check_passes_with(dir.path(), node, tunables);
    // The environment's own tcache count stands: `run` keeps the caches on.
    let warned = check(Some("glibc.malloc.tcache_count=7"));
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        assert!(
            warned.contains("node.toml: edge.threads: HTTP threads with glibc's per-thread caches on (GLIBC_TUNABLES sets glibc.malloc.tcache_count=7)"),
            "{warned}"
        );
    }
    // Without a setting `run` turns them off itself; with it (among others) they are off.
    let quiet = check(None);
    assert!(!quiet.contains("warning:"), "{quiet}");
    let quiet = check(Some("glibc.malloc.arena_max=4:glibc.malloc.tcache_count=0"));
    assert!(!quiet.contains("warning:"), "{quiet}");
}

#[test]
fn check_says_nothing_of_public_addresses_users_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        site("s", "s.test", "http://127.0.0.1:1", ""),
    )
    .unwrap();
    for (addresses, warned) in [
        ("[\"192.0.2.10\", \"2001:db8::10\"]", false),
        ("[\"10.1.2.3\"]", true),
        ("[\"100.64.0.9\"]", true),
        ("[\"fd00::1\"]", true),
    ] {
        let stderr = check_passes(
            dir.path(),
            &format!("id = \"e\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\npublic_addresses = {addresses}\n"),
        );
        assert_eq!(stderr.contains("warning:"), warned, "{addresses}: {stderr}");
    }
}

#[test]
fn check_lists_every_problem_with_file_and_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        r#"
id = "e"
region = "r"
roles = ["edge", "teapot"]
origin_map = "origins.toml"
[log]
format = "xml"
[edge]
listen = ["not-an-address"]
cache_memory = "4XB"
idle_timeout = "soon"
threads = 5000
[admin]
listen = "127.0.0.1:0"
token_file = "missing.token"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        "[[site]]\nname = \"s\"\nhosts = [\"a.test\"]\norigins = [\"gopher://x\"]\n",
    )
    .unwrap();
    let err = check_lists(
        &dir.path().join("node.toml"),
        &[
            "node.toml: roles[1]: unknown role \"teapot\"",
            "node.toml: log.format: unknown format \"xml\"",
            "node.toml: edge.listen[0]: \"not-an-address\" is not a socket address",
            "node.toml: edge.cache_memory: \"4XB\" has an unknown size unit",
            "node.toml: edge.idle_timeout: \"soon\" has an unknown duration unit",
            "node.toml: edge.threads: 5000 is more than 1024",
            "node.toml: admin.token_file: cannot read",
            "origins.toml: site[0].origins[0]: \"gopher://x\" must start with http:// or https://",
        ],
    );
    assert!(err.starts_with("8 configuration problems"), "{err}");
}

#[test]
fn check_names_a_missing_file() {
    let out = meridian()
        .args(["check", "-c", "/nonexistent/node.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/node.toml: cannot read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_json_and_drains_on_sigterm() {
    let origin = Origin::start().await;
    origin.always(
        "/slow",
        Reply::ok("drained")
            .header("cache-control", "max-age=60")
            .delay(Duration::from_millis(800)),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        site("s", "demo.test", &format!("http://{}", origin.addr), ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "id = \"cli-edge\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[log]\nformat = \"json\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\nshutdown_grace = \"5s\"\n",
    )
    .unwrap();
    // No `edge.threads` and no GLIBC_TUNABLES: `run` starts itself again with glibc's
    // per-thread caches off and serves HTTP on a thread per core. No warning comes first.
    let mut child = meridian()
        .args(["run", "-c"])
        .arg(dir.path().join("node.toml"))
        .env_remove("GLIBC_TUNABLES")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stop = KillOnPanic(child.id());
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_json = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>| {
        let line = rx.blocking_recv().expect("meridian exited early");
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not JSON: {line}: {e}"))
    };
    let started = tokio::task::block_in_place(|| next_json(&mut rx));
    assert_eq!(started["message"], "node started");
    // JSON strings, not Rust's debug forms: "127.0.0.1:1234", space-separated when several.
    let http = started["http"].as_str().unwrap().to_string();
    assert!(!http.contains('['), "{http}");
    assert_eq!(started["https"], "");
    let addr: std::net::SocketAddr = http.parse().unwrap();

    // HTTP is served on threads of its own, one per core by default, named so that `ps -T`
    // and `top -H` tell them apart; the drain below is theirs. (A thread names itself once it
    // runs.) The same process, started again with the caches off.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        let tunables: Vec<_> = environ
            .split(|b| *b == 0)
            .filter(|v| v.starts_with(b"GLIBC_TUNABLES="))
            .map(String::from_utf8_lossy)
            .collect();
        assert_eq!(tunables, ["GLIBC_TUNABLES=glibc.malloc.tcache_count=0"]);
        // Under its own name still (`pgrep meridian`, `top`).
        let name = std::fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap();
        assert_eq!(name.trim(), "meridian");
        let cores = std::thread::available_parallelism().unwrap().get();
        let expected: Vec<String> = (0..cores).map(|i| format!("meridian-http-{i}")).collect();
        let http_threads = || http_threads(child.id());
        let mut names = http_threads();
        for _ in 0..100 {
            if names.len() >= cores {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            names = http_threads();
        }
        // Sorted as text: meridian-http-10 before meridian-http-2.
        let mut expected = expected;
        expected.sort();
        assert_eq!(names, expected);
    }

    let inflight = tokio::spawn(async move { get(addr, "demo.test", "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    // The shell's builtin kill: no procps needed on a minimal machine.
    let kill = format!("kill -TERM {}", child.id());
    assert!(Command::new("sh")
        .args(["-c", &kill])
        .status()
        .unwrap()
        .success());
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "drained",
        "the in-flight request finished after SIGTERM"
    );
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(t.elapsed() < Duration::from_secs(5));

    let lines: Vec<serde_json::Value> = tokio::task::block_in_place(|| {
        std::iter::from_fn(|| rx.blocking_recv())
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    });
    let access = lines
        .iter()
        .find(|l| l["target"] == "meridian::access")
        .unwrap_or_else(|| panic!("no access line in {lines:?}"));
    assert_eq!(access["status"], 200);
    assert_eq!(access["cache"], "miss");
    assert_eq!(access["uri"], "/slow");
    assert_eq!(access["protocol"], "http/1.1");
    assert_eq!(access["bytes"], 7);
    assert!(access["duration_ms"].as_f64().unwrap() >= 700.0);
}

#[test]
fn geo_build_reproduces_the_committed_database_in_content() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rebuilt.mmdb");
    let run = meridian()
        .args(["geo", "build", "geo/test-networks.csv"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("10 networks"));
    let committed = maxminddb::Reader::open_readfile("geo/test-city.mmdb").unwrap();
    let rebuilt = maxminddb::Reader::open_readfile(&out).unwrap();
    assert_eq!(
        committed.metadata().database_type,
        rebuilt.metadata().database_type
    );
    let all = |r: &maxminddb::Reader<Vec<u8>>| -> Vec<(String, serde_json::Value)> {
        r.networks(Default::default())
            .unwrap()
            .filter_map(|item| {
                let item = item.unwrap();
                let v: Option<serde_json::Value> = item.decode().unwrap();
                v.map(|v| (item.network().unwrap().to_string(), v))
            })
            .collect()
    };
    let (a, b) = (all(&committed), all(&rebuilt));
    assert!(a.len() >= 10, "{a:?}");
    assert_eq!(
        a, b,
        "geo/test-city.mmdb differs from what geo/test-networks.csv builds"
    );
    // And it answers the DESIGN.md test addresses as a MaxMind City reader would.
    let london: serde_json::Value = committed
        .lookup("81.2.69.142".parse().unwrap())
        .unwrap()
        .decode()
        .unwrap()
        .unwrap();
    assert_eq!(london["city"]["names"]["en"], "London");
    assert_eq!(london["country"]["iso_code"], "GB");
    assert_eq!(london["location"]["latitude"], 51.5142);
}

#[test]
fn geo_build_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "network,city,latitude,longitude,country\n10.0.0.0/8,X,91,0,GB\nnot-a-net,X,1,1,GB\n10.1.0.0/16,X,1,1,GBR\n").unwrap();
    let run = meridian()
        .args(["geo", "build"])
        .arg(&csv)
        .arg(dir.path().join("out.mmdb"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("bad.csv: line 2: 91,0 is not a place on Earth"),
        "{err}"
    );
    assert!(
        err.contains("bad.csv: line 3: \"not-a-net\" is not a CIDR network"),
        "{err}"
    );
    assert!(
        err.contains("bad.csv: line 4: \"GBR\" is not a two-letter country code"),
        "{err}"
    );
}

#[test]
fn route_explains_the_decision() {
    let out = meridian()
        .args([
            "route",
            "-c",
            "config/local/dns.toml",
            "81.2.69.142",
            "demo.meridian.test",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "location GeoIP network /31: 51.5142, -0.0931",
        "eu-west",
        "edge-b     healthy",
        "choice   region eu-west -> edge-b",
        "ecs      source /32 -> scope /31",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    let out = meridian()
        .args(["route", "-c", "config/local/dns.toml", "198.51.100.7"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("coverage zone 198.51.100.0/24 -> region us-west"));
    let out = meridian()
        .args([
            "route",
            "-c",
            "config/local/dns.toml",
            "1.2.3.4",
            "example.com",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("REFUSED"));
}

#[test]
fn check_reports_cluster_map_problems() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cluster.toml"),
        "[[region]]\nname = \"r\"\nlat = 95.0\nlon = 0.0\n[[edge]]\nid = \"e\"\nregion = \"nowhere\"\naddresses = [\"not-ip\"]\n[[coverage]]\ncidr = \"10.0.0.1/8\"\nregion = \"r\"\n[[zone]]\napex = \"t.test\"\nnames = [\"www\"]\ndefault_region = \"r\"\nanswers = 0\n[zone.soa]\nmname = \"ns.t.test\"\nrname = \"h.t.test\"\nserial = 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("dns.toml"),
        "id = \"d\"\nregion = \"r\"\nroles = [\"dns\"]\ncluster_map = \"cluster.toml\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\ngeoip = \"missing.mmdb\"\n",
    )
    .unwrap();
    check_lists(
        &dir.path().join("dns.toml"),
        &[
        "dns.toml: dns.geoip:",
        "cluster.toml: region[0].lat: 95 is not a latitude",
        "cluster.toml: edge[0].region: no region is named \"nowhere\"",
        "cluster.toml: edge[0].addresses[0]: \"not-ip\" is not an IP address",
        "cluster.toml: coverage[0].cidr: \"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)",
        "cluster.toml: zone[0].answers: must be at least 1",
        ],
    );
}

/// Asks `server` for demo.meridian.test A with ECS 81.2.69.142/32; returns the first address.
fn dig_london(server: std::net::SocketAddr) -> Option<std::net::IpAddr> {
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.add_query(Query::query(
        Name::from_ascii("demo.meridian.test.").unwrap(),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
        "81.2.69.142".parse().unwrap(),
        32,
        0,
    )));
    m.set_edns(e);
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.send_to(&m.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    let r = Message::from_vec(&buf[..n]).ok()?;
    r.answers.iter().find_map(|a| match &a.data {
        RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
        _ => None,
    })
}

#[test]
fn sighup_reloads_the_cluster_map_and_keeps_the_old_one_when_broken() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = std::fs::read_to_string("config/local/cluster.toml").unwrap();
    std::fs::write(dir.path().join("cluster.toml"), &cluster).unwrap();
    let geo = std::fs::canonicalize("geo/test-city.mmdb").unwrap();
    std::fs::write(
        dir.path().join("dns.toml"),
        format!(
            "id = \"hup\"\nregion = \"r\"\nroles = [\"dns\"]\ncluster_map = \"cluster.toml\"\n[log]\nformat = \"json\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\ngeoip = {:?}\n",
            geo.display().to_string()
        ),
    )
    .unwrap();
    let mut child = meridian()
        .args(["run", "-c"])
        .arg(dir.path().join("dns.toml"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stop = KillOnPanic(child.id());
    let mut lines = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let mut json = move || -> serde_json::Value {
        serde_json::from_str(&lines.next().expect("meridian exited")).unwrap()
    };
    // The GeoIP database is named before the start, with a warning: it is the 10-network test
    // database, on a node that is not the demo.
    let loaded = json();
    assert_eq!(loaded["message"], "GeoIP database loaded", "{loaded}");
    assert_eq!(loaded["networks"], 10);
    assert_eq!(loaded["kind"], "GeoIP2-City");
    assert!(loaded["path"].as_str().unwrap().ends_with("test-city.mmdb"));
    let warned = json();
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert!(warned["message"]
        .as_str()
        .unwrap()
        .contains("places almost no one"));
    let started = json();
    assert_eq!(started["message"], "node started", "{started}");
    let dns: std::net::SocketAddr = started["dns"].as_str().unwrap().parse().unwrap();
    // Its UDP threads go by their own names (`top -H`): one a core, on one listen address.
    #[cfg(target_os = "linux")]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 16));
        let mut expected: Vec<String> = (0..cores).map(|i| format!("meridian-dns-{i}")).collect();
        expected.sort();
        let named = || {
            let mut named: Vec<String> = thread_names(child.id())
                .into_iter()
                .filter(|n| n.starts_with("meridian-dns"))
                .collect();
            named.sort();
            named
        };
        // A thread names itself once it runs, which may be after the start is logged.
        for _ in 0..100 {
            if named().len() >= cores {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(named(), expected);
    }
    let hup = || {
        let cmd = format!("kill -HUP {}", child.id());
        assert!(Command::new("sh")
            .args(["-c", &cmd])
            .status()
            .unwrap()
            .success());
    };
    assert_eq!(dig_london(dns), Some("127.0.0.12".parse().unwrap()));

    let moved = format!("{cluster}\n[[coverage]]\ncidr = \"81.2.69.0/24\"\nregion = \"ap-east\"\n");
    std::fs::write(dir.path().join("cluster.toml"), moved).unwrap();
    hup();
    // A reload names the database again (loaded, warned), then says it reloaded.
    let reloaded = std::iter::repeat_with(&mut json)
        .take(3)
        .find(|v| v["message"] == "reloaded")
        .expect("reloaded");
    assert_eq!(reloaded["message"], "reloaded");
    assert_eq!(dig_london(dns), Some("127.0.0.13".parse().unwrap()));

    std::fs::write(
        dir.path().join("cluster.toml"),
        "[[region]]\nname = \"x\"\n",
    )
    .unwrap();
    hup();
    let rejected = json();
    assert_eq!(rejected["level"], "ERROR");
    assert!(
        rejected["error"].as_str().unwrap().contains("cluster.toml"),
        "{rejected}"
    );
    assert_eq!(
        dig_london(dns),
        Some("127.0.0.13".parse().unwrap()),
        "the old map keeps answering"
    );

    let term = format!("kill -TERM {}", child.id());
    Command::new("sh").args(["-c", &term]).status().unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn drain_asks_the_running_node_through_its_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = node_with_admin(dir.path(), "drainer", "listen = [\"127.0.0.1:0\"]", admin);
    let mut child = meridian().args(["run", "-c"]).arg(&node).spawn().unwrap();
    let healthz = || -> Option<u16> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").ok()?;
        let mut head = String::new();
        s.read_to_string(&mut head).ok()?;
        head.get(9..12)?.parse().ok()
    };
    let t = Instant::now();
    while healthz() != Some(200) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the node did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let drain = meridian()
        .args(["drain", "-c"])
        .arg(&node)
        .output()
        .unwrap();
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&drain.stdout).trim(),
        "{\"draining\":true}"
    );
    assert_eq!(healthz(), Some(503));
    let undo = meridian()
        .args(["drain", "--undo", "-c"])
        .arg(&node)
        .output()
        .unwrap();
    assert!(undo.status.success());
    assert_eq!(healthz(), Some(200));
    // A wrong token is refused and said so.
    std::fs::write(dir.path().join("admin.token"), "wrong-token-01234\n").unwrap();
    let refused = meridian()
        .args(["drain", "-c"])
        .arg(&node)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    assert_eq!(healthz(), Some(200));
    let _ = child.kill();
    let _ = child.wait();
}

/// `GET path` over HTTP/1.0 to `addr`: the whole answer, or `None` if nothing answers.
/// Writes an admin token, a one-site origin map and a node file `id` with `edge` as its
/// `[edge]` settings and its admin API on `admin`; returns the node file's path.
fn node_with_admin(
    dir: &std::path::Path,
    id: &str,
    edge: &str,
    admin: std::net::SocketAddr,
) -> std::path::PathBuf {
    std::fs::write(dir.join("admin.token"), "secret-token-0123\n").unwrap();
    std::fs::write(
        dir.join("origins.toml"),
        site("s", "s.test", "http://127.0.0.1:1", ""),
    )
    .unwrap();
    let node = dir.join("node.toml");
    std::fs::write(
        &node,
        format!("id = \"{id}\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[log]\nlevel = \"warn\"\n[edge]\n{edge}\n[admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n"),
    )
    .unwrap();
    node
}

fn get_1_0(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// A burst of keep-alive connections, all in the backlog before any thread wakes, is spread
/// evenly over the HTTP threads (the thread that woke first used to take them all, and keep
/// them for their lives); `/metrics` shows each thread's count.
#[test]
fn a_burst_of_connections_is_spread_evenly_over_the_http_threads() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (http, admin) = (free(), free());
    let edge = format!("listen = [\"{http}\"]\nthreads = 2");
    let node = node_with_admin(dir.path(), "spread", &edge, admin);
    let mut child = meridian().args(["run", "-c"]).arg(&node).spawn().unwrap();
    let _kill = Kill(child.id());
    let t = Instant::now();
    let up = || get_1_0(admin, "/healthz").is_some_and(|a| a.get(9..12) == Some("200"));
    while !up() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the node did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Connected one after another without waiting: the kernel completes each handshake, and
    // they wait in the backlog together.
    const N: usize = 40;
    let mut conns: Vec<std::net::TcpStream> = (0..N)
        .map(|_| std::net::TcpStream::connect(http).unwrap())
        .collect();
    // Each is served (a host of no site is refused at once) and stays open.
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
            .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed before its answer");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 4"),
            "{}",
            String::from_utf8_lossy(&head)
        );
    }
    let metrics = get_1_0(admin, "/metrics").unwrap();
    let mut per_thread: Vec<(String, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("meridian_http_thread_connections{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            let thread = labels.split("thread=\"").nth(1)?.split('"').next()?;
            Some((thread.to_string(), value.parse().ok()?))
        })
        .collect();
    per_thread.sort_by(|a, b| a.0.cmp(&b.0));
    let threads: Vec<&str> = per_thread.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(threads, ["0", "1"], "{metrics}");
    let (a, b) = (per_thread[0].1, per_thread[1].1);
    assert_eq!(a + b, N as f64, "{metrics}");
    // Two threads accepting at the same moment may each count one to the same thread.
    assert!((a - b).abs() <= 2.0, "{a} and {b} connections");
    drop(conns);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn text_logs_have_no_colour_codes_or_per_query_lines_when_not_on_a_terminal() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let cluster = std::fs::read_to_string("config/local/cluster.toml").unwrap();
    std::fs::write(dir.path().join("cluster.toml"), &cluster).unwrap();
    std::fs::write(
        dir.path().join("dns.toml"),
        "id = \"quiet\"\nregion = \"r\"\nroles = [\"dns\"]\ncluster_map = \"cluster.toml\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let mut child = meridian()
        .args(["run", "-c"])
        .arg(dir.path().join("dns.toml"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let _kill = Kill(child.id());
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while stderr.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    let mut first = String::from_utf8(first).unwrap();
    if first.contains("no GeoIP database") {
        let mut next = Vec::new();
        while stderr.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            next.push(byte[0]);
        }
        first = String::from_utf8(next).unwrap();
    }
    assert!(first.contains("node started"), "{first}");
    let dns: std::net::SocketAddr = first
        .split("dns=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no dns= in {first}"))
        .parse()
        .unwrap();
    // Three queries over TCP, each of which hickory's server used to log twice at INFO.
    for _ in 0..3 {
        let mut m = hickory_proto::op::Message::query();
        m.add_query(hickory_proto::op::Query::query(
            "demo.meridian.test.".parse().unwrap(),
            hickory_proto::rr::RecordType::A,
        ));
        let q = m.to_vec().unwrap();
        let mut s = std::net::TcpStream::connect(dns).unwrap();
        s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
        s.write_all(&q).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let term = format!("kill -TERM {}", child.id());
    Command::new("sh").args(["-c", &term]).status().unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    child.wait().unwrap();
    let all = format!("{first}\n{rest}");
    assert!(
        !all.contains('\x1b'),
        "colour codes in a log that is not a terminal: {all:?}"
    );
    assert!(
        !all.contains("request:"),
        "hickory's per-query lines: {all}"
    );
    assert!(
        !all.contains("response:"),
        "hickory's per-query lines: {all}"
    );
}

#[test]
fn a_sigterm_the_moment_the_node_has_started_is_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        site("s", "demo.test", "http://127.0.0.1:9", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "id = \"cli-term\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[log]\nformat = \"json\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    // Several times: the window between the log line and a late handler is short.
    for _ in 0..5 {
        let mut child = spawn_run(&dir.path().join("node.toml"));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        assert!(first.contains("node started"), "{first}");
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "SIGTERM right after start must be a clean stop, not a kill: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_moves_every_port_by_the_offset_and_names_a_busy_one() {
    // A port of the demo taken: the error names it and the way out.
    let busy = std::net::TcpListener::bind("127.0.0.1:29000").unwrap();
    let out = meridian()
        .args(["demo", "--port-offset", "21000"])
        .output()
        .unwrap();
    drop(busy);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("127.0.0.1:29000") && text.contains("--port-offset"),
        "{text}"
    );

    // Moved by 22000: the edges listen on 30080, the sample origin on 30000.
    let mut child = meridian()
        .args(["demo", "--port-offset", "22000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stop = KillOnPanic(child.id());
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let lines: Vec<String> = tokio::task::block_in_place(|| {
        stdout
            .by_ref()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("Ctrl-C stops the demo"))
            .collect()
    });
    // Keep reading: the demo prints as it stops.
    std::thread::spawn(move || stdout.for_each(drop));
    let all = lines.join("\n");
    assert!(all.contains("http://127.0.0.1:30000"), "{all}");
    assert!(all.contains("edge-b: http://127.0.0.12:30080"), "{all}");
    assert!(all.contains("-p 27353"), "the DNS port moved too: {all}");
    let r = get(
        "127.0.0.12:30080".parse().unwrap(),
        "demo.meridian.test",
        "/",
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "the edge reaches the moved origin");
    // The HTTPS and HTTP/3 lines name the moved TLS port, and HTTP/3 answers there.
    assert!(
        all.contains(
            "--resolve demo.meridian.test:30443:127.0.0.12 https://demo.meridian.test:30443/"
        ),
        "{all}"
    );
    let h3_line = all.lines().find(|l| l.contains("# HTTP/3")).unwrap_or("");
    assert!(
        h3_line.contains("--example h3get") || h3_line.contains("--http3-only"),
        "{all}"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tls = meridian::h3client::tls_config(Some(&root.join("config/local/tls/ca.pem"))).unwrap();
    let h3 = meridian::h3client::H3Client::connect(
        "127.0.0.12:30443".parse().unwrap(),
        "demo.meridian.test",
        tls,
    )
    .await
    .unwrap();
    let (resp, _) = h3.get("https://demo.meridian.test:30443/").await.unwrap();
    assert_eq!(resp.status(), 200);
    h3.close().await;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_second_ctrl_c_stops_the_demo_at_once() {
    let mut child = meridian()
        .args(["demo", "--port-offset", "13000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let sigint = |child: &std::process::Child| {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
    };
    let mut wait_for = |what: &str| {
        for line in stdout.by_ref().map_while(Result::ok) {
            if line.contains(what) {
                return;
            }
        }
        panic!("the demo never printed {what:?}");
    };
    wait_for("Ctrl-C stops the demo");
    sigint(&child);
    // The edges drain for 2 s; the second Ctrl-C does not wait for them.
    wait_for("stopping");
    let t = Instant::now();
    sigint(&child);
    wait_for("stopped at once");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn the_demo_survives_its_output_being_closed() {
    let mut child = meridian()
        .args(["demo", "--port-offset", "14000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        // Read until the instructions are out, then close the pipe (as `| head` does).
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines().map_while(Result::ok) {
            if line.contains("Ctrl-C stops the demo") {
                break;
            }
        }
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "a closed stdout is no crash: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_members_and_the_nodes_numbers() {
    let origin = Origin::start().await;
    origin.always("/t", Reply::ok("top").header("cache-control", "max-age=60"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        site("s", "demo.test", &format!("http://{}", origin.addr), ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("admin.token"),
        "top-test-token-0123456789\n",
    )
    .unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        format!(
            "id = \"top-edge\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[log]\nformat = \"json\"\n\
[edge]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n\
[gossip]\nlisten = \"{gossip}\"\ninsecure = true\n"
        ),
    )
    .unwrap();
    let mut node = spawn_run(&dir.path().join("node.toml"));
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    let started: serde_json::Value = loop {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "node started" {
            break v;
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let http: std::net::SocketAddr = started["http"].as_str().unwrap().parse().unwrap();
    for _ in 0..4 {
        assert_eq!(get(http, "demo.test", "/t", &[]).await.status, 200);
    }

    let out = tokio::task::block_in_place(|| {
        meridian()
            .args(["top", "--once", "-c"])
            .arg(dir.path().join("node.toml"))
            .output()
            .unwrap()
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("top-edge"), "the member is listed: {text}");
    assert!(text.contains("alive"), "{text}");
    assert!(text.contains("requests        4"), "{text}");
    assert!(text.contains("hit ratio 75%"), "three hits of four: {text}");

    // Refreshing: rates over each refresh, until Ctrl-C.
    let mut top = meridian()
        .args(["top", "--interval", "0.2", "-c"])
        .arg(dir.path().join("node.toml"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut screen = BufReader::new(top.stdout.take().unwrap()).lines();
    let found = tokio::task::block_in_place(|| {
        screen
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("rates over the last refresh"))
    });
    assert!(found);
    std::thread::spawn(move || screen.for_each(drop));
    // SAFETY: signalling our own children.
    unsafe {
        libc::kill(top.id() as i32, libc::SIGINT);
        libc::kill(node.id() as i32, libc::SIGTERM);
    }
    assert!(tokio::task::block_in_place(|| top.wait())
        .unwrap()
        .success());
    assert!(tokio::task::block_in_place(|| node.wait())
        .unwrap()
        .success());
}

/// An API server stand-in over HTTPS (the Kubernetes API cannot run here): node objects at
/// `/api/v1/nodes/NAME` for the bearer token `sa-token`, signed by a CA of its own; the service
/// account directory a pod would have.
async fn kube_api() -> (Origin, tempfile::TempDir) {
    let (ca_pem, server) = server_signed_by_a_new_ca("127.0.0.1");
    let api = Origin::start_tls(std::sync::Arc::new(server)).await;
    let node = |annotations: serde_json::Value, addresses: serde_json::Value| {
        move |seen: &Seen, _: usize| {
            if seen
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                != Some("Bearer sa-token")
            {
                return Reply::ok("{\"kind\":\"Status\",\"code\":401}").status(401);
            }
            Reply::ok(
                &serde_json::json!({
                    "kind": "Node",
                    "metadata": {"name": "n", "annotations": annotations},
                    "status": {"addresses": addresses},
                })
                .to_string(),
            )
            .header("content-type", "application/json")
        }
    };
    let internal = serde_json::json!({"type": "InternalIP", "address": "10.128.0.7"});
    let external = serde_json::json!({"type": "ExternalIP", "address": "198.51.100.7"});
    api.script(
        "/api/v1/nodes/annotated",
        node(
            serde_json::json!({"meridian.dev/public-addresses": "203.0.113.7,2001:db8::7"}),
            serde_json::json!([internal, external]),
        ),
    );
    api.script(
        "/api/v1/nodes/external",
        node(
            serde_json::json!({}),
            serde_json::json!([internal, external]),
        ),
    );
    api.script(
        "/api/v1/nodes/private-only",
        node(serde_json::json!({}), serde_json::json!([internal])),
    );
    api.always("/api/v1/nodes/forbidden", Reply::ok("{}").status(403));
    let sa = tempfile::tempdir().unwrap();
    std::fs::write(sa.path().join("token"), "sa-token\n").unwrap();
    std::fs::write(sa.path().join("ca.crt"), ca_pem).unwrap();
    (api, sa)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_address_takes_the_nodes_annotation_else_its_external_ip_never_its_private_one() {
    let (api, sa) = kube_api().await;
    let run = |node: &str, token: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let sa_dir = match token {
            Some(t) => {
                std::fs::copy(sa.path().join("ca.crt"), dir.path().join("ca.crt")).unwrap();
                std::fs::write(dir.path().join("token"), t).unwrap();
                dir.path().to_path_buf()
            }
            None => sa.path().to_path_buf(),
        };
        let out = tokio::task::block_in_place(|| {
            meridian()
                .args(["kube-address", "--node", node, "--api"])
                .arg(format!("https://127.0.0.1:{}", api.addr.port()))
                .arg("--service-account")
                .arg(&sa_dir)
                .output()
                .unwrap()
        });
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    let (code, out, _) = run("annotated", None);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), r#"["203.0.113.7", "2001:db8::7"]"#)
    );
    let (code, out, _) = run("external", None);
    assert_eq!((code, out.as_str()), (Some(0), r#"["198.51.100.7"]"#));
    // Only a private address: no answer that DNS would hand to users, and what to do instead.
    let (code, out, err) = run("private-only", None);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert!(
        err.contains("kubectl annotate node private-only meridian.dev/public-addresses="),
        "{err}"
    );
    let (code, _, err) = run("forbidden", None);
    assert_eq!(code, Some(1));
    assert!(err.contains("rbac.yaml"), "{err}");
    let (code, _, err) = run("annotated", Some("wrong-token"));
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
    // The answer is a valid value for edge.public_addresses.
    let (_, out, _) = run("annotated", None);
    let v: toml::Value = toml::from_str(&format!("public_addresses = {out}")).unwrap();
    assert_eq!(v["public_addresses"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_makes_one_origin_fetch_for_300_requests_over_its_three_edges() {
    // config/local shields (shield_region = "eu-west"): edge-a and edge-c ask edge-b, which
    // alone asks the origin, and every edge collapses its own requests.
    let mut child = meridian()
        // Every port below the ephemeral range (32768 up), where other tests bind at random.
        .args(["demo", "--port-offset", "12000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stop = KillOnPanic(child.id());
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::task::block_in_place(|| {
        stdout
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("Ctrl-C stops the demo"))
    })
    .expect("the demo started");
    std::thread::spawn(move || stdout.for_each(drop));
    let edges: Vec<std::net::SocketAddr> = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
        .iter()
        .map(|ip| format!("{ip}:20080").parse().unwrap())
        .collect();
    let admin: std::net::SocketAddr = "127.0.0.11:21090".parse().unwrap();
    // Until each edge hears the three with their peer addresses: an edge that has not heard of
    // the key's owner yet fetches from the origin itself (this test once saw 2 fetches when
    // only edge-a's view was awaited).
    for ip in ["127.0.0.11", "127.0.0.12", "127.0.0.13"] {
        let each: std::net::SocketAddr = format!("{ip}:21090").parse().unwrap();
        meridian::bench::wait_for_peers(each, 3, Duration::from_secs(15))
            .await
            .unwrap();
    }
    let fetches = || async move {
        let text = get(admin, "admin", "/metrics", &[]).await.text();
        text.lines()
            .filter(|l| l.starts_with("meridian_origin_fetches_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = fetches().await;
    let all: Vec<_> = (0..300)
        .map(|i| {
            let edge = edges[i % 3];
            tokio::spawn(async move { get(edge, "demo.meridian.test", "/products/2", &[]).await })
        })
        .collect();
    for r in all {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.cache_status());
    }
    assert_eq!(
        fetches().await - before,
        1.0,
        "origin fetches for 300 requests"
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn check_warns_when_a_shielding_edge_has_no_listener_for_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local");
    std::fs::copy(local.join("gossip.key"), dir.path().join("gossip.key")).unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        site(
            "demo",
            "demo.meridian.test",
            "http://127.0.0.1:1",
            &format!(
                "shield = \"region\"\ntls_cert = {:?}\ntls_key = {:?}",
                local.join("tls/demo.pem").display().to_string(),
                local.join("tls/demo.key").display().to_string()
            ),
        ),
    )
    .unwrap();
    for (listen, warned) in [("[]", true), ("[\"127.0.0.1:0\"]", false)] {
        let stderr = check_passes(
            dir.path(),
            &format!("id = \"e\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[edge]\nlisten = {listen}\npublic_addresses = [\"192.0.2.1\"]\n[edge.tls]\nlisten = [\"127.0.0.1:0\"]\ndefault_site = \"demo\"\n[gossip]\nlisten = \"127.0.0.1:7946\"\nkey_file = \"gossip.key\"\n"),
        );
        assert_eq!(
            stderr.contains("edge.listen: site \"demo\" shields"),
            warned,
            "{listen}: {stderr}"
        );
    }
}

/// `run` adds the allocator setting to a GLIBC_TUNABLES of its environment that is not UTF-8,
/// and the process it starts again sees it there and goes on (it does not start itself again
/// and again, which it did while it read the variable as UTF-8 only).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn run_restarts_once_with_a_glibc_tunables_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        site("s", "s.test", "http://127.0.0.1:1", ""),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "id = \"e\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"glibc.malloc.mxfast=64:caf\xe9");
    let mut child = meridian()
        .args(["run", "-c"])
        .arg(dir.path().join("node.toml"))
        .env("GLIBC_TUNABLES", odd)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stop = KillOnPanic(child.id());
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("node started")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no start within 20 s: {seen:?}"),
        }
    }
    // And runs with the caches off: HTTP threads, one per core, by default.
    let cores = std::thread::available_parallelism().unwrap().get();
    let http_threads = || http_threads(child.id()).len();
    for _ in 0..100 {
        if http_threads() >= cores {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http_threads(), cores);
    let _ = child.kill();
    let _ = child.wait();
}
