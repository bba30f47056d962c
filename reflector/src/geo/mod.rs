//! Region lookup: the sender's address → (country, ASN). The address goes no further than here.
//!
//! [`Geo`] combines any number of region sources, each a file whose format is told from its
//! content:
//!
//! - the public-domain ip2asn TSV format ([`GeoTable`]: `range_start range_end AS_number
//!   country_code AS_description`, tab-separated, IPv4 and IPv6 ranges in one or separate
//!   files), which gives country and ASN;
//! - MaxMind DB files (GeoLite2-Country, GeoLite2-City, GeoLite2-ASN, DB-IP lite country and
//!   ASN, …), recognised by the metadata marker `\xAB\xCD\xEFMaxMind.com`: the country from
//!   `country.iso_code` or else `registered_country.iso_code`, the ASN from
//!   `autonomous_system_number`, and from City databases the first subdivision
//!   (`subdivisions[0].iso_code`, prefixed by the country: `RU-MOW`), the region's
//!   [`Region::subdivision`].
//!
//! Each of country and ASN comes from the first source, in the order given, that knows it; the
//! subdivision from the first source that knows one *within that country* (`country.iso_code`
//! agreeing with it; a subdivision never comes with `registered_country`). ip2asn tables and
//! Country and ASN databases know none. Unknown addresses map to country `ZZ`, AS0, no
//! subdivision. IPv4-mapped IPv6 addresses are looked up as IPv4.
//!
//! `mmdb_writer` (feature `test-util`, and the crate's own tests) writes small MaxMind DB files
//! for test fixtures; production builds do not contain it.
//!
//! It lives in the reflector crate (feature `geo`) because a standalone reflector attests the
//! region its probes come from with it; the collector uses the same lookup for uploads (and
//! keeps its own list of hosting networks, `callwatch_collector::geo::hosting`).

mod mmdb;
#[cfg(any(test, feature = "test-util"))]
pub mod mmdb_writer;

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;

/// Where a report came from, as coarse as the collector keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Region {
    /// ISO 3166-1 alpha-2, upper case; `ZZ` when unknown.
    pub country: String,
    /// Autonomous system number; 0 when unknown.
    pub asn: u32,
    /// The first-level subdivision, ISO 3166-2 (`RU-MOW`: the country, a hyphen, one to three
    /// upper-case letters or digits); empty when unknown. Always within `country`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subdivision: String,
}

impl Region {
    /// Country `ZZ`, AS0, no subdivision.
    pub fn unknown() -> Self {
        Region::new("ZZ", 0)
    }

    /// A country and ASN without a subdivision.
    pub fn new(country: &str, asn: u32) -> Self {
        Region {
            country: country.to_string(),
            asn,
            subdivision: String::new(),
        }
    }

    /// The same region with the subdivision `code` (the part after the hyphen, `MOW`, or the
    /// whole ISO 3166-2 code, `RU-MOW`), when it is a valid subdivision of the region's known
    /// country; otherwise without a subdivision.
    pub fn with_subdivision(mut self, code: &str) -> Self {
        self.subdivision = subdivision_code(&self.country, code).unwrap_or_default();
        self
    }
}

/// The ISO 3166-2 code `CC-XXX` of subdivision `code` (`XXX`, or `CC-XXX` itself) of country
/// `country` (two upper-case letters, not `ZZ`): one to three ASCII letters or digits after the
/// hyphen, upper-cased. `None` for anything else (another country's code, an empty or longer
/// one, other characters).
pub fn subdivision_code(country: &str, code: &str) -> Option<String> {
    let cc = country_code(country)?;
    let code = code.trim();
    let part = match code.split_once('-') {
        Some((c, part)) if c.eq_ignore_ascii_case(&cc) => part,
        Some(_) => return None,
        None => code,
    };
    ((1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| format!("{cc}-{}", part.to_ascii_uppercase()))
}

/// Why a region source could not be loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// The file could not be read.
    // Said once: the OS's words are in the message, not also chained as its source (which
    // `{:#}` would print a second time).
    #[error("cannot read region table {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A line of an ip2asn TSV file is wrong (`line` 0: the table as a whole).
    #[error("{path}:{line}: {what}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number; 0 when no single line is at fault.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// The file as a whole is wrong: a corrupt or truncated MaxMind DB, binary content that is
    /// no region table, an empty table.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

#[derive(Clone, Debug)]
struct Range {
    start: u128,
    end: u128,
    region: Region,
}

/// A region table, sorted by range start, and the network names its `AS_description` column
/// gives.
#[derive(Clone, Debug, Default)]
pub struct GeoTable {
    ranges: Vec<Range>,
    names: std::collections::BTreeMap<u32, String>,
}

fn key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6),
        },
    }
}

impl GeoTable {
    /// An empty table: every address is unknown.
    pub fn empty() -> Self {
        GeoTable::default()
    }

    /// Reads an ip2asn TSV file.
    pub fn load(path: &Path) -> Result<Self, GeoError> {
        let text = std::fs::read_to_string(path).map_err(|error| GeoError::Io {
            path: path.display().to_string(),
            error,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses ip2asn TSV text; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, GeoError> {
        let mut ranges = Vec::new();
        let mut names = std::collections::BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let err = |what: String| GeoError::Line {
                path: origin.to_string(),
                line: i + 1,
                what,
            };
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() < 4 {
                return Err(err(format!(
                    "expected at least 4 tab-separated columns (range_start range_end AS_number \
                     country_code [AS_description]), found {}",
                    cols.len()
                )));
            }
            let parse_ip = |s: &str| -> Result<IpAddr, GeoError> {
                s.trim()
                    .parse()
                    .map_err(|_| err(format!("{s:?} is not an IP address")))
            };
            let (start, end) = (parse_ip(cols[0])?, parse_ip(cols[1])?);
            if start.is_ipv4() != end.is_ipv4() {
                return Err(err("range mixes IPv4 and IPv6".into()));
            }
            let (start, end) = (key(start), key(end));
            if start > end {
                return Err(err("range_start is after range_end".into()));
            }
            let asn: u32 = cols[2]
                .trim()
                .trim_start_matches("AS")
                .parse()
                .map_err(|_| err(format!("AS number {:?} is not a number", cols[2])))?;
            let cc = cols[3].trim();
            let country = if cc.len() == 2 && cc.chars().all(|c| c.is_ascii_alphabetic()) {
                cc.to_ascii_uppercase()
            } else if cc.eq_ignore_ascii_case("none") || cc.is_empty() {
                "ZZ".to_string()
            } else {
                return Err(err(format!(
                    "country code {cc:?} is not two letters (or None)"
                )));
            };
            if let Some(name) = cols.get(4).map(|n| n.trim()).filter(|n| !n.is_empty()) {
                // "Not routed", and a name that only repeats the number, name nothing.
                if asn != 0
                    && name != "Not routed"
                    && !name.eq_ignore_ascii_case(&format!("AS{asn}"))
                {
                    names
                        .entry(asn)
                        .or_insert_with(|| name.chars().take(MAX_NAME_CHARS).collect());
                }
            }
            ranges.push(Range {
                start,
                end,
                region: Region::new(&country, asn),
            });
        }
        ranges.sort_by_key(|r| r.start);
        for w in ranges.windows(2) {
            if w[1].start <= w[0].end {
                return Err(GeoError::Line {
                    path: origin.to_string(),
                    line: 0,
                    what: format!(
                        "ranges overlap (AS{} and AS{}); a region table must not overlap",
                        w[0].region.asn, w[1].region.asn
                    ),
                });
            }
        }
        Ok(GeoTable { ranges, names })
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when the table holds no range.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The region of `ip`; unknown when no range holds it.
    pub fn lookup(&self, ip: IpAddr) -> Region {
        let k = key(ip);
        let idx = self.ranges.partition_point(|r| r.start <= k);
        match idx.checked_sub(1).map(|i| &self.ranges[i]) {
            Some(r) if k <= r.end => r.region.clone(),
            _ => Region::unknown(),
        }
    }
}

/// A two-letter country code, upper-cased; `None` for anything else (empty, `None`, `ZZ`, …).
fn country_code(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 2 && s.chars().all(|c| c.is_ascii_alphabetic()) && !s.eq_ignore_ascii_case("ZZ"))
        .then(|| s.to_ascii_uppercase())
}

/// Metadata marker every MaxMind DB file has, within its last 128 KiB.
const MMDB_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

fn is_mmdb(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(128 * 1024)..];
    tail.windows(MMDB_MARKER.len()).any(|w| w == MMDB_MARKER)
}

#[derive(Debug)]
enum Source {
    Table { origin: String, table: GeoTable },
    Mmdb(mmdb::MmdbSource),
}

/// Region lookup over any number of sources: ip2asn TSV tables and MaxMind DB files (country,
/// city or ASN databases), in order. Country and ASN each come from the first source that knows
/// them, the subdivision from the first that knows one in that country; with no source, or none
/// that knows, they are `ZZ`, 0 and none.
#[derive(Debug, Default)]
pub struct Geo {
    sources: Vec<Source>,
    /// Network names by AS number, from the first source that names each.
    names: std::collections::BTreeMap<u32, String>,
}

/// The longest network name kept (in characters).
pub const MAX_NAME_CHARS: usize = 80;

impl From<GeoTable> for Geo {
    fn from(table: GeoTable) -> Self {
        let mut geo = Geo::empty();
        geo.add_table(table, "ip2asn table");
        geo
    }
}

impl Geo {
    /// No source: every address is unknown.
    pub fn empty() -> Self {
        Geo::default()
    }

    /// Loads each file in order (see [`Geo::add_file`]) and logs what each one is.
    pub fn load<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Self, GeoError> {
        let mut geo = Geo::empty();
        for path in paths {
            geo.add_file(path.as_ref())?;
        }
        Ok(geo)
    }

    /// Adds a file after the sources already held; its format is told from its content: a
    /// MaxMind DB (it has the metadata marker; it is verified whole) or ip2asn TSV text (it must
    /// hold at least one range).
    pub fn add_file(&mut self, path: &Path) -> Result<(), GeoError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|error| GeoError::Io {
            path: origin.clone(),
            error,
        })?;
        self.add_bytes(bytes, &origin)?;
        if let Some(source) = self.sources.last() {
            tracing::info!("region source {origin}: {}", describe(source));
        }
        Ok(())
    }

    /// Adds a file's content; `origin` names it in errors.
    pub fn add_bytes(&mut self, bytes: Vec<u8>, origin: &str) -> Result<(), GeoError> {
        let err = |what: &str| GeoError::File {
            path: origin.to_string(),
            what: what.to_string(),
        };
        if is_mmdb(&bytes) {
            let source = mmdb::MmdbSource::new(bytes, origin)?;
            for (asn, name) in source.asn_names() {
                self.names
                    .entry(asn)
                    .or_insert_with(|| name.chars().take(MAX_NAME_CHARS).collect());
            }
            self.sources.push(Source::Mmdb(source));
            return Ok(());
        }
        const BINARY: &str = "binary content without the MaxMind DB metadata marker: a \
                              truncated MaxMind DB, or no region table at all (expected a \
                              MaxMind DB or ip2asn TSV text)";
        let text = match std::str::from_utf8(&bytes) {
            Ok(text) if !text.contains('\0') => text,
            _ => return Err(err(BINARY)),
        };
        let table = GeoTable::parse(text, origin)?;
        if table.is_empty() {
            return Err(err(
                "holds no address range (expected a MaxMind DB or ip2asn TSV text)",
            ));
        }
        self.add_table(table, origin);
        Ok(())
    }

    /// Adds a parsed ip2asn table after the sources already held.
    pub fn add_table(&mut self, table: GeoTable, origin: &str) {
        for (asn, name) in &table.names {
            self.names.entry(*asn).or_insert_with(|| name.clone());
        }
        self.sources.push(Source::Table {
            origin: origin.to_string(),
            table,
        });
    }

    /// Number of sources.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// The name of a network, from the first source that names it (an ip2asn table's
    /// `AS_description`, a MaxMind ASN database's `autonomous_system_organization`).
    pub fn asn_name(&self, asn: u32) -> Option<&str> {
        self.names.get(&asn).map(String::as_str)
    }

    /// How many networks the sources name.
    pub fn names_len(&self) -> usize {
        self.names.len()
    }

    /// True without any source.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// One line per source: its file and what it is.
    pub fn describe(&self) -> Vec<String> {
        self.sources
            .iter()
            .map(|s| {
                let origin = match s {
                    Source::Table { origin, .. } => origin.as_str(),
                    Source::Mmdb(m) => m.origin(),
                };
                format!("{origin}: {}", describe(s))
            })
            .collect()
    }

    /// The reflector's region lookup for its attestations ([`crate::Attester`]): country, ASN
    /// and first-level subdivision of an address from these sources, `ZZ` for a country that
    /// is not two letters (and then no subdivision).
    pub fn region_lookup(self: std::sync::Arc<Self>) -> crate::RegionLookup {
        Box::new(move |ip| {
            let region = self.lookup(ip);
            let Ok(country) = <[u8; 2]>::try_from(region.country.as_bytes()) else {
                return crate::AttestedRegion::UNKNOWN;
            };
            crate::AttestedRegion {
                country,
                asn: region.asn,
                subdivision: callwatch_proto::attest::subdivision_bytes(
                    &country,
                    &region.subdivision,
                )
                .unwrap_or_default(),
            }
        })
    }

    /// The region of `ip` (IPv4-mapped IPv6 is looked up as IPv4).
    pub fn lookup(&self, ip: IpAddr) -> Region {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (mut country, mut asn) = (None, None);
        // Every (country, subdivision) a source knew, in source order: the subdivision is the
        // first whose country is the one chosen.
        let mut subdivisions: Vec<(String, String)> = Vec::new();
        for source in &self.sources {
            let (c, a, s) = match source {
                Source::Table { table, .. } => {
                    let r = table.lookup(ip);
                    (
                        country_code(&r.country),
                        Some(r.asn).filter(|&a| a != 0),
                        None,
                    )
                }
                Source::Mmdb(m) => {
                    let found = m.lookup(ip);
                    (found.country, found.asn, found.subdivision)
                }
            };
            if let (Some(c), Some(s)) = (&c, s) {
                subdivisions.push((c.clone(), s));
            }
            country = country.or(c);
            asn = asn.or(a);
            let subdivision_known = country
                .as_ref()
                .is_some_and(|c| subdivisions.iter().any(|(sc, _)| sc == c));
            if country.is_some() && asn.is_some() && subdivision_known {
                break;
            }
        }
        let region = Region::new(country.as_deref().unwrap_or("ZZ"), asn.unwrap_or(0));
        match subdivisions.iter().find(|(c, _)| *c == region.country) {
            Some((_, s)) => region.with_subdivision(s),
            None => region,
        }
    }
}

fn describe(source: &Source) -> String {
    match source {
        Source::Table { table, .. } => match table.len() {
            1 => "ip2asn TSV, 1 range".to_string(),
            n => format!("ip2asn TSV, {n} ranges"),
        },
        Source::Mmdb(m) => m.describe(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_and_the_os_said_so_once() {
        let e = Geo::empty()
            .add_file(Path::new("/nonexistent/GeoLite2-ASN.mmdb"))
            .unwrap_err();
        // As the programs print it: anyhow's `{:#}` with the whole chain.
        let shown = format!("{:#}", anyhow::Error::from(e));
        assert!(shown.contains("/nonexistent/GeoLite2-ASN.mmdb"), "{shown}");
        assert_eq!(
            shown.matches("No such file or directory").count(),
            1,
            "{shown}"
        );
    }

    const TABLE: &str = "1.0.0.0\t1.0.0.255\t13335\tUS\tCLOUDFLARENET\n\
                         5.3.0.0\t5.3.255.255\t12389\tRU\tROSTELECOM-AS\n\
                         2a02:6b8::\t2a02:6b8:ffff:ffff:ffff:ffff:ffff:ffff\t13238\tRU\tYANDEX\n\
                         10.0.0.0\t10.255.255.255\t0\tNone\tNot routed\n";

    #[test]
    fn looks_up_v4_v6_and_unknown() {
        let t = GeoTable::parse(TABLE, "t").unwrap();
        assert_eq!(
            t.lookup("5.3.7.9".parse().unwrap()),
            Region::new("RU", 12389)
        );
        assert_eq!(t.lookup("2a02:6b8::1".parse().unwrap()).asn, 13238);
        assert_eq!(t.lookup("::ffff:5.3.0.1".parse().unwrap()).asn, 12389);
        assert_eq!(t.lookup("9.9.9.9".parse().unwrap()), Region::unknown());
        assert_eq!(t.lookup("1.0.1.0".parse().unwrap()), Region::unknown());
        assert_eq!(t.lookup("10.1.1.1".parse().unwrap()).country, "ZZ");
    }

    #[test]
    fn bad_lines_name_their_line() {
        let e = GeoTable::parse(
            "1.0.0.0\t1.0.0.255\t13335\tUS\tX\nnot-an-ip\t1.1.1.1\t1\tUS\tX\n",
            "geo.tsv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("geo.tsv:2:"), "{e}");
        let e = GeoTable::parse("1.0.0.9\t1.0.0.1\t1\tUS\tX\n", "g")
            .unwrap_err()
            .to_string();
        assert!(e.contains("after"), "{e}");
        let e = GeoTable::parse("1.0.0.0\t1.0.0.9\tASx\tUS\tX\n", "g")
            .unwrap_err()
            .to_string();
        assert!(e.contains("AS number"), "{e}");
        assert!(GeoTable::parse(
            "1.0.0.0\t1.0.0.9\t1\tUS\tX\n1.0.0.5\t1.0.0.20\t2\tUS\tY\n",
            "g"
        )
        .is_err());
    }

    mod combined {
        use super::super::mmdb_writer::{
            asn_record, city_record, country_record, registered_country_record, MmdbWriter,
        };
        use super::super::*;

        fn ip(s: &str) -> IpAddr {
            s.parse().unwrap()
        }

        fn region(country: &str, asn: u32) -> Region {
            Region::new(country, asn)
        }

        fn country_db() -> Vec<u8> {
            MmdbWriter::new("GeoLite2-Country")
                .insert((ip("81.2.69.0"), 24), country_record("GB"))
                .insert((ip("2001:db8::"), 32), country_record("DE"))
                .insert((ip("1.2.3.0"), 24), registered_country_record("AU"))
                .insert((ip("2.2.2.0"), 24), country_record("None"))
                .to_bytes()
                .unwrap()
        }

        fn asn_db() -> Vec<u8> {
            MmdbWriter::new("GeoLite2-ASN")
                .insert((ip("81.2.69.0"), 24), asn_record(20712, "ANDREWS-ARNOLD"))
                .insert((ip("2001:db8:1::"), 48), asn_record(3320, "DTAG"))
                .to_bytes()
                .unwrap()
        }

        const TSV: &str = "9.9.9.0\t9.9.9.255\t19281\tUS\tQUAD9\n\
                           81.2.69.0\t81.2.69.255\t1\tFR\tOTHER\n\
                           2.2.2.0\t2.2.2.255\t0\tNone\tNot routed\n";

        fn geo() -> Geo {
            let mut g = Geo::empty();
            g.add_bytes(country_db(), "country.mmdb").unwrap();
            g.add_bytes(asn_db(), "asn.mmdb").unwrap();
            g.add_bytes(TSV.as_bytes().to_vec(), "ip2asn.tsv").unwrap();
            g
        }

        #[test]
        fn country_asn_and_tsv_combine_in_order() {
            let g = geo();
            assert_eq!(g.len(), 3);
            assert_eq!(
                g.lookup(ip("81.2.69.7")),
                region("GB", 20712),
                "MMDBs come first"
            );
            assert_eq!(
                g.lookup(ip("9.9.9.9")),
                region("US", 19281),
                "only the TSV knows"
            );
            assert_eq!(
                g.lookup(ip("1.2.3.4")),
                region("AU", 0),
                "registered_country"
            );
            assert_eq!(
                g.lookup(ip("2.2.2.2")),
                region("ZZ", 0),
                "no usable code anywhere"
            );
            assert_eq!(g.lookup(ip("8.8.8.8")), Region::unknown());

            // The same files in another order: the TSV wins.
            let mut tsv_first = Geo::from(GeoTable::parse(TSV, "ip2asn.tsv").unwrap());
            tsv_first.add_bytes(country_db(), "country.mmdb").unwrap();
            tsv_first.add_bytes(asn_db(), "asn.mmdb").unwrap();
            assert_eq!(tsv_first.lookup(ip("81.2.69.7")), region("FR", 1));
        }

        #[test]
        fn networks_are_named_by_the_first_source_that_names_them() {
            let g = geo();
            // From the ASN database (every network read at load), then from the TSV's
            // AS_description; a Country database names none; "Not routed" and AS0 are no names.
            assert_eq!(g.asn_name(20712), Some("ANDREWS-ARNOLD"));
            assert_eq!(g.asn_name(3320), Some("DTAG"));
            assert_eq!(g.asn_name(19281), Some("QUAD9"));
            assert_eq!(g.asn_name(1), Some("OTHER"));
            assert_eq!((g.asn_name(0), g.asn_name(64_512)), (None, None));
            assert_eq!(g.names_len(), 4);
            // The TSV first: its name wins for a network both name.
            let mut tsv_first = Geo::from(
                GeoTable::parse("81.2.69.0\t81.2.69.255\t20712\tGB\tAAISP\n", "t.tsv").unwrap(),
            );
            tsv_first.add_bytes(asn_db(), "asn.mmdb").unwrap();
            assert_eq!(tsv_first.asn_name(20712), Some("AAISP"));
            // A name is kept to its first 80 characters.
            let long = "N".repeat(200);
            let t = GeoTable::parse(&format!("1.0.0.0\t1.0.0.255\t7\tAU\t{long}\n"), "t").unwrap();
            assert_eq!(Geo::from(t).asn_name(7).map(str::len), Some(MAX_NAME_CHARS));
            // A description that only repeats the number is no name.
            let t = GeoTable::parse("1.0.0.0\t1.0.0.255\t7\tAU\tAS7\n", "t").unwrap();
            assert_eq!(Geo::from(t).asn_name(7), None);
        }

        fn city_db() -> Vec<u8> {
            MmdbWriter::new("GeoLite2-City")
                .insert((ip("81.2.69.0"), 24), city_record("GB", &["ENG", "WSM"]))
                .insert((ip("5.3.0.0"), 16), city_record("RU", &["MOW"]))
                .insert((ip("5.4.0.0"), 16), city_record("RU", &[]))
                .insert((ip("5.5.0.0"), 16), city_record("RU", &["TOOLONG"]))
                .insert((ip("5.6.0.0"), 16), city_record("ZZ", &["MOW"]))
                .insert((ip("2a02:6b8::"), 32), city_record("RU", &["spe"]))
                .to_bytes()
                .unwrap()
        }

        #[test]
        fn city_databases_give_the_first_subdivision_within_the_country() {
            let mut g = Geo::empty();
            g.add_bytes(city_db(), "city.mmdb").unwrap();
            g.add_bytes(asn_db(), "asn.mmdb").unwrap();
            g.add_bytes(TSV.as_bytes().to_vec(), "ip2asn.tsv").unwrap();
            let r = g.lookup(ip("81.2.69.7"));
            assert_eq!(
                (r.country.as_str(), r.asn, r.subdivision.as_str()),
                ("GB", 20712, "GB-ENG"),
                "the first subdivision, the ASN from the ASN database"
            );
            assert_eq!(g.lookup(ip("5.3.1.1")).subdivision, "RU-MOW");
            assert_eq!(g.lookup(ip("2a02:6b8::1")).subdivision, "RU-SPE");
            assert_eq!(g.lookup(ip("::ffff:5.3.1.1")).subdivision, "RU-MOW");
            // No subdivision, one that is no ISO 3166-2 code, or no known country: none.
            assert_eq!(g.lookup(ip("5.4.1.1")), region("RU", 0));
            assert_eq!(g.lookup(ip("5.5.1.1")), region("RU", 0));
            assert_eq!(g.lookup(ip("5.6.1.1")), Region::unknown());
            // Country and ASN databases and ip2asn tables know none.
            assert_eq!(geo().lookup(ip("81.2.69.7")), region("GB", 20712));
            // A subdivision never crosses countries: a source before the city database that
            // places the address in another country keeps its country, without subdivision.
            let mut tsv_first = Geo::from(GeoTable::parse(TSV, "ip2asn.tsv").unwrap());
            tsv_first.add_bytes(city_db(), "city.mmdb").unwrap();
            assert_eq!(tsv_first.lookup(ip("81.2.69.7")), region("FR", 1));
            // A country database first, agreeing: the city database still adds the subdivision.
            let mut country_first = Geo::empty();
            country_first
                .add_bytes(country_db(), "country.mmdb")
                .unwrap();
            country_first.add_bytes(city_db(), "city.mmdb").unwrap();
            assert_eq!(country_first.lookup(ip("81.2.69.7")).subdivision, "GB-ENG");
        }

        #[test]
        fn subdivision_codes_are_checked() {
            assert_eq!(subdivision_code("RU", "MOW").as_deref(), Some("RU-MOW"));
            assert_eq!(subdivision_code("RU", "ru-mow").as_deref(), Some("RU-MOW"));
            assert_eq!(subdivision_code("US", "CA").as_deref(), Some("US-CA"));
            assert_eq!(subdivision_code("FR", "75").as_deref(), Some("FR-75"));
            for bad in ["", "MOWX", "DE-BE", "M W", "MÖ", "-", "RU-"] {
                assert_eq!(subdivision_code("RU", bad), None, "{bad:?}");
            }
            assert_eq!(subdivision_code("ZZ", "MOW"), None);
            assert_eq!(subdivision_code("R", "MOW"), None);
            let r = Region::new("RU", 1).with_subdivision("XX-MOW");
            assert_eq!(r.subdivision, "");
        }

        #[test]
        fn ipv6_and_ipv4_mapped() {
            let g = geo();
            assert_eq!(g.lookup(ip("2001:db8:1::5")), region("DE", 3320));
            assert_eq!(g.lookup(ip("2001:db8:2::5")), region("DE", 0));
            assert_eq!(g.lookup(ip("2001:db9::1")), Region::unknown());
            assert_eq!(g.lookup(ip("::ffff:81.2.69.7")), region("GB", 20712));
            assert_eq!(g.lookup(ip("::ffff:9.9.9.9")), region("US", 19281));
        }

        #[test]
        fn files_are_told_apart_by_content_and_described() {
            let dir = tempfile::tempdir().unwrap();
            let (c, a, t) = (
                dir.path().join("country.dat"),
                dir.path().join("asn"),
                dir.path().join("table.mmdb"),
            );
            std::fs::write(&c, country_db()).unwrap();
            std::fs::write(&a, asn_db()).unwrap();
            std::fs::write(&t, TSV).unwrap();
            let g = Geo::load([&c, &a, &t]).unwrap();
            assert_eq!(g.lookup(ip("81.2.69.7")), region("GB", 20712));
            let d = g.describe();
            assert!(
                d[0].contains("country.dat") && d[0].contains("GeoLite2-Country"),
                "{d:?}"
            );
            assert!(d[1].contains("GeoLite2-ASN"), "{d:?}");
            assert!(d[2].contains("ip2asn TSV, 3 ranges"), "{d:?}");
            assert!(Geo::load(Vec::<&Path>::new()).unwrap().is_empty());

            let missing = dir.path().join("missing.mmdb");
            let e = Geo::load([&c, &missing]).unwrap_err().to_string();
            assert!(e.contains("missing.mmdb"), "{e}");
            let empty = dir.path().join("empty.tsv");
            std::fs::write(&empty, "# nothing\n").unwrap();
            let e = Geo::load([&empty]).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: ", empty.display())), "{e}");
            assert!(e.contains("no address range"), "{e}");
        }

        fn load_err(bytes: Vec<u8>) -> String {
            Geo::empty()
                .add_bytes(bytes, "GeoLite2-Country.mmdb")
                .unwrap_err()
                .to_string()
        }

        #[test]
        fn corrupt_databases_are_errors_at_load() {
            let good = country_db();
            // The root's left record points far past the data section.
            let mut bad = good.clone();
            bad[..3].copy_from_slice(&[0xff, 0xff, 0xf0]);
            let e = load_err(bad);
            assert!(
                e.starts_with("GeoLite2-Country.mmdb: corrupt MaxMind DB"),
                "{e}"
            );
            // The data separator is not zero.
            let m = maxminddb::Reader::from_source(good.clone())
                .unwrap()
                .metadata()
                .clone();
            let tree_len = m.node_count as usize * usize::from(m.record_size) / 4;
            let mut bad = good.clone();
            bad[tree_len + 3] = 0x55;
            let e = load_err(bad);
            assert!(e.contains("corrupt MaxMind DB"), "{e}");
            // The first record's control byte turned into an invalid extended type.
            let mut bad = good.clone();
            let data = tree_len + 16;
            bad[data] = 0x01;
            bad[data + 1] = 0xf0;
            let e = load_err(bad);
            assert!(e.contains("corrupt MaxMind DB"), "{e}");
            // Garbage with a marker and no metadata map after it.
            let mut bad = vec![0x42; 64];
            bad.extend_from_slice(MMDB_MARKER);
            bad.extend_from_slice(&[0xff; 8]);
            let e = load_err(bad);
            assert!(
                e.starts_with("GeoLite2-Country.mmdb: not a readable MaxMind DB"),
                "{e}"
            );
        }

        #[test]
        fn truncated_databases_are_errors_at_load() {
            let good = asn_db();
            let e = load_err(good[..good.len() / 2].to_vec());
            assert!(e.starts_with("GeoLite2-Country.mmdb: "), "{e}");
            assert!(e.contains("truncated"), "{e}");
            // Cut inside the metadata map.
            let e = load_err(good[..good.len() - 5].to_vec());
            assert!(e.contains("not a readable MaxMind DB"), "{e}");
            // Cut just before the metadata: the data section ends early.
            let marker = good.len()
                - good
                    .windows(MMDB_MARKER.len())
                    .rev()
                    .position(|w| w == MMDB_MARKER)
                    .unwrap()
                - MMDB_MARKER.len();
            let mut cut = good[..marker - 4].to_vec();
            cut.extend_from_slice(&good[marker..]);
            let e = load_err(cut);
            assert!(e.contains("MaxMind DB"), "{e}");
        }

        #[test]
        fn any_single_byte_damage_is_an_error_or_a_working_source_never_a_panic() {
            let good = country_db();
            for i in 0..good.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = good.clone();
                    bad[i] ^= flip;
                    let mut g = Geo::empty();
                    if g.add_bytes(bad, "x.mmdb").is_ok() {
                        for a in ["81.2.69.7", "2001:db8::1", "1.2.3.4", "8.8.8.8", "::1"] {
                            let r = g.lookup(ip(a));
                            assert!(r.country.len() == 2, "{r:?}");
                        }
                    }
                }
            }
        }
    }
}
