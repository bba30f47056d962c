//! The report schema as data: every key a report body may carry, in which schema version it
//! appeared, and how long each string and array may be.
//!
//! [`crate::sign::SignedReport::verify`] checks a body against it before parsing the report (the
//! one check ingest, `import` and the offline `verify` share), and
//! [`crate::sign::SignedReport::sign`] checks its own output the same way, so an agent never signs
//! a field a collector would refuse. A body whose object keys are not all known to the schema it
//! declares is refused, with the path of the first unknown key (in key order, e.g.
//! `streams[0].hostname`): a signed body is stored and republished verbatim, so a field nobody
//! defined (a hostname, a local address, markup, a spreadsheet formula) must never get in.
//!
//! Why a table and not `#[serde(deny_unknown_fields)]` on the report types: the table knows each
//! key's schema version (a schema-1 body may not carry a field schema 2 adds, while the types
//! always describe the newest), refusals name the key's full path, sizes are bounded per field
//! before anything is built from the body, and the collector's store keeps reading the reports
//! it stored before this rule with the tolerant derived parse (only what comes in is refused).
//! The types and the table are kept in step by tests (`the_table_knows_every_field_a_report_writes`,
//! `every_key_of_the_table_is_a_field_of_the_report`).
//!
//! Types and values (numbers, enum names, ranges) are left to the typed parse and
//! [`crate::report::CallReport::validate`] that follow; this check only refuses what those would
//! let through: unknown keys, oversized strings and arrays, and objects or arrays where the
//! schema has none (serde would read a struct from an array, an enum from an object).

use crate::report::MAX_STREAMS;

/// Why a body breaks the schema ([`crate::sign::VerifyError`] has a variant for each, so ingest
/// counts them under the same labels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaError {
    /// Not of the shape the schema gives (an object where a string is due, …).
    Malformed(String),
    /// A key the schema does not define, with its path (`streams[0].hostname`).
    UnknownField(String),
    /// A string over its limit.
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    /// An array over its limit.
    TooMany {
        field: String,
        count: usize,
        max: usize,
    },
}
use serde_json::{Map, Value};

/// Longest `agent_version`: the agent writes `callwatch-agent/<semver>` (21 bytes for 0.1.0).
pub const MAX_AGENT_VERSION_LEN: usize = 64;
/// Longest free sentence (`verdict_detail.method`, `verdict_detail.reason`): the agent's method
/// text is about 400 bytes with the default settings and its longest reason about 300
/// (`agent/src/verdict.rs`, whose proptest keeps both under half this limit for any input and
/// any window length): five times the former.
pub const MAX_SENTENCE_LEN: usize = 2048;
/// Longest `streams[].mos_basis`: the agent writes e.g.
/// `g107-nb;codec=opus;ie=0;bpl=25.1;provisional` (43 bytes).
pub const MAX_BASIS_LEN: usize = 256;
/// Longest short text with a fixed format: report ids (32 hex digits), `started_at` (RFC 3339,
/// about 30 bytes), `owd_ms.reference` (`relative-to-path-minimum`, 24), attestation key ids
/// (16 hex digits) and token digests (32 hex digits), and enum names (longest
/// `platform-servers-unreachable`, 28).
pub const MAX_NAME_LEN: usize = 64;
/// Longest attestation signature: 128 hex digits.
pub const MAX_SIGNATURE_LEN: usize = 256;

/// What a key's value may be. `null` is always let through here (optional fields).
#[derive(Debug)]
pub enum Shape {
    /// A number, a boolean or an enum's name (at most [`MAX_NAME_LEN`] bytes): anything but an
    /// object or an array.
    Scalar,
    /// A string of at most this many bytes.
    Text(usize),
    /// An object with these keys.
    Object(&'static [Field]),
    /// An array of at most this many items, each of this shape.
    Array(usize, &'static Shape),
}

/// One key of an object.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    /// The schema version that introduced it.
    pub since: u32,
    pub shape: Shape,
}

const fn f(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        since: 1,
        shape,
    }
}

const fn n(name: &'static str) -> Field {
    f(name, Shape::Scalar)
}

const STATS: &[Field] = &[
    n("min"),
    n("mean"),
    n("median"),
    n("p95"),
    n("p99"),
    n("max"),
];
const UP_DOWN: &[Field] = &[n("up"), n("down")];
const ONE_WAY_DELAY: &[Field] = &[
    f("up", Shape::Object(STATS)),
    f("down", Shape::Object(STATS)),
    f("reference", Shape::Text(MAX_NAME_LEN)),
    n("clock_offset_ms"),
    n("clock_offset_error_ms"),
];
const QUANTILES: &[Field] = &[n("p50"), n("p95")];
const IPDV: &[Field] = &[
    f("up", Shape::Object(QUANTILES)),
    f("down", Shape::Object(QUANTILES)),
];
const BURST: &[Field] = &[
    n("count"),
    n("mean_len"),
    n("max_len"),
    n("gap_density"),
    n("burst_density"),
    n("gilbert_p"),
    n("gilbert_q"),
    n("burst_ratio"),
];
const JITTER_BUFFER: &[Field] = &[
    n("fixed_40ms"),
    n("fixed_60ms"),
    n("fixed_100ms"),
    n("adaptive"),
    n("adaptive_delay_ms"),
];
const STALLS: &[Field] = &[n("count"), n("longest_ms")];
const BITRATE: &[Field] = &[n("offered"), n("delivered_up"), n("delivered_down")];
const TIMER: &[Field] = &[n("mean_error_us"), n("p99_error_us"), n("late_sends")];

const STREAM: &[Field] = &[
    n("role"),
    n("outcome"),
    n("dark_from_ms"),
    n("packets_sent"),
    n("packets_reflected"),
    n("packets_received"),
    n("duplicates"),
    n("reordered"),
    n("late"),
    n("loss"),
    n("loss_up"),
    n("loss_down"),
    f("rtt_ms", Shape::Object(STATS)),
    f("owd_ms", Shape::Object(ONE_WAY_DELAY)),
    f("jitter_ms", Shape::Object(UP_DOWN)),
    f("jitter_p95_ms", Shape::Object(UP_DOWN)),
    f("jitter_final_ms", Shape::Object(UP_DOWN)),
    f("ipdv_ms", Shape::Object(IPDV)),
    f("burst", Shape::Object(BURST)),
    f("jitter_buffer", Shape::Object(JITTER_BUFFER)),
    f("stalls", Shape::Object(STALLS)),
    f("bitrate_kbps", Shape::Object(BITRATE)),
    f("timer", Shape::Object(TIMER)),
    n("r_factor"),
    n("mos"),
    f("reflector_residence_ms", Shape::Object(STATS)),
    n("reflector_drops"),
    f("mos_basis", Shape::Text(MAX_BASIS_LEN)),
];

const ARM_COMPARISON: &[Field] = &[
    n("platform_median"),
    n("control_median"),
    n("p_value"),
    n("effect"),
    n("significant"),
];
const ONSET: &[Field] = &[n("at_ms"), n("p_value"), n("effect")];
const RELAY: &[Field] = &[
    n("relay_sent"),
    n("relay_answered"),
    n("reference_sent"),
    n("reference_answered"),
    n("p_value"),
];
const VERDICT_DETAIL: &[Field] = &[
    f("method", Shape::Text(MAX_SENTENCE_LEN)),
    n("window_ms"),
    n("windows"),
    f("loss", Shape::Object(ARM_COMPARISON)),
    f("delay", Shape::Object(ARM_COMPARISON)),
    f("jitter", Shape::Object(ARM_COMPARISON)),
    f("reason", Shape::Text(MAX_SENTENCE_LEN)),
    n("rule"),
    f("onset", Shape::Object(ONSET)),
    f("relay", Shape::Object(RELAY)),
];

const ATTESTATION: &[Field] = &[
    f("country", Shape::Text(MAX_NAME_LEN)),
    n("asn"),
    n("hour"),
    f("report_id", Shape::Text(MAX_NAME_LEN)),
    f("key_id", Shape::Text(MAX_NAME_LEN)),
    f("signature", Shape::Text(MAX_SIGNATURE_LEN)),
    f("path_token_digest", Shape::Text(MAX_NAME_LEN)),
    // ISO 3166-2, at most 6 bytes (`RU-MOW`); checked as a code by the attestation's verify.
    Field {
        name: "subdivision",
        since: 2,
        shape: Shape::Text(MAX_NAME_LEN),
    },
];

const STREAM_SHAPE: Shape = Shape::Object(STREAM);

/// The keys of a report body (`CallReport`'s JSON), with their nested objects.
pub const REPORT: &[Field] = &[
    n("schema"),
    f("id", Shape::Text(MAX_NAME_LEN)),
    f("agent_version", Shape::Text(MAX_AGENT_VERSION_LEN)),
    n("platform"),
    f("started_at", Shape::Text(MAX_NAME_LEN)),
    n("duration_ms"),
    n("interval_ms"),
    n("payload_bytes"),
    n("verdict"),
    f("verdict_detail", Shape::Object(VERDICT_DETAIL)),
    n("stream_kind"),
    f("streams", Shape::Array(MAX_STREAMS, &STREAM_SHAPE)),
    n("probes_sealed"),
    n("reflector_loaded"),
    f("attestation", Shape::Object(ATTESTATION)),
];

/// Checks a parsed report body against the keys and sizes of `schema` (a version this release
/// knows; newer ones are deferred before this, older unknown ones refused after): the first
/// problem, naming its path.
pub fn check(body: &Value, schema: u32) -> Result<(), SchemaError> {
    let mut path = String::new();
    match body {
        Value::Object(map) => check_object(map, REPORT, schema, &mut path),
        _ => Err(SchemaError::Malformed(
            "a report body is a JSON object".into(),
        )),
    }
}

/// A key as it may be shown in a refusal (which the agent logs): short, and escaped unless it
/// is a plain name.
fn shown(key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= MAX_NAME_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        key.to_string()
    } else {
        let cut: String = key.chars().take(MAX_NAME_LEN).collect();
        format!("{cut:?}")
    }
}

fn check_object(
    map: &Map<String, Value>,
    fields: &'static [Field],
    schema: u32,
    path: &mut String,
) -> Result<(), SchemaError> {
    for (key, value) in map {
        let at = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        let Some(field) = fields
            .iter()
            .find(|f| f.name == key.as_str() && f.since <= schema)
        else {
            path.push_str(&shown(key));
            return Err(SchemaError::UnknownField(std::mem::take(path)));
        };
        path.push_str(field.name);
        check_value(value, &field.shape, schema, path)?;
        path.truncate(at);
    }
    Ok(())
}

fn check_value(
    value: &Value,
    shape: &'static Shape,
    schema: u32,
    path: &mut String,
) -> Result<(), SchemaError> {
    let wrong = |path: &mut String, what: &str| {
        Err(SchemaError::Malformed(format!(
            "{}: expected {what}",
            std::mem::take(path)
        )))
    };
    match (shape, value) {
        (_, Value::Null) => Ok(()),
        (Shape::Object(fields), Value::Object(map)) => check_object(map, fields, schema, path),
        (Shape::Object(_), _) => wrong(path, "an object"),
        (Shape::Array(max, item), Value::Array(items)) => {
            if items.len() > *max {
                return Err(SchemaError::TooMany {
                    field: std::mem::take(path),
                    count: items.len(),
                    max: *max,
                });
            }
            let at = path.len();
            for (i, v) in items.iter().enumerate() {
                path.push_str(&format!("[{i}]"));
                check_value(v, item, schema, path)?;
                path.truncate(at);
            }
            Ok(())
        }
        (Shape::Array(..), _) => wrong(path, "an array"),
        (Shape::Text(_) | Shape::Scalar, Value::String(s)) => {
            let max = match shape {
                Shape::Text(max) => *max,
                _ => MAX_NAME_LEN,
            };
            if s.len() > max {
                return Err(SchemaError::TooLong {
                    field: std::mem::take(path),
                    len: s.len(),
                    max,
                });
            }
            Ok(())
        }
        (Shape::Text(_) | Shape::Scalar, Value::Object(_) | Value::Array(_)) => {
            wrong(path, "a string, number or boolean")
        }
        (Shape::Text(_) | Shape::Scalar, _) => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attest::RegionAttestation;
    use crate::report::*;

    /// A report with every optional field set, so its JSON carries every key the types can
    /// write. A field added to the report types belongs here, set (not `None`).
    pub(crate) fn full_report() -> CallReport {
        let mut r = CallReport::example();
        let stats = Stats {
            min: 1.0,
            mean: 2.0,
            median: 2.0,
            p95: 3.0,
            p99: 4.0,
            max: 5.0,
        };
        let arm = ArmComparison {
            platform_median: 1.0,
            control_median: 1.0,
            p_value: 1.0,
            effect: 0.0,
            significant: false,
        };
        r.verdict = Some(crate::Verdict::None);
        r.verdict_detail = Some(VerdictDetail {
            method: "m".into(),
            window_ms: 1000,
            windows: 10,
            loss: arm,
            delay: arm,
            jitter: arm,
            reason: "r".into(),
            rule: Some(VerdictRule::NotWorse),
            onset: Some(Onset {
                at_ms: 1,
                p_value: 0.5,
                effect: 1.0,
            }),
            relay: Some(RelayComparison {
                relay_sent: 4,
                relay_answered: 4,
                reference_sent: 4,
                reference_answered: 4,
                p_value: 1.0,
            }),
        });
        r.stream_kind = StreamKind::Video;
        r.probes_sealed = true;
        r.reflector_loaded = true;
        r.attestation = Some(RegionAttestation {
            country: "DE".into(),
            asn: 3320,
            hour: 1,
            report_id: r.id,
            key_id: "00".repeat(8),
            signature: "00".repeat(64),
            subdivision: Some("DE-BE".into()),
            path_token_digest: Some("00".repeat(16)),
        });
        let s = &mut r.streams[0];
        s.outcome = StreamOutcome::Dark;
        s.dark_from_ms = Some(10);
        s.owd_ms = Some(OneWayDelay {
            up: stats,
            down: stats,
            reference: "relative-to-path-minimum".into(),
            clock_offset_ms: 0.5,
            clock_offset_error_ms: 0.5,
        });
        s.jitter_p95_ms = Some(UpDown { up: 1.0, down: 1.0 });
        s.jitter_final_ms = Some(UpDown { up: 1.0, down: 1.0 });
        let q = Quantiles { p50: 1.0, p95: 2.0 };
        s.ipdv_ms = Some(IpdvUpDown { up: q, down: q });
        s.burst = Some(Burst {
            count: 1,
            mean_len: 1.0,
            max_len: 1,
            gap_density: 0.0,
            burst_density: 1.0,
            gilbert_p: 0.1,
            gilbert_q: 0.9,
            burst_ratio: 1.0,
        });
        s.jitter_buffer = Some(JitterBuffer {
            fixed_40ms: 0.0,
            fixed_60ms: 0.0,
            fixed_100ms: 0.0,
            adaptive: 0.0,
            adaptive_delay_ms: 40.0,
        });
        s.stalls = Some(Stalls {
            count: 1,
            longest_ms: 60.0,
        });
        s.bitrate_kbps = Some(Bitrate {
            offered: 64.0,
            delivered_up: 63.0,
            delivered_down: 62.0,
        });
        s.timer = Some(TimerStats {
            mean_error_us: 1.0,
            p99_error_us: 2.0,
            late_sends: 0,
        });
        s.reflector_residence_ms = Some(stats);
        s.reflector_drops = 1;
        s.mos_basis = Some("g107-nb;codec=opus;ie=0;bpl=25.1;provisional".into());
        r.schema = r.lowest_schema();
        r
    }

    /// Every key path of a JSON value's objects (`streams[]` for array items).
    fn paths(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    out.push(p.clone());
                    paths(v, &p, out);
                }
            }
            Value::Array(items) => {
                for v in items {
                    paths(v, &format!("{at}[]"), out);
                }
            }
            _ => {}
        }
    }

    fn table_paths(fields: &[Field], at: &str, out: &mut Vec<String>) {
        for field in fields {
            let p = if at.is_empty() {
                field.name.to_string()
            } else {
                format!("{at}.{}", field.name)
            };
            out.push(p.clone());
            match &field.shape {
                Shape::Object(inner) => table_paths(inner, &p, out),
                Shape::Array(_, Shape::Object(inner)) => table_paths(inner, &format!("{p}[]"), out),
                _ => {}
            }
        }
    }

    #[test]
    fn the_table_knows_every_field_a_report_writes() {
        let v = serde_json::to_value(full_report()).unwrap();
        assert_eq!(check(&v, SCHEMA_VERSION), Ok(()));
        // Fields this release writes are all defined by the schema version it writes for them.
        assert_eq!(check(&v, full_report().lowest_schema()), Ok(()));
    }

    #[test]
    fn every_key_of_the_table_is_a_field_of_the_report() {
        let mut written = Vec::new();
        paths(
            &serde_json::to_value(full_report()).unwrap(),
            "",
            &mut written,
        );
        written.sort();
        written.dedup();
        let mut known = Vec::new();
        table_paths(REPORT, "", &mut known);
        known.sort();
        assert_eq!(known, written, "the table and the report types differ");
    }

    #[test]
    fn keys_and_sizes_are_checked_at_every_depth() {
        let good = serde_json::to_value(full_report()).unwrap();
        let with = |edit: &dyn Fn(&mut Value)| {
            let mut v = good.clone();
            edit(&mut v);
            check(&v, SCHEMA_VERSION)
        };
        let unknown = |p: &str| Err(SchemaError::UnknownField(p.into()));
        assert_eq!(
            with(&|v| v["hostname"] = "pc-1".into()),
            unknown("hostname")
        );
        assert_eq!(
            with(&|v| v["streams"][0]["local_addr"] = "10.0.0.2".into()),
            unknown("streams[0].local_addr")
        );
        assert_eq!(
            with(&|v| v["streams"][0]["rtt_ms"]["p999"] = 1.0.into()),
            unknown("streams[0].rtt_ms.p999")
        );
        assert_eq!(
            with(&|v| v["verdict_detail"]["loss"]["note"] = "=HYPERLINK(\"x\")".into()),
            unknown("verdict_detail.loss.note")
        );
        assert_eq!(
            with(&|v| v["attestation"]["ip"] = "192.0.2.1".into()),
            unknown("attestation.ip")
        );
        // A key the report types skip (the path token travels beside the body, never in it).
        assert_eq!(
            with(&|v| v["path_token"] = "aa".into()),
            unknown("path_token")
        );
        // An odd key is shown escaped and cut short.
        let long = "<script>".repeat(100);
        let Err(SchemaError::UnknownField(shown)) = with(&|v| v[long.as_str()] = 1.into()) else {
            panic!("not refused")
        };
        assert!(
            shown.starts_with("\"<script>") && shown.len() < 80,
            "{shown}"
        );
        // Sizes: strings per field, enum names, arrays.
        let long_text = |n| Value::String("x".repeat(n));
        assert_eq!(
            with(&|v| v["verdict_detail"]["reason"] = long_text(MAX_SENTENCE_LEN)),
            Ok(())
        );
        assert_eq!(
            with(&|v| v["verdict_detail"]["reason"] = long_text(MAX_SENTENCE_LEN + 1)),
            Err(SchemaError::TooLong {
                field: "verdict_detail.reason".into(),
                len: MAX_SENTENCE_LEN + 1,
                max: MAX_SENTENCE_LEN
            })
        );
        assert!(matches!(
            with(&|v| v["streams"][0]["mos_basis"] = long_text(MAX_BASIS_LEN + 1)),
            Err(SchemaError::TooLong { field, .. }) if field == "streams[0].mos_basis"
        ));
        assert!(matches!(
            with(&|v| v["platform"] = long_text(MAX_NAME_LEN + 1)),
            Err(SchemaError::TooLong { field, .. }) if field == "platform"
        ));
        let stream = good["streams"][0].clone();
        assert_eq!(
            with(&|v| v["streams"] = Value::Array(vec![stream.clone(); MAX_STREAMS + 1])),
            Err(SchemaError::TooMany {
                field: "streams".into(),
                count: MAX_STREAMS + 1,
                max: MAX_STREAMS
            })
        );
        // Shapes serde would take for a struct or an enum: refused here.
        assert!(matches!(
            with(&|v| v["streams"][0] = serde_json::json!(["platform"])),
            Err(SchemaError::Malformed(e)) if e.starts_with("streams[0]: expected an object")
        ));
        assert!(matches!(
            with(&|v| v["platform"] = serde_json::json!({"generic": null})),
            Err(SchemaError::Malformed(e)) if e.starts_with("platform:")
        ));
        assert!(matches!(
            check(&serde_json::json!([1]), SCHEMA_VERSION),
            Err(SchemaError::Malformed(_))
        ));
        // null stands for an absent optional anywhere.
        assert_eq!(with(&|v| v["attestation"] = Value::Null), Ok(()));
    }

    /// Schema 2 added the attestation's subdivision: a schema-1 body with it is refused
    /// (a collector of schema 1 would refuse it too, so the agent writes 2 for it).
    #[test]
    fn the_attested_subdivision_needs_schema_2() {
        let mut r = CallReport::example();
        r.attestation = Some(RegionAttestation {
            country: "RU".into(),
            asn: 8359,
            hour: 1,
            report_id: r.id,
            key_id: "00".repeat(8),
            signature: "00".repeat(64),
            subdivision: Some("RU-MOW".into()),
            path_token_digest: None,
        });
        assert_eq!(r.lowest_schema(), 2);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(check(&v, 2), Ok(()));
        assert_eq!(
            check(&v, 1),
            Err(SchemaError::UnknownField("attestation.subdivision".into()))
        );
        if let Some(a) = &mut r.attestation {
            a.subdivision = None;
        }
        assert_eq!(r.lowest_schema(), 1);
        assert_eq!(check(&serde_json::to_value(&r).unwrap(), 1), Ok(()));
    }

    #[test]
    fn a_key_is_known_only_from_the_schema_that_introduced_it() {
        const LATER: &[Field] = &[
            n("schema"),
            Field {
                name: "added_in_2",
                since: 2,
                shape: Shape::Scalar,
            },
        ];
        let v = serde_json::json!({"schema": 1, "added_in_2": 1});
        let Value::Object(m) = &v else { unreachable!() };
        assert_eq!(
            check_object(m, LATER, 1, &mut String::new()),
            Err(SchemaError::UnknownField("added_in_2".into()))
        );
        assert_eq!(check_object(m, LATER, 2, &mut String::new()), Ok(()));
    }
}
