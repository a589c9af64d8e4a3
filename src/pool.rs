//! Connections to a plain-HTTP origin: HTTP/1.1 on connections of the edge's own (`h1`), kept
//! in a list per HTTP thread.
//!
//! hyper-util's pooled client (which HTTPS origins still use, for ALPN and HTTP/2) cost about
//! 13,000 instructions a request more than hyper's connection API on the same connection
//! (callgrind, `examples/bare_proxy.rs` in its two modes: 44,500 against 31,400 per forwarded
//! 1 KiB answer): a pool keyed by a SipHash of scheme and authority, looked up twice a request,
//! a select between checkout and connect, a boxed future, and a task per request that waits for
//! the connection to be idle again. hyper's connection API in turn runs each connection as a
//! task that the request and response cross to through channels; `h1` does without.
//!
//! A connection is in its thread's list only while idle: it goes back once its response body
//! has been read to its end (a body dropped before that closes it). A checkout takes the most
//! recent one that is still usable (the origin has not closed it) and drops the others it
//! passes. The same rules as hyper-util's otherwise:
//!
//! - A request that a reused connection could not take (it closed while idle: the keep-alive
//!   race with an origin's idle timeout) is sent again on a new connection. One whose body was
//!   partly sent is never sent again; an idempotent one with a complete body whose connection
//!   closed without a byte of an answer is (RFC 9112 §9.3.1).
//! - At most [`h1::MAX_KEPT`] idle connections a thread; one idle for [`IDLE_TIMEOUT`] is closed
//!   (a sweep every [`SWEEP`] on the thread that keeps it).
//! - Connecting is hyper-util's `HttpConnector` (name resolution, connect timeout, the
//!   addresses of a name in turn, `TCP_NODELAY`, keep-alive probes).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::request::Parts;
use http::uri::Uri;
use http::{header, HeaderValue, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::h1::{self, Conn, Failure, H1Error, Idle, Lines, ResponseBody};
use crate::http::body::{Body, BodyError};
use crate::http::server::PerThread;

/// An idle connection is closed after this long (hyper-util's default, which this replaces).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a thread's idle connections are checked against [`IDLE_TIMEOUT`].
const SWEEP: Duration = Duration::from_secs(15);

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// No connection: nothing reached the origin.
    Connect(String),
    /// The exchange on a connection failed.
    Send(H1Error),
    /// The client's request body failed.
    Upload(BodyError),
    /// No response head within the first-byte timeout.
    Late,
}

/// The connections of one plain-HTTP origin.
pub(crate) struct Http1Pool {
    target: Uri,
    host: Option<HeaderValue>,
    connector: HttpConnector,
    kept: PerThread<Arc<Idle>>,
    idle_timeout: Duration,
    /// Longest the origin may take no bytes of a request.
    stall: Duration,
    /// Longest from a request's end to its response head (the site's `first_byte_timeout`).
    first_byte: Duration,
}

impl Http1Pool {
    /// For `target` (`http://host:port`), connecting with `connector`; a request fails when
    /// the origin takes none of its bytes for `stall`, or sends no response head for
    /// `first_byte` after it.
    pub(crate) fn new(
        target: Uri,
        connector: HttpConnector,
        stall: Duration,
        first_byte: Duration,
    ) -> Http1Pool {
        Http1Pool::with_idle_timeout(target, connector, stall, first_byte, IDLE_TIMEOUT)
    }

    fn with_idle_timeout(
        target: Uri,
        connector: HttpConnector,
        stall: Duration,
        first_byte: Duration,
        idle_timeout: Duration,
    ) -> Http1Pool {
        let host = target
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        Http1Pool {
            target,
            host,
            connector,
            kept: PerThread::new(Arc::default),
            idle_timeout,
            stall,
            first_byte,
        }
    }

    /// Sends the request of head `parts` (its target is taken as origin-form) and `body`, and
    /// returns the response head; the body streams from the connection.
    /// `lines`: see [`h1::exchange`]; a request without `Host` (the handler always sets one)
    /// gets the origin's authority, as hyper-util's client does.
    pub(crate) async fn send(
        &self,
        parts: &Parts,
        mut body: Body,
        lines: Lines<'_>,
    ) -> Result<Response<ResponseBody>, PoolError> {
        let lines = match (lines.host, &self.host) {
            (None, Some(h)) if !parts.headers.contains_key(header::HOST) => Lines {
                host: Some(h),
                ..lines
            },
            _ => lines,
        };
        let list = self.kept.get();
        let swept = &list.swept;
        // A load on every request, the swap (a locked write) only until it is set.
        if !swept.load(Ordering::Relaxed) && !swept.swap(true, Ordering::Relaxed) {
            // On the runtime of the thread whose list it is.
            let every = self.idle_timeout.min(SWEEP);
            tokio::spawn(sweep_idle(Arc::downgrade(list), self.idle_timeout, every));
        }
        let mut reused = self.checkout(list);
        loop {
            let (conn, was_reused) = match reused.take() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            let home = Arc::downgrade(list);
            let first_byte = self.first_byte;
            match h1::exchange(conn, parts, &mut body, was_reused, home, lines, first_byte).await {
                Ok(resp) => return Ok(resp),
                // Not taken: the connection had closed while idle. Once more, on a new one.
                Err(Failure::Unsent(_)) if was_reused => {}
                Err(Failure::Failed(H1Error::Late)) => return Err(PoolError::Late),
                Err(Failure::Unsent(e) | Failure::Failed(e)) => return Err(PoolError::Send(e)),
                Err(Failure::Upload(e)) => return Err(PoolError::Upload(e)),
            }
        }
    }

    /// The most recent usable idle connection; the ones passed over (closed by the origin, or
    /// idle too long) are dropped.
    fn checkout(&self, list: &Idle) -> Option<Conn> {
        let mut conns = list.lock();
        let now = Instant::now();
        while let Some(k) = conns.pop_back() {
            if now.duration_since(k.since) < self.idle_timeout && k.conn.is_usable() {
                return Some(k.conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, PoolError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| PoolError::Connect(crate::origin::error_chain(&e)))?;
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(|e| PoolError::Connect(crate::origin::error_chain(&e)))?;
        Ok(h1::ConnState::new(io.into_inner(), self.stall))
    }

    /// Idle connections this thread keeps (tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.kept.get().lock().len()
    }
}

/// Drops the connections idle for `timeout` (or closed by the origin), every `every`, until the
/// list is gone.
async fn sweep_idle(list: Weak<Idle>, timeout: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(list) = list.upgrade() else { return };
        let now = Instant::now();
        list.lock()
            .retain(|k| now.duration_since(k.since) < timeout && k.conn.is_usable());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An origin that answers every request on a connection with `ok` after `delay`, counting
    /// connections; with `one_each`, it closes each connection after its first answer (without
    /// saying so). `GET /hold` gets an answer whose body never ends.
    async fn origin(one_each: bool, delay: Duration) -> (Uri, Arc<AtomicUsize>) {
        listen(move |mut s| async move {
            let mut buf = vec![0u8; 4096];
            let mut have = 0;
            while let Ok(n @ 1..) = s.read(&mut buf[have..]).await {
                have += n;
                while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    let hold = buf.starts_with(b"GET /hold ");
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                    tokio::time::sleep(delay).await;
                    if hold {
                        // A body that never ends: the connection stays busy.
                        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok";
                        let _ = s.write_all(head).await;
                        std::future::pending::<()>().await;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(answer).await.is_err() || one_each {
                        return;
                    }
                }
            }
        })
        .await
    }

    /// A listener whose connections `serve` runs, counting them.
    async fn listen<F, Fut>(serve: F) -> (Uri, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s));
            }
        });
        (format!("http://{addr}").parse().unwrap(), conns)
    }

    /// An origin that answers the `n`th request of each connection (from 0) with `answer(n)`,
    /// counting connections.
    async fn scripted(answer: fn(usize) -> &'static [u8]) -> (Uri, Arc<AtomicUsize>) {
        scripted_after(answer, |_| Duration::ZERO).await
    }

    /// [`scripted`], each answer `delay(n)` after its request.
    async fn scripted_after(
        answer: fn(usize) -> &'static [u8],
        delay: fn(usize) -> Duration,
    ) -> (Uri, Arc<AtomicUsize>) {
        listen(move |mut s| async move {
            let mut buf = vec![0u8; 4096];
            let (mut have, mut n) = (0, 0);
            while let Ok(got @ 1..) = s.read(&mut buf[have..]).await {
                have += got;
                while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                    if !delay(n).is_zero() {
                        tokio::time::sleep(delay(n)).await;
                    }
                    if s.write_all(answer(n)).await.is_err() {
                        return;
                    }
                    n += 1;
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn an_origin_that_sends_more_than_it_said_never_answers_the_next_request() {
        // The first answer on each connection carries a second one after its end: reused, the
        // connection would hand it to the next request (a poisoned cache entry).
        let (target, conns) = scripted(|n| match n {
            0 => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nPOISON",
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        })
        .await;
        let pool = pool(target);
        for _ in 0..3 {
            assert_eq!(
                read(
                    pool.send(&get("/x"), Body::empty(), Lines::default())
                        .await
                        .unwrap()
                )
                .await,
                b"ok"
            );
            // Bounded: let a late second answer arrive on the idle connection too.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_chunked_answer_leaves_its_connection_ready_for_the_next() {
        let (target, conns) = scripted(|n| match n % 2 {
            0 => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nx-sum: 1\r\n\r\n",
            _ => b"HTTP/1.1 204 No Content\r\n\r\n",
        })
        .await;
        let pool = pool(target);
        for i in 0..6 {
            let body = read(
                pool.send(&get("/x"), Body::empty(), Lines::default())
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(body, if i % 2 == 0 { &b"ok"[..] } else { b"" });
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn endless_interim_answers_are_an_error_not_a_wait() {
        // 1xx heads count toward the head limit: past 64 KiB of them the exchange fails (the
        // origin sends no final answer; without the count this waits for one).
        static INTERIM: std::sync::LazyLock<Vec<u8>> =
            std::sync::LazyLock::new(|| b"HTTP/1.1 100 Continue\r\n\r\n".repeat(4000));
        let (target, _) = scripted(|_| &INTERIM[..]).await;
        let pool = pool(target);
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            pool.send(&get("/x"), Body::empty(), Lines::default()),
        )
        .await;
        match sent.expect("still waiting after 5 s") {
            Err(PoolError::Send(e)) => assert!(e.to_string().contains("64 KiB"), "{e}"),
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }

    #[tokio::test]
    async fn each_request_on_a_kept_connection_has_its_own_first_byte_time() {
        // The timer is the connection's, moved on for each request: one that ran out while the
        // connection was idle fails no later request, and a later request that gets no answer
        // still ends at its own time.
        let (target, conns) = scripted_after(
            |_| b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            |n| match n {
                0 => Duration::ZERO,
                1 => Duration::from_millis(50),
                // No answer: the connection stays open, bounded by the test's end.
                _ => Duration::from_secs(30),
            },
        )
        .await;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let limit = Duration::from_millis(300);
        let pool = Http1Pool::new(target, http, Duration::from_secs(30), limit);
        let body = read(
            pool.send(&get("/x"), Body::empty(), Lines::default())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(body, b"ok");
        // Idle past the first request's first-byte time.
        tokio::time::sleep(limit * 2).await;
        let body = read(
            pool.send(&get("/x"), Body::empty(), Lines::default())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(body, b"ok");
        let start = Instant::now();
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            pool.send(&get("/x"), Body::empty(), Lines::default()),
        )
        .await;
        match sent.expect("still waiting after 5 s") {
            Err(PoolError::Late) => {}
            other => panic!("{:?}", other.map(|r| r.status())),
        }
        assert!(start.elapsed() >= limit, "{:?}", start.elapsed());
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_holds_no_waker_of_the_task_that_used_it() {
        // A waker held keeps its task's memory from being freed after the task ends: the
        // connection's first-byte timer, polled while the head was awaited, must let go of it
        // once the head is read, not when it fires a first-byte timeout later.
        struct Counted(std::task::Waker);
        impl std::task::Wake for Counted {
            fn wake(self: Arc<Self>) {
                self.0.wake_by_ref();
            }
            fn wake_by_ref(self: &Arc<Self>) {
                self.0.wake_by_ref();
            }
        }
        let (target, _) = origin(false, Duration::from_millis(20)).await;
        let pool = pool(target);
        let mut counted: Option<Arc<Counted>> = None;
        let head = get("/x");
        let sent = pool.send(&head, Body::empty(), Lines::default());
        tokio::pin!(sent);
        let resp = std::future::poll_fn(|cx| {
            let task = counted.get_or_insert_with(|| Arc::new(Counted(cx.waker().clone())));
            let waker = std::task::Waker::from(task.clone());
            std::future::Future::poll(sent.as_mut(), &mut std::task::Context::from_waker(&waker))
        })
        .await
        .unwrap();
        assert_eq!(read(resp).await, b"ok");
        assert_eq!(pool.kept(), 1);
        let task = counted.expect("polled");
        assert_eq!(
            Arc::strong_count(&task),
            1,
            "a waker of the task is still held"
        );
    }

    fn get(path: &str) -> Parts {
        http::Request::get(path)
            .header(header::HOST, "a.test")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    async fn read(resp: Response<ResponseBody>) -> Vec<u8> {
        use http_body_util::BodyExt;
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    fn pool(target: Uri) -> Http1Pool {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Http1Pool::new(
            target,
            http,
            Duration::from_secs(30),
            Duration::from_secs(30),
        )
    }

    #[tokio::test]
    async fn one_connection_serves_requests_one_after_another() {
        let (target, conns) = origin(false, Duration::ZERO).await;
        let pool = pool(target);
        for _ in 0..20 {
            let resp = pool
                .send(&get("/x"), Body::empty(), Lines::default())
                .await
                .unwrap();
            assert_eq!(read(resp).await, b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(pool.kept(), 1);
    }

    #[tokio::test]
    async fn a_request_that_says_close_leaves_its_connection_out_of_the_pool() {
        let (target, conns) = origin(false, Duration::ZERO).await;
        let pool = pool(target);
        let mut closing = get("/x");
        closing.headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Close"),
        );
        let resp = pool
            .send(&closing, Body::empty(), Lines::default())
            .await
            .unwrap();
        assert_eq!(read(resp).await, b"ok");
        assert_eq!(
            pool.kept(),
            0,
            "a connection its request closes is not kept"
        );
        let resp = pool
            .send(&get("/x"), Body::empty(), Lines::default())
            .await
            .unwrap();
        assert_eq!(read(resp).await, b"ok");
        assert_eq!((conns.load(Ordering::SeqCst), pool.kept()), (2, 1));
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_all_are_kept() {
        // Answers take 100 ms: eight requests at once need eight connections.
        let (target, conns) = origin(false, Duration::from_millis(100)).await;
        let pool = Arc::new(pool(target));
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let pool = pool.clone();
            all.spawn(async move {
                read(
                    pool.send(&get("/x"), Body::empty(), Lines::default())
                        .await
                        .unwrap(),
                )
                .await
            });
        }
        while let Some(body) = all.join_next().await {
            assert_eq!(body.unwrap(), b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 8);
        assert_eq!(pool.kept(), 8);
        // Idle again: the next ones reuse them.
        for _ in 0..8 {
            assert_eq!(
                read(
                    pool.send(&get("/x"), Body::empty(), Lines::default())
                        .await
                        .unwrap()
                )
                .await,
                b"ok"
            );
        }
        assert_eq!(conns.load(Ordering::SeqCst), 8);
    }

    #[tokio::test]
    async fn a_connection_the_origin_closed_is_not_used_again() {
        // The origin closes each connection after one answer without `Connection: close`:
        // every request must still be answered, on a new connection (found closed at checkout,
        // or found out when it could not take the request).
        let (target, conns) = origin(true, Duration::ZERO).await;
        let pool = pool(target);
        for _ in 0..20 {
            let resp = pool
                .send(&get("/x"), Body::empty(), Lines::default())
                .await
                .unwrap();
            assert_eq!(read(resp).await, b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn a_connection_goes_back_once_its_body_has_ended_and_not_before() {
        let (target, conns) = origin(false, Duration::ZERO).await;
        let pool = pool(target);
        let unread = pool
            .send(&get("/x"), Body::empty(), Lines::default())
            .await
            .unwrap();
        // Its body not read yet: the next request needs a connection of its own.
        assert_eq!(pool.kept(), 0);
        assert_eq!(
            read(
                pool.send(&get("/x"), Body::empty(), Lines::default())
                    .await
                    .unwrap()
            )
            .await,
            b"ok"
        );
        assert_eq!((conns.load(Ordering::SeqCst), pool.kept()), (2, 1));
        assert_eq!(read(unread).await, b"ok");
        assert_eq!(pool.kept(), 2);
        // A body dropped before its end (8 of its 10 bytes never came) closes its connection.
        let held = pool
            .send(&get("/hold"), Body::empty(), Lines::default())
            .await
            .unwrap();
        assert_eq!(pool.kept(), 1);
        drop(held);
        assert_eq!(pool.kept(), 1);
        for _ in 0..4 {
            assert_eq!(
                read(
                    pool.send(&get("/x"), Body::empty(), Lines::default())
                        .await
                        .unwrap()
                )
                .await,
                b"ok"
            );
        }
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let (target, conns) = origin(false, Duration::ZERO).await;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let pool = Http1Pool::with_idle_timeout(
            target,
            http,
            Duration::from_secs(30),
            Duration::from_secs(30),
            Duration::from_millis(100),
        );
        assert_eq!(
            read(
                pool.send(&get("/x"), Body::empty(), Lines::default())
                    .await
                    .unwrap()
            )
            .await,
            b"ok"
        );
        assert_eq!(pool.kept(), 1);
        // The sweep runs every 100 ms here; bounded wait.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.kept() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.kept(), 0);
        assert_eq!(
            read(
                pool.send(&get("/x"), Body::empty(), Lines::default())
                    .await
                    .unwrap()
            )
            .await,
            b"ok"
        );
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_origin_that_refuses_is_a_connect_error() {
        // Bound but never listening, and held: a port closed again could be taken by a server
        // of a test running beside this one.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let pool = pool(format!("http://{addr}").parse().unwrap());
        assert!(matches!(
            pool.send(&get("/x"), Body::empty(), Lines::default()).await,
            Err(PoolError::Connect(_))
        ));
    }
}
