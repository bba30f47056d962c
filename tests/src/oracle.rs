//! An independent recomputation of the aggregation API's cells from raw reports, for tests.
//!
//! Written from the rules as README.md and docs/ARCHITECTURE.md state them, and sharing no code
//! with the collector: no `Observation`, no cell key, no cap key, no filter, no grouping, no
//! sketch of its own — only the report types and the published precision both ends agree on
//! (`callwatch_proto`). Exact order statistics at rank ⌊q·(n−1)⌋ of the sorted values, which the
//! API's sketches answer within their stated relative error and publishes rounded to each
//! figure's rule ([`published_range`] is what the API may then show); shares are rounded to
//! their rule as the API publishes them, so they compare exactly. A slip in either — swapped up/down loss, a day off by
//! one, the cap counted per hour, a control arm in a platform cell — makes the two disagree.

use callwatch_proto::precision::{self, Precision};
use callwatch_proto::report::{StreamKind, StreamOutcome, VerdictRule};
use callwatch_proto::{CallReport, Platform, Role, Verdict};
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One stored report as the oracle sees it: where it was filed, who signed it, what it says.
pub struct Input<'a> {
    pub country: &'a str,
    /// The region's ISO 3166-2 subdivision as filed (`RU-MOW`), empty when unknown.
    pub subdivision: &'a str,
    pub asn: u32,
    /// The agent's 32-byte public key.
    pub agent: &'a [u8],
    pub report: &'a CallReport,
    /// The report's prefix tag as filed (16 hex digits), if any.
    pub prefix_tag: Option<&'a str>,
}

impl Input<'_> {
    /// The network prefix the report counts under: its tag's 8 bytes, or without a (valid)
    /// tag the first 8 bytes of the agent key.
    fn prefix(&self) -> Vec<u8> {
        match self.prefix_tag.map(hex::decode) {
            Some(Ok(t)) if t.len() == 8 => t,
            _ => self.agent[..8].to_vec(),
        }
    }
}

/// A query, spelled as in the API (`axis_x`, `axis_y` and the filters).
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Axis names: day, hour, country, region, asn, platform, arm, kind.
    pub axes: Vec<&'static str>,
    pub country: Option<&'static str>,
    /// An ISO 3166-2 subdivision code, upper case (`RU-MOW`).
    pub region: Option<&'static str>,
    pub asn: Option<u32>,
    pub platform: Option<Platform>,
    pub arm: Option<Role>,
    pub kind: Option<StreamKind>,
    /// Unix ms; applied at hour resolution (rounded down).
    pub since_ms: Option<i64>,
    /// Unix ms; applied at hour resolution (rounded up).
    pub until_ms: Option<i64>,
    pub min_agents: usize,
    pub max_per_agent_per_day: usize,
    /// The prefix cap; `None` for none.
    pub max_per_prefix_per_day: Option<usize>,
}

const HOUR_MS: i64 = 3_600_000;

/// UTC day, country, ASN, platform, arm, kind: what the caps count per (with the agent key, or
/// the prefix).
type DayCell = (i64, String, u32, Platform, Role, StreamKind);
/// What the per-agent cap counts per.
type CapGroup<'a> = (DayCell, &'a [u8]);
/// What the prefix cap counts per.
type PrefixGroup = (DayCell, Vec<u8>);
/// The figures a cell carries, by the API's names.
pub const FIGURES: [&str; 8] = [
    "rtt_ms",
    "jitter_up_ms",
    "jitter_down_ms",
    "loss",
    "loss_up",
    "loss_down",
    "mos",
    "stalls",
];

/// A stream's name as the API spells it (the proto's serde name).
fn name<T: serde::Serialize>(v: T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

fn hour_text(hour: i64) -> String {
    DateTime::<Utc>::from_timestamp(hour * 3600, 0)
        .map(|t| t.format("%Y-%m-%dT%H:00:00Z").to_string())
        .unwrap_or_default()
}

fn day_text(day: i64) -> String {
    DateTime::<Utc>::from_timestamp(day * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// Exact p10, median and p90 (rank ⌊q·(n−1)⌋), or null without values.
fn figure(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[(q * (v.len() - 1) as f64).floor() as usize];
    json!({"p10": at(0.1), "median": at(0.5), "p90": at(0.9)})
}

/// The values the API may publish for figure `name` whose exact value is `exact`: its sketch
/// answers within `relative_error` of `exact` (and 1e-9, for the float arithmetic), then rounds
/// to the figure's rule, which keeps order; so the published value lies between the two ends,
/// rounded. Panics on a name that is not a published figure.
pub fn published_range(name: &str, exact: f64, relative_error: f64) -> (f64, f64) {
    let p = precision::of(name).unwrap_or_else(|| panic!("{name} is not a published figure"));
    let err = relative_error * exact.abs() + 1e-9;
    let round = |x: f64| {
        p.round(x)
            .unwrap_or_else(|| panic!("{name}: {x} is not finite"))
    };
    (round(exact - err), round(exact + err))
}

/// The decimals a JSON number carries as written (serde_json writes an f64 in its shortest
/// form, so a value read back writes as it was read); 0 for an integer, also in exponent form.
pub fn decimals(text: &str) -> usize {
    let mut parts = text.split(['e', 'E']);
    let mantissa = parts.next().unwrap_or("");
    let exp: i64 = parts.next().map_or(0, |e| e.parse().unwrap_or(0));
    let frac = mantissa.split('.').nth(1).unwrap_or("");
    (frac.trim_end_matches('0').len() as i64 - exp).max(0) as usize
}

/// Checks every number of an API cell (JSON) by its rule in `callwatch_proto::precision`: a
/// figure's p10, median and p90 and a share carry at most their rule's decimals (a count's
/// quantiles are integers); counts, agents, verdicts and filing counts are integers.
pub fn assert_published_precision(cell: &Value) {
    let Some(fields) = cell.as_object() else {
        panic!("a cell is an object: {cell}");
    };
    for (name, value) in fields {
        let numbers: Vec<(String, &Value)> = match value {
            Value::Object(m) => m.iter().map(|(k, v)| (format!("{name}.{k}"), v)).collect(),
            v => vec![(name.clone(), v)],
        };
        for (field, v) in numbers.into_iter().filter(|(_, v)| v.is_number()) {
            match precision::of(name) {
                Some(p) => {
                    assert!(
                        decimals(&v.to_string()) <= p.decimals(),
                        "{field}: {v} has more than {} decimals\n{cell}",
                        p.decimals()
                    );
                    if p == Precision::Count {
                        assert!(v.is_i64(), "{field}: {v} is a count\n{cell}");
                    }
                }
                None => assert!(v.is_u64(), "{field}: {v} is a count\n{cell}"),
            }
        }
    }
}

/// [`assert_published_precision`] for the API's CSV: every cell of a figure's or share's
/// column (`rtt_ms_p10`, `loss_median`, `blocked_share`, …) by its rule, every other numeric
/// column an integer. Returns the number of rows.
pub fn assert_csv_precision(csv: &str) -> usize {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let mut rows = 0;
    for line in lines {
        rows += 1;
        for (col, text) in header.iter().zip(line.split(',')) {
            let name = ["_p10", "_median", "_p90"]
                .iter()
                .find_map(|s| col.strip_suffix(s).filter(|n| precision::of(n).is_some()))
                .unwrap_or(col);
            if text.is_empty() {
                continue;
            }
            match precision::of(name) {
                Some(p) => {
                    assert!(text.parse::<f64>().is_ok(), "{col}: {text:?} is a number");
                    assert!(
                        decimals(text) <= p.decimals(),
                        "{col}: {text} has more than {} decimals\n{line}",
                        p.decimals()
                    );
                }
                None if ["count", "agents", "asn", "hosting", "uploaded_elsewhere"]
                    .contains(col)
                    || col.starts_with("verdict_") =>
                {
                    assert!(
                        text.parse::<u64>().is_ok(),
                        "{col}: {text} is a count\n{line}"
                    )
                }
                None => {}
            }
        }
    }
    rows
}

/// The published cells of `q` over `reports` (in arrival order), keyed by their axis values in
/// the query's axis order, each as the API's JSON cell (axes, count, agents, figures, verdicts,
/// shares; without the filing counts). The publication rules, written out here on their own:
/// a *block* is one UTC day of one (country, ASN, platform, arm, kind) and is published when k
/// agents on k prefixes stand behind it; per (day, country, platform, arm, kind) the blocks
/// below k together are published (by country, never by network) when they meet k. A
/// published block, or such a remainder, divides by subdivision when each of the parts that
/// meet k can be published with its other parts together meeting k too (or there being none):
/// those parts are its regions (the part of unknown subdivision shown as the country); a query
/// grouped or filtered by region counts only regions, the others the whole. With the hour axis,
/// each region of a published block (the other parts together counting as one; the whole block
/// where it does not divide) publishes its hours that meet k if its other hours together meet
/// k too or there are none. Ranges are whole days except the hour axis's own bounds. The figures are the exact order statistics, unrounded
/// (compare the API's with [`published_range`]); the shares are rounded to their rule, as
/// published.
pub fn cells(reports: &[Input<'_>], q: &Query) -> BTreeMap<Vec<String>, Value> {
    struct Arm<'a> {
        key: Vec<String>,
        /// (day, country, ASN, platform, arm, kind) of the test.
        block: (i64, String, u32, String, String, String),
        /// The ISO 3166-2 subdivision, or empty.
        sub: String,
        hour: i64,
        /// Within the query's own hour bounds (the hour axis's cells).
        in_hours: bool,
        agent: &'a [u8],
        prefix: Vec<u8>,
        figures: [Option<f64>; 8],
        verdict: Option<Verdict>,
        rule: Option<VerdictRule>,
    }
    let mut per_day: HashMap<CapGroup<'_>, usize> = HashMap::new();
    let mut per_prefix: HashMap<PrefixGroup, usize> = HashMap::new();
    let mut kept: Vec<Arm<'_>> = Vec::new();
    for input in reports {
        let r = input.report;
        let hour = r.started_at.timestamp_millis().div_euclid(HOUR_MS);
        let country =
            if input.country.len() == 2 && input.country.chars().all(|c| c.is_ascii_alphabetic()) {
                input.country.to_ascii_uppercase()
            } else {
                "ZZ".to_string()
            };
        // A subdivision is the country, a hyphen and one to three capitals or digits.
        let sub = match input.subdivision.split_once('-') {
            Some((cc, part))
                if cc == country
                    && (1..=3).contains(&part.len())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) =>
            {
                input.subdivision.to_string()
            }
            _ => String::new(),
        };
        for s in &r.streams {
            if !matches!(s.role, Role::Platform | Role::Control) {
                continue;
            }
            // The per-agent cap: the first `max_per_agent_per_day` of each UTC day, network,
            // platform, arm and kind, whatever the query.
            let day_cell = (
                hour.div_euclid(24),
                country.clone(),
                input.asn,
                r.platform,
                s.role,
                r.stream_kind,
            );
            let seen = per_day.entry((day_cell.clone(), input.agent)).or_default();
            *seen += 1;
            if *seen > q.max_per_agent_per_day {
                continue;
            }
            // The prefix cap, over what the agent cap kept.
            let prefix = input.prefix();
            let seen = per_prefix.entry((day_cell, prefix.clone())).or_default();
            *seen += 1;
            if q.max_per_prefix_per_day.is_some_and(|m| *seen > m) {
                continue;
            }
            // The filter.
            let arm_ok = match q.arm {
                Some(a) => a == s.role,
                None => q.axes.contains(&"arm") || s.role == Role::Platform,
            };
            let kind_ok = match q.kind {
                Some(k) => k == r.stream_kind,
                None => q.axes.contains(&"kind") || r.stream_kind == StreamKind::Voice,
            };
            let in_hours = q.since_ms.is_none_or(|t| hour >= t.div_euclid(HOUR_MS))
                && q.until_ms
                    .is_none_or(|t| hour < t.div_euclid(HOUR_MS) + i64::from(t % HOUR_MS != 0));
            // Whole days are read.
            let day = hour.div_euclid(24);
            let day_ms = 24 * HOUR_MS;
            let since_ok = q.since_ms.is_none_or(|t| day >= t.div_euclid(day_ms));
            let until_ok = q
                .until_ms
                .is_none_or(|t| day < t.div_euclid(day_ms) + i64::from(t % day_ms != 0));
            if !(arm_ok
                && kind_ok
                && since_ok
                && until_ok
                && q.country.is_none_or(|c| c.eq_ignore_ascii_case(&country))
                && q.region
                    .is_none_or(|r| r.starts_with(&format!("{country}-")))
                && q.asn.is_none_or(|a| a == input.asn)
                && q.platform.is_none_or(|p| p == r.platform))
            {
                continue;
            }
            let key = q
                .axes
                .iter()
                .map(|axis| match *axis {
                    "day" => day_text(hour.div_euclid(24)),
                    "hour" => hour_text(hour),
                    "country" => country.clone(),
                    "region" if sub.is_empty() => country.clone(),
                    "region" => sub.clone(),
                    "asn" => input.asn.to_string(),
                    "platform" => name(r.platform),
                    "arm" => name(s.role),
                    "kind" => name(r.stream_kind),
                    other => panic!("unknown axis {other}"),
                })
                .collect();
            let measured = s.packets_sent > 0
                && !r.reflector_loaded
                && !matches!(s.outcome, StreamOutcome::Blocked | StreamOutcome::Refused);
            let figures = if measured {
                [
                    s.rtt_ms.map(|x| x.median),
                    s.jitter_ms.map(|j| j.up),
                    s.jitter_ms.map(|j| j.down),
                    s.loss,
                    s.loss_up,
                    s.loss_down,
                    s.mos,
                    s.stalls.map(|x| f64::from(x.count)),
                ]
            } else {
                [None; 8]
            };
            kept.push(Arm {
                key,
                block: (
                    day,
                    country.clone(),
                    input.asn,
                    name(r.platform),
                    name(s.role),
                    name(r.stream_kind),
                ),
                sub: sub.clone(),
                hour,
                in_hours,
                agent: input.agent,
                prefix,
                figures,
                verdict: r.verdict,
                rule: r.verdict_detail.as_ref().and_then(|d| d.rule),
            });
        }
    }
    let k = q.min_agents.max(1);
    let meets = |arms: &[&Arm<'_>]| {
        let agents: BTreeSet<&[u8]> = arms.iter().map(|a| &a.agent[..8]).collect();
        let prefixes: BTreeSet<&[u8]> = arms.iter().map(|a| &a.prefix[..]).collect();
        agents.len() >= k && prefixes.len() >= k
    };
    let mut blocks: BTreeMap<_, Vec<&Arm<'_>>> = BTreeMap::new();
    for arm in &kept {
        blocks.entry(arm.block.clone()).or_default().push(arm);
    }
    let regional = q.axes.contains(&"region") || q.region.is_some();
    let in_region = |a: &Arm<'_>| q.region.is_none_or(|r| r == a.sub);
    type Meets<'m, 'a> = &'m dyn Fn(&[&Arm<'a>]) -> bool;
    // The regions of a published block or remainder, each `Some(subdivision)`, and its other
    // parts together as `None`; or the whole as `None` when it does not divide.
    #[allow(clippy::type_complexity)]
    fn regions<'r, 'a>(
        arms: &[&'r Arm<'a>],
        meets: Meets<'_, 'a>,
    ) -> Vec<(Option<String>, Vec<&'r Arm<'a>>)> {
        let mut parts: BTreeMap<String, Vec<&'r Arm<'a>>> = BTreeMap::new();
        for a in arms {
            parts.entry(a.sub.clone()).or_default().push(*a);
        }
        let others: Vec<&'r Arm<'a>> = parts
            .values()
            .filter(|p| !meets(p))
            .flat_map(|p| p.iter().copied())
            .collect();
        if !others.is_empty() && !meets(&others) {
            return vec![(None, arms.to_vec())];
        }
        let mut out: Vec<(Option<String>, Vec<&'r Arm<'a>>)> = parts
            .into_iter()
            .filter(|(_, p)| meets(p))
            .map(|(sub, p)| (Some(sub), p))
            .collect();
        if !others.is_empty() {
            out.push((None, others));
        }
        out
    }
    let mut published: Vec<&Arm<'_>> = Vec::new();
    if q.axes.contains(&"hour") {
        for arms in blocks.values().filter(|b| meets(b)) {
            for (region, unit) in regions(arms, &meets) {
                if regional && region.is_none() {
                    continue;
                }
                let mut hours: BTreeMap<i64, Vec<&Arm<'_>>> = BTreeMap::new();
                for a in unit {
                    hours.entry(a.hour).or_default().push(a);
                }
                let below: Vec<&Arm<'_>> = hours
                    .values()
                    .filter(|h| !meets(h))
                    .flat_map(|h| h.iter().copied())
                    .collect();
                if below.is_empty() || meets(&below) {
                    for h in hours.values().filter(|h| meets(h)) {
                        published.extend(h.iter().filter(|a| a.in_hours && in_region(a)));
                    }
                }
            }
        }
    } else {
        let atoms = |arms: &[&'_ Arm<'_>]| -> Vec<usize> {
            // Positions in `arms` of what a block or remainder publishes.
            let whole: Vec<usize> = (0..arms.len()).collect();
            if !regional {
                return whole;
            }
            let mut out = Vec::new();
            for (region, unit) in regions(arms, &meets) {
                if region.is_some() {
                    for a in unit.into_iter().filter(|a| in_region(a)) {
                        out.extend(arms.iter().position(|b| std::ptr::eq(*b, a)));
                    }
                }
            }
            out
        };
        let mut small: BTreeMap<_, Vec<&Arm<'_>>> = BTreeMap::new();
        for ((day, cc, _, platform, arm, kind), arms) in &blocks {
            if meets(arms) {
                published.extend(atoms(arms).into_iter().map(|i| arms[i]));
            } else {
                small
                    .entry((
                        *day,
                        cc.clone(),
                        platform.clone(),
                        arm.clone(),
                        kind.clone(),
                    ))
                    .or_default()
                    .extend(arms.iter().copied());
            }
        }
        if !q.axes.contains(&"asn") && q.asn.is_none() {
            for arms in small.values().filter(|s| meets(s)) {
                published.extend(atoms(arms).into_iter().map(|i| arms[i]));
            }
        }
    }
    let mut groups: BTreeMap<Vec<String>, Vec<&Arm<'_>>> = BTreeMap::new();
    for arm in published {
        groups.entry(arm.key.clone()).or_default().push(arm);
    }
    let blocked_rules = [
        VerdictRule::Blocked,
        VerdictRule::Cut,
        VerdictRule::PlatformServersUnreachable,
    ];
    let no_reference_rules = [
        VerdictRule::NoReference,
        VerdictRule::NothingAnswered,
        VerdictRule::ReflectorBusy,
    ];
    let mut out = BTreeMap::new();
    for (key, arms) in groups {
        let agents: BTreeSet<&[u8]> = arms.iter().map(|a| &a.agent[..8]).collect();
        let mut cell = Map::new();
        for (axis, value) in q.axes.iter().zip(&key) {
            cell.insert(
                axis.to_string(),
                if *axis == "asn" {
                    json!(value.parse::<u32>().unwrap_or(0))
                } else {
                    json!(value)
                },
            );
        }
        cell.insert("count".into(), json!(arms.len()));
        cell.insert("agents".into(), json!(agents.len()));
        for (i, f) in FIGURES.iter().enumerate() {
            cell.insert(
                f.to_string(),
                figure(arms.iter().filter_map(|a| a.figures[i]).collect()),
            );
        }
        let count = |v: Verdict| arms.iter().filter(|a| a.verdict == Some(v)).count();
        let (none, inconclusive, differentiated) = (
            count(Verdict::None),
            count(Verdict::Inconclusive),
            count(Verdict::Differentiated),
        );
        let with = |v: Verdict, rules: &[VerdictRule]| {
            arms.iter()
                .filter(|a| a.verdict == Some(v) && a.rule.is_some_and(|r| rules.contains(&r)))
                .count()
        };
        let blocked = with(Verdict::Differentiated, &blocked_rules);
        let no_reference = with(Verdict::Inconclusive, &no_reference_rules);
        cell.insert(
            "verdicts".into(),
            json!({"none": none, "inconclusive": inconclusive, "differentiated": differentiated,
                   "blocked": blocked, "no_reference": no_reference}),
        );
        let judged = none + inconclusive + differentiated;
        // Published to the shares' rule, as the API does.
        let share = |n: usize| {
            if judged == 0 {
                Value::Null
            } else {
                json!(Precision::Fraction.round(n as f64 / judged as f64))
            }
        };
        cell.insert("differentiated_share".into(), share(differentiated));
        cell.insert("blocked_share".into(), share(blocked));
        out.insert(key, Value::Object(cell));
    }
    out
}
