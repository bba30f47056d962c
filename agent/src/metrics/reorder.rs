//! Reordering as RFC 4737 defines it: a reply is reordered if a later sequence number arrived
//! before it.
//!
//! RFC 4737 section 3 keeps `NextExp`, the next expected sequence number: an arrival with
//! `s ≥ NextExp` is in order and sets `NextExp = s + 1`; an arrival with `s < NextExp` is reordered
//! and leaves `NextExp` alone. Sequence numbers start at 0, so `NextExp` does too.

/// Number of reordered arrivals in `arrival_order` (first copies only, as recorded).
pub(super) fn reordered(arrival_order: &[u32]) -> u32 {
    // u64 so that `s + 1` cannot overflow at u32::MAX.
    let mut next_exp: u64 = 0;
    let mut count: u32 = 0;
    for &s in arrival_order {
        let s = u64::from(s);
        if s >= next_exp {
            next_exp = s + 1;
        } else {
            count = count.saturating_add(1);
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_arrivals_after_a_jump_are_reordered() {
        // The RFC 4737 style example: 4, 5 and 6 arrive after 7..=10 and are each reordered.
        assert_eq!(reordered(&[0, 1, 2, 3, 7, 8, 9, 10, 4, 5, 6, 11]), 3);
        // One packet overtaken by two: only the overtaken one counts.
        assert_eq!(reordered(&[1, 2, 3, 5, 6, 4, 7, 8]), 1);
        // A gap from loss is not reordering.
        assert_eq!(reordered(&[0, 1, 5, 6, 9]), 0);
        assert_eq!(reordered(&[]), 0);
        assert_eq!(reordered(&[u32::MAX, 0]), 1);
    }
}
