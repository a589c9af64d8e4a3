//! The DNS role: `handler` answers (our own hickory `RequestHandler`), `fast` answers the common
//! UDP query straight from its bytes, `server` binds UDP and TCP and runs the workers and
//! hickory's TCP server on them, `cookie` makes and checks server cookies, `limit` rate-limits
//! UDP answers per client prefix, `metrics` counts. Reads the cluster only through
//! `ClusterView` snapshots; never imports the HTTP side.

#[cfg(target_os = "linux")]
pub(crate) mod batch;
pub(crate) mod cookie;
pub(crate) mod fast;
pub(crate) mod handler;
pub(crate) mod limit;
pub(crate) mod memo;
pub(crate) mod metrics;
pub(crate) mod server;
