//! GeoIP: a MaxMind-format City database, read into memory and verified whole, answering
//! `locate(ip)`.
//!
//! Hazard: a memory-mapped database dies with the file. An operator who overwrites the live file
//! in place (`cp` over it, `truncate`, a download written where it is read) would make the next
//! lookup past the cut raise SIGBUS and kill the server. So the database is read into memory (a
//! copy nothing else can change), and verified whole before anyone uses it: metadata, every node
//! of the search tree, every data record a network points at. A reload that finds a problem
//! keeps the database it had.
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

/// The largest database read: the biggest City databases are a few hundred MB; anything far
/// larger is a wrong path (a device, a disk image), not a database.
const MAX_SIZE: u64 = 2 << 30;

/// An open City database.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
    networks: usize,
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
    /// Reads a database into memory and verifies it whole.
    pub fn open(path: &Path) -> Result<GeoIp, GeoError> {
        let err = |reason: String| GeoError {
            path: path.display().to_string(),
            reason,
        };
        let data = crate::config::read_file(path, MAX_SIZE).map_err(err)?;
        GeoIp::from_bytes(data).map_err(err)
    }

    /// Verifies a database held in memory.
    pub(crate) fn from_bytes(data: Vec<u8>) -> Result<GeoIp, String> {
        let err = |reason: String| reason;
        let reader = maxminddb::Reader::from_source(data).map_err(|e| err(e.to_string()))?;
        let kind = reader.metadata().database_type.clone();
        if !kind.contains("City") {
            return Err(err(format!(
                "database type is {kind:?}; a City database is needed"
            )));
        }
        reader
            .verify()
            .map_err(|e| err(format!("not a valid database: {e}")))?;
        let networks = reader
            .networks(Default::default())
            .map_err(|e| err(e.to_string()))?
            .count();
        Ok(GeoIp { reader, networks })
    }

    /// The database's type (`GeoLite2-City`, ...).
    pub fn kind(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When it was built, in seconds since the Unix epoch.
    pub fn built(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// How many networks carry a record.
    pub fn networks(&self) -> usize {
        self.networks
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
    result: maxminddb::LookupResult<'a, Vec<u8>>,
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
