//! Counters the HTTP path feeds: requests, hits, open connections and bytes each way.
//!
//! Plain relaxed atomics, one increment per event; readers (the admin API's `/metrics`, the
//! load reports of the cluster) sample them. Nothing here blocks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Running totals of one edge.
#[derive(Debug, Default)]
pub(crate) struct LoadCounters {
    pub(crate) requests: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) connections: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
}

impl LoadCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
