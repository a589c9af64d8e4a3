//! Batched UDP I/O on Linux: `recvmmsg` and `sendmmsg`, as gdnsd does.
//!
//! Under load several datagrams wait in the socket at once; taking them (and sending their
//! answers) with one system call each way instead of one per datagram is most of what a DNS
//! server's CPU time per query is made of. Callers use these inside `UdpSocket::try_io`, so they
//! never block: `WouldBlock` comes back when the socket is empty (or full).

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams taken or sent per system call at most.
pub(crate) const BATCH: usize = 32;
/// Largest datagram read (EDNS payloads above this are not advertised by anyone sane).
pub(crate) const DATAGRAM: usize = 4096;

/// Buffers for one batch of received datagrams.
pub(crate) struct RecvBatch {
    bufs: Vec<[u8; DATAGRAM]>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![[0u8; DATAGRAM]; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
            addrs: vec![
                unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
                BATCH
            ],
            lens: vec![0; BATCH],
        }
    }

    /// Receives up to [`BATCH`] datagrams; returns how many.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = self
            .bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: DATAGRAM,
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .map(|(iov, addr)| {
                header(
                    addr,
                    size_of::<libc::sockaddr_storage>() as libc::socklen_t,
                    iov,
                )
            })
            .collect();
        // SAFETY: every header points at a live buffer of DATAGRAM bytes and a live
        // sockaddr_storage, all owned by `self` or this frame and outliving the call; the kernel
        // writes at most those sizes. MSG_DONTWAIT: never blocks.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdrs).take(n) {
            *len = h.msg_len as usize;
        }
        Ok(n)
    }

    /// The `i`th datagram received and where it came from.
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let addr = from_storage(&self.addrs[i])?;
        Some((&self.bufs[i][..self.lens[i]], addr))
    }
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

/// Sends as many of `out` as the socket takes in one system call; returns how many went.
pub(crate) fn send(fd: RawFd, out: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
    let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
        out.iter().map(|(_, a)| to_storage(a)).collect();
    let mut iovs: Vec<libc::iovec> = out
        .iter()
        .map(|(b, _)| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .zip(addrs.iter_mut())
        .map(|(iov, (addr, len))| header(addr, *len, iov))
        .collect();
    // SAFETY: the headers point at buffers and addresses that live until the call returns; the
    // kernel only reads them. MSG_DONTWAIT: never blocks.
    let n = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
