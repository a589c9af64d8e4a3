//! Counters the HTTP path feeds: requests, hits, open connections and bytes each way.
//!
//! Relaxed atomics, one addition per event; readers (the admin API's `/metrics`, the load
//! reports of the cluster) sample them. Nothing here blocks. What every request and every read
//! and write adds to is a [`Counter`]: a part per thread, summed when read.

use std::sync::atomic::{AtomicU64, Ordering};

/// A running total that each thread adds to in a part of its own, on a cache line of its own:
/// the HTTP threads count every request and every read and write, and one shared atomic went
/// back and forth between their cores at each (a locked add on a contended line). Reading
/// sums the parts; the part of a thread that ended stays counted (and is taken up by the
/// next thread that gets its id).
#[derive(Debug, Default)]
pub(crate) struct Counter {
    parts: thread_local::ThreadLocal<Part>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Part(AtomicU64);

impl Counter {
    pub(crate) fn add(&self, n: u64) {
        bump(&self.parts.get_or_default().0, n);
    }

    pub(crate) fn get(&self) -> u64 {
        self.parts
            .iter()
            .fold(0u64, |sum, p| sum.wrapping_add(p.0.load(Ordering::Relaxed)))
    }
}

/// Upper bounds of the latency buckets (Prometheus' `le`), in nanoseconds: 0.5 ms to 10 s.
pub(crate) const LATENCY_BOUNDS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram each thread records into a part of its own, like [`Counter`]: the count
/// of each bucket and the sum. The exporter's histogram took a clock reading, a shared
/// generation count and a push onto a shared queue per sample (folded into buckets later), so
/// both HTTP threads wrote the same lines at every request; here a sample is two additions on
/// the recording thread's own line.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    parts: thread_local::ThreadLocal<LatencyPart>,
}

/// One thread's buckets (the last counts what is past every bound) and sum: 128 bytes.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LatencyPart {
    counts: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    nanos: AtomicU64,
}

/// What a [`Latency`] holds, summed over its threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LatencySnapshot {
    /// Samples in each bucket alone (not cumulative); the last is past every bound.
    pub(crate) counts: [u64; LATENCY_BOUNDS.len() + 1],
    /// The sum of the samples, in nanoseconds.
    pub(crate) nanos: u64,
}

/// Adds `n` to an atomic only this thread writes: a load and a store, no locked instruction.
fn bump(part: &AtomicU64, n: u64) {
    part.store(
        part.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl Latency {
    pub(crate) fn record(&self, took: std::time::Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // The first bucket whose bound is at least the sample (Prometheus: value <= le).
        let bucket = LATENCY_BOUNDS.partition_point(|&bound| bound < nanos);
        let part = self.parts.get_or_default();
        bump(&part.counts[bucket], 1);
        bump(&part.nanos, nanos);
    }

    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        let mut sum = LatencySnapshot::default();
        for part in self.parts.iter() {
            sum.add(&LatencySnapshot {
                counts: std::array::from_fn(|i| part.counts[i].load(Ordering::Relaxed)),
                nanos: part.nanos.load(Ordering::Relaxed),
            });
        }
        sum
    }
}

impl LatencySnapshot {
    pub(crate) fn add(&mut self, other: &LatencySnapshot) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.wrapping_add(theirs);
        }
        self.nanos = self.nanos.wrapping_add(other.nanos);
    }

    /// Every sample.
    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |n, c| n.wrapping_add(*c))
    }
}

/// Running totals of one edge.
#[derive(Debug, Default)]
pub(crate) struct LoadCounters {
    pub(crate) requests: Counter,
    pub(crate) hits: Counter,
    pub(crate) connections: AtomicU64,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    /// The latest smoothed utilisation, as `f64` bits (set by whoever meters the load).
    pub(crate) utilisation: AtomicU64,
}

impl LoadCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What an edge can take: the denominators of its utilisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Capacity {
    pub(crate) requests_per_second: f64,
    pub(crate) connections: f64,
    pub(crate) egress_per_second: f64,
}

/// Turns samples of [`LoadCounters`] into a smoothed utilisation: the highest of requests/s,
/// open connections and egress bytes/s over their capacity, as an exponentially weighted moving
/// average with a time constant of `tau` (so a step change shows 63% after `tau`).
#[derive(Debug)]
pub(crate) struct LoadMeter {
    capacity: Capacity,
    tau: f64,
    last: Option<(std::time::Instant, u64, u64)>,
    smoothed: f64,
}

impl LoadMeter {
    pub(crate) fn new(capacity: Capacity, tau: std::time::Duration) -> LoadMeter {
        LoadMeter {
            capacity,
            tau: tau.as_secs_f64().max(1e-3),
            last: None,
            smoothed: 0.0,
        }
    }

    /// Feeds one sample taken at `now`; returns the smoothed utilisation.
    pub(crate) fn sample(
        &mut self,
        now: std::time::Instant,
        requests: u64,
        connections: u64,
        bytes_out: u64,
    ) -> f64 {
        let Some((then, last_requests, last_bytes)) = self.last.replace((now, requests, bytes_out))
        else {
            return self.smoothed;
        };
        let dt = now.duration_since(then).as_secs_f64();
        if dt <= 0.0 {
            return self.smoothed;
        }
        let rps = requests.saturating_sub(last_requests) as f64 / dt;
        let egress = bytes_out.saturating_sub(last_bytes) as f64 / dt;
        let c = &self.capacity;
        let now_load = (rps / c.requests_per_second)
            .max(connections as f64 / c.connections)
            .max(egress / c.egress_per_second);
        let alpha = 1.0 - (-dt / self.tau).exp();
        self.smoothed += alpha * (now_load - self.smoothed);
        self.smoothed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_counter_sums_every_threads_part_also_of_threads_that_ended() {
        let c = std::sync::Arc::new(Counter::default());
        c.add(5);
        let threads: Vec<_> = (0..4u64)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(i + 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 5 + 1000 * (1 + 2 + 3 + 4));
        c.add(1);
        assert_eq!(c.get(), 10_006);
    }

    #[test]
    fn latency_counts_each_sample_in_the_first_bucket_at_or_above_it_on_every_thread() {
        let l = std::sync::Arc::new(Latency::default());
        let ms = Duration::from_millis;
        // On a bound (0.5 ms), just past it, past every bound, zero.
        for d in [
            Duration::from_micros(500),
            Duration::from_nanos(500_001),
            ms(20_000),
            ms(0),
        ] {
            l.record(d);
        }
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        l.record(ms(30));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = l.snapshot();
        let mut want = [0u64; LATENCY_BOUNDS.len() + 1];
        want[0] = 2; // 0 and exactly 0.5 ms
        want[1] = 1; // 0.500001 ms
        want[6] = 300; // 30 ms: (25 ms, 50 ms]
        want[LATENCY_BOUNDS.len()] = 1; // 20 s
        assert_eq!(s.counts, want);
        assert_eq!(s.count(), 304);
        assert_eq!(
            s.nanos,
            500_000 + 500_001 + 20_000_000_000 + 300 * 30_000_000
        );
    }

    #[test]
    fn utilisation_is_the_busiest_dimension_smoothed() {
        let cap = Capacity {
            requests_per_second: 100.0,
            connections: 10.0,
            egress_per_second: 1000.0,
        };
        let mut m = LoadMeter::new(cap, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(m.sample(t0, 0, 0, 0), 0.0);
        // 50 req/s (0.5), 2 connections (0.2), 100 B/s (0.1) for a long time: converges to 0.5.
        let mut load = 0.0;
        for i in 1..=40 {
            load = m.sample(
                t0 + Duration::from_millis(250 * i),
                12 * i + i / 2,
                2,
                25 * i,
            );
        }
        assert!((load - 0.5).abs() < 0.02, "{load}");
        // 20 open connections on top: 2.0 dominates; one time constant reaches ~63% of the step.
        let base = t0 + Duration::from_millis(250 * 40);
        let before = load;
        for i in 1..=4 {
            load = m.sample(base + Duration::from_millis(250 * i), 500, 20, 1000);
        }
        let expected = before + (2.0 - before) * (1.0 - (-1.0f64).exp());
        assert!((load - expected).abs() < 0.05, "{load} vs {expected}");
    }
}
