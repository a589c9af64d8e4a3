//! A small HTTP/3 client (quinn, h3) for the tests, the benches, `examples/h3get.rs` and the
//! demo's HTTP/3 line: one QUIC connection, requests sent on it one stream each, bodies read
//! whole. A response whose stream the server resets is an error, never a short body.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use rustls::pki_types::CertificateDer;

/// One HTTP/3 connection.
pub struct H3Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl H3Client {
    /// Connects to `addr` naming `server_name` (SNI, and the name the certificate must
    /// cover), with `tls` (its ALPN is set to `h3`; TLS 1.3 is what QUIC uses).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        mut tls: rustls::ClientConfig,
    ) -> Result<H3Client, String> {
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| format!("TLS for QUIC: {e}"))?;
        let local: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        let mut endpoint = quinn::Endpoint::client(local).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = endpoint
            .connect(addr, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("QUIC handshake with {addr}: {e}"))?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| format!("HTTP/3 setup: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(H3Client {
            endpoint,
            conn,
            send,
            driver,
        })
    }

    /// The certificate the server presented (its leaf).
    pub fn server_certificate(&self) -> Option<CertificateDer<'static>> {
        let any = self.conn.peer_identity()?;
        let chain = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        chain.first().cloned()
    }

    /// Sends `req` with its body (none when empty) and waits for the response head; the body
    /// is read from the [`H3Response`] as it comes. Requests sent at once from several tasks
    /// share the connection, one stream each.
    pub async fn open(&self, req: Request<Bytes>) -> Result<H3Response, String> {
        let (parts, body) = req.into_parts();
        let mut sender = self.send.clone();
        let mut stream = sender
            .send_request(Request::from_parts(parts, ()))
            .await
            .map_err(|e| format!("request not sent: {e}"))?;
        if !body.is_empty() {
            stream
                .send_data(body)
                .await
                .map_err(|e| format!("request body not sent: {e}"))?;
        }
        // A server that has its answer may stop reading before the request's end arrives
        // (RFC 9114 §4.1: STOP_SENDING with H3_NO_ERROR); its response still counts.
        let _ = stream.finish().await;
        let head = stream
            .recv_response()
            .await
            .map_err(|e| format!("no response: {e}"))?;
        Ok(H3Response {
            head,
            stream,
            received: 0,
        })
    }

    /// Sends `req` and reads the whole response.
    pub async fn send(&self, req: Request<Bytes>) -> Result<(Response<()>, Bytes), String> {
        let mut resp = self.open(req).await?;
        let mut body = BytesMut::new();
        while let Some(chunk) = resp.chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok((resp.head, body.freeze()))
    }

    /// A GET of `url` (`https://host/path`).
    pub async fn get(&self, url: &str) -> Result<(Response<()>, Bytes), String> {
        let req = Request::get(url)
            .body(Bytes::new())
            .map_err(|e| e.to_string())?;
        self.send(req).await
    }

    /// Closes the connection and waits (briefly) for the server to hear it.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.endpoint.wait_idle())
            .await;
        self.driver.abort();
    }
}

/// A response whose body is read as it arrives.
pub struct H3Response {
    /// Status and fields.
    pub head: Response<()>,
    stream: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    received: usize,
}

impl H3Response {
    /// The next piece of the body; `None` at its clean end; an error if the server reset the
    /// stream (or the connection failed) first.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        match self.stream.recv_data().await {
            Ok(Some(mut data)) => {
                let bytes = data.copy_to_bytes(data.remaining());
                self.received += bytes.len();
                Ok(Some(bytes))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!(
                "response body cut off after {} bytes: {e}",
                self.received
            )),
        }
    }
}

/// A client TLS configuration that trusts the PEM certificates in `ca_file`, or the system's
/// roots when `None`.
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
