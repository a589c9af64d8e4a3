//! `meridian geo build CSV OUT.mmdb`: a MaxMind-format database from a CSV of networks and places,
//! so operators can make their own location databases and tests can use known data. Two record
//! layouts, the two that the DNS role reads: GeoIP2 City (`location.latitude/longitude`,
//! `country.iso_code`, `city.names.en`; the default) and the flat layout of DB-IP's City Lite
//! (`country_code`, `latitude` and `longitude` as 32-bit floats, `city`).
//!
//! CSV: a header line, then `network,city,latitude,longitude,country` (city may be empty or
//! quoted; latitude/longitude in degrees; country a two-letter code or empty).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

#[derive(Serialize)]
struct Names {
    en: String,
}

#[derive(Serialize)]
struct City {
    names: Names,
}

#[derive(Serialize)]
struct Country {
    iso_code: String,
}

#[derive(Serialize)]
struct Location {
    latitude: f64,
    longitude: f64,
}

#[derive(Serialize)]
struct FlatRecord {
    #[serde(skip_serializing_if = "Option::is_none")]
    city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country_code: Option<String>,
    latitude: f32,
    longitude: f32,
}

/// The record layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// GeoIP2 City (MaxMind's GeoIP2 and GeoLite2 City).
    #[default]
    City,
    /// DB-IP City Lite's flat records.
    Flat,
}

#[derive(Serialize)]
struct Record {
    #[serde(skip_serializing_if = "Option::is_none")]
    city: Option<City>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<Country>,
    location: Location,
}

/// Splits one CSV line; fields may be double-quoted (with `""` for a quote).
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Builds `out` from `csv`; returns the number of networks. Errors name the file and line.
pub fn build(csv: &Path, out: &Path, layout: Layout) -> Result<usize, String> {
    let text =
        std::fs::read_to_string(csv).map_err(|e| format!("{}: cannot read: {e}", csv.display()))?;
    let kind = match layout {
        Layout::City => "GeoIP2-City",
        Layout::Flat => "DBIP-City-Lite",
    };
    let mut writer = mmdb_writer::Writer::builder(kind)
        .languages(["en"])
        .description(&[("en", "Meridian location database built from a CSV")])
        .build();
    let mut n = 0;
    let mut problems = Vec::new();
    let mut seen = BTreeMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let at = format!("{}: line {}", csv.display(), i + 1);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f = fields(line);
        if f.len() != 5 {
            problems.push(format!(
                "{at}: expected 5 fields (network,city,latitude,longitude,country), found {}",
                f.len()
            ));
            continue;
        }
        let net: ipnet::IpNet = match f[0].trim().parse() {
            Ok(n) => n,
            Err(_) => {
                problems.push(format!("{at}: {:?} is not a CIDR network", f[0]));
                continue;
            }
        };
        let (Ok(lat), Ok(lon)) = (f[2].trim().parse::<f64>(), f[3].trim().parse::<f64>()) else {
            problems.push(format!("{at}: latitude and longitude must be numbers"));
            continue;
        };
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            problems.push(format!("{at}: {lat},{lon} is not a place on Earth"));
            continue;
        }
        let country = f[4].trim();
        if !(country.is_empty()
            || (country.len() == 2 && country.bytes().all(|b| b.is_ascii_alphabetic())))
        {
            problems.push(format!(
                "{at}: {country:?} is not a two-letter country code"
            ));
            continue;
        }
        if let Some(prev) = seen.insert(net.trunc(), i + 1) {
            problems.push(format!("{at}: {net} repeats line {prev}"));
            continue;
        }
        let city = f[1].trim();
        let inserted = if layout == Layout::Flat {
            let record = FlatRecord {
                city: (!city.is_empty()).then(|| city.to_string()),
                country_code: (!country.is_empty()).then(|| country.to_ascii_uppercase()),
                latitude: lat as f32,
                longitude: lon as f32,
            };
            writer.insert(net.trunc(), &record)
        } else {
            let record = Record {
                city: (!city.is_empty()).then(|| City {
                    names: Names {
                        en: city.to_string(),
                    },
                }),
                country: (!country.is_empty()).then(|| Country {
                    iso_code: country.to_ascii_uppercase(),
                }),
                location: Location {
                    latitude: lat,
                    longitude: lon,
                },
            };
            writer.insert(net.trunc(), &record)
        };
        if let Err(e) = inserted {
            problems.push(format!("{at}: {e}"));
            continue;
        }
        n += 1;
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let bytes = writer
        .to_bytes()
        .map_err(|e| format!("cannot build the database: {e}"))?;
    std::fs::write(out, bytes).map_err(|e| format!("{}: cannot write: {e}", out.display()))?;
    Ok(n)
}
