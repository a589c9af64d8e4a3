//! 10. The admin listener: health, metrics, purge with a bearer token.

use crate::common::*;

async fn setup() -> (Origin, Edge) {
    let o = Origin::start().await;
    for p in ["/a", "/img/1", "/img/2", "/tagged", "/b"] {
        let mut r = Reply::ok(p).header("cache-control", "max-age=600");
        if p == "/tagged" || p == "/b" {
            r = r.header("surrogate-key", "red blue");
        }
        o.always(p, r);
    }
    let e = Edge::for_origin(&o).await;
    for p in ["/a", "/img/1", "/img/2", "/tagged", "/b"] {
        e.get(p).await;
        assert!(e.get(p).await.is_hit());
    }
    (o, e)
}

#[tokio::test]
async fn healthz_and_metrics() {
    let (_o, edge) = setup().await;
    let h = edge.admin_get("/healthz").await;
    assert_eq!(h.status, 200);
    let m = edge.admin_get("/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    let node = format!("node=\"{}\"", edge.id);
    for name in [
        format!("meridian_http_requests_total{{{node},cache=\"hit\",code=\"200\"}} 5"),
        format!("meridian_http_requests_total{{{node},cache=\"miss\",code=\"200\"}} 5"),
        format!("meridian_origin_fetches_total{{{node}}} 5"),
        format!("meridian_cache_stored_objects{{{node}}} 5"),
        format!("meridian_http_sent_bytes_total{{{node}}}"),
        format!("meridian_http_received_bytes_total{{{node}}}"),
        format!("meridian_cache_stored_bytes{{{node}}}"),
        format!("meridian_http_request_duration_seconds_bucket{{{node},cache=\"hit\""),
        format!("meridian_origin_fetch_duration_seconds_bucket{{{node}"),
    ] {
        assert!(text.contains(&name), "missing {name} in\n{text}");
    }
}

#[tokio::test]
async fn purge_needs_the_token_and_changes_nothing_without_it() {
    let (_o, edge) = setup().await;
    let r = edge
        .admin_post("/purge", None, r#"{"url":"http://demo.test/a"}"#)
        .await;
    assert_eq!(r.status, 401);
    let r = edge
        .admin_post("/purge", Some("wrong"), r#"{"url":"http://demo.test/a"}"#)
        .await;
    assert_eq!(r.status, 401);
    assert!(edge.get("/a").await.is_hit());
}

#[tokio::test]
async fn purge_by_url_prefix_and_tag() {
    let (o, edge) = setup().await;
    let r = edge
        .admin_post("/purge", Some(TOKEN), r#"{"url":"http://demo.test/a"}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), r#"{"purged":1}"#);
    assert!(!edge.get("/a").await.is_hit());
    let r = edge
        .admin_post(
            "/purge",
            Some(TOKEN),
            r#"{"prefix":"http://demo.test/img/"}"#,
        )
        .await;
    assert_eq!(r.text().trim(), r#"{"purged":2}"#);
    assert!(!edge.get("/img/1").await.is_hit());
    assert!(!edge.get("/img/2").await.is_hit());
    let r = edge
        .admin_post("/purge", Some(TOKEN), r#"{"tag":"blue"}"#)
        .await;
    assert_eq!(r.text().trim(), r#"{"purged":2}"#);
    assert!(!edge.get("/tagged").await.is_hit());
    assert!(!edge.get("/b").await.is_hit());
    assert_eq!(o.count("/a"), 2);
}

#[tokio::test]
async fn bad_purge_requests_are_400() {
    let (_o, edge) = setup().await;
    for body in [
        "not json",
        r#"{"url":"/relative"}"#,
        r#"{"url":"http://unknown.test/a"}"#,
        r#"{"url":"http://demo.test/a","tag":"x"}"#,
        "{}",
    ] {
        let r = edge.admin_post("/purge", Some(TOKEN), body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains("error"));
    }
    assert!(edge.get("/a").await.is_hit());
}

#[tokio::test]
async fn the_edge_status_counts_requests_and_hits() {
    // What `meridian demo`'s status line shows: five misses then five hits (no gossip, so no
    // load is metered).
    let (_o, e) = setup().await;
    let status = e.node.as_ref().unwrap().edge_status().unwrap();
    assert_eq!((status.requests, status.hits, status.load), (10, 5, 0.0));
}

/// Every metric family the README names is exported with help text and a type, by a node of
/// both roles that gossips; so are `meridian_build_info` and the `process_*` families.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_has_help_and_a_type() {
    let o = Origin::start().await;
    o.always("/a", Reply::ok("/a").header("cache-control", "max-age=60"));
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("config/local/cluster.toml"),
        dir.path().join("cluster.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("origins.toml"),
        site("demo", "demo.test", &format!("http://{}", o.addr), ""),
    )
    .unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        format!(
            "id = \"metrics-all\"\nregion = \"eu-west\"\nroles = [\"edge\", \"dns\"]\norigin_map = \"origins.toml\"\ncluster_map = \"cluster.toml\"\n\
[log]\naccess_log = false\n[edge]\nlisten = [\"127.0.0.1:0\"]\ncache_disk = {{ path = \"disk\", size = \"64MiB\" }}\n[dns]\nlisten = [\"127.0.0.1:0\"]\ngeoip = {:?}\n\
[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[gossip]\nlisten = \"{gossip}\"\ninsecure = true\n",
            root.join("geo/test-city.mmdb").display().to_string()
        ),
    )
    .unwrap();
    let config =
        meridian::config::load(&dir.path().join("node.toml")).unwrap_or_else(|e| panic!("{e}"));
    let node = meridian::app::Node::start(config).await.unwrap();
    // One request through the cache, one DNS query over TCP (always timed), one reload.
    assert_eq!(
        get(node.http_addrs()[0], "demo.test", "/a", &[])
            .await
            .status,
        200
    );
    let dns = node.dns_addrs()[0];
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut q = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x04demo\x08meridian\x04test\x00\x00\x01\x00\x01");
        let mut s = tokio::net::TcpStream::connect(dns).await.unwrap();
        s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(&q).await.unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.unwrap();
    }
    node.reload().unwrap();
    let text = get(node.admin_addr().unwrap(), "admin", "/metrics", &[])
        .await
        .text();

    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut families: Vec<String> = readme
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("meridian_") && w.len() > "meridian_".len())
        .map(str::to_string)
        .collect();
    families.sort();
    families.dedup();
    assert!(families.len() > 20, "{families:?}");
    families.extend(
        [
            "meridian_build_info",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ]
        .map(str::to_string),
    );
    let missing: Vec<&String> = families
        .iter()
        .filter(|f| {
            !(text.contains(&format!("# HELP {f} ")) && text.contains(&format!("# TYPE {f} ")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "without # HELP and # TYPE: {missing:?}\n{text}"
    );
    // Every family the Grafana dashboard queries is exported, and every label it groups by.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/meridian.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 14, "{exprs:?}");
    for expr in &exprs {
        let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for w in words.filter(|w| w.starts_with("meridian_") || w.starts_with("process_")) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {w}, which is not exported: {expr}"
            );
        }
        for clause in expr.split("by (").skip(1) {
            let labels = clause.split(')').next().unwrap();
            for label in labels.split(',').map(str::trim).filter(|l| *l != "le") {
                assert!(
                    text.contains(&format!("{label}=\"")),
                    "the dashboard groups by {label:?}, which no family has: {expr}"
                );
            }
        }
    }
    let commit = text
        .lines()
        .find(|l| l.starts_with("meridian_build_info{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        commit.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{commit}"
    );
    assert!(commit.contains("commit=\""), "{commit}");
    drop(node);
}
