//! Binding the DNS role's sockets and running hickory's server on them.
//!
//! Each listen address is served over UDP and TCP on the same port (port 0 picks one free for
//! both). Returns the bound addresses; the server stops when the shutdown token fires.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::DnsHandler;

/// Largest TCP response (the DNS maximum).
const TCP_BUFFER: usize = 65_535;

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

/// Serves DNS on every address of `listen` until `shutdown` fires.
pub(crate) async fn start(
    listen: &[SocketAddr],
    handler: DnsHandler,
    tcp_timeout: Duration,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Vec<SocketAddr>, (SocketAddr, std::io::Error)> {
    let mut server = Server::new(handler);
    let mut bound = Vec::new();
    for addr in listen {
        let (udp, tcp) = bind_pair(*addr).await.map_err(|e| (*addr, e))?;
        bound.push(udp.local_addr().map_err(|e| (*addr, e))?);
        server.register_socket(udp);
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
