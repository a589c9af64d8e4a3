//! The origin map: the sites an edge serves, their origins, timeouts, cache keys and
//! certificates, read and validated whole.

use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct RawOriginMap {
    #[serde(default)]
    site: Vec<RawSite>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawSite {
    name: String,
    hosts: Vec<String>,
    origins: Vec<String>,
    host_header: Option<String>,
    connect_timeout: Option<String>,
    first_byte_timeout: Option<String>,
    origin_read_timeout: Option<String>,
    max_origin_requests: Option<usize>,
    max_origin_requests_per_client: Option<usize>,
    default_ttl: Option<String>,
    #[serde(default)]
    heuristic_freshness: bool,
    #[serde(default)]
    strip_set_cookie: bool,
    #[serde(default)]
    ignore_client_cache_control: bool,
    ca_file: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    #[serde(default)]
    cache_key: RawCacheKey,
    shield: Option<String>,
    shield_region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawCacheKey {
    query: Option<String>,
    #[serde(default)]
    headers: Vec<String>,
    scheme: Option<bool>,
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
    /// Requests this site may have at its origins at once (each holds an origin connection
    /// until its response body is read whole); more wait up to `connect_timeout` for one to
    /// end, then get 503.
    pub max_origin_requests: usize,
    /// Of those, what one client address (an IPv6 /64) may have at once; more of its requests
    /// wait up to `connect_timeout` for one of its own to end, then get 429. A quarter of
    /// `max_origin_requests` by default, so that no one client holds them all; requests of the
    /// cluster's edges (signed peer hops) count only against the site's limit.
    pub max_origin_requests_per_client: usize,
    /// Freshness for responses that carry no freshness information (none by default).
    pub default_ttl: Option<Duration>,
    /// Use the 10% Last-Modified heuristic (RFC 9111 §4.2.2).
    pub heuristic_freshness: bool,
    /// Store responses that carry `Set-Cookie` (without it) instead of never storing them.
    pub strip_set_cookie: bool,
    /// Requests' `Cache-Control` and `Pragma` do not decide whether a stored response is used
    /// (a browser's reload, or anyone, cannot make the edge ask the origin again).
    pub ignore_client_cache_control: bool,
    /// The scheme (http or https) reaches the origin and selects the stored variant.
    pub key_scheme: bool,
    /// PEM bundle of CAs trusted for HTTPS origins; system roots when unset (read and checked
    /// by the edge role, `origin::read_ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Query string handling in the cache key.
    pub query_key: QueryKey,
    /// Request headers added to the cache key (lower-case).
    pub key_headers: Vec<String>,
    /// The certificate served for the site's hosts on the TLS listeners.
    pub tls: Option<SiteTls>,
    /// Tiered caching (`shield = "region"`): a miss asks the key's owner among the live edges
    /// of this edge's region rather than the origin.
    pub shield: bool,
    /// The region whose owners alone ask the origin; every other region's owners ask them.
    pub shield_region: Option<String>,
}

/// The files of a site's certificate. The edge role reads and checks them (`http::tls`) when it
/// starts, reloads or is checked.
#[derive(Debug, Clone)]
pub struct SiteTls {
    /// The PEM chain, leaf first.
    pub cert_file: PathBuf,
    /// The PEM private key.
    pub key_file: PathBuf,
}

pub(super) fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
/// Requests a site may have at its origins at once unless it says otherwise (Envoy's default
/// for a cluster's requests, too).
pub const DEFAULT_MAX_ORIGIN_REQUESTS: usize = 1024;

/// The most `max_origin_requests` may say.
const MAX_ORIGIN_REQUESTS: usize = 1_000_000;

pub(super) fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_origin_read_timeout() -> Duration {
    Duration::from_secs(30)
}
/// Parses and validates an origin map's text; `path` names it in problems and anchors relative
/// paths (`ca_file`).
pub(super) fn parse_origin_map(
    path: &Path,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Vec<SiteConfig> {
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
        let default_ttl = s
            .default_ttl
            .as_ref()
            .map(|_| r.duration(&k("default_ttl"), &s.default_ttl, Duration::ZERO));
        let tls = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => Some(SiteTls {
                cert_file: resolve(path, cert),
                key_file: resolve(path, key),
            }),
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
        let shield = match s.shield.as_deref() {
            None | Some("off") => false,
            Some("region") => true,
            Some(other) => {
                r.add(
                    k("shield"),
                    format!("{other:?} is not one of \"region\", \"off\""),
                );
                false
            }
        };
        if s.shield_region.is_some() && !shield {
            r.add(
                k("shield_region"),
                "needs shield = \"region\" (the region tier asks the shield region's owners)",
            );
        }
        let max_origin_requests = s.max_origin_requests.unwrap_or(DEFAULT_MAX_ORIGIN_REQUESTS);
        if !(1..=MAX_ORIGIN_REQUESTS).contains(&max_origin_requests) {
            r.add(
                k("max_origin_requests"),
                format!("{max_origin_requests} is not between 1 and {MAX_ORIGIN_REQUESTS}"),
            );
        }
        let max_origin_requests = max_origin_requests.clamp(1, MAX_ORIGIN_REQUESTS);
        let per_client = s
            .max_origin_requests_per_client
            .unwrap_or((max_origin_requests / 4).max(1));
        if !(1..=max_origin_requests).contains(&per_client) {
            r.add(
                k("max_origin_requests_per_client"),
                format!(
                    "{per_client} is not between 1 and max_origin_requests ({max_origin_requests})"
                ),
            );
        }
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
            max_origin_requests,
            max_origin_requests_per_client: per_client.clamp(1, max_origin_requests),
            default_ttl,
            heuristic_freshness: s.heuristic_freshness,
            strip_set_cookie: s.strip_set_cookie,
            ignore_client_cache_control: s.ignore_client_cache_control,
            key_scheme: s.cache_key.scheme.unwrap_or(true),
            ca_file,
            query_key,
            key_headers,
            tls,
            shield,
            shield_region: s.shield_region.clone(),
        });
    }
    sites
}

pub(super) fn parse_origin(text: &str) -> Result<Uri, String> {
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
