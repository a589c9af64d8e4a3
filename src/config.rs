//! Configuration: the node file and the origin map it names.
//!
//! `load(path)` reads the node file, then every map it names, parses them with serde (every
//! unknown key reported, through serde_ignored) and validates the whole into a [`Config`].
//! Parsing is separate from reading files (`parse_*` take text) and validation collects *every* problem with its file,
//! key and reason before failing, so `meridian check` can list them all at once.
//!
//! Hands validated, typed values (durations, byte sizes, parsed URIs, socket addresses) to `app`,
//! `http`, `origin` and `admin`; nothing downstream parses strings again.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Scheme, Uri};
use serde::Deserialize;

use crate::units::{parse_duration, parse_size};

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The dotted key path (`edge.cache_memory`, `site[0].origins[1]`), or empty for the file.
    pub key: String,
    /// Why the value is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// Collects problems for one file.
struct Report<'a> {
    file: &'a Path,
    problems: &'a mut Vec<Problem>,
}

impl Report<'_> {
    fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn duration(&mut self, key: &str, value: &Option<String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => match parse_duration(text) {
                Ok(d) => d,
                Err(reason) => {
                    self.add(key, reason);
                    default
                }
            },
        }
    }

    fn positive_duration(
        &mut self,
        key: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(key, value, default);
        if d.is_zero() {
            self.add(key, "must be greater than zero");
            return default;
        }
        d
    }

    fn size(&mut self, key: &str, value: &Option<String>, default: u64) -> u64 {
        match value {
            None => default,
            Some(text) => match parse_size(text) {
                Ok(n) => n,
                Err(reason) => {
                    self.add(key, reason);
                    default
                }
            },
        }
    }

    fn positive(&mut self, key: &str, value: Option<f64>, default: f64) -> f64 {
        match value {
            None => default,
            Some(v) if v.is_finite() && v > 0.0 => v,
            Some(v) => {
                self.add(key, format!("{v} must be a number greater than zero"));
                default
            }
        }
    }

    fn addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.add(
                    key,
                    format!("{text:?} is not a socket address (expected e.g. \"127.0.0.1:8080\")"),
                );
                None
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw file formats (serde). Sizes and durations stay strings here so that validation can report
// every bad one with its key rather than stopping at the first.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct RawNode {
    id: String,
    region: String,
    #[serde(default = "default_roles")]
    roles: Vec<String>,
    origin_map: Option<String>,
    cluster_map: Option<String>,
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
struct RawReload {
    watch: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawGossip {
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
}

#[derive(Debug, Deserialize)]
struct RawDns {
    listen: Vec<String>,
    geoip: Option<String>,
    tcp_timeout: Option<String>,
    nsid: Option<String>,
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Deserialize)]
struct RawRateLimit {
    responses_per_second: u32,
    slip: Option<u32>,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
}

fn default_roles() -> Vec<String> {
    vec!["edge".to_string()]
}

#[derive(Debug, Default, Deserialize)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
    access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct RawEdge {
    listen: Vec<String>,
    cache_memory: Option<String>,
    max_object_size: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    client_body_timeout: Option<String>,
    max_header_size: Option<String>,
    max_connections: Option<usize>,
    shutdown_grace: Option<String>,
    drain_wait: Option<String>,
    tls: Option<RawEdgeTls>,
    public_addresses: Option<Vec<String>>,
    #[serde(default)]
    capacity: RawCapacity,
}

#[derive(Debug, Deserialize)]
struct RawEdgeTls {
    listen: Vec<String>,
    default_site: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCapacity {
    requests_per_second: Option<f64>,
    connections: Option<f64>,
    egress_per_second: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawAdmin {
    listen: String,
    token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawClusterMap {
    #[serde(default)]
    region: Vec<RawRegion>,
    #[serde(default)]
    edge: Vec<RawClusterEdge>,
    #[serde(default)]
    coverage: Vec<RawCoverage>,
    #[serde(default)]
    zone: Vec<RawZone>,
}

#[derive(Debug, Deserialize)]
struct RawRegion {
    name: String,
    lat: Option<f64>,
    lon: Option<f64>,
    location: Option<String>,
    #[serde(default)]
    countries: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawClusterEdge {
    id: String,
    region: String,
    addresses: Vec<String>,
    #[serde(default = "default_capacity")]
    capacity: f64,
}

fn default_capacity() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
struct RawCoverage {
    cidr: String,
    region: String,
}

#[derive(Debug, Deserialize)]
struct RawZone {
    apex: String,
    names: Vec<String>,
    default_region: String,
    ttl: Option<String>,
    answers: Option<usize>,
    high_water: Option<f64>,
    #[serde(default)]
    ns: Vec<RawNameServer>,
    soa: RawSoa,
}

#[derive(Debug, Deserialize)]
struct RawNameServer {
    name: String,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawSoa {
    mname: String,
    rname: String,
    serial: u32,
    refresh: Option<String>,
    retry: Option<String>,
    expire: Option<String>,
    minimum: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawOriginMap {
    #[serde(default)]
    site: Vec<RawSite>,
}

#[derive(Debug, Deserialize)]
struct RawSite {
    name: String,
    hosts: Vec<String>,
    origins: Vec<String>,
    host_header: Option<String>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    origin_read_timeout: Option<String>,
    default_ttl: Option<String>,
    #[serde(default)]
    heuristic_freshness: bool,
    #[serde(default)]
    strip_set_cookie: bool,
    ca_file: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    #[serde(default)]
    cache_key: RawCacheKey,
}

#[derive(Debug, Default, Deserialize)]
struct RawCacheKey {
    query: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
    scheme: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// Validated configuration.
// ---------------------------------------------------------------------------------------------

/// A whole, validated configuration: the node file and the maps it names.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node file's own settings.
    pub node: NodeConfig,
    /// The sites this node serves (from the origin map).
    pub sites: Vec<SiteConfig>,
    /// The cluster map, when the node file names one.
    pub cluster: Option<ClusterMap>,
    /// The origin map's path, when the node file names one.
    pub origin_map: Option<PathBuf>,
}

impl Config {
    /// Every file this configuration was read from: the node file, the maps, certificates and
    /// keys, CA bundles, the GeoIP database and the gossip key file. A change to any of them is
    /// what a reload picks up.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.node.path.clone()];
        files.extend(self.origin_map.clone());
        files.extend(self.cluster.as_ref().map(|c| c.path.clone()));
        for site in &self.sites {
            files.extend(site.ca_file.clone());
            if let Some(tls) = &site.tls {
                files.push(tls.cert_file.clone());
                files.push(tls.key_file.clone());
            }
        }
        files.extend(self.node.dns.as_ref().and_then(|d| d.geoip.clone()));
        files.extend(self.node.gossip.as_ref().and_then(|g| g.key_file.clone()));
        files.sort();
        files.dedup();
        files
    }
}

/// The cluster map: regions, edges, coverage zones and DNS zones, the same on every node.
#[derive(Debug, Clone)]
pub struct ClusterMap {
    /// The file it was read from.
    pub path: PathBuf,
    /// Regions, in file order.
    pub regions: Vec<RegionConfig>,
    /// Edges, in file order.
    pub edges: Vec<EdgeEntry>,
    /// Coverage zones: client networks pinned to a region.
    pub coverage: Vec<(ipnet::IpNet, usize)>,
    /// DNS zones.
    pub zones: Vec<ZoneConfig>,
}

/// A region of the cluster map.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    /// Region name.
    pub name: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// ISO country codes whose clients belong here when GeoIP has no coordinates.
    pub countries: Vec<String>,
}

/// An edge of the cluster map.
#[derive(Debug, Clone)]
pub struct EdgeEntry {
    /// Edge id (the node id of the edge's node file).
    pub id: String,
    /// Index of its region in `ClusterMap::regions`.
    pub region: usize,
    /// Public addresses answered for it (A and AAAA).
    pub addresses: Vec<std::net::IpAddr>,
    /// Relative capacity, the weight of its load in its region's.
    pub capacity: f64,
}

/// A DNS zone of the cluster map.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The apex, lower-case, without the trailing dot.
    pub apex: String,
    /// Names under the apex answered with edges (`demo` for `demo.<apex>`; `@` for the apex).
    pub names: Vec<String>,
    /// Region for clients with no known location.
    pub default_region: usize,
    /// TTL of answers.
    pub ttl: Duration,
    /// Edges per answer.
    pub answers: usize,
    /// Region load (0..1 and beyond) past which clients spill to the next region.
    pub high_water: f64,
    /// Name servers with their addresses (glue).
    pub ns: Vec<(String, Vec<std::net::IpAddr>)>,
    /// SOA fields.
    pub soa: SoaConfig,
}

/// SOA fields of a zone.
#[derive(Debug, Clone)]
pub struct SoaConfig {
    /// Primary name server.
    pub mname: String,
    /// Responsible mailbox, in domain-name form.
    pub rname: String,
    /// Serial.
    pub serial: u32,
    /// Refresh interval.
    pub refresh: Duration,
    /// Retry interval.
    pub retry: Duration,
    /// Expiry.
    pub expire: Duration,
    /// Negative-caching TTL.
    pub minimum: Duration,
}

/// Settings of the DNS role.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Addresses served over both UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// A MaxMind-format City database.
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
    /// Bytes of response bodies and headers the cache may hold.
    pub cache_memory: u64,
    /// Largest object the cache stores; larger ones stream through.
    pub max_object_size: u64,
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Longest wait for the next byte of a request body; past it the client gets 408.
    pub client_body_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    pub max_header_size: usize,
    /// Open client connections at most; further connections wait to be accepted.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// On shutdown, time between announcing draining and closing the listeners, so resolvers
    /// that cached this edge stop sending users (at most the DNS TTL; the TTL by default).
    pub drain_wait: Option<Duration>,
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

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address of the admin API.
    pub listen: SocketAddr,
    /// Bearer token for mutations, read from `token_file`. Without one, mutations are refused.
    pub token: Option<String>,
}

/// How the query string takes part in the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKey {
    /// The query string as sent.
    Keep,
    /// Parameters sorted, so `?b=1&a=2` and `?a=2&b=1` share an entry.
    Sort,
    /// Ignored entirely.
    Ignore,
}

/// One site of the origin map.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// Site name (used in cache keys and logs).
    pub name: String,
    /// Host names, lower-case, without port. `*` takes any Host.
    pub hosts: Vec<String>,
    /// Origins in failover order (scheme and authority only).
    pub origins: Vec<Uri>,
    /// Host header sent to origins; the client's Host when unset.
    pub host_header: Option<String>,
    /// Time to establish a connection to one origin.
    pub connect_timeout: Duration,
    /// Time from having sent a request (its body included) to the response head.
    pub first_byte_timeout: Duration,
    /// Longest wait between two reads of a response body.
    pub origin_read_timeout: Duration,
    /// Freshness for responses that carry no freshness information (none by default).
    pub default_ttl: Option<Duration>,
    /// Use the 10% Last-Modified heuristic (RFC 9111 §4.2.2).
    pub heuristic_freshness: bool,
    /// Store responses that carry `Set-Cookie` (without it) instead of never storing them.
    pub strip_set_cookie: bool,
    /// The scheme (http or https) reaches the origin and selects the stored variant.
    pub key_scheme: bool,
    /// PEM bundle of CAs trusted for HTTPS origins; system roots when unset.
    pub ca_file: Option<PathBuf>,
    /// Query string handling in the cache key.
    pub query_key: QueryKey,
    /// Request headers added to the cache key (lower-case).
    pub key_headers: Vec<String>,
    /// The certificate served for the site's hosts on the TLS listeners.
    pub tls: Option<SiteCertificate>,
}

/// A site's certificate, checked (key matches, within its validity, covers the site's hosts)
/// and ready to serve.
#[derive(Debug, Clone)]
pub struct SiteCertificate {
    /// The chain and signing key.
    pub key: std::sync::Arc<rustls::sign::CertifiedKey>,
    /// Seconds since the Unix epoch after which the certificate is no longer valid.
    pub not_after: u64,
    /// The PEM chain it was read from.
    pub cert_file: PathBuf,
    /// The PEM key it was read from.
    pub key_file: PathBuf,
}

/// Loads and validates the node file at `path` and every map it names.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let config = load_into(path, &mut problems);
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => Err(ConfigError { problems }),
    }
}

/// The largest configuration file read (maps of thousands of sites or edges are well under it):
/// a path that names a device or a huge file by mistake is refused, not read for minutes.
pub(crate) const MAX_FILE_SIZE: u64 = 16 << 20;

/// The shortest admin token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// Reads a configuration file: a regular file of at most [`MAX_FILE_SIZE`] bytes, in UTF-8.
pub(crate) fn read_limited(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read: not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(format!("larger than {} MiB", MAX_FILE_SIZE >> 20));
    }
    Ok(text)
}

fn read(path: &Path, problems: &mut Vec<Problem>) -> Option<String> {
    match read_limited(path) {
        Ok(t) => Some(t),
        Err(reason) => {
            problems.push(Problem {
                file: path.to_path_buf(),
                key: String::new(),
                reason,
            });
            None
        }
    }
}

/// A key path as the problems name keys: `site[0].origins[1]`.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    // Every unknown key is a problem (a misspelt key would otherwise be a silent default), and
    // all of them are reported, not only the first.
    let mut unknown = Vec::new();
    let parsed = serde_ignored::deserialize(toml::Deserializer::new(text), |p| {
        unknown.push(key_path(&p));
    });
    match parsed {
        Ok(v) => {
            for key in unknown {
                problems.push(Problem {
                    file: path.to_path_buf(),
                    key,
                    reason: "unknown key".into(),
                });
            }
            Some(v)
        }
        Err(e) => {
            let key = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!("line {line}")
                })
                .unwrap_or_default();
            problems.push(Problem {
                file: path.to_path_buf(),
                key,
                reason: e.message().to_string(),
            });
            None
        }
    }
}

fn resolve(base: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

fn load_into(path: &Path, problems: &mut Vec<Problem>) -> Option<Config> {
    let text = read(path, problems)?;
    let raw: RawNode = parse_toml(path, &text, problems)?;
    let node = validate_node(path, &raw, problems);

    let origin_map = raw.origin_map.as_ref().map(|name| resolve(path, name));
    let sites = if node.edge.is_some() {
        match &raw.origin_map {
            None => {
                problems.push(Problem {
                    file: path.to_path_buf(),
                    key: "origin_map".into(),
                    reason: "the edge role needs an origin map".into(),
                });
                Vec::new()
            }
            Some(name) => {
                let map_path = resolve(path, name);
                match read(&map_path, problems) {
                    Some(text) => parse_origin_map(&map_path, &text, problems),
                    None => Vec::new(),
                }
            }
        }
    } else {
        Vec::new()
    };
    let cluster = match &raw.cluster_map {
        Some(name) => {
            let map_path = resolve(path, name);
            read(&map_path, problems).and_then(|text| parse_cluster_map(&map_path, &text, problems))
        }
        None => {
            if node.dns.is_some() {
                problems.push(Problem {
                    file: path.to_path_buf(),
                    key: "cluster_map".into(),
                    reason: "the dns role needs a cluster map".into(),
                });
            }
            None
        }
    };
    let mut node = node;
    settle_edge(&mut node, cluster.as_ref(), problems);
    check_tls(&node, &sites, problems);
    check_placement(
        &node,
        cluster.as_ref(),
        &sites,
        origin_map.as_deref(),
        problems,
    );
    Some(Config {
        node,
        sites,
        cluster,
        origin_map,
    })
}

/// An edge must be in a region of the cluster map (a typo would join the cluster, look healthy
/// and never get a user), and no origin may be the edge's own listener (every miss would loop).
fn check_placement(
    node: &NodeConfig,
    cluster: Option<&ClusterMap>,
    sites: &[SiteConfig],
    origin_map: Option<&Path>,
    problems: &mut Vec<Problem>,
) {
    let Some(edge) = &node.edge else { return };
    if let Some(map) = cluster {
        if !map.regions.iter().any(|r| r.name == node.region) {
            let names: Vec<&str> = map.regions.iter().map(|r| r.name.as_str()).collect();
            problems.push(Problem {
                file: node.path.clone(),
                key: "region".into(),
                reason: format!(
                    "{:?} is not a region of the cluster map ({})",
                    node.region,
                    names.join(", ")
                ),
            });
        }
    }
    let listeners: Vec<SocketAddr> = edge
        .listen
        .iter()
        .chain(&edge.tls_listen)
        .copied()
        .collect();
    for (i, site) in sites.iter().enumerate() {
        for (j, origin) in site.origins.iter().enumerate() {
            let Some(host) = origin.host() else { continue };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let ip: std::net::IpAddr = match host.parse() {
                Ok(ip) => ip,
                Err(_) if host.eq_ignore_ascii_case("localhost") => [127, 0, 0, 1].into(),
                Err(_) => continue,
            };
            let https = origin.scheme_str() == Some("https");
            let port = origin.port_u16().unwrap_or(if https { 443 } else { 80 });
            let own = listeners.iter().find(|l| {
                l.port() == port
                    && (l.ip() == ip
                        || (l.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
            });
            if let Some(l) = own {
                problems.push(Problem {
                    file: origin_map.map_or_else(|| node.path.clone(), Path::to_path_buf),
                    key: format!("site[{i}].origins[{j}]"),
                    reason: format!(
                        "{origin} is this edge's own listener {l}: every miss would come back to it"
                    ),
                });
            }
        }
    }
}

/// The TLS listeners need certificates, and the default site must have one.
fn check_tls(node: &NodeConfig, sites: &[SiteConfig], problems: &mut Vec<Problem>) {
    let Some(edge) = &node.edge else { return };
    let mut add = |key: &str, reason: String| {
        problems.push(Problem {
            file: node.path.clone(),
            key: key.into(),
            reason,
        })
    };
    if !edge.tls_listen.is_empty() && !sites.iter().any(|s| s.tls.is_some()) {
        add(
            "edge.tls.listen",
            "no site of the origin map has a certificate (tls_cert and tls_key)".into(),
        );
    }
    if let Some(name) = &edge.tls_default_site {
        match sites.iter().find(|s| &s.name == name) {
            None => add(
                "edge.tls.default_site",
                format!("no site is named {name:?} in the origin map"),
            ),
            Some(s) if s.tls.is_none() => add(
                "edge.tls.default_site",
                format!("site {name:?} has no certificate (tls_cert and tls_key)"),
            ),
            Some(_) => {}
        }
    }
}

/// Fills what the edge's settings take from the cluster map: its public addresses and the
/// drain wait, which the longest DNS TTL bounds.
fn settle_edge(node: &mut NodeConfig, cluster: Option<&ClusterMap>, problems: &mut Vec<Problem>) {
    let Some(edge) = node.edge.as_mut() else {
        return;
    };
    let ttl = cluster.and_then(|m| m.zones.iter().map(|z| z.ttl).max());
    match (edge.drain_wait, ttl) {
        (Some(wait), Some(ttl)) if wait > ttl => problems.push(Problem {
            file: node.path.clone(),
            key: "edge.drain_wait".into(),
            reason: format!(
                "{wait:?} is longer than the longest DNS TTL of the cluster map ({ttl:?}): resolvers stop sending users after one TTL"
            ),
        }),
        (None, _) => edge.drain_wait = Some(if node.gossip.is_some() { ttl.unwrap_or(Duration::ZERO) } else { Duration::ZERO }),
        _ => {}
    }
    if edge.public_addresses.is_empty() {
        edge.public_addresses = cluster
            .and_then(|m| m.edges.iter().find(|e| e.id == node.id))
            .map(|e| e.addresses.clone())
            .unwrap_or_else(|| {
                edge.listen
                    .iter()
                    .map(|a| a.ip())
                    .filter(|ip| !ip.is_unspecified())
                    .collect()
            });
    }
}

/// A cluster map from text, for the fuzz targets.
#[doc(hidden)]
pub fn fuzz_cluster_map(text: &str, problems: &mut Vec<Problem>) -> Option<ClusterMap> {
    parse_cluster_map(Path::new("cluster.toml"), text, problems)
}

/// An origin map from text, for the fuzz targets.
#[doc(hidden)]
pub fn fuzz_origin_map(text: &str, problems: &mut Vec<Problem>) {
    let _ = parse_origin_map(Path::new("origins.toml"), text, problems);
}

/// A node file from text (no maps read), for the fuzz targets.
#[doc(hidden)]
pub fn fuzz_node(text: &str, problems: &mut Vec<Problem>) {
    let path = Path::new("node.toml");
    if let Some(raw) = parse_toml::<RawNode>(path, text, problems) {
        let _ = validate_node(path, &raw, problems);
    }
}

/// Reads and validates a cluster map on its own (for reloads).
pub fn load_cluster_map(path: &Path) -> Result<ClusterMap, ConfigError> {
    let mut problems = Vec::new();
    let map = read(path, &mut problems).and_then(|t| parse_cluster_map(path, &t, &mut problems));
    match map {
        Some(m) if problems.is_empty() => Ok(m),
        _ => Err(ConfigError { problems }),
    }
}

fn dns_name(text: &str) -> String {
    text.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_cluster_map(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<ClusterMap> {
    let raw: RawClusterMap = parse_toml(path, text, problems)?;
    let mut r = Report {
        file: path,
        problems,
    };
    let mut regions = Vec::new();
    let mut region_index: HashMap<String, usize> = HashMap::new();
    if raw.region.is_empty() {
        r.add("region", "the cluster map has no regions");
    }
    for (i, reg) in raw.region.iter().enumerate() {
        if region_index.insert(reg.name.clone(), i).is_some() {
            r.add(
                format!("region[{i}].name"),
                format!("{:?} is defined twice", reg.name),
            );
        }
        let (lat, lon) = match (reg.lat, reg.lon, &reg.location) {
            (Some(lat), Some(lon), None) => {
                if !(-90.0..=90.0).contains(&lat) {
                    r.add(
                        format!("region[{i}].lat"),
                        format!("{lat} is not a latitude (-90..90)"),
                    );
                }
                if !(-180.0..=180.0).contains(&lon) {
                    r.add(
                        format!("region[{i}].lon"),
                        format!("{lon} is not a longitude (-180..180)"),
                    );
                }
                (lat, lon)
            }
            (None, None, Some(code)) => match crate::metro::lookup(code) {
                Some((_, lat, lon)) => (lat, lon),
                None => {
                    r.add(
                        format!("region[{i}].location"),
                        format!(
                            "{code:?} is not a known metro code (three-letter airport codes such as \"FRA\", \"IAD\", \"NRT\"; `lat` and `lon` place any other city)"
                        ),
                    );
                    (0.0, 0.0)
                }
            },
            (None, None, None) => {
                r.add(
                    format!("region[{i}]"),
                    "needs a place: `location` (a metro code) or `lat` and `lon`",
                );
                (0.0, 0.0)
            }
            _ => {
                r.add(
                    format!("region[{i}]"),
                    "give either `location` or both `lat` and `lon`",
                );
                (0.0, 0.0)
            }
        };
        let mut countries = Vec::new();
        for (j, c) in reg.countries.iter().enumerate() {
            if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
                countries.push(c.to_ascii_uppercase());
            } else {
                r.add(
                    format!("region[{i}].countries[{j}]"),
                    format!("{c:?} is not a two-letter country code"),
                );
            }
        }
        regions.push(RegionConfig {
            name: reg.name.clone(),
            lat,
            lon,
            countries,
        });
    }
    let region_of = |r: &mut Report<'_>, key: String, name: &str| -> Option<usize> {
        let found = region_index.get(name).copied();
        if found.is_none() {
            r.add(key, format!("no region is named {name:?}"));
        }
        found
    };
    let mut edges = Vec::new();
    let mut edge_ids: HashMap<String, usize> = HashMap::new();
    for (i, e) in raw.edge.iter().enumerate() {
        if edge_ids.insert(e.id.clone(), i).is_some() {
            r.add(
                format!("edge[{i}].id"),
                format!("{:?} is defined twice", e.id),
            );
        }
        let region = region_of(&mut r, format!("edge[{i}].region"), &e.region);
        let mut addresses = Vec::new();
        if e.addresses.is_empty() {
            r.add(
                format!("edge[{i}].addresses"),
                "must list at least one address",
            );
        }
        for (j, a) in e.addresses.iter().enumerate() {
            match a.parse() {
                Ok(ip) => addresses.push(ip),
                Err(_) => r.add(
                    format!("edge[{i}].addresses[{j}]"),
                    format!("{a:?} is not an IP address"),
                ),
            }
        }
        if !(e.capacity > 0.0 && e.capacity.is_finite()) {
            r.add(format!("edge[{i}].capacity"), "must be a positive number");
        }
        if let Some(region) = region {
            edges.push(EdgeEntry {
                id: e.id.clone(),
                region,
                addresses,
                capacity: e.capacity.max(f64::MIN_POSITIVE),
            });
        }
    }
    let mut coverage = Vec::new();
    for (i, c) in raw.coverage.iter().enumerate() {
        let net = match c.cidr.parse::<ipnet::IpNet>() {
            Ok(n) if n.trunc() == n => Some(n),
            Ok(n) => {
                r.add(
                    format!("coverage[{i}].cidr"),
                    format!(
                        "{:?} has host bits set (did you mean {}?)",
                        c.cidr,
                        n.trunc()
                    ),
                );
                None
            }
            Err(_) => {
                r.add(
                    format!("coverage[{i}].cidr"),
                    format!("{:?} is not a CIDR network", c.cidr),
                );
                None
            }
        };
        let region = region_of(&mut r, format!("coverage[{i}].region"), &c.region);
        if let (Some(n), Some(reg)) = (net, region) {
            coverage.push((n, reg));
        }
    }
    let mut zones = Vec::new();
    let mut apexes: HashMap<String, usize> = HashMap::new();
    for (i, z) in raw.zone.iter().enumerate() {
        let k = |f: &str| format!("zone[{i}].{f}");
        let apex = dns_name(&z.apex);
        if !valid_dns_name(&apex) {
            r.add(k("apex"), format!("{:?} is not a domain name", z.apex));
        }
        if apexes.insert(apex.clone(), i).is_some() {
            r.add(k("apex"), format!("{apex:?} is defined twice"));
        }
        let mut names = Vec::new();
        for (j, n) in z.names.iter().enumerate() {
            let n = dns_name(n);
            if n == "@" || valid_dns_name(&n) {
                names.push(n);
            } else {
                r.add(
                    format!("zone[{i}].names[{j}]"),
                    format!("{n:?} is not a name"),
                );
            }
        }
        let default_region = region_of(&mut r, k("default_region"), &z.default_region).unwrap_or(0);
        let answers = z.answers.unwrap_or(1);
        if answers == 0 {
            r.add(k("answers"), "must be at least 1");
        }
        let high_water = z.high_water.unwrap_or(0.8);
        if !(high_water > 0.0 && high_water.is_finite()) {
            r.add(
                k("high_water"),
                "must be a positive number (0.8 = 80% of capacity)",
            );
        }
        let mut ns = Vec::new();
        for (j, n) in z.ns.iter().enumerate() {
            let name = dns_name(&n.name);
            if !valid_dns_name(&name) {
                r.add(
                    format!("zone[{i}].ns[{j}].name"),
                    format!("{:?} is not a domain name", n.name),
                );
            }
            let mut addrs = Vec::new();
            for (m, a) in n.addresses.iter().enumerate() {
                match a.parse() {
                    Ok(ip) => addrs.push(ip),
                    Err(_) => r.add(
                        format!("zone[{i}].ns[{j}].addresses[{m}]"),
                        format!("{a:?} is not an IP address"),
                    ),
                }
            }
            ns.push((name, addrs));
        }
        for (f, v) in [("soa.mname", &z.soa.mname), ("soa.rname", &z.soa.rname)] {
            if !valid_dns_name(&dns_name(v)) {
                r.add(k(f), format!("{v:?} is not a domain name"));
            }
        }
        let soa = SoaConfig {
            mname: dns_name(&z.soa.mname),
            rname: dns_name(&z.soa.rname),
            serial: z.soa.serial,
            refresh: r.duration(&k("soa.refresh"), &z.soa.refresh, Duration::from_secs(3600)),
            retry: r.duration(&k("soa.retry"), &z.soa.retry, Duration::from_secs(600)),
            expire: r.duration(&k("soa.expire"), &z.soa.expire, Duration::from_secs(86400)),
            minimum: r.duration(&k("soa.minimum"), &z.soa.minimum, Duration::from_secs(30)),
        };
        zones.push(ZoneConfig {
            apex,
            names,
            default_region,
            ttl: r.duration(&k("ttl"), &z.ttl, Duration::from_secs(30)),
            answers: answers.max(1),
            high_water,
            ns,
            soa,
        });
    }
    Some(ClusterMap {
        path: path.to_path_buf(),
        regions,
        edges,
        coverage,
        zones,
    })
}

fn validate_node(path: &Path, raw: &RawNode, problems: &mut Vec<Problem>) -> NodeConfig {
    let mut r = Report {
        file: path,
        problems,
    };
    if raw.id.trim().is_empty() {
        r.add("id", "must not be empty");
    }
    if raw.region.trim().is_empty() {
        r.add("region", "must not be empty");
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
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
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
            if let Some(g) = &geoip {
                if let Err(e) = crate::geoip::GeoIp::open(g) {
                    r.add("dns.geoip", e.to_string());
                }
            }
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

fn validate_gossip(r: &mut Report<'_>, g: &RawGossip) -> GossipConfig {
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
            if let Err(e) = crate::gossip::Keyring::load(&key_path) {
                r.add("gossip.key_file", e);
            }
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
    GossipConfig {
        listen,
        advertise,
        seeds: g.seeds.clone(),
        cluster,
        key_file,
        interval,
        failure_timeout,
    }
}

fn default_cache_memory() -> u64 {
    256 << 20
}
fn default_max_object_size() -> u64 {
    16 << 20
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_header_size() -> u64 {
    16 << 10
}
fn default_max_connections() -> usize {
    10_000
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_origin_read_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_client_body_timeout() -> Duration {
    Duration::from_secs(30)
}

fn validate_edge(r: &mut Report<'_>, e: &RawEdge) -> EdgeConfig {
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
    let cache_memory = r.size("edge.cache_memory", &e.cache_memory, default_cache_memory());
    let max_object_size = r.size(
        "edge.max_object_size",
        &e.max_object_size,
        default_max_object_size(),
    );
    if max_object_size > cache_memory {
        r.add(
            "edge.max_object_size",
            format!("{max_object_size} bytes is larger than edge.cache_memory ({cache_memory})"),
        );
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
    EdgeConfig {
        listen,
        tls_listen,
        tls_default_site: e.tls.as_ref().and_then(|t| t.default_site.clone()),
        cache_memory,
        max_object_size,
        header_read_timeout: r.positive_duration(
            "edge.header_read_timeout",
            &e.header_read_timeout,
            default_header_read_timeout(),
        ),
        idle_timeout: r.positive_duration(
            "edge.idle_timeout",
            &e.idle_timeout,
            default_idle_timeout(),
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

/// Parses and validates an origin map's text; `path` names it in problems and anchors relative
/// paths (`ca_file`).
fn parse_origin_map(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Vec<SiteConfig> {
    let Some(raw) = parse_toml::<RawOriginMap>(path, text, problems) else {
        return Vec::new();
    };
    let mut r = Report {
        file: path,
        problems,
    };
    if raw.site.is_empty() {
        r.add("site", "the origin map has no sites");
    }
    let mut seen_hosts: HashMap<String, String> = HashMap::new();
    let mut seen_names: HashMap<String, usize> = HashMap::new();
    let mut sites = Vec::new();
    for (i, s) in raw.site.iter().enumerate() {
        let k = |field: &str| format!("site[{i}].{field}");
        if s.name.is_empty()
            || !s
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            r.add(
                k("name"),
                format!(
                    "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                    s.name
                ),
            );
        }
        if let Some(prev) = seen_names.insert(s.name.clone(), i) {
            r.add(
                k("name"),
                format!("{:?} is also the name of site[{prev}]", s.name),
            );
        }
        let mut hosts = Vec::new();
        if s.hosts.is_empty() {
            r.add(k("hosts"), "must list at least one host name (or \"*\")");
        }
        for (j, h) in s.hosts.iter().enumerate() {
            let host = h.trim().trim_end_matches('.').to_ascii_lowercase();
            let valid = host == "*"
                || (!host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            if !valid {
                r.add(
                    format!("site[{i}].hosts[{j}]"),
                    format!("{h:?} is not a host name"),
                );
                continue;
            }
            if let Some(other) = seen_hosts.insert(host.clone(), s.name.clone()) {
                r.add(
                    format!("site[{i}].hosts[{j}]"),
                    format!("{host:?} is already served by site {other:?}"),
                );
            }
            hosts.push(host);
        }
        let mut origins = Vec::new();
        if s.origins.is_empty() {
            r.add(k("origins"), "must list at least one origin");
        }
        for (j, o) in s.origins.iter().enumerate() {
            match parse_origin(o) {
                Ok(u) => origins.push(u),
                Err(reason) => r.add(format!("site[{i}].origins[{j}]"), reason),
            }
        }
        if let Some(h) = &s.host_header {
            if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
                r.add(
                    k("host_header"),
                    format!("{h:?} is not a valid Host header"),
                );
            }
        }
        let query_key = match s.cache_key.query.as_deref() {
            None | Some("keep") => QueryKey::Keep,
            Some("sort") => QueryKey::Sort,
            Some("ignore") => QueryKey::Ignore,
            Some(other) => {
                r.add(
                    k("cache_key.query"),
                    format!("{other:?} is not one of \"keep\", \"sort\", \"ignore\""),
                );
                QueryKey::Keep
            }
        };
        let mut key_headers = Vec::new();
        for (j, h) in s.cache_key.headers.iter().enumerate() {
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => key_headers.push(n.as_str().to_string()),
                Err(_) => r.add(
                    format!("site[{i}].cache_key.headers[{j}]"),
                    format!("{h:?} is not a header name"),
                ),
            }
        }
        let ca_file = s.ca_file.as_ref().map(|f| resolve(path, f));
        if let Some(f) = &ca_file {
            if let Err(e) = crate::origin::read_ca_file(f) {
                r.add(k("ca_file"), e);
            }
        }
        let default_ttl = s
            .default_ttl
            .as_ref()
            .map(|_| r.duration(&k("default_ttl"), &s.default_ttl, Duration::ZERO));
        let tls = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => {
                match crate::http::tls::load_certificate(
                    &resolve(path, cert),
                    &resolve(path, key),
                    &hosts,
                ) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        r.add(k("tls_cert"), e);
                        None
                    }
                }
            }
            (Some(_), None) => {
                r.add(k("tls_key"), "tls_cert needs its private key in tls_key");
                None
            }
            (None, Some(_)) => {
                r.add(k("tls_cert"), "tls_key needs its certificate in tls_cert");
                None
            }
            (None, None) => None,
        };
        sites.push(SiteConfig {
            name: s.name.clone(),
            hosts,
            origins,
            host_header: s.host_header.clone(),
            connect_timeout: r.positive_duration(
                &k("connect_timeout"),
                &s.connect_timeout,
                default_connect_timeout(),
            ),
            first_byte_timeout: r.positive_duration(
                &k("first_byte_timeout"),
                &s.first_byte_timeout,
                default_first_byte_timeout(),
            ),
            origin_read_timeout: r.positive_duration(
                &k("origin_read_timeout"),
                &s.origin_read_timeout,
                default_origin_read_timeout(),
            ),
            default_ttl,
            heuristic_freshness: s.heuristic_freshness,
            strip_set_cookie: s.strip_set_cookie,
            key_scheme: s.cache_key.scheme.unwrap_or(true),
            ca_file,
            query_key,
            key_headers,
            tls,
        });
    }
    sites
}

fn parse_origin(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => {}
        _ => return Err(format!("{text:?} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{text:?} must be scheme://host[:port] only (no path or query)"
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> (Vec<SiteConfig>, Vec<Problem>) {
        let mut problems = Vec::new();
        let sites = parse_origin_map(Path::new("origins.toml"), text, &mut problems);
        (sites, problems)
    }

    #[test]
    fn origin_map_reports_every_problem_with_key() {
        let (_, problems) = map(r#"
            [[site]]
            name = "a"
            hosts = ["a.test", "bad host"]
            origins = ["ftp://x", "http://127.0.0.1:8000/path"]
            connect_timeout = "3 fortnights"
            [[site]]
            name = "a"
            hosts = ["A.test"]
            origins = ["http://127.0.0.1:8000"]
            "#);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "site[0].hosts[1]",
                "site[0].origins[0]",
                "site[0].origins[1]",
                "site[0].connect_timeout",
                "site[1].name",
                "site[1].hosts[0]",
            ],
            "{problems:#?}"
        );
        assert!(problems.iter().all(|p| p.file == Path::new("origins.toml")));
    }

    #[test]
    fn every_unknown_key_is_named() {
        let (_, problems) = map("[[site]]\nname = \"a\"\nhosts=[\"a\"]\norigins=[\"http://a\"]\nbogus = 1\n\
cache_key = { query = \"keep\", sceme = false }\n[[site]]\nname = \"b\"\nhosts=[\"b\"]\norigins=[\"http://b\"]\norign_read_timeout = \"1s\"\n");
        let keys: Vec<_> = problems
            .iter()
            .map(|p| (p.key.as_str(), p.reason.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("site[0].bogus", "unknown key"),
                ("site[0].cache_key.sceme", "unknown key"),
                ("site[1].orign_read_timeout", "unknown key"),
            ],
            "{problems:#?}"
        );
    }

    fn node_problems(node: &str, files: &[(&str, &str)]) -> Vec<(String, String)> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::write(dir.path().join("node.toml"), node).unwrap();
        match load(&dir.path().join("node.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems
                .into_iter()
                .inspect(|p| assert!(p.file.starts_with(dir.path()), "{p}"))
                .map(|p| (p.key, p.reason))
                .collect(),
        }
    }

    const EDGE: &str =
        "id = \"e\"\nregion = \"r\"\norigin_map = \"o.toml\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\n";
    const ORIGINS: (&str, &str) = (
        "o.toml",
        "[[site]]\nname = \"s\"\nhosts = [\"s.test\"]\norigins = [\"http://127.0.0.1:1\"]\n",
    );

    #[test]
    fn gossip_needs_a_key_or_an_explicit_insecure() {
        let node = format!("{EDGE}[gossip]\nlisten = \"127.0.0.1:7946\"\n");
        let problems = node_problems(&node, &[ORIGINS]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "gossip.key_file");
        assert!(problems[0].1.contains("insecure = true"), "{problems:?}");
        assert!(node_problems(&format!("{node}insecure = true\n"), &[ORIGINS]).is_empty());
        let keyed = format!("{node}key_file = \"g.key\"\n");
        assert!(node_problems(
            &keyed,
            &[
                ORIGINS,
                ("g.key", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n")
            ]
        )
        .is_empty());
        let problems = node_problems(&keyed, &[ORIGINS, ("g.key", "c2hvcnQ=\n")]);
        assert_eq!(problems[0].0, "gossip.key_file");
        assert!(problems[0].1.contains("g.key: line 1"), "{problems:?}");
        let problems = node_problems(&keyed, &[ORIGINS]);
        assert!(problems[0].1.contains("cannot read"), "{problems:?}");
    }

    #[test]
    fn gossip_settings_are_checked_with_their_keys() {
        let node = format!(
            "{EDGE}drain_wait = \"1m\"\n[edge.capacity]\nconnections = 0\n[gossip]\nlisten = \"0.0.0.0:7946\"\nseeds = [\"nope\"]\ninsecure = true\ninterval = \"1s\"\nfailure_timeout = \"2s\"\n"
        );
        let cluster = "cluster_map = \"c.toml\"\n";
        let map = "[[region]]\nname = \"r\"\nlat = 0.0\nlon = 0.0\n[[zone]]\napex = \"z.test\"\nnames = [\"www\"]\ndefault_region = \"r\"\nttl = \"30s\"\n[zone.soa]\nmname = \"ns.z.test\"\nrname = \"h.z.test\"\nserial = 1\n";
        let node = node.replacen("[edge]", &format!("{cluster}[edge]"), 1);
        let keys: Vec<String> = node_problems(&node, &[ORIGINS, ("c.toml", map)])
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            keys,
            [
                "edge.capacity.connections",
                "gossip.advertise",
                "gossip.seeds[0]",
                "gossip.failure_timeout",
                "edge.drain_wait",
            ]
        );
    }

    const MAP: &str = "[[region]]\nname = \"r\"\nlat = 0.0\nlon = 0.0\n[[zone]]\napex = \"z.test\"\nnames = [\"www\"]\ndefault_region = \"r\"\n[zone.soa]\nmname = \"ns.z.test\"\nrname = \"h.z.test\"\nserial = 1\n";

    #[test]
    fn every_unknown_key_of_the_node_file_is_named() {
        let node = EDGE.replace("[edge]", "bogus = 1\n[log]\nlevle = \"debug\"\n[edge]")
            + "cache_memroy = \"1GiB\"\n[edge.tls]\nlisten = []\ndefault_sit = \"s\"\n";
        let problems = node_problems(&node, &[ORIGINS]);
        assert_eq!(
            problems,
            [
                ("bogus".to_string(), "unknown key".to_string()),
                ("log.levle".into(), "unknown key".into()),
                ("edge.cache_memroy".into(), "unknown key".into()),
                ("edge.tls.default_sit".into(), "unknown key".into()),
            ]
        );
    }

    #[test]
    fn devices_and_huge_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("n.toml"),
            EDGE.replace("o.toml", "/dev/zero"),
        )
        .unwrap();
        let problems = load(&dir.path().join("n.toml")).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, Path::new("/dev/zero"));
        assert!(
            problems[0].reason.contains("not a regular file"),
            "{problems:?}"
        );
        let huge = "#".repeat((MAX_FILE_SIZE + 1) as usize);
        let problems = node_problems(EDGE, &[("o.toml", &huge)]);
        assert!(problems[0].1.contains("larger than 16 MiB"), "{problems:?}");
    }

    #[test]
    fn an_edge_outside_every_region_of_the_map_is_refused() {
        let node = EDGE.replace(
            "region = \"r\"",
            "region = \"us-wst\"\ncluster_map = \"c.toml\"",
        );
        let problems = node_problems(&node, &[ORIGINS, ("c.toml", MAP)]);
        assert_eq!(
            problems,
            [(
                "region".to_string(),
                "\"us-wst\" is not a region of the cluster map (r)".to_string()
            )]
        );
        let node = EDGE.replace("region = \"r\"", "region = \"r\"\ncluster_map = \"c.toml\"");
        assert!(node_problems(&node, &[ORIGINS, ("c.toml", MAP)]).is_empty());
    }

    #[test]
    fn short_admin_tokens_are_refused() {
        let node = format!("{EDGE}[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"t\"\n");
        let problems = node_problems(&node, &[ORIGINS, ("t", "secret\n")]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "admin.token_file");
        assert!(problems[0].1.contains("at least 16"), "{problems:?}");
        assert!(node_problems(&node, &[ORIGINS, ("t", "0123456789abcdef\n")]).is_empty());
    }

    #[test]
    fn an_origin_that_is_the_edge_itself_is_refused() {
        let node = "id = \"e\"\nregion = \"r\"\norigin_map = \"o.toml\"\n[edge]\nlisten = [\"127.0.0.1:18080\", \"0.0.0.0:18081\"]\n";
        let origins = "[[site]]\nname = \"s\"\nhosts = [\"s.test\"]\norigins = [\"http://127.0.0.1:18080\", \"http://localhost:18080/\", \"http://127.0.0.9:18081\", \"http://127.0.0.1:18082\", \"http://[::1]:18080\"]\n";
        let keys: Vec<String> = node_problems(node, &[("o.toml", origins)])
            .into_iter()
            .map(|(k, r)| {
                assert!(r.contains("own listener"), "{r}");
                k
            })
            .collect();
        assert_eq!(
            keys,
            [
                "site[0].origins[0]",
                "site[0].origins[1]",
                "site[0].origins[2]"
            ]
        );
    }
}
