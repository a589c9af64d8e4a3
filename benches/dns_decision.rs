//! The DNS decision for one query: GeoIP lookup (memory-mapped), region ranking, spill check,
//! rendezvous pick and ECS scope, over config/local/'s cluster map; from scratch (the general
//! path, `meridian route`) and with a UDP worker's memo of places and rankings.
//!
//! Then a whole answer to dnsperf's query (parse, decide, encode, count) by the fast path and by
//! hickory's general path.
//!
//! Run: `cargo bench --bench dns_decision`.

use criterion::{criterion_group, criterion_main, Criterion};

fn decision(c: &mut Criterion) {
    let mut d = meridian::bench::Decision::new(std::path::Path::new("config/local/dns.toml"));
    let clients: Vec<(std::net::IpAddr, u8)> = [
        ("81.2.69.142", 32),
        ("216.160.83.56", 29),
        ("175.16.199.0", 24),
        ("2001:218::", 32),
        ("198.51.100.0", 24),
        ("10.1.2.0", 24),
    ]
    .iter()
    .map(|(ip, p)| (ip.parse().unwrap(), *p))
    .collect();
    for (ip, p) in &clients {
        assert_eq!(d.decide(*ip, *p).0, 1);
        assert_eq!(d.decide_memo(*ip, *p), d.decide(*ip, *p));
    }
    c.bench_function("dns_decision/mixed_clients", |b| {
        let mut i = 0;
        b.iter(|| {
            let (ip, p) = clients[i % clients.len()];
            i += 1;
            d.decide(ip, p)
        })
    });
    c.bench_function("dns_decision/mixed_clients_memo", |b| {
        let mut i = 0;
        b.iter(|| {
            let (ip, p) = clients[i % clients.len()];
            i += 1;
            d.decide_memo(ip, p)
        })
    });
}

/// The query dnsperf sends in `benches/dns-load.sh`: `demo.meridian.test A`, RD, EDNS 4096 with
/// ECS 175.16.199.0/24.
const DNSPERF_QUERY: &str = "0000010000010000000000010464656d6f086d6572696469616e04746573740000010001000029100000000000000b0008000700011800af10c7";

fn answer(c: &mut Criterion) {
    let mut a = meridian::bench::DnsAnswer::new(std::path::Path::new("config/local/dns.toml"));
    let query: Vec<u8> = (0..DNSPERF_QUERY.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&DNSPERF_QUERY[i..i + 2], 16).unwrap())
        .collect();
    let mut out = Vec::with_capacity(512);
    assert!(a.fast(&query, &mut out).is_some());
    assert!(a.general(&query).is_some());
    c.bench_function("dns_answer/fast", |b| b.iter(|| a.fast(&query, &mut out)));
    // The same asking for AAAA: ap-east's edge has no IPv6 address, so NODATA with the SOA.
    let mut aaaa = query.clone();
    let qtype = 12 + "demo.meridian.test".len() + 2;
    aaaa[qtype..qtype + 2].copy_from_slice(&28u16.to_be_bytes());
    assert!(a.fast(&aaaa, &mut out).is_some());
    assert!(a.general(&aaaa).is_some());
    c.bench_function("dns_answer/fast_nodata", |b| {
        b.iter(|| a.fast(&aaaa, &mut out))
    });
    c.bench_function("dns_answer/general_nodata", |b| b.iter(|| a.general(&aaaa)));
    c.bench_function("dns_answer/general", |b| b.iter(|| a.general(&query)));
}

/// Coverage zones: one walk of a trie, however many zones the map lists.
fn coverage(c: &mut Criterion) {
    for n in [10, 10_000] {
        let l = meridian::bench::CoverageLookup::new(n);
        let mut i = 0;
        c.bench_function(&format!("coverage/find_{n}_zones"), |b| {
            b.iter(|| {
                i += 1;
                l.find(i)
            })
        });
    }
}

criterion_group!(benches, decision, answer, coverage);
criterion_main!(benches);
