//! HTTP/1.1 with a plain-HTTP origin on a connection of the edge's own: the request is written
//! and the response read by the task that asks, with no task or channel in between (`pool`
//! keeps the connections).
//!
//! hyper's client connection is a task of its own: a request goes to it through a channel, the
//! response head comes back through another and each body chunk through a third, every step a
//! wake of one task by another (about a third of the instructions of a forwarded 1 KiB answer,
//! callgrind). Here [`exchange`] writes the request and reads the response head on the asking
//! task, and the response's [`ResponseBody`] reads the connection as it is polled; once the body
//! has ended the connection goes back to its [`Idle`] list for the next request.
//!
//! The response's framing follows RFC 9112 §6.3 strictly, because a mistake would hand one
//! request the bytes of another's response on a connection used again: no body for `HEAD`,
//! 1xx, 204 and 304; else `Transfer-Encoding` (chunked last: chunked; otherwise to the
//! connection's end), else `Content-Length` (one value, or a list of equal ones), else to the
//! connection's end. A connection is used again only after an HTTP/1.1 response without
//! `Connection: close`, delimited by its length or its chunks, with nothing after it: a response
//! with both `Transfer-Encoding` and `Content-Length`, any framing error, or bytes the origin
//! sends unasked end it. 1xx answers are skipped and 101 is an error (the edge never asks to
//! switch protocols). A head is at most [`MAX_HEAD`] bytes of at most [`MAX_HEADERS`] fields
//! (hyper's limits); a chunk's trailer fields are read and dropped, as hyper's HTTP/1.1 server
//! drops them for clients that did not ask for them.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http::body::{Body, BodyError};
use crate::http::headers::{decimal, Forwarding, PassHead};

/// Largest response head, 1xx heads before it included.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
pub(crate) const MAX_HEADERS: usize = 100;
/// Idle connections a list keeps.
pub(crate) const MAX_KEPT: usize = 1024;
/// What a read for a response head asks the socket for (a small answer's body comes with it).
const HEAD_READ: usize = 8 * 1024;
/// Most a read for a response body asks for.
const BODY_READ: usize = 64 * 1024;
/// Least room left in a read block worth reading into.
const MIN_ROOM: usize = 4 * 1024;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Most bytes of trailer fields after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;
/// A request body up to this size is written in the same write as its head.
const WRITE_TOGETHER: usize = 64 * 1024;

/// Why an exchange or a response body failed, in the words of the error chain.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("the origin closed the connection before the {0} ended")]
    Closed(&'static str),
    #[error("invalid response: {0}")]
    Invalid(String),
    /// No response head within the first-byte timeout, counted from the request's end.
    #[error("no answer within the first-byte timeout")]
    Late,
}

fn invalid(why: impl Into<String>) -> H1Error {
    H1Error::Invalid(why.into())
}

/// How one exchange failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing of the request reached an origin that would act on it (a connection used before
    /// had closed): it may be sent again on another connection.
    Unsent(H1Error),
    /// The exchange failed after the request (or part of it) was sent.
    Failed(H1Error),
    /// The client's request body failed: the client's fault.
    Upload(BodyError),
}

/// One connection to an origin, boxed: it moves from the pool into an exchange, into the
/// answer's body and back to the pool, and as the ~140 bytes of its state each was a copy (and
/// the body, its answer and every result holding it as large).
pub(crate) type Conn = Box<ConnState>;

/// What a [`Conn`] holds: the connection, with what has been read from it and not yet used.
#[derive(Debug)]
pub(crate) struct ConnState {
    io: TcpStream,
    buf: BytesMut,
    /// Longest an origin may take no bytes of a request (the site's `origin_read_timeout`):
    /// one that stops reading an upload fails it then, instead of holding it for ever.
    stall: Duration,
    /// Kept from one request to the next, so that neither allocates: the request head being
    /// written, and where a response head's fields lie while it is read.
    out: Vec<u8>,
    names: Vec<(HeaderName, usize, usize)>,
    /// The first-byte timer, made for the connection's first request and moved on for each
    /// next one: a timer moved later is one atomic update, where a new one takes the time
    /// driver's lock to be registered and again to be dropped (`Conn`s stay on the thread, and
    /// so the runtime, that made them: see `pool`).
    first_byte: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ConnState {
    pub(crate) fn new(io: TcpStream, stall: Duration) -> Conn {
        Box::new(ConnState {
            io,
            buf: BytesMut::new(),
            stall,
            out: Vec::new(),
            names: Vec::new(),
            first_byte: None,
        })
    }

    /// Starts the first-byte timer: the response head must have come within `limit`.
    fn start_first_byte(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        match &mut self.first_byte {
            Some(timer) => timer.as_mut().reset(deadline),
            None => self.first_byte = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Writes `bytes` whole, failing when the origin takes none of them for `stall`. What the
    /// socket takes at once (most requests) costs no timer.
    async fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.io.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let stall = self.stall;
        let mut left = bytes;
        loop {
            match tokio::time::timeout(stall, self.io.write(left)).await {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) if n == left.len() => return Ok(()),
                Ok(Ok(n)) => left = &left[n..],
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the origin took no bytes of the request for {stall:?}"),
                    ))
                }
            }
        }
    }

    /// Whether the connection may take a request: the origin has neither closed it nor sent
    /// anything unasked while it was idle. No system call unless the socket became readable.
    pub(crate) fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads more of the response into `buf`: into the room its block has left while that is
    /// at least [`MIN_ROOM`] (or `want`), else into a new block of `want`. Body chunks are
    /// slices of these blocks, so an origin that sends a byte at a time pins one block for
    /// many of them, not a block each.
    fn poll_more(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < want.min(MIN_ROOM) {
            self.buf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Stops the first-byte timer from waking the task that read the head: it holds that
    /// task's waker until it fires (up to `first_byte_timeout` later, while the connection
    /// rests or serves another task), and the waker keeps the task's memory from being freed
    /// once it ends. A no-op waker takes its place. Polled outside tokio's budget: a task that
    /// has used its budget up gets `Pending` from a timer without the waker being replaced.
    fn release_first_byte(&mut self) {
        if let Some(timer) = self.first_byte.as_mut() {
            let _ = std::pin::pin!(tokio::task::unconstrained(timer.as_mut()))
                .poll(&mut Context::from_waker(std::task::Waker::noop()));
        }
    }

    /// Reads more of a response head; [`H1Error::Late`] once the first-byte timer (started by
    /// [`Conn::start_first_byte`]) has run out.
    async fn more_head(&mut self) -> Result<usize, H1Error> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(read) = self.poll_more(cx, HEAD_READ) {
                return Poll::Ready(read.map_err(H1Error::from));
            }
            match self
                .first_byte
                .as_mut()
                .map(|timer| timer.as_mut().poll(cx))
            {
                Some(Poll::Ready(())) => Poll::Ready(Err(H1Error::Late)),
                _ => Poll::Pending,
            }
        })
        .await
    }
}

/// A connection resting between requests.
#[derive(Debug)]
pub(crate) struct Kept {
    pub(crate) conn: Conn,
    /// When it came back.
    pub(crate) since: Instant,
}

/// The idle connections of one origin on one thread, most recent last, and whether their sweep
/// has been started (by the first request sent on that thread, in its runtime).
#[derive(Debug, Default)]
pub(crate) struct Idle {
    conns: Mutex<VecDeque<Kept>>,
    pub(crate) swept: AtomicBool,
}

impl Idle {
    pub(crate) fn lock(&self) -> MutexGuard<'_, VecDeque<Kept>> {
        // Every change is a whole push or remove: a panic while held leaves a valid list.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `conn` for the next request, unless the list is full (then it closes).
    fn put_back(&self, mut conn: Conn) {
        if conn.buf.capacity() > HEAD_READ {
            // A large body's read buffer is not kept while idle.
            conn.buf = BytesMut::new();
        }
        if conn.out.capacity() > HEAD_READ {
            // Nor a large request head, or a body written with its head.
            conn.out = Vec::new();
        }
        let mut list = self.lock();
        if list.len() < MAX_KEPT {
            list.push_back(Kept {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// What an exchange takes and gives as HTTP/1.1 lines instead of header map fields.
#[derive(Clone, Copy, Default)]
pub(crate) struct Lines<'a> {
    /// The answer is only passed on, to a client of the edge's own HTTP/1.1 server; one with a
    /// body then comes with its fields as lines (a `PassHead`, and no header map) where it can.
    pub(crate) answer: bool,
    /// This hop's forwarding fields, written after the request's own.
    pub(crate) added: Option<&'a Forwarding<'a>>,
    /// The `Host` field sent in place of the request's (the site's `host_header`, or the
    /// origin's authority for a request without one).
    pub(crate) host: Option<&'a HeaderValue>,
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sending {
    /// No body and no `Content-Length` (a `GET`).
    Nothing,
    Length(u64),
    Chunked,
}

/// Sends `parts` (origin-form target) with `body` on `conn` and reads the response head; the
/// body is read from the connection as the returned response's body is polled, and the
/// connection goes back to `home` once it has ended. `reused`: the connection served requests
/// before (only then can a failure leave the request unsent). A complete body is left in
/// `body` so that the request can go again. `lines`: what goes as header lines instead of
/// header map fields, either way. The response head must begin within `first_byte` of the
/// request's end (or of the origin's answer cutting its upload short): [`H1Error::Late`].
pub(crate) async fn exchange(
    mut conn: Conn,
    parts: &Parts,
    body: &mut Body,
    reused: bool,
    home: Weak<Idle>,
    lines: Lines<'_>,
    first_byte: Duration,
) -> Result<Response<ResponseBody>, Failure> {
    let pass = lines.answer;
    let head_only = parts.method == Method::HEAD;
    // A complete body (or none) can be sent again; a stream cannot once a frame is taken.
    let whole = match body {
        Body::Full(b) => Some(b.clone()),
        _ => None,
    };
    let sending = match &whole {
        Some(Some(b)) => Sending::Length(b.len() as u64),
        Some(None) if needs_length(parts) => Sending::Length(0),
        Some(None) => Sending::Nothing,
        None => match http_body::Body::size_hint(body).exact() {
            Some(n) => Sending::Length(n),
            None => Sending::Chunked,
        },
    };
    let mut out = std::mem::take(&mut conn.out);
    out.clear();
    // A request that closes its connection leaves it unusable after the answer.
    let mut reusable = !encode_head(parts, sending, lines, &mut out);
    let written = match whole {
        Some(Some(b)) if b.len() <= WRITE_TOGETHER => {
            out.extend_from_slice(&b);
            let w = conn.write(&out).await;
            conn.out = out;
            w
        }
        Some(Some(b)) => match conn.write(&out).await {
            Ok(()) => {
                conn.out = out;
                conn.write(&b).await
            }
            Err(e) => Err(e),
        },
        Some(None) => {
            let w = conn.write(&out).await;
            conn.out = out;
            w
        }
        None => {
            match upload(&mut conn, out, body, sending).await {
                Ok(()) => Ok(()),
                Err(Upload::Body(e)) => return Err(Failure::Upload(e)),
                Err(Upload::Answered) => {
                    // The rest of the upload is not wanted: it is dropped (which ends the
                    // client's body), and the first-byte time counts from here.
                    *body = Body::empty();
                    return match read_head(&mut conn, head_only, pass, first_byte).await {
                        Ok((head, framing, _)) => Ok(respond(head, framing, conn, false, home)),
                        Err((e, _)) => Err(Failure::Failed(e)),
                    };
                }
                // The origin took no bytes for its stall limit: it had its time.
                Err(Upload::Write(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(Failure::Failed(e.into()));
                }
                Err(Upload::Write(e)) => {
                    // The origin may have answered before the whole body and closed (a 413):
                    // that answer, if it came, is the response (the upload is over, as above).
                    *body = Body::empty();
                    return match read_head(&mut conn, head_only, pass, first_byte).await {
                        Ok((head, framing, _)) => Ok(respond(head, framing, conn, false, home)),
                        Err(_) => Err(Failure::Failed(e.into())),
                    };
                }
            }
        }
    };
    if let Err(e) = written {
        // Nothing of a complete body was taken: on a connection that had closed while idle,
        // the request goes again.
        return Err(if reused {
            Failure::Unsent(e.into())
        } else {
            Failure::Failed(e.into())
        });
    }
    match read_head(&mut conn, head_only, pass, first_byte).await {
        Ok((head, framing, keep)) => {
            reusable &= keep;
            Ok(respond(head, framing, conn, reusable, home))
        }
        // The origin closed a connection used before without a byte of an answer (its idle
        // timeout crossed the request): an idempotent request with a complete body goes again
        // (RFC 9112 §9.3.1). One it is still working on (`Late`) does not.
        Err((e, false))
            if reused
                && !matches!(e, H1Error::Late)
                && body_is_whole(body)
                && parts.method.is_idempotent() =>
        {
            Err(Failure::Unsent(e))
        }
        Err((e, _)) => Err(Failure::Failed(e)),
    }
}

fn body_is_whole(body: &Body) -> bool {
    matches!(body, Body::Full(_))
}

/// Whether an empty body still says `Content-Length: 0` (methods that define a body, and a
/// request that said so).
fn needs_length(parts: &Parts) -> bool {
    matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
        || parts.headers.contains_key(header::CONTENT_LENGTH)
}

/// Whether a `Connection` value lists `close`.
fn lists_close(value: &HeaderValue) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// The request line (origin-form, whatever form the head's target has) and fields, then
/// `lines.added`'s, with the framing fields of `sending` (the request's own `Content-Length`,
/// `Transfer-Encoding` and `Expect` are not sent: the body goes at once); `lines.host` in place
/// of the request's `Host`. Returns whether a `Connection` field lists `close` (read on the
/// way: a lookup of its own cost a request ~130 instructions).
fn encode_head(parts: &Parts, sending: Sending, lines: Lines<'_>, out: &mut Vec<u8>) -> bool {
    let mut close = false;
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = lines.host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || (lines.host.is_some() && name == header::HOST)
        {
            continue;
        }
        close |= name == header::CONNECTION && lists_close(value);
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(added) = lines.added {
        added.write(out);
    }
    match sending {
        Sending::Nothing => {}
        Sending::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(decimal(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Sending::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    close
}

enum Upload {
    Body(BodyError),
    Write(io::Error),
    /// The origin answered (or closed) before the body was whole.
    Answered,
}

/// The body's next frame, unless the origin answers first (RFC 9112 §9.5: a client watches for
/// an answer while it sends a body, say a 413 for an upload the client sends slowly).
async fn next_or_answer(
    conn: &mut Conn,
    body: &mut Body,
) -> Result<Option<Result<Frame<Bytes>, BodyError>>, Upload> {
    use http_body_util::BodyExt;
    loop {
        tokio::select! {
            biased;
            ready = conn.io.readable() => {
                ready.map_err(Upload::Write)?;
                conn.buf.reserve(HEAD_READ);
                match conn.io.try_read_buf(&mut conn.buf) {
                    // Readiness that was stale: back to the body.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => return Err(Upload::Answered),
                }
            }
            frame = body.frame() => return Ok(frame),
        }
    }
}

/// Writes the head in `out` and a streamed body, chunked when its length is not known. Frames
/// that are there already are gathered into one write (up to [`WRITE_TOGETHER`]); the head
/// waits for the first of them, so a body that fails at once (one shorter than its declared
/// length) sends the origin nothing.
async fn upload(
    conn: &mut Conn,
    mut out: Vec<u8>,
    body: &mut Body,
    sending: Sending,
) -> Result<(), Upload> {
    let declared = match sending {
        Sending::Length(n) => Some(n),
        _ => None,
    };
    let mut sent = 0u64;
    // Whether `out` holds body bytes (more than the head) not yet written.
    let mut gathered = false;
    loop {
        let ready = std::future::poll_fn(|cx| {
            Poll::Ready(
                match http_body::Body::poll_frame(Pin::new(&mut *body), cx) {
                    Poll::Ready(f) => Some(f),
                    Poll::Pending => None,
                },
            )
        })
        .await;
        let frame = match ready {
            Some(f) => f,
            None => {
                if gathered {
                    conn.write(&out).await.map_err(Upload::Write)?;
                    out.clear();
                    gathered = false;
                }
                next_or_answer(conn, body).await?
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(Upload::Body(e)),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers: not sent
            },
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if declared.is_some_and(|n| sent > n) {
            return Err(Upload::Body(BodyError::Client(
                "the request body is longer than its Content-Length".into(),
            )));
        }
        if sending == Sending::Chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        out.extend_from_slice(&data);
        if sending == Sending::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        gathered = true;
        if out.len() >= WRITE_TOGETHER {
            conn.write(&out).await.map_err(Upload::Write)?;
            out.clear();
            gathered = false;
        }
    }
    if declared.is_some_and(|n| sent < n) {
        return Err(Upload::Body(BodyError::Client(
            "the request body is shorter than its Content-Length".into(),
        )));
    }
    if sending == Sending::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        conn.write(&out).await.map_err(Upload::Write)?;
    }
    Ok(())
}

/// How the rest of a response body is delimited, and where its reading stands.
#[derive(Debug)]
enum Framing {
    /// This many bytes to go.
    Length(u64),
    /// Until the origin closes the connection.
    Close,
    Chunked(Chunk),
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// This many bytes of the chunk's data to go.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer fields after the last chunk, this many bytes of them so far.
    Trailers(usize),
}

/// Reads a response head (after any 1xx ones), with its body's framing and whether the
/// connection may be used again after it; [`H1Error::Late`] if it has not come whole within
/// `first_byte`. On failure, whether any byte of a response came.
async fn read_head(
    conn: &mut Conn,
    head_only: bool,
    pass: bool,
    first_byte: Duration,
) -> Result<(Head, Framing, bool), (H1Error, bool)> {
    conn.start_first_byte(first_byte);
    let mut any = false;
    let mut interim = 0;
    loop {
        any |= !conn.buf.is_empty();
        match take_head(
            &mut conn.buf,
            &mut conn.names,
            head_only,
            pass,
            &mut interim,
        ) {
            Ok(Some(head)) => {
                conn.release_first_byte();
                return Ok(head);
            }
            Ok(None) => {}
            Err(e) => return Err((e, true)),
        }
        match conn.more_head().await {
            Ok(0) => return Err((H1Error::Closed("response head"), any)),
            Ok(_) => {}
            Err(e) => return Err((e, any)),
        }
    }
}

/// Takes the final response head off `buf` once it is whole (1xx heads before it are taken
/// off and counted in `interim`, toward [`MAX_HEAD`]); `None` while more is needed.
fn take_head(
    buf: &mut BytesMut,
    names: &mut Vec<(HeaderName, usize, usize)>,
    head_only: bool,
    pass: bool,
    interim: &mut usize,
) -> Result<Option<(Head, Framing, bool)>, H1Error> {
    let too_large = || invalid("response head larger than 64 KiB");
    while !buf.is_empty() {
        let before = buf.len();
        match parse_head(buf, names, head_only, pass)? {
            Some(Parsed::Final(..)) if *interim + before - buf.len() > MAX_HEAD => {
                return Err(too_large())
            }
            Some(Parsed::Final(head, framing, keep)) => return Ok(Some((head, framing, keep))),
            Some(Parsed::Interim) => {
                *interim += before - buf.len();
                if *interim >= MAX_HEAD {
                    return Err(too_large());
                }
            }
            // Incomplete: all of the buffer is head.
            None if *interim + before >= MAX_HEAD => return Err(too_large()),
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// A final response head; as its body, a pass-through's fields as lines, where they came so
/// (then its header map is empty).
type Head = Response<Option<PassHead>>;

enum Parsed {
    /// A 1xx head, taken off the buffer.
    Interim,
    Final(Head, Framing, bool),
}

/// Parses a response head at the start of `buf` and takes it off; `None` while incomplete.
fn parse_head(
    buf: &mut BytesMut,
    names: &mut Vec<(HeaderName, usize, usize)>,
    head_only: bool,
    pass: bool,
) -> Result<Option<Parsed>, H1Error> {
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(invalid(format!(
                "more than {MAX_HEADERS} header fields in a response head"
            )))
        }
        Err(e) => return Err(invalid(e.to_string())),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| invalid(format!("status code {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(invalid(
            "101 Switching Protocols, which the edge never asks for",
        ));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Some(Parsed::Interim));
    }
    let version = if res.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Names now (and the framing fields read on the way), values as slices of the head once it
    // is taken off the buffer.
    let mut framing = Fields::default();
    // A pass-through's answer with a body goes on as lines, without a header map (see
    // `PassHead`); HEAD, 204 and 304 answers, whose framing fields the server reads from the
    // map, take the map.
    let bodied =
        !head_only && status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED;
    if pass && bodied {
        for f in res.headers.iter() {
            framing.see(f.name.as_bytes(), f.value)?;
        }
        if let Some(lines) = crate::http::headers::pass_lines(res.headers) {
            buf.advance(len);
            let (body, delimited) = framing.decide(status, head_only, version);
            let keep = delimited && version == Version::HTTP_11 && !framing.close;
            let mut resp = Response::new(Some(lines));
            *resp.status_mut() = status;
            *resp.version_mut() = version;
            return Ok(Some(Parsed::Final(resp, body, keep)));
        }
        framing = Fields::default();
    }
    let base = buf.as_ptr() as usize;
    names.clear();
    for f in res.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| invalid(format!("field name {:?}", f.name)))?;
        framing.see(name.as_str().as_bytes(), f.value)?;
        let start = f.value.as_ptr() as usize - base;
        names.push((name, start, start + f.value.len()));
    }
    let head = buf.split_to(len).freeze();
    // Room for what the edge adds to an answer (`Via`, `Cache-Status`, `Age`, `Alt-Svc`): a
    // full map grows (allocates and rehashes every field) at its next insert.
    let mut headers = HeaderMap::with_capacity(names.len() + crate::http::heads::ROOM);
    for (name, start, end) in names.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| invalid(format!("value of {name}")))?;
        headers.append(name, value);
    }
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and a message that has both
    // goes on without the length (the server would frame the decoded body by it).
    if framing.codings.is_some() && framing.length.is_some() {
        headers.remove(header::CONTENT_LENGTH);
    }
    let (body, delimited) = framing.decide(status, head_only, version);
    let keep = delimited && version == Version::HTTP_11 && !framing.close;
    let mut resp = Response::new(None);
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(Some(Parsed::Final(resp, body, keep)))
}

/// What a response head's framing fields say.
#[derive(Default)]
struct Fields {
    /// `Content-Length`, once seen (every value must agree).
    length: Option<u64>,
    /// `Transfer-Encoding` seen, and whether its last coding (so far) is chunked.
    codings: Option<bool>,
    /// `Connection: close`.
    close: bool,
}

impl Fields {
    /// Reads one field (`name` in any case).
    fn see(&mut self, name: &[u8], value: &[u8]) -> Result<(), H1Error> {
        // The length first: most names are none of the three.
        let n = name.len();
        if n != b"content-length".len()
            && n != b"transfer-encoding".len()
            && n != b"connection".len()
        {
            return Ok(());
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // Digits alone (nearly every answer) need no list split.
            if let Some(n) = parse_decimal(value) {
                return self.length_is(n);
            }
            for item in value.split(|&b| b == b',') {
                let n = parse_decimal(item.trim_ascii()).ok_or_else(|| {
                    invalid(format!(
                        "Content-Length {:?}",
                        String::from_utf8_lossy(value)
                    ))
                })?;
                self.length_is(n)?;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.codings = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            // `keep-alive` alone (most answers that send the field) names no `close`.
            self.close |= !value.eq_ignore_ascii_case(b"keep-alive")
                && value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        Ok(())
    }

    /// One `Content-Length` value: the same as any before it.
    fn length_is(&mut self, n: u64) -> Result<(), H1Error> {
        if self.length.is_some_and(|l| l != n) {
            return Err(invalid("Content-Length fields that differ"));
        }
        self.length = Some(n);
        Ok(())
    }

    /// The body's framing (RFC 9112 §6.3), and whether it leaves the connection fit for
    /// another request.
    fn decide(&self, status: StatusCode, head_only: bool, version: Version) -> (Framing, bool) {
        if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return (Framing::Length(0), true);
        }
        match (self.codings, self.length) {
            // With a length too, or in an HTTP/1.0 answer, chunked framing is suspect: read
            // it, then close (§6.1, §6.3).
            (Some(true), length) => (
                Framing::Chunked(Chunk::Size),
                length.is_none() && version == Version::HTTP_11,
            ),
            (Some(false), _) | (None, None) => (Framing::Close, false),
            (None, Some(n)) => (Framing::Length(n), true),
        }
    }
}

/// A `Content-Length` value: 1 to 19 digits and nothing else.
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn respond(
    head: Head,
    framing: Framing,
    conn: Conn,
    reusable: bool,
    home: Weak<Idle>,
) -> Response<ResponseBody> {
    head.map(|pass| {
        let mut body = ResponseBody {
            conn: Some(conn),
            framing,
            reusable,
            home,
            pass,
        };
        if matches!(body.framing, Framing::Length(0)) {
            body.finish();
        }
        body
    })
}

/// An origin's response body, read from its connection as it is polled. Dropped before its
/// end, it closes the connection.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    /// `None` once the body has ended or failed.
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    home: Weak<Idle>,
    /// A pass-through's fields as lines (see `exchange`): they go with the body, which is
    /// boxed on its way to the server anyway, where a carrier of their own would be allocated.
    pass: Option<PassHead>,
}

impl ResponseBody {
    /// A pass-through's fields, where they came as lines.
    pub(crate) fn pass_head(&mut self) -> Option<&mut PassHead> {
        self.pass.as_mut()
    }

    /// The body has ended: the connection goes back to its list if it may serve again.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.reusable && conn.buf.is_empty() {
            if let Some(home) = self.home.upgrade() {
                home.put_back(conn);
            }
        }
    }

    fn fail(&mut self, e: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    fn ended(&mut self) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.finish();
        Poll::Ready(None)
    }
}

/// A chunk-size line without its CRLF: hex digits, then nothing or extensions after optional
/// whitespace and a `;` (RFC 9112 §7.1.1), printable throughout.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    let after_ws = rest.trim_ascii_start();
    let fits = after_ws.is_empty() || after_ws[0] == b';';
    let printable = rest.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if !(fits && printable) {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match body_step(&mut this.framing, &mut conn.buf) {
                Ok(BodyStep::Data(data)) => {
                    if matches!(this.framing, Framing::Length(0)) {
                        // The last bytes: the connection can serve the next request already.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(BodyStep::End) => return this.ended(),
                Ok(BodyStep::More(want)) => want,
                Err(e) => return this.fail(e),
            };
            match ready!(conn.poll_more(cx, want)) {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    // Its end is the body's end; the connection is done.
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::Closed("response body")),
                Ok(_) => {}
                Err(e) => return this.fail(e.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::new(),
        }
    }
}

enum BodyStep {
    Data(Bytes),
    End,
    /// Read more, asking for this much room.
    More(usize),
}

/// The next piece of a body framed by `framing` from `buf` (the connection's end is the
/// caller's to handle: the end of a [`Framing::Close`] body, an error otherwise).
fn body_step(framing: &mut Framing, buf: &mut BytesMut) -> Result<BodyStep, H1Error> {
    loop {
        return Ok(match framing {
            Framing::Length(0) => BodyStep::End,
            Framing::Length(rest) if buf.is_empty() => {
                BodyStep::More((*rest).min(BODY_READ as u64) as usize)
            }
            Framing::Length(rest) => {
                let n = (*rest).min(buf.len() as u64);
                *rest -= n;
                BodyStep::Data(buf.split_to(n as usize).freeze())
            }
            Framing::Close if buf.is_empty() => BodyStep::More(BODY_READ),
            Framing::Close => BodyStep::Data(buf.split().freeze()),
            Framing::Chunked(state) => match decode(state, buf)? {
                Step::Data(data) => BodyStep::Data(data),
                Step::End => BodyStep::End,
                Step::Again => continue,
                Step::More => BodyStep::More(BODY_READ),
            },
        });
    }
}

enum Step {
    Data(Bytes),
    End,
    /// The state moved on: decode again.
    Again,
    /// The buffer holds too little: read more.
    More,
}

/// One step of the chunked decoding of `buf`.
fn decode(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, H1Error> {
    match *state {
        Chunk::Size => {
            let Some(line) = line(buf, MAX_CHUNK_LINE, "chunk-size line")? else {
                return Ok(Step::More);
            };
            let size = parse_chunk_size(&line)
                .ok_or_else(|| invalid(format!("chunk-size line {:?}", show(&line))))?;
            *state = if size == 0 {
                Chunk::Trailers(0)
            } else {
                Chunk::Data(size)
            };
            Ok(Step::Again)
        }
        Chunk::Data(rest) => {
            if buf.is_empty() {
                return Ok(Step::More);
            }
            let n = rest.min(buf.len() as u64);
            *state = if n == rest {
                Chunk::DataEnd
            } else {
                Chunk::Data(rest - n)
            };
            Ok(Step::Data(buf.split_to(n as usize).freeze()))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok(Step::More);
            }
            if &buf[..2] != b"\r\n" {
                return Err(invalid("chunk data longer than its size"));
            }
            buf.advance(2);
            *state = Chunk::Size;
            Ok(Step::Again)
        }
        Chunk::Trailers(seen) => {
            let limit = MAX_TRAILERS.saturating_sub(seen).max(2);
            let Some(field) = line(buf, limit, "trailer section")? else {
                return Ok(Step::More);
            };
            if field.is_empty() {
                return Ok(Step::End);
            }
            *state = Chunk::Trailers(seen + field.len() + 2);
            Ok(Step::Again)
        }
    }
}

/// Takes a CRLF-ended line of at most `limit` bytes off `buf`, without its CRLF.
fn line(buf: &mut BytesMut, limit: usize, what: &str) -> Result<Option<BytesMut>, H1Error> {
    let window = &buf[..buf.len().min(limit)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= limit {
            Err(invalid(format!("{what} longer than {limit} bytes")))
        } else {
            Ok(None)
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(invalid(format!("{what} not ended by CRLF")));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// [`Replayed::fields`] of a parsed head: its lines', or its map's as `from_origin` strips it.
fn passed_fields(head: Head) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = match head.body() {
        Some(p) => p
            .lines
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let l = l.strip_suffix(b"\r").expect("a line ends with CRLF");
                let colon = l.iter().position(|&b| b == b':').expect("a name");
                let value = l[colon + 1..].strip_prefix(b" ").expect("a space");
                let name = String::from_utf8_lossy(&l[..colon]).to_ascii_lowercase();
                (name, value.to_vec())
            })
            .collect(),
        None => {
            let mut map = head.into_parts().0.headers;
            crate::http::headers::strip_hop_by_hop(&mut map);
            crate::http::headers::strip_cache_only(&mut map);
            map.remove(header::CONTENT_LENGTH);
            map.iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
                .collect()
        }
    };
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(40)]).into_owned()
}

/// What [`replay`] made of a response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Replayed {
    pub(crate) status: Option<u16>,
    /// The fields a client would be handed of a pass-through (hop-by-hop, framing and
    /// cache-only ones removed), names in lower case, sorted by name (the values of one name
    /// in the order they came).
    pub(crate) fields: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    /// Once the body ended: whether the connection could serve again. Else why not: an error,
    /// or the input's end before the response's.
    pub(crate) end: Result<bool, String>,
}

/// Reads a response to a `GET` (or `HEAD`, `head_only`) from `pieces` as the client does from
/// reads of a connection that then closes (fuzzing: the outcome must not depend on the
/// pieces).
/// `pass`: as for a pass-through (see [`exchange`]).
pub(crate) fn replay(pieces: &[&[u8]], head_only: bool, pass: bool) -> Replayed {
    let mut out = Replayed {
        status: None,
        fields: Vec::new(),
        body: Vec::new(),
        end: Err("the connection closed first".into()),
    };
    let mut buf = BytesMut::new();
    let mut interim = 0;
    let mut head: Option<(Framing, bool)> = None;
    for (i, piece) in pieces.iter().enumerate() {
        buf.extend_from_slice(piece);
        if head.is_none() {
            match take_head(&mut buf, &mut Vec::new(), head_only, pass, &mut interim) {
                Ok(Some((h, framing, keep))) => {
                    out.status = Some(h.status().as_u16());
                    out.fields = passed_fields(h);
                    head = Some((framing, keep));
                }
                Ok(None) => continue,
                Err(e) => {
                    out.end = Err(e.to_string());
                    return out;
                }
            }
        }
        let Some((framing, keep)) = head.as_mut() else {
            continue;
        };
        loop {
            match body_step(framing, &mut buf) {
                Ok(BodyStep::Data(d)) => out.body.extend_from_slice(&d),
                Ok(BodyStep::End) => {
                    let after = buf.len() + pieces[i + 1..].iter().map(|p| p.len()).sum::<usize>();
                    out.end = Ok(*keep && after == 0);
                    return out;
                }
                Ok(BodyStep::More(_)) => break,
                Err(e) => {
                    out.end = Err(e.to_string());
                    return out;
                }
            }
        }
    }
    if let Some((Framing::Close, _)) = head {
        out.end = Ok(false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first-byte timer lets go of the task's waker once the head is read even when the
    /// task has used up its tokio budget by then (a timer polled without budget does nothing,
    /// so the waker it held stayed until it fired, with the task's memory).
    #[tokio::test]
    async fn the_first_byte_timer_lets_go_of_the_waker_without_budget_too() {
        struct Counted;
        impl std::task::Wake for Counted {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut conn = ConnState::new(stream, Duration::from_secs(5));
        conn.start_first_byte(Duration::from_secs(60));
        let task = std::sync::Arc::new(Counted);
        let waker = std::task::Waker::from(task.clone());
        let timer = conn.first_byte.as_mut().unwrap();
        assert!(timer
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        drop(waker);
        assert_eq!(std::sync::Arc::strong_count(&task), 2, "the timer holds it");
        while tokio::task::coop::has_budget_remaining() {
            tokio::task::consume_budget().await;
        }
        conn.release_first_byte();
        assert_eq!(std::sync::Arc::strong_count(&task), 1, "let go of");
    }

    fn head(raw: &str, head_only: bool) -> Result<(Head, Framing, bool), H1Error> {
        let mut buf = BytesMut::from(raw.as_bytes());
        loop {
            match parse_head(&mut buf, &mut Vec::new(), head_only, false)? {
                Some(Parsed::Final(h, f, k)) => return Ok((h, f, k)),
                Some(Parsed::Interim) => continue,
                None => return Err(invalid("partial")),
            }
        }
    }

    fn decode_all(raw: &[u8]) -> Result<Vec<u8>, H1Error> {
        let mut buf = BytesMut::from(raw);
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        loop {
            match decode(&mut state, &mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::End => return Ok(out),
                Step::Again => {}
                Step::More => return Err(invalid("incomplete")),
            }
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let (h, f, keep) = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false).unwrap();
        assert_eq!(h.status(), 200);
        assert!(matches!(f, Framing::Length(5)) && keep);
        let (_, f, keep) = head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false).unwrap();
        assert!(matches!(f, Framing::Length(5)) && keep);
        assert!(head(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            false
        )
        .is_err());
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n", false).is_err());
        let (_, f, keep) = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(matches!(f, Framing::Chunked(_)) && keep);
        // Both: chunked wins, and the connection is not used again.
        let (_, f, keep) = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(matches!(f, Framing::Chunked(_)) && !keep);
        let (_, f, keep) =
            head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false).unwrap();
        assert!(matches!(f, Framing::Close) && !keep);
        let (_, f, keep) = head("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert!(matches!(f, Framing::Close) && !keep);
        let (_, _, keep) = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false).unwrap();
        assert!(!keep);
        let (_, _, keep) = head(
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: Close\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!keep);
        for (raw, head_only) in [
            ("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false,
            ),
            (
                "HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
            ),
        ] {
            let (_, f, keep) = head(raw, head_only).unwrap();
            assert!(matches!(f, Framing::Length(0)) && keep, "{raw}");
        }
        // 1xx heads are skipped; 101 is refused.
        let (h, _, _) = head(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(h.status(), 201);
        assert!(head("HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "a: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(head(&many, false).is_err());
    }

    #[test]
    fn chunks_are_decoded_strictly() {
        assert_eq!(
            decode_all(b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nx-t: 1\r\n\r\n").unwrap(),
            b"hello!"
        );
        assert_eq!(
            decode_all(b"A \r\n0123456789\r\n0\r\n\r\n").unwrap(),
            b"0123456789"
        );
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello!\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5;\x01\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(decode_all(bad).is_err(), "{:?}", show(bad));
        }
    }

    #[test]
    fn a_response_heads_framing_fields_are_read_in_any_spelling() {
        let read = |fields: &[(&str, &str)]| {
            let mut f = Fields::default();
            for (name, value) in fields {
                f.see(name.as_bytes(), value.as_bytes())?;
            }
            Ok::<_, H1Error>((f.length, f.close))
        };
        assert_eq!(
            read(&[("Content-Length", "12")]).unwrap(),
            (Some(12), false)
        );
        assert_eq!(
            read(&[("content-length", "5, 5")]).unwrap(),
            (Some(5), false)
        );
        assert_eq!(
            read(&[("Content-Length", "5"), ("CONTENT-LENGTH", "5")]).unwrap(),
            (Some(5), false)
        );
        for bad in [
            &[("Content-Length", "5, 6")][..],
            &[("Content-Length", "5"), ("Content-Length", "6")][..],
            &[("Content-Length", "+5")][..],
            &[("Content-Length", "")][..],
            &[("Content-Length", "12345678901234567890")][..],
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
        for (value, close) in [
            ("keep-alive", false),
            ("Keep-Alive", false),
            ("close", true),
            ("keep-alive, Close", true),
            ("x-a ,CLOSE", true),
            ("closed", false),
        ] {
            assert_eq!(read(&[("Connection", value)]).unwrap().1, close, "{value}");
        }
    }

    #[test]
    fn a_request_head_carries_its_own_framing() {
        let req = http::Request::post("/up?x=1")
            .header("host", "a.test")
            .header("content-length", "99")
            .header("transfer-encoding", "chunked")
            .header("expect", "100-continue")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        let close = encode_head(&parts, Sending::Length(12), Lines::default(), &mut out);
        assert!(!close, "no Connection field");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /up?x=1 HTTP/1.1\r\nhost: a.test\r\ncontent-length: 12\r\n\r\n"
        );
        // A head in absolute form goes in origin form; a `Host` given in the lines takes the
        // place of the request's (every one of them).
        let (parts, ()) = http::Request::get("http://a.test/up?x=1")
            .header("host", "a.test")
            .header("accept", "*/*")
            .header("host", "b.test")
            .body(())
            .unwrap()
            .into_parts();
        let host = HeaderValue::from_static("origin.test");
        let lines = Lines {
            host: Some(&host),
            ..Lines::default()
        };
        let mut out = Vec::new();
        encode_head(&parts, Sending::Nothing, lines, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /up?x=1 HTTP/1.1\r\nhost: origin.test\r\naccept: */*\r\n\r\n"
        );
        // `close` among a Connection field's tokens (any case), in any of its fields, leaves
        // the connection unusable after the answer; other tokens do not.
        for (fields, close) in [
            (&["keep-alive"][..], false),
            (&["keep-alive, Close"][..], true),
            (&["x-a", " CLOSE "][..], true),
            (&["closer"][..], false),
        ] {
            let mut req = http::Request::get("/").header("host", "a.test");
            for f in fields {
                req = req.header("connection", *f);
            }
            let (parts, ()) = req.body(()).unwrap().into_parts();
            let said = encode_head(&parts, Sending::Nothing, Lines::default(), &mut Vec::new());
            assert_eq!(said, close, "{fields:?}");
        }
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(
            decimal(u64::MAX, &mut [0; 20]),
            u64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn a_pass_throughs_lines_are_the_fields_the_map_gives_a_client() {
        let heads: [&str; 10] = [
            // As nginx answers, and with every field a client must not see.
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sat, 05 Dec 2026 08:00:00 GMT\r\n\
             Content-Length: 2\r\nConnection: keep-alive\r\nCache-Control: private\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nConnection: X-A, x-b ,, close\r\nX-A: 1\r\nX-B: 2\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X-T\r\n\
             Upgrade: h2c\r\nProxy-Authenticate: Basic\r\nProxy-Authorization: x\r\n\
             Surrogate-Key: a b\r\nSURROGATE-CONTROL: no-store\r\nMeridian-Fetched: 1\r\n\
             Set-Cookie: a=1\r\nX-Many: 1\r\nx-many: 2\r\nContent-Length: 2\r\n\r\nok",
            // A Date that Connection names is the server's to write.
            "HTTP/1.1 200 OK\r\nConnection: date\r\nDate: x\r\nContent-Length: 0\r\n\r\n",
            // A Connection value with a byte past ASCII still names the fields beside it.
            "HTTP/1.1 200 OK\r\nConnection: x-a, \u{e9}\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nX: y\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            // Taken with a map: an upstream cache's Cache-Status, a Location.
            "HTTP/1.1 200 OK\r\nCache-Status: up; hit\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 201 Created\r\ncontent-location: /x\r\nContent-Length: 0\r\n\r\n",
            // Bodiless answers, and a Connection that names more than the lines take.
            "HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nConnection: x-a\r\nX-A: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q\r\nq: 1\r\nr: 2\r\n\
             Content-Length: 0\r\n\r\n",
        ];
        for head in heads {
            let map = replay(&[head.as_bytes()], false, false);
            assert!(map.end.is_ok(), "{head}: {:?}", map.end);
            assert_eq!(replay(&[head.as_bytes()], false, true), map, "{head}");
        }
        // The lines are what came, less what no client may see.
        let lines = |head: &str| {
            let mut buf = BytesMut::from(head);
            match parse_head(&mut buf, &mut Vec::new(), false, true).unwrap() {
                Some(Parsed::Final(h, ..)) => h
                    .body()
                    .as_ref()
                    .map(|p| (String::from_utf8(p.lines.clone()).unwrap(), p.dated)),
                _ => panic!("{head}"),
            }
        };
        assert_eq!(
            lines(heads[0]),
            Some((
                "Server: nginx\r\nDate: Sat, 05 Dec 2026 08:00:00 GMT\r\nCache-Control: private\r\n"
                    .into(),
                true
            ))
        );
        assert_eq!(
            lines(heads[1]),
            Some((
                "Set-Cookie: a=1\r\nX-Many: 1\r\nx-many: 2\r\n".into(),
                false
            ))
        );
        assert_eq!(lines(heads[2]), Some((String::new(), false)));
        assert_eq!(lines(heads[3]), Some((String::new(), false)));
        assert_eq!(lines(heads[4]), Some(("X: y\r\n".into(), false)));
        for head in &heads[5..8] {
            assert_eq!(lines(head), None, "{head}");
        }
        assert_eq!(lines(heads[9]), None);
    }
}
