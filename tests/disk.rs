//! The disk tier (`edge.cache_disk`), tried on the real binary: what it had is served as hits
//! after a clean stop and after `kill -9`, with ages that kept growing; purges hold for entries
//! on disk across restarts; a corrupted entry is dropped and counted, never served; a disk tier
//! that cannot be written leaves the edge serving from memory.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const TOKEN: &str = "disk-test-token-0123456789";

/// A running `meridian run` whose files (and disk tier) live in `dir`.
struct EdgeProcess {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
    /// Every log line so far (JSON).
    log: Arc<Mutex<Vec<String>>>,
}

fn write_config(dir: &Path, origin: SocketAddr) {
    std::fs::write(
        dir.join("origins.toml"),
        site("demo", "demo.test", &format!("http://{origin}"), ""),
    )
    .unwrap();
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        dir.join("node.toml"),
        "id = \"disk\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[log]\nformat = \"json\"\naccess_log = true\n\
[edge]\nlisten = [\"127.0.0.1:0\"]\ncache_memory = \"32MiB\"\ncache_disk = { path = \"disk\", size = \"64MiB\" }\n\
[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
    )
    .unwrap();
}

/// `write_config`, with `edits` (pairs of text and replacement) made to the node file.
fn write_config_with(dir: &Path, origin: SocketAddr, edits: &[(&str, &str)]) {
    write_config(dir, origin);
    let mut text = std::fs::read_to_string(dir.join("node.toml")).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?} is not in the node file");
        text = text.replace(from, to);
    }
    std::fs::write(dir.join("node.toml"), text).unwrap();
}

/// Memory smaller than the objects: they go to disk.
const SMALL_MEMORY: &str = "cache_memory = \"32MiB\"";

impl EdgeProcess {
    fn start(dir: &Path) -> EdgeProcess {
        Self::start_limited(dir, None)
    }

    /// Starts with a file size limit (RLIMIT_FSIZE), if given.
    fn start_limited(dir: &Path, fsize: Option<u64>) -> EdgeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_meridian"));
        cmd.args(["run", "-c"])
            .arg(dir.join("node.toml"))
            .stderr(Stdio::piped());
        if let Some(limit) = fsize {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap())
            .lines()
            .map_while(Result::ok);
        let log = Arc::new(Mutex::new(Vec::new()));
        let started = loop {
            let line = lines.next().expect("the edge exited before it started");
            log.lock().unwrap().push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if v["message"] == "node started" {
                break v;
            }
        };
        let sink = log.clone();
        std::thread::spawn(move || lines.for_each(|l| sink.lock().unwrap().push(l)));
        let addr = |k: &str| -> SocketAddr {
            started[k]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        EdgeProcess {
            http: addr("http"),
            admin: addr("admin"),
            child,
            log,
        }
    }

    async fn get(&self, path: &str) -> Got {
        get(self.http, "demo.test", path, &[]).await
    }

    /// GET right after a fill: a request that comes while the fill is still being stored joins
    /// it (`collapsed`, no new origin fetch); ask again (bounded) until one does not.
    async fn get_after_fill(&self, path: &str) -> Got {
        for _ in 0..100 {
            let r = self.get(path).await;
            if !r.cache_status().contains("collapsed") {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{path}: still filling after 2 s");
    }

    async fn metric(&self, family: &str) -> f64 {
        let text = get(self.admin, "admin", "/metrics", &[]).await.text();
        text.lines()
            .filter(|l| l.starts_with(family) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    async fn purge(&self, body: &str) -> Got {
        let req = http::Request::post(format!("http://{}/purge", self.admin))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        send_request(req).await
    }

    /// The access log's `tier` of the last request for `path`.
    fn tier_of(&self, path: &str) -> String {
        for _ in 0..100 {
            let found = self.log.lock().unwrap().iter().rev().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["uri"] == path).then(|| v["tier"].as_str().unwrap_or("").to_string())
            });
            if let Some(t) = found {
                return t;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no access log line for {path}");
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        let log = self.log.lock().unwrap();
        let tail = log[log.len().saturating_sub(20)..].join("\n");
        assert!(status.success(), "clean stop: {status:?}\n{tail}");
    }

    /// SIGKILL: no chance to flush anything.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

async fn scripted_origin() -> Origin {
    let o = Origin::start().await;
    o.always(
        "/a",
        Reply::ok("alpha").header("cache-control", "max-age=600"),
    );
    o.always(
        "/big",
        Reply::ok("")
            .body_bytes(big(3 << 20))
            .header("cache-control", "max-age=600"),
    );
    o.always(
        "/short",
        Reply::ok("short").header("cache-control", "max-age=1"),
    );
    o
}

/// An origin with one object, `/huge`, of `size` bytes, fresh for ten minutes.
async fn huge_origin(size: usize) -> (Origin, Vec<u8>) {
    let o = Origin::start().await;
    let body = big(size);
    o.always(
        "/huge",
        Reply::ok("")
            .body_bytes(body.clone())
            .header("cache-control", "max-age=600"),
    );
    (o, body)
}

/// Flips a bit of the byte `offset` bytes past the first place `needle` lies in the disk
/// tier's files under `dir`; whether it was found.
fn flip_on_disk(dir: &Path, needle: &[u8], offset: usize) -> bool {
    for f in std::fs::read_dir(dir.join("disk/store")).unwrap() {
        let path: PathBuf = f.unwrap().path();
        let mut data = std::fs::read(&path).unwrap();
        if let Some(at) = data.windows(needle.len()).position(|w| w == needle) {
            data[at + offset] ^= 0x01;
            std::fs::write(&path, &data).unwrap();
            return true;
        }
    }
    false
}

/// Waits until the disk tier has written what was queued (the flusher runs in the background).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn what_the_edge_had_is_served_from_disk_after_a_clean_stop_and_after_kill_9() {
    let o = scripted_origin().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);

    let edge = EdgeProcess::start(dir.path());
    for path in ["/a", "/big", "/short"] {
        assert_eq!(edge.get(path).await.status, 200);
        assert!(
            edge.get_after_fill(path).await.is_hit(),
            "{path}: a memory hit"
        );
    }
    assert_eq!(edge.tier_of("/a"), "memory");
    let age_before: u64 = edge.get("/a").await.header("age").parse().unwrap();
    edge.stop();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let edge = EdgeProcess::start(dir.path());
    let a = edge.get("/a").await;
    assert!(a.is_hit(), "after a clean stop: {}", a.cache_status());
    assert_eq!(a.text(), "alpha");
    assert_eq!(edge.tier_of("/a"), "disk");
    let age: u64 = a.header("age").parse().unwrap();
    assert!(
        age > age_before,
        "the age counts the time the edge was down: {age} after {age_before}"
    );
    let b = edge.get("/big").await;
    assert!(b.is_hit(), "a chunked body: {}", b.cache_status());
    assert!(b.body[..] == big(3 << 20)[..], "and it is whole");
    let s = edge.get("/short").await;
    assert!(
        !s.is_hit(),
        "expired while the edge was down: stale, not fresh: {}",
        s.cache_status()
    );
    assert_eq!(
        (o.count("/a"), o.count("/big"), o.count("/short")),
        (1, 1, 2)
    );
    assert!(
        edge.metric("meridian_cache_hits_total{node=\"disk\",tier=\"disk\"}")
            .await
            >= 2.0
    );
    assert!(edge.metric("meridian_cache_disk_recovery_seconds").await > 0.0);

    // kill -9: what was written before it is still there.
    o.always(
        "/k",
        Reply::ok("kept").header("cache-control", "max-age=600"),
    );
    assert_eq!(edge.get("/k").await.status, 200);
    settle().await;
    edge.kill();
    let edge = EdgeProcess::start(dir.path());
    let k = edge.get("/k").await;
    assert!(k.is_hit(), "after kill -9: {}", k.cache_status());
    assert_eq!(k.text(), "kept");
    assert!(edge.get("/a").await.is_hit());
    assert_eq!(o.count("/k"), 1);
    edge.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_tier_reports_the_bytes_it_holds_also_after_a_restart() {
    let o = scripted_origin().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    const BLOCK: f64 = (4 << 20) as f64;

    let edge = EdgeProcess::start(dir.path());
    assert_eq!(edge.metric("meridian_cache_disk_used_bytes").await, 0.0);
    assert_eq!(edge.get("/big").await.status, 200);
    assert!(edge.get_after_fill("/big").await.is_hit());
    settle().await;
    let used = edge.metric("meridian_cache_disk_used_bytes").await;
    assert!(
        (BLOCK..=64.0 * 1048576.0).contains(&used),
        "3 MiB stored: at least one 4 MiB block in use, at most the tier: {used}"
    );
    edge.stop();

    // The level is read back from the disk at start, before any request.
    let edge = EdgeProcess::start(dir.path());
    let after = edge.metric("meridian_cache_disk_used_bytes").await;
    assert!(
        after >= BLOCK && after <= used,
        "after a restart the blocks holding /big still count: {after} (before: {used})"
    );
    assert!(edge.get("/big").await.is_hit());
    edge.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn purges_and_invalidations_hold_for_entries_on_disk_across_restarts() {
    let o = Origin::start().await;
    for p in ["/p/1", "/p/2", "/keep", "/u", "/inv"] {
        o.always(p, Reply::ok(p).header("cache-control", "max-age=600"));
    }
    o.always(
        "/t",
        Reply::ok("/t")
            .header("cache-control", "max-age=600")
            .header("surrogate-key", "tagx"),
    );
    o.script("/inv", |seen, _| {
        if seen.method == "POST" {
            Reply::ok("posted")
        } else {
            Reply::ok("/inv").header("cache-control", "max-age=600")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    let paths = ["/p/1", "/p/2", "/keep", "/u", "/t", "/inv"];

    let edge = EdgeProcess::start(dir.path());
    for p in paths {
        assert_eq!(edge.get(p).await.status, 200);
    }
    // An unsafe method invalidates its target (RFC 9111 §4.4), on disk too.
    let posted = request_body("POST", edge.http, "demo.test", "/inv", "x").await;
    assert_eq!(posted.text(), "posted");
    edge.stop();

    // The objects are on disk only now; purge them there, and stop hard right after.
    let edge = EdgeProcess::start(dir.path());
    for body in [
        r#"{"prefix": "http://demo.test/p/"}"#,
        r#"{"tag": "tagx"}"#,
        r#"{"url": "http://demo.test/u"}"#,
    ] {
        assert_eq!(edge.purge(body).await.status, 200, "{body}");
    }
    edge.kill();

    let edge = EdgeProcess::start(dir.path());
    for p in paths {
        let r = edge.get(p).await;
        assert_eq!(r.status, 200);
        if p == "/keep" {
            assert!(r.is_hit(), "{p} was not purged: {}", r.cache_status());
        } else {
            assert!(!r.is_hit(), "{p} stays purged: {}", r.cache_status());
        }
    }
    for p in ["/p/1", "/p/2", "/u", "/t", "/inv"] {
        // /inv: its GET, the POST, and the GET after the restart.
        let want = if p == "/inv" { 3 } else { 2 };
        assert_eq!(o.count(p), want, "{p} fetched again");
        assert!(
            edge.get(p).await.is_hit(),
            "{p} stored again after the purge"
        );
    }
    // /p/1, /p/2 and /t by their bans (/u's removal may have reached the disk before the kill).
    assert!(edge.metric("meridian_cache_disk_purged_total").await >= 3.0);
    edge.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_disk_entry_is_dropped_and_counted_never_served() {
    let o = Origin::start().await;
    let body = "CORRUPT-ME-".repeat(2000);
    o.always(
        "/c",
        Reply::ok(&body).header("cache-control", "max-age=600"),
    );
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    let edge = EdgeProcess::start(dir.path());
    assert_eq!(edge.get("/c").await.status, 200);
    edge.stop();

    // Flip one byte of the stored body where it lies in the store's files.
    assert!(
        flip_on_disk(dir.path(), b"CORRUPT-ME-", 5000),
        "the body was found on disk"
    );

    let edge = EdgeProcess::start(dir.path());
    let r = edge.get("/c").await;
    assert!(!r.is_hit(), "never served: {}", r.cache_status());
    assert_eq!(r.text(), body, "the client gets the origin's intact body");
    assert_eq!(o.count("/c"), 2);
    assert!(edge.metric("meridian_cache_disk_dropped_total").await >= 1.0);
    assert!(edge.get_after_fill("/c").await.is_hit());
    edge.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disk_tier_that_cannot_be_written_leaves_the_edge_serving_from_memory() {
    let o = scripted_origin().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    // A 1 MiB file size limit: the store cannot reserve its 64 MiB.
    let edge = EdgeProcess::start_limited(dir.path(), Some(1 << 20));
    assert!(edge.logged("the disk tier could not open"));
    assert_eq!(edge.get("/a").await.text(), "alpha");
    assert!(
        edge.get_after_fill("/a").await.is_hit(),
        "served from memory"
    );
    let b = edge.get("/big").await;
    assert_eq!(b.body.len(), 3 << 20);
    assert_eq!(
        edge.metric("meridian_cache_disk_errors_total{node=\"disk\",op=\"open\"}")
            .await,
        1.0
    );
    edge.stop();
}

/// A disk that stops taking writes while the edge runs (here a file size limit of 1 MiB on
/// store files made, full size, by an earlier start: every write past their first MiB fails
/// with EFBIG, as a full or failing disk fails them): each client still gets the whole body,
/// later ones hits from memory; the failed writes are counted; and after a restart without the
/// limit nothing torn is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_that_fails_writes_after_start_leaves_whole_bodies_served_and_counts_them() {
    let o = scripted_origin().await;
    let body = |i: usize| -> Vec<u8> { big(300 << 10 | i) };
    for i in 0..16 {
        o.always(
            &format!("/w{i}"),
            Reply::ok("")
                .body_bytes(body(i))
                .header("cache-control", "max-age=600"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    let edge = EdgeProcess::start(dir.path());
    assert_eq!(edge.get("/a").await.status, 200);
    edge.stop();

    let edge = EdgeProcess::start_limited(dir.path(), Some(1 << 20));
    assert!(!edge.logged("the disk tier could not open"));
    let mut paths: Vec<String> = (0..16).map(|i| format!("/w{i}")).collect();
    paths.push("/big".into());
    let want = |p: &str| -> Vec<u8> {
        match p {
            "/big" => big(3 << 20),
            _ => body(p[2..].parse().unwrap()),
        }
    };
    for p in &paths {
        let r = edge.get(p).await;
        assert_eq!(r.status, 200);
        assert!(r.body[..] == want(p)[..], "{p}: whole from the origin");
    }
    settle().await;
    for p in &paths {
        let r = edge.get_after_fill(p).await;
        assert!(r.is_hit(), "{p}: {}", r.cache_status());
        assert!(r.body[..] == want(p)[..], "{p}: a whole hit");
    }
    let failed = edge
        .metric("meridian_cache_disk_errors_total{node=\"disk\",op=\"write\"}")
        .await;
    assert!(failed >= 2.0, "failed writes counted, heads too: {failed}");
    edge.stop();

    let edge = EdgeProcess::start(dir.path());
    for p in &paths {
        let r = edge.get(p).await;
        assert_eq!(r.status, 200);
        assert!(
            r.body[..] == want(p)[..],
            "{p}: whole after the restart ({})",
            r.cache_status()
        );
    }
    edge.stop();
}

/// A newer version of an object the disk already holds, whose write the disk fails (as above:
/// past the store files' first MiB): foyer only logs the failed write and keeps the older
/// version indexed, and the edge must not serve that older version again, here after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn an_older_version_never_comes_back_from_disk_when_the_newer_one_could_not_be_written() {
    let o = Origin::start().await;
    // 1 MiB: kept inline in its head, which no write past the first MiB of a file can hold.
    let version = |v: u8| {
        Reply::ok("")
            .body_bytes(vec![v; 1 << 20])
            .header("cache-control", "max-age=600")
    };
    o.always("/v", version(1));
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    let edge = EdgeProcess::start(dir.path());
    assert_eq!(edge.get("/v").await.body[..], vec![1; 1 << 20][..]);
    settle().await;
    edge.stop();

    let edge = EdgeProcess::start_limited(dir.path(), Some(1 << 20));
    assert!(!edge.logged("the disk tier could not open"));
    let r = edge.get("/v").await;
    assert!(r.is_hit(), "version 1 from disk: {}", r.cache_status());
    assert_eq!(r.body[..], vec![1; 1 << 20][..]);
    o.always("/v", version(2));
    let r = get(
        edge.http,
        "demo.test",
        "/v",
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(r.body[..], vec![2; 1 << 20][..], "{}", r.cache_status());
    settle().await;
    let failed = edge
        .metric("meridian_cache_disk_errors_total{node=\"disk\",op=\"write\"}")
        .await;
    assert!(
        failed >= 1.0,
        "the failed write of version 2 is counted: {failed}"
    );
    edge.stop();

    let edge = EdgeProcess::start(dir.path());
    let r = edge.get("/v").await;
    assert_eq!(
        r.body[..],
        vec![2; 1 << 20][..],
        "version 1 came back from disk: {}",
        r.cache_status()
    );
    edge.stop();
}

#[test]
fn check_validates_the_disk_settings() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "127.0.0.1:9".parse().unwrap());
    let check = |disk: &str| {
        let text = std::fs::read_to_string(dir.path().join("node.toml")).unwrap();
        let start = text.find("cache_disk").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        std::fs::write(
            dir.path().join("node.toml"),
            format!("{}{disk}{}", &text[..start], &text[end..]),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
            .args(["check", "-c"])
            .arg(dir.path().join("node.toml"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = check("cache_disk = { path = \"disk\", size = \"64MiB\" }");
    assert!(ok, "{text}");
    let (ok, text) = check("cache_disk = { path = \"disk\", size = \"1MiB\" }");
    assert!(
        !ok && text.contains("edge.cache_disk.size") && text.contains("at least 64MiB"),
        "{text}"
    );
    let (ok, text) = check("cache_disk = { path = \"disk\", size = \"1000000TiB\" }");
    assert!(!ok && text.contains("more than the filesystem"), "{text}");
    std::fs::write(dir.path().join("plain"), "x").unwrap();
    let (ok, text) = check("cache_disk = { path = \"plain/disk\", size = \"64MiB\" }");
    assert!(
        !ok && text.contains("edge.cache_disk.path") && text.contains("not a directory"),
        "{text}"
    );
    let (ok, text) = check("cache_disk = { path = \"disk\" }");
    assert!(!ok && text.contains("size"), "{text}");
    let (ok, text) =
        check("cache_disk = { path = \"disk\", size = \"64MiB\", read_memory = \"16MiB\" }");
    assert!(ok, "{text}");
    let (ok, text) =
        check("cache_disk = { path = \"disk\", size = \"64MiB\", read_memory = \"1MiB\" }");
    assert!(
        !ok && text.contains("edge.cache_disk.read_memory") && text.contains("at least 2MiB"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_range_of_a_chunked_object_on_disk_reads_only_its_chunks() {
    let o = scripted_origin().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    let edge = EdgeProcess::start(dir.path());
    assert_eq!(edge.get("/big").await.status, 200);
    edge.stop();

    let edge = EdgeProcess::start(dir.path());
    let before = edge.metric("meridian_cache_disk_read_bytes_total").await;
    let first = 2 << 20;
    let r = get(
        edge.http,
        "demo.test",
        "/big",
        &[("range", &format!("bytes={first}-{}", first + 9))],
    )
    .await;
    assert_eq!(r.status, 206);
    assert!(r.is_hit(), "{}", r.cache_status());
    assert_eq!(r.body[..], big(3 << 20)[first..first + 10]);
    let read = edge.metric("meridian_cache_disk_read_bytes_total").await - before;
    assert!(
        read < 1.5 * (1 << 20) as f64,
        "one 1 MiB chunk and the head read, not the 3 MiB body: {read} bytes"
    );
    // The whole body streams from disk too.
    let whole = edge.get("/big").await;
    assert!(whole.is_hit());
    assert!(whole.body[..] == big(3 << 20)[..]);
    assert_eq!(o.count("/big"), 1);
    edge.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_chunk_aborts_the_response_and_the_object_is_fetched_again() {
    let o = scripted_origin().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    let edge = EdgeProcess::start(dir.path());
    assert_eq!(edge.get("/big").await.status, 200);
    edge.stop();

    // Flip a byte in the middle of the body's second chunk.
    let whole = big(3 << 20);
    let needle = &whole[(1 << 20) + 4096..(1 << 20) + 4096 + 64];
    assert!(
        flip_on_disk(dir.path(), needle, 0),
        "the chunk was found on disk"
    );

    let edge = EdgeProcess::start(dir.path());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(format!("http://{}/big", edge.http))
        .header("host", "demo.test")
        .body(http_body_util::Empty::new())
        .unwrap();
    // The head may or may not have gone out before the bad chunk: either way the response is
    // aborted, never ended cleanly.
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        use http_body_util::BodyExt;
        let resp = client.request(req).await.map_err(|e| e.to_string())?;
        assert_eq!(resp.status(), 200);
        resp.into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .map_err(|e| e.to_string())
    })
    .await
    .expect("ends");
    assert!(
        outcome.is_err(),
        "aborted, never a body with a hole: {outcome:?}"
    );
    assert!(edge.metric("meridian_cache_disk_dropped_total").await >= 1.0);
    // The broken chunk is gone from the index: the object is a miss and is fetched again.
    let again = edge.get("/big").await;
    assert!(!again.is_hit(), "{}", again.cache_status());
    assert!(again.body[..] == whole[..]);
    assert_eq!(o.count("/big"), 2);
    edge.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_larger_than_memory_is_kept_on_disk_and_served_from_there() {
    let (o, body) = huge_origin(24 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    write_config_with(
        dir.path(),
        o.addr,
        &[(
            SMALL_MEMORY,
            "cache_memory = \"8MiB\"\nmax_object_size = \"24MiB\"",
        )],
    );
    o.always(
        "/huge-chunked",
        Reply::ok("")
            .body_bytes(body.clone())
            .chunked()
            .header("cache-control", "max-age=600"),
    );
    let edge = EdgeProcess::start(dir.path());
    // Of unknown length: found too large as it arrives, then spooled to disk.
    let first = edge.get("/huge-chunked").await;
    assert!(first.body[..] == body[..]);
    let again = edge.get_after_fill("/huge-chunked").await;
    assert!(again.is_hit(), "{}", again.cache_status());
    assert!(again.body[..] == body[..]);
    assert_eq!(edge.tier_of("/huge-chunked"), "disk");
    let first = edge.get("/huge").await;
    assert!(first.body[..] == body[..]);
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    settle().await;
    let second = edge.get("/huge").await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(edge.tier_of("/huge"), "disk");
    assert!(second.body[..] == body[..]);
    let part = get(edge.http, "demo.test", "/huge", &[("range", "bytes=-5")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body[..], body[body.len() - 5..]);
    assert_eq!(o.count("/huge"), 1);
    edge.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_larger_than_memory_goes_to_disk_as_it_arrives_and_late_readers_read_it_there() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const LEN: usize = 24 << 20;
    const FIRST: usize = 12 << 20;
    let body = Arc::new(big(LEN));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (b, g, n) = (body.clone(), gate.clone(), requests.clone());
    // Sends the head and the first half, then waits for the gate before the rest.
    let origin = raw_origin(move |mut s| {
        let (body, gate, requests) = (b.clone(), g.clone(), n.clone());
        async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            requests.fetch_add(1, Ordering::SeqCst);
            let h = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\ncache-control: max-age=600\r\n\r\n"
            );
            let _ = s.write_all(h.as_bytes()).await;
            let _ = s.write_all(&body[..FIRST]).await;
            let _permit = gate.acquire().await;
            let _ = s.write_all(&body[FIRST..]).await;
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    write_config_with(
        dir.path(),
        origin,
        &[(
            SMALL_MEMORY,
            "cache_memory = \"8MiB\"\nmax_object_size = \"32MiB\"",
        )],
    );
    let edge = EdgeProcess::start(dir.path());

    let fetch = |range: Option<&'static str>| {
        let addr = edge.http;
        tokio::spawn(async move {
            let mut h = vec![];
            if let Some(r) = range {
                h.push(("range", r));
            }
            get(addr, "demo.test", "/large", &h).await
        })
    };
    let leader = fetch(None);
    // The first half reaches the disk while the origin still holds the rest.
    let mut written = 0.0;
    for _ in 0..200 {
        written = edge.metric("meridian_cache_disk_written_bytes_total").await;
        if written >= (FIRST - (1 << 20)) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        written >= (FIRST - (1 << 20)) as f64,
        "the body goes to disk as it arrives: {written} bytes written"
    );
    // Readers that come now start behind what memory still holds: they read it from disk.
    let follower = fetch(None);
    let early = fetch(Some("bytes=100-199"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(10);
    for (who, task, want) in [
        ("leader", leader, &body[..]),
        ("follower", follower, &body[..]),
        ("early range", early, &body[100..200]),
    ] {
        let r = task.await.unwrap();
        assert!(r.body[..] == want[..], "{who}: {} bytes", r.body.len());
    }
    let hit = edge.get_after_fill("/large").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(
        edge.tier_of("/large"),
        "disk",
        "the body is served from disk"
    );
    assert!(hit.body[..] == body[..]);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    edge.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_the_disk_cannot_record_still_holds_and_says_so() {
    let o = scripted_origin().await;
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    let edge = EdgeProcess::start(dir.path());
    assert_eq!(edge.get("/a").await.status, 200);
    assert!(edge.get_after_fill("/a").await.is_hit());
    settle().await;
    // The ban list cannot be written (its temporary file's name is taken by a directory).
    std::fs::create_dir(dir.path().join("disk/bans.json.tmp")).unwrap();
    let r = edge.purge(r#"{"url": "http://demo.test/a"}"#).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("could not be recorded on disk"),
        "{}",
        r.text()
    );
    // Purged all the same: neither memory nor the disk copy answers.
    let again = edge.get("/a").await;
    assert!(!again.is_hit(), "{}", again.cache_status());
    assert_eq!(o.count("/a"), 2);
    edge.stop();
}

/// An edge in a cluster holds its disk reads from the moment it accepts, not from when its
/// purge follower first runs: a request served at once after the start (here by an HTTP
/// thread while the runtime that runs the follower is kept busy) is not answered from disk
/// before the edge has caught up with the cluster's purges.
#[tokio::test(flavor = "current_thread")]
async fn disk_reads_are_held_from_the_first_accept_in_a_cluster() {
    // The origin on a runtime of its own: this one is blocked below.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tx.send(scripted_origin().await).unwrap();
            std::future::pending::<()>().await
        })
    });
    let o = rx.recv().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    let base = std::fs::read_to_string(dir.path().join("node.toml")).unwrap();
    let config = |gossip: &str| {
        let text = base.replace("[edge]\n", "[edge]\nthreads = 1\n") + gossip;
        std::fs::write(dir.path().join("node.toml"), text).unwrap();
        meridian::config::load(&dir.path().join("node.toml")).unwrap()
    };
    // Stored on disk by an edge without gossip, then stopped.
    let node = meridian::app::Node::start(config("")).await.unwrap();
    let edge = node.http_addrs()[0];
    assert_eq!(get(edge, "demo.test", "/a", &[]).await.text(), "alpha");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(node.shutdown().await);

    std::fs::write(
        dir.path().join("k.key"),
        "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    )
    .unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = meridian::app::Node::start(config(&format!(
        "[gossip]\nlisten = \"127.0.0.1:{port}\"\ncluster = \"held\"\nkey_file = \"k.key\"\nfailure_timeout = \"30s\"\n"
    )))
    .await
    .unwrap();
    let edge = node.http_addrs()[0];
    // Blocking on purpose: this runtime (the follower's) does not run meanwhile.
    let answer = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(edge).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    let status = answer
        .lines()
        .find_map(|l| l.strip_prefix("cache-status: "))
        .unwrap_or_default()
        .to_string();
    assert!(answer.ends_with("alpha"), "{answer}");
    assert!(
        !status.contains("; hit"),
        "served from disk before catching up: {status}"
    );
    assert_eq!(o.count("/a"), 2);
    node.shutdown().await;
}

/// Clients that ask for an object on disk and never read what they are sent: each response
/// holds the chunk it is writing until its client takes it, and all of them together hold no
/// more than `read_memory`; the others wait for room (and are counted). Before, four HTTP/2
/// connections of 256 such streams on a 48 MiB object took an edge from 35 MB to 2.1 GB.
/// An edge whose `/huge` (12 MiB, twelve chunks) is on disk, with room for four chunks read
/// for responses (`read_memory`), and the body.
async fn huge_on_disk(o: &Origin, body: &[u8], dir: &Path) -> EdgeProcess {
    write_config_with(
        dir,
        o.addr,
        &[
            (
                SMALL_MEMORY,
                "cache_memory = \"8MiB\"\nmax_object_size = \"24MiB\"",
            ),
            (
                "size = \"64MiB\" }",
                "size = \"64MiB\", read_memory = \"4MiB\" }",
            ),
        ],
    );
    let edge = EdgeProcess::start(dir);
    assert!(edge.get("/huge").await.body[..] == body[..]);
    settle().await;
    let hit = edge.get("/huge").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(edge.tier_of("/huge"), "disk");
    edge
}

/// A connection from `source` asking for `/huge` on `streams` HTTP/2 streams, windows wide open,
/// that reads nothing (its receive buffer is small).
async fn never_reads(edge: &EdgeProcess, source: [u8; 4], streams: u32) -> tokio::net::TcpStream {
    use common::h2raw::*;
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let mut s = socket.connect(edge.http).await.unwrap();
    let mut out = greedy_hello();
    for i in 0..streams {
        out.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &get_block("/huge", "demo.test"),
        ));
    }
    s.write_all(&out).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_read_hold_no_more_disk_chunks_than_read_memory() {
    let (o, body) = huge_origin(12 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = huge_on_disk(&o, &body, dir.path()).await;
    let before = rss_of(edge.child.id());

    // Four connections (from four addresses: one holds no more than its share), 128 streams
    // each, nothing read.
    let mut attackers = Vec::new();
    for n in 1..=4 {
        attackers.push(never_reads(&edge, [127, 0, 0, n], 128).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss_of(edge.child.id());
    assert!(
        during < before + (48 << 20),
        "{} MiB before, {} MiB with 512 streams that do not read",
        before >> 20,
        during >> 20
    );
    assert!(edge.metric("meridian_cache_disk_read_waits_total").await > 0.0);
    // Gone: their room comes back, and the object is read whole.
    drop(attackers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = edge.get("/huge").await;
    assert!(again.body[..] == body[..]);
    edge.stop();
}

/// One client's streams that never read take no more than its share (a quarter) of the room
/// for chunks read from disk, so another client's read from disk is served meanwhile. Before,
/// one HTTP/2 connection held all of it until `send_timeout` let its streams go, and every
/// other client's response from disk waited that long.
#[tokio::test(flavor = "multi_thread")]
async fn one_client_that_never_reads_leaves_room_for_others_reads_from_disk() {
    let (o, body) = huge_origin(12 << 20).await;
    let dir = tempfile::tempdir().unwrap();
    let edge = huge_on_disk(&o, &body, dir.path()).await;
    let waits = edge.metric("meridian_cache_disk_read_waits_total").await;
    let attacker = never_reads(&edge, [127, 0, 0, 1], 16).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let other = tokio::time::timeout(
        Duration::from_secs(10),
        get_from([127, 0, 0, 2].into(), edge.http, "demo.test", "/huge"),
    )
    .await
    .expect("another client's read from disk waited on the first client's");
    assert!(other.body[..] == body[..]);
    assert_eq!(
        edge.metric("meridian_cache_disk_read_waits_total").await,
        waits,
        "no read waited for room in read_memory"
    );
    assert!(
        edge.metric("meridian_cache_disk_client_waits_total").await > 0.0,
        "the first client's streams past its share waited for its own"
    );
    drop(attacker);
    edge.stop();
}

/// A body read back from the disk tier into memory, which the store then lets go (a purge)
/// while a client still holds it (an HTTP/2 stream whose window is shut: hyper keeps the body
/// it took), counts where fills' bodies count once let go (`meridian_cache_filling_bytes`), so
/// that new fills stop being stored instead of memory growing past `cache_memory` unseen; and
/// stops counting when the client goes. Before, bodies read back carried no such claim.
#[tokio::test]
async fn a_body_read_back_from_disk_and_let_go_while_held_counts_in_the_fills_budget() {
    use common::h2raw::*;
    use tokio::io::AsyncWriteExt;
    let o = Origin::start().await;
    o.always(
        "/r",
        Reply::ok("")
            .body_bytes(big(200 << 10))
            .header("cache-control", "max-age=600"),
    );
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), o.addr);
    let edge = EdgeProcess::start(dir.path());
    assert_eq!(edge.get("/r").await.status, 200);
    assert!(edge.get_after_fill("/r").await.is_hit());
    edge.stop();
    let edge = EdgeProcess::start(dir.path());
    let mut s = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let mut hello = PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0.
    hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    hello.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/r", "demo.test"),
    ));
    s.write_all(&hello).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        edge.metric("meridian_cache_hits_total{node=\"disk\",tier=\"disk\"}")
            .await,
        1.0,
        "read back from disk"
    );
    let r = edge.purge(r#"{"url": "http://demo.test/r"}"#).await;
    assert_eq!(r.status, 200);
    let mut counted = 0.0;
    for _ in 0..40 {
        counted = edge.metric("meridian_cache_filling_bytes").await;
        if counted >= (200 << 10) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        counted >= (200 << 10) as f64,
        "the held body counts: {counted} bytes"
    );
    drop(s);
    for _ in 0..100 {
        counted = edge.metric("meridian_cache_filling_bytes").await;
        if counted == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, 0.0, "and stops counting when the client goes");
    assert_eq!(o.count("/r"), 1);
}
