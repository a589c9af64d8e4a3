//! Integration tests of the edge role against a real origin on 127.0.0.1:0, through a real
//! HTTP client. One module per area of the edge's contract.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod bounds;
mod collapse;
mod direct;
mod freshness;
mod h2_abuse;
mod h3;
mod hardening;
mod limits;
mod origins;
mod ranges;
mod reload;
mod routing;
mod stale;
mod store;
mod streaming;
mod targeted;
mod tls;
