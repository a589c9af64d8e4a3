//! Response-rate limiting of UDP answers (`dns.rate_limit`), per client prefix (/24 and /56 by
//! default), as Knot's and NSD's RRL do it: each prefix has a bucket of `responses_per_second`
//! answers refilled continuously; past it, every `slip`-th answer goes out truncated (TC, no
//! records: a real resolver retries over TCP, which is never limited, while a reflection victim
//! gets a few small packets) and the rest are dropped.
//!
//! One table per UDP thread: a client's datagrams reach one thread (the kernel hashes each
//! client's address and port to one `SO_REUSEPORT` socket, and spreading is by client address).
//! The table is direct-mapped by a keyed hash of the prefix; a prefix that takes another's slot
//! starts with a full bucket, so a flood from many prefixes dilutes itself rather than anyone
//! else's limit.

use std::net::IpAddr;
use std::time::Instant;

use crate::config::RateLimitConfig;

/// Slots per thread (16 bytes each).
const SLOTS: usize = 16384;

/// What to do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Send,
    /// Send it truncated, with no records.
    Slip,
    Drop,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    tokens: f32,
    /// Milliseconds since the table's epoch at the last refill.
    at: u32,
}

/// One thread's table.
pub(crate) struct Limiter {
    config: RateLimitConfig,
    slots: Vec<Slot>,
    epoch: Instant,
    seed: u64,
    limited: u64,
}

impl Limiter {
    pub(crate) fn new(config: RateLimitConfig) -> Limiter {
        let mut seed = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut seed);
        Limiter {
            config,
            slots: vec![Slot::default(); SLOTS],
            epoch: Instant::now(),
            seed: u64::from_le_bytes(seed),
            limited: 0,
        }
    }

    /// The prefix `ip` is counted under, as a key (family in the top bits).
    fn key(&self, ip: IpAddr) -> u64 {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let p = u32::from(self.config.ipv4_prefix);
                let masked = if p == 0 {
                    0
                } else {
                    bits & (u32::MAX << (32 - p))
                };
                (1 << 62) | u64::from(masked)
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let p = u32::from(self.config.ipv6_prefix);
                let masked = if p == 0 {
                    0
                } else {
                    bits & (u128::MAX << (128 - p))
                };
                // Fold to 62 bits; distinct prefixes that fold alike share a bucket.
                (2 << 62) | ((masked >> 64) as u64 ^ (masked as u64).rotate_left(17)) >> 2
            }
        }
    }

    /// Counts one answer to `ip` and says what to do with it.
    pub(crate) fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let key = self.key(ip);
        let index = ((key ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 50) as usize % SLOTS;
        let rate = self.config.responses_per_second as f32;
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let slot = &mut self.slots[index];
        if slot.key != key {
            *slot = Slot {
                key,
                tokens: rate,
                at: ms,
            };
        } else {
            let elapsed = ms.wrapping_sub(slot.at) as f32 / 1000.0;
            slot.tokens = (slot.tokens + elapsed * rate).min(rate);
            slot.at = ms;
        }
        if slot.tokens >= 1.0 {
            slot.tokens -= 1.0;
            return Verdict::Send;
        }
        self.limited += 1;
        match self.config.slip {
            0 => Verdict::Drop,
            n if self.limited.is_multiple_of(u64::from(n)) => Verdict::Slip,
            _ => Verdict::Drop,
        }
    }
}

/// Rewrites an answer in place into its truncated form: the header with TC set and no records,
/// and the question. `false` when the answer has no question to keep (then drop it).
pub(crate) fn truncate(answer: &mut Vec<u8>) -> bool {
    if answer.len() < 12 || answer[4..6] != [0, 1] {
        return false;
    }
    let mut at = 12;
    loop {
        let Some(&len) = answer.get(at) else {
            return false;
        };
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return false;
        }
        at += 1 + usize::from(len);
    }
    let end = at + 1 + 4;
    if answer.len() < end {
        return false;
    }
    answer.truncate(end);
    answer[2] |= 0x02; // TC
    answer[6..12].fill(0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_gets_its_rate_and_then_slips_and_drops() {
        let mut l = Limiter::new(RateLimitConfig {
            responses_per_second: 5,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        });
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let same: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "192.0.3.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..9)
            .map(|i| l.check(if i % 2 == 0 { a } else { same }, t))
            .collect();
        assert_eq!(verdicts[..5], [Verdict::Send; 5]);
        assert_eq!(
            verdicts[5..],
            [Verdict::Drop, Verdict::Slip, Verdict::Drop, Verdict::Slip]
        );
        assert_eq!(l.check(other, t), Verdict::Send);
        // A second later the bucket is full again.
        let later = t + std::time::Duration::from_secs(1);
        assert_eq!(l.check(a, later), Verdict::Send);
        let v6: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let v6_same: IpAddr = "2001:db8:0:ff::1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(l.check(v6, t), Verdict::Send);
        }
        assert_ne!(l.check(v6_same, t), Verdict::Send, "the same /56");
    }

    #[test]
    fn truncation_keeps_the_header_and_question() {
        let mut m = vec![0x12, 0x34, 0x84, 0x00, 0, 1, 0, 2, 0, 0, 0, 1];
        m.extend_from_slice(b"\x03www\x04test\x00\x00\x01\x00\x01");
        let question_end = m.len();
        m.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1]);
        assert!(truncate(&mut m));
        assert_eq!(m.len(), question_end);
        assert_eq!(m[2] & 0x02, 0x02);
        assert_eq!(m[6..12], [0; 6]);
    }
}
