//! Internals for `benches/` only, not a stable API: the edge's hit path without sockets.
//!
//! Builds an edge state holding one stored object, then answers lookups for it exactly as the
//! handler does (key, store lookup, variant selection, reuse decision, response headers).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use tokio_util::task::TaskTracker;

use crate::cache::entry::Entry;
use crate::cache::policy::{self, Exchange, SitePolicy};
use crate::config::{EdgeConfig, QueryKey, SiteConfig};
use crate::http::handler::{lookup, EdgeState, Lookup, Sites};

/// One stored object and an edge to look it up in.
pub struct HitPath {
    state: Arc<EdgeState>,
    uri: Uri,
    headers: HeaderMap,
}

/// A site of one origin that is never reached (a closed port), with 1 s timeouts.
pub(crate) fn site() -> SiteConfig {
    SiteConfig {
        name: "bench".into(),
        hosts: vec!["bench.test".into()],
        origins: vec![Uri::from_static("http://127.0.0.1:9")],
        host_header: None,
        connect_timeout: Duration::from_secs(1),
        first_byte_timeout: Duration::from_secs(1),
        origin_read_timeout: Duration::from_secs(1),
        max_origin_requests: crate::config::DEFAULT_MAX_ORIGIN_REQUESTS,
        max_origin_requests_per_client: crate::config::DEFAULT_MAX_ORIGIN_REQUESTS,
        default_ttl: None,
        heuristic_freshness: false,
        strip_set_cookie: false,
        ignore_client_cache_control: false,
        key_scheme: true,
        ca_file: None,
        query_key: QueryKey::Keep,
        key_headers: vec![],
        tls: None,
        shield: false,
        shield_region: None,
    }
}

impl HitPath {
    /// An edge holding `/object` with a body of `size` bytes, fresh for an hour.
    pub async fn new(size: usize) -> HitPath {
        let edge = EdgeConfig {
            listen: vec![],
            tls_listen: vec![],
            tls_default_site: None,
            quic: None,
            cache_memory: 1 << 30,
            max_object_size: 64 << 20,
            cache_disk: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(30),
            max_header_size: 16 << 10,
            max_connections: 1000,
            threads: 0,
            shutdown_grace: Duration::from_secs(1),
            drain_wait: Some(Duration::ZERO),
            peer_timeout: Duration::from_secs(1),
            public_addresses: vec![],
            capacity_requests_per_second: 10_000.0,
            capacity_connections: 1000.0,
            capacity_egress_per_second: (1u64 << 30) as f64,
        };
        let sites = Sites::new(&[site()]).unwrap_or_else(|e| panic!("{e}"));
        let state = Arc::new(EdgeState::new(
            "bench",
            &edge,
            sites,
            false,
            TaskTracker::new(),
            None,
        ));
        let mut resp = HeaderMap::new();
        resp.insert("cache-control", HeaderValue::from_static("max-age=3600"));
        resp.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        resp.insert("etag", HeaderValue::from_static("\"bench\""));
        resp.insert(
            "date",
            HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now()))
                .unwrap_or(HeaderValue::from_static("x")),
        );
        let now = SystemTime::now();
        let freshness = policy::storability(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &resp,
            Exchange {
                request_time: now,
                response_time: now,
            },
            SitePolicy::default(),
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let uri = Uri::from_static("/object");
        let key = state
            .sites
            .load()
            .lookup("bench.test")
            .map(|s| s.key(&uri))
            .unwrap_or_default();
        let entry = Entry {
            status: StatusCode::OK,
            headers: crate::cache::entry::Fields::new(&resp),
            body: Bytes::from(vec![b'x'; size]),
            fresh: freshness.into(),
            stored_at: tokio::time::Instant::now(),
            vary: Box::new([]),
            vary_values: Box::new([]),
            tags: Box::new([]),
            target_host: Some("bench.test".into()),
            target_https: Some(false),
            surrogate_control: None,
            on_disk: None,
            residence: None,
        };
        state.store.insert(key, Arc::new(entry)).await;
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("bench.test"));
        headers.insert("user-agent", HeaderValue::from_static("criterion"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        HitPath {
            state,
            uri,
            headers,
        }
    }

    /// Answers one GET for the object from cache; returns the body length.
    pub async fn hit(&self) -> usize {
        let sites = self.state.sites.load();
        let Some(site) = sites.lookup("bench.test") else {
            return 0;
        };
        let key = site.key(&self.uri);
        let target = site.target("bench.test", false);
        let directives = policy::request_directives(&self.headers);
        match lookup(
            &self.state,
            &key,
            &Method::GET,
            &self.headers,
            target,
            &directives,
        )
        .await
        {
            Lookup::Served(resp, _) => {
                http_body::Body::size_hint(resp.body()).exact().unwrap_or(0) as usize
            }
            _ => 0,
        }
    }
}

/// The DNS decision (location + choice + scope) over `config/local/`'s cluster map and the test
/// GeoIP database, without sockets.
pub struct Decision {
    view: Arc<crate::model::ClusterView>,
    tables: Arc<crate::dns::handler::Tables>,
    default_region: usize,
    policy: crate::steering::Policy,
    memo: crate::dns::memo::Memo,
}

impl Decision {
    /// Loads the cluster map of the node file `dns_toml` and its GeoIP database.
    pub fn new(dns_toml: &std::path::Path) -> Decision {
        let cfg = crate::config::load(dns_toml).unwrap_or_else(|e| panic!("{e}"));
        let map = cfg
            .cluster
            .as_ref()
            .unwrap_or_else(|| panic!("no cluster map"));
        let geo = cfg
            .node
            .dns
            .as_ref()
            .and_then(|d| d.geoip.clone())
            .unwrap_or_else(|| panic!("no geoip"));
        let geoip = crate::geoip::GeoIp::open(&geo).unwrap_or_else(|e| panic!("{e}"));
        let zone = &map.zones[0];
        Decision {
            view: Arc::new(crate::model::ClusterView::from_map(map)),
            tables: Arc::new(
                crate::dns::handler::Tables::new(map, Some(Arc::new(geoip)))
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
            default_region: zone.default_region,
            policy: crate::steering::Policy {
                answers: zone.answers,
                high_water: zone.high_water,
            },
            memo: Default::default(),
        }
    }

    /// Decides for one client subnet as a UDP worker does, with its memo of places and
    /// rankings; returns the number of edges answered and the scope.
    pub fn decide_memo(&mut self, ip: std::net::IpAddr, source_prefix: u8) -> (usize, u8) {
        let (hash, hash_prefix) = crate::steering::subnet_hash(ip, source_prefix);
        self.memo.begin(&self.tables, &self.view);
        let (prefix, pick) = self.memo.decide(ip, self.default_region, self.policy, hash);
        (
            self.memo.edges().len(),
            crate::steering::scope(prefix, pick, hash_prefix),
        )
    }

    /// Decides for one client subnet; returns the number of edges answered and the scope.
    pub fn decide(&self, ip: std::net::IpAddr, source_prefix: u8) -> (usize, u8) {
        use crate::steering::{choose, locate, scope, subnet_hash};
        let place = locate(
            &self.tables.locator(),
            &self.view,
            ip,
            source_prefix,
            self.default_region,
        );
        let (hash, hash_prefix) = subnet_hash(ip, source_prefix);
        let choice = choose(&self.view, &place, self.policy, hash);
        (
            choice.edges.len(),
            scope(place.prefix, choice.pick(), hash_prefix),
        )
    }
}

/// A whole UDP answer (parse, decide, encode, count) over `config/local/`'s cluster map, by the
/// fast path or the general one, without sockets.
pub struct DnsAnswer {
    handler: crate::dns::handler::DnsHandler,
    worker: crate::dns::fast::Worker,
}

impl DnsAnswer {
    /// Loads the cluster map of the node file `dns_toml` and its GeoIP database.
    pub fn new(dns_toml: &std::path::Path) -> DnsAnswer {
        let d = Decision::new(dns_toml);
        let cfg = crate::config::load(dns_toml).unwrap_or_else(|e| panic!("{e}"));
        let regions: Vec<String> = cfg
            .cluster
            .iter()
            .flat_map(|m| m.regions.iter().map(|r| r.name.clone()))
            .collect();
        DnsAnswer {
            handler: crate::dns::handler::DnsHandler {
                tables: Arc::new(arc_swap::ArcSwap::new(d.tables)),
                view: Arc::new(arc_swap::ArcSwap::new(d.view)),
                metrics: Arc::new(crate::dns::metrics::DnsMetrics::new("bench", &regions)),
                identity: Arc::new(crate::dns::handler::Identity::new(Some("bench"), None)),
            },
            worker: Default::default(),
        }
    }

    /// The answer to `query` by the fast path (`None` when it declines); returns its length.
    pub fn fast(&mut self, query: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let src = std::net::SocketAddr::from(([192, 0, 2, 7], 5300));
        self.worker.begin(&self.handler);
        let answered = crate::dns::fast::answer(query, src, out, &mut self.worker);
        self.handler.metrics.flush(&mut self.worker.tally);
        answered.then_some(out.len())
    }

    /// The answer to `query` by hickory's parser and builder; returns its length.
    pub fn general(&self, query: &[u8]) -> Option<usize> {
        let src = std::net::SocketAddr::from(([192, 0, 2, 7], 5300));
        crate::dns::server::general_answer(&self.handler, query, src).map(|v| v.len())
    }
}

/// One gossip agent of the cluster simulation (`benches/gossip_sim.rs`), on the real sealed
/// transport over loopback UDP.
pub struct GossipNode {
    gossip: Arc<crate::gossip::Gossip>,
}

impl GossipNode {
    /// Starts an edge-role agent `id` in region `region` on `listen`, joining through `seeds`,
    /// with the key file at `key_file`.
    pub async fn start(
        id: &str,
        region: &str,
        listen: std::net::SocketAddr,
        seeds: Vec<String>,
        key_file: &std::path::Path,
        interval: Duration,
    ) -> GossipNode {
        let config = crate::config::GossipConfig {
            listen,
            advertise: listen,
            seeds,
            cluster: "sim".into(),
            key_file: Some(key_file.to_path_buf()),
            interval,
            failure_timeout: interval * 8,
            purge_retention: Duration::from_secs(3600),
        };
        let me = crate::gossip::SelfInfo {
            id: id.into(),
            region: region.into(),
            roles: vec!["edge"],
            addresses: vec![listen.ip()],
            weight: 1.0,
            capacity: None,
            peer: None,
            peer_tls: None,
        };
        let gossip = crate::gossip::Gossip::start(&config, me, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        GossipNode { gossip }
    }

    /// Publishes a load figure, as the edge's load meter would.
    pub async fn set_load(&self, load: f64) {
        self.gossip.publish_load(load).await;
    }

    /// The load this node last heard from `id`.
    pub fn load_of(&self, id: &str) -> Option<f64> {
        self.gossip
            .members()
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.load)
    }

    /// Issues a cluster purge of `url` from this node; its issue time (unix ms).
    pub async fn issue_purge(&self, url: &str) -> u64 {
        let value = serde_json::json!({ "url": url }).to_string();
        self.gossip
            .issue_purge(value)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether this node's gossip holds the purge `issuer` issued at `at_ms` (what an edge
    /// applies within its next look, every 50 ms).
    pub async fn holds_purge(&self, issuer: &str, at_ms: u64) -> bool {
        let after = std::collections::HashMap::from([(issuer.to_string(), at_ms - 1)]);
        self.gossip
            .purges_after(&after)
            .await
            .iter()
            .any(|r| r.issuer == issuer && r.at_ms == at_ms)
    }

    /// Members this node holds alive (itself included).
    pub fn alive(&self) -> usize {
        self.gossip
            .members()
            .iter()
            .filter(|m| m.state == crate::model::MemberState::Alive)
            .count()
    }

    /// Gossip bytes this node has sent.
    pub fn bytes_sent(&self) -> u64 {
        self.gossip
            .totals
            .bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Coverage-zone lookups (`coverage::Coverage::find`) over `n` zones: /24s and /20s spread over
/// 10.0.0.0/8, probed with addresses in and around them.
pub struct CoverageLookup {
    coverage: crate::coverage::Coverage,
    probes: Vec<std::net::IpAddr>,
}

impl CoverageLookup {
    pub fn new(n: usize) -> CoverageLookup {
        let zone = |i: usize| {
            let a = 0x0a00_0000u32 | ((i as u32).wrapping_mul(2_654_435_761) & 0x00ff_ff00);
            let prefix = if i.is_multiple_of(4) { 20 } else { 24 };
            ipnet::IpNet::new(std::net::IpAddr::from(a.to_be_bytes()), prefix)
                .map(|n| n.trunc())
                .unwrap_or_else(|e| panic!("{e}"))
        };
        CoverageLookup {
            coverage: crate::coverage::Coverage::new((0..n).map(|i| (zone(i), i % 3)).collect()),
            probes: (0..1024u32)
                .map(|i| {
                    std::net::IpAddr::from(
                        (0x0a00_0000 | i.wrapping_mul(40_503) & 0x00ff_ffff).to_be_bytes(),
                    )
                })
                .collect(),
        }
    }

    /// Looks the `i`th probe up; returns its guard prefix.
    pub fn find(&self, i: usize) -> u8 {
        self.coverage.find(self.probes[i % self.probes.len()]).guard
    }
}

/// Writes `text` as the node file `path` and starts the node it describes in this process
/// (panics on a bad file: benches set their own up).
pub async fn start_node(path: &std::path::Path, text: &str) -> crate::app::Node {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config = crate::config::load(path).unwrap_or_else(|e| panic!("{e}"));
    crate::app::Node::start(config)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Waits until every one of `nodes` hears `n` members alive that take peer requests (see
/// [`wait_for_peers`]); panics when one does not within `limit`.
pub async fn wait_for_all_peers(nodes: &[crate::app::Node], n: usize, limit: Duration) {
    for node in nodes {
        let admin = node
            .admin_addr()
            .expect("bench nodes have an admin listener");
        wait_for_peers(admin, n, limit)
            .await
            .unwrap_or_else(|e| panic!("not converged: {e}"));
    }
}

/// Waits until the node whose admin API listens on `admin` hears `n` members alive that take
/// peer requests (every edge of a shielding cluster), asking `GET /cluster` every 50 ms; the
/// time it took, or the last answer when `limit` passes first. For benches and tests that start
/// edges and must not measure before they know each other.
pub async fn wait_for_peers(
    admin: std::net::SocketAddr,
    n: usize,
    limit: Duration,
) -> Result<Duration, String> {
    let t = std::time::Instant::now();
    loop {
        let text = admin_get(admin, "/cluster").await.unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let ready = v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["state"] == "alive" && m["peer"].is_string())
            .count();
        if ready == n {
            return Ok(t.elapsed());
        }
        if t.elapsed() >= limit {
            return Err(format!(
                "{admin}: {ready} of {n} peers within {limit:?}: {text}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of `GET path` from an admin API.
async fn admin_get(admin: std::net::SocketAddr, path: &str) -> Option<String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "admin")
        .body(http_body_util::Empty::<Bytes>::new())
        .ok()?;
    let body = send.send_request(req).await.ok()?.into_body();
    let bytes = body.collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// A stream wrapped as the edge wraps an HTTP/2 connection's (`http::coalesce`, gathering), and
/// written to as the `h2` crate writes a response's DATA frames: one vectored write of a
/// 9-byte frame head and up to 16 KiB of payload per frame, then the end of the turn.
pub struct H2Frames<S> {
    io: crate::http::coalesce::Coalesce<S>,
    drain: crate::http::coalesce::Drain<S>,
}

impl<S: tokio::io::AsyncWrite + Unpin> H2Frames<S> {
    /// `tls`: the stream makes TLS records of what it is given (whole records are written).
    pub fn new(io: S, tls: bool) -> H2Frames<S> {
        let (io, drain) = crate::http::coalesce::gathering(io, tls);
        H2Frames { io, drain }
    }

    /// Writes `body` as DATA frames and drains; the bytes written.
    pub async fn response(&mut self, body: &[u8]) -> std::io::Result<usize> {
        use std::io::IoSlice;
        use std::pin::Pin;
        let mut sent = 0;
        for payload in body.chunks(16 * 1024) {
            let len = payload.len().to_be_bytes();
            let head = [len[5], len[6], len[7], 0, 0, 0, 0, 0, 1];
            let mut bufs = [IoSlice::new(&head), IoSlice::new(payload)];
            let mut bufs = &mut bufs[..];
            while !bufs.is_empty() {
                let n = std::future::poll_fn(|cx| {
                    tokio::io::AsyncWrite::poll_write_vectored(Pin::new(&mut self.io), cx, bufs)
                })
                .await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                sent += n;
                IoSlice::advance_slices(&mut bufs, n);
            }
        }
        std::future::poll_fn(|cx| self.drain.poll_drain(cx)).await?;
        Ok(sent)
    }
}

/// What one forwarded request counts and times in an edge's metrics (`hit_path/metrics`).
pub struct RequestMetrics(crate::telemetry::EdgeMetrics);

impl RequestMetrics {
    /// The metrics of an edge named `node` (installs the process' recorder).
    pub fn new(node: &str) -> RequestMetrics {
        RequestMetrics(crate::telemetry::EdgeMetrics::new(node))
    }

    /// A forwarded request answered `took` after its head came (its origin fetch took as long):
    /// what the handler records for it.
    pub fn forwarded(&self, took: Duration) {
        let m = &self.0;
        m.origin_fetch();
        m.origin_took(took);
        let label = crate::http::response::Label::Pass;
        m.request(label, http::Version::HTTP_11, 200, took);
    }

    /// The exposition, as `/metrics` shows it.
    pub fn render(&self) -> String {
        crate::telemetry::render()
    }
}
