//! A bare hyper reverse proxy with no cache logic: the ceiling for the edge's pass-through path
//! (`benches/http-load.sh` runs it beside the caches, part "pass").
//!
//! `cargo run --release --example bare_proxy -- 127.0.0.1:18007 127.0.0.1:18000 [pooled|conn]`
//!
//! - `pooled` (default): hyper-util's pooled client, the one the edge uses for its origins.
//! - `conn`: hyper's connection API with a plain list of idle connections (taken when ready,
//!   put back once the response head is in; one found busy is closed): the least a hyper-based
//!   proxy can do.
//!
//! Every request goes to the origin as it came (origin-form, its own Host).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

type Idle = Arc<Mutex<Vec<SendRequest<Incoming>>>>;
type Answer = http::Response<Either<Incoming, String>>;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18007".into());
    let origin = args.next().unwrap_or_else(|| "127.0.0.1:18000".into());
    let conn_mode = args.next().as_deref() == Some("conn");
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let pooled: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(http);
    let idle: Idle = Arc::default();
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (pooled, idle, origin) = (pooled.clone(), idle.clone(), origin.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let (pooled, idle, origin) = (pooled.clone(), idle.clone(), origin.clone());
                async move {
                    let sent = if conn_mode {
                        via_conn(&idle, &origin, req).await
                    } else {
                        via_pooled(&pooled, &origin, req).await
                    };
                    Ok::<_, Infallible>(sent.unwrap_or_else(|e| {
                        let mut r = http::Response::new(Either::Right(e));
                        *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                        r
                    }))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn via_pooled(
    client: &Client<HttpConnector, Incoming>,
    origin: &str,
    req: http::Request<Incoming>,
) -> Result<Answer, String> {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("http://{origin}{pq}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let resp = client
        .request(http::Request::from_parts(parts, body))
        .await
        .map_err(|e| e.to_string())?;
    Ok(resp.map(Either::Left))
}

async fn via_conn(
    idle: &Idle,
    origin: &str,
    req: http::Request<Incoming>,
) -> Result<Answer, String> {
    let ready = {
        let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
        std::iter::from_fn(|| idle.pop()).find(SendRequest::is_ready)
    };
    let mut send = match ready {
        Some(s) => s,
        None => {
            let tcp = tokio::net::TcpStream::connect(origin)
                .await
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            send
        }
    };
    let resp = send.send_request(req).await.map_err(|e| e.to_string());
    idle.lock().unwrap_or_else(|e| e.into_inner()).push(send);
    Ok(resp?.map(Either::Left))
}
