//! Composition root: binds the listeners, builds the shared state, spawns the roles, and shuts
//! them down in order.
//!
//! Receives a validated [`Config`]; hands each server a bound listener, its state and the shutdown
//! token. Shutdown: stop accepting, let in-flight requests finish within the grace period, then
//! return (every spawned task is tracked).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::dns::handler::{DnsHandler, Tables};
use crate::dns::metrics::DnsMetrics;
use crate::geoip::GeoIp;
use crate::http::handler::{EdgeState, Sites};
use crate::http::server::{self, Limits};
use crate::model::ClusterView;

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
    /// A site could not be set up (for example its TLS roots).
    #[error("{0}")]
    Site(String),
    /// The DNS role could not be set up.
    #[error("{0}")]
    Dns(String),
}

/// The DNS role's reloadable state.
pub(crate) struct DnsRole {
    node_file: std::path::PathBuf,
    tables: Arc<arc_swap::ArcSwap<Tables>>,
    view: Arc<arc_swap::ArcSwap<ClusterView>>,
    metrics: Arc<DnsMetrics>,
}

impl DnsRole {
    /// Re-reads the node file's cluster map and GeoIP database; swaps them in whole, or keeps the
    /// old ones and returns why not.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let config = crate::config::load(&self.node_file).map_err(|e| e.to_string())?;
        let (Some(map), Some(dns)) = (config.cluster.as_ref(), config.node.dns.as_ref()) else {
            return Err("the node file no longer configures the dns role".into());
        };
        let geoip = open_geoip(dns)?;
        let tables = Tables::new(map, geoip)?;
        self.metrics.set_regions(
            &map.regions
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>(),
        );
        self.tables.store(Arc::new(tables));
        self.view.store(Arc::new(ClusterView::from_map(map)));
        Ok(())
    }
}

fn open_geoip(dns: &crate::config::DnsConfig) -> Result<Option<Arc<GeoIp>>, String> {
    dns.geoip
        .as_deref()
        .map(|p| GeoIp::open(p).map(Arc::new).map_err(|e| e.to_string()))
        .transpose()
}

/// A running node: its bound addresses and the handle that stops it.
pub struct Node {
    http_addrs: Vec<SocketAddr>,
    dns_addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    dns: Option<Arc<DnsRole>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
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
        let tracker = TaskTracker::new();
        let node = &config.node;
        let mut http_addrs = Vec::new();
        let mut edge_state = None;
        let mut grace = Duration::from_secs(10);
        if let Some(edge) = &node.edge {
            grace = edge.shutdown_grace;
            let sites = Sites::new(&config.sites).map_err(StartError::Site)?;
            let state = Arc::new(EdgeState::new(
                &node.id,
                edge,
                sites,
                node.log.access_log,
                tracker.clone(),
            ));
            let limits = Limits::from(edge);
            for addr in &edge.listen {
                let listener = bind(*addr, "edge.listen").await?;
                http_addrs.push(listener.local_addr().map_err(|source| StartError::Bind {
                    addr: *addr,
                    what: "edge.listen",
                    source,
                })?);
                tracker.spawn(server::serve(
                    listener,
                    state.clone(),
                    limits.clone(),
                    shutdown.clone(),
                ));
            }
            edge_state = Some(state);
        }
        let mut dns_addrs = Vec::new();
        let mut dns_role = None;
        if let (Some(dns), Some(map)) = (&node.dns, &config.cluster) {
            let geoip = open_geoip(dns).map_err(StartError::Dns)?;
            let tables = Arc::new(arc_swap::ArcSwap::from_pointee(
                Tables::new(map, geoip).map_err(StartError::Dns)?,
            ));
            let view = Arc::new(arc_swap::ArcSwap::from_pointee(ClusterView::from_map(map)));
            let regions: Vec<String> = map.regions.iter().map(|r| r.name.clone()).collect();
            let metrics = Arc::new(DnsMetrics::new(&node.id, &regions));
            let handler = DnsHandler {
                tables: tables.clone(),
                view: view.clone(),
                metrics: metrics.clone(),
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
            dns_role = Some(Arc::new(DnsRole {
                node_file: node.path.clone(),
                tables,
                view,
                metrics,
            }));
        }
        let mut admin_addr = None;
        if let Some(admin) = &node.admin {
            let listener = bind(admin.listen, "admin.listen").await?;
            admin_addr = listener.local_addr().ok();
            let state = Arc::new(AdminState {
                token: admin.token.clone(),
                edge: edge_state.clone(),
                draining: AtomicBool::new(false),
            });
            tracker.spawn(admin::serve(
                listener,
                state,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        tracing::info!(node = %node.id, region = %node.region, http = ?http_addrs, dns = ?dns_addrs, admin = ?admin_addr, "node started");
        Ok(Node {
            http_addrs,
            dns_addrs,
            admin_addr,
            dns: dns_role,
            shutdown,
            tracker,
            grace,
        })
    }

    /// Addresses of the edge's HTTP listeners, in config order.
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.http_addrs
    }

    /// Addresses of the DNS listeners (UDP and TCP on each), in config order.
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        &self.dns_addrs
    }

    /// Reloads what can change without a restart (the DNS role's cluster map and GeoIP
    /// database): validated whole and swapped atomically, or rejected with the old state kept.
    pub fn reload(&self) -> Result<(), String> {
        match &self.dns {
            Some(d) => d.reload(),
            None => Ok(()),
        }
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, and returns.
    /// Returns `false` if the grace period ran out first.
    pub async fn shutdown(self) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_ok();
        if finished {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(grace = ?self.grace, "grace period over; abandoning unfinished requests");
        }
        finished
    }
}

impl Drop for Node {
    /// A node dropped without [`Node::shutdown`] still stops: its listeners and tasks end.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the node of `config` until SIGTERM/SIGINT, then shuts it down gracefully. SIGHUP reloads.
pub async fn run(config: Config) -> Result<(), StartError> {
    let node = Node::start(config).await?;
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).ok();
        let stop = terminated();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    match node.reload() {
                        Ok(()) => tracing::info!("reloaded"),
                        Err(e) => tracing::error!(error = %e, "reload rejected; the previous configuration stays in force"),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    terminated().await;
    tracing::info!("signal received; draining");
    node.shutdown().await;
    Ok(())
}
