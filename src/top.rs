//! `meridian top -c NODE.toml`: the running node's numbers in the terminal, refreshing (like
//! `varnishstat`): the cluster's members with state, load, each edge's requests/s and hit ratio
//! (as it gossips them) and draining flags (from `/cluster`),
//! and this node's requests/s, hit ratio, origin fetches, cache bytes, DNS queries and answers
//! per region (from `/metrics`). Rates are over the last refresh; `--once` prints totals.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::config::Config;

/// What one scrape of `/metrics` says, summed over labels except those kept.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sample {
    pub(crate) requests: f64,
    pub(crate) hits: f64,
    pub(crate) origin_fetches: f64,
    pub(crate) stored_bytes: f64,
    pub(crate) dns_queries: f64,
    pub(crate) answers: BTreeMap<String, f64>,
}

/// The value of a label in a sample line's label set, if present.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

/// Sums the families `top` and the status page show from Prometheus text, over the series of
/// node `node` (one process can run several: the demo) and those without a node label.
pub(crate) fn parse(text: &str, node: &str) -> Sample {
    let mut s = Sample::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if label(line, "node").is_some_and(|n| n != node) {
            continue;
        }
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let family = line.split(['{', ' ']).next().unwrap_or("");
        match family {
            "meridian_http_requests_total" => {
                s.requests += value;
                if matches!(label(line, "cache"), Some("hit" | "stale" | "revalidated")) {
                    s.hits += value;
                }
            }
            "meridian_origin_fetches_total" => s.origin_fetches += value,
            "meridian_cache_stored_bytes" => s.stored_bytes += value,
            "meridian_dns_queries_total" => s.dns_queries += value,
            "meridian_dns_answers_total" => {
                *s.answers
                    .entry(label(line, "region").unwrap_or("-").to_string())
                    .or_default() += value;
            }
            _ => {}
        }
    }
    s
}

fn bar(load: f64) -> String {
    let filled = ((load.clamp(0.0, 1.0)) * 20.0).round() as usize;
    format!("[{}{}]", "#".repeat(filled), " ".repeat(20 - filled))
}

/// One screen: members, then this node's numbers (rates against `before`, if any).
fn render(
    node: &str,
    cluster: &serde_json::Value,
    now: &Sample,
    before: Option<(&Sample, Duration)>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "meridian top: node {node}");
    if cluster["gossip"] == true {
        let _ = writeln!(
            out,
            "\n{:<14} {:<10} {:<9} {:<8} {:<28} {:>9} {:>5} draining",
            "member", "region", "roles", "state", "load", "req/s", "hit"
        );
        for m in cluster["members"].as_array().into_iter().flatten() {
            let load = m["load"].as_f64().unwrap_or(0.0);
            let roles: Vec<&str> = m["roles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .collect();
            // What each edge last gossiped of its traffic (over its last second).
            let (rps, hit) = if roles.contains(&"edge") {
                (
                    format!("{:.1}", m["requests_per_second"].as_f64().unwrap_or(0.0)),
                    m["hit_ratio"]
                        .as_f64()
                        .map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
                )
            } else {
                ("-".into(), "-".into())
            };
            let _ = writeln!(
                out,
                "{:<14} {:<10} {:<9} {:<8} {} {:>4.0}% {rps:>9} {hit:>5} {}",
                m["id"].as_str().unwrap_or("-"),
                m["region"].as_str().unwrap_or("-"),
                roles.join(","),
                m["state"].as_str().unwrap_or("-"),
                bar(load),
                load * 100.0,
                if m["draining"] == true { "yes" } else { "" },
            );
        }
    } else {
        let _ = writeln!(out, "\n(this node does not gossip: no cluster view)");
    }
    let rate = |f: fn(&Sample) -> f64| match before {
        Some((b, dt)) => format!("{:.1}/s", (f(now) - f(b)).max(0.0) / dt.as_secs_f64()),
        None => format!("{:.0}", f(now)),
    };
    let (req, hits) = match before {
        Some((b, _)) => (now.requests - b.requests, now.hits - b.hits),
        None => (now.requests, now.hits),
    };
    let ratio = if req > 0.0 {
        format!("{:.0}%", 100.0 * hits / req)
    } else {
        "-".into()
    };
    let _ = writeln!(
        out,
        "\nthis node{}",
        if before.is_some() {
            " (rates over the last refresh)"
        } else {
            " (totals since start)"
        }
    );
    let _ = writeln!(
        out,
        "  requests        {}  hit ratio {ratio}",
        rate(|s| s.requests)
    );
    let _ = writeln!(out, "  origin fetches  {}", rate(|s| s.origin_fetches));
    let _ = writeln!(
        out,
        "  cache           {:.1} MiB",
        now.stored_bytes / 1_048_576.0
    );
    let _ = writeln!(out, "  dns queries     {}", rate(|s| s.dns_queries));
    for (region, n) in &now.answers {
        let shown = match before {
            Some((b, dt)) => format!(
                "{:.1}/s",
                (n - b.answers.get(region).copied().unwrap_or(0.0)).max(0.0) / dt.as_secs_f64()
            ),
            None => format!("{n:.0}"),
        };
        let _ = writeln!(out, "  answers {region:<8}{shown}");
    }
    out
}

async fn scrape(config: &Config) -> Result<(serde_json::Value, Sample), String> {
    let cluster = crate::admin::get(config, "/cluster").await?;
    let cluster: serde_json::Value =
        serde_json::from_str(&cluster).map_err(|e| format!("/cluster: not JSON: {e}"))?;
    let metrics = crate::admin::get(config, "/metrics").await?;
    Ok((cluster, parse(&metrics, &config.node.id)))
}

/// Runs `meridian top`: once, or refreshing every `every` until Ctrl-C.
pub async fn run(config: &Config, once: bool, every: Duration) -> Result<(), String> {
    let node = config.node.id.clone();
    let (cluster, sample) = scrape(config).await?;
    if once {
        print!("{}", render(&node, &cluster, &sample, None));
        return Ok(());
    }
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut signals = crate::app::Signals::new();
    let mut before = (sample, Instant::now());
    loop {
        tokio::select! {
            () = signals.stop() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
        let (cluster, now) = scrape(config).await?;
        let dt = before.1.elapsed();
        let screen = render(&node, &cluster, &now, Some((&before.0, dt)));
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let clear = if live { "\x1b[H\x1b[2J" } else { "\n" };
            if write!(out, "{clear}{screen}")
                .and_then(|()| out.flush())
                .is_err()
            {
                return Ok(());
            }
        }
        before = (now, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_and_rates_taken() {
        let text =
            "# HELP x\nmeridian_http_requests_total{node=\"a\",cache=\"hit\",code=\"200\"} 8\n\
meridian_http_requests_total{node=\"a\",cache=\"miss\",code=\"200\"} 2\n\
meridian_dns_answers_total{node=\"a\",region=\"eu-west\"} 5\n\
meridian_cache_stored_bytes{node=\"a\"} 2097152\n\
meridian_http_requests_total{node=\"b\",cache=\"hit\",code=\"200\"} 1000\n";
        let s = parse(text, "a");
        assert_eq!((s.requests, s.hits, s.stored_bytes), (10.0, 8.0, 2097152.0));
        let cluster = serde_json::json!({"gossip": true, "members": [
            {"id": "a", "region": "eu-west", "roles": ["edge"], "state": "alive", "load": 0.5, "draining": true,
             "requests_per_second": 12.5, "hit_ratio": 0.9},
            {"id": "d", "region": "eu-west", "roles": ["dns"], "state": "alive", "load": 0.0, "draining": false,
             "requests_per_second": 0.0, "hit_ratio": null}
        ]});
        let screen = render("a", &cluster, &s, None);
        assert!(screen.contains("hit ratio 80%"), "{screen}");
        assert!(
            screen.contains("[##########          ]   50%      12.5   90% yes"),
            "each edge's gossiped traffic: {screen}"
        );
        assert!(
            screen.contains("   0%         -     - \n"),
            "no traffic columns for a DNS node: {screen}"
        );
        assert!(screen.contains("answers eu-west 5"), "{screen}");
        let mut later = s.clone();
        later.requests += 20.0;
        later.hits += 5.0;
        let screen = render("a", &cluster, &later, Some((&s, Duration::from_secs(2))));
        assert!(
            screen.contains("requests        10.0/s  hit ratio 25%"),
            "{screen}"
        );
    }
}
