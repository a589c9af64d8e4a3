//! Binding the DNS role's sockets and serving them.
//!
//! Each listen address is served over UDP and TCP on the same port (port 0 picks one free for
//! both). TCP runs on hickory's server with our `RequestHandler`. UDP runs on our own threads
//! (Linux; tasks elsewhere): each blocks in `recvmmsg` for a batch of datagrams, parses each into
//! hickory's `Request`, decides and encodes the answer to the client's size limit (TC when it does
//! not fit) with the same handler, and sends the batch's answers with one `sendmmsg`. hickory's
//! own UDP path spawns a task per datagram and hands each response to the socket task through a
//! channel; the batched path takes about half the CPU time per query. Malformed datagrams get
//! FORMERR.

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

/// Answers one datagram: the encoded response (or a FORMERR), if any is due.
fn answer(handler: &DnsHandler, data: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
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
        if let Some(reply) = answer(&handler, &buf[..n], src) {
            let _ = socket.send_to(&reply, src).await;
        }
    }
}

/// How often a UDP thread blocked in `recvmmsg` looks at the shutdown token.
#[cfg(target_os = "linux")]
const UDP_POLL: Duration = Duration::from_millis(200);

/// A UDP thread: blocks in recvmmsg for a batch of datagrams, answers them, and sends the
/// answers with one sendmmsg. Answering is synchronous, so a plain thread serves it with no
/// event loop in between (as gdnsd's threads do).
#[cfg(target_os = "linux")]
fn udp_thread(socket: std::net::UdpSocket, handler: Arc<DnsHandler>, shutdown: CancellationToken) {
    use std::io::ErrorKind;
    use std::os::fd::AsRawFd;

    use super::batch::{self, RecvBatch};

    let fd = socket.as_raw_fd();
    let mut inbox = RecvBatch::new();
    let mut pending: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(batch::BATCH);
    while !shutdown.is_cancelled() {
        let n = match inbox.recv(fd, true) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        pending.clear();
        for i in 0..n {
            if let Some((data, src)) = inbox.get(i) {
                if let Some(reply) = answer(&handler, data, src) {
                    pending.push((reply, src));
                }
            }
        }
        let mut sent = 0;
        while sent < pending.len() {
            match batch::send(fd, &pending[sent..], true) {
                Ok(k) => sent += k.max(1),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
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
        #[cfg(target_os = "linux")]
        {
            let blocking = udp.into_std().map_err(|e| (*addr, e))?;
            blocking.set_nonblocking(false).map_err(|e| (*addr, e))?;
            blocking
                .set_read_timeout(Some(UDP_POLL))
                .map_err(|e| (*addr, e))?;
            for i in 0..UDP_WORKERS {
                let socket = blocking.try_clone().map_err(|e| (*addr, e))?;
                let (handler, shutdown) = (handler.clone(), shutdown.clone());
                let (done, ended) = tokio::sync::oneshot::channel::<()>();
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || {
                        udp_thread(socket, handler, shutdown);
                        let _ = done.send(());
                    })
                    .map_err(|e| (*addr, e))?;
                // Tracked like a task: shutdown waits for the thread to see the token and end
                // (a oneshot, not a blocking join, so that dropping a runtime never waits on it).
                tracker.spawn(async move {
                    let _ = ended.await;
                });
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let udp = Arc::new(udp);
            for _ in 0..UDP_WORKERS {
                tracker.spawn(udp_worker(udp.clone(), handler.clone(), shutdown.clone()));
            }
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
