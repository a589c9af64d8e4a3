//! The part of foyer's own metrics the edge exports: the writes foyer drops without telling its
//! caller, and how much of the disk holds entries. foyer reports through a `mixtrics` registry;
//! this one hands out metrics of ours for those and mixtrics' no-op for everything else (its
//! histograms and per-operation counters duplicate what `disk.rs` counts itself).
//!
//! - `channel_overflow`: an entry arrived while more than the submit queue's threshold was
//!   waiting to be written (`QUEUE` in `disk.rs`): not queued at all.
//! - `buffer_overflow`: an entry did not fit in the flusher's write buffer: not written.
//!
//! Either way the entry is simply absent on disk (a later read is a miss), so the count is the
//! only sign of it: `meridian_cache_disk_write_drops_total{reason="queue_full"|"buffer_full"}`.
//!
//! foyer's block gauges (blocks clean, being written, evictable, being reclaimed) are set whole
//! by its recovery at start and moved by one as blocks change state, so the blocks that are not
//! clean, times the block size, are the bytes of the disk that hold entries, also those written
//! before a restart: `meridian_cache_disk_used_bytes`. A block counts whole as soon as its
//! first entry is written, and until it is reclaimed even when its entries were overwritten or
//! purged. (foyer keeps no count of entries a caller can read, so objects on disk are not
//! exported.)

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge};
use mixtrics::metrics::{
    BoxedCounter, BoxedCounterVec, BoxedGauge, BoxedGaugeVec, BoxedHistogramVec, CounterOps,
    CounterVecOps, GaugeOps, GaugeVecOps, RegistryOps,
};
use mixtrics::registry::noop::NoopMetricsRegistry;

/// The registry given to foyer's builder.
#[derive(Debug, Clone)]
pub(crate) struct FoyerRegistry {
    queue_full: Counter,
    buffer_full: Counter,
    blocks: Arc<Blocks>,
}

impl FoyerRegistry {
    /// `block`: the block size the engine is built with.
    pub(crate) fn new(node: &str, block: usize) -> FoyerRegistry {
        crate::telemetry::prometheus();
        let c = |reason: &'static str| metrics::counter!("meridian_cache_disk_write_drops_total", "node" => node.to_string(), "reason" => reason);
        FoyerRegistry {
            queue_full: c("queue_full"),
            buffer_full: c("buffer_full"),
            blocks: Arc::new(Blocks {
                held: Default::default(),
                block: i64::try_from(block).unwrap_or(i64::MAX),
                used: metrics::gauge!("meridian_cache_disk_used_bytes", "node" => node.to_string()),
            }),
        }
    }
}

/// The blocks that hold entries, by foyer's state: being written, evictable, being reclaimed.
/// Under one lock with the gauge's update, so two changes at once cannot leave the gauge at the
/// older sum (blocks change state once per 4 MiB written or reclaimed: no contention).
#[derive(Debug)]
struct Blocks {
    held: Mutex<[i64; 3]>,
    block: i64,
    used: Gauge,
}

impl Blocks {
    fn update(&self, state: usize, change: impl FnOnce(&mut i64)) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut held[state]);
        let sum: i64 = held.iter().sum();
        self.used.set(sum.max(0).saturating_mul(self.block) as f64);
    }
}

/// One of foyer's block states behind our used-bytes gauge.
#[derive(Debug)]
struct BlockState(Arc<Blocks>, usize);

fn signed(val: u64) -> i64 {
    i64::try_from(val).unwrap_or(i64::MAX)
}

impl GaugeOps for BlockState {
    fn increase(&self, val: u64) {
        self.0
            .update(self.1, |n| *n = n.saturating_add(signed(val)));
    }

    fn decrease(&self, val: u64) {
        self.0
            .update(self.1, |n| *n = n.saturating_sub(signed(val)));
    }

    fn absolute(&self, val: u64) {
        self.0.update(self.1, |n| *n = signed(val));
    }
}

/// foyer's `foyer_storage_block_engine_block{name, type}`.
#[derive(Debug)]
struct BlockGauges(Arc<Blocks>);

impl GaugeVecOps for BlockGauges {
    fn gauge(&self, labels: &[Cow<'static, str>]) -> BoxedGauge {
        let state = match labels.get(1).map(|l| l.as_ref()) {
            Some("writing") => 0,
            Some("evictable") => 1,
            Some("reclaiming") => 2,
            _ => return Box::new(NoopMetricsRegistry),
        };
        Box::new(BlockState(self.0.clone(), state))
    }
}

/// Our counter behind foyer's.
#[derive(Debug)]
struct Ours(Counter);

impl CounterOps for Ours {
    fn increase(&self, val: u64) {
        self.0.increment(val);
    }
}

/// foyer's `foyer_storage_inner_op_total{name, op}`: two of its ops are drops.
#[derive(Debug)]
struct InnerOps(FoyerRegistry);

impl CounterVecOps for InnerOps {
    fn counter(&self, labels: &[Cow<'static, str>]) -> BoxedCounter {
        match labels.get(1).map(|l| l.as_ref()) {
            Some("channel_overflow") => Box::new(Ours(self.0.queue_full.clone())),
            Some("buffer_overflow") => Box::new(Ours(self.0.buffer_full.clone())),
            _ => Box::new(NoopMetricsRegistry),
        }
    }
}

impl RegistryOps for FoyerRegistry {
    fn register_counter_vec(
        &self,
        name: Cow<'static, str>,
        _: Cow<'static, str>,
        _: &'static [&'static str],
    ) -> BoxedCounterVec {
        if name == "foyer_storage_inner_op_total" {
            Box::new(InnerOps(self.clone()))
        } else {
            Box::new(NoopMetricsRegistry)
        }
    }

    fn register_gauge_vec(
        &self,
        name: Cow<'static, str>,
        _: Cow<'static, str>,
        _: &'static [&'static str],
    ) -> BoxedGaugeVec {
        if name == "foyer_storage_block_engine_block" {
            Box::new(BlockGauges(self.blocks.clone()))
        } else {
            Box::new(NoopMetricsRegistry)
        }
    }

    fn register_histogram_vec(
        &self,
        _: Cow<'static, str>,
        _: Cow<'static, str>,
        _: &'static [&'static str],
    ) -> BoxedHistogramVec {
        Box::new(NoopMetricsRegistry)
    }

    fn register_histogram_vec_with_buckets(
        &self,
        _: Cow<'static, str>,
        _: Cow<'static, str>,
        _: &'static [&'static str],
        _: Vec<f64>,
    ) -> BoxedHistogramVec {
        Box::new(NoopMetricsRegistry)
    }
}
