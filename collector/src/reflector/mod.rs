//! The UDP reflector: echoes call-test probes back to agents that proved they receive.
//!
//! [`core::Reflector`] holds all the logic and no I/O: it is handed the time, a source address and
//! a datagram, and says what (if anything) to send back. [`udp`] is the driver around it (threads of its own).

pub mod core;
pub mod identity;
pub mod registry;
pub mod udp;

pub use self::core::{
    stun_binding_success, Arrival, Attester, Limits, Reflector, ReflectorStats, RegionLookup,
};
pub use self::udp::{
    bind_with_buffers, spawn_reflector, spawn_reflector_attested, spawn_reflector_with, Driver,
    ReflectorHandle, ReflectorStatsSource,
};
