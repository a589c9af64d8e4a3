//! Accepting client connections and serving HTTP on them: HTTP/1.x requests with no body or a
//! short one by the edge itself (`direct`), everything else (streamed request bodies, HTTP/2,
//! what `direct` leaves) by hyper, which takes a connection over at its first such request.
//!
//! `serve(listener, state, limits, shutdown)` takes a bound listener and a shutdown signal
//! (`serve_on_threads` the same, served on threads of its own with a runtime each). It
//! enforces the connection limit (at the limit it stops accepting until a connection closes),
//! the head size (hyper answers 431 past it), the header read timeout and an idle timeout; it
//! counts bytes each way for `load`.
//!
//! Timeouts of an HTTP/1 connection: a request head must be complete within
//! `header_read_timeout` of its first byte, and the first one within that time of the
//! connection opening (a silent socket cannot hold a connection slot); between requests a
//! connection may rest for `idle_timeout` (then it is closed gracefully), and one that still
//! moves no byte for `send_timeout` more (hyper waiting on a client that does not read its
//! answer) is dropped. The framing guard, which sees every byte, says when a
//! head is under way; hyper's own header timer (which starts when a response ends, cutting
//! resting connections short, and not at all before the first byte) is off. On shutdown it stops accepting and lets every connection
//! finish its in-flight requests (hyper's graceful shutdown); `app` bounds the wait.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::balance::{Balance, Handed, Open};
use super::body::RequestBody;
use super::direct;
use super::framing::{BodyFault, Conflict, FramingGuard};
use super::handler::{answer_later, answer_now, EdgeState, Peer};
use super::stall::{Sent, Stalls};
use crate::config::EdgeConfig;
use crate::load::LoadCounters;

/// Connection limits of a listener.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) send_timeout: Duration,
    pub(crate) max_header_size: usize,
    pub(crate) max_connections: usize,
}

impl From<&EdgeConfig> for Limits {
    fn from(e: &EdgeConfig) -> Limits {
        Limits {
            header_read_timeout: e.header_read_timeout,
            idle_timeout: e.idle_timeout,
            send_timeout: e.send_timeout,
            max_header_size: e.max_header_size,
            max_connections: e.max_connections,
        }
    }
}

/// Activity of one connection: a count of reads and writes (no clock on the hot path) and how
/// many requests are open. The idle watcher samples the count.
pub(super) struct Activity {
    events: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    /// Requests handed to hyper's service so far (HTTP/1: in connection order).
    requests: AtomicU64,
    /// Index of the first request head with ambiguous framing, `u64::MAX` if none.
    bad_head: AtomicU64,
    bad_reason: std::sync::Mutex<Option<Conflict>>,
    /// The first fault inside a request body.
    body_fault: Arc<BodyFault>,
    /// When the connection opened.
    opened: Instant,
    /// Milliseconds after `opened`, plus one, at which the unfinished request head began; 0
    /// while no head is under way. Starts at 1: the first head is awaited from the open.
    head_since: AtomicU64,
    /// The connection was told to close (idle, or shutting down): `direct` answers what is
    /// under way, with `Connection: close`, and ends.
    pub(super) closing: AtomicBool,
    /// `direct` waits for a request head with nothing of it read: told to close now, the
    /// connection ends at once.
    pub(super) resting: AtomicBool,
    /// The answers hyper sends that may wait on the client (see `stall`).
    stalls: Stalls,
}

impl Activity {
    fn touch(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// Since when a request head has been awaited or under way, if one is.
    fn head_since(&self) -> Option<Instant> {
        match self.head_since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.opened + Duration::from_millis(ms - 1)),
        }
    }

    /// A request head is under way (from now, unless it already was).
    pub(super) fn head_begun(&self) {
        if self.head_since.load(Ordering::Relaxed) == 0 {
            let ms = self.opened.elapsed().as_millis() as u64 + 1;
            self.head_since.store(ms, Ordering::Relaxed);
        }
    }

    /// The head under way is complete.
    pub(super) fn head_done(&self) {
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// What the framing guard found in `bytes`, recorded for the requests it concerns.
    fn watch(&self, guard: &mut FramingGuard, bytes: &[u8]) {
        if let Some((index, conflict)) = guard.feed(bytes) {
            if self.bad_head.load(Ordering::Relaxed) == u64::MAX {
                *self.bad_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(conflict);
                self.bad_head.store(index, Ordering::Release);
            }
        }
        if let Some((index, why)) = guard.take_body_fault() {
            self.body_fault.set(index, why);
        }
        // A head under way keeps the time its first byte came (or the connection opened);
        // a finished one clears it.
        if guard.head_pending() {
            self.head_begun();
        } else {
            self.head_done();
        }
    }
}

pin_project_lite::pin_project! {
    /// A client stream (TCP, or TLS over TCP) that records activity and counts bytes; once
    /// hyper serves it, the framing guard sees what it reads, and its first reads give back
    /// `replay` (what `direct` had read: counted and guarded already).
    struct Tracked<S> {
        #[pin]
        inner: S,
        activity: Arc<Activity>,
        state: Arc<EdgeState>,
        guard: Option<FramingGuard>,
        replay: Bytes,
    }
}

impl<S: AsyncRead> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            if this.replay.is_empty() {
                // An empty slice still holds the whole read buffer it came from.
                *this.replay = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.activity.touch();
            this.state.load.bytes_in.add(n as u64);
            if let Some(guard) = this.guard {
                this.activity.watch(guard, &buf.filled()[before..]);
            }
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.activity.touch();
            this.state.load.bytes_out.add(*n as u64);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            this.activity.touch();
            this.state.load.bytes_out.add(*n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Ours instead (see the module documentation).
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_size)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    b
}

/// Serves HTTP on `listener` until `shutdown` fires, then drains gracefully. With `tls`, every
/// connection is a TLS handshake first (it must finish within the header read timeout).
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<EdgeState>,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // One count for the shared runtime, so that the metric is there as with threads.
    let spread = listener.local_addr().ok().map(|addr| {
        let (balance, _none_handed) = Balance::new(1, &state.node, addr);
        (balance, 0)
    });
    let serving = Serving {
        state,
        builder: builder(&limits),
        limits,
        tls,
        shutdown,
    };
    accept(listener, slots, serving, spread).await;
}

thread_local! {
    static HTTP_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is one of `serve_on_threads`' (a runtime of its own).
pub(crate) fn on_http_thread() -> bool {
    HTTP_THREAD.with(|t| t.get())
}

/// Marks this thread as an HTTP thread, before its runtime runs.
pub(crate) fn mark_http_thread() {
    HTTP_THREAD.with(|t| t.set(true));
}

/// A value each HTTP thread has one of its own of, made on its first use there, and one more
/// for every other thread: a client whose pooled connections are served by tasks of the runtime
/// that opened them. Shared between HTTP threads, a request would wait for another thread's
/// turn (and its wake-up) at each read and write of a connection it took from the pool, and
/// for as long as that thread is busy. A value stays with its thread's id: a thread started
/// after another ended may get the old one, whose pooled connections ended with the old
/// runtime; hyper's pool finds them closed and opens new ones (several nodes in one process,
/// as in the demo and the tests; a node's HTTP threads live as long as the node).
pub(crate) struct PerThread<T: Send> {
    shared: T,
    threads: thread_local::ThreadLocal<T>,
    make: Box<dyn Fn() -> T + Send + Sync>,
}

impl<T: Send> PerThread<T> {
    pub(crate) fn new(make: impl Fn() -> T + Send + Sync + 'static) -> PerThread<T> {
        PerThread {
            shared: make(),
            threads: thread_local::ThreadLocal::new(),
            make: Box::new(make),
        }
    }

    /// This HTTP thread's own value, or the shared one.
    pub(crate) fn get(&self) -> &T {
        if on_http_thread() {
            self.threads.get_or(&self.make)
        } else {
            &self.shared
        }
    }
}

/// Serves HTTP on `listener` as [`serve`] does, on `threads` threads of its own, each with a
/// single-threaded runtime: a connection is accepted, parsed, answered and written by one
/// thread for its whole life and never moves, and no two threads share a run queue (a 1 KiB hit
/// cost 13–14.5 µs of CPU this way against 15.4–16.6 on the shared work-stealing runtime, and
/// HTTP/2 gained most: see the README). The threads accept from the one listener and share the
/// connection limit; a connection goes to the thread that serves fewest ([`super::balance`]).
///
/// Each thread ends once `shutdown` has fired and every task the node tracks is done (a
/// connection's requests, a fill whose readers are on other threads), or when `stopped` fires
/// (the node gave up waiting, or was dropped): its runtime is then dropped with whatever it
/// still ran. The receivers are told when each thread has ended.
pub(crate) fn serve_on_threads(
    listener: std::net::TcpListener,
    threads: usize,
    state: Arc<EdgeState>,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
    stopped: CancellationToken,
) -> io::Result<Vec<tokio::sync::oneshot::Receiver<()>>> {
    listener.set_nonblocking(true)?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (balance, handed) = Balance::new(threads, &state.node, listener.local_addr()?);
    let mut ended = Vec::with_capacity(threads);
    for (i, handed) in handed.into_iter().enumerate() {
        let listener = listener.try_clone()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (done, end) = tokio::sync::oneshot::channel();
        let serving = Serving {
            state: state.clone(),
            builder: builder(&limits),
            limits: limits.clone(),
            tls: tls.clone(),
            shutdown: shutdown.clone(),
        };
        let (slots, spread, stopped) = (slots.clone(), (balance.clone(), i), stopped.clone());
        // Held while the thread accepts (taken here, before it runs): the node's wait cannot
        // end between an accept and the spawn of its connection.
        let accepting = state.tasks.token();
        std::thread::Builder::new()
            .name(format!("meridian-http-{i}"))
            .spawn(move || {
                mark_http_thread();
                runtime.block_on(async move {
                    let state = serving.state.clone();
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "an HTTP thread cannot use its listener");
                            drop(accepting);
                            return;
                        }
                    };
                    tokio::join!(
                        accept(listener, slots, serving.clone(), Some(spread)),
                        take_handed(handed, serving),
                    );
                    drop(accepting);
                    tokio::select! {
                        () = state.tasks.wait() => {}
                        () = stopped.cancelled() => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
                let _ = done.send(());
            })?;
        ended.push(end);
    }
    Ok(ended)
}

/// What every connection of a listener is served with.
#[derive(Clone)]
struct Serving {
    state: Arc<EdgeState>,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
}

/// A listener's accepting thread: its index among the listener's threads, and their balance.
type Spread = (Arc<Balance>, usize);

/// Accepts connections until `shutdown` fires. With `spread`, each one goes to the thread of
/// the listener that serves fewest (see [`super::balance`]).
async fn accept(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    serving: Serving,
    spread: Option<Spread>,
) {
    let shutdown = serving.shutdown.clone();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let Some((balance, me)) = &spread else {
            serving.spawn(stream, peer, permit, None);
            continue;
        };
        let open = balance.pick(*me);
        if open.thread() == *me {
            serving.spawn(stream, peer, permit, Some(open));
            continue;
        }
        let handed = match stream.into_std() {
            Ok(stream) => Handed {
                stream,
                peer,
                permit,
                open,
            },
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "cannot hand a connection on");
                continue;
            }
        };
        // The other thread has ended (the node is stopping): served here after all.
        if let Err(h) = balance.hand(handed) {
            drop(h.open);
            serving.adopt(h.stream, peer, h.permit, balance.count(*me));
        }
    }
}

/// Serves the connections other threads of the listener hand this one, until `shutdown` fires.
async fn take_handed(mut handed: UnboundedReceiver<Handed>, serving: Serving) {
    let shutdown = serving.shutdown.clone();
    loop {
        let h = tokio::select! {
            h = handed.recv() => match h { Some(h) => h, None => break },
            _ = shutdown.cancelled() => break,
        };
        serving.adopt(h.stream, h.peer, h.permit, h.open);
    }
}

impl Serving {
    /// Serves a connection accepted on another thread of this runtime's listener.
    fn adopt(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        open: Open,
    ) {
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => self.spawn(stream, peer, permit, Some(open)),
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "cannot serve a handed connection")
            }
        }
    }

    /// Serves a connection on this runtime; `open` counts it to this thread while it lives.
    fn spawn(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        open: Option<Open>,
    ) {
        let Serving {
            state,
            builder,
            limits,
            tls,
            shutdown,
        } = self.clone();
        let handshake_timeout = limits.header_read_timeout;
        let state2 = state.clone();
        state.tasks.spawn(async move {
            let _counted = (permit, open);
            LoadCounters::add(&state2.load.connections, 1);
            let conn = Conn {
                peer,
                state: state2.clone(),
                builder,
                idle_timeout: limits.idle_timeout,
                send_timeout: limits.send_timeout,
                header_timeout: limits.header_read_timeout,
                max_header_size: limits.max_header_size,
                shutdown,
            };
            match tls {
                None => connection(stream, conn, false).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, conn, true).await,
                        Ok(Err(e)) => {
                            state2.metrics.tls_handshake_failures.increment(1);
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            state2.metrics.tls_handshake_failures.increment(1);
                            tracing::debug!(client = %peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            state2.load.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What a connection needs besides its stream.
struct Conn {
    peer: SocketAddr,
    state: Arc<EdgeState>,
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
    send_timeout: Duration,
    header_timeout: Duration,
    max_header_size: usize,
    shutdown: CancellationToken,
}

async fn connection<S>(stream: S, conn: Conn, secure: bool)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Conn {
        peer,
        state,
        builder,
        idle_timeout,
        send_timeout,
        header_timeout,
        max_header_size,
        shutdown,
    } = conn;
    let opened = Instant::now();
    let activity = Arc::new(Activity {
        events: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        bad_head: AtomicU64::new(u64::MAX),
        bad_reason: std::sync::Mutex::new(None),
        body_fault: Arc::default(),
        opened,
        head_since: AtomicU64::new(1),
        closing: AtomicBool::new(false),
        resting: AtomicBool::new(false),
        stalls: Stalls::new(opened),
    });
    let mut io = Tracked {
        inner: stream,
        activity: activity.clone(),
        state: state.clone(),
        guard: None,
        replay: Bytes::new(),
    };
    let client = Peer { addr: peer, secure };
    let mut watch = Watch::new(idle_timeout, header_timeout, send_timeout, peer);
    // HTTP/1.x requests with no body or a short one first, answered by the edge itself; hyper
    // takes the connection at the first request that is anything else (see `direct`).
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let ended = {
        let own = direct::serve(
            &mut io,
            &mut buf,
            &state,
            client,
            &activity,
            max_header_size,
        );
        tokio::pin!(own);
        let mut own = Own {
            serve: own,
            activity: &activity,
        };
        watch.run(&mut own, &activity, &shutdown).await
    };
    if !matches!(ended, Some(direct::Ended::HandOff)) {
        return;
    }
    // hyper reads what `direct` read of its first request again; the guard sees it from
    // that request's first byte, and numbers the requests from there.
    let mut guard = FramingGuard::new(max_header_size);
    activity.watch(&mut guard, &buf);
    io.guard = Some(guard);
    io.replay = buf.freeze();
    let svc_activity = activity.clone();
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let state = state.clone();
        let activity = svc_activity.clone();
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let index = activity.requests.fetch_add(1, Ordering::Relaxed);
        // hyper parsed this head after the guard saw its bytes, so the mark is already set.
        let framing = if activity.bad_head.load(Ordering::Acquire) == index {
            activity
                .bad_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(Conflict::reason)
        } else {
            None
        };
        let fault = Some((activity.body_fault.clone(), index));
        // A hit is answered here, in hyper's call: see `answer_now`.
        let now = answer_now(
            &state,
            crate::reuse::Reused::new(|| req.map(RequestBody::Hyper)),
            client,
            framing,
            fault,
            None,
        );
        let later = match now {
            Ok(resp) => {
                activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                activity.touch();
                let resp = resp.map(|b| activity.stalls.watch(b));
                return Answer::Now { resp: Some(resp) };
            }
            Err(later) => later,
        };
        // Boxed: hyper spawns a task per HTTP/2 stream with this future in it, and unboxed it
        // made every answer's task, hits included, as large as the miss path's state machine
        // (about 4 KiB, copied into each task).
        Answer::Later {
            later: crate::reuse::Reused::pin(|| async move {
                let r = answer_later(&state, later).await;
                activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                activity.touch();
                r.map(|resp| resp.map(|b| activity.stalls.watch(b)))
            }),
        }
    });
    // What one poll of the connection writes leaves in one write (HTTP/2 flushes per frame).
    let (io, drain) = super::coalesce::coalesce(io, secure);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut hyper = Hyper {
        conn,
        drain,
        ended: None,
        shut: |conn| conn.graceful_shutdown(),
    };
    if let Some(Err(e)) = watch.run(&mut hyper, &activity, &shutdown).await {
        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
    }
}

/// What serves a connection, as its watcher sees it.
trait Served {
    type Out;
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Self::Out>;
    /// Finish what is under way, then close. True if nothing is: the caller ends the
    /// connection.
    fn close(&mut self) -> bool;
}

/// `direct`'s loop.
struct Own<'a, F> {
    serve: Pin<&'a mut F>,
    activity: &'a Activity,
}

impl<F: Future> Served for Own<'_, F> {
    type Out = F::Output;

    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.serve.as_mut().poll(cx)
    }

    fn close(&mut self) -> bool {
        self.activity.closing.store(true, Ordering::Relaxed);
        self.activity.resting.load(Ordering::Relaxed)
    }
}

/// hyper's connection, and the coalescing layer's writes it leaves behind.
struct Hyper<'a, F: Future, S> {
    conn: Pin<&'a mut F>,
    drain: super::coalesce::Drain<S>,
    ended: Option<F::Output>,
    /// hyper's graceful shutdown of `conn`.
    shut: fn(Pin<&mut F>),
}

impl<F, S> Served for Hyper<'_, F, S>
where
    F: Future<Output = Result<(), super::coalesce::ConnError>>,
    S: AsyncWrite + Unpin,
{
    type Out = Result<(), super::coalesce::ConnError>;

    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Self::Out> {
        super::coalesce::poll_flushing(self.conn.as_mut(), &self.drain, &mut self.ended, cx)
    }

    fn close(&mut self) -> bool {
        (self.shut)(self.conn.as_mut());
        false
    }
}

/// A connection's timeouts, checked every quarter of the shortest (see the module
/// documentation): a head late past `header_timeout`, `idle_timeout` with no byte moved and no
/// request open (told to close), and `send_timeout` more of the same (dropped).
struct Watch {
    idle_timeout: Duration,
    header_timeout: Duration,
    send_timeout: Duration,
    peer: SocketAddr,
    tick: Duration,
    next_check: Instant,
    seen: u64,
    quiet_since: Instant,
    closing: bool,
}

impl Watch {
    fn new(
        idle_timeout: Duration,
        header_timeout: Duration,
        send_timeout: Duration,
        peer: SocketAddr,
    ) -> Watch {
        // Sampled every quarter of the shorter timeout: a connection is idle once no byte moved
        // and no request was open for a whole timeout (give or take a quarter).
        let tick =
            (idle_timeout.min(header_timeout).min(send_timeout) / 4).max(Duration::from_millis(10));
        Watch {
            idle_timeout,
            header_timeout,
            send_timeout,
            peer,
            tick,
            next_check: Instant::now() + tick,
            seen: 0,
            quiet_since: Instant::now(),
            closing: false,
        }
    }

    /// Serves until `served` ends (its output) or a timeout drops the connection (`None`).
    async fn run<T: Served>(
        &mut self,
        served: &mut T,
        activity: &Activity,
        shutdown: &CancellationToken,
    ) -> Option<T::Out> {
        if self.closing && served.close() {
            return None;
        }
        let rare = Arc::new(RareWake::default());
        let rare_waker = std::task::Waker::from(rare.clone());
        loop {
            let check = tokio::time::sleep_until(self.next_check);
            let cancelled = shutdown.cancelled();
            tokio::pin!(check, cancelled);
            // The task's waker as the rare futures last saw it (`None`: not polled yet).
            let mut task: Option<std::task::Waker> = None;
            let closing = self.closing;
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(out) = served.poll_serve(cx) {
                    return Poll::Ready(Event::Served(out));
                }
                let moved = !task.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
                if moved {
                    rare.task(cx.waker());
                    task = Some(cx.waker().clone());
                }
                if moved || rare.fired.swap(false, Ordering::AcqRel) {
                    let mut rare_cx = Context::from_waker(&rare_waker);
                    if !closing && cancelled.as_mut().poll(&mut rare_cx).is_ready() {
                        return Poll::Ready(Event::Shutdown);
                    }
                    if check.as_mut().poll(&mut rare_cx).is_ready() {
                        return Poll::Ready(Event::Check);
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Served(out) => return Some(out),
                Event::Shutdown => {
                    self.closing = true;
                    if served.close() {
                        return None;
                    }
                }
                Event::Check => {
                    let now = Instant::now();
                    let events = activity.events.load(Ordering::Relaxed);
                    let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
                    let late_head = activity
                        .head_since()
                        .is_some_and(|t| now.duration_since(t) >= self.header_timeout);
                    if late_head && !busy && !self.closing {
                        // Nothing in flight to finish: drop the connection (hyper would wait
                        // for the head to complete before a graceful shutdown took effect).
                        tracing::debug!(client = %self.peer, "request head not complete in time");
                        return None;
                    }
                    let stalled = activity.stalls.let_go(self.send_timeout);
                    if stalled > 0 {
                        tracing::debug!(client = %self.peer, stalled, "answers the client took nothing of for send_timeout let go");
                    }
                    let quiet = now.duration_since(self.quiet_since);
                    if events != self.seen || busy {
                        self.seen = events;
                        self.quiet_since = now;
                    } else if quiet >= self.idle_timeout + self.send_timeout {
                        // Told to close (idle, or shutting down) and still no byte moved: the
                        // answer under way is one the client does not read, and would be held
                        // (with its origin connection, or its chunk from disk) for good.
                        tracing::debug!(client = %self.peer, "the client took no bytes for send_timeout");
                        return None;
                    } else if quiet >= self.idle_timeout && !self.closing {
                        self.closing = true;
                        if served.close() {
                            return None;
                        }
                    }
                    self.next_check = now + self.tick;
                }
            }
        }
    }
}

/// What ended a wait of [`Watch::run`].
enum Event<T> {
    Served(T),
    Shutdown,
    Check,
}

/// The waker [`Watch::run`] gives its rare futures (the shutdown signal, the next check): it
/// notes that one of them fired, then wakes the connection's task. Every other wake of the
/// task (its socket, its answers) then polls neither: polled on each, the two cost about 550
/// instructions a request, and the shutdown signal takes two locks shared by every connection
/// of the node (its token's and its waiters' list).
#[derive(Default)]
struct RareWake {
    fired: AtomicBool,
    /// The connection's task.
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl RareWake {
    fn task(&self, waker: &std::task::Waker) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        *task = Some(waker.clone());
    }
}

impl std::task::Wake for RareWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waker) = task.as_ref() {
            waker.wake_by_ref();
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer as the service gives it to hyper: ready at once (a hit), or to come.
    #[project = AnswerProj]
    enum Answer<F> {
        Now { resp: Option<hyper::Response<Sent>> },
        Later { #[pin] later: F },
    }
}

impl<F: Future<Output = Result<hyper::Response<Sent>, std::convert::Infallible>>> Future
    for Answer<F>
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            AnswerProj::Now { resp } => {
                Poll::Ready(Ok(resp.take().expect("polled after its answer")))
            }
            AnswerProj::Later { later } => later.poll(cx),
        }
    }
}
