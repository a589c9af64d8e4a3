//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpus; not
//! a stable API. Each takes arbitrary bytes, runs one parser or decision on them, and panics
//! only when a property the edge relies on does not hold.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::cache::policy::{self, Exchange, SitePolicy};
use crate::cache::sf;
use crate::http::framing::FramingGuard;
use crate::http::range::{self, Ranges, MAX_RANGES};

/// The HTTP/1 framing guard over a stream of client bytes. Property: its verdicts (the first
/// ambiguous head and the first body fault) do not depend on how the stream is split into reads.
pub fn framing(data: &[u8]) {
    // Larger than any input, so the head-size limit never decides (hyper enforces it first).
    const LIMIT: usize = 1 << 20;
    let whole = {
        let mut g = FramingGuard::new(LIMIT);
        let conflict = g.feed(data);
        (conflict, g.take_body_fault())
    };
    // Reads of 1, 2, 3, ... bytes, then byte by byte.
    for split in [Split::Growing, Split::Bytes] {
        let mut g = FramingGuard::new(LIMIT);
        let (mut conflict, mut fault) = (None, None);
        for piece in split.pieces(data) {
            if let Some(c) = g.feed(piece) {
                conflict.get_or_insert(c);
            }
            if let Some(f) = g.take_body_fault() {
                fault.get_or_insert(f);
            }
        }
        assert_eq!(
            (conflict, fault),
            whole,
            "the verdict changed with the reads ({split:?})"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Split {
    Growing,
    Bytes,
}

impl Split {
    fn pieces(self, data: &[u8]) -> Vec<&[u8]> {
        match self {
            Split::Bytes => data.chunks(1).collect(),
            Split::Growing => {
                let (mut out, mut rest, mut n) = (Vec::new(), data, 1);
                while !rest.is_empty() {
                    let (a, b) = rest.split_at(n.min(rest.len()));
                    out.push(a);
                    rest = b;
                    n += 1;
                }
                out
            }
        }
    }
}

/// Cache-Control, CDN-Cache-Control and Surrogate-Control parsing, for responses and requests,
/// and the structured-field dictionary parser under the targeted fields. Property: no panic,
/// and a dictionary that parses has keys that are valid keys.
pub fn cache_control(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(dict) = sf::dictionary(text) {
            for (key, _) in &dict {
                let mut bytes = key.bytes();
                assert!(
                    bytes
                        .next()
                        .is_some_and(|b| b.is_ascii_lowercase() || b == b'*'),
                    "key {key:?}"
                );
                assert!(
                    bytes.all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"_-.*".contains(&b)),
                    "key {key:?}"
                );
            }
        }
    }
    // One field line per input line, the first byte of each choosing the field.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let name = match which % 4 {
            0 => http::header::CACHE_CONTROL,
            1 => HeaderName::from_static("cdn-cache-control"),
            2 => HeaderName::from_static("surrogate-control"),
            _ => http::header::PRAGMA,
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let _ = policy::response_directives(&headers);
    let _ = policy::request_directives(&headers);
}

/// The Range parser against a body whose length the first bytes give. Property: satisfiable
/// ranges lie inside the body, ascend, neither overlap nor touch, are at most [`MAX_RANGES`],
/// so the parts never add up to more than the body.
pub fn range(data: &[u8]) {
    let (len, value) = match data.split_first() {
        Some((&b, rest)) if b & 0x80 != 0 && rest.len() >= 8 => {
            let (l, v) = rest.split_at(8);
            (u64::from_le_bytes(l.try_into().unwrap_or_default()), v)
        }
        Some((&b, rest)) => (u64::from(b), rest),
        None => return,
    };
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    match range::parse(&value, len) {
        Ranges::Ignore => {}
        Ranges::Unsatisfiable => {}
        Ranges::Satisfiable(ranges) => {
            assert!(!ranges.is_empty() && ranges.len() <= MAX_RANGES);
            let mut total: u64 = 0;
            let mut prev: Option<u64> = None;
            for &(first, last) in &ranges {
                assert!(first <= last && last < len, "{first}-{last} of {len}");
                if let Some(p) = prev {
                    assert!(first > p.saturating_add(1), "{ranges:?} overlap or touch");
                }
                prev = Some(last);
                total += last - first + 1;
            }
            assert!(total <= len, "{total} bytes of a {len}-byte body");
        }
    }
}

/// The storage decision (RFC 9111 §3, §4.2) on an arbitrary response head (parsed as HTTP/1
/// would) to a GET. Properties: no panic; `no-store`, `private` and `Set-Cookie` (without the
/// site's opt-in) are never stored; a stored response can be reused or revalidated.
pub fn policy(data: &[u8]) {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = response.parse(data) else {
        return;
    };
    let Some(status) = response.code.and_then(|c| StatusCode::from_u16(c).ok()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for f in response.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            headers.append(n, v);
        }
    }
    // Request headers: the same fields, so Authorization and request directives vary too.
    let request = headers.clone();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let exchange = Exchange {
        request_time: now - Duration::from_millis(20),
        response_time: now,
    };
    for strip_set_cookie in [false, true] {
        let site = SitePolicy {
            default_ttl: Some(Duration::from_secs(60)),
            heuristic_freshness: true,
            strip_set_cookie,
        };
        let decided = policy::storability(&Method::GET, &request, status, &headers, exchange, site);
        let (d, _) = policy::response_directives(&headers);
        let Ok(fresh) = decided else {
            continue;
        };
        assert!(!d.no_store && !d.private, "stored despite {d:?}");
        assert!(
            strip_set_cookie || !headers.contains_key(http::header::SET_COOKIE),
            "stored a Set-Cookie without the site's opt-in"
        );
        let req = policy::request_directives(&request);
        for age in [
            Duration::ZERO,
            fresh.lifetime,
            Duration::from_secs(u32::MAX.into()),
        ] {
            let _ = policy::reuse(&fresh, fresh.initial_age.saturating_add(age), &req);
            let _ = policy::stale_if_error(&fresh, age, &req);
        }
    }
}
