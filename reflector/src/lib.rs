//! callwatch-reflector: the UDP reflector agents run their call tests against.
//!
//! [`core::Reflector`] holds all the logic and no I/O: it is handed the time, a source address
//! and a datagram, and says what (if anything) to send back; the simulator drives it under a
//! simulated clock. [`udp`] is the driver around it (threads of its own, kernel receive times
//! from [`net`]; sockets systemd passed, from [`activation`]). [`identity`] keeps its long-term keys in its data folder (owner-only, with
//! [`files`]). [`standalone`] starts it the way both `callwatch-reflector` and the collector's
//! `serve` run it, and holds the command line they share; [`geo`] is the region lookup its
//! attestations use.
//!
//! No store, no HTTP, no QUIC: the crate depends on `callwatch-proto` and the runtime only
//! (`.ci/run` checks its dependency tree). Feature `geo` (default) adds region lookup
//! (MaxMind DB files) and the binary; without it the core, the drivers and the key file remain.

pub mod activation;
pub mod core;
pub mod files;
#[cfg(feature = "geo")]
pub mod geo;
pub mod identity;
pub mod net;
#[cfg(feature = "geo")]
pub mod standalone;
pub mod term;
pub mod udp;

pub use self::core::{
    stun_binding_success, Arrival, AttestedRegion, Attester, Limits, Reflector, ReflectorStats,
    RegionLookup,
};
pub use self::udp::{
    bind_failure, bind_with_buffers, spawn_reflector, spawn_reflector_attested,
    spawn_reflector_with, Bind, Driver, ReflectorHandle, ReflectorStatsSource,
};
