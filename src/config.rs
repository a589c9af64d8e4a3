//! Configuration: the node file and the origin map it names.
//!
//! `load(path)` reads the node file, then every map it names, parses them with serde
//! (`deny_unknown_fields`) and validates the whole into a [`Config`]. Parsing is separate from
//! reading files (`parse_*` take text) and validation collects *every* problem with its file,
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
#[serde(deny_unknown_fields)]
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
    admin: Option<RawAdmin>,
}

fn default_roles() -> Vec<String> {
    vec!["edge".to_string()]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
    access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    listen: Vec<String>,
    cache_memory: Option<String>,
    max_object_size: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_header_size: Option<String>,
    max_connections: Option<usize>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    token_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOriginMap {
    #[serde(default)]
    site: Vec<RawSite>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: String,
    hosts: Vec<String>,
    origins: Vec<String>,
    host_header: Option<String>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    default_ttl: Option<String>,
    #[serde(default)]
    heuristic_freshness: bool,
    ca_file: Option<String>,
    #[serde(default)]
    cache_key: RawCacheKey,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCacheKey {
    query: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
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
    /// The admin listener, when configured.
    pub admin: Option<AdminConfig>,
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
    /// Bytes of response bodies and headers the cache may hold.
    pub cache_memory: u64,
    /// Largest object the cache stores; larger ones stream through.
    pub max_object_size: u64,
    /// Time a client has to send a complete request head.
    pub header_read_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    pub max_header_size: usize,
    /// Open client connections at most; further connections wait to be accepted.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown.
    pub shutdown_grace: Duration,
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
    /// Time from sending a request to the response head.
    pub first_byte_timeout: Duration,
    /// Freshness for responses that carry no freshness information (none by default).
    pub default_ttl: Option<Duration>,
    /// Use the 10% Last-Modified heuristic (RFC 9111 §4.2.2).
    pub heuristic_freshness: bool,
    /// PEM bundle of CAs trusted for HTTPS origins; system roots when unset.
    pub ca_file: Option<PathBuf>,
    /// Query string handling in the cache key.
    pub query_key: QueryKey,
    /// Request headers added to the cache key (lower-case).
    pub key_headers: Vec<String>,
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

fn read(path: &Path, problems: &mut Vec<Problem>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(Problem {
                file: path.to_path_buf(),
                key: String::new(),
                reason: format!("cannot read: {e}"),
            });
            None
        }
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match toml::from_str(text) {
        Ok(v) => Some(v),
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
    Some(Config { node, sites })
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
    for (i, role) in raw.roles.iter().enumerate() {
        match role.as_str() {
            "edge" => edge_role = true,
            "dns" => r.add(
                format!("roles[{i}]"),
                "the dns role is not available in this build yet",
            ),
            other => r.add(
                format!("roles[{i}]"),
                format!("unknown role {other:?} (expected \"edge\" or \"dns\")"),
            ),
        }
    }
    if raw.roles.is_empty() {
        r.add("roles", "must name at least one role");
    }
    let _ = &raw.cluster_map;

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

    let admin = raw.admin.as_ref().map(|a| {
        let listen = r
            .addr("admin.listen", &a.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let token = a.token_file.as_ref().and_then(|name| {
            let token_path = resolve(path, name);
            match std::fs::read_to_string(&token_path) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                Ok(_) => {
                    r.add(
                        "admin.token_file",
                        format!("{} is empty", token_path.display()),
                    );
                    None
                }
                Err(e) => {
                    r.add(
                        "admin.token_file",
                        format!("cannot read {}: {e}", token_path.display()),
                    );
                    None
                }
            }
        });
        AdminConfig { listen, token }
    });

    NodeConfig {
        path: path.to_path_buf(),
        id: raw.id.clone(),
        region: raw.region.clone(),
        log,
        edge,
        admin,
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

fn validate_edge(r: &mut Report<'_>, e: &RawEdge) -> EdgeConfig {
    let listen: Vec<SocketAddr> = e
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| r.addr(&format!("edge.listen[{i}]"), a))
        .collect();
    if e.listen.is_empty() {
        r.add("edge.listen", "must name at least one address");
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
        max_header_size: max_header_size.max(8192) as usize,
        max_connections: max_connections.max(1),
        shutdown_grace: r.duration(
            "edge.shutdown_grace",
            &e.shutdown_grace,
            default_shutdown_grace(),
        ),
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
            default_ttl,
            heuristic_freshness: s.heuristic_freshness,
            ca_file,
            query_key,
            key_headers,
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
    fn unknown_field_names_file_and_line() {
        let (_, problems) =
            map("[[site]]\nname = \"a\"\nhosts=[\"a\"]\norigins=[\"http://a\"]\nbogus = 1\n");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "line 5");
        assert!(
            problems[0].reason.contains("bogus"),
            "{}",
            problems[0].reason
        );
    }
}
