//! The part of foyer's own metrics the edge exports: the writes foyer drops without telling its
//! caller. foyer reports through a `mixtrics` registry; this one hands out a counter of ours
//! for the two drop points and mixtrics' no-op for everything else (its histograms and per-operation
//! counters duplicate what `disk.rs` counts itself).
//!
//! - `channel_overflow`: an entry arrived while more than the submit queue's threshold was
//!   waiting to be written (`QUEUE` in `disk.rs`): not queued at all.
//! - `buffer_overflow`: an entry did not fit in the flusher's write buffer: not written.
//!
//! Either way the entry is simply absent on disk (a later read is a miss), so the count is the
//! only sign of it: `meridian_cache_disk_write_drops_total{reason="queue_full"|"buffer_full"}`.

use std::borrow::Cow;

use metrics::Counter;
use mixtrics::metrics::{
    BoxedCounter, BoxedCounterVec, BoxedGaugeVec, BoxedHistogramVec, CounterOps, CounterVecOps,
    RegistryOps,
};
use mixtrics::registry::noop::NoopMetricsRegistry;

/// The registry given to foyer's builder.
#[derive(Debug, Clone)]
pub(crate) struct DropRegistry {
    queue_full: Counter,
    buffer_full: Counter,
}

impl DropRegistry {
    pub(crate) fn new(node: &str) -> DropRegistry {
        crate::telemetry::prometheus();
        let c = |reason: &'static str| metrics::counter!("meridian_cache_disk_write_drops_total", "node" => node.to_string(), "reason" => reason);
        DropRegistry {
            queue_full: c("queue_full"),
            buffer_full: c("buffer_full"),
        }
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
struct InnerOps(DropRegistry);

impl CounterVecOps for InnerOps {
    fn counter(&self, labels: &[Cow<'static, str>]) -> BoxedCounter {
        match labels.get(1).map(|l| l.as_ref()) {
            Some("channel_overflow") => Box::new(Ours(self.0.queue_full.clone())),
            Some("buffer_overflow") => Box::new(Ours(self.0.buffer_full.clone())),
            _ => Box::new(NoopMetricsRegistry),
        }
    }
}

impl RegistryOps for DropRegistry {
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
        _: Cow<'static, str>,
        _: Cow<'static, str>,
        _: &'static [&'static str],
    ) -> BoxedGaugeVec {
        Box::new(NoopMetricsRegistry)
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
