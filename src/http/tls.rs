//! TLS termination: certificates per site, chosen by SNI; swapped whole on reload.
//!
//! [`load_certificate`] reads a site's PEM chain and key and checks what an operator would
//! otherwise learn from a failed handshake: the key matches the certificate, the certificate is
//! within its validity period, and it covers every host name of the site. [`load_certificates`]
//! does so for every site of a configuration, naming each problem by the origin map's key as
//! config validation names its own; `app` calls it once for a start, a reload or `meridian
//! check`, so all three judge certificates the same way. [`Certificates`] maps SNI names to
//! those keys; [`SniResolver`] reads the current map through
//! an `ArcSwap`, so a reload changes the certificate of new handshakes while established
//! connections keep theirs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{Config, Problem, SiteConfig};

pub(crate) fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Reads and checks a site's certificate chain (`cert`, PEM, leaf first) and private key
/// (`key`, PEM) for `hosts` (a `*` host is not checked). Errors name the file at fault.
pub(crate) fn load_certificate(
    cert: &Path,
    key: &Path,
    hosts: &[String],
) -> Result<Arc<CertifiedKey>, String> {
    let pem = std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM file: {e}", cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!("{} holds no certificate", cert.display()));
    };
    let key_pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let private = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("{} is not a PEM file: {e}", key.display()))?
        .ok_or_else(|| format!("{} holds no private key", key.display()))?;
    let (not_before, not_after) = validity(leaf)
        .ok_or_else(|| format!("{}: cannot read the certificate's validity", cert.display()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    if now >= not_after {
        return Err(format!(
            "{}: the certificate expired {} (notAfter)",
            cert.display(),
            httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(not_after))
        ));
    }
    if now < not_before {
        return Err(format!(
            "{}: the certificate is not valid before {}",
            cert.display(),
            httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(not_before))
        ));
    }
    let parsed = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("{}: not a usable X.509 certificate: {e}", cert.display()))?;
    for host in hosts.iter().filter(|h| *h != "*") {
        let name = ServerName::try_from(host.as_str())
            .map_err(|e| format!("{host:?} is not a server name: {e}"))?;
        if parsed.verify_is_valid_for_subject_name(&name).is_err() {
            return Err(format!(
                "{}: the certificate does not cover the site's host {host:?}",
                cert.display()
            ));
        }
    }
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} does not match the certificate in {}",
            key.display(),
            cert.display()
        ),
        other => format!("{}: unusable private key: {other}", key.display()),
    })?;
    Ok(Arc::new(certified))
}

/// Each site's certificate and key, read and checked ([`load_certificate`]), in the order of
/// `config.sites` (`None` for a site without one); else every problem, at `site[i].tls_cert`.
pub(crate) fn load_certificates(
    config: &Config,
) -> Result<Vec<Option<Arc<CertifiedKey>>>, Vec<Problem>> {
    let mut problems = Vec::new();
    let keys = config
        .sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            let tls = site.tls.as_ref()?;
            load_certificate(&tls.cert_file, &tls.key_file, &site.hosts)
                .map_err(|e| problems.push(config.site_problem(i, "tls_cert", e)))
                .ok()
        })
        .collect();
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems)
    }
}

/// Which certificate answers which SNI name.
#[derive(Debug, Default)]
pub(crate) struct Certificates {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    /// From a site whose hosts include `*`: any name no other site claims.
    any: Option<Arc<CertifiedKey>>,
    /// For clients that send no SNI (or a name nobody serves); `None` refuses them.
    default: Option<Arc<CertifiedKey>>,
    /// For the cluster's peers (SNI [`PEER_NAME`]): the first site's, whichever it is (a peer
    /// takes any certificate of its own sites, see [`PeerVerifier`]).
    peer: Option<Arc<CertifiedKey>>,
}

/// The server name a peer edge asks for on a TLS listener (`shield`).
pub(crate) const PEER_NAME: &str = crate::shield::PURGE_HOST;

impl Certificates {
    /// The certificates of `sites` (`keys`, from [`load_certificates`], in the same order);
    /// `default_site` names the site whose certificate answers clients without SNI.
    pub(crate) fn new(
        sites: &[SiteConfig],
        keys: &[Option<Arc<CertifiedKey>>],
        default_site: Option<&str>,
    ) -> Certificates {
        let mut c = Certificates::default();
        for (site, key) in sites.iter().zip(keys) {
            let Some(key) = key else { continue };
            for host in &site.hosts {
                if host == "*" {
                    c.any = Some(key.clone());
                } else {
                    c.by_name.insert(host.clone(), key.clone());
                }
            }
            if default_site == Some(site.name.as_str()) {
                c.default = Some(key.clone());
            }
            c.peer.get_or_insert_with(|| key.clone());
        }
        c
    }

    /// Whether `leaf` (DER) is the leaf certificate of one of these.
    pub(crate) fn holds(&self, leaf: &[u8]) -> bool {
        self.by_name
            .values()
            .chain(&self.any)
            .chain(&self.default)
            .chain(&self.peer)
            .any(|k| k.cert.first().is_some_and(|c| c.as_ref() == leaf))
    }

    /// The certificate for a client that asked for `sni` (`None`: no SNI).
    pub(crate) fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        match sni {
            Some(PEER_NAME) => self.peer.clone(),
            Some(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.by_name
                    .get(&name)
                    .or(self.any.as_ref())
                    .or(self.default.as_ref())
                    .cloned()
            }
            None => self.default.clone(),
        }
    }

    /// Whether any site has a certificate.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.any.is_none()
    }
}

/// rustls' view of the current [`Certificates`].
#[derive(Debug)]
pub(crate) struct SniResolver(pub(crate) Arc<ArcSwap<Certificates>>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().pick(hello.server_name())
    }
}

/// How an edge checks a peer it asks over TLS (`shield`): the peer must present, and prove it
/// holds the key of, a leaf certificate that is one of this edge's own sites' (every edge has
/// the same origin map, so the same certificates). No CA is trusted: a name a public CA would
/// vouch for is not enough to be taken for a peer.
#[derive(Debug)]
pub(crate) struct PeerVerifier {
    certificates: Arc<ArcSwap<Certificates>>,
    provider: rustls::crypto::CryptoProvider,
}

impl PeerVerifier {
    pub(crate) fn new(certificates: Arc<ArcSwap<Certificates>>) -> PeerVerifier {
        PeerVerifier {
            certificates,
            provider: provider(),
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.certificates.load().holds(end_entity.as_ref()) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sessions remembered for TLS 1.2 resumption by session id.
const SESSION_CACHE: usize = 64 * 1024;

/// The server configuration of the TLS listeners: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`,
/// session resumption by tickets (keys made at start, rotated every 6 hours, never written
/// anywhere) and by a session cache: a returning client skips the certificate exchange and the
/// signature, which is most of a full handshake's cost.
pub(crate) fn server_config(
    certificates: Arc<ArcSwap<Certificates>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certificates)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// The validity period of an X.509 certificate, read from its DER: Certificate ::= SEQUENCE {
// tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity
// SEQUENCE { notBefore, notAfter }, ... }, ... }.
// ---------------------------------------------------------------------------------------------

/// One DER element: (tag, contents, rest).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (0x30, certificate, _) = element(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = element(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after; // version
    }
    for _ in 0..3 {
        rest = element(rest)?.2; // serial, signature algorithm, issuer
    }
    let (0x30, validity, _) = element(rest)? else {
        return None;
    };
    let (t1, before, rest) = element(validity)?;
    let (t2, after, _) = element(rest)?;
    Some((time(t1, before)?, time(t2, after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn time(tag: u8, text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asn1_times_convert_to_unix_seconds() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x17, b"260227120000Z"), Some(1_772_193_600));
        assert_eq!(time(0x18, b"20260227120000Z"), Some(1_772_193_600));
        assert_eq!(time(0x18, b"99991231235959Z"), Some(253_402_300_799));
        assert_eq!(time(0x17, b"2602271200Z"), None);
    }
}
