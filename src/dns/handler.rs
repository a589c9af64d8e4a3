//! The DNS role's answering: the only implementation of hickory's `RequestHandler`.
//!
//! Receives each parsed query (hickory's server has already answered FORMERR for messages it
//! cannot parse); finds the zone (outside every zone: REFUSED), reads the client's place from the
//! EDNS Client Subnet or else the source address, asks `steering` for edges using one
//! `ClusterView` snapshot, and answers: SOA/NS at the apex, A/AAAA for site names, NXDOMAIN with
//! the SOA for unknown names, NODATA with the SOA for other types, a minimal answer to ANY
//! (RFC 8482). ECS is echoed with the scope prefix that is true for the answer (RFC 7871).
//!
//! Errors become response codes here and nowhere else ([`Refusal::code`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption, NSIDPayload};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use super::cookie::Cookies;
use super::metrics::DnsMetrics;
use crate::config::{ClusterMap, RateLimitConfig, ZoneConfig};
use crate::coverage::Coverage;
use crate::geoip::GeoIp;
use crate::model::{ClusterView, RegionView};
use crate::steering::{self, Locator, Policy};

/// The UDP payload size this server advertises (the DNS flag day 2020 value).
pub(crate) const ADVERTISED_PAYLOAD: u16 = 1232;

/// A zone, ready to answer.
pub(crate) struct Zone {
    apex: LowerName,
    /// Fully qualified names answered with edges.
    names: Vec<LowerName>,
    /// Name-server hosts and their glue.
    glue: Vec<(LowerName, Vec<Record>)>,
    soa: Record,
    /// The SOA's RDATA as bytes (names uncompressed) and its TTL, for negative answers written
    /// by the fast path; and the apex's wire length (root label included), where the SOA's
    /// owner starts within a question for a name of this zone.
    pub(crate) soa_wire: Vec<u8>,
    pub(crate) soa_ttl: u32,
    pub(crate) apex_len: usize,
    ns: Vec<Record>,
    pub(crate) ttl: u32,
    pub(crate) policy: Policy,
    pub(crate) default_region: usize,
}

/// Everything reloadable at once: zones, coverage, countries and the GeoIP database.
pub(crate) struct Tables {
    pub(crate) zones: Vec<Zone>,
    pub(crate) coverage: Coverage,
    pub(crate) countries: Vec<(String, usize)>,
    pub(crate) geoip: Option<Arc<GeoIp>>,
    /// The cluster map's regions (the same, index for index, as every view's).
    pub(crate) regions: Vec<RegionView>,
    /// Site names as lower-case wire labels (no root label) → the zone that answers them.
    sites: std::collections::HashMap<Vec<u8>, usize, std::hash::BuildHasherDefault<Fnv>>,
}

/// FNV-1a for the site table: its keys are the map's (queries only look names up, so there is
/// no flooding to defend against with a keyed hash), and SipHash cost more than the rest of the
/// lookup.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn name(text: &str) -> Result<Name, String> {
    Name::from_ascii(format!("{text}.")).map_err(|e| format!("{text:?}: {e}"))
}

fn secs(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl Zone {
    fn new(z: &ZoneConfig) -> Result<Zone, String> {
        let apex = name(&z.apex)?;
        let soa_rdata = SOA::new(
            name(&z.soa.mname)?,
            name(&z.soa.rname)?,
            z.soa.serial,
            i32::try_from(z.soa.refresh.as_secs()).unwrap_or(i32::MAX),
            i32::try_from(z.soa.retry.as_secs()).unwrap_or(i32::MAX),
            i32::try_from(z.soa.expire.as_secs()).unwrap_or(i32::MAX),
            secs(z.soa.minimum),
        );
        let mut soa_wire = Vec::new();
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut soa_wire);
        encoder.set_canonical_form(true); // no compression: the bytes stand anywhere
        soa_rdata
            .emit(&mut encoder)
            .map_err(|e| format!("SOA of {}: {e}", z.apex))?;
        let soa_ttl = secs(z.soa.minimum);
        let soa = Record::from_rdata(apex.clone(), soa_ttl, RData::SOA(soa_rdata));
        let mut ns = Vec::new();
        let mut glue = Vec::new();
        for (host, addrs) in &z.ns {
            let host_name = name(host)?;
            ns.push(Record::from_rdata(
                apex.clone(),
                3600,
                RData::NS(NS(host_name.clone())),
            ));
            let records = addrs
                .iter()
                .map(|a| match a {
                    IpAddr::V4(v) => Record::from_rdata(host_name.clone(), 3600, RData::A(A(*v))),
                    IpAddr::V6(v) => {
                        Record::from_rdata(host_name.clone(), 3600, RData::AAAA(AAAA(*v)))
                    }
                })
                .collect();
            glue.push((LowerName::from(host_name), records));
        }
        let names = z
            .names
            .iter()
            .map(|n| {
                if n == "@" {
                    name(&z.apex)
                } else {
                    name(&format!("{n}.{}", z.apex))
                }
            })
            .map(|r| r.map(LowerName::from))
            .collect::<Result<_, _>>()?;
        let apex_len = apex.iter().map(|label| label.len() + 1).sum::<usize>() + 1;
        Ok(Zone {
            apex: LowerName::from(apex),
            names,
            glue,
            soa,
            soa_wire,
            soa_ttl,
            apex_len,
            ns,
            ttl: secs(z.ttl),
            policy: Policy {
                answers: z.answers,
                high_water: z.high_water,
            },
            default_region: z.default_region,
        })
    }
}

impl Tables {
    /// Builds the tables of a cluster map, with a GeoIP database already opened.
    pub(crate) fn new(map: &ClusterMap, geoip: Option<Arc<GeoIp>>) -> Result<Tables, String> {
        let mut zones = map
            .zones
            .iter()
            .map(Zone::new)
            .collect::<Result<Vec<_>, _>>()?;
        // Longest apex first, so a delegated child zone wins over its parent.
        zones.sort_by_key(|z| std::cmp::Reverse(z.apex.num_labels()));
        let coverage = Coverage::new(map.coverage.clone());
        let countries = map
            .regions
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.countries.iter().map(move |c| (c.clone(), i)))
            .collect();
        let mut sites = std::collections::HashMap::default();
        for (i, zone) in zones.iter().enumerate() {
            for n in &zone.names {
                // Only where this zone is the one a query for the name would find.
                if zones.iter().position(|z| z.apex.zone_of(n)) != Some(i) {
                    continue;
                }
                let mut wire = Vec::new();
                for label in Name::from(n.clone()).iter() {
                    wire.push(label.len() as u8);
                    wire.extend(label.iter().map(u8::to_ascii_lowercase));
                }
                sites.insert(wire, i);
            }
        }
        Ok(Tables {
            zones,
            coverage,
            countries,
            geoip,
            regions: ClusterView::from_map(map).regions,
            sites,
        })
    }

    /// The zone that answers a site name given as lower-case wire labels (no root label), as an
    /// index into `zones`.
    pub(crate) fn site(&self, wire: &[u8]) -> Option<usize> {
        self.sites.get(wire).copied()
    }

    /// What `steering::locate` needs from these tables.
    pub(crate) fn locator(&self) -> Locator<'_> {
        Locator {
            coverage: &self.coverage,
            countries: &self.countries,
            geoip: self.geoip.as_deref(),
        }
    }
}

/// Why a query is answered with an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a standard query.
    NotQuery,
    /// Zero or several questions, or an invalid ECS option.
    Malformed,
    /// Outside every zone this server is authoritative for.
    NotOurs,
    /// A zone transfer (AXFR, IXFR), or a class other than IN: not served here.
    NotServed,
    /// An EDNS version this server does not implement (RFC 6891 §6.1.3).
    BadVersion,
}

impl Refusal {
    /// The one mapping from refusal to response code.
    pub(crate) fn code(self) -> ResponseCode {
        match self {
            Refusal::NotQuery => ResponseCode::NotImp,
            Refusal::Malformed => ResponseCode::FormErr,
            Refusal::NotOurs | Refusal::NotServed => ResponseCode::Refused,
            Refusal::BadVersion => ResponseCode::BADVERS,
        }
    }
}

/// What a node says of itself in answers, fixed at start: its NSID, its cookie secret, and
/// its rate limit.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) nsid: Option<NSIDPayload>,
    pub(crate) cookies: Cookies,
    pub(crate) rate_limit: Option<RateLimitConfig>,
}

impl Identity {
    pub(crate) fn new(nsid: Option<&str>, rate_limit: Option<RateLimitConfig>) -> Identity {
        Identity {
            // cannot fail: the configuration allows at most 255 printable bytes.
            nsid: nsid.and_then(|n| NSIDPayload::new(n.as_bytes()).ok()),
            cookies: Cookies::new(),
            rate_limit,
        }
    }
}

/// The DNS role's request handler.
pub(crate) struct DnsHandler {
    pub(crate) tables: Arc<ArcSwap<Tables>>,
    pub(crate) view: Arc<ArcSwap<ClusterView>>,
    pub(crate) metrics: Arc<DnsMetrics>,
    pub(crate) identity: Arc<Identity>,
}

/// The client subnet of a query: from a valid ECS option, else the source address.
struct Client {
    ip: IpAddr,
    source_prefix: u8,
    ecs: Option<ClientSubnet>,
}

/// Reads the ECS option; `Err` when it is invalid (RFC 7871 §7.1.2: address bits set beyond the
/// source prefix are a FORMERR).
fn client_of(edns: Option<&Edns>, src: IpAddr) -> Result<Client, Refusal> {
    let own = Client {
        ip: src,
        source_prefix: steering::full_prefix(src),
        ecs: None,
    };
    let Some(EdnsOption::Subnet(cs)) = edns.and_then(|e| e.option(EdnsCode::Subnet)) else {
        return Ok(own);
    };
    let ip = cs.addr();
    let prefix = cs.source_prefix();
    let net = ipnet::IpNet::new(ip, prefix).map_err(|_| Refusal::Malformed)?;
    if net.trunc().addr() != ip {
        return Err(Refusal::Malformed);
    }
    if prefix == 0 {
        // /0: the client asks that its subnet not be used; answer for the resolver.
        return Ok(Client {
            ecs: Some(*cs),
            ..own
        });
    }
    Ok(Client {
        ip,
        source_prefix: prefix,
        ecs: Some(*cs),
    })
}

/// What hickory's parser lets through and a query must not have (RFC 1035, RFC 7871 §6): records
/// in the answer section, bytes after the message, an ECS address of more or fewer bytes than
/// its source prefix needs.
fn wire_check(raw: &[u8], answers: usize) -> Result<(), Refusal> {
    if answers > 0 {
        return Err(Refusal::Malformed);
    }
    let u16_at = |i: usize| Some(u16::from_be_bytes([*raw.get(i)?, *raw.get(i + 1)?]));
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *raw.get(at)?;
            match len & 0xc0 {
                0xc0 => return Some(at + 2),
                0 if len == 0 => return Some(at + 1),
                0 => at += 1 + usize::from(len),
                _ => return None,
            }
        }
    };
    let walk = || -> Option<bool> {
        let mut at = 12;
        for _ in 0..u16_at(4)? {
            at = skip_name(at)? + 4;
        }
        let records = u32::from(u16_at(6)?) + u32::from(u16_at(8)?) + u32::from(u16_at(10)?);
        for _ in 0..records {
            at = skip_name(at)?;
            let rtype = u16_at(at)?;
            let len = usize::from(u16_at(at + 8)?);
            let rdata = raw.get(at + 10..at + 10 + len)?;
            if rtype == u16::from(RecordType::OPT) {
                let mut o = 0;
                while o < rdata.len() {
                    let code = u16::from_be_bytes([*rdata.get(o)?, *rdata.get(o + 1)?]);
                    let n =
                        usize::from(u16::from_be_bytes([*rdata.get(o + 2)?, *rdata.get(o + 3)?]));
                    let data = rdata.get(o + 4..o + 4 + n)?;
                    if code == u16::from(EdnsCode::Subnet)
                        && data.len().checked_sub(4)? != usize::from(*data.get(2)?).div_ceil(8)
                    {
                        return Some(false);
                    }
                    o += 4 + n;
                }
            }
            at += 10 + len;
        }
        Some(at == raw.len())
    };
    match walk() {
        Some(true) => Ok(()),
        _ => Err(Refusal::Malformed),
    }
}

/// What the handler decided to send.
struct Answer {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additionals: Vec<Record>,
    scope: u8,
}

impl Answer {
    fn refused(r: Refusal) -> Answer {
        Answer {
            code: r.code(),
            authoritative: false,
            answers: vec![],
            authority: vec![],
            additionals: vec![],
            scope: 0,
        }
    }
}

impl DnsHandler {
    fn answer(&self, request: &Request, client: &Client) -> Answer {
        let queries = request.queries.queries();
        if queries.len() != 1 {
            return Answer::refused(Refusal::Malformed);
        }
        let query = &queries[0];
        let qname = query.name();
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            return Answer::refused(Refusal::NotServed);
        }
        let owner = query.original().name().clone();
        let tables = self.tables.load();
        let Some(zone) = tables.zones.iter().find(|z| z.apex.zone_of(qname)) else {
            return Answer::refused(Refusal::NotOurs);
        };
        let mut out = Answer {
            code: ResponseCode::NoError,
            authoritative: true,
            answers: vec![],
            authority: vec![],
            additionals: vec![],
            scope: 0,
        };
        let is_site = zone.names.iter().any(|n| n == qname);
        let at_apex = *qname == zone.apex;
        if is_site && matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
            self.edges(&tables, zone, client, owner, qtype, &mut out);
        } else if at_apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            // ANY is answered minimally with the SOA (RFC 8482 §4.2).
            out.answers.push(zone.soa.clone());
        } else if at_apex && qtype == RecordType::NS {
            out.answers.extend(zone.ns.iter().cloned());
            out.additionals
                .extend(zone.glue.iter().flat_map(|(_, r)| r.iter().cloned()));
        } else if let Some((_, glue)) = zone.glue.iter().find(|(n, _)| n == qname) {
            out.answers.extend(
                glue.iter()
                    .filter(|r| r.record_type() == qtype || qtype == RecordType::ANY)
                    .cloned(),
            );
        } else if !is_site && !at_apex {
            out.code = ResponseCode::NXDomain;
        }
        if out.answers.is_empty() {
            // NXDOMAIN and NODATA carry the SOA for negative caching (RFC 2308).
            out.authority.push(zone.soa.clone());
        }
        out
    }

    fn edges(
        &self,
        tables: &Tables,
        zone: &Zone,
        client: &Client,
        owner: Name,
        qtype: RecordType,
        out: &mut Answer,
    ) {
        let view = self.view.load();
        let locator = tables.locator();
        let place = steering::locate(
            &locator,
            &view,
            client.ip,
            client.source_prefix,
            zone.default_region,
        );
        let (hash, hash_prefix) = steering::subnet_hash(client.ip, client.source_prefix);
        let choice = steering::choose(&view, &place, zone.policy, hash);
        out.scope = steering::scope(place.prefix, choice.pick(), hash_prefix);
        self.metrics.choice(choice.pick());
        let want_v6 = qtype == RecordType::AAAA;
        for &i in &choice.edges {
            let Some(e) = view.edges.get(i) else { continue };
            if want_v6 {
                out.answers.extend(
                    e.v6.iter().map(|a| {
                        Record::from_rdata(owner.clone(), zone.ttl, RData::AAAA(AAAA(*a)))
                    }),
                );
            } else {
                out.answers.extend(
                    e.v4.iter()
                        .map(|a| Record::from_rdata(owner.clone(), zone.ttl, RData::A(A(*a)))),
                );
            }
        }
    }
}

/// A decided response, ready to be built into a `MessageResponse`.
pub(crate) struct Prepared {
    metadata: Metadata,
    answer: Answer,
    edns: Option<Edns>,
    qtype: Option<RecordType>,
    start: Instant,
}

impl Prepared {
    /// The response message for `request`, borrowing this decision's records (or none of them:
    /// the truncated form).
    fn response<'q>(
        &'q self,
        request: &'q Request,
        records: bool,
    ) -> hickory_server::zone_handler::MessageResponse<
        'q,
        'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
        impl Iterator<Item = &'q Record> + Send + 'q,
    > {
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &self.edns {
            builder.edns(e);
        }
        // Without records, this is the truncated form: TC set, nothing but the question and OPT.
        let mut metadata = self.metadata;
        metadata.truncation |= !records;
        let (answers, authority, additionals) = if records {
            (
                &self.answer.answers[..],
                &self.answer.authority[..],
                &self.answer.additionals[..],
            )
        } else {
            (&[][..], &[][..], &[][..])
        };
        builder.build(
            metadata,
            answers.iter(),
            authority.iter(),
            std::iter::empty(),
            additionals.iter(),
        )
    }
}

impl DnsHandler {
    /// Decides the response to `request` (no I/O).
    pub(crate) fn prepare(&self, request: &Request) -> Prepared {
        let start = Instant::now();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = false;
        let client = client_of(request.edns.as_ref(), request.src().ip());
        let cookie = match request
            .edns
            .as_ref()
            .and_then(|e| e.option(EdnsCode::Cookie))
        {
            Some(EdnsOption::Unknown(_, data)) => Some(
                self.identity
                    .cookies
                    .read(data, request.src().ip())
                    .map_err(|()| Refusal::Malformed),
            ),
            _ => None,
        };
        let answer = if let Some(Err(r)) = cookie {
            Answer::refused(r)
        } else if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            Answer::refused(Refusal::NotQuery)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Answer::refused(Refusal::BadVersion)
        } else if let Err(r) = wire_check(request.as_slice(), request.answers.len()) {
            Answer::refused(r)
        } else {
            match &client {
                Ok(c) => self.answer(request, c),
                Err(r) => Answer::refused(*r),
            }
        };
        metadata.response_code = answer.code;
        metadata.authoritative = answer.authoritative;
        // Our OPT record: the payload we accept, and the ECS echo. (UDP responses are encoded
        // to the client's limit; see `server`.)
        let edns = request.edns.as_ref().map(|asked| {
            let mut e = Edns::new();
            e.set_max_payload(ADVERTISED_PAYLOAD);
            // The DO bit is copied (RFC 3225 §3); version 0 is what this server speaks.
            e.set_dnssec_ok(asked.flags().dnssec_ok);
            if let (Some(_), Some(nsid)) = (asked.option(EdnsCode::NSID), &self.identity.nsid) {
                e.options_mut().insert(EdnsOption::NSID(nsid.clone()));
            }
            if let Some(Ok(presented)) = cookie {
                let data = self
                    .identity
                    .cookies
                    .answer(presented.client(), request.src().ip());
                e.options_mut()
                    .insert(EdnsOption::Unknown(super::cookie::OPTION, data));
            }
            if let Ok(Client { ecs: Some(cs), .. }) = &client {
                let scope = if cs.source_prefix() == 0 {
                    0
                } else {
                    answer.scope
                };
                e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
                    cs.addr(),
                    cs.source_prefix(),
                    scope,
                )));
            }
            e
        });
        let qtype = request.queries.queries().first().map(|q| q.query_type());
        Prepared {
            metadata,
            answer,
            edns,
            qtype,
            start,
        }
    }

    /// Encodes a prepared response into `buf`, at most `max` bytes (TC when it does not fit),
    /// and counts it.
    pub(crate) fn encode(
        &self,
        request: &Request,
        p: &Prepared,
        max: u16,
        buf: &mut Vec<u8>,
    ) -> Option<ResponseInfo> {
        let emit = |buf: &mut Vec<u8>, records: bool| {
            buf.clear();
            let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(buf);
            encoder.set_max_size(max);
            p.response(request, records).destructive_emit(&mut encoder)
        };
        let mut result = emit(buf, true);
        // A truncated answer keeps its OPT record (RFC 6891 §7), which the records cut off may
        // have crowded out: then it goes with no records at all (TC says to ask over TCP).
        if let Ok(info) = &result {
            if info.truncation && p.edns.is_some() {
                result = emit(buf, false).map(|_| *info);
            }
        }
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, client = %request.src(), "could not encode a DNS response");
                return None;
            }
        };
        self.metrics
            .query(p.qtype, info.response_code, p.start.elapsed().as_secs_f64());
        Some(info)
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let p = self.prepare(request);
        let response = p.response(request, true);
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, client = %request.src(), "could not send a DNS response");
                let mut m = p.metadata;
                m.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: m,
                    counts: HeaderCounts::default(),
                })
            }
        };
        self.metrics
            .query(p.qtype, info.response_code, p.start.elapsed().as_secs_f64());
        info
    }
}
