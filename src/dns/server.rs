//! Binding the DNS role's sockets and serving them.
//!
//! Each listen address is served over UDP and TCP on the same port (port 0 picks one free for
//! both). TCP runs on hickory's server with our `RequestHandler`. UDP runs on our own workers:
//! each takes a batch of datagrams (`recvmmsg` on Linux), parses each into hickory's `Request`,
//! decides and encodes the answer to the client's size limit (TC when it does not fit) with the
//! same handler, and sends the batch's answers with one `sendmmsg`. hickory's own UDP path spawns
//! a task per datagram and hands each response to the socket task through a channel; the inline,
//! batched path takes less than half the CPU time per query. Malformed datagrams get FORMERR.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::serialize::binary::BinEncodable;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::{DnsHandler, ADVERTISED_PAYLOAD};
use super::metrics::Tally;

/// Largest TCP response (the DNS maximum).
const TCP_BUFFER: usize = 65_535;
/// UDP workers per socket: one per core of this 2-core class of machine.
const UDP_WORKERS: usize = 2;

/// Binds UDP and TCP on the same port: for port 0, the port UDP got, retried a few times in case
/// TCP's is taken.
async fn bind_pair(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..8 {
        let udp = UdpSocket::bind(addr).await?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for both UDP and TCP")))
}

/// The size limit of a UDP response: the client's EDNS payload (at least 512, at most what we
/// advertise), or 512 without EDNS (RFC 6891 §6.2.5).
fn udp_limit(request: &Request) -> u16 {
    request
        .edns
        .as_ref()
        .map_or(512, |e| e.max_payload().clamp(512, ADVERTISED_PAYLOAD))
}

/// A FORMERR for a datagram hickory could not parse, if it has a header to answer.
fn formerr(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return None; // no header, or itself a response: never answer those
    }
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::FormErr;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    header.to_bytes().ok()
}

/// Answers one datagram: the encoded response (or a FORMERR), if any is due. Answers of the
/// fast path are counted in `tally`.
fn answer(
    handler: &DnsHandler,
    data: &[u8],
    src: SocketAddr,
    tally: &mut Tally,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    if super::fast::answer(handler, data, src, &mut out, tally) {
        return Some(out);
    }
    general_answer(handler, data, src)
}

/// Answers one datagram through hickory's `Request` and response builder: every query shape.
pub(crate) fn general_answer(
    handler: &DnsHandler,
    data: &[u8],
    src: SocketAddr,
) -> Option<Vec<u8>> {
    match Request::from_bytes(data.to_vec(), src, Protocol::Udp) {
        Ok(request) => {
            let prepared = handler.prepare(&request);
            let mut buf = Vec::with_capacity(512);
            handler.encode(&request, &prepared, udp_limit(&request), &mut buf)?;
            Some(buf)
        }
        Err(_) => {
            handler.metrics.query(None, ResponseCode::FormErr, 0.0);
            formerr(data)
        }
    }
}

/// One datagram at a time (platforms without recvmmsg/sendmmsg).
#[cfg_attr(target_os = "linux", allow(dead_code))]
async fn udp_worker(socket: Arc<UdpSocket>, handler: Arc<DnsHandler>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let mut tally = Tally::default();
        let reply = answer(&handler, &buf[..n], src, &mut tally);
        handler.metrics.flush(&mut tally);
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, src).await;
        }
    }
}

/// Batches of datagrams in, batches of answers out: one recvmmsg and one sendmmsg per batch.
#[cfg(target_os = "linux")]
async fn udp_worker_batched(
    socket: Arc<UdpSocket>,
    handler: Arc<DnsHandler>,
    shutdown: CancellationToken,
) {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;

    use super::batch::{self, RecvBatch};

    let fd = socket.as_raw_fd();
    let mut inbox = RecvBatch::new();
    let mut pending: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(batch::BATCH);
    let mut tally = Tally::default();
    loop {
        tokio::select! {
            r = socket.readable() => if r.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
        let n = match socket.try_io(Interest::READABLE, || inbox.recv(fd)) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        pending.clear();
        for i in 0..n {
            if let Some((data, src)) = inbox.get(i) {
                if let Some(reply) = answer(&handler, data, src, &mut tally) {
                    pending.push((reply, src));
                }
            }
        }
        handler.metrics.flush(&mut tally);
        let mut sent = 0;
        while sent < pending.len() {
            if socket.writable().await.is_err() {
                break;
            }
            match socket.try_io(Interest::WRITABLE, || batch::send(fd, &pending[sent..])) {
                Ok(k) => sent += k.max(1),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // One bad destination must not hold the others back.
                    tracing::debug!(error = %e, to = %pending[sent].1, "UDP send failed");
                    sent += 1;
                }
            }
        }
    }
}

/// Serves DNS on every address of `listen` until `shutdown` fires.
pub(crate) async fn start(
    listen: &[SocketAddr],
    handler: DnsHandler,
    tcp_timeout: Duration,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Vec<SocketAddr>, (SocketAddr, std::io::Error)> {
    let handler = Arc::new(handler);
    let mut server = Server::new(SharedHandler(handler.clone()));
    let mut bound = Vec::new();
    for addr in listen {
        let (udp, tcp) = bind_pair(*addr).await.map_err(|e| (*addr, e))?;
        bound.push(udp.local_addr().map_err(|e| (*addr, e))?);
        let udp = Arc::new(udp);
        for _ in 0..UDP_WORKERS {
            #[cfg(target_os = "linux")]
            tracker.spawn(udp_worker_batched(
                udp.clone(),
                handler.clone(),
                shutdown.clone(),
            ));
            #[cfg(not(target_os = "linux"))]
            tracker.spawn(udp_worker(udp.clone(), handler.clone(), shutdown.clone()));
        }
        server.register_listener(tcp, tcp_timeout, TCP_BUFFER);
    }
    tracker.spawn(async move {
        shutdown.cancelled().await;
        if let Err(e) = server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "DNS server stopped with an error");
        }
    });
    Ok(bound)
}

/// The handler shared between our UDP workers and hickory's TCP server.
struct SharedHandler(Arc<DnsHandler>);

#[async_trait::async_trait]
impl RequestHandler for SharedHandler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}
