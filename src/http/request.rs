//! What the edge makes of a client request before anything else looks at it.
//!
//! Receives the request as hyper parsed it (HTTP/1.1 or HTTP/2); hands the handler a request
//! whose headers are the ones every later step uses alike: the cache key's variant selection,
//! the request directives and the request sent to the origin. So nothing the origin sees can
//! differ from what the cache files its answer under:
//! - the method and target form are ones the edge serves (TRACE and CONNECT get 405, the
//!   asterisk form 400), never forwarded;
//! - exactly one valid Host (HTTP/1.1, RFC 9112 §3.2) or an authority, normalised once (lower
//!   case, no port, no trailing dot) and written back as the `Host` field: the site lookup, the
//!   variant and the origin all use that one value;
//! - hop-by-hop fields, and those `Connection` names, are removed once, except `Host`.
//!
//! Hazard: any header the origin sees that the cache key does not hold lets one client choose
//! what every other client of the same key gets (cache poisoning).

use std::borrow::Cow;

use http::{header, HeaderMap, HeaderValue, Method, Request};

use super::headers::strip_hop_by_hop_except;

/// Why a request is refused before it reaches a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// A method the edge neither serves nor forwards (TRACE, CONNECT): 405.
    Method,
    /// Malformed: 400 with the reason.
    Bad(&'static str),
    /// No host named at all (HTTP/1.0): 421, as for a host no site serves.
    NoSite,
}

/// A request's host as [`intake`] normalised it: the value of its `Host` field, which holds
/// the bytes the request came with where they were normal already (no copy of them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Host(HeaderValue);

impl std::ops::Deref for Host {
    type Target = str;

    /// The host: letters, digits and reg-name punctuation, or an IP literal (visible ASCII).
    fn deref(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// Methods the edge answers or forwards, for `Allow`.
pub(crate) const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

/// Checks a request and normalises its headers in place (see the module documentation).
/// Returns the normalised host.
pub(crate) fn intake<B>(req: &mut Request<B>) -> Result<Host, Rejected> {
    // TRACE would echo the client's cookies and credentials back through a shared cache's
    // origin; CONNECT would make the edge a tunnel. Neither is forwarded (as Varnish and nginx).
    if req.method() == Method::TRACE || req.method() == Method::CONNECT {
        return Err(Rejected::Method);
    }
    if req.uri().path() == "*" && req.uri().authority().is_none() {
        return Err(Rejected::Bad("the asterisk form is not served"));
    }
    strip_hop_by_hop_request(req.headers_mut());
    // The normalised host, and whether `Host` says it already (one lookup of the field).
    let (host, unchanged) = {
        let headers = req.headers();
        let mut hosts = headers.get_all(header::HOST).iter();
        let first = hosts.next();
        if hosts.next().is_some() {
            return Err(Rejected::Bad("more than one Host field"));
        }
        let host = match (req.uri().authority(), first) {
            // An absolute-form target (or HTTP/2's :authority) names the host (RFC 9112 §3.2.2).
            (Some(a), _) if a.as_str().contains('@') => {
                return Err(Rejected::Bad("userinfo in the request target"))
            }
            (Some(a), _) => normalize_host(a.as_str())?,
            (None, Some(h)) => {
                normalize_host(h.to_str().map_err(|_| Rejected::Bad("Host is not text"))?)?
            }
            // Required since HTTP/1.1 (RFC 9112 §3.2); an HTTP/1.0 request without one is not
            // malformed, it just names no site.
            (None, None) if req.version() == http::Version::HTTP_10 => {
                return Err(Rejected::NoSite)
            }
            (None, None) => return Err(Rejected::Bad("no Host field")),
        };
        match first.filter(|h| h.as_bytes() == host.as_bytes()) {
            Some(h) => (h.clone(), true),
            // cannot fail: a normalised host is letters, digits and reg-name punctuation.
            None => (
                HeaderValue::from_str(&host).map_err(|_| Rejected::Bad("invalid Host"))?,
                false,
            ),
        }
    };
    if !unchanged {
        req.headers_mut().insert(header::HOST, host.clone());
    }
    Ok(Host(host))
}

/// Removes hop-by-hop fields and those `Connection` names, but never `Host`: a client that
/// names `Host` in `Connection` must not make the origin answer for another name.
pub(crate) fn strip_hop_by_hop_request(headers: &mut HeaderMap) {
    strip_hop_by_hop_except(headers, &[header::HOST]);
}

/// The bytes a reg-name may hold (RFC 3986 §3.2.2: unreserved, sub-delims and
/// percent-encoding), as a table: every request's host is checked byte by byte.
const HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let punctuation = b"-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < punctuation.len() {
        t[punctuation[i] as usize] = true;
        i += 1;
    }
    t
};

/// `host[:port]` → lower-case host without port or trailing dot; the port must be a number of
/// at most 65535. IPv6 literals keep their brackets.
pub(crate) fn normalize_host(raw: &str) -> Result<Cow<'_, str>, Rejected> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or(Rejected::Bad("unterminated IPv6 literal in Host"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(Rejected::Bad("invalid IPv6 literal in Host"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(Rejected::Bad("invalid Host"))?),
        };
        (&raw[..v6.len() + 2], port)
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    if let Some(p) = port {
        // An empty port is allowed by RFC 3986 and means the default.
        let number = p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| n <= 65535);
        if !p.is_empty() && !number {
            return Err(Rejected::Bad("the port in Host is not a number"));
        }
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(Rejected::Bad("empty Host"));
    }
    if !host.starts_with('[') && !host.bytes().all(|b| HOST_BYTES[usize::from(b)]) {
        return Err(Rejected::Bad("invalid characters in Host"));
    }
    let bare = port.is_none() && host.len() == raw.len();
    Ok(if bare && !host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Borrowed(host)
    } else {
        Cow::Owned(host.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_byte_table_is_rfc_3986s_reg_name() {
        for b in 0..=255u8 {
            let allowed = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
            assert_eq!(HOST_BYTES[usize::from(b)], allowed, "byte {b}");
        }
    }

    #[test]
    fn hosts_are_normalised_once() {
        let n = |s| normalize_host(s).map(|c| c.into_owned());
        assert_eq!(n("demo.test"), Ok("demo.test".into()));
        assert!(matches!(normalize_host("demo.test"), Ok(Cow::Borrowed(_))));
        assert_eq!(n("DEMO.Test.:8080"), Ok("demo.test".into()));
        assert_eq!(n("demo.test:"), Ok("demo.test".into()));
        assert_eq!(n("[::1]:443"), Ok("[::1]".into()));
        assert_eq!(n("[2001:DB8::1]"), Ok("[2001:db8::1]".into()));
        assert!(n("demo.test:abc").is_err());
        assert!(n("demo.test:99999").is_err());
        assert!(n("demo.test:1:2").is_err());
        assert!(n("").is_err());
        assert!(n(".").is_err());
        assert!(n("a b").is_err());
        assert!(n("[::1").is_err());
        assert!(n("[nope]").is_err());
    }

    #[test]
    fn intake_keeps_host_whatever_connection_says() {
        let mut req = Request::get("/")
            .header("host", "Demo.test:80")
            .header("connection", "close, Host, x-secret")
            .header("x-secret", "1")
            .header("x-kept", "1")
            .body(())
            .unwrap();
        assert_eq!(intake(&mut req).as_deref(), Ok("demo.test"));
        let h = req.headers();
        assert_eq!(h["host"], "demo.test");
        assert!(h.get("connection").is_none() && h.get("x-secret").is_none());
        assert!(h.contains_key("x-kept"));

        let mut trace = Request::builder()
            .method("TRACE")
            .uri("/")
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(intake(&mut trace), Err(Rejected::Method));
        let mut h2 = Request::get("http://A.test/x").body(()).unwrap();
        assert_eq!(intake(&mut h2).as_deref(), Ok("a.test"));
        assert_eq!(h2.headers()["host"], "a.test");
    }
}
