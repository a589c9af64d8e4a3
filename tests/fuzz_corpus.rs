//! Replays the committed corpus of every fuzz target in `fuzz/` once, as ordinary tests: the
//! seeds and every input a fuzzing run found worth keeping (crashes included, once fixed) keep
//! passing. Long fuzzing runs are `fuzz/run.sh`, never here.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| run(&input)).is_err() {
            panic!("{target}: {} fails", path.display());
        }
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus in {}", dir.display());
}

#[test]
fn framing_corpus() {
    replay("framing", meridian::fuzz::framing);
}

#[test]
fn client_head_corpus() {
    replay("client_head", meridian::fuzz::client_head);
}

#[test]
fn origin_response_corpus() {
    replay("origin_response", meridian::fuzz::origin_response);
}

#[test]
fn cache_control_corpus() {
    replay("cache_control", meridian::fuzz::cache_control);
}

#[test]
fn range_corpus() {
    replay("range", meridian::fuzz::range);
}

#[test]
fn policy_corpus() {
    replay("policy", meridian::fuzz::policy);
}

#[test]
fn dns_corpus() {
    replay("dns", meridian::fuzz::dns);
}

#[test]
fn config_corpus() {
    replay("config", meridian::fuzz::config);
}

#[test]
fn geoip_corpus() {
    replay("geoip", meridian::fuzz::geoip);
}

#[test]
fn gossip_corpus() {
    replay("gossip", meridian::fuzz::gossip);
}

#[test]
fn disk_head_corpus() {
    replay("disk_head", meridian::fuzz::disk_head);
}
