//! Connections to a plain-HTTP origin: HTTP/1.1 over hyper's connection API, kept in a list per
//! HTTP thread.
//!
//! hyper-util's pooled client (which HTTPS origins still use, for ALPN and HTTP/2) costs about
//! 13,000 instructions a request more than this on the same hyper connection (callgrind,
//! `examples/bare_proxy.rs` in its two modes: 44,500 against 31,400 per forwarded 1 KiB
//! answer): a pool keyed by a SipHash of scheme and authority, looked up twice a request, a
//! select between checkout and connect, a boxed future, and a task per request that waits for
//! the connection to be idle again before it goes back.
//!
//! Here a connection goes back to its thread's list as soon as its response head is in, still
//! busy with the body; a checkout takes the most recent one that is ready (hyper's
//! `is_ready`: idle and waiting for a request), moves busy ones it passes to the front and
//! drops closed ones. The same rules as hyper-util's otherwise:
//!
//! - A request that a reused connection could not take (it closed while idle: the keep-alive
//!   race with an origin's idle timeout) is sent again on a new connection. One that was
//!   written is never sent again.
//! - At most [`MAX_KEPT`] connections a thread, busy or idle; one idle for [`IDLE_TIMEOUT`] is
//!   closed (a sweep every [`SWEEP`] on the thread that keeps it).
//! - Connecting is hyper-util's `HttpConnector` (name resolution, connect timeout, the
//!   addresses of a name in turn, `TCP_NODELAY`, keep-alive probes).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use http::uri::{PathAndQuery, Uri};
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::http::body::Body;
use crate::http::server::PerThread;

/// Connections a thread keeps for one origin, busy or idle.
pub(crate) const MAX_KEPT: usize = 1024;
/// An idle connection is closed after this long (hyper-util's default, which this replaces).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often a thread's idle connections are checked against [`IDLE_TIMEOUT`].
const SWEEP: Duration = Duration::from_secs(15);
/// Connections a checkout looks at, newest first, before it opens a new one.
const LOOK: usize = 32;

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// No connection: nothing reached the origin.
    Connect(String),
    /// The exchange on a connection failed.
    Send(hyper::Error),
}

struct Kept {
    send: SendRequest<Body>,
    /// When it last went back to the list.
    since: Instant,
}

/// A thread's connections, and whether their sweep has been started (by the first request
/// sent on that thread, in its runtime).
#[derive(Default)]
struct List {
    conns: Mutex<VecDeque<Kept>>,
    swept: std::sync::atomic::AtomicBool,
}

/// The connections of one plain-HTTP origin.
pub(crate) struct Http1Pool {
    target: Uri,
    host: Option<HeaderValue>,
    connector: HttpConnector,
    kept: PerThread<Arc<List>>,
    idle_timeout: Duration,
}

fn lock(m: &Mutex<VecDeque<Kept>>) -> MutexGuard<'_, VecDeque<Kept>> {
    // Every change is a whole push or remove: a panic while held leaves a valid list.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Http1Pool {
    /// For `target` (`http://host:port`), connecting with `connector`.
    pub(crate) fn new(target: Uri, connector: HttpConnector) -> Http1Pool {
        Http1Pool::with_idle_timeout(target, connector, IDLE_TIMEOUT)
    }

    fn with_idle_timeout(
        target: Uri,
        connector: HttpConnector,
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
        }
    }

    /// Sends `req` (its target is taken as origin-form) and returns the response head; the
    /// body streams from the connection.
    pub(crate) async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, PoolError> {
        let mut req = self.origin_form(req);
        let list = self.kept.get();
        let swept = &list.swept;
        // A load on every request, the swap (a locked write) only until it is set.
        if !swept.load(std::sync::atomic::Ordering::Relaxed)
            && !swept.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            // On the runtime of the thread whose list it is.
            let every = self.idle_timeout.min(SWEEP);
            tokio::spawn(sweep_idle(Arc::downgrade(list), self.idle_timeout, every));
        }
        let kept = &list.conns;
        let mut reused = self.checkout(kept);
        loop {
            let (mut send, was_reused) = match reused.take() {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            match send.try_send_request(req).await {
                Ok(resp) => {
                    self.put_back(kept, send);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the connection closed while it was idle. Once more, on a
                    // new one.
                    Some(again) if was_reused => req = again,
                    _ => return Err(PoolError::Send(e.into_error())),
                },
            }
        }
    }

    /// The request as hyper's connection API sends it: origin-form target, and a `Host` field
    /// (the handler always sets one; the origin's authority otherwise, as hyper-util does).
    fn origin_form(&self, mut req: Request<Body>) -> Request<Body> {
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        if !req.headers().contains_key(header::HOST) {
            if let Some(h) = &self.host {
                req.headers_mut().insert(header::HOST, h.clone());
            }
        }
        req
    }

    fn checkout(&self, kept: &Mutex<VecDeque<Kept>>) -> Option<SendRequest<Body>> {
        let mut list = lock(kept);
        let now = Instant::now();
        for _ in 0..LOOK {
            let k = list.pop_back()?;
            if k.send.is_closed() || now.duration_since(k.since) >= self.idle_timeout {
                continue;
            }
            if k.send.is_ready() {
                return Some(k.send);
            }
            // Still busy with a body: to the front, out of the way of the next checkouts, so
            // that connections done with theirs come up instead of waiting below.
            list.push_front(k);
        }
        None
    }

    fn put_back(&self, kept: &Mutex<VecDeque<Kept>>, send: SendRequest<Body>) {
        let mut list = lock(kept);
        if list.len() < MAX_KEPT {
            list.push_back(Kept {
                send,
                since: Instant::now(),
            });
        }
        // Otherwise dropped: its connection closes once its response is read.
    }

    async fn connect(&self) -> Result<SendRequest<Body>, PoolError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| PoolError::Connect(crate::origin::error_chain(&e)))?;
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(|e| PoolError::Connect(crate::origin::error_chain(&e)))?;
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| PoolError::Connect(crate::origin::error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "origin connection ended with an error");
            }
        });
        Ok(send)
    }

    /// Connections this thread keeps (tests).
    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.kept.get().conns).len()
    }
}

/// Drops the connections idle for `timeout`, every `every`, until the list is gone.
async fn sweep_idle(list: Weak<List>, timeout: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(list) = list.upgrade() else { return };
        let now = Instant::now();
        lock(&list.conns).retain(|k| {
            let idle_too_long = k.send.is_ready() && now.duration_since(k.since) >= timeout;
            !(k.send.is_closed() || idle_too_long)
        });
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = 0;
                    loop {
                        let Ok(n) = s.read(&mut buf[have..]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        have += n;
                        while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n")
                        {
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
                            if s.write_all(answer).await.is_err() {
                                return;
                            }
                            if one_each {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}").parse().unwrap(), conns)
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path)
            .header(header::HOST, "a.test")
            .body(Body::empty())
            .unwrap()
    }

    async fn read(resp: Response<Incoming>) -> Vec<u8> {
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
        Http1Pool::new(target, http)
    }

    #[tokio::test]
    async fn one_connection_serves_requests_one_after_another() {
        let (target, conns) = origin(false, Duration::ZERO).await;
        let pool = pool(target);
        for _ in 0..20 {
            let resp = pool.send(get("/x")).await.unwrap();
            assert_eq!(read(resp).await, b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(pool.kept(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_all_are_kept() {
        // Answers take 100 ms: eight requests at once need eight connections.
        let (target, conns) = origin(false, Duration::from_millis(100)).await;
        let pool = Arc::new(pool(target));
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let pool = pool.clone();
            all.spawn(async move { read(pool.send(get("/x")).await.unwrap()).await });
        }
        while let Some(body) = all.join_next().await {
            assert_eq!(body.unwrap(), b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 8);
        assert_eq!(pool.kept(), 8);
        // Idle again: the next ones reuse them.
        for _ in 0..8 {
            assert_eq!(read(pool.send(get("/x")).await.unwrap()).await, b"ok");
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
            let resp = pool.send(get("/x")).await.unwrap();
            assert_eq!(read(resp).await, b"ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn an_idle_connection_below_many_busy_ones_comes_up() {
        // One idle connection under 40 busy ones (answers whose bodies never end): a checkout
        // looks at 32, finds none and moves them to the front; the next finds the idle one.
        let (target, conns) = origin(false, Duration::ZERO).await;
        let pool = pool(target);
        assert_eq!(read(pool.send(get("/x")).await.unwrap()).await, b"ok");
        let kept = &pool.kept.get().conns;
        let mut held = Vec::new();
        for _ in 0..40 {
            let mut send = pool.connect().await.unwrap();
            held.push(send.try_send_request(get("/hold")).await.unwrap());
            pool.put_back(kept, send);
        }
        assert_eq!(pool.kept(), 41);
        assert!(pool.checkout(kept).is_none());
        assert!(pool.checkout(kept).is_some());
        assert_eq!(conns.load(Ordering::SeqCst), 41);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_idle_timeout() {
        let (target, conns) = origin(false, Duration::ZERO).await;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let pool = Http1Pool::with_idle_timeout(target, http, Duration::from_millis(100));
        assert_eq!(read(pool.send(get("/x")).await.unwrap()).await, b"ok");
        assert_eq!(pool.kept(), 1);
        // The sweep runs every 100 ms here; bounded wait.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.kept() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.kept(), 0);
        assert_eq!(read(pool.send(get("/x")).await.unwrap()).await, b"ok");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_origin_that_refuses_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = pool(format!("http://{addr}").parse().unwrap());
        assert!(matches!(
            pool.send(get("/x")).await,
            Err(PoolError::Connect(_))
        ));
    }
}
