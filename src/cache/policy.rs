//! Pure caching decisions for a shared cache: RFC 9111, RFC 5861 and RFC 9213.
//!
//! Receives request and response heads (methods, status codes, header maps) and times; hands the
//! handler two decisions: whether a response may be stored and for how long ([`storability`]),
//! and whether a stored response may answer a request ([`reuse`]). No I/O, no clocks: every time
//! is an argument, which keeps these functions deterministic and cheap to test.
//!
//! Precedence of response directives (RFC 9213 §2.1): the first of `CDN-Cache-Control` and
//! `Surrogate-Control` with a valid, non-empty value replaces `Cache-Control` *and* `Expires` for
//! this cache. `Cache-Control` is still passed on to clients unchanged.
//!
//! Parsing: `Cache-Control` by RFC 9111 §5.2 (`token[=(token|quoted-string)]`, no space around
//! `=`; a directive given twice counts the first time, §4.2.1). The targeted fields are
//! structured-field dictionaries (RFC 8941, `cache::sf`): a value that is not one, or a known
//! directive with a value of the wrong type, makes the whole field ignored; a repeated key counts
//! the last time, as RFC 8941 says. Delta-seconds too large for any integer are 2^31 (§1.2.2).

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use super::sf;

/// Largest delta-seconds value honoured (RFC 9111 §1.2.2).
const MAX_DELTA: u64 = 1 << 31;
/// Cap on heuristic freshness, whatever Last-Modified says.
const MAX_HEURISTIC: Duration = Duration::from_secs(86_400);

/// Response directives that concern a shared cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    /// `no-cache`, qualified or not: a qualified one is treated as unqualified (conservative).
    pub(crate) no_cache: bool,
    /// `private`, qualified or not: never stored by a shared cache (conservative).
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
}

/// Request directives (RFC 9111 §5.2.1, RFC 5861 §4).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
    pub(crate) only_if_cached: bool,
    pub(crate) max_age: Option<u64>,
    /// `max-stale` without a value accepts any staleness: `Some(u64::MAX)`.
    pub(crate) max_stale: Option<u64>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
}

/// Splits a directive list into (lower-cased name, unquoted value) pairs, honouring quoted
/// strings that contain commas.
fn directives(value: &str) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let bytes = value.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts.into_iter().filter_map(|part| {
        let part = part.trim();
        if part.is_empty() {
            return None;
        }
        let (name, arg) = match part.split_once('=') {
            // No whitespace around '=' (RFC 9111 §5.2): `max-age =60` is not max-age.
            Some((n, v)) if n.ends_with([' ', '\t']) || v.starts_with([' ', '\t']) => return None,
            Some((n, v)) => (n, Some(unquote(v))),
            None => (part, None),
        };
        Some((name.to_ascii_lowercase(), arg))
    })
}

/// The value of a token or quoted-string argument.
fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if escaped || c != '\\' {
                    out.push(c);
                    escaped = false;
                } else {
                    escaped = true;
                }
            }
            out
        }
        None => v.to_string(),
    }
}

/// Parses delta-seconds (digits only); more than fit is 2^31 (RFC 9111 §1.2.2), anything else
/// is invalid and counts as 0 (a cache may treat it as stale).
fn delta(arg: &Option<String>) -> u64 {
    match arg.as_deref() {
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
            a.parse::<u64>().map_or(MAX_DELTA, |v| v.min(MAX_DELTA))
        }
        _ => 0,
    }
}

/// Sets a directive's value unless an earlier occurrence did (RFC 9111 §4.2.1).
fn first(slot: &mut Option<u64>, value: u64) {
    slot.get_or_insert(value);
}

fn joined<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<String> {
    let mut out = String::new();
    for v in values {
        let Ok(s) = v.to_str() else { continue };
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(s);
    }
    (!out.trim().is_empty()).then_some(out)
}

fn parse_response_directives(text: &str) -> ResponseDirectives {
    let mut d = ResponseDirectives::default();
    for (name, arg) in directives(text) {
        match name.as_str() {
            "no-store" => d.no_store = true,
            "no-cache" => d.no_cache = true,
            "private" => d.private = true,
            "public" => d.public = true,
            "must-revalidate" => d.must_revalidate = true,
            "proxy-revalidate" => d.proxy_revalidate = true,
            "max-age" => first(&mut d.max_age, delta(&arg)),
            "s-maxage" => first(&mut d.s_maxage, delta(&arg)),
            "stale-while-revalidate" => first(&mut d.stale_while_revalidate, delta(&arg)),
            "stale-if-error" => first(&mut d.stale_if_error, delta(&arg)),
            _ => {}
        }
    }
    d
}

/// Reads a targeted field (a structured-field dictionary); `None` if it is not a valid one or
/// a directive this cache knows has a value of the wrong type.
fn parse_targeted_directives(text: &str) -> Option<ResponseDirectives> {
    let members = sf::dictionary(text).ok()?;
    let mut d = ResponseDirectives::default();
    for (name, item) in members {
        let seconds = |item: sf::Item| match item {
            sf::Item::Integer(v) if v >= 0 => Some((v as u64).min(MAX_DELTA)),
            _ => None,
        };
        // A repeated key: the last counts (RFC 8941 §3.2), so each assignment overwrites.
        match name.as_str() {
            "no-store" => d.no_store = true,
            "no-cache" => d.no_cache = true,
            "private" => d.private = true,
            "public" => d.public = true,
            "must-revalidate" => d.must_revalidate = true,
            "proxy-revalidate" => d.proxy_revalidate = true,
            "max-age" => d.max_age = Some(seconds(item)?),
            "s-maxage" => d.s_maxage = Some(seconds(item)?),
            "stale-while-revalidate" => d.stale_while_revalidate = Some(seconds(item)?),
            "stale-if-error" => d.stale_if_error = Some(seconds(item)?),
            _ => {}
        }
    }
    Some(d)
}

/// Where the directives that govern this cache came from (all three are `...-Control` fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum DirectiveSource {
    CdnCacheControl,
    SurrogateControl,
    CacheControl,
}

/// The directives that govern this cache for a response (RFC 9213 §2.1 precedence).
pub(crate) fn response_directives(headers: &HeaderMap) -> (ResponseDirectives, DirectiveSource) {
    for (name, source) in [
        ("cdn-cache-control", DirectiveSource::CdnCacheControl),
        ("surrogate-control", DirectiveSource::SurrogateControl),
    ] {
        if let Some(text) = joined(headers.get_all(name).iter()) {
            // A targeted field counts only if it is valid and says something this cache
            // understands (RFC 9213 §2.1).
            if let Some(d) = parse_targeted_directives(&text) {
                if d != ResponseDirectives::default() {
                    return (d, source);
                }
            }
        }
    }
    let text = joined(headers.get_all(header::CACHE_CONTROL).iter()).unwrap_or_default();
    (
        parse_response_directives(&text),
        DirectiveSource::CacheControl,
    )
}

/// Parses the request's cache directives; `Pragma: no-cache` counts only without Cache-Control.
pub(crate) fn request_directives(headers: &HeaderMap) -> RequestDirectives {
    let mut d = RequestDirectives::default();
    // Most requests carry neither: one pass over the names costs less than looking up two
    // absent ones (about 110 instructions each), and this runs for every GET, hits included.
    if !headers
        .keys()
        .any(|n| n == header::CACHE_CONTROL || n == header::PRAGMA)
    {
        return d;
    }
    match joined(headers.get_all(header::CACHE_CONTROL).iter()) {
        Some(text) => {
            for (name, arg) in directives(&text) {
                match name.as_str() {
                    "no-cache" => d.no_cache = true,
                    "no-store" => d.no_store = true,
                    "only-if-cached" => d.only_if_cached = true,
                    "max-age" => first(&mut d.max_age, delta(&arg)),
                    "max-stale" => first(
                        &mut d.max_stale,
                        match arg {
                            None => u64::MAX,
                            Some(_) => delta(&arg),
                        },
                    ),
                    "min-fresh" => first(&mut d.min_fresh, delta(&arg)),
                    "stale-if-error" => first(&mut d.stale_if_error, delta(&arg)),
                    _ => {}
                }
            }
        }
        None => {
            if let Some(p) = joined(headers.get_all(header::PRAGMA).iter()) {
                d.no_cache = directives(&p).any(|(n, _)| n == "no-cache");
            }
        }
    }
    d
}

/// Why a response is not stored. The name goes into `Cache-Status: ...; detail=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStorable {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    VaryStar,
    SetCookie,
    NoFreshness,
}

impl NotStorable {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::Authorization => "authorization",
            NotStorable::VaryStar => "vary-star",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::NoFreshness => "no-freshness",
        }
    }
}

/// Freshness facts of a storable response, fixed when it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    /// Freshness lifetime (RFC 9111 §4.2.1).
    pub(crate) lifetime: Duration,
    /// Corrected initial age (RFC 9111 §4.2.3).
    pub(crate) initial_age: Duration,
    /// stale-while-revalidate window (RFC 5861 §3).
    pub(crate) stale_while_revalidate: Duration,
    /// stale-if-error window (RFC 5861 §4).
    pub(crate) stale_if_error: Duration,
    /// must-revalidate, proxy-revalidate, or s-maxage (which implies proxy-revalidate): no stale
    /// use on the client's say-so (`max-stale`).
    pub(crate) revalidate_strict: bool,
    /// must-revalidate or proxy-revalidate given literally: no stale use at all, not even with
    /// RFC 5861 windows.
    pub(crate) no_stale: bool,
    /// no-cache: every use needs a successful revalidation.
    pub(crate) no_cache: bool,
}

/// The timing of one exchange with the origin, for age calculation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    pub(crate) request_time: SystemTime,
    pub(crate) response_time: SystemTime,
}

/// Site settings that affect storability.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SitePolicy {
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) heuristic_freshness: bool,
    /// Responses with `Set-Cookie` may be stored (without it); otherwise they never are.
    pub(crate) strip_set_cookie: bool,
}

/// Status codes that are heuristically cacheable (RFC 9110 §15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
}

fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// Decides whether a response to a GET may be stored by this shared cache, and its freshness
/// (RFC 9111 §3 and §4.2).
///
/// Hazard: storing a response that carries credentials-dependent content in a shared cache leaks
/// it to every user. Hence `Authorization` requests (§3.5) are stored only with an explicit
/// shared-cache directive (`public`, `s-maxage`, `must-revalidate`, or a targeted field), and
/// `Set-Cookie` responses never, unless the site opts in (and then the stored copy has no
/// `Set-Cookie`: the handler keeps it for the client that caused the fetch).
pub(crate) fn storability(
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    resp_headers: &HeaderMap,
    exchange: Exchange,
    site: SitePolicy,
) -> Result<Freshness, NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    // Partial content and 304s are never stored as objects; 1xx never reach here.
    if status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
    {
        return Err(NotStorable::Status);
    }
    let (d, source) = response_directives(resp_headers);
    let targeted = source != DirectiveSource::CacheControl;
    if d.no_store {
        return Err(NotStorable::NoStore);
    }
    if d.private {
        return Err(NotStorable::Private);
    }
    let explicit_shared = d.public || d.s_maxage.is_some() || d.must_revalidate || targeted;
    if req_headers.contains_key(header::AUTHORIZATION) && !explicit_shared {
        return Err(NotStorable::Authorization);
    }
    if resp_headers.contains_key(header::SET_COOKIE) && !site.strip_set_cookie {
        return Err(NotStorable::SetCookie);
    }
    if resp_headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|p| p.trim() == "*"))
            .unwrap_or(true)
    }) {
        return Err(NotStorable::VaryStar);
    }

    let date = http_date(resp_headers, header::DATE).unwrap_or(exchange.response_time);
    let explicit = if let Some(s) = d.s_maxage {
        Some(Duration::from_secs(s))
    } else if let Some(m) = d.max_age {
        Some(Duration::from_secs(m))
    } else if targeted {
        None
    } else if let Some(expires) = resp_headers.get(header::EXPIRES) {
        // An invalid Expires (such as "0") means already expired (RFC 9111 §5.3).
        let at = expires
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok());
        Some(
            at.and_then(|at| at.duration_since(date).ok())
                .unwrap_or(Duration::ZERO),
        )
    } else {
        None
    };

    let lifetime = match explicit {
        Some(l) => l,
        None => {
            if !(heuristically_cacheable(status) || d.public) {
                return Err(NotStorable::Status);
            }
            let heuristic = if site.heuristic_freshness {
                http_date(resp_headers, header::LAST_MODIFIED)
                    .and_then(|lm| date.duration_since(lm).ok())
                    .map(|since| (since / 10).min(MAX_HEURISTIC))
            } else {
                None
            };
            heuristic.or(site.default_ttl).unwrap_or(Duration::ZERO)
        }
    };

    let swr = Duration::from_secs(d.stale_while_revalidate.unwrap_or(0));
    let sie = Duration::from_secs(d.stale_if_error.unwrap_or(0));
    // Storing something that can never be reused would only evict useful objects.
    if lifetime.is_zero() && swr.is_zero() && sie.is_zero() && !has_validator(resp_headers) {
        return Err(NotStorable::NoFreshness);
    }

    // RFC 9111 §4.2.3. Targeted fields aside, Age from upstream caches counts.
    // The first value of the first field line (`Age: 7200, 0` is 7200).
    let age_value = resp_headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(',').next())
        .map(|s| delta(&Some(s.trim().to_string())))
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO);
    // Date has whole-second resolution: compare whole seconds, or every response would look
    // up to a second old the moment it arrives.
    let whole = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let apparent_age =
        Duration::from_secs(whole(exchange.response_time).saturating_sub(whole(date)));
    let response_delay = exchange
        .response_time
        .duration_since(exchange.request_time)
        .unwrap_or(Duration::ZERO);
    let initial_age = apparent_age.max(age_value + response_delay);

    Ok(Freshness {
        lifetime,
        initial_age,
        stale_while_revalidate: swr,
        stale_if_error: sie,
        revalidate_strict: d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some(),
        no_stale: d.must_revalidate || d.proxy_revalidate,
        no_cache: d.no_cache,
    })
}

/// What to do with a stored response for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Serve it (fresh, or stale within the client's `max-stale`).
    Hit,
    /// Serve it stale now and refresh it in the background (RFC 5861 §3).
    StaleWhileRevalidate,
    /// Validate (or refetch) with the origin first; the client's directives demanded it.
    RevalidateRequested,
    /// Validate (or refetch) with the origin first; it is stale or marked no-cache.
    Revalidate,
}

/// Decides whether a stored response with freshness `f` and current age `age` may answer a
/// request with directives `req` (RFC 9111 §4, §5.2.1; RFC 5861).
pub(crate) fn reuse(f: &Freshness, age: Duration, req: &RequestDirectives) -> Reuse {
    if req.no_cache {
        return Reuse::RevalidateRequested;
    }
    if f.no_cache {
        return Reuse::Revalidate;
    }
    let fresh = age < f.lifetime;
    if fresh {
        let too_old = req.max_age.is_some_and(|m| age > Duration::from_secs(m));
        let not_fresh_enough = req
            .min_fresh
            .is_some_and(|m| f.lifetime - age < Duration::from_secs(m));
        if !(too_old || not_fresh_enough) {
            return Reuse::Hit;
        }
        return Reuse::RevalidateRequested;
    }
    let staleness = age - f.lifetime;
    // max-stale is the client's permission; must-revalidate, proxy-revalidate and s-maxage
    // forbid it (RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.10). max-age in the request still bounds age.
    if let Some(ms) = req.max_stale {
        let within = ms == u64::MAX || staleness <= Duration::from_secs(ms);
        let age_ok = req.max_age.is_none_or(|m| age <= Duration::from_secs(m));
        if within && age_ok && !f.revalidate_strict {
            return Reuse::Hit;
        }
    }
    // RFC 5861 windows are the origin's explicit permission; a literal must-revalidate or
    // proxy-revalidate still wins over them.
    if !f.no_stale && staleness <= f.stale_while_revalidate && !f.stale_while_revalidate.is_zero() {
        return Reuse::StaleWhileRevalidate;
    }
    if req.max_age.is_some() || req.min_fresh.is_some() || req.max_stale.is_some() {
        return Reuse::RevalidateRequested;
    }
    Reuse::Revalidate
}

/// Whether a stored response may be served because the origin failed (RFC 5861 §4): within the
/// response's stale-if-error window, or the request's.
pub(crate) fn stale_if_error(f: &Freshness, age: Duration, req: &RequestDirectives) -> bool {
    if f.no_stale {
        return false;
    }
    let staleness = age.saturating_sub(f.lifetime);
    let window = req
        .stale_if_error
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO)
        .max(f.stale_if_error);
    !window.is_zero() && staleness <= window
}

/// Whether the origin's answer counts as an error for stale-if-error: 500, 502, 503, 504.
pub(crate) fn is_error_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// Methods whose success invalidates stored responses (RFC 9111 §4.4): everything unsafe.
pub(crate) fn invalidates(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn exchange() -> Exchange {
        Exchange {
            request_time: now(),
            response_time: now(),
        }
    }

    fn store(resp: &[(&str, &str)]) -> Result<Freshness, NotStorable> {
        storability(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(resp),
            exchange(),
            SitePolicy::default(),
        )
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let f = store(&[("cache-control", "max-age=60, s-maxage=120")]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(120));
        assert!(f.revalidate_strict && !f.no_stale);
        let f = store(&[
            ("cache-control", "max-age=60"),
            (
                "expires",
                &httpdate::fmt_http_date(now() + Duration::from_secs(600)),
            ),
            ("date", &httpdate::fmt_http_date(now())),
        ])
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(60));
        let f = store(&[
            (
                "expires",
                &httpdate::fmt_http_date(now() + Duration::from_secs(600)),
            ),
            ("date", &httpdate::fmt_http_date(now())),
        ])
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(600));
        // Invalid Expires is already expired; with no validator there is nothing to keep.
        assert_eq!(store(&[("expires", "0")]), Err(NotStorable::NoFreshness));
    }

    #[test]
    fn targeted_fields_take_precedence() {
        let f = store(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=300"),
        ])
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(300));
        let f = store(&[
            ("cache-control", "max-age=10"),
            ("surrogate-control", "max-age=30"),
        ])
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(30));
        assert_eq!(
            store(&[
                ("cache-control", "max-age=10"),
                ("cdn-cache-control", "no-store"),
                ("surrogate-control", "max-age=30"),
            ]),
            Err(NotStorable::NoStore)
        );
        // An empty or meaningless targeted field falls back to Cache-Control.
        let f = store(&[
            ("cache-control", "max-age=10"),
            ("cdn-cache-control", "foo"),
        ])
        .unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(10));
    }

    #[test]
    fn shared_cache_refusals() {
        assert_eq!(
            store(&[("cache-control", "private, max-age=60")]),
            Err(NotStorable::Private)
        );
        assert_eq!(
            store(&[("cache-control", "no-store")]),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            store(&[("cache-control", "max-age=60"), ("vary", "*")]),
            Err(NotStorable::VaryStar)
        );
        assert_eq!(
            store(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]),
            Err(NotStorable::SetCookie)
        );
        let auth = headers(&[("authorization", "Bearer x")]);
        let r = |resp| {
            storability(
                &Method::GET,
                &auth,
                StatusCode::OK,
                &headers(resp),
                exchange(),
                SitePolicy::default(),
            )
        };
        assert_eq!(
            r(&[("cache-control", "max-age=60")]),
            Err(NotStorable::Authorization)
        );
        assert!(r(&[("cache-control", "public, max-age=60")]).is_ok());
        assert!(r(&[("cache-control", "s-maxage=60")]).is_ok());
        assert!(r(&[("cache-control", "must-revalidate, max-age=60")]).is_ok());
    }

    #[test]
    fn heuristics_only_where_enabled() {
        let lm = httpdate::fmt_http_date(now() - Duration::from_secs(1000));
        let date = httpdate::fmt_http_date(now());
        let resp = headers(&[("last-modified", &lm), ("date", &date)]);
        let run = |site, status| {
            storability(
                &Method::GET,
                &HeaderMap::new(),
                status,
                &resp,
                exchange(),
                site,
            )
        };
        // Without heuristics: stored with zero lifetime only because it has a validator.
        assert_eq!(
            run(SitePolicy::default(), StatusCode::OK).unwrap().lifetime,
            Duration::ZERO
        );
        let site = SitePolicy {
            heuristic_freshness: true,
            ..SitePolicy::default()
        };
        assert_eq!(
            run(site, StatusCode::OK).unwrap().lifetime,
            Duration::from_secs(100)
        );
        // 302 is not heuristically cacheable.
        assert_eq!(run(site, StatusCode::FOUND), Err(NotStorable::Status));
        let site = SitePolicy {
            default_ttl: Some(Duration::from_secs(5)),
            ..SitePolicy::default()
        };
        assert_eq!(
            run(site, StatusCode::OK).unwrap().lifetime,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn age_counts_upstream_age_and_delay() {
        let ex = Exchange {
            request_time: now(),
            response_time: now() + Duration::from_secs(2),
        };
        let f = storability(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::OK,
            &headers(&[
                ("cache-control", "max-age=60"),
                ("age", "10"),
                ("date", &httpdate::fmt_http_date(now())),
            ]),
            ex,
            SitePolicy::default(),
        )
        .unwrap();
        assert_eq!(f.initial_age, Duration::from_secs(12));
    }

    fn fresh(lifetime: u64, swr: u64) -> Freshness {
        Freshness {
            lifetime: Duration::from_secs(lifetime),
            initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::from_secs(swr),
            stale_if_error: Duration::ZERO,
            revalidate_strict: false,
            no_stale: false,
            no_cache: false,
        }
    }

    #[test]
    fn reuse_rules() {
        let none = RequestDirectives::default();
        let s = Duration::from_secs;
        assert_eq!(reuse(&fresh(60, 0), s(10), &none), Reuse::Hit);
        assert_eq!(reuse(&fresh(60, 0), s(61), &none), Reuse::Revalidate);
        assert_eq!(
            reuse(&fresh(60, 30), s(80), &none),
            Reuse::StaleWhileRevalidate
        );
        assert_eq!(reuse(&fresh(60, 30), s(91), &none), Reuse::Revalidate);
        let mut strict = fresh(60, 30);
        strict.no_stale = true;
        assert_eq!(reuse(&strict, s(80), &none), Reuse::Revalidate);

        let req = |cc: &str| request_directives(&headers(&[("cache-control", cc)]));
        assert_eq!(
            reuse(&fresh(60, 0), s(10), &req("no-cache")),
            Reuse::RevalidateRequested
        );
        assert_eq!(
            reuse(&fresh(60, 0), s(10), &req("max-age=5")),
            Reuse::RevalidateRequested
        );
        assert_eq!(
            reuse(&fresh(60, 0), s(10), &req("min-fresh=55")),
            Reuse::RevalidateRequested
        );
        assert_eq!(
            reuse(&fresh(60, 0), s(70), &req("max-stale=20")),
            Reuse::Hit
        );
        assert_eq!(reuse(&fresh(60, 0), s(70), &req("max-stale")), Reuse::Hit);
        assert_eq!(
            reuse(&fresh(60, 0), s(90), &req("max-stale=20")),
            Reuse::RevalidateRequested
        );
        let mut smax = fresh(60, 0);
        smax.revalidate_strict = true;
        assert_eq!(
            reuse(&smax, s(70), &req("max-stale")),
            Reuse::RevalidateRequested
        );
        let mut nc = fresh(60, 0);
        nc.no_cache = true;
        assert_eq!(reuse(&nc, s(1), &none), Reuse::Revalidate);

        let pragma = request_directives(&headers(&[("pragma", "no-cache")]));
        assert!(pragma.no_cache);
    }

    #[test]
    fn stale_if_error_window() {
        let none = RequestDirectives::default();
        let s = Duration::from_secs;
        let mut f = fresh(60, 0);
        assert!(!stale_if_error(&f, s(70), &none));
        f.stale_if_error = s(30);
        assert!(stale_if_error(&f, s(70), &none));
        assert!(!stale_if_error(&f, s(100), &none));
        f.no_stale = true;
        assert!(!stale_if_error(&f, s(70), &none));
    }

    #[test]
    fn directive_syntax() {
        let f = |cc: &str| store(&[("cache-control", cc)]).map(|f| f.lifetime.as_secs());
        assert_eq!(f(&format!("max-age={}", "9".repeat(30))), Ok(1 << 31));
        assert_eq!(f("max-age=003600"), Ok(3600));
        assert_eq!(f("max-age=\"3600\""), Ok(3600));
        assert_eq!(f("max-age=1800, max-age=1"), Ok(1800));
        assert_eq!(f("max-age=0, max-age=1800"), Err(NotStorable::NoFreshness));
        assert_eq!(f("max-age='3600'"), Err(NotStorable::NoFreshness));
        assert_eq!(f("max-age =3600"), Err(NotStorable::NoFreshness));
        assert_eq!(f("max-age= 3600"), Err(NotStorable::NoFreshness));
        assert_eq!(f("extension=\"max-age=3600\", max-age=1"), Ok(1));
        let age = |a: &str| {
            store(&[("cache-control", "max-age=60"), ("age", a)])
                .unwrap()
                .initial_age
                .as_secs()
        };
        assert_eq!(age("7200, 0"), 7200);
        assert_eq!(age("abc"), 0);
    }

    #[test]
    fn invalid_targeted_fields_are_ignored_whole() {
        let cdn = |v: &str| store(&[("cdn-cache-control", v), ("cache-control", "no-store")]);
        assert_eq!(cdn("max-age=10000, &&&&&"), Err(NotStorable::NoStore));
        assert_eq!(cdn("max-age=\"10000\""), Err(NotStorable::NoStore));
        assert_eq!(cdn("max-age=-1"), Err(NotStorable::NoStore));
        assert_eq!(
            cdn("foobar, max-age=3600").unwrap().lifetime.as_secs(),
            3600
        );
        assert_eq!(
            cdn("max-age=99999999999").unwrap().lifetime.as_secs(),
            1 << 31
        );
        assert_eq!(
            cdn("max-age=1, max-age=3600").unwrap().lifetime.as_secs(),
            3600
        );
    }

    #[test]
    fn set_cookie_is_stored_only_where_the_site_strips_it() {
        let resp = headers(&[("cache-control", "s-maxage=60"), ("set-cookie", "a=b")]);
        let run = |site| {
            storability(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &resp,
                exchange(),
                site,
            )
        };
        assert_eq!(run(SitePolicy::default()), Err(NotStorable::SetCookie));
        let strip = SitePolicy {
            strip_set_cookie: true,
            ..SitePolicy::default()
        };
        assert!(run(strip).is_ok());
    }

    #[test]
    fn obsolete_date_formats_are_dates() {
        let date = http_date(
            &headers(&[("date", "Sun Nov  6 08:49:37 1994")]),
            header::DATE,
        );
        assert_eq!(
            date,
            http_date(
                &headers(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]),
                header::DATE
            )
        );
        assert!(date.is_some());
        let date = http_date(
            &headers(&[("date", "Sunday, 06-Nov-94 08:49:37 GMT")]),
            header::DATE,
        );
        assert!(date.is_some());
    }

    #[test]
    fn quoted_commas() {
        let d = parse_response_directives("no-cache=\"set-cookie, foo\", max-age=5");
        assert!(d.no_cache);
        assert_eq!(d.max_age, Some(5));
    }
}
