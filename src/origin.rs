//! The upstream client: keep-alive connections per site (plain-HTTP origins on the edge's own
//! HTTP/1.1 connections, `pool`; HTTPS origins on hyper-util's pooled client, HTTP/1.1 or
//! HTTP/2 by ALPN), connect, first-byte and read timeouts, and failover across a site's origins
//! in order.
//!
//! Receives requests already prepared by the handler (proxy headers set, hop-by-hop removed) with
//! an origin-relative target; hands back the origin's response head with a streaming body.
//! The first-byte timer starts once the request (body included) has been sent: a slow upload is
//! bounded by its own idle timeout (`http::body`), not by the origin's. Knows nothing of caching.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme, Uri};
use http::{header, HeaderValue, Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::config::SiteConfig;
use crate::h1::Lines;
use crate::http::body::{Body, BodyError, OriginBody};
use crate::http::server::PerThread;
use crate::pool::{Http1Pool, PoolError};
use crate::share::{Clients, Share};

/// Why an origin exchange failed. Strings rather than sources so that one failure can be handed
/// to every collapsed request.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum OriginError {
    #[error("cannot connect to origin {origin}: {reason}")]
    Connect { origin: String, reason: String },
    #[error("origin {origin} sent no response head within {timeout:?}")]
    Timeout { origin: String, timeout: Duration },
    #[error("origin {origin} failed: {reason}")]
    Protocol { origin: String, reason: String },
    #[error("origin {origin} response body failed: {reason}")]
    Body { origin: String, reason: String },
    #[error("origin {origin} sent no body bytes within {timeout:?}")]
    BodyTimeout { origin: String, timeout: Duration },
    /// The client's request body broke off or was malformed: the client's fault, not the
    /// origin's.
    #[error("the request body failed: {reason}")]
    ClientBody { reason: String },
    /// The client's upload stalled past its idle timeout.
    #[error("the client sent no request body bytes within {timeout:?}")]
    ClientTimeout { timeout: Duration },
    /// The client had `max_origin_requests_per_client` requests at the site's origins for all
    /// of `waited`.
    #[error("{limit} requests of this client already at origin {origin} (max_origin_requests_per_client), none ended within {waited:?}")]
    ClientBusy {
        origin: String,
        limit: usize,
        waited: Duration,
    },
    /// The site had `max_origin_requests` requests at its origins for all of `waited`.
    #[error("{limit} requests already at origin {origin} (max_origin_requests), none ended within {waited:?}")]
    Busy {
        origin: String,
        limit: usize,
        waited: Duration,
    },
}

impl OriginError {
    /// Short label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            OriginError::Connect { .. } => "connect",
            OriginError::Timeout { .. } | OriginError::BodyTimeout { .. } => "timeout",
            OriginError::Protocol { .. } => "protocol",
            OriginError::Body { .. } => "body",
            OriginError::ClientBody { .. } | OriginError::ClientTimeout { .. } => "client",
            OriginError::Busy { .. } => "busy",
            OriginError::ClientBusy { .. } => "client_busy",
        }
    }

    /// Whether the origin (not the client) is to blame, for `meridian_origin_errors_total`.
    pub(crate) fn is_origin_fault(&self) -> bool {
        !matches!(
            self,
            OriginError::ClientBody { .. }
                | OriginError::ClientTimeout { .. }
                | OriginError::ClientBusy { .. }
        )
    }

    /// The error of a failed exchange, told apart by which end failed.
    fn from_client_error(origin: &str, e: &(dyn std::error::Error + 'static)) -> OriginError {
        match BodyError::find(e) {
            Some(BodyError::Client(reason)) => OriginError::ClientBody {
                reason: reason.clone(),
            },
            Some(BodyError::ClientTimeout(timeout)) => {
                OriginError::ClientTimeout { timeout: *timeout }
            }
            _ => OriginError::Protocol {
                origin: origin.to_string(),
                reason: error_chain(e),
            },
        }
    }
}

type OriginClient = Client<HttpsConnector<HttpConnector>, Body>;

fn pooled_client(connector: HttpsConnector<HttpConnector>) -> OriginClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// The origins of one site and the clients that reach them.
pub(crate) struct Origins {
    /// A pool per HTTP thread (`edge.threads`), and one for the shared runtime: HTTPS origins.
    client: PerThread<OriginClient>,
    /// Plain-HTTP origins, by the index of their target: HTTP/1.1 on connections of our own
    /// (see `pool`).
    plain: Vec<Option<Http1Pool>>,
    targets: Vec<Uri>,
    labels: Vec<String>,
    first_byte_timeout: Duration,
    read_timeout: Duration,
    host_header: Option<HeaderValue>,
    /// The site's origin request slots (`max_origin_requests`): one is held from before a
    /// request is sent until its response body is done with, so that no client (an HTTP/2
    /// connection opens 256 streams, and a client that never reads holds each one) can make
    /// the edge hold more origin connections than this.
    slots: Arc<tokio::sync::Semaphore>,
    max_requests: usize,
    /// What each client holds of the slots (`max_origin_requests_per_client`).
    clients: Arc<Clients>,
    /// How long a request waits for a slot: the site's `connect_timeout`.
    slot_wait: Duration,
    /// Requests that waited for one of the site's slots (all were taken when they came), and
    /// for one of their client's share: `meridian_origin_waits_total`, read at each scrape.
    slot_waits: AtomicU64,
    client_waits: Arc<AtomicU64>,
}

/// A request's hold on the site's origin slots: one of the site's, and one of its client's
/// share of them (none for the cluster's own requests). Given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    _site: tokio::sync::OwnedSemaphorePermit,
    _client: Option<Share>,
}

/// Reads and checks each site's CA bundle (`ca_file`); a problem names the origin map's
/// `site[i].ca_file`. The origin clients read them again when a site is built.
pub(crate) fn check_ca_files(config: &crate::config::Config) -> Vec<crate::config::Problem> {
    config
        .sites
        .iter()
        .enumerate()
        .filter_map(|(i, site)| {
            let e = read_ca_file(site.ca_file.as_deref()?).err()?;
            Some(config.site_problem(i, "ca_file", e))
        })
        .collect()
}

/// Reads a PEM bundle of CA certificates; the error names the file.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| format!("{} is not a PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificates", path.display()));
    }
    Ok(certs)
}

fn system_roots() -> &'static Vec<CertificateDer<'static>> {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::warn!(error = %e, "while loading system CA certificates");
        }
        loaded.certs
    })
}

pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let certs = match ca_file {
        Some(path) => read_ca_file(path)?,
        None => system_roots().clone(),
    };
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 && ca_file.is_some() {
        return Err("no usable CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

impl Origins {
    pub(crate) fn new(site: &SiteConfig) -> Result<Origins, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(site.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(site.ca_file.as_deref())?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http.clone());
        let plain = site
            .origins
            .iter()
            .map(|u| {
                let (stall, first_byte) = (site.origin_read_timeout, site.first_byte_timeout);
                (u.scheme() == Some(&Scheme::HTTP))
                    .then(|| Http1Pool::new(u.clone(), http.clone(), stall, first_byte))
            })
            .collect();
        let client = PerThread::new(move || pooled_client(connector.clone()));
        let host_header = site
            .host_header
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|e| e.to_string())?;
        let client_waits = Arc::new(AtomicU64::new(0));
        Ok(Origins {
            client,
            plain,
            labels: site.origins.iter().map(|u| u.to_string()).collect(),
            targets: site.origins.clone(),
            first_byte_timeout: site.first_byte_timeout,
            read_timeout: site.origin_read_timeout,
            host_header,
            slots: Arc::new(tokio::sync::Semaphore::new(site.max_origin_requests)),
            max_requests: site.max_origin_requests,
            clients: Clients::new(
                site.max_origin_requests_per_client,
                metrics::Counter::from_arc(client_waits.clone()),
            ),
            slot_wait: site.connect_timeout,
            slot_waits: AtomicU64::new(0),
            client_waits,
        })
    }

    /// Longest wait for a response head once the request is sent.
    pub(crate) fn first_byte_timeout(&self) -> Duration {
        self.first_byte_timeout
    }

    /// Longest wait between two reads of a response body.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// Sends the request of head `parts` (its target is taken as origin-form) and `body` to
    /// the site's origins in order until one answers. The head is only read (a fill keeps it
    /// for the answer's variants): a plain origin's exchange writes it as it is, the others
    /// get a copy of it.
    ///
    /// Failover rules: a request without a body moves on to the next origin after a connect
    /// failure (nothing reached the origin); after a first-byte timeout it moves on only if its
    /// method is idempotent, since the first origin may already have acted on it. A request with
    /// a body is sent once: the body cannot be sent again. Returns the response and the origin's
    /// label.
    ///
    /// The first-byte timeout counts from the end of the request body: an upload is bounded by
    /// its own idle timeout.
    ///
    /// `client` is the address of the client the request is for (`None` for the cluster's own
    /// requests): it holds no more than its share of the site's origin slots.
    ///
    /// `lines`: what a plain-HTTP origin's exchange takes and gives as header lines (see
    /// `h1::Lines`): with `answer`, an answer only passed on, to a client of the edge's own
    /// HTTP/1.1 server, may come with its fields as lines instead of in its header map (see
    /// `http::headers::PassHead`); `added`, this hop's forwarding fields, go into the header map
    /// for the other origins; `host` is set here (the site's `host_header`).
    pub(crate) async fn send(
        &self,
        parts: &http::request::Parts,
        body: Body,
        client: Option<std::net::IpAddr>,
        lines: Lines<'_>,
    ) -> Result<(Response<OriginBody>, &str), OriginError> {
        // The client's share first: a client past it waits without taking one of the site's.
        let share = match client {
            // A share as large as the site's slots bounds nothing more.
            Some(addr) if self.clients.limit() < self.max_requests => Some(self.share(addr).await?),
            _ => None,
        };
        let site = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => self.slot().await?,
        };
        let slot = Slot {
            _site: site,
            _client: share,
        };

        // A body the edge holds whole (or none) can go to the next origin too; a stream cannot
        // once the first has taken from it. Kept only where there is a next origin.
        let whole = match &body {
            Body::Full(b) if self.targets.len() > 1 => Some(b.clone()),
            _ => None,
        };
        let idempotent = parts.method.is_idempotent();
        // The request's head is only read: a plain origin's exchange writes it from here (with
        // the site's `Host` in place of the request's); the others get a copy of their own.
        let lines = Lines {
            host: self.host_header.as_ref(),
            ..lines
        };
        let mut body = Some(body);
        let mut last_error = None;
        for (i, (target, label)) in self.targets.iter().zip(&self.labels).enumerate() {
            let Some(mut this_body) = body.take() else {
                break;
            };
            if let Some(b) = &whole {
                body = Some(Body::Full(b.clone()));
            }
            let plain = self.plain.get(i).and_then(Option::as_ref);
            // A plain origin's connection keeps its own first-byte timer (see `h1::exchange`).
            let uploaded = if plain.is_none() {
                this_body.on_done()
            } else {
                None
            };
            // `Err(())`: no response head within the first-byte timeout.
            let sent = match plain {
                Some(pool) => match pool.send(parts, this_body, lines).await {
                    Ok(resp) => Ok(Ok(resp.map(OriginBody::plain))),
                    Err(PoolError::Late) => Err(()),
                    Err(PoolError::Connect(reason)) => Ok(Err(Failed::Connect(reason))),
                    Err(PoolError::Send(e)) => Ok(Err(Failed::Other(
                        OriginError::from_client_error(label, &e),
                    ))),
                    Err(PoolError::Upload(e)) => Ok(Err(Failed::Other(
                        OriginError::from_client_error(label, &e),
                    ))),
                },
                // The two futures are made inside `select!`: bound to names first, each took
                // room twice in this future (rustc keeps a moved local's room until its scope
                // ends) and was copied once more a request.
                None => tokio::select! {
                    r = async {
                        let req = match self.hyper_request(parts, target, this_body, lines) {
                            Ok(req) => req,
                            Err(reason) => {
                                return Err(Failed::Other(OriginError::Protocol {
                                    origin: label.clone(),
                                    reason,
                                }))
                            }
                        };
                        match self.client.get().request(req).await {
                            Ok(mut resp) => {
                                // RFC 9112 §6.3: the chunks frame it, and the length goes
                                // (hyper's client reads the one and keeps both fields).
                                let h = resp.headers_mut();
                                if h.contains_key(header::TRANSFER_ENCODING) {
                                    h.remove(header::CONTENT_LENGTH);
                                }
                                Ok(resp.map(OriginBody::hyper))
                            }
                            Err(e) if e.is_connect() => Err(Failed::Connect(error_chain(&e))),
                            Err(e) => Err(Failed::Other(OriginError::from_client_error(label, &e))),
                        }
                    } => Ok(r),
                    () = async {
                        if let Some(done) = uploaded {
                            // Ends when the body has been read whole, failed or been dropped.
                            let _ = done.await;
                        }
                        tokio::time::sleep(self.first_byte_timeout).await;
                    } => Err(()),
                },
            };
            match sent {
                Ok(Ok(resp)) => return Ok((resp.map(|b| b.holding(slot)), label)),
                Ok(Err(Failed::Connect(reason))) => {
                    tracing::warn!(origin = %label, error = %reason, "origin connect failed");
                    last_error = Some(OriginError::Connect {
                        origin: label.clone(),
                        reason,
                    });
                }
                Ok(Err(Failed::Other(e))) => return Err(e),
                Err(_) => {
                    tracing::warn!(origin = %label, timeout = ?self.first_byte_timeout, "origin first-byte timeout");
                    let e = OriginError::Timeout {
                        origin: label.clone(),
                        timeout: self.first_byte_timeout,
                    };
                    if !idempotent {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| OriginError::Connect {
            origin: self.labels.join(", "),
            reason: "no origin could be tried".into(),
        }))
    }

    /// A copy of `parts` for hyper's client: absolute-form target at `target`, the site's
    /// `Host`, and this hop's forwarding fields in the header map.
    fn hyper_request(
        &self,
        parts: &http::request::Parts,
        target: &Uri,
        body: Body,
        lines: Lines<'_>,
    ) -> Result<Request<Body>, String> {
        let mut uri = Uri::builder().path_and_query(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        if let Some(s) = target.scheme() {
            uri = uri.scheme(s.clone());
        }
        if let Some(a) = target.authority() {
            uri = uri.authority(a.clone());
        }
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.version_mut() = parts.version;
        *req.uri_mut() = uri.build().map_err(|e| e.to_string())?;
        *req.headers_mut() = parts.headers.clone();
        // The body's framing is hyper's to write (a plain origin's exchange leaves the head's
        // own out as it writes it).
        crate::http::headers::strip_framing(req.headers_mut());
        if let Some(host) = lines.host {
            req.headers_mut().insert(header::HOST, host.clone());
        }
        if let Some(added) = lines.added {
            added.apply(req.headers_mut());
        }
        Ok(req)
    }

    /// Requests that have waited for a site slot, and for their client's share, since the
    /// site was loaded (a wait past `connect_timeout` ended in a 503 or 429 too).
    pub(crate) fn waits(&self) -> (u64, u64) {
        (
            self.slot_waits.load(Ordering::Relaxed),
            self.client_waits.load(Ordering::Relaxed),
        )
    }

    /// Requests the site has at its origins now (slots taken).
    pub(crate) fn in_flight(&self) -> usize {
        self.max_requests
            .saturating_sub(self.slots.available_permits())
    }

    /// One of `client`'s share of the slots: at once, else the first of its own to end within
    /// `slot_wait`.
    async fn share(&self, client: std::net::IpAddr) -> Result<Share, OriginError> {
        self.clients
            .take(client, Some(self.slot_wait))
            .await
            .ok_or_else(|| OriginError::ClientBusy {
                origin: self.labels.join(", "),
                limit: self.clients.limit(),
                waited: self.slot_wait,
            })
    }

    /// One of the site's origin request slots once they were all taken: the first to free up
    /// within `slot_wait`.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, OriginError> {
        self.slot_waits.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.slot_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            // Never closed; a timeout is the site being at its limit.
            Ok(Err(_)) | Err(_) => Err(OriginError::Busy {
                origin: self.labels.join(", "),
                limit: self.max_requests,
                waited: self.slot_wait,
            }),
        }
    }
}

/// How one attempt failed: before anything reached the origin (the next may be tried), or
/// otherwise.
enum Failed {
    Connect(String),
    Other(OriginError),
}

/// An error and its sources on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The error of an origin's response body that failed mid-way (broke off, or stalled past its
/// read timeout): an origin failure, never a short body.
pub(crate) fn body_error(e: BodyError, origin: &str) -> OriginError {
    match e {
        BodyError::OriginTimeout(timeout) => OriginError::BodyTimeout {
            origin: origin.to_string(),
            timeout,
        },
        e => OriginError::Body {
            origin: origin.to_string(),
            reason: error_chain(&e),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An origin answering every request `ok` on keep-alive connections; counts its connections.
    fn origin() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let opened = Arc::new(AtomicUsize::new(0));
        let count = opened.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(16) {
                let Ok(mut conn) = conn else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    for _ in 0..64 {
                        let Ok(n @ 1..) = conn.read(&mut chunk) else {
                            return;
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if conn.write_all(answer).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, opened)
    }

    fn site(origin: SocketAddr) -> SiteConfig {
        SiteConfig {
            origins: vec![format!("http://{origin}").parse().unwrap()],
            ..crate::bench::site()
        }
    }

    /// Three requests in a row on an HTTP thread's own runtime; the runtime is handed back
    /// undriven, as a thread busy with other connections leaves it.
    fn three_requests(origins: &Origins) -> Result<tokio::runtime::Runtime, String> {
        crate::http::server::mark_http_thread();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..3 {
                let (parts, ()) = Request::get("/x").body(()).unwrap().into_parts();
                let answer = tokio::time::timeout(
                    Duration::from_secs(3),
                    origins.send(&parts, Body::empty(), None, Lines::default()),
                );
                let (resp, _) = answer
                    .await
                    .map_err(|_| "no answer within 3 s".to_string())?
                    .map_err(|e| e.to_string())?;
                let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                assert_eq!(&body.unwrap().to_bytes()[..], b"ok");
            }
            Ok::<_, String>(())
        })?;
        Ok(runtime)
    }

    #[test]
    fn each_http_thread_keeps_origin_connections_of_its_own() {
        let (addr, opened) = origin();
        let origins = Origins::new(&site(addr)).unwrap();
        let origins = &origins;
        std::thread::scope(|s| {
            // The first thread's connection rests in its pool while its runtime is not driven;
            // the thread lives on until the second is done, as HTTP threads live with the node.
            let (rested, resting) = std::sync::mpsc::channel();
            let (done, finished) = std::sync::mpsc::channel::<()>();
            s.spawn(move || {
                let runtime = three_requests(origins);
                rested
                    .send(runtime.as_ref().map(|_| ()).map_err(Clone::clone))
                    .unwrap();
                let _ = finished.recv_timeout(Duration::from_secs(20));
            });
            let first = resting.recv_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(first, Ok(()), "the first HTTP thread's requests");
            // Sharing that pool, the second thread would take the resting connection and wait
            // for a runtime that does not run.
            let second = s.spawn(move || three_requests(origins)).join().unwrap();
            done.send(()).unwrap();
            assert_eq!(
                second.map(|_| ()),
                Ok(()),
                "the second HTTP thread's requests"
            );
        });
        // One connection per thread, each kept alive for its thread's next requests.
        assert_eq!(opened.load(Ordering::SeqCst), 2);
    }
}
