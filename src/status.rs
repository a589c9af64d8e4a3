//! The status page of the admin listener: `GET /` serves a self-contained page (its script and
//! style come from the same listener, nothing from elsewhere) that refreshes itself from
//! `GET /status.json`: the members gossip hears with state, load, draining flags and each edge's
//! requests/s and hit ratio, the cluster map's regions on a world plot, and this node's own
//! requests/s, hit ratio and DNS answers per region over the last minutes, sampled from its
//! metrics every [`SAMPLE_EVERY`].
//!
//! Hazard: member ids, regions and versions come from gossip. They are checked there (printable,
//! bounded) and the page only ever writes them as text, never as markup; the page's
//! Content-Security-Policy allows scripts from this listener only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::top::Sample;

/// How often the node samples its own counters for the page's history.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: rates over the last five minutes.
const KEEP: usize = 31;

/// The page, its script, its style and its icon.
pub(crate) const PAGE: &str = include_str!("status/index.html");
pub(crate) const SCRIPT: &str = include_str!("status/status.js");
pub(crate) const STYLE: &str = include_str!("status/status.css");
pub(crate) const ICON: &str = include_str!("status/favicon.svg");
/// What the page may load: its own script, style and JSON, nothing else.
pub(crate) const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A region of the cluster map, placed on the page's world plot.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RegionPoint {
    pub(crate) name: String,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

impl RegionPoint {
    pub(crate) fn of(map: Option<&crate::config::ClusterMap>) -> Vec<RegionPoint> {
        map.into_iter()
            .flat_map(|m| &m.regions)
            .map(|r| RegionPoint {
                name: r.name.clone(),
                lat: r.lat,
                lon: r.lon,
            })
            .collect()
    }
}

/// This node's counters as sampled, oldest first, with the Unix time of each sample.
#[derive(Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<(u64, Sample)>>,
}

impl History {
    fn record(&self, at: u64, sample: Sample) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == KEEP {
            s.pop_front();
        }
        s.push_back((at, sample));
    }

    /// Rates between consecutive samples: one point per interval, oldest first.
    pub(crate) fn series(&self) -> Vec<serde_json::Value> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .zip(s.iter().skip(1))
            .filter(|((t0, _), (t1, _))| t1 > t0)
            .map(|((t0, a), (t1, b))| {
                let dt = (t1 - t0) as f64;
                let rate = |x: f64, y: f64| ((y - x).max(0.0) / dt * 10.0).round() / 10.0;
                let requests = (b.requests - a.requests).max(0.0);
                let hits = (b.hits - a.hits).clamp(0.0, requests);
                let answers: serde_json::Map<String, serde_json::Value> = b
                    .answers
                    .iter()
                    .map(|(region, n)| {
                        let before = a.answers.get(region).copied().unwrap_or(0.0);
                        (region.clone(), rate(before, *n).into())
                    })
                    .collect();
                serde_json::json!({
                    "time": t1,
                    "requests_per_second": rate(a.requests, b.requests),
                    "hit_ratio": (requests > 0.0).then(|| hits / requests),
                    "origin_fetches_per_second": rate(a.origin_fetches, b.origin_fetches),
                    "dns_queries_per_second": rate(a.dns_queries, b.dns_queries),
                    "dns_answers_per_second": answers,
                })
            })
            .collect()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Samples the metrics of node `node` into `history` now and every [`SAMPLE_EVERY`] until
/// `stop`.
pub(crate) async fn sample(node: String, history: Arc<History>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let sample = crate::top::parse(&crate::telemetry::render(), &node);
        history.record(unix_now(), sample);
    }
}

/// What `GET /status.json` answers.
pub(crate) fn json(
    node: &str,
    cluster: serde_json::Value,
    regions: &ArcSwap<Vec<RegionPoint>>,
    history: &History,
) -> serde_json::Value {
    serde_json::json!({
        "node": node,
        "time": unix_now(),
        "sample_seconds": SAMPLE_EVERY.as_secs(),
        "gossip": cluster["gossip"],
        "members": cluster["members"],
        "regions": &**regions.load(),
        "history": history.series(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_is_rates_between_samples_and_keeps_five_minutes() {
        let h = History::default();
        let mut s = Sample::default();
        h.record(100, s.clone());
        assert!(h.series().is_empty(), "one sample is no rate yet");
        s.requests = 100.0;
        s.hits = 75.0;
        s.answers.insert("eu-west".into(), 50.0);
        h.record(110, s.clone());
        let series = h.series();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0]["time"], 110);
        assert_eq!(series[0]["requests_per_second"], 10.0);
        assert_eq!(series[0]["hit_ratio"], 0.75);
        assert_eq!(series[0]["dns_answers_per_second"]["eu-west"], 5.0);
        for t in 0..100 {
            h.record(120 + t * 10, s.clone());
        }
        let series = h.series();
        assert_eq!(series.len(), KEEP - 1);
        // Idle intervals: no requests, no ratio.
        assert_eq!(series[0]["requests_per_second"], 0.0);
        assert!(series[0]["hit_ratio"].is_null());
    }
}
