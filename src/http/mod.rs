//! The edge's HTTP side: `server` accepts connections and serves them, `direct` answering
//! HTTP/1.x requests with no body or a short one itself and hyper the rest (`balance` spreads
//! them over a listener's threads, `framing` watches HTTP/1 message boundaries on the raw bytes,
//! `coalesce` gathers what one poll of a connection writes into one write, `stall` lets go of
//! answers hyper holds for a client that takes none of them), `request` checks and
//! normalises each request, `handler` answers it, `response`, `range` and `headers` shape what
//! goes back (`heads` keeps the header maps of the entries a thread answers from most), `body` is
//! the one body type.

pub(crate) mod balance;
pub(crate) mod body;
pub(crate) mod coalesce;
pub(crate) mod direct;
pub(crate) mod framing;
pub(crate) mod handler;
pub(crate) mod headers;
pub(crate) mod heads;
pub(crate) mod quic;
pub(crate) mod range;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod server;
mod stall;
pub(crate) mod tls;
