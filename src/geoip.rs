//! GeoIP: a MaxMind-format City database, memory-mapped, answering `locate(ip)`.
//!
//! Receives client addresses from the DNS role; hands back coordinates, country and the prefix
//! length of the database network that matched (the ECS scope of a GeoIP-decided answer). Reads
//! the GeoIP2 City record layout (`location.latitude/longitude`, `country.iso_code`: MaxMind's
//! GeoIP2 and GeoLite2 City) and the flat one of DB-IP's City Lite (`country_code`, `latitude`,
//! `longitude` as 32-bit floats), telling them apart record by record.

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct GeoError {
    path: String,
    reason: String,
}

/// An open City database.
pub struct GeoIp {
    reader: maxminddb::Reader<maxminddb::Mmap>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("type", &self.reader.metadata().database_type)
            .finish()
    }
}

/// What the database says about an address.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GeoHit {
    pub(crate) lat: Option<f64>,
    pub(crate) lon: Option<f64>,
    pub(crate) country: Option<String>,
    /// Prefix length of the network that matched (or of the empty network the search ended in).
    pub(crate) prefix: u8,
    /// Whether the network carries a record at all.
    pub(crate) found: bool,
}

#[derive(Deserialize)]
struct Record<'a> {
    // GeoIP2 City.
    #[serde(borrow)]
    country: Option<Country<'a>>,
    location: Option<Location>,
    // DB-IP City Lite.
    #[serde(borrow)]
    country_code: Option<&'a str>,
    latitude: Option<Degrees>,
    longitude: Option<Degrees>,
}

/// A coordinate stored as a 32-bit float (DB-IP) or a double (MaxMind): the reader is strict
/// about the stored type, so this takes whichever is there.
struct Degrees(f64);

impl<'de> Deserialize<'de> for Degrees {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Degrees, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Degrees;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a float or a double")
            }
            fn visit_f32<E>(self, v: f32) -> Result<Degrees, E> {
                Ok(Degrees(f64::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Degrees, E> {
                Ok(Degrees(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
struct Country<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

impl GeoIp {
    /// Opens and checks a database.
    pub fn open(path: &Path) -> Result<GeoIp, GeoError> {
        let err = |reason: String| GeoError {
            path: path.display().to_string(),
            reason,
        };
        // SAFETY: the map is read-only and the file must not be truncated while mapped. Operators
        // replace databases by renaming a new file into place (as geoipupdate does), which leaves
        // the mapped inode intact; a reload maps the new file.
        let reader =
            unsafe { maxminddb::Reader::open_mmap(path) }.map_err(|e| err(e.to_string()))?;
        let kind = reader.metadata().database_type.clone();
        if !kind.contains("City") {
            return Err(err(format!(
                "database type is {kind:?}; a City database is needed"
            )));
        }
        Ok(GeoIp { reader })
    }

    /// Looks `ip` up: the network it is in, and a handle on the record (decoded on demand).
    pub(crate) fn lookup(&self, ip: IpAddr) -> Option<Lookup<'_>> {
        let result = self.reader.lookup(ip).ok()?;
        let prefix = result.network().ok().map(|n| n.prefix()).unwrap_or(0);
        Some(Lookup { result, prefix })
    }
}

/// The result of a lookup before its record is decoded.
pub(crate) struct Lookup<'a> {
    result: maxminddb::LookupResult<'a, maxminddb::Mmap>,
    /// Prefix length of the network that matched (or of the empty network the search ended in).
    pub(crate) prefix: u8,
}

impl Lookup<'_> {
    /// Where the network's record starts in the database, if it has one: networks that share a
    /// record (a city's) share this, so it names what decoding would give.
    pub(crate) fn record(&self) -> Option<usize> {
        self.result.offset()
    }

    /// Decodes the record.
    pub(crate) fn hit(&self) -> GeoHit {
        let prefix = self.prefix;
        let record: Option<Record<'_>> = self.result.decode().ok().flatten();
        let Some(record) = record else {
            return GeoHit {
                lat: None,
                lon: None,
                country: None,
                prefix,
                found: false,
            };
        };
        let (lat, lon) = record
            .location
            .map(|l| (l.latitude, l.longitude))
            .unwrap_or((record.latitude.map(|d| d.0), record.longitude.map(|d| d.0)));
        let country = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.country_code);
        GeoHit {
            lat,
            lon,
            country: country.map(str::to_string),
            prefix,
            found: true,
        }
    }
}
