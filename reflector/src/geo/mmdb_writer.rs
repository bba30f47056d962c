//! A small MaxMind DB writer, **for test fixtures**.
//!
//! The collector's tests and the `callwatch-tests` crate use it to make GeoLite2-style country,
//! city (with subdivisions, [`city_record`]) and ASN databases with chosen networks, then load them the way an operator's real files are
//! loaded. The collector itself never writes a database.
//!
//! It follows the [MaxMind DB format 2.0](https://maxmind.github.io/MaxMind-DB/): an IPv6
//! binary search tree (IPv4 networks live under `::/96`, where readers find the IPv4 start node),
//! records of 24, 28 or 32 bits (the smallest that fits, unless set), 16 zero bytes, the data
//! section (maps, UTF-8 strings, unsigned integers, arrays, booleans; a string written before is
//! written again as a pointer), then `\xAB\xCD\xEFMaxMind.com` and the metadata map.
//!
//! ```
//! use callwatch_reflector::geo::mmdb_writer::{asn_record, country_record, MmdbWriter};
//! let dir = tempfile::tempdir().unwrap();
//! let country = dir.path().join("country.mmdb");
//! MmdbWriter::new("GeoLite2-Country")
//!     .insert(("127.0.0.2".parse().unwrap(), 32), country_record("RU"))
//!     .insert(("2a02:6b8::".parse().unwrap(), 32), country_record("RU"))
//!     .write(&country)
//!     .unwrap();
//! let asn = MmdbWriter::new("GeoLite2-ASN")
//!     .insert(("127.0.0.0".parse().unwrap(), 24), asn_record(12389, "ROSTELECOM-AS"))
//!     .to_bytes()
//!     .unwrap();
//! assert!(asn.len() > 100);
//! ```

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

/// The bytes that start the metadata section.
pub const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

/// A value in a record (or in the metadata).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// A map with string keys, written in this order.
    Map(Vec<(String, Value)>),
    /// A UTF-8 string.
    Str(String),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// An unsigned 64-bit integer.
    U64(u64),
    /// An array.
    Array(Vec<Value>),
    /// A boolean.
    Bool(bool),
}

impl Value {
    /// A map from `(key, value)` pairs.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A string.
    pub fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }
}

/// A GeoLite2-Country style record: `{country: {iso_code, names: {en}}}` (the English name is
/// the code itself; readers here only use the code).
pub fn country_record(iso_code: &str) -> Value {
    Value::map([(
        "country",
        Value::map([
            ("iso_code", Value::str(iso_code)),
            ("names", Value::map([("en", Value::str(iso_code))])),
        ]),
    )])
}

/// A GeoLite2-City style record: `{country: {iso_code, names}, subdivisions: [{iso_code, names},
/// …]}`, the subdivisions' codes as MaxMind writes them (the part after the hyphen: `MOW` for
/// `RU-MOW`), first-level first. With no subdivision the record has no `subdivisions` key, as
/// GeoLite2-City has for addresses it places only in a country.
pub fn city_record(iso_code: &str, subdivisions: &[&str]) -> Value {
    let mut entries: Vec<(String, Value)> = vec![(
        "country".into(),
        Value::map([
            ("iso_code", Value::str(iso_code)),
            ("names", Value::map([("en", Value::str(iso_code))])),
        ]),
    )];
    if !subdivisions.is_empty() {
        entries.push((
            "subdivisions".into(),
            Value::Array(
                subdivisions
                    .iter()
                    .map(|s| {
                        Value::map([
                            ("iso_code", Value::str(*s)),
                            ("names", Value::map([("en", Value::str(*s))])),
                        ])
                    })
                    .collect(),
            ),
        ));
    }
    entries.push((
        "city".into(),
        Value::map([("names", Value::map([("en", Value::str("Testville"))]))]),
    ));
    Value::Map(entries)
}

/// A record with only `registered_country.iso_code` (as GeoLite2 has for some anycast and
/// satellite networks, where `country` is missing).
pub fn registered_country_record(iso_code: &str) -> Value {
    Value::map([(
        "registered_country",
        Value::map([("iso_code", Value::str(iso_code))]),
    )])
}

/// A GeoLite2-ASN style record: `{autonomous_system_number, autonomous_system_organization}`.
pub fn asn_record(asn: u32, organization: &str) -> Value {
    Value::map([
        ("autonomous_system_number", Value::U32(asn)),
        ("autonomous_system_organization", Value::str(organization)),
    ])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Child {
    Empty,
    Node(usize),
    Data(usize),
}

/// Builds a MaxMind DB in memory; [`MmdbWriter::write`] or [`MmdbWriter::to_bytes`] serialise
/// it. Errors in [`MmdbWriter::insert`] (a bad prefix length) are reported by those two.
#[derive(Clone, Debug)]
pub struct MmdbWriter {
    database_type: String,
    description: String,
    build_epoch: u64,
    record_size: Option<u16>,
    /// Node 0 is the root. Nodes cut off by a later, shorter network stay here but are not
    /// written.
    nodes: Vec<[Child; 2]>,
    records: Vec<Value>,
    error: Option<String>,
}

impl MmdbWriter {
    /// An empty IPv6 database of `database_type` (e.g. `GeoLite2-Country`, `GeoLite2-ASN`).
    pub fn new(database_type: &str) -> Self {
        MmdbWriter {
            database_type: database_type.to_string(),
            description: format!("callwatch test fixture ({database_type})"),
            build_epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            record_size: None,
            nodes: vec![[Child::Empty; 2]],
            records: Vec::new(),
            error: None,
        }
    }

    /// Forces a record size (24, 28 or 32 bits) instead of the smallest that fits.
    pub fn record_size(mut self, bits: u16) -> Self {
        self.record_size = Some(bits);
        self
    }

    /// Sets the metadata's `build_epoch` (default: now).
    pub fn build_epoch(mut self, epoch: u64) -> Self {
        self.build_epoch = epoch;
        self
    }

    /// Maps the network `(address, prefix length)` to `record`. An IPv4 network goes under
    /// `::/96`; host bits past the prefix are ignored. A later network replaces what an earlier
    /// one set inside it and splits an earlier, larger one around it.
    pub fn insert(mut self, network: (IpAddr, u8), record: Value) -> Self {
        let (ip, len) = network;
        let (bits, depth) = match ip {
            IpAddr::V4(v4) if len <= 32 => (u128::from(u32::from(v4)), 96 + u32::from(len)),
            IpAddr::V6(v6) if (1..=128).contains(&len) => (u128::from(v6), u32::from(len)),
            _ => {
                self.error
                    .get_or_insert_with(|| format!("{ip}/{len}: prefix length out of range"));
                return self;
            }
        };
        let rec = self.records.len();
        self.records.push(record);
        let mut node = 0;
        for i in 0..depth {
            let bit = ((bits >> (127 - i)) & 1) as usize;
            if i + 1 == depth {
                self.nodes[node][bit] = Child::Data(rec);
                break;
            }
            node = match self.nodes[node][bit] {
                Child::Node(n) => n,
                other => {
                    let n = self.nodes.len();
                    self.nodes.push([other, other]);
                    self.nodes[node][bit] = Child::Node(n);
                    n
                }
            };
        }
        self
    }

    /// Writes the database to `path`.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_bytes()?)
    }

    /// The database as bytes.
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        if let Some(e) = &self.error {
            return Err(invalid(e.clone()));
        }
        // Number the nodes reachable from the root in breadth-first order (root = 0).
        let mut order = vec![0usize];
        let mut number: HashMap<usize, usize> = HashMap::from([(0, 0)]);
        let mut i = 0;
        while i < order.len() {
            for child in self.nodes[order[i]] {
                if let Child::Node(n) = child {
                    if let Entry::Vacant(slot) = number.entry(n) {
                        slot.insert(order.len());
                        order.push(n);
                    }
                }
            }
            i += 1;
        }
        // The data section: each distinct record once, strings seen before as pointers.
        let mut data = Vec::new();
        let mut strings = HashMap::new();
        let mut offsets: HashMap<&Value, usize> = HashMap::new();
        let mut tree_values = Vec::with_capacity(order.len() * 2);
        let node_count = order.len() as u64;
        for &n in &order {
            for child in self.nodes[n] {
                let v = match child {
                    Child::Empty => node_count,
                    Child::Node(m) => number.get(&m).copied().unwrap_or_default() as u64,
                    Child::Data(rec) => {
                        let value = &self.records[rec];
                        let off = match offsets.get(value) {
                            Some(&off) => off,
                            None => {
                                let off = data.len();
                                encode(&mut data, value, Some(&mut strings))?;
                                offsets.insert(value, off);
                                off
                            }
                        };
                        node_count + 16 + off as u64
                    }
                };
                tree_values.push(v);
            }
        }
        let max = tree_values.iter().copied().max().unwrap_or(0);
        let record_size = match self.record_size {
            Some(bits @ (24 | 28 | 32)) if max < 1u64 << bits => bits,
            Some(bits @ (24 | 28 | 32)) => {
                return Err(invalid(format!(
                    "record size {bits} cannot hold the value {max}"
                )))
            }
            Some(bits) => return Err(invalid(format!("record size {bits} is not 24, 28 or 32"))),
            None => [24u16, 28, 32]
                .into_iter()
                .find(|&b| max < 1u64 << b)
                .ok_or_else(|| invalid("the database is too large for 32-bit records".into()))?,
        };
        let mut out = Vec::with_capacity(tree_values.len() * 4 + data.len() + 256);
        for pair in tree_values.chunks(2) {
            let (l, r) = (pair[0], pair.get(1).copied().unwrap_or(node_count));
            match record_size {
                24 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                28 => {
                    out.extend_from_slice(&l.to_be_bytes()[5..]);
                    out.push((((l >> 24) & 0x0f) << 4 | ((r >> 24) & 0x0f)) as u8);
                    out.extend_from_slice(&r.to_be_bytes()[5..]);
                }
                _ => {
                    out.extend_from_slice(&l.to_be_bytes()[4..]);
                    out.extend_from_slice(&r.to_be_bytes()[4..]);
                }
            }
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&data);
        out.extend_from_slice(METADATA_MARKER);
        let node_count =
            u32::try_from(node_count).map_err(|_| invalid("more than 2^32 nodes".into()))?;
        let metadata = Value::map([
            ("node_count", Value::U32(node_count)),
            ("record_size", Value::U16(record_size)),
            ("ip_version", Value::U16(6)),
            ("database_type", Value::str(&self.database_type)),
            ("languages", Value::Array(vec![Value::str("en")])),
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(self.build_epoch)),
            (
                "description",
                Value::map([("en", Value::str(&self.description))]),
            ),
        ]);
        encode(&mut out, &metadata, None)?;
        Ok(out)
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

const TYPE_POINTER: u8 = 1;
const TYPE_UTF8: u8 = 2;
const TYPE_UINT16: u8 = 5;
const TYPE_UINT32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_UINT64: u8 = 9;
const TYPE_ARRAY: u8 = 11;
const TYPE_BOOLEAN: u8 = 14;

/// Control byte(s) for a value of type `ty` and payload size (or entry count) `size`.
fn control(out: &mut Vec<u8>, ty: u8, size: usize) -> io::Result<()> {
    let (low, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, Vec::new())
    } else if size < 285 {
        (29, vec![(size - 29) as u8])
    } else if size < 65_821 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else if size < 65_821 + (1 << 24) {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    } else {
        return Err(invalid(format!("a value of size {size} is too large")));
    };
    if ty <= 7 {
        out.push(ty << 5 | low);
    } else {
        out.push(low);
        out.push(ty - 7);
    }
    out.extend_from_slice(&extra);
    Ok(())
}

fn uint(out: &mut Vec<u8>, ty: u8, v: u64) -> io::Result<()> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    control(out, ty, 8 - skip)?;
    out.extend_from_slice(&bytes[skip..]);
    Ok(())
}

fn pointer(out: &mut Vec<u8>, p: usize) {
    // 001SSVVV: SS picks how many bytes follow and what is added to (VVV, those bytes).
    let p = p as u64;
    let (ss, rest, follow) = if p < 2048 {
        (0u8, p, 1)
    } else if p < 526_336 {
        (1, p - 2048, 2)
    } else if p < 134_744_064 {
        (2, p - 526_336, 3)
    } else {
        (3, p & 0xffff_ffff, 4)
    };
    let vvv = if ss == 3 {
        0
    } else {
        (rest >> (8 * follow)) as u8 & 7
    };
    out.push(TYPE_POINTER << 5 | ss << 3 | vvv);
    out.extend_from_slice(&rest.to_be_bytes()[8 - follow..]);
}

/// Appends `v` to `out`. With `strings` (the data section), a string already written is written
/// as a pointer to it; `out` must then be the data section from its start.
fn encode(
    out: &mut Vec<u8>,
    v: &Value,
    mut strings: Option<&mut HashMap<String, usize>>,
) -> io::Result<()> {
    match v {
        Value::Str(s) => {
            if let Some(cache) = strings {
                if let Some(&at) = cache.get(s) {
                    if s.len() > 2 {
                        pointer(out, at);
                        return Ok(());
                    }
                }
                cache.insert(s.clone(), out.len());
            }
            control(out, TYPE_UTF8, s.len())?;
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(n) => uint(out, TYPE_UINT16, u64::from(*n))?,
        Value::U32(n) => uint(out, TYPE_UINT32, u64::from(*n))?,
        Value::U64(n) => uint(out, TYPE_UINT64, *n)?,
        Value::Bool(b) => control(out, TYPE_BOOLEAN, usize::from(*b))?,
        Value::Map(entries) => {
            control(out, TYPE_MAP, entries.len())?;
            for (k, v) in entries {
                encode(out, &Value::Str(k.clone()), strings.as_deref_mut())?;
                encode(out, v, strings.as_deref_mut())?;
            }
        }
        Value::Array(items) => {
            control(out, TYPE_ARRAY, items.len())?;
            for v in items {
                encode(out, v, strings.as_deref_mut())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Iso {
        iso_code: String,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    struct Country {
        country: Iso,
    }
    #[derive(Deserialize, Debug, PartialEq)]
    struct Asn {
        autonomous_system_number: u32,
        autonomous_system_organization: String,
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn maxminddb_reads_back_every_record_size() {
        for bits in [24, 28, 32] {
            let bytes = MmdbWriter::new("GeoLite2-Country")
                .record_size(bits)
                .insert((ip("5.3.0.0"), 16), country_record("RU"))
                .insert((ip("5.3.7.0"), 24), country_record("DE"))
                .insert((ip("127.0.0.2"), 32), country_record("RU"))
                .insert((ip("2a02:6b8::"), 32), country_record("FI"))
                .insert((ip("10.0.0.0"), 8), registered_country_record("US"))
                .to_bytes()
                .unwrap();
            let r = maxminddb::Reader::from_source(bytes).unwrap();
            r.verify().unwrap();
            let m = r.metadata();
            assert_eq!(
                (m.record_size, m.ip_version, m.database_type.as_str()),
                (bits, 6, "GeoLite2-Country")
            );
            let cc = |a: &str| {
                r.lookup(ip(a))
                    .unwrap()
                    .decode::<Country>()
                    .unwrap()
                    .map(|c| c.country.iso_code)
            };
            assert_eq!(cc("5.3.200.1").as_deref(), Some("RU"));
            assert_eq!(
                cc("5.3.7.9").as_deref(),
                Some("DE"),
                "a smaller network inside"
            );
            assert_eq!(cc("5.3.8.0").as_deref(), Some("RU"));
            assert_eq!(cc("127.0.0.2").as_deref(), Some("RU"));
            assert_eq!(cc("127.0.0.3"), None);
            assert_eq!(cc("2a02:6b8:1::5").as_deref(), Some("FI"));
            assert_eq!(cc("2a02:6b9::"), None);
            let reg: Option<String> = r
                .lookup(ip("10.9.9.9"))
                .unwrap()
                .decode_path(&maxminddb::path!["registered_country", "iso_code"])
                .unwrap();
            assert_eq!(reg.as_deref(), Some("US"));
        }
    }

    #[test]
    fn asn_records_long_strings_and_pointers_round_trip() {
        let long = "X".repeat(300);
        let mut w = MmdbWriter::new("GeoLite2-ASN");
        for i in 0..50u32 {
            w = w.insert(
                (IpAddr::from([100, 64, i as u8, 0]), 24),
                asn_record(64_500 + i % 3, if i % 2 == 0 { &long } else { "SHORT" }),
            );
        }
        let bytes = w.to_bytes().unwrap();
        // The long organisation name is written once; the other records point to it.
        let copies = bytes.windows(long.len()).filter(|w| *w == long.as_bytes());
        assert_eq!(copies.count(), 1);
        let r = maxminddb::Reader::from_source(bytes).unwrap();
        r.verify().unwrap();
        for i in 0..50u32 {
            let a: Asn = r
                .lookup(IpAddr::from([100, 64, i as u8, 77]))
                .unwrap()
                .decode()
                .unwrap()
                .unwrap();
            assert_eq!(a.autonomous_system_number, 64_500 + i % 3);
            assert_eq!(
                a.autonomous_system_organization.len(),
                [300, 5][i as usize % 2]
            );
        }
    }

    #[test]
    fn pointers_of_every_width_used_here_round_trip() {
        // 3000 distinct 200-byte names fill more than 526,336 bytes of data section, so later
        // records point back with 2- and 3-byte pointer forms.
        let name = |i: u32| format!("{i:0200}");
        let mut w = MmdbWriter::new("GeoLite2-ASN");
        for i in 0..6000u32 {
            let net = std::net::Ipv4Addr::from((100u32 << 24 | 64 << 16) + (i << 8));
            w = w.insert((net.into(), 24), asn_record(i, &name(i % 3000)));
        }
        let bytes = w.to_bytes().unwrap();
        assert!(
            bytes.len() > 600_000 && bytes.len() < 1_200_000,
            "{}",
            bytes.len()
        );
        let r = maxminddb::Reader::from_source(bytes).unwrap();
        r.verify().unwrap();
        for i in (0..6000u32).step_by(7) {
            let a: Asn = r
                .lookup(std::net::Ipv4Addr::from((100u32 << 24 | 64 << 16) + (i << 8) + 9).into())
                .unwrap()
                .decode()
                .unwrap()
                .unwrap();
            assert_eq!(a.autonomous_system_number, i);
            assert_eq!(a.autonomous_system_organization, name(i % 3000));
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let e = MmdbWriter::new("X")
            .insert((ip("1.2.3.4"), 33), country_record("RU"))
            .to_bytes()
            .unwrap_err();
        assert!(e.to_string().contains("1.2.3.4/33"), "{e}");
        assert!(MmdbWriter::new("X")
            .insert((ip("::"), 0), country_record("RU"))
            .to_bytes()
            .is_err());
        assert!(MmdbWriter::new("X").record_size(20).to_bytes().is_err());
        // An empty database is still a valid one.
        let r = maxminddb::Reader::from_source(MmdbWriter::new("X").to_bytes().unwrap()).unwrap();
        r.verify().unwrap();
        assert!(!r.lookup(ip("1.1.1.1")).unwrap().has_data());
    }
}
