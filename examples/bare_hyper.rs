//! A bare hyper server that answers every request with a fixed body: the ceiling the edge's hit
//! path is measured against (`benches/http-load.sh` runs it beside the caches).
//!
//! `cargo run --release --example bare_hyper -- 127.0.0.1:18004 1024`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18004".into());
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let body = Bytes::from(vec![b'x'; size]);
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let body = body.clone();
                async move {
                    let mut r = http::Response::new(Full::new(body));
                    r.headers_mut().insert(
                        "cache-control",
                        http::HeaderValue::from_static("max-age=3600"),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
