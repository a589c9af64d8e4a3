//! The node file: identity, roles, logging, and the settings of the edge, DNS, admin and gossip
//! parts of a node, validated with every problem named.

use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct RawNode {
    id: String,
    region: String,
    #[serde(default = "default_roles")]
    roles: Vec<String>,
    pub(super) origin_map: Option<String>,
    pub(super) cluster_map: Option<String>,
    #[serde(default)]
    log: RawLog,
    edge: Option<RawEdge>,
    dns: Option<RawDns>,
    admin: Option<RawAdmin>,
    gossip: Option<RawGossip>,
    #[serde(default)]
    reload: RawReload,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawReload {
    watch: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawGossip {
    listen: String,
    advertise: Option<String>,
    #[serde(default)]
    seeds: Vec<String>,
    cluster: Option<String>,
    key_file: Option<String>,
    #[serde(default)]
    insecure: bool,
    interval: Option<String>,
    failure_timeout: Option<String>,
    purge_retention: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawDns {
    listen: Vec<String>,
    geoip: Option<String>,
    tcp_timeout: Option<String>,
    nsid: Option<String>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRateLimit {
    responses_per_second: u32,
    slip: Option<u32>,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
}

pub(super) fn default_roles() -> Vec<String> {
    vec!["edge".to_string()]
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawLog {
    format: Option<String>,
    level: Option<String>,
    access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawEdge {
    listen: Vec<String>,
    cache_memory: Option<String>,
    max_object_size: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    send_timeout: Option<String>,
    client_body_timeout: Option<String>,
    max_header_size: Option<String>,
    max_connections: Option<usize>,
    threads: Option<usize>,
    shutdown_grace: Option<String>,
    drain_wait: Option<String>,
    peer_timeout: Option<String>,
    tls: Option<RawEdgeTls>,
    quic: Option<RawEdgeQuic>,
    cache_disk: Option<RawDisk>,
    public_addresses: Option<Vec<String>>,
    #[serde(default)]
    capacity: RawCapacity,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawDisk {
    path: String,
    size: String,
    read_memory: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawEdgeTls {
    listen: Vec<String>,
    default_site: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawEdgeQuic {
    listen: Vec<String>,
    advertise_port: Option<u16>,
    alt_svc_max_age: Option<String>,
    max_concurrent_streams: Option<u32>,
    idle_timeout: Option<String>,
    max_udp_payload: Option<u16>,
    handshakes_before_retry: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawCapacity {
    requests_per_second: Option<f64>,
    connections: Option<f64>,
    egress_per_second: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawAdmin {
    listen: String,
    token_file: Option<String>,
}

/// Whether a filter is levels and `target=level` pairs only: what `log.level` and `RUST_LOG`
/// may hold here. Span and field filters (`[span{field=value}]`) are refused: the parser panics
/// on some non-ASCII text and builds field patterns into DFAs that can take minutes.
pub(crate) fn plain_filter(filter: &str) -> bool {
    filter.len() <= 1024
        && filter
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:.-=,".contains(&b))
}

/// Settings of the DNS role.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Addresses served over both UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// A MaxMind-format City database (read and verified by the DNS role).
    pub geoip: Option<PathBuf>,
    /// Idle time allowed on a TCP connection.
    pub tcp_timeout: Duration,
    /// What this node says it is when a query asks (RFC 5001 NSID); `None` says nothing.
    pub nsid: Option<String>,
    /// Response-rate limiting of UDP answers per client prefix; `None`: off.
    pub rate_limit: Option<RateLimitConfig>,
}

/// Response-rate limiting (`dns.rate_limit`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitConfig {
    /// UDP answers per second each client prefix gets (and as many at once).
    pub responses_per_second: u32,
    /// Every `slip`-th answer past the limit goes out truncated (the client retries over
    /// TCP); the others are dropped. 0 drops them all.
    pub slip: u32,
    /// Prefix lengths that group client addresses.
    pub ipv4_prefix: u8,
    /// See `ipv4_prefix`.
    pub ipv6_prefix: u8,
}

/// Settings of the node file.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node file, as given.
    pub path: PathBuf,
    /// Node id, unique in the cluster.
    pub id: String,
    /// Region this node is in.
    pub region: String,
    /// Logging.
    pub log: LogConfig,
    /// The edge role, when enabled.
    pub edge: Option<EdgeConfig>,
    /// The DNS role, when enabled.
    pub dns: Option<DnsConfig>,
    /// The admin listener, when configured.
    pub admin: Option<AdminConfig>,
    /// Cluster membership, when configured.
    pub gossip: Option<GossipConfig>,
    /// Poll the configuration's files this often and reload when one changes (off when `None`).
    pub watch: Option<Duration>,
}

/// Cluster membership by gossip.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// UDP address the gossip agent binds.
    pub listen: SocketAddr,
    /// Address peers reach this node at (`listen` unless it is a wildcard).
    pub advertise: SocketAddr,
    /// `host:port` of nodes to join through (names are resolved, and again every minute).
    pub seeds: Vec<String>,
    /// Cluster name: nodes of other clusters are not heard (it is authenticated in every packet).
    pub cluster: String,
    /// The key file (one base64 AES-256 key per line, the sealing key first); `None` only with
    /// `insecure = true`.
    pub key_file: Option<PathBuf>,
    /// Time between gossip rounds.
    pub interval: Duration,
    /// A node not heard from for about this long is declared dead (sooner in small clusters,
    /// where its news arrives more often than once a round).
    pub failure_timeout: Duration,
    /// How long a purge issued by this node stays in the gossip state (edges that come back
    /// within it apply it; after it, what it purged has expired anyway, if no TTL is longer).
    pub purge_retention: Duration,
}

/// Log format and level.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Emit JSON lines instead of readable text.
    pub json: bool,
    /// A tracing filter directive, `info` by default.
    pub level: String,
    /// Log one line per HTTP request.
    pub access_log: bool,
}

/// Settings of the edge role.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Plain HTTP listeners.
    pub listen: Vec<SocketAddr>,
    /// HTTPS listeners.
    pub tls_listen: Vec<SocketAddr>,
    /// The site whose certificate answers clients without SNI (or with a name no site serves);
    /// without one, their handshakes are refused.
    pub tls_default_site: Option<String>,
    /// HTTP/3 over QUIC, with the certificates of the TLS listeners.
    pub quic: Option<QuicConfig>,
    /// Bytes of response bodies and headers the cache may hold.
    pub cache_memory: u64,
    /// Largest object the cache stores; larger ones stream through.
    pub max_object_size: u64,
    /// The disk tier, if any: objects stored in memory are also written here, and survive a
    /// restart.
    pub cache_disk: Option<DiskConfig>,
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A connection found idle that still moves no byte for this long (a client that stopped
    /// reading its answer) is dropped.
    pub send_timeout: Duration,
    /// Longest wait for the next byte of a request body; past it the client gets 408.
    pub client_body_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    pub max_header_size: usize,
    /// Open client connections at most per listener; further connections wait to be accepted.
    pub max_connections: usize,
    /// Threads that accept and serve the HTTP and HTTPS listeners, each with a runtime of its
    /// own; 0 serves them on the shared runtime. Unset: one per core where glibc's per-thread
    /// caches are off in this process, which they need to hold the memory bound, else 0
    /// (`memory::default_http_threads`).
    pub threads: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// On shutdown, time between announcing draining and closing the listeners, so resolvers
    /// that cached this edge stop sending users (at most the DNS TTL; the TTL by default).
    pub drain_wait: Option<Duration>,
    /// On a shielded miss, how long a peer may take to send a response head before it must
    /// answer a ping within as long again; one that fails it is passed over for the next owner
    /// or the origin.
    pub peer_timeout: Duration,
    /// Addresses users reach this edge at, as published by gossip (by default the cluster
    /// map's entry for this node id, else the listen addresses).
    pub public_addresses: Vec<std::net::IpAddr>,
    /// Requests per second the edge is built for (utilisation 1.0).
    pub capacity_requests_per_second: f64,
    /// Open client connections the edge is built for.
    pub capacity_connections: f64,
    /// Egress bytes per second the edge is built for.
    pub capacity_egress_per_second: f64,
}

/// Default `edge.quic.handshakes_before_retry`: more handshakes than this at once (a flood of
/// Initial packets, perhaps from spoofed addresses) and new clients prove their address first.
const HANDSHAKES_BEFORE_RETRY: usize = 64;

/// HTTP/3 over QUIC (`edge.quic`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// UDP addresses.
    pub listen: Vec<SocketAddr>,
    /// The port `Alt-Svc` names (by default the first listen address's: set it when a load
    /// balancer or NAT maps another port to it).
    pub advertise_port: u16,
    /// How long clients may remember the `Alt-Svc` advertisement; zero advertises nothing.
    pub alt_svc_max_age: Duration,
    /// Requests a client may have open on one connection.
    pub max_concurrent_streams: u32,
    /// A connection with no packet for this long is closed (by default `edge.idle_timeout`).
    pub idle_timeout: Duration,
    /// Largest UDP payload this edge accepts (QUIC's own minimum is 1200).
    pub max_udp_payload: u16,
    /// Handshakes in progress past which a client whose address is not validated yet is sent
    /// a Retry first (0: every such client).
    pub handshakes_before_retry: usize,
}

impl QuicConfig {
    /// The `Alt-Svc` field that advertises HTTP/3 over TLS responses, if any.
    pub(crate) fn alt_svc(&self) -> Option<http::HeaderValue> {
        if self.alt_svc_max_age.is_zero() {
            return None;
        }
        http::HeaderValue::from_str(&format!(
            "h3=\":{}\"; ma={}",
            self.advertise_port,
            self.alt_svc_max_age.as_secs()
        ))
        .ok()
    }
}

/// The disk tier of the cache (`edge.cache_disk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Directory of the store's files (created if missing).
    pub path: PathBuf,
    /// Bytes of disk the store takes (reserved at start where the filesystem allows).
    pub size: u64,
    /// Bytes of chunks read from disk that responses may hold at once (a chunk is held
    /// until it is written to its client); a read past it waits for room.
    pub read_memory: u64,
}

/// `edge.cache_disk.read_memory` unless set: 64 chunks.
pub const DEFAULT_DISK_READ_MEMORY: u64 = 64 << 20;

/// The least `read_memory` may be: two chunks, so that one response can always go on.
const MIN_DISK_READ_MEMORY: u64 = 2 << 20;

/// The smallest disk tier: a few of the store's blocks.
pub(crate) const MIN_DISK_SIZE: u64 = 64 << 20;

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address of the admin API.
    pub listen: SocketAddr,
    /// Bearer token for mutations, read from `token_file`. Without one, mutations are refused.
    pub token: Option<String>,
}

pub(super) fn validate_node(path: &Path, raw: &RawNode, problems: &mut Vec<Problem>) -> NodeConfig {
    let mut r = Report {
        file: path,
        problems,
    };
    // Peers take only printable names of at most 64 bytes from gossip (see gossip's
    // `select_members`): a node whose id or region is otherwise would be ignored by all.
    for (key, value) in [("id", &raw.id), ("region", &raw.region)] {
        if value.trim().is_empty() {
            r.add(key, "must not be empty");
        } else if value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            r.add(
                key,
                format!("{value:?}: at most 64 printable characters, without spaces"),
            );
        }
    }
    let mut edge_role = false;
    let mut dns_role = false;
    for (i, role) in raw.roles.iter().enumerate() {
        match role.as_str() {
            "edge" => edge_role = true,
            "dns" => dns_role = true,
            other => r.add(
                format!("roles[{i}]"),
                format!("unknown role {other:?} (expected \"edge\" or \"dns\")"),
            ),
        }
    }
    if raw.roles.is_empty() {
        r.add("roles", "must name at least one role");
    }

    let log = LogConfig {
        json: match raw.log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                r.add(
                    "log.format",
                    format!("unknown format {other:?} (expected \"text\" or \"json\")"),
                );
                false
            }
        },
        level: raw.log.level.clone().unwrap_or_else(|| "info".to_string()),
        access_log: raw.log.access_log.unwrap_or(true),
    };
    // Hazard: tracing-subscriber's filter parser panics on some non-ASCII text (it slices
    // inside a character), and compiles span field values as regular expressions into DFAs
    // that can take minutes to build (both found by the config fuzz target). Only levels and
    // `target=level` lists reach it.
    if !plain_filter(&log.level) {
        r.add(
            "log.level",
            format!(
                "{:?} is not a log filter this node takes: a level, or `target=level` pairs separated by commas (letters, digits, _ : . - = ,)",
                log.level
            ),
        );
    } else if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
        r.add(
            "log.level",
            format!("{:?} is not a log filter: {e}", log.level),
        );
    }

    let edge = match (&raw.edge, edge_role) {
        (None, true) => {
            r.add("edge", "the edge role needs an [edge] section");
            None
        }
        (Some(_), false) => {
            r.add("edge", "an [edge] section without the edge role in `roles`");
            None
        }
        (None, false) => None,
        (Some(e), true) => Some(validate_edge(&mut r, e)),
    };

    let dns = match (&raw.dns, dns_role) {
        (None, true) => {
            r.add("dns", "the dns role needs a [dns] section");
            None
        }
        (Some(_), false) => {
            r.add("dns", "a [dns] section without the dns role in `roles`");
            None
        }
        (None, false) => None,
        (Some(d), true) => {
            if d.listen.is_empty() {
                r.add("dns.listen", "must name at least one address");
            }
            let listen = d
                .listen
                .iter()
                .enumerate()
                .filter_map(|(i, a)| r.addr(&format!("dns.listen[{i}]"), a))
                .collect();
            let geoip = d.geoip.as_ref().map(|g| resolve(path, g));
            let nsid = match d.nsid.as_deref() {
                None => Some(raw.id.clone()),
                Some("") => None,
                Some(n) if n.len() > 255 || !n.bytes().all(|b| b.is_ascii_graphic()) => {
                    r.add(
                        "dns.nsid",
                        "at most 255 printable characters without spaces (\"\" turns NSID off)",
                    );
                    None
                }
                Some(n) => Some(n.to_string()),
            };
            let rate_limit = d.rate_limit.as_ref().map(|l| {
                if l.responses_per_second == 0 {
                    r.add("dns.rate_limit.responses_per_second", "must be at least 1");
                }
                let v4 = l.ipv4_prefix.unwrap_or(24);
                if v4 > 32 {
                    r.add("dns.rate_limit.ipv4_prefix", "at most 32");
                }
                let v6 = l.ipv6_prefix.unwrap_or(56);
                if v6 > 128 {
                    r.add("dns.rate_limit.ipv6_prefix", "at most 128");
                }
                RateLimitConfig {
                    responses_per_second: l.responses_per_second.max(1),
                    slip: l.slip.unwrap_or(2),
                    ipv4_prefix: v4.min(32),
                    ipv6_prefix: v6.min(128),
                }
            });
            Some(DnsConfig {
                listen,
                geoip,
                tcp_timeout: r.positive_duration(
                    "dns.tcp_timeout",
                    &d.tcp_timeout,
                    Duration::from_secs(10),
                ),
                nsid,
                rate_limit,
            })
        }
    };

    let admin = raw.admin.as_ref().map(|a| {
        let listen = r
            .addr("admin.listen", &a.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let token = a.token_file.as_ref().and_then(|name| {
            let token_path = resolve(path, name);
            match read_limited(&token_path) {
                Ok(t) if t.trim().is_empty() => {
                    r.add(
                        "admin.token_file",
                        format!("{} is empty", token_path.display()),
                    );
                    None
                }
                // A short token can be guessed over the network; `openssl rand -hex 32` makes one.
                Ok(t) if t.trim().len() < MIN_TOKEN_LEN => {
                    r.add(
                        "admin.token_file",
                        format!(
                            "{}: the token has {} bytes; at least {MIN_TOKEN_LEN} are needed (openssl rand -hex 32)",
                            token_path.display(),
                            t.trim().len()
                        ),
                    );
                    None
                }
                Ok(t) => Some(t.trim().to_string()),
                Err(reason) => {
                    r.add(
                        "admin.token_file",
                        format!(
                            "cannot read {}: {}",
                            token_path.display(),
                            reason.trim_start_matches("cannot read: ")
                        ),
                    );
                    None
                }
            }
        });
        AdminConfig { listen, token }
    });

    let gossip = raw.gossip.as_ref().map(|g| validate_gossip(&mut r, g));

    NodeConfig {
        path: path.to_path_buf(),
        id: raw.id.clone(),
        region: raw.region.clone(),
        log,
        edge,
        dns,
        admin,
        gossip,
        watch: raw.reload.watch.as_ref().map(|_| {
            r.positive_duration("reload.watch", &raw.reload.watch, Duration::from_secs(2))
        }),
    }
}

pub(super) fn validate_gossip(r: &mut Report<'_>, g: &RawGossip) -> GossipConfig {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 7946));
    let listen = r.addr("gossip.listen", &g.listen).unwrap_or(fallback);
    let advertise = match &g.advertise {
        Some(a) => r.addr("gossip.advertise", a).unwrap_or(listen),
        None => listen,
    };
    if advertise.ip().is_unspecified() {
        r.add(
            "gossip.advertise",
            format!(
                "peers cannot reach {advertise}: name the address they should use when gossip.listen is a wildcard"
            ),
        );
    }
    if advertise.port() == 0 {
        r.add(
            "gossip.advertise",
            "needs a port other than 0: peers and seeds name it",
        );
    }
    for (i, seed) in g.seeds.iter().enumerate() {
        let ok = seed.parse::<SocketAddr>().is_ok()
            || seed
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            r.add(
                format!("gossip.seeds[{i}]"),
                format!(
                    "{seed:?} is not host:port (e.g. \"10.0.0.1:7946\" or \"seeds.example:7946\")"
                ),
            );
        }
    }
    let cluster = g.cluster.clone().unwrap_or_else(|| "meridian".to_string());
    if cluster.trim().is_empty() {
        r.add("gossip.cluster", "must not be empty");
    }
    let key_file = match (&g.key_file, g.insecure) {
        (Some(name), false) => {
            let key_path = resolve(r.file, name);
            Some(key_path)
        }
        (Some(_), true) => {
            r.add(
                "gossip.insecure",
                "is true but gossip.key_file is set too: choose one",
            );
            None
        }
        (None, true) => None,
        (None, false) => {
            r.add(
                "gossip.key_file",
                "gossip is encrypted and authenticated with a key: name a key file (one base64 32-byte key per line, `openssl rand -base64 32`), or say `insecure = true` to gossip in clear",
            );
            None
        }
    };
    let interval = r.positive_duration("gossip.interval", &g.interval, Duration::from_millis(250));
    let failure_timeout = r.positive_duration(
        "gossip.failure_timeout",
        &g.failure_timeout,
        Duration::from_secs(2),
    );
    if failure_timeout < interval * 4 {
        r.add(
            "gossip.failure_timeout",
            format!(
                "{failure_timeout:?} is under four gossip rounds ({interval:?} each): healthy nodes would flap"
            ),
        );
    }
    let purge_retention = r.positive_duration(
        "gossip.purge_retention",
        &g.purge_retention,
        Duration::from_secs(24 * 3600),
    );
    GossipConfig {
        listen,
        advertise,
        seeds: g.seeds.clone(),
        cluster,
        key_file,
        interval,
        failure_timeout,
        purge_retention,
    }
}

pub(super) fn default_cache_memory() -> u64 {
    256 << 20
}
pub(super) fn default_max_object_size() -> u64 {
    16 << 20
}
pub(super) fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_max_header_size() -> u64 {
    16 << 10
}
pub(super) fn default_max_connections() -> usize {
    10_000
}
pub(super) fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_client_body_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The disk tier's settings: a directory that is (or can be made) writable, and a size the
/// filesystem can hold.
fn validate_disk(r: &mut Report<'_>, d: &RawDisk) -> DiskConfig {
    let path = resolve(r.file, &d.path);
    let size = r.size("edge.cache_disk.size", &Some(d.size.clone()), 0);
    if size < MIN_DISK_SIZE {
        r.add(
            "edge.cache_disk.size",
            format!("{size} bytes is too small: the disk tier takes at least 64MiB"),
        );
    }
    match nearest_existing(&path) {
        Some(dir) if !dir.is_dir() => r.add(
            "edge.cache_disk.path",
            format!("{} is not a directory", dir.display()),
        ),
        Some(dir) => match fs_space(dir) {
            Err(e) => r.add("edge.cache_disk.path", format!("{}: {e}", dir.display())),
            Ok((total, _)) if size > total => r.add(
                "edge.cache_disk.size",
                format!(
                    "{size} bytes is more than the filesystem of {} holds ({total} bytes)",
                    dir.display()
                ),
            ),
            Ok(_) => {
                if !writable(dir) {
                    r.add(
                        "edge.cache_disk.path",
                        format!("{} is not writable by this user", dir.display()),
                    );
                }
            }
        },
        None => r.add(
            "edge.cache_disk.path",
            format!("{}: no part of the path exists", path.display()),
        ),
    }
    let read_memory = r.size(
        "edge.cache_disk.read_memory",
        &d.read_memory,
        DEFAULT_DISK_READ_MEMORY,
    );
    if read_memory < MIN_DISK_READ_MEMORY {
        r.add(
            "edge.cache_disk.read_memory",
            format!("{read_memory} bytes is too small: at least 2MiB (two of the disk tier's 1 MiB chunks)"),
        );
    }
    DiskConfig {
        path,
        size,
        read_memory: read_memory.max(MIN_DISK_READ_MEMORY),
    }
}

/// `path`, or the nearest directory above it that exists (where it will be made).
pub(crate) fn nearest_existing(path: &Path) -> Option<&Path> {
    path.ancestors()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .find(|p| p.exists())
}

/// (total, available) bytes of the filesystem holding `dir`.
pub(crate) fn fs_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the path holds a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((
        (st.f_blocks as u64).saturating_mul(frsize),
        (st.f_bavail as u64).saturating_mul(frsize),
    ))
}

/// Whether this process may create files in `dir`.
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn validate_quic(r: &mut Report<'_>, q: &RawEdgeQuic, idle: Duration) -> QuicConfig {
    let listen: Vec<SocketAddr> = q
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| r.addr(&format!("edge.quic.listen[{i}]"), a))
        .collect();
    if q.listen.is_empty() {
        r.add("edge.quic.listen", "must name at least one UDP address");
    }
    let advertise_port = match (q.advertise_port, listen.first()) {
        (Some(0), _) => {
            r.add("edge.quic.advertise_port", "must not be 0");
            0
        }
        (Some(p), _) => p,
        (None, Some(a)) if a.port() == 0 => {
            // A port the kernel picks (tests) is only known once bound; the server fills it in.
            0
        }
        (None, Some(a)) => a.port(),
        (None, None) => 0,
    };
    let max_concurrent_streams = q.max_concurrent_streams.unwrap_or(100);
    if max_concurrent_streams == 0 {
        r.add(
            "edge.quic.max_concurrent_streams",
            "must be greater than zero",
        );
    }
    let max_udp_payload = q.max_udp_payload.unwrap_or(1452);
    if !(1200..=65527).contains(&max_udp_payload) {
        r.add(
            "edge.quic.max_udp_payload",
            format!("{max_udp_payload} is outside 1200..=65527 (QUIC needs at least 1200 bytes)"),
        );
    }
    QuicConfig {
        listen,
        advertise_port,
        alt_svc_max_age: r.duration(
            "edge.quic.alt_svc_max_age",
            &q.alt_svc_max_age,
            Duration::from_secs(86_400),
        ),
        max_concurrent_streams: max_concurrent_streams.max(1),
        idle_timeout: r.positive_duration("edge.quic.idle_timeout", &q.idle_timeout, idle),
        max_udp_payload: max_udp_payload.clamp(1200, 65527),
        handshakes_before_retry: q.handshakes_before_retry.unwrap_or(HANDSHAKES_BEFORE_RETRY),
    }
}

pub(super) fn validate_edge(r: &mut Report<'_>, e: &RawEdge) -> EdgeConfig {
    let listen: Vec<SocketAddr> = e
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| r.addr(&format!("edge.listen[{i}]"), a))
        .collect();
    let tls_listen: Vec<SocketAddr> = e
        .tls
        .iter()
        .flat_map(|t| t.listen.iter().enumerate())
        .filter_map(|(i, a)| r.addr(&format!("edge.tls.listen[{i}]"), a))
        .collect();
    if e.listen.is_empty() && e.tls.as_ref().is_none_or(|t| t.listen.is_empty()) {
        r.add(
            "edge.listen",
            "must name at least one address (or edge.tls.listen)",
        );
    }
    let idle_timeout =
        r.positive_duration("edge.idle_timeout", &e.idle_timeout, default_idle_timeout());
    let quic = e.quic.as_ref().map(|q| validate_quic(r, q, idle_timeout));
    let cache_memory = r.size("edge.cache_memory", &e.cache_memory, default_cache_memory());
    let cache_disk = e.cache_disk.as_ref().map(|d| validate_disk(r, d));
    // With a disk tier, large objects go to disk as they arrive: 1GiB by default (at most
    // half the disk tier).
    let default_max = match &cache_disk {
        Some(d) => (1 << 30).min(d.size / 2),
        None => default_max_object_size(),
    };
    let max_object_size = r.size("edge.max_object_size", &e.max_object_size, default_max);
    match &cache_disk {
        // With a disk tier an object may outgrow memory: it is kept on disk and read from
        // there in chunks.
        Some(d) if max_object_size > d.size / 2 => r.add(
            "edge.max_object_size",
            format!(
                "{max_object_size} bytes is larger than half of edge.cache_disk.size ({})",
                d.size
            ),
        ),
        None if max_object_size > cache_memory => r.add(
            "edge.max_object_size",
            format!("{max_object_size} bytes is larger than edge.cache_memory ({cache_memory})"),
        ),
        _ => {}
    }
    if max_object_size > u32::MAX as u64 {
        r.add("edge.max_object_size", "must be below 4GiB");
    }
    let max_header_size = r.size(
        "edge.max_header_size",
        &e.max_header_size,
        default_max_header_size(),
    );
    if max_header_size < 8192 {
        r.add(
            "edge.max_header_size",
            "must be at least 8KiB (HTTP/1 request heads up to that size are always accepted)",
        );
    }
    let max_connections = e.max_connections.unwrap_or_else(default_max_connections);
    if max_connections == 0 {
        r.add("edge.max_connections", "must be greater than zero");
    }
    let threads = e
        .threads
        .unwrap_or_else(crate::memory::default_http_threads);
    if threads > 1024 {
        r.add("edge.threads", format!("{threads} is more than 1024"));
    }
    EdgeConfig {
        threads: threads.min(1024),
        listen,
        tls_listen,
        tls_default_site: e.tls.as_ref().and_then(|t| t.default_site.clone()),
        quic,
        cache_memory,
        max_object_size,
        cache_disk,
        header_read_timeout: r.positive_duration(
            "edge.header_read_timeout",
            &e.header_read_timeout,
            default_header_read_timeout(),
        ),
        idle_timeout,
        send_timeout: r.positive_duration(
            "edge.send_timeout",
            &e.send_timeout,
            default_send_timeout(),
        ),
        client_body_timeout: r.positive_duration(
            "edge.client_body_timeout",
            &e.client_body_timeout,
            default_client_body_timeout(),
        ),
        max_header_size: max_header_size.max(8192) as usize,
        max_connections: max_connections.max(1),
        shutdown_grace: r.duration(
            "edge.shutdown_grace",
            &e.shutdown_grace,
            default_shutdown_grace(),
        ),
        drain_wait: e
            .drain_wait
            .as_ref()
            .map(|_| r.duration("edge.drain_wait", &e.drain_wait, Duration::ZERO)),
        peer_timeout: r.positive_duration(
            "edge.peer_timeout",
            &e.peer_timeout,
            Duration::from_secs(1),
        ),
        public_addresses: e
            .public_addresses
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, a)| match a.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    r.add(
                        format!("edge.public_addresses[{i}]"),
                        format!("{a:?} is not an IP address"),
                    );
                    None
                }
            })
            .collect(),
        capacity_requests_per_second: r.positive(
            "edge.capacity.requests_per_second",
            e.capacity.requests_per_second,
            10_000.0,
        ),
        capacity_connections: r.positive(
            "edge.capacity.connections",
            e.capacity.connections,
            max_connections.max(1) as f64,
        ),
        capacity_egress_per_second: {
            let n = r.size(
                "edge.capacity.egress_per_second",
                &e.capacity.egress_per_second,
                1 << 30,
            );
            if n == 0 {
                r.add(
                    "edge.capacity.egress_per_second",
                    "must be greater than zero",
                );
            }
            n.max(1) as f64
        },
    }
}
