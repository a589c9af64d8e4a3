//! Configuration: the node file and the maps it names, one module per file read (`node`, the
//! origin map in `origins`, the cluster map in `cluster`); this module reads files, reports
//! problems and checks what spans files (an edge's region in the map, origins that are the
//! edge itself, certificates for the TLS listeners).
//!
//! `load(path)` reads the node file, then every map it names, parses them with serde (every
//! unknown key reported, through serde_ignored) and validates the whole into a [`Config`].
//! Parsing is separate from reading files (`parse_*` take text) and validation collects *every*
//! problem with its file, key and reason before failing, so `meridian check` can list them all
//! at once.
//!
//! Hands validated, typed values (durations, byte sizes, parsed URIs, socket addresses) to `app`,
//! `http`, `origin` and `admin`; nothing downstream parses strings again.
//!
//! What only a role's runtime types can judge is the role's to check, not this module's: the
//! sites' certificates and keys (`http::tls`), their CA bundles (`origin`), the GeoIP database
//! (`geoip`) and the gossip key file (`gossip`). Here they are paths. `app` has each role read
//! its files when a configuration is checked, started or reloaded, and names every problem by
//! file and key with [`Config::node_problem`] and [`Config::site_problem`], as this module names
//! its own; so this module depends on no role. `meridian check` lists their problems with this
//! module's ([`load_with_problems`]).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Scheme, Uri};
use serde::Deserialize;

use crate::units::{parse_duration, parse_size};

mod cluster;
mod node;
mod origins;

use cluster::*;
pub use cluster::{load_cluster_map, ClusterMap, EdgeEntry, RegionConfig, SoaConfig, ZoneConfig};
pub(crate) use node::plain_filter;
use node::*;
pub use node::{
    AdminConfig, DiskConfig, DnsConfig, EdgeConfig, GossipConfig, LogConfig, NodeConfig,
    QuicConfig, RateLimitConfig, DEFAULT_DISK_READ_MEMORY,
};
use origins::*;
pub use origins::{QueryKey, SiteConfig, SiteTls, DEFAULT_MAX_ORIGIN_REQUESTS};

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

    /// A problem with `key` of the node file, for a role's check.
    pub fn node_problem(&self, key: &str, reason: impl Into<String>) -> Problem {
        Problem {
            file: self.node.path.clone(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// A problem with `key` of the origin map's site `i` (`site[i].key`), for a role's check.
    pub fn site_problem(&self, i: usize, key: &str, reason: impl Into<String>) -> Problem {
        Problem {
            file: self.origin_map.clone().unwrap_or_default(),
            key: format!("site[{i}].{key}"),
            reason: reason.into(),
        }
    }

    /// What is allowed but likely a mistake outside a local cluster: an edge that publishes
    /// addresses users cannot reach (loopback, private, link-local), which DNS would hand them;
    /// a disk tier larger than the free space; a shielding edge that peers cannot reach; HTTP
    /// threads where `meridian run` cannot turn the allocator's per-thread caches off (secure
    /// mode, or the environment sets a tcache count of its own). `meridian check` prints these;
    /// they do not fail it.
    pub fn warnings(&self) -> Vec<Problem> {
        let Some(edge) = &self.node.edge else {
            return Vec::new();
        };
        let mut out: Vec<Problem> = edge
            .public_addresses
            .iter()
            .filter_map(|ip| unreachable_kind(*ip).map(|kind| (ip, kind)))
            .map(|(ip, kind)| Problem {
                file: self.node.path.clone(),
                key: "edge.public_addresses".into(),
                reason: format!(
                    "{ip} is a {kind} address, which DNS hands to users: fine on one machine or a private network only (set the addresses users reach in edge.public_addresses or the cluster map)"
                ),
            })
            .collect();
        if edge.listen.is_empty() {
            if let Some(i) = self.sites.iter().position(|s| s.shield) {
                out.push(Problem {
                    file: self.node.path.clone(),
                    key: "edge.listen".into(),
                    reason: format!(
                        "site {:?} shields, but peers reach an edge on its first plain HTTP listener and this edge has none: it asks its owners, and owns no key itself",
                        self.sites[i].name
                    ),
                });
            }
        }
        if let Some(why) = crate::memory::thread_caches_stay_on().filter(|_| edge.threads > 0) {
            out.push(Problem {
                file: self.node.path.clone(),
                key: "edge.threads".into(),
                reason: format!(
                    "HTTP threads with glibc's per-thread caches on ({why}): they then let a churning cache hold memory well above cache_memory; `meridian run` turns them off itself ({}) where it can",
                    crate::memory::TCACHE_OFF
                ),
            });
        }
        if let Some(d) = &edge.cache_disk {
            // What the store already holds counts as room: it is reused at start.
            let held: u64 = std::fs::read_dir(&d.path)
                .map(|dir| {
                    dir.filter_map(Result::ok)
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                        .sum()
                })
                .unwrap_or(0);
            if let Some((_, free)) = nearest_existing(&d.path).and_then(|p| fs_space(p).ok()) {
                if d.size > free + held {
                    out.push(Problem {
                        file: self.node.path.clone(),
                        key: "edge.cache_disk.size".into(),
                        reason: format!(
                            "{} bytes, but the filesystem has {} bytes free: the edge reserves the size at start and runs memory-only if it cannot",
                            d.size,
                            free + held
                        ),
                    });
                }
            }
        }
        out
    }
}

/// Why users on the internet could not reach `ip`, if they could not.
pub fn unreachable_kind(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("loopback"),
        IpAddr::V4(v4) if v4.is_unspecified() => Some("unspecified"),
        IpAddr::V4(v4) if v4.is_private() => Some("private"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        // 100.64.0.0/10, carrier-grade NAT (RFC 6598).
        IpAddr::V4(v4) if v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 => {
            Some("shared (carrier-grade NAT)")
        }
        IpAddr::V6(v6) if v6.is_loopback() => Some("loopback"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("unspecified"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => Some("unique local"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local"),
        _ => None,
    }
}

/// Loads and validates the node file at `path` and every map it names.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    match load_with_problems(path) {
        (Some(c), problems) if problems.is_empty() => Ok(c),
        (_, problems) => Err(ConfigError { problems }),
    }
}

/// What [`load`] finds, problems and all: the configuration as far as it could be read (`None`
/// when the node file could not be), so that the roles can check the files it names and
/// `meridian check` lists their problems with these.
pub fn load_with_problems(path: &Path) -> (Option<Config>, Vec<Problem>) {
    let mut problems = Vec::new();
    let config = load_into(path, &mut problems);
    (config, problems)
}

/// The largest configuration file read (maps of thousands of sites or edges are well under it):
/// a path that names a device or a huge file by mistake is refused, not read for minutes.
pub(crate) const MAX_FILE_SIZE: u64 = 16 << 20;

/// The shortest admin token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// Reads a configuration file: a regular file of at most [`MAX_FILE_SIZE`] bytes, in UTF-8.
pub(crate) fn read_limited(path: &Path) -> Result<String, String> {
    String::from_utf8(read_file(path, MAX_FILE_SIZE)?)
        .map_err(|_| "cannot read: not UTF-8 text".to_string())
}

/// Reads a whole file that must be a regular file of at most `max` bytes (the configuration's
/// files, the GeoIP database): a path naming a device, a pipe or a huge file is refused before
/// anything is read, not read for minutes.
pub(crate) fn read_file(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read: not a regular file".into());
    }
    let too_large = || format!("larger than {} MiB", max >> 20);
    if meta.len() > max {
        return Err(too_large());
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow between the two looks: never read past the limit.
    file.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot read: {e}"))?;
    if data.len() as u64 > max {
        return Err(too_large());
    }
    Ok(data)
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
            // Some syntax errors (a control character in a comment) carry no message of their
            // own: say what toml's full report says last, or at least that it is not TOML.
            let reason = match e.message().trim() {
                "" => e
                    .to_string()
                    .lines()
                    .rev()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('|') && !l.contains(" | "))
                    .map_or_else(|| "not valid TOML".to_string(), str::to_string),
                m => m.to_string(),
            };
            problems.push(Problem {
                file: path.to_path_buf(),
                key,
                reason,
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
    let map_file = || origin_map.map_or_else(|| node.path.clone(), Path::to_path_buf);
    for (i, site) in sites.iter().enumerate() {
        if site.shield && node.gossip.as_ref().is_none_or(|g| g.key_file.is_none()) {
            problems.push(Problem {
                file: map_file(),
                key: format!("site[{i}].shield"),
                reason: format!(
                    "this edge ({}) does not gossip with a key_file: peers sign their requests with a key derived from the gossip key, and find each other by gossip",
                    node.path.display()
                ),
            });
        }
        if let (Some(region), Some(map)) = (&site.shield_region, cluster) {
            if !map.regions.iter().any(|r| &r.name == region) {
                problems.push(Problem {
                    file: map_file(),
                    key: format!("site[{i}].shield_region"),
                    reason: format!("{region:?} is not a region of the cluster map"),
                });
            }
        }
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
                    file: map_file(),
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
    fn max_origin_requests_is_between_one_and_a_million() {
        let site = |extra: &str| {
            format!("[[site]]\nname = \"a\"\nhosts = [\"a\"]\norigins = [\"http://a\"]\n{extra}\n")
        };
        let (sites, problems) = map(&site(""));
        assert!(problems.is_empty(), "{problems:#?}");
        assert_eq!(sites[0].max_origin_requests, DEFAULT_MAX_ORIGIN_REQUESTS);
        let (sites, _) = map(&site("max_origin_requests = 64"));
        assert_eq!(sites[0].max_origin_requests, 64);
        for bad in ["0", "1000001"] {
            let (_, problems) = map(&site(&format!("max_origin_requests = {bad}")));
            let got: Vec<_> = problems
                .iter()
                .map(|p| (p.key.as_str(), p.reason.as_str()))
                .collect();
            assert_eq!(
                got,
                [(
                    "site[0].max_origin_requests",
                    format!("{bad} is not between 1 and 1000000").as_str()
                )]
            );
        }
        let (_, problems) = map(&site("max_origin_requests = -1"));
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].file == Path::new("origins.toml"));
    }

    #[test]
    fn a_clients_share_of_origin_requests_is_a_quarter_by_default_and_at_most_the_sites() {
        let site = |extra: &str| {
            format!("[[site]]\nname = \"a\"\nhosts = [\"a\"]\norigins = [\"http://a\"]\n{extra}\n")
        };
        let (sites, problems) = map(&site(""));
        assert!(problems.is_empty(), "{problems:#?}");
        assert_eq!(
            sites[0].max_origin_requests_per_client,
            DEFAULT_MAX_ORIGIN_REQUESTS / 4
        );
        let (sites, _) = map(&site("max_origin_requests = 2"));
        assert_eq!(sites[0].max_origin_requests_per_client, 1);
        let (sites, _) = map(&site("max_origin_requests_per_client = 3"));
        assert_eq!(sites[0].max_origin_requests_per_client, 3);
        for bad in ["0", "65"] {
            let (_, problems) = map(&site(&format!(
                "max_origin_requests = 64\nmax_origin_requests_per_client = {bad}"
            )));
            let got: Vec<_> = problems
                .iter()
                .map(|p| (p.file.to_str().unwrap(), p.key.as_str(), p.reason.as_str()))
                .collect();
            assert_eq!(
                got,
                [(
                    "origins.toml",
                    "site[0].max_origin_requests_per_client",
                    format!("{bad} is not between 1 and max_origin_requests (64)").as_str()
                )]
            );
        }
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
        // What the key file holds is the gossip role's to judge (`app`'s tests).
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
    fn quic_settings_are_checked_with_their_keys() {
        let node = format!(
            "{EDGE}[edge.quic]\nlisten = [\"nope\"]\nmax_udp_payload = 1000\nmax_concurrent_streams = 0\nadvertise_port = 0\nidle_timeout = \"0s\"\nzero_rtt = true\n"
        );
        let keys: Vec<String> = node_problems(&node, &[ORIGINS])
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            keys,
            [
                "edge.quic.zero_rtt",
                "edge.quic.listen[0]",
                "edge.quic.advertise_port",
                "edge.quic.max_concurrent_streams",
                "edge.quic.max_udp_payload",
                "edge.quic.idle_timeout",
            ]
        );
        let good = format!("{EDGE}[edge.quic]\nlisten = [\"127.0.0.1:8443\"]\n");
        assert!(node_problems(&good, &[ORIGINS]).is_empty());
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
    fn shielding_is_checked_against_the_node_and_the_cluster_map() {
        let site = |extra: &str| ("o.toml", format!("{}{extra}\n", ORIGINS.1));
        let node = EDGE.replace("region = \"r\"", "region = \"r\"\ncluster_map = \"c.toml\"");
        let keyed = format!("{node}[gossip]\nlisten = \"127.0.0.1:7946\"\nkey_file = \"g.key\"\n");
        let key = ("g.key", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n");
        let problems = |node: &str, extra: &str| {
            let (name, text) = site(extra);
            node_problems(node, &[(name, &text), ("c.toml", MAP), key])
        };
        assert!(problems(&keyed, "shield = \"region\"\nshield_region = \"r\"").is_empty());
        // Without gossip (or its key) there is no one to ask and nothing to sign with.
        let p = problems(&node, "shield = \"region\"");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "site[0].shield");
        assert!(p[0].1.contains("key_file"), "{p:?}");
        let p = problems(&keyed, "shield = \"regoin\"");
        assert_eq!(p[0].0, "site[0].shield");
        assert!(p[0].1.contains("\"regoin\" is not one of"), "{p:?}");
        let p = problems(&keyed, "shield_region = \"r\"");
        assert_eq!(p[0].0, "site[0].shield_region");
        let p = problems(&keyed, "shield = \"region\"\nshield_region = \"eu\"");
        assert_eq!(
            p,
            [(
                "site[0].shield_region".to_string(),
                "\"eu\" is not a region of the cluster map".to_string()
            )]
        );
        let p = node_problems(
            &EDGE.replace("[edge]", "[edge]\npeer_timeout = \"0s\""),
            &[ORIGINS],
        );
        assert_eq!(p[0].0, "edge.peer_timeout");
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
    fn a_disk_tier_raises_the_default_object_size_and_allows_more_than_memory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ORIGINS.0), ORIGINS.1).unwrap();
        let max = |node: &str| {
            std::fs::write(dir.path().join("node.toml"), node).unwrap();
            let c = load(&dir.path().join("node.toml")).unwrap_or_else(|e| panic!("{e}"));
            c.node.edge.unwrap().max_object_size
        };
        assert_eq!(max(EDGE), 16 << 20);
        let disk = format!("{EDGE}cache_disk = {{ path = \"d\", size = \"4GiB\" }}\n");
        assert_eq!(max(&disk), 1 << 30);
        let small = format!("{EDGE}cache_disk = {{ path = \"d\", size = \"64MiB\" }}\n");
        assert_eq!(max(&small), 32 << 20, "at most half the disk tier");
        let over = format!("{EDGE}cache_memory = \"64MiB\"\nmax_object_size = \"512MiB\"\n");
        let problems = node_problems(&over, &[ORIGINS]);
        assert!(
            problems[0].1.contains("larger than edge.cache_memory"),
            "{problems:?}"
        );
        let with_disk = format!(
            "{EDGE}cache_memory = \"64MiB\"\nmax_object_size = \"512MiB\"\ncache_disk = {{ path = \"d\", size = \"4GiB\" }}\n"
        );
        assert!(node_problems(&with_disk, &[ORIGINS]).is_empty());
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

    #[test]
    fn ids_and_regions_are_names_gossip_accepts() {
        // As written in TOML.
        let long = format!("\"{}\"", "e".repeat(65));
        for (id, region) in [
            ("\"edge a\"", "\"r\""),
            ("\"e\"", "\"eu\\u001bwest\""),
            (long.as_str(), "\"r\""),
        ] {
            let node = EDGE
                .replace("id = \"e\"", &format!("id = {id}"))
                .replace("region = \"r\"", &format!("region = {region}"));
            let problems = node_problems(&node, &[ORIGINS]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].1.contains("printable"), "{problems:?}");
        }
    }

    #[test]
    fn a_log_level_that_is_not_ascii_is_a_problem_not_a_panic() {
        let node = EDGE.replace("[edge]", "[log]\nlevel = \"red\u{39e}=H\"\n[edge]");
        let problems = node_problems(&node, &[ORIGINS]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "log.level");
        assert!(problems[0].1.contains("target=level"), "{problems:?}");
        // Span field filters, whose patterns can take minutes to build, are refused too; plain
        // ones pass.
        let span = EDGE.replace(
            "[edge]",
            "[log]\nlevel = \"info,[admin{n=H.........g|g}]=debug\"\n[edge]",
        );
        assert_eq!(node_problems(&span, &[ORIGINS])[0].0, "log.level");
        let plain = EDGE.replace(
            "[edge]",
            "[log]\nlevel = \"info,meridian::access=off,hickory_server=warn\"\n[edge]",
        );
        assert!(node_problems(&plain, &[ORIGINS]).is_empty());
    }
}
