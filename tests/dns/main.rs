//! Integration tests of the DNS role: a real server on loopback, queried over UDP and TCP with
//! hickory's wire codec (and once through hickory's stock client), with ECS from the GeoIP test
//! addresses of DESIGN.md.

#[path = "../common/dns.rs"]
mod dns;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use dns::*;
use hickory_proto::op::{OpCode, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

const LOCAL_CLUSTER: &str = include_str!("../../config/local/cluster.toml");

fn geoip() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geo/test-city.mmdb")
}

struct Dns {
    id: String,
    node: meridian::app::Node,
    udp: SocketAddr,
    v6: SocketAddr,
    dir: tempfile::TempDir,
}

impl Dns {
    async fn start(cluster: &str) -> Dns {
        Dns::start_with(cluster, &geoip()).await
    }

    async fn start_with(cluster: &str, geoip: &std::path::Path) -> Dns {
        Dns::start_dns(cluster, geoip, "").await
    }

    /// With `dns` (lines of the `[dns]` table) added to the node file.
    async fn start_dns(cluster: &str, geoip: &std::path::Path, dns: &str) -> Dns {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = format!(
            "dns-test-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.toml"), cluster).unwrap();
        let node = format!(
            "id = \"{id}\"\nregion = \"eu-west\"\nroles = [\"dns\"]\ncluster_map = \"cluster.toml\"\n[log]\nlevel = \"warn\"\n[dns]\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]\ngeoip = {:?}\n{dns}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            geoip.display().to_string(),
        );
        std::fs::write(dir.path().join("dns.toml"), node).unwrap();
        let cfg =
            meridian::config::load(&dir.path().join("dns.toml")).unwrap_or_else(|e| panic!("{e}"));
        let node = meridian::app::Node::start(cfg).await.unwrap();
        Dns {
            id,
            udp: node.dns_addrs()[0],
            v6: node.dns_addrs()[1],
            node,
            dir,
        }
    }

    async fn local() -> Dns {
        Dns::start(LOCAL_CLUSTER).await
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn ecs_clients_land_on_the_nearest_edge_with_true_scopes() {
    // The same places from a database in the GeoIP2 City layout and one in DB-IP's flat layout.
    let flat_dir = tempfile::tempdir().unwrap();
    let flat = flat_dir.path().join("flat.mmdb");
    meridian::geobuild::build(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("geo/test-networks.csv"),
        &flat,
        meridian::geobuild::Layout::Flat,
    )
    .unwrap();
    for db in [geoip(), flat] {
        ecs_clients_land_on(&Dns::start_with(LOCAL_CLUSTER, &db).await).await;
    }
}

async fn ecs_clients_land_on(d: &Dns) {
    // (ECS subnet, expected edge, expected scope)
    let cases = [
        ("81.2.69.142/32", "127.0.0.12", 31), // London → eu-west
        ("81.2.69.142/31", "127.0.0.12", 31),
        ("89.160.20.112/28", "127.0.0.12", 28), // Linköping → eu-west
        ("89.160.20.128/25", "127.0.0.12", 25),
        ("216.160.83.56/29", "127.0.0.11", 29), // Milton, WA → us-west
        ("149.101.100.0/28", "127.0.0.11", 28), // central US → us-west
        ("175.16.199.0/24", "127.0.0.13", 24),  // Changchun → ap-east
        ("202.196.224.0/20", "127.0.0.13", 20), // Philippines → ap-east
        ("67.43.156.0/24", "127.0.0.13", 24),   // Bhutan → ap-east
        ("2001:218::/32", "127.0.0.13", 32),    // Japan → ap-east
        ("2a02:cf40::/29", "127.0.0.12", 29),   // Norway → eu-west
    ];
    for tcp in [false, true] {
        for (subnet, edge, scope) in cases {
            let mut q = Ask::new("demo.meridian.test.", RecordType::A).ecs(subnet);
            q.tcp = tcp;
            let m = ask(d.udp, &q).await;
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{subnet}");
            assert!(m.metadata.authoritative);
            assert_eq!(
                addresses(&m),
                [ip(edge)],
                "{subnet} over {}",
                if tcp { "TCP" } else { "UDP" }
            );
            let (addr, source, got_scope) = ecs_of(&m).expect("ECS echoed");
            let (want_addr, want_source) = subnet.split_once('/').unwrap();
            assert_eq!(
                (addr, source),
                (ip(want_addr), want_source.parse().unwrap()),
                "echo as received"
            );
            assert_eq!(got_scope, scope, "{subnet}");
            assert_eq!(m.answers[0].ttl, 30);
        }
    }
}

#[tokio::test]
async fn without_ecs_the_source_address_decides_and_nothing_is_echoed() {
    // The querying socket's address (127.0.0.1) is pinned to ap-east: only the source address
    // can lead there, since the default region is eu-west.
    let cluster =
        format!("{LOCAL_CLUSTER}\n[[coverage]]\ncidr = \"127.0.0.0/8\"\nregion = \"ap-east\"\n");
    let d = Dns::start(&cluster).await;
    let m = ask(d.udp, &Ask::new("demo.meridian.test.", RecordType::A)).await;
    assert_eq!(addresses(&m), [ip("127.0.0.13")]);
    assert!(ecs_of(&m).is_none());
    // With ECS, the subnet decides, not the source.
    let m = ask(
        d.udp,
        &Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.142/32"),
    )
    .await;
    assert_eq!(addresses(&m), [ip("127.0.0.12")]);
    // A /0 ECS asks not to use the subnet: answered for the resolver (its source), scope 0.
    let m = ask(
        d.udp,
        &Ask::new("demo.meridian.test.", RecordType::A).ecs("0.0.0.0/0"),
    )
    .await;
    assert_eq!(addresses(&m), [ip("127.0.0.13")]);
    assert_eq!(ecs_of(&m).map(|e| e.2), Some(0));
}

/// A node asked for port 0 never lands on a port another `SO_REUSEPORT` group of this user
/// holds: it would share that group's datagrams (another node's answers to its clients). The
/// kernel's choice for a reuseport socket counts such ports as free, so with a seventh of the
/// ephemeral range held that way, 24 starts without the plain-socket probe landed on one about
/// 97 times in 100.
#[tokio::test]
async fn a_node_on_port_0_never_shares_another_groups_port() {
    use socket2::{Domain, Socket, Type};
    // Room for the held sockets, where the soft limit is lower than the hard one.
    let held_target = 4000;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit take a valid rlimit the call may read or write.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    let room = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    let held_count = held_target.min(room.saturating_sub(1000));
    if held_count < 1000 {
        eprintln!("skipped: the open-file limit ({room}) leaves no room for the held ports");
        return;
    }
    let mut held = Vec::new();
    let mut ports = std::collections::HashSet::new();
    for _ in 0..held_count {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        ports.insert(s.local_addr().unwrap().as_socket().unwrap().port());
        held.push(s);
    }
    for _ in 0..24 {
        let d = Dns::local().await;
        let port = d.udp.port();
        assert!(
            !ports.contains(&port),
            "the node took port {port}, which another reuseport group holds"
        );
        d.node.shutdown().await;
    }
}

#[tokio::test]
async fn coverage_zones_beat_geoip() {
    let cluster =
        format!("{LOCAL_CLUSTER}\n[[coverage]]\ncidr = \"81.2.69.0/24\"\nregion = \"ap-east\"\n");
    let d = Dns::start(&cluster).await;
    let m = ask(
        d.udp,
        &Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.142/32"),
    )
    .await;
    assert_eq!(
        addresses(&m),
        [ip("127.0.0.13")],
        "the coverage zone wins over GeoIP's London"
    );
    assert_eq!(ecs_of(&m).unwrap().2, 24);
    let m = ask(
        d.udp,
        &Ask::new("demo.meridian.test.", RecordType::A).ecs("198.51.100.0/24"),
    )
    .await;
    assert_eq!(addresses(&m), [ip("127.0.0.11")]);
}

#[tokio::test]
async fn zone_answers_refused_nxdomain_nodata() {
    let d = Dns::local().await;
    let soa = ask(d.udp, &Ask::new("meridian.test.", RecordType::SOA)).await;
    assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    let ns = ask(d.udp, &Ask::new("meridian.test.", RecordType::NS)).await;
    assert!(matches!(ns.answers[0].data, RData::NS(_)));
    assert_eq!(
        addresses(&Message2(ns.additionals.clone()).into()),
        [ip("127.0.0.10")],
        "glue"
    );
    let glue = ask(d.udp, &Ask::new("ns1.meridian.test.", RecordType::A)).await;
    assert_eq!(addresses(&glue), [ip("127.0.0.10")]);

    let nx = ask(d.udp, &Ask::new("nope.meridian.test.", RecordType::A)).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative);
    assert!(
        matches!(nx.authorities[0].data, RData::SOA(_)),
        "SOA in authority"
    );

    let nodata = ask(d.udp, &Ask::new("demo.meridian.test.", RecordType::MX)).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert!(matches!(nodata.authorities[0].data, RData::SOA(_)));

    let refused = ask(d.udp, &Ask::new("example.com.", RecordType::A)).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(!refused.metadata.authoritative);

    // ANY: one RRset, not everything (RFC 8482).
    let any = ask(d.udp, &Ask::new("demo.meridian.test.", RecordType::ANY)).await;
    assert_eq!(any.answers.len(), 1);
    let any = ask(d.udp, &Ask::new("meridian.test.", RecordType::ANY)).await;
    assert_eq!(any.answers.len(), 1);
    assert!(matches!(any.answers[0].data, RData::SOA(_)));
}

/// Wraps records as an answer section, to reuse `addresses`.
struct Message2(Vec<hickory_proto::rr::Record>);
impl From<Message2> for hickory_proto::op::Message {
    fn from(m: Message2) -> Self {
        let mut msg = hickory_proto::op::Message::query();
        msg.answers = m.0;
        msg
    }
}

#[tokio::test]
async fn case_is_preserved_in_the_question() {
    let d = Dns::local().await;
    let q = Ask::new("DeMo.MeRiDiAn.TeSt.", RecordType::A).ecs("81.2.69.142/32");
    let sent = q.message().to_vec().unwrap();
    assert!(
        sent.windows(4).any(|w| w == b"DeMo"),
        "the query carries mixed case"
    );
    let raw = exchange(d.udp, &sent, false).await.unwrap();
    assert!(
        raw.windows(4).any(|w| w == b"DeMo"),
        "the question keeps the case it was asked in"
    );
    let m = ask(d.udp, &q).await;
    assert_eq!(addresses(&m), [ip("127.0.0.12")]);
}

#[tokio::test]
async fn malformed_queries_get_formerr_and_other_opcodes_notimp() {
    let d = Dns::local().await;
    // ECS address bits set past the source prefix (142 = 0b1000_1110; a /28 keeps 0b1000).
    let m = ask(
        d.udp,
        &Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.142/28"),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Two questions.
    let mut two = Ask::new("demo.meridian.test.", RecordType::A).message();
    two.add_query(hickory_proto::op::Query::query(
        "meridian.test.".parse().unwrap(),
        RecordType::SOA,
    ));
    let raw = exchange(d.udp, &two.to_vec().unwrap(), false)
        .await
        .unwrap();
    let m = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // A header followed by garbage.
    let mut garbage = two.to_vec().unwrap()[..12].to_vec();
    garbage.extend_from_slice(&[0xff; 9]);
    let raw = exchange(d.udp, &garbage, false).await.unwrap();
    let m = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // A query longer than any sane one (a valid query, then 2000 bytes more).
    let mut long = Ask::new("demo.meridian.test.", RecordType::A)
        .message()
        .to_vec()
        .unwrap();
    long.extend_from_slice(&[0; 2000]);
    let raw = exchange(d.udp, &long, false).await.unwrap();
    let m = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.metadata.id, u16::from_be_bytes([long[0], long[1]]));
    // Not a QUERY.
    let mut q = Ask::new("demo.meridian.test.", RecordType::A);
    q.op_code = OpCode::Status;
    assert_eq!(
        ask(d.udp, &q).await.metadata.response_code,
        ResponseCode::NotImp
    );
    // The server is still answering.
    let m = ask(d.udp, &Ask::new("demo.meridian.test.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
}

/// Whether anything comes back for `bytes` within half a second.
async fn silence(server: SocketAddr, bytes: &[u8], tcp: bool) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let wait = std::time::Duration::from_millis(500);
    if tcp {
        let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed).await.unwrap();
        let mut buf = [0u8; 2];
        // Closed or quiet: either way, no answer.
        !matches!(tokio::time::timeout(wait, s.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
    } else {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(bytes, server).await.unwrap();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(wait, s.recv_from(&mut buf))
            .await
            .is_err()
    }
}

#[tokio::test]
async fn responses_are_never_answered() {
    let d = Dns::local().await;
    // A real answer of this server, sent back to it: what a spoofed source would make it do.
    let query = Ask::new("demo.meridian.test.", RecordType::A)
        .message()
        .to_vec()
        .unwrap();
    let answer = exchange(d.udp, &query, false).await.unwrap();
    assert_ne!(answer[2] & 0x80, 0);
    assert!(
        silence(d.udp, &answer, false).await,
        "answered its own answer"
    );
    // A response of the uncommon shapes too: NOTIMP opcode, garbage after the header, too long.
    let mut status = answer.clone();
    status[2] = 0x80 | (2 << 3);
    assert!(
        silence(d.udp, &status, false).await,
        "answered a STATUS response"
    );
    let mut garbage = answer[..12].to_vec();
    garbage.extend_from_slice(&[0xff; 9]);
    assert!(
        silence(d.udp, &garbage, false).await,
        "answered a malformed response"
    );
    let mut long = answer.clone();
    long.extend_from_slice(&[0; 2000]);
    assert!(
        silence(d.udp, &long, false).await,
        "answered a long response"
    );
    assert!(
        silence(d.udp, &answer, true).await,
        "answered a response over TCP"
    );
    // Still serving, and the drops are counted.
    let m = ask(d.udp, &Ask::new("demo.meridian.test.", RecordType::A)).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let admin = d.node.admin_addr().unwrap();
    let line = format!(
        "meridian_dns_dropped_total{{node=\"{}\",reason=\"response\"}} 4",
        d.id
    );
    let mut body = String::new();
    for _ in 0..40 {
        body = http_get(admin, "/metrics").await;
        if body.contains(&line) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(body.contains(&line), "missing {line} in {body}");
}

/// Sends a message over UDP (or TCP) and parses the answer.
async fn send(d: &Dns, m: &hickory_proto::op::Message, tcp: bool) -> hickory_proto::op::Message {
    let raw = exchange(d.udp, &m.to_vec().unwrap(), tcp)
        .await
        .expect("an answer");
    hickory_proto::op::Message::from_vec(&raw).unwrap()
}

/// The server still answers an ordinary query as before.
async fn still_answers(d: &Dns) {
    let london = Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.0/24");
    assert_eq!(addresses(&ask(d.udp, &london).await), [ip("127.0.0.12")]);
}

#[tokio::test]
async fn edns_do_bit_is_copied_into_answers() {
    let d = Dns::local().await;
    let site = || Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.0/24");
    // The DO bit is copied into the answer (RFC 3225).
    let mut m = site().message();
    m.edns.as_mut().unwrap().set_dnssec_ok(true);
    let a = send(&d, &m, false).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(a.edns.as_ref().unwrap().flags().dnssec_ok, "DO not copied");
    let a = ask(d.udp, &site()).await;
    assert!(!a.edns.as_ref().unwrap().flags().dnssec_ok);
    still_answers(&d).await;
}

#[tokio::test]
async fn edns_versions_above_0_get_badvers() {
    let d = Dns::local().await;
    let site = || Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.0/24");
    // EDNS version 1: BADVERS, with an OPT record of version 0 (RFC 6891 §6.1.3).
    let mut m = site().message();
    m.edns.as_mut().unwrap().set_version(1);
    let a = send(&d, &m, false).await;
    // 16 is BADVERS in an OPT-carrying answer (hickory's parser names it BADSIG, which shares it).
    assert_eq!(u16::from(a.metadata.response_code), 16);
    assert_eq!(a.edns.as_ref().unwrap().version(), 0);
    assert!(a.answers.is_empty());
    still_answers(&d).await;
}

#[tokio::test]
async fn an_ecs_address_longer_than_its_prefix_is_formerr() {
    let d = Dns::local().await;
    let site = || Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.0/24");
    // An ECS address longer than its source prefix needs: FORMERR (RFC 7871 §6).
    let mut raw = site().message().to_vec().unwrap();
    let n = raw.len();
    for at in [n - 13, n - 9] {
        // RDLENGTH of the OPT record, then OPTION-LENGTH of ECS: one byte more each.
        let v = u16::from_be_bytes([raw[at], raw[at + 1]]) + 1;
        raw[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
    raw.push(0);
    let a =
        hickory_proto::op::Message::from_vec(&exchange(d.udp, &raw, false).await.unwrap()).unwrap();
    assert_eq!(
        a.metadata.response_code,
        ResponseCode::FormErr,
        "a 4-byte address for a /24"
    );
    still_answers(&d).await;
}

#[tokio::test]
async fn zone_transfers_are_refused() {
    let d = Dns::local().await;
    // Zone transfers are refused, over UDP and TCP.
    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        for tcp in [false, true] {
            let m = Ask::new("meridian.test.", qtype).message();
            let a = send(&d, &m, tcp).await;
            assert_eq!(
                a.metadata.response_code,
                ResponseCode::Refused,
                "{qtype} tcp={tcp}"
            );
        }
    }
    still_answers(&d).await;
}

#[tokio::test]
async fn classes_other_than_in_are_refused() {
    let d = Dns::local().await;
    // A class other than IN for a zone name: REFUSED, not an IN answer.
    for class in [
        hickory_proto::rr::DNSClass::CH,
        hickory_proto::rr::DNSClass::HS,
    ] {
        let mut m = Ask::new("demo.meridian.test.", RecordType::A).message();
        m.queries[0].set_query_class(class);
        let a = send(&d, &m, false).await;
        assert_eq!(a.metadata.response_code, ResponseCode::Refused, "{class}");
        assert!(a.answers.is_empty());
    }
    still_answers(&d).await;
}

#[tokio::test]
async fn bytes_after_the_message_are_formerr() {
    let d = Dns::local().await;
    let site = || Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.0/24");
    // Bytes after the message: FORMERR, over UDP and TCP.
    for tcp in [false, true] {
        let mut raw = site().message().to_vec().unwrap();
        raw.extend_from_slice(&[0, 0, 0]);
        let a = hickory_proto::op::Message::from_vec(&exchange(d.udp, &raw, tcp).await.unwrap())
            .unwrap();
        assert_eq!(
            a.metadata.response_code,
            ResponseCode::FormErr,
            "trailing bytes, tcp={tcp}"
        );
    }
    still_answers(&d).await;
}

#[tokio::test]
async fn records_in_a_query_answer_section_are_formerr() {
    let d = Dns::local().await;
    // A query with a record in its answer section: FORMERR.
    let mut m = Ask::new("demo.meridian.test.", RecordType::A).message();
    m.add_answer(hickory_proto::rr::Record::from_rdata(
        "demo.meridian.test.".parse().unwrap(),
        30,
        RData::A(hickory_proto::rr::rdata::A("10.0.0.1".parse().unwrap())),
    ));
    let a = send(&d, &m, false).await;
    assert_eq!(a.metadata.response_code, ResponseCode::FormErr);
    still_answers(&d).await;
}

#[tokio::test]
async fn nsid_names_the_node_that_answered() {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption, NSIDPayload};
    let d = Dns::local().await;
    let mut m = Ask::new("demo.meridian.test.", RecordType::A).message();
    let nsid = |a: &hickory_proto::op::Message| match a.edns.as_ref()?.option(EdnsCode::NSID) {
        Some(EdnsOption::NSID(p)) => Some(String::from_utf8_lossy(p.as_ref()).into_owned()),
        _ => None,
    };
    assert_eq!(nsid(&send(&d, &m, false).await), None, "only when asked");
    m.edns
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::NSID(NSIDPayload::new(vec![]).unwrap()));
    for tcp in [false, true] {
        let a = send(&d, &m, tcp).await;
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert_eq!(nsid(&a).as_deref(), Some(d.id.as_str()), "tcp={tcp}");
    }
    // Set, and turned off.
    let named = Dns::start_dns(LOCAL_CLUSTER, &geoip(), "nsid = \"fra-dns-7\"").await;
    assert_eq!(
        nsid(&send(&named, &m, false).await).as_deref(),
        Some("fra-dns-7")
    );
    let off = Dns::start_dns(LOCAL_CLUSTER, &geoip(), "nsid = \"\"").await;
    assert_eq!(nsid(&send(&off, &m, false).await), None);
}

#[tokio::test]
async fn a_client_cookie_gets_a_server_cookie_back() {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    let d = Dns::local().await;
    let with_cookie = |data: Vec<u8>| {
        let mut m = Ask::new("demo.meridian.test.", RecordType::A).message();
        m.edns
            .as_mut()
            .unwrap()
            .options_mut()
            .insert(EdnsOption::Unknown(10, data));
        m
    };
    let cookie = |a: &hickory_proto::op::Message| match a.edns.as_ref()?.option(EdnsCode::Cookie) {
        Some(EdnsOption::Unknown(10, data)) => Some(data.clone()),
        _ => None,
    };
    let client = b"clientck".to_vec();
    let a = send(&d, &with_cookie(client.clone()), false).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&a), [ip("127.0.0.12")]);
    let back = cookie(&a).expect("a cookie in the answer");
    assert_eq!(back.len(), 24, "client cookie + RFC 9018 server cookie");
    assert_eq!(back[..8], client[..]);
    assert_eq!(back[8], 1, "version 1");
    // Presenting it again is answered as usual, with a cookie again.
    let again = send(&d, &with_cookie(back.clone()), false).await;
    assert_eq!(again.metadata.response_code, ResponseCode::NoError);
    assert_eq!(cookie(&again).unwrap()[..8], client[..]);
    // A server cookie this server did not make is no error either (RFC 7873 §5.2.3).
    let mut forged = back.clone();
    forged[20] ^= 0xff;
    let a = send(&d, &with_cookie(forged), false).await;
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    // A malformed cookie option is FORMERR (RFC 7873 §5.2.2).
    for len in [7, 12, 41] {
        let a = send(&d, &with_cookie(vec![1; len]), false).await;
        assert_eq!(
            a.metadata.response_code,
            ResponseCode::FormErr,
            "{len} bytes"
        );
    }
    // No cookie asked, none given.
    assert_eq!(
        cookie(&ask(d.udp, &Ask::new("demo.meridian.test.", RecordType::A)).await),
        None
    );
}

/// Sends `n` copies of a query from `from` at once and sorts what comes back in a second:
/// (answers, truncated answers).
async fn flood(server: SocketAddr, from: &str, n: usize) -> (usize, usize) {
    let s = tokio::net::UdpSocket::bind(from).await.unwrap();
    let q = Ask::new("demo.meridian.test.", RecordType::A)
        .message()
        .to_vec()
        .unwrap();
    for _ in 0..n {
        s.send_to(&q, server).await.unwrap();
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while let Ok(Ok((len, _))) = tokio::time::timeout_at(until, s.recv_from(&mut buf)).await {
        let m = hickory_proto::op::Message::from_vec(&buf[..len]).unwrap();
        if m.metadata.truncation {
            assert!(m.answers.is_empty());
            truncated += 1;
        } else {
            assert_eq!(addresses(&m), [ip("127.0.0.12")]);
            full += 1;
        }
    }
    (full, truncated)
}

#[tokio::test]
async fn a_flood_from_one_prefix_is_rate_limited_and_other_prefixes_are_answered() {
    let d = Dns::start_dns(
        LOCAL_CLUSTER,
        &geoip(),
        "rate_limit = { responses_per_second = 10, slip = 2 }",
    )
    .await;
    let (full, truncated) = flood(d.udp, "127.0.0.1:0", 100).await;
    assert!(
        (10..=20).contains(&full),
        "{full} full answers to a /24 allowed 10/s"
    );
    assert!(
        (35..=50).contains(&truncated),
        "{truncated} slipped (every second limited one)"
    );
    // Another /24 (127.0.1.0/24) is answered in full meanwhile, and so is TCP from the first.
    assert_eq!(flood(d.udp, "127.0.1.1:0", 5).await, (5, 0));
    let tcp = ask(d.udp, &Ask::new("demo.meridian.test.", RecordType::A).tcp()).await;
    assert_eq!(addresses(&tcp), [ip("127.0.0.12")]);
    // Without a limit, the same flood is answered whole.
    let open = Dns::local().await;
    assert_eq!(flood(open.udp, "127.0.0.1:0", 100).await, (100, 0));
}

/// The largest answer-to-query byte ratio an unauthenticated client gets from config/local's
/// zone, over every query shape it can send (types, DO, NSID, a cookie, ECS): what a reflection
/// attack through this server gains. Printed, and held small.
#[tokio::test]
async fn amplification_stays_small() {
    use hickory_proto::rr::rdata::opt::{EdnsOption, NSIDPayload};
    let d = Dns::local().await;
    let mut worst = (0.0f64, String::new());
    for name in [
        "meridian.test.",
        "demo.meridian.test.",
        "nothing.meridian.test.",
    ] {
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::ANY,
            RecordType::NS,
            RecordType::SOA,
            RecordType::TXT,
        ] {
            for (edns, extras) in [(false, false), (true, false), (true, true)] {
                let mut ask_ = Ask::new(name, qtype);
                if !edns {
                    ask_ = ask_.no_edns();
                }
                let mut m = ask_.message();
                if extras {
                    let e = m.edns.as_mut().unwrap();
                    e.set_dnssec_ok(true);
                    e.options_mut()
                        .insert(EdnsOption::NSID(NSIDPayload::new(vec![]).unwrap()));
                    e.options_mut()
                        .insert(EdnsOption::Unknown(10, b"clientck".to_vec()));
                }
                let q = m.to_vec().unwrap();
                let a = exchange(d.udp, &q, false).await.unwrap();
                let ratio = a.len() as f64 / q.len() as f64;
                if ratio > worst.0 {
                    worst = (
                        ratio,
                        format!(
                            "{name} {qtype} edns={edns} do+nsid+cookie={extras}: {} -> {} bytes",
                            q.len(),
                            a.len()
                        ),
                    );
                }
            }
        }
    }
    eprintln!("largest amplification: {:.2}x ({})", worst.0, worst.1);
    assert!(worst.0 < 4.0, "{:.2}x: {}", worst.0, worst.1);
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    // One region with 60 edges, all answered: about 1 KiB of A records.
    let mut cluster = String::from("[[region]]\nname = \"r\"\nlat = 0.0\nlon = 0.0\n");
    for i in 0..60 {
        cluster.push_str(&format!(
            "[[edge]]\nid = \"e{i}\"\nregion = \"r\"\naddresses = [\"10.0.0.{i}\"]\n"
        ));
    }
    cluster.push_str("[[zone]]\napex = \"big.test\"\nnames = [\"www\"]\ndefault_region = \"r\"\nanswers = 60\n[zone.soa]\nmname = \"ns.big.test\"\nrname = \"h.big.test\"\nserial = 1\n");
    let d = Dns::start(&cluster).await;
    let plain = ask(d.udp, &Ask::new("www.big.test.", RecordType::A).no_edns()).await;
    assert!(plain.metadata.truncation, "over 512 bytes without EDNS: TC");
    let edns = ask(d.udp, &Ask::new("www.big.test.", RecordType::A)).await;
    assert!(!edns.metadata.truncation, "fits in 1232");
    assert_eq!(edns.answers.len(), 60);
    assert_eq!(
        edns.edns.as_ref().unwrap().max_payload(),
        1232,
        "advertised"
    );
    let mut small = Ask::new("www.big.test.", RecordType::A).ecs("81.2.69.0/24");
    small.edns = Some(512);
    let cut = ask(d.udp, &small).await;
    assert!(cut.metadata.truncation);
    // The OPT record, and the ECS option in it, stay in a truncated answer (RFC 6891 §7).
    assert!(cut.edns.is_some(), "no OPT in the truncated answer");
    assert_eq!(
        ecs_of(&cut).map(|(ip, source, _)| (ip, source)),
        Some((ip("81.2.69.0"), 24))
    );
    let tcp = ask(
        d.udp,
        &Ask::new("www.big.test.", RecordType::A).no_edns().tcp(),
    )
    .await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60);
}

#[tokio::test]
async fn ipv6_transport_and_aaaa() {
    let cluster = LOCAL_CLUSTER.replace(
        "addresses = [\"127.0.0.12\"]",
        "addresses = [\"127.0.0.12\", \"::1\"]",
    );
    let d = Dns::start(&cluster).await;
    let m = ask(
        d.v6,
        &Ask::new("demo.meridian.test.", RecordType::AAAA).ecs("2a02:cf40::/29"),
    )
    .await;
    assert_eq!(addresses(&m), [ip("::1")]);
    assert_eq!(ecs_of(&m).unwrap().2, 29);
    // An edge with no IPv6 address: NODATA with the SOA.
    let m = ask(
        d.v6,
        &Ask::new("demo.meridian.test.", RecordType::AAAA).ecs("2001:218::/32"),
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(matches!(m.authorities[0].data, RData::SOA(_)));
}

/// A City database of 4000 networks in Seattle (10.0.0.0/24 to 10.15.159.0/24, each its own
/// city, so the file spans many pages) and London's test network.
fn big_geoip(dir: &std::path::Path) -> PathBuf {
    let mut csv = String::from("network,city,latitude,longitude,country\n");
    csv.push_str("81.2.69.142/31,London,51.5142,-0.0931,GB\n");
    for i in 0..4000u32 {
        csv.push_str(&format!(
            "10.{}.{}.0/24,Seattle {i},{},{},US\n",
            i / 256,
            i % 256,
            47.6 + f64::from(i) * 1e-5,
            -122.3 - f64::from(i) * 1e-5
        ));
    }
    std::fs::write(dir.join("big.csv"), csv).unwrap();
    let out = dir.join("big.mmdb");
    meridian::geobuild::build(&dir.join("big.csv"), &out, Default::default()).unwrap();
    out
}

#[tokio::test]
async fn a_geoip_file_cut_or_scribbled_in_place_changes_nothing() {
    let files = tempfile::tempdir().unwrap();
    let db = big_geoip(files.path());
    let whole = std::fs::read(&db).unwrap();
    assert!(whole.len() > 64 * 1024, "{} bytes", whole.len());
    let d = Dns::start_with(LOCAL_CLUSTER, &db).await;
    let seattle = |i: u32| {
        Ask::new("demo.meridian.test.", RecordType::A).ecs(&format!(
            "10.{}.{}.7/32",
            i / 256,
            i % 256
        ))
    };
    assert_eq!(
        addresses(&ask(d.udp, &seattle(1)).await),
        [ip("127.0.0.11")]
    );
    // Cut in place (what `truncate` or a `cp` over the live file does): lookups of networks
    // far past the cut are answered as before. A mapped file would raise SIGBUS here.
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(4096).unwrap();
    drop(f);
    for i in [3999, 2500, 1234] {
        assert_eq!(
            addresses(&ask(d.udp, &seattle(i)).await),
            [ip("127.0.0.11")],
            "10.{}.{}.7 after the cut",
            i / 256,
            i % 256
        );
    }
    // A reload does not take the cut file, and keeps the database it had.
    let err = d.node.reload().unwrap_err();
    assert!(err.contains("big.mmdb"), "{err}");
    assert_eq!(
        addresses(&ask(d.udp, &seattle(3000)).await),
        [ip("127.0.0.11")]
    );
    // A scribbled search tree (every node's right record pointing far past the data) is
    // refused whole, at check and at reload, instead of sending clients to the default region.
    let mut scribbled = whole.clone();
    for node in scribbled[..24_000].chunks_mut(6) {
        node[3..].copy_from_slice(&[0xff, 0xff, 0xf0]);
    }
    std::fs::write(&db, &scribbled).unwrap();
    let err = d.node.reload().unwrap_err();
    assert!(err.contains("big.mmdb") && err.contains("valid"), "{err}");
    let err = meridian::geoip::GeoIp::open(&db).unwrap_err().to_string();
    assert!(err.contains("big.mmdb"), "{err}");
    assert_eq!(
        addresses(&ask(d.udp, &seattle(3999)).await),
        [ip("127.0.0.11")]
    );
    // Not a file at all.
    let err = meridian::geoip::GeoIp::open(std::path::Path::new("/dev/zero"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    // The whole file again: taken.
    std::fs::write(&db, &whole).unwrap();
    d.node.reload().unwrap();
    assert_eq!(
        addresses(&ask(d.udp, &seattle(77)).await),
        [ip("127.0.0.11")]
    );
}

#[tokio::test]
async fn reload_swaps_maps_and_rejects_a_broken_one() {
    let d = Dns::local().await;
    let london = Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.142/32");
    assert_eq!(addresses(&ask(d.udp, &london).await), [ip("127.0.0.12")]);
    let moved =
        format!("{LOCAL_CLUSTER}\n[[coverage]]\ncidr = \"81.2.69.0/24\"\nregion = \"us-west\"\n");
    std::fs::write(d.dir.path().join("cluster.toml"), moved).unwrap();
    d.node.reload().unwrap();
    assert_eq!(addresses(&ask(d.udp, &london).await), [ip("127.0.0.11")]);
    std::fs::write(d.dir.path().join("cluster.toml"), "[[region]]\nname = 1\n").unwrap();
    let err = d.node.reload().unwrap_err();
    assert!(err.contains("cluster.toml"), "{err}");
    assert_eq!(
        addresses(&ask(d.udp, &london).await),
        [ip("127.0.0.11")],
        "the old map stays"
    );
}

#[tokio::test]
async fn metrics_count_queries_and_answers() {
    let d = Dns::local().await;
    ask(
        d.udp,
        &Ask::new("demo.meridian.test.", RecordType::A).ecs("81.2.69.142/32"),
    )
    .await;
    ask(d.udp, &Ask::new("example.com.", RecordType::A)).await;
    let admin = d.node.admin_addr().unwrap();
    let node = format!("node=\"{}\"", d.id);
    let lines = [
        format!("meridian_dns_queries_total{{{node},type=\"A\",rcode=\"NOERROR\"}} 1"),
        format!("meridian_dns_queries_total{{{node},type=\"A\",rcode=\"REFUSED\"}} 1"),
        format!("meridian_dns_answers_total{{{node},region=\"eu-west\"}} 1"),
        format!("meridian_dns_answer_duration_seconds_bucket{{{node}"),
        // The GeoIP database's build time, so its age can be alerted on.
        format!("meridian_geoip_build_timestamp_seconds{{{node}}} 1"),
    ];
    // UDP threads hand their counts over every 50 ms, or when idle for 100 ms.
    let mut body = String::new();
    for _ in 0..40 {
        body = http_get(admin, "/metrics").await;
        if lines.iter().all(|l| body.contains(l)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for line in lines {
        assert!(body.contains(&line), "missing {line} in {body}");
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn hickory_stock_client_over_udp() {
    use hickory_proto::op::{DnsRequest, DnsRequestOptions};
    use hickory_server::net::client::Client;
    use hickory_server::net::runtime::TokioRuntimeProvider;
    use hickory_server::net::udp::UdpClientStream;
    use hickory_server::net::xfer::DnsHandle;
    let d = Dns::local().await;
    let stream = UdpClientStream::builder(d.udp, TokioRuntimeProvider::default()).build();
    let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    let msg = Ask::new("demo.meridian.test.", RecordType::A)
        .ecs("175.16.199.0/24")
        .message();
    let mut responses = client.send(DnsRequest::new(msg, DnsRequestOptions::default()));
    use futures_util_lite::StreamNext;
    let resp = responses
        .next_item()
        .await
        .expect("a response")
        .expect("no error");
    let m: hickory_proto::op::Message = resp.into();
    assert_eq!(addresses(&m), [ip("127.0.0.13")]);
}

/// `StreamExt::next` without a futures dependency.
mod futures_util_lite {
    use std::future::poll_fn;
    use std::pin::Pin;

    pub trait StreamNext: futures_core::Stream + Unpin + Sized {
        async fn next_item(&mut self) -> Option<Self::Item> {
            poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
        }
    }
    impl<S: futures_core::Stream + Unpin> StreamNext for S {}
}
