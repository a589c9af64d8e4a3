//! The gossip wire: every chitchat message sealed with AES-256-GCM before it leaves, opened (or
//! dropped and counted) when it arrives.
//!
//! A [`Keyring`] works in the manner of HashiCorp memberlist: the first key seals, every key is
//! tried to open, so keys rotate without downtime (add the new key second everywhere, move it
//! first everywhere, then remove the old one; each step is a SIGHUP). The cluster name is the
//! additional authenticated data, so a packet of another cluster never opens even under the same
//! key. Datagram: `0x01 | nonce (12) | ciphertext | tag (16)`; nonces are random (96 bits).
//! An insecure ring (no keys, only with `insecure = true`) sends `0x00 | message` and accepts
//! only that.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;
use base64::Engine;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use metrics::Counter;

const SEALED: u8 = 1;
const PLAIN: u8 = 0;
const TAG_LEN: usize = 16;
/// The largest UDP payload (IPv4).
const MAX_DATAGRAM: usize = 65_507;

/// Gossip keys: the first seals, all open.
/// What the peer-request key is derived with, so that it differs from the sealing key.
const PEER_KEY_LABEL: &[u8] = b"meridian peer request v1";

pub(crate) struct Keyring {
    keys: Vec<RandomizedNonceKey>,
    /// One HMAC key per gossip key, derived from it for signing peer requests (`shield`), in
    /// the same order: the first signs, any verifies. A request signature never reveals the
    /// gossip key itself.
    peer: Vec<hmac::Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.keys.len())
    }
}

impl Keyring {
    /// A ring that neither seals nor accepts sealed packets (`insecure = true`).
    pub(crate) fn insecure() -> Keyring {
        Keyring {
            keys: Vec::new(),
            peer: Vec::new(),
        }
    }

    /// Builds a ring from raw 32-byte keys, the sealing key first.
    pub(crate) fn from_keys(keys: &[[u8; 32]]) -> Keyring {
        Keyring {
            keys: keys
                .iter()
                .map(|k| RandomizedNonceKey::new(&AES_256_GCM, k).expect("32-byte AES key"))
                .collect(),
            peer: keys
                .iter()
                .map(|k| {
                    let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), PEER_KEY_LABEL);
                    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
                })
                .collect(),
        }
    }

    /// Signs a peer request's text with the first key; `None` for an insecure ring.
    pub(crate) fn sign_peer(&self, text: &[u8]) -> Option<hmac::Tag> {
        self.peer.first().map(|k| hmac::sign(k, text))
    }

    /// Whether any key of the ring made `tag` for `text`.
    pub(crate) fn verify_peer(&self, text: &[u8], tag: &[u8]) -> bool {
        self.peer.iter().any(|k| hmac::verify(k, text, tag).is_ok())
    }

    /// Parses a key file: one base64 key of 32 bytes per line (`openssl rand -base64 32`), the
    /// sealing key first; blank lines and `#` comments are ignored.
    pub(crate) fn parse(text: &str) -> Result<Keyring, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|e| format!("line {}: not base64: {e}", i + 1))?;
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                format!(
                    "line {}: a key is 32 bytes (AES-256), this one is {}; make one with `openssl rand -base64 32`",
                    i + 1,
                    bytes.len()
                )
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("holds no key (one base64 key of 32 bytes per line)".into());
        }
        Ok(Keyring::from_keys(&keys))
    }

    /// Reads and parses a key file.
    pub(crate) fn load(path: &Path) -> Result<Keyring, String> {
        let text =
            crate::config::read_limited(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Keyring::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Seals `message` into `out` (cleared first).
    pub(crate) fn seal(&self, aad: &[u8], message: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
        out.clear();
        let Some(key) = self.keys.first() else {
            out.push(PLAIN);
            out.extend_from_slice(message);
            return Ok(());
        };
        out.push(SEALED);
        out.extend_from_slice(&[0; NONCE_LEN]);
        out.extend_from_slice(message);
        let mut body = out.split_off(1 + NONCE_LEN);
        let nonce = key
            .seal_in_place_append_tag(Aad::from(aad), &mut body)
            .map_err(|_| ())?;
        out[1..].copy_from_slice(nonce.as_ref());
        out.append(&mut body);
        Ok(())
    }

    /// Opens a datagram in place; returns the message, or `None` when no key opens it.
    pub(crate) fn open<'a>(&self, aad: &[u8], datagram: &'a mut [u8]) -> Option<&'a [u8]> {
        let (&kind, rest) = datagram.split_first()?;
        if self.keys.is_empty() {
            return (kind == PLAIN).then_some(&datagram[1..]);
        }
        if kind != SEALED || rest.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = rest[..NONCE_LEN].try_into().ok()?;
        let body = &mut datagram[1 + NONCE_LEN..];
        // Each key opens a copy: a failed open may leave its buffer scrambled.
        let mut scratch = Vec::with_capacity(body.len());
        for key in &self.keys {
            scratch.clear();
            scratch.extend_from_slice(body);
            let opened = key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut scratch,
            );
            if let Ok(plain) = opened {
                let len = plain.len();
                body[..len].copy_from_slice(plain);
                return Some(&body[..len]);
            }
        }
        None
    }
}

/// Packet and byte counters of the gossip wire.
#[derive(Clone)]
pub(crate) struct WireMetrics {
    pub(crate) sent: Counter,
    pub(crate) received: Counter,
    pub(crate) rejected: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) bytes_received: Counter,
}

impl WireMetrics {
    pub(crate) fn new(node: &str) -> WireMetrics {
        let packets = |direction: &'static str| metrics::counter!("meridian_gossip_packets_total", "node" => node.to_string(), "direction" => direction);
        let bytes = |direction: &'static str| metrics::counter!("meridian_gossip_bytes_total", "node" => node.to_string(), "direction" => direction);
        WireMetrics {
            sent: packets("sent"),
            received: packets("received"),
            rejected: packets("rejected"),
            bytes_sent: bytes("sent"),
            bytes_received: bytes("received"),
        }
    }
}

/// Running totals of one node's wire, readable in process (the gossip simulation bench).
#[derive(Default, Debug)]
pub(crate) struct WireTotals {
    pub(crate) bytes_sent: std::sync::atomic::AtomicU64,
    pub(crate) packets_rejected: std::sync::atomic::AtomicU64,
}

/// A chitchat [`Transport`] whose sockets seal and open with the (swappable) keyring.
pub(crate) struct SealedTransport {
    pub(crate) keyring: Arc<ArcSwap<Keyring>>,
    pub(crate) cluster: Arc<str>,
    pub(crate) metrics: WireMetrics,
    pub(crate) totals: Arc<WireTotals>,
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the gossip listener {listen} (UDP): {e}"))?;
        Ok(Box::new(SealedSocket {
            socket,
            keyring: self.keyring.clone(),
            aad: format!("meridian-gossip/{}", self.cluster).into_bytes(),
            metrics: self.metrics.clone(),
            totals: self.totals.clone(),
            plain: Vec::with_capacity(4096),
            sealed: Vec::with_capacity(4096),
            recv: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    keyring: Arc<ArcSwap<Keyring>>,
    aad: Vec<u8>,
    metrics: WireMetrics,
    totals: Arc<WireTotals>,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    recv: Box<[u8]>,
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        self.plain.clear();
        message.serialize(&mut self.plain);
        if self
            .keyring
            .load()
            .seal(&self.aad, &self.plain, &mut self.sealed)
            .is_err()
        {
            tracing::warn!(peer = %to, "gossip: sealing failed; packet dropped");
            return Ok(());
        }
        if self.sealed.len() > MAX_DATAGRAM {
            tracing::warn!(peer = %to, bytes = self.sealed.len(), "gossip: packet larger than a datagram; dropped");
            return Ok(());
        }
        // A failed send (peer gone, no route) is the failure detector's business, not ours.
        match self.socket.send_to(&self.sealed, to).await {
            Ok(n) => {
                self.metrics.sent.increment(1);
                self.metrics.bytes_sent.increment(n as u64);
                self.totals
                    .bytes_sent
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(peer = %to, error = %e, "gossip send failed"),
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (n, from) = match self.socket.recv_from(&mut self.recv).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors of earlier sends surface here on some systems; keep going.
                    tracing::debug!(error = %e, "gossip recv error");
                    continue;
                }
            };
            self.metrics.bytes_received.increment(n as u64);
            let keyring = self.keyring.load();
            let message = keyring
                .open(&self.aad, &mut self.recv[..n])
                .and_then(|mut plain| ChitchatMessage::deserialize(&mut plain).ok());
            match message {
                Some(m) => {
                    self.metrics.received.increment(1);
                    return Ok((from, m));
                }
                None => {
                    self.metrics.rejected.increment(1);
                    self.totals
                        .packets_rejected
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(peer = %from, bytes = n, "gossip packet rejected (wrong key, cluster or format)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_packets_open_with_any_key_of_the_ring_and_only_for_their_cluster() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let old = Keyring::from_keys(&[a]);
        let rotating = Keyring::from_keys(&[b, a]);
        let other = Keyring::from_keys(&[c]);
        let mut out = Vec::new();
        old.seal(b"meridian-gossip/x", b"hello", &mut out).unwrap();
        assert_eq!(out.len(), 1 + NONCE_LEN + 5 + TAG_LEN);
        assert!(
            !out.windows(5).any(|w| w == b"hello"),
            "the payload is encrypted"
        );
        assert_eq!(
            rotating.open(b"meridian-gossip/x", &mut out.clone()),
            Some(&b"hello"[..])
        );
        assert_eq!(other.open(b"meridian-gossip/x", &mut out.clone()), None);
        assert_eq!(
            old.open(b"meridian-gossip/y", &mut out.clone()),
            None,
            "the cluster name is authenticated"
        );
        let mut tampered = out.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(old.open(b"meridian-gossip/x", &mut tampered), None);
        // The rotating ring seals with its first key, which the old ring cannot open.
        rotating
            .seal(b"meridian-gossip/x", b"hi", &mut out)
            .unwrap();
        assert_eq!(old.open(b"meridian-gossip/x", &mut out.clone()), None);
        // Insecure rings speak only plain, and secure rings never accept plain.
        let plain = Keyring::insecure();
        plain.seal(b"", b"hi", &mut out).unwrap();
        assert_eq!(plain.open(b"", &mut out.clone()), Some(&b"hi"[..]));
        assert_eq!(old.open(b"", &mut out.clone()), None);
        old.seal(b"", b"hi", &mut out).unwrap();
        assert_eq!(plain.open(b"", &mut out.clone()), None);
    }

    #[test]
    fn key_files_say_what_is_wrong() {
        assert!(
            Keyring::parse("# comment\n\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").is_ok()
        );
        let e = Keyring::parse("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\nAQID\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("32 bytes"), "{e}");
        assert!(Keyring::parse("not base64!")
            .unwrap_err()
            .contains("not base64"));
        assert!(Keyring::parse("# nothing\n")
            .unwrap_err()
            .contains("no key"));
    }
}
