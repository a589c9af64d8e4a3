//! The DNS role: `handler` answers (our own hickory `RequestHandler`), `server` binds UDP and TCP
//! and runs hickory's server on them, `metrics` counts. Reads the cluster only through
//! `ClusterView` snapshots; never imports the HTTP side.

#[cfg(target_os = "linux")]
pub(crate) mod batch;
pub(crate) mod handler;
pub(crate) mod metrics;
pub(crate) mod server;
