//! Region lookup, as the reflector does it ([`callwatch_reflector::geo`]: ip2asn TSV and MaxMind
//! DB sources, the address forgotten right after), and the hosting networks the collector marks
//! ([`hosting`]).

pub mod hosting;

pub use callwatch_reflector::geo::*;
