//! Coverage zones: which zone a client address is in (longest prefix), and how far the answer
//! for it holds, in one walk down a binary trie of the zones' prefixes.
//!
//! An operator's coverage list can run to thousands of networks (one per customer ISP block);
//! scanning it twice per query would cost more than the rest of the answer. The trie makes both
//! questions one pass over the address's bits (at most 32 or 128 steps), whatever the list's
//! length.

use std::net::IpAddr;

use ipnet::IpNet;

/// The coverage zones of a cluster map, ready for lookups.
#[derive(Debug, Default)]
pub(crate) struct Coverage {
    /// The zones as the map lists them: network and region.
    zones: Vec<(IpNet, usize)>,
    v4: Trie,
    v6: Trie,
}

/// A binary trie over address bits; node 0 is the root. Every node lies on the way to a zone.
#[derive(Debug, Default)]
struct Trie {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// Children by the next bit (0: none, as the root is never a child).
    child: [u32; 2],
    /// The zone whose prefix ends here (index into `zones`).
    zone: Option<u32>,
}

/// What the zones say of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    /// The most specific zone containing the address: its network and region.
    pub(crate) zone: Option<(IpNet, usize)>,
    /// The shortest prefix of the address's network that overlaps no zone the address is
    /// outside of (one bit past the longest run it shares with any such zone): how far an
    /// answer that rests on being outside them holds.
    pub(crate) guard: u8,
}

/// An address as bits from the top, and how many there are.
fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32),
        IpAddr::V6(v) => (u128::from(v), 128),
    }
}

fn bit(bits: u128, depth: u8) -> usize {
    ((bits >> (127 - u32::from(depth))) & 1) as usize
}

impl Trie {
    fn insert(&mut self, net: &IpNet, zone: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::default());
        }
        let (b, _) = bits(net.network());
        let mut at = 0;
        for depth in 0..net.prefix_len() {
            let next = bit(b, depth);
            if self.nodes[at].child[next] == 0 {
                self.nodes.push(Node::default());
                self.nodes[at].child[next] = (self.nodes.len() - 1) as u32;
            }
            at = self.nodes[at].child[next] as usize;
        }
        // A network listed twice: the first listing wins.
        self.nodes[at].zone.get_or_insert(zone);
    }
}

impl Coverage {
    pub(crate) fn new(zones: Vec<(IpNet, usize)>) -> Coverage {
        let mut c = Coverage {
            zones,
            ..Coverage::default()
        };
        for (i, (net, _)) in c.zones.iter().enumerate() {
            let trie = if net.addr().is_ipv4() {
                &mut c.v4
            } else {
                &mut c.v6
            };
            trie.insert(net, i as u32);
        }
        c
    }

    /// The zone `ip` is in and the guard prefix (see [`Found`]).
    pub(crate) fn find(&self, ip: IpAddr) -> Found {
        let trie = if ip.is_ipv4() { &self.v4 } else { &self.v6 };
        let (b, len) = bits(ip);
        let mut found = Found {
            zone: None,
            guard: 0,
        };
        if trie.nodes.is_empty() {
            return found;
        }
        let mut at = 0;
        let mut depth = 0u8;
        loop {
            let node = trie.nodes[at];
            if let Some(z) = node.zone {
                found.zone = Some(self.zones[z as usize]);
            }
            if depth == len {
                break;
            }
            let next = bit(b, depth);
            // Zones down the other branch share exactly `depth` bits with `ip`.
            if node.child[1 - next] != 0 {
                found.guard = depth + 1;
            }
            match node.child[next] {
                0 => break,
                child => {
                    at = child as usize;
                    depth += 1;
                }
            }
        }
        found.guard = found.guard.min(len);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definitions, by scanning every zone.
    fn reference(zones: &[(IpNet, usize)], ip: IpAddr) -> Found {
        let zone = zones
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| n.contains(&ip))
            .max_by_key(|(i, (n, _))| (n.prefix_len(), std::cmp::Reverse(*i)))
            .map(|(_, z)| *z);
        let (b, len) = bits(ip);
        let guard = zones
            .iter()
            .filter(|(n, _)| n.addr().is_ipv4() == ip.is_ipv4() && !n.contains(&ip))
            .map(|(n, _)| {
                let common = (b ^ bits(n.network()).0).leading_zeros() as u8;
                common.min(n.prefix_len()) + 1
            })
            .max()
            .unwrap_or(0)
            .min(len);
        Found { zone, guard }
    }

    #[test]
    fn finds_as_a_scan_of_every_zone_does() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut zones: Vec<(IpNet, usize)> = Vec::new();
        for i in 0..400 {
            let r = next();
            // Zones clustered in a few /8s and /16s so that they nest and neighbour.
            let v4 = IpAddr::from(((r as u32) & 0x0303_ffff | 0x0a00_0000).to_be_bytes());
            let v6 = IpAddr::from((u128::from(r) << 64 | 0x2001_0db8 << 96).to_be_bytes());
            let (ip, max) = if i % 3 == 0 { (v6, 128) } else { (v4, 32) };
            let prefix = (next() % (max + 1)) as u8;
            zones.push((IpNet::new(ip, prefix).unwrap().trunc(), i % 5));
        }
        zones.push(("10.1.0.0/16".parse().unwrap(), 1));
        zones.push(("10.1.0.0/16".parse().unwrap(), 2)); // listed twice: the first wins
        let c = Coverage::new(zones.clone());
        let mut probes: Vec<IpAddr> = zones.iter().map(|(n, _)| n.addr()).collect();
        for _ in 0..5000 {
            let r = next();
            probes.push(IpAddr::from(
                ((r as u32) & 0x0303_ffff | 0x0a00_0000).to_be_bytes(),
            ));
            probes.push(IpAddr::from((r as u32).to_be_bytes()));
            probes.push(IpAddr::from(
                (u128::from(r) << 64 | 0x2001_0db8 << 96).to_be_bytes(),
            ));
        }
        for ip in probes {
            assert_eq!(c.find(ip), reference(&zones, ip), "{ip}");
        }
        assert_eq!(
            c.find("10.1.2.3".parse().unwrap()).zone.map(|z| z.1),
            reference(&zones, "10.1.2.3".parse().unwrap())
                .zone
                .map(|z| z.1)
        );
        assert_eq!(
            Coverage::new(vec![])
                .find("10.0.0.1".parse().unwrap())
                .guard,
            0
        );
    }
}
