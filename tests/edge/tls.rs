//! TLS termination, HTTP/2 and live reload of certificates, with certificates made in the test
//! (rcgen) and real TLS clients (rustls) that check what certificate they were served.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::common::{get, h2c, site, Edge, Origin, Reply};

/// A test CA that issues leaf certificates.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key, as PEM and DER.
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) der: CertificateDer<'static>,
}

impl Ca {
    pub(crate) fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "meridian test CA");
        Ca {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    pub(crate) fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, |_| {})
    }

    fn issue_with(&self, names: &[&str], f: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        f(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client configuration that trusts this CA, for `versions`.
    pub(crate) fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(self.roots())
        .with_no_client_auth()
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// Writes a leaf's PEM files into `dir` as `NAME.pem` and `NAME.key`; returns their paths.
pub(crate) fn write(dir: &Path, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (cert, key)
}

pub(crate) fn tls_site(
    name: &str,
    host: &str,
    origin: &Origin,
    files: &(PathBuf, PathBuf),
) -> String {
    site(
        name,
        host,
        &format!("http://{}", origin.addr),
        &format!("tls_cert = {:?}\ntls_key = {:?}\n", files.0, files.1),
    )
}

/// A TLS client connection: what the server presented and an HTTP sender on it.
pub(crate) struct Client {
    pub(crate) leaf: CertificateDer<'static>,
    pub(crate) alpn: Option<Vec<u8>>,
    send: Sender,
}

pub(crate) enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// Connects to `addr` over TLS, trusting `ca`, sending SNI `sni` (none when `None`), offering
/// ALPN `alpn`; speaks HTTP/2 when the server chose `h2`.
pub(crate) async fn connect(
    addr: std::net::SocketAddr,
    ca: &Ca,
    sni: Option<&str>,
    alpn: &[&str],
) -> Result<Client, std::io::Error> {
    let mut config = ca.client(rustls::DEFAULT_VERSIONS);
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.enable_sni = sni.is_some();
    // Without SNI the client still checks the certificate against a name: the default site's.
    let name = ServerName::try_from(sni.unwrap_or("a.test").to_string()).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let io = TokioIo::new(stream);
    let send = if alpn.as_deref() == Some(b"h2") {
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        Sender::H2(send)
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Sender::H1(send)
    };
    Ok(Client { leaf, alpn, send })
}

impl Client {
    /// GET `path` from `host`: the whole response.
    pub(crate) async fn response(&mut self, host: &str, path: &str) -> http::Response<Bytes> {
        let resp = match &mut self.send {
            Sender::H1(s) => {
                let req = Request::get(path)
                    .header("host", host)
                    .body(Empty::new())
                    .unwrap();
                s.send_request(req).await.unwrap()
            }
            Sender::H2(s) => {
                let req = Request::get(format!("https://{host}{path}"))
                    .version(Version::HTTP_2)
                    .body(Empty::new())
                    .unwrap();
                s.send_request(req).await.unwrap()
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        http::Response::from_parts(parts, body)
    }

    /// GET `path` from `host`; returns the status, version, Cache-Status and body.
    pub(crate) async fn get(
        &mut self,
        host: &str,
        path: &str,
    ) -> (StatusCode, Version, String, String) {
        let resp = self.response(host, path).await;
        let cache = resp
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (
            resp.status(),
            resp.version(),
            cache,
            String::from_utf8_lossy(resp.body()).into_owned(),
        )
    }
}

pub(crate) fn https(edge: &Edge) -> std::net::SocketAddr {
    edge.node.as_ref().unwrap().https_addrs()[0]
}

pub(crate) async fn origin_with_pages() -> Origin {
    let origin = Origin::start().await;
    origin.always("/", Reply::ok("site").header("cache-control", "max-age=60"));
    origin
}

/// An edge serving one site, `a` (`a.test`), over TLS with a certificate from a new CA.
struct OneSite {
    ca: Ca,
    edge: Edge,
    leaf: Leaf,
    /// The certificate and key files the origin map names.
    files: (PathBuf, PathBuf),
    dir: tempfile::TempDir,
    _origin: Origin,
}

impl OneSite {
    async fn start() -> OneSite {
        let (ca, dir) = (Ca::new(), tempfile::tempdir().unwrap());
        let leaf = ca.issue(&["a.test"]);
        let files = write(dir.path(), "a", &leaf);
        let origin = origin_with_pages().await;
        let edge = Edge::start(
            &tls_site("a", "a.test", &origin, &files),
            "[edge.tls]\nlisten = [\"127.0.0.1:0\"]\n",
        )
        .await;
        OneSite {
            ca,
            edge,
            leaf,
            files,
            dir,
            _origin: origin,
        }
    }
}

#[tokio::test]
async fn sni_picks_each_sites_certificate_and_clients_without_it_get_the_default() {
    let (ca, certs) = (Ca::new(), tempfile::tempdir().unwrap());
    let a = ca.issue(&["a.test"]);
    let b = ca.issue(&["b.test", "www.b.test"]);
    let origin = origin_with_pages().await;
    let sites = tls_site("a", "a.test", &origin, &write(certs.path(), "a", &a))
        + &tls_site("b", "b.test", &origin, &write(certs.path(), "b", &b));
    let edge = Edge::start(
        &sites,
        "[edge.tls]\nlisten = [\"127.0.0.1:0\"]\ndefault_site = \"a\"\n",
    )
    .await;
    let mut to_a = connect(https(&edge), &ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(to_a.leaf, a.der);
    assert_eq!(to_a.get("a.test", "/").await.0, 200);
    let to_b = connect(https(&edge), &ca, Some("B.TEST"), &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(to_b.leaf, b.der, "SNI is matched without regard to case");
    let anonymous = connect(https(&edge), &ca, None, &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        anonymous.leaf, a.der,
        "no SNI: the default site's certificate"
    );
}

#[tokio::test]
async fn without_a_default_site_clients_without_sni_are_refused() {
    let site = OneSite::start().await;
    let (ca, edge) = (&site.ca, &site.edge);
    assert!(connect(https(edge), ca, None, &[]).await.is_err());
    assert!(connect(https(edge), ca, Some("other.test"), &[])
        .await
        .is_err());
    assert!(connect(https(edge), ca, Some("a.test"), &[]).await.is_ok());
    let failures = get(edge.admin, "admin", "/metrics", &[]).await.text();
    assert!(
        failures
            .lines()
            .any(|l| l.starts_with("meridian_tls_handshake_failures_total") && !l.ends_with(" 0")),
        "{failures}"
    );
}

#[tokio::test]
async fn http2_by_alpn_shares_one_cache_with_http1_and_cleartext_has_its_own_copy() {
    let (ca, certs) = (Ca::new(), tempfile::tempdir().unwrap());
    let a = ca.issue(&["a.test"]);
    let origin = Origin::start().await;
    origin.always(
        "/shared",
        Reply::ok("one copy").header("cache-control", "max-age=60"),
    );
    let edge = Edge::start(
        &tls_site("a", "a.test", &origin, &write(certs.path(), "a", &a)),
        "[edge.tls]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .await;
    let mut h1 = connect(https(&edge), &ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (status, version, cache, body) = h1.get("a.test", "/shared").await;
    assert_eq!(
        (status, version, body.as_str()),
        (StatusCode::OK, Version::HTTP_11, "one copy")
    );
    assert!(cache.contains("fwd=miss"), "{cache}");

    let mut h2 = connect(https(&edge), &ca, Some("a.test"), &["h2", "http/1.1"])
        .await
        .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]), "h2 chosen by ALPN");
    let (status, version, cache, body) = h2.get("a.test", "/shared").await;
    assert_eq!(
        (status, version, body.as_str()),
        (StatusCode::OK, Version::HTTP_2, "one copy")
    );
    assert!(cache.starts_with("meridian; hit"), "{cache}");

    assert_eq!(origin.count("/shared"), 1, "one origin fetch for both");

    // Cleartext HTTP/2 with prior knowledge on the plain listener: the scheme is part of what
    // the origin sees (and of the variant), so http has its own copy, shared by HTTP/1.1.
    let mut send = h2c(edge.addr).await;
    let req = Request::get("http://a.test/shared")
        .version(Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert!(resp.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("fwd=vary-miss"));
    assert!(get(edge.addr, "a.test", "/shared", &[]).await.is_hit());
    assert_eq!(origin.count("/shared"), 2, "one origin fetch per scheme");
}

/// An origin that sends http clients to https (a 301, cacheable), as sites commonly do.
async fn https_only_origin() -> Origin {
    let origin = Origin::start().await;
    origin.script("/s", |seen, _| {
        let forwarded = seen
            .headers
            .get("forwarded")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        if forwarded.contains("proto=http;") || forwarded.ends_with("proto=http") {
            Reply::ok("")
                .status(301)
                .header("location", "https://a.test/s")
                .header("cache-control", "max-age=60")
        } else {
            Reply::ok("secure").header("cache-control", "max-age=60")
        }
    });
    origin
}

#[tokio::test]
async fn an_answer_for_http_never_serves_https() {
    let (ca, certs) = (Ca::new(), tempfile::tempdir().unwrap());
    let a = ca.issue(&["a.test"]);
    let origin = https_only_origin().await;
    let edge = Edge::start(
        &tls_site("a", "a.test", &origin, &write(certs.path(), "a", &a)),
        "[edge.tls]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .await;
    let plain = get(edge.addr, "a.test", "/s", &[]).await;
    assert_eq!(plain.status, 301);
    let mut c = connect(https(&edge), &ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    let (status, _, _, body) = c.get("a.test", "/s").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "secure"),
        "not the redirect stored for http (a redirect loop)"
    );
    let (_, _, cache, _) = c.get("a.test", "/s").await;
    assert!(cache.starts_with("meridian; hit"), "{cache}");
    assert_eq!(get(edge.addr, "a.test", "/s", &[]).await.status, 301);
    assert_eq!(origin.count("/s"), 2);
}

#[tokio::test]
async fn a_site_may_keep_the_scheme_from_its_origin_and_share_one_copy() {
    let (ca, certs) = (Ca::new(), tempfile::tempdir().unwrap());
    let a = ca.issue(&["a.test"]);
    let origin = Origin::start().await;
    origin.always(
        "/p",
        Reply::ok("same").header("cache-control", "max-age=60"),
    );
    let mut sites = tls_site("a", "a.test", &origin, &write(certs.path(), "a", &a));
    sites.push_str("[site.cache_key]\nscheme = false\n");
    let edge = Edge::start(&sites, "[edge.tls]\nlisten = [\"127.0.0.1:0\"]\n").await;
    assert_eq!(get(edge.addr, "a.test", "/p", &[]).await.text(), "same");
    let forwarded = origin.last("/p").headers["forwarded"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!forwarded.contains("proto="), "{forwarded}");
    let mut c = connect(https(&edge), &ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    let (_, _, cache, body) = c.get("a.test", "/p").await;
    assert_eq!(body, "same");
    assert!(cache.starts_with("meridian; hit"), "{cache}");
}

#[tokio::test]
async fn requests_over_tls_reach_the_origin_as_https_and_origins_get_http2_when_they_offer_it() {
    let (ca, certs) = (Ca::new(), tempfile::tempdir().unwrap());
    // An origin on TLS that offers h2, with a certificate for its IP address.
    let origin_leaf = ca.issue(&["127.0.0.1"]);
    let mut origin_tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![origin_leaf.der.clone()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(origin_leaf.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    origin_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let origin = Origin::start_tls(Arc::new(origin_tls)).await;
    origin.always(
        "/p",
        Reply::ok("secure").header("cache-control", "max-age=60"),
    );
    std::fs::write(certs.path().join("ca.pem"), ca.cert.pem()).unwrap();
    let a = ca.issue(&["a.test"]);
    let files = write(certs.path(), "a", &a);
    let sites = site(
        "a",
        "a.test",
        &format!("https://127.0.0.1:{}", origin.addr.port()),
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}\nca_file = {:?}\n",
            files.0,
            files.1,
            certs.path().join("ca.pem")
        ),
    );
    let edge = Edge::start(&sites, "[edge.tls]\nlisten = [\"127.0.0.1:0\"]\n").await;
    let mut c = connect(https(&edge), &ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    let (status, _, _, body) = c.get("a.test", "/p").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "secure"));
    let seen = origin.last("/p");
    assert_eq!(
        seen.version,
        Version::HTTP_2,
        "the edge spoke h2 to the origin"
    );
    let forwarded = seen.headers["forwarded"].to_str().unwrap();
    assert!(forwarded.contains("proto=https"), "{forwarded}");
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_while_old_ones_keep_going() {
    let site = OneSite::start().await;
    let (ca, edge, first, files) = (&site.ca, &site.edge, &site.leaf, &site.files);
    let node = edge.node.as_ref().unwrap();
    let mut old = connect(https(edge), ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(old.leaf, first.der);
    assert_eq!(old.get("a.test", "/").await.0, 200);

    let second = ca.issue(&["a.test"]);
    write(site.dir.path(), "a", &second);
    node.reload().unwrap();
    let new = connect(https(edge), ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(
        new.leaf, second.der,
        "new connections get the new certificate"
    );
    assert_eq!(
        old.get("a.test", "/").await.0,
        200,
        "the old connection keeps working"
    );

    // A broken new certificate (this key belongs to another certificate) is rejected whole, and
    // the one before keeps serving.
    let other = ca.issue(&["a.test"]);
    std::fs::write(&files.1, &other.key_pem).unwrap();
    let err = node.reload().unwrap_err();
    assert!(
        err.contains("tls_cert") && err.contains(&files.1.display().to_string()),
        "{err}"
    );
    let after = connect(https(edge), ca, Some("a.test"), &["http/1.1"])
        .await
        .unwrap();
    assert_eq!(after.leaf, second.der);
    let metrics = get(edge.admin, "admin", "/metrics", &[]).await.text();
    for result in ["ok", "rejected"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("meridian_reloads_total")
                    && l.contains(&format!("result=\"{result}\""))
                    && l.ends_with(" 1")),
            "{metrics}"
        );
    }
}

#[test]
fn bad_certificates_are_named_at_check() {
    let (ca, certs) = (Ca::new(), tempfile::tempdir().unwrap());
    let dir = certs.path();
    let good = write(dir, "good", &ca.issue(&["a.test"]));
    let expired = write(
        dir,
        "expired",
        &ca.issue_with(&["a.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }),
    );
    let elsewhere = write(dir, "elsewhere", &ca.issue(&["b.test"]));
    let other = write(dir, "other", &ca.issue(&["a.test"]));
    let cases: [(&str, PathBuf, PathBuf, &str); 4] = [
        (
            "unreadable",
            dir.join("missing.pem"),
            good.1.clone(),
            "cannot read",
        ),
        ("expired", expired.0.clone(), expired.1.clone(), "expired"),
        (
            "not covering",
            elsewhere.0.clone(),
            elsewhere.1.clone(),
            "does not cover the site's host \"a.test\"",
        ),
        (
            "mismatched key",
            good.0.clone(),
            other.1.clone(),
            "does not match the certificate",
        ),
    ];
    for (what, cert, key, reason) in cases {
        let origins = format!(
            "[[site]]\nname = \"a\"\nhosts = [\"a.test\"]\norigins = [\"http://127.0.0.1:1\"]\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
        );
        std::fs::write(dir.join("origins.toml"), origins).unwrap();
        std::fs::write(
            dir.join("node.toml"),
            "id = \"t\"\nregion = \"r\"\norigin_map = \"origins.toml\"\n[edge]\nlisten = [\"127.0.0.1:0\"]\n[edge.tls]\nlisten = [\"127.0.0.1:0\"]\n",
        )
        .unwrap();
        let err = meridian::app::check(&dir.join("node.toml")).unwrap_err();
        let p = &err.problems[0];
        assert_eq!(p.key, "site[0].tls_cert", "{what}: {err}");
        assert!(p.reason.contains(reason), "{what}: {err}");
        assert!(p.file.ends_with("origins.toml"), "{what}: {err}");
        let named = if what == "mismatched key" {
            &key
        } else {
            &cert
        };
        assert!(
            p.reason.contains(&named.display().to_string()),
            "{what}: {err}"
        );
    }
}

#[tokio::test]
async fn http2_requests_reach_http1_origins_with_a_via_that_says_so() {
    let origin = Origin::start().await;
    origin.always("/form", Reply::ok("posted"));
    origin.always(
        "/cold",
        Reply::ok("filled").header("cache-control", "max-age=60"),
    );
    let edge = Edge::for_origin(&origin).await;
    let mut send = h2c(edge.addr).await;
    for (method, path, body) in [("POST", "/form", "posted"), ("GET", "/cold", "filled")] {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://demo.test{path}"))
            .version(Version::HTTP_2)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{method} {path}");
        let got = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got, body.as_bytes());
        let seen = origin.last(path);
        assert_eq!(seen.version, Version::HTTP_11);
        assert_eq!(seen.method, method);
        assert_eq!(seen.headers["via"], format!("2 {}", edge.id).as_str());
    }
}

/// Connects with `config`, asks for `/` (so that TLS 1.3 tickets arrive) and returns how the
/// handshake went.
async fn handshake_kind(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_to_a(addr, config.clone()).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    tls.get_ref().1.handshake_kind()
}

#[tokio::test]
async fn returning_clients_resume_their_session_however_many_came_between() {
    let site = OneSite::start().await;
    let (ca, edge) = (&site.ca, &site.edge);
    // Each client configuration has its own session store, as separate users would.
    let client =
        |version: &'static rustls::SupportedProtocolVersion| Arc::new(ca.client(&[version]));
    use rustls::HandshakeKind::{Full, Resumed};
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let first = client(version);
        assert_eq!(handshake_kind(https(edge), &first).await, Some(Full));
        assert_eq!(
            handshake_kind(https(edge), &first).await,
            Some(Resumed),
            "{version:?}"
        );
    }
    // Three hundred other users in between: TLS 1.3 tickets carry the session themselves, so
    // the first user still resumes (a server-side cache of rustls' default size, 256, would have
    // forgotten it).
    let first = client(&rustls::version::TLS13);
    assert_eq!(handshake_kind(https(edge), &first).await, Some(Full));
    for _ in 0..300 {
        handshake_kind(https(edge), &client(&rustls::version::TLS13)).await;
    }
    assert_eq!(handshake_kind(https(edge), &first).await, Some(Resumed));
}

/// Over TLS too, a client that hangs up while its forwarded request waits has that request given
/// up: one that closes with a TLS close alert first, and one that just closes the socket.
#[tokio::test]
async fn a_tls_client_that_hangs_up_before_its_answer_ends_the_forward() {
    use tokio::io::AsyncWriteExt;
    let (origin, mut closed) = crate::common::hanging_origin().await;
    let (ca, dir) = (Ca::new(), tempfile::tempdir().unwrap());
    let files = write(dir.path(), "a", &ca.issue(&["a.test"]));
    let edge = Edge::start(
        &site(
            "a",
            "a.test",
            &format!("http://{origin}"),
            &format!("tls_cert = {:?}\ntls_key = {:?}\n", files.0, files.1),
        ),
        "[edge.tls]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .await;
    for alert in [true, false] {
        let mut tls = tls_to_a(https(&edge), Arc::new(ca.client(rustls::DEFAULT_VERSIONS))).await;
        tls.write_all(b"GET /p HTTP/1.1\r\nHost: a.test\r\nCache-Control: no-store\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if alert {
            tls.shutdown().await.unwrap();
        }
        drop(tls);
        let what = if alert {
            "close alert"
        } else {
            "socket closed"
        };
        let after = closed
            .next(what)
            .await
            .unwrap_or_else(|| panic!("{what}: the edge held the origin connection"));
        assert!(
            after < std::time::Duration::from_secs(2),
            "{what}: {after:?}"
        );
    }
}

/// A TLS connection to `addr` for `a.test`, bytes to be written by hand.
async fn tls_to_a(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pass_through_over_tls_reaches_the_client_without_hop_by_hop_fields() {
    let site = OneSite::start().await;
    site._origin.always(
        "/p",
        Reply::ok("private body")
            .header("cache-control", "private")
            .header("connection", "x-secret")
            .header("x-secret", "1")
            .header("surrogate-key", "tag")
            .header("x-kept", "yes"),
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The first through the fill (a header map), the later ones as a pass-through's lines.
    for i in 0..3 {
        let config = Arc::new(site.ca.client(&[&rustls::version::TLS13]));
        let mut tls = tls_to_a(https(&site.edge), config).await;
        tls.write_all(b"GET /p HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{i}: {head}");
        assert_eq!(body, "private body", "{i}");
        let fields: Vec<&str> = head.lines().skip(1).collect();
        let named = |n: &str| {
            fields
                .iter()
                .filter(|l| l.starts_with(&format!("{n}:")))
                .count()
        };
        for gone in ["x-secret", "surrogate-key"] {
            assert_eq!(named(gone), 0, "{i}: {head}");
        }
        for once in ["x-kept", "date", "via", "cache-status", "content-length"] {
            assert_eq!(named(once), 1, "{i}: {head}");
        }
        if i > 0 {
            assert!(head.contains("detail=uncacheable"), "{i}: {head}");
        }
    }
}
