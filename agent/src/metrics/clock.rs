//! Timestamp arithmetic that survives counter wrap and clocks that disagree.
//!
//! Every timestamp is a `u64` count of microseconds with an arbitrary epoch. Two readings of one
//! clock are compared with wrapping subtraction read back as signed: the result is exact whenever
//! the true interval is shorter than 2^63 µs (about 292 000 years), even if the counter wrapped in
//! between, and a clock that stepped backwards gives a negative interval instead of a panic.
//!
//! Differences across the agent's and the reflector's clocks ("cross-clock" transits) carry the
//! unknown offset between them. They are kept as raw wrapping `u64` values and only ever compared
//! with each other through [`elapsed_us`], so the offset cancels exactly as it would in real
//! arithmetic.

/// `to − from` in µs, for two readings of the same counter (or two raw cross-clock transits).
pub(super) fn elapsed_us(from: u64, to: u64) -> i64 {
    // Two's-complement reinterpretation is the point: it maps the modular difference onto the
    // signed interval closest to zero.
    to.wrapping_sub(from) as i64
}

/// Microseconds to milliseconds, the unit of the report.
pub(super) fn ms(us: f64) -> f64 {
    us / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_survive_wrap_and_backward_steps() {
        assert_eq!(elapsed_us(1_000, 1_500), 500);
        assert_eq!(elapsed_us(u64::MAX - 99, 400), 500);
        assert_eq!(elapsed_us(1_500, 1_000), -500);
        assert_eq!(elapsed_us(400, u64::MAX - 99), -500);
    }
}
