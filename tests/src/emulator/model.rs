//! The impairment model: a pure, seeded description of what a bad network path does to each datagram.
//!
//! It never reads a clock or touches a socket. The caller says when a datagram arrived (`now`, the time
//! since the start of the run) and the model answers when each copy of it leaves ([`Delivery::at`]), or
//! that it is dropped. The same model runs inside the UDP relay (`super::relay`) and under a simulated
//! clock in tests, so a seed plus the sequence of inputs reproduces every decision, and the
//! [`GroundTruth`] it keeps says exactly what happened to each datagram.
//!
//! Stages, in this order for every datagram and in both directions:
//! 1. DPI rules (`super::dpi`): the first rule that matches applies its own policer, loss and extra delay.
//!    A datagram no rule matches meets only the base impairment.
//! 2. Base policer: a token bucket per direction; a datagram larger than the tokens left is dropped.
//! 3. Base loss: Bernoulli or Gilbert–Elliott, per direction.
//! 4. Delay + jitter and duplication; unless `reorder` is set, delivery times are then made
//!    non-decreasing, as a FIFO queue would (jitter without reordering).
//!
//! Why the randomness is split into streams:
//! 1. Each direction, each base stage and each (DPI rule, direction) draws from its own ChaCha8 stream of
//!    the one seed. ChaCha8 (rand_chacha) gives the same stream on every platform, unlike `StdRng`,
//!    whose algorithm `rand` may change.
//! 2. Every base stage draws the same number of values for every datagram, whether or not an earlier
//!    stage dropped it. So the k-th datagram of a direction meets the same base loss, jitter and
//!    duplication whatever the DPI rules did: adding a rule changes the fate of the datagrams it matches
//!    and of no others (apart from the stateful policer and FIFO queue, which depend on what passed).
//!    That is what lets a test compare a platform arm with its control arm under one seed.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::dpi::DpiRule;

/// Longest base or rule delay, and largest jitter, a config may ask for. Keeps the relay's queue
/// meaningful and the `Duration` arithmetic far from overflow.
pub const MAX_DELAY_MS: f64 = 60_000.0;

/// Which way a datagram travels through the emulated path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Agent → reflector.
    Up,
    /// Reflector → agent.
    Down,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Up, Direction::Down];

    fn index(self) -> usize {
        match self {
            Direction::Up => 0,
            Direction::Down => 1,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Up => "up",
            Direction::Down => "down",
        })
    }
}

/// The UDP ports of a datagram as a DPI box on the agent's side of the path sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UdpPorts {
    pub src: u16,
    pub dst: u16,
}

/// One copy of a datagram leaving the model: send `bytes` at `at` (time since the start of the run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub at: Duration,
    pub bytes: Vec<u8>,
}

/// A config value the model refuses, with the path of the field (`up.loss.p_good_to_bad`,
/// `rules[1].ports`, …) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The same error one level deeper, e.g. `loss` inside `up` becomes `up.loss`.
    pub fn within(self, parent: &str) -> Self {
        ConfigError {
            field: format!("{parent}.{}", self.field),
            problem: self.problem,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Checks that `value` is a fraction in 0..=1 (probabilities, loss rates).
pub(super) fn check_fraction(field: &str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{value} is not a fraction between 0 and 1"),
        ))
    }
}

fn check_ms(field: &str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=MAX_DELAY_MS).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            format!("{value} ms is not between 0 and {MAX_DELAY_MS} ms"),
        ))
    }
}

/// How datagrams are lost at random on a path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LossModel {
    #[default]
    None,
    /// Each datagram is lost independently with probability `loss`.
    Bernoulli { loss: f64 },
    /// A two-state Markov chain. Before each datagram the chain is in the good or the bad state; the
    /// datagram is lost with `loss_in_good` or `loss_in_bad`, then the chain moves: good→bad with
    /// probability `p_good_to_bad`, bad→good with `p_bad_to_good`. It starts in the good state.
    /// Losses in the bad state count as burst loss, losses in the good state as random loss.
    GilbertElliott {
        p_good_to_bad: f64,
        p_bad_to_good: f64,
        #[serde(default = "one")]
        loss_in_bad: f64,
        #[serde(default)]
        loss_in_good: f64,
    },
}

fn one() -> f64 {
    1.0
}

impl LossModel {
    pub fn bernoulli(loss: f64) -> Self {
        LossModel::Bernoulli { loss }
    }

    /// The simple Gilbert model (every datagram lost in the bad state, none in the good one).
    pub fn gilbert_elliott(p_good_to_bad: f64, p_bad_to_good: f64) -> Self {
        LossModel::GilbertElliott {
            p_good_to_bad,
            p_bad_to_good,
            loss_in_bad: 1.0,
            loss_in_good: 0.0,
        }
    }

    /// The simple Gilbert model with the given long-run loss rate and mean loss-burst length (in
    /// datagrams). Bursts are the bad state's stays, geometric with mean `1 / p_bad_to_good`; the share
    /// of time in the bad state is `p / (p + r)`, which is the loss rate.
    pub fn from_burst(loss: f64, mean_burst_len: f64) -> Result<Self, ConfigError> {
        check_fraction("loss", loss)?;
        if !(mean_burst_len.is_finite() && mean_burst_len >= 1.0) {
            return Err(ConfigError::new(
                "mean_burst_len",
                format!("{mean_burst_len} is not a burst length of at least 1 packet"),
            ));
        }
        if loss >= 1.0 {
            return Err(ConfigError::new(
                "loss",
                "bursty loss needs a loss rate below 1",
            ));
        }
        let p_bad_to_good = 1.0 / mean_burst_len;
        let p_good_to_bad = p_bad_to_good * loss / (1.0 - loss);
        if p_good_to_bad > 1.0 {
            return Err(ConfigError::new(
                "loss",
                format!(
                    "a loss rate of {loss} with a mean burst length of {mean_burst_len} packets needs \
                     P(good→bad) = {p_good_to_bad:.3}, above 1; lower the loss or lengthen the bursts"
                ),
            ));
        }
        Ok(LossModel::gilbert_elliott(p_good_to_bad, p_bad_to_good))
    }

    /// The long-run fraction of datagrams this model loses.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            LossModel::None => 0.0,
            LossModel::Bernoulli { loss } => loss,
            LossModel::GilbertElliott {
                p_good_to_bad: p,
                p_bad_to_good: r,
                loss_in_bad,
                loss_in_good,
            } => {
                if p + r == 0.0 {
                    return loss_in_good; // never leaves the good state it starts in
                }
                let bad_share = p / (p + r);
                bad_share * loss_in_bad + (1.0 - bad_share) * loss_in_good
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            LossModel::None => Ok(()),
            LossModel::Bernoulli { loss } => check_fraction("loss", loss),
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_in_bad,
                loss_in_good,
            } => {
                check_fraction("p_good_to_bad", p_good_to_bad)?;
                check_fraction("p_bad_to_good", p_bad_to_good)?;
                check_fraction("loss_in_bad", loss_in_bad)?;
                check_fraction("loss_in_good", loss_in_good)
            }
        }
    }
}

/// The shape of the jitter added around the fixed delay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JitterShape {
    /// Uniform in `delay_ms ± jitter_ms`.
    #[default]
    Uniform,
    /// Close to normal with standard deviation `jitter_ms`, cut at ±3 standard deviations.
    Normal,
}

/// A fixed delay plus jitter. A sample below zero is delivered at once, so the mean delay is
/// `delay_ms` only when `delay_ms` is at least the jitter's reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DelayConfig {
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub shape: JitterShape,
}

impl DelayConfig {
    pub fn fixed(delay_ms: f64) -> Self {
        DelayConfig {
            delay_ms,
            ..DelayConfig::default()
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_ms("delay_ms", self.delay_ms)?;
        check_ms("jitter_ms", self.jitter_ms)
    }

    /// One delay sample in ms. Draws the same number of values every time (1 for uniform, 12 for
    /// normal), whatever the parameters; see the module's randomness rules.
    fn sample_ms(&self, rng: &mut ChaCha8Rng) -> f64 {
        let unit = match self.shape {
            JitterShape::Uniform => 2.0 * rng.gen::<f64>() - 1.0,
            // Irwin–Hall: the sum of 12 uniforms minus 6 has mean 0 and variance 1.
            JitterShape::Normal => {
                ((0..12).map(|_| rng.gen::<f64>()).sum::<f64>() - 6.0).clamp(-3.0, 3.0)
            }
        };
        (self.delay_ms + unit * self.jitter_ms).max(0.0)
    }
}

/// A token-bucket rate policer: tokens (bytes) flow in at `rate_kbps` up to `bucket_bytes`; a datagram
/// passes if the bucket holds at least its UDP payload length and then takes that many tokens, otherwise
/// it is dropped. The bucket starts full. IP and UDP headers are not counted, so a 172-byte payload every
/// 20 ms is 68.8 kbit/s here.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicerConfig {
    pub rate_kbps: f64,
    pub bucket_bytes: u32,
}

impl PolicerConfig {
    /// A policer with the default bucket: 50 ms at the rate, and never less than 1500 bytes so one
    /// full-size datagram always fits.
    pub fn new(rate_kbps: f64) -> Self {
        PolicerConfig {
            rate_kbps,
            bucket_bytes: Self::default_bucket_bytes(rate_kbps),
        }
    }

    pub fn default_bucket_bytes(rate_kbps: f64) -> u32 {
        let bytes_in_50_ms = rate_kbps * 1000.0 / 8.0 * 0.05;
        // `as` saturates on out-of-range floats, which is what we want for absurd rates.
        (bytes_in_50_ms.ceil() as u32).max(1500)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.rate_kbps.is_finite() && self.rate_kbps > 0.0) {
            return Err(ConfigError::new(
                "rate_kbps",
                format!("{} is not a positive rate", self.rate_kbps),
            ));
        }
        if self.bucket_bytes == 0 {
            return Err(ConfigError::new(
                "bucket_bytes",
                "the bucket must hold at least 1 byte",
            ));
        }
        Ok(())
    }
}

/// What one direction of the path does to every datagram (DPI rules come on top).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathConfig {
    pub loss: LossModel,
    pub delay: DelayConfig,
    /// When false, delivery times never go backwards (a FIFO queue: a datagram waits behind a slower
    /// one); when true, a datagram may overtake the ones before it.
    pub reorder: bool,
    /// Probability (0..1) that a delivered datagram is delivered twice; the copy gets its own delay.
    pub duplicate: f64,
    pub policer: Option<PolicerConfig>,
}

impl PathConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.loss.validate().map_err(|e| e.within("loss"))?;
        self.delay.validate().map_err(|e| e.within("delay"))?;
        check_fraction("duplicate", self.duplicate)?;
        if let Some(policer) = &self.policer {
            policer.validate().map_err(|e| e.within("policer"))?;
        }
        Ok(())
    }
}

/// Everything the model needs: the seed, each direction's path, and the DPI rules.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImpairmentConfig {
    pub seed: u64,
    pub up: PathConfig,
    pub down: PathConfig,
    /// Tried in order; the first that matches a datagram applies.
    pub rules: Vec<DpiRule>,
    /// At most this many per-datagram records are kept per direction; later datagrams are still
    /// counted, and `log_omitted` says how many records were left out.
    pub log_limit: usize,
}

impl Default for ImpairmentConfig {
    fn default() -> Self {
        ImpairmentConfig {
            seed: 0,
            up: PathConfig::default(),
            down: PathConfig::default(),
            rules: Vec::new(),
            log_limit: 1_000_000,
        }
    }
}

impl ImpairmentConfig {
    /// The same path in both directions.
    pub fn symmetric(seed: u64, path: PathConfig) -> Self {
        ImpairmentConfig {
            seed,
            up: path.clone(),
            down: path,
            ..ImpairmentConfig::default()
        }
    }

    pub fn path(&self, dir: Direction) -> &PathConfig {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    pub fn path_mut(&mut self, dir: Direction) -> &mut PathConfig {
        match dir {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.up.validate().map_err(|e| e.within("up"))?;
        self.down.validate().map_err(|e| e.within("down"))?;
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate()
                .map_err(|e| e.within(&format!("rules[{i}]")))?;
        }
        Ok(())
    }
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropCause {
    /// Bernoulli loss, or Gilbert–Elliott loss in the good state.
    RandomLoss,
    /// Gilbert–Elliott loss in the bad state.
    BurstLoss,
    /// The base rate policer.
    Policer,
    /// The DPI rule with this index (its loss or its policer; `RuleTruth` says which).
    Dpi { rule: usize },
}

/// What happened to one datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    Dropped(DropCause),
    /// Delivered once, or twice when duplicated; the delay each copy was given, in µs.
    Delivered {
        delays_us: Vec<u64>,
    },
}

/// The ground-truth record of one datagram.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketRecord {
    /// 0 for the first datagram the model saw in this direction.
    pub index: u64,
    /// The DPI rule that matched it, if any.
    pub matched_rule: Option<usize>,
    pub fate: Fate,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    pub random_loss: u64,
    pub burst_loss: u64,
    pub policer: u64,
    pub dpi: u64,
}

impl DropCounts {
    pub fn total(&self) -> u64 {
        self.random_loss + self.burst_loss + self.policer + self.dpi
    }

    fn record(&mut self, cause: DropCause) {
        match cause {
            DropCause::RandomLoss => self.random_loss += 1,
            DropCause::BurstLoss => self.burst_loss += 1,
            DropCause::Policer => self.policer += 1,
            DropCause::Dpi { .. } => self.dpi += 1,
        }
    }
}

/// What one direction did. `seen == delivered + dropped.total()`; copies sent out are
/// `delivered + duplicated`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectionTruth {
    pub seen: u64,
    pub delivered: u64,
    pub duplicated: u64,
    pub dropped: DropCounts,
    /// Sum and maximum of the delay added to each copy sent out, in µs.
    pub added_delay_us_total: u64,
    pub added_delay_us_max: u64,
    pub log: Vec<PacketRecord>,
    pub log_omitted: u64,
}

impl DirectionTruth {
    /// The mean delay added per copy sent out, if any was.
    pub fn mean_added_delay_ms(&self) -> Option<f64> {
        let copies = self.delivered + self.duplicated;
        (copies > 0).then(|| self.added_delay_us_total as f64 / copies as f64 / 1000.0)
    }

    /// Indices of the dropped datagrams that the log holds.
    pub fn dropped_indices(&self) -> Vec<u64> {
        self.log
            .iter()
            .filter(|r| matches!(r.fate, Fate::Dropped(_)))
            .map(|r| r.index)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleCounts {
    pub matched: u64,
    pub dropped_loss: u64,
    pub dropped_policer: u64,
}

/// What one DPI rule did, per direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleTruth {
    pub name: String,
    pub up: RuleCounts,
    pub down: RuleCounts,
}

impl RuleTruth {
    pub fn counts(&self, dir: Direction) -> &RuleCounts {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    fn counts_mut(&mut self, dir: Direction) -> &mut RuleCounts {
        match dir {
            Direction::Up => &mut self.up,
            Direction::Down => &mut self.down,
        }
    }
}

/// Everything the model did, for tests to compare measurements with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub seed: u64,
    pub up: DirectionTruth,
    pub down: DirectionTruth,
    pub rules: Vec<RuleTruth>,
}

impl GroundTruth {
    pub fn direction(&self, dir: Direction) -> &DirectionTruth {
        match dir {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }
}

#[derive(Debug)]
struct TokenBucket {
    bytes_per_sec: f64,
    depth: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    fn new(config: &PolicerConfig) -> Self {
        let depth = f64::from(config.bucket_bytes);
        TokenBucket {
            bytes_per_sec: config.rate_kbps * 1000.0 / 8.0,
            depth,
            tokens: depth,
            last: Duration::ZERO,
        }
    }

    fn admit(&mut self, now: Duration, len: usize) -> bool {
        // A caller whose clock steps back refills nothing rather than failing.
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.bytes_per_sec).min(self.depth);
        let len = len as f64;
        if self.tokens >= len {
            self.tokens -= len;
            true
        } else {
            false
        }
    }
}

fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn ms_to_duration(ms: f64) -> Duration {
    // `ms` is a sum of validated, non-negative, bounded values; the fallback is never taken.
    Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::ZERO)
}

/// The base stages' draws for one datagram, made before anything is decided (randomness rule 2).
struct BaseDraws {
    loss: Option<DropCause>,
    delays_ms: [f64; 2],
    duplicate: bool,
}

#[derive(Debug)]
struct PathState {
    config: PathConfig,
    loss_rng: ChaCha8Rng,
    delay_rng: ChaCha8Rng,
    dup_rng: ChaCha8Rng,
    in_bad_state: bool,
    policer: Option<TokenBucket>,
    /// Without reordering, each flow (UDP port pair) leaves in the order it entered: the last
    /// delivery time per flow. Per flow, not per path: a box that delays one flow (a DPI rule's
    /// extra delay) does not hold back the others queued beside it.
    fifo_tail: HashMap<UdpPorts, Duration>,
    truth: DirectionTruth,
}

impl PathState {
    fn new(seed: u64, dir: Direction, config: &PathConfig) -> Self {
        let base = 8 * dir.index() as u64;
        PathState {
            config: config.clone(),
            loss_rng: stream_rng(seed, base),
            delay_rng: stream_rng(seed, base + 1),
            dup_rng: stream_rng(seed, base + 2),
            in_bad_state: false,
            policer: config.policer.as_ref().map(TokenBucket::new),
            fifo_tail: HashMap::new(),
            truth: DirectionTruth::default(),
        }
    }

    fn draw(&mut self) -> BaseDraws {
        let loss = match self.config.loss {
            LossModel::None => None,
            LossModel::Bernoulli { loss } => {
                (self.loss_rng.gen::<f64>() < loss).then_some(DropCause::RandomLoss)
            }
            LossModel::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_in_bad,
                loss_in_good,
            } => {
                let loss_roll: f64 = self.loss_rng.gen();
                let move_roll: f64 = self.loss_rng.gen();
                let (loss, cause) = if self.in_bad_state {
                    (loss_in_bad, DropCause::BurstLoss)
                } else {
                    (loss_in_good, DropCause::RandomLoss)
                };
                self.in_bad_state = if self.in_bad_state {
                    move_roll >= p_bad_to_good
                } else {
                    move_roll < p_good_to_bad
                };
                (loss_roll < loss).then_some(cause)
            }
        };
        let delays_ms = [
            self.config.delay.sample_ms(&mut self.delay_rng),
            self.config.delay.sample_ms(&mut self.delay_rng),
        ];
        let duplicate = self.dup_rng.gen::<f64>() < self.config.duplicate;
        BaseDraws {
            loss,
            delays_ms,
            duplicate,
        }
    }
}

#[derive(Debug)]
struct RuleState {
    /// Per direction: the rule's own random stream and policer bucket.
    rngs: [ChaCha8Rng; 2],
    policers: [Option<TokenBucket>; 2],
    /// Per direction: whether the rule's burst chain is in its bad state.
    in_burst: [bool; 2],
    /// Bytes of matching datagrams seen so far, both directions (for `after_bytes`).
    bytes_seen: u64,
    /// Matching datagrams seen so far, both directions (for `first_packets`).
    packets_seen: u64,
    truth: RuleTruth,
}

/// The impairment model. See the module doc for the order of stages and the randomness rules.
#[derive(Debug)]
pub struct Impairment {
    config: ImpairmentConfig,
    paths: [PathState; 2],
    rules: Vec<RuleState>,
}

impl Impairment {
    pub fn new(config: ImpairmentConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let seed = config.seed;
        let paths = Direction::ALL.map(|dir| PathState::new(seed, dir, config.path(dir)));
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let stream = 1024 + 2 * i as u64;
                let policer = || rule.impairment.policer.as_ref().map(TokenBucket::new);
                RuleState {
                    rngs: [stream_rng(seed, stream), stream_rng(seed, stream + 1)],
                    policers: [policer(), policer()],
                    in_burst: [false; 2],
                    bytes_seen: 0,
                    packets_seen: 0,
                    truth: RuleTruth {
                        name: if rule.name.is_empty() {
                            format!("rule{i}")
                        } else {
                            rule.name.clone()
                        },
                        ..RuleTruth::default()
                    },
                }
            })
            .collect();
        Ok(Impairment {
            config,
            paths,
            rules,
        })
    }

    pub fn config(&self) -> &ImpairmentConfig {
        &self.config
    }

    /// A datagram of `bytes` to UDP port `dst_port` arrived at `now` going `dir`. Returns its copies
    /// with their departure times: none if dropped, two if duplicated. DPI rules that look at the
    /// source port see port 0; use [`Impairment::on_datagram`] to give both ports.
    pub fn on_packet(
        &mut self,
        now: Duration,
        dir: Direction,
        bytes: &[u8],
        dst_port: u16,
    ) -> Vec<Delivery> {
        self.on_datagram(
            now,
            dir,
            bytes,
            UdpPorts {
                src: 0,
                dst: dst_port,
            },
        )
    }

    /// As [`Impairment::on_packet`], with both UDP ports.
    pub fn on_datagram(
        &mut self,
        now: Duration,
        dir: Direction,
        bytes: &[u8],
        ports: UdpPorts,
    ) -> Vec<Delivery> {
        let d = dir.index();
        let index = self.paths[d].truth.seen;
        self.paths[d].truth.seen += 1;
        let base = self.paths[d].draw();

        // 1. DPI rules: the first match applies.
        let matched_rule = self
            .config
            .rules
            .iter()
            .position(|rule| rule.active_at(now) && rule.matches(dir, bytes, ports));
        let mut extra_ms = [0.0; 2];
        let mut dropped = None;
        // A rule with `after_bytes` lets that many bytes of matching datagrams through untouched
        // (a censor that throttles a flow once it has carried N bytes).
        // One with `first_packets` applies to that many matching datagrams and no more.
        let matched_rule = matched_rule.filter(|&i| {
            let state = &mut self.rules[i];
            let rule = &self.config.rules[i];
            state.bytes_seen = state.bytes_seen.saturating_add(bytes.len() as u64);
            state.packets_seen += 1;
            state.bytes_seen > rule.after_bytes
                && (rule.first_packets == 0 || state.packets_seen <= rule.first_packets)
        });
        if let Some(i) = matched_rule {
            let impairment = &self.config.rules[i].impairment;
            let state = &mut self.rules[i];
            let rng = &mut state.rngs[d];
            let loss_roll: f64 = rng.gen();
            // Gilbert: in the bad state every matching datagram is lost; then the chain moves.
            let burst_loss = state.in_burst[d];
            if let Some(b) = impairment.bursts {
                let move_roll: f64 = rng.gen();
                state.in_burst[d] = if state.in_burst[d] {
                    move_roll >= b.p_bad_to_good
                } else {
                    move_roll < b.p_good_to_bad
                };
            }
            extra_ms = [
                impairment.delay.sample_ms(rng),
                impairment.delay.sample_ms(rng),
            ];
            let counts = state.truth.counts_mut(dir);
            counts.matched += 1;
            if let Some(bucket) = state.policers[d].as_mut() {
                if !bucket.admit(now, bytes.len()) {
                    counts.dropped_policer += 1;
                    dropped = Some(DropCause::Dpi { rule: i });
                }
            }
            if dropped.is_none() && (burst_loss || loss_roll < impairment.loss) {
                counts.dropped_loss += 1;
                dropped = Some(DropCause::Dpi { rule: i });
            }
        }

        let path = &mut self.paths[d];
        // 2. Base policer; 3. base loss.
        if dropped.is_none() {
            if let Some(bucket) = path.policer.as_mut() {
                if !bucket.admit(now, bytes.len()) {
                    dropped = Some(DropCause::Policer);
                }
            }
        }
        if dropped.is_none() {
            dropped = base.loss;
        }
        if let Some(cause) = dropped {
            path.truth.dropped.record(cause);
            log(
                &mut path.truth,
                self.config.log_limit,
                PacketRecord {
                    index,
                    matched_rule,
                    fate: Fate::Dropped(cause),
                },
            );
            return Vec::new();
        }

        // 4. Delay, duplication, FIFO order.
        let copies = if base.duplicate { 2 } else { 1 };
        let mut deliveries = Vec::with_capacity(copies);
        let mut delays_us = Vec::with_capacity(copies);
        for (base_ms, extra_ms) in base.delays_ms.into_iter().zip(extra_ms).take(copies) {
            let mut at = now + ms_to_duration(base_ms + extra_ms);
            if !path.config.reorder {
                let tail = path.fifo_tail.entry(ports).or_insert(Duration::ZERO);
                at = at.max(*tail);
                *tail = at;
            }
            let delay_us = u64::try_from((at - now).as_micros()).unwrap_or(u64::MAX);
            path.truth.added_delay_us_total =
                path.truth.added_delay_us_total.saturating_add(delay_us);
            path.truth.added_delay_us_max = path.truth.added_delay_us_max.max(delay_us);
            delays_us.push(delay_us);
            deliveries.push(Delivery {
                at,
                bytes: bytes.to_vec(),
            });
        }
        path.truth.delivered += 1;
        if base.duplicate {
            path.truth.duplicated += 1;
        }
        log(
            &mut path.truth,
            self.config.log_limit,
            PacketRecord {
                index,
                matched_rule,
                fate: Fate::Delivered { delays_us },
            },
        );
        deliveries
    }

    /// A copy of everything recorded so far.
    pub fn ground_truth(&self) -> GroundTruth {
        GroundTruth {
            seed: self.config.seed,
            up: self.paths[0].truth.clone(),
            down: self.paths[1].truth.clone(),
            rules: self.rules.iter().map(|r| r.truth.clone()).collect(),
        }
    }
}

fn log(truth: &mut DirectionTruth, limit: usize, record: PacketRecord) {
    if truth.log.len() < limit {
        truth.log.push(record);
    } else {
        truth.log_omitted += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUN_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

    fn model(config: ImpairmentConfig) -> Impairment {
        Impairment::new(config).expect("valid test config")
    }

    fn up_only(seed: u64, up: PathConfig) -> ImpairmentConfig {
        ImpairmentConfig {
            seed,
            up,
            ..ImpairmentConfig::default()
        }
    }

    /// Feeds `count` datagrams of `size` bytes, one every `interval`, upstream; returns each one's
    /// deliveries.
    fn stream(
        model: &mut Impairment,
        count: u64,
        interval: Duration,
        size: usize,
    ) -> Vec<Vec<Delivery>> {
        (0..count)
            .map(|i| {
                let mut bytes = vec![0u8; size];
                let seq = (i as u32).to_be_bytes();
                bytes[..4].copy_from_slice(&seq);
                model.on_packet(interval * i as u32, Direction::Up, &bytes, 3479)
            })
            .collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Lengths of the runs of consecutive dropped datagrams in the log.
    fn loss_runs(truth: &DirectionTruth) -> Vec<u64> {
        let mut runs = Vec::new();
        let mut run = 0;
        for record in &truth.log {
            if matches!(record.fate, Fate::Dropped(_)) {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
        }
        if run > 0 {
            runs.push(run);
        }
        runs
    }

    #[test]
    fn bernoulli_loss_is_within_binomial_tolerance() {
        let n = 100_000;
        let p = 0.05;
        let mut m = model(up_only(
            7,
            PathConfig {
                loss: LossModel::bernoulli(p),
                ..PathConfig::default()
            },
        ));
        let out = stream(&mut m, n, ms(20), 172);
        let truth = m.ground_truth();
        let dropped = out.iter().filter(|d| d.is_empty()).count() as u64;
        assert_eq!(truth.up.dropped.random_loss, dropped);
        assert_eq!(truth.up.dropped.total(), dropped);
        assert_eq!(truth.up.seen, n);
        assert_eq!(truth.up.delivered + dropped, n);
        let expected = n as f64 * p;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (dropped as f64 - expected).abs() < 5.0 * sigma,
            "dropped {dropped}, expected {expected} ± {sigma}"
        );
        // The log names exactly the datagrams that got no delivery.
        let from_outputs: Vec<u64> = (0..n).filter(|&i| out[i as usize].is_empty()).collect();
        assert_eq!(truth.up.dropped_indices(), from_outputs);
    }

    #[test]
    fn gilbert_elliott_matches_configured_burst_length_and_loss() {
        let loss = LossModel::from_burst(0.1, 4.0).expect("feasible");
        assert!((loss.mean_loss() - 0.1).abs() < 1e-12);
        let n = 200_000;
        let mut m = model(up_only(
            11,
            PathConfig {
                loss,
                ..PathConfig::default()
            },
        ));
        stream(&mut m, n, ms(20), 172);
        let truth = m.ground_truth();
        let runs = loss_runs(&truth.up);
        let mean_run = runs.iter().sum::<u64>() as f64 / runs.len() as f64;
        assert!((mean_run - 4.0).abs() < 0.25, "mean burst {mean_run}");
        let rate = truth.up.dropped.total() as f64 / n as f64;
        assert!((rate - 0.1).abs() < 0.008, "loss rate {rate}");
        assert_eq!(
            truth.up.dropped.random_loss, 0,
            "the simple Gilbert model loses only in the bad state"
        );
        assert_eq!(truth.up.dropped.burst_loss, truth.up.dropped.total());
    }

    #[test]
    fn from_burst_refuses_impossible_combinations() {
        assert!(LossModel::from_burst(0.9, 1.0).is_err()); // would need P(good→bad) = 9
        assert!(LossModel::from_burst(0.1, 0.5).is_err());
        assert!(LossModel::from_burst(1.0, 4.0).is_err());
        assert!(LossModel::from_burst(-0.1, 4.0).is_err());
    }

    fn delivery_times(out: &[Vec<Delivery>]) -> Vec<Duration> {
        out.iter().flat_map(|d| d.iter().map(|d| d.at)).collect()
    }

    fn inversions(times: &[Duration]) -> usize {
        times.windows(2).filter(|w| w[1] < w[0]).count()
    }

    #[test]
    fn jitter_without_reorder_never_reorders_and_with_reorder_does() {
        // 5 ms spacing with ±15 ms jitter: overtaking is common unless the queue is FIFO.
        let delay = DelayConfig {
            delay_ms: 30.0,
            jitter_ms: 15.0,
            shape: JitterShape::Uniform,
        };
        let fifo = PathConfig {
            delay,
            reorder: false,
            duplicate: 0.05,
            ..PathConfig::default()
        };
        let mut m = model(up_only(3, fifo.clone()));
        let out = stream(&mut m, 10_000, ms(5), 100);
        assert_eq!(inversions(&delivery_times(&out)), 0);

        let mut m = model(up_only(
            3,
            PathConfig {
                reorder: true,
                ..fifo
            },
        ));
        let out = stream(&mut m, 10_000, ms(5), 100);
        assert!(inversions(&delivery_times(&out)) > 1000);
    }

    #[test]
    fn delay_mean_and_spread_match_config() {
        let n = 20_000;
        let uniform = DelayConfig {
            delay_ms: 30.0,
            jitter_ms: 10.0,
            shape: JitterShape::Uniform,
        };
        let mut m = model(up_only(
            5,
            PathConfig {
                delay: uniform,
                reorder: true,
                ..PathConfig::default()
            },
        ));
        let out = stream(&mut m, n, ms(20), 172);
        let delays: Vec<f64> = out
            .iter()
            .enumerate()
            .map(|(i, d)| (d[0].at - ms(20 * i as u64)).as_secs_f64() * 1000.0)
            .collect();
        let mean = delays.iter().sum::<f64>() / n as f64;
        assert!((mean - 30.0).abs() < 0.3, "mean {mean}"); // σ of the mean ≈ 0.04 ms
        assert!(delays.iter().all(|&d| (19.999..=40.001).contains(&d)));
        let truth = m.ground_truth();
        let recorded = truth.up.mean_added_delay_ms().expect("delivered");
        assert!((recorded - mean).abs() < 0.01);

        let normal = DelayConfig {
            shape: JitterShape::Normal,
            ..uniform
        };
        let mut m = model(up_only(
            5,
            PathConfig {
                delay: normal,
                reorder: true,
                ..PathConfig::default()
            },
        ));
        let out = stream(&mut m, n, ms(20), 172);
        let delays: Vec<f64> = out
            .iter()
            .enumerate()
            .map(|(i, d)| (d[0].at - ms(20 * i as u64)).as_secs_f64() * 1000.0)
            .collect();
        let mean = delays.iter().sum::<f64>() / n as f64;
        let sd = (delays.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!((mean - 30.0).abs() < 0.4, "mean {mean}");
        assert!((9.4..=10.4).contains(&sd), "standard deviation {sd}");

        // Without jitter the delay is exact, FIFO or not.
        let mut m = model(up_only(
            5,
            PathConfig {
                delay: DelayConfig::fixed(30.0),
                ..PathConfig::default()
            },
        ));
        let out = stream(&mut m, 100, ms(20), 172);
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, d)| d[0].at == ms(20 * i as u64 + 30)));
    }

    #[test]
    fn duplication_rate_is_within_binomial_tolerance() {
        let n = 100_000;
        let p = 0.01;
        let mut m = model(up_only(
            9,
            PathConfig {
                duplicate: p,
                ..PathConfig::default()
            },
        ));
        let out = stream(&mut m, n, ms(20), 172);
        let doubled: Vec<&Vec<Delivery>> = out.iter().filter(|d| d.len() == 2).collect();
        assert!(out.iter().all(|d| d.len() == 1 || d.len() == 2));
        assert!(doubled.iter().all(|d| d[0].bytes == d[1].bytes));
        let truth = m.ground_truth();
        assert_eq!(truth.up.duplicated, doubled.len() as u64);
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (doubled.len() as f64 - n as f64 * p).abs() < 5.0 * sigma,
            "{} duplicates",
            doubled.len()
        );
    }

    #[test]
    fn policer_passes_a_stream_under_its_rate_and_cuts_the_excess_of_one_above() {
        let policer = PolicerConfig::new(130.0);
        let path = PathConfig {
            policer: Some(policer),
            ..PathConfig::default()
        };
        // 172 bytes every 20 ms = 68.8 kbit/s.
        let mut m = model(up_only(1, path.clone()));
        stream(&mut m, 10_000, ms(20), 172);
        let truth = m.ground_truth();
        assert_eq!(truth.up.dropped.total(), 0);
        assert_eq!(truth.up.delivered, 10_000);

        // Twice the packet rate: 137.6 kbit/s, so 1 − 130/137.6 ≈ 5.5% of it is over the rate.
        let n = 20_000;
        let mut m = model(up_only(1, path));
        stream(&mut m, n, ms(10), 172);
        let truth = m.ground_truth();
        let expected = 1.0 - 130.0 / 137.6;
        let got = truth.up.dropped.total() as f64 / n as f64;
        assert!(
            (got - expected).abs() < 0.002,
            "dropped {got}, expected {expected}"
        );
        assert_eq!(truth.up.dropped.policer, truth.up.dropped.total());
    }

    #[test]
    fn same_seed_same_decisions_and_another_seed_others() {
        let config = |seed| {
            let path = PathConfig {
                loss: LossModel::from_burst(0.05, 3.0).expect("feasible"),
                delay: DelayConfig {
                    delay_ms: 20.0,
                    jitter_ms: 8.0,
                    shape: JitterShape::Normal,
                },
                reorder: true,
                duplicate: 0.02,
                policer: Some(PolicerConfig::new(100.0)),
            };
            let mut config = ImpairmentConfig::symmetric(seed, path);
            config.rules.push(
                "match=stun-cookie,loss=0.2,jitter-ms=5,delay-ms=5"
                    .parse()
                    .expect("rule"),
            );
            config
        };
        let run = |seed| {
            let mut m = model(config(seed));
            let mut outs = Vec::new();
            for i in 0..5_000u32 {
                let mut bytes = vec![0u8; 120];
                bytes[..4].copy_from_slice(&i.to_be_bytes());
                if i % 3 == 0 {
                    bytes[4..8].copy_from_slice(&STUN_COOKIE);
                }
                let dir = if i % 2 == 0 {
                    Direction::Up
                } else {
                    Direction::Down
                };
                outs.push(m.on_packet(ms(10) * i, dir, &bytes, 3478));
            }
            (outs, m.ground_truth())
        };
        let (out_a, truth_a) = run(42);
        let (out_b, truth_b) = run(42);
        assert_eq!(out_a, out_b);
        assert_eq!(truth_a, truth_b);
        assert_eq!(
            serde_json::to_string(&truth_a).expect("serialises"),
            serde_json::to_string(&truth_b).expect("serialises")
        );
        let (_, truth_c) = run(43);
        assert_ne!(truth_a.up.log, truth_c.up.log);
    }

    fn stun_like(seq: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 100];
        bytes[0..2].copy_from_slice(&[0x00, 0x01]);
        bytes[4..8].copy_from_slice(&STUN_COOKIE);
        bytes[8..12].copy_from_slice(&seq.to_be_bytes());
        bytes
    }

    fn neutral(seq: u32) -> Vec<u8> {
        let mut bytes = stun_like(seq);
        for b in &mut bytes[4..8] {
            *b = !*b; // the control arm: the recognisable bytes inverted
        }
        bytes
    }

    #[test]
    fn dpi_rule_on_stun_cookie_drops_only_stun_packets() {
        let mut config = ImpairmentConfig::default();
        config
            .rules
            .push("name=stun,match=stun-cookie,loss=1".parse().expect("rule"));
        let mut m = model(config);
        for seq in 0..1000u32 {
            let bytes = if seq % 2 == 0 {
                stun_like(seq)
            } else {
                neutral(seq)
            };
            let out = m.on_packet(ms(20) * seq, Direction::Up, &bytes, 3478);
            assert_eq!(out.is_empty(), seq % 2 == 0, "datagram {seq}");
        }
        let truth = m.ground_truth();
        assert_eq!(truth.rules[0].name, "stun");
        assert_eq!(
            truth.rules[0].up,
            RuleCounts {
                matched: 500,
                dropped_loss: 500,
                dropped_policer: 0
            }
        );
        assert_eq!(truth.rules[0].down, RuleCounts::default());
        assert_eq!(
            truth.up.dropped,
            DropCounts {
                dpi: 500,
                ..DropCounts::default()
            }
        );
        assert!(truth.up.log.iter().all(|r| match r.fate {
            Fate::Dropped(cause) =>
                cause == DropCause::Dpi { rule: 0 } && r.matched_rule == Some(0),
            Fate::Delivered { .. } => r.matched_rule.is_none(),
        }));
    }

    #[test]
    fn dpi_rule_changes_nothing_for_unmatched_packets() {
        // The control arm's fate under a seed is the same with or without a rule aimed at the platform arm.
        let base = PathConfig {
            loss: LossModel::bernoulli(0.1),
            delay: DelayConfig {
                delay_ms: 20.0,
                jitter_ms: 5.0,
                shape: JitterShape::Uniform,
            },
            reorder: true,
            duplicate: 0.01,
            policer: None,
        };
        let plain = up_only(21, base);
        let mut with_rule = plain.clone();
        with_rule.rules.push(
            "match=stun-cookie,loss=0.5,delay-ms=40,jitter-ms=10"
                .parse()
                .expect("rule"),
        );
        let run = |config: ImpairmentConfig| {
            let mut m = model(config);
            let out: Vec<Vec<Delivery>> = (0..4000u32)
                .map(|seq| {
                    let bytes = if seq % 2 == 0 {
                        stun_like(seq)
                    } else {
                        neutral(seq)
                    };
                    m.on_packet(ms(20) * seq, Direction::Up, &bytes, 50_000)
                })
                .collect();
            (out, m.ground_truth())
        };
        let (out_plain, _) = run(plain);
        let (out_rule, truth) = run(with_rule);
        for seq in (1..4000).step_by(2) {
            assert_eq!(out_plain[seq], out_rule[seq], "control datagram {seq}");
        }
        let counts = truth.rules[0].up;
        assert_eq!(counts.matched, 2000);
        let share = counts.dropped_loss as f64 / 2000.0;
        assert!((share - 0.5).abs() < 0.06, "rule loss {share}");
    }

    #[test]
    fn dpi_rule_by_port_and_direction_with_its_own_policer() {
        let mut config = ImpairmentConfig::default();
        // 20 kbit/s with a 200-byte bucket for what goes to ports 50000–50100, upstream only.
        config.rules.push(
            "ports=3478+50000-50100,dir=up,rate-kbps=20,bucket-bytes=200"
                .parse()
                .expect("rule"),
        );
        let mut m = model(config);
        for i in 0..1000u32 {
            let port = if i % 2 == 0 { 50_050 } else { 40_000 };
            m.on_packet(ms(20) * i, Direction::Up, &[0u8; 172], port);
            m.on_packet(ms(20) * i, Direction::Down, &[0u8; 172], port);
        }
        let truth = m.ground_truth();
        let up = truth.rules[0].up;
        assert_eq!(up.matched, 500);
        // 20 kbit/s for 20 s is 50 000 bytes, plus the 200-byte bucket it starts with: at most 291
        // datagrams of 172 bytes pass.
        let passed = up.matched - up.dropped_policer;
        assert!(passed * 172 <= 2500 * 20 + 200, "{up:?}");
        assert!(passed > 0, "{up:?}");
        assert_eq!(truth.up.dropped.dpi, up.dropped_policer);
        assert_eq!(truth.rules[0].down.matched, 0);
        assert_eq!(truth.down.dropped.total(), 0);
    }

    #[test]
    fn log_limit_keeps_counting() {
        let mut m = model(ImpairmentConfig {
            log_limit: 10,
            ..up_only(1, PathConfig::default())
        });
        stream(&mut m, 25, ms(20), 10);
        let truth = m.ground_truth();
        assert_eq!(
            (truth.up.seen, truth.up.log.len(), truth.up.log_omitted),
            (25, 10, 15)
        );
    }

    #[test]
    fn invalid_config_names_the_field() {
        let mut config = ImpairmentConfig::default();
        config.down.loss = LossModel::bernoulli(1.5);
        let err = Impairment::new(config).expect_err("refused");
        assert_eq!(err.field, "down.loss.loss");
        let mut config = ImpairmentConfig::default();
        config.up.delay.jitter_ms = f64::NAN;
        assert_eq!(
            Impairment::new(config).expect_err("refused").field,
            "up.delay.jitter_ms"
        );
    }

    #[test]
    fn config_round_trips_through_json() {
        let mut config = ImpairmentConfig::symmetric(
            5,
            PathConfig {
                loss: LossModel::from_burst(0.1, 4.0).expect("feasible"),
                policer: Some(PolicerConfig::new(130.0)),
                ..PathConfig::default()
            },
        );
        config.rules.push(
            "name=stun,match=stun-cookie,ports=3478,loss=0.1"
                .parse()
                .expect("rule"),
        );
        let json = serde_json::to_string(&config).expect("serialises");
        let back: ImpairmentConfig = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, config);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn path_config() -> impl Strategy<Value = PathConfig> {
            (
                0.0..=1.0f64,
                1.0..10.0f64,
                0.0..50.0f64,
                0.0..30.0f64,
                any::<bool>(),
                0.0..=1.0f64,
                any::<bool>(),
            )
                .prop_map(
                    |(loss, burst, delay_ms, jitter_ms, reorder, duplicate, normal)| PathConfig {
                        loss: LossModel::from_burst(loss.min(0.5), burst)
                            .unwrap_or(LossModel::bernoulli(loss)),
                        delay: DelayConfig {
                            delay_ms,
                            jitter_ms,
                            shape: if normal {
                                JitterShape::Normal
                            } else {
                                JitterShape::Uniform
                            },
                        },
                        reorder,
                        duplicate,
                        policer: None,
                    },
                )
        }

        proptest! {
            #[test]
            fn counts_add_up_and_deliveries_respect_time_and_order(
                seed in any::<u64>(),
                path in path_config(),
                gaps_ms in proptest::collection::vec(0u64..40, 1..300),
                sizes in proptest::collection::vec(0usize..1500, 1..300),
            ) {
                let reorder = path.reorder;
                let mut m = model(ImpairmentConfig::symmetric(seed, path));
                let mut now = Duration::ZERO;
                let mut last_at = Duration::ZERO;
                for (i, gap) in gaps_ms.iter().enumerate() {
                    now += ms(*gap);
                    let bytes = vec![7u8; sizes[i % sizes.len()]];
                    let out = m.on_packet(now, Direction::Up, &bytes, 3478);
                    prop_assert!(out.len() <= 2);
                    for d in &out {
                        prop_assert!(d.at >= now);
                        prop_assert_eq!(&d.bytes, &bytes);
                        if !reorder {
                            prop_assert!(d.at >= last_at);
                        }
                        last_at = last_at.max(d.at);
                    }
                }
                let truth = m.ground_truth();
                prop_assert_eq!(truth.up.seen, gaps_ms.len() as u64);
                prop_assert_eq!(truth.up.seen, truth.up.delivered + truth.up.dropped.total());
                prop_assert_eq!(truth.up.log.len() as u64, truth.up.seen);
                prop_assert_eq!(truth.down.seen, 0);
            }
        }
    }
}
