//! Pure edge selection: where a client is, and which edges it gets.
//!
//! [`locate`] turns a client address into a place: a coverage zone (longest prefix) first, then
//! the GeoIP database's coordinates, then its country through the cluster map's country lists,
//! then the zone's default region. [`choose`] ranks regions by great-circle distance from that
//! place, takes the nearest one with available edges, spills a proportional, deterministic share
//! of its clients to the next-nearest region with headroom when it runs past the high-water mark,
//! and picks up to `answers` of its edges by rendezvous hashing on the client subnet, so a client
//! sees a stable answer. With no available edge anywhere it fails open to every edge.
//!
//! No DNS types and no I/O: the same function serves queries, `meridian route` and unit tests.
//! Hashes are fixed functions (not `RandomState`) so every DNS node gives a client the same answer.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::geoip::{GeoHit, GeoIp};
use crate::model::ClusterView;

/// Mean Earth radius in km.
const EARTH_KM: f64 = 6371.0;
/// Client bits that feed the subnet hash at most (a /24 or /48 gets one answer).
const HASH_PREFIX_V4: u8 = 24;
const HASH_PREFIX_V6: u8 = 48;

/// Where a client's place came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    Coverage(IpNet),
    GeoIp { prefix: u8 },
    Country { code: String, prefix: u8 },
    Default,
}

/// A client's place.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Place {
    pub(crate) lat: f64,
    pub(crate) lon: f64,
    /// The region the place is pinned to (coverage zone, country or default), if any.
    pub(crate) region: Option<usize>,
    pub(crate) source: Source,
    /// Prefix length of the network that decided the place: what the answer depends on.
    pub(crate) prefix: u8,
}

/// Inputs of [`locate`] that come from the cluster map.
pub(crate) struct Locator<'a> {
    /// Coverage zones, longest prefix first.
    pub(crate) coverage: &'a [(IpNet, usize)],
    /// Country code → region.
    pub(crate) countries: &'a [(String, usize)],
    pub(crate) geoip: Option<&'a GeoIp>,
}

/// The prefix length that `ip`'s source prefix can be trusted to (the client's own address: all
/// of it).
pub(crate) fn full_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// Finds where `ip` (with `source_prefix` significant bits) is.
pub(crate) fn locate(
    loc: &Locator<'_>,
    view: &ClusterView,
    ip: IpAddr,
    source_prefix: u8,
    default_region: usize,
) -> Place {
    let at = |region: usize| {
        view.regions
            .get(region)
            .map(|r| (r.lat, r.lon))
            .unwrap_or((0.0, 0.0))
    };
    if let Some((net, region)) = loc.coverage.iter().find(|(n, _)| n.contains(&ip)) {
        let (lat, lon) = at(*region);
        let prefix = net.prefix_len().max(coverage_guard(ip, loc.coverage));
        return Place {
            lat,
            lon,
            region: Some(*region),
            source: Source::Coverage(*net),
            prefix,
        };
    }
    // Outside every coverage zone, the answer also rests on staying outside them: the scope
    // must be narrow enough that no coverage zone overlaps the client's network.
    let guard = coverage_guard(ip, loc.coverage);
    let hit: Option<GeoHit> = loc.geoip.and_then(|g| g.locate(ip));
    if let Some(h) = &hit {
        let prefix = h.prefix.max(guard);
        if let (Some(lat), Some(lon)) = (h.lat, h.lon) {
            return Place {
                lat,
                lon,
                region: None,
                source: Source::GeoIp { prefix },
                prefix,
            };
        }
        if let Some(code) = &h.country {
            if let Some((_, region)) = loc.countries.iter().find(|(c, _)| c == code) {
                let (lat, lon) = at(*region);
                return Place {
                    lat,
                    lon,
                    region: Some(*region),
                    source: Source::Country {
                        code: code.clone(),
                        prefix,
                    },
                    prefix,
                };
            }
        }
    }
    let (lat, lon) = at(default_region);
    // The default depends on the address only through "no better network matched": the GeoIP
    // network the search ended in says how far that holds (without a database, only coverage
    // zones matter).
    let prefix = hit.as_ref().map_or(0, |h| h.prefix).max(guard);
    let _ = source_prefix;
    Place {
        lat,
        lon,
        region: Some(default_region),
        source: Source::Default,
        prefix,
    }
}

/// The shortest prefix length of `ip`'s network that overlaps no coverage zone `ip` is outside
/// of: one bit past the longest run it shares with any such zone.
fn coverage_guard(ip: IpAddr, coverage: &[(IpNet, usize)]) -> u8 {
    let bits = |a: IpAddr| -> u128 {
        match a {
            IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
            IpAddr::V6(v) => u128::from(v),
        }
    };
    coverage
        .iter()
        .filter(|(n, _)| n.addr().is_ipv4() == ip.is_ipv4() && !n.contains(&ip))
        .map(|(n, _)| {
            let common = (bits(ip) ^ bits(n.network())).leading_zeros() as u8;
            common.min(n.prefix_len()) + 1
        })
        .max()
        .unwrap_or(0)
        .min(full_prefix(ip))
}

/// A place on the sphere as a unit vector: made once per region (and once per query for the
/// client), so a distance costs a few multiplications, a square root and an `atan2` instead of
/// a haversine's four sines and cosines and an arcsine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    x: f64,
    y: f64,
    z: f64,
}

impl Point {
    pub(crate) fn new(lat: f64, lon: f64) -> Point {
        let (sp, cp) = lat.to_radians().sin_cos();
        let (sl, cl) = lon.to_radians().sin_cos();
        Point {
            x: cp * cl,
            y: cp * sl,
            z: sp,
        }
    }

    /// Great-circle distance in km (the angle from the cross and dot products: accurate at
    /// every distance).
    pub(crate) fn km(&self, o: &Point) -> f64 {
        let dot = self.x * o.x + self.y * o.y + self.z * o.z;
        let cx = self.y * o.z - self.z * o.y;
        let cy = self.z * o.x - self.x * o.z;
        let cz = self.x * o.y - self.y * o.x;
        EARTH_KM * (cx * cx + cy * cy + cz * cz).sqrt().atan2(dot)
    }
}

/// 64-bit FNV-1a, then a splitmix finaliser for an even spread.
fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stable hash of a client subnet: the address cut to its source prefix (at most /24 or
/// /48). Returns the hash and the prefix length it covers.
pub(crate) fn subnet_hash(ip: IpAddr, source_prefix: u8) -> (u64, u8) {
    let cap = if ip.is_ipv4() {
        HASH_PREFIX_V4
    } else {
        HASH_PREFIX_V6
    };
    let prefix = source_prefix.min(cap);
    let net = IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip));
    let bytes = match net.network() {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    (hash_bytes(u64::from(prefix), &bytes), prefix)
}

/// Selection settings of a zone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) answers: usize,
    pub(crate) high_water: f64,
}

/// One region as the decision saw it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ranked {
    pub(crate) region: usize,
    pub(crate) km: f64,
    /// Load of its available edges, `None` when it has none.
    pub(crate) load: Option<f64>,
}

/// The decision for one client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Choice {
    /// Regions by distance.
    pub(crate) ranking: Vec<Ranked>,
    /// The region answered from (`None` when failing open).
    pub(crate) region: Option<usize>,
    /// Indexes into `ClusterView::edges`.
    pub(crate) edges: Vec<usize>,
    /// This client was moved off the nearest available region by load.
    pub(crate) spilled: bool,
    /// No edge was available anywhere: every configured edge is answered.
    pub(crate) fail_open: bool,
    /// The answer depends on the client subnet hash (spill share or edge pick).
    pub(crate) hashed: bool,
}

/// Picks the region and edges for a client at `place` with subnet hash `hash`.
pub(crate) fn choose(view: &ClusterView, place: &Place, policy: Policy, hash: u64) -> Choice {
    let client = Point::new(place.lat, place.lon);
    let mut ranking: Vec<Ranked> = view
        .regions
        .iter()
        .enumerate()
        .map(|(i, r)| Ranked {
            region: i,
            // A pinned region (coverage zone, country, default) comes first whatever the distance.
            km: if place.region == Some(i) {
                0.0
            } else {
                client.km(&r.at)
            },
            load: view.region_load(i),
        })
        .collect();
    ranking.sort_by(|a, b| a.km.total_cmp(&b.km).then(a.region.cmp(&b.region)));

    let Some(first) = ranking.iter().position(|r| r.load.is_some()) else {
        return Choice {
            ranking,
            region: None,
            edges: (0..view.edges.len()).collect(),
            spilled: false,
            fail_open: true,
            hashed: false,
        };
    };
    let mut chosen = ranking[first].region;
    let mut spilled = false;
    let mut hashed = false;
    let load = ranking[first].load.unwrap_or(0.0);
    if load > policy.high_water {
        // Move the share of clients that brings the region back to the mark: (L - hw) / L.
        hashed = true;
        let share = (load - policy.high_water) / load;
        let u = (mix(hash ^ 0x5370_696c_6c21) >> 11) as f64 / (1u64 << 53) as f64;
        if u < share {
            if let Some(next) = ranking[first + 1..]
                .iter()
                .find(|r| r.load.is_some_and(|l| l < policy.high_water))
            {
                chosen = next.region;
                spilled = true;
            }
        }
    }
    let mut candidates: Vec<(u64, usize)> = view
        .edges
        .iter()
        .enumerate()
        .filter(|(_, e)| e.region == chosen && e.available())
        .map(|(i, e)| (hash_bytes(hash, e.id.as_bytes()), i))
        .collect();
    if candidates.len() > policy.answers {
        hashed = true;
    }
    candidates.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let edges = candidates
        .into_iter()
        .take(policy.answers)
        .map(|(_, i)| i)
        .collect();
    Choice {
        ranking,
        region: Some(chosen),
        edges,
        spilled,
        fail_open: false,
        hashed,
    }
}

/// The ECS scope prefix that is true for a choice: the network that decided the place, and the
/// hashed subnet when the hash changed the answer; 0 when the answer did not depend on the
/// client at all (fail-open).
pub(crate) fn scope(place: &Place, choice: &Choice, hash_prefix: u8) -> u8 {
    if choice.fail_open {
        return 0;
    }
    if choice.hashed {
        place.prefix.max(hash_prefix)
    } else {
        place.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EdgeView, RegionView};

    fn view() -> ClusterView {
        let region = |name: &str, lat, lon| RegionView::new(name, lat, lon);
        let edge = |id: &str, region| EdgeView {
            id: id.into(),
            region,
            v4: vec![],
            v6: vec![],
            capacity: 1.0,
            healthy: true,
            draining: false,
            load: 0.0,
        };
        ClusterView {
            regions: vec![
                region("us-west", 47.61, -122.33),
                region("eu-west", 51.51, -0.13),
                region("ap-east", 35.68, 139.69),
            ],
            edges: vec![edge("a1", 0), edge("a2", 0), edge("b1", 1), edge("c1", 2)],
        }
    }

    fn at(lat: f64, lon: f64) -> Place {
        Place {
            lat,
            lon,
            region: None,
            source: Source::GeoIp { prefix: 24 },
            prefix: 24,
        }
    }

    const LONDON: (f64, f64) = (51.5142, -0.0931);
    const POLICY: Policy = Policy {
        answers: 1,
        high_water: 0.8,
    };

    #[test]
    fn nearest_region_and_stable_pick() {
        let v = view();
        let c = choose(&v, &at(LONDON.0, LONDON.1), POLICY, 7);
        assert_eq!(c.region, Some(1));
        assert_eq!(c.edges, [2]);
        assert!(!c.hashed && !c.spilled && !c.fail_open);
        assert_eq!(
            c.ranking.iter().map(|r| r.region).collect::<Vec<_>>(),
            [1, 0, 2]
        );
        // Seattle has two edges and one answer: the pick depends on the hash, stably.
        let seattle = at(47.25, -122.31);
        let picks: Vec<_> = (0..200u64)
            .map(|h| choose(&v, &seattle, POLICY, h).edges[0])
            .collect();
        assert!(picks.contains(&0) && picks.contains(&1));
        assert_eq!(
            choose(&v, &seattle, POLICY, 42),
            choose(&v, &seattle, POLICY, 42)
        );
        assert!(choose(&v, &seattle, POLICY, 42).hashed);
    }

    #[test]
    fn unhealthy_and_draining_edges_are_skipped() {
        let mut v = view();
        v.edges[2].healthy = false;
        let c = choose(&v, &at(LONDON.0, LONDON.1), POLICY, 1);
        assert_eq!(
            c.region,
            Some(0),
            "London falls to the next-nearest region, us-west"
        );
        v.edges[2].healthy = true;
        v.edges[2].draining = true;
        assert_eq!(
            choose(&v, &at(LONDON.0, LONDON.1), POLICY, 1).region,
            Some(0)
        );
    }

    #[test]
    fn spill_share_is_proportional_and_deterministic() {
        let mut v = view();
        v.edges[2].load = 1.6; // eu-west at 160% with a high-water mark of 80%: half must move.
        let n = 20_000u64;
        let moved = (0..n)
            .filter(|h| choose(&v, &at(LONDON.0, LONDON.1), POLICY, mix(*h)).spilled)
            .count();
        let share = moved as f64 / n as f64;
        assert!((share - 0.5).abs() < 0.02, "spilled {share}");
        // Those who move go to the next-nearest region with headroom.
        let c = (0..n)
            .map(|h| choose(&v, &at(LONDON.0, LONDON.1), POLICY, mix(h)))
            .find(|c| c.spilled)
            .unwrap();
        assert_eq!(c.region, Some(0));
        assert!(c.hashed);
        // The same client always gets the same answer.
        for h in 0..100 {
            assert_eq!(
                choose(&v, &at(LONDON.0, LONDON.1), POLICY, mix(h)),
                choose(&v, &at(LONDON.0, LONDON.1), POLICY, mix(h))
            );
        }
        // At 100% load: 20% move.
        v.edges[2].load = 1.0;
        let moved = (0..n)
            .filter(|h| choose(&v, &at(LONDON.0, LONDON.1), POLICY, mix(*h)).spilled)
            .count();
        assert!(((moved as f64 / n as f64) - 0.2).abs() < 0.02);
        // Below the mark nobody moves.
        v.edges[2].load = 0.79;
        assert!((0..1000).all(|h| !choose(&v, &at(LONDON.0, LONDON.1), POLICY, mix(h)).spilled));
    }

    #[test]
    fn no_spill_without_headroom_elsewhere() {
        let mut v = view();
        for e in &mut v.edges {
            e.load = 2.0;
        }
        assert!((0..1000).all(|h| {
            let c = choose(&v, &at(LONDON.0, LONDON.1), POLICY, mix(h));
            c.region == Some(1) && !c.spilled
        }));
    }

    #[test]
    fn fail_open_answers_every_edge() {
        let mut v = view();
        for e in &mut v.edges {
            e.healthy = false;
        }
        let c = choose(&v, &at(LONDON.0, LONDON.1), POLICY, 3);
        assert!(c.fail_open);
        assert_eq!(c.edges, [0, 1, 2, 3]);
        assert_eq!(scope(&at(LONDON.0, LONDON.1), &c, 24), 0);
    }

    #[test]
    fn scopes() {
        let v = view();
        let london = at(LONDON.0, LONDON.1);
        let c = choose(&v, &london, POLICY, 1);
        assert_eq!(scope(&london, &c, 24), 24);
        let narrow = Place {
            prefix: 31,
            ..london.clone()
        };
        assert_eq!(scope(&narrow, &choose(&v, &narrow, POLICY, 1), 24), 31);
        let wide = Place {
            prefix: 16,
            ..london
        };
        assert_eq!(scope(&wide, &choose(&v, &wide, POLICY, 1), 24), 16);
        let seattle = Place {
            prefix: 16,
            ..at(47.25, -122.31)
        };
        assert_eq!(
            scope(&seattle, &choose(&v, &seattle, POLICY, 1), 24),
            24,
            "the hash picked the edge"
        );
    }

    #[test]
    fn subnet_hash_ignores_host_bits() {
        let a = subnet_hash("81.2.69.142".parse().unwrap(), 32);
        let b = subnet_hash("81.2.69.7".parse().unwrap(), 32);
        assert_eq!(a, b);
        assert_eq!(a.1, 24);
        assert_ne!(a.0, subnet_hash("81.2.70.1".parse().unwrap(), 32).0);
        assert_eq!(subnet_hash("2001:db8::1".parse().unwrap(), 56).1, 48);
    }

    #[test]
    fn scope_excludes_nearby_coverage_zones() {
        let cov: Vec<(IpNet, usize)> = vec![
            ("198.51.100.0/24".parse().unwrap(), 0),
            ("198.51.0.0/16".parse().unwrap(), 1),
        ];
        let loc = Locator {
            coverage: &cov,
            countries: &[],
            geoip: None,
        };
        let v = view();
        // Inside the /24: decided by it.
        let p = locate(&loc, &v, "198.51.100.9".parse().unwrap(), 32, 1);
        assert_eq!((p.region, p.prefix), (Some(0), 24));
        // Inside the /16 but not the /24: the /16 decides, but only a network that keeps clear of
        // the /24 is true: 198.51.101.9 shares 23 bits with 198.51.100.0, so /24.
        let p = locate(&loc, &v, "198.51.101.9".parse().unwrap(), 32, 1);
        assert_eq!((p.region, p.prefix), (Some(1), 24));
        // Far from both: the default, true for a wide network.
        let p = locate(&loc, &v, "10.0.0.1".parse().unwrap(), 32, 2);
        assert_eq!((p.region, p.prefix), (Some(2), 1));
        let none = Locator {
            coverage: &[],
            countries: &[],
            geoip: None,
        };
        assert_eq!(
            locate(&none, &v, "10.0.0.1".parse().unwrap(), 32, 2).prefix,
            0
        );
    }

    /// Great-circle distance in km by the haversine: the reference for [`Point::km`].
    fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
        let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
        let dp = (lat2 - lat1).to_radians();
        let dl = (lon2 - lon1).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_KM * a.sqrt().asin()
    }

    #[test]
    fn distances() {
        let km = distance_km(LONDON.0, LONDON.1, 47.61, -122.33);
        assert!((7600.0..7800.0).contains(&km), "{km}");
        // The vector form agrees with the haversine, near and far.
        for (a, b) in [
            ((51.5142, -0.0931), (47.61, -122.33)),
            ((51.5142, -0.0931), (51.51, -0.13)),
            ((35.68, 139.69), (-33.87, 151.21)),
            ((0.0, 0.0), (0.0, 180.0)),
            ((10.0, 10.0), (10.0, 10.0)),
        ] {
            let h = distance_km(a.0, a.1, b.0, b.1);
            let v = Point::new(a.0, a.1).km(&Point::new(b.0, b.1));
            assert!((h - v).abs() < 1e-6 * h.max(1.0), "{a:?} {b:?}: {h} vs {v}");
        }
    }
}
