//! The admin API on its own listener: `GET /healthz`, `GET /metrics` (Prometheus text),
//! `GET /cluster` (the members gossip reports), `GET /` (the status page, see [`crate::status`])
//! and `GET /status.json`, `POST /purge` (by url, prefix or `Surrogate-Key` tag) and
//! `POST /drain` (`DELETE /drain` takes it back).
//!
//! Mutations need `Authorization: Bearer TOKEN` with the token from the node file's
//! `admin.token_file`; without it the answer is 401 and nothing changes. Reads the edge's store
//! and counters; never touches the request path's locks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gossip::Gossip;
use crate::http::handler::EdgeState;
use crate::purge::{self, Purge};
use crate::status::{History, RegionPoint};

/// Largest admin request body.
const MAX_BODY: usize = 64 << 10;

/// What the admin API reads and changes.
pub(crate) struct AdminState {
    pub(crate) token: Option<String>,
    pub(crate) edge: Option<Arc<EdgeState>>,
    pub(crate) gossip: Option<Arc<Gossip>>,
    /// Whether this node drains; gossip announces every change.
    pub(crate) drain: Arc<tokio::sync::watch::Sender<bool>>,
    /// This node's id.
    pub(crate) node: String,
    /// The cluster map's regions (a reload swaps them).
    pub(crate) regions: Arc<ArcSwap<Vec<RegionPoint>>>,
    /// This node's counters over the last minutes, for the status page.
    pub(crate) history: Arc<History>,
    /// The edges, for pushing purges ahead of gossip (a node that gossips).
    pub(crate) peers: Option<Arc<crate::shield::Peers>>,
    /// Which edges answered those pushes.
    pub(crate) acks: Arc<purge::Acks>,
}

type AdminResponse = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A part of the status page: only what it names may load, and never in a frame.
fn page(content_type: &'static str, body: &'static str) -> AdminResponse {
    let mut r = reply(StatusCode::OK, content_type, body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::status::POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> AdminResponse {
    reply(status, "application/json", format!("{value}\n"))
}

fn error(status: StatusCode, message: &str) -> AdminResponse {
    json(status, serde_json::json!({ "error": message }))
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(state: &AdminState, req: &Request<Incoming>) -> bool {
    let Some(token) = &state.token else {
        return false;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_secret(given.trim().as_bytes(), token.as_bytes()))
}

async fn route(state: Arc<AdminState>, req: Request<Incoming>) -> AdminResponse {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            if *state.drain.borrow() {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                reply(StatusCode::OK, "text/plain", "ok\n")
            }
        }
        (&Method::GET, "/metrics") => {
            if let Some(edge) = &state.edge {
                let (bytes, objects) = edge.store.usage().await;
                edge.metrics.stored_bytes.set(bytes as f64);
                edge.metrics.stored_objects.set(objects as f64);
                edge.metrics.filling_bytes.set(edge.filling.held() as f64);
                for (site, n, (slot_waits, client_waits)) in edge.sites.load().origin_stats() {
                    metrics::gauge!(
                        "meridian_origin_requests",
                        "node" => edge.node.clone(),
                        "site" => site.to_string()
                    )
                    .set(n as f64);
                    for (waited_for, waits) in
                        [("site_slot", slot_waits), ("client_share", client_waits)]
                    {
                        metrics::counter!(
                            "meridian_origin_waits_total",
                            "node" => edge.node.clone(),
                            "site" => site.to_string(),
                            "for" => waited_for
                        )
                        .absolute(waits);
                    }
                }
                edge.metrics.utilisation.set(f64::from_bits(
                    edge.load
                        .utilisation
                        .load(std::sync::atomic::Ordering::Relaxed),
                ));
                edge.metrics.bytes_in.absolute(edge.load.bytes_in.get());
                edge.metrics.bytes_out.absolute(edge.load.bytes_out.get());
            }
            let mut text = crate::telemetry::render();
            text.push_str(&crate::telemetry::process_metrics());
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        (&Method::POST, "/purge") => {
            if !authorized(&state, &req) {
                return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            }
            if state.edge.is_none() && state.gossip.is_none() {
                return error(
                    StatusCode::NOT_FOUND,
                    "this node runs no edge and does not gossip: it has nothing to purge",
                );
            }
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
            };
            let purge = match Purge::parse(&body) {
                Ok(p) => p,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            };
            purge_everywhere(&state, purge).await
        }
        (&Method::GET, path) if path.starts_with("/purge/") => {
            purge_status(&state, &path["/purge/".len()..])
        }
        (&Method::GET, "/cluster") => json(StatusCode::OK, cluster(&state)),
        (&Method::GET, "/owner") => {
            let Some(edge) = &state.edge else {
                return error(StatusCode::NOT_FOUND, "this node runs no edge: ask an edge");
            };
            let url = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("url="))
                .map(percent_decode)
                .unwrap_or_default();
            match crate::http::handler::owner_report(edge, &url) {
                Ok(v) => json(StatusCode::OK, v),
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
            }
        }
        (&Method::GET | &Method::HEAD, "/") => {
            page("text/html; charset=utf-8", crate::status::PAGE)
        }
        (&Method::GET, "/status.js") => {
            page("text/javascript; charset=utf-8", crate::status::SCRIPT)
        }
        (&Method::GET, "/status.css") => page("text/css; charset=utf-8", crate::status::STYLE),
        (&Method::GET, "/favicon.svg") => page("image/svg+xml", crate::status::ICON),
        (&Method::GET, "/status.json") => json(
            StatusCode::OK,
            crate::status::json(&state.node, cluster(&state), &state.regions, &state.history),
        ),
        (&Method::POST | &Method::DELETE, "/drain") => {
            if !authorized(&state, &req) {
                return error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            }
            let on = req.method() == Method::POST;
            if state.drain.send_replace(on) != on {
                tracing::info!(draining = on, "drain changed through the admin API");
            }
            json(StatusCode::OK, serde_json::json!({ "draining": on }))
        }
        (
            _,
            "/healthz" | "/metrics" | "/purge" | "/cluster" | "/drain" | "/owner" | "/"
            | "/status.js" | "/status.css" | "/status.json" | "/favicon.svg",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

/// Applies `purge` here (if this node is an edge) and, if it gossips, issues it to every edge
/// of the cluster.
async fn purge_everywhere(state: &AdminState, purge: Purge) -> AdminResponse {
    let issued = match &state.gossip {
        Some(g) => {
            let value = serde_json::to_string(&purge).unwrap_or_default();
            match g.issue_purge(value).await {
                Ok(at) => Some(at),
                Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e),
            }
        }
        None => None,
    };
    if let (Some(at), Some(peers)) = (issued, &state.peers) {
        tokio::spawn(purge::push(
            peers.clone(),
            state.acks.clone(),
            state.node.clone(),
            at,
            purge.clone(),
        ));
    }
    let here = match &state.edge {
        Some(edge) => match purge::apply(edge, &purge, issued, issued.is_none()).await {
            Ok(n) => {
                if let Some(at) = issued {
                    // Applied: not again when gossip brings it back, and this edge is done.
                    edge.pushed.insert(at, &state.node);
                    state.acks.add(at, &state.node);
                }
                Some(n)
            }
            Err((status, message)) => return error(status, &message),
        },
        None => None,
    };
    let mut answer = serde_json::json!({ "purged": here.unwrap_or(0) });
    if let Some(at) = issued {
        answer["id"] = purge::id(at, &state.node).into();
        answer["cluster"] = true.into();
    }
    json(StatusCode::OK, answer)
}

/// Which edges have applied the cluster purge `id`.
fn purge_status(state: &AdminState, id: &str) -> AdminResponse {
    let Some(gossip) = &state.gossip else {
        return error(
            StatusCode::NOT_FOUND,
            "this node does not gossip: its purges are its own",
        );
    };
    let Some((at, issuer)) = purge::parse_id(id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "a purge id is <issue time>.<issuer>, as POST /purge answered",
        );
    };
    let members = gossip.members();
    let edges: Vec<&crate::model::Member> = members
        .iter()
        .filter(|m| m.is_edge() && m.state != crate::model::MemberState::Left)
        .collect();
    // By its watermark (gossip), or by its answer to this node's push.
    let applied = |m: &crate::model::Member| {
        m.purged.get(issuer).is_some_and(|w| *w >= at)
            || (issuer == state.node && state.acks.has(at, &m.id))
    };
    let waiting: Vec<&str> = edges
        .iter()
        .filter(|m| m.state == crate::model::MemberState::Alive && !applied(m))
        .map(|m| m.id.as_str())
        .collect();
    let list: Vec<serde_json::Value> = edges
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "region": m.region,
                "state": m.state.as_str(),
                "applied": applied(m),
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({
            "id": id,
            "issuer": issuer,
            "issued_ms": at,
            "edges": list,
            "applied": edges.iter().filter(|m| applied(m)).count(),
            "waiting": waiting,
            "complete": waiting.is_empty(),
        }),
    )
}

/// The members as this node last heard them.
fn cluster(state: &AdminState) -> serde_json::Value {
    let Some(gossip) = &state.gossip else {
        return serde_json::json!({ "gossip": false, "members": [] });
    };
    let now = std::time::Instant::now();
    let members: Vec<serde_json::Value> = gossip
        .members()
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "self": m.is_self,
                "roles": m.roles,
                "region": m.region,
                "state": m.state.as_str(),
                "healthy": m.state == crate::model::MemberState::Alive,
                "draining": m.draining,
                "load": m.load,
                "weight": m.weight,
                "addresses": m.addresses,
                "gossip": m.gossip_addr,
                "generation": m.generation,
                "version": m.version,
                "started": m.started,
                "requests_per_second": m.requests_per_second,
                "hit_ratio": m.hit_ratio,
                "purged": m.purged,
                "peer": m.peer.map(|a| a.to_string()),
                "peer_tls": m.peer_tls.map(|a| a.to_string()),
                "last_heard_ms": now.saturating_duration_since(m.last_heard).as_millis() as u64,
            })
        })
        .collect();
    serde_json::json!({ "gossip": true, "members": members })
}

/// `%XX` escapes decoded (others kept as they are).
fn percent_decode(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `%XX` escapes for what a query parameter cannot hold as it is.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `meridian owner`: which edges own `url` now, as the running edge of `config` sees the
/// cluster; printed for people.
pub async fn owner(config: &crate::config::Config, url: &str) -> Result<(), String> {
    let text = get(config, &format!("/owner?url={}", percent_encode(url))).await?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("/owner: not JSON: {e}: {text}"))?;
    let list = |k: &str| -> String {
        let ids: Vec<&str> = v[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        if ids.is_empty() {
            "no live edge".into()
        } else {
            ids.join(", then ")
        }
    };
    println!(
        "{url}: site {}, cache key {}",
        v["site"].as_str().unwrap_or("?"),
        // The key's separator is a control character; a space reads the same.
        v["key"]
            .as_str()
            .unwrap_or("?")
            .replace(|c: char| c.is_control(), " ")
    );
    println!(
        "owners in region {}: {}",
        v["region"].as_str().unwrap_or("?"),
        list("owners")
    );
    if let Some(r) = v["shield_region"].as_str() {
        println!("owners in the shield region {r}: {}", list("shield_owners"));
    }
    if v["shield"] != true {
        println!("the site does not shield: each edge asks the origin itself");
        return Ok(());
    }
    let asks: Vec<String> = v["asks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{} ({})",
                a["edge"].as_str().unwrap_or("?"),
                a["tier"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if asks.is_empty() {
        println!("a miss on this edge goes to the origin (this edge owns it)");
    } else {
        println!(
            "a miss on this edge asks {}, then the origin",
            asks.join(", then ")
        );
    }
    Ok(())
}

/// Asks the node of `config` to drain (`on`) or to stop draining, through its own admin API
/// with its own token; returns the API's answer.
pub async fn drain(config: &crate::config::Config, on: bool) -> Result<String, String> {
    let method = if on { Method::POST } else { Method::DELETE };
    call(config, method, "/drain", true).await
}

/// `meridian purge`: asks the node of `config` to purge `what` (`{"url": ...}`, ...) through its
/// admin API and token; with `wait`, follows `GET /purge/{id}` until every live edge has
/// applied it or `timeout` passes (an error naming the edges still waiting). Prints progress.
pub async fn purge(
    config: &crate::config::Config,
    what: serde_json::Value,
    wait: Option<std::time::Duration>,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let text = call_with(
        config,
        Method::POST,
        "/purge",
        true,
        what.to_string().into(),
    )
    .await?;
    let answer: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("/purge: not JSON: {e}: {text}"))?;
    let here = answer["purged"].as_u64().unwrap_or(0);
    let Some(id) = answer["id"].as_str() else {
        println!("purged {here} objects (this node only: it does not gossip)");
        return Ok(());
    };
    println!("purge {id} issued to the cluster; {here} objects purged on this node");
    let Some(timeout) = wait else {
        return Ok(());
    };
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&get(config, &format!("/purge/{id}")).await?)
                .map_err(|e| format!("/purge/{id}: not JSON: {e}"))?;
        let edges = status["edges"].as_array().map_or(0, Vec::len);
        let applied = status["applied"].as_u64().unwrap_or(0);
        if status["complete"] == true {
            println!(
                "applied on every live edge ({applied} of {edges} edges) in {} ms",
                started.elapsed().as_millis()
            );
            return Ok(());
        }
        if started.elapsed() >= timeout {
            let waiting: Vec<&str> = status["waiting"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_str())
                .collect();
            return Err(format!(
                "not applied within {timeout:?} by {} ({applied} of {edges} edges have it): GET /purge/{id} follows it",
                waiting.join(", ")
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// GET `path` from the running node of `config`'s admin API (no token); the body.
pub(crate) async fn get(config: &crate::config::Config, path: &str) -> Result<String, String> {
    call(config, Method::GET, path, false).await
}

/// The members the running node of `config` hears, from its admin API's `/cluster`.
pub(crate) async fn members(
    config: &crate::config::Config,
) -> Result<Vec<crate::model::Member>, String> {
    use crate::model::{Member, MemberState};
    let text = call(config, Method::GET, "/cluster", false).await?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("/cluster: not JSON: {e}"))?;
    if v["gossip"] != true {
        return Err("the running node does not gossip: there is no live view".into());
    }
    let now = std::time::Instant::now();
    let strings = |m: &serde_json::Value, k: &str| -> Vec<String> {
        m[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    v["members"]
        .as_array()
        .ok_or("/cluster: no members")?
        .iter()
        .map(|m| {
            Ok(Member {
                id: m["id"]
                    .as_str()
                    .ok_or("/cluster: a member without id")?
                    .into(),
                generation: m["generation"].as_u64().unwrap_or(0),
                gossip_addr: m["gossip"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                roles: strings(m, "roles"),
                region: m["region"].as_str().unwrap_or("").into(),
                addresses: strings(m, "addresses")
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect(),
                weight: m["weight"].as_f64().unwrap_or(1.0),
                load: m["load"].as_f64().unwrap_or(0.0),
                draining: m["draining"] == true,
                state: match m["state"].as_str() {
                    Some("alive") => MemberState::Alive,
                    Some("left") => MemberState::Left,
                    _ => MemberState::Dead,
                },
                version: m["version"].as_str().unwrap_or("").into(),
                started: m["started"].as_u64().unwrap_or(0),
                requests_per_second: m["requests_per_second"].as_f64().unwrap_or(0.0),
                hit_ratio: m["hit_ratio"].as_f64(),
                purged: serde_json::from_value(m["purged"].clone()).unwrap_or_default(),
                peer: m["peer"].as_str().and_then(|a| a.parse().ok()),
                peer_tls: m["peer_tls"].as_str().and_then(|a| a.parse().ok()),
                last_heard: now
                    .checked_sub(std::time::Duration::from_millis(
                        m["last_heard_ms"].as_u64().unwrap_or(0),
                    ))
                    .unwrap_or(now),
                is_self: m["self"] == true,
            })
        })
        .collect()
}

/// One request to the admin API of the running node of `config` (its `admin.listen`, or
/// loopback when that is a wildcard), with its token when `auth`; the body of a 2xx answer.
async fn call(
    config: &crate::config::Config,
    method: Method,
    path: &str,
    auth: bool,
) -> Result<String, String> {
    call_with(config, method, path, auth, Bytes::new()).await
}

/// [`call`] with a request body.
pub(crate) async fn call_with(
    config: &crate::config::Config,
    method: Method,
    path: &str,
    auth: bool,
    body: Bytes,
) -> Result<String, String> {
    let admin = config
        .node
        .admin
        .as_ref()
        .ok_or("the node file has no [admin] section")?;
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string());
    if auth {
        let token = admin
            .token
            .as_ref()
            .ok_or("the node file names no admin.token_file")?;
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| format!("{addr}: no answer"))?
    .map_err(|e| format!("cannot reach the admin API at {addr}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("{addr}: {status}: {text}"))
    }
}

/// Serves the admin API on `listener` until `shutdown` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    tracker.spawn(crate::status::sample(
        state.node.clone(),
        state.history.clone(),
        shutdown.clone(),
    ));
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let state = state.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(state, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(client = %peer, error = %e, "admin connection error");
                    }
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
