//! Answers that wait on their client, watched stream by stream (hyper's connections: HTTP/2,
//! and HTTP/1.1 once hyper has it).
//!
//! hyper polls an answer's body only when it can send what it gets; over HTTP/2, only when the
//! stream's window has room. A client that never opens a stream's window, and keeps its
//! connection alive with pings (whose acknowledgements are bytes moving, so the connection's
//! own timeouts never fire), would hold such an answer for as long as the connection lived,
//! and with it what the body holds: an origin connection and its slot, a fill's chunks, a disk
//! read. Stored bytes too: hyper takes a whole stored body at once and keeps, out of reach,
//! what the stream's window holds back, so 256 streams of 1 MiB answers read back from disk
//! stayed in memory for as long as the pings came. So every answer whose body holds more than
//! stored bytes, or more than [`WATCHED`] of them (then given to hyper a [`PIECE`] at a time),
//! is registered with its connection ([`Stalls`]). Its clock runs while it waits on the client (from when it is
//! handed to hyper, and from each frame it gives), and stops while it waits on its source
//! (an origin that is slow is the origin timeouts' business). The connection's watcher lets go
//! of the body of an answer that has waited on its client for `send_timeout`: what it held is
//! freed at once, and the stream fails (reset) if hyper ever polls it again. The other
//! streams of the connection go on. (HTTP/3 does the same in `quic`; `direct` writes its own
//! answers, and a client that reads none of one moves no byte at all.)

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

use super::body::{Body, BodyError};

/// Stored bodies longer than this are watched. Shorter ones are handed over whole, as before:
/// watching costs a 100 KiB hit over HTTP/2 about 7% more CPU (an allocation, a lock per poll,
/// a poll per piece), and 256 streams of them hold at most 64 MiB of stored bytes.
const WATCHED: usize = 256 * 1024;

/// What a watched stored body is handed to hyper at a time.
const PIECE: usize = 64 * 1024;

/// The watched answers of one connection.
#[derive(Debug)]
pub(super) struct Stalls {
    opened: Instant,
    held: Mutex<Vec<Weak<Held>>>,
}

/// An answer's body, shared with its connection's watcher.
#[derive(Debug)]
pub(super) struct Held {
    /// `None` once let go.
    body: Mutex<Option<Body>>,
    /// Milliseconds after [`Stalls::opened`], plus one, since which the answer has waited on
    /// its client; 0 while it waits on its source.
    since: std::sync::atomic::AtomicU64,
}

impl Held {
    fn body(&self) -> MutexGuard<'_, Option<Body>> {
        // cannot fail in practice: nothing panics under this lock; recover the guard anyway.
        self.body.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A body as hyper sends it: stored bytes as they are, anything else watched.
#[derive(Debug)]
pub(super) enum Sent {
    Plain(Body),
    Held { held: Arc<Held>, opened: Instant },
}

impl Stalls {
    pub(super) fn new(opened: Instant) -> Stalls {
        Stalls {
            opened,
            held: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }

    /// `body`, registered if it holds more than stored bytes, or more than [`WATCHED`] of them.
    pub(super) fn watch(&self, body: Body) -> Sent {
        if let Body::Full(b) = &body {
            if b.as_ref().is_none_or(|b| b.len() <= WATCHED) {
                return Sent::Plain(body);
            }
        }
        let held = Arc::new(Held {
            body: Mutex::new(Some(body)),
            since: self.now().into(),
        });
        let mut list = self.held.lock().unwrap_or_else(|e| e.into_inner());
        // Those done with go as others come, so the list is as long as the answers under way.
        if list.len() >= 8 && list.len().is_power_of_two() {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(Arc::downgrade(&held));
        drop(list);
        Sent::Held {
            held,
            opened: self.opened,
        }
    }

    /// Lets go of the bodies of answers that have waited on their client for `limit`; how
    /// many there were.
    pub(super) fn let_go(&self, limit: Duration) -> usize {
        let now = self.now();
        let limit = limit.as_millis() as u64;
        let mut stalled = Vec::new();
        {
            let mut list = self.held.lock().unwrap_or_else(|e| e.into_inner());
            if list.is_empty() {
                return 0;
            }
            list.retain(|w| {
                let Some(held) = w.upgrade() else {
                    return false;
                };
                let since = held.since.load(std::sync::atomic::Ordering::Relaxed);
                if since != 0 && now.saturating_sub(since) >= limit {
                    stalled.push(held);
                    return false;
                }
                true
            });
        }
        // Dropped outside the list's lock: an origin body's drop may do work of its own.
        for held in &stalled {
            let body = held.body().take();
            drop(body);
        }
        stalled.len()
    }
}

impl http_body::Body for Sent {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Sent::Plain(body) => Pin::new(body).poll_frame(cx),
            Sent::Held { held, opened } => {
                let mut body = held.body();
                let Some(b) = body.as_mut() else {
                    return Poll::Ready(Some(Err(BodyError::ClientStalled)));
                };
                let next = match b {
                    Body::Full(Some(bytes)) if bytes.len() > PIECE => {
                        Poll::Ready(Some(Ok(Frame::data(bytes.split_to(PIECE)))))
                    }
                    b => Pin::new(b).poll_frame(cx),
                };
                // A frame given: from now it waits on the client to take it. Anything else:
                // waiting on its source, or done.
                let since = match next {
                    Poll::Ready(Some(Ok(_))) => opened.elapsed().as_millis() as u64 + 1,
                    _ => 0,
                };
                held.since
                    .store(since, std::sync::atomic::Ordering::Relaxed);
                next
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Sent::Plain(body) => body.is_end_stream(),
            // Let go: not ended, so that hyper polls it and fails the stream.
            Sent::Held { held, .. } => held.body().as_ref().is_some_and(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Sent::Plain(body) => body.size_hint(),
            Sent::Held { held, .. } => held
                .body()
                .as_ref()
                .map_or_else(SizeHint::default, |b| b.size_hint()),
        }
    }
}
