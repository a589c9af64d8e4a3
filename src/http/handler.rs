//! The one orchestrator of the edge: request in, response out.
//!
//! Receives each request from `server` with the client's address; checks framing, picks the site
//! by Host (unknown: 421, never an open proxy), then either forwards it (unsafe and other
//! uncacheable methods, invalidating on success) or walks the cache: key → store lookup → fresh
//! hit | stale-while-revalidate | revalidation | miss → one collapsed origin fetch per key →
//! `policy::storability` → respond from the head on, every client of the key reading the body
//! as it arrives (`cache::fill`) → store once it is whole. Uses `cache` for every decision and the store,
//! `origin` for upstream I/O, and `response` to shape what the client sees.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::body::{Body, OriginBody, RequestBody};
use super::framing::BodyFault;
use super::headers::{
    forwarding, give_back_map, is_loop, strip_cache_only, strip_framing, strip_hop_by_hop,
    surrogate_keys, Forwarding, Line,
};
use super::request::{self, Rejected};
use super::response::{self, CacheStatus, Fwd, Label, Refusal};
use crate::cache::collapse::{Collapser, Join, Leader};
use crate::cache::disk::Disk;
use crate::cache::entry::{normalized, vary_names, Entry, Fields, Target};
use crate::cache::fill::{FillBudget, FillFailed, Growing, Tail};
use crate::cache::key;
use crate::cache::policy::{self, Exchange, RequestDirectives, Reuse, SitePolicy};
use crate::cache::store::{Object, Store, Tier};
use crate::config::{EdgeConfig, QueryKey, SiteConfig};
use crate::h1::Lines;
use crate::load::LoadCounters;
use crate::origin::{OriginError, Origins};
use crate::reuse::Reused;
use crate::shield::{Hop, Peers, PEER};
use crate::telemetry::EdgeMetrics;

/// A site of the origin map, ready to serve.
pub(crate) struct Site {
    pub(crate) name: String,
    query_key: QueryKey,
    key_headers: Vec<String>,
    policy: SitePolicy,
    origins: Origins,
    /// The origin gets one fixed Host (`host_header`), so the client's host is not part of what
    /// it sees (nor of the variant).
    fixed_host: bool,
    /// The scheme reaches the origin (`Forwarded: proto=`) and selects the variant.
    key_scheme: bool,
    /// Misses ask the key's owner among this region's edges (`shield = "region"`).
    shield: bool,
    /// Requests' cache directives are not obeyed (`ignore_client_cache_control`).
    ignore_client_cache_control: bool,
    /// The region whose owners alone ask the origin.
    shield_region: Option<String>,
    /// The site's host names, shared by every variant stored for one (see [`Site::host`]).
    hosts: Box<[Arc<str>]>,
}

impl Site {
    pub(crate) fn new(cfg: &SiteConfig) -> Result<Site, String> {
        Ok(Site {
            name: cfg.name.clone(),
            query_key: cfg.query_key,
            key_headers: cfg.key_headers.clone(),
            policy: SitePolicy {
                default_ttl: cfg.default_ttl,
                heuristic_freshness: cfg.heuristic_freshness,
                strip_set_cookie: cfg.strip_set_cookie,
            },
            origins: Origins::new(cfg).map_err(|e| format!("site {:?}: {e}", cfg.name))?,
            fixed_host: cfg.host_header.is_some(),
            hosts: cfg.hosts.iter().map(|h| Arc::from(h.as_str())).collect(),
            key_scheme: cfg.key_scheme,
            shield: cfg.shield,
            ignore_client_cache_control: cfg.ignore_client_cache_control,
            shield_region: cfg.shield_region.clone(),
        })
    }

    /// `host` (normalised) as a stored variant keeps it: the site's own copy when it is one
    /// of its names, so the entries of a site share one (an allocation fewer per entry).
    fn host(&self, host: &str) -> Arc<str> {
        self.hosts
            .iter()
            .find(|h| ***h == *host)
            .cloned()
            .unwrap_or_else(|| Arc::from(host))
    }

    /// What the request's `Cache-Control` (or `Pragma`) asks of the cache; nothing when the
    /// site ignores it.
    fn request_directives(&self, headers: &HeaderMap) -> RequestDirectives {
        if self.ignore_client_cache_control {
            return RequestDirectives::default();
        }
        policy::request_directives(headers)
    }

    pub(crate) fn key(&self, uri: &Uri) -> String {
        key::primary(&self.name, uri.path(), uri.query(), self.query_key)
    }

    /// [`Site::key`] in a line on the stack (no allocation), for a key only looked with.
    fn key_line(&self, uri: &Uri) -> Line {
        let mut line = Line::default();
        key::primary_into(
            &mut line,
            &self.name,
            uri.path(),
            uri.query(),
            self.query_key,
        );
        line
    }

    /// What of `host` (normalised) and the scheme reaches this site's origin, and so selects
    /// the variant.
    pub(crate) fn target<'a>(&self, host: &'a str, secure: bool) -> Target<'a> {
        Target {
            host: (!self.fixed_host).then_some(host),
            https: self.key_scheme.then_some(secure),
        }
    }
}

/// Sites by host name.
pub(crate) struct Sites {
    /// Fx-hashed: see `Cargo.toml` (the table is only read, and its keys are the operator's).
    by_host: HashMap<String, Arc<Site>, rustc_hash::FxBuildHasher>,
    any: Option<Arc<Site>>,
}

impl Sites {
    pub(crate) fn new(configs: &[SiteConfig]) -> Result<Sites, String> {
        let mut by_host = HashMap::default();
        let mut any = None;
        for cfg in configs {
            let site = Arc::new(Site::new(cfg)?);
            for h in &cfg.hosts {
                if h == "*" {
                    any = Some(site.clone());
                } else {
                    by_host.insert(h.clone(), site.clone());
                }
            }
        }
        Ok(Sites { by_host, any })
    }

    /// Each site once, with what `/metrics` shows of its origins: the requests there now, and
    /// the waits so far for a site slot and for a client's share.
    pub(crate) fn origin_stats(&self) -> Vec<(&str, usize, (u64, u64))> {
        let mut seen: Vec<&Arc<Site>> = Vec::new();
        for site in self.by_host.values().chain(self.any.iter()) {
            if !seen.iter().any(|s| Arc::ptr_eq(s, site)) {
                seen.push(site);
            }
        }
        seen.iter()
            .map(|s| (s.name.as_str(), s.origins.in_flight(), s.origins.waits()))
            .collect()
    }

    /// The site for a host (any case, port ignored, trailing dot ignored).
    /// An invalid host names no site, not even `*`.
    pub(crate) fn lookup(&self, host: &str) -> Option<&Arc<Site>> {
        let host = request::normalize_host(host).ok()?;
        self.lookup_normalized(&host)
    }

    /// The site for a host `request::intake` has normalised already.
    pub(crate) fn lookup_normalized(&self, host: &str) -> Option<&Arc<Site>> {
        self.by_host.get(host).or(self.any.as_ref())
    }
}

/// The client end of a request: its address and whether it came over TLS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) secure: bool,
}

/// What a fetch hands to followers.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// A stored (or just revalidated) response: serve it if the variant matches. With
    /// `filling`, its body is still arriving: read it from there as it grows.
    Fresh {
        entry: Arc<Entry>,
        fwd_status: u16,
        filling: Option<Arc<Growing>>,
    },
    /// The response was not storable: fetch on your own.
    Pass,
    /// The origin answered with an error status: serve stale if allowed, else fetch on your own.
    OriginStatus(u16),
    /// The origin could not be reached: serve stale if allowed, else this error.
    Failed(OriginError),
}

/// What a fetch hands to its leader.
enum Fetched {
    Entry {
        entry: Arc<Entry>,
        fwd_status: u16,
        stored: bool,
        /// The response's cookies, for the leading client only.
        set_cookie: Vec<HeaderValue>,
        /// The body, when it is still arriving: a reader from its first byte.
        tail: Option<Tail>,
        /// The `Cache-Status` of the cache upstream (a peer, or an origin that is a cache), for
        /// the leading client.
        upstream: Option<HeaderValue>,
    },
    Response {
        resp: Response<Body>,
        reason: Option<&'static str>,
    },
    Failed(OriginError),
}

/// Everything the edge's request path shares.
pub(crate) struct EdgeState {
    /// This node's id.
    pub(crate) node: String,
    /// `Via` for requests received over HTTP/1.1, HTTP/2 and HTTP/3.
    pub(crate) via: HeaderValue,
    pub(crate) via2: HeaderValue,
    pub(crate) via3: HeaderValue,
    /// `Alt-Svc` for responses over TLS when HTTP/3 is served (`edge.quic`).
    pub(crate) alt_svc: Option<HeaderValue>,
    /// Swapped whole on reload; a request keeps the sites it started with.
    pub(crate) sites: arc_swap::ArcSwap<Sites>,
    pub(crate) store: Store,
    pub(crate) collapser: Arc<Collapser<Outcome>>,
    pub(crate) max_object_size: u64,
    /// The memory fills may hold for the store at once.
    pub(crate) filling: Arc<FillBudget>,
    /// Longest wait for the next byte of a client's upload.
    pub(crate) client_body_timeout: std::time::Duration,
    pub(crate) tasks: TaskTracker,
    pub(crate) metrics: EdgeMetrics,
    pub(crate) load: Arc<LoadCounters>,
    pub(crate) access_log: bool,
    /// The other edges, once gossip runs (`shield`).
    pub(crate) peers: std::sync::OnceLock<Arc<Peers>>,
    /// Cluster purges their issuers pushed here ahead of gossip.
    pub(crate) pushed: crate::purge::Pushed,
    /// The purges applied here lately (see [`crate::purge::Recent`]).
    pub(crate) recent_purges: crate::purge::Recent,
}

impl EdgeState {
    pub(crate) fn new(
        node_id: &str,
        edge: &EdgeConfig,
        sites: Sites,
        access_log: bool,
        tasks: TaskTracker,
        disk: Option<Disk>,
    ) -> EdgeState {
        // A quarter of the cache, and at least the largest object held whole in memory (with a
        // disk tier, larger ones go to disk as they arrive).
        let largest = if disk.is_some() {
            edge.cache_memory / crate::cache::store::LARGE_SHARE
        } else {
            edge.max_object_size.min(edge.cache_memory)
        };
        let filling = FillBudget::new((edge.cache_memory / 4).max(largest));
        EdgeState {
            node: node_id.to_string(),
            // cannot fail for ids validated by config; fall back to a generic token otherwise.
            via: HeaderValue::from_str(&format!("1.1 {node_id}"))
                .unwrap_or(HeaderValue::from_static("1.1 meridian")),
            via2: HeaderValue::from_str(&format!("2 {node_id}"))
                .unwrap_or(HeaderValue::from_static("2 meridian")),
            via3: HeaderValue::from_str(&format!("3 {node_id}"))
                .unwrap_or(HeaderValue::from_static("3 meridian")),
            alt_svc: edge.quic.as_ref().and_then(|q| q.alt_svc()),
            sites: arc_swap::ArcSwap::from_pointee(sites),
            store: Store::new(edge.cache_memory, disk).counting_read_backs_in(filling.clone()),
            collapser: Collapser::new(),
            max_object_size: edge.max_object_size,
            filling,
            client_body_timeout: edge.client_body_timeout,
            tasks,
            metrics: EdgeMetrics::new(node_id),
            load: Arc::default(),
            access_log,
            peers: std::sync::OnceLock::new(),
            pushed: crate::purge::Pushed::default(),
            recent_purges: crate::purge::Recent::default(),
        }
    }
}

/// Which edges own `url` now, as `GET /owner` on the admin API says it (`meridian owner`).
pub(crate) fn owner_report(state: &EdgeState, url: &str) -> Result<serde_json::Value, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri
        .authority()
        .map(|a| a.host())
        .ok_or_else(|| format!("{url:?} names no host (http://host/path)"))?;
    let sites = state.sites.load();
    let site = sites
        .lookup(host)
        .ok_or_else(|| format!("no site of this edge serves {host:?}"))?;
    let key = site.key(&uri);
    let peers = state
        .peers
        .get()
        .ok_or("this edge does not gossip: it has no peers, and asks the origin itself")?;
    let members = peers.members();
    let ids = |region: &str| -> Vec<String> {
        crate::shield::owners(&members, region, &key)
            .into_iter()
            .map(|m| m.id.clone())
            .collect()
    };
    let asks: Vec<serde_json::Value> = if site.shield {
        peers
            .plan(&key, site.shield_region.as_deref(), None)
            .into_iter()
            .map(|a| serde_json::json!({ "edge": a.id, "tier": a.hop.as_str() }))
            .collect()
    } else {
        Vec::new()
    };
    Ok(serde_json::json!({
        "url": url,
        "site": site.name,
        "key": key,
        "shield": site.shield,
        "region": peers.region(),
        "owners": ids(peers.region()),
        "shield_region": site.shield_region,
        "shield_owners": site.shield_region.as_deref().map(ids),
        "asks": asks,
    }))
}

/// Answers one request; never fails (errors become responses).
pub(crate) async fn handle(
    state: Arc<EdgeState>,
    req: Request<RequestBody>,
    peer: Peer,
    framing: Option<&'static str>,
    fault: BodyWatch,
) -> Result<Response<Body>, std::convert::Infallible> {
    match answer_now(&state, Reused::new(|| req), peer, framing, fault, None) {
        Ok(resp) => Ok(resp),
        Err(later) => answer_later(&state, later).await,
    }
}

/// A request [`answer_now`] could not answer without waiting, and what it found out so far.
pub(crate) struct Later {
    start: Instant,
    version: http::Version,
    peer: Peer,
    logged: Logged,
    routed: Routed,
    looked: Option<Looked>,
}

/// What [`hit_now`] found out about a `GET` or `HEAD` that was no fresh hit from memory, for
/// the cache path to go on from.
pub(crate) struct Looked {
    directives: RequestDirectives,
    key: String,
    memory: Memory,
}

/// What a look at memory alone found.
pub(crate) enum Memory {
    /// Not looked, or moka could not say at once.
    Unknown,
    /// Nothing there.
    Missed,
    /// An object, and the request must go forward: how, with the stored entry to revalidate.
    Decided(Fwd, Option<Arc<Entry>>),
}

/// What the access log needs of a request, kept while it is answered (when there is a log).
/// Boxed: without a log it is one word of every `Later` (moved a few times a request that
/// waits) instead of 150 bytes.
type Logged = Option<Box<(Method, Uri, Option<HeaderValue>)>>;

/// Answers a request if nothing has to wait for it: a refusal, or a hit from memory (most
/// requests). Done in the call hyper makes with the request, this drops the request before
/// hyper reads its connection on: its header values point into hyper's read buffer, which that
/// read would otherwise replace with a new one while they live. Everything else is given back
/// for [`answer_later`].
// `Later` is large, and moved once, into the future that answers it; boxed it would cost every
// request that waits an allocation.
#[allow(clippy::result_large_err)]
///
/// With `lines` (the caller writes HTTP/1.1 itself, `direct`), a whole hit from memory may come
/// with its stored fields as header lines, put there ([`response::Lines`]), instead of in the
/// header map.
pub(crate) fn answer_now(
    state: &Arc<EdgeState>,
    req: Reused<Request<RequestBody>>,
    peer: Peer,
    framing: Option<&'static str>,
    fault: BodyWatch,
    lines: Option<&mut Option<response::Lines>>,
) -> Result<Response<Body>, Reused<Later>> {
    let start = Instant::now();
    let logged = state.access_log.then(|| {
        Box::new((
            req.method().clone(),
            req.uri().clone(),
            req.headers().get(header::HOST).cloned(),
        ))
    });
    let version = req.version();
    let routed = route_now(state, req, peer, framing, fault, lines.is_some());
    let share = routed.share_client();
    let (mut resp, status) = match routed {
        Routed::Done(resp, status) => (resp, status),
        Routed::Go { site, client } => match hit_now(state, &site, &client, lines) {
            Ok(answered) => {
                // Answered from what is stored: the request's fields are done with.
                let mut req = client.req;
                give_back_map(std::mem::take(req.headers_mut()));
                answered
            }
            Err(looked) => {
                return Err(Reused::new(|| Later {
                    start,
                    version,
                    peer,
                    logged,
                    routed: Routed::Go { site, client },
                    looked,
                }))
            }
        },
        routed => {
            return Err(Reused::new(|| Later {
                start,
                version,
                peer,
                logged,
                routed,
                looked: None,
            }))
        }
    };
    resp.body_mut().held_for(share);
    Ok(finish(state, start, version, peer, logged, resp, status))
}

/// Answers what [`answer_now`] gave back: the rest of a request's way, the cache path (the
/// store, then a fill or a forward) or a forward (both may wait), or a pushed purge.
///
/// One async function for all of it: each level of them between here and the fill or the
/// forward was a copy or two of the request (about 350 bytes) and of what the store looked
/// up, on every request that waits (callgrind: about 450 instructions each).
pub(crate) async fn answer_later(
    state: &Arc<EdgeState>,
    later: Reused<Later>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let Later {
        start,
        version,
        peer,
        logged,
        routed,
        looked,
    } = Reused::into_inner(later);
    let share = routed.share_client();
    let (mut resp, status) = 'routed: {
        let (site, incoming) = match routed {
            Routed::Done(resp, status) => break 'routed (resp, status),
            Routed::Purge(req) => {
                let Some(peers) = state.peers.get() else {
                    let s = CacheStatus::default().detail("bad-request");
                    break 'routed (Refusal::BadRequest("no peers").response(s), s);
                };
                // Boxed, as the other rare paths: it reads a body, and its state machine would
                // otherwise be part of every request's future.
                break 'routed Box::pin(pushed_purge(state, peers, req)).await;
            }
            Routed::Go { site, client } => (site, client),
        };
        let hop = incoming.hop;
        if *incoming.req.method() == Method::GET || *incoming.req.method() == Method::HEAD {
            // The cache path.
            let client = incoming;
            let (mut resp, s) = 'cache: {
                let req = &client.req;
                let (directives, key, memory) = match looked {
                    Some(l) => (l.directives, l.key, l.memory),
                    None => {
                        let directives = site.request_directives(req.headers());
                        if directives.no_store {
                            let s = CacheStatus::forward(Fwd::Request).detail("no-store");
                            break 'cache Reused::pin(|| forward(state, &site, client, s, false))
                                .await;
                        }
                        (directives, site.key(req.uri()), Memory::Unknown)
                    }
                };
                let target = site.target(&client.host, client.peer.secure);
                let (fwd, stale) = match lookup_in(
                    state,
                    &key,
                    memory,
                    req.method(),
                    req.headers(),
                    target,
                    &directives,
                    client.hop.is_some(),
                )
                .await
                {
                    Lookup::Served(resp, s) => break 'cache (resp, s),
                    Lookup::Refresh(resp, s, entry) => {
                        refresh_in_background(state, &site, &client, &key, entry);
                        break 'cache (resp, s);
                    }
                    Lookup::Forward(fwd, stale) => (fwd, stale),
                };
                if directives.only_if_cached {
                    let s = CacheStatus::default().detail("only-if-cached");
                    break 'cache (Refusal::NotCached.response(s), s);
                }
                if stale.is_none() && state.store.is_pass(&key).await {
                    let s = CacheStatus::forward(Fwd::UriMiss).detail("uncacheable");
                    break 'cache Reused::pin(|| forward(state, &site, client, s, false)).await;
                }
                // The miss path's state machine is large; boxing it keeps the future that
                // hyper moves for every request (hits included) small.
                Reused::pin(|| fill(state, &site, client, key, stale, fwd, &directives)).await
            };
            if let (Some(_), Some(peers)) = (hop, state.peers.get()) {
                peers.rename_cache_status(resp.headers_mut());
            }
            (resp, s)
        } else {
            let invalidate = policy::invalidates(incoming.req.method());
            let s = CacheStatus::forward(Fwd::Method);
            Reused::pin(|| forward(state, &site, incoming, s, invalidate)).await
        }
    };
    resp.body_mut().held_for(share);
    Ok(finish(state, start, version, peer, logged, resp, status))
}

/// What every answer gets last: `Alt-Svc`, the metrics and the access log line.
fn finish(
    state: &EdgeState,
    start: Instant,
    version: http::Version,
    peer: Peer,
    logged: Logged,
    mut resp: Response<Body>,
    status: CacheStatus,
) -> Response<Body> {
    // Over TLS on TCP only: a client on HTTP/3 already uses it.
    if let (true, true, Some(v)) = (
        peer.secure,
        version != http::Version::HTTP_3,
        &state.alt_svc,
    ) {
        resp.headers_mut().insert(header::ALT_SVC, v.clone());
    }
    let label = status.label();
    let code = resp.status().as_u16();
    let elapsed = start.elapsed();
    state.metrics.request(label, version, code, elapsed);
    state.load.requests.add(1);
    if matches!(label, Label::Hit | Label::Stale | Label::Revalidated) {
        state.load.hits.add(1);
    }
    if let Some(tier) = status.tier {
        state.metrics.tier_hit(tier);
    }
    if let Some((method, uri, host)) = logged.map(|l| *l) {
        let bytes = http_body::Body::size_hint(resp.body()).exact();
        tracing::info!(
            target: "meridian::access",
            client = %peer.addr.ip(),
            protocol = protocol_name(version),
            method = %method,
            host = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("-"),
            uri = %uri,
            status = code,
            cache = label.as_str(),
            tier = status.tier.map_or("-", |t| t.as_str()),
            bytes = bytes.unwrap_or(0),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
    resp
}

/// The protocol a request came over, as the access log and the metrics name it.
pub(crate) fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "http/0.9",
        http::Version::HTTP_10 => "http/1.0",
        http::Version::HTTP_2 => "h2",
        http::Version::HTTP_3 => "h3",
        _ => "http/1.1",
    }
}

/// Rejects messages whose length is ambiguous (request smuggling, RFC 9112 §6.3).
fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if headers.contains_key(header::TRANSFER_ENCODING) {
            return Err("both Content-Length and Transfer-Encoding");
        }
        if lengths.any(|other| other != first) {
            return Err("conflicting Content-Length values");
        }
    }
    Ok(())
}

/// The connection's body-fault record and this request's number on it (HTTP/1 only).
pub(crate) type BodyWatch = Option<(Arc<BodyFault>, u64)>;

/// A request as the handler passes it on: checked and normalised by `request::intake`, with
/// the client end and the normalised host it named.
pub(crate) struct ClientRequest {
    /// In a block of its own: a request moves through several futures and results on its way
    /// (~260 bytes a copy), its box moves as a pointer.
    req: Reused<Request<RequestBody>>,
    /// Its client; for a signed peer hop, `secure` is the scheme the user asked with.
    peer: Peer,
    host: request::Host,
    fault: BodyWatch,
    /// The tier a signed peer request asks (see `shield`); `None` for a client's.
    hop: Option<Hop>,
    /// Answered by the edge's own HTTP/1.1 server (`direct`), which takes a pass-through's
    /// fields as lines (`PassHead`).
    direct: bool,
}

impl ClientRequest {
    /// Whose shares (of a site's origin slots, of the disk tier's read room) this request
    /// takes: its client's, none for a peer's (which carries many clients' requests and counts
    /// against the whole alone).
    fn share_client(&self) -> Option<std::net::IpAddr> {
        self.hop.is_none().then_some(self.peer.addr.ip())
    }
}

/// Where [`route_now`] left a request.
pub(crate) enum Routed {
    /// Answered (refused, or a ping).
    Done(Response<Body>, CacheStatus),
    /// A purge pushed by a peer, signed: its body is read next.
    Purge(Request<RequestBody>),
    /// A request for `site`, checked and normalised.
    Go {
        site: Arc<Site>,
        client: ClientRequest,
    },
}

impl Routed {
    /// Whose share of the disk tier's read room its answer's body takes (`Body::held_for`,
    /// applied where every answer leaves `answer_now` and `answer_later`).
    fn share_client(&self) -> Option<std::net::IpAddr> {
        match self {
            Routed::Go { client, .. } => client.share_client(),
            Routed::Done(..) | Routed::Purge(_) => None,
        }
    }
}

/// The checks every request passes before anything can wait: framing, intake, the site, loops,
/// a peer's mark.
fn route_now(
    state: &Arc<EdgeState>,
    mut req: Reused<Request<RequestBody>>,
    peer: Peer,
    framing: Option<&'static str>,
    fault: BodyWatch,
    direct: bool,
) -> Routed {
    let refused = |r: Refusal| {
        let s = CacheStatus::default().detail(match r {
            Refusal::Misdirected => "misdirected",
            Refusal::Loop => "loop",
            Refusal::MethodNotAllowed => "method",
            _ => "bad-request",
        });
        Routed::Done(r.response(s), s)
    };
    if let Err(why) = framing.map_or_else(|| check_framing(req.headers()), Err) {
        return refused(Refusal::BadRequest(why));
    }
    let host = match request::intake(&mut *req) {
        Ok(h) => h,
        Err(Rejected::Method) => return refused(Refusal::MethodNotAllowed),
        Err(Rejected::Bad(why)) => return refused(Refusal::BadRequest(why)),
        Err(Rejected::NoSite) => return refused(Refusal::Misdirected),
    };
    if *host == *crate::shield::PURGE_HOST
        && req.method() == Method::GET
        && req.uri().path() == crate::shield::PING_PATH
    {
        let mut r = Response::new(Body::full("ok\n"));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Routed::Done(r, CacheStatus::default().detail("ping"));
    }
    if req.method() == Method::POST && req.uri().path() == crate::shield::PURGE_PATH {
        if let (Some(peers), Some(mark)) = (state.peers.get(), req.headers().get(PEER)) {
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Some((Hop::Purge, _)) = peers.verify(mark, req.method(), &host, target) {
                return Routed::Purge(Reused::into_inner(req));
            }
        }
    }
    let sites = state.sites.load();
    let Some(site) = sites.lookup_normalized(&host).cloned() else {
        return refused(Refusal::Misdirected);
    };
    // Both fields are rare: one pass over the names costs less than looking up two absent ones.
    let (mut via, mut marked) = (false, false);
    for name in req.headers().keys() {
        via |= name == header::VIA;
        marked |= name == PEER;
    }
    if via && is_loop(req.headers(), &state.via) {
        return refused(Refusal::Loop);
    }
    // A peer's mark never goes further; it counts only where its signature holds.
    let mark = marked
        .then(|| req.headers_mut().remove(PEER))
        .flatten()
        .and_then(|mark| {
            let peers = state.peers.get()?;
            let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
            // A purge's mark is good for its endpoint alone (above).
            peers
                .verify(&mark, req.method(), &host, target)
                .filter(|(h, _)| *h != Hop::Purge)
        });
    // A hop's scheme is its user's: the variant and the origin's request are theirs.
    let peer = match mark {
        Some((_, https)) => Peer {
            secure: https,
            ..peer
        },
        None => peer,
    };
    Routed::Go {
        site,
        client: ClientRequest {
            req,
            peer,
            host,
            fault,
            hop: mark.map(|(h, _)| h),
            direct,
        },
    }
}

/// A `GET` or `HEAD` answered from memory without waiting: a hit, or a stale one whose refresh
/// starts in the background. Anything else is left to [`answer_later`], with what was found
/// out for a `GET` or `HEAD` on the way.
fn hit_now(
    state: &Arc<EdgeState>,
    site: &Arc<Site>,
    client: &ClientRequest,
    lines: Option<&mut Option<response::Lines>>,
) -> Result<(Response<Body>, CacheStatus), Option<Looked>> {
    let req = &client.req;
    if *req.method() != Method::GET && *req.method() != Method::HEAD {
        return Err(None);
    }
    let directives = site.request_directives(req.headers());
    if directives.no_store {
        return Err(None);
    }
    let key = site.key(req.uri());
    let object = match state.store.get_memory(&key) {
        Some(Some(o)) => o,
        found => {
            let memory = match found {
                Some(_) => Memory::Missed,
                None => Memory::Unknown,
            };
            return Err(Some(Looked {
                directives,
                key,
                memory,
            }));
        }
    };
    let target = site.target(&client.host, client.peer.secure);
    // A hop's Cache-Status is renamed below, in the map.
    let lines = lines.filter(|_| client.hop.is_none());
    let decided = decide(
        &object,
        Tier::Memory,
        req.method(),
        req.headers(),
        target,
        &directives,
        lines,
        client.hop.is_some(),
    );
    let (mut resp, s) = match decided {
        Lookup::Served(resp, s) => (resp, s),
        Lookup::Refresh(resp, s, entry) => {
            refresh_in_background(state, site, client, &key, entry);
            (resp, s)
        }
        Lookup::Forward(fwd, stale) => {
            return Err(Some(Looked {
                directives,
                key,
                memory: Memory::Decided(fwd, stale),
            }))
        }
    };
    if let (Some(_), Some(peers)) = (client.hop, state.peers.get()) {
        peers.rename_cache_status(resp.headers_mut());
    }
    Ok((resp, s))
}

async fn pushed_purge(
    state: &EdgeState,
    peers: &Peers,
    req: Request<RequestBody>,
) -> (Response<Body>, CacheStatus) {
    let status = CacheStatus::default().detail("purge");
    let answer = |code: StatusCode, body: serde_json::Value| {
        let mut r = Response::new(Body::full(body.to_string()));
        *r.status_mut() = code;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        (r, status)
    };
    let digest = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("sha256="))
        .unwrap_or("")
        .to_string();
    let limited = http_body_util::Limited::new(req.into_body(), crate::shield::MAX_PUSH);
    let body = match http_body_util::BodyExt::collect(limited).await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({ "error": "too large" }),
            )
        }
    };
    if crate::shield::sha256_hex(&body) != digest {
        return answer(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "the body is not what was signed" }),
        );
    }
    let pushed: crate::purge::PushedPurge = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": e.to_string() }),
            )
        }
    };
    match crate::purge::apply_pushed(state, peers.gossip(), pushed).await {
        Ok(n) => answer(StatusCode::OK, serde_json::json!({ "purged": n })),
        Err((code, e)) => answer(code, serde_json::json!({ "error": e })),
    }
}

/// Prepares a request for an origin: origin-form target and proxy headers added. The client's
/// framing fields stay in the map (a header map removal each, on every upload): the origin
/// client writes its own framing and leaves those out (`Origins::send`), and a fill, whose head
/// may go to a peer, strips them itself. `parts.version`
/// is the client's; the origin client picks its own (HTTP/2 where the origin offers it), so it
/// leaves as HTTP/1.1. Hop-by-hop fields went at intake, and `Host` is the normalised one.
///
/// A signed peer hop (`hop`) keeps the forwarding fields the first edge wrote: they name the
/// user, and the peer only adds itself to `Via`. A client's request is given back the fields
/// this hop adds (see [`forwarding`]), for the caller to add or to have written as lines.
fn to_origin<'s>(
    parts: &mut Parts,
    peer: Peer,
    host: &str,
    site: &Site,
    state: &'s EdgeState,
    hop: Option<Hop>,
) -> Option<Forwarding<'s>> {
    let via = match parts.version {
        http::Version::HTTP_2 => &state.via2,
        http::Version::HTTP_3 => &state.via3,
        _ => &state.via,
    };
    parts.version = http::Version::HTTP_11;
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        if let Some(pq) = parts.uri.path_and_query() {
            if let Ok(u) = Uri::builder().path_and_query(pq.clone()).build() {
                parts.uri = u;
            }
        }
    }
    if hop.is_some() {
        parts.headers.append(header::VIA, via.clone());
        None
    } else {
        // The origin learns of the host and the scheme only where the variant holds them.
        let target = site.target(host, peer.secure);
        Some(forwarding(&mut parts.headers, peer.addr.ip(), target, via))
    }
}

/// Sends a request to the origin as it is and streams the answer back; never stores. A GET or
/// HEAD goes without any body the client sent (see [`to_origin`]).
/// `invalidate`: on a 2xx/3xx answer, drop stored responses for the target URI and for a
/// same-site `Location` / `Content-Location` (RFC 9111 §4.4).
async fn forward(
    state: &Arc<EdgeState>,
    site: &Arc<Site>,
    client: ClientRequest,
    mut status: CacheStatus,
    invalidate: bool,
) -> (Response<Body>, CacheStatus) {
    let for_client = client.share_client();
    let ClientRequest {
        req,
        peer,
        host,
        fault,
        hop,
        direct,
    } = client;
    let (mut parts, body) = Reused::into_inner(req).into_parts();
    let method = &parts.method;
    // Hazard: a GET or HEAD body has no meaning (RFC 9110 §9.3.1); forwarding its framing
    // without it, or it to an origin that does not expect it, desynchronises the pooled
    // connection (request smuggling). It is dropped, as most caches do.
    let body = if *method == Method::GET
        || *method == Method::HEAD
        || http_body::Body::is_end_stream(&body)
    {
        Body::empty()
    } else {
        Body::upload(body, state.client_body_timeout).watch_fault(fault)
    };
    let added = to_origin(&mut parts, peer, &host, site, state, hop);
    state.metrics.origin_fetch();
    let t = Instant::now();
    // The head stays here (the origin's exchange reads it): it is not moved again.
    let sent = site
        .origins
        .send(
            &parts,
            body,
            for_client,
            Lines {
                // A peer's hop keeps what this cache consumes (see `from_origin`): a header map.
                answer: direct && hop.is_none(),
                added: added.as_ref(),
                host: None,
            },
        )
        .await;
    // Sent (or failed): the request's fields are done with.
    give_back_map(std::mem::take(&mut parts.headers));
    let method = &parts.method;
    state.metrics.origin_took(t.elapsed());
    match sent {
        Ok((resp, _)) => {
            let code = resp.status();
            status.fwd_status = Some(code.as_u16());
            // Only an unsafe method invalidates (a pass-through GET builds no key).
            if invalidate && (code.is_success() || code.is_redirection()) {
                let key = site.key_line(&parts.uri);
                if let Some(key) = key.as_str() {
                    state.store.invalidate(key).await;
                }
                for name in [header::LOCATION, header::CONTENT_LOCATION] {
                    let k = resp
                        .headers()
                        .get(name)
                        .and_then(|v| same_site_key(v, site, &state.sites.load()));
                    if let Some(k) = k {
                        state.store.invalidate(&k).await;
                    }
                }
            }
            let resp = resp.map(|b| Body::download(b, site.origins.read_timeout()));
            (
                response::from_origin(resp, method, &state.via, status, hop.is_some()),
                status,
            )
        }
        Err(e) => {
            if e.is_origin_fault() {
                state.metrics.origin_error(e.kind());
            }
            (Refusal::Origin(e).response(status), status)
        }
    }
}

/// The cache key of a `Location`-like URI if it names the same site (relative, or absolute with
/// a host of the same site). Other sites' objects are not ours to invalidate (RFC 9111 §4.4).
fn same_site_key(value: &HeaderValue, site: &Arc<Site>, sites: &Sites) -> Option<String> {
    let uri: Uri = value.to_str().ok()?.parse().ok()?;
    if let Some(a) = uri.authority() {
        let other = sites.lookup(a.host())?;
        if !Arc::ptr_eq(other, site) {
            return None;
        }
    }
    if !uri.path().starts_with('/') {
        return None;
    }
    Some(site.key(&uri))
}

/// What the store can do for a request.
pub(crate) enum Lookup {
    /// Answered from cache.
    Served(Response<Body>, CacheStatus),
    /// Answered stale from cache; the entry needs a background refresh.
    Refresh(Response<Body>, CacheStatus, Arc<Entry>),
    /// Must go forward, with the stored entry to revalidate, if any.
    Forward(Fwd, Option<Arc<Entry>>),
}

/// The hit path: store lookup, variant selection, the reuse decision, and the response.
pub(crate) async fn lookup(
    state: &EdgeState,
    key: &str,
    method: &Method,
    headers: &HeaderMap,
    target: Target<'_>,
    directives: &RequestDirectives,
) -> Lookup {
    lookup_in(
        state,
        key,
        Memory::Unknown,
        method,
        headers,
        target,
        directives,
        false,
    )
    .await
}

/// [`lookup`], going on from what a look at memory alone found; `for_peer` as in [`decide`].
#[allow(clippy::too_many_arguments)]
async fn lookup_in(
    state: &EdgeState,
    key: &str,
    memory: Memory,
    method: &Method,
    headers: &HeaderMap,
    target: Target<'_>,
    directives: &RequestDirectives,
    for_peer: bool,
) -> Lookup {
    let found = match memory {
        Memory::Decided(fwd, stale) => return Lookup::Forward(fwd, stale),
        Memory::Missed => state.store.get_beyond_memory(key).await,
        Memory::Unknown => state.store.get(key).await,
    };
    let Some((object, tier)) = found else {
        return Lookup::Forward(Fwd::Miss, None);
    };
    decide(
        &object, tier, method, headers, target, directives, None, for_peer,
    )
}

/// What the object the store found (in `tier`) does for a request: the variant, the reuse
/// decision, and the response (with the entry's cache-only fields for a peer's hop,
/// `for_peer`).
#[allow(clippy::too_many_arguments)]
fn decide(
    object: &Object,
    tier: Tier,
    method: &Method,
    headers: &HeaderMap,
    target: Target<'_>,
    directives: &RequestDirectives,
    lines: Option<&mut Option<response::Lines>>,
    for_peer: bool,
) -> Lookup {
    let Some(entry) = object.select(headers, target) else {
        return Lookup::Forward(Fwd::VaryMiss, None);
    };
    let age = entry.age(Instant::now());
    // A body kept on disk is served from there, whichever tier held the head.
    let tier = if entry.on_disk.is_some() {
        Tier::Disk
    } else {
        tier
    };
    match policy::reuse(&entry.freshness(), age, directives) {
        Reuse::Hit => {
            let mut s = CacheStatus::hit(entry.ttl(age));
            s.tier = Some(tier);
            let resp = response::from_entry_as(entry, method, headers, s, age, lines);
            Lookup::Served(for_peer_from(resp, entry, for_peer), s)
        }
        Reuse::StaleWhileRevalidate => {
            let mut s = CacheStatus::hit(entry.ttl(age)).detail("stale-while-revalidate");
            s.tier = Some(tier);
            let resp = response::from_entry_as(entry, method, headers, s, age, lines);
            Lookup::Refresh(for_peer_from(resp, entry, for_peer), s, entry.clone())
        }
        Reuse::RevalidateRequested => Lookup::Forward(Fwd::Request, Some(entry.clone())),
        Reuse::Revalidate => Lookup::Forward(Fwd::Stale, Some(entry.clone())),
    }
}

/// Starts a background refresh of `key` unless one is already in flight (RFC 5861 §3: once per
/// object). The client is answered from the stale entry meanwhile.
fn refresh_in_background(
    state: &Arc<EdgeState>,
    site: &Arc<Site>,
    client: &ClientRequest,
    key: &str,
    stale: Arc<Entry>,
) {
    if let Join::Leader(leader) = state.collapser.join(key) {
        let fill = Fill::new(state, site, client, key);
        state.tasks.spawn(fetch(
            state.clone(),
            site.clone(),
            fill,
            Some(stale),
            leader,
            None,
        ));
    }
}

/// What a fetch needs of the request that caused it.
struct Fill {
    /// The request sent to the origin.
    parts: Parts,
    /// The client's (normalised) request headers: the variant is recorded from them.
    client_headers: HeaderMap,
    /// The variant's target.
    host: Option<Arc<str>>,
    https: Option<bool>,
    key: String,
    /// The tier the request that caused the fetch came over, if from a peer.
    hop: Option<Hop>,
    /// The address of the client whose request caused the fetch, whose share of the site's
    /// origin slots it takes (none for a peer's).
    client: Option<std::net::IpAddr>,
}

impl Fill {
    /// The request sent to fill the cache: a GET for the whole object (ranges and the client's
    /// conditionals removed; the cache answers those itself from what it stores), never with a
    /// body.
    fn new(state: &EdgeState, site: &Site, client: &ClientRequest, key: &str) -> Fill {
        let req = &client.req;
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = Method::GET;
        parts.version = req.version();
        parts.uri = req.uri().clone();
        parts.headers = req.headers().clone();
        for name in [
            header::RANGE,
            header::IF_RANGE,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
        ] {
            parts.headers.remove(name);
        }
        // A fill's request may go to a peer too (see `shield`), which reads the header map:
        // without the client's framing (the fill sends no body).
        strip_framing(&mut parts.headers);
        if let Some(added) = to_origin(
            &mut parts,
            client.peer,
            &client.host,
            site,
            state,
            client.hop,
        ) {
            added.apply(&mut parts.headers);
        }
        let target = site.target(&client.host, client.peer.secure);
        Fill {
            parts,
            client_headers: req.headers().clone(),
            host: target.host.map(|h| site.host(h)),
            https: target.https,
            key: key.to_string(),
            hop: client.hop,
            client: client.share_client(),
        }
    }
}

async fn fill(
    state: &Arc<EdgeState>,
    site: &Arc<Site>,
    client: ClientRequest,
    key: String,
    stale: Option<Arc<Entry>>,
    fwd: Fwd,
    directives: &RequestDirectives,
) -> (Response<Body>, CacheStatus) {
    let mut status = CacheStatus::forward(fwd);
    let req = &client.req;
    let target = site.target(&client.host, client.peer.secure);
    let for_peer = client.hop.is_some();
    match state.collapser.join(&key) {
        Join::Leader(leader) => {
            // Double-check: a fetch that finished between our lookup and our join stored it.
            if stale.is_none() {
                if let Some(entry) = state
                    .store
                    .get(&key)
                    .await
                    .and_then(|(o, _)| o.select(req.headers(), target).cloned())
                {
                    let age = entry.age(Instant::now());
                    if policy::reuse(&entry.freshness(), age, directives) == Reuse::Hit {
                        leader.finish(Outcome::Fresh {
                            entry: entry.clone(),
                            fwd_status: 200,
                            filling: None,
                        });
                        let s = CacheStatus::hit(entry.ttl(age));
                        let resp =
                            response::from_entry(&entry, req.method(), req.headers(), s, age);
                        return (for_peer_from(resp, &entry, for_peer), s);
                    }
                }
            }
            let (tx, rx) = oneshot::channel();
            let job = Fill::new(state, site, &client, &key);
            // The fetch runs as its own task: a client that disconnects does not cancel it.
            state.tasks.spawn(fetch(
                state.clone(),
                site.clone(),
                job,
                stale.clone(),
                leader,
                Some(tx),
            ));
            let fetched = rx.await.unwrap_or_else(|_| {
                Fetched::Failed(OriginError::Protocol {
                    origin: site.name.clone(),
                    reason: "fetch task ended without an answer".into(),
                })
            });
            match fetched {
                Fetched::Entry {
                    entry,
                    fwd_status,
                    stored,
                    set_cookie,
                    tail,
                    upstream,
                } => {
                    status.fwd_status = Some(fwd_status);
                    status.stored = stored;
                    let mut resp = match answer_entry(&entry, tail, req, status, for_peer).await {
                        Ok(r) => r,
                        Err(e) => return (Refusal::Origin(e).response(status), status),
                    };
                    if let Some(u) = upstream {
                        response::after_upstream(resp.headers_mut(), &u);
                    }
                    // The cookies go to the client whose request fetched the response, never
                    // into the stored copy.
                    for c in set_cookie {
                        resp.headers_mut().append(header::SET_COOKIE, c);
                    }
                    (resp, status)
                }
                Fetched::Response { resp, reason } => {
                    status.fwd_status = Some(resp.status().as_u16());
                    if policy::is_error_status(resp.status()) {
                        if let Some(r) =
                            serve_stale_on_error(&stale, req, directives, status, for_peer)
                        {
                            return r;
                        }
                    }
                    status.detail = reason;
                    (
                        response::from_origin(resp, req.method(), &state.via, status, for_peer),
                        status,
                    )
                }
                Fetched::Failed(e) => {
                    match serve_stale_on_error(&stale, req, directives, status, for_peer) {
                        Some(r) => r,
                        None => (Refusal::Origin(e).response(status), status),
                    }
                }
            }
        }
        Join::Follower(follower) => {
            status.collapsed = true;
            match follower.wait().await {
                Some(Outcome::Fresh {
                    entry,
                    fwd_status,
                    filling,
                }) if entry.matches(req.headers(), target) => {
                    status.fwd_status = Some(fwd_status);
                    // A fill that failed or dropped its start cannot be read: go on our own.
                    let tail = match filling.map(|g| g.reader()) {
                        Some(None) => return forward(state, site, client, status, false).await,
                        Some(Some(t)) => Some(t),
                        None => None,
                    };
                    match answer_entry(&entry, tail, req, status, for_peer).await {
                        Ok(r) => (r, status),
                        Err(e) => (Refusal::Origin(e).response(status), status),
                    }
                }
                Some(Outcome::Failed(e)) => {
                    match serve_stale_on_error(&stale, req, directives, status, for_peer) {
                        Some(r) => r,
                        None => (Refusal::Origin(e).response(status), status),
                    }
                }
                Some(Outcome::OriginStatus(code)) => {
                    status.fwd_status = Some(code);
                    match serve_stale_on_error(&stale, req, directives, status, for_peer) {
                        Some(r) => r,
                        None => forward(state, site, client, status, false).await,
                    }
                }
                // Uncacheable, another variant, or the leader vanished: go on our own, at once.
                _ => forward(state, site, client, status, false).await,
            }
        }
    }
}

/// Answers a request from an entry, reading the body from `tail` while it is still being
/// filled. A range of a body of unknown length waits for the whole body; if that fill fails,
/// the error to answer with. `for_peer`: a peer's hop, which gets the entry's cache-only
/// fields ([`response::cache_only_for_peer`]).
async fn answer_entry(
    entry: &Arc<Entry>,
    tail: Option<Tail>,
    req: &Request<RequestBody>,
    mut status: CacheStatus,
    for_peer: bool,
) -> Result<Response<Body>, OriginError> {
    let age = entry.age(Instant::now());
    status.ttl = Some(entry.ttl(age));
    let resp = match tail {
        None => response::from_entry(entry, req.method(), req.headers(), status, age),
        Some(tail) => {
            match response::from_fill(entry, tail, req.method(), req.headers(), status, age) {
                Ok(resp) => resp,
                Err(tail) => {
                    let Some(stored) = tail.source().finished().await else {
                        return Err(OriginError::Body {
                            origin: "the shared fetch".into(),
                            reason: FillFailed.to_string(),
                        });
                    };
                    let age = stored.age(Instant::now());
                    status.ttl = Some(stored.ttl(age));
                    let resp =
                        response::from_entry(&stored, req.method(), req.headers(), status, age);
                    return Ok(for_peer_from(resp, &stored, for_peer));
                }
            }
        }
    };
    Ok(for_peer_from(resp, entry, for_peer))
}

/// `resp`, with `entry`'s cache-only fields where it goes to a peer.
fn for_peer_from(mut resp: Response<Body>, entry: &Entry, for_peer: bool) -> Response<Body> {
    if for_peer {
        response::cache_only_for_peer(resp.headers_mut(), entry);
    }
    resp
}

/// Answers from the stale entry if stale-if-error allows it (RFC 5861 §4); `for_peer` as in
/// [`answer_entry`].
fn serve_stale_on_error(
    stale: &Option<Arc<Entry>>,
    req: &Request<RequestBody>,
    directives: &RequestDirectives,
    mut status: CacheStatus,
    for_peer: bool,
) -> Option<(Response<Body>, CacheStatus)> {
    let entry = stale.as_ref()?;
    let age = entry.age(Instant::now());
    if !policy::stale_if_error(&entry.freshness(), age, directives) {
        return None;
    }
    status.fwd = Some(Fwd::Stale);
    status.ttl = Some(entry.ttl(age));
    status.detail = Some("stale-if-error");
    let resp = response::from_entry(entry, req.method(), req.headers(), status, age);
    Some((for_peer_from(resp, entry, for_peer), status))
}

/// Response fields never kept in a stored copy: `Set-Cookie` belongs to the one client whose
/// request fetched it (a shared cache must not hand one user's session to another).
fn take_cookies(headers: &mut HeaderMap) -> Vec<HeaderValue> {
    let all = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    // `remove` drops every value of the field.
    headers.remove(header::SET_COOKIE);
    all
}

/// Builds the stored form of an origin response: client-facing headers, tags, variant key; the
/// body (of `length` bytes, when the origin declared it) is added when it has arrived.
#[allow(clippy::too_many_arguments)]
fn new_entry(
    site: &Site,
    job: &Fill,
    status: StatusCode,
    mut headers: HeaderMap,
    length: Option<u64>,
    freshness: policy::Freshness,
    stored_at: Instant,
    via: &HeaderValue,
) -> Entry {
    // The variant is what the origin said it varies on, whatever else it says of its fields.
    let vary = vary_names(&headers, &site.key_headers);
    strip_hop_by_hop(&mut headers);
    let tags = surrogate_keys(&headers);
    let surrogate_control = response::surrogate_control(&headers);
    strip_cache_only(&mut headers);
    headers.remove(header::AGE);
    // An upstream cache's entry describes this one fetch, not later hits.
    headers.remove(super::headers::CACHE_STATUS);
    match length {
        Some(n) => headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n)),
        None => headers.remove(header::CONTENT_LENGTH),
    };
    if status == StatusCode::OK {
        // Ranges are served from stored full responses.
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    headers.append(header::VIA, via.clone());
    let headers = Fields::new(&headers);
    let vary_values = vary
        .iter()
        .map(|n| normalized(&job.client_headers, n).map(String::into_boxed_str))
        .collect();
    Entry {
        status,
        headers,
        body: bytes::Bytes::new(),
        fresh: freshness.into(),
        stored_at,
        vary: vary.into(),
        vary_values,
        tags,
        target_host: job.host.clone(),
        target_https: job.https,
        surrogate_control,
        on_disk: None,
        residence: None,
    }
}

/// Whether an answer came from a cache's store: some entry of its `Cache-Status` (each tier
/// adds one) is a `hit`.
fn from_store(headers: &HeaderMap) -> bool {
    headers
        .get_all(super::headers::CACHE_STATUS)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|entry| {
            entry
                .split(|&b| b == b';')
                .any(|p| p.trim_ascii() == b"hit")
        })
}

/// Sends a fill's request upstream: to the key's owners among the peers first where the site
/// shields (each in turn, passing over any that fails or is slow), then to the origin. Returns
/// the response, what answered (for errors and logs), and its `Cache-Status` (a peer's, or an
/// origin's that is a cache itself).
async fn upstream(
    state: &EdgeState,
    site: &Site,
    job: &Fill,
) -> Result<(Response<OriginBody>, String, Option<HeaderValue>), OriginError> {
    if let (true, Some(peers)) = (site.shield, state.peers.get()) {
        for ask in peers.plan(&job.key, site.shield_region.as_deref(), job.hop) {
            let limit = site.origins.first_byte_timeout();
            let https = job.https == Some(true);
            if let Some(resp) = peers.send(&ask, &job.parts, https, limit).await {
                // A stored copy from before a purge applied here (one the peer has not applied
                // yet): the next owner may hold it too, so the origin. A copy no tier had
                // stored was fetched for this request, after the purge.
                if !state.recent_purges.is_empty() && from_store(resp.headers()) {
                    let number = |name| {
                        resp.headers()
                            .get(name)
                            .and_then(|v: &HeaderValue| v.to_str().ok()?.parse::<u64>().ok())
                    };
                    let earliest = crate::purge::left_origin(
                        number(super::headers::FETCHED),
                        std::time::Duration::from_secs(number(header::AGE).unwrap_or(0)),
                    );
                    let tags = surrogate_keys(resp.headers());
                    if state.recent_purges.predates(&job.key, &tags, earliest) {
                        peers.purged_copy(&ask);
                        break;
                    }
                }
                let status = resp.headers().get(super::headers::CACHE_STATUS).cloned();
                return Ok((
                    resp.map(OriginBody::hyper),
                    format!("peer {}", ask.id),
                    status,
                ));
            }
        }
    }
    let t = Instant::now();
    state.metrics.origin_fetch();
    let sent = site
        .origins
        .send(&job.parts, Body::empty(), job.client, Lines::default())
        .await;
    state.metrics.origin_took(t.elapsed());
    sent.map(|(resp, origin)| {
        // An origin that is a cache itself may say what it did, too.
        let status = resp.headers().get(super::headers::CACHE_STATUS).cloned();
        (resp, origin.to_string(), status)
    })
}

/// The shared fetch: one per key at a time, run as its own task. Publishes an [`Outcome`] to
/// followers through `leader` and a [`Fetched`] to the leading request through `reply` (absent
/// for background refreshes).
async fn fetch(
    state: Arc<EdgeState>,
    site: Arc<Site>,
    mut job: Fill,
    stale: Option<Arc<Entry>>,
    leader: Leader<Outcome>,
    reply: Option<oneshot::Sender<Fetched>>,
) {
    let answer = |f: Fetched| {
        if let Some(tx) = reply {
            let _ = tx.send(f);
        }
    };
    if let Some(s) = &stale {
        if let Some(etag) = s.etag() {
            job.parts
                .headers
                .insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = s.last_modified() {
            job.parts
                .headers
                .insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }
    let request_time = SystemTime::now();
    let sent = upstream(&state, &site, &job).await;
    let exchange = Exchange {
        request_time,
        response_time: SystemTime::now(),
    };
    let stored_at = Instant::now();
    let key = std::mem::take(&mut job.key);
    let (resp, origin, upstream) = match sent {
        Ok(sent) => sent,
        Err(e @ OriginError::ClientBusy { .. }) => {
            // The leader's client holds its share of the origin slots: not the followers'
            // fault, so they go on their own (as when a leader vanishes), each on its share.
            drop(leader);
            return answer(Fetched::Failed(e));
        }
        Err(e) => {
            state.metrics.origin_error(e.kind());
            leader.finish(Outcome::Failed(e.clone()));
            return answer(Fetched::Failed(e));
        }
    };
    let code = resp.status();
    let client_headers = &job.client_headers;
    let storability = |status: StatusCode, headers: &HeaderMap| {
        policy::storability(
            &Method::GET,
            client_headers,
            status,
            headers,
            exchange,
            site.policy,
        )
    };

    if code == StatusCode::NOT_MODIFIED {
        if let Some(old) = &stale {
            let mut fresh_headers = resp.headers().clone();
            strip_hop_by_hop(&mut fresh_headers);
            let mut merged = old.refreshed_headers(&fresh_headers);
            // Surrogate fields were kept apart from the stored copy's: the 304's count, and
            // where it has none, the stored response's (RFC 9111 §4.3.4: fields the 304 does
            // not repeat stay as stored).
            for name in [
                super::headers::SURROGATE_CONTROL,
                super::headers::SURROGATE_KEY,
            ] {
                for v in fresh_headers.get_all(&name) {
                    merged.append(name.clone(), v.clone());
                }
            }
            let surrogate_control = match response::surrogate_control(&fresh_headers) {
                Some(v) => Some(v),
                None => {
                    if let Some(v) = &old.surrogate_control {
                        merged.insert(super::headers::SURROGATE_CONTROL, (**v).clone());
                    }
                    old.surrogate_control.clone()
                }
            };
            let tags = if fresh_headers.contains_key(super::headers::SURROGATE_KEY) {
                surrogate_keys(&fresh_headers)
            } else {
                old.tags.clone()
            };
            // Judged with the 304's cookies (a site that does not opt in stores no response
            // that sets one); kept out of the stored copy either way.
            let refreshed = storability(old.status, &merged);
            let set_cookie = take_cookies(&mut merged);
            strip_cache_only(&mut merged);
            merged.remove(header::AGE);
            merged.remove(super::headers::CACHE_STATUS);
            let freshness = refreshed.unwrap_or(old.freshness());
            let entry = Arc::new(Entry {
                status: old.status,
                headers: Fields::new(&merged),
                body: old.body.clone(),
                on_disk: old.on_disk.clone(),
                fresh: freshness.into(),
                stored_at,
                vary: old.vary.clone(),
                vary_values: old.vary_values.clone(),
                tags,
                target_host: old.target_host.clone(),
                target_https: old.target_https,
                surrogate_control,
                // The same body: its claim goes with it.
                residence: old.residence.clone(),
            });
            let stored = refreshed.is_ok();
            if stored {
                state.store.insert(key, entry.clone()).await;
            } else {
                state.store.invalidate(&key).await;
            }
            leader.finish(Outcome::Fresh {
                entry: entry.clone(),
                fwd_status: 304,
                filling: None,
            });
            return answer(Fetched::Entry {
                entry,
                fwd_status: 304,
                stored,
                set_cookie,
                tail: None,
                upstream,
            });
        }
    }

    let read_timeout = site.origins.read_timeout();
    if policy::is_error_status(code) {
        // Not a verdict on the object: keep any stale copy for stale-if-error, and do not mark
        // the URL uncacheable (that would stop collapsing while the origin struggles).
        let reason = storability(code, resp.headers()).err();
        if reason.is_some() || stale.is_some() {
            leader.finish(Outcome::OriginStatus(code.as_u16()));
            return answer(Fetched::Response {
                resp: resp.map(|b| Body::download(b, read_timeout)),
                reason: reason.map(|r| r.detail()),
            });
        }
    }

    let freshness = match storability(code, resp.headers()) {
        Ok(f) => f,
        Err(reason) => {
            if stale.is_some() {
                state.store.invalidate(&key).await;
            }
            if !policy::is_error_status(code) {
                state.store.mark_pass(key).await;
            }
            leader.finish(Outcome::Pass);
            return answer(Fetched::Response {
                resp: resp.map(|b| Body::download(b, read_timeout)),
                reason: Some(reason.detail()),
            });
        }
    };

    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_object_size) {
        state.store.mark_pass(key).await;
        leader.finish(Outcome::Pass);
        return answer(Fetched::Response {
            resp: resp.map(|b| Body::download(b, read_timeout)),
            reason: Some("too-large"),
        });
    }
    // The body is held in memory until stored (unless it goes to disk as it arrives): its
    // declared length must fit what the edge's fills may hold, or it is passed through.
    let mut share = state.filling.share();
    if let Some(n) = declared.filter(|&n| !state.store.disk_only(n)) {
        if !share.take(n) {
            state.metrics.fill_memory_full.increment(1);
            tracing::debug!(
                key,
                "fills hold all the memory they may; passed through unstored"
            );
            leader.finish(Outcome::Pass);
            return answer(Fetched::Response {
                resp: resp.map(|b| Body::download(b, read_timeout)),
                reason: Some("fills-full"),
            });
        }
    }
    let (mut head, body) = resp.into_parts();
    let set_cookie = take_cookies(&mut head.headers);
    let fwd_status = code.as_u16();
    // Clients are answered from the head on: the leading request and every follower read the
    // body as it arrives, while it is stored.
    let head_entry = Arc::new(new_entry(
        &site,
        &job,
        code,
        head.headers,
        declared,
        freshness,
        stored_at,
        &state.via,
    ));
    let growing = Growing::new(declared);
    // cannot fail: a new fill admits readers.
    let tail = growing.reader();
    leader.publish(Outcome::Fresh {
        entry: head_entry.clone(),
        fwd_status,
        filling: Some(growing.clone()),
    });
    answer(Fetched::Entry {
        entry: head_entry.clone(),
        fwd_status,
        stored: true,
        set_cookie,
        tail,
        upstream,
    });
    // An object too large for memory goes to disk as it arrives, and only the part not yet
    // there is held (readers behind read the rest from disk).
    let mut spool = match (state.store.disk(), declared) {
        (Some(disk), Some(n)) if state.store.disk_only(n) => {
            let s = disk.spool(n);
            growing.spill_to(s.body());
            Some((disk, s))
        }
        _ => None,
    };
    let mut body = Body::download(body, read_timeout);
    let mut leader = Some(leader);
    let mut total: u64 = 0;
    loop {
        // A released fill is read only for its readers, no further ahead of the slowest than
        // RELEASED_AHEAD; with none left it stops.
        if leader.is_none() {
            std::future::poll_fn(|cx| growing.poll_room(cx)).await;
            if growing.readers() == 0 {
                growing.fail();
                return;
            }
        }
        let frame = match http_body_util::BodyExt::frame(&mut body).await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // A body cut off mid-way (or stalled past the read timeout) is never stored,
                // and every client reading it sees its response aborted.
                let e = crate::origin::body_error(e, &origin);
                state.metrics.origin_error(e.kind());
                growing.fail();
                if let Some(l) = leader {
                    l.finish(Outcome::Failed(e));
                }
                return;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        growing.push(data.clone());
        if let Some((disk, s)) = &mut spool {
            disk.spool_push(s, &data).await;
            growing.spilled(s.written());
        } else if leader.is_some() && state.store.disk_only(total) {
            // A body of unknown length that turns out too large for memory: what has arrived
            // goes to disk, and the rest as it comes.
            if let Some(disk) = state.store.disk() {
                let mut s = disk.spool(u64::MAX);
                growing.spill_to(s.body());
                disk.spool_push(&mut s, &growing.concat()).await;
                growing.spilled(s.written());
                spool = Some((disk, s));
                share.give_back();
            }
        } else if leader.is_some() && declared.is_none() && !share.take(data.len() as u64) {
            // No length declared, and the fills hold all they may: not stored; its readers
            // get the rest, later requests fetch again.
            state.metrics.fill_memory_full.increment(1);
            growing.release();
            leader = None;
            share.give_back();
        }
        if leader.is_some() && total > state.max_object_size {
            // Larger than the store takes (only a body of unknown length gets here): its
            // readers get the rest, later requests go to the origin on their own.
            growing.release();
            state.store.mark_pass(key.clone()).await;
            leader = None;
            // Nothing more goes to disk; readers behind still read what is there.
            spool = None;
        }
    }
    let Some(leader) = leader else {
        growing.ended();
        return;
    };
    let entry = match spool {
        None => {
            let (body, residence) = state.filling.resident(growing.concat_vec());
            Arc::new(head_entry.with_resident_body(body, residence))
        }
        Some((disk, s)) => match disk.spool_finish(s, total).await {
            Some(on_disk) => Arc::new(head_entry.with_disk_body(on_disk)),
            None => {
                // Not on disk whole, and no longer in memory: readers behind fail, nothing is
                // stored, the next request fetches again.
                growing.fail();
                return;
            }
        },
    };
    // Readers get their end at once; the key stays claimed until the store (and a disk tier's
    // writes) have it, so requests meanwhile read this fill.
    growing.stored(entry.clone());
    state.store.insert(key, entry.clone()).await;
    leader.finish(Outcome::Fresh {
        entry,
        fwd_status,
        filling: None,
    });
}
