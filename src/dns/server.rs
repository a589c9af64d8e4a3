//! Binding the DNS role's sockets and serving them.
//!
//! Each listen address is served over UDP and TCP on the same port (port 0 picks one free for
//! both). TCP runs on hickory's server with our `RequestHandler`. UDP runs as gdnsd's does: one
//! socket per core on the same port (`SO_REUSEPORT`, so the kernel spreads clients over them),
//! each with a thread of its own that waits in `recvmmsg` for a batch of datagrams, answers each
//! (the fast path for the common query, else hickory's `Request` and the same handler, encoded to
//! the client's size limit with TC when it does not fit) and sends the batch's answers with one
//! `sendmmsg`. No event loop, no task or channel per datagram, no lock shared between the
//! threads. Malformed datagrams get FORMERR. (Other platforms: one tokio task per socket, one
//! datagram at a time.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::serialize::binary::BinEncodable;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::Server;
use tokio::net::TcpListener;
#[cfg(not(target_os = "linux"))]
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fast::Worker;
use super::handler::{DnsHandler, ADVERTISED_PAYLOAD};
use super::limit::Verdict;

/// Largest TCP response (the DNS maximum).
const TCP_BUFFER: usize = 65_535;
/// How long a UDP thread waits for a datagram before it looks whether it should stop.
const UDP_WAKE: Duration = Duration::from_millis(100);

/// UDP sockets (and threads) per listen address: one per core.
fn udp_sockets() -> usize {
    if cfg!(target_os = "linux") {
        std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 16))
    } else {
        1 // one socket per port where SO_REUSEPORT does not spread datagrams
    }
}

/// A blocking UDP socket on `addr`, sharing its port with the others of its listen address.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol as IpProtocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM,
        Some(IpProtocol::UDP),
    )?;
    #[cfg(target_os = "linux")]
    socket.set_reuse_port(true)?;
    socket.set_read_timeout(Some(UDP_WAKE))?;
    socket.set_write_timeout(Some(Duration::from_secs(1)))?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds `count` UDP sockets and a TCP listener on the same port: for port 0, a port no UDP
/// socket holds, retried a few times in case it is taken meanwhile or TCP's is.
///
/// Hazard: the kernel's choice of a port for a `SO_REUSEPORT` socket bound to port 0 counts a
/// port that another such group of the same user holds as free, and the two groups then share
/// its datagrams (another node of the same process, say one still stopping: seen as a test's
/// query answered by another test's node). A plain socket's choice counts every holder, so the
/// port is found by one of those and bound by the group right after.
async fn bind_all(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<(Vec<std::net::UdpSocket>, TcpListener)> {
    let mut last = None;
    for _ in 0..8 {
        let first = if addr.port() == 0 {
            let free = std::net::UdpSocket::bind(addr)?.local_addr()?;
            match udp_socket(free) {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
        } else {
            udp_socket(addr)?
        };
        let bound = first.local_addr()?;
        let tcp = match TcpListener::bind(bound).await {
            Ok(tcp) => tcp,
            Err(e) if addr.port() == 0 => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut udp = vec![first];
        for _ in 1..count {
            udp.push(udp_socket(bound)?);
        }
        return Ok((udp, tcp));
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

/// Whether a message has the QR bit set: a response, which is never answered.
fn is_response(raw: &[u8]) -> bool {
    raw.get(2).is_some_and(|b| b & 0x80 != 0)
}

/// A FORMERR for a datagram hickory could not parse, if it has a header to answer.
fn formerr(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 12 || is_response(raw) {
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

/// How a datagram was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answered {
    /// By the fast path (counted in the worker's tally, timed by the caller).
    Fast,
    /// By the general path (counted and timed there).
    General,
    /// Not at all (a datagram with no header to answer, or a response).
    No,
}

/// Answers a query longer than the receive buffer with FORMERR (counted), from its header.
#[cfg(target_os = "linux")]
fn too_long(handler: &DnsHandler, data: &[u8], out: &mut Vec<u8>) -> Answered {
    if is_response(data) {
        handler.metrics.response_dropped();
        return Answered::No;
    }
    match formerr(data) {
        Some(reply) => {
            handler.metrics.query(None, ResponseCode::FormErr, 0.0);
            *out = reply;
            Answered::General
        }
        None => Answered::No,
    }
}

/// Answers one datagram into `out`.
fn answer(
    handler: &DnsHandler,
    data: &[u8],
    src: SocketAddr,
    out: &mut Vec<u8>,
    worker: &mut Worker,
) -> Answered {
    // Hazard: answering a response lets one spoofed datagram (its source another DNS server,
    // or this one) start a ping-pong that never ends. Responses are dropped, whatever else
    // they hold (hickory's TCP server drops them too).
    if is_response(data) {
        handler.metrics.response_dropped();
        return Answered::No;
    }
    let answered = if super::fast::answer(data, src, out, worker) {
        Answered::Fast
    } else {
        match general_answer(handler, data, src) {
            Some(reply) => {
                *out = reply;
                Answered::General
            }
            None => Answered::No,
        }
    };
    match (&mut worker.limiter, answered) {
        (Some(limiter), Answered::Fast | Answered::General) => {
            match limiter.check(src.ip(), Instant::now()) {
                Verdict::Send => answered,
                Verdict::Slip if super::limit::truncate(out) => {
                    handler.metrics.rate_limited(true);
                    answered
                }
                Verdict::Slip | Verdict::Drop => {
                    handler.metrics.rate_limited(false);
                    Answered::No
                }
            }
        }
        _ => answered,
    }
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
#[cfg(not(target_os = "linux"))]
async fn udp_worker(socket: UdpSocket, handler: Arc<DnsHandler>, shutdown: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(512);
    let mut worker = Worker::default();
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
        let start = Instant::now();
        worker.begin(&handler);
        let answered = answer(&handler, &buf[..n], src, &mut out, &mut worker);
        if answered == Answered::Fast {
            handler.metrics.latency(start.elapsed().as_secs_f64());
        }
        handler.metrics.flush(&mut worker.tally);
        if answered != Answered::No {
            let _ = socket.send_to(&out, src).await;
        }
    }
}

/// How a port's datagrams are spread over its sockets (threads).
///
/// A thread that sleeps until a datagram wakes it pays for the wake-up, and one datagram or two
/// share it; a busy thread takes dozens per system call. So below what one thread can carry, the
/// port is better served by one thread than by all of them (on the 2-core benchmark machine,
/// 4.6 µs of CPU per query instead of 5.5 at the same rate). The threads measure their CPU time;
/// the first steers the port's datagrams (a classic BPF program on the `SO_REUSEPORT` group) all
/// to its own socket while it is below [`SPREAD_ABOVE`] busy, and back to the kernel's spread by
/// client address when it passes that, until all of them together are below [`GATHER_BELOW`].
#[cfg(target_os = "linux")]
mod spread {
    use std::io;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// `SO_ATTACH_REUSEPORT_CBPF` (the generic value, which these architectures use).
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

    /// Spread when the first thread is busier than this (CPU time over wall time) for
    /// [`SPREAD_AFTER`] windows in a row: before it saturates, not before it must (a thread at
    /// 90% busy with answers of a few microseconds queues a datagram for tens of microseconds).
    pub(super) const SPREAD_ABOVE: f64 = 0.9;
    /// Windows in a row above [`SPREAD_ABOVE`] before spreading: one busy window (a burst, the
    /// machine's hiccup) is not a load one thread cannot carry.
    pub(super) const SPREAD_AFTER: u32 = 2;
    /// Gather onto the first thread when all of them together are less busy than this. Spread
    /// threads spend a fifth to a third more per query than one gathered thread (on the 2-core
    /// benchmark machine 7.2 µs against 5.5 at the same load), so one thread carries what they
    /// carry at 0.85 at about 0.65–0.7 busy: below [`SPREAD_ABOVE`] with room, so a load does not
    /// bounce between the two; and a port spread at a load one thread carries does not stay
    /// spread (at 0.7, a load of 0.75 spread stayed spread at 1.3 times the cost per query).
    pub(super) const GATHER_BELOW: f64 = 0.85;

    /// Where datagrams go.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Mode {
        /// All to the first socket.
        Gather,
        /// By the kernel's hash of the client's address and port.
        Spread,
    }

    /// A port's steering: its mode, and what its next decision waits for.
    pub(super) struct Steer {
        pub(super) mode: Mode,
        /// Windows in a row the first thread was above [`SPREAD_ABOVE`] while gathered.
        hot: u32,
        /// Windows to let pass before deciding again: just after a change, the other threads'
        /// figures still describe (part of) a window in the other mode.
        settle: u32,
    }

    impl Steer {
        pub(super) fn new(mode: Mode) -> Steer {
            Steer {
                mode,
                hot: 0,
                settle: 0,
            }
        }

        /// The mode to change to, if any, after a window of the first thread in which the
        /// threads were `busy` busy (the first's first).
        pub(super) fn next(&mut self, busy: &[f64]) -> Option<Mode> {
            if self.settle > 0 {
                self.settle -= 1;
                return None;
            }
            let first = busy.first().copied().unwrap_or(0.0);
            let total: f64 = busy.iter().sum();
            match self.mode {
                Mode::Gather => {
                    self.hot = if first > SPREAD_ABOVE {
                        self.hot + 1
                    } else {
                        0
                    };
                    (self.hot >= SPREAD_AFTER).then_some(Mode::Spread)
                }
                Mode::Spread => (total < GATHER_BELOW).then_some(Mode::Gather),
            }
        }

        /// Records that the port now runs in `mode`.
        pub(super) fn set(&mut self, mode: Mode) {
            self.mode = mode;
            self.hot = 0;
            self.settle = 1;
        }
    }

    /// Sets the mode of the `SO_REUSEPORT` group `fd` belongs to: a one-instruction program that
    /// returns the index of the socket to deliver to (0: the first bound), or an index past the
    /// last, which makes the kernel fall back to its hash.
    pub(super) fn set(fd: RawFd, mode: Mode) -> io::Result<()> {
        let index = match mode {
            Mode::Gather => 0,
            Mode::Spread => u32::MAX,
        };
        let mut code = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: index,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: code.as_mut_ptr(),
        };
        // SAFETY: `prog` and the filter it points at live until the call returns; the kernel
        // copies them.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_ATTACH_REUSEPORT_CBPF,
                (&prog as *const libc::sock_fprog).cast(),
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// This thread's CPU time (user and system) in microseconds.
    pub(super) fn thread_cpu_micros() -> u64 {
        // SAFETY: getrusage writes one rusage, which lives on this frame; all-zero is valid.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // RUSAGE_THREAD = 1 (Linux).
        unsafe { libc::getrusage(1, &mut usage) };
        let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        micros(usage.ru_utime) + micros(usage.ru_stime)
    }

    /// The threads' busy fractions, in thousandths, each written by its thread.
    pub(super) type Busy = std::sync::Arc<[AtomicU32]>;

    pub(super) fn read(busy: &Busy) -> Vec<f64> {
        busy.iter()
            .map(|b| f64::from(b.load(Ordering::Relaxed)) / 1000.0)
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn gathers_below_and_spreads_above_with_a_gap_between() {
            let mut steer = Steer::new(Mode::Gather);
            assert_eq!(steer.next(&[0.8, 0.0]), None);
            // One busy window is not enough; a calm one in between starts the count again.
            assert_eq!(steer.next(&[0.95, 0.0]), None);
            assert_eq!(steer.next(&[0.8, 0.0]), None);
            assert_eq!(steer.next(&[0.95, 0.0]), None);
            assert_eq!(steer.next(&[0.95, 0.0]), Some(Mode::Spread));
            steer.set(Mode::Spread);
            // The window after a change is not judged: the second thread's figure is stale.
            assert_eq!(steer.next(&[0.5, 0.0]), None);
            // Spread at 0.45 each: together 0.9, one thread would be near its limit; stay.
            assert_eq!(steer.next(&[0.45, 0.45]), None);
            // At 0.4 each one thread carries it at about 0.65: gather.
            assert_eq!(steer.next(&[0.4, 0.4]), Some(Mode::Gather));
            steer.set(Mode::Gather);
            assert_eq!(steer.next(&[0.95, 0.0]), None);
            assert_eq!(steer.next(&[]), None);
        }

        /// Datagrams from 64 client sockets: which of the group's two sockets each reached.
        fn delivered(group: &[std::net::UdpSocket]) -> [usize; 2] {
            let to = group[0].local_addr().unwrap();
            let clients: Vec<_> = (0..64)
                .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            for c in &clients {
                c.send_to(b"x", to).unwrap();
            }
            let mut got = [0; 2];
            let mut buf = [0u8; 16];
            for (i, socket) in group.iter().enumerate() {
                socket
                    .set_read_timeout(Some(std::time::Duration::from_millis(200)))
                    .unwrap();
                while socket.recv_from(&mut buf).is_ok() {
                    got[i] += 1;
                }
            }
            got
        }

        #[test]
        fn gather_sends_every_datagram_to_the_first_socket_and_spread_to_all() {
            use std::os::fd::AsRawFd;
            let first = super::super::udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
            let port = first.local_addr().unwrap();
            let group = [first, super::super::udp_socket(port).unwrap()];
            set(group[0].as_raw_fd(), Mode::Gather).unwrap();
            assert_eq!(delivered(&group), [64, 0]);
            set(group[0].as_raw_fd(), Mode::Spread).unwrap();
            let got = delivered(&group);
            assert_eq!(got[0] + got[1], 64);
            assert!(got[0] > 0 && got[1] > 0, "spread over both: {got:?}");
        }
    }
}

/// How often a UDP thread adds its counts to the shared counters while busy.
#[cfg(target_os = "linux")]
const FLUSH_MILLIS: u64 = 50;

/// How long a UDP thread measures how busy it is before the port's mode is looked at again.
#[cfg(target_os = "linux")]
const SPREAD_WINDOW_MILLIS: u64 = 200;

/// Milliseconds of the coarse monotonic clock (a few nanoseconds to read; ticks of a few ms).
#[cfg(target_os = "linux")]
fn coarse_millis() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which lives on this frame.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// A UDP socket's thread: waits for a batch of datagrams (one recvmmsg), answers them, sends
/// the answers (one sendmmsg), until `shutdown` fires.
#[cfg(target_os = "linux")]
fn udp_thread(
    socket: std::net::UdpSocket,
    index: usize,
    busy: spread::Busy,
    handler: Arc<DnsHandler>,
    shutdown: CancellationToken,
) {
    use std::io::ErrorKind;
    use std::os::fd::AsRawFd;

    use super::batch::{RecvBatch, SendBatch};

    let fd = socket.as_raw_fd();
    let mut inbox = RecvBatch::new();
    let mut outbox = SendBatch::new();
    let mut worker = Worker::default();
    let mut flushed = coarse_millis();
    // The busy fraction over windows of SPREAD_WINDOW_MILLIS; the first thread steers.
    let mut window = (coarse_millis(), spread::thread_cpu_micros());
    let mut steer = spread::Steer::new(spread::Mode::Spread);
    let mut measure = |now: u64, steer: &mut spread::Steer| {
        let elapsed = now.wrapping_sub(window.0);
        if elapsed < SPREAD_WINDOW_MILLIS {
            return;
        }
        let cpu = spread::thread_cpu_micros();
        let fraction = cpu.saturating_sub(window.1) as f64 / (elapsed as f64 * 1000.0);
        busy[index].store(
            (fraction * 1000.0) as u32,
            std::sync::atomic::Ordering::Relaxed,
        );
        window = (now, cpu);
        if index == 0 && busy.len() > 1 {
            if let Some(next) = steer.next(&spread::read(&busy)) {
                match spread::set(fd, next) {
                    Ok(()) => {
                        tracing::debug!(?next, "UDP port steered");
                        steer.set(next);
                    }
                    Err(e) => tracing::debug!(error = %e, "could not steer the UDP port"),
                }
            }
        }
    };
    if index == 0 && busy.len() > 1 {
        // Start gathered: an idle port needs one thread.
        match spread::set(fd, spread::Mode::Gather) {
            Ok(()) => steer.set(spread::Mode::Gather),
            Err(e) => tracing::debug!(error = %e, "could not steer the UDP port"),
        }
    }
    while !shutdown.is_cancelled() {
        let n = match inbox.recv(fd) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                // The wake-up timeout (or a signal): idle, so hand the counts over, and let go
                // of tables a reload replaced (and the GeoIP file they map).
                handler.metrics.flush(&mut worker.tally);
                worker.begin(&handler);
                flushed = coarse_millis();
                measure(flushed, &mut steer);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                std::thread::sleep(Duration::from_millis(10)); // never spin on a broken socket
                continue;
            }
        };
        outbox.clear();
        worker.begin(&handler);
        for i in 0..n {
            let Some((data, src, cut)) = inbox.get(i) else {
                continue;
            };
            // The fast path's answers are timed by sample (see `fast::SAMPLE`).
            let timed = worker.sample().then(Instant::now);
            let answered = if cut {
                too_long(&handler, data, outbox.next())
            } else {
                answer(&handler, data, src, outbox.next(), &mut worker)
            };
            if let (Some(t), Answered::Fast) = (timed, answered) {
                handler.metrics.latency(t.elapsed().as_secs_f64());
            }
            if answered != Answered::No {
                outbox.push(src);
            }
        }
        // The counts go to the shared counters every FLUSH_MILLIS (and when idle): per batch,
        // the two threads' updates of the same counters cost more than the answers at light
        // load, when batches are a datagram or two.
        let now = coarse_millis();
        if now.wrapping_sub(flushed) >= FLUSH_MILLIS {
            handler.metrics.flush(&mut worker.tally);
            flushed = now;
            measure(now, &mut steer);
        }
        let mut sent = 0;
        while sent < outbox.len() {
            match outbox.send(fd, sent) {
                Ok(k) => sent += k.max(1),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // One bad destination (or a full buffer past the write timeout) must not
                    // hold the others back.
                    tracing::debug!(error = %e, to = %outbox.to(sent), "UDP send failed");
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
        let (udp, tcp) = bind_all(*addr, udp_sockets())
            .await
            .map_err(|e| (*addr, e))?;
        bound.push(tcp.local_addr().map_err(|e| (*addr, e))?);
        #[cfg(target_os = "linux")]
        let busy: spread::Busy = udp.iter().map(|_| Default::default()).collect();
        for (_index, socket) in udp.into_iter().enumerate() {
            let (handler, shutdown) = (handler.clone(), shutdown.clone());
            #[cfg(target_os = "linux")]
            {
                let busy = busy.clone();
                // A thread of its own, named (`top -H`, `/proc/PID/task/*/comm`), that the node
                // waits for at shutdown through the tracker's token.
                let tracked = tracker.token();
                std::thread::Builder::new()
                    .name(format!("meridian-dns-{_index}"))
                    .spawn(move || {
                        udp_thread(socket, _index, busy, handler, shutdown);
                        drop(tracked);
                    })
                    .map_err(|e| (*addr, e))?;
            }
            #[cfg(not(target_os = "linux"))]
            {
                socket.set_nonblocking(true).map_err(|e| (*addr, e))?;
                let socket = UdpSocket::from_std(socket).map_err(|e| (*addr, e))?;
                tracker.spawn(udp_worker(socket, handler, shutdown));
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
