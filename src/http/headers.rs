//! Header rules of a proxy: hop-by-hop removal (RFC 9110 §7.6.1), the proxy's own request
//! headers (`Via`, `X-Forwarded-For`, `Forwarded`), and fields for this cache's eyes only.

use std::cell::RefCell;
use std::net::IpAddr;

use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::cache::entry::Target;
use crate::reuse::{keep_spare, take_spare};

/// Fields that describe one connection, never forwarded either way (and `Proxy-Authenticate`,
/// a proxy's own challenge).
pub(crate) const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

/// Fields from the origin meant for this cache only (RFC 9213 aside, `Surrogate-Control` is
/// consumed here; `Surrogate-Key` carries purge tags).
pub(crate) const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");
pub(crate) const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// When a peer's stored copy left the origin (Unix milliseconds), in its answer to a peer edge
/// only (see `purge::Recent`): `Age` counts whole seconds.
pub(crate) const FETCHED: HeaderName = HeaderName::from_static("meridian-fetched");
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop fields, including those the `Connection` field names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_hop_by_hop_except(headers, &[]);
}

/// Removes hop-by-hop fields and those `Connection` names, except the fields in `keep`.
pub(crate) fn strip_hop_by_hop_except(headers: &mut HeaderMap, keep: &[HeaderName]) {
    // Most messages carry none of these fields or only `Connection: keep-alive` (every answer
    // nginx gives), and this runs on every request and every forwarded response.
    let present = present(headers, &HOP_BY_HOP);
    if present == 0 {
        return;
    }
    // Names `Connection` lists, besides the hop-by-hop ones removed below anyway (so
    // `keep-alive` costs no name of its own). Read as bytes: a value with a byte past ASCII
    // still names the fields beside it.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|n| {
            !HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(n))
        })
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .filter(|n| !keep.contains(n))
        .collect();
    for name in &named {
        headers.remove(name);
    }
    remove(headers, &HOP_BY_HOP, present);
}

/// The framing fields of a message (`Content-Length`, `Transfer-Encoding`), for the next hop to
/// frame what it sends itself.
pub(crate) fn strip_framing(headers: &mut HeaderMap) {
    remove_present(headers, &FRAMING);
}

const FRAMING: [HeaderName; 2] = [header::CONTENT_LENGTH, header::TRANSFER_ENCODING];

/// Which of `names` (at most 32) `headers` holds, as bits: one pass over the names it holds.
/// Removing an absent name still hashes it, which costs more than this for a short list.
pub(crate) fn present(headers: &HeaderMap, names: &[HeaderName]) -> u32 {
    debug_assert!(names.len() <= 32);
    let mut bits = 0u32;
    for name in headers.keys() {
        if let Some(i) = names.iter().position(|n| n == name) {
            bits |= 1 << i;
        }
    }
    bits
}

/// Removes the fields of `names` whose bits are set in `bits` (from [`present`]).
fn remove(headers: &mut HeaderMap, names: &[HeaderName], bits: u32) {
    for (i, name) in names.iter().enumerate() {
        if bits & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// Removes those of `names` (at most 32) that `headers` holds.
fn remove_present(headers: &mut HeaderMap, names: &[HeaderName]) {
    let bits = present(headers, names);
    remove(headers, names, bits);
}

/// Fields meant for this cache (and its peers) only.
const CACHE_ONLY: [HeaderName; 3] = [SURROGATE_CONTROL, SURROGATE_KEY, FETCHED];

/// Removes the fields that must not reach clients.
pub(crate) fn strip_cache_only(headers: &mut HeaderMap) {
    remove_present(headers, &CACHE_ONLY);
}

/// An origin's answer that is only passed on (a pass-through), on its way to a client the
/// edge's own HTTP/1.1 server answers (`direct`): the fields `response::from_origin` would
/// keep of it, as header lines (`name: value\r\n`, names as the origin spelled them), with no
/// header map built, filled and dropped for it (the map was about a fifth of the instructions
/// of a forwarded request). The origin client makes it as it parses the head
/// ([`pass_lines`]) and puts it in the response body (`Body::pass_head`), whose way to the
/// server it follows; `response::from_origin` adds `Via` and `Cache-Status`; the server writes
/// the lines as they are.
#[derive(Debug)]
pub(crate) struct PassHead {
    pub(crate) lines: Vec<u8>,
    /// The lines hold a `Date`.
    pub(crate) dated: bool,
}

thread_local! {
    /// Buffers of the pass-through answers whose lines this thread wrote, for the next answers
    /// it reads, and the header maps of requests it answered, for the next requests it parses:
    /// with glibc's per-thread caches off (see `memory`), an allocation and its free cost a
    /// request about 450 instructions (a header map makes two).
    static SPARE_LINES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SPARE_MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Most spares of a kind a thread keeps, and the largest it keeps (a head of a few fields is a
/// few hundred bytes; a map with room for 32 fields about 3.5 KiB, at about 100 bytes a field):
/// at most 128 KiB of lines and 112 KiB of maps a thread.
const SPARE_COUNT: usize = 32;
const SPARE_CAPACITY: usize = 4096;
const SPARE_MAP_FIELDS: usize = 32;

/// An empty buffer with room for `len` bytes: a spare one where the thread has one.
fn lines_buffer(len: usize) -> Vec<u8> {
    match take_spare(&SPARE_LINES, |_| true) {
        Some(mut spare) => {
            spare.reserve(len);
            spare
        }
        None => Vec::with_capacity(len),
    }
}

impl Drop for PassHead {
    fn drop(&mut self) {
        if self.lines.capacity() == 0 || self.lines.capacity() > SPARE_CAPACITY {
            return;
        }
        let mut lines = std::mem::take(&mut self.lines);
        lines.clear();
        keep_spare(&SPARE_LINES, lines, SPARE_COUNT);
    }
}

/// An empty header map with room for `fields`: a spare one where the thread has one (see
/// [`give_back_map`]).
pub(crate) fn request_map(fields: usize) -> HeaderMap {
    match take_spare(&SPARE_MAPS, |_| true) {
        Some(mut spare) => {
            spare.reserve(fields);
            spare
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Keeps a request's header map, emptied, for the next request this thread parses.
pub(crate) fn give_back_map(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > SPARE_MAP_FIELDS {
        return;
    }
    map.clear();
    keep_spare(&SPARE_MAPS, map, SPARE_COUNT);
}

/// Most names a `Connection` field may list for [`pass_lines`] (any more: a header map).
const MAX_NAMED: usize = 16;

/// Room for what the edge adds to a pass-through's lines (`Via`, `Cache-Status`).
const PASS_ROOM: usize = 160;

/// The fields of an origin's answer a pass-through keeps ([`PassHead`]): all but the
/// hop-by-hop ones and those `Connection` names (as [`strip_hop_by_hop`]), `Content-Length`
/// (the server writes the framing) and the cache-only ones (as [`strip_cache_only`]). `None`
/// where the answer needs a header map after all: it carries `Cache-Status` (an upstream
/// cache's, which ours joins), `Location` or `Content-Location` (by which an unsafe method's
/// answer invalidates), or `Connection` lists more than [`MAX_NAMED`] names.
pub(crate) fn pass_lines(fields: &[httparse::Header<'_>]) -> Option<PassHead> {
    let mut named: [&[u8]; MAX_NAMED] = [&[]; MAX_NAMED];
    let mut count = 0;
    let mut len = PASS_ROOM;
    for f in fields {
        if f.name.eq_ignore_ascii_case("connection") {
            for token in f.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.is_empty() {
                    continue;
                }
                *named.get_mut(count)? = token;
                count += 1;
            }
        }
        len += f.name.len() + f.value.len() + 4;
    }
    let named = &named[..count];
    let mut lines = lines_buffer(len);
    let mut dated = false;
    for f in fields {
        let name = f.name.as_bytes();
        match pass_rule(name) {
            PassRule::NeedsMap => return None,
            PassRule::Drop => continue,
            PassRule::Keep if named.iter().any(|n| n.eq_ignore_ascii_case(name)) => continue,
            PassRule::Keep => {}
        }
        dated |= name.eq_ignore_ascii_case(b"date");
        push_line(&mut lines, name, f.value);
    }
    Some(PassHead { lines, dated })
}

/// What [`pass_lines`] does with a field of this name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassRule {
    Keep,
    /// One of [`PASS_DROPS`].
    Drop,
    /// One of [`PASS_NEEDS_MAP`].
    NeedsMap,
}

/// [`PASS_DROPS`] and [`PASS_NEEDS_MAP`] as a match on the name's length, then at most two
/// comparisons (a test holds it to the lists): a walk of both lists for each field of each
/// answer cost a pass-through 1,600 instructions.
fn pass_rule(name: &[u8]) -> PassRule {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    let drop = match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        8 if is(b"location") => return PassRule::NeedsMap,
        10 => is(b"connection") || is(b"keep-alive"),
        12 if is(b"cache-status") => return PassRule::NeedsMap,
        13 => is(b"surrogate-key"),
        14 => is(b"content-length"),
        16 if is(b"content-location") => return PassRule::NeedsMap,
        16 => is(b"proxy-connection") || is(b"meridian-fetched"),
        17 => is(b"transfer-encoding") || is(b"surrogate-control"),
        18 => is(b"proxy-authenticate"),
        19 => is(b"proxy-authorization"),
        _ => false,
    };
    if drop {
        PassRule::Drop
    } else {
        PassRule::Keep
    }
}

/// The names [`pass_lines`] drops: [`HOP_BY_HOP`], `Content-Length` and [`CACHE_ONLY`] (a
/// test holds them to those lists), as bytes: a header name's spelling is a lookup of its own.
#[cfg(test)]
const PASS_DROPS: [&[u8]; 13] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
    b"content-length",
    b"surrogate-control",
    b"surrogate-key",
    b"meridian-fetched",
];

/// The names for which [`pass_lines`] leaves an answer to a header map.
#[cfg(test)]
const PASS_NEEDS_MAP: [&[u8]; 3] = [b"cache-status", b"location", b"content-location"];

/// Appends `name: value\r\n`.
pub(crate) fn push_line(lines: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    lines.extend_from_slice(name);
    lines.extend_from_slice(b": ");
    lines.extend_from_slice(value);
    lines.extend_from_slice(b"\r\n");
}

/// Purge tags from `Surrogate-Key` (space-separated).
pub(crate) fn surrogate_keys(headers: &HeaderMap) -> Box<[Box<str>]> {
    headers
        .get_all(SURROGATE_KEY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace)
        .map(Box::from)
        .collect()
}

/// Adds this proxy's hop to a request bound for an origin: `Via`, `X-Forwarded-For` (appended
/// to any the client sent) and `Forwarded` (RFC 7239; the client's own is replaced, along with
/// the other fields that claim a host or scheme). `target` says which of the host and the scheme
/// the origin may learn: exactly what the cached variant is selected by. (Requests take
/// [`forwarding`]'s fields, added or as lines: this is the two in one, for tests.)
#[cfg(test)]
pub(crate) fn add_forwarding(
    headers: &mut HeaderMap,
    client: IpAddr,
    target: Target<'_>,
    via: &HeaderValue,
) {
    forwarding(headers, client, target, via).apply(headers);
}

/// What [`add_forwarding`] adds, made without adding it: the claims and any `X-Forwarded-For`
/// are taken out of `headers` (the first such value, if it is text, leads the new one), and the
/// three fields wait in a [`Forwarding`], for the header map ([`Forwarding::apply`]) or, on the
/// edge's own HTTP/1.1 client, for the request head's lines ([`Forwarding::write`]): there they
/// cost neither a value on the heap nor an insert.
pub(crate) fn forwarding<'v>(
    headers: &mut HeaderMap,
    client: IpAddr,
    target: Target<'_>,
    via: &'v HeaderValue,
) -> Forwarding<'v> {
    // The claims and `X-Forwarded-For` in one pass over the names.
    let present = present(headers, &OVERWRITTEN);
    // Built where it is returned from (two lines built apart were copied into it).
    let mut out = Forwarding {
        via,
        xff: Line::default(),
        fwd: Line::default(),
    };
    let Forwarding { xff, fwd, .. } = &mut out;
    if present & (1 << XFF) != 0 {
        // `to_str` admits visible ASCII, spaces and tabs only: nothing that ends a line.
        if let Some(prev) = headers.get(X_FORWARDED_FOR).filter(|v| v.to_str().is_ok()) {
            xff.push(prev.as_bytes());
            xff.push(b", ");
        }
    }
    remove(headers, &OVERWRITTEN, present);
    let at = xff.as_bytes().len();
    push_ip(xff, client);
    let ip = &xff.as_bytes()[at..];
    fwd.push(b"for=");
    match client {
        IpAddr::V4(_) => fwd.push(ip),
        IpAddr::V6(_) => {
            fwd.push(b"\"[");
            fwd.push(ip);
            fwd.push(b"]\"");
        }
    }
    if let Some(https) = target.https {
        fwd.push(if https {
            b";proto=https"
        } else {
            b";proto=http"
        });
    }
    if let Some(h) = target
        .host
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
    {
        fwd.push(b";host=\"");
        fwd.push(h.as_bytes());
        fwd.push(b"\"");
    }
    out
}

/// Client-sent fields that claim a host or a scheme for the request. The edge is where requests
/// enter from the internet, so nothing before it can vouch for them; origins that trust them
/// (redirects built from `X-Forwarded-Host`) would let one client choose what the cache stores
/// for everyone. Then `X-Forwarded-For`, which [`forwarding`] rewrites (the last bit).
const OVERWRITTEN: [HeaderName; 6] = [
    FORWARDED,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-scheme"),
    X_FORWARDED_FOR,
];
/// `X-Forwarded-For`'s place in [`OVERWRITTEN`], after the claims.
const XFF: usize = 5;

/// `Via`, `X-Forwarded-For` and `Forwarded` for a request bound for an origin (see
/// [`forwarding`]). Every byte of the two built values is visible ASCII, a space or a tab.
pub(crate) struct Forwarding<'v> {
    /// Borrowed: the edge's value is one shared buffer, whose count both HTTP threads wrote
    /// twice a request when each took a copy.
    via: &'v HeaderValue,
    xff: Line,
    fwd: Line,
}

impl Forwarding<'_> {
    /// Puts the fields into `headers`, after the fields there.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        headers.append(header::VIA, self.via.clone());
        if let Ok(v) = HeaderValue::from_bytes(self.xff.as_bytes()) {
            headers.append(X_FORWARDED_FOR, v);
        }
        if let Ok(v) = HeaderValue::from_bytes(self.fwd.as_bytes()) {
            headers.append(FORWARDED, v);
        }
    }

    /// Writes the fields as HTTP/1.1 header lines, as [`apply`](Self::apply) and a map's
    /// encoding would.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        push_line(out, b"via", self.via.as_bytes());
        push_line(out, b"x-forwarded-for", self.xff.as_bytes());
        push_line(out, b"forwarded", self.fwd.as_bytes());
    }
}

/// An address as `Display` spells it; IPv4 without the formatter.
fn push_ip(line: &mut Line, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Spelled into a buffer of its own and pushed once (a push a digit group took
            // ~70 instructions, on every forwarded request).
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            line.push(&buf[..len]);
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(line, "{v6}");
        }
    }
}

/// A field value built on the stack (what outgrows it goes on the heap).
pub(crate) struct Line {
    buf: [u8; 192],
    len: usize,
    spilled: Vec<u8>,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            buf: [0; 192],
            len: 0,
            spilled: Vec::new(),
        }
    }
}

impl Line {
    // Always inlined: most pushes are of a few constant bytes, which then cost a store or two
    // instead of a call and a copy (42 instructions a push, 13 pushes a forwarded request).
    #[inline(always)]
    pub(crate) fn push(&mut self, b: &[u8]) {
        let end = self.len + b.len();
        if end <= self.buf.len() && self.spilled.is_empty() {
            self.buf[self.len..end].copy_from_slice(b);
            self.len = end;
        } else {
            self.spill(b);
        }
    }

    #[cold]
    fn spill(&mut self, b: &[u8]) {
        if self.spilled.is_empty() {
            self.spilled.extend_from_slice(&self.buf[..self.len]);
        }
        self.spilled.extend_from_slice(b);
    }

    /// Appends a decimal integer without a formatter.
    pub(crate) fn push_int(&mut self, v: i64) {
        if v < 0 {
            self.push(b"-");
        }
        self.push(decimal(v.unsigned_abs(), &mut [0; 20]));
    }

    /// The line as text, if it is UTF-8 (it is, where only `&str`s were pushed).
    pub(crate) fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        if self.spilled.is_empty() {
            &self.buf[..self.len]
        } else {
            &self.spilled
        }
    }
}

impl std::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Whether this node (the `received-by` of `via`, this node's Via value) already appears in the
/// request's Via, over whatever protocol: a forwarding loop.
pub(crate) fn is_loop(headers: &HeaderMap, via: &HeaderValue) -> bool {
    // The received-by part of one hop: "1.1 edge-a (meridian)" -> "edge-a". Borrowed: this
    // runs for every request, and most carry no Via at all.
    fn by(hop: &[u8]) -> &[u8] {
        let hop = hop.trim_ascii();
        let rest = hop.splitn(2, |&b| b == b' ').nth(1).unwrap_or(hop);
        // Drop a comment: "1.1 edge-a (meridian)".
        rest.split(|&b| b == b' ').next().unwrap_or(rest)
    }
    let mut received = headers.get_all(header::VIA).iter().peekable();
    if received.peek().is_none() {
        return false;
    }
    let ours = by(via.as_bytes());
    received.any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|hop| by(hop) == ours)
    })
}

/// `n` in decimal digits, written into the end of `buf`, without a formatter.
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_through_drops_the_fields_the_map_rules_strip() {
        let spelled = |names: &[HeaderName]| -> Vec<String> {
            names.iter().map(|n| n.as_str().to_string()).collect()
        };
        let bytes = |names: &[&[u8]]| -> Vec<String> {
            names
                .iter()
                .map(|n| String::from_utf8(n.to_vec()).unwrap())
                .collect()
        };
        let mut rules = spelled(&HOP_BY_HOP);
        rules.extend(spelled(&[header::CONTENT_LENGTH]));
        rules.extend(spelled(&CACHE_ONLY));
        assert_eq!(bytes(&PASS_DROPS), rules);
        assert_eq!(
            bytes(&PASS_NEEDS_MAP),
            spelled(&[CACHE_STATUS, header::LOCATION, header::CONTENT_LOCATION])
        );
    }

    #[test]
    fn a_spare_lines_buffer_carries_nothing_over() {
        let field = |name, value| httparse::Header { name, value };
        let first = pass_lines(&[field("x-first", b"1"), field("etag", b"\"a\"")]).unwrap();
        let at = first.lines.as_ptr();
        drop(first);
        let second = pass_lines(&[field("server", b"b")]).unwrap();
        assert_eq!(second.lines, b"server: b\r\n");
        assert_eq!(
            second.lines.as_ptr(),
            at,
            "the first answer's buffer, again"
        );
    }

    #[test]
    fn a_spare_header_map_carries_nothing_over() {
        let mut map = request_map(8);
        map.insert(header::COOKIE, "session=secret".parse().unwrap());
        map.append(header::COOKIE, "other=1".parse().unwrap());
        map.insert(header::HOST, "a.test".parse().unwrap());
        let room = map.capacity();
        give_back_map(map);
        let again = request_map(2);
        assert!(again.is_empty(), "{again:?}");
        assert!(again.get(header::COOKIE).is_none());
        assert_eq!(again.capacity(), room, "the map given back, again");
    }

    #[test]
    fn the_pass_rule_is_the_lists() {
        let among = |list: &[&[u8]], name: &[u8]| list.iter().any(|n| n.eq_ignore_ascii_case(name));
        let mut names: Vec<Vec<u8>> = Vec::new();
        for n in PASS_DROPS.iter().chain(&PASS_NEEDS_MAP) {
            names.push(n.to_vec());
            names.push(n.to_ascii_uppercase());
            // One byte short, one byte more, one byte changed.
            names.push(n[..n.len() - 1].to_vec());
            names.push([*n, b"s"].concat());
            let mut changed = n.to_vec();
            changed[0] ^= 1;
            names.push(changed);
        }
        for n in [
            "server",
            "date",
            "content-type",
            "last-modified",
            "etag",
            "cache-control",
            "accept-ranges",
            "vary",
            "set-cookie",
            "expires",
            "age",
            "x-cache",
            "link",
            "content-encoding",
            "content-language",
            "strict-transport-security",
            "",
        ] {
            names.push(n.as_bytes().to_vec());
        }
        for name in &names {
            let want = if among(&PASS_NEEDS_MAP, name) {
                PassRule::NeedsMap
            } else if among(&PASS_DROPS, name) {
                PassRule::Drop
            } else {
                PassRule::Keep
            };
            assert_eq!(pass_rule(name), want, "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn connection_named_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        // Listed in any case, among hop-by-hop names, or named twice; `Host` kept on request.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "Keep-Alive, X-One".parse().unwrap());
        h.append(
            header::CONNECTION,
            "te,x-two , host, x-one".parse().unwrap(),
        );
        h.insert("x-one", "1".parse().unwrap());
        h.insert("x-two", "2".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::HOST, "a.test".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop_except(&mut h, &[header::HOST]);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);
    }

    /// The edge's HTTP/1.1 client writes this hop's fields as lines (`h1::Lines`), the other
    /// clients put them into the header map: an origin must see the same either way.
    #[test]
    fn forwarding_lines_are_the_fields_the_map_takes() {
        let fields = |lines: &[u8]| {
            let mut by_name = std::collections::BTreeMap::<String, Vec<Vec<u8>>>::new();
            let text = lines.strip_suffix(b"\n").unwrap_or_default();
            for line in text.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").expect("every line ends in CRLF");
                assert!(!line.contains(&b'\r'), "a lone CR in {line:?}");
                let colon = line.iter().position(|&b| b == b':').unwrap();
                let name = String::from_utf8(line[..colon].to_vec()).unwrap();
                let value = line[colon + 1..].strip_prefix(b" ").unwrap().to_vec();
                by_name.entry(name).or_default().push(value);
            }
            by_name
        };
        let encode = |h: &HeaderMap, out: &mut Vec<u8>| {
            for (name, value) in h {
                push_line(out, name.as_str().as_bytes(), value.as_bytes());
            }
        };
        let mut priors = Vec::new();
        priors.push(HeaderMap::new());
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a.test".parse().unwrap());
        h.append(X_FORWARDED_FOR, "10.0.0.1".parse().unwrap());
        h.append(X_FORWARDED_FOR, "10.0.0.2".parse().unwrap());
        h.insert(header::VIA, "1.1 upstream".parse().unwrap());
        h.insert(FORWARDED, "for=1.2.3.4;host=evil.test".parse().unwrap());
        for claim in &OVERWRITTEN[1..XFF] {
            h.insert(claim.clone(), "evil.test".parse().unwrap());
        }
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        priors.push(h);
        let mut h = HeaderMap::new();
        // A value that is not text leads nothing.
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"10.0.0.1, caf\xc3\xa9").unwrap(),
        );
        priors.push(h);
        let targets = [
            Target::default(),
            Target {
                host: Some("a.test"),
                https: Some(true),
            },
            Target {
                host: Some("with \"quote\".test"),
                https: Some(false),
            },
        ];
        let via = HeaderValue::from_static("1.1 edge-a (meridian)");
        for prior in &priors {
            for ip in ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"] {
                for target in targets {
                    let mut map = prior.clone();
                    let added = forwarding(&mut map, ip.parse().unwrap(), target, &via);
                    let mut applied = map.clone();
                    added.apply(&mut applied);
                    let (mut want, mut got) = (Vec::new(), Vec::new());
                    encode(&applied, &mut want);
                    encode(&map, &mut got);
                    added.write(&mut got);
                    assert_eq!(fields(&got), fields(&want), "{prior:?} {ip} {target:?}");
                }
            }
        }
    }

    #[test]
    fn forwarding_appends() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "10.0.0.1".parse().unwrap());
        h.insert(FORWARDED, "for=1.2.3.4;host=evil.test".parse().unwrap());
        h.insert("x-forwarded-host", "evil.test".parse().unwrap());
        let via = HeaderValue::from_static("1.1 edge-a");
        let target = Target {
            host: Some("a.test"),
            https: Some(false),
        };
        add_forwarding(&mut h, "2001:db8::1".parse().unwrap(), target, &via);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 2001:db8::1");
        assert_eq!(
            h.get_all(FORWARDED).iter().collect::<Vec<_>>(),
            ["for=\"[2001:db8::1]\";proto=http;host=\"a.test\""]
        );
        assert!(h.get("x-forwarded-host").is_none());
        let mut bare = HeaderMap::new();
        add_forwarding(
            &mut bare,
            "10.0.0.2".parse().unwrap(),
            Target::default(),
            &via,
        );
        assert_eq!(bare[FORWARDED], "for=10.0.0.2");
        assert!(is_loop(&h, &via));
        assert!(!is_loop(&h, &HeaderValue::from_static("1.1 edge-b")));
        // The same node over another protocol, or with a comment, is still this node.
        let mut h2 = HeaderMap::new();
        h2.insert(
            header::VIA,
            HeaderValue::from_static("1.0 fred, 2 edge-a (meridian)"),
        );
        assert!(is_loop(&h2, &via));
        assert!(!is_loop(&h2, &HeaderValue::from_static("1.1 edge-a2")));
    }

    #[test]
    fn each_hop_by_hop_field_alone_is_removed() {
        // The pass over the names must see every one of them by itself, not only `Connection`.
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), "x".parse().unwrap());
            h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name}");
            assert_eq!(h.len(), 1, "{name}");
        }
        // The same for the claims a client may not make, and the fields for this cache only.
        let via = HeaderValue::from_static("1.1 edge-a");
        for name in OVERWRITTEN[..XFF]
            .iter()
            .chain(&[SURROGATE_CONTROL, SURROGATE_KEY, FETCHED])
        {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), "x".parse().unwrap());
            h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
            if OVERWRITTEN[..XFF].contains(name) {
                add_forwarding(
                    &mut h,
                    "192.0.2.1".parse().unwrap(),
                    Target::default(),
                    &via,
                );
                let forwarded: Vec<_> = h.get_all(FORWARDED).iter().collect();
                assert_eq!(forwarded, ["for=192.0.2.1"], "{name}");
                assert_eq!(h.len(), 4, "{name}");
            } else {
                strip_cache_only(&mut h);
                assert_eq!(h.len(), 1, "{name}");
            }
            assert!(name == FORWARDED || !h.contains_key(name), "{name}");
        }
        // Kept when asked, and an untouched map stays as it was.
        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::HOST, "a.test".parse().unwrap());
        strip_hop_by_hop_except(&mut h, &[header::HOST]);
        assert_eq!(h.len(), 1);
        assert_eq!(h[header::HOST], "a.test");
        strip_hop_by_hop_except(&mut h, &[header::HOST]);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn client_addresses_are_spelled_as_display_spells_them() {
        let via = HeaderValue::from_static("1.1 edge-a");
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.9.99",
            "100.200.255.250",
            "9.10.99.100",
            "101.110.109.190",
            "255.255.255.255",
            "::1",
            "::ffff:192.0.2.1",
            "2001:db8:85a3::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut h = HeaderMap::new();
            add_forwarding(&mut h, ip, Target::default(), &via);
            assert_eq!(h[X_FORWARDED_FOR], ip.to_string().as_str());
            let node = match ip {
                IpAddr::V4(_) => ip.to_string(),
                IpAddr::V6(_) => format!("\"[{ip}]\""),
            };
            assert_eq!(h[FORWARDED], format!("for={node}").as_str());
        }
        // A chain longer than the stack line is kept whole.
        let long = (0..40)
            .map(|i| format!("10.0.0.{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, long.parse().unwrap());
        add_forwarding(
            &mut h,
            "192.0.2.7".parse().unwrap(),
            Target::default(),
            &via,
        );
        assert_eq!(h[X_FORWARDED_FOR], format!("{long}, 192.0.2.7").as_str());
        // A previous value that is not text is replaced, as before.
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(b"\xff").unwrap());
        add_forwarding(
            &mut h,
            "192.0.2.7".parse().unwrap(),
            Target::default(),
            &via,
        );
        assert_eq!(h[X_FORWARDED_FOR], "192.0.2.7");
    }
}
