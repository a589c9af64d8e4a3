//! The cluster map: regions, edges, coverage zones and DNS zones, read and validated whole.

use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct RawClusterMap {
    #[serde(default)]
    region: Vec<RawRegion>,
    #[serde(default)]
    edge: Vec<RawClusterEdge>,
    #[serde(default)]
    coverage: Vec<RawCoverage>,
    #[serde(default)]
    zone: Vec<RawZone>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawRegion {
    name: String,
    lat: Option<f64>,
    lon: Option<f64>,
    location: Option<String>,
    #[serde(default)]
    countries: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawClusterEdge {
    id: String,
    region: String,
    addresses: Vec<String>,
    #[serde(default = "default_capacity")]
    capacity: f64,
}

pub(super) fn default_capacity() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
pub(super) struct RawCoverage {
    cidr: String,
    region: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawZone {
    apex: String,
    names: Vec<String>,
    default_region: String,
    ttl: Option<String>,
    answers: Option<usize>,
    high_water: Option<f64>,
    #[serde(default)]
    ns: Vec<RawNameServer>,
    soa: RawSoa,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawNameServer {
    name: String,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawSoa {
    mname: String,
    rname: String,
    serial: u32,
    refresh: Option<String>,
    retry: Option<String>,
    expire: Option<String>,
    minimum: Option<String>,
}

/// The cluster map: regions, edges, coverage zones and DNS zones, the same on every node.
#[derive(Debug, Clone)]
pub struct ClusterMap {
    /// The file it was read from.
    pub path: PathBuf,
    /// Regions, in file order.
    pub regions: Vec<RegionConfig>,
    /// Edges, in file order.
    pub edges: Vec<EdgeEntry>,
    /// Coverage zones: client networks pinned to a region.
    pub coverage: Vec<(ipnet::IpNet, usize)>,
    /// DNS zones.
    pub zones: Vec<ZoneConfig>,
}

/// A region of the cluster map.
#[derive(Debug, Clone)]
pub struct RegionConfig {
    /// Region name.
    pub name: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// ISO country codes whose clients belong here when GeoIP has no coordinates.
    pub countries: Vec<String>,
}

/// An edge of the cluster map.
#[derive(Debug, Clone)]
pub struct EdgeEntry {
    /// Edge id (the node id of the edge's node file).
    pub id: String,
    /// Index of its region in `ClusterMap::regions`.
    pub region: usize,
    /// Public addresses answered for it (A and AAAA).
    pub addresses: Vec<std::net::IpAddr>,
    /// Relative capacity, the weight of its load in its region's.
    pub capacity: f64,
}

/// A DNS zone of the cluster map.
#[derive(Debug, Clone)]
pub struct ZoneConfig {
    /// The apex, lower-case, without the trailing dot.
    pub apex: String,
    /// Names under the apex answered with edges (`demo` for `demo.<apex>`; `@` for the apex).
    pub names: Vec<String>,
    /// Region for clients with no known location.
    pub default_region: usize,
    /// TTL of answers.
    pub ttl: Duration,
    /// Edges per answer.
    pub answers: usize,
    /// Region load (0..1 and beyond) past which clients spill to the next region.
    pub high_water: f64,
    /// Name servers with their addresses (glue).
    pub ns: Vec<(String, Vec<std::net::IpAddr>)>,
    /// SOA fields.
    pub soa: SoaConfig,
}

/// SOA fields of a zone.
#[derive(Debug, Clone)]
pub struct SoaConfig {
    /// Primary name server.
    pub mname: String,
    /// Responsible mailbox, in domain-name form.
    pub rname: String,
    /// Serial.
    pub serial: u32,
    /// Refresh interval.
    pub refresh: Duration,
    /// Retry interval.
    pub retry: Duration,
    /// Expiry.
    pub expire: Duration,
    /// Negative-caching TTL.
    pub minimum: Duration,
}

/// Reads and validates a cluster map on its own (for reloads).
pub fn load_cluster_map(path: &Path) -> Result<ClusterMap, ConfigError> {
    let mut problems = Vec::new();
    let map = read(path, &mut problems).and_then(|t| parse_cluster_map(path, &t, &mut problems));
    match map {
        Some(m) if problems.is_empty() => Ok(m),
        _ => Err(ConfigError { problems }),
    }
}

pub(super) fn dns_name(text: &str) -> String {
    text.trim().trim_end_matches('.').to_ascii_lowercase()
}

pub(super) fn valid_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

pub(super) fn parse_cluster_map(
    path: &Path,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Option<ClusterMap> {
    let raw: RawClusterMap = parse_toml(path, text, problems)?;
    let mut r = Report {
        file: path,
        problems,
    };
    let mut regions = Vec::new();
    let mut region_index: HashMap<String, usize> = HashMap::new();
    if raw.region.is_empty() {
        r.add("region", "the cluster map has no regions");
    }
    for (i, reg) in raw.region.iter().enumerate() {
        if region_index.insert(reg.name.clone(), i).is_some() {
            r.add(
                format!("region[{i}].name"),
                format!("{:?} is defined twice", reg.name),
            );
        }
        let (lat, lon) = match (reg.lat, reg.lon, &reg.location) {
            (Some(lat), Some(lon), None) => {
                if !(-90.0..=90.0).contains(&lat) {
                    r.add(
                        format!("region[{i}].lat"),
                        format!("{lat} is not a latitude (-90..90)"),
                    );
                }
                if !(-180.0..=180.0).contains(&lon) {
                    r.add(
                        format!("region[{i}].lon"),
                        format!("{lon} is not a longitude (-180..180)"),
                    );
                }
                (lat, lon)
            }
            (None, None, Some(code)) => match crate::metro::lookup(code) {
                Some((_, lat, lon)) => (lat, lon),
                None => {
                    r.add(
                        format!("region[{i}].location"),
                        format!(
                            "{code:?} is not a known metro code (three-letter airport codes such as \"FRA\", \"IAD\", \"NRT\"; `lat` and `lon` place any other city)"
                        ),
                    );
                    (0.0, 0.0)
                }
            },
            (None, None, None) => {
                r.add(
                    format!("region[{i}]"),
                    "needs a place: `location` (a metro code) or `lat` and `lon`",
                );
                (0.0, 0.0)
            }
            _ => {
                r.add(
                    format!("region[{i}]"),
                    "give either `location` or both `lat` and `lon`",
                );
                (0.0, 0.0)
            }
        };
        let mut countries = Vec::new();
        for (j, c) in reg.countries.iter().enumerate() {
            if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
                countries.push(c.to_ascii_uppercase());
            } else {
                r.add(
                    format!("region[{i}].countries[{j}]"),
                    format!("{c:?} is not a two-letter country code"),
                );
            }
        }
        regions.push(RegionConfig {
            name: reg.name.clone(),
            lat,
            lon,
            countries,
        });
    }
    let region_of = |r: &mut Report<'_>, key: String, name: &str| -> Option<usize> {
        let found = region_index.get(name).copied();
        if found.is_none() {
            r.add(key, format!("no region is named {name:?}"));
        }
        found
    };
    let mut edges = Vec::new();
    let mut edge_ids: HashMap<String, usize> = HashMap::new();
    for (i, e) in raw.edge.iter().enumerate() {
        if edge_ids.insert(e.id.clone(), i).is_some() {
            r.add(
                format!("edge[{i}].id"),
                format!("{:?} is defined twice", e.id),
            );
        }
        let region = region_of(&mut r, format!("edge[{i}].region"), &e.region);
        let mut addresses = Vec::new();
        if e.addresses.is_empty() {
            r.add(
                format!("edge[{i}].addresses"),
                "must list at least one address",
            );
        }
        for (j, a) in e.addresses.iter().enumerate() {
            match a.parse() {
                Ok(ip) => addresses.push(ip),
                Err(_) => r.add(
                    format!("edge[{i}].addresses[{j}]"),
                    format!("{a:?} is not an IP address"),
                ),
            }
        }
        if !(e.capacity > 0.0 && e.capacity.is_finite()) {
            r.add(format!("edge[{i}].capacity"), "must be a positive number");
        }
        if let Some(region) = region {
            edges.push(EdgeEntry {
                id: e.id.clone(),
                region,
                addresses,
                capacity: e.capacity.max(f64::MIN_POSITIVE),
            });
        }
    }
    let mut coverage = Vec::new();
    for (i, c) in raw.coverage.iter().enumerate() {
        let net = match c.cidr.parse::<ipnet::IpNet>() {
            Ok(n) if n.trunc() == n => Some(n),
            Ok(n) => {
                r.add(
                    format!("coverage[{i}].cidr"),
                    format!(
                        "{:?} has host bits set (did you mean {}?)",
                        c.cidr,
                        n.trunc()
                    ),
                );
                None
            }
            Err(_) => {
                r.add(
                    format!("coverage[{i}].cidr"),
                    format!("{:?} is not a CIDR network", c.cidr),
                );
                None
            }
        };
        let region = region_of(&mut r, format!("coverage[{i}].region"), &c.region);
        if let (Some(n), Some(reg)) = (net, region) {
            coverage.push((n, reg));
        }
    }
    let mut zones = Vec::new();
    let mut apexes: HashMap<String, usize> = HashMap::new();
    for (i, z) in raw.zone.iter().enumerate() {
        let k = |f: &str| format!("zone[{i}].{f}");
        let apex = dns_name(&z.apex);
        if !valid_dns_name(&apex) {
            r.add(k("apex"), format!("{:?} is not a domain name", z.apex));
        }
        if apexes.insert(apex.clone(), i).is_some() {
            r.add(k("apex"), format!("{apex:?} is defined twice"));
        }
        let mut names = Vec::new();
        for (j, n) in z.names.iter().enumerate() {
            let n = dns_name(n);
            if n == "@" || valid_dns_name(&n) {
                names.push(n);
            } else {
                r.add(
                    format!("zone[{i}].names[{j}]"),
                    format!("{n:?} is not a name"),
                );
            }
        }
        let default_region = region_of(&mut r, k("default_region"), &z.default_region).unwrap_or(0);
        let answers = z.answers.unwrap_or(1);
        if answers == 0 {
            r.add(k("answers"), "must be at least 1");
        }
        let high_water = z.high_water.unwrap_or(0.8);
        if !(high_water > 0.0 && high_water.is_finite()) {
            r.add(
                k("high_water"),
                "must be a positive number (0.8 = 80% of capacity)",
            );
        }
        let mut ns = Vec::new();
        for (j, n) in z.ns.iter().enumerate() {
            let name = dns_name(&n.name);
            if !valid_dns_name(&name) {
                r.add(
                    format!("zone[{i}].ns[{j}].name"),
                    format!("{:?} is not a domain name", n.name),
                );
            }
            let mut addrs = Vec::new();
            for (m, a) in n.addresses.iter().enumerate() {
                match a.parse() {
                    Ok(ip) => addrs.push(ip),
                    Err(_) => r.add(
                        format!("zone[{i}].ns[{j}].addresses[{m}]"),
                        format!("{a:?} is not an IP address"),
                    ),
                }
            }
            ns.push((name, addrs));
        }
        for (f, v) in [("soa.mname", &z.soa.mname), ("soa.rname", &z.soa.rname)] {
            if !valid_dns_name(&dns_name(v)) {
                r.add(k(f), format!("{v:?} is not a domain name"));
            }
        }
        let soa = SoaConfig {
            mname: dns_name(&z.soa.mname),
            rname: dns_name(&z.soa.rname),
            serial: z.soa.serial,
            refresh: r.duration(&k("soa.refresh"), &z.soa.refresh, Duration::from_secs(3600)),
            retry: r.duration(&k("soa.retry"), &z.soa.retry, Duration::from_secs(600)),
            expire: r.duration(&k("soa.expire"), &z.soa.expire, Duration::from_secs(86400)),
            minimum: r.duration(&k("soa.minimum"), &z.soa.minimum, Duration::from_secs(30)),
        };
        zones.push(ZoneConfig {
            apex,
            names,
            default_region,
            ttl: r.duration(&k("ttl"), &z.ttl, Duration::from_secs(30)),
            answers: answers.max(1),
            high_water,
            ns,
            soa,
        });
    }
    Some(ClusterMap {
        path: path.to_path_buf(),
        regions,
        edges,
        coverage,
        zones,
    })
}
