#![no_main]
//! See `callwatch_fuzz::check::reflector_core` for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| callwatch_fuzz::check::reflector_core(data));
