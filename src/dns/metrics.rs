//! The DNS role's metric handles, registered once: queries by type and response code, answers
//! by region, spills, fail-opens, and answer latency. All labelled with `node`.

use metrics::{Counter, Histogram};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::steering::Pick;

const TYPES: [&str; 7] = ["A", "AAAA", "SOA", "NS", "ANY", "OTHER", "NONE"];
const CODES: [&str; 7] = [
    "NOERROR", "NXDOMAIN", "REFUSED", "FORMERR", "NOTIMP", "SERVFAIL", "BADVERS",
];

/// Metric handles of one DNS node.
pub(crate) struct DnsMetrics {
    node: String,
    queries: Vec<Counter>,
    latency: Histogram,
    spills: Counter,
    fail_open: Counter,
    /// Datagrams that were themselves responses (QR = 1), never answered.
    responses_dropped: Counter,
    /// UDP answers past the rate limit: sent truncated, and dropped.
    limited_slipped: Counter,
    limited_dropped: Counter,
    /// Answers by region index, grown as regions appear (by reloads).
    answers: std::sync::RwLock<Vec<Counter>>,
    region_names: std::sync::RwLock<Vec<String>>,
}

impl DnsMetrics {
    pub(crate) fn new(node: &str, regions: &[String]) -> DnsMetrics {
        crate::telemetry::prometheus();
        let mut queries = Vec::new();
        for t in TYPES {
            for c in CODES {
                queries.push(metrics::counter!("meridian_dns_queries_total", "node" => node.to_string(), "type" => t, "rcode" => c));
            }
        }
        let m = DnsMetrics {
            node: node.to_string(),
            queries,
            latency: metrics::histogram!("meridian_dns_answer_duration_seconds", "node" => node.to_string()),
            spills: metrics::counter!("meridian_dns_spills_total", "node" => node.to_string()),
            fail_open: metrics::counter!("meridian_dns_fail_open_total", "node" => node.to_string()),
            responses_dropped: metrics::counter!("meridian_dns_dropped_total", "node" => node.to_string(), "reason" => "response"),
            limited_slipped: metrics::counter!("meridian_dns_rate_limited_total", "node" => node.to_string(), "action" => "slip"),
            limited_dropped: metrics::counter!("meridian_dns_rate_limited_total", "node" => node.to_string(), "action" => "drop"),
            answers: Default::default(),
            region_names: Default::default(),
        };
        m.set_regions(regions);
        m
    }

    /// Registers the answer counters of the current regions.
    pub(crate) fn set_regions(&self, regions: &[String]) {
        let counters = regions
            .iter()
            .map(|r| metrics::counter!("meridian_dns_answers_total", "node" => self.node.clone(), "region" => r.clone()))
            .collect();
        *self.answers.write().unwrap_or_else(|e| e.into_inner()) = counters;
        *self.region_names.write().unwrap_or_else(|e| e.into_inner()) = regions.to_vec();
    }

    /// An answer past the rate limit went out truncated (`true`) or not at all.
    pub(crate) fn rate_limited(&self, slipped: bool) {
        if slipped {
            self.limited_slipped.increment(1);
        } else {
            self.limited_dropped.increment(1);
        }
    }

    /// A message with QR = 1 arrived and was dropped.
    pub(crate) fn response_dropped(&self) {
        self.responses_dropped.increment(1);
    }

    pub(crate) fn query(&self, qtype: Option<RecordType>, code: ResponseCode, seconds: f64) {
        let t = match qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::SOA) => 2,
            Some(RecordType::NS) => 3,
            Some(RecordType::ANY) => 4,
            Some(_) => 5,
            None => 6,
        };
        let c = match code {
            ResponseCode::NoError => 0,
            ResponseCode::NXDomain => 1,
            ResponseCode::Refused => 2,
            ResponseCode::FormErr => 3,
            ResponseCode::NotImp => 4,
            ResponseCode::BADVERS => 6,
            _ => 5,
        };
        self.queries[t * CODES.len() + c].increment(1);
        self.latency.record(seconds);
    }

    /// Records one answer's latency.
    pub(crate) fn latency(&self, seconds: f64) {
        self.latency.record(seconds);
    }

    /// Adds a worker's tally to the shared counters and empties it.
    pub(crate) fn flush(&self, tally: &mut Tally) {
        for (i, n) in tally.answers.iter_mut().enumerate() {
            if *n > 0 {
                if let Some(c) = self
                    .answers
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(i)
                {
                    c.increment(*n);
                }
                *n = 0;
            }
        }
        for (t, n) in [(0, &mut tally.a), (1, &mut tally.aaaa)] {
            if *n > 0 {
                self.queries[t * CODES.len()].increment(*n);
                *n = 0;
            }
        }
        if tally.spills > 0 {
            self.spills.increment(tally.spills);
            tally.spills = 0;
        }
        if tally.fail_open > 0 {
            self.fail_open.increment(tally.fail_open);
            tally.fail_open = 0;
        }
    }

    pub(crate) fn choice(&self, choice: Pick) {
        if choice.spilled {
            self.spills.increment(1);
        }
        if choice.fail_open {
            self.fail_open.increment(1);
            return;
        }
        if let Some(r) = choice.region {
            if let Some(c) = self
                .answers
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(r)
            {
                c.increment(1);
            }
        }
    }
}

/// A UDP worker's own counts of the answers it wrote itself (positive A/AAAA answers, by region),
/// added to the shared counters now and then (see `server`): shared counters touched by every
/// query of two workers cost a cache-line transfer each.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    a: u64,
    aaaa: u64,
    answers: Vec<u64>,
    spills: u64,
    fail_open: u64,
}

impl Tally {
    /// Counts one positive answer of type AAAA (`v6`) or A, and the choice behind it.
    pub(crate) fn answered(&mut self, v6: bool, choice: Pick) {
        if v6 {
            self.aaaa += 1;
        } else {
            self.a += 1;
        }
        if choice.spilled {
            self.spills += 1;
        }
        if choice.fail_open {
            self.fail_open += 1;
        } else if let Some(r) = choice.region {
            if self.answers.len() <= r {
                self.answers.resize(r + 1, 0);
            }
            self.answers[r] += 1;
        }
    }
}
