//! Where probes were lost: upstream (before the reflector) or downstream (on the way back).
//!
//! The split rests on the reflector's own count of what it received. That count is only
//! plausible between what came back (the reflector cannot echo what it never saw) and what was
//! sent (anything above is another session's traffic or a counting fault), so it is clamped into
//! that range before use; the report still carries the raw figure in `packets_reflected`.
//! When the reflector's final count never reached the agent the split is unknown, and said to be:
//! `loss_up` and `loss_down` are `None` (putting it all upstream would blame the wrong direction
//! whenever a censor drops replies).

/// Probe counts of one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Delivery {
    pub sent: u64,
    /// The reflector's count, clamped into `received..=sent` (see the module comment); `None`
    /// when it never said.
    pub reflected: Option<u64>,
    pub received: u64,
}

impl Delivery {
    pub(super) fn new(sent: u64, received: u64, reflector_received: Option<u32>) -> Delivery {
        // received ≤ sent also keeps the clamp below from panicking (it needs min ≤ max).
        let received = received.min(sent);
        let reflected = reflector_received.map(|r| u64::from(r).clamp(received, sent));
        Delivery {
            sent,
            reflected,
            received,
        }
    }

    /// (sent − received) / sent, the round trip; 0 when nothing was sent.
    pub(super) fn loss(&self) -> f64 {
        fraction(self.sent - self.received, self.sent)
    }

    /// (sent − reflected) / sent; 0 when nothing was sent; `None` without the reflector's count.
    pub(super) fn loss_up(&self) -> Option<f64> {
        self.reflected.map(|r| fraction(self.sent - r, self.sent))
    }

    /// (reflected − received) / reflected; 0 when nothing reached the reflector; `None` without
    /// the reflector's count.
    pub(super) fn loss_down(&self) -> Option<f64> {
        self.reflected.map(|r| fraction(r - self.received, r))
    }
}

/// `part / whole` as a fraction; 0 for an empty whole.
pub(super) fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflector_count_splits_the_loss() {
        let d = Delivery::new(100, 80, Some(90));
        assert!((d.loss_up().unwrap() - 0.1).abs() < 1e-12);
        assert!((d.loss_down().unwrap() - 10.0 / 90.0).abs() < 1e-12);
        assert!((d.loss() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn implausible_reflector_counts_are_clamped() {
        // Below what came back: the reflector saw at least the 80 it echoed.
        let d = Delivery::new(100, 80, Some(70));
        assert_eq!(
            (d.reflected, d.loss_up(), d.loss_down()),
            (Some(80), Some(0.2), Some(0.0))
        );
        // Above what was sent.
        let d = Delivery::new(100, 80, Some(150));
        assert_eq!(
            (d.reflected, d.loss_up(), d.loss_down()),
            (Some(100), Some(0.0), Some(0.2))
        );
    }

    #[test]
    fn unknown_reflector_count_leaves_the_split_unknown() {
        let d = Delivery::new(100, 80, None);
        assert_eq!((d.loss_up(), d.loss_down()), (None, None));
        assert!((d.loss() - 0.2).abs() < 1e-12);
    }

    #[test]
    fn empty_denominators_give_zero() {
        let d = Delivery::new(0, 0, Some(5));
        assert_eq!((d.loss_up(), d.loss_down()), (Some(0.0), Some(0.0)));
        let d = Delivery::new(10, 0, Some(0));
        assert_eq!((d.loss_up(), d.loss_down()), (Some(1.0), Some(0.0)));
    }
}
