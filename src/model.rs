//! Shared vocabulary of the roles: the cluster as the DNS role sees it.
//!
//! A [`ClusterView`] is an immutable snapshot: regions with their locations, and edges with their
//! addresses, capacity, health, draining flag and load. The DNS role reads one snapshot per query
//! (through an `ArcSwap`) and never waits on whoever builds the next one. Until gossip feeds it,
//! the view comes from the cluster map with every edge healthy and unloaded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::ClusterMap;

/// A region: a place edges are in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RegionView {
    pub(crate) name: String,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
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

impl ClusterView {
    /// The view a cluster map gives before anything is heard: every edge healthy and idle.
    pub(crate) fn from_map(map: &ClusterMap) -> ClusterView {
        ClusterView {
            regions: map
                .regions
                .iter()
                .map(|r| RegionView {
                    name: r.name.clone(),
                    lat: r.lat,
                    lon: r.lon,
                })
                .collect(),
            edges: map
                .edges
                .iter()
                .map(|e| EdgeView {
                    id: e.id.clone(),
                    region: e.region,
                    v4: e
                        .addresses
                        .iter()
                        .filter_map(|a| match a {
                            IpAddr::V4(v) => Some(*v),
                            _ => None,
                        })
                        .collect(),
                    v6: e
                        .addresses
                        .iter()
                        .filter_map(|a| match a {
                            IpAddr::V6(v) => Some(*v),
                            _ => None,
                        })
                        .collect(),
                    capacity: e.capacity,
                    healthy: true,
                    draining: false,
                    load: 0.0,
                })
                .collect(),
        }
    }

    /// A region's load: the capacity-weighted mean utilisation of its available edges (the sum
    /// of reported load over the sum of capacity). `None` when no edge of it is available.
    pub(crate) fn region_load(&self, region: usize) -> Option<f64> {
        let (mut load, mut capacity) = (0.0, 0.0);
        for e in self
            .edges
            .iter()
            .filter(|e| e.region == region && e.available())
        {
            load += e.load * e.capacity;
            capacity += e.capacity;
        }
        (capacity > 0.0).then(|| load / capacity)
    }
}
