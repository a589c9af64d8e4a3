//! HTTP/1.1 requests read and answered by the edge itself, below hyper: `GET` and `HEAD`, and
//! requests with a short body.
//!
//! Every HTTP/1.x connection starts here. A request head is parsed with `httparse` (as hyper
//! does), handed to the same handler as hyper's requests, and the answer written back on the
//! connection: one write for a head and a small body, a gathered write for a large one. That is
//! the whole of a cache hit's work on the connection; through hyper's dispatcher the same hit
//! cost several thousand instructions more (its parse into a request, its encoding of the head,
//! its buffers and state machine).
//!
//! Only what is simple to get right is done here: a request of HTTP/1.0 or 1.1 whose method is
//! `GET`, `HEAD`, `POST`, `PUT`, `PATCH`, `DELETE` or `OPTIONS` (not `OPTIONS *`), with no
//! `Transfer-Encoding`, no `Expect` and no `Upgrade`, and no body or one of a single
//! `Content-Length` field of digits that arrives whole with its head within `max_header_size`
//! bytes (the body is then read with the head, under `header_read_timeout`, and handed on
//! whole, as nginx buffers a short body before it sends it on). At the first request that is
//! anything else (another method, a longer or chunked body, a length that is not one field of
//! digits, a head `httparse` refuses or one past the size limit, HTTP/2's preface) the
//! connection goes to hyper for the rest of its life, with the bytes read so far replayed to it
//! (`server::Tracked`), so streamed bodies, framing errors (400, 431), `100-continue`,
//! upgrades and HTTP/2 keep hyper's handling and the framing guard's (`framing`). The fuzz
//! target `client_head` checks that a request taken here ends where the guard ends it.
//!
//! What hyper's HTTP/1.1 server does and this must too, so that a client cannot tell which one
//! answered:
//! - persistence (RFC 9112 §9.3): HTTP/1.1 keeps the connection unless the request or response
//!   says `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`, which the response
//!   then carries; a closing answer says `Connection: close`;
//! - pipelined requests are answered in order, each after the one before;
//! - the response's framing: none for `HEAD`, 1xx, 204 and 304 (the head keeps its
//!   `Content-Length`); else the body's known length, else chunked (to HTTP/1.0:
//!   to the connection's end). `Transfer-Encoding` of the handler's is never passed on;
//! - `Date` when the answer has none;
//! - a client that closes while its answer is awaited (a miss, a forward) ends the request:
//!   the connection is read for that while the answer is awaited (pipelined heads wait in the
//!   buffer), as hyper does;
//! - a body that fails half-way ends the connection without its last chunk, so the client sees
//!   a broken answer, never a complete short one.
//!
//! Timeouts stay with the connection's watcher in `server`: this keeps `head_since` (when the
//! head under way began), the open-request count and `resting` (waiting for a head with none of
//! it read) that it reads. Told to close while resting, the connection is dropped at once;
//! otherwise what is under way is answered, with `Connection: close`.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::{Body, RequestBody};
use super::handler::{answer_later, answer_now, EdgeState, Peer};
use super::headers::push_line;
use super::response::Lines;
use super::server::Activity;
use crate::reuse::Reused;

/// Most header fields in a request head (hyper's limit; past it hyper answers).
const MAX_FIELDS: usize = 100;
/// Fields a request's map has room for besides the client's.
const FORWARD_ROOM: usize = 4;
/// What a read asks the socket for at least.
const READ: usize = 4 * 1024;
/// A body chunk up to this size is copied behind the head (one write); a larger one is written
/// from where it is, gathered with what is pending.
const COPY: usize = 8 * 1024;
/// What is pending is written once it reaches this.
const PENDING: usize = 64 * 1024;
/// Most of the write buffer a connection keeps between answers.
const KEEP_OUT: usize = 16 * 1024;

/// How the loop ended.
pub(super) enum Ended {
    /// The connection is done (closed by either side, or told to close).
    Closed,
    /// A request this module does not answer: hyper takes the connection, the buffer first.
    HandOff,
}

/// One request head, parsed.
struct Head {
    /// Made in its block (see `handler::ClientRequest`).
    req: Reused<Request<RequestBody>>,
    /// The client asked to close after this answer (or, on HTTP/1.0, did not ask to keep).
    close: bool,
}

enum Parsed {
    /// Incomplete: at least this many bytes are needed (0 while the head is incomplete).
    Partial(usize),
    Done(Head),
    /// Not for this module (see the module documentation); nothing was taken from the buffer.
    Other,
    /// A head `httparse` took whose target or a field value `http` refuses: answered 400.
    Bad,
}

/// Serves requests on `io` until the connection ends or a request is not one of ours.
pub(super) async fn serve<S>(
    io: &mut S,
    buf: &mut BytesMut,
    state: &Arc<EdgeState>,
    peer: Peer,
    activity: &Activity,
    max_head: usize,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut names: Vec<(HeaderName, usize, usize)> = Vec::new();
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    loop {
        // The next request: from what is buffered, else read until it is whole (its head is
        // parsed again only once a body it waits for can be whole).
        let mut wanted = 0;
        let head = loop {
            if !buf.is_empty() {
                if buf.len() >= wanted {
                    match parse(buf, &mut names, max_head) {
                        Parsed::Done(head) => break head,
                        Parsed::Other => return Ended::HandOff,
                        Parsed::Bad => {
                            let _ = io.write_all(BAD_REQUEST).await;
                            let _ = io.shutdown().await;
                            return Ended::Closed;
                        }
                        Parsed::Partial(_) if buf.len() >= max_head => return Ended::HandOff,
                        Parsed::Partial(n) => wanted = n,
                    }
                }
                activity.head_begun();
            } else if activity.closing.load(Ordering::Relaxed) {
                return Ended::Closed;
            }
            buf.reserve(READ);
            activity.resting.store(buf.is_empty(), Ordering::Relaxed);
            let read = io.read_buf(buf).await;
            activity.resting.store(false, Ordering::Relaxed);
            match read {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(_) => {}
            }
        };
        activity.head_done();
        let Head { req, close } = head;
        let head_only = req.method() == Method::HEAD;
        let v10 = req.version() == Version::HTTP_10;
        let mut lines = None;
        let resp = match answer_now(state, req, peer, None, None, Some(&mut lines)) {
            Ok(resp) => resp,
            Err(later) => {
                activity.in_flight.fetch_add(1, Ordering::Relaxed);
                // Pinned where it is made: `tokio::pin!` on a named future moves it into a
                // second slot of the connection's future, and both stay there (rustc keeps a
                // local's room until its scope ends), with a copy of the whole future a
                // request.
                let mut answer = std::pin::pin!(answer_later(state, later));
                // The connection is read meanwhile, for a client that goes away (its request
                // is then dropped, and its origin request with it).
                let resp = loop {
                    tokio::select! {
                        r = &mut answer => break r,
                        r = io.read_buf(buf), if buf.len() < max_head => match r {
                            Ok(0) | Err(_) => {
                                activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                                return Ended::Closed;
                            }
                            Ok(_) => buf.reserve(READ.min(max_head)),
                        },
                    }
                };
                activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                match resp {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        };
        let close = close || activity.closing.load(Ordering::Relaxed);
        match respond(io, &mut out, resp, lines, head_only, v10, close).await {
            Ok(false) => {
                // A body of small chunks may have grown it to `PENDING` and more: an idle
                // connection keeps no more than a head's worth.
                if out.capacity() > KEEP_OUT {
                    out = Vec::with_capacity(1024);
                }
            }
            Ok(true) => {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
            Err(e) => {
                tracing::debug!(client = %peer.addr, error = %e, "response not sent");
                return Ended::Closed;
            }
        }
    }
}

const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// Parses the request at the front of `buf`, taking its head and body from the buffer if it is
/// one of ours: its body, if any, of `Content-Length` bytes and whole within `max` bytes with the
/// head (a longer one is hyper's, which streams it).
fn parse(buf: &mut BytesMut, names: &mut Vec<(HeaderName, usize, usize)>, max: usize) -> Parsed {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut fields,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial(0),
        Err(_) => return Parsed::Other,
    };
    // `CONNECT` (an authority as its target) and extension methods are hyper's.
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("PATCH") => Method::PATCH,
        Some("DELETE") => Method::DELETE,
        Some("OPTIONS") => Method::OPTIONS,
        _ => return Parsed::Other,
    };
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Parsed::Other,
    };
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let Some(path) = req.path else {
        return Parsed::Other;
    };
    // `OPTIONS *` (asterisk-form) is hyper's too.
    if path == "*" {
        return Parsed::Other;
    }
    let path = (at(path.as_bytes()), path.len());
    let (mut close, mut keep) = (false, false);
    let mut length = None;
    names.clear();
    for field in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(field.name.as_bytes()) else {
            return Parsed::Other;
        };
        match name {
            // One field of digits alone. Anything else (a second field, a list, a sign) is
            // hyper's, under the framing guard, which answers the ambiguous ones 400.
            header::CONTENT_LENGTH => match (length, crate::h1::parse_decimal(field.value)) {
                (None, Some(n)) => length = Some(n),
                _ => return Parsed::Other,
            },
            header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE => return Parsed::Other,
            header::CONNECTION => {
                for token in field.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::Other;
                    }
                }
            }
            _ => {}
        }
        names.push((name, at(field.value), field.value.len()));
    }
    let close = close || (version == Version::HTTP_10 && !keep);
    let whole = match length {
        None | Some(0) => len,
        Some(n) => match usize::try_from(n).ok().and_then(|n| n.checked_add(len)) {
            Some(whole) if whole <= max => whole,
            _ => return Parsed::Other,
        },
    };
    if buf.len() < whole {
        return Parsed::Partial(whole);
    }
    let head = buf.split_to(len).freeze();
    let body = match whole - len {
        0 => RequestBody::Empty,
        n => RequestBody::Whole(buf.split_to(n).freeze()),
    };
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1)) else {
        return Parsed::Bad;
    };
    // Room for what a forward adds (`Via`, `X-Forwarded-For`, `Forwarded`): a full map grows
    // (allocates and rehashes every field) at its next insert.
    let mut headers = super::headers::request_map(names.len() + FORWARD_ROOM);
    for (name, from, len) in names.drain(..) {
        match HeaderValue::from_maybe_shared(head.slice(from..from + len)) {
            Ok(value) => {
                headers.append(name, value);
            }
            Err(_) => return Parsed::Bad,
        }
    }
    let mut req = Reused::new(|| Request::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Parsed::Done(Head { req, close })
}

/// What [`parse`] makes of the front of some bytes (for the fuzz target, `fuzz::client_head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Partial,
    /// One of ours: the length of its head and body, and whether it asks to close after its
    /// answer.
    Ours {
        len: usize,
        close: bool,
    },
    Other,
    Bad,
}

/// [`parse`]'s verdict with the default `edge.max_header_size`.
pub(crate) fn verdict(data: &[u8]) -> Verdict {
    let mut buf = BytesMut::from(data);
    match parse(&mut buf, &mut Vec::new(), 16 << 10) {
        Parsed::Partial(_) => Verdict::Partial,
        Parsed::Done(head) => Verdict::Ours {
            len: data.len() - buf.len(),
            close: head.close,
        },
        Parsed::Other => {
            assert_eq!(
                &buf[..],
                data,
                "a head left to hyper was taken from the buffer"
            );
            Verdict::Other
        }
        Parsed::Bad => Verdict::Bad,
    }
}

/// How a response body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Writes `resp` (the head, then the body as it comes). Says whether the connection must close
/// after it.
async fn respond<S>(
    io: &mut S,
    out: &mut Vec<u8>,
    resp: Response<Body>,
    lines: Option<Lines>,
    head_only: bool,
    v10: bool,
    mut close: bool,
) -> io::Result<bool>
where
    S: AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_length = status.is_informational() || status.as_u16() == 204;
    let bodiless = head_only || no_length || status.as_u16() == 304;
    let hint = body.size_hint().exact();
    out.clear();
    out.extend_from_slice(if v10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut stated, mut wrote_date, mut says_keep, mut says_close) = (None, false, false, false);
    // A hit's stored fields, already lines (see `response::Lines`).
    if let Some(kept) = lines {
        out.extend_from_slice(&kept.lines);
        push_line(out, b"age", kept.age.as_bytes());
        push_line(out, b"cache-status", kept.cache_status.as_bytes());
        wrote_date = kept.dated;
        if bodiless && !no_length {
            length(out, kept.length);
            stated = Some(kept.length);
        }
    }
    // A pass-through's fields, already lines (see `PassHead`): none of them is a framing one.
    if let Some(pass) = body.pass_head() {
        out.extend_from_slice(&pass.lines);
        wrote_date |= pass.dated;
    }
    for (name, value) in parts.headers.iter() {
        match *name {
            header::CONTENT_LENGTH => {
                // Written once, from the body's length where it knows it.
                if no_length || stated.is_some() || (!bodiless && hint.is_some()) {
                    continue;
                }
                let Some(n) = std::str::from_utf8(value.as_bytes())
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                else {
                    continue;
                };
                stated = Some(n);
            }
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION => {
                for token in value.as_bytes().split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    says_close |= token.eq_ignore_ascii_case(b"close");
                    says_keep |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        push_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    close |= says_close;
    let framing = if bodiless {
        if head_only && stated.is_none() && !no_length {
            if let Some(n) = hint.filter(|&n| n > 0) {
                length(out, n);
            }
        }
        Framing::None
    } else if let Some(n) = hint {
        length(out, n);
        Framing::Length(n)
    } else if let Some(n) = stated {
        Framing::Length(n)
    } else if v10 {
        close = true;
        Framing::UntilClose
    } else {
        push_line(out, b"transfer-encoding", b"chunked");
        Framing::Chunked
    };
    if v10 {
        if !close && !says_keep {
            push_line(out, b"connection", b"keep-alive");
        }
    } else if close && !says_close {
        push_line(out, b"connection", b"close");
    }
    if !wrote_date {
        DATE.with(|d| push_line(out, b"date", &d.now()));
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        drop(body);
        io.write_all(out).await?;
        io.flush().await?;
        return Ok(close);
    }
    let mut sent = 0u64;
    loop {
        // A frame that is there now joins what is pending; one to wait for, after it is written.
        let next = match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
            .await
        {
            Poll::Ready(next) => next,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    io.flush().await?;
                    out.clear();
                }
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match next {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: not sent (hyper sends them only to a client that asked for them
                // with `TE: trailers`, which a cache does not forward).
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if let Framing::Length(n) = framing {
            if sent > n {
                return Err(io::Error::other("the body is longer than its length"));
            }
        }
        if framing == Framing::Chunked {
            let mut hex = [0u8; 16];
            out.extend_from_slice(hex_len(data.len(), &mut hex));
            out.extend_from_slice(b"\r\n");
        }
        if data.len() <= COPY {
            out.extend_from_slice(&data);
        } else {
            write_both(io, out, data).await?;
            out.clear();
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= PENDING {
            io.write_all(out).await?;
            out.clear();
        }
    }
    if let Framing::Length(n) = framing {
        if sent != n {
            return Err(io::Error::other("the body ended short of its length"));
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    io.flush().await?;
    Ok(close)
}

fn length(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    push_line(
        out,
        b"content-length",
        super::headers::decimal(n, &mut digits),
    );
}

fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Writes `first` and then `second`, gathered.
async fn write_both<S>(io: &mut S, first: &[u8], mut second: Bytes) -> io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut first = first;
    while !first.is_empty() || !second.is_empty() {
        let slices = [io::IoSlice::new(first), io::IoSlice::new(&second)];
        let n =
            std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, &slices)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(first.len());
        first = &first[from_first..];
        second.advance(n - from_first);
    }
    Ok(())
}

/// `Date` as hyper writes it: the current second, formatted once per second per thread.
struct CachedDate {
    second: std::cell::Cell<u64>,
    value: std::cell::Cell<[u8; 29]>,
}

impl CachedDate {
    fn now(&self) -> [u8; 29] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second.get() {
            let mut value = [0u8; 29];
            let text = httpdate::fmt_http_date(now);
            let n = text.len().min(29);
            value[..n].copy_from_slice(&text.as_bytes()[..n]);
            self.value.set(value);
            self.second.set(second);
        }
        self.value.get()
    }
}

thread_local! {
    static DATE: CachedDate = const {
        CachedDate {
            second: std::cell::Cell::new(u64::MAX),
            value: std::cell::Cell::new([b' '; 29]),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let p = parse(&mut buf, &mut Vec::new(), 64);
        (p, buf)
    }

    #[test]
    fn a_get_is_ours_and_leaves_the_next_request_in_the_buffer() {
        let (p, rest) = parsed(b"GET /a?b HTTP/1.1\r\nHost: x.test\r\nX-A: 1\r\n\r\nGET /n");
        let Parsed::Done(head) = p else {
            panic!("not parsed")
        };
        assert_eq!(head.req.uri(), "/a?b");
        assert_eq!(head.req.headers()["host"], "x.test");
        assert_eq!(head.req.headers()["x-a"], "1");
        assert!(!head.close);
        assert_eq!(&rest[..], b"GET /n");
    }

    #[test]
    fn persistence_follows_the_version_and_connection() {
        for (raw, close) in [
            (&b"GET / HTTP/1.0\r\n\r\n"[..], true),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", false),
            (b"HEAD / HTTP/1.1\r\nConnection: foo, close\r\n\r\n", true),
            (b"GET / HTTP/1.1\r\n\r\n", false),
        ] {
            let (Parsed::Done(head), _) = parsed(raw) else {
                panic!("not parsed: {raw:?}")
            };
            assert_eq!(head.close, close, "{raw:?}");
        }
    }

    #[test]
    fn a_body_of_content_length_bytes_is_taken_with_its_head() {
        let (p, rest) = parsed(b"POST /f HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /n");
        let Parsed::Done(head) = p else {
            panic!("not parsed")
        };
        assert_eq!(head.req.method(), Method::POST);
        let RequestBody::Whole(body) = head.req.body() else {
            panic!("no body")
        };
        assert_eq!(&body[..], b"abc");
        assert_eq!(&rest[..], b"GET /n");
        // A length of 0, or none, is no body.
        for raw in [
            &b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"[..],
            b"DELETE / HTTP/1.1\r\n\r\n",
        ] {
            let (Parsed::Done(head), rest) = parsed(raw) else {
                panic!("not parsed: {raw:?}")
            };
            assert!(matches!(head.req.body(), RequestBody::Empty), "{raw:?}");
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn a_body_not_yet_whole_takes_nothing() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabc";
        let (p, rest) = parsed(raw);
        // One byte short: the whole request's length is known.
        assert!(matches!(p, Parsed::Partial(n) if n == raw.len() + 1));
        assert_eq!(&rest[..], raw);
    }

    #[test]
    fn what_has_a_body_or_asks_for_more_goes_to_hyper_untouched() {
        for raw in [
            // Past the limit (64 bytes here) with its head: hyper streams it.
            &b"POST / HTTP/1.1\r\nContent-Length: 30\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            // Lengths that are not one field of digits.
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: 0x1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"CONNECT x.test:443 HTTP/1.1\r\n\r\n",
            b"PURGE / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
        ] {
            let (p, rest) = parsed(raw);
            assert!(matches!(p, Parsed::Other), "{raw:?}");
            assert_eq!(&rest[..], raw, "the buffer was changed");
        }
    }

    #[test]
    fn a_target_http_refuses_is_bad() {
        let (p, _) = parsed(b"GET http://[::1 HTTP/1.1\r\n\r\n");
        assert!(matches!(p, Parsed::Bad | Parsed::Other));
    }

    #[test]
    fn chunk_sizes_are_lower_hex() {
        let mut b = [0u8; 16];
        assert_eq!(hex_len(0, &mut b), b"0");
        assert_eq!(hex_len(16384, &mut b), b"4000");
        assert_eq!(hex_len(0xabc, &mut b), b"abc");
    }
}
