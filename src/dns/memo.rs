//! A UDP worker's memo of the part of a decision that stays the same from query to query.
//!
//! Where a client is and which regions are nearest from there depend only on the cluster map
//! and the GeoIP database (the [`Tables`]); the same client subnets ask again and again (a
//! resolver sends its clients' /24s), and many networks share one GeoIP record (a city's, a
//! country's). So a worker keeps, per client address, where its search ended (coverage zone or
//! GeoIP record) and the prefix true for it; per record, what it says (coordinates, or a region
//! by country) and the regions nearest first from there; per pinned region (coverage zone,
//! country, default) its ranking; and per view the [`Availability`] (region loads, available
//! edges). A repeated client then costs two memo probes and the pick, instead of a walk down the
//! GeoIP tree, a scan of the coverage zones, decoding the record and measuring the distance to
//! every region. This is gdnsd's idea (it compiles the whole database into datacenter lists at
//! load), done lazily so loading stays instant and memory stays bounded.
//!
//! The memo starts over when the tables are swapped (a reload), the availability when the view
//! is (gossip). `steering::locate` and `choose` compute the same from scratch for the general
//! path and `meridian route`; a test holds the two equal.

use std::net::IpAddr;
use std::sync::Arc;

use crate::dns::handler::Tables;
use crate::model::{ClusterView, RegionView};
use crate::steering::{self, Availability, Pick, Policy, Whereabouts};

/// Memo entries per worker (direct-mapped: a new entry replaces the one in its slot).
const SLOTS: usize = 4096;

/// What an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// A GeoIP record, by its offset in the database.
    Record(usize),
    /// A region a client is pinned to.
    Region(usize),
}

impl Key {
    fn slot(self) -> usize {
        let (tag, n) = match self {
            Key::Record(o) => (0, o as u64),
            Key::Region(r) => (1, r as u64),
        };
        // Fibonacci hashing: the top bits of a multiplication by 2^64 / golden ratio.
        let h = (n << 1 | tag).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> (64 - SLOTS.trailing_zeros())) as usize
    }
}

struct Entry {
    key: Key,
    /// What the record says (for a region: that region).
    found: Whereabouts,
    /// Regions nearest first, when `found` has coordinates or is a region.
    order: Box<[u32]>,
}

/// A worker's memo; see the module documentation.
pub(crate) struct Memo {
    tables: Option<Arc<Tables>>,
    view: Option<Arc<ClusterView>>,
    avail: Availability,
    /// By client address: where its search ended and the prefix true for it.
    places: Vec<Option<Place>>,
    /// By record or region: what it says and the regions nearest first.
    entries: Vec<Option<Entry>>,
    edges: Vec<usize>,
}

impl Default for Memo {
    fn default() -> Memo {
        Memo {
            tables: None,
            view: None,
            avail: Availability::default(),
            places: vec![None; SLOTS],
            entries: (0..SLOTS).map(|_| None).collect(),
            edges: Vec::new(),
        }
    }
}

/// The entry for `key`, made with `found` (called on a miss) when it is not there.
fn entry<'a>(
    entries: &'a mut [Option<Entry>],
    regions: &[RegionView],
    key: Key,
    found: impl FnOnce() -> Whereabouts,
) -> &'a Entry {
    let slot = &mut entries[key.slot()];
    if slot.as_ref().is_none_or(|e| e.key != key) {
        let found = match key {
            Key::Region(r) => Whereabouts::Region(r),
            Key::Record(_) => found(),
        };
        let ranked = match (key, found) {
            (_, Whereabouts::At(lat, lon)) => steering::rank(regions, lat, lon, None),
            (Key::Region(r), _) => {
                let (lat, lon) = regions.get(r).map_or((0.0, 0.0), |x| (x.lat, x.lon));
                steering::rank(regions, lat, lon, Some(r))
            }
            // A record that pins to a region is ranked under that region's own key.
            (Key::Record(_), _) => Vec::new(),
        };
        *slot = Some(Entry {
            key,
            found,
            order: ranked.into_iter().map(|(r, _)| r as u32).collect(),
        });
    }
    slot.as_ref().expect("filled above")
}

/// Where an address's search ended, before the zone's default applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Located {
    /// In a coverage zone of this region.
    Covered(usize),
    /// On a GeoIP record.
    Record(usize),
    /// Neither: the zone's default region.
    Nowhere,
}

/// A client address (as [`address_key`]), where its search ended and the prefix true for it.
type Place = ((u128, bool), Located, u8);

/// An address as a memo key: its bits, and whether it is IPv6.
fn address_key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v) => (u128::from(u32::from(v)), false),
        IpAddr::V6(v) => (u128::from(v), true),
    }
}

fn address_slot((bits, v6): (u128, bool)) -> usize {
    let folded = (bits as u64) ^ ((bits >> 64) as u64) ^ u64::from(v6);
    let h = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> (64 - SLOTS.trailing_zeros())) as usize
}

/// Where `ip` is: the coverage zone or GeoIP record its search ends on, and the prefix that is
/// true for the answer (as `steering::locate` has it).
fn locate(tables: &Tables, ip: IpAddr) -> (Located, u8) {
    let (found, prefix) = steering::search(&tables.coverage, tables.geoip.as_deref(), ip);
    let located = match found {
        steering::Search::Covered(_, region) => Located::Covered(region),
        steering::Search::Beyond(lookup) => match lookup.and_then(|l| l.record()) {
            Some(offset) => Located::Record(offset),
            None => Located::Nowhere,
        },
    };
    (located, prefix)
}

impl Memo {
    /// Decides for a client at `ip` (the ECS address or the source) asking for a name of a zone
    /// with `default_region` and `policy`, whose subnet hash is `hash`: returns the prefix of
    /// the network that decided the place (see `steering::Place::prefix`) and the pick; the
    /// edges picked are in [`Memo::edges`].
    ///
    /// Decides on the snapshot taken by the last [`Memo::begin`]; fails open (every edge of no
    /// view: none) before the first.
    pub(crate) fn decide(
        &mut self,
        ip: IpAddr,
        default_region: usize,
        policy: Policy,
        hash: u64,
    ) -> (u8, Pick) {
        let Some(tables) = self.tables.as_deref() else {
            let p = steering::pick(
                &self.avail,
                std::iter::empty(),
                policy,
                hash,
                &mut self.edges,
            );
            return (0, p);
        };
        let key = address_key(ip);
        let place = &mut self.places[address_slot(key)];
        let (located, prefix) = match place {
            Some((k, located, prefix)) if *k == key => (*located, *prefix),
            _ => {
                let (located, prefix) = locate(tables, ip);
                *place = Some((key, located, prefix));
                (located, prefix)
            }
        };
        let region = match located {
            Located::Covered(region) => region,
            Located::Nowhere => default_region,
            Located::Record(offset) => {
                let e = entry(
                    &mut self.entries,
                    &tables.regions,
                    Key::Record(offset),
                    || {
                        // Decoded once per record (and again only if its entry was replaced).
                        let hit = tables.geoip.as_deref().and_then(|g| g.lookup(ip));
                        hit.map_or(Whereabouts::Unknown, |l| {
                            steering::whereabouts(&l.hit(), &tables.countries)
                        })
                    },
                );
                match e.found {
                    Whereabouts::At(..) => {
                        let order = e.order.iter().map(|&r| r as usize);
                        let p = steering::pick(&self.avail, order, policy, hash, &mut self.edges);
                        return (prefix, p);
                    }
                    Whereabouts::Region(r) => r,
                    Whereabouts::Unknown => default_region,
                }
            }
        };
        let e = entry(
            &mut self.entries,
            &tables.regions,
            Key::Region(region),
            || Whereabouts::Region(region),
        );
        let order = e.order.iter().map(|&r| r as usize);
        let p = steering::pick(&self.avail, order, policy, hash, &mut self.edges);
        (prefix, p)
    }

    /// The edges of the last decision (indexes into the view's edges).
    pub(crate) fn edges(&self) -> &[usize] {
        &self.edges
    }

    /// The tables of the snapshot taken by the last [`Memo::begin`].
    pub(crate) fn tables(&self) -> Option<&Tables> {
        self.tables.as_deref()
    }

    /// The view of the snapshot taken by the last [`Memo::begin`].
    pub(crate) fn view(&self) -> Option<&ClusterView> {
        self.view.as_deref()
    }

    /// Takes the current tables and view for the decisions that follow (a UDP thread: once per
    /// batch, so its queries touch no shared reference count): forgets what was made from other
    /// tables, and takes the availability of a new view.
    pub(crate) fn begin(&mut self, tables: &Arc<Tables>, view: &Arc<ClusterView>) {
        if !self.tables.as_ref().is_some_and(|t| Arc::ptr_eq(t, tables)) {
            self.entries.iter_mut().for_each(|e| *e = None);
            self.places.iter_mut().for_each(|p| *p = None);
            self.tables = Some(Arc::clone(tables));
        }
        if !self.view.as_ref().is_some_and(|v| Arc::ptr_eq(v, view)) {
            self.avail = Availability::of(view);
            self.view = Some(Arc::clone(view));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steering::{choose, locate, scope, subnet_hash};

    /// The memo's decision is the general path's, for addresses all over both address spaces
    /// and every test network, as the view changes under it.
    #[test]
    fn decides_as_locate_and_choose_do() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let map = crate::config::load_cluster_map(&root.join("config/local/cluster.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let geoip = crate::geoip::GeoIp::open(&root.join("geo/test-city.mmdb")).unwrap();
        let tables = Arc::new(Tables::new(&map, Some(Arc::new(geoip))).unwrap());
        let zone = &map.zones[0];
        let policy = Policy {
            answers: zone.answers,
            high_water: zone.high_water,
        };
        let csv = std::fs::read_to_string(root.join("geo/test-networks.csv")).unwrap();
        let mut clients: Vec<(IpAddr, u8)> = csv
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').next()?.parse::<ipnet::IpNet>().ok())
            .map(|n| (n.addr(), n.prefix_len()))
            .collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            // xorshift: addresses spread over both spaces, the same every run
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            clients.push((IpAddr::from((x as u32).to_be_bytes()), 32));
            clients.push((
                IpAddr::from((u128::from(x) << 64 | u128::from(!x)).to_be_bytes()),
                56,
            ));
        }
        let mut memo = Memo::default();
        let mut views = vec![ClusterView::from_map(&map)];
        let mut v = ClusterView::from_map(&map);
        v.edges[0].load = 1.4;
        views.push(v.clone());
        v.edges[1].draining = true;
        views.push(v.clone());
        v.edges.iter_mut().for_each(|e| e.healthy = false);
        views.push(v);
        for view in views.into_iter().map(Arc::new) {
            for &(ip, source) in &clients {
                let net = ipnet::IpNet::new(ip, source).unwrap().trunc();
                let ip = net.addr();
                let (hash, hash_prefix) = subnet_hash(ip, source);
                let place = locate(&tables.locator(), &view, ip, source, zone.default_region);
                let choice = choose(&view, &place, policy, hash);
                memo.begin(&tables, &view);
                let (prefix, pick) = memo.decide(ip, zone.default_region, policy, hash);
                assert_eq!(pick, choice.pick(), "{ip}/{source}");
                assert_eq!(memo.edges(), choice.edges, "{ip}/{source}");
                assert_eq!(
                    scope(prefix, pick, hash_prefix),
                    scope(place.prefix, choice.pick(), hash_prefix),
                    "{ip}/{source}"
                );
            }
        }
    }
}
