//! Batched UDP I/O on Linux: `recvmmsg` and `sendmmsg`, as gdnsd does.
//!
//! Under load several datagrams wait in the socket at once; taking them (and sending their
//! answers) with one system call each way instead of one per datagram is most of what a DNS
//! server's CPU time per query is made of. The sockets are blocking, with timeouts: a receive
//! waits for the first datagram and takes whatever else is waiting (`MSG_WAITFORONE`), and
//! `WouldBlock` comes back when the timeout passes first.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams taken or sent per system call at most.
pub(crate) const BATCH: usize = 32;
/// Largest query read. Queries are a few dozen bytes; a larger one (cut short, `MSG_TRUNC`)
/// gets FORMERR. Not a power of two: buffers 4 KiB apart would all land in the same cache sets.
pub(crate) const DATAGRAM: usize = 1536;

/// Buffers for one batch of received datagrams, with their message headers made once: the
/// headers point into the buffers, which are boxed slices that never move or grow, so a receive
/// only resets the address lengths. Not `Send` (raw pointers): each UDP thread makes its own.
pub(crate) struct RecvBatch {
    bufs: Box<[[u8; DATAGRAM]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    /// Never read here: the headers point at it.
    _iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        let mut bufs = vec![[0u8; DATAGRAM]; BATCH].into_boxed_slice();
        let mut iovs: Box<[libc::iovec]> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: DATAGRAM,
            })
            .collect();
        let (addrs, hdrs) = headers(&mut iovs);
        RecvBatch {
            bufs,
            addrs,
            _iovs: iovs,
            hdrs,
        }
    }

    /// Receives up to [`BATCH`] datagrams; returns how many.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at a live buffer of DATAGRAM bytes (through its iovec)
        // and a live sockaddr_storage, all owned by `self`, boxed, and outliving the call; the
        // kernel writes at most those sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The `i`th datagram received, where it came from, and whether it was cut short (longer
    /// than [`DATAGRAM`]).
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr, bool)> {
        let addr = from_storage(&self.addrs[i])?;
        let len = (self.hdrs[i].msg_len as usize).min(DATAGRAM);
        let cut = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        Some((&self.bufs[i][..len], addr, cut))
    }
}

/// Peer addresses for a batch, and a message header per iovec pointing at it and at its address.
/// The slices are boxed, so the pointers hold while their owner keeps them.
fn headers(iovs: &mut [libc::iovec]) -> (Box<[libc::sockaddr_storage]>, Box<[libc::mmsghdr]>) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
    let mut addrs: Box<[libc::sockaddr_storage]> = (0..iovs.len())
        .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
        .collect();
    let hdrs = iovs
        .iter_mut()
        .zip(addrs.iter_mut())
        .map(|(iov, addr)| header(addr, 0, iov))
        .collect();
    (addrs, hdrs)
}

/// One message header: one buffer, one peer address.
fn header(
    addr: &mut libc::sockaddr_storage,
    len: libc::socklen_t,
    iov: &mut libc::iovec,
) -> libc::mmsghdr {
    // SAFETY: msghdr is plain old data; zeroed and then filled in field by field.
    let mut h: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
    h.msg_namelen = len;
    h.msg_iov = iov;
    h.msg_iovlen = 1;
    libc::mmsghdr {
        msg_hdr: h,
        msg_len: 0,
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain old data, zeroed, then written as the family's own struct.
    let mut s: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin: &mut libc::sockaddr_in =
                unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6: &mut libc::sockaddr_in6 =
                unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

/// Answers waiting to be sent: buffers kept from batch to batch (so answering allocates nothing
/// once they have grown to the answers' size), and message headers made once, pointing at the
/// boxed address and iovec slices; a send points the iovecs at the buffers.
pub(crate) struct SendBatch {
    bufs: Vec<Vec<u8>>,
    to: Box<[SocketAddr]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    len: usize,
}

impl SendBatch {
    pub(crate) fn new() -> SendBatch {
        let mut iovs: Box<[libc::iovec]> = (0..BATCH)
            .map(|_| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            })
            .collect();
        let (addrs, hdrs) = headers(&mut iovs);
        SendBatch {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
            to: vec![SocketAddr::from(([0, 0, 0, 0], 0)); BATCH].into_boxed_slice(),
            addrs,
            iovs,
            hdrs,
            len: 0,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The buffer the next answer is written into (at most [`BATCH`] per batch).
    pub(crate) fn next(&mut self) -> &mut Vec<u8> {
        &mut self.bufs[self.len]
    }

    /// Queues the answer written into [`SendBatch::next`] for `to`.
    pub(crate) fn push(&mut self, to: SocketAddr) {
        let (storage, len) = to_storage(&to);
        self.addrs[self.len] = storage;
        self.hdrs[self.len].msg_hdr.msg_namelen = len;
        self.to[self.len] = to;
        self.len += 1;
    }

    /// Where the `i`th answer goes.
    pub(crate) fn to(&self, i: usize) -> SocketAddr {
        self.to[i]
    }

    /// Sends as many of the answers from the `from`th on as the socket takes in one system
    /// call; returns how many went.
    pub(crate) fn send(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        let count = self.len.saturating_sub(from);
        if count == 0 {
            return Ok(0);
        }
        for (iov, b) in self.iovs.iter_mut().zip(&self.bufs).take(self.len) {
            *iov = libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            };
        }
        // SAFETY: the headers point at the boxed addresses and iovecs, and those at the
        // buffers, all owned by `self` and unchanged until the call returns; the kernel only
        // reads them.
        let n =
            unsafe { libc::sendmmsg(fd, self.hdrs[from..].as_mut_ptr(), count as libc::c_uint, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}
