//! The cache: keys, pure policy, stored entries, the byte-bounded store and request collapsing.
//!
//! `http::handler` is the one orchestrator that joins these pieces; none of them does I/O beyond
//! the in-memory store, and none knows about origins or sockets.

pub(crate) mod collapse;
pub(crate) mod disk;
mod disk_metrics;
pub(crate) mod entry;
pub(crate) mod fill;
pub(crate) mod key;
pub(crate) mod policy;
pub(crate) mod sf;
pub(crate) mod store;
