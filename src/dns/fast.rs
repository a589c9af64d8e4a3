//! The common UDP query, answered straight from its bytes.
//!
//! Nearly every query a CDN's name server sees has one shape: one question, A or AAAA, class IN,
//! for a site name, with at most an OPT record carrying nothing but an ECS option. This module
//! reads exactly that shape from the datagram, decides with the same `steering` functions on the
//! same tables and `ClusterView` snapshots as the handler (through the worker's `memo`), and
//! writes the answer directly, without building hickory's `Request` and response messages (which
//! allocate names, record lists and options per query). Anything else, and any answer that would not be a plain positive one (NODATA, a
//! truncated answer, an unusual flag or option), returns `false` and goes down the general path.
//! A test compares the two paths' answers query by query: the same message, except that this
//! path names each answer by a pointer to the question (RFC 1035 §4.1.4 compression).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::handler::{DnsHandler, ADVERTISED_PAYLOAD};
use super::memo::Memo;
use super::metrics::Tally;
use crate::steering;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_SOA: u16 = 6;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const OPTION_ECS: u16 = 8;
const OPTION_NSID: u16 = 3;
/// Query flags this path accepts: RD, AD, CD. Anything else set goes to the general path.
const ACCEPTED_FLAGS: u16 = 0x0100 | 0x0020 | 0x0010;

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// An ECS option as it came: family, source prefix, and the address bytes sent.
struct Ecs<'a> {
    family: u16,
    source: u8,
    addr: &'a [u8],
    ip: IpAddr,
}

/// The query's OPT record, when it has one this path handles.
struct Opt<'a> {
    payload: u16,
    ecs: Option<Ecs<'a>>,
    /// An NSID request (empty data).
    nsid: bool,
    /// The client cookie of a well-formed COOKIE option.
    cookie: Option<[u8; 8]>,
}

/// Reads an ECS option's data; `None` for anything the general path should judge.
fn ecs(data: &[u8]) -> Option<Ecs<'_>> {
    let family = u16_at(data, 0)?;
    let source = *data.get(2)?;
    let addr = data.get(4..)?;
    let (width, ip) = match family {
        1 if source <= 32 => {
            let mut b = [0u8; 4];
            b.get_mut(..addr.len())?.copy_from_slice(addr);
            (4, IpAddr::V4(Ipv4Addr::from(b)))
        }
        2 if source <= 128 => {
            let mut b = [0u8; 16];
            b.get_mut(..addr.len())?.copy_from_slice(addr);
            (16, IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => return None,
    };
    if addr.len() != usize::from(source).div_ceil(8) || addr.len() > width {
        return None;
    }
    // Address bits past the source prefix make a FORMERR: the general path's to give.
    let net = ipnet::IpNet::new(ip, source).ok()?;
    if net.trunc().addr() != ip {
        return None;
    }
    Some(Ecs {
        family,
        source,
        addr,
        ip,
    })
}

/// Reads the OPT record that ends the datagram; `None` for anything unusual (an option other
/// than ECS, NSID and COOKIE, one of them twice or malformed, a DO bit, a version, trailing
/// bytes).
fn opt(rest: &[u8]) -> Option<Opt<'_>> {
    if *rest.first()? != 0 || u16_at(rest, 1)? != TYPE_OPT {
        return None;
    }
    let payload = u16_at(rest, 3)?;
    if rest.get(5..9)? != [0, 0, 0, 0] {
        return None;
    }
    let len = usize::from(u16_at(rest, 9)?);
    let options = rest.get(11..)?;
    if options.len() != len {
        return None;
    }
    let mut o = Opt {
        payload,
        ecs: None,
        nsid: false,
        cookie: None,
    };
    let mut at = 0;
    while at < options.len() {
        let code = u16_at(options, at)?;
        let n = usize::from(u16_at(options, at + 2)?);
        let data = options.get(at + 4..at + 4 + n)?;
        match code {
            OPTION_ECS if o.ecs.is_none() => o.ecs = Some(ecs(data)?),
            OPTION_NSID if !o.nsid && data.is_empty() => o.nsid = true,
            // Malformed cookies are the general path's FORMERR to give.
            super::cookie::OPTION if o.cookie.is_none() && (n == 8 || (16..=40).contains(&n)) => {
                o.cookie = Some(data[..8].try_into().ok()?);
            }
            _ => return None,
        }
        at += 4 + n;
    }
    Some(o)
}

/// What a UDP worker keeps from one query to the next: its own count of the answers this path
/// wrote (added to the shared metrics now and then), its memo of places and rankings with the
/// snapshot of tables and view it answers from, and a count for sampling answer times.
#[derive(Default)]
pub(crate) struct Worker {
    pub(crate) tally: Tally,
    pub(crate) memo: Memo,
    answers: u32,
    /// This thread's response-rate limiter, when the node has one.
    pub(crate) limiter: Option<Box<super::limit::Limiter>>,
    /// The node's NSID and cookie secret.
    identity: Option<std::sync::Arc<super::handler::Identity>>,
}

impl Worker {
    /// Takes the handler's current tables and view for the answers that follow.
    pub(crate) fn begin(&mut self, handler: &DnsHandler) {
        self.memo
            .begin(&handler.tables.load(), &handler.view.load());
        if self.identity.is_none() {
            self.identity = Some(handler.identity.clone());
        }
        if let (None, Some(config)) = (&self.limiter, handler.identity.rate_limit) {
            self.limiter = Some(Box::new(super::limit::Limiter::new(config)));
        }
    }

    /// Whether to time the next answer: one in [`SAMPLE`].
    pub(crate) fn sample(&mut self) -> bool {
        self.answers = self.answers.wrapping_add(1);
        self.answers % SAMPLE == 1
    }
}

/// One answer in this many is timed for the latency histogram (two clock reads and a write to a
/// histogram both threads share, per timed answer).
pub(crate) const SAMPLE: u32 = 16;

/// Answers `data` from `src` into `out` when it has the common shape; `false` otherwise (and
/// `out` is then unspecified). Answers from the snapshot the worker took with
/// [`Worker::begin`]. The answer is counted in the worker's tally (the caller flushes it into
/// the shared metrics, and times the answer).
pub(crate) fn answer(data: &[u8], src: SocketAddr, out: &mut Vec<u8>, worker: &mut Worker) -> bool {
    if data.len() < 12 {
        return false;
    }
    let flags = u16::from_be_bytes([data[2], data[3]]);
    // QR = 0, opcode QUERY, no other flag or code; one question, no answers, at most an OPT.
    if flags & !ACCEPTED_FLAGS != 0
        || u16_at(data, 4) != Some(1)
        || u16_at(data, 6) != Some(0)
        || u16_at(data, 8) != Some(0)
        || u16_at(data, 10).is_none_or(|ar| ar > 1)
    {
        return false;
    }
    // The question name: plain labels only (no compression in a question of one).
    let mut lower = [0u8; 255];
    let mut at = 12;
    loop {
        let Some(&len) = data.get(at) else {
            return false;
        };
        if len == 0 {
            break;
        }
        if len > 63 || at - 12 + 1 + usize::from(len) >= 255 {
            return false;
        }
        let Some(label) = data.get(at + 1..at + 1 + usize::from(len)) else {
            return false;
        };
        lower[at - 12] = len;
        for (i, b) in label.iter().enumerate() {
            lower[at - 12 + 1 + i] = b.to_ascii_lowercase();
        }
        at += 1 + usize::from(len);
    }
    let name_end = at + 1; // past the root label
    let wire = &lower[..name_end - 12 - 1];
    let (Some(qtype), Some(class)) = (u16_at(data, name_end), u16_at(data, name_end + 2)) else {
        return false;
    };
    if class != CLASS_IN || !(qtype == TYPE_A || qtype == TYPE_AAAA) {
        return false;
    }
    let question_end = name_end + 4;
    let opt = if u16_at(data, 10) == Some(1) {
        match opt(&data[question_end..]) {
            Some(o) => Some(o),
            None => return false,
        }
    } else if data.len() != question_end {
        return false;
    } else {
        None
    };

    let Some((site, zone)) = worker
        .memo
        .tables()
        .and_then(|t| t.site(wire).map(|i| (i, &t.zones[i])))
    else {
        return false;
    };
    let (default_region, policy, ttl) = (zone.default_region, zone.policy, zone.ttl);
    let soa_owner = question_end - 4 - zone.apex_len; // the apex, within the question's name
                                                      // The client: the ECS subnet (a /0 asks for the resolver's own address), else the source.
    let (ip, source_prefix) = match opt.as_ref().and_then(|o| o.ecs.as_ref()) {
        Some(e) if e.source > 0 => (e.ip, e.source),
        _ => (src.ip(), steering::full_prefix(src.ip())),
    };
    let (hash, hash_prefix) = steering::subnet_hash(ip, source_prefix);
    let (place_prefix, pick) = worker.memo.decide(ip, default_region, policy, hash);
    let Some(view) = worker.memo.view() else {
        return false;
    };
    let edges = worker.memo.edges();
    let v6 = qtype == TYPE_AAAA;
    let count: usize = edges
        .iter()
        .filter_map(|&i| view.edges.get(i))
        .map(|e| if v6 { e.v6.len() } else { e.v4.len() })
        .sum();
    if count > 64 {
        return false; // an oversized answer: the general path (which truncates)
    }
    let scope = steering::scope(place_prefix, pick, hash_prefix);

    out.clear();
    out.extend_from_slice(&data[..2]);
    let reply_flags = 0x8000 | 0x0400 | (flags & (0x0100 | 0x0010));
    out.extend_from_slice(&reply_flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(count as u16).to_be_bytes());
    // NODATA (none of the chosen edges has an address of this family) carries the SOA in the
    // authority section, for negative caching (RFC 2308).
    out.extend_from_slice(&u16::from(count == 0).to_be_bytes());
    out.extend_from_slice(&u16::from(opt.is_some()).to_be_bytes());
    out.extend_from_slice(&data[12..question_end]);
    let ttl = ttl.to_be_bytes();
    for e in edges.iter().filter_map(|&i| view.edges.get(i)) {
        let mut record = |rdata: &[u8]| {
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&qtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl);
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(rdata);
        };
        if v6 {
            e.v6.iter().for_each(|a| record(&a.octets()));
        } else {
            e.v4.iter().for_each(|a| record(&a.octets()));
        }
    }
    if count == 0 {
        let Some(tables) = worker.memo.tables() else {
            return false;
        };
        let zone = &tables.zones[site]; // the same snapshot: the index found above holds
        out.extend_from_slice(&(0xc000 | soa_owner as u16).to_be_bytes());
        out.extend_from_slice(&TYPE_SOA.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&zone.soa_ttl.to_be_bytes());
        out.extend_from_slice(&(zone.soa_wire.len() as u16).to_be_bytes());
        out.extend_from_slice(&zone.soa_wire);
    }
    let limit = match &opt {
        Some(o) => {
            out.extend_from_slice(&[0]);
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&ADVERTISED_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0]);
            let rdlen_at = out.len();
            out.extend_from_slice(&0u16.to_be_bytes());
            let option = |out: &mut Vec<u8>, code: u16, parts: &[&[u8]]| {
                let len: usize = parts.iter().map(|p| p.len()).sum();
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(&(len as u16).to_be_bytes());
                parts.iter().for_each(|p| out.extend_from_slice(p));
            };
            // In the general path's order: NSID, COOKIE, ECS.
            let identity = worker.identity.as_deref();
            if let (true, Some(nsid)) = (o.nsid, identity.and_then(|i| i.nsid.as_ref())) {
                option(out, OPTION_NSID, &[nsid.as_ref()]);
            }
            if let (Some(client), Some(identity)) = (o.cookie, identity) {
                let cookie = identity.cookies.answer(client, src.ip());
                option(out, super::cookie::OPTION, &[&cookie]);
            }
            if let Some(e) = &o.ecs {
                let scope = if e.source == 0 { 0 } else { scope };
                option(
                    out,
                    OPTION_ECS,
                    &[&e.family.to_be_bytes(), &[e.source, scope], e.addr],
                );
            }
            let rdlen = (out.len() - rdlen_at - 2) as u16;
            out[rdlen_at..rdlen_at + 2].copy_from_slice(&rdlen.to_be_bytes());
            o.payload.clamp(512, ADVERTISED_PAYLOAD)
        }
        None => 512,
    };
    if out.len() > usize::from(limit) {
        return false; // truncation is the general path's
    }
    worker.tally.answered(v6, pick);
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::dns::handler::Tables;
    use crate::dns::metrics::DnsMetrics;
    use crate::dns::server::general_answer;
    use crate::model::ClusterView;

    fn map() -> crate::config::ClusterMap {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        crate::config::load_cluster_map(&root.join("config/local/cluster.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn geoip() -> Arc<crate::geoip::GeoIp> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        Arc::new(crate::geoip::GeoIp::open(&root.join("geo/test-city.mmdb")).unwrap())
    }

    fn handler() -> DnsHandler {
        let map = map();
        let regions: Vec<String> = map.regions.iter().map(|r| r.name.clone()).collect();
        let mut view = ClusterView::from_map(&map);
        // edge-b has an IPv6 address too, so AAAA answers are positive for eu-west.
        view.edges[1].v6.push("2001:db8::12".parse().unwrap());
        DnsHandler {
            tables: Arc::new(ArcSwap::from_pointee(
                Tables::new(&map, Some(geoip())).unwrap(),
            )),
            view: Arc::new(ArcSwap::from_pointee(view)),
            metrics: Arc::new(DnsMetrics::new("fast-test", &regions)),
            identity: Arc::new(crate::dns::handler::Identity::new(Some("fast-test"), None)),
        }
    }

    struct Q {
        name: &'static str,
        qtype: RecordType,
        edns: Option<u16>,
        ecs: Option<(&'static str, u8)>,
        rd: bool,
    }

    fn q(name: &'static str, qtype: RecordType) -> Q {
        Q {
            name,
            qtype,
            edns: Some(1232),
            ecs: None,
            rd: false,
        }
    }

    fn bytes(q: &Q, id: u16) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.op_code = OpCode::Query;
        m.metadata.message_type = MessageType::Query;
        m.metadata.recursion_desired = q.rd;
        m.add_query(Query::query(Name::from_ascii(q.name).unwrap(), q.qtype));
        if let Some(size) = q.edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            if let Some((ip, prefix)) = q.ecs {
                e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                    ip.parse().unwrap(),
                    prefix,
                    0,
                )));
            }
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn the_common_queries_are_answered_as_the_general_path_answers_them() {
        let h = handler();
        let mut cases = Vec::new();
        for (subnet, prefix) in [
            ("81.2.69.142", 32),
            ("81.2.69.142", 31),
            ("89.160.20.128", 25),
            ("216.160.83.56", 29),
            ("175.16.199.0", 24),
            ("202.196.224.0", 20),
            ("198.51.100.0", 24),
            ("10.0.0.0", 8),
            ("0.0.0.0", 0),
            ("2001:218::", 32),
            ("2a02:cf40::", 29),
            ("2001:db8:1234::", 48),
        ] {
            for qtype in [RecordType::A, RecordType::AAAA] {
                cases.push(Q {
                    ecs: Some((subnet, prefix)),
                    ..q("demo.meridian.test.", qtype)
                });
            }
        }
        cases.push(q("DeMo.MeRiDiAn.TeSt.", RecordType::A)); // 0x20: the question keeps its case
        cases.push(Q {
            rd: true,
            ..q("demo.meridian.test.", RecordType::A)
        });
        cases.push(Q {
            edns: None,
            ..q("demo.meridian.test.", RecordType::A)
        });
        cases.push(Q {
            edns: Some(4096),
            ..q("demo.meridian.test.", RecordType::A)
        });
        // One worker throughout, so later rounds answer from its memo; between rounds the view
        // and then the tables change under it, as gossip and reloads change them.
        let mut worker = Worker::default();
        let mut answered = 0;
        for round in ["cold", "warm"] {
            answered += compare(&h, &cases, &mut worker, round);
        }
        let mut view = ClusterView::clone(&h.view.load());
        view.edges[1].healthy = false; // edge-b (eu-west) down: its clients move
        h.view.store(Arc::new(view));
        answered += compare(&h, &cases, &mut worker, "eu-west down");
        let mut view = ClusterView::clone(&h.view.load());
        view.edges[0].load = 1.5; // edge-a past the mark: some of its clients spill
        h.view.store(Arc::new(view));
        answered += compare(&h, &cases, &mut worker, "us-west loaded");
        // A reload that moves eu-west to Sydney and drops the coverage zones: London's clients
        // now have us-west nearest, and 198.51.100.0/24 goes by GeoIP.
        let mut map = map();
        let eu = map
            .regions
            .iter_mut()
            .find(|r| r.name == "eu-west")
            .unwrap();
        (eu.lat, eu.lon) = (-33.87, 151.21);
        map.coverage.clear();
        h.tables
            .store(Arc::new(Tables::new(&map, Some(geoip())).unwrap()));
        let mut view = ClusterView::from_map(&map); // as the DNS role rebuilds it on a reload
        view.edges[1].healthy = false;
        view.edges[0].load = 1.5;
        h.view.store(Arc::new(view));
        answered += compare(&h, &cases, &mut worker, "reloaded");
        assert!(
            answered > cases.len() * 3,
            "most go the fast way: {answered}"
        );
    }

    /// Answers every case by both paths and compares them; returns how many took the fast one.
    fn compare(h: &DnsHandler, cases: &[Q], worker: &mut Worker, round: &str) -> usize {
        let src: SocketAddr = "192.0.2.7:5300".parse().unwrap();
        let mut fast = Vec::new();
        let mut answered = 0;
        for (i, c) in cases.iter().enumerate() {
            let query = bytes(c, 0x1000 + i as u16);
            let general = general_answer(h, &query, src).expect("an answer");
            let label = format!(
                "{round}: {} {:?} ecs {:?} edns {:?}",
                c.name, c.qtype, c.ecs, c.edns
            );
            worker.begin(h);
            if !answer(&query, src, &mut fast, worker) {
                // Only truncated answers and errors may go the general way.
                let m = Message::from_vec(&general).unwrap();
                assert!(
                    m.metadata.truncation || m.metadata.response_code != ResponseCode::NoError,
                    "{label}: should have taken the fast path"
                );
                continue;
            }
            answered += 1;
            let ours = Message::from_vec(&fast).unwrap();
            let theirs = Message::from_vec(&general).unwrap();
            assert_eq!(ours, theirs, "{label}");
            // Records compare without their TTLs (RFC 2136 equality): compare those too.
            let ttls = |m: &Message| {
                (m.answers.iter().chain(&m.authorities))
                    .map(|r| r.ttl)
                    .collect::<Vec<_>>()
            };
            assert_eq!(ttls(&ours), ttls(&theirs), "{label}: TTLs");
            if ours.answers.is_empty() {
                // NODATA with the SOA (whose names hickory compresses and ours does not).
                assert_eq!(ours.authorities.len(), 1, "{label}");
                continue;
            }
            // Ours names the answers by a pointer to the question (RFC 1035 §4.1.4), so it is
            // never longer.
            assert!(fast.len() <= general.len(), "{label}");
            let pointers = fast.len() + 18 * count_answers(&fast);
            assert_eq!(
                pointers,
                general.len(),
                "{label}: only the owner names differ"
            );
        }
        answered
    }

    fn count_answers(m: &[u8]) -> usize {
        usize::from(u16::from_be_bytes([m[6], m[7]]))
    }

    #[test]
    fn every_other_shape_goes_the_general_way() {
        let h = handler();
        let src: SocketAddr = "192.0.2.7:5300".parse().unwrap();
        let mut out = Vec::new();
        let mut refuse = |query: Vec<u8>, what: &str| {
            let mut worker = Worker::default();
            worker.begin(&h);
            assert!(!answer(&query, src, &mut out, &mut worker), "{what}");
        };
        refuse(bytes(&q("meridian.test.", RecordType::SOA), 1), "apex SOA");
        refuse(
            bytes(&q("meridian.test.", RecordType::A), 2),
            "apex A (NODATA)",
        );
        refuse(
            bytes(&q("nope.meridian.test.", RecordType::A), 3),
            "NXDOMAIN",
        );
        refuse(bytes(&q("example.org.", RecordType::A), 4), "REFUSED");
        refuse(
            bytes(&q("demo.meridian.test.", RecordType::TXT), 5),
            "other type",
        );
        refuse(
            bytes(
                &Q {
                    ecs: Some(("202.196.239.0", 20)), // 239 has bits past /20
                    ..q("demo.meridian.test.", RecordType::A)
                },
                6,
            ),
            "ECS bits past the prefix (FORMERR)",
        );
        let mut dnssec = bytes(&q("demo.meridian.test.", RecordType::A), 7);
        let n = dnssec.len();
        dnssec[n - 4] = 0x80; // DO bit in the OPT TTL
        refuse(dnssec, "DO bit");
        let mut two = bytes(&q("demo.meridian.test.", RecordType::A), 8);
        two[5] = 2;
        refuse(two, "two questions");
        let mut response = bytes(&q("demo.meridian.test.", RecordType::A), 9);
        response[2] |= 0x80;
        refuse(response, "a response");
        let mut trailing = bytes(&q("demo.meridian.test.", RecordType::A), 10);
        trailing.push(0);
        refuse(trailing, "trailing bytes");
        refuse(vec![0; 5], "too short");
    }

    /// A query with an OPT record holding `options` (raw option bytes) and `payload`.
    fn with_options(id: u16, options: &[u8]) -> Vec<u8> {
        let mut m = vec![(id >> 8) as u8, id as u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend_from_slice(b"\x04demo\x08meridian\x04test\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
        m.extend_from_slice(&(options.len() as u16).to_be_bytes());
        m.extend_from_slice(options);
        m
    }

    #[test]
    fn nsid_and_cookies_are_answered_here_as_the_general_path_answers_them() {
        let h = handler();
        let src: SocketAddr = "192.0.2.7:5300".parse().unwrap();
        let nsid = [0u8, 3, 0, 0];
        let mut cookie = vec![0u8, 10, 0, 8];
        cookie.extend_from_slice(b"clientck");
        let ecs = [0u8, 8, 0, 7, 0, 1, 24, 0, 81, 2, 69];
        for (i, options) in [
            nsid.to_vec(),
            cookie.clone(),
            [&ecs[..], &cookie[..], &nsid[..]].concat(),
        ]
        .iter()
        .enumerate()
        {
            let query = with_options(0x2000 + i as u16, options);
            let mut worker = Worker::default();
            worker.begin(&h);
            let mut fast = Vec::new();
            assert!(answer(&query, src, &mut fast, &mut worker), "case {i}");
            let general = general_answer(&h, &query, src).unwrap();
            // The same message; the server cookie holds the time in seconds, which may turn
            // between the two answers, so its client part is compared and the rest left out.
            let (mut ours, mut theirs) = (
                Message::from_vec(&fast).unwrap(),
                Message::from_vec(&general).unwrap(),
            );
            let code = hickory_proto::rr::rdata::opt::EdnsCode::Cookie;
            let client = |m: &Message| match m.edns.as_ref().and_then(|e| e.option(code)) {
                Some(EdnsOption::Unknown(_, d)) => Some(d[..8].to_vec()),
                _ => None,
            };
            assert_eq!(client(&ours), client(&theirs), "case {i}");
            assert_eq!(
                client(&ours).is_some(),
                options.windows(4).any(|w| w == [0, 10, 0, 8])
            );
            for m in [&mut ours, &mut theirs] {
                m.edns.as_mut().unwrap().options_mut().remove(code);
            }
            assert_eq!(ours, theirs, "case {i}");
            let m = Message::from_vec(&fast).unwrap();
            let edns = m.edns.as_ref().unwrap();
            assert_eq!(
                edns.option(hickory_proto::rr::rdata::opt::EdnsCode::NSID)
                    .is_some(),
                options.starts_with(&nsid) || i == 2,
                "case {i}"
            );
        }
        // Malformed ones are the general path's (FORMERR), as are NSIDs with data.
        for options in [
            vec![0u8, 10, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            vec![0, 3, 0, 1, 7],
        ] {
            let mut worker = Worker::default();
            worker.begin(&h);
            let mut out = Vec::new();
            assert!(!answer(
                &with_options(1, &options),
                src,
                &mut out,
                &mut worker
            ));
        }
    }
}
