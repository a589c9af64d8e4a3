//! Composition root: binds the listeners, builds the shared state, spawns the roles, and shuts
//! them down in order.
//!
//! Receives a validated [`Config`] and has each role read and check the files it names beyond
//! the configuration's own ([`RoleFiles`]: certificates, CA bundles, the GeoIP database, the
//! gossip key file), the same way for a start, a reload and `meridian check`; hands each server
//! a bound listener, its state and the shutdown token. Shutdown: stop accepting, let in-flight
//! requests finish within the grace period, then return (every spawned task is tracked).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::cache::disk::Disk;
use crate::config::{ClusterMap, Config, ConfigError};
use crate::dns::handler::{DnsHandler, Tables};
use crate::dns::metrics::DnsMetrics;
use crate::geoip::GeoIp;
use crate::gossip::{Gossip, Keyring, SelfInfo};
use crate::http::handler::{EdgeState, Sites};
use crate::http::quic;
use crate::http::server::{self, Limits};
use crate::http::tls::{self, Certificates};
use crate::load::Capacity;
use crate::model::{ClusterView, Member};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file the configuration names (a certificate, a CA bundle, the GeoIP database, the
    /// gossip key file) did not pass its role's check.
    #[error("{0}")]
    Config(ConfigError),
    /// A site could not be set up.
    #[error("{0}")]
    Site(String),
    /// The DNS role could not be set up.
    #[error("{0}")]
    Dns(String),
    /// Gossip could not start.
    #[error(transparent)]
    Gossip(#[from] crate::gossip::GossipError),
}

/// The DNS role's reloadable state.
pub(crate) struct DnsRole {
    tables: Arc<ArcSwap<Tables>>,
    view: Arc<ArcSwap<ClusterView>>,
    metrics: Arc<DnsMetrics>,
    map: ArcSwap<ClusterMap>,
    /// What gossip says of the members; `None` when this node does not gossip.
    members: Option<watch::Receiver<Arc<Vec<Member>>>>,
    /// Set once this node has gossiped long enough to have heard of every running edge.
    settled: AtomicBool,
}

impl DnsRole {
    /// Builds the tables of a reloaded configuration (its cluster map and GeoIP database).
    fn prepare(&self, config: &Config, files: &RoleFiles) -> Result<(Tables, ClusterMap), String> {
        build_dns(config, files)?
            .ok_or_else(|| "the node file no longer configures the dns role".into())
    }

    /// Swaps prepared tables in.
    fn commit(&self, (tables, map): (Tables, ClusterMap)) {
        self.metrics.set_regions(
            &map.regions
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>(),
        );
        self.tables.store(Arc::new(tables));
        self.map.store(Arc::new(map));
        self.refresh();
    }

    /// Builds the next cluster view from the map and the members heard, and swaps it in.
    fn refresh(&self) {
        let map = self.map.load();
        let view = match &self.members {
            Some(members) => ClusterView::from_members(
                &map,
                &members.borrow(),
                self.settled.load(Ordering::Relaxed),
            ),
            None => ClusterView::from_map(&map),
        };
        self.view.store(Arc::new(view));
    }

    /// Rebuilds the view on every change of the member list, and once when the view settles.
    async fn follow(self: Arc<Self>, settle: Duration, shutdown: CancellationToken) {
        let Some(mut members) = self.members.clone() else {
            return;
        };
        let settled = tokio::time::sleep(settle);
        tokio::pin!(settled);
        loop {
            tokio::select! {
                r = members.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
                _ = &mut settled, if !self.settled.load(Ordering::Relaxed) => {
                    self.settled.store(true, Ordering::Relaxed);
                }
                _ = shutdown.cancelled() => break,
            }
            self.refresh();
        }
    }
}

/// The edge role's reloadable state: its sites and their certificates.
struct EdgeRole {
    state: Arc<EdgeState>,
    certificates: Arc<ArcSwap<Certificates>>,
    tls: bool,
}

impl EdgeRole {
    /// Builds the sites and certificates of a reloaded configuration.
    fn prepare(&self, config: &Config, files: &RoleFiles) -> Result<(Sites, Certificates), String> {
        let next =
            build_edge(config, files)?.ok_or("the node file no longer configures the edge role")?;
        if self.tls && next.1.is_empty() {
            return Err(
                "no site has a certificate any more; the TLS and QUIC listeners need one".into(),
            );
        }
        Ok(next)
    }

    fn commit(&self, (sites, certificates): (Sites, Certificates)) {
        self.state.sites.store(Arc::new(sites));
        self.certificates.store(Arc::new(certificates));
    }
}

/// Set by `meridian demo`, whose bundled test database is no mistake.
pub(crate) static DEMO: AtomicBool = AtomicBool::new(false);

/// Logs which GeoIP database answers (path, type, build date, networks) and exposes its age as
/// `meridian_geoip_build_timestamp_seconds`; warns when it is too small to place real users.
fn announce_geoip(node: &str, geoip: Option<&GeoIp>, path: Option<&std::path::PathBuf>) {
    let (Some(db), Some(path)) = (geoip, path) else {
        tracing::info!(
            "no GeoIP database: clients are placed by coverage zones and the default region only"
        );
        return;
    };
    let built = std::time::UNIX_EPOCH + Duration::from_secs(db.built());
    tracing::info!(
        path = %path.display(),
        kind = db.kind(),
        built = %httpdate::fmt_http_date(built),
        networks = db.networks(),
        "GeoIP database loaded"
    );
    crate::telemetry::prometheus(); // installed before the first gauge is set
    metrics::gauge!("meridian_geoip_build_timestamp_seconds", "node" => node.to_string())
        .set(db.built() as f64);
    if db.networks() < 1000 && !DEMO.load(Ordering::Relaxed) {
        tracing::warn!(
            path = %path.display(),
            networks = db.networks(),
            "this GeoIP database places almost no one (the bundled test database has 10 networks): use a real City database (geo/README.md)"
        );
    }
}

/// What the roles read from the files a configuration names beyond its own, each read once and
/// checked by the role whose types it needs: the sites' certificates (`http::tls`) and CA
/// bundles (`origin`), the GeoIP database (`geoip`, tens of MB and about a second to verify) and
/// the gossip key file (`gossip`).
struct RoleFiles {
    /// Each site's certificate and key, in the order of `config.sites`.
    certificates: Vec<Option<Arc<rustls::sign::CertifiedKey>>>,
    /// The DNS role's database.
    geoip: Option<Arc<GeoIp>>,
    /// The gossip keys.
    keys: Option<Keyring>,
}

impl RoleFiles {
    /// Reads and checks the files of the roles `config` has; every problem, named by file and
    /// key as the configuration's own are.
    fn read(config: &Config) -> Result<RoleFiles, ConfigError> {
        let mut problems = Vec::new();
        let mut certificates = Vec::new();
        if config.node.edge.is_some() {
            problems.extend(crate::origin::check_ca_files(config));
            match tls::load_certificates(config) {
                Ok(keys) => certificates = keys,
                Err(p) => problems.extend(p),
            }
        }
        let geoip = match config.node.dns.as_ref().and_then(|d| d.geoip.as_ref()) {
            None => None,
            Some(path) => match GeoIp::open(path) {
                Ok(db) => Some(Arc::new(db)),
                Err(e) => {
                    problems.push(config.node_problem("dns.geoip", e.to_string()));
                    None
                }
            },
        };
        let keys = match &config.node.gossip {
            None => None,
            Some(g) => Gossip::prepare_keys(g).unwrap_or_else(|e| {
                problems.push(config.node_problem("gossip.key_file", e));
                None
            }),
        };
        if problems.is_empty() {
            Ok(RoleFiles {
                certificates,
                geoip,
                keys,
            })
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// Loads the node file at `path` and every file it names, and judges the whole as a start or a
/// reload would ([`validate`]): what `meridian check` runs. The roles' files are checked even
/// when the node file or a map has problems, so that every problem is listed at once.
pub fn check(path: &std::path::Path) -> Result<Config, ConfigError> {
    let (config, mut problems) = crate::config::load_with_problems(path);
    let files = config.as_ref().map(RoleFiles::read);
    match (config, files) {
        (Some(config), Some(Ok(files))) if problems.is_empty() => {
            build(&config, &files)?;
            Ok(config)
        }
        (_, files) => {
            if let Some(Err(e)) = files {
                problems.extend(e.problems);
            }
            Err(ConfigError { problems })
        }
    }
}

/// Builds what a start or a reload would build from `config` (the roles' files, sites and their
/// origin clients, certificates, DNS tables over the GeoIP database, the gossip keyring)
/// without serving any of it: `meridian check` judges a configuration exactly as a reload does.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    build(config, &RoleFiles::read(config)?)
}

/// [`validate`] over files already read.
fn build(config: &Config, files: &RoleFiles) -> Result<(), ConfigError> {
    let whole = |reason: String| ConfigError {
        problems: vec![config.node_problem("", reason)],
    };
    build_edge(config, files).map_err(whole)?;
    build_dns(config, files).map_err(whole)?;
    Ok(())
}

/// The edge role's sites and certificates, when `config` has the role.
fn build_edge(config: &Config, files: &RoleFiles) -> Result<Option<(Sites, Certificates)>, String> {
    let Some(edge) = &config.node.edge else {
        return Ok(None);
    };
    let sites = Sites::new(&config.sites)?;
    let certificates = Certificates::new(
        &config.sites,
        &files.certificates,
        edge.tls_default_site.as_deref(),
    );
    if !edge.tls_listen.is_empty() && certificates.is_empty() {
        return Err("no site has a certificate; the TLS listeners need one".into());
    }
    if edge.quic.is_some() && certificates.is_empty() {
        return Err("no site has a certificate; HTTP/3 (edge.quic) needs one".into());
    }
    Ok(Some((sites, certificates)))
}

/// The DNS role's tables over its GeoIP database, and its cluster map, when `config` has the role.
fn build_dns(config: &Config, files: &RoleFiles) -> Result<Option<(Tables, ClusterMap)>, String> {
    let (Some(_), Some(map)) = (&config.node.dns, &config.cluster) else {
        return Ok(None);
    };
    Ok(Some((Tables::new(map, files.geoip.clone())?, map.clone())))
}

/// Where peers reach a listener bound to `addr`: the gossip address's host where it listens on
/// every address.
fn reachable(addr: SocketAddr, gossip: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(gossip.ip(), addr.port())
    } else {
        addr
    }
}

/// What a reload swaps, and the files it watches.
struct Reloader {
    node_file: std::path::PathBuf,
    edge: Option<EdgeRole>,
    dns: Option<Arc<DnsRole>>,
    gossip: Option<Arc<Gossip>>,
    /// The cluster map's regions, as the status page shows them.
    regions: Arc<ArcSwap<Vec<crate::status::RegionPoint>>>,
    /// Reloads by result: `[ok, rejected]`.
    reloads: [metrics::Counter; 2],
    files: std::sync::Mutex<Vec<std::path::PathBuf>>,
}

/// What identifies a file's content cheaply: its modification time and length.
type Stamp = Option<(std::time::SystemTime, u64)>;

fn stamps(files: &[std::path::PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

impl Reloader {
    fn reload(&self) -> Result<(), String> {
        let result = self.try_reload();
        self.reloads[usize::from(result.is_err())].increment(1);
        result
    }

    fn try_reload(&self) -> Result<(), String> {
        // Everything `validate` (and so `meridian check`) builds, built once; a role added or
        // removed needs a restart.
        let config = crate::config::load(&self.node_file).map_err(|e| e.to_string())?;
        let mut files = RoleFiles::read(&config).map_err(|e| e.to_string())?;
        let restart = |what: &str| format!("the node file now configures {what}: restart to apply");
        let edge = match (&self.edge, &config.node.edge) {
            (Some(e), _) => Some(e.prepare(&config, &files)?),
            (None, Some(_)) => return Err(restart("the edge role")),
            (None, None) => None,
        };
        let dns = match (&self.dns, &config.node.dns) {
            (Some(d), _) => Some(d.prepare(&config, &files)?),
            (None, Some(_)) => return Err(restart("the dns role")),
            (None, None) => None,
        };
        let keys = match (&self.gossip, &config.node.gossip) {
            (Some(_), Some(_)) => files.keys.take(),
            (Some(_), None) => return Err("the node file no longer configures gossip".into()),
            (None, Some(_)) => return Err(restart("gossip")),
            (None, None) => None,
        };
        if let (Some(role), Some(next)) = (&self.edge, edge) {
            role.commit(next);
        }
        if let (Some(role), Some(next)) = (&self.dns, dns) {
            role.commit(next);
            if let Some(d) = &config.node.dns {
                announce_geoip(
                    &config.node.id,
                    role.tables.load().geoip.as_deref(),
                    d.geoip.as_ref(),
                );
            }
        }
        if let (Some(g), Some(k)) = (&self.gossip, keys) {
            g.set_keys(k);
        }
        self.regions.store(Arc::new(crate::status::RegionPoint::of(
            config.cluster.as_ref(),
        )));
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = config.files();
        Ok(())
    }

    fn files(&self) -> Vec<std::path::PathBuf> {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Polls the configuration's files every `every`; when one changed (and stayed so for one
    /// more poll, so a file being written is not read half-way), reloads.
    async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut seen = stamps(&self.files());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => break,
            }
            let now = stamps(&self.files());
            if now == seen {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => break,
            }
            match self.reload() {
                Ok(()) => tracing::info!("a configuration file changed; reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "a configuration file changed; reload rejected, the previous configuration stays in force")
                }
            }
            seen = stamps(&self.files());
        }
    }
}

/// What an edge has done so far, for a status display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdgeStatus {
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered from cache.
    pub hits: u64,
    /// Utilisation as last published by gossip (0 without gossip).
    pub load: f64,
}

/// A running node: its bound addresses and the handle that stops it.
pub struct Node {
    http_addrs: Vec<SocketAddr>,
    https_addrs: Vec<SocketAddr>,
    h3_addrs: Vec<SocketAddr>,
    reloader: Arc<Reloader>,
    dns_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    gossip: Option<Arc<Gossip>>,
    drain: Arc<watch::Sender<bool>>,
    drain_wait: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
    /// Fired when the node stops waiting for its tasks: the edge's HTTP threads end.
    stopped: CancellationToken,
    /// Told when each HTTP thread has ended.
    threads: Vec<tokio::sync::oneshot::Receiver<()>>,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

impl Node {
    /// Binds every listener of `config` and starts serving. Port 0 picks a free port; the bound
    /// addresses are available from [`Node::http_addrs`] and [`Node::admin_addr`].
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let shutdown = CancellationToken::new();
        let stopped = CancellationToken::new();
        // A start that fails half way stops what it started (listeners, HTTP threads).
        let unstarted = (shutdown.clone().drop_guard(), stopped.clone().drop_guard());
        let mut threads = Vec::new();
        let tracker = TaskTracker::new();
        let node = &config.node;
        let mut files = RoleFiles::read(&config).map_err(StartError::Config)?;
        let mut http_addrs = Vec::new();
        let mut https_addrs = Vec::new();
        let mut h3_addrs = Vec::new();
        let mut edge_state = None;
        let mut edge_role = None;
        let mut grace = Duration::from_secs(10);
        let mut drain_wait = Duration::ZERO;
        if let Some(edge) = &node.edge {
            grace = edge.shutdown_grace;
            drain_wait = edge.drain_wait.unwrap_or_default();
            let sites = Sites::new(&config.sites).map_err(StartError::Site)?;
            let disk = match &edge.cache_disk {
                None => None,
                Some(d) => match Disk::open(&node.id, d).await {
                    Ok(disk) => {
                        tracing::info!(
                            path = %d.path.display(),
                            size = d.size,
                            recovery_ms = disk.recovery.as_millis() as u64,
                            "disk tier open"
                        );
                        Some(disk)
                    }
                    Err(e) => {
                        // The edge still serves, from memory and the origin.
                        tracing::error!(error = %e, "the disk tier could not open; serving memory-only");
                        crate::cache::disk::count_open_error(&node.id);
                        None
                    }
                },
            };
            // QUIC sockets first: a port the kernel picks is what Alt-Svc must name.
            let mut edge = edge.clone();
            let mut udp = Vec::new();
            if let Some(q) = &mut edge.quic {
                for addr in &q.listen {
                    let socket = quic::bind(*addr).map_err(|source| StartError::Bind {
                        addr: *addr,
                        what: "edge.quic.listen",
                        source,
                    })?;
                    let bound = socket.local_addr().map_err(|source| StartError::Bind {
                        addr: *addr,
                        what: "edge.quic.listen",
                        source,
                    })?;
                    h3_addrs.push(bound);
                    udp.push(socket);
                }
                if q.advertise_port == 0 {
                    q.advertise_port = h3_addrs.first().map_or(0, SocketAddr::port);
                }
            }
            let edge = &edge;
            let state = Arc::new(EdgeState::new(
                &node.id,
                edge,
                sites,
                node.log.access_log,
                tracker.clone(),
                disk,
            ));
            if node.gossip.is_some() && state.store.disk().is_some() {
                // Held from before the first accept until `purge::follow` has caught up with
                // the purges made while this edge was down (HTTP threads accept at once; the
                // follower starts later, with gossip).
                state.store.hold_disk(true);
            }
            let limits = Limits::from(edge);
            let certificates = Arc::new(ArcSwap::from_pointee(Certificates::new(
                &config.sites,
                &files.certificates,
                edge.tls_default_site.as_deref(),
            )));
            if (!edge.tls_listen.is_empty() || edge.quic.is_some())
                && certificates.load().is_empty()
            {
                return Err(StartError::Site(
                    "no site has a certificate; the TLS and QUIC listeners need one".into(),
                ));
            }
            let acceptor = tokio_rustls::TlsAcceptor::from(
                tls::server_config(certificates.clone()).map_err(StartError::Site)?,
            );
            let listeners = edge.listen.iter().map(|a| (a, "edge.listen", None)).chain(
                edge.tls_listen
                    .iter()
                    .map(|a| (a, "edge.tls.listen", Some(acceptor.clone()))),
            );
            for (addr, what, tls) in listeners {
                let listener = bind(*addr, what).await?;
                let bound = listener.local_addr().map_err(|source| StartError::Bind {
                    addr: *addr,
                    what,
                    source,
                })?;
                if tls.is_some() {
                    https_addrs.push(bound);
                } else {
                    http_addrs.push(bound);
                }
                if edge.threads == 0 {
                    tracker.spawn(server::serve(
                        listener,
                        state.clone(),
                        limits.clone(),
                        tls,
                        shutdown.clone(),
                    ));
                    continue;
                }
                let started = listener.into_std().and_then(|listener| {
                    server::serve_on_threads(
                        listener,
                        edge.threads,
                        state.clone(),
                        limits.clone(),
                        tls,
                        shutdown.clone(),
                        stopped.clone(),
                    )
                });
                match started {
                    Ok(ended) => threads.extend(ended),
                    Err(source) => {
                        return Err(StartError::Bind {
                            addr: *addr,
                            what,
                            source,
                        });
                    }
                }
            }
            if let Some(q) = &edge.quic {
                let limits = quic::QuicLimits {
                    header_read_timeout: edge.header_read_timeout,
                    max_header_size: edge.max_header_size,
                    max_connections: edge.max_connections,
                    handshakes_before_retry: q.handshakes_before_retry,
                    send_timeout: edge.send_timeout,
                };
                for socket in udp {
                    let endpoint = quic::endpoint(socket, q, certificates.clone())
                        .map_err(StartError::Site)?;
                    tracker.spawn(quic::serve(
                        endpoint,
                        state.clone(),
                        limits.clone(),
                        shutdown.clone(),
                    ));
                }
            }
            edge_role = Some(EdgeRole {
                state: state.clone(),
                certificates,
                tls: !edge.tls_listen.is_empty() || edge.quic.is_some(),
            });
            edge_state = Some(state);
        }
        let mut dns_addrs = Vec::new();
        let mut dns_role = None;
        if let (Some(dns), Some(map)) = (&node.dns, &config.cluster) {
            let geoip = files.geoip.clone();
            announce_geoip(&node.id, geoip.as_deref(), dns.geoip.as_ref());
            let tables = Arc::new(ArcSwap::from_pointee(
                Tables::new(map, geoip).map_err(StartError::Dns)?,
            ));
            let view = Arc::new(ArcSwap::from_pointee(ClusterView::from_map(map)));
            let regions: Vec<String> = map.regions.iter().map(|r| r.name.clone()).collect();
            let metrics = Arc::new(DnsMetrics::new(&node.id, &regions));
            let handler = DnsHandler {
                tables: tables.clone(),
                view: view.clone(),
                metrics: metrics.clone(),
                identity: Arc::new(crate::dns::handler::Identity::new(
                    dns.nsid.as_deref(),
                    dns.rate_limit,
                )),
            };
            dns_addrs = crate::dns::server::start(
                &dns.listen,
                handler,
                dns.tcp_timeout,
                shutdown.clone(),
                &tracker,
            )
            .await
            .map_err(|(addr, source)| StartError::Bind {
                addr,
                what: "dns.listen",
                source,
            })?;
            dns_role = Some(DnsRole {
                tables,
                view,
                metrics,
                map: ArcSwap::from_pointee(map.clone()),
                members: None,
                settled: AtomicBool::new(false),
            });
        }
        let drain = Arc::new(watch::channel(false).0);
        let mut gossip = None;
        let mut peers = None;
        if let Some(g) = &node.gossip {
            let mut roles = Vec::new();
            if node.edge.is_some() {
                roles.push("edge");
            }
            if node.dns.is_some() {
                roles.push("dns");
            }
            let weight = config
                .cluster
                .as_ref()
                .and_then(|m| m.edges.iter().find(|e| e.id == node.id))
                .map_or(1.0, |e| e.capacity);
            let capacity = node.edge.as_ref().map(|e| Capacity {
                requests_per_second: e.capacity_requests_per_second,
                connections: e.capacity_connections,
                egress_per_second: e.capacity_egress_per_second,
            });
            let agent = Gossip::start(
                g,
                SelfInfo {
                    id: node.id.clone(),
                    region: node.region.clone(),
                    roles,
                    addresses: node
                        .edge
                        .as_ref()
                        .map(|e| e.public_addresses.clone())
                        .unwrap_or_default(),
                    weight,
                    capacity,
                    // Peers reach the edge at its first plain HTTP listener, and at its first
                    // TLS one where it has one, on the gossip address's host where it listens
                    // on every address.
                    peer: http_addrs.first().map(|a| reachable(*a, g.advertise)),
                    peer_tls: https_addrs.first().map(|a| reachable(*a, g.advertise)),
                },
                files.keys.take(),
            )
            .await?;
            let p = Arc::new(crate::shield::Peers::new(
                &node.id,
                &node.region,
                node.edge
                    .as_ref()
                    .map_or(Duration::from_secs(1), |e| e.peer_timeout),
                agent.clone(),
                edge_role
                    .as_ref()
                    .map(|r: &EdgeRole| r.certificates.clone()),
            ));
            if let Some(state) = &edge_state {
                let _ = state.peers.set(p.clone());
            }
            peers = Some(p);
            if let (Some(state), Some(capacity)) = (&edge_state, capacity) {
                agent.publish_edge(state.load.clone(), capacity, drain.subscribe());
                tracker.spawn(crate::purge::follow(
                    state.clone(),
                    agent.clone(),
                    g.interval,
                    g.failure_timeout,
                    shutdown.clone(),
                ));
            }
            if let Some(role) = dns_role.as_mut() {
                role.members = Some(agent.subscribe());
            }
            gossip = Some(agent);
        }
        let dns_role = dns_role.map(Arc::new);
        if let (Some(role), Some(agent)) = (&dns_role, &gossip) {
            tracker.spawn(role.clone().follow(agent.settle, shutdown.clone()));
        }
        let regions = Arc::new(ArcSwap::from_pointee(crate::status::RegionPoint::of(
            config.cluster.as_ref(),
        )));
        let mut admin_addr = None;
        if let Some(admin) = &node.admin {
            let listener = bind(admin.listen, "admin.listen").await?;
            admin_addr = listener.local_addr().ok();
            let state = Arc::new(AdminState {
                token: admin.token.clone(),
                edge: edge_state.clone(),
                gossip: gossip.clone(),
                drain: drain.clone(),
                node: node.id.clone(),
                regions: regions.clone(),
                history: Arc::default(),
                peers: peers.clone(),
                acks: Arc::default(),
            });
            tracker.spawn(admin::serve(
                listener,
                state,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        // Addresses as plain text ("127.0.0.1:8080 127.0.0.2:8080", "" for none), so JSON logs
        // carry strings a program can read rather than Rust's debug forms.
        let list = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        tracing::info!(
            node = %node.id,
            region = %node.region,
            http = %list(&http_addrs),
            https = %list(&https_addrs),
            h3 = %list(&h3_addrs),
            dns = %list(&dns_addrs),
            admin = %admin_addr.map(|a| a.to_string()).unwrap_or_default(),
            "node started"
        );
        if !DEMO.load(Ordering::Relaxed) {
            for w in config.warnings() {
                tracing::warn!(file = %w.file.display(), key = %w.key, "{}", w.reason);
            }
        }
        let reloader = Arc::new(Reloader {
            node_file: node.path.clone(),
            edge: edge_role,
            dns: dns_role,
            gossip: gossip.clone(),
            regions,
            reloads: ["ok", "rejected"].map(|result| {
                metrics::counter!("meridian_reloads_total", "node" => node.id.clone(), "result" => result)
            }),
            files: std::sync::Mutex::new(config.files()),
        });
        if let Some(every) = node.watch {
            tracker.spawn(reloader.clone().watch(every, shutdown.clone()));
        }
        let _ = (unstarted.0.disarm(), unstarted.1.disarm());
        Ok(Node {
            http_addrs,
            https_addrs,
            h3_addrs,
            reloader,
            dns_addrs,
            admin_addr,
            gossip,
            drain,
            drain_wait,
            shutdown,
            tracker,
            grace,
            stopped,
            threads,
        })
    }

    /// Addresses of the edge's HTTP listeners, in config order.
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    /// Requests, hits and load of the edge role, if this node runs one.
    pub fn edge_status(&self) -> Option<EdgeStatus> {
        use crate::load::LoadCounters as C;
        let load = &self.reloader.edge.as_ref()?.state.load;
        Some(EdgeStatus {
            requests: load.requests.get(),
            hits: load.hits.get(),
            load: f64::from_bits(C::get(&load.utilisation)),
        })
    }

    /// Addresses of the edge's HTTPS listeners, in config order.
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https_addrs
    }

    /// Addresses of the HTTP/3 (QUIC, UDP) listeners, in config order.
    pub fn h3_addrs(&self) -> &[SocketAddr] {
        &self.h3_addrs
    }

    /// Addresses of the DNS listeners (UDP and TCP on each), in config order.
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        &self.dns_addrs
    }

    /// Reloads what can change without a restart: the origin map and the sites' certificates
    /// (edge), the cluster map and the GeoIP database (DNS), the gossip keyring. The node file
    /// and every file it names are read and validated whole, exactly as `meridian check` does,
    /// and everything is built before anything is swapped: either all of it takes effect (for
    /// new connections and queries; those in flight finish with what they started with) or none
    /// of it, and the error says why. Listeners, cache size and roles need a restart.
    pub fn reload(&self) -> Result<(), String> {
        self.reloader.reload()
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Shuts down in order: announces draining (DNS stops handing this edge out at once), keeps
    /// serving for the drain wait (while resolvers forget it), stops accepting and lets in-flight
    /// requests finish within the grace period, then leaves the cluster. Returns `false` if the
    /// grace period ran out first.
    pub async fn shutdown(mut self) -> bool {
        self.drain.send_replace(true);
        let gossip = self.gossip.take();
        if let Some(g) = &gossip {
            g.publish_draining(true).await;
            tracing::info!("draining announced");
            if !self.drain_wait.is_zero() {
                tracing::info!(wait = ?self.drain_wait, "draining: serving until resolvers let go of this edge");
                tokio::time::sleep(self.drain_wait).await;
            }
        }
        self.shutdown.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_ok();
        // The HTTP threads end now (their tasks are done, or abandoned with the grace period).
        self.stopped.cancel();
        for ended in std::mem::take(&mut self.threads) {
            let _ = ended.await;
        }
        if let Some(disk) = self
            .reloader
            .edge
            .as_ref()
            .and_then(|e| e.state.store.disk())
        {
            // What is queued for the disk is written, so a restart finds it.
            disk.close().await;
        }
        if finished {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(grace = ?self.grace, "grace period over; abandoning unfinished requests");
        }
        if let Some(g) = gossip {
            g.leave().await;
        }
        finished
    }
}

impl Drop for Node {
    /// A node dropped without [`Node::shutdown`] still stops: its listeners and tasks end.
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.stopped.cancel();
        if let Some(g) = &self.gossip {
            g.stop();
        }
    }
}

/// SIGTERM and SIGINT (and SIGHUP, for reloads), caught from the moment this is made: a signal
/// that comes before anyone waits for it is kept, never the default action's kill. Make it
/// before announcing anything a user or a supervisor could answer with a signal.
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
async fn next(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

impl Signals {
    /// Starts catching the signals now.
    pub fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn stop(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = next(&mut self.term) => {}
            _ = next(&mut self.int) => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// The next SIGTERM or SIGINT (`true`), or SIGHUP (`false`).
    pub async fn stop_or_hangup(&mut self) -> bool {
        #[cfg(unix)]
        tokio::select! {
            _ = next(&mut self.term) => true,
            _ = next(&mut self.int) => true,
            _ = next(&mut self.hup) => false,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            true
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}

/// Runs the node of `config` until SIGTERM/SIGINT, then shuts it down gracefully. SIGHUP reloads.
pub async fn run(config: Config) -> Result<(), StartError> {
    // The handlers exist before the node says it started: a SIGTERM that comes at once is a
    // clean stop, not the default action's kill.
    let mut signals = Signals::new();
    let node = Node::start(config).await?;
    while !signals.stop_or_hangup().await {
        match node.reload() {
            Ok(()) => tracing::info!("reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "reload rejected; the previous configuration stays in force")
            }
        }
    }
    tracing::info!("signal received; draining");
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `check` finds in a node file and the files beside it: (file name, key, reason).
    fn problems(node: &str, files: &[(&str, &[u8])]) -> Vec<(String, String, String)> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::write(dir.path().join("node.toml"), node).unwrap();
        match check(&dir.path().join("node.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems
                .into_iter()
                .map(|p| {
                    let name = p.file.strip_prefix(dir.path()).unwrap_or(&p.file);
                    (name.display().to_string(), p.key, p.reason)
                })
                .collect(),
        }
    }

    /// A node with all three roles whose files are `ca.pem` (the site's CA bundle), `g.mmdb`
    /// and `g.key`, beside it.
    const NODE: &str = "id = \"e\"\nregion = \"r\"\norigin_map = \"o.toml\"\ncluster_map = \"c.toml\"\nroles = [\"edge\", \"dns\"]\n[edge]\nlisten = [\"127.0.0.1:0\"]\n[dns]\nlisten = [\"127.0.0.1:0\"]\ngeoip = \"g.mmdb\"\n[gossip]\nlisten = \"127.0.0.1:7946\"\nkey_file = \"g.key\"\n";
    const SITE: &str = "[[site]]\nname = \"s\"\nhosts = [\"s.test\"]\norigins = [\"https://127.0.0.1:1\"]\nca_file = \"ca.pem\"\n";
    const MAP: &str = "[[region]]\nname = \"r\"\nlat = 0.0\nlon = 0.0\n[[edge]]\nid = \"e\"\nregion = \"r\"\naddresses = [\"127.0.0.1\"]\n[[zone]]\napex = \"z.test\"\nnames = [\"www\"]\ndefault_region = \"r\"\n[zone.soa]\nmname = \"ns.z.test\"\nrname = \"h.z.test\"\nserial = 1\n";
    const KEY: &[u8] = b"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n";

    /// The problems `check` finds with `broken` in place of the good file of that name, and
    /// `missing` left out.
    fn with(broken: &[(&str, &[u8])], missing: &[&str]) -> Vec<(String, String, String)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let ca = std::fs::read(root.join("config/local/tls/ca.pem")).unwrap();
        let db = std::fs::read(root.join("geo/test-city.mmdb")).unwrap();
        let good: [(&str, &[u8]); 5] = [
            ("o.toml", SITE.as_bytes()),
            ("c.toml", MAP.as_bytes()),
            ("g.key", KEY),
            ("ca.pem", &ca),
            ("g.mmdb", &db),
        ];
        let files: Vec<(&str, &[u8])> = good
            .iter()
            .filter(|(n, _)| !missing.contains(n) && !broken.iter().any(|(b, _)| b == n))
            .chain(broken)
            .copied()
            .collect();
        problems(NODE, &files)
    }

    #[test]
    fn the_roles_files_are_checked_each_problem_named_by_file_and_key() {
        assert_eq!(with(&[], &[]), []);
        // Each role's file, broken alone, and named: (file, content, where, key, why).
        let cases: [(&str, &[u8], &str, &str, &str); 3] = [
            (
                "g.key",
                b"c2hvcnQ=\n",
                "node.toml",
                "gossip.key_file",
                "g.key: line 1",
            ),
            (
                "ca.pem",
                b"not a PEM\n",
                "o.toml",
                "site[0].ca_file",
                "ca.pem holds no",
            ),
            (
                "g.mmdb",
                b"not a database",
                "node.toml",
                "dns.geoip",
                "g.mmdb",
            ),
        ];
        for (name, text, file, key, why) in cases {
            let p = with(&[(name, text)], &[]);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!((p[0].0.as_str(), p[0].1.as_str()), (file, key), "{p:?}");
            assert!(p[0].2.contains(why), "{p:?}");
        }
        // All missing at once: every one reported, not only the first.
        let p = with(&[], &["g.key", "ca.pem", "g.mmdb"]);
        let keys: Vec<_> = p.iter().map(|(f, k, _)| (f.as_str(), k.as_str())).collect();
        assert_eq!(
            keys,
            [
                ("o.toml", "site[0].ca_file"),
                ("node.toml", "dns.geoip"),
                ("node.toml", "gossip.key_file")
            ],
            "{p:?}"
        );
        assert!(
            p.iter()
                .all(|(_, _, why)| why.contains("cannot read") || why.contains("No such file")),
            "{p:?}"
        );
    }
}
