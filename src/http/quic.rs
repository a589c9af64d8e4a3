//! HTTP/3 over QUIC (`[edge.quic]`): the same sites, cache, handler and certificates (chosen
//! by SNI, swapped on reload) as the TLS listeners.
//!
//! quinn runs QUIC on a UDP socket and h3 the HTTP/3 framing over it. Each request stream
//! becomes a `Request<RequestBody>` for [`handle`]; its answer goes back as a HEADERS frame,
//! DATA frames as the body yields them, and a clean end, or a stream reset
//! (`H3_INTERNAL_ERROR`) when the body fails (a broken fill, a missing disk chunk), never a
//! clean end over a cut body. hyper writes `Date` and `Content-Length` itself for HTTP/1.1 and
//! HTTP/2; here [`finish_head`] does.
//!
//! Limits: `max_concurrent_streams` requests open per connection (QUIC stream credit, so a
//! client cannot open more), three unidirectional streams (HTTP/3's control and QPACK streams),
//! the idle timeout, the largest UDP payload, the request head size (QPACK field section,
//! larger heads get 431), the handshake and each request head within `header_read_timeout`,
//! and
//! `edge.max_connections` connections (more are refused with CONNECTION_REFUSED and counted).
//! Past `edge.quic.handshakes_before_retry` handshakes at once, a client whose address is not
//! validated yet is sent a Retry (RFC 9000 §8.1.2) and must come back with its token: a flood
//! of Initial packets from spoofed addresses then costs the edge no handshake state or crypto,
//! only a Retry each (smaller than the Initial, so no amplification); real clients pay a round
//! trip. Retries are counted.
//! On shutdown each connection sends GOAWAY and finishes what it has; new connections are
//! refused meanwhile.
//!
//! 0-RTT is not offered: early data can be replayed by anyone who captured it, and a replayed
//! POST or purge would reach the origin twice. Resumed connections still save a round trip of
//! the certificate exchange (session tickets), as on TCP.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::body::{Body, RequestBody};
use super::handler::{handle, EdgeState, Peer};
use super::tls::{provider, Certificates, SniResolver};
use crate::config::QuicConfig;
use crate::load::LoadCounters;

/// HTTP/3's unidirectional streams: control, QPACK encoder and decoder.
const UNI_STREAMS: u32 = 3;
/// What one connection may make the edge hold, in each direction. quinn's defaults are sized
/// for bulk transfer (a connection-wide upload window without limit, 1.25 MB per stream, so a
/// client with 100 streams could park 125 MB of uploads here while an origin reads slowly; 10 MB
/// of responses buffered unacknowledged); these are close to what hyper's HTTP/2 allows, and
/// still cover a 50 ms path at 300 Mbit/s.
const RECEIVE_WINDOW: u32 = 2 << 20;
const STREAM_RECEIVE_WINDOW: u32 = 1 << 20;
const SEND_WINDOW: u64 = 2 << 20;

type RecvStream = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type SendStream = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// The limits of one QUIC listener.
#[derive(Debug, Clone)]
pub(crate) struct QuicLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_size: usize,
    pub(crate) max_connections: usize,
    pub(crate) handshakes_before_retry: usize,
    /// Longest a response's stream may take none of the bytes it is given (the client
    /// grants no flow-control credit) before it is reset (`edge.send_timeout`).
    pub(crate) send_timeout: Duration,
}

/// A handshake in progress, counted until it ends.
struct Handshaking(Arc<AtomicUsize>);

impl Handshaking {
    fn start(count: &Arc<AtomicUsize>) -> Handshaking {
        count.fetch_add(1, Ordering::Relaxed);
        Handshaking(count.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The TLS side of QUIC: TLS 1.3 only, ALPN `h3`, the listeners' certificates by SNI, session
/// tickets for resumption, no early data.
fn tls_config(certificates: Arc<ArcSwap<Certificates>>) -> Result<rustls::ServerConfig, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certificates)));
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?;
    config.max_early_data_size = 0;
    Ok(config)
}

/// A QUIC endpoint on `socket` (already bound) serving HTTP/3.
pub(crate) fn endpoint(
    socket: UdpSocket,
    quic: &QuicConfig,
    certificates: Arc<ArcSwap<Certificates>>,
) -> Result<quinn::Endpoint, String> {
    let tls = tls_config(certificates)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("TLS for QUIC: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quic.max_concurrent_streams.into())
        .max_concurrent_uni_streams(UNI_STREAMS.into())
        .receive_window(RECEIVE_WINDOW.into())
        .stream_receive_window(STREAM_RECEIVE_WINDOW.into())
        .send_window(SEND_WINDOW)
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(quic.idle_timeout)
                .map_err(|_| "edge.quic.idle_timeout is too long for QUIC".to_string())?,
        ));
    server.transport_config(Arc::new(transport));
    server.migration(true);
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(quic.max_udp_payload)
        .map_err(|e| format!("edge.quic.max_udp_payload: {e}"))?;
    quinn::Endpoint::new(config, Some(server), socket, Arc::new(quinn::TokioRuntime))
        .map_err(|e| e.to_string())
}

/// Binds a UDP socket for `addr`.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    UdpSocket::bind(addr)
}

/// Serves HTTP/3 on `endpoint` until `shutdown` fires; then each connection sends GOAWAY,
/// finishes its open requests and closes (`app` bounds the wait).
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    state: Arc<EdgeState>,
    limits: QuicLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(AtomicUsize::new(0));
    loop {
        let mut incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.cancelled() => break,
        };
        if !incoming.remote_address_validated()
            && handshakes.load(Ordering::Relaxed) >= limits.handshakes_before_retry
        {
            match incoming.retry() {
                Ok(()) => {
                    state.metrics.quic_retried.increment(1);
                    continue;
                }
                // Not allowed for this packet: served as any other.
                Err(e) => incoming = e.into_incoming(),
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            state.metrics.quic_refused.increment(1);
            incoming.refuse();
            continue;
        };
        let state2 = state.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        let handshaking = Handshaking::start(&handshakes);
        state.tasks.spawn(async move {
            let _permit = permit;
            connection(incoming, handshaking, state2, limits, shutdown).await;
        });
    }
    // Draining: open connections finish in their tasks; new ones are refused at once
    // (CONNECTION_REFUSED, so a client turns elsewhere without waiting for a timeout) until the
    // last open one has closed. Not tracked: the drain does not wait on it.
    tokio::spawn(async move {
        loop {
            tokio::select! {
                i = endpoint.accept() => match i {
                    Some(i) => i.refuse(),
                    None => break,
                },
                () = endpoint.wait_idle() => break,
            }
        }
    });
}

async fn connection(
    incoming: quinn::Incoming,
    handshaking: Handshaking,
    state: Arc<EdgeState>,
    limits: QuicLimits,
    shutdown: CancellationToken,
) {
    let remote = incoming.remote_address();
    let handshake = async {
        let connecting = incoming.accept()?;
        connecting.await
    };
    let shaken = tokio::time::timeout(limits.header_read_timeout, handshake).await;
    drop(handshaking);
    let conn = match shaken {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            state.metrics.quic_failed.increment(1);
            tracing::debug!(client = %remote, error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            state.metrics.quic_failed.increment(1);
            tracing::debug!(client = %remote, "QUIC handshake timed out");
            return;
        }
    };
    state.metrics.quic_accepted.increment(1);
    LoadCounters::add(&state.load.connections, 1);
    let peer = Peer {
        addr: conn.remote_address(),
        secure: true,
    };
    let h3 = h3::server::builder()
        .max_field_section_size(limits.max_header_size as u64)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn.clone()))
        .await;
    let mut h3 = match h3 {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(client = %peer.addr, error = %e, "HTTP/3 setup failed");
            state.load.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    };
    let mut closing = false;
    loop {
        let next = tokio::select! {
            r = h3.accept() => r,
            _ = shutdown.cancelled(), if !closing => {
                // GOAWAY: no new requests; those already sent are answered, then accept
                // says the connection is done.
                closing = true;
                if h3.shutdown(0).await.is_err() {
                    break;
                }
                continue;
            }
        };
        match next {
            Ok(Some(resolver)) => {
                let state = state.clone();
                let head_timeout = limits.header_read_timeout;
                let send_timeout = limits.send_timeout;
                state.clone().tasks.spawn(async move {
                    // A request head must be whole within header_read_timeout, as over TCP: a
                    // stream that never finishes one gives its slot back (the stream is reset).
                    match tokio::time::timeout(head_timeout, resolver.resolve_request()).await {
                        Ok(Ok((req, stream))) => {
                            request(state, req, stream, peer, send_timeout).await
                        }
                        Ok(Err(e)) => {
                            state.metrics.quic_stream_errors.increment(1);
                            tracing::debug!(client = %peer.addr, error = %e, "bad HTTP/3 request");
                        }
                        Err(_) => {
                            state.metrics.quic_stream_errors.increment(1);
                            tracing::debug!(client = %peer.addr, "HTTP/3 request head not complete in time");
                        }
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(client = %peer.addr, error = %e, "HTTP/3 connection ended");
                break;
            }
        }
    }
    state.load.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Answers one request stream.
async fn request(
    state: Arc<EdgeState>,
    req: Request<()>,
    stream: h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    peer: Peer,
    send_timeout: Duration,
) {
    let (mut send, recv) = stream.split();
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let method = req.method().clone();
    let body = RequestBody::H3(Box::new(RecvBody::new(recv, length)));
    let Ok(resp) = handle(state.clone(), req.map(|()| body), peer, None, None).await;
    let (mut parts, body) = resp.into_parts();
    let bodiless = method == Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
        || parts.status.is_informational();
    finish_head(&mut parts.headers, &body, bodiless);
    if let Err(e) = send.send_response(Response::from_parts(parts, ())).await {
        state.metrics.quic_stream_errors.increment(1);
        tracing::debug!(client = %peer.addr, error = %e, "HTTP/3 response head not sent");
        return;
    }
    if !bodiless {
        if let Err(why) = send_body(&mut send, body, send_timeout).await {
            tracing::debug!(client = %peer.addr, error = %why, "HTTP/3 response body aborted");
            send.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
            return;
        }
    }
    let _ = send.finish().await;
}

/// Sends `body` as DATA frames (and trailers); an error means the stream must be reset. A
/// frame the stream takes none of for `send_timeout` (a client that grants no flow-control
/// credit, while its connection stays alive) is an error too: the body, and the origin
/// connection or disk chunk it holds, are let go.
async fn send_body(
    send: &mut SendStream,
    mut body: Body,
    send_timeout: Duration,
) -> Result<(), String> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        match frame.into_data() {
            Ok(data) => match tokio::time::timeout(send_timeout, send.send_data(data)).await {
                Ok(sent) => sent.map_err(|e| e.to_string())?,
                Err(_) => return Err(format!("the client took no bytes for {send_timeout:?}")),
            },
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
    }
    Ok(())
}

/// What hyper adds to an HTTP/1.1 or HTTP/2 response head, and HTTP/3 needs too: `Date`, and
/// `Content-Length` when the body's length is known; the connection-specific fields HTTP/3
/// forbids (RFC 9114 §4.2) go.
fn finish_head(headers: &mut HeaderMap, body: &Body, bodiless: bool) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    if !headers.contains_key(header::DATE) {
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
            headers.insert(header::DATE, v);
        }
    }
    if !bodiless && !headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(n) = http_body::Body::size_hint(body).exact() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// The request body of an HTTP/3 stream, read as the handler asks for it.
pub(crate) struct RecvBody {
    stream: RecvStream,
    /// What is left of the request's `Content-Length`, if it gave one. A body that runs past
    /// it or ends short of it is malformed (RFC 9114 §4.1.2) and fails: forwarded, an origin
    /// would read the excess on a pooled connection as the next request.
    length: Option<u64>,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Data,
    Trailers,
    Done,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody")
            .field("length", &self.length)
            .field("phase", &self.phase)
            .finish()
    }
}

impl RecvBody {
    fn new(stream: RecvStream, length: Option<u64>) -> RecvBody {
        RecvBody {
            stream,
            length,
            phase: if length == Some(0) {
                Phase::Done
            } else {
                Phase::Data
            },
        }
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, String>>> {
        loop {
            match self.phase {
                Phase::Data => match std::task::ready!(self.stream.poll_recv_data(cx)) {
                    Ok(Some(mut buf)) => {
                        let data = buf.copy_to_bytes(buf.remaining());
                        if let Some(n) = &mut self.length {
                            let Some(left) = n.checked_sub(data.len() as u64) else {
                                self.phase = Phase::Done;
                                return Poll::Ready(Some(Err(
                                    "the request body is longer than its Content-Length".into(),
                                )));
                            };
                            *n = left;
                        }
                        if !data.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                    Ok(None) if self.length.is_some_and(|n| n > 0) => {
                        self.phase = Phase::Done;
                        return Poll::Ready(Some(Err(
                            "the request body ended short of its Content-Length".into(),
                        )));
                    }
                    Ok(None) => self.phase = Phase::Trailers,
                    Err(e) => {
                        self.phase = Phase::Done;
                        return Poll::Ready(Some(Err(e.to_string())));
                    }
                },
                Phase::Trailers => {
                    let r = std::task::ready!(self.stream.poll_recv_trailers(cx));
                    self.phase = Phase::Done;
                    return Poll::Ready(match r {
                        Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
                        Ok(None) => None,
                        Err(e) => Some(Err(e.to_string())),
                    });
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match (self.phase, self.length) {
            (Phase::Done, _) => SizeHint::with_exact(0),
            (_, Some(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
