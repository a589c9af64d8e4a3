//! Shared test helpers: a scripted origin on `127.0.0.1:0` that counts requests, an edge started
//! in-process from real config files, and a plain HTTP/1.1 client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What the origin answers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Wait this long before sending the head.
    pub delay: Duration,
    /// Send the body chunked (no Content-Length).
    pub chunked: bool,
    /// Send only this many body bytes, then drop the connection (with the full Content-Length).
    pub cut_after: Option<usize>,
    /// Send only this many body bytes, then keep the connection open without sending more.
    pub stall_after: Option<usize>,
}

impl Reply {
    pub fn ok(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![],
            body: Bytes::copy_from_slice(body.as_bytes()),
            delay: Duration::ZERO,
            chunked: false,
            cut_after: None,
            stall_after: None,
        }
    }

    pub fn status(mut self, s: u16) -> Reply {
        self.status = s;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }

    pub fn body_bytes(mut self, b: Vec<u8>) -> Reply {
        self.body = Bytes::from(b);
        self
    }

    pub fn cut_after(mut self, n: usize) -> Reply {
        self.cut_after = Some(n);
        self
    }

    pub fn stall_after(mut self, n: usize) -> Reply {
        self.stall_after = Some(n);
        self
    }
}

/// A request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub version: http::Version,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Script = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// A scripted origin server.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    total: Arc<AtomicUsize>,
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Origin::serve(listener)
    }

    pub fn serve(listener: TcpListener) -> Origin {
        let origin = Origin::serve_with(&listener);
        let o = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let o = o.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let o = o.clone();
                        async move { Ok::<_, Infallible>(o.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        origin
    }

    /// An origin over TLS with `config` (HTTP/1.1 or HTTP/2, as ALPN settles).
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Origin::serve_with(&listener);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let o = origin.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                let (o, acceptor) = (o.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let o = o.clone();
                        async move { Ok::<_, Infallible>(o.answer(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        origin
    }

    fn serve_with(listener: &TcpListener) -> Origin {
        Origin {
            addr: listener.local_addr().unwrap(),
            scripts: Default::default(),
            counts: Default::default(),
            seen: Default::default(),
            total: Default::default(),
        }
    }

    /// Answers `path` (with query) with `f(request, nth request to this path starting at 1)`.
    pub fn script(&self, path: &str, f: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) {
        self.scripts
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(f));
    }

    /// Answers `path` with the same reply every time.
    pub fn always(&self, path: &str, reply: Reply) {
        self.script(path, move |_, _| reply.clone());
    }

    pub fn count(&self, path: &str) -> usize {
        self.counts.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self, path: &str) -> Seen {
        self.seen()
            .into_iter()
            .rev()
            .find(|s| s.path == path)
            .expect("origin saw no such request")
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
    ) -> Response<http_body_util::combinators::BoxBody<Bytes, Infallible>> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let method = req.method().to_string();
        let version = req.version();
        let headers = req.headers().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let seen = Seen {
            version,
            method,
            path: path.clone(),
            headers,
            body,
        };
        let n = {
            let mut c = self.counts.lock().unwrap();
            let e = c.entry(path.clone()).or_insert(0);
            *e += 1;
            *e
        };
        self.total.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(seen.clone());
        let script = self.scripts.lock().unwrap().get(&path).cloned();
        let reply = match script {
            Some(f) => f(&seen, n),
            None => Reply::ok("not scripted").status(404),
        };
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut builder = Response::builder().status(reply.status);
        for (k, v) in &reply.headers {
            builder = builder.header(k, v);
        }
        let body: http_body_util::combinators::BoxBody<Bytes, Infallible> =
            if let Some(n) = reply.stall_after {
                builder = builder.header("content-length", reply.body.len().to_string());
                BodyExt::boxed(StreamBody::new(StallStream {
                    part: Some(reply.body.slice(..n)),
                }))
            } else if let Some(n) = reply.cut_after {
                // Declare the full length, send part, then fail the body: hyper drops the connection.
                builder = builder.header("content-length", reply.body.len().to_string());
                let part = reply.body.slice(..n);
                let stream = futures_stream(part);
                BodyExt::boxed(StreamBody::new(stream))
            } else if reply.chunked {
                let chunks: Vec<Result<Frame<Bytes>, Infallible>> = reply
                    .body
                    .chunks(4096)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                BodyExt::boxed(StreamBody::new(tokio_stream_iter(chunks)))
            } else {
                BodyExt::boxed(Full::new(reply.body.clone()))
            };
        builder.body(body).unwrap()
    }
}

/// A stream of the given frames (no extra crate needed).
fn tokio_stream_iter(
    frames: Vec<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    IterStream(frames.into_iter())
}

struct IterStream<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for IterStream<I> {
    type Item = I::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

/// Sends `part`, then never ends until the handler drops it; hyper then closes the connection
/// short of the declared length.
fn futures_stream(
    part: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    CutStream { part: Some(part) }
}

struct CutStream {
    part: Option<Bytes>,
}

impl futures_core::Stream for CutStream {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        // Ending the stream early makes hyper close the connection (body shorter than declared).
        std::task::Poll::Ready(self.part.take().map(|p| Ok(Frame::data(p))))
    }
}

/// Sends `part`, then stays pending for ever: a stalled origin that keeps its socket open.
struct StallStream {
    part: Option<Bytes>,
}

impl futures_core::Stream for StallStream {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.part.take() {
            Some(p) => std::task::Poll::Ready(Some(Ok(Frame::data(p)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// HTTP/2 in raw frames (RFC 9113), for clients that misbehave as no library lets one.
pub mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// Error codes (§7).
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len().to_be_bytes();
        let mut f = vec![len[5], len[6], len[7], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK literal field without indexing, its name from the static table.
    pub fn literal(name_index: u8, value: &[u8]) -> Vec<u8> {
        assert!(name_index < 16 && value.len() < 127);
        let mut out = vec![name_index, value.len() as u8];
        out.extend_from_slice(value);
        out
    }

    /// The header block of `GET path` for `authority` over cleartext.
    pub fn get_block(path: &str, authority: &str) -> Vec<u8> {
        // :method GET, :scheme http (static table 2 and 6), :path (4), :authority (1).
        let mut block = vec![0x82, 0x86];
        block.extend(literal(4, path.as_bytes()));
        block.extend(literal(1, authority.as_bytes()));
        block
    }

    /// The preface, settings that open every stream's window all the way, and the
    /// connection's window opened as far: a client that will take anything, as fast as it
    /// is sent (and then need not read it).
    pub fn greedy_hello() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 2^31 - 1.
        let mut setting = 4u16.to_be_bytes().to_vec();
        setting.extend_from_slice(&(u32::MAX >> 1).to_be_bytes());
        out.extend(frame(SETTINGS, 0, 0, &setting));
        out.extend(frame(
            WINDOW_UPDATE,
            0,
            0,
            &((u32::MAX >> 1) - 65_535).to_be_bytes(),
        ));
        out
    }
}

/// Resident memory of process `pid`, in bytes (Linux).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Scripts `/big`, a 32 MiB private answer that a client can sit on, and `/next`, a small one
/// to see whether the site can reach its origin meanwhile (`max_origin_requests` tests).
pub fn big_and_next(o: &Origin) {
    o.always(
        "/big",
        Reply::ok("")
            .body_bytes(vec![b'x'; 32 << 20])
            .header("cache-control", "private"),
    );
    o.always("/next", Reply::ok("next"));
}

/// An edge for `o` whose site may have one request at its origin at once, waiting 300 ms for
/// it (with [`big_and_next`]: a client that sits on `/big` holds the slot `/next` needs).
pub async fn one_slot_edge(o: &Origin, edge: &str) -> Edge {
    Edge::start(
        &site(
            "demo",
            "demo.test",
            &format!("http://{}", o.addr),
            "max_origin_requests = 1\nconnect_timeout = \"300ms\"",
        ),
        edge,
    )
    .await
}

/// Asks `GET path` of `host` at `addr` every 200 ms until it is answered 200; panics with
/// `what` after 5 s.
pub async fn until_served(addr: SocketAddr, host: &str, path: &str, what: &str) {
    let start = std::time::Instant::now();
    loop {
        if get(addr, host, path, &[]).await.status == 200 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An origin that speaks raw bytes: `serve` runs once per accepted connection.
pub async fn raw_origin<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Reads a request head off `s` (a byte at a time: nothing past it is taken); false if the
/// connection ended first.
pub async fn read_request_head(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// An origin that reads a request head and never answers; for each connection that got one,
/// [`Hangups::next`] says how long after it the edge closed the connection (`None`: not within
/// 5 s).
pub async fn hanging_origin() -> (SocketAddr, Hangups) {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Option<Duration>>();
    let addr = raw_origin(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut chunk = [0u8; 4096];
            if !read_request_head(&mut s).await {
                return;
            }
            let asked = std::time::Instant::now();
            let closed = tokio::time::timeout(Duration::from_secs(5), async {
                while let Ok(1..) = s.read(&mut chunk).await {}
            })
            .await;
            let _ = tx.send(closed.ok().map(|()| asked.elapsed()));
        }
    })
    .await;
    (addr, Hangups(rx))
}

/// What [`hanging_origin`] saw, one connection at a time.
pub struct Hangups(tokio::sync::mpsc::UnboundedReceiver<Option<Duration>>);

impl Hangups {
    /// When the edge closed the next connection that brought a request (`what` names it in a
    /// failure): `None` if it held it for 5 s.
    pub async fn next(&mut self, what: &str) -> Option<Duration> {
        tokio::time::timeout(Duration::from_secs(8), self.0.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: the origin got no request"))
            .unwrap()
    }
}

/// A request body fed by the test through a channel: each `Bytes` sent is one DATA frame; the
/// body ends when the sender is dropped.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A cleartext HTTP/2 connection with prior knowledge, for bodies of type `B`.
pub async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// Sends `req` on a fresh HTTP/1.1 connection and collects the answer.
pub async fn send_request<B>(req: Request<B>) -> Got
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    send(req).await
}

/// A running edge and the files it was started from.
pub struct Edge {
    pub id: String,
    pub node: Option<meridian::app::Node>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

pub const TOKEN: &str = "test-admin-token";

/// A loopback address that refuses connections for as long as this lives: a socket bound to
/// it that never listens. (A port bound and closed again could meanwhile be taken by a server
/// of another test running beside this one, which would then answer for the "dead" origin.)
pub struct Refusing {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl Refusing {
    pub fn new() -> Refusing {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        Refusing {
            addr: socket.local_addr().unwrap(),
            _socket: socket,
        }
    }
}

impl Edge {
    /// Starts an edge on 127.0.0.1:0 whose origin map is `sites` (TOML `[[site]]` tables) and
    /// whose `[edge]` section gets `extra` lines.
    pub async fn start(sites: &str, extra: &str) -> Edge {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!("edge-test-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("origins.toml"), sites).unwrap();
        std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
        let node = format!(
            r#"
id = "{id}"
region = "test"
roles = ["edge"]
origin_map = "origins.toml"
[log]
access_log = false
[edge]
listen = ["127.0.0.1:0"]
{extra}
[admin]
listen = "127.0.0.1:0"
token_file = "admin.token"
"#
        );
        std::fs::write(dir.path().join("node.toml"), node).unwrap();
        let config =
            meridian::config::load(&dir.path().join("node.toml")).unwrap_or_else(|e| panic!("{e}"));
        let node = meridian::app::Node::start(config).await.unwrap();
        Edge {
            id,
            addr: node.http_addrs()[0],
            admin: node.admin_addr().unwrap(),
            node: Some(node),
            dir,
        }
    }

    /// An edge with one site `demo` for host `demo.test` in front of `origin`.
    pub async fn for_origin(origin: &Origin) -> Edge {
        Edge::for_origin_with(origin, "").await
    }

    /// The same, with `edge` lines added to the node file's `[edge]` section.
    pub async fn for_origin_with(origin: &Origin, edge: &str) -> Edge {
        Edge::start(
            &site("demo", "demo.test", &format!("http://{}", origin.addr), ""),
            edge,
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> Got {
        get(self.addr, "demo.test", path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        get(self.addr, "demo.test", path, headers).await
    }

    pub async fn admin_post(&self, path: &str, token: Option<&str>, body: &str) -> Got {
        let mut req = Request::post(format!("http://{}{}", self.admin, path))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        send(
            req.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
                .unwrap(),
        )
        .await
    }

    pub async fn admin_get(&self, path: &str) -> Got {
        send(
            Request::get(format!("http://{}{}", self.admin, path))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }
}

/// A `[[site]]` table.
pub fn site(name: &str, host: &str, origins: &str, extra: &str) -> String {
    let origins: Vec<String> = origins
        .split(',')
        .map(|o| format!("{:?}", o.trim()))
        .collect();
    format!(
        "[[site]]\nname = \"{name}\"\nhosts = [\"{host}\"]\norigins = [{}]\n{extra}\n",
        origins.join(", ")
    )
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    /// Asserts `Cache-Status` is `expected`, but for its last entry's `ttl`, which may be a
    /// second less (see [`ttl_about`]).
    pub fn assert_cache_status(&self, expected: &str) {
        let cs = self.cache_status();
        let (head, ttl) = expected.rsplit_once("ttl=").expect("an expected ttl");
        let ttl: i64 = ttl.parse().expect("a whole ttl");
        let last = cs.rsplit(", ").next().unwrap_or_default();
        assert!(
            cs.rsplit_once("ttl=").is_some_and(|(h, _)| h == head) && ttl_about(last, ttl),
            "Cache-Status {cs:?}, expected {expected:?} (or its ttl a second less)"
        );
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn is_hit(&self) -> bool {
        self.cache_status().starts_with("meridian; hit")
    }
}

async fn send<B>(req: Request<B>) -> Got
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    collect(client.request(req)).await
}

/// The answer `answer` brings (within 20 s), read whole.
async fn collect(
    answer: impl std::future::Future<
        Output = Result<Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
    >,
) -> Got {
    let resp = tokio::time::timeout(Duration::from_secs(20), answer)
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `path` of `host` at `addr` from the local address `source`: another loopback address
/// (127.0.0.2) is another client to the edge.
pub async fn get_from(source: std::net::IpAddr, addr: SocketAddr, host: &str, path: &str) -> Got {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_local_address(Some(source));
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(http);
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    collect(client.request(req)).await
}

/// GET `path` from `addr` with Host `host` and extra headers.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Got {
    request("GET", addr, host, path, headers).await
}

pub async fn request(
    method: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Empty::<Bytes>::new()).unwrap()).await
}

pub async fn request_body(
    method: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
    body: &str,
) -> Got {
    request_with_body(method, addr, host, path, &[], body).await
}

pub async fn request_with_body(
    method: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Got {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(
        req.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap(),
    )
    .await
}

/// Sends raw bytes on a new connection and returns what comes back until the server closes or
/// `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Extracts `key=value` from a Cache-Status.
pub fn param<'a>(cache_status: &'a str, key: &str) -> Option<&'a str> {
    cache_status
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
}

/// The names of process `pid`'s HTTP threads (`meridian-http-N`), sorted; Linux only (read
/// from `/proc`). A thread names itself once it runs.
pub fn http_threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = thread_names(pid)
        .into_iter()
        .filter(|n| n.starts_with("meridian-http"))
        .collect();
    names.sort();
    names
}

/// How many threads of process `pid` are named `name`; Linux only.
pub fn threads_named(pid: u32, name: &str) -> usize {
    thread_names(pid).iter().filter(|n| *n == name).count()
}

/// The names of process `pid`'s threads (Linux: read from `/proc`; none elsewhere).
pub fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the `ttl` of a `Cache-Status` is `fresh` seconds, or one less: a `Date` header has
/// whole seconds, so a second boundary crossed since the origin made it ages the answer by one.
pub fn ttl_about(cache_status: &str, fresh: i64) -> bool {
    param(cache_status, "ttl")
        .and_then(|t| t.parse::<i64>().ok())
        .is_some_and(|t| t == fresh || t == fresh - 1)
}

/// A TLS server configuration for `name` (a host name or an IP address), signed by a CA made
/// for it; and that CA's certificate as PEM, for the client to trust.
pub fn server_signed_by_a_new_ca(name: &str) -> (String, rustls::ServerConfig) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    (ca.pem(), server)
}
