//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpus; not
//! a stable API. Each takes arbitrary bytes, runs one parser or decision on them, and panics
//! only when a property the node relies on does not hold.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use crate::cache::policy::{self, Exchange, SitePolicy};
use crate::cache::sf;
use crate::http::framing::FramingGuard;
use crate::http::range::{self, Ranges, MAX_RANGES};

/// The HTTP/1 framing guard over a stream of client bytes. Property: its verdicts (the first
/// ambiguous head and the first body fault) do not depend on how the stream is split into reads.
pub fn framing(data: &[u8]) {
    // Larger than any input, so the head-size limit never decides (hyper enforces it first).
    const LIMIT: usize = 1 << 20;
    let whole = {
        let mut g = FramingGuard::new(LIMIT);
        let conflict = g.feed(data);
        (conflict, g.take_body_fault())
    };
    // Reads of 1, 2, 3, ... bytes, then byte by byte.
    for split in [Split::Growing, Split::Bytes] {
        let mut g = FramingGuard::new(LIMIT);
        let (mut conflict, mut fault) = (None, None);
        for piece in split.pieces(data) {
            if let Some(c) = g.feed(piece) {
                conflict.get_or_insert(c);
            }
            if let Some(f) = g.take_body_fault() {
                fault.get_or_insert(f);
            }
        }
        assert_eq!(
            (conflict, fault),
            whole,
            "the verdict changed with the reads ({split:?})"
        );
    }
}

/// A client's request as the edge's own HTTP/1.1 path reads it (`http::direct`). Properties: a
/// request it takes (its head, and a `Content-Length` body) ends where the framing guard (which
/// hyper's requests are held to) also ends a message, so the two never disagree on where the
/// next request starts; a request it leaves to hyper is left untouched; and no read that splits
/// the bytes earlier changes the verdict (a prefix is only ever incomplete, or judged the
/// same).
pub fn client_head(data: &[u8]) {
    use crate::http::direct::{verdict, Verdict};
    let whole = verdict(data);
    let taken = match whole {
        Verdict::Ours { len, .. } => {
            let mut g = FramingGuard::new(1 << 20);
            assert_eq!(g.feed(&data[..len]), None, "the guard found a conflict");
            assert!(g.take_body_fault().is_none());
            assert!(
                g.between_messages(),
                "the guard is still inside the message the edge took"
            );
            Some(len)
        }
        _ => None,
    };
    // Every prefix up to a bound (each is a parse of its own).
    for n in 0..data.len().min(2048) {
        let v = verdict(&data[..n]);
        match taken {
            Some(len) if n >= len => assert_eq!(v, whole, "prefix {n}"),
            _ => assert!(
                v == Verdict::Partial || v == whole,
                "prefix {n}: {v:?} against {whole:?}"
            ),
        }
    }
}

/// An origin's response as the edge's HTTP/1.1 client reads it (the first byte's low bit: a
/// `HEAD` request; its next bit: a pass-through's, whose fields may come as lines). Properties:
/// the outcome (status, fields, body, how it ended, whether the connection could serve again)
/// does not depend on how the bytes are split into reads, the body is never more bytes than
/// came, and a pass-through's lines are the fields the header map gives a client.
pub fn origin_response(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let head_only = first & 1 == 1;
    let pass = first & 2 == 2;
    let whole = crate::h1::replay(&[data], head_only, pass);
    assert!(whole.body.len() <= data.len());
    for split in [Split::Growing, Split::Bytes] {
        let pieces = split.pieces(data);
        assert_eq!(
            crate::h1::replay(&pieces, head_only, pass),
            whole,
            "the outcome changed with the reads ({split:?})"
        );
    }
    if pass {
        assert_eq!(
            crate::h1::replay(&[data], head_only, false),
            whole,
            "a pass-through's lines and the header map differ"
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Split {
    Growing,
    Bytes,
}

impl Split {
    fn pieces(self, data: &[u8]) -> Vec<&[u8]> {
        match self {
            Split::Bytes => data.chunks(1).collect(),
            Split::Growing => {
                let (mut out, mut rest, mut n) = (Vec::new(), data, 1);
                while !rest.is_empty() {
                    let (a, b) = rest.split_at(n.min(rest.len()));
                    out.push(a);
                    rest = b;
                    n += 1;
                }
                out
            }
        }
    }
}

/// Cache-Control, CDN-Cache-Control and Surrogate-Control parsing, for responses and requests,
/// and the structured-field dictionary parser under the targeted fields. Property: no panic,
/// and a dictionary that parses has keys that are valid keys.
pub fn cache_control(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(dict) = sf::dictionary(text) {
            for (key, _) in &dict {
                let mut bytes = key.bytes();
                assert!(
                    bytes
                        .next()
                        .is_some_and(|b| b.is_ascii_lowercase() || b == b'*'),
                    "key {key:?}"
                );
                assert!(
                    bytes.all(|b| b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"_-.*".contains(&b)),
                    "key {key:?}"
                );
            }
        }
    }
    // One field line per input line, the first byte of each choosing the field.
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&which, value)) = line.split_first() else {
            continue;
        };
        let name = match which % 4 {
            0 => http::header::CACHE_CONTROL,
            1 => HeaderName::from_static("cdn-cache-control"),
            2 => HeaderName::from_static("surrogate-control"),
            _ => http::header::PRAGMA,
        };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(name, v);
        }
    }
    let _ = policy::response_directives(&headers);
    let _ = policy::request_directives(&headers);
}

/// The Range parser against a body whose length the first bytes give. Property: satisfiable
/// ranges lie inside the body, ascend, neither overlap nor touch, are at most [`MAX_RANGES`],
/// so the parts never add up to more than the body.
pub fn range(data: &[u8]) {
    let (len, value) = match data.split_first() {
        Some((&b, rest)) if b & 0x80 != 0 && rest.len() >= 8 => {
            let (l, v) = rest.split_at(8);
            (u64::from_le_bytes(l.try_into().unwrap_or_default()), v)
        }
        Some((&b, rest)) => (u64::from(b), rest),
        None => return,
    };
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    match range::parse(&value, len) {
        Ranges::Ignore => {}
        Ranges::Unsatisfiable => {}
        Ranges::Satisfiable(ranges) => {
            assert!(!ranges.is_empty() && ranges.len() <= MAX_RANGES);
            let mut total: u64 = 0;
            let mut prev: Option<u64> = None;
            for &(first, last) in &ranges {
                assert!(first <= last && last < len, "{first}-{last} of {len}");
                if let Some(p) = prev {
                    assert!(first > p.saturating_add(1), "{ranges:?} overlap or touch");
                }
                prev = Some(last);
                total += last - first + 1;
            }
            assert!(total <= len, "{total} bytes of a {len}-byte body");
        }
    }
}

/// The storage decision (RFC 9111 §3, §4.2) on an arbitrary response head (parsed as HTTP/1
/// would) to a GET. Properties: no panic; `no-store`, `private` and `Set-Cookie` (without the
/// site's opt-in) are never stored; a stored response can be reused or revalidated.
pub fn policy(data: &[u8]) {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = response.parse(data) else {
        return;
    };
    let Some(status) = response.code.and_then(|c| StatusCode::from_u16(c).ok()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for f in response.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            headers.append(n, v);
        }
    }
    // Request headers: the same fields, so Authorization and request directives vary too.
    let request = headers.clone();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let exchange = Exchange {
        request_time: now - Duration::from_millis(20),
        response_time: now,
    };
    for strip_set_cookie in [false, true] {
        let site = SitePolicy {
            default_ttl: Some(Duration::from_secs(60)),
            heuristic_freshness: true,
            strip_set_cookie,
        };
        let decided = policy::storability(&Method::GET, &request, status, &headers, exchange, site);
        let (d, _) = policy::response_directives(&headers);
        let Ok(fresh) = decided else {
            continue;
        };
        assert!(!d.no_store && !d.private, "stored despite {d:?}");
        assert!(
            strip_set_cookie || !headers.contains_key(http::header::SET_COOKIE),
            "stored a Set-Cookie without the site's opt-in"
        );
        let req = policy::request_directives(&request);
        for age in [
            Duration::ZERO,
            fresh.lifetime,
            Duration::from_secs(u32::MAX.into()),
        ] {
            let _ = policy::reuse(&fresh, fresh.initial_age.saturating_add(age), &req);
            let _ = policy::stale_if_error(&fresh, age, &req);
        }
    }
}

/// A DNS handler over config/local's cluster map and the test GeoIP database, built once.
fn dns_handler() -> &'static crate::dns::handler::DnsHandler {
    use crate::dns::handler::{DnsHandler, Identity, Tables};
    static HANDLER: OnceLock<DnsHandler> = OnceLock::new();
    HANDLER.get_or_init(|| {
        let mut problems = Vec::new();
        let map = crate::config::fuzz_cluster_map(
            include_str!("../config/local/cluster.toml"),
            &mut problems,
        )
        .expect("config/local's cluster map");
        let geoip =
            crate::geoip::GeoIp::from_bytes(include_bytes!("../geo/test-city.mmdb").to_vec())
                .expect("the test database");
        let regions: Vec<String> = map.regions.iter().map(|r| r.name.clone()).collect();
        DnsHandler {
            tables: Arc::new(arc_swap::ArcSwap::from_pointee(
                Tables::new(&map, Some(Arc::new(geoip))).expect("tables"),
            )),
            view: Arc::new(arc_swap::ArcSwap::from_pointee(
                crate::model::ClusterView::from_map(&map),
            )),
            metrics: Arc::new(crate::dns::metrics::DnsMetrics::new("fuzz", &regions)),
            identity: Arc::new(Identity::new(Some("fuzz"), None)),
        }
    })
}

/// A DNS message as a UDP query, answered by the fast path and by hickory's path. Properties:
/// neither panics; when the fast path answers, hickory's path gives the same message (records,
/// TTLs, ECS scope) with no error; responses (QR set) are never answered. Covers the ECS option
/// parsers of both paths.
pub fn dns(data: &[u8]) {
    use hickory_proto::op::{Message, ResponseCode};
    let handler = dns_handler();
    let src: SocketAddr = "192.0.2.7:5300"
        .parse()
        .unwrap_or(SocketAddr::from(([0; 4], 0)));
    let general = crate::dns::server::general_answer(handler, data, src);
    let mut worker = crate::dns::fast::Worker::default();
    worker.begin(handler);
    let mut fast = Vec::new();
    if crate::dns::fast::answer(data, src, &mut fast, &mut worker) {
        assert_eq!(data[2] & 0x80, 0, "the fast path answered a response");
        let general = general.expect("hickory's path answers what the fast path answers");
        let mut ours = Message::from_vec(&fast).expect("the fast path's answer parses");
        let mut theirs = Message::from_vec(&general).expect("hickory's answer parses");
        // A server cookie holds the time in seconds, which may turn between the two answers:
        // compare the client cookies, then leave the options out.
        let cookie = |m: &Message| match m
            .edns
            .as_ref()
            .and_then(|e| e.option(hickory_proto::rr::rdata::opt::EdnsCode::Cookie))
        {
            Some(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(_, d)) => Some(d[..8].to_vec()),
            _ => None,
        };
        assert_eq!(cookie(&ours), cookie(&theirs), "client cookies differ");
        for m in [&mut ours, &mut theirs] {
            if let Some(e) = m.edns.as_mut() {
                e.options_mut()
                    .remove(hickory_proto::rr::rdata::opt::EdnsCode::Cookie);
            }
        }
        assert_eq!(theirs.metadata.response_code, ResponseCode::NoError);
        assert_eq!(ours, theirs, "the two paths answer differently");
        let ttls = |m: &Message| {
            (m.answers.iter().chain(&m.authorities))
                .map(|r| r.ttl)
                .collect::<Vec<_>>()
        };
        assert_eq!(ttls(&ours), ttls(&theirs), "TTLs differ");
    }
}

/// The three configuration files on arbitrary text (the first byte picks which). Property: no
/// panic, and every problem names a key or is a syntax error with its line.
pub fn config(data: &[u8]) {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let mut problems = Vec::new();
    match which % 3 {
        0 => {
            let _ = crate::config::fuzz_cluster_map(text, &mut problems);
        }
        1 => crate::config::fuzz_origin_map(text, &mut problems),
        _ => crate::config::fuzz_node(text, &mut problems),
    }
    for p in &problems {
        assert!(!p.reason.is_empty(), "a problem without a reason: {p}");
    }
}

/// A GeoIP database from arbitrary bytes (seeded with a real one): opened and verified, and
/// when it passes, looked up. Property: no panic, whatever the bytes.
pub fn geoip(data: &[u8]) {
    if let Ok(db) = crate::geoip::GeoIp::from_bytes(data.to_vec()) {
        for ip in ["81.2.69.142", "2001:db8::1", "10.0.0.1", "0.0.0.0"] {
            if let Some(hit) = ip.parse().ok().and_then(|ip| db.lookup(ip)) {
                let _ = hit.record();
                let _ = hit.hit();
            }
        }
    }
}

/// A gossip datagram: opened by a keyring (arbitrary bytes never open), and read as a chitchat
/// message (what an opened datagram becomes). Property: no panic.
pub fn gossip(data: &[u8]) {
    use chitchat::Deserializable;
    let ring = crate::gossip::transport::Keyring::from_keys(&[[7; 32]]);
    let mut copy = data.to_vec();
    assert!(
        ring.open(b"meridian", &mut copy).is_none(),
        "forged bytes opened"
    );
    let mut rest = data;
    let _ = chitchat::ChitchatMessage::deserialize(&mut rest);
}

/// A disk tier head entry read back (as if torn or corrupted on disk). Properties: decoding
/// never panics, and what decodes encodes and decodes to the same again.
pub fn disk_head(data: &[u8]) {
    crate::cache::disk::check_decode(data);
}
