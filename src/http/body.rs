//! The one body type of the edge: a whole body from the cache, a stream from the other end (a
//! client's upload, an origin's response), or a reader of a response being filled into the
//! cache (see `cache::fill`).
//!
//! Used for responses to clients and for requests to origins, so no boxing on the hit path.
//! A stream is bounded in time: when the next frame does not come within its idle timeout the
//! body fails (an upload: the origin request is abandoned and the client gets 408; a
//! download: the client's response is aborted, never ended cleanly). A failure says which end
//! caused it ([`BodyError`]), so a client's broken upload is never counted against the origin.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::framing::BodyFault;
use super::headers::PassHead;
use crate::cache::disk::{ChunkMissing, DiskTail};
use crate::cache::fill::{FillFailed, Tail};

/// Why a streamed body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The client's request body broke off or was malformed.
    #[error("the client's request body failed: {0}")]
    Client(String),
    /// The client sent nothing for longer than the upload idle timeout.
    #[error("the client sent no request body bytes for {0:?}")]
    ClientTimeout(Duration),
    /// The origin's response body broke off.
    #[error("the origin's response body failed: {0}")]
    Origin(RecvError),
    /// The origin sent nothing for longer than its read timeout.
    #[error("the origin sent no body bytes for {0:?}")]
    OriginTimeout(Duration),
    /// The shared fill this response was reading failed (its origin body broke off).
    #[error(transparent)]
    Fill(#[from] FillFailed),
    /// A chunk of a body on disk went missing after the response began.
    #[error(transparent)]
    Disk(#[from] ChunkMissing),
    /// The answer waited on its client for `send_timeout` and was let go (`stall`).
    #[error("the client took nothing of the answer for send_timeout")]
    ClientStalled,
}

impl BodyError {
    /// The body error somewhere in an error's chain of sources, if any.
    pub(crate) fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
        let mut next = Some(e);
        while let Some(err) = next {
            if let Some(b) = err.downcast_ref::<BodyError>() {
                return Some(b);
            }
            next = err.source();
        }
        None
    }
}

/// A response or request body.
#[derive(Debug)]
pub(crate) enum Body {
    /// A complete body (a cache hit, a generated response); `None` once sent.
    Full(Option<Bytes>),
    /// A body still arriving from the other end.
    Stream(crate::reuse::Reused<Streaming>),
    /// A body being filled into the cache, read as it arrives (shared with other clients).
    Fill(Box<Tail>),
    /// A stored body on disk, read a chunk at a time.
    Disk(Box<DiskTail>),
}

/// A client's request body: from hyper (HTTP/1.1 and HTTP/2), from an HTTP/3 request stream,
/// read whole with its head by the edge itself (`direct`: a short `Content-Length` body), or
/// none.
#[derive(Debug)]
pub(crate) enum RequestBody {
    Hyper(Incoming),
    H3(Box<super::quic::RecvBody>),
    /// Never empty (an empty body is `Empty`).
    Whole(Bytes),
    Empty,
}

/// An origin's response body: from hyper's client (HTTPS origins, peers) or from a connection
/// of the edge's own (plain-HTTP origins, `h1`), holding its site's origin request slot (see
/// `origin::Origins`) until it ends, fails or is dropped.
#[derive(Debug)]
pub(crate) struct OriginBody {
    from: FromOrigin,
    slot: Option<crate::origin::Slot>,
}

#[derive(Debug)]
enum FromOrigin {
    Hyper(Incoming),
    Plain(crate::h1::ResponseBody),
}

impl OriginBody {
    pub(crate) fn hyper(body: Incoming) -> OriginBody {
        OriginBody {
            from: FromOrigin::Hyper(body),
            slot: None,
        }
    }

    pub(crate) fn plain(body: crate::h1::ResponseBody) -> OriginBody {
        OriginBody {
            from: FromOrigin::Plain(body),
            slot: None,
        }
    }

    /// A pass-through's fields, where they came as lines (`h1::exchange`).
    fn pass_head(&mut self) -> Option<&mut PassHead> {
        match &mut self.from {
            FromOrigin::Plain(b) => b.pass_head(),
            FromOrigin::Hyper(_) => None,
        }
    }

    /// The body, holding `slot` until it is done with.
    pub(crate) fn holding(mut self, slot: crate::origin::Slot) -> OriginBody {
        self.slot = Some(slot);
        self
    }
}

/// Why a request body or an origin's response body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecvError {
    #[error(transparent)]
    Hyper(hyper::Error),
    #[error("{0}")]
    H3(String),
    #[error(transparent)]
    Plain(crate::h1::H1Error),
}

impl http_body::Body for OriginBody {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        let this = self.get_mut();
        let polled = match &mut this.from {
            FromOrigin::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(RecvError::Hyper),
            FromOrigin::Plain(b) => Pin::new(b).poll_frame(cx).map_err(RecvError::Plain),
        };
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Done with the origin: the slot is free for another request.
            this.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.from {
            FromOrigin::Hyper(b) => b.is_end_stream(),
            FromOrigin::Plain(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.from {
            FromOrigin::Hyper(b) => b.size_hint(),
            FromOrigin::Plain(b) => b.size_hint(),
        }
    }
}

/// The other end of a stream: a client's upload or an origin's download.
// An origin's is the larger (a pass-through's header lines ride in it); both live in the one
// allocation of their `Streaming`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Rest {
    Client(RequestBody),
    Origin(OriginBody),
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = RecvError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(RecvError::Hyper),
            RequestBody::H3(b) => b.poll_frame(cx).map_err(RecvError::H3),
            this @ RequestBody::Whole(_) => match std::mem::replace(this, RequestBody::Empty) {
                RequestBody::Whole(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                _ => Poll::Ready(None),
            },
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::H3(b) => b.is_end_stream(),
            RequestBody::Whole(_) => false,
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::H3(b) => b.size_hint(),
            RequestBody::Whole(b) => SizeHint::with_exact(b.len() as u64),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A body arriving from a client or an origin.
#[derive(Debug)]
pub(crate) struct Streaming {
    rest: Rest,
    /// Longest wait for the next frame.
    idle: Duration,
    /// Armed while a wait is under way (reset when a frame arrives), so time spent while the
    /// reader was not asking (a slow client's back-pressure) never counts.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Told when the body ends, fails or is dropped: the origin client's cue that the upload is
    /// over.
    done: Option<oneshot::Sender<()>>,
    /// A framing fault the connection's guard found in this request's body bytes (chunk
    /// sizes and extensions hyper accepts but other parsers read differently).
    fault: Option<(Arc<BodyFault>, u64)>,
}

impl Body {
    /// The fields of a pass-through from a plain-HTTP origin, as lines, when its client is
    /// answered by the edge's own HTTP/1.1 server (see `PassHead`): they ride with the body
    /// from the origin's connection to the server's.
    pub(crate) fn pass_head(&mut self) -> Option<&mut PassHead> {
        match self {
            Body::Stream(s) => match &mut s.rest {
                Rest::Origin(o) => o.pass_head(),
                Rest::Client(_) => None,
            },
            _ => None,
        }
    }

    pub(crate) fn empty() -> Body {
        Body::Full(None)
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Full(None)
        } else {
            Body::Full(Some(bytes))
        }
    }

    fn streaming(rest: Rest, idle: Duration) -> Body {
        Body::Stream(crate::reuse::Reused::new(|| Streaming {
            rest,
            idle,
            timer: None,
            armed: false,
            done: None,
            fault: None,
        }))
    }

    /// A client's request body on its way to an origin, failing after `idle` without a byte.
    /// One the edge already holds whole is sent as it is (with its head, and again on a new
    /// connection if the first had closed while idle: `h1::exchange`).
    pub(crate) fn upload(rest: RequestBody, idle: Duration) -> Body {
        match rest {
            RequestBody::Whole(b) => Body::full(b),
            RequestBody::Empty => Body::empty(),
            rest => Body::streaming(Rest::Client(rest), idle),
        }
    }

    /// An origin's response body on its way to a client (or the cache), failing after `idle`
    /// without a byte.
    pub(crate) fn download(rest: OriginBody, idle: Duration) -> Body {
        Body::streaming(Rest::Origin(rest), idle)
    }

    /// A reader of a body being filled.
    pub(crate) fn fill(tail: Tail) -> Body {
        Body::Fill(Box::new(tail))
    }

    /// Makes what this body reads from the disk tier count against `client`'s share of the
    /// read room (`cache::disk`); `None` (a peer's request) counts against the room alone.
    pub(crate) fn held_for(&mut self, client: Option<std::net::IpAddr>) {
        match self {
            Body::Disk(tail) => tail.client = client,
            Body::Fill(tail) => tail.client = client,
            Body::Full(_) | Body::Stream(_) => {}
        }
    }

    /// Attaches the connection's body-fault watch for request number `index`.
    pub(crate) fn watch_fault(mut self, fault: Option<(Arc<BodyFault>, u64)>) -> Body {
        if let Body::Stream(s) = &mut self {
            s.fault = fault;
        }
        self
    }

    /// For a streamed body: a receiver told when it has been read to its end (or failed, or
    /// was dropped). `None` for a complete body.
    pub(crate) fn on_done(&mut self) -> Option<oneshot::Receiver<()>> {
        match self {
            Body::Full(_) | Body::Fill(_) | Body::Disk(_) => None,
            Body::Stream(s) => {
                let (tx, rx) = oneshot::channel();
                s.done = Some(tx);
                Some(rx)
            }
        }
    }
}

impl Streaming {
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done.take();
        Poll::Ready(Some(Err(e)))
    }

    fn faulted(&self) -> Option<&'static str> {
        let (fault, index) = self.fault.as_ref()?;
        fault.get(*index)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let s = match self.get_mut() {
            Body::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Fill(t) => {
                return t
                    .poll_next(cx)
                    .map(|o| o.map(|r| r.map(Frame::data).map_err(BodyError::Fill)))
            }
            Body::Disk(t) => {
                return t
                    .poll_next(cx)
                    .map(|o| o.map(|r| r.map(Frame::data).map_err(BodyError::Disk)))
            }
            Body::Stream(s) => &mut **s,
        };
        let next = match &mut s.rest {
            Rest::Client(b) => Pin::new(b).poll_frame(cx),
            Rest::Origin(b) => Pin::new(b).poll_frame(cx),
        };
        match next {
            Poll::Ready(next) => {
                s.armed = false;
                // The guard saw these bytes before hyper decoded them, so a fault in them is
                // already marked when their frame (or the end) arrives.
                if let Some(why) = s.faulted() {
                    return s.fail(BodyError::Client(why.to_string()));
                }
                match next {
                    Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
                    Some(Err(e)) => s.fail(match s.rest {
                        Rest::Origin(_) => BodyError::Origin(e),
                        Rest::Client(_) => BodyError::Client(e.to_string()),
                    }),
                    None => {
                        s.done.take().map(|tx| tx.send(()));
                        Poll::Ready(None)
                    }
                }
            }
            Poll::Pending => {
                let deadline = Instant::now() + s.idle;
                let timer = s
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !s.armed {
                    timer.as_mut().reset(deadline);
                    s.armed = true;
                }
                if timer.as_mut().poll(cx).is_ready() {
                    let idle = s.idle;
                    return s.fail(match s.rest {
                        Rest::Client(_) => BodyError::ClientTimeout(idle),
                        Rest::Origin(_) => BodyError::OriginTimeout(idle),
                    });
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Fill(t) => t.remaining() == Some(0),
            Body::Disk(t) => t.remaining() == 0,
            Body::Stream(s) => match &s.rest {
                Rest::Client(b) => b.is_end_stream(),
                Rest::Origin(b) => b.is_end_stream(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Fill(t) => t
                .remaining()
                .map_or_else(SizeHint::new, SizeHint::with_exact),
            Body::Disk(t) => SizeHint::with_exact(t.remaining()),
            Body::Stream(s) => match &s.rest {
                Rest::Client(b) => b.size_hint(),
                Rest::Origin(b) => b.size_hint(),
            },
        }
    }
}
