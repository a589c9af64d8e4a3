//! The DNS decision for one query: GeoIP lookup (memory-mapped), region ranking, spill check,
//! rendezvous pick and ECS scope, over config/local/'s cluster map.
//!
//! Run: `cargo bench --bench dns_decision`.

use criterion::{criterion_group, criterion_main, Criterion};

fn decision(c: &mut Criterion) {
    let d = meridian::bench::Decision::new(std::path::Path::new("config/local/dns.toml"));
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
    }
    c.bench_function("dns_decision/mixed_clients", |b| {
        let mut i = 0;
        b.iter(|| {
            let (ip, p) = clients[i % clients.len()];
            i += 1;
            d.decide(ip, p)
        })
    });
}

criterion_group!(benches, decision);
criterion_main!(benches);
