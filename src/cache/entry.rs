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

/// Response field names a stored entry keeps as their index here (a byte) instead of a 32-byte
/// name: what origins send on nearly every response.
static COMMON: [HeaderName; 32] = [
    header::ACCEPT_RANGES,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::AGE,
    header::ALT_SVC,
    header::CACHE_CONTROL,
    header::CONTENT_DISPOSITION,
    header::CONTENT_ENCODING,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LENGTH,
    header::CONTENT_LOCATION,
    header::CONTENT_RANGE,
    header::CONTENT_SECURITY_POLICY,
    header::CONTENT_TYPE,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::LINK,
    header::LOCATION,
    header::REFERRER_POLICY,
    header::RETRY_AFTER,
    header::SERVER,
    header::SET_COOKIE,
    header::STRICT_TRANSPORT_SECURITY,
    header::VARY,
    header::VIA,
    header::WARNING,
    header::X_CONTENT_TYPE_OPTIONS,
    header::X_FRAME_OPTIONS,
    header::X_XSS_PROTECTION,
];
/// The code of a name not in [`COMMON`]: the next of `Fields::custom`.
const CUSTOM: u8 = u8::MAX;

/// A stored response's header fields, kept compact: each name a byte (its place in
/// [`COMMON`], or [`CUSTOM`] and kept whole), and every value a slice of one buffer of exactly
/// their total size. A `HeaderMap` of ten fields takes about 1.3 KB of slots and index for
/// 300 bytes of fields; this takes 5 bytes a field besides them (and a name for each uncommon
/// one). Hits rebuild the map they send ([`Fields::to_map`]): each value is a shared slice of
/// the buffer, not a copy.
///
/// Hazard: a header value from hyper's parser shares the connection's read buffer (8 KiB or
/// more); a stored entry that kept one would keep the whole buffer, so the cache would hold
/// several times the bytes it counts. [`Fields::new`] copies.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Fields {
    /// One allocation for two arrays of one entry per field: each field's name code (a place
    /// in [`COMMON`], or [`CUSTOM`]), then where each value ends in `values` (a little-endian
    /// u32; value `i` starts where value `i - 1` ends). 5 bytes a field.
    meta: Box<[u8]>,
    /// The names coded [`CUSTOM`], in order.
    custom: Box<[HeaderName]>,
    values: Bytes,
    /// Whether every value is UTF-8 on its own (as nearly every response's are): then a hit
    /// takes each value without checking its bytes again. (Sensitivity marks are not kept:
    /// nothing that reaches the store has one.)
    utf8: bool,
}

impl Fields {
    /// The fields of `headers`, in their order, copied out of whatever held them.
    pub(crate) fn new(headers: &HeaderMap) -> Fields {
        let total: usize = headers.values().map(HeaderValue::len).sum();
        let mut buf = bytes::BytesMut::with_capacity(total);
        let n = headers.len();
        let mut meta = vec![0u8; n * 5];
        let mut custom = Vec::new();
        for (i, (name, value)) in headers.iter().enumerate() {
            buf.extend_from_slice(value.as_bytes());
            match COMMON.iter().position(|c| c == name) {
                Some(c) => meta[i] = c as u8,
                None => {
                    meta[i] = CUSTOM;
                    // Copied out of whatever held it (a custom name shares its bytes).
                    custom.push(
                        HeaderName::from_bytes(name.as_str().as_bytes())
                            .unwrap_or_else(|_| name.clone()),
                    );
                }
            }
            let end = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            meta[n + 4 * i..n + 4 * i + 4].copy_from_slice(&end.to_le_bytes());
        }
        // Each value on its own (two halves of a character in two values make a UTF-8 whole).
        let utf8 = headers
            .values()
            .all(|v| std::str::from_utf8(v.as_bytes()).is_ok());
        Fields {
            meta: meta.into_boxed_slice(),
            custom: custom.into_boxed_slice(),
            values: buf.freeze(),
            utf8,
        }
    }

    /// Each field's name code.
    fn codes(&self) -> &[u8] {
        &self.meta[..self.len()]
    }

    /// Where value `i` ends in `values`.
    fn end(&self, i: usize) -> usize {
        let at = self.len() + 4 * i;
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.meta[at..at + 4]);
        u32::from_le_bytes(b) as usize
    }

    fn value(&self, i: usize) -> HeaderValue {
        self.value_in(&self.values, i)
    }

    /// Value `i`, as a slice of `values` (these fields' values, or a copy of them).
    fn value_in(&self, values: &Bytes, i: usize) -> HeaderValue {
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        let slice = values.slice(start..self.end(i));
        if self.utf8 {
            // SAFETY: the bytes were a valid header value when stored (`new` copied them from
            // one), and they are UTF-8, which is all this constructor asks of them.
            return unsafe { HeaderValue::from_maybe_shared_unchecked(slice) };
        }
        // Cannot fail: the bytes were a valid header value when stored.
        HeaderValue::from_maybe_shared(slice).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The names, in order.
    fn names(&self) -> impl Iterator<Item = &HeaderName> + '_ {
        let mut custom = self.custom.iter();
        self.codes()
            .iter()
            .map(move |&c| match COMMON.get(usize::from(c)) {
                Some(n) => n,
                // `new` keeps as many custom names as CUSTOM codes.
                None => custom.next().unwrap_or(&COMMON[0]),
            })
    }

    /// The fields, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&HeaderName, HeaderValue)> + '_ {
        self.names().enumerate().map(|(i, n)| (n, self.value(i)))
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &HeaderName) -> Option<HeaderValue> {
        self.get_all(name).next()
    }

    /// Every value of `name`, in order.
    pub(crate) fn get_all<'a>(
        &'a self,
        name: &'a HeaderName,
    ) -> impl Iterator<Item = HeaderValue> + 'a {
        self.names()
            .enumerate()
            .filter(move |(_, n)| *n == name)
            .map(|(i, _)| self.value(i))
    }

    /// How many fields.
    pub(crate) fn len(&self) -> usize {
        self.meta.len() / 5
    }

    /// A header map of these fields with room for `extra` more (what a response sends).
    pub(crate) fn to_map(&self, extra: usize) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len() + extra);
        for (i, name) in self.names().enumerate() {
            map.append(name.clone(), self.value(i));
        }
        map
    }

    /// As [`Fields::to_map`], but sharing nothing with these fields: values in a copy of their
    /// buffer, uncommon names copied. For a map that is kept and cloned for every hit: its
    /// clones then count references on a buffer of its own, not on the entry's, which every
    /// thread's hits share.
    pub(crate) fn to_map_detached(&self, extra: usize) -> HeaderMap {
        let values = Bytes::copy_from_slice(&self.values);
        let mut map = HeaderMap::with_capacity(self.len() + extra);
        for (i, name) in self.names().enumerate() {
            let name =
                HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
            map.append(name, self.value_in(&values, i));
        }
        map
    }

    /// Bytes of the values (what a copy of them costs).
    pub(crate) fn values_len(&self) -> usize {
        self.values.len()
    }

    /// These fields with `name` set to `value` alone.
    pub(crate) fn with(&self, name: HeaderName, value: HeaderValue) -> Fields {
        let mut map = self.to_map(1);
        map.insert(name, value);
        Fields::new(&map)
    }

    /// Bytes these fields hold besides the entry: values, uncommon names and each field's slot.
    fn weight(&self) -> usize {
        let custom: usize = self.custom.iter().map(|n| n.as_str().len() + 32).sum();
        self.values.len() + custom + self.len() * FIELD_SLOT
    }
}

/// What an entry's place in the store costs besides the entry: moka's entry, its access-order,
/// write-order and expiry nodes, the key's `Arc`, the variant list and allocator rounding.
/// Calibrated with `benches/memory.sh` (RSS per stored 1 KiB object, nothing evicted): the
/// weight must not count less than RSS, or a flood of small objects outgrows the bound (with
/// 900, 2480 bytes counted for 2625 of RSS, and the 1 KiB flood reached 97.6 MiB of 95.7).
const STORE_OVERHEAD: usize = 1100;
/// What a fill's body costs besides its bytes: the `Residence` (48 bytes as allocated) and the
/// body's owner box (64), which `benches/memory.sh` showed as about 120 more bytes of RSS per
/// stored 1 KiB object (2,136 before, 2,254 after).
const RESIDENCE_OVERHEAD: usize = 112;
/// What each stored field costs besides its bytes: its name's code and its value's end.
const FIELD_SLOT: usize = 5;

/// [`Freshness`] as an entry keeps it: whole milliseconds (as the disk tier writes them) and
/// the flags in a byte, 40 bytes instead of 72.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredFreshness {
    /// Lifetime, initial age, stale-while-revalidate, stale-if-error.
    ms: [u64; 4],
    flags: u8,
}

impl From<Freshness> for StoredFreshness {
    fn from(f: Freshness) -> StoredFreshness {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        StoredFreshness {
            ms: [
                ms(f.lifetime),
                ms(f.initial_age),
                ms(f.stale_while_revalidate),
                ms(f.stale_if_error),
            ],
            flags: u8::from(f.revalidate_strict)
                | u8::from(f.no_stale) << 1
                | u8::from(f.no_cache) << 2,
        }
    }
}

impl StoredFreshness {
    /// The freshness lifetime alone (the hit path's `ttl`).
    fn lifetime(&self) -> Duration {
        Duration::from_millis(self.ms[0])
    }

    /// The corrected initial age alone (the hit path's `age`).
    fn initial_age(&self) -> Duration {
        Duration::from_millis(self.ms[1])
    }

    pub(crate) fn get(&self) -> Freshness {
        let d = Duration::from_millis;
        Freshness {
            lifetime: d(self.ms[0]),
            initial_age: d(self.ms[1]),
            stale_while_revalidate: d(self.ms[2]),
            stale_if_error: d(self.ms[3]),
            revalidate_strict: self.flags & 1 != 0,
            no_stale: self.flags & 2 != 0,
            no_cache: self.flags & 4 != 0,
        }
    }
}

/// One stored variant of a response.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    /// Headers as sent to clients: hop-by-hop, `Surrogate-*` and `Age` already removed,
    /// `Content-Length` set to the stored body's length.
    pub(crate) headers: Fields,
    pub(crate) body: Bytes,
    /// Read through [`Entry::freshness`].
    pub(crate) fresh: StoredFreshness,
    /// When the response head arrived; age grows from here.
    pub(crate) stored_at: Instant,
    /// Request header names that select this variant: the response's Vary plus the site's key
    /// headers, lower-case.
    pub(crate) vary: Box<[HeaderName]>,
    /// The values those request headers had when this variant was fetched.
    pub(crate) vary_values: Box<[Option<Box<str>>]>,
    /// Purge tags from `Surrogate-Key`.
    pub(crate) tags: Box<[Box<str>]>,
    /// The origin's `Surrogate-Control` (every field line, joined), which this cache consumed.
    /// Kept to pass on: to peers (with the tags, as `Surrogate-Key`), so that every tier stores
    /// by what the origin told caches, and into a revalidation whose `304` does not repeat it.
    pub(crate) surrogate_control: Option<Box<HeaderValue>>,
    /// The host this variant was fetched for (see [`Target`]).
    pub(crate) target_host: Option<std::sync::Arc<str>>,
    /// The scheme this variant was fetched for (see [`Target`]).
    pub(crate) target_https: Option<bool>,
    /// The body's claim on the fills' budget once the store lets this entry go (see
    /// [`crate::cache::fill::Residence`]); bodies of fills only.
    pub(crate) residence: Option<std::sync::Arc<crate::cache::fill::Residence>>,
    /// Where the body lives when it is on disk only (read back from the disk tier in chunks);
    /// `body` is then empty.
    pub(crate) on_disk: Option<Box<DiskBody>>,
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
    /// For tests: a 200 with `body`, no fields, fresh for `lifetime` from now, no variant
    /// selectors, tags or target.
    #[cfg(test)]
    pub(crate) fn for_test(body: Bytes, lifetime: Duration) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: Fields::default(),
            body,
            fresh: Freshness {
                lifetime,
                initial_age: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
                revalidate_strict: false,
                no_stale: false,
                no_cache: false,
            }
            .into(),
            stored_at: Instant::now(),
            vary: Box::new([]),
            vary_values: Box::new([]),
            tags: Box::new([]),
            target_host: None,
            target_https: None,
            surrogate_control: None,
            on_disk: None,
            residence: None,
        }
    }

    /// The freshness this entry was stored with.
    pub(crate) fn freshness(&self) -> Freshness {
        self.fresh.get()
    }

    /// Current age (RFC 9111 §4.2.3): corrected initial age plus resident time.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.fresh.initial_age() + now.saturating_duration_since(self.stored_at)
    }

    /// Remaining freshness in whole seconds; negative once stale (RFC 9211 `ttl`).
    /// Rounded away from zero, so that a just-stored `max-age=60` reads 60 and a response half a
    /// second past its lifetime reads -1, never 0.
    pub(crate) fn ttl(&self, age: Duration) -> i64 {
        let lifetime = self.fresh.lifetime();
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
                .all(|(name, value)| normalized(req, name).as_deref() == value.as_deref())
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
        let headers = self.headers.weight();
        let variant: usize = self
            .vary_values
            .iter()
            .map(|v| v.as_ref().map_or(0, |v| v.len()) + 32)
            .sum::<usize>()
            + self.target_host.as_ref().map_or(0, |h| h.len())
            + self.tags.iter().map(|t| t.len() + 24).sum::<usize>()
            + self.residence.as_ref().map_or(0, |_| RESIDENCE_OVERHEAD);
        (self.body.len() + headers + variant + size_of::<Entry>() + STORE_OVERHEAD) as u64
    }

    /// This entry with its body, now that it has arrived (and `Content-Length` to match).
    pub(crate) fn with_body(&self, body: Bytes) -> Entry {
        let len = body.len() as u64;
        self.with_parts(body, None, len)
    }

    /// This entry with the body of its fill (see [`crate::cache::fill::Residence`]).
    pub(crate) fn with_resident_body(
        &self,
        body: Bytes,
        residence: std::sync::Arc<crate::cache::fill::Residence>,
    ) -> Entry {
        Entry {
            residence: Some(residence),
            ..self.with_body(body)
        }
    }

    /// This entry with its body on disk (and `Content-Length` to match).
    pub(crate) fn with_disk_body(&self, body: DiskBody) -> Entry {
        let len = body.len;
        self.with_parts(Bytes::new(), Some(Box::new(body)), len)
    }

    /// This entry with a body in memory or on disk, of `len` bytes.
    fn with_parts(&self, body: Bytes, on_disk: Option<Box<DiskBody>>, len: u64) -> Entry {
        Entry {
            status: self.status,
            headers: self
                .headers
                .with(header::CONTENT_LENGTH, HeaderValue::from(len)),
            body,
            fresh: self.fresh,
            stored_at: self.stored_at,
            vary: self.vary.clone(),
            vary_values: self.vary_values.clone(),
            tags: self.tags.clone(),
            target_host: self.target_host.clone(),
            target_https: self.target_https,
            surrogate_control: self.surrogate_control.clone(),
            on_disk,
            residence: None,
        }
    }

    /// The body's length, wherever it lives.
    pub(crate) fn body_len(&self) -> u64 {
        self.on_disk
            .as_ref()
            .map_or(self.body.len() as u64, |d| d.len)
    }

    pub(crate) fn etag(&self) -> Option<HeaderValue> {
        self.headers.get(&header::ETAG)
    }

    pub(crate) fn last_modified(&self) -> Option<HeaderValue> {
        self.headers.get(&header::LAST_MODIFIED)
    }

    /// How long the store keeps this entry from now: its remaining freshness, its stale windows,
    /// and, when it has validators, time to be revalidated.
    pub(crate) fn keep_for(&self) -> Duration {
        let f = self.freshness();
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
        let mut headers = self.headers.to_map(not_modified.len());
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
    fn stored_fields_keep_order_and_repeats_in_a_buffer_of_their_own() {
        // Values parsed out of a large read buffer: the stored copy must not keep it.
        let read_buffer = Bytes::from(b"text/plain; charset=utf-8a=1b=2\"v1\"".repeat(300));
        let mut map = HeaderMap::new();
        let slice =
            |a: usize, b: usize| HeaderValue::from_maybe_shared(read_buffer.slice(a..b)).unwrap();
        map.append(header::CONTENT_TYPE, slice(0, 25));
        map.append(header::SET_COOKIE, slice(25, 28));
        map.append(HeaderName::from_static("x-custom"), slice(31, 35));
        map.append(header::SET_COOKIE, slice(28, 31));
        let f = Fields::new(&map);
        assert_eq!(f.len(), 4);
        assert_eq!(
            f.get(&header::CONTENT_TYPE).unwrap(),
            "text/plain; charset=utf-8"
        );
        let cookies: Vec<_> = f.get_all(&header::SET_COOKIE).collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(
            f.get(&HeaderName::from_static("x-custom")).unwrap(),
            "\"v1\""
        );
        assert!(f.get(&header::ETAG).is_none());
        assert_eq!(f.to_map(0), map, "the map a hit sends is the one stored");
        // One allocation of the values' size, not the 11 KB buffer they came from.
        assert_eq!(f.values.len(), 25 + 3 + 4 + 3);
        drop(map);
        assert!(
            read_buffer.is_unique(),
            "the stored fields hold no slice of the read buffer"
        );
        // obs-text (RFC 9110 §5.5), even halves of a character split over two fields.
        let mut odd = HeaderMap::new();
        odd.append(
            HeaderName::from_static("x-a"),
            HeaderValue::from_bytes(b"caf\xc3").unwrap(),
        );
        odd.append(
            HeaderName::from_static("x-b"),
            HeaderValue::from_bytes(b"\xa9").unwrap(),
        );
        let o = Fields::new(&odd);
        assert!(!o.utf8);
        assert_eq!(o.to_map(0), odd);
        let g = f.with(header::SET_COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(g.get_all(&header::SET_COOKIE).collect::<Vec<_>>(), ["c=3"]);
        assert_eq!(g.len(), 3);
        assert_eq!(f.custom.len(), 1, "only x-custom is kept whole");
        assert!(f.weight() < 4 * 64 + 64, "{}", f.weight());
        // Every common name is one byte, and comes back as itself.
        let mut all = HeaderMap::new();
        for (i, n) in COMMON.iter().enumerate() {
            all.append(n.clone(), HeaderValue::from(i));
        }
        let a = Fields::new(&all);
        assert!(a.custom.is_empty());
        assert_eq!(a.to_map(0), all);
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
