//! DNS Cookies (RFC 7873), with the interoperable server cookie of RFC 9018: version 1, three
//! reserved bytes, a 32-bit timestamp and SipHash-2-4 over the client cookie, those fields and
//! the client's address, keyed by a secret made at start.
//!
//! A resolver that sends a client cookie gets it back with a server cookie, and may present that
//! server cookie later: it proves the client's address (a spoofed source could not have seen it).
//! This server never requires one: a query without a cookie, or with one that does not verify,
//! is answered as usual, with a fresh server cookie (RFC 7873 §5.2.3).
//!
//! The secret is per process, so a resolver whose queries reach another node (or this one after
//! a restart) is given a new server cookie there; nothing fails.

use std::hash::Hasher;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// EDNS option code of COOKIE.
pub(crate) const OPTION: u16 = 10;
/// How long a server cookie stays valid (RFC 9018 §4.3), and how far in the future its
/// timestamp may be.
const LIFETIME: u32 = 3600;
const FUTURE: u32 = 300;

/// What a query's COOKIE option says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presented {
    /// A client cookie alone, or with a server cookie this server did not make (or too old).
    Client([u8; 8]),
    /// A client cookie with a valid server cookie of this server.
    Verified([u8; 8]),
}

impl Presented {
    pub(crate) fn client(self) -> [u8; 8] {
        match self {
            Presented::Client(c) | Presented::Verified(c) => c,
        }
    }
}

/// The server secret.
pub(crate) struct Cookies {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for Cookies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cookies")
    }
}

impl Cookies {
    /// A new random secret.
    pub(crate) fn new() -> Cookies {
        let mut key = [0u8; 16];
        // A failure of the system's random source leaves cookies that still work but can be
        // forged; it does not happen on a working system.
        if aws_lc_rs::rand::fill(&mut key).is_err() {
            tracing::warn!("no random source: DNS server cookies are predictable");
        }
        Cookies {
            k0: u64::from_le_bytes(key[..8].try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(key[8..].try_into().unwrap_or_default()),
        }
    }

    fn hash(&self, client: &[u8; 8], head: &[u8; 8], ip: IpAddr) -> [u8; 8] {
        #[allow(deprecated)] // std's SipHasher is SipHash-2-4, which RFC 9018 names.
        let mut h = std::hash::SipHasher::new_with_keys(self.k0, self.k1);
        h.write(client);
        h.write(head);
        match ip {
            IpAddr::V4(v4) => h.write(&v4.octets()),
            IpAddr::V6(v6) => h.write(&v6.octets()),
        }
        h.finish().to_le_bytes()
    }

    /// Reads a COOKIE option's data: `Err` for a malformed one (FORMERR, RFC 7873 §5.2.2).
    pub(crate) fn read(&self, data: &[u8], ip: IpAddr) -> Result<Presented, ()> {
        if data.len() != 8 && !(16..=40).contains(&data.len()) {
            return Err(());
        }
        let client: [u8; 8] = data[..8].try_into().map_err(|_| ())?;
        let server = &data[8..];
        if server.len() != 16 || server[0] != 1 {
            return Ok(Presented::Client(client));
        }
        let head: [u8; 8] = server[..8].try_into().map_err(|_| ())?;
        let stamp = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let now = now();
        let fresh = now.wrapping_sub(stamp) <= LIFETIME || stamp.wrapping_sub(now) <= FUTURE;
        if fresh && self.hash(&client, &head, ip) == server[8..] {
            Ok(Presented::Verified(client))
        } else {
            Ok(Presented::Client(client))
        }
    }

    /// The COOKIE option data of an answer: the client cookie and a new server cookie.
    pub(crate) fn answer(&self, client: [u8; 8], ip: IpAddr) -> Vec<u8> {
        let mut head = [1u8, 0, 0, 0, 0, 0, 0, 0];
        head[4..].copy_from_slice(&now().to_be_bytes());
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&client);
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.hash(&client, &head, ip));
        out
    }
}

fn now() -> u32 {
    // Serial-number arithmetic on 32 bits (RFC 1982), as RFC 9018 says.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_cookie_verifies_for_its_client_and_address_only() {
        let c = Cookies::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let client = [7u8; 8];
        let answer = c.answer(client, ip);
        assert_eq!(answer.len(), 24);
        assert_eq!(c.read(&answer, ip), Ok(Presented::Verified(client)));
        assert_eq!(
            c.read(&answer, "192.0.2.2".parse().unwrap()),
            Ok(Presented::Client(client))
        );
        let mut other = answer.clone();
        other[0] ^= 1;
        assert!(matches!(c.read(&other, ip), Ok(Presented::Client(_))));
        assert_eq!(
            Cookies::new().read(&answer, ip),
            Ok(Presented::Client(client))
        );
        assert_eq!(c.read(&client, ip), Ok(Presented::Client(client)));
        for bad in [0, 7, 9, 15, 41] {
            assert_eq!(c.read(&vec![1; bad], ip), Err(()), "{bad} bytes");
        }
    }
}
