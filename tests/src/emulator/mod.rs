//! The network impairment emulator: loss, bursts, delay, jitter, reordering, duplication, rate policing and
//! DPI-style rules that hit only matching packets, done in user space because the kernels we test on have
//! no netem.
//!
//! - [`model`] is the whole behaviour as a pure, seeded state machine: it is told when a datagram arrived
//!   and answers when each copy leaves (or that it is dropped), and it keeps the ground truth that tests
//!   compare the agent's measurements with.
//! - [`dpi`] holds the rules that single out packets by bytes and ports, as data (JSON or a compact
//!   `key=value,…` syntax).
//! - [`relay`] is the thin tokio layer: a UDP relay between agents and a reflector that runs the model on
//!   real sockets. The `callwatch-impair` binary is a command line around it.

pub mod dpi;
pub mod model;
pub mod relay;

pub use dpi::{Bursts, ByteMatch, DirectionFilter, DpiRule, PortRange, PortSide, RuleImpairment};
pub use model::{
    ConfigError, DelayConfig, Delivery, Direction, DirectionTruth, DropCause, DropCounts, Fate,
    GroundTruth, Impairment, ImpairmentConfig, JitterShape, LossModel, PacketRecord, PathConfig,
    PolicerConfig, RuleCounts, RuleTruth, UdpPorts,
};
pub use relay::{Relay, RelayConfig, RelayCounters, RelaySnapshot, Route};
