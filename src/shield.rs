//! Tiered caching (`shield`): which edge owns a cache key, and the signed hop to it.
//!
//! On a miss for a shielded site an edge asks the key's *owner* among the live, non-draining
//! edges of its region instead of the origin: rendezvous hashing of the key over the members
//! gossip heard, so that edges with the same view pick the same owner and a member leaving moves
//! only its own keys. Where the site names a `shield_region`, a region's owner asks the owner in
//! that region, which alone asks the origin. An owner that cannot be reached, or sends no
//! response head within `edge.peer_timeout` and then fails a ping, is passed over for the next
//! one, then the origin: nothing waits for gossip to declare it dead, and an owner that is only
//! waiting on a slow origin is waited for.
//!
//! Each hop carries `Meridian-Peer: <tier>[s].<unix s>.<hex HMAC-SHA256>`, signed with a key
//! derived from the gossip key over the tier, the scheme, the time, the method, the host and the
//! target. The scheme (`s`: the user asked over HTTPS) is the user's, not the hop's: the owner
//! keys the variant by it and the origin hears it, as if the user had asked the owner itself.
//! (Without it an HTTPS user's miss, passed on over plain HTTP, was the owner's `http` variant:
//! an origin that redirects `http` to `https` had that redirect stored for HTTPS users too, a
//! redirect loop.) A request
//! whose signature holds (and whose time is within a minute of ours) is a peer's: its forwarding
//! fields are kept (they name the user, not the peer) and it is never passed on within its tier
//! again, so a hop can only go up (region, then shield, then origin) and loops are impossible.
//! Anything else is an ordinary client request: the header only ever grants what a client could
//! ask for anyway, so a peer port is never an open proxy. `Via` marks each hop as well.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use metrics::Counter;

use arc_swap::ArcSwap;

use crate::gossip::transport::Keyring;
use crate::gossip::Gossip;
use crate::http::body::Body;
use crate::http::server::PerThread;
use crate::http::tls::Certificates;

/// How an edge connects to a peer's TLS listener.
type PeerConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A pool of TLS connections to peers per HTTP thread.
type PeerClients = PerThread<Client<PeerConnector, Body>>;
use crate::model::{Member, MemberState};

/// The request field that marks (and authenticates) a peer hop.
pub(crate) const PEER: HeaderName = HeaderName::from_static("meridian-peer");

/// How far a signed hop's time may be from ours.
const MAX_SKEW_SECS: u64 = 60;

/// Owners asked per tier before the next tier (or the origin).
const OWNERS_PER_TIER: usize = 2;

/// Which tier a hop asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hop {
    /// An edge asks its region's owner of the key.
    Region,
    /// A region's owner asks the owner in the site's shield region.
    Shield,
    /// A node that issued a cluster purge hands it to an edge at once ([`PURGE_PATH`]), ahead
    /// of gossip.
    Purge,
}

/// Where an edge takes purges pushed by the node that issued them: `POST` with a signed mark
/// of [`Hop::Purge`] and `?sha256=<hex>` of the body, on the peer listener. Without a valid
/// mark it is an ordinary request for a site.
pub(crate) const PURGE_PATH: &str = "/.meridian/purge";

/// Where an edge answers its peers' pings (`GET`, `Host:` [`PURGE_HOST`]): `200` while its
/// request path runs. It tells nothing but that.
pub(crate) const PING_PATH: &str = "/.meridian/ping";

/// The `Host` of a pushed purge and of a ping (they are for the edge, not for a site).
pub(crate) const PURGE_HOST: &str = "meridian.peer";

/// Largest pushed purge body.
pub(crate) const MAX_PUSH: usize = 16 << 10;

/// Lower-case hex SHA-256 of `body`.
pub(crate) fn sha256_hex(body: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body).as_ref())
}

impl Hop {
    fn digit(self) -> char {
        match self {
            Hop::Region => '1',
            Hop::Shield => '2',
            Hop::Purge => '3',
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Hop::Region => "region",
            Hop::Shield => "shield",
            Hop::Purge => "purge",
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A hop's tier field: its digit, then `s` when the user asked over HTTPS.
fn tier_field(hop: Hop, https: bool) -> String {
    let mut t = hop.digit().to_string();
    if https {
        t.push('s');
    }
    t
}

/// What a hop's signature covers.
fn signed_text(tier: &str, at: u64, method: &Method, host: &str, target: &str) -> String {
    format!("{tier}.{at}.{method} {host} {target}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// The `Meridian-Peer` value for a hop of a request its user made over HTTPS (`https`) or not;
/// `None` when the ring has no key (insecure gossip).
pub(crate) fn sign(
    keyring: &Keyring,
    hop: Hop,
    https: bool,
    at: u64,
    method: &Method,
    host: &str,
    target: &str,
) -> Option<HeaderValue> {
    let tier = tier_field(hop, https);
    let tag = keyring.sign_peer(signed_text(&tier, at, method, host, target).as_bytes())?;
    HeaderValue::from_str(&format!("{tier}.{at}.{}", hex(tag.as_ref()))).ok()
}

/// The hop a `Meridian-Peer` value proves, and whether its user asked over HTTPS, if its
/// signature holds for this request and its time is within [`MAX_SKEW_SECS`] of `now`.
pub(crate) fn verify(
    keyring: &Keyring,
    value: &HeaderValue,
    now: u64,
    method: &Method,
    host: &str,
    target: &str,
) -> Option<(Hop, bool)> {
    let text = value.to_str().ok()?;
    let mut parts = text.splitn(3, '.');
    let (tier, at, sig) = (parts.next()?, parts.next()?, parts.next()?);
    let (digit, https) = match tier.strip_suffix('s') {
        Some(d) => (d, true),
        None => (tier, false),
    };
    let hop = match digit {
        "1" => Hop::Region,
        "2" => Hop::Shield,
        "3" => Hop::Purge,
        _ => return None,
    };
    let at: u64 = at.parse().ok()?;
    if at.abs_diff(now) > MAX_SKEW_SECS {
        return None;
    }
    let sig = unhex(sig)?;
    keyring
        .verify_peer(signed_text(tier, at, method, host, target).as_bytes(), &sig)
        .then_some((hop, https))
}

/// A stable 64-bit score of (member, key): FNV-1a, then a finaliser that spreads its bits
/// (stable across builds and platforms, unlike std's hasher, so every node agrees).
fn score(id: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain([0xff]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The edges that may own `key` in `region`, best first: live, not draining, taking peer
/// requests, ordered by rendezvous score.
pub(crate) fn owners<'a>(members: &'a [Member], region: &str, key: &str) -> Vec<&'a Member> {
    let mut m: Vec<(u64, &Member)> = members
        .iter()
        .filter(|m| {
            m.is_edge()
                && m.state == MemberState::Alive
                && !m.draining
                && m.region == region
                && m.peer.is_some()
        })
        .map(|m| (score(&m.id, key), m))
        .collect();
    m.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    m.into_iter().map(|(_, m)| m).collect()
}

/// A peer to ask: its id, where it takes peer requests (and over TLS, if it does), and over
/// which tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ask {
    pub(crate) id: String,
    pub(crate) addr: SocketAddr,
    pub(crate) tls: Option<SocketAddr>,
    pub(crate) hop: Hop,
}

/// The peers to ask for `key` before the origin, in order, by an edge of `region` for a request
/// that came from a client (`came` = `None`) or over a hop.
pub(crate) fn plan(
    members: &[Member],
    region: &str,
    shield_region: Option<&str>,
    key: &str,
    came: Option<Hop>,
) -> Vec<Ask> {
    let mut out = Vec::new();
    // A tier's owners in order, until this edge itself: past it, this edge is the owner (for
    // this request).
    let mut tier = |region: &str, hop: Hop| {
        for m in owners(members, region, key)
            .into_iter()
            .take(OWNERS_PER_TIER)
        {
            match (m.is_self, m.peer) {
                (false, Some(addr)) => out.push(Ask {
                    id: m.id.clone(),
                    addr,
                    tls: m.peer_tls,
                    hop,
                }),
                _ => break,
            }
        }
    };
    if came.is_none() {
        tier(region, Hop::Region);
    }
    if came != Some(Hop::Shield) {
        if let Some(shield) = shield_region.filter(|s| *s != region) {
            tier(shield, Hop::Shield);
        }
    }
    out
}

/// Peer-request counters of one edge.
struct PeerMetrics {
    hit: Counter,
    miss: Counter,
    failed: Counter,
    purged: Counter,
    served: Counter,
    refused: Counter,
}

/// How an edge reaches its peers.
pub(crate) struct Peers {
    gossip: Arc<Gossip>,
    region: String,
    timeout: Duration,
    /// A pool per HTTP thread (see [`PerThread`]).
    client: PerThread<Client<HttpConnector, Body>>,
    /// The same over TLS, for peers with a TLS listener, where this edge has certificates to
    /// know them by (see [`crate::http::tls::PeerVerifier`]).
    tls: Option<(PeerClients, Arc<ArcSwap<Certificates>>)>,
    metrics: PeerMetrics,
    /// This edge's name in a `Cache-Status` entry it gives a peer.
    cache_name: HeaderValue,
}

impl Peers {
    pub(crate) fn new(
        node: &str,
        region: &str,
        timeout: Duration,
        gossip: Arc<Gossip>,
        certificates: Option<Arc<ArcSwap<Certificates>>>,
    ) -> Peers {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        fn pooled<C>(connector: C) -> Client<C, Body>
        where
            C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
        {
            Client::builder(TokioExecutor::new())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_max_idle_per_host(256)
                .build(connector)
        }
        let plain = http.clone();
        let client = PerThread::new(move || pooled(plain.clone()));
        let tls = certificates.map(|certificates| {
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(crate::http::tls::provider()))
                    .with_safe_default_protocol_versions()
                    .expect("the provider's default versions")
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(
                        crate::http::tls::PeerVerifier::new(certificates.clone()),
                    ))
                    .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(crate::http::tls::PEER_NAME)
                .expect("a server name");
            let mut tcp = http.clone();
            tcp.enforce_http(false);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
                .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
                .enable_http1()
                .wrap_connector(tcp);
            (
                PerThread::new(move || pooled(connector.clone())),
                certificates,
            )
        });
        let c = |result: &'static str| metrics::counter!("meridian_peer_requests_total", "node" => node.to_string(), "result" => result);
        let s = |signature: &'static str| metrics::counter!("meridian_peer_served_total", "node" => node.to_string(), "signature" => signature);
        Peers {
            gossip,
            region: region.to_string(),
            timeout,
            client,
            tls,
            metrics: PeerMetrics {
                hit: c("hit"),
                miss: c("miss"),
                failed: c("failed"),
                purged: c("purged"),
                served: s("valid"),
                refused: s("invalid"),
            },
            cache_name: HeaderValue::from_str(&cache_name(node))
                .unwrap_or(HeaderValue::from_static("meridian")),
        }
    }

    /// The peers to ask for `key`, in order (see [`plan`]).
    pub(crate) fn plan(
        &self,
        key: &str,
        shield_region: Option<&str>,
        came: Option<Hop>,
    ) -> Vec<Ask> {
        plan(
            &self.gossip.members(),
            &self.region,
            shield_region,
            key,
            came,
        )
    }

    /// Notes that `ask`'s answer was not used: its copy may predate a purge applied here (see
    /// [`crate::purge::Recent`]).
    pub(crate) fn purged_copy(&self, ask: &Ask) {
        self.metrics.purged.increment(1);
        tracing::info!(peer = %ask.id, tier = ask.hop.as_str(), "a peer's copy may predate a purge applied here; asking the origin");
    }

    /// The gossip agent the peers are known by.
    pub(crate) fn gossip(&self) -> &Arc<Gossip> {
        &self.gossip
    }

    /// The members as gossip last reported them.
    pub(crate) fn members(&self) -> Arc<Vec<Member>> {
        self.gossip.members()
    }

    pub(crate) fn region(&self) -> &str {
        &self.region
    }

    /// The hop a request's `Meridian-Peer` field proves, and whether its user asked over HTTPS
    /// (counted either way), if any.
    pub(crate) fn verify(
        &self,
        value: &HeaderValue,
        method: &Method,
        host: &str,
        target: &str,
    ) -> Option<(Hop, bool)> {
        let hop = verify(
            &self.gossip.keyring(),
            value,
            unix_secs(),
            method,
            host,
            target,
        );
        match hop {
            Some(_) => self.metrics.served.increment(1),
            None => self.metrics.refused.increment(1),
        }
        hop
    }

    /// Names this edge's `Cache-Status` entry in an answer to a peer: the peer adds its own
    /// entry after it (RFC 9211 §2), and two entries both named `meridian` could not be told
    /// apart.
    pub(crate) fn rename_cache_status(&self, headers: &mut http::HeaderMap) {
        let name = crate::http::headers::CACHE_STATUS;
        let Some(v) = headers.get(&name) else { return };
        // Ours is the last member; those before it are the caches upstream.
        let bytes = v.as_bytes();
        let start = bytes
            .windows(2)
            .rposition(|w| w == b", ")
            .map_or(0, |i| i + 2);
        let Some(rest) = bytes[start..].strip_prefix(b"meridian") else {
            return;
        };
        let mut out = bytes[..start].to_vec();
        out.extend_from_slice(self.cache_name.as_bytes());
        out.extend_from_slice(rest);
        if let Ok(v) = HeaderValue::from_bytes(&out) {
            headers.insert(name, v);
        }
    }

    /// Asks `member` for the object of `parts` (an origin-bound GET with its `Host`, for a
    /// user who asked over HTTPS when `https`) over `hop`. A response head may take as long as
    /// the origin behind the owner does (up to `limit`, the site's first-byte timeout), but
    /// every peer timeout without one the owner
    /// must answer a ping ([`PING_PATH`]) within a peer timeout: one that does not (dead, hung,
    /// cut off) is passed over then. A peer that refuses the request as misdirected or
    /// as a loop counts as failed too: `None`, logged and counted.
    pub(crate) async fn send(
        &self,
        ask: &Ask,
        parts: &Parts,
        https: bool,
        limit: Duration,
    ) -> Option<Response<Incoming>> {
        let (addr, hop) = (ask.addr, ask.hop);
        let timeout = self.timeout;
        let fail = |why: String| {
            self.metrics.failed.increment(1);
            tracing::warn!(peer = %ask.id, tier = hop.as_str(), "peer passed over: {why}");
            None
        };
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(mark) = sign(
            &self.gossip.keyring(),
            hop,
            https,
            unix_secs(),
            &parts.method,
            &host,
            &target,
        ) else {
            return fail("gossip has no key to sign with".into());
        };
        // Over TLS where the peer has a listener for it and this edge certificates to know it by.
        let tls = match (&self.tls, ask.tls) {
            (Some((client, certificates)), Some(at)) if !certificates.load().is_empty() => {
                Some((client, at))
            }
            _ => None,
        };
        let mut req = Request::new(Body::empty());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = match peer_uri(tls.map_or(addr, |(_, at)| at), &target, tls.is_some()) {
            Ok(u) => u,
            Err(e) => return fail(e),
        };
        *req.headers_mut() = parts.headers.clone();
        req.headers_mut().insert(PEER, mark);
        let started = tokio::time::Instant::now();
        let answer = match tls {
            Some((client, _)) => client.get().request(req),
            None => self.client.get().request(req),
        };
        tokio::pin!(answer);
        let got = loop {
            match tokio::time::timeout(timeout, &mut answer).await {
                Ok(got) => break Some(got),
                Err(_) if started.elapsed() >= limit => break None,
                // Waiting on its origin, or gone? Ask it on a connection of its own.
                Err(_) if self.alive(addr, timeout).await => {}
                Err(_) => break None,
            }
        };
        match got {
            None => fail(format!(
                "no response head in {:?}, and no answer to a ping",
                started.elapsed()
            )),
            Some(Err(e)) => fail(crate::origin::error_chain(&e)),
            Some(Ok(resp))
                if matches!(
                    resp.status(),
                    http::StatusCode::MISDIRECTED_REQUEST | http::StatusCode::LOOP_DETECTED
                ) =>
            {
                fail(format!("it answered {}", resp.status()))
            }
            Some(Ok(mut resp)) => {
                // The peer's own listeners are not this edge's to advertise.
                resp.headers_mut().remove(header::ALT_SVC);
                let hit = resp
                    .headers()
                    .get_all(crate::http::headers::CACHE_STATUS)
                    .iter()
                    .next_back()
                    .is_some_and(|v| {
                        v.as_bytes()
                            .rsplit(|&b| b == b',')
                            .next()
                            .is_some_and(|entry| {
                                entry
                                    .split(|&b| b == b';')
                                    .any(|p| p.trim_ascii() == b"hit")
                            })
                    });
                if hit {
                    self.metrics.hit.increment(1);
                } else {
                    self.metrics.miss.increment(1);
                }
                Some(resp)
            }
        }
    }
}

impl Peers {
    /// Whether the edge at `addr` answers a ping within `within`, on a new connection (the
    /// pooled ones may all be busy).
    async fn alive(&self, addr: SocketAddr, within: Duration) -> bool {
        let ping = async {
            let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .ok()?;
            tokio::spawn(conn);
            let req = Request::get(PING_PATH)
                .header(header::HOST, PURGE_HOST)
                .body(Body::empty())
                .ok()?;
            let resp = send.send_request(req).await.ok()?;
            Some(resp.status() == http::StatusCode::OK)
        };
        matches!(tokio::time::timeout(within, ping).await, Ok(Some(true)))
    }

    /// Hands a cluster purge (`body`: `{"issuer", "at", "purge"}`) to `member` at once; whether
    /// it answered that it applied it within the peer timeout.
    pub(crate) async fn push_purge(&self, edge: &str, addr: SocketAddr, body: Bytes) -> bool {
        let target = format!("{PURGE_PATH}?sha256={}", sha256_hex(&body));
        let Some(mark) = sign(
            &self.gossip.keyring(),
            Hop::Purge,
            false,
            unix_secs(),
            &Method::POST,
            PURGE_HOST,
            &target,
        ) else {
            return false;
        };
        let Ok(uri) = peer_uri(addr, &target, false) else {
            return false;
        };
        let mut req = Request::new(Body::full(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(header::HOST, HeaderValue::from_static(PURGE_HOST));
        h.insert(PEER, mark);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match tokio::time::timeout(self.timeout, self.client.get().request(req)).await {
            Ok(Ok(resp)) if resp.status() == http::StatusCode::OK => true,
            Ok(Ok(resp)) => {
                tracing::warn!(edge = %edge, status = %resp.status(), "a pushed purge was refused; gossip brings it");
                false
            }
            _ => {
                tracing::debug!(edge = %edge, "a pushed purge got no answer; gossip brings it");
                false
            }
        }
    }

    /// The live edges gossip reports (this one aside) and where they take peer requests, for
    /// pushing purges.
    pub(crate) fn live_edges(&self) -> Vec<(String, SocketAddr)> {
        self.gossip
            .members()
            .iter()
            .filter(|m| m.is_edge() && !m.is_self && m.state == MemberState::Alive)
            .filter_map(|m| Some((m.id.clone(), m.peer?)))
            .collect()
    }
}

fn peer_uri(addr: SocketAddr, target: &str, tls: bool) -> Result<Uri, String> {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}{target}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())
}

/// An edge's `Cache-Status` name towards its peers: `meridian-<id>` (an sf-token where the id
/// allows, else an sf-string).
fn cache_name(node: &str) -> String {
    let name = format!("meridian-{node}");
    let token = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
    if token {
        name
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(id: &str, region: &str, is_self: bool) -> Member {
        Member::test_edge(id, region, is_self)
    }

    #[test]
    fn signatures_hold_only_for_their_request_key_and_time() {
        let ring = Keyring::from_keys(&[[7; 32]]);
        let v = sign(
            &ring,
            Hop::Shield,
            false,
            1000,
            &Method::GET,
            "a.test",
            "/x?y",
        )
        .unwrap();
        assert_eq!(
            verify(&ring, &v, 1010, &Method::GET, "a.test", "/x?y"),
            Some((Hop::Shield, false))
        );
        // Another target, host, method, a stale time, another key, a changed tier: refused.
        assert_eq!(verify(&ring, &v, 1010, &Method::GET, "a.test", "/x"), None);
        assert_eq!(
            verify(&ring, &v, 1010, &Method::GET, "b.test", "/x?y"),
            None
        );
        assert_eq!(
            verify(&ring, &v, 1010, &Method::HEAD, "a.test", "/x?y"),
            None
        );
        assert_eq!(
            verify(&ring, &v, 1061, &Method::GET, "a.test", "/x?y"),
            None
        );
        let other = Keyring::from_keys(&[[8; 32]]);
        assert_eq!(
            verify(&other, &v, 1010, &Method::GET, "a.test", "/x?y"),
            None
        );
        let forged = HeaderValue::from_str(&v.to_str().unwrap().replacen('2', "1", 1)).unwrap();
        assert_eq!(
            verify(&ring, &forged, 1010, &Method::GET, "a.test", "/x?y"),
            None
        );
        // The user's scheme is signed: an HTTPS user's hop says so, and cannot be made to say
        // otherwise (nor a plain user's to say HTTPS).
        let s = sign(
            &ring,
            Hop::Shield,
            true,
            1000,
            &Method::GET,
            "a.test",
            "/x?y",
        )
        .unwrap();
        assert!(s.to_str().unwrap().starts_with("2s.1000."), "{s:?}");
        assert_eq!(
            verify(&ring, &s, 1010, &Method::GET, "a.test", "/x?y"),
            Some((Hop::Shield, true))
        );
        for (from, to) in [(&s, "2s."), (&v, "2.")] {
            let other = if to == "2s." { "2." } else { "2s." };
            let flipped =
                HeaderValue::from_str(&from.to_str().unwrap().replacen(to, other, 1)).unwrap();
            assert_eq!(
                verify(&ring, &flipped, 1010, &Method::GET, "a.test", "/x?y"),
                None,
                "{flipped:?}"
            );
        }
        // A ring in rotation (new key first) still takes the old key's signatures.
        let rotated = Keyring::from_keys(&[[8; 32], [7; 32]]);
        assert!(verify(&rotated, &v, 1010, &Method::GET, "a.test", "/x?y").is_some());
        // No key, no signature; garbage is refused, never a panic.
        assert!(sign(
            &Keyring::insecure(),
            Hop::Region,
            false,
            1,
            &Method::GET,
            "a",
            "/"
        )
        .is_none());
        for junk in [
            "",
            "1",
            "1.2",
            "3.1000.00",
            "1.x.zz",
            "1.1000.0g",
            "2.1000.é",
            "s.1000.00",
            "1ss.1000.00",
            "4s.1000.00",
        ] {
            if let Ok(v) = HeaderValue::from_str(junk) {
                assert_eq!(
                    verify(&ring, &v, 1000, &Method::GET, "a", "/"),
                    None,
                    "{junk}"
                );
            }
        }
    }

    #[test]
    fn owners_agree_across_views_and_a_leaver_moves_only_its_keys() {
        let view_a = vec![
            edge("a", "r", true),
            edge("b", "r", false),
            edge("c", "r", false),
        ];
        let view_b = vec![
            edge("a", "r", false),
            edge("b", "r", true),
            edge("c", "r", false),
        ];
        let keys: Vec<String> = (0..3000).map(|i| format!("site|/o/{i}")).collect();
        let mut count = std::collections::HashMap::new();
        for k in &keys {
            let a = owners(&view_a, "r", k)[0].id.clone();
            assert_eq!(a, owners(&view_b, "r", k)[0].id, "{k}");
            *count.entry(a).or_insert(0) += 1;
        }
        // Spread: each of 3 owns about a third.
        for (id, n) in &count {
            assert!((800..1200).contains(n), "{id} owns {n} of 3000");
        }
        // "c" drains: only its keys move.
        let mut drained = view_a.clone();
        drained[2].draining = true;
        for k in &keys {
            let before = owners(&view_a, "r", k)[0].id.clone();
            let after = owners(&drained, "r", k)[0].id.clone();
            if before != "c" {
                assert_eq!(before, after, "{k}");
            } else {
                assert_ne!(after, "c");
            }
        }
    }

    #[test]
    fn plans_go_up_the_tiers_and_never_back() {
        let view = vec![
            edge("a1", "us", true),
            edge("a2", "us", false),
            edge("s1", "eu", false),
            edge("s2", "eu", false),
        ];
        let key = (0..100)
            .map(|i| format!("k{i}"))
            .find(|k| owners(&view, "us", k)[0].id == "a2")
            .unwrap();
        let ids =
            |p: Vec<Ask>| -> Vec<(String, Hop)> { p.into_iter().map(|a| (a.id, a.hop)).collect() };
        // From a client: the region owner, then (a1 being next) the shield tier.
        let p = ids(plan(&view, "us", Some("eu"), &key, None));
        assert_eq!(p[0], ("a2".into(), Hop::Region));
        assert!(p[1..]
            .iter()
            .all(|(id, h)| *h == Hop::Shield && id.starts_with('s')));
        assert_eq!(p.len(), 3);
        // Over a region hop: only the shield tier; over a shield hop: nothing (the origin).
        let p = ids(plan(&view, "us", Some("eu"), &key, Some(Hop::Region)));
        assert!(p.iter().all(|(_, h)| *h == Hop::Shield));
        assert!(plan(&view, "us", Some("eu"), &key, Some(Hop::Shield)).is_empty());
        // Without a shield region, a region hop goes to the origin.
        assert!(plan(&view, "us", None, &key, Some(Hop::Region)).is_empty());
        // Dead and draining edges own nothing.
        let mut down = view.clone();
        down[1].state = MemberState::Dead;
        assert!(plan(&down, "us", None, &key, None).is_empty());
    }

    #[test]
    fn cache_names_are_structured_field_items() {
        assert_eq!(cache_name("edge-b"), "meridian-edge-b");
        assert_eq!(cache_name("edge b"), "\"meridian-edge b\"");
    }
}
