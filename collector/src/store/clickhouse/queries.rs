//! The aggregation query: one SQL statement with the sled store's semantics (see the store's
//! module documentation), and the cells it answers ([`AggRow`]).

use super::client::lit;
use super::rows::verdict_code;
use super::schema::FIGURE_COLUMNS;
use crate::domain::codes::{
    arm_code, arm_of_code, country_text, kind_code, kind_of_code, parse_region, platform_code,
    platform_of_code, region_text, subdivision_code, NO_SUBDIVISION,
};
use crate::domain::events::HourEvidence;
use crate::domain::{
    day_string, Axis, Cell, CellKey, Figure, FilingCounts, Filter, GroupKey, Policy, VerdictCounts,
    BLOCKED_RULES, FIGURE_COUNT, NO_REFERENCE_RULES,
};
use crate::store::StoreError;
use callwatch_proto::report::{StreamKind, VerdictRule};
use callwatch_proto::{Role, Verdict};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// `rule IN (…)` of these rules, as the reports spell them.
fn rule_list(rules: &[VerdictRule]) -> String {
    let names: Vec<String> = rules.iter().map(|r| lit(r.as_str())).collect();
    names.join(", ")
}

/// Where the prefix sits in the capped rows' tuple `k` (1-based).
const PREFIX_ELEMENT: usize = FIGURE_COUNT + 8;
/// Where the subdivision sits in it.
const SUBDIVISION_ELEMENT: usize = FIGURE_COUNT + 9;

/// The observations a query may cover after the per-agent and per-prefix caps, one row each:
/// `cc, asn, platform, kind, a_arm, agent, k` where `k` is the tuple described below (its
/// element [`PREFIX_ELEMENT`] the prefix).
fn capped_sql(db: &str, axes: &[Axis], filter: &Filter, policy: &Policy) -> String {
    let has = |a: Axis| axes.contains(&a);
    // Before the cap: conditions on the cap key's own fields (country, ASN, platform, kind,
    // arm) and on whole days (the cap counts whole days).
    let mut pre: Vec<String> = Vec::new();
    // Voice and video never share a cell: one kind unless `kind` is an axis.
    match filter.kind {
        Some(k) => pre.push(format!("kind = {}", kind_code(k))),
        None if !has(Axis::Kind) => pre.push(format!("kind = {}", kind_code(StreamKind::Voice))),
        None => {}
    }
    if let Some(c) = &filter.country {
        pre.push(format!("cc = {}", lit(&country_text(c))));
    }
    // A region filter reads its whole country (a block's other subdivisions decide whether its
    // regions are published) and keeps the region's rows at the end; one that does not parse
    // matches nothing.
    match filter.region.as_deref().map(parse_region) {
        Some(Ok((cc, _))) => pre.push(format!("cc = {}", lit(&region_text(cc, NO_SUBDIVISION)))),
        Some(Err(_)) => pre.push("0".into()),
        None => {}
    }
    if let Some(a) = filter.asn {
        pre.push(format!("asn = {a}"));
    }
    if let Some(p) = filter.platform {
        pre.push(format!("platform = {}", platform_code(p)));
    }
    let since_hour = filter.since_hour();
    let until_hour = filter.until_hour();
    if let Some(h) = since_hour {
        let day = h.div_euclid(24);
        pre.push(format!("hour >= {}", day.saturating_mul(24)));
        pre.push(format!("started_date >= {}", lit(&day_string(day.max(0)))));
    }
    if let Some(h) = until_hour {
        let day = h.div_euclid(24) + i64::from(h.rem_euclid(24) != 0);
        pre.push(format!("hour < {}", day.saturating_mul(24)));
        pre.push(format!("started_date < {}", lit(&day_string(day.max(0)))));
    }
    let mut arm_pre = Vec::new();
    match filter.arm {
        Some(a) => arm_pre.push(format!("a_arm = {}", arm_code(a))),
        None if !has(Axis::Arm) => arm_pre.push(format!("a_arm = {}", arm_code(Role::Platform))),
        None => {}
    }
    let where_pre = if pre.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", pre.join(" AND "))
    };
    let where_arm = if arm_pre.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", arm_pre.join(" AND "))
    };
    let figs: Vec<String> = FIGURE_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} AS f{i}"))
        .collect();
    let f_list: Vec<String> = (0..FIGURE_COUNT).map(|i| format!("f{i}")).collect();
    // What the verdict's rule adds ([`crate::domain::Finding`]): 1 a blocked call, 2 a
    // test without a reference, 0 neither.
    let finding = format!(
        "multiIf(verdict = {diff} AND rule IN ({blocked}), 1, \
         verdict = {inc} AND rule IN ({noref}), 2, 0)",
        diff = verdict_code(Some(Verdict::Differentiated)),
        inc = verdict_code(Some(Verdict::Inconclusive)),
        blocked = rule_list(&BLOCKED_RULES),
        noref = rule_list(&NO_REFERENCE_RULES),
    );
    // One row per observation (report arm) that the query may cover.
    // The network prefix a report counts under ([`crate::domain::prefix_of`]): its 8-byte
    // tag, or the first 8 bytes of its agent key when it has none.
    let prefix = "if(match(prefix_tag, '^[0-9a-fA-F]{16}$'), lower(prefix_tag), \
                  substring(agent, 1, 16))";
    // The region's subdivision, `RU-MOW`, or empty when unknown (or not of the row's country).
    let sub = "if(match(subdivision, '^[A-Z]{2}-[A-Z0-9]{1,3}$') AND \
               substring(subdivision, 1, 2) = toString(cc), subdivision, '')";
    let inner = format!(
        "SELECT agent, id, arrival, hour, cc, asn, platform, kind, verdict, finding, \
         a_arm, {f}, uploaded_elsewhere, hosting, prefix, sub FROM (SELECT agent, id, arrival, \
         hour, cc, asn, platform, kind, verdict, {finding} AS finding, arm, {fc}, \
         uploaded_elsewhere, hosting, {prefix} AS prefix, {sub} AS sub FROM {db}.reports FINAL \
         {where_pre}) ARRAY JOIN arm AS a_arm, {figs} {where_arm}",
        f = f_list.join(", "),
        fc = FIGURE_COLUMNS.join(", "),
        db = db,
        figs = figs.join(", "),
    );
    // Observation fields carried through the cap, as tuple elements:
    // 1 arrival, 2 id, 3 finding, 4 hour, 5 verdict, 6.. the figures, then the two filing
    // marks, the prefix and the subdivision.
    let tuple = format!(
        "(arrival, id, finding, hour, verdict, {}, uploaded_elsewhere, hosting, prefix, sub)",
        f_list.join(", ")
    );
    let px = PREFIX_ELEMENT;
    let cap = policy.max_per_agent_per_day;
    let kept = if cap >= u32::MAX as usize {
        format!("groupArray({tuple})")
    } else {
        format!("arraySlice(arraySort(x -> (x.1, x.2), groupArray({tuple})), 1, {cap})")
    };
    let agent_capped = format!(
        "SELECT agent, cc, asn, platform, kind, a_arm, {kept} AS kept FROM ({inner}) \
         GROUP BY intDiv(hour, 24), cc, asn, platform, kind, a_arm, agent"
    );
    // Then the prefix cap over what the agent cap kept, per (UTC day, country, ASN, platform,
    // kind, arm, prefix), in the same order of arrival; (agent, observation) pairs.
    let pcap = policy.max_per_prefix_per_day;
    let pkept = if pcap >= u32::MAX as usize {
        "groupArray((agent, k1))".to_string()
    } else {
        format!("arraySlice(arraySort(x -> (x.2.1, x.2.2), groupArray((agent, k1))), 1, {pcap})")
    };
    format!(
        "SELECT cc, asn, platform, kind, a_arm, kk.1 AS agent, kk.2 AS k FROM (SELECT cc, asn, \
         platform, kind, a_arm, {pkept} AS pkept FROM ({agent_capped}) ARRAY JOIN kept AS k1 \
         GROUP BY intDiv(k1.4, 24), cc, asn, platform, kind, a_arm, k1.{px}) ARRAY JOIN pkept \
         AS kk"
    )
}

/// The aggregation query for these axes, filter and policy (see the module documentation).
pub fn aggregate_sql(db: &str, axes: &[Axis], filter: &Filter, policy: &Policy) -> String {
    let has = |a: Axis| axes.contains(&a);
    let since_hour = filter.since_hour();
    let until_hour = filter.until_hour();
    let ue = FIGURE_COUNT + 6;
    let ho = FIGURE_COUNT + 7;
    let px = PREFIX_ELEMENT;
    let sb = SUBDIVISION_ELEMENT;
    let region = filter.region.as_deref().map(parse_region);
    let regional = filter.regional(axes);
    let capped = capped_sql(db, axes, filter, policy);
    // After the cap: the atoms of publication (see `crate::domain::Grouper`), decided over
    // whole days, then the query's own hour bounds for the hour axis, and the grouping.
    let mut group: Vec<&str> = Vec::new();
    let mut select: Vec<String> = Vec::new();
    let sub_col = format!("k.{sb}");
    for (axis, expr, name) in [
        (Axis::Day, "intDiv(k.4, 24)", "g_day"),
        (Axis::Hour, "k.4", "g_hour"),
        (Axis::Country, "cc", "g_cc"),
        (Axis::Region, "cc", "g_rcc"),
        (Axis::Region, sub_col.as_str(), "g_sub"),
        (Axis::Asn, "asn", "g_asn"),
        (Axis::Platform, "platform", "g_platform"),
        (Axis::Arm, "a_arm", "g_arm"),
        (Axis::Kind, "kind", "g_kind"),
    ] {
        if has(axis) {
            select.push(format!("{expr} AS {name}"));
            group.push(name);
        }
    }
    let min_agents = policy.min_agents.max(1);
    let whole = filter.whole_days();
    let mut read = Vec::new();
    if let Some(h) = whole.since_hour() {
        read.push(format!("k.4 >= {h}"));
    }
    if let Some(h) = whole.until_hour() {
        read.push(format!("k.4 < {h}"));
    }
    let rows = if read.is_empty() {
        format!("SELECT * FROM ({capped})")
    } else {
        format!("SELECT * FROM ({capped}) WHERE {}", read.join(" AND "))
    };
    let meets = |when: &str| {
        if when.is_empty() {
            format!(
                "uniqExact(substring(agent, 1, 16)) >= {min_agents} \
                 AND uniqExact(k.{px}) >= {min_agents}"
            )
        } else {
            format!(
                "uniqExactIf(substring(agent, 1, 16), {when}) >= {min_agents} \
                 AND uniqExactIf(k.{px}, {when}) >= {min_agents}"
            )
        }
    };
    let block = "intDiv(k.4, 24), cc, asn, platform, a_arm, kind";
    let blocks_meeting_k = format!(
        "SELECT {block} FROM ({rows}) GROUP BY {block} HAVING {}",
        meets("")
    );
    // Region atoms (see `crate::domain::region_atoms`) of the blocks that meet k: a block's
    // subdivisions that meet k, in blocks whose other subdivisions together meet k or are none.
    let block_parts = format!(
        "SELECT {block}, k.{sb} FROM ({rows}) GROUP BY {block}, k.{sb} HAVING {}",
        meets("")
    );
    let clean_blocks = {
        let other = format!("({block}, k.{sb}) NOT IN ({block_parts})");
        format!(
            "SELECT {block} FROM ({rows}) WHERE ({block}) IN ({blocks_meeting_k}) \
             GROUP BY {block} HAVING countIf({other}) = 0 OR ({})",
            meets(&other)
        )
    };
    let region_atom =
        format!("(({block}) IN ({clean_blocks}) AND ({block}, k.{sb}) IN ({block_parts}))");
    let mut post = Vec::new();
    if let Some(Ok((cc, s))) = &region {
        post.push(format!("k.{sb} = {}", lit(&region_text(*cc, *s))));
    }
    // With the hour axis, the rows carry the atom they belong to (ClickHouse 18 does not take
    // `IN` subqueries inside a `GROUP BY` key: the atom is a column of its own).
    let mut from = format!("({capped})");
    if has(Axis::Hour) {
        // The atom an hour belongs to: its region atom's subdivision, or `*` for the block's
        // rest (or the whole block).
        let with_atom =
            |rows: &str| format!("SELECT *, if({region_atom}, k.{sb}, '*') AS atom FROM ({rows})");
        let atom_rows = with_atom(&rows);
        let unit = "k.4, cc, asn, platform, a_arm, kind, atom";
        let hours_meeting_k = format!(
            "SELECT {unit} FROM ({atom_rows}) GROUP BY {unit} HAVING {}",
            meets("")
        );
        let other = format!("({unit}) NOT IN ({hours_meeting_k})");
        // Atoms whose hours below k together meet k (or that have none).
        let clean = format!(
            "SELECT {block}, atom FROM ({atom_rows}) WHERE ({block}) IN ({blocks_meeting_k}) \
             GROUP BY {block}, atom HAVING countIf({other}) = 0 OR ({})",
            meets(&other)
        );
        post.push(format!("({unit}) IN ({hours_meeting_k})"));
        post.push(format!("({block}, atom) IN ({clean})"));
        if regional {
            post.push("atom != '*'".into());
        }
        if let Some(h) = since_hour {
            post.push(format!("k.4 >= {h}"));
        }
        if let Some(h) = until_hour {
            post.push(format!("k.4 < {h}"));
        }
        from = format!("({})", with_atom(&capped));
    } else {
        let mut atoms = vec![if regional {
            region_atom.clone()
        } else {
            format!("({block}) IN ({blocks_meeting_k})")
        }];
        if !has(Axis::Asn) && filter.asn.is_none() {
            let family = "intDiv(k.4, 24), cc, platform, a_arm, kind";
            let small = format!("({block}) NOT IN ({blocks_meeting_k})");
            let remainders = format!(
                "SELECT {family} FROM ({rows}) WHERE {small} GROUP BY {family} HAVING {}",
                meets("")
            );
            if regional {
                // The remainder's region atoms, by the same rule.
                let parts = format!(
                    "SELECT {family}, k.{sb} FROM ({rows}) WHERE {small} \
                     GROUP BY {family}, k.{sb} HAVING {}",
                    meets("")
                );
                let other = format!("({family}, k.{sb}) NOT IN ({parts})");
                let clean = format!(
                    "SELECT {family} FROM ({rows}) WHERE {small} AND ({family}) IN \
                     ({remainders}) GROUP BY {family} HAVING countIf({other}) = 0 OR ({})",
                    meets(&other)
                );
                atoms.push(format!(
                    "({small} AND ({family}) IN ({clean}) AND ({family}, k.{sb}) IN ({parts}))"
                ));
            } else {
                atoms.push(format!("({small} AND ({family}) IN ({remainders}))"));
            }
        }
        post.push(format!("({})", atoms.join(" OR ")));
        post.extend(read);
    }
    let where_post = format!("WHERE {}", post.join(" AND "));
    let mut quantiles = Vec::new();
    let mut counts = Vec::new();
    for i in 0..FIGURE_COUNT {
        let s = format!("arraySort(groupArray(k.{}))", i + 6);
        select.push(format!("{s} AS s{i}"));
        counts.push(format!("length(s{i})"));
        let at = |q: &str| {
            format!("s{i}[toUInt64(floor({q} * greatest(toInt64(length(s{i})) - 1, 0))) + 1]")
        };
        quantiles.push(format!("[{}, {}, {}]", at("0.1"), at("0.5"), at("0.9")));
    }
    let group_by = if group.is_empty() {
        // One cell over everything; `GROUP BY` nothing still needs a row only when there is
        // data, which the HAVING below ensures (count() > 0).
        String::new()
    } else {
        format!("GROUP BY {}", group.join(", "))
    };
    let mut outer_cols: Vec<String> = group.iter().map(|g| g.to_string()).collect();
    outer_cols.extend([
        "cnt".into(),
        "agents".into(),
        "v_none".into(),
        "v_inc".into(),
        "v_diff".into(),
        "v_blocked".into(),
        "v_noref".into(),
        "f_ue".into(),
        "f_host".into(),
        format!("[{}] AS n", counts.join(", ")),
        format!("[{}] AS q", quantiles.join(", ")),
    ]);
    format!(
        "SELECT {outer} FROM (SELECT {sel}, count() AS cnt, \
         uniqExact(substring(agent, 1, 16)) AS agents, uniqExact(k.{px}) AS prefixes, countIf(k.5 = 0) AS v_none, \
         countIf(k.5 = 1) AS v_inc, countIf(k.5 = 2) AS v_diff, \
         countIf(k.3 = 1) AS v_blocked, countIf(k.3 = 2) AS v_noref, \
         countIf(k.{ue} = 1) AS f_ue, countIf(k.{ho} = 1) AS f_host \
         FROM {from} {where_post} {group_by} \
         HAVING cnt > 0 AND agents >= {min_agents} AND prefixes >= {min_agents})",
        outer = outer_cols.join(", "),
        sel = select.join(", "),
    )
}

/// One aggregated cell as ClickHouse answers it.
#[derive(Deserialize)]
pub struct AggRow {
    g_day: Option<i64>,
    g_hour: Option<i64>,
    g_cc: Option<String>,
    g_rcc: Option<String>,
    g_sub: Option<String>,
    g_asn: Option<u32>,
    g_platform: Option<u8>,
    g_arm: Option<u8>,
    g_kind: Option<u8>,
    cnt: u64,
    agents: u64,
    v_none: u64,
    v_inc: u64,
    v_diff: u64,
    v_blocked: u64,
    f_ue: u64,
    f_host: u64,
    v_noref: u64,
    n: Vec<u64>,
    q: Vec<Vec<f64>>,
}

impl AggRow {
    /// The published cell, and its axis values (the order the sled store publishes cells in).
    pub fn into_cell(self) -> Result<(GroupKey, Cell), StoreError> {
        let bad = |what: &str| StoreError::Backend(format!("ClickHouse answered {what}"));
        let platform = match self.g_platform {
            Some(c) => Some(platform_of_code(c).ok_or_else(|| bad("an unknown platform code"))?),
            None => None,
        };
        let arm = match self.g_arm {
            Some(c) => Some(arm_of_code(c).ok_or_else(|| bad("an unknown arm code"))?),
            None => None,
        };
        let kind = match self.g_kind {
            Some(c) => Some(kind_of_code(c).ok_or_else(|| bad("an unknown stream kind"))?),
            None => None,
        };
        let country = match &self.g_cc {
            Some(c) => Some(
                <[u8; 2]>::try_from(c.as_bytes()).map_err(|_| bad("a country code not 2 bytes"))?,
            ),
            None => None,
        };
        let region = match (&self.g_rcc, &self.g_sub) {
            (Some(c), Some(s)) => {
                let cc = <[u8; 2]>::try_from(c.as_bytes())
                    .map_err(|_| bad("a country code not 2 bytes"))?;
                let sub = subdivision_code(c, s);
                if !s.is_empty() && sub == NO_SUBDIVISION {
                    return Err(bad("a subdivision that is not one"));
                }
                Some((cc, sub))
            }
            _ => None,
        };
        if self.n.len() != FIGURE_COUNT
            || self.q.len() != FIGURE_COUNT
            || self.q.iter().any(|q| q.len() != 3)
        {
            return Err(bad("a malformed cell"));
        }
        let figures: [Option<Figure>; FIGURE_COUNT] = std::array::from_fn(|i| {
            (self.n[i] > 0).then(|| Figure {
                p10: self.q[i][0],
                median: self.q[i][1],
                p90: self.q[i][2],
            })
        });
        let verdicts = VerdictCounts {
            none: self.v_none,
            inconclusive: self.v_inc,
            differentiated: self.v_diff,
            blocked: self.v_blocked,
            no_reference: self.v_noref,
        };
        let key = GroupKey {
            day: self.g_day,
            hour: self.g_hour,
            country,
            region,
            asn: self.g_asn,
            platform,
            arm,
            kind,
        };
        let filing = FilingCounts {
            uploaded_elsewhere: self.f_ue,
            hosting: self.f_host,
        };
        let cell = Cell::new(&key, self.cnt, self.agents, figures, verdicts, filing);
        Ok((key, cell))
    }
}

/// The events' evidence of hours `[from, to)`: per hour, country, ASN and platform, the
/// platform arms of both stream kinds after the caps (the sled store reads the same from its
/// fine cells, [`crate::domain::events::HourEvidence::of_cell`]).
pub fn evidence_sql(db: &str, from: i64, to: i64, policy: &Policy) -> String {
    const HOUR_MS: i64 = 3_600_000;
    // ClickHouse's Date ends in 2105: hours beyond (or before 1970) are read as those ends.
    const LAST_HOUR: i64 = 1_181_000;
    let (from, to) = (from.clamp(0, LAST_HOUR), to.clamp(0, LAST_HOUR));
    let filter = Filter {
        since_ms: Some(from.saturating_mul(HOUR_MS)),
        until_ms: Some(to.saturating_mul(HOUR_MS)),
        arm: Some(Role::Platform),
        ..Filter::default()
    };
    let capped = capped_sql(db, &[Axis::Kind], &filter, policy);
    let px = PREFIX_ELEMENT;
    let diff = verdict_code(Some(Verdict::Differentiated));
    format!(
        "SELECT k.4 AS hour, cc, asn, platform, countIf(k.5 >= 0) AS judged, \
         countIf(k.5 = {diff}) AS diff, countIf(k.5 = {diff} AND k.3 = 1) AS blocked, \
         groupUniqArray(substring(agent, 1, 16)) AS agents, \
         groupUniqArray(k.{px}) AS prefixes, \
         groupArrayIf((substring(agent, 1, 16), k.{px}), k.5 = {diff}) AS flags \
         FROM ({capped}) WHERE k.4 >= {from} AND k.4 < {to} \
         GROUP BY hour, cc, asn, platform HAVING judged > 0"
    )
}

/// One hour of one network's evidence as ClickHouse answers it.
#[derive(Deserialize)]
pub struct EvidenceRow {
    hour: i64,
    cc: String,
    asn: u32,
    platform: u8,
    judged: u64,
    diff: u64,
    blocked: u64,
    agents: Vec<String>,
    prefixes: Vec<String>,
    /// (agent, prefix) of each differentiated test.
    flags: Vec<(String, String)>,
}

impl EvidenceRow {
    /// The fine-cell key (platform arm, voice: the kind is not part of the evidence) and the
    /// hour's evidence.
    pub fn into_evidence(self) -> Result<(CellKey, HourEvidence), StoreError> {
        let bad = |what: &str| StoreError::Backend(format!("ClickHouse answered {what}"));
        let id = |h: &str| -> Result<[u8; 8], StoreError> {
            let mut out = [0u8; 8];
            hex::decode_to_slice(h, &mut out)
                .map_err(|_| bad("an agent or prefix that is not 16 hex digits"))?;
            Ok(out)
        };
        let set = |v: Vec<String>| -> Result<BTreeSet<[u8; 8]>, StoreError> {
            v.iter().map(|h| id(h)).collect()
        };
        let mut flags: BTreeMap<([u8; 8], [u8; 8]), u64> = BTreeMap::new();
        for (a, p) in &self.flags {
            *flags.entry((id(a)?, id(p)?)).or_default() += 1;
        }
        let key = CellKey {
            hour: self.hour,
            country: <[u8; 2]>::try_from(self.cc.as_bytes())
                .map_err(|_| bad("a country code not 2 bytes"))?,
            // The evidence is per network, whatever its regions.
            subdivision: NO_SUBDIVISION,
            asn: self.asn,
            platform: platform_of_code(self.platform)
                .ok_or_else(|| bad("an unknown platform code"))?,
            arm: Role::Platform,
            kind: StreamKind::Voice,
        };
        Ok((
            key,
            HourEvidence {
                judged: self.judged,
                differentiated: self.diff.min(self.judged),
                blocked: self.blocked.min(self.diff),
                agents: set(self.agents)?,
                prefixes: set(self.prefixes)?,
                flags,
            },
        ))
    }
}
