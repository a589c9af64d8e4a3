//! Responses to clients: from a stored entry (with `Age`, conditionals, ranges, HEAD), from an
//! origin (streamed through), and from errors, each with its RFC 9211 `Cache-Status`.
//!
//! This is the one place where an error becomes an HTTP status ([`Refusal::status`]).

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use super::body::Body;
use super::headers::{push_line, strip_cache_only, strip_hop_by_hop, Line, CACHE_STATUS};
use super::range::{self, Ranges};
use crate::cache::entry::{Entry, Fields};
use crate::cache::fill::Tail;
use crate::cache::store::Tier;
use crate::origin::OriginError;

/// Why the request went forward (RFC 9211 §2.2 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// Nothing stored for the URL.
    Miss,
    /// The URL was recently found uncacheable, so the request went straight to the origin.
    UriMiss,
    /// Responses are stored for the URL but none for these request headers.
    VaryMiss,
    /// The stored response was stale (validated or refetched).
    Stale,
    /// The request's own directives sent it forward.
    Request,
    /// The method is not served from cache.
    Method,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Fwd::Miss => "miss",
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Method => "method",
        }
    }
}

/// One `Cache-Status` entry (RFC 9211).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CacheStatus {
    pub(crate) hit: bool,
    pub(crate) fwd: Option<Fwd>,
    pub(crate) fwd_status: Option<u16>,
    pub(crate) stored: bool,
    pub(crate) collapsed: bool,
    pub(crate) ttl: Option<i64>,
    pub(crate) detail: Option<&'static str>,
    /// The store tier a hit came from (for logs and metrics; not part of the header).
    pub(crate) tier: Option<Tier>,
}

/// What of a [`CacheStatus`] its value spells (all but `tier`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Spelled {
    hit: bool,
    fwd: Option<Fwd>,
    fwd_status: Option<u16>,
    stored: bool,
    collapsed: bool,
    ttl: Option<i64>,
    detail: Option<&'static str>,
}

impl Spelled {
    fn of(s: &CacheStatus) -> Spelled {
        Spelled {
            hit: s.hit,
            fwd: s.fwd,
            fwd_status: s.fwd_status,
            stored: s.stored,
            collapsed: s.collapsed,
            ttl: s.ttl,
            detail: s.detail,
        }
    }

    /// Which of the [`SLOTS`] it goes to: a multiplicative hash of what varies most.
    fn slot(&self) -> usize {
        let flags = u64::from(self.hit)
            | u64::from(self.stored) << 1
            | u64::from(self.collapsed) << 2
            | self.fwd.map_or(0, |f| f as u64 + 1) << 3
            | self.detail.map_or(0, |d| d.len() as u64 + 1) << 8;
        let ttl = self.ttl.map_or(u64::MAX, |t| t as u64);
        let fwd_status = u64::from(self.fwd_status.unwrap_or(0));
        let h = (ttl ^ fwd_status << 40 ^ flags << 20).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - SLOTS.trailing_zeros())) as usize
    }
}

/// Values kept per thread (a power of two).
const SLOTS: usize = 16;

struct Slot {
    key: Option<Spelled>,
    value: Option<HeaderValue>,
}

thread_local! {
    /// `Cache-Status` values this thread built, by status. A slot keeps its value once the same
    /// status comes to it twice in a row: the hits of a hot object within one second, every
    /// pass-through of a site. Each later answer clones it (a reference count) instead of
    /// building and allocating one. Bounded: sixteen short values a thread.
    static SPELLED: std::cell::RefCell<[Slot; SLOTS]> = const {
        std::cell::RefCell::new([const { Slot { key: None, value: None } }; SLOTS])
    };
}

/// What kind of answer a request got, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    Hit,
    Stale,
    Revalidated,
    Miss,
    Pass,
    Refused,
}

impl Label {
    pub(crate) const ALL: [Label; 6] = [
        Label::Hit,
        Label::Stale,
        Label::Revalidated,
        Label::Miss,
        Label::Pass,
        Label::Refused,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Label::Hit => "hit",
            Label::Stale => "stale",
            Label::Revalidated => "revalidated",
            Label::Miss => "miss",
            Label::Pass => "pass",
            Label::Refused => "refused",
        }
    }
}

impl CacheStatus {
    pub(crate) fn hit(ttl: i64) -> CacheStatus {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..CacheStatus::default()
        }
    }

    pub(crate) fn forward(fwd: Fwd) -> CacheStatus {
        CacheStatus {
            fwd: Some(fwd),
            ..CacheStatus::default()
        }
    }

    pub(crate) fn detail(mut self, detail: &'static str) -> CacheStatus {
        self.detail = Some(detail);
        self
    }

    pub(crate) fn label(&self) -> Label {
        match (self.hit, self.fwd) {
            (true, _) if self.ttl.is_some_and(|t| t < 0) => Label::Stale,
            (true, _) => Label::Hit,
            (false, Some(Fwd::Stale | Fwd::Request)) if self.fwd_status == Some(304) => {
                Label::Revalidated
            }
            (false, Some(_)) if self.detail == Some("stale-if-error") => Label::Stale,
            (false, Some(_)) if self.stored || self.collapsed => Label::Miss,
            (false, Some(Fwd::Miss | Fwd::VaryMiss | Fwd::Stale)) => Label::Miss,
            (false, Some(_)) => Label::Pass,
            (false, None) => Label::Refused,
        }
    }

    /// The field value. A thread keeps the values of the statuses it answers with most (see
    /// [`SPELLED`]) and hands out clones of those.
    pub(crate) fn value(&self) -> HeaderValue {
        let key = Spelled::of(self);
        SPELLED
            .try_with(|slots| {
                let mut slots = slots.borrow_mut();
                let slot = &mut slots[key.slot()];
                if slot.key != Some(key) {
                    // New to this slot: built each time until it comes twice in a row.
                    *slot = Slot {
                        key: Some(key),
                        value: None,
                    };
                    return self.build();
                }
                slot.value.get_or_insert_with(|| self.build()).clone()
            })
            .unwrap_or_else(|_| self.build())
    }

    fn build(&self) -> HeaderValue {
        // Written on the stack and copied once: one allocation per response.
        let mut s = Line::default();
        s.push(b"meridian");
        if self.hit {
            s.push(b"; hit");
        }
        if let Some(f) = self.fwd {
            s.push(b"; fwd=");
            s.push(f.as_str().as_bytes());
        }
        if let Some(code) = self.fwd_status {
            s.push(b"; fwd-status=");
            s.push_int(i64::from(code));
        }
        if self.stored {
            s.push(b"; stored");
        }
        if self.collapsed {
            s.push(b"; collapsed");
        }
        if let Some(ttl) = self.ttl {
            s.push(b"; ttl=");
            s.push_int(ttl);
        }
        if let Some(d) = self.detail {
            s.push(b"; detail=");
            s.push(d.as_bytes());
        }
        // cannot fail: only ASCII tokens, digits and punctuation are written.
        HeaderValue::from_bytes(s.as_bytes()).unwrap_or(HeaderValue::from_static("meridian"))
    }
}

/// Why the edge answers a request itself with an error.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A malformed request: framing that could smuggle a second request (RFC 9112 §6.3), a
    /// missing or repeated Host, a target form the edge does not serve.
    BadRequest(&'static str),
    /// TRACE and CONNECT: never forwarded.
    MethodNotAllowed,
    /// Host not served here, or an absolute-form target for another host.
    Misdirected,
    /// The request already passed through this node.
    Loop,
    /// `only-if-cached` and nothing usable is stored.
    NotCached,
    /// The origin could not be reached or failed.
    Origin(OriginError),
}

impl Refusal {
    /// The one mapping from error to status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Refusal::Loop => StatusCode::LOOP_DETECTED,
            Refusal::NotCached => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Origin(OriginError::ClientBody { .. }) => StatusCode::BAD_REQUEST,
            Refusal::Origin(OriginError::ClientTimeout { .. }) => StatusCode::REQUEST_TIMEOUT,
            Refusal::Origin(OriginError::Timeout { .. } | OriginError::BodyTimeout { .. }) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Refusal::Origin(OriginError::Busy { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Origin(OriginError::ClientBusy { .. }) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Origin(_) => StatusCode::BAD_GATEWAY,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::BadRequest(why) => format!("bad request: {why}\n"),
            Refusal::MethodNotAllowed => "method not allowed\n".into(),
            Refusal::Origin(OriginError::ClientBody { .. }) => {
                "bad request: malformed request body\n".into()
            }
            Refusal::Origin(OriginError::ClientTimeout { .. }) => "request body timed out\n".into(),
            Refusal::Misdirected => "this server does not serve that host\n".into(),
            Refusal::Loop => "forwarding loop detected\n".into(),
            Refusal::NotCached => "not in cache (only-if-cached)\n".into(),
            // The origin's address stays out of the body: clients need not learn it.
            Refusal::Origin(OriginError::Timeout { .. } | OriginError::BodyTimeout { .. }) => {
                "origin timed out\n".into()
            }
            Refusal::Origin(OriginError::Busy { .. }) => "origin busy\n".into(),
            Refusal::Origin(OriginError::ClientBusy { .. }) => {
                "too many of your requests at the origin\n".into()
            }
            Refusal::Origin(_) => "origin unavailable\n".into(),
        }
    }

    pub(crate) fn response(&self, status: CacheStatus) -> Response<Body> {
        let mut resp = Response::new(Body::full(self.message()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(CACHE_STATUS, status.value());
        if matches!(self, Refusal::MethodNotAllowed) {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static(super::request::ALLOWED),
            );
        }
        if matches!(
            self,
            Refusal::BadRequest(_) | Refusal::Origin(OriginError::ClientTimeout { .. })
        ) {
            // The connection may hold the rest of a body nobody will read, or be out of step.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

fn age_value(age: Duration) -> HeaderValue {
    let secs = age.as_secs();
    match usize::try_from(secs) {
        // A slice of a static table: no allocation (every hit sends one).
        Ok(n) if n < AGES => {
            let (start, end) = (decimal_offset(n), decimal_offset(n + 1));
            HeaderValue::from_maybe_shared(bytes::Bytes::from_static(&DECIMALS[start..end]))
                .unwrap_or_else(|_| HeaderValue::from(secs))
        }
        _ => HeaderValue::from(secs),
    }
}

/// Ages (seconds) the table below spells: a little over a day.
const AGES: usize = 100_000;

/// Where `n` (below [`AGES`], or `AGES` itself for the end) starts in [`DECIMALS`].
const fn decimal_offset(n: usize) -> usize {
    let mut offset = 0;
    let mut width = 1;
    let mut low = 0;
    let mut high = 10;
    while n >= high {
        offset += (high - low) * width;
        width += 1;
        low = high;
        high *= 10;
    }
    offset + (n - low) * width
}

/// `0123…99999`: every number below [`AGES`] in decimal, one after another.
static DECIMALS: [u8; decimal_offset(AGES)] = {
    let mut out = [0u8; decimal_offset(AGES)];
    let mut n = 0;
    let mut at = 0;
    while n < AGES {
        let mut width = 1;
        let mut high = 10;
        while n >= high {
            width += 1;
            high *= 10;
        }
        let mut v = n;
        let mut i = width;
        while i > 0 {
            i -= 1;
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += width;
        n += 1;
    }
    out
};

/// Weak comparison of an `If-None-Match` list against an entity tag (RFC 9110 §13.1.2).
fn none_match(cond: &HeaderMap, etag: Option<&HeaderValue>) -> Option<bool> {
    let mut values = cond.get_all(header::IF_NONE_MATCH).iter().peekable();
    values.peek()?;
    let Some(etag) = etag else { return Some(false) };
    fn opaque(t: &[u8]) -> &[u8] {
        t.strip_prefix(b"W/").unwrap_or(t)
    }
    let ours = opaque(etag.as_bytes());
    Some(values.any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(|t| t.trim_ascii())
            .any(|t| t == b"*" || opaque(t) == ours)
    }))
}

/// Whether a client's conditional request is satisfied by a stored 200 (RFC 9110 §13.2.2):
/// If-None-Match first, If-Modified-Since only without it.
fn not_modified(req: &HeaderMap, stored: &Fields) -> bool {
    if let Some(m) = none_match(req, stored.get(&header::ETAG).as_ref()) {
        return m;
    }
    let Some(ims) = req.get(header::IF_MODIFIED_SINCE) else {
        return false;
    };
    let ims = ims
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok());
    let lm = stored
        .get(&header::LAST_MODIFIED)
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok());
    matches!((ims, lm), (Some(ims), Some(lm)) if lm <= ims)
}

/// Fields a 304 carries from the stored response (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [header::HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
];

/// The fields that make a request's answer other than the whole stored response.
const ASKS_PART: [header::HeaderName; 3] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::RANGE,
];

/// What a request gets of a stored (or filling) response.
enum Plan {
    /// A satisfied conditional: 304.
    NotModified,
    /// The whole response (headers only for HEAD).
    Whole,
    /// No range overlaps the body: 416.
    Unsatisfiable(u64),
    /// One range: 206 with `Content-Range`.
    One(u64, u64),
    /// Several ranges: 206 `multipart/byteranges`.
    Many(Vec<(u64, u64)>),
    /// A range of a body whose length is not yet known: wait for the whole body.
    NeedLength,
}

/// Decides what to send for a response with these stored headers and a body of `len` bytes
/// (`None`: still arriving, length unknown).
fn plan(entry: &Entry, method: &Method, req: &HeaderMap, len: Option<u64>) -> Plan {
    // Most requests ask for none of it: one pass over their names instead of a lookup each
    // (and no look at the stored validators).
    if super::headers::present(req, &ASKS_PART) == 0 {
        return Plan::Whole;
    }
    let full = entry.status == StatusCode::OK;
    if full && not_modified(req, &entry.headers) {
        return Plan::NotModified;
    }
    if !full || *method != Method::GET {
        return Plan::Whole;
    }
    let Some(r) = req.get(header::RANGE) else {
        return Plan::Whole;
    };
    if !range::if_range_holds(req, &entry.headers) {
        return Plan::Whole;
    }
    let Some(len) = len else {
        return Plan::NeedLength;
    };
    match range::parse(r, len) {
        Ranges::Ignore => Plan::Whole,
        Ranges::Unsatisfiable => Plan::Unsatisfiable(len),
        Ranges::Satisfiable(ranges) if ranges.len() == 1 => Plan::One(ranges[0].0, ranges[0].1),
        Ranges::Satisfiable(ranges) => Plan::Many(ranges),
    }
}

/// The 304 for a satisfied conditional: the validators and caching fields of the stored
/// response (RFC 9110 §15.4.5).
fn not_modified_response(entry: &Entry, age: Duration, status: CacheStatus) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    let h = resp.headers_mut();
    for name in NOT_MODIFIED_FIELDS {
        for v in entry.headers.get_all(&name) {
            h.append(name.clone(), v);
        }
    }
    h.insert(header::AGE, age_value(age));
    h.insert(CACHE_STATUS, status.value());
    resp
}

/// The stored headers with this request's `Age` and `Cache-Status`: a clone of the map this
/// thread keeps for a much-answered entry (see `heads`), else built.
fn entry_headers(entry: &Arc<Entry>, age: Duration, status: CacheStatus) -> HeaderMap {
    with_age_and_status(super::heads::of(entry), age, status)
}

fn with_age_and_status(mut headers: HeaderMap, age: Duration, status: CacheStatus) -> HeaderMap {
    headers.insert(header::AGE, age_value(age));
    headers.insert(CACHE_STATUS, status.value());
    headers
}

fn unsatisfiable(headers: &mut HeaderMap, len: u64) {
    headers.insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes */{len}"))
            .unwrap_or(HeaderValue::from_static("bytes */0")),
    );
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
}

fn build(code: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = code;
    *resp.headers_mut() = headers;
    resp
}

/// A whole answer's stored fields as HTTP/1.1 header lines (`name: value\r\n` each), for a
/// writer of HTTP/1.1 (`direct`): the response's header map then holds only what was added
/// after (`Alt-Svc`), and the writer writes these, then `age` and `cache_status`. Without
/// `Content-Length` (the writer states `length`, or the body's), `Age` and `Cache-Status`.
/// Handed back beside the response, not in its extensions (which would cost a hit two
/// allocations and a hash map).
#[derive(Debug)]
pub(crate) struct Lines {
    pub(crate) lines: bytes::Bytes,
    /// The lines hold a `Date`.
    pub(crate) dated: bool,
    pub(crate) length: u64,
    pub(crate) age: HeaderValue,
    pub(crate) cache_status: HeaderValue,
}

/// Answers a request from a stored entry: a 304 for a satisfied conditional, a 206/416 for a
/// range, otherwise the whole response (headers only for HEAD).
pub(crate) fn from_entry(
    entry: &Arc<Entry>,
    method: &Method,
    req: &HeaderMap,
    status: CacheStatus,
    age: Duration,
) -> Response<Body> {
    from_entry_as(entry, method, req, status, age, None)
}

/// As [`from_entry`]; with `lines`, a whole answer from memory of an entry this thread keeps
/// the fields of (see `heads`) has them put there as [`Lines`], and no header map built. The
/// request's plan is made once, whichever way the answer goes.
pub(crate) fn from_entry_as(
    entry: &Arc<Entry>,
    method: &Method,
    req: &HeaderMap,
    status: CacheStatus,
    age: Duration,
    lines: Option<&mut Option<Lines>>,
) -> Response<Body> {
    let len = entry.body_len();
    let plan = plan(entry, method, req, Some(len));
    if let Plan::NotModified = plan {
        return not_modified_response(entry, age, status);
    }
    if let (Some(out), None, Plan::Whole) = (lines, &entry.on_disk, &plan) {
        if let Some((kept, dated)) = super::heads::lines(entry) {
            let body = if *method == Method::HEAD {
                Body::empty()
            } else {
                Body::full(entry.body.clone())
            };
            *out = Some(Lines {
                lines: kept,
                dated,
                length: len,
                age: age_value(age),
                cache_status: status.value(),
            });
            return build(entry.status, HeaderMap::new(), body);
        }
    }
    let mut headers = entry_headers(entry, age, status);
    if let Some(disk) = &entry.on_disk {
        // The body is on disk: read only the chunks the answer needs.
        let (code, from, to) = match plan {
            Plan::Unsatisfiable(len) => {
                unsatisfiable(&mut headers, len);
                (StatusCode::RANGE_NOT_SATISFIABLE, 0, 0)
            }
            Plan::One(first, last) => {
                headers.insert(
                    header::CONTENT_RANGE,
                    range::content_range(first, last, len),
                );
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
                (StatusCode::PARTIAL_CONTENT, first, last + 1)
            }
            // Several ranges of a body on disk get the whole body (RFC 9110 §14.2 lets a
            // server ignore Range).
            Plan::Many(_) | Plan::Whole | Plan::NotModified | Plan::NeedLength => {
                (entry.status, 0, len)
            }
        };
        let body = if *method == Method::HEAD || from >= to {
            Body::empty()
        } else {
            // Whose read room its chunks take: the handler says (`Body::held_for`).
            Body::Disk(Box::new(disk.reader(from, to, None)))
        };
        return build(code, headers, body);
    }
    let (code, body) = match plan {
        Plan::Unsatisfiable(len) => {
            unsatisfiable(&mut headers, len);
            (StatusCode::RANGE_NOT_SATISFIABLE, bytes::Bytes::new())
        }
        Plan::One(first, last) => {
            headers.insert(
                header::CONTENT_RANGE,
                range::content_range(first, last, len),
            );
            let part = entry.body.slice(first as usize..=last as usize);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(part.len()));
            (StatusCode::PARTIAL_CONTENT, part)
        }
        Plan::Many(ranges) => {
            let (ct, multi) = range::multipart(
                &entry.body,
                &ranges,
                entry.headers.get(&header::CONTENT_TYPE).as_ref(),
            );
            headers.insert(header::CONTENT_TYPE, ct);
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(multi.len()));
            (StatusCode::PARTIAL_CONTENT, multi)
        }
        Plan::Whole | Plan::NotModified | Plan::NeedLength => (entry.status, entry.body.clone()),
    };
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::full(body)
    };
    build(code, headers, body)
}

/// Answers a request from a response still being filled, reading its body as it arrives
/// through `tail` (a reader from the first byte). A range is answered from the arriving bytes
/// when the origin declared the length; otherwise (and for several ranges) the tail is handed
/// back: the caller waits for the stored entry and answers from it.
pub(crate) fn from_fill(
    entry: &Entry,
    tail: Tail,
    method: &Method,
    req: &HeaderMap,
    status: CacheStatus,
    age: Duration,
) -> Result<Response<Body>, Tail> {
    let declared = tail.remaining();
    let plan = plan(entry, method, req, declared);
    if let Plan::NotModified = plan {
        return Ok(not_modified_response(entry, age, status));
    }
    let mut headers = with_age_and_status(entry.headers.to_map(super::heads::ROOM), age, status);
    let (code, body) = match (plan, declared) {
        (Plan::NeedLength | Plan::Many(_), _) => return Err(tail),
        (Plan::Unsatisfiable(len), _) => {
            unsatisfiable(&mut headers, len);
            (StatusCode::RANGE_NOT_SATISFIABLE, Body::empty())
        }
        (Plan::One(first, last), Some(len)) => {
            headers.insert(
                header::CONTENT_RANGE,
                range::content_range(first, last, len),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
            (
                StatusCode::PARTIAL_CONTENT,
                Body::fill(tail.range(first, last)),
            )
        }
        _ => (entry.status, Body::fill(tail)),
    };
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        body
    };
    Ok(build(code, headers, body))
}

/// The origin's `Surrogate-Control` as an entry keeps it: every field line, joined.
pub(crate) fn surrogate_control(headers: &HeaderMap) -> Option<Box<HeaderValue>> {
    joined(headers, &super::headers::SURROGATE_CONTROL).map(Box::new)
}

/// Gives a peer what the origin told caches of `entry` and this cache consumed
/// (`Surrogate-Control`, and the tags as `Surrogate-Key`), so that it stores the copy by the
/// same rules and a tag purge finds it there too; and when the copy left the origin, to the
/// millisecond (`Meridian-Fetched`), so that it can tell a copy from before a purge it applied.
/// Clients never get these fields.
pub(crate) fn cache_only_for_peer(headers: &mut HeaderMap, entry: &Entry) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let fetched = now.saturating_sub(entry.age(tokio::time::Instant::now()));
    headers.insert(
        super::headers::FETCHED,
        HeaderValue::from(fetched.as_millis() as u64),
    );
    if let Some(v) = &entry.surrogate_control {
        headers.insert(super::headers::SURROGATE_CONTROL, (**v).clone());
    }
    if !entry.tags.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&entry.tags.join(" ")) {
            headers.insert(super::headers::SURROGATE_KEY, v);
        }
    }
}

/// Every value of a field as one list value.
fn joined(headers: &HeaderMap, name: &http::HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.clone();
    values.try_fold(first, |acc, v| {
        let mut b = acc.as_bytes().to_vec();
        b.extend_from_slice(b", ");
        b.extend_from_slice(v.as_bytes());
        HeaderValue::from_bytes(&b).ok()
    })
}

/// Puts the `Cache-Status` of the caches upstream (a peer edge, or an origin that is itself a
/// cache) before this cache's entry: RFC 9211 §2 lists the cache nearest the origin first and
/// asks caches to keep what is there.
pub(crate) fn after_upstream(headers: &mut HeaderMap, upstream: &HeaderValue) {
    let Some(ours) = headers.get(CACHE_STATUS) else {
        return;
    };
    let mut v = upstream.as_bytes().to_vec();
    v.extend_from_slice(b", ");
    v.extend_from_slice(ours.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&v) {
        headers.insert(CACHE_STATUS, v);
    }
}

/// Passes an origin response through to the client: hop-by-hop and cache-only fields removed
/// (kept `for_peer`: a peer's hop judges them as this cache did), `Via` and `Cache-Status`
/// added (after any upstream cache's); the body streams (dropped for HEAD). An answer whose
/// fields came as lines, already stripped (`PassHead`), gets the two as lines.
pub(crate) fn from_origin(
    mut resp: Response<Body>,
    method: &Method,
    via: &HeaderValue,
    status: CacheStatus,
    for_peer: bool,
) -> Response<Body> {
    // (Never for HEAD, whose answer has no body to carry them: `h1::exchange`.)
    if let Some(pass) = resp.body_mut().pass_head() {
        debug_assert!(!for_peer, "a peer's hop keeps the cache-only fields");
        push_line(&mut pass.lines, b"via", via.as_bytes());
        push_line(&mut pass.lines, b"cache-status", status.value().as_bytes());
        return resp;
    }
    let h = resp.headers_mut();
    strip_hop_by_hop(h);
    if !for_peer {
        strip_cache_only(h);
    }
    h.append(header::VIA, via.clone());
    let upstream = joined(h, &CACHE_STATUS);
    h.insert(CACHE_STATUS, status.value());
    if let Some(u) = upstream {
        after_upstream(h, &u);
    }
    if *method == Method::HEAD {
        *resp.body_mut() = Body::empty();
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_spelled_in_decimal_on_both_sides_of_the_table() {
        for n in [
            0u64,
            1,
            9,
            10,
            11,
            99,
            100,
            999,
            1000,
            9999,
            10_000,
            54_321,
            99_999,
            100_000,
            100_001,
            u64::from(u32::MAX) + 7,
        ] {
            assert_eq!(
                age_value(Duration::from_secs(n)),
                n.to_string().as_str(),
                "{n}"
            );
        }
        assert_eq!(age_value(Duration::from_millis(1999)), "1");
    }

    #[test]
    fn a_cache_status_longer_than_the_stack_line_is_whole() {
        const LONG: &str = "a-detail-long-enough-to-outgrow-the-line-built-on-the-stack-\
            a-detail-long-enough-to-outgrow-the-line-built-on-the-stack-\
            a-detail-long-enough-to-outgrow-the-line-built-on-the-stack";
        let s = CacheStatus {
            fwd: Some(Fwd::Miss),
            fwd_status: Some(503),
            ttl: Some(-12),
            ..CacheStatus::default()
        }
        .detail(LONG);
        assert_eq!(
            s.value(),
            format!("meridian; fwd=miss; fwd-status=503; ttl=-12; detail={LONG}").as_str()
        );
    }

    #[test]
    fn kept_cache_status_values_are_the_built_ones() {
        // Statuses that differ in one field each, many sharing slots, each asked three times
        // in a row and then all again interleaved: every answer is what building gives.
        let mut all = Vec::new();
        for ttl in -3..300 {
            all.push(CacheStatus::hit(ttl));
        }
        for code in [200, 304, 404, 503] {
            for fwd in [Fwd::Miss, Fwd::UriMiss, Fwd::Stale, Fwd::Request] {
                let s = CacheStatus {
                    fwd: Some(fwd),
                    fwd_status: Some(code),
                    ..CacheStatus::default()
                };
                all.push(s);
                all.push(CacheStatus { stored: true, ..s });
                all.push(CacheStatus {
                    collapsed: true,
                    ..s
                });
                all.push(s.detail("private"));
                all.push(s.detail("no-store"));
                all.push(CacheStatus { ttl: Some(60), ..s });
            }
        }
        for s in &all {
            for _ in 0..3 {
                assert_eq!(s.value(), s.build(), "{s:?}");
            }
        }
        for s in all.iter().chain(all.iter().rev()) {
            assert_eq!(s.value(), s.build(), "{s:?}");
        }
    }

    #[test]
    fn cache_status_values() {
        assert_eq!(CacheStatus::hit(42).value(), "meridian; hit; ttl=42");
        let s = CacheStatus {
            fwd: Some(Fwd::Miss),
            fwd_status: Some(200),
            stored: true,
            ttl: Some(60),
            ..CacheStatus::default()
        };
        assert_eq!(
            s.value(),
            "meridian; fwd=miss; fwd-status=200; stored; ttl=60"
        );
        assert_eq!(s.label(), Label::Miss);
        assert_eq!(CacheStatus::forward(Fwd::Method).label(), Label::Pass);
    }

    #[test]
    fn conditionals() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, "\"v1\"".parse().unwrap());
        let mut req = HeaderMap::new();
        req.insert(header::IF_NONE_MATCH, "\"v0\", W/\"v1\"".parse().unwrap());
        let stored = Fields::new(&stored);
        assert!(not_modified(&req, &stored));
        req.insert(header::IF_NONE_MATCH, "\"v2\"".parse().unwrap());
        assert!(!not_modified(&req, &stored));
    }
}
