//! Metro codes: the three-letter (IATA airport) codes of cities where CDNs put points of
//! presence, with the city's latitude and longitude, so that a region of the cluster map may say
//! `location = "FRA"` instead of coordinates. Codes are matched without regard to case.

/// (code, city, latitude, longitude), by code.
pub const METROS: &[(&str, &str, f64, f64)] = &[
    ("AKL", "Auckland", -36.85, 174.76),
    ("AMS", "Amsterdam", 52.37, 4.90),
    ("ARN", "Stockholm", 59.33, 18.07),
    ("ATH", "Athens", 37.98, 23.73),
    ("ATL", "Atlanta", 33.75, -84.39),
    ("BKK", "Bangkok", 13.76, 100.50),
    ("BNE", "Brisbane", -27.47, 153.03),
    ("BOG", "Bogotá", 4.71, -74.07),
    ("BOM", "Mumbai", 19.08, 72.88),
    ("BOS", "Boston", 42.36, -71.06),
    ("BRU", "Brussels", 50.85, 4.35),
    ("BUD", "Budapest", 47.50, 19.04),
    ("CDG", "Paris", 48.86, 2.35),
    ("CGK", "Jakarta", -6.21, 106.85),
    ("CPH", "Copenhagen", 55.68, 12.57),
    ("CPT", "Cape Town", -33.92, 18.42),
    ("DEL", "Delhi", 28.61, 77.21),
    ("DEN", "Denver", 39.74, -104.99),
    ("DFW", "Dallas", 32.78, -96.80),
    ("DOH", "Doha", 25.29, 51.53),
    ("DUB", "Dublin", 53.35, -6.26),
    ("DXB", "Dubai", 25.20, 55.27),
    ("EWR", "Newark", 40.74, -74.17),
    ("EZE", "Buenos Aires", -34.60, -58.38),
    ("FCO", "Rome", 41.90, 12.50),
    ("FRA", "Frankfurt", 50.11, 8.68),
    ("GRU", "São Paulo", -23.55, -46.63),
    ("HAM", "Hamburg", 53.55, 9.99),
    ("HEL", "Helsinki", 60.17, 24.94),
    ("HKG", "Hong Kong", 22.32, 114.17),
    ("IAD", "Ashburn", 39.04, -77.49),
    ("ICN", "Seoul", 37.57, 126.98),
    ("IST", "Istanbul", 41.01, 28.98),
    ("JNB", "Johannesburg", -26.20, 28.05),
    ("KIX", "Osaka", 34.69, 135.50),
    ("KUL", "Kuala Lumpur", 3.139, 101.687),
    ("LAX", "Los Angeles", 34.05, -118.24),
    ("LHR", "London", 51.51, -0.13),
    ("LIM", "Lima", -12.05, -77.04),
    ("LIS", "Lisbon", 38.72, -9.14),
    ("MAA", "Chennai", 13.08, 80.27),
    ("MAD", "Madrid", 40.42, -3.70),
    ("MAN", "Manchester", 53.48, -2.24),
    ("MEL", "Melbourne", -37.81, 144.96),
    ("MEX", "Mexico City", 19.43, -99.13),
    ("MIA", "Miami", 25.76, -80.19),
    ("MNL", "Manila", 14.60, 120.98),
    ("MRS", "Marseille", 43.30, 5.37),
    ("MSP", "Minneapolis", 44.98, -93.27),
    ("MXP", "Milan", 45.46, 9.19),
    ("NBO", "Nairobi", -1.29, 36.82),
    ("NRT", "Tokyo", 35.68, 139.69),
    ("ORD", "Chicago", 41.88, -87.63),
    ("OSL", "Oslo", 59.91, 10.75),
    ("PDX", "Portland", 45.52, -122.68),
    ("PHX", "Phoenix", 33.45, -112.07),
    ("PRG", "Prague", 50.08, 14.44),
    ("SCL", "Santiago", -33.45, -70.67),
    ("SEA", "Seattle", 47.61, -122.33),
    ("SFO", "San Francisco", 37.77, -122.42),
    ("SIN", "Singapore", 1.35, 103.82),
    ("SJC", "San Jose", 37.34, -121.89),
    ("SYD", "Sydney", -33.87, 151.21),
    ("TLV", "Tel Aviv", 32.09, 34.78),
    ("TPE", "Taipei", 25.03, 121.57),
    ("VIE", "Vienna", 48.21, 16.37),
    ("WAW", "Warsaw", 52.23, 21.01),
    ("YUL", "Montréal", 45.50, -73.57),
    ("YVR", "Vancouver", 49.28, -123.12),
    ("YYZ", "Toronto", 43.65, -79.38),
    ("ZRH", "Zürich", 47.38, 8.54),
];

/// The coordinates of a metro code, and its city.
pub fn lookup(code: &str) -> Option<(&'static str, f64, f64)> {
    let code = code.trim().to_ascii_uppercase();
    METROS
        .binary_search_by(|(c, ..)| c.cmp(&code.as_str()))
        .ok()
        .map(|i| (METROS[i].1, METROS[i].2, METROS[i].3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_unique_and_placed_on_earth() {
        assert!(
            METROS.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no duplicates"
        );
        for (code, _, lat, lon) in METROS {
            assert_eq!(code.len(), 3);
            assert!(code.bytes().all(|b| b.is_ascii_uppercase()));
            assert!((-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon));
        }
        assert_eq!(lookup("fra"), Some(("Frankfurt", 50.11, 8.68)));
        assert_eq!(lookup("XXX"), None);
    }
}
