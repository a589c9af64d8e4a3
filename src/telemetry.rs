//! Logs and metrics: the tracing subscriber (readable text, or JSON lines) and the process-wide
//! Prometheus recorder, plus the edge's metric handles.
//!
//! Metric handles are registered once and kept, so the request path increments an atomic rather
//! than hashing a name and labels per request. What every request counts and times is kept in a
//! part per thread and published when the metrics are shown ([`render`], which everything that
//! shows them goes through). Every series carries a `node` label, so several nodes in one
//! process (the demo, the tests) keep their figures apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::formatting::{
    key_to_parts, write_help_line, write_metric_line, write_type_line,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::{plain_filter, LogConfig};
use crate::http::response::Label;
use crate::load::{Latency, LatencySnapshot, LATENCY_BOUNDS};

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
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Nanoseconds as seconds (exact for the bucket bounds: each prints as its decimal).
fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// The exposition of every metric: the exporter's, then the families the request path keeps per
/// thread ([`Hot`]), whose counters are first moved into the exporter. Whatever shows metrics
/// (`/metrics`, the status page's sampler, tests) reads them through this.
pub(crate) fn render() -> String {
    // Held to the end: an edge that stops (see `EdgeMetrics`' drop) is either live here or
    // retired, never both or neither; and one render publishes at a time.
    let hot = hot();
    for h in hot.iter() {
        h.publish();
    }
    let mut text = prometheus().render();
    write_latencies(&mut text, &hot);
    text
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// Hazard: the exporter queues every histogram sample until it is folded into buckets, which
/// happens on a scrape or an upkeep run; `build_recorder` runs no upkeep of its own, so an edge
/// nobody scrapes would grow by every request it answers. A thread runs it every second.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let latency = LATENCY_BOUNDS.map(seconds);
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

/// Every edge's [`Hot`] metrics, for [`render`] to publish.
static HOT: Mutex<Vec<Arc<Hot>>> = Mutex::new(Vec::new());

/// [`HOT`], locked (before [`RETIRED`] where both are).
fn hot() -> MutexGuard<'static, Vec<Arc<Hot>>> {
    // cannot fail in practice: nothing panics under this lock; recover the guard anyway.
    HOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// A counter the request path adds to in a part per thread ([`crate::load::Counter`]); each
/// render adds what came since the last one to the exporter's counter of the same series, so
/// two edges of one name (a node restarted in one process) add up as the exporter's did.
struct Batched {
    local: crate::load::Counter,
    published: AtomicU64,
    exported: Counter,
}

impl Batched {
    fn new(exported: Counter) -> Batched {
        Batched {
            local: crate::load::Counter::default(),
            published: AtomicU64::new(0),
            exported,
        }
    }

    fn add(&self, n: u64) {
        self.local.add(n);
    }

    fn publish(&self) {
        let now = self.local.get();
        // Renders publish one at a time (see `render`); were two to race, the one that raises
        // the mark adds the difference and the other nothing.
        let before = self.published.fetch_max(now, Ordering::Relaxed);
        if now > before {
            self.exported.increment(now - before);
        }
    }
}

/// A latency histogram of ours (the exporter does not hold it): its series' labels as the
/// exposition writes them, and the per-thread buckets.
struct Timed {
    labels: Vec<String>,
    latency: Latency,
}

impl Timed {
    fn new(name: &'static str, labels: Vec<metrics::Label>) -> Timed {
        let (_, labels) = key_to_parts(&metrics::Key::from_parts(name, labels), None);
        Timed {
            labels,
            latency: Latency::default(),
        }
    }
}

const REQUEST_SECONDS: &str = "meridian_http_request_duration_seconds";
const ORIGIN_SECONDS: &str = "meridian_origin_fetch_duration_seconds";

/// What every request adds to, kept per thread and published at each [`render`]: with the
/// exporter's own handles, both HTTP threads wrote the same cache lines several times a request
/// (five locked additions, two histogram samples each with a clock reading and a shared queue).
struct Hot {
    /// By cache outcome and status code, made at first use (boxed: a made one is ~600 bytes,
    /// and there are thousands of slots).
    requests: Vec<OnceLock<Box<Batched>>>,
    /// By cache outcome and protocol, made at first use.
    request_seconds: Vec<OnceLock<Box<Timed>>>,
    /// Requests by protocol: HTTP/1.0, HTTP/1.1, HTTP/2, HTTP/3.
    protocols: [Batched; 4],
    origin_fetches: Batched,
    origin_seconds: Timed,
}

impl Hot {
    fn publish(&self) {
        let made = self.requests.iter().filter_map(|c| c.get().map(|c| &**c));
        for c in made.chain(&self.protocols).chain([&self.origin_fetches]) {
            c.publish();
        }
    }

    /// The series of latency family `name` this edge has made.
    fn timed(&self, name: &str) -> Vec<&Timed> {
        if name == ORIGIN_SECONDS {
            return vec![&self.origin_seconds];
        }
        let made = self.request_seconds.iter().filter_map(OnceLock::get);
        made.map(|t| &**t).collect()
    }
}

impl Drop for EdgeMetrics {
    /// What an edge that stops counted and timed stays in the exposition, as the exporter kept
    /// its series: its counters' rest goes to the exporter, its latencies to [`RETIRED`].
    fn drop(&mut self) {
        let mut live = hot();
        live.retain(|h| !Arc::ptr_eq(h, &self.hot));
        let this = &*self.hot;
        this.publish();
        let mut retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
        for name in [REQUEST_SECONDS, ORIGIN_SECONDS] {
            for t in this.timed(name) {
                let series = retired.entry(name).or_default();
                let sum = series.entry(t.labels.clone()).or_default();
                sum.add(&t.latency.snapshot());
            }
        }
    }
}

/// Latency series by their labels, summed.
type Series = std::collections::BTreeMap<Vec<String>, LatencySnapshot>;

/// The latencies of edges that stopped, by family: at most one entry per series the process
/// ever had (the exporter keeps as many).
static RETIRED: Mutex<std::collections::BTreeMap<&str, Series>> =
    Mutex::new(std::collections::BTreeMap::new());

/// Writes the latency families of `hot` and of the edges that stopped (series of the same labels
/// summed).
fn write_latencies(out: &mut String, hot: &[Arc<Hot>]) {
    let families = [
        (
            REQUEST_SECONDS,
            "Time from a request's head to its response's head, by cache outcome and protocol (http/1.0, http/1.1, h2, h3)",
        ),
        (
            ORIGIN_SECONDS,
            "Time from sending an origin request to its response head",
        ),
    ];
    for (name, help) in families {
        let mut series = {
            let retired = RETIRED.lock().unwrap_or_else(|e| e.into_inner());
            retired.get(name).cloned().unwrap_or_default()
        };
        for t in hot.iter().flat_map(|h| h.timed(name)) {
            series
                .entry(t.labels.clone())
                .or_default()
                .add(&t.latency.snapshot());
        }
        if series.is_empty() {
            continue;
        }
        write_help_line(out, name, help);
        write_type_line(out, name, "histogram");
        for (labels, s) in &series {
            let mut below = 0u64;
            for (bound, n) in LATENCY_BOUNDS.iter().zip(s.counts) {
                below = below.wrapping_add(n);
                let le = Some(("le", seconds(*bound)));
                write_metric_line(out, name, Some("bucket"), labels, le, below, None);
            }
            let all = s.count();
            write_metric_line(
                out,
                name,
                Some("bucket"),
                labels,
                Some(("le", "+Inf")),
                all,
                None,
            );
            let sum = seconds(s.nanos);
            write_metric_line::<&str, f64>(out, name, Some("sum"), labels, None, sum, None);
            write_metric_line::<&str, u64>(out, name, Some("count"), labels, None, all, None);
        }
        out.push('\n');
    }
}

/// The edge's metric handles.
pub(crate) struct EdgeMetrics {
    node: String,
    hot: Arc<Hot>,
    origin_errors: [Counter; 5],
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
        let hot = Arc::new(Hot {
            requests: (0..Label::ALL.len() * CODES).map(|_| OnceLock::new()).collect(),
            request_seconds: (0..Label::ALL.len() * PROTOCOLS.len())
                .map(|_| OnceLock::new())
                .collect(),
            protocols: PROTOCOLS.map(|p| {
                Batched::new(metrics::counter!("meridian_http_protocol_requests_total", "node" => node.to_string(), "protocol" => p))
            }),
            origin_fetches: Batched::new(metrics::counter!("meridian_origin_fetches_total", vec![n()])),
            origin_seconds: Timed::new(ORIGIN_SECONDS, vec![n()]),
        });
        self::hot().push(hot.clone());
        EdgeMetrics {
            node: node.to_string(),
            hot,
            origin_errors: ["connect", "timeout", "protocol", "body", "busy"].map(|kind| {
                metrics::counter!("meridian_origin_errors_total", "node" => node.to_string(), "kind" => kind)
            }),
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
            quic_accepted: metrics::counter!("meridian_quic_connections_total", "node" => node.to_string(), "outcome" => "accepted"),
            quic_failed: metrics::counter!("meridian_quic_connections_total", "node" => node.to_string(), "outcome" => "failed"),
            quic_refused: metrics::counter!("meridian_quic_connections_total", "node" => node.to_string(), "outcome" => "refused"),
            quic_retried: metrics::counter!("meridian_quic_connections_total", "node" => node.to_string(), "outcome" => "retried"),
            quic_stream_errors: metrics::counter!("meridian_quic_stream_errors_total", vec![n()]),
        }
    }

    /// Counts a request answered over `version` with `code`, `took` after its head came.
    pub(crate) fn request(&self, label: Label, version: http::Version, code: u16, took: Duration) {
        let pi = match version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => 0,
            http::Version::HTTP_2 => 2,
            http::Version::HTTP_3 => 3,
            _ => 1,
        };
        let hot = &*self.hot;
        hot.protocols[pi].add(1);
        let li = label as usize;
        let ci = (code.clamp(100, 599) - 100) as usize;
        hot.requests[li * CODES + ci]
            .get_or_init(|| {
                Box::new(Batched::new(metrics::counter!(
                    "meridian_http_requests_total",
                    "node" => self.node.clone(),
                    "cache" => label.as_str(),
                    "code" => code.to_string()
                )))
            })
            .add(1);
        hot.request_seconds[li * PROTOCOLS.len() + pi]
            .get_or_init(|| {
                let labels = [
                    ("node", self.node.clone()),
                    ("cache", label.as_str().to_string()),
                    ("protocol", PROTOCOLS[pi].to_string()),
                ];
                let labels = labels.map(|(k, v)| metrics::Label::new(k, v));
                Box::new(Timed::new(REQUEST_SECONDS, labels.to_vec()))
            })
            .latency
            .record(took);
    }

    /// Counts a request sent to an origin.
    pub(crate) fn origin_fetch(&self) {
        self.hot.origin_fetches.add(1);
    }

    /// Records the time from sending an origin request to its response head.
    pub(crate) fn origin_took(&self, took: Duration) {
        self.hot.origin_seconds.latency.record(took);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `text` that start with `series` (a name and labels, without the value).
    fn values(text: &str, series: &str) -> Vec<f64> {
        text.lines()
            .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .collect()
    }

    #[test]
    fn per_thread_counts_and_times_show_at_every_render_summed_over_edges_of_a_name() {
        let node = "telemetry-unit-a";
        let one = EdgeMetrics::new(node);
        let ms = Duration::from_millis;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..250 {
                        one.request(Label::Miss, http::Version::HTTP_11, 200, ms(3));
                        one.origin_fetch();
                        one.origin_took(ms(2));
                    }
                });
            }
        });
        let text = render();
        let fetches = format!("meridian_origin_fetches_total{{node=\"{node}\"}}");
        let misses =
            format!("meridian_http_requests_total{{node=\"{node}\",cache=\"miss\",code=\"200\"}}");
        let miss_labels = format!("node=\"{node}\",cache=\"miss\",protocol=\"http/1.1\"");
        let count = format!("meridian_http_request_duration_seconds_count{{{miss_labels}}}");
        let le = |b: &str| {
            format!("meridian_http_request_duration_seconds_bucket{{{miss_labels},le=\"{b}\"}}")
        };
        assert_eq!(values(&text, &fetches), [1000.0], "{text}");
        assert_eq!(values(&text, &misses), [1000.0]);
        assert_eq!(values(&text, &count), [1000.0]);
        assert_eq!(values(&text, &le("0.0025")), [0.0]);
        assert_eq!(values(&text, &le("0.005")), [1000.0]);
        assert_eq!(values(&text, &le("+Inf")), [1000.0]);
        let sum = values(
            &text,
            &format!("meridian_http_request_duration_seconds_sum{{{miss_labels}}}"),
        );
        assert!((sum[0] - 3.0).abs() < 1e-9, "{sum:?}");
        let origin_sum = format!("meridian_origin_fetch_duration_seconds_sum{{node=\"{node}\"}}");
        assert!((values(&text, &origin_sum)[0] - 2.0).abs() < 1e-9);

        // A second render adds nothing that did not happen.
        assert_eq!(values(&render(), &fetches), [1000.0]);

        // A second edge of the same name (a node restarted in one process): one series each,
        // summed; what the first counted after its last render is kept when it stops.
        let two = EdgeMetrics::new(node);
        two.request(Label::Miss, http::Version::HTTP_11, 200, ms(3));
        two.origin_fetch();
        one.origin_fetch();
        drop(one);
        let text = render();
        assert_eq!(values(&text, &fetches), [1002.0], "{text}");
        assert_eq!(values(&text, &misses), [1001.0]);
        assert_eq!(values(&text, &count), [1001.0], "{text}");
        let family = "# TYPE meridian_http_request_duration_seconds histogram";
        assert_eq!(text.matches(family).count(), 1);
    }

    #[test]
    fn each_render_adds_only_what_came_since_the_last_while_others_render() {
        use std::sync::atomic::AtomicBool;
        let node = "telemetry-unit-b";
        let m = EdgeMetrics::new(node);
        let fetches = format!("meridian_origin_fetches_total{{node=\"{node}\"}}");
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Another thread renders all the while, as a scrape and the status page's sampler do.
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = render();
                }
            });
            for round in 1..=10u32 {
                for _ in 0..250 {
                    m.origin_fetch();
                }
                let shown = values(&render(), &fetches);
                let want = [f64::from(round) * 250.0];
                // The other thread stops at the last round or a failed one (the scope waits).
                stop.store(round == 10 || shown != want, Ordering::Relaxed);
                assert_eq!(shown, want, "round {round}");
            }
        });
    }
}
