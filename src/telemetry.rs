//! Logs and metrics: the tracing subscriber (readable text, or JSON lines) and the process-wide
//! Prometheus recorder, plus the edge's metric handles.
//!
//! Metric handles are registered once and kept, so the request path increments an atomic rather
//! than hashing a name and labels per request. Every series carries a `node` label, so several
//! nodes in one process (the demo, the tests) keep their figures apart.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::{plain_filter, LogConfig};
use crate::http::response::Label;

/// Installs the global tracing subscriber; later calls (more nodes in one process) are no-ops.
pub fn init_logging(log: &LogConfig) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // hickory's server logs two INFO lines per TCP query, and foyer (the disk tier) its
    // internals at start and stop: quiet unless the level names them.
    let mut level = log.level.clone();
    if !log.level.contains("hickory") {
        level.push_str(",hickory_server=warn,hickory_proto=warn");
    }
    if !log.level.contains("foyer") {
        level.push_str(",foyer=warn,foyer_storage=warn,foyer_memory=warn");
    }
    // RUST_LOG, when set, wins; it goes through the same parser (see `plain_filter`).
    let from_env = match std::env::var("RUST_LOG") {
        Ok(v) if plain_filter(&v) => EnvFilter::try_new(v).ok(),
        _ => None,
    };
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
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
        describe();
        metrics::gauge!(
            "meridian_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "commit" => env!("MERIDIAN_COMMIT")
        )
        .set(1.0);
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

/// Help text for every metric family (`# HELP` in the exposition).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "meridian_build_info",
        "Always 1: the version and commit of this binary, as labels"
    );
    describe_counter!(
        "meridian_http_requests_total",
        "HTTP requests answered, by cache outcome and status code"
    );
    describe_histogram!(
        "meridian_http_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's head to its response's head, by cache outcome and protocol (http/1.0, http/1.1, h2, h3)"
    );
    describe_counter!("meridian_origin_fetches_total", "Requests sent to origins");
    describe_gauge!(
        "meridian_origin_requests",
        "Requests each site has at its origins now, from before one is sent until its body is read (at most the site's max_origin_requests)"
    );
    describe_counter!(
        "meridian_origin_waits_total",
        "Requests for an origin that waited before they were sent, by what for: site_slot (max_origin_requests were all taken) or client_share (their client address held max_origin_requests_per_client); a wait that reached connect_timeout also ended in a 503 or 429. Per site, since the site was loaded (a reload starts it again)"
    );
    describe_counter!(
        "meridian_origin_errors_total",
        "Origin requests that failed, by kind (connect, timeout, protocol, body; busy: the site's max_origin_requests were all taken)"
    );
    describe_histogram!(
        "meridian_origin_fetch_duration_seconds",
        Unit::Seconds,
        "Time from sending an origin request to its response head"
    );
    describe_counter!(
        "meridian_http_received_bytes_total",
        Unit::Bytes,
        "Bytes received from clients"
    );
    describe_counter!(
        "meridian_http_sent_bytes_total",
        Unit::Bytes,
        "Bytes sent to clients"
    );
    describe_gauge!(
        "meridian_cache_stored_bytes",
        Unit::Bytes,
        "Bytes the cache holds, as cache_memory counts them"
    );
    describe_gauge!(
        "meridian_cache_stored_objects",
        "Objects (URLs) the cache holds"
    );
    describe_gauge!(
        "meridian_cache_filling_bytes",
        Unit::Bytes,
        "Bytes of responses being filled that are held in memory until stored, and of stored bodies the store let go that responses still hold"
    );
    describe_counter!(
        "meridian_cache_fills_full_total",
        "Cacheable responses passed through unstored because the fills in progress held all the memory they may (a quarter of cache_memory, at least the largest object kept in memory)"
    );
    describe_counter!(
        "meridian_cache_purged_objects_total",
        "Objects removed by purge requests"
    );
    describe_counter!(
        "meridian_purges_applied_total",
        "Cluster purges (issued on any node, spread by gossip) this edge has applied"
    );
    describe_counter!(
        "meridian_peer_requests_total",
        "Shielded misses this edge sent to a peer: answered from the peer's cache (hit), fetched by it (miss), or passed over (failed: unreachable, slow or refusing; the next owner or the origin is asked); purged counts, as well, answers not used because the peer's stored copy may predate a purge applied here (the origin is asked)"
    );
    describe_counter!(
        "meridian_peer_served_total",
        "Requests carrying a peer mark: with a valid signature (served as a peer's) or not (served as a client's)"
    );
    describe_histogram!(
        "meridian_purge_apply_delay_seconds",
        "Time from a cluster purge's issue (on the issuer's clock) to its application on this edge"
    );
    describe_gauge!(
        "meridian_http_thread_connections",
        "Client connections (TCP, HTTP/1.1 and HTTP/2) each HTTP thread of a listener serves; a new connection goes to the thread that serves fewest"
    );
    describe_gauge!(
        "meridian_edge_utilisation",
        "The load this edge publishes by gossip: the busiest of requests/s, connections and egress over edge.capacity, smoothed (1.0 = at capacity; 0 without gossip)"
    );
    describe_counter!(
        "meridian_cache_hits_total",
        "Hits served from the store, by tier (memory, disk)"
    );
    describe_counter!(
        "meridian_cache_disk_hits_total",
        "Memory misses found on the disk tier (and put back in memory)"
    );
    describe_counter!(
        "meridian_cache_disk_misses_total",
        "Memory misses the disk tier did not have either"
    );
    describe_counter!(
        "meridian_cache_disk_writes_total",
        "Entries (object heads and body chunks) queued for the disk tier"
    );
    describe_counter!(
        "meridian_cache_disk_written_bytes_total",
        Unit::Bytes,
        "Bytes of entries queued for the disk tier"
    );
    describe_counter!(
        "meridian_cache_disk_read_bytes_total",
        Unit::Bytes,
        "Bytes of entries read from the disk tier"
    );
    describe_counter!(
        "meridian_cache_disk_read_waits_total",
        "Chunk reads for responses that waited for room: the chunks responses hold had reached edge.cache_disk.read_memory"
    );
    describe_counter!(
        "meridian_cache_disk_client_waits_total",
        "Chunk reads for responses that waited for their client's share: the chunks that client address holds had reached a quarter of edge.cache_disk.read_memory"
    );
    describe_counter!(
        "meridian_cache_disk_errors_total",
        "Disk tier failures, by operation (open: the edge runs memory-only; read: a miss; write: an object or body that did not reach the disk, by an I/O error or a drop also counted in meridian_cache_disk_write_drops_total)"
    );
    describe_counter!(
        "meridian_cache_disk_dropped_total",
        "Disk entries dropped unread: failed their checksum, torn, unreadable, or a body with a chunk missing"
    );
    describe_counter!(
        "meridian_cache_disk_write_drops_total",
        "Disk writes dropped, by reason (queue_full: more than foyer's queue threshold waiting; buffer_full: its flusher's buffer full; disk_stalled: no flush completed for 5 s); the entry stays in memory only"
    );
    describe_counter!(
        "meridian_cache_disk_purged_total",
        "Disk reads that found purged variants (by a ban rule) and dropped them"
    );
    describe_gauge!(
        "meridian_cache_disk_capacity_bytes",
        Unit::Bytes,
        "Bytes of disk the disk tier takes"
    );
    describe_gauge!(
        "meridian_cache_disk_used_bytes",
        Unit::Bytes,
        "Bytes of the disk tier in blocks that hold entries (whole 4 MiB blocks, including entries written before a restart)"
    );
    describe_gauge!(
        "meridian_cache_disk_recovery_seconds",
        Unit::Seconds,
        "Time the disk tier took to open and recover its index at start"
    );
    describe_counter!(
        "meridian_tls_handshake_failures_total",
        "TLS handshakes that failed"
    );
    describe_counter!(
        "meridian_http_protocol_requests_total",
        "HTTP requests answered, by protocol (http/1.0, http/1.1, h2, h3)"
    );
    describe_counter!(
        "meridian_quic_connections_total",
        "QUIC connections (HTTP/3), by outcome (accepted: handshake done; failed: handshake failed, timed out or named no site; refused: over edge.max_connections; retried: sent a Retry to prove its address, past edge.quic.handshakes_before_retry handshakes at once)"
    );
    describe_counter!(
        "meridian_quic_stream_errors_total",
        "HTTP/3 request streams that ended in an error before a response (malformed or oversized heads, resets)"
    );
    describe_counter!(
        "meridian_reloads_total",
        "Configuration reloads, by result (ok, rejected)"
    );
    describe_counter!(
        "meridian_dns_queries_total",
        "DNS queries answered, by question type and response code"
    );
    describe_counter!(
        "meridian_dns_answers_total",
        "DNS answers that named edges, by region"
    );
    describe_counter!(
        "meridian_dns_spills_total",
        "DNS answers sent to another region because the nearest was past its high-water mark"
    );
    describe_counter!(
        "meridian_dns_fail_open_total",
        "DNS answers given with every edge because none was available"
    );
    describe_counter!(
        "meridian_dns_dropped_total",
        "DNS messages never answered, by reason (response: QR was set)"
    );
    describe_counter!(
        "meridian_dns_rate_limited_total",
        "UDP answers past dns.rate_limit, by action (slip: sent truncated, drop)"
    );
    describe_histogram!(
        "meridian_dns_answer_duration_seconds",
        Unit::Seconds,
        "Time to decide and write a DNS answer (UDP fast path: one in 16 sampled)"
    );
    describe_gauge!(
        "meridian_geoip_build_timestamp_seconds",
        Unit::Seconds,
        "Build time of the GeoIP database in use, in seconds since the Unix epoch"
    );
    describe_gauge!("meridian_cluster_members", "Cluster members as gossip reports them, by state (alive, dead, left, draining; refused: states not taken)");
    describe_counter!(
        "meridian_gossip_packets_total",
        "Gossip datagrams, by direction (sent, received, rejected)"
    );
    describe_counter!(
        "meridian_gossip_bytes_total",
        Unit::Bytes,
        "Gossip bytes, by direction"
    );
}

/// The `process_*` families Prometheus' client libraries export (Linux: from `/proc/self`),
/// appended to the exposition at each scrape.
pub(crate) fn process_metrics() -> String {
    #[cfg(target_os = "linux")]
    {
        use std::fmt::Write;
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        // SAFETY: sysconf takes an integer and reads no memory of ours.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as f64;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces) in parentheses.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            let field = |n: usize| fields.get(n).and_then(|v| v.parse::<f64>().ok());
            // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
            if let (Some(user), Some(system)) = (field(11), field(12)) {
                family(
                    "process_cpu_seconds_total",
                    "counter",
                    "User and system CPU time spent, in seconds",
                    (user + system) / ticks,
                );
            }
            if let Some(vsize) = field(20) {
                family(
                    "process_virtual_memory_bytes",
                    "gauge",
                    "Virtual memory size in bytes",
                    vsize,
                );
            }
            if let Some(rss) = field(21) {
                family(
                    "process_resident_memory_bytes",
                    "gauge",
                    "Resident memory size in bytes",
                    rss * page,
                );
            }
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
            if let (Some(boot), Some(start)) = (boot, field(19)) {
                family(
                    "process_start_time_seconds",
                    "gauge",
                    "Start time of the process since the Unix epoch, in seconds",
                    boot + start / ticks,
                );
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            family(
                "process_open_fds",
                "gauge",
                "Open file descriptors",
                fds.count() as f64,
            );
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            family(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors",
                limit.rlim_cur as f64,
            );
        }
        out
    }
    #[cfg(not(target_os = "linux"))]
    String::new()
}

/// Status codes tracked per label (100..=599).
const CODES: usize = 500;
/// The protocols requests are counted by, as their `protocol` label says them.
const PROTOCOLS: [&str; 4] = ["http/1.0", "http/1.1", "h2", "h3"];

/// The edge's metric handles.
pub(crate) struct EdgeMetrics {
    node: String,
    requests: Vec<OnceLock<Counter>>,
    /// By cache outcome and protocol, made at first use.
    request_seconds: Vec<OnceLock<Histogram>>,
    pub(crate) origin_fetches: Counter,
    origin_errors: [Counter; 5],
    pub(crate) origin_seconds: Histogram,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) stored_bytes: Gauge,
    pub(crate) stored_objects: Gauge,
    /// Bytes fills hold for the store now (set when scraped).
    pub(crate) filling_bytes: Gauge,
    /// Cacheable answers passed through unstored because fills held all they may.
    pub(crate) fill_memory_full: Counter,
    /// The smoothed utilisation this edge publishes by gossip.
    pub(crate) utilisation: Gauge,
    pub(crate) purged: Counter,
    pub(crate) tls_handshake_failures: Counter,
    /// Hits served from the memory and the disk tier.
    tier_hits: [Counter; 2],
    /// Requests by protocol: HTTP/1.0, HTTP/1.1, HTTP/2, HTTP/3.
    protocols: [Counter; 4],
    /// QUIC connections accepted, failed in the handshake, refused at the limit.
    pub(crate) quic_accepted: Counter,
    pub(crate) quic_failed: Counter,
    pub(crate) quic_refused: Counter,
    pub(crate) quic_retried: Counter,
    pub(crate) quic_stream_errors: Counter,
}

impl EdgeMetrics {
    /// Counts a hit served from `tier`.
    pub(crate) fn tier_hit(&self, tier: crate::cache::store::Tier) {
        self.tier_hits[usize::from(tier == crate::cache::store::Tier::Disk)].increment(1);
    }

    pub(crate) fn new(node: &str) -> EdgeMetrics {
        prometheus();
        let n = || metrics::Label::new("node", node.to_string());
        EdgeMetrics {
            node: node.to_string(),
            requests: (0..Label::ALL.len() * CODES).map(|_| OnceLock::new()).collect(),
            request_seconds: (0..Label::ALL.len() * PROTOCOLS.len())
                .map(|_| OnceLock::new())
                .collect(),
            origin_fetches: metrics::counter!("meridian_origin_fetches_total", vec![n()]),
            origin_errors: ["connect", "timeout", "protocol", "body", "busy"].map(|kind| {
                metrics::counter!("meridian_origin_errors_total", "node" => node.to_string(), "kind" => kind)
            }),
            origin_seconds: metrics::histogram!("meridian_origin_fetch_duration_seconds", vec![n()]),
            bytes_in: metrics::counter!("meridian_http_received_bytes_total", vec![n()]),
            bytes_out: metrics::counter!("meridian_http_sent_bytes_total", vec![n()]),
            tier_hits: ["memory", "disk"].map(|tier| {
                metrics::counter!("meridian_cache_hits_total", "node" => node.to_string(), "tier" => tier)
            }),
            stored_bytes: metrics::gauge!("meridian_cache_stored_bytes", vec![n()]),
            stored_objects: metrics::gauge!("meridian_cache_stored_objects", vec![n()]),
            filling_bytes: metrics::gauge!("meridian_cache_filling_bytes", vec![n()]),
            fill_memory_full: metrics::counter!("meridian_cache_fills_full_total", vec![n()]),
            utilisation: metrics::gauge!("meridian_edge_utilisation", vec![n()]),
            purged: metrics::counter!("meridian_cache_purged_objects_total", vec![n()]),
            tls_handshake_failures: metrics::counter!("meridian_tls_handshake_failures_total", vec![n()]),
            protocols: PROTOCOLS.map(|p| {
                metrics::counter!("meridian_http_protocol_requests_total", "node" => node.to_string(), "protocol" => p)
            }),
            quic_accepted: metrics::counter!("meridian_quic_connections_total", "node" => node.to_string(), "outcome" => "accepted"),
            quic_failed: metrics::counter!("meridian_quic_connections_total", "node" => node.to_string(), "outcome" => "failed"),
            quic_refused: metrics::counter!("meridian_quic_connections_total", "node" => node.to_string(), "outcome" => "refused"),
            quic_retried: metrics::counter!("meridian_quic_connections_total", "node" => node.to_string(), "outcome" => "retried"),
            quic_stream_errors: metrics::counter!("meridian_quic_stream_errors_total", vec![n()]),
        }
    }

    /// Counts one answered request and its latency.
    /// Counts a request answered over `version` with `code`, `seconds` after its head came.
    pub(crate) fn request(&self, label: Label, version: http::Version, code: u16, seconds: f64) {
        let pi = match version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => 0,
            http::Version::HTTP_2 => 2,
            http::Version::HTTP_3 => 3,
            _ => 1,
        };
        self.protocols[pi].increment(1);
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
        self.request_seconds[li * PROTOCOLS.len() + pi]
            .get_or_init(|| {
                metrics::histogram!(
                    "meridian_http_request_duration_seconds",
                    "node" => self.node.clone(),
                    "cache" => label.as_str(),
                    "protocol" => PROTOCOLS[pi]
                )
            })
            .record(seconds);
    }

    pub(crate) fn origin_error(&self, kind: &str) {
        let i = match kind {
            "connect" => 0,
            "timeout" => 1,
            "protocol" => 2,
            "busy" => 4,
            _ => 3,
        };
        self.origin_errors[i].increment(1);
    }
}
