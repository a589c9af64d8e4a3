//! Cluster membership: every node runs one gossip agent (chitchat, scuttlebutt anti-entropy with
//! a phi-accrual failure detector) over the sealed transport of [`transport`].
//!
//! A node publishes what it is (roles, region, public addresses, capacity, version, start time)
//! and how it is doing (load, draining, left) as chitchat keys of its own state. A poller turns
//! chitchat's state into a list of [`Member`]s (latest generation per node id, with the time each
//! was last heard) and publishes it on a watch channel; the DNS role builds its `ClusterView`
//! from it off the query path, and the admin API's `/cluster` reads it. Nothing on a request or
//! query path ever takes chitchat's lock.

pub(crate) mod transport;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    Heartbeat, NodeState,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GossipConfig;
use crate::load::{Capacity, LoadCounters, LoadMeter};
use crate::model::{Member, MemberState};
pub(crate) use transport::Keyring;
use transport::{SealedTransport, WireMetrics, WireTotals};

/// The keys a node publishes.
mod key {
    pub(super) const ROLES: &str = "roles";
    pub(super) const REGION: &str = "region";
    pub(super) const ADDRESSES: &str = "addresses";
    pub(super) const WEIGHT: &str = "weight";
    pub(super) const CAPACITY: &str = "capacity";
    pub(super) const LOAD: &str = "load";
    pub(super) const DRAINING: &str = "draining";
    pub(super) const LEFT: &str = "left";
    pub(super) const VERSION: &str = "version";
    pub(super) const STARTED: &str = "started";
    /// An edge's requests/s and hit ratio over the last second: `"12.5,0.875"` (no ratio
    /// after a second without requests: `"0.0,"`).
    pub(super) const TRAFFIC: &str = "traffic";
    /// A purge this node issued: `purge/<unix ms>` = the purge as JSON (`{"url": ...}`).
    pub(super) const PURGE_PREFIX: &str = "purge/";
    /// An edge's applied purges: the latest issue time (unix ms) applied per issuer, as JSON.
    pub(super) const PURGED: &str = "purged";
    /// Where an edge takes requests from its peers (`shield`): `ip:port` of a plain HTTP
    /// listener.
    pub(super) const PEER: &str = "peer";
    /// Where an edge takes them over TLS: `ip:port` of its first TLS listener.
    pub(super) const PEER_TLS: &str = "peer_tls";
}

/// Most purges one node keeps in its gossip state at once (within the retention).
pub(crate) const MAX_PURGES: usize = 10_000;
/// Largest purge value gossiped.
const MAX_PURGE_LEN: usize = 8 << 10;
/// Most bytes of purges one node keeps in its gossip state (every node holds them all, and a
/// joining node receives them all).
pub(crate) const MAX_PURGE_BYTES: usize = 2 << 20;

/// A purge some node issued, as gossip holds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PurgeRecord {
    /// The issuing node's id.
    pub(crate) issuer: String,
    /// When it was issued (unix ms; unique and increasing per issuer).
    pub(crate) at_ms: u64,
    /// The purge, as JSON.
    pub(crate) value: String,
}

/// How many load samples make one traffic report (requests/s and hit ratio).
const TRAFFIC_SAMPLES: u32 = 4;

/// How often an edge samples its counters; a changed load is published at the next sample.
const LOAD_SAMPLE: Duration = Duration::from_millis(250);
/// Time constant of the load's moving average.
const LOAD_TAU: Duration = Duration::from_secs(1);

/// What a node says about itself when it joins.
pub(crate) struct SelfInfo {
    pub(crate) id: String,
    pub(crate) region: String,
    pub(crate) roles: Vec<&'static str>,
    pub(crate) addresses: Vec<IpAddr>,
    /// Relative capacity (the cluster map's weight of this edge's load in its region).
    pub(crate) weight: f64,
    pub(crate) capacity: Option<Capacity>,
    /// An edge's address for peer requests (`shield`).
    pub(crate) peer: Option<SocketAddr>,
    /// And its TLS listener for them.
    pub(crate) peer_tls: Option<SocketAddr>,
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
#[error("gossip: {0}")]
pub struct GossipError(String);

/// A running gossip agent.
pub(crate) struct Gossip {
    handle: std::sync::Mutex<Option<ChitchatHandle>>,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    members: watch::Receiver<Arc<Vec<Member>>>,
    keyring: Arc<ArcSwap<Keyring>>,
    interval: Duration,
    pub(crate) settle: Duration,
    pub(crate) totals: Arc<WireTotals>,
    stop: CancellationToken,
    tracker: TaskTracker,
    /// Issue time of this node's last purge (unix ms).
    last_purge: std::sync::atomic::AtomicU64,
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Gossip {
    /// Binds the gossip listener, joins through the seeds and starts publishing. `keys`: the
    /// key file as already read and checked (else it is read here).
    pub(crate) async fn start(
        config: &GossipConfig,
        me: SelfInfo,
        keys: Option<Keyring>,
    ) -> Result<Arc<Gossip>, GossipError> {
        let keyring = match (&config.key_file, keys) {
            (Some(_), Some(keys)) => keys,
            (Some(path), None) => Keyring::load(path).map_err(GossipError)?,
            (None, _) => {
                tracing::warn!("gossip runs in clear (insecure = true): anyone who can reach {} can join and change what this cluster sees", config.listen);
                Keyring::insecure()
            }
        };
        let keyring = Arc::new(ArcSwap::from_pointee(keyring));
        let totals = Arc::new(WireTotals::default());
        let transport = SealedTransport {
            keyring: keyring.clone(),
            cluster: config.cluster.as_str().into(),
            metrics: WireMetrics::new(&me.id),
            totals: totals.clone(),
        };
        let started = unix_now();
        // MERIDIAN_TEST_GENERATION_AHEAD_MS (a test hook, undocumented on purpose) makes this
        // node claim a generation that far in the future: the forged claim the member selection
        // must refuse. It harms only the node that sets it, which its peers then ignore.
        let ahead: u64 = std::env::var("MERIDIAN_TEST_GENERATION_AHEAD_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let generation = started.as_millis() as u64 + ahead;
        let rounds = config.failure_timeout.as_secs_f64() / config.interval.as_secs_f64();
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(me.id.clone(), generation, config.advertise),
            cluster_id: config.cluster.clone(),
            gossip_interval: config.interval,
            listen_addr: config.listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                // phi is the silence over the mean time between heartbeats heard: with news at
                // least once a round, a node is dead after about `failure_timeout`.
                phi_threshold: rounds,
                sampling_window_size: 100,
                max_interval: config.failure_timeout,
                initial_interval: config.interval,
                dead_node_grace_period: Duration::from_secs(30 * 60),
            },
            marked_for_deletion_grace_period: Duration::from_secs(60 * 60),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let mut values = vec![
            (key::ROLES.to_string(), me.roles.join(",")),
            (key::REGION.to_string(), me.region.clone()),
            (
                key::ADDRESSES.to_string(),
                me.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (key::WEIGHT.to_string(), me.weight.to_string()),
            (key::LOAD.to_string(), "0".to_string()),
            (key::DRAINING.to_string(), "0".to_string()),
            (
                key::VERSION.to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            (key::STARTED.to_string(), started.as_secs().to_string()),
        ];
        if let Some(p) = me.peer {
            values.push((key::PEER.to_string(), p.to_string()));
        }
        if let Some(p) = me.peer_tls {
            values.push((key::PEER_TLS.to_string(), p.to_string()));
        }
        if let Some(c) = me.capacity {
            values.push((
                key::CAPACITY.to_string(),
                serde_json::json!({
                    "requests_per_second": c.requests_per_second,
                    "connections": c.connections,
                    "egress_per_second": c.egress_per_second,
                })
                .to_string(),
            ));
        }
        let handle = spawn_chitchat(chitchat_config, values, &transport)
            .await
            .map_err(|e| GossipError(format!("{e:#}")))?;
        let chitchat = handle.chitchat();
        let (members_tx, members) = watch::channel(Arc::new(Vec::new()));
        let gossip = Arc::new(Gossip {
            handle: std::sync::Mutex::new(Some(handle)),
            chitchat: chitchat.clone(),
            members,
            keyring,
            interval: config.interval,
            settle: config.failure_timeout,
            totals,
            stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            last_purge: std::sync::atomic::AtomicU64::new(0),
        });
        gossip.tracker.spawn(expire_purges(
            chitchat.clone(),
            config.purge_retention,
            gossip.stop.clone(),
        ));
        gossip.tracker.spawn(poll(
            chitchat,
            members_tx,
            config.interval / 2,
            config.failure_timeout,
            MemberGauges::new(&me.id),
            gossip.stop.clone(),
        ));
        tracing::info!(listen = %config.listen, advertise = %config.advertise, seeds = ?config.seeds, cluster = %config.cluster, generation, "gossip started");
        Ok(gossip)
    }

    /// The keyring, for signing and checking peer requests.
    pub(crate) fn keyring(&self) -> Arc<Keyring> {
        self.keyring.load_full()
    }

    /// The members as last polled (this node included).
    pub(crate) fn members(&self) -> Arc<Vec<Member>> {
        self.members.borrow().clone()
    }

    /// A receiver that sees every change of the member list.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Vec<Member>>> {
        self.members.clone()
    }

    async fn set(&self, key: &str, value: String) {
        set(&self.chitchat, key, value).await;
    }

    /// Publishes the edge's load (sampled from its counters) and its draining flag until the
    /// agent stops.
    pub(crate) fn publish_edge(
        &self,
        counters: Arc<LoadCounters>,
        capacity: Capacity,
        mut draining: watch::Receiver<bool>,
    ) {
        let chitchat = self.chitchat.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            let mut meter = LoadMeter::new(capacity, LOAD_TAU);
            let mut tick = tokio::time::interval(LOAD_SAMPLE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut published = String::from("0");
            let mut traffic = TrafficMeter::default();
            let mut samples = 0u32;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let c = &*counters;
                        samples = samples.wrapping_add(1);
                        if samples.is_multiple_of(TRAFFIC_SAMPLES) {
                            if let Some(text) = traffic.sample(
                                Instant::now(),
                                c.requests.get(),
                                c.hits.get(),
                            ) {
                                set(&chitchat, key::TRAFFIC, text).await;
                            }
                        }
                        let load = meter.sample(
                            Instant::now(),
                            c.requests.get(),
                            LoadCounters::get(&c.connections),
                            c.bytes_out.get(),
                        );
                        c.utilisation.store(load.to_bits(), std::sync::atomic::Ordering::Relaxed);
                        let text = format!("{load:.3}");
                        if text != published {
                            set(&chitchat, key::LOAD, text.clone()).await;
                            published = text;
                        }
                    }
                    changed = draining.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let on = *draining.borrow_and_update();
                        set(&chitchat, key::DRAINING, draining_value(on)).await;
                        tracing::info!(draining = on, "draining published");
                    }
                    _ = stop.cancelled() => break,
                }
            }
        });
    }

    /// Publishes the draining flag now (the edge's publisher also follows the drain switch).
    pub(crate) async fn publish_draining(&self, on: bool) {
        self.set(key::DRAINING, draining_value(on)).await;
    }

    /// Puts a purge (`value`, JSON) in this node's gossip state; its issue time (unix ms,
    /// later than any before it from this node), or why not.
    pub(crate) async fn issue_purge(&self, value: String) -> Result<u64, String> {
        use std::sync::atomic::Ordering;
        if value.len() > MAX_PURGE_LEN {
            return Err(format!("a purge is at most {MAX_PURGE_LEN} bytes"));
        }
        let mut c = self.chitchat.lock().await;
        let me = c.self_chitchat_id().node_id.clone();
        let state = c.self_node_state();
        let (count, bytes) = state
            .iter_prefix(key::PURGE_PREFIX)
            .fold((0, 0), |(n, b), (_, v)| (n + 1, b + v.value.len()));
        if count >= MAX_PURGES || bytes + value.len() > MAX_PURGE_BYTES {
            return Err(format!(
                "this node holds {count} purges ({bytes} bytes) within gossip.purge_retention already (at most {MAX_PURGES}, {MAX_PURGE_BYTES} bytes): purge by prefix or tag, or wait"
            ));
        }
        // MERIDIAN_TEST_PURGE_CLOCK_BEHIND_MS (a test hook, undocumented on purpose): this node's
        // clock as if it were that far behind, as after a restart on a host whose clock stepped
        // back.
        let behind: u64 = std::env::var("MERIDIAN_TEST_PURGE_CLOCK_BEHIND_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let now = (unix_now().as_millis() as u64).saturating_sub(behind);
        // Edges skip what is not later than what they applied of this node's: after a restart
        // on a clock behind the purges of its last run, issue after those.
        let applied = self
            .members
            .borrow()
            .iter()
            .filter_map(|m| m.purged.get(&*me).copied())
            .max()
            .unwrap_or(0);
        let at = now
            .max(self.last_purge.load(Ordering::Relaxed) + 1)
            .max(applied + 1);
        self.last_purge.store(at, Ordering::Relaxed);
        state.set(format!("{}{at}", key::PURGE_PREFIX), value);
        Ok(at)
    }

    /// Every purge gossip holds that was issued after `after[issuer]` (all when the issuer is
    /// not in `after`), in issue order. Gossip hands a node's keys over in the order they were
    /// set, so a purge heard implies every earlier one of its issuer was heard too.
    pub(crate) async fn purges_after(&self, after: &HashMap<String, u64>) -> Vec<PurgeRecord> {
        let c = self.chitchat.lock().await;
        let mut out = Vec::new();
        for (id, state) in c.node_states() {
            let issuer: &str = &id.node_id;
            if issuer.len() > MAX_NAME || !issuer.bytes().all(|b| b.is_ascii_graphic()) {
                continue;
            }
            let floor = after.get(issuer).copied().unwrap_or(0);
            for (k, v) in state.iter_prefix(key::PURGE_PREFIX) {
                let Some(at) = k[key::PURGE_PREFIX.len()..].parse::<u64>().ok() else {
                    continue;
                };
                if at > floor && v.value.len() <= MAX_PURGE_LEN {
                    out.push(PurgeRecord {
                        issuer: issuer.to_string(),
                        at_ms: at,
                        value: v.value.clone(),
                    });
                }
            }
        }
        out.sort_by(|a, b| (a.at_ms, &a.issuer).cmp(&(b.at_ms, &b.issuer)));
        out.dedup();
        out
    }

    /// A number that changes whenever gossip's state does (any node's key set or changed, a
    /// node come or gone): readers skip a scan when it has not moved.
    pub(crate) async fn state_version(&self) -> u64 {
        let c = self.chitchat.lock().await;
        c.node_states().values().fold(0u64, |acc, st| {
            acc.wrapping_mul(31).wrapping_add(st.max_version())
        }) ^ c.node_states().len() as u64
    }

    /// Publishes which purges this edge has applied (latest issue time per issuer).
    pub(crate) async fn publish_purged(&self, applied: &HashMap<String, u64>) {
        let text = serde_json::to_string(applied).unwrap_or_default();
        self.set(key::PURGED, text).await;
    }

    /// Whether gossip has heard any other node (its state is then being caught up).
    pub(crate) async fn heard_others(&self) -> bool {
        let c = self.chitchat.lock().await;
        let me = c.self_chitchat_id().clone();
        let heard = c.live_nodes().any(|id| *id != me);
        heard
    }

    /// Publishes a load figure now (the edge's publisher does this from its meter).
    pub(crate) async fn publish_load(&self, load: f64) {
        self.set(key::LOAD, format!("{load:.3}")).await;
    }

    /// Reads the keyring a reloaded configuration names (key rotation); `None` when gossip
    /// runs in clear.
    pub(crate) fn prepare_keys(config: &GossipConfig) -> Result<Option<Keyring>, String> {
        config.key_file.as_deref().map(Keyring::load).transpose()
    }

    /// Swaps a new keyring in.
    pub(crate) fn set_keys(&self, keyring: Keyring) {
        self.keyring.store(Arc::new(keyring));
    }

    /// Leaves the cluster: says so, gives the news a few rounds to spread, and stops.
    pub(crate) async fn leave(&self) {
        self.set(key::LEFT, "1".into()).await;
        tokio::time::sleep(self.interval * 3).await;
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        let handle = self.handle.lock().expect("gossip handle").take();
        if let Some(h) = handle {
            if let Err(e) = h.shutdown().await {
                tracing::debug!(error = %e, "gossip shutdown");
            }
        }
        tracing::info!("left the cluster");
    }

    /// Stops at once, without a goodbye (peers will find this node dead).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
        if let Some(h) = self.handle.lock().ok().and_then(|mut h| h.take()) {
            h.abort();
        }
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Turns samples of the request and hit counters into the traffic report an edge gossips;
/// `None` when the report has not changed since the last one.
#[derive(Default)]
struct TrafficMeter {
    last: Option<(Instant, u64, u64)>,
    published: String,
}

impl TrafficMeter {
    fn sample(&mut self, now: Instant, requests: u64, hits: u64) -> Option<String> {
        let (then, last_requests, last_hits) = self.last.replace((now, requests, hits))?;
        let dt = now.duration_since(then).as_secs_f64();
        if dt <= 0.0 {
            return None;
        }
        let n = requests.saturating_sub(last_requests);
        let h = hits.saturating_sub(last_hits).min(n);
        let text = if n == 0 {
            "0.0,".to_string()
        } else {
            format!("{:.1},{:.3}", n as f64 / dt, h as f64 / n as f64)
        };
        if text == self.published {
            return None;
        }
        self.published = text.clone();
        Some(text)
    }
}

/// Reads a traffic report: requests/s (finite, not negative) and the hit ratio (0..1) if any.
fn parse_traffic(text: &str) -> (f64, Option<f64>) {
    let (rps, ratio) = text.split_once(',').unwrap_or((text, ""));
    let rps = rps
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
        .unwrap_or(0.0);
    let ratio = ratio
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r));
    (rps, ratio)
}

/// Deletes this node's purges older than `retention`, once a minute, until `stop`.
async fn expire_purges(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    retention: Duration,
    stop: CancellationToken,
) {
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let oldest = unix_now().saturating_sub(retention).as_millis() as u64;
        let mut c = chitchat.lock().await;
        let state = c.self_node_state();
        let old: Vec<String> = state
            .iter_prefix(key::PURGE_PREFIX)
            .filter(|(k, _)| {
                k[key::PURGE_PREFIX.len()..]
                    .parse::<u64>()
                    .is_ok_and(|at| at < oldest)
            })
            .map(|(k, _)| k.to_string())
            .collect();
        for k in &old {
            state.delete(k);
        }
        if !old.is_empty() {
            tracing::debug!(
                expired = old.len(),
                "purges past their retention left gossip"
            );
        }
    }
}

/// Reads an edge's applied purges: at most [`MAX_PURGE_ISSUERS`] issuers with printable names.
fn parse_purged(text: &str) -> std::collections::BTreeMap<String, u64> {
    serde_json::from_str::<std::collections::BTreeMap<String, u64>>(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.len() <= MAX_NAME && k.bytes().all(|b| b.is_ascii_graphic()))
        .take(MAX_PURGE_ISSUERS)
        .collect()
}

/// Most issuers an edge's applied purges are read for.
const MAX_PURGE_ISSUERS: usize = 1024;

fn draining_value(on: bool) -> String {
    if on { "1" } else { "0" }.to_string()
}

async fn set(chitchat: &tokio::sync::Mutex<Chitchat>, key: &str, value: String) {
    chitchat.lock().await.self_node_state().set(key, value);
}

struct MemberGauges {
    alive: metrics::Gauge,
    dead: metrics::Gauge,
    left: metrics::Gauge,
    draining: metrics::Gauge,
    /// Node states gossip holds that are not taken (see `select_members`).
    refused: metrics::Gauge,
}

impl MemberGauges {
    fn new(node: &str) -> MemberGauges {
        let g = |state: &'static str| metrics::gauge!("meridian_cluster_members", "node" => node.to_string(), "state" => state);
        MemberGauges {
            alive: g("alive"),
            dead: g("dead"),
            left: g("left"),
            draining: g("draining"),
            refused: g("refused"),
        }
    }

    fn set(&self, members: &[Member]) {
        let count = |f: &dyn Fn(&Member) -> bool| members.iter().filter(|m| f(m)).count() as f64;
        self.alive.set(count(&|m| m.state == MemberState::Alive));
        self.dead.set(count(&|m| m.state == MemberState::Dead));
        self.left.set(count(&|m| m.state == MemberState::Left));
        self.draining
            .set(count(&|m| m.state == MemberState::Alive && m.draining));
    }
}

/// Keeps the member list current: on every change chitchat reports and at least twice a round
/// (for heartbeats, which chitchat does not report).
async fn poll(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    tx: watch::Sender<Arc<Vec<Member>>>,
    every: Duration,
    ahead: Duration,
    gauges: MemberGauges,
    stop: CancellationToken,
) {
    let mut changes = chitchat.lock().await.live_nodes_watcher();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard: HashMap<ChitchatId, (Heartbeat, Instant)> = HashMap::new();
    let mut states: HashMap<String, (u64, MemberState, bool)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = changes.changed() => if r.is_err() { break },
            _ = stop.cancelled() => break,
        }
        let now = Instant::now();
        let members = {
            let c = chitchat.lock().await;
            let me = c.self_chitchat_id().clone();
            let live: std::collections::HashSet<&ChitchatId> = c.live_nodes().collect();
            let mut candidates = Vec::new();
            for (id, state) in c.node_states() {
                let is_self = *id == me;
                let entry = heard.entry(id.clone()).or_insert((state.heartbeat(), now));
                if entry.0 != state.heartbeat() || is_self {
                    *entry = (state.heartbeat(), now);
                }
                let alive = live.contains(id);
                candidates.push(member(id, state, alive, entry.1, is_self));
            }
            heard.retain(|id, _| c.node_states().contains_key(id));
            let (members, refused) =
                select_members(candidates, unix_now().as_millis() as u64, ahead);
            gauges.refused.set(refused as f64);
            members
        };
        gauges.set(&members);
        for m in members.iter().filter(|m| !m.is_self) {
            let now = (m.generation, m.state, m.draining);
            match states.insert(m.id.clone(), now) {
                Some(before) if before == now => {}
                // Heard of before failure detection has judged it: not news.
                None if m.state == MemberState::Dead => {}
                before => tracing::info!(
                    member = %m.id,
                    generation = m.generation,
                    state = m.state.as_str(),
                    draining = m.draining,
                    region = %m.region,
                    was = before.map(|b| b.1.as_str()).unwrap_or("unknown"),
                    "cluster member changed"
                ),
            }
        }
        tx.send_if_modified(|old| {
            let same = old.len() == members.len()
                && old.iter().zip(&members).all(|(a, b)| a.same_state(b));
            // Keep last-heard times fresh for readers without waking the watchers.
            *old = Arc::new(members);
            !same
        });
    }
}

/// Longest member id and region accepted from gossip.
const MAX_NAME: usize = 64;

/// Whether gossip's word about a member can be taken: an id and region of printable characters
/// (no spaces, at most [`MAX_NAME`]), and a generation (its start time in ms) no further than
/// `ahead` past this node's clock.
fn acceptable(m: &Member, now_ms: u64, ahead: Duration) -> bool {
    let name = |s: &str| s.len() <= MAX_NAME && s.bytes().all(|b| b.is_ascii_graphic());
    !m.id.is_empty()
        && name(&m.id)
        && name(&m.region)
        && m.generation <= now_ms.saturating_add(ahead.as_millis() as u64)
}

/// The member list from every node state gossip holds: one member per id, the latest
/// acceptable generation, sorted by id; and how many states were refused.
///
/// Hazard: gossip is only as honest as the key holders. A node's own entry always wins over
/// what others say of it (a forged higher generation of its id would hide it, in its own view
/// too), a generation from the future is refused (else a restart, with its smaller generation,
/// could never displace it), and ids and regions with control characters or of any length never
/// reach the DNS tables or the logs.
fn select_members(candidates: Vec<Member>, now_ms: u64, ahead: Duration) -> (Vec<Member>, usize) {
    let mut refused = 0;
    let mut latest: HashMap<String, Member> = HashMap::new();
    for m in candidates {
        if !m.is_self && !acceptable(&m, now_ms, ahead) {
            refused += 1;
            continue;
        }
        match latest.get(&m.id) {
            Some(old) if old.is_self => {}
            Some(old) if !m.is_self && old.generation >= m.generation => {}
            _ => {
                latest.insert(m.id.clone(), m);
            }
        }
    }
    let mut members: Vec<Member> = latest.into_values().collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    (members, refused)
}

fn member(
    id: &ChitchatId,
    state: &NodeState,
    alive: bool,
    heard: Instant,
    is_self: bool,
) -> Member {
    let get = |k: &str| state.get(k).unwrap_or("");
    let state_of = if get(key::LEFT) == "1" {
        MemberState::Left
    } else if alive {
        MemberState::Alive
    } else {
        MemberState::Dead
    };
    Member {
        id: id.node_id.to_string(),
        generation: id.generation_id,
        gossip_addr: id.gossip_advertise_addr,
        roles: get(key::ROLES)
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
        region: get(key::REGION).to_string(),
        addresses: get(key::ADDRESSES)
            .split(',')
            .filter_map(|a| a.parse().ok())
            .collect(),
        weight: get(key::WEIGHT).parse().unwrap_or(1.0),
        load: get(key::LOAD).parse().unwrap_or(0.0),
        draining: get(key::DRAINING) == "1",
        state: state_of,
        version: get(key::VERSION).to_string(),
        started: get(key::STARTED).parse().unwrap_or(0),
        purged: parse_purged(get(key::PURGED)),
        peer: get(key::PEER).parse().ok(),
        peer_tls: get(key::PEER_TLS).parse().ok(),
        requests_per_second: parse_traffic(get(key::TRAFFIC)).0,
        hit_ratio: parse_traffic(get(key::TRAFFIC)).1,
        last_heard: heard,
        is_self,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, generation: u64, is_self: bool) -> Member {
        Member {
            generation,
            region: "eu-west".into(),
            addresses: vec!["127.0.0.12".parse().unwrap()],
            peer: None,
            ..Member::test_edge(id, "eu-west", is_self)
        }
    }

    const NOW: u64 = 1_800_000_000_000;
    const AHEAD: Duration = Duration::from_secs(2);

    fn ids(members: &[Member]) -> Vec<(String, u64, bool)> {
        members
            .iter()
            .map(|m| (m.id.clone(), m.generation, m.is_self))
            .collect()
    }

    #[test]
    fn traffic_reports_are_rates_over_the_window_and_read_back_within_bounds() {
        let mut t = TrafficMeter::default();
        let start = Instant::now();
        assert_eq!(
            t.sample(start, 100, 50),
            None,
            "the first sample is a baseline"
        );
        let text = t.sample(start + Duration::from_secs(2), 300, 200).unwrap();
        assert_eq!(text, "100.0,0.750");
        assert_eq!(parse_traffic(&text), (100.0, Some(0.75)));
        // Unchanged: nothing new to gossip.
        assert_eq!(t.sample(start + Duration::from_secs(4), 500, 350), None);
        // Idle: no ratio.
        let idle = t.sample(start + Duration::from_secs(5), 500, 350).unwrap();
        assert_eq!(parse_traffic(&idle), (0.0, None));
        // What a peer says is taken only within bounds.
        assert_eq!(parse_traffic("-5,2"), (0.0, None));
        assert_eq!(parse_traffic("NaN,0.5"), (0.0, Some(0.5)));
        assert_eq!(parse_traffic(""), (0.0, None));
    }

    #[test]
    fn a_nodes_own_entry_wins_over_a_forged_later_generation() {
        // Forged first or last: this node stays itself.
        for order in [false, true] {
            let mut c = vec![
                m("edge-a", NOW - 5000, true),
                m("edge-a", NOW + 1000, false),
            ];
            if order {
                c.reverse();
            }
            let (members, refused) = select_members(c, NOW, AHEAD);
            assert_eq!(ids(&members), [("edge-a".into(), NOW - 5000, true)]);
            assert_eq!(refused, 0);
        }
    }

    #[test]
    fn generations_from_the_future_are_refused_so_a_restart_comes_back() {
        // Another node's view: a forged generation a day ahead, and the real restart.
        let c = vec![
            m("edge-b", NOW + 86_400_000, false),
            m("edge-b", NOW - 10, false),
            m("edge-c", NOW + 1500, false), // within the clock skew allowed
        ];
        let (members, refused) = select_members(c, NOW, AHEAD);
        assert_eq!(
            ids(&members),
            [
                ("edge-b".into(), NOW - 10, false),
                ("edge-c".into(), NOW + 1500, false)
            ]
        );
        assert_eq!(refused, 1);
        // The latest acceptable generation of a node wins.
        let (members, _) = select_members(
            vec![m("edge-b", NOW - 10, false), m("edge-b", NOW - 99, false)],
            NOW,
            AHEAD,
        );
        assert_eq!(ids(&members), [("edge-b".into(), NOW - 10, false)]);
    }

    #[test]
    fn ids_and_regions_that_are_not_printable_names_are_refused() {
        let mut bad_region = m("edge-d", NOW, false);
        bad_region.region = "eu\u{1b}[31m".into();
        let c = vec![
            m("edge\u{0}x", NOW, false),
            m("edge x", NOW, false),
            m("", NOW, false),
            m(&"e".repeat(65), NOW, false),
            bad_region,
            m("edge-ok", NOW, false),
        ];
        let (members, refused) = select_members(c, NOW, AHEAD);
        assert_eq!(ids(&members), [("edge-ok".into(), NOW, false)]);
        assert_eq!(refused, 5);
    }
}
