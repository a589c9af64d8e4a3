//! Meridian: a geo-aware edge CDN node.
//!
//! # Layout
//! One binary plays two roles that a deployment mixes per machine: the **edge** role, an RFC 9111
//! caching reverse proxy, and the **dns** role, an authoritative geo DNS front end. They never
//! import each other; they meet only in `model` (the cluster view) and `config`.
//!
//! ```text
//! main.rs        CLI → config::load → telemetry::init_logging → app::run (`check`: app::check)
//! app.rs         composition root: has each role read and check its files (certificates, CA
//!                bundles, GeoIP, gossip key), binds, builds shared state, spawns roles, ordered
//!                shutdown
//! config/        mod.rs (load(), problems with file and key, checks across files), node.rs,
//!                origins.rs, cluster.rs (one per file read: serde structs and validation; no
//!                role's types: the files the roles read are paths here)
//! units.rs       "4GiB", "30s"
//! telemetry.rs   tracing subscriber, Prometheus recorder, the edge's metric handles
//! load.rs        counters the HTTP path feeds (requests, hits, connections, bytes; a part per thread); LoadMeter (EWMA utilisation)
//! fuzz.rs        entry points of the fuzz targets in fuzz/ (framing, cache-control, range, policy)
//! memory.rs      gives memory the store released back to the system (malloc_trim on glibc)
//! http/          server.rs (accept, limits, hyper conn), handler.rs (the one orchestrator),
//!                response.rs (Cache-Status, conditionals, error → status), heads.rs (header
//!                maps kept per thread for hits), range.rs, headers.rs, framing.rs, coalesce.rs,
//!                body.rs, quic.rs (HTTP/3: quinn + h3 in front of the same handler), tls.rs
//! cache/         key.rs, policy.rs (pure RFC 9111/5861/9213 decisions), entry.rs,
//!                store.rs (the only moka import), collapse.rs
//! origin.rs      upstream client: pools, TLS, timeouts, failover; knows nothing of caching
//! share.rs       per-client shares of a bounded resource (origin slots, disk read room)
//! shield.rs      tiered caching: a key's owner among the region's edges (rendezvous), the signed
//!                peer hop (Meridian-Peer), the peer client with its timeout and counters
//! purge.rs       cluster purges: parse, apply on an edge, follow what gossip brings
//! model.rs       ClusterView: regions and edges with health, draining, load (the roles' meeting point);
//!                Member (a node as gossip reports it) and ClusterView::from_members
//! gossip/        mod.rs (chitchat agent: publish own state, poll members, leave), transport.rs
//!                (AES-256-GCM keyring around every datagram)
//! geoip.rs       MaxMind City reader (read into memory, verified whole): locate(ip) → coordinates, country, network
//! metro.rs       metro codes (FRA, IAD, NRT, ...) → coordinates, for `location = "FRA"`
//! steering.rs    pure: locate (coverage → GeoIP → country → default), choose (rank, spill, pick), ECS scope
//! dns/           handler.rs (the one hickory RequestHandler), fast.rs (the common UDP query from its
//!                bytes), server.rs (UDP workers, TCP), batch.rs (recvmmsg/sendmmsg), metrics.rs
//! route.rs       `meridian route`: a decision explained
//! geobuild.rs    `meridian geo build`: CSV → MaxMind City database
//! admin.rs       /healthz /metrics /cluster /purge /drain /owner, the status page
//! demo.rs        `meridian demo`: sample origin + the edges of config/local/, embedded
//! h3client.rs    a small HTTP/3 client (tests, benches, examples/h3get.rs, the demo's h3 line)
//! ```
//!
//! # HTTP data flow
//! accept → site by Host (unknown: 421) → cache key → store lookup → fresh hit |
//! stale (stale-while-revalidate, or conditional revalidation) | miss → one collapsed origin
//! fetch per key (to the key's owner among the peers first where the site shields, see `shield`)
//! → storability decision → store → respond with `Age` and `Cache-Status`.
//!
//! # DNS data flow
//! datagram (one blocking thread per `SO_REUSEPORT` socket, batches by recvmmsg/sendmmsg) →
//! (the common A/AAAA query: `dns::fast`, written directly, deciding through the thread's
//! `dns::memo` of places and rankings) or hickory `Request` → zone (outside every zone: REFUSED)
//! → client subnet (ECS, else the source) → `steering::locate` (coverage trie, GeoIP) →
//! `steering::choose` (rank, availability, pick) on one `ClusterView` snapshot → answer with TTL
//! and the ECS scope that is true for it.
//!
//! # Cluster data flow
//! edge counters → LoadMeter (every 250 ms) → chitchat key `load` → gossip rounds → every node's
//! poller → `Member` list (watch channel) → DNS: `ClusterView::from_members` → ArcSwap → queries.
//!
//! Decisions are pure functions (`cache::policy`, `cache::key`); I/O sits around them.

#![warn(unreachable_pub, missing_docs, unused_qualifications)]

pub mod app;
#[doc(hidden)]
pub mod bench;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzz;
pub mod telemetry;

pub mod admin;
pub(crate) mod cache;
pub(crate) mod coverage;
pub(crate) mod dns;
pub mod geobuild;
pub mod geoip;
pub(crate) mod gossip;
pub(crate) mod h1;
pub mod h3client;
pub(crate) mod http;
pub mod kube;
pub(crate) mod load;
#[doc(hidden)]
pub mod memory;
pub mod metro;
pub(crate) mod model;
pub(crate) mod origin;
pub(crate) mod pool;
pub(crate) mod purge;
pub(crate) mod reuse;
pub mod route;
pub(crate) mod share;
pub(crate) mod shield;
pub(crate) mod status;
pub(crate) mod steering;
pub mod top;
pub(crate) mod units;
