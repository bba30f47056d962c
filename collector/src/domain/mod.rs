//! The collector's domain: what a verified report is, what aggregation takes from it, fine
//! cells and their one byte encoding, and queries over them. Both stores use it; it imports no
//! store, no HTTP and no I/O. HTTP and export only parse queries into these types and render
//! the [`Cell`]s that come back.
//!
//! | module | owns |
//! |---|---|
//! | [`report`] | [`Region`], [`StoredReport`] and its record bytes, [`Filing`], [`VerifiedReport`], [`ReportKey`] |
//! | [`observation`] | [`Observation`] (one per aggregated arm), [`FIGURES`], [`Finding`], [`prefix_of`] |
//! | [`codes`] | the one code of each platform, arm and stream kind, the country code, and the subdivision's |
//! | [`cell`] | [`CellKey`] and its ordered bytes, [`CapKey`], [`PrefixCapKey`], [`CellState`], [`Cell`] |
//! | [`query`] | [`Axis`], [`Filter`], [`Policy`], [`Plan`], [`Grouper`], [`region_atoms`], [`query()`], [`capped`] |
//! | [`rollup`] | what a family's day publishes for one k ([`rollup::publish_day`]), kept as day and month roll-ups |
//! | [`sketch`] | the mergeable quantile sketch cells keep per figure |
//! | [`events`] | onsets and recoveries of differential treatment per series ([`events::Detector`]), from fine cells' evidence |
//!
//! Aggregation of reports into cells by time, region, platform and arm, in the manner of OONI's
//! aggregation API (`axis_x`, `axis_y`).
//!
//! # Kept incrementally
//!
//! Every stored report adds one [`Observation`] per arm (platform, control) to exactly one *fine
//! cell*, keyed by [`CellKey`] = (UTC hour, country, subdivision, ASN, platform, arm, stream
//! kind). The subdivision (the region's ISO 3166-2 code, from a City database; unknown for
//! most lookups) is in the key so cells can be grouped and filtered by region; the caps do not
//! count per subdivision. A fine
//! cell's [`CellState`] holds the report count, the distinct agents (8-byte key prefixes), the
//! verdict counts (with the blocked and no-reference tests among them, see [`VerdictCounts`]) and
//! one mergeable quantile [`Sketch`] per figure ([`FIGURES`]: RTT, jitter up/down, round-trip
//! loss, loss up/down, MOS, stall count). The store updates the fine cell in the same
//! transaction that stores the report, so the aggregate never disagrees with the raw data. A
//! query merges the fine cells its filter covers into the cells its axes ask for ([`query`]);
//! merging is exact for counts, agent sets and verdicts, and the quantiles are within
//! [`RELATIVE_ACCURACY`] of the exact value of the same rank. The sled store also keeps a day
//! roll-up of the fine cells and reads whole days from it when a query has no hour axis
//! ([`Plan`]); the answer is the same, from 24× fewer cells. Above the day it keeps *published*
//! roll-ups ([`rollup`]): what each (day, country, platform, arm, kind) publishes for one k, per
//! network, per hour, per country over platforms and per calendar month — unions of atoms, so
//! merging them publishes exactly what merging the day cells would; days that changed since are
//! read from their cells until the roll-ups catch up.
//!
//! # Voice and video never mix
//!
//! The stream kind (voice, or video-like) is part of every cell key, so no cell, fine or
//! merged, ever holds both: a video test's MOS or loss cannot move a voice cell. A query counts
//! voice tests only unless `kind` is one of its axes (one cell per kind) or its filter names a
//! kind ([`Filter::kind`]), as it counts platform arms only unless told otherwise. Reports made
//! before the stream kind existed are voice.
//!
//! # Robustness
//!
//! - **Per-agent cap.** One agent's reports count at most `max_per_agent_per_day` times per fine
//!   cell's day — (UTC day, country, ASN, platform, arm, kind) — in order of arrival; the rest
//!   are stored (they are evidence) but not aggregated. The store decides this at ingest
//!   ([`CapKey`]); changing the cap rebuilds the cells from the raw reports.
//! - **Prefix cap.** Of the reports within their agent's cap, one network prefix's count at most
//!   `max_per_prefix_per_day` times per fine cell's day, in order of arrival, decided at ingest
//!   the same way ([`PrefixCapKey`]; changing it rebuilds the cells too). A report's prefix is
//!   its 8-byte prefix tag ([`Filing::prefix_tag`]: a keyed tag of the measured path's IPv4 /24
//!   or IPv6 /48, the key made per UTC day of ingest), or, for a report without one (carried in
//!   a file, or stored before tags), the first 8 bytes of its agent key ([`prefix_of`]): such a
//!   report is a prefix of its own, and the prefix rules reduce to the key rules for it.
//! - **k threshold, on atoms of a day.** A published cell is a union of fixed atoms that each
//!   have at least `min_agents` distinct agents on as many distinct prefixes
//!   ([`CellState::meets`]): a network's UTC day, a day's small networks together, within
//!   either its regions when its other regions together meet k too ([`region_atoms`]), and
//!   within those the hours when the other hours meet k too ([`Grouper`] says which). Agents
//!   rotate keys daily and tags are keyed per test day, so a volunteer is one key and one prefix
//!   within a day and many across days; and the difference of two published cells is a union of
//!   atoms too, so no pair of queries singles anyone out. A party with fewer than k prefixes
//!   publishes no cell alone, and beside honest reports it counts at most (its prefixes × the
//!   prefix cap) times per cell and day; RELIABILITY.md states the bound and its limits.
//!
//! # Published precision
//!
//! Cells, sketches, the k threshold and every comparison work at full precision. Only where a
//! [`Cell`] is published — its JSON, the CSV of [`crate::export::cells_csv`] — is each figure and
//! share rounded to its rule in `callwatch_proto::precision` ([`FIGURE_PRECISION`]): RTT and
//! jitter to 0.01 ms, loss and shares to 0.0001, MOS to 0.01, stall counts whole. The raw export
//! is not rounded.
//!
//! [`exact`] (tests and the `test-util` feature only) is the brute-force reference: the same rules
//! over raw observations with exact order statistics. Tests compare the two.

pub mod cell;
pub mod codes;
pub mod events;
pub mod keyset;
pub mod observation;
pub mod query;
pub mod report;
pub mod rollup;
pub mod sketch;

pub use cell::{
    day_string, hour_string, ordered_i64, CapKey, Cell, CellKey, CellState, Figure, FilingCounts,
    PrefixCapKey, VerdictCounts, CAP_KEY_LEN, CELL_KEY_LEN, PREFIX_CAP_KEY_LEN,
};
pub use codes::parse_kind;
pub use keyset::KeySet;
pub use observation::{
    prefix_of, Finding, Observation, BLOCKED_RULES, FIGURES, FIGURE_COUNT, FIGURE_PRECISION,
    NO_REFERENCE_RULES,
};
pub use query::{
    capped, query, region_atoms, relative_error, Axis, Filter, GroupKey, Grouper, Plan, Policy,
};
#[cfg(any(test, feature = "test-util"))]
pub use query::{exact, exact_members};
pub use report::{
    CorruptRecord, Filing, PrefixFrom, Region, RegionSource, ReportKey, StoredReport,
    VerifiedReport,
};

/// Milliseconds in an hour.
const HOUR_MS: i64 = 3_600_000;

#[cfg(test)]
mod tests;

/// Damages encoded bytes one way, for the decoders' tests: `how` 0 changes the byte at `at`
/// (taken modulo the length, one past the end allowed) to `byte`, 1 inserts `byte` there, 2
/// removes the byte there, anything else (or 0 and 2 at the end) cuts the bytes short there.
#[cfg(test)]
fn damage(bytes: &mut Vec<u8>, at: usize, byte: u8, how: u8) {
    let at = at % (bytes.len() + 1);
    match how {
        0 if at < bytes.len() => bytes[at] = byte,
        1 => bytes.insert(at, byte),
        2 if at < bytes.len() => {
            bytes.remove(at);
        }
        _ => bytes.truncate(at),
    }
}
