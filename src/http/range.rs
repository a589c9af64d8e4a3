//! Byte ranges served from a complete stored body (RFC 9110 §14): one range as a 206 with
//! `Content-Range`, several as `multipart/byteranges`, none satisfiable as a 416, and `If-Range`
//! deciding whether the ranges apply at all.
//!
//! Amplification: a request may not make the answer larger than the object. Overlapping and
//! adjacent ranges are merged into one (in ascending order, as Apache does; RFC 9110 §14.2 lets a
//! server coalesce), so the parts never hold a byte twice, and more than [`MAX_RANGES`] ranges get
//! the whole object.

use crate::cache::entry::Fields;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue};

/// More ranges than this in one request are ignored (the whole body is sent): a defence against
/// requests that ask for thousands of tiny ranges, each costing a part header.
pub(crate) const MAX_RANGES: usize = 32;

/// What a Range header asks of a body of a given length.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ranges {
    /// Not a usable byte-range request: send the whole body.
    Ignore,
    /// No range overlaps the body: 416.
    Unsatisfiable,
    /// Inclusive (first, last) byte positions, ascending, disjoint and not adjacent.
    Satisfiable(Vec<(u64, u64)>),
}

/// Parses `Range: bytes=...` against a body of `len` bytes.
pub(crate) fn parse(value: &HeaderValue, len: u64) -> Ranges {
    let Ok(text) = value.to_str() else {
        return Ranges::Ignore;
    };
    let Some(specs) = text.trim().strip_prefix("bytes=") else {
        return Ranges::Ignore;
    };
    let mut out = Vec::new();
    let mut count = 0;
    for spec in specs.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return Ranges::Ignore;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Ignore;
        };
        let (first, last) = (first.trim(), last.trim());
        if first.is_empty() {
            // Suffix range: the last N bytes.
            let Ok(n) = last.parse::<u64>() else {
                return Ranges::Ignore;
            };
            if n > 0 && len > 0 {
                out.push((len.saturating_sub(n), len - 1));
            }
            continue;
        }
        let Ok(first) = first.parse::<u64>() else {
            return Ranges::Ignore;
        };
        let last = if last.is_empty() {
            u64::MAX
        } else {
            match last.parse::<u64>() {
                Ok(l) if l >= first => l,
                _ => return Ranges::Ignore,
            }
        };
        if first < len {
            out.push((first, last.min(len - 1)));
        }
    }
    if count == 0 {
        Ranges::Ignore
    } else if out.is_empty() {
        Ranges::Unsatisfiable
    } else {
        Ranges::Satisfiable(coalesce(out))
    }
}

/// Sorts ranges and merges those that overlap or touch.
fn coalesce(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// Whether `If-Range` lets the ranges apply to a stored response with these headers: an entity
/// tag must match strongly, a date must equal Last-Modified (RFC 9110 §13.1.5).
pub(crate) fn if_range_holds(req: &HeaderMap, stored: &Fields) -> bool {
    let Some(cond) = req.get(header::IF_RANGE) else {
        return true;
    };
    let cond = cond.as_bytes();
    if cond.starts_with(b"\"") {
        return stored
            .get(&header::ETAG)
            .is_some_and(|e| e.as_bytes() == cond);
    }
    if cond.starts_with(b"W/") {
        return false;
    }
    match (
        std::str::from_utf8(cond)
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok()),
        stored
            .get(&header::LAST_MODIFIED)
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s).ok()),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `bytes first-last/len`.
pub(crate) fn content_range(first: u64, last: u64, len: u64) -> HeaderValue {
    let s = format!("bytes {first}-{last}/{len}");
    // cannot fail: digits, spaces, '-' and '/' are valid header bytes.
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("bytes */0"))
}

/// A multipart/byteranges body for `ranges` of `body`; returns (content type, body).
pub(crate) fn multipart(
    body: &Bytes,
    ranges: &[(u64, u64)],
    content_type: Option<&HeaderValue>,
) -> (HeaderValue, Bytes) {
    let boundary = format!("meridian-{:016x}", boundary_seed(body.len(), ranges));
    let len = body.len() as u64;
    let mut out = BytesMut::new();
    for &(first, last) in ranges {
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = content_type {
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(ct.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Range: ");
        out.extend_from_slice(content_range(first, last, len).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&body[first as usize..=last as usize]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    let ct = format!("multipart/byteranges; boundary={boundary}");
    // cannot fail: the boundary is hex digits and ASCII.
    (
        HeaderValue::from_str(&ct).unwrap_or(HeaderValue::from_static("multipart/byteranges")),
        out.freeze(),
    )
}

/// Seed of the multipart boundary: unpredictable per response, so a stored body cannot be crafted
/// to contain it (a collision would let a part's bytes be read as a delimiter).
fn boundary_seed(len: usize, ranges: &[(u64, u64)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    len.hash(&mut h);
    ranges.hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str, len: u64) -> Ranges {
        parse(&HeaderValue::from_str(s).unwrap(), len)
    }

    #[test]
    fn range_forms() {
        assert_eq!(p("bytes=0-9", 100), Ranges::Satisfiable(vec![(0, 9)]));
        assert_eq!(p("bytes=90-", 100), Ranges::Satisfiable(vec![(90, 99)]));
        assert_eq!(p("bytes=-10", 100), Ranges::Satisfiable(vec![(90, 99)]));
        assert_eq!(p("bytes=-500", 100), Ranges::Satisfiable(vec![(0, 99)]));
        assert_eq!(p("bytes=95-200", 100), Ranges::Satisfiable(vec![(95, 99)]));
        assert_eq!(
            p("bytes=0-1, 5-6", 100),
            Ranges::Satisfiable(vec![(0, 1), (5, 6)])
        );
        assert_eq!(
            p("bytes=50-59, 0-9, 5-19, 20-21, -10", 100),
            Ranges::Satisfiable(vec![(0, 21), (50, 59), (90, 99)])
        );
        assert_eq!(
            p(&format!("bytes={}", vec!["0-"; 32].join(",")), 100),
            Ranges::Satisfiable(vec![(0, 99)])
        );
        let many: Vec<String> = (0..=MAX_RANGES)
            .map(|i| format!("{0}-{0}", i * 2))
            .collect();
        assert_eq!(
            p(&format!("bytes={}", many.join(",")), 1000),
            Ranges::Ignore
        );
        assert_eq!(p("bytes=100-", 100), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=5-1", 100), Ranges::Ignore);
        assert_eq!(p("items=0-1", 100), Ranges::Ignore);
    }
}
