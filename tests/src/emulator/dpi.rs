//! DPI rules: impair only the datagrams that look like call traffic.
//!
//! The censors we measure single out calls by their shape — STUN messages, UDP ports 3478 or
//! 50000–50100 — and let other UDP pass. A [`DpiRule`] says what to match (byte patterns, ports,
//! direction) and what to do to a match (its own loss, extra delay and rate policer, with a bucket of its
//! own). Rules are data: JSON through serde, or the compact `key=value,…` form that [`SYNTAX`] describes
//! and `str::parse` reads. The model (`super::model`) applies the first matching rule and counts, per
//! rule, what it matched and dropped.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::model::{
    check_fraction, ConfigError, DelayConfig, Direction, JitterShape, PolicerConfig, UdpPorts,
};

/// The STUN magic cookie (RFC 5389), at bytes 4..8 of every STUN message.
pub const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// The compact rule syntax, for command-line help.
pub const SYNTAX: &str = "\
A rule is comma-separated key=value pairs (or a JSON object), for example
  match=stun-cookie,ports=3478+50000-50100,loss=0.1,jitter-ms=20
Keys:
  name=TEXT            label in the ground truth (default rule0, rule1, ...)
  dir=up|down|both     which direction it watches (default both)
  match=PATTERN        repeatable, all must hold: stun-cookie (0x2112A442 at offset 4),
                       at:OFFSET:HEX (bytes at OFFSET equal HEX), contains:HEX (anywhere)
  ports=RANGES         port ranges joined by '+', e.g. 3478+50000-50100 (default any port)
  side=dst|src|either  which UDP port the ranges are checked against (default dst)
  loss=FRACTION        drop matches with this probability (0..1)
  delay-ms=MS          extra delay for matches
  jitter-ms=MS         extra jitter for matches (half-width, or std dev with jitter-shape=normal)
  jitter-shape=uniform|normal
  rate-kbps=KBPS       police matches to this rate (payload bytes)
  bucket-bytes=BYTES   the policer's bucket depth (default 50 ms at the rate, at least 1500)
A rule with neither match nor ports matches every datagram in its direction.";

/// Which direction a rule watches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectionFilter {
    Up,
    Down,
    #[default]
    Both,
}

impl DirectionFilter {
    pub fn includes(self, dir: Direction) -> bool {
        matches!(
            (self, dir),
            (DirectionFilter::Both, _)
                | (DirectionFilter::Up, Direction::Up)
                | (DirectionFilter::Down, Direction::Down)
        )
    }
}

/// Which UDP port a rule's port ranges are checked against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortSide {
    #[default]
    Dst,
    Src,
    Either,
}

/// An inclusive range of UDP ports; written `3478` or `50000-50100`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> Result<Self, ConfigError> {
        if first > last {
            return Err(ConfigError::new(
                "ports",
                format!("range {first}-{last} ends before it starts"),
            ));
        }
        Ok(PortRange { first, last })
    }

    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| ConfigError::new("ports", format!("`{p}` is not a port (0..=65535)")))
        };
        match s.split_once('-') {
            Some((first, last)) => PortRange::new(port(first)?, port(last)?),
            None => Ok(PortRange::single(port(s)?)),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl TryFrom<String> for PortRange {
    type Error = ConfigError;

    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(range: PortRange) -> String {
        range.to_string()
    }
}

/// A condition on a datagram's bytes. Bytes are written in hex in JSON and in the compact syntax.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ByteMatch {
    /// The bytes at `offset..offset + bytes.len()` equal `bytes` (a shorter datagram does not match).
    At {
        offset: usize,
        #[serde(with = "hex_bytes")]
        bytes: Vec<u8>,
    },
    /// `bytes` occurs anywhere in the datagram.
    Contains {
        #[serde(with = "hex_bytes")]
        bytes: Vec<u8>,
    },
}

impl ByteMatch {
    /// The STUN magic cookie at offset 4.
    pub fn stun_cookie() -> Self {
        ByteMatch::At {
            offset: 4,
            bytes: STUN_MAGIC_COOKIE.to_vec(),
        }
    }

    pub fn matches(&self, datagram: &[u8]) -> bool {
        match self {
            ByteMatch::At { offset, bytes } => offset
                .checked_add(bytes.len())
                .and_then(|end| datagram.get(*offset..end))
                .is_some_and(|window| window == bytes.as_slice()),
            ByteMatch::Contains { bytes } => {
                !bytes.is_empty()
                    && datagram
                        .windows(bytes.len())
                        .any(|window| window == bytes.as_slice())
            }
        }
    }

    fn pattern(&self) -> &[u8] {
        match self {
            ByteMatch::At { bytes, .. } | ByteMatch::Contains { bytes } => bytes,
        }
    }
}

impl FromStr for ByteMatch {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || {
            ConfigError::new(
                "match",
                format!("`{s}` is not stun-cookie, at:OFFSET:HEX or contains:HEX"),
            )
        };
        if s == "stun-cookie" {
            return Ok(ByteMatch::stun_cookie());
        }
        if let Some(hex) = s.strip_prefix("contains:") {
            return Ok(ByteMatch::Contains {
                bytes: hex_bytes::decode(hex).map_err(|e| ConfigError::new("match", e))?,
            });
        }
        let rest = s.strip_prefix("at:").ok_or_else(bad)?;
        let (offset, hex) = rest.split_once(':').ok_or_else(bad)?;
        let offset = offset
            .parse()
            .map_err(|_| ConfigError::new("match", format!("`{offset}` is not a byte offset")))?;
        Ok(ByteMatch::At {
            offset,
            bytes: hex_bytes::decode(hex).map_err(|e| ConfigError::new("match", e))?,
        })
    }
}

/// What a rule does to the datagrams it matches, on top of the base impairment: its policer (own bucket
/// per direction) first, then its loss, and its delay is added to the base delay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleImpairment {
    /// Probability (0..1) that a matching datagram is dropped.
    pub loss: f64,
    pub delay: DelayConfig,
    pub policer: Option<PolicerConfig>,
    /// Loss in bursts on top of `loss`: a Gilbert chain per direction over the matching
    /// datagrams (in the bad state every one is lost).
    pub bursts: Option<Bursts>,
}

/// A two-state burst chain: good→bad with `p_good_to_bad`, bad→good with `p_bad_to_good`.
/// Mean burst length 1/`p_bad_to_good`; stationary loss p_gb/(p_gb + p_bg).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Bursts {
    pub p_good_to_bad: f64,
    pub p_bad_to_good: f64,
}

/// One DPI rule. It matches a datagram when the direction is watched, the port (on `port_side`) is in
/// one of `ports` (or `ports` is empty) and every one of `patterns` holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpiRule {
    pub name: String,
    pub direction: DirectionFilter,
    pub patterns: Vec<ByteMatch>,
    pub ports: Vec<PortRange>,
    pub port_side: PortSide,
    pub impairment: RuleImpairment,
    /// The rule only applies from this many ms after the start of the run (a censor switched on
    /// mid-call); 0: from the start.
    pub active_from_ms: u64,
    /// The rule lets this many bytes of matching datagrams through before it applies (a censor
    /// that throttles a flow after N bytes); 0: from the first.
    pub after_bytes: u64,
    /// The rule applies only to the first this many matching datagrams, then lets them pass (a
    /// censor that blocks a call's set-up and nothing after it); 0: to every one.
    pub first_packets: u64,
}

impl DpiRule {
    /// Whether the rule is switched on at `now` (time since the start of the run).
    pub fn active_at(&self, now: std::time::Duration) -> bool {
        now.as_millis() >= u128::from(self.active_from_ms)
    }

    pub fn matches(&self, dir: Direction, datagram: &[u8], ports: UdpPorts) -> bool {
        self.direction.includes(dir)
            && self.port_matches(ports)
            && self.patterns.iter().all(|p| p.matches(datagram))
    }

    fn port_matches(&self, ports: UdpPorts) -> bool {
        if self.ports.is_empty() {
            return true;
        }
        let hit = |port: u16| self.ports.iter().any(|range| range.contains(port));
        match self.port_side {
            PortSide::Dst => hit(ports.dst),
            PortSide::Src => hit(ports.src),
            PortSide::Either => hit(ports.src) || hit(ports.dst),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, pattern) in self.patterns.iter().enumerate() {
            if pattern.pattern().is_empty() {
                return Err(ConfigError::new(
                    format!("patterns[{i}]"),
                    "a byte pattern needs at least one byte",
                ));
            }
        }
        for range in &self.ports {
            PortRange::new(range.first, range.last)?;
        }
        let impairment = &self.impairment;
        check_fraction("loss", impairment.loss).map_err(|e| e.within("impairment"))?;
        impairment
            .delay
            .validate()
            .map_err(|e| e.within("impairment.delay"))?;
        if let Some(policer) = &impairment.policer {
            policer
                .validate()
                .map_err(|e| e.within("impairment.policer"))?;
        }
        if let Some(b) = &impairment.bursts {
            check_fraction("p_good_to_bad", b.p_good_to_bad)
                .map_err(|e| e.within("impairment.bursts"))?;
            check_fraction("p_bad_to_good", b.p_bad_to_good)
                .map_err(|e| e.within("impairment.bursts"))?;
        }
        Ok(())
    }
}

/// Reads a rule in the compact syntax ([`SYNTAX`]) or, when it starts with `{`, as JSON. Errors name the
/// key at fault.
impl FromStr for DpiRule {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim();
        if s.starts_with('{') {
            let rule: DpiRule =
                serde_json::from_str(s).map_err(|e| ConfigError::new("json", e.to_string()))?;
            rule.validate()?;
            return Ok(rule);
        }
        let mut rule = DpiRule::default();
        let mut rate_kbps = None;
        let mut bucket_bytes = None;
        for pair in s.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::new(pair, "expected key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            let number = |value: &str| {
                value
                    .parse::<f64>()
                    .map_err(|_| ConfigError::new(key, format!("`{value}` is not a number")))
            };
            match key {
                "name" => rule.name = value.to_string(),
                "dir" => {
                    rule.direction = match value {
                        "up" => DirectionFilter::Up,
                        "down" => DirectionFilter::Down,
                        "both" => DirectionFilter::Both,
                        _ => return Err(ConfigError::new(key, format!("`{value}` is not up, down or both"))),
                    }
                }
                "match" => rule.patterns.push(value.parse()?),
                "ports" => {
                    for range in value.split('+') {
                        rule.ports.push(range.parse()?);
                    }
                }
                "side" => {
                    rule.port_side = match value {
                        "dst" => PortSide::Dst,
                        "src" => PortSide::Src,
                        "either" => PortSide::Either,
                        _ => return Err(ConfigError::new(key, format!("`{value}` is not dst, src or either"))),
                    }
                }
                "loss" => {
                    rule.impairment.loss = number(value)?;
                    check_fraction(key, rule.impairment.loss)?;
                }
                "delay-ms" => rule.impairment.delay.delay_ms = number(value)?,
                "jitter-ms" => rule.impairment.delay.jitter_ms = number(value)?,
                "jitter-shape" => {
                    rule.impairment.delay.shape = match value {
                        "uniform" => JitterShape::Uniform,
                        "normal" => JitterShape::Normal,
                        _ => return Err(ConfigError::new(key, format!("`{value}` is not uniform or normal"))),
                    }
                }
                "rate-kbps" => rate_kbps = Some(number(value)?),
                "bucket-bytes" => {
                    bucket_bytes = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| ConfigError::new(key, format!("`{value}` is not a byte count")))?,
                    )
                }
                _ => {
                    return Err(ConfigError::new(
                        key,
                        "unknown key; expected name, dir, match, ports, side, loss, delay-ms, jitter-ms, \
                         jitter-shape, rate-kbps or bucket-bytes",
                    ))
                }
            }
        }
        rule.impairment.policer = match (rate_kbps, bucket_bytes) {
            (Some(rate_kbps), Some(bucket_bytes)) => Some(PolicerConfig {
                rate_kbps,
                bucket_bytes,
            }),
            (Some(rate_kbps), None) => Some(PolicerConfig::new(rate_kbps)),
            (None, Some(_)) => return Err(ConfigError::new("bucket-bytes", "needs rate-kbps")),
            (None, None) => None,
        };
        // Map the struct's field names back to the keys the user wrote.
        rule.validate().map_err(|e| {
            let key = match e.field.as_str() {
                "impairment.delay.delay_ms" => "delay-ms",
                "impairment.delay.jitter_ms" => "jitter-ms",
                "impairment.policer.rate_kbps" => "rate-kbps",
                "impairment.policer.bucket_bytes" => "bucket-bytes",
                other => other,
            };
            ConfigError::new(key, e.problem)
        })?;
        Ok(rule)
    }
}

/// Bytes as a hex string in serde (`"2112a442"`; `0x` prefix and `_` separators accepted on input).
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        let digits: Vec<u8> = text
            .strip_prefix("0x")
            .unwrap_or(text)
            .bytes()
            .filter(|&b| b != b'_')
            .collect();
        if digits.is_empty() || !digits.len().is_multiple_of(2) {
            return Err(format!(
                "`{text}` is not an even, non-zero number of hex digits"
            ));
        }
        let nibble = |d: u8| {
            (d as char)
                .to_digit(16)
                .map(|v| v as u8)
                .ok_or_else(|| format!("`{text}` has a non-hex digit"))
        };
        digits
            .chunks(2)
            .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
            .collect()
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        decode(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(src: u16, dst: u16) -> UdpPorts {
        UdpPorts { src, dst }
    }

    #[test]
    fn compact_syntax_reads_every_key() {
        let rule: DpiRule = "name=wa,dir=up,match=stun-cookie,match=contains:dead_beef,ports=3478+50000-50100,\
                             side=either,loss=0.1,delay-ms=20,jitter-ms=5,jitter-shape=normal,rate-kbps=64,\
                             bucket-bytes=3000"
            .parse()
            .expect("valid rule");
        assert_eq!(rule.name, "wa");
        assert_eq!(rule.direction, DirectionFilter::Up);
        assert_eq!(
            rule.patterns,
            vec![
                ByteMatch::stun_cookie(),
                ByteMatch::Contains {
                    bytes: vec![0xde, 0xad, 0xbe, 0xef]
                }
            ]
        );
        assert_eq!(
            rule.ports,
            vec![
                PortRange::single(3478),
                PortRange {
                    first: 50_000,
                    last: 50_100
                }
            ]
        );
        assert_eq!(rule.port_side, PortSide::Either);
        assert_eq!(rule.impairment.loss, 0.1);
        assert_eq!(
            rule.impairment.delay,
            DelayConfig {
                delay_ms: 20.0,
                jitter_ms: 5.0,
                shape: JitterShape::Normal
            }
        );
        assert_eq!(
            rule.impairment.policer,
            Some(PolicerConfig {
                rate_kbps: 64.0,
                bucket_bytes: 3000
            })
        );
    }

    #[test]
    fn json_and_compact_forms_agree_and_round_trip() {
        let compact: DpiRule = "match=at:4:0x2112A442,ports=3478-3478,loss=0.1"
            .parse()
            .expect("valid");
        let json = serde_json::to_string(&compact).expect("serialises");
        assert!(json.contains("\"2112a442\""), "{json}");
        assert!(json.contains("\"3478\""), "{json}");
        let back: DpiRule = json.parse().expect("JSON form parses");
        assert_eq!(back, compact);
        assert_eq!(compact.patterns, vec![ByteMatch::stun_cookie()]);
    }

    #[test]
    fn errors_name_the_key() {
        let field = |s: &str| s.parse::<DpiRule>().expect_err("refused").field;
        assert_eq!(field("loss=1.5"), "loss");
        assert_eq!(field("loss=lots"), "loss");
        assert_eq!(field("ports=50100-50000"), "ports");
        assert_eq!(field("ports=70000"), "ports");
        assert_eq!(field("match=at:4:21g2"), "match");
        assert_eq!(field("match=stun"), "match");
        assert_eq!(field("speed=9"), "speed");
        assert_eq!(field("bucket-bytes=100"), "bucket-bytes");
        assert_eq!(field("rate-kbps=0"), "rate-kbps");
        assert_eq!(field("jitter-ms=-1"), "jitter-ms");
        assert_eq!(field("loss"), "loss");
        assert_eq!(field("{\"lossy\": 1}"), "json");
    }

    #[test]
    fn byte_matches_respect_bounds() {
        let cookie = ByteMatch::stun_cookie();
        assert!(cookie.matches(&[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]));
        assert!(!cookie.matches(&[0, 1, 0, 0, 0x21, 0x12, 0xA4])); // too short
        assert!(!cookie.matches(&[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x43]));
        let far = ByteMatch::At {
            offset: usize::MAX,
            bytes: vec![1],
        };
        assert!(!far.matches(&[1; 16]));
        let anywhere = ByteMatch::Contains {
            bytes: vec![0xbe, 0xef],
        };
        assert!(anywhere.matches(&[0, 0, 0xbe, 0xef, 0]));
        assert!(!anywhere.matches(&[0xbe]));
    }

    #[test]
    fn ports_and_direction_filter() {
        let rule: DpiRule = "dir=down,ports=3478+50000-50100".parse().expect("valid");
        assert!(rule.matches(Direction::Down, b"x", ports(1, 50_100)));
        assert!(!rule.matches(Direction::Up, b"x", ports(1, 50_100)));
        assert!(!rule.matches(Direction::Down, b"x", ports(3478, 50_101)));
        let either: DpiRule = "ports=3478,side=either".parse().expect("valid");
        assert!(either.matches(Direction::Down, b"x", ports(3478, 40_000)));
        assert!(either.matches(Direction::Up, b"x", ports(40_000, 3478)));
        let any: DpiRule = "".parse().expect("an empty rule is valid");
        assert!(any.matches(Direction::Up, b"", ports(0, 0)));
    }
}
