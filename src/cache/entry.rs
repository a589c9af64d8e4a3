//! A stored response: status, client-facing headers, the whole body, and its freshness facts.
//!
//! Built by the handler from an origin response that `policy::storability` accepted; read by the
//! handler to answer hits. Entries are immutable and shared as `Arc<Entry>`: a revalidation makes
//! a new entry (RFC 9111 §4.3.4) rather than mutating one that readers may hold.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::disk::DiskBody;
use super::policy::Freshness;

/// Extra time an entry with validators is kept past its stale windows, so that a later request
/// can revalidate it with a cheap 304 instead of a full fetch.
const REVALIDATION_KEEP: Duration = Duration::from_secs(3600);
/// Time an entry without validators is kept past its stale windows, for clients that accept
/// stale responses (`max-stale`).
const STALE_KEEP: Duration = Duration::from_secs(120);

/// Headers a 304 must not overwrite in a stored response (RFC 9111 §3.2: they describe the
/// stored body, not the validation).
const KEEP_ON_304: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
];

/// What the origin saw of a request besides its headers, where the site lets it vary: the
/// (normalised) host and whether the client came over TLS. A variant answers only requests with
/// the same target, so an answer made for one host or scheme never serves another.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// The host the origin was sent; `None` when the site sends every request the same Host.
    pub(crate) host: Option<&'a str>,
    /// Whether the client used https; `None` when the site keeps the scheme from the origin.
    pub(crate) https: Option<bool>,
}

/// Rebuilds a header map for keeping: every value copied into one allocation of exactly their
/// total size (and custom names into their own), instead of slices of the buffers the response
/// was read into.
///
/// Hazard: a header value from hyper's parser shares the connection's read buffer (8 KiB or
/// more); a stored entry that kept one would keep the whole buffer, so the cache would hold
/// several times the bytes it counts.
pub(crate) fn compact(headers: &HeaderMap) -> HeaderMap {
    let total: usize = headers.values().map(HeaderValue::len).sum();
    let mut buf = bytes::BytesMut::with_capacity(total);
    for v in headers.values() {
        buf.extend_from_slice(v.as_bytes());
    }
    let buf = buf.freeze();
    let mut out = HeaderMap::with_capacity(headers.len());
    let mut at = 0;
    for (name, value) in headers {
        let end = at + value.len();
        // cannot fail: the bytes were a valid header value a moment ago; fall back to a copy.
        let mut v =
            HeaderValue::from_maybe_shared(buf.slice(at..end)).unwrap_or_else(|_| value.clone());
        v.set_sensitive(value.is_sensitive());
        at = end;
        // Standard names are static; a custom one is copied out of whatever held it.
        let name =
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        out.append(name, v);
    }
    out
}

/// What an entry's place in the store costs besides the entry: moka's entry, its access-order,
/// write-order and expiry nodes, the key's `Arc`, the variant list and allocator rounding.
/// Calibrated with `benches/memory.sh` (RSS per stored 1 KiB object, nothing evicted).
const STORE_OVERHEAD: usize = 900;
/// What each slot of a `HeaderMap` costs besides the field's bytes: the bucket (hash, links,
/// name and value handles) and its index.
const HEADER_SLOT: usize = 112;

/// One stored variant of a response.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    /// Headers as sent to clients: hop-by-hop, `Surrogate-*` and `Age` already removed,
    /// `Content-Length` set to the stored body's length.
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) freshness: Freshness,
    /// When the response head arrived; age grows from here.
    pub(crate) stored_at: Instant,
    /// Request header names that select this variant: the response's Vary plus the site's key
    /// headers, lower-case.
    pub(crate) vary: Vec<HeaderName>,
    /// The values those request headers had when this variant was fetched.
    pub(crate) vary_values: Vec<Option<String>>,
    /// Purge tags from `Surrogate-Key`.
    pub(crate) tags: Vec<String>,
    /// The host this variant was fetched for (see [`Target`]).
    pub(crate) target_host: Option<Box<str>>,
    /// The scheme this variant was fetched for (see [`Target`]).
    pub(crate) target_https: Option<bool>,
    /// Where the body lives when it is on disk only (read back from the disk tier in chunks);
    /// `body` is then empty.
    pub(crate) on_disk: Option<DiskBody>,
}

/// The selecting value of request header `name`: all field lines joined, whitespace around
/// commas removed, so `gzip,br` and `gzip, br` select the same variant (RFC 9111 §4.1).
pub(crate) fn normalized(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for v in headers.get_all(name) {
        any = true;
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(part);
        }
    }
    any.then_some(out)
}

/// Header names listed by `Vary` (lower-case, deduplicated) followed by the site's key headers.
pub(crate) fn vary_names(resp: &HeaderMap, key_headers: &[String]) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    let listed = resp
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .chain(key_headers.iter().map(String::as_str));
    for name in listed {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
}

impl Entry {
    /// Current age (RFC 9111 §4.2.3): corrected initial age plus resident time.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.freshness.initial_age + now.saturating_duration_since(self.stored_at)
    }

    /// Remaining freshness in whole seconds; negative once stale (RFC 9211 `ttl`).
    /// Rounded away from zero, so that a just-stored `max-age=60` reads 60 and a response half a
    /// second past its lifetime reads -1, never 0.
    pub(crate) fn ttl(&self, age: Duration) -> i64 {
        let lifetime = self.freshness.lifetime;
        if age < lifetime {
            (lifetime - age).as_secs_f64().ceil() as i64
        } else {
            -((age - lifetime).as_secs_f64().ceil() as i64)
        }
    }

    /// Whether this variant was stored for a request to `target` with headers equal to `req`'s
    /// (RFC 9111 §4.1).
    pub(crate) fn matches(&self, req: &HeaderMap, target: Target<'_>) -> bool {
        self.target() == target
            && self
                .vary
                .iter()
                .zip(&self.vary_values)
                .all(|(name, value)| normalized(req, name).as_ref() == value.as_ref())
    }

    /// The target this variant was fetched for.
    pub(crate) fn target(&self) -> Target<'_> {
        Target {
            host: self.target_host.as_deref(),
            https: self.target_https,
        }
    }

    /// Whether this entry and `other` are the same variant (so one replaces the other).
    pub(crate) fn same_variant(&self, other: &Entry) -> bool {
        self.target() == other.target()
            && self.vary == other.vary
            && self.vary_values == other.vary_values
    }

    /// Bytes this entry holds, for the store's weigher: body, headers and bookkeeping, so that
    /// `cache_memory` bounds the memory really held, small objects included.
    pub(crate) fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum::<usize>()
            + self.headers.capacity() * HEADER_SLOT;
        let variant: usize = self
            .vary_values
            .iter()
            .map(|v| v.as_ref().map_or(0, String::len) + 32)
            .sum::<usize>()
            + self.target_host.as_ref().map_or(0, |h| h.len())
            + self.tags.iter().map(|t| t.len() + 24).sum::<usize>();
        (self.body.len() + headers + variant + size_of::<Entry>() + STORE_OVERHEAD) as u64
    }

    /// This entry with its body, now that it has arrived (and `Content-Length` to match).
    pub(crate) fn with_body(&self, body: Bytes) -> Entry {
        let mut headers = self.headers.clone();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Entry {
            status: self.status,
            headers,
            body,
            freshness: self.freshness,
            stored_at: self.stored_at,
            vary: self.vary.clone(),
            vary_values: self.vary_values.clone(),
            tags: self.tags.clone(),
            target_host: self.target_host.clone(),
            target_https: self.target_https,
            on_disk: None,
        }
    }

    /// This entry with its body on disk (and `Content-Length` to match).
    pub(crate) fn with_disk_body(&self, body: DiskBody) -> Entry {
        let mut e = self.with_body(Bytes::new());
        e.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len));
        e.on_disk = Some(body);
        e
    }

    /// The body's length, wherever it lives.
    pub(crate) fn body_len(&self) -> u64 {
        self.on_disk
            .as_ref()
            .map_or(self.body.len() as u64, |d| d.len)
    }

    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub(crate) fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }

    /// How long the store keeps this entry from now: its remaining freshness, its stale windows,
    /// and, when it has validators, time to be revalidated.
    pub(crate) fn keep_for(&self) -> Duration {
        let f = &self.freshness;
        let remaining = f.lifetime.saturating_sub(f.initial_age);
        let stale = f.stale_while_revalidate.max(f.stale_if_error);
        let validators = self.etag().is_some() || self.last_modified().is_some();
        remaining
            + stale.max(if validators {
                REVALIDATION_KEEP
            } else {
                STALE_KEEP
            })
    }

    /// A new entry from this one and a 304's headers (RFC 9111 §4.3.4): the 304's fields replace
    /// the stored ones, except those that describe the stored body.
    pub(crate) fn refreshed_headers(&self, not_modified: &HeaderMap) -> HeaderMap {
        let mut headers = self.headers.clone();
        let mut replaced: Vec<&HeaderName> = Vec::new();
        for (name, value) in not_modified {
            if KEEP_ON_304.contains(name) {
                continue;
            }
            if !replaced.contains(&name) {
                headers.remove(name);
                replaced.push(name);
            }
            headers.append(name.clone(), value.clone());
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in pairs {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn vary_selection_normalises_whitespace() {
        let names = vary_names(
            &h(&[("vary", "Accept-Encoding, accept-language")]),
            &["x-device".into()],
        );
        assert_eq!(names, ["accept-encoding", "accept-language", "x-device"]);
        let req = h(&[("accept-encoding", "gzip,  br")]);
        let values: Vec<_> = names.iter().map(|n| normalized(&req, n)).collect();
        assert_eq!(values, [Some("gzip,br".to_string()), None, None]);
        assert_eq!(
            normalized(&h(&[("a", "x"), ("a", "y")]), &HeaderName::from_static("a")),
            Some("x,y".into())
        );
    }
}
