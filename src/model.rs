//! Shared vocabulary of the roles: the cluster as the DNS role sees it.
//!
//! A [`ClusterView`] is an immutable snapshot: regions with their locations, and edges with their
//! addresses, capacity, health, draining flag and load. The DNS role reads one snapshot per query
//! (through an `ArcSwap`) and never waits on whoever builds the next one. Without gossip the view
//! comes from the cluster map with every edge healthy and unloaded; with gossip, from the map and
//! the [`Member`]s heard ([`ClusterView::from_members`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use crate::config::ClusterMap;

/// A region: a place edges are in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RegionView {
    pub(crate) name: String,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
    /// The same place as a unit vector, for distances.
    pub(crate) at: crate::steering::Point,
}

impl RegionView {
    pub(crate) fn new(name: &str, lat: f64, lon: f64) -> RegionView {
        RegionView {
            name: name.to_string(),
            lat,
            lon,
            at: crate::steering::Point::new(lat, lon),
        }
    }
}

/// An edge as the cluster last reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EdgeView {
    pub(crate) id: String,
    pub(crate) region: usize,
    pub(crate) v4: Vec<Ipv4Addr>,
    pub(crate) v6: Vec<Ipv6Addr>,
    /// Relative capacity: the weight of this edge's load in its region's.
    pub(crate) capacity: f64,
    pub(crate) healthy: bool,
    pub(crate) draining: bool,
    /// Utilisation: 0 idle, 1 at capacity, more when overloaded.
    pub(crate) load: f64,
    /// Named in the cluster map (not only heard of through gossip).
    pub(crate) in_map: bool,
}

impl EdgeView {
    /// Whether DNS may hand this edge out.
    pub(crate) fn available(&self) -> bool {
        self.healthy && !self.draining
    }
}

/// One consistent snapshot of the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ClusterView {
    pub(crate) regions: Vec<RegionView>,
    pub(crate) edges: Vec<EdgeView>,
}

/// Where a member stands in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberState {
    /// Heard from recently.
    Alive,
    /// Not heard from for longer than the failure timeout.
    Dead,
    /// Said goodbye (shut down cleanly).
    Left,
}

impl MemberState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// A node as gossip reports it (its latest generation).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub(crate) id: String,
    /// Start time in milliseconds: a restarted node is a new generation.
    pub(crate) generation: u64,
    pub(crate) gossip_addr: SocketAddr,
    pub(crate) roles: Vec<String>,
    pub(crate) region: String,
    pub(crate) addresses: Vec<IpAddr>,
    pub(crate) weight: f64,
    pub(crate) load: f64,
    pub(crate) draining: bool,
    pub(crate) state: MemberState,
    pub(crate) version: String,
    /// Unix time the node started.
    pub(crate) started: u64,
    /// An edge's requests/s over the last second it reported.
    pub(crate) requests_per_second: f64,
    /// An edge's share of requests answered from its cache over that second (none if idle).
    pub(crate) hit_ratio: Option<f64>,
    /// An edge's applied cluster purges: the latest issue time (unix ms) per issuer.
    pub(crate) purged: std::collections::BTreeMap<String, u64>,
    /// An edge's address for peer requests (`shield`), if it takes them.
    pub(crate) peer: Option<SocketAddr>,
    /// Its TLS listener for them, if it has one (see `shield`).
    pub(crate) peer_tls: Option<SocketAddr>,
    /// When this node last heard a new heartbeat of it (now, for itself).
    pub(crate) last_heard: Instant,
    pub(crate) is_self: bool,
}

impl Member {
    /// An alive edge of `region` taking peer requests on 127.0.0.1:8080, for tests.
    #[cfg(test)]
    pub(crate) fn test_edge(id: &str, region: &str, is_self: bool) -> Member {
        Member {
            id: id.into(),
            generation: 1,
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 7946)),
            roles: vec!["edge".into()],
            region: region.into(),
            addresses: vec![],
            weight: 1.0,
            load: 0.0,
            draining: false,
            state: MemberState::Alive,
            version: String::new(),
            started: 0,
            requests_per_second: 0.0,
            hit_ratio: None,
            purged: Default::default(),
            peer: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            peer_tls: None,
            last_heard: Instant::now(),
            is_self,
        }
    }

    pub(crate) fn is_edge(&self) -> bool {
        self.roles.iter().any(|r| r == "edge")
    }

    /// Equal in everything the cluster view depends on: `last_heard` and the traffic report
    /// aside (they change every second and steer nothing; readers of the latest list see them).
    pub(crate) fn same_state(&self, other: &Member) -> bool {
        Member {
            last_heard: other.last_heard,
            requests_per_second: other.requests_per_second,
            hit_ratio: other.hit_ratio,
            purged: other.purged.clone(),
            ..self.clone()
        } == *other
    }
}

fn split(addresses: &[IpAddr]) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let v4 = addresses
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            _ => None,
        })
        .collect();
    let v6 = addresses
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(v) => Some(*v),
            _ => None,
        })
        .collect();
    (v4, v6)
}

impl ClusterView {
    /// The view of a cluster map and what gossip says of its members.
    ///
    /// The map's edges keep their entry; their health, draining flag and load come from the
    /// member of the same id (alive = healthy). An edge of the map no one has heard of counts as
    /// healthy until the view is `settled` (this node has gossiped long enough to have heard of
    /// everyone running), and as down after. Edges that gossip but are not in the map join the
    /// view with what they publish when their region is in the map.
    pub(crate) fn from_members(map: &ClusterMap, members: &[Member], settled: bool) -> ClusterView {
        let mut view = ClusterView::from_map(map);
        let by_id = |id: &str| members.iter().find(|m| m.id == id && m.is_edge());
        for edge in &mut view.edges {
            match by_id(&edge.id) {
                Some(m) => {
                    edge.healthy = m.state == MemberState::Alive;
                    edge.draining = m.draining;
                    edge.load = m.load;
                }
                None => edge.healthy = !settled,
            }
        }
        for m in members.iter().filter(|m| m.is_edge()) {
            if map.edges.iter().any(|e| e.id == m.id) {
                continue;
            }
            let Some(region) = map.regions.iter().position(|r| r.name == m.region) else {
                continue;
            };
            let (v4, v6) = split(&m.addresses);
            view.edges.push(EdgeView {
                id: m.id.clone(),
                region,
                v4,
                v6,
                capacity: m.weight,
                healthy: m.state == MemberState::Alive,
                draining: m.draining,
                load: m.load,
                in_map: false,
            });
        }
        view
    }

    /// The view a cluster map gives before anything is heard: every edge healthy and idle.
    pub(crate) fn from_map(map: &ClusterMap) -> ClusterView {
        ClusterView {
            regions: map
                .regions
                .iter()
                .map(|r| RegionView::new(&r.name, r.lat, r.lon))
                .collect(),
            edges: map
                .edges
                .iter()
                .map(|e| {
                    let (v4, v6) = split(&e.addresses);
                    EdgeView {
                        id: e.id.clone(),
                        region: e.region,
                        v4,
                        v6,
                        capacity: e.capacity,
                        healthy: true,
                        draining: false,
                        load: 0.0,
                        in_map: true,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ClusterMap {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local/cluster.toml");
        crate::config::load_cluster_map(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn member(id: &str, state: MemberState) -> Member {
        Member {
            id: id.into(),
            generation: 1,
            gossip_addr: "127.0.0.1:7946".parse().unwrap(),
            roles: vec!["edge".into()],
            region: "eu-west".into(),
            addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            weight: 2.0,
            load: 0.5,
            draining: false,
            state,
            version: "0".into(),
            started: 0,
            requests_per_second: 0.0,
            hit_ratio: None,
            purged: Default::default(),
            peer: None,
            peer_tls: None,
            last_heard: Instant::now(),
            is_self: false,
        }
    }

    #[test]
    fn the_view_takes_health_load_and_draining_from_gossip() {
        let map = map();
        let health = |v: &ClusterView| -> Vec<(String, bool, bool)> {
            v.edges
                .iter()
                .map(|e| (e.id.clone(), e.healthy, e.draining))
                .collect()
        };
        let edge_a = Member {
            draining: true,
            ..member("edge-a", MemberState::Alive)
        };
        let members = vec![
            edge_a,
            member("edge-b", MemberState::Dead),
            member("edge-new", MemberState::Alive),
        ];
        // Before it settles, an edge nobody has mentioned (edge-c) counts as up; after, as down.
        let early = ClusterView::from_members(&map, &members, false);
        let settled = ClusterView::from_members(&map, &members, true);
        assert_eq!(
            health(&early),
            [
                ("edge-a".into(), true, true),
                ("edge-b".into(), false, false),
                ("edge-c".into(), true, false),
                ("edge-new".into(), true, false),
            ]
        );
        assert_eq!(health(&settled)[2], ("edge-c".into(), false, false));
        // An edge that only gossip knows joins its region with what it publishes.
        let new = &settled.edges[3];
        assert_eq!(settled.regions[new.region].name, "eu-west");
        assert_eq!(
            (new.v4.len(), new.v6.len(), new.capacity, new.load),
            (1, 1, 2.0, 0.5)
        );
        // Left members are not answered; a member of an unknown region is ignored.
        let gone = vec![
            member("edge-a", MemberState::Left),
            Member {
                region: "mars".into(),
                ..member("edge-x", MemberState::Alive)
            },
        ];
        let v = ClusterView::from_members(&map, &gone, true);
        assert!(!v.edges[0].healthy);
        assert_eq!(v.edges.len(), 3);
    }
}
