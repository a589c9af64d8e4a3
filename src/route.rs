//! `meridian route -c NODE.toml IP [NAME]`: the DNS decision for a client, explained.
//!
//! Runs the same pure functions as a query (`steering::locate`, `choose`, `scope`) on the node
//! file's cluster map and GeoIP database, and prints where the location came from, the distance
//! to each region, each candidate's health and load, the choice, and the ECS scope that would be
//! sent for a query carrying the client's subnet. With `--live`, on the health and load the
//! running node hears by gossip (its `/cluster`), else on the map with every edge up and idle.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::dns::handler::Tables;
use crate::geoip::GeoIp;
use crate::model::ClusterView;
use crate::steering::{self, Policy, Source};

/// Explains the decision for `ip` asking for `name` (the first name of the first zone if none),
/// on the cluster map alone: every edge up and idle.
pub fn explain(config: &Config, ip: IpAddr, name: Option<&str>) -> Result<String, String> {
    explain_on(config, ip, name, None)
}

/// Explains the decision as the running node of `config` would make it now: with the members,
/// health and load its gossip reports (read from its admin API's `/cluster`).
pub async fn explain_live(
    config: &Config,
    ip: IpAddr,
    name: Option<&str>,
) -> Result<String, String> {
    let members = crate::admin::members(config).await?;
    explain_on(config, ip, name, Some(&members))
}

fn explain_on(
    config: &Config,
    ip: IpAddr,
    name: Option<&str>,
    members: Option<&[crate::model::Member]>,
) -> Result<String, String> {
    let map = config
        .cluster
        .as_ref()
        .ok_or("the node file names no cluster_map")?;
    let geoip = match config.node.dns.as_ref().and_then(|d| d.geoip.as_deref()) {
        Some(p) => Some(Arc::new(GeoIp::open(p).map_err(|e| e.to_string())?)),
        None => None,
    };
    let wanted = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
    let (zone, qname) = match &wanted {
        Some(n) => map
            .zones
            .iter()
            .find(|z| n == &z.apex || n.ends_with(&format!(".{}", z.apex)))
            .map(|z| (z, n.clone()))
            .ok_or_else(|| {
                format!(
                    "{n} is in no zone of {} (a query would get REFUSED)",
                    map.path.display()
                )
            })?,
        None => {
            let z = map.zones.first().ok_or("the cluster map has no zones")?;
            let first = z.names.first().map(|n| {
                if n == "@" {
                    z.apex.clone()
                } else {
                    format!("{n}.{}", z.apex)
                }
            });
            (z, first.unwrap_or_else(|| z.apex.clone()))
        }
    };
    let view = match members {
        Some(m) => ClusterView::from_members(map, m, true),
        None => ClusterView::from_map(map),
    };
    // The same tables a DNS node answers from, so route and queries cannot disagree.
    let tables = Tables::new(map, geoip)?;
    let locator = tables.locator();
    // The address is the client's own: an ECS option carrying all of it.
    let source_prefix = steering::full_prefix(ip);
    let place = steering::locate(&locator, &view, ip, source_prefix, zone.default_region);
    let (hash, hash_prefix) = steering::subnet_hash(ip, source_prefix);
    let choice = steering::choose(
        &view,
        &place,
        Policy {
            answers: zone.answers,
            high_water: zone.high_water,
        },
        hash,
    );
    let scope = steering::scope(place.prefix, choice.pick(), hash_prefix);

    let region_name = |i: usize| view.regions.get(i).map(|r| r.name.as_str()).unwrap_or("?");
    let mut out = String::new();
    let _ = match members {
        Some(m) => writeln!(
            out,
            "view     live: {} members as the running node hears them",
            m.len()
        ),
        None => writeln!(
            out,
            "view     the cluster map, every edge up and idle (--live asks the running node)"
        ),
    };
    let _ = writeln!(out, "client   {ip} asking for {qname} (zone {})", zone.apex);
    let located = match &place.source {
        Source::Coverage(net) => format!(
            "coverage zone {net} -> region {}",
            region_name(place.region.unwrap_or(0))
        ),
        Source::GeoIp { prefix } => format!(
            "GeoIP network /{prefix}: {:.4}, {:.4}",
            place.lat, place.lon
        ),
        Source::Country { code, prefix } => {
            format!(
                "GeoIP country {code} (network /{prefix}, no coordinates) -> region {}",
                region_name(place.region.unwrap_or(0))
            )
        }
        Source::Default => format!(
            "no coverage zone or GeoIP location -> default region {}",
            region_name(zone.default_region)
        ),
    };
    let _ = writeln!(out, "location {located}");
    let _ = writeln!(
        out,
        "regions  (nearest first; load = capacity-weighted utilisation of available edges)"
    );
    for r in &choice.ranking {
        let load = r
            .load
            .map(|l| format!("{:.0}%", l * 100.0))
            .unwrap_or_else(|| "no available edge".into());
        let _ = writeln!(
            out,
            "  {:<12} {:>8.0} km  load {load}",
            region_name(r.region),
            r.km
        );
        for e in view.edges.iter().filter(|e| e.region == r.region) {
            let state = if !e.healthy {
                "down"
            } else if e.draining {
                "draining"
            } else {
                "healthy"
            };
            let addrs: Vec<String> =
                e.v4.iter()
                    .map(|a| a.to_string())
                    .chain(e.v6.iter().map(|a| a.to_string()))
                    .collect();
            let _ = writeln!(
                out,
                "      {:<10} {state:<9} load {:>4.0}%  {}",
                e.id,
                e.load * 100.0,
                addrs.join(" ")
            );
        }
    }
    if choice.fail_open {
        let _ = writeln!(
            out,
            "choice   no edge available anywhere: fail open to every edge"
        );
    } else {
        let picked: Vec<&str> = choice
            .edges
            .iter()
            .filter_map(|&i| view.edges.get(i))
            .map(|e| e.id.as_str())
            .collect();
        let how = if choice.spilled {
            " (spilled: nearest region is past its high-water mark)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "choice   region {} -> {}{how}",
            region_name(choice.region.unwrap_or(0)),
            picked.join(", ")
        );
    }
    let _ = writeln!(out, "ecs      source /{source_prefix} -> scope /{scope}");
    Ok(out)
}
