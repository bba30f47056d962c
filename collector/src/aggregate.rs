//! Aggregation of reports into cells by region, platform and day, in the manner of OONI's
//! aggregation API (`axis_x`, `axis_y`).
//!
//! Pure functions over plain data: [`Observation`]s in, [`Cell`]s out. One observation is one
//! report's platform-arm stream.

use crate::store::StoredReport;
use callwatch_proto::{CallReport, Platform, Role, Verdict};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A dimension cells can be grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Axis {
    Day,
    Country,
    Asn,
    Platform,
}

impl Axis {
    pub const ALL: [Axis; 4] = [Axis::Day, Axis::Country, Axis::Asn, Axis::Platform];

    pub fn as_str(self) -> &'static str {
        match self {
            Axis::Day => "day",
            Axis::Country => "country",
            Axis::Asn => "asn",
            Axis::Platform => "platform",
        }
    }
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Axis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Axis::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!("unknown axis {s:?}; expected one of day, country, asn, platform")
            })
    }
}

/// The figures of one report that aggregation uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// When the test started, Unix ms.
    pub started_at_ms: i64,
    /// UTC day the test started, `YYYY-MM-DD`.
    pub day: String,
    pub country: String,
    pub asn: u32,
    pub platform: Platform,
    /// Agent key, hex.
    pub agent: String,
    pub rtt_median_ms: Option<f64>,
    pub loss_up: f64,
    pub loss_down: f64,
    pub jitter_up_ms: Option<f64>,
    pub jitter_down_ms: Option<f64>,
    pub mos: Option<f64>,
    /// The test's verdict, when it had a control arm.
    pub verdict: Option<Verdict>,
}

impl Observation {
    /// The observation for a verified report: its platform-arm stream (the first stream if none
    /// is marked platform).
    pub fn from_report(stored: &StoredReport, report: &CallReport) -> Option<Observation> {
        let stream = report
            .streams
            .iter()
            .find(|s| s.role == Role::Platform)
            .or_else(|| report.streams.first())?;
        Some(Observation {
            started_at_ms: report.started_at.timestamp_millis(),
            day: report.started_at.format("%Y-%m-%d").to_string(),
            country: stored.region.country.clone(),
            asn: stored.region.asn,
            platform: report.platform,
            agent: stored.signed.key_hex(),
            rtt_median_ms: stream.rtt_ms.map(|r| r.median),
            loss_up: stream.loss_up,
            loss_down: stream.loss_down,
            jitter_up_ms: stream.jitter_ms.map(|j| j.up),
            jitter_down_ms: stream.jitter_ms.map(|j| j.down),
            mos: stream.mos,
            verdict: report.verdict,
        })
    }

    fn axis_value(&self, axis: Axis) -> AxisValue {
        match axis {
            Axis::Day => AxisValue::Text(self.day.clone()),
            Axis::Country => AxisValue::Text(self.country.clone()),
            Axis::Asn => AxisValue::Number(self.asn),
            Axis::Platform => AxisValue::Text(self.platform.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum AxisValue {
    Text(String),
    Number(u32),
}

/// One cell of the aggregate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cell {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Reports in the cell.
    pub count: u64,
    /// Distinct agent keys behind them.
    pub agents: u64,
    pub rtt_ms_median: Option<f64>,
    pub loss_up_mean: f64,
    pub loss_down_mean: f64,
    pub jitter_up_ms_median: Option<f64>,
    pub jitter_down_ms_median: Option<f64>,
    pub mos_median: Option<f64>,
    /// Share of the cell's reports with a verdict that found the platform differentiated;
    /// `null` when none had a verdict (generic tests have no control arm).
    pub differentiated_share: Option<f64>,
}

/// What a published aggregate must respect, so that no volunteer can be singled out and none
/// can swing a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// A cell is published only when at least this many distinct agents stand behind it.
    pub min_agents: usize,
    /// One agent's reports count at most this many times per cell and day (the earliest ones).
    pub max_per_agent_per_day: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_agents: 3,
            max_per_agent_per_day: 24,
        }
    }
}

/// Which observations a query covers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub country: Option<String>,
    pub asn: Option<u32>,
    pub platform: Option<Platform>,
    /// Tests started at or after, Unix ms.
    pub since_ms: Option<i64>,
    /// Tests started before, Unix ms.
    pub until_ms: Option<i64>,
}

impl Filter {
    pub fn matches(&self, o: &Observation) -> bool {
        self.country.as_ref().is_none_or(|c| *c == o.country)
            && self.asn.is_none_or(|a| a == o.asn)
            && self.platform.is_none_or(|p| p == o.platform)
            && self.since_ms.is_none_or(|t| o.started_at_ms >= t)
            && self.until_ms.is_none_or(|t| o.started_at_ms < t)
    }
}

/// Groups the observations that pass `filter` by the given axes (one or two, distinct),
/// applies `policy` (per-agent cap, then the k threshold) and summarises each published cell.
pub fn aggregate(
    observations: &[Observation],
    axes: &[Axis],
    filter: &Filter,
    policy: &Policy,
) -> Vec<Cell> {
    let mut groups: BTreeMap<Vec<AxisValue>, Vec<&Observation>> = BTreeMap::new();
    let mut ordered: Vec<&Observation> =
        observations.iter().filter(|o| filter.matches(o)).collect();
    ordered.sort_by_key(|o| o.started_at_ms);
    let mut per_agent_day: BTreeMap<(Vec<AxisValue>, &str, &str), usize> = BTreeMap::new();
    for o in ordered {
        let key: Vec<AxisValue> = axes.iter().map(|a| o.axis_value(*a)).collect();
        let seen = per_agent_day
            .entry((key.clone(), o.agent.as_str(), o.day.as_str()))
            .or_default();
        if *seen >= policy.max_per_agent_per_day {
            continue;
        }
        *seen += 1;
        groups.entry(key).or_default().push(o);
    }
    groups
        .into_values()
        .filter_map(|members| {
            let agents: BTreeSet<&str> = members.iter().map(|o| o.agent.as_str()).collect();
            if agents.len() < policy.min_agents.max(1) {
                return None;
            }
            let first = members[0];
            let has = |a: Axis| axes.contains(&a);
            let n = members.len() as f64;
            Some(Cell {
                day: has(Axis::Day).then(|| first.day.clone()),
                country: has(Axis::Country).then(|| first.country.clone()),
                asn: has(Axis::Asn).then_some(first.asn),
                platform: has(Axis::Platform).then(|| first.platform.to_string()),
                count: members.len() as u64,
                agents: agents.len() as u64,
                rtt_ms_median: median(members.iter().filter_map(|o| o.rtt_median_ms)),
                loss_up_mean: members.iter().map(|o| o.loss_up).sum::<f64>() / n,
                loss_down_mean: members.iter().map(|o| o.loss_down).sum::<f64>() / n,
                jitter_up_ms_median: median(members.iter().filter_map(|o| o.jitter_up_ms)),
                jitter_down_ms_median: median(members.iter().filter_map(|o| o.jitter_down_ms)),
                mos_median: median(members.iter().filter_map(|o| o.mos)),
                differentiated_share: {
                    let judged: Vec<Verdict> = members.iter().filter_map(|o| o.verdict).collect();
                    (!judged.is_empty()).then(|| {
                        judged
                            .iter()
                            .filter(|v| **v == Verdict::Differentiated)
                            .count() as f64
                            / judged.len() as f64
                    })
                },
            })
        })
        .collect()
}

/// The median (mean of the two middle values for an even count); `None` for no values.
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// CSV columns, in order: the axes asked for, then the figures.
pub fn to_csv(cells: &[Cell], axes: &[Axis]) -> String {
    let figures = [
        "count",
        "agents",
        "rtt_ms_median",
        "loss_up_mean",
        "loss_down_mean",
        "jitter_up_ms_median",
        "jitter_down_ms_median",
        "mos_median",
        "differentiated_share",
    ];
    let mut out = String::new();
    let header: Vec<&str> = axes.iter().map(|a| a.as_str()).chain(figures).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
    for c in cells {
        let mut row: Vec<String> = axes
            .iter()
            .map(|a| match a {
                Axis::Day => c.day.clone().unwrap_or_default(),
                Axis::Country => c.country.clone().unwrap_or_default(),
                Axis::Asn => c.asn.map(|x| x.to_string()).unwrap_or_default(),
                Axis::Platform => c.platform.clone().unwrap_or_default(),
            })
            .collect();
        row.extend([
            c.count.to_string(),
            c.agents.to_string(),
            opt(c.rtt_ms_median),
            format!("{:.5}", c.loss_up_mean),
            format!("{:.5}", c.loss_down_mean),
            opt(c.jitter_up_ms_median),
            opt(c.jitter_down_ms_median),
            opt(c.mos_median),
            opt(c.differentiated_share),
        ]);
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(country: &str, platform: Platform, agent: &str, rtt: f64, loss: f64) -> Observation {
        Observation {
            started_at_ms: 1_764_288_000_000,
            day: "2026-11-28".into(),
            country: country.into(),
            asn: if country == "RU" { 12389 } else { 3320 },
            platform,
            agent: agent.into(),
            rtt_median_ms: Some(rtt),
            loss_up: loss,
            loss_down: 0.0,
            jitter_up_ms: Some(1.0),
            jitter_down_ms: Some(2.0),
            mos: Some(4.0),
            verdict: (platform != Platform::Generic).then_some(Verdict::None),
        }
    }

    #[test]
    fn groups_by_two_axes() {
        let o = vec![
            obs("RU", Platform::Whatsapp, "a", 10.0, 0.1),
            obs("RU", Platform::Whatsapp, "b", 30.0, 0.3),
            obs("RU", Platform::Whatsapp, "b", 20.0, 0.2),
            obs("DE", Platform::Whatsapp, "c", 5.0, 0.0),
            obs("RU", Platform::Generic, "a", 7.0, 0.0),
        ];
        let open = Policy {
            min_agents: 1,
            ..Policy::default()
        };
        let cells = aggregate(
            &o,
            &[Axis::Country, Axis::Platform],
            &Filter::default(),
            &open,
        );
        assert_eq!(cells.len(), 3);
        let ru_wa = cells
            .iter()
            .find(|c| {
                c.country.as_deref() == Some("RU") && c.platform.as_deref() == Some("whatsapp")
            })
            .unwrap();
        assert_eq!(ru_wa.count, 3);
        assert_eq!(ru_wa.agents, 2);
        assert_eq!(ru_wa.rtt_ms_median, Some(20.0));
        assert!((ru_wa.loss_up_mean - 0.2).abs() < 1e-12);
        assert_eq!(ru_wa.differentiated_share, Some(0.0));
        assert_eq!(ru_wa.asn, None);
        let csv = to_csv(&cells, &[Axis::Country, Axis::Platform]);
        assert!(csv.starts_with("country,platform,count,agents,"));
        assert!(csv.contains("RU,whatsapp,3,2,20.000,0.20000,"));
    }

    #[test]
    fn cells_below_k_agents_are_not_published_and_filters_apply() {
        let o = vec![
            obs("RU", Platform::Whatsapp, "a", 10.0, 0.0),
            obs("RU", Platform::Whatsapp, "b", 11.0, 0.0),
            obs("RU", Platform::Whatsapp, "c", 12.0, 0.0),
            obs("DE", Platform::Whatsapp, "d", 5.0, 0.0),
            obs("DE", Platform::Whatsapp, "d", 6.0, 0.0),
        ];
        let cells = aggregate(&o, &[Axis::Country], &Filter::default(), &Policy::default());
        assert_eq!(cells.len(), 1, "DE has one agent behind it");
        assert_eq!(cells[0].country.as_deref(), Some("RU"));
        let only_de = Filter {
            country: Some("DE".into()),
            ..Filter::default()
        };
        let open = Policy {
            min_agents: 1,
            ..Policy::default()
        };
        let cells = aggregate(&o, &[Axis::Platform], &only_de, &open);
        assert_eq!(cells[0].count, 2);
        let later = Filter {
            since_ms: Some(1_764_288_000_001),
            ..Filter::default()
        };
        assert!(aggregate(&o, &[Axis::Platform], &later, &open).is_empty());
    }

    #[test]
    fn one_agent_flooding_a_cell_moves_it_no_more_than_its_capped_weight() {
        let mut o = Vec::new();
        for (agent, rtt) in [("a", 10.0), ("b", 12.0), ("c", 14.0)] {
            for _ in 0..2 {
                o.push(obs("RU", Platform::Telegram, agent, rtt, 0.0));
            }
        }
        for _ in 0..1000 {
            o.push(obs("RU", Platform::Telegram, "mallory", 500.0, 1.0));
        }
        let policy = Policy {
            min_agents: 3,
            max_per_agent_per_day: 2,
        };
        let cells = aggregate(&o, &[Axis::Country], &Filter::default(), &policy);
        let cell = &cells[0];
        // Mallory counts twice, like each honest agent: [10,10,12,12,14,14,500,500].
        assert_eq!(cell.count, 8);
        assert_eq!(cell.rtt_ms_median, Some(13.0));
        assert!((cell.loss_up_mean - 0.25).abs() < 1e-12);
        let uncapped = Policy {
            max_per_agent_per_day: usize::MAX,
            ..policy
        };
        let flooded = aggregate(&o, &[Axis::Country], &Filter::default(), &uncapped);
        assert_eq!(
            flooded[0].rtt_ms_median,
            Some(500.0),
            "without the cap, one agent decides"
        );
    }

    #[test]
    fn median_handles_even_and_empty() {
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
        assert_eq!("asn".parse::<Axis>(), Ok(Axis::Asn));
        assert!("city".parse::<Axis>().is_err());
    }
}
