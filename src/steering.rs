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

use crate::coverage::Coverage;
use crate::geoip::{GeoHit, GeoIp};
use crate::model::{ClusterView, RegionView};

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
    /// Coverage zones.
    pub(crate) coverage: &'a Coverage,
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

/// What a GeoIP record says of where its network is, as far as the choice goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Whereabouts {
    /// Coordinates.
    At(f64, f64),
    /// No coordinates, but a country the cluster map assigns to this region.
    Region(usize),
    /// Neither: the zone's default region.
    Unknown,
}

/// Reads a GeoIP hit against the cluster map's country lists.
pub(crate) fn whereabouts(hit: &GeoHit, countries: &[(String, usize)]) -> Whereabouts {
    if let (Some(lat), Some(lon)) = (hit.lat, hit.lon) {
        return Whereabouts::At(lat, lon);
    }
    hit.country
        .as_ref()
        .and_then(|code| countries.iter().find(|(c, _)| c == code))
        .map_or(Whereabouts::Unknown, |(_, r)| Whereabouts::Region(*r))
}

/// Where a client address's search ends, before its GeoIP record is read.
pub(crate) enum Search<'a> {
    /// In this coverage zone, pinned to this region.
    Covered(IpNet, usize),
    /// Outside every coverage zone: the GeoIP lookup, if there is a database.
    Beyond(Option<crate::geoip::Lookup<'a>>),
}

/// Searches the coverage zones, then the GeoIP database, for `ip`; returns where the search
/// ended and the prefix length that is true for an answer decided there (the ECS scope before
/// any subnet hashing).
///
/// The answer for a client in a zone holds for the zone's network, but no further than it
/// keeps clear of more specific zones the client is outside of; outside every zone, the answer
/// rests on staying outside them, so the same guard applies. Beyond the zones, the GeoIP
/// network the search ended in says how far the answer holds, whatever its record says (and
/// without a database, only the coverage zones matter).
pub(crate) fn search<'a>(
    coverage: &Coverage,
    geoip: Option<&'a GeoIp>,
    ip: IpAddr,
) -> (Search<'a>, u8) {
    let covered = coverage.find(ip);
    let guard = covered.guard;
    if let Some((net, region)) = covered.zone {
        return (Search::Covered(net, region), net.prefix_len().max(guard));
    }
    let lookup = geoip.and_then(|g| g.lookup(ip));
    let prefix = lookup.as_ref().map_or(0, |l| l.prefix).max(guard);
    (Search::Beyond(lookup), prefix)
}

/// Finds where `ip` (with `source_prefix` significant bits) is.
pub(crate) fn locate(
    loc: &Locator<'_>,
    view: &ClusterView,
    ip: IpAddr,
    source_prefix: u8,
    default_region: usize,
) -> Place {
    let _ = source_prefix;
    let at = |region: usize| {
        view.regions
            .get(region)
            .map(|r| (r.lat, r.lon))
            .unwrap_or((0.0, 0.0))
    };
    let pinned = |region: usize, source: Source, prefix: u8| {
        let (lat, lon) = at(region);
        Place {
            lat,
            lon,
            region: Some(region),
            source,
            prefix,
        }
    };
    let (lookup, prefix) = match search(loc.coverage, loc.geoip, ip) {
        (Search::Covered(net, region), prefix) => {
            return pinned(region, Source::Coverage(net), prefix);
        }
        (Search::Beyond(lookup), prefix) => (lookup, prefix),
    };
    let hit = lookup.map(|l| l.hit());
    let found = hit
        .as_ref()
        .map_or(Whereabouts::Unknown, |h| whereabouts(h, loc.countries));
    match (found, hit) {
        (Whereabouts::At(lat, lon), _) => Place {
            lat,
            lon,
            region: None,
            source: Source::GeoIp { prefix },
            prefix,
        },
        (Whereabouts::Region(region), Some(h)) => {
            let code = h.country.unwrap_or_default();
            pinned(region, Source::Country { code, prefix }, prefix)
        }
        _ => pinned(default_region, Source::Default, prefix),
    }
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
    let h = match net.network() {
        IpAddr::V4(v) => hash_bytes(u64::from(prefix), &v.octets()),
        IpAddr::V6(v) => hash_bytes(u64::from(prefix), &v.octets()),
    };
    (h, prefix)
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

impl Choice {
    /// The decision without the ranking and the edges.
    pub(crate) fn pick(&self) -> Pick {
        Pick {
            region: self.region,
            spilled: self.spilled,
            fail_open: self.fail_open,
            hashed: self.hashed,
        }
    }
}

/// What [`pick`] decided, besides the edges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pick {
    /// The region answered from (`None` when failing open).
    pub(crate) region: Option<usize>,
    /// This client was moved off the nearest available region by load.
    pub(crate) spilled: bool,
    /// No edge was available anywhere: every configured edge is answered.
    pub(crate) fail_open: bool,
    /// The answer depends on the client subnet hash (spill share or edge pick).
    pub(crate) hashed: bool,
}

/// Regions nearest first from (`lat`, `lon`), with the distance in km; a `pinned` region
/// (coverage zone, country, default) comes first whatever the distance. Ties go to the region
/// listed first.
pub(crate) fn rank(
    regions: &[RegionView],
    lat: f64,
    lon: f64,
    pinned: Option<usize>,
) -> Vec<(usize, f64)> {
    let client = Point::new(lat, lon);
    let mut ranking: Vec<(usize, f64)> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let km = if pinned == Some(i) {
                0.0
            } else {
                client.km(&r.at)
            };
            (i, km)
        })
        .collect();
    ranking.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    ranking
}

/// What a view says per region for the choice, computed once per view: the load of each
/// region's available edges and which they are, and each edge's half of the rendezvous hash.
#[derive(Debug, Default)]
pub(crate) struct Availability {
    /// Per region: load (`None` with no available edge) and where its edges are in `edges`.
    regions: Vec<(Option<f64>, std::ops::Range<usize>)>,
    /// Available edges, region by region.
    edges: Vec<usize>,
    /// Per edge of the view: the hash of its id.
    keys: Vec<u64>,
}

impl Availability {
    pub(crate) fn of(view: &ClusterView) -> Availability {
        let mut edges: Vec<usize> = (0..view.edges.len())
            .filter(|&i| view.edges[i].available() && view.edges[i].region < view.regions.len())
            .collect();
        // Edges heard of through gossip but not in the map stand in for a region's map edges
        // only when none of those is available: a key holder announcing members (or a
        // misconfigured node) can never push the real edges out of the answers.
        let mut mapped = vec![false; view.regions.len()];
        for &i in &edges {
            mapped[view.edges[i].region] |= view.edges[i].in_map;
        }
        edges.retain(|&i| view.edges[i].in_map || !mapped[view.edges[i].region]);
        edges.sort_by_key(|&i| view.edges[i].region);
        let mut regions = Vec::with_capacity(view.regions.len());
        let mut start = 0;
        for region in 0..view.regions.len() {
            let end = start
                + edges[start..]
                    .iter()
                    .take_while(|&&i| view.edges[i].region == region)
                    .count();
            // A region's load: the capacity-weighted mean utilisation of its available edges
            // (the sum of reported load over the sum of capacity).
            let (load, capacity) = edges[start..end]
                .iter()
                .map(|&i| &view.edges[i])
                .fold((0.0, 0.0), |(l, c), e| {
                    (l + e.load * e.capacity, c + e.capacity)
                });
            let load = (end > start).then(|| if capacity > 0.0 { load / capacity } else { 0.0 });
            regions.push((load, start..end));
            start = end;
        }
        Availability {
            regions,
            edges,
            keys: view
                .edges
                .iter()
                .map(|e| hash_bytes(0x6564_6765, e.id.as_bytes()))
                .collect(),
        }
    }

    /// A region's load; `None` when none of its edges is available.
    pub(crate) fn load(&self, region: usize) -> Option<f64> {
        self.regions.get(region).and_then(|r| r.0)
    }

    /// A region's available edges.
    fn edges(&self, region: usize) -> &[usize] {
        self.regions
            .get(region)
            .map_or(&[][..], |r| &self.edges[r.1.clone()])
    }
}

/// Picks the region and edges for a client with subnet hash `hash`, given the regions nearest
/// first (`order`): the nearest region with available edges, or for a proportional share of
/// its clients when it is past the high-water mark the next-nearest region with headroom; then
/// up to `policy.answers` of the region's available edges by rendezvous hashing. The edges go
/// to `edges` (cleared first).
pub(crate) fn pick(
    avail: &Availability,
    order: impl Iterator<Item = usize>,
    policy: Policy,
    hash: u64,
    edges: &mut Vec<usize>,
) -> Pick {
    edges.clear();
    let mut order = order.filter(|&r| avail.load(r).is_some());
    let Some(first) = order.next() else {
        edges.extend(0..avail.keys.len());
        return Pick {
            region: None,
            spilled: false,
            fail_open: true,
            hashed: false,
        };
    };
    let mut chosen = first;
    let mut spilled = false;
    let mut hashed = false;
    let load = avail.load(first).unwrap_or(0.0);
    if load > policy.high_water {
        // Move the share of clients that brings the region back to the mark: (L - hw) / L.
        hashed = true;
        let share = (load - policy.high_water) / load;
        let u = (mix(hash ^ 0x5370_696c_6c21) >> 11) as f64 / (1u64 << 53) as f64;
        if u < share {
            if let Some(next) =
                order.find(|&r| avail.load(r).is_some_and(|l| l < policy.high_water))
            {
                chosen = next;
                spilled = true;
            }
        }
    }
    let candidates = avail.edges(chosen);
    if candidates.len() > policy.answers {
        hashed = true;
    }
    // Rendezvous: the edges with the highest scores, ties to the lower index; `answers` is a
    // handful, so a scan per answer beats sorting every candidate.
    let score = |i: usize| (mix(hash ^ avail.keys[i]), std::cmp::Reverse(i));
    let mut last = None;
    for _ in 0..policy.answers.min(candidates.len()) {
        let best = candidates
            .iter()
            .map(|&i| (score(i), i))
            .filter(|(s, _)| last.is_none_or(|l| *s < l))
            .max_by_key(|(s, _)| *s);
        let Some((s, i)) = best else { break };
        edges.push(i);
        last = Some(s);
    }
    Pick {
        region: Some(chosen),
        spilled,
        fail_open: false,
        hashed,
    }
}

/// Picks the region and edges for a client at `place` with subnet hash `hash`.
pub(crate) fn choose(view: &ClusterView, place: &Place, policy: Policy, hash: u64) -> Choice {
    let avail = Availability::of(view);
    let ranked = rank(&view.regions, place.lat, place.lon, place.region);
    let mut edges = Vec::new();
    let p = pick(&avail, ranked.iter().map(|r| r.0), policy, hash, &mut edges);
    Choice {
        ranking: ranked
            .into_iter()
            .map(|(region, km)| Ranked {
                region,
                km,
                load: avail.load(region),
            })
            .collect(),
        region: p.region,
        edges,
        spilled: p.spilled,
        fail_open: p.fail_open,
        hashed: p.hashed,
    }
}

/// The ECS scope prefix that is true for a decision: the prefix of the network that decided the
/// place, and the hashed subnet's when the hash changed the answer; 0 when the answer did not
/// depend on the client at all (fail-open).
pub(crate) fn scope(place_prefix: u8, pick: Pick, hash_prefix: u8) -> u8 {
    if pick.fail_open {
        return 0;
    }
    if pick.hashed {
        place_prefix.max(hash_prefix)
    } else {
        place_prefix
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
            in_map: true,
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
    fn several_answers_are_a_stable_rendezvous_pick() {
        let mut v = view();
        v.edges.push(EdgeView {
            id: "a3".into(),
            ..v.edges[0].clone()
        });
        let two = Policy {
            answers: 2,
            ..POLICY
        };
        let seattle = at(47.25, -122.31);
        let picks: Vec<Vec<usize>> = (0..300u64)
            .map(|h| choose(&v, &seattle, two, mix(h)).edges)
            .collect();
        for p in &picks {
            assert_eq!(p.len(), 2);
            assert_ne!(p[0], p[1]);
            assert!(p.iter().all(|e| [0, 1, 4].contains(e)), "{p:?}");
        }
        // Every pair of us-west's three edges is handed out.
        for pair in [[0, 1], [0, 4], [1, 4]] {
            assert!(picks
                .iter()
                .any(|p| p.contains(&pair[0]) && p.contains(&pair[1])));
        }
        // Taking a3 out moves only the clients that had it.
        v.edges[4].healthy = false;
        for (h, before) in picks.iter().enumerate() {
            let after = choose(&v, &seattle, two, mix(h as u64)).edges;
            if !before.contains(&4) {
                assert_eq!(&after, before);
            }
        }
        // More answers than edges: all of them.
        let many = Policy {
            answers: 5,
            ..POLICY
        };
        let mut all = choose(&v, &seattle, many, 1).edges;
        all.sort();
        assert_eq!(all, [0, 1]);
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
        assert_eq!(scope(at(LONDON.0, LONDON.1).prefix, c.pick(), 24), 0);
    }

    #[test]
    fn scopes() {
        let v = view();
        let london = at(LONDON.0, LONDON.1);
        let c = choose(&v, &london, POLICY, 1);
        assert_eq!(scope(london.prefix, c.pick(), 24), 24);
        let narrow = Place {
            prefix: 31,
            ..london.clone()
        };
        assert_eq!(
            scope(narrow.prefix, choose(&v, &narrow, POLICY, 1).pick(), 24),
            31
        );
        let wide = Place {
            prefix: 16,
            ..london
        };
        assert_eq!(
            scope(wide.prefix, choose(&v, &wide, POLICY, 1).pick(), 24),
            16
        );
        let seattle = Place {
            prefix: 16,
            ..at(47.25, -122.31)
        };
        assert_eq!(
            scope(seattle.prefix, choose(&v, &seattle, POLICY, 1).pick(), 24),
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
        let cov = Coverage::new(vec![
            ("198.51.100.0/24".parse().unwrap(), 0),
            ("198.51.0.0/16".parse().unwrap(), 1),
        ]);
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
            coverage: &Coverage::default(),
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

    #[test]
    fn edges_outside_the_map_never_push_map_edges_out() {
        let mut v = view();
        for i in 0..20 {
            v.edges.push(EdgeView {
                id: format!("junk{i}"),
                in_map: false,
                ..v.edges[0].clone()
            });
        }
        let seattle = at(47.25, -122.31);
        let two = Policy {
            answers: 2,
            ..POLICY
        };
        for h in 0..300u64 {
            let mut p = choose(&v, &seattle, two, mix(h)).edges;
            p.sort_unstable();
            assert_eq!(p, [0, 1], "hash {h}");
        }
        // With the region's map edges down, the others stand in.
        v.edges[0].healthy = false;
        v.edges[1].healthy = false;
        let p = choose(&v, &seattle, two, mix(7)).edges;
        assert!(p.iter().all(|&e| e >= 4), "{p:?}");
        assert_eq!(p.len(), 2);
    }
}
