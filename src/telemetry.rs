//! Logs and metrics: the tracing subscriber (readable text, or JSON lines) and the process-wide
//! Prometheus recorder, plus the edge's metric handles.
//!
//! Metric handles are registered once and kept, so the request path increments an atomic rather
//! than hashing a name and labels per request. Every series carries a `node` label, so several
//! nodes in one process (the demo, the tests) keep their figures apart.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogConfig;
use crate::http::response::Label;

/// Installs the global tracing subscriber; later calls (more nodes in one process) are no-ops.
pub fn init_logging(log: &LogConfig) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // hickory's server logs two INFO lines per TCP query: quiet unless the level names it.
    let level = if log.level.contains("hickory") {
        log.level.clone()
    } else {
        format!("{},hickory_server=warn,hickory_proto=warn", log.level)
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into files or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if log.json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The process-wide Prometheus recorder, installed on first use.
///
/// Hazard: the exporter queues every histogram sample until it is folded into buckets, which
/// happens on a scrape or an upkeep run; `build_recorder` runs no upkeep of its own, so an edge
/// nobody scrapes would grow by every request it answers. A thread runs it every second.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread; memory grows until /metrics is scraped");
        }
        handle
    })
}

/// Status codes tracked per label (100..=599).
const CODES: usize = 500;

/// The edge's metric handles.
pub(crate) struct EdgeMetrics {
    node: String,
    requests: Vec<OnceLock<Counter>>,
    request_seconds: Vec<Histogram>,
    pub(crate) origin_fetches: Counter,
    origin_errors: [Counter; 4],
    pub(crate) origin_seconds: Histogram,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) stored_bytes: Gauge,
    pub(crate) stored_objects: Gauge,
    pub(crate) purged: Counter,
    pub(crate) tls_handshake_failures: Counter,
}

impl EdgeMetrics {
    pub(crate) fn new(node: &str) -> EdgeMetrics {
        prometheus();
        let n = || metrics::Label::new("node", node.to_string());
        EdgeMetrics {
            node: node.to_string(),
            requests: (0..Label::ALL.len() * CODES).map(|_| OnceLock::new()).collect(),
            request_seconds: Label::ALL
                .iter()
                .map(|l| {
                    metrics::histogram!("meridian_http_request_duration_seconds", "node" => node.to_string(), "cache" => l.as_str())
                })
                .collect(),
            origin_fetches: metrics::counter!("meridian_origin_fetches_total", vec![n()]),
            origin_errors: ["connect", "timeout", "protocol", "body"].map(|kind| {
                metrics::counter!("meridian_origin_errors_total", "node" => node.to_string(), "kind" => kind)
            }),
            origin_seconds: metrics::histogram!("meridian_origin_fetch_duration_seconds", vec![n()]),
            bytes_in: metrics::counter!("meridian_http_received_bytes_total", vec![n()]),
            bytes_out: metrics::counter!("meridian_http_sent_bytes_total", vec![n()]),
            stored_bytes: metrics::gauge!("meridian_cache_stored_bytes", vec![n()]),
            stored_objects: metrics::gauge!("meridian_cache_stored_objects", vec![n()]),
            purged: metrics::counter!("meridian_cache_purged_objects_total", vec![n()]),
            tls_handshake_failures: metrics::counter!("meridian_tls_handshake_failures_total", vec![n()]),
        }
    }

    /// Counts one answered request and its latency.
    pub(crate) fn request(&self, label: Label, code: u16, seconds: f64) {
        let li = label as usize;
        let ci = (code.clamp(100, 599) - 100) as usize;
        self.requests[li * CODES + ci]
            .get_or_init(|| {
                metrics::counter!(
                    "meridian_http_requests_total",
                    "node" => self.node.clone(),
                    "cache" => label.as_str(),
                    "code" => code.to_string()
                )
            })
            .increment(1);
        self.request_seconds[li].record(seconds);
    }

    pub(crate) fn origin_error(&self, kind: &str) {
        let i = match kind {
            "connect" => 0,
            "timeout" => 1,
            "protocol" => 2,
            _ => 3,
        };
        self.origin_errors[i].increment(1);
    }
}
