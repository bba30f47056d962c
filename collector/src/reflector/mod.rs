//! The collector's side of reflectors: the standalone reflectors it knows ([`registry`]).
//!
//! The reflector itself (core, UDP driver, key file) is the `callwatch-reflector` crate; `serve`
//! embeds it and `reflect` runs it alone, both through [`callwatch_reflector::standalone`].

pub mod registry;
