//! The I/O around a [`CallTest`]: real UDP sockets, a real clock, precise pacing.
//!
//! Pacing is what a call sounds like, so it gets a thread of its own rather than the async
//! runtime's millisecond timer wheel: the sender thread sleeps on a condition variable until just
//! before the next deadline (woken early if a datagram changes the schedule), then spins for the
//! rest. How long before: as long as most of this machine's recent wake-ups overshot
//! ([`SpinBudget`]: the 90th percentile of the last [`SPIN_HISTORY`] plus [`SPIN_MARGIN_US`],
//! between [`MIN_SPIN_US`] and [`SPIN_US`]), so a quiet machine spins tens of µs per packet and
//! a busy one up to `SPIN_US`.
//! Timer slack is set to 1 µs for this thread, so the kernel does not coalesce its wake-ups. One receiver thread per socket blocks in `recvmsg`; each datagram is
//! timestamped with the kernel's receive time where the kernel gives one (`SO_TIMESTAMPNS`,
//! Linux), so the agent's own scheduling delay is not read as the network's, else as `recv`
//! returns. That receive is the reflector's own ([`callwatch_reflector::net`]): one
//! implementation of the kernel's timestamps for both ends. Spinning costs at most `SPIN_US` per
//! 20 ms interval (~1 % of a core), typically a fraction of that.
//!
//! The loop is str0m's: feed what arrived, drain `poll_transmit`, sleep until `poll_timeout`.

use super::call::CallTest;
use super::session::Progress;
use callwatch_reflector::net;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest spin before a deadline (the budget on a machine whose wake-ups are late).
pub const SPIN_US: u64 = 200;
/// The shortest spin before a deadline.
pub const MIN_SPIN_US: u64 = 20;
/// Added to the quantile of recent overshoots.
pub const SPIN_MARGIN_US: u64 = 10;
/// Wake-ups remembered by [`SpinBudget`]: at 50 packets/s, five seconds, so a machine whose
/// load comes in bursts (a build, a browser tab) keeps a long spin between them; only a
/// machine quiet for that long spins less. (Measured under a load average of 9 on 2 cores, a
/// history of 32 — half a second — let bursts in between and made 16 sends in 2,500 late by
/// more than half an interval, against 2 with the full spin.)
pub const SPIN_HISTORY: usize = 250;
/// Wake-ups seen before the budget follows them: until then the full [`SPIN_US`].
pub const SPIN_WARMUP: usize = 20;
/// The share of recent wake-ups (percent) the spin covers: it lasts as long as this quantile of
/// their overshoots. Covering the largest one instead spends the whole tail on every packet: on
/// a VM whose wake-ups overshoot by ~50 µs, with one in a hundred near 200 µs, that is ~150 µs
/// of spinning per packet for the sake of one packet in a hundred.
pub const SPIN_COVER_PERCENT: usize = 90;

/// How long before a deadline the sender stops sleeping and spins: the
/// [`SPIN_COVER_PERCENT`] quantile of the overshoots of its last [`SPIN_HISTORY`] timed wake-ups
/// (how much later than asked the kernel woke it) plus [`SPIN_MARGIN_US`], within
/// [`MIN_SPIN_US`]..=[`SPIN_US`]. It starts at `SPIN_US` for the first [`SPIN_WARMUP`] wake-ups,
/// so the first packets are on time before anything is known. A wake-up later than the budget
/// makes its send late by the difference (counted by the timer figures).
#[derive(Clone, Debug)]
pub struct SpinBudget {
    recent: [u64; SPIN_HISTORY],
    next: usize,
    seen: usize,
    budget: u64,
}

impl Default for SpinBudget {
    fn default() -> Self {
        SpinBudget {
            recent: [0; SPIN_HISTORY],
            next: 0,
            seen: 0,
            budget: SPIN_US,
        }
    }
}

impl SpinBudget {
    /// Records a timed wake-up that came `overshoot_us` after the time asked for.
    pub fn record(&mut self, overshoot_us: u64) {
        if let Some(slot) = self.recent.get_mut(self.next) {
            *slot = overshoot_us;
        }
        self.next = (self.next + 1) % SPIN_HISTORY;
        self.seen = (self.seen + 1).min(SPIN_HISTORY);
        self.budget = if self.seen < SPIN_WARMUP {
            SPIN_US
        } else {
            let mut sorted = self.recent;
            let seen = sorted.get_mut(..self.seen).unwrap_or(&mut []);
            seen.sort_unstable();
            // The smallest overshoot that SPIN_COVER_PERCENT of them do not exceed.
            let rank = (seen.len() * SPIN_COVER_PERCENT)
                .div_ceil(100)
                .saturating_sub(1);
            let quantile = seen.get(rank).copied().unwrap_or(SPIN_US);
            quantile
                .saturating_add(SPIN_MARGIN_US)
                .clamp(MIN_SPIN_US, SPIN_US)
        };
    }

    /// The spin before the next deadline, µs.
    pub fn spin_us(&self) -> u64 {
        self.budget
    }
}

struct Shared {
    test: Mutex<CallTest>,
    wake: Condvar,
    stop: AtomicBool,
}

fn lock(m: &Mutex<CallTest>) -> MutexGuard<'_, CallTest> {
    // The test holds plain data; a panicked holder leaves nothing half-written that matters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks a running test to stop early (the sessions are then abandoned, not closed).
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

fn set_timer_slack_1us() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Runs `test` to completion on the calling thread (plus one receiver thread per socket;
/// `sockets[i]` is connected to arm `i`'s peer) and returns it, done or cancelled.
/// `on_progress` is called about every 100 ms with the arms' counts.
pub fn run(
    test: CallTest,
    sockets: Vec<UdpSocket>,
    epoch: Instant,
    cancel: &Cancel,
    mut on_progress: impl FnMut(&[Progress]),
) -> std::io::Result<CallTest> {
    let now_us = move || epoch.elapsed().as_micros() as u64;
    let mut shared_sockets = Vec::new();
    for socket in sockets {
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        if let Err(e) = net::enable_timestamps(&socket) {
            // Without them a datagram is stamped when `recv` returns.
            tracing::debug!("no kernel receive timestamps: {e}");
        }
        shared_sockets.push(Arc::new(socket));
    }
    let sockets = shared_sockets;
    let shared = Arc::new(Shared {
        test: Mutex::new(test),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    let receivers: Vec<_> = sockets
        .iter()
        .enumerate()
        .map(|(i, socket)| {
            let (shared, socket) = (shared.clone(), socket.clone());
            std::thread::Builder::new()
                .name(format!("callwatch-rx-{i}"))
                .spawn(move || receive_loop(i, &socket, &shared, now_us))
        })
        .collect::<Result<_, _>>()?;

    set_timer_slack_1us();
    let mut spin = SpinBudget::default();
    let mut last_progress = Instant::now();
    let mut guard = lock(&shared.test);
    loop {
        if cancel.is_cancelled() {
            break;
        }
        // Send everything that is due.
        let now = now_us();
        while let Some(t) = guard.poll_transmit(now) {
            // A send error (no route, ICMP unreachable) is a lost packet, not a failed test.
            if let Some(Err(e)) = sockets.get(t.arm).map(|s| s.send(&t.datagram)) {
                tracing::debug!("send failed: {e}");
            }
        }
        if guard.is_done() {
            break;
        }
        if last_progress.elapsed() >= Duration::from_millis(100) {
            let p = guard.progress();
            drop(guard);
            on_progress(&p);
            last_progress = Instant::now();
            guard = lock(&shared.test);
            continue;
        }
        let Some(deadline) = guard.poll_timeout() else {
            break;
        };
        let now = now_us();
        let spin_us = spin.spin_us();
        if deadline > now + spin_us {
            // Sleep until the spin before the deadline, or until a datagram changes things.
            let sleep_us = (deadline - now - spin_us).min(100_000);
            let (g, timed_out) = match shared
                .wake
                .wait_timeout(guard, Duration::from_micros(sleep_us))
            {
                Ok((g, r)) => (g, r.timed_out()),
                Err(e) => {
                    let (g, r) = e.into_inner();
                    (g, r.timed_out())
                }
            };
            guard = g;
            if timed_out {
                spin.record(now_us().saturating_sub(now + sleep_us));
            }
        } else if deadline > now {
            drop(guard);
            while now_us() < deadline {
                std::hint::spin_loop();
            }
            guard = lock(&shared.test);
        }
    }
    let p = guard.progress();
    drop(guard);
    on_progress(&p);
    shared.stop.store(true, Ordering::SeqCst);
    for r in receivers {
        let _ = r.join();
    }
    match Arc::try_unwrap(shared) {
        Ok(shared) => Ok(shared.test.into_inner().unwrap_or_else(|e| e.into_inner())),
        // Every receiver thread was joined above, so ours is the last reference.
        Err(_) => Err(std::io::Error::other("a receiver thread outlived the test")),
    }
}

fn receive_loop(arm: usize, socket: &UdpSocket, shared: &Shared, now_us: impl Fn() -> u64) {
    let mut buf = [0u8; 2048];
    while !shared.stop.load(Ordering::SeqCst) {
        match net::recv(socket, &mut buf) {
            Ok(received) => {
                // The kernel's receive time, as an age taken from now on our own clock; more
                // than a second is not a receive delay but a wall clock step.
                let age = received.age(Duration::from_secs(1));
                let now = now_us().saturating_sub(age.as_micros() as u64);
                let mut test = lock(&shared.test);
                let before = test.poll_timeout();
                test.handle_datagram(arm, now, &buf[..received.len]);
                let after = test.poll_timeout();
                drop(test);
                // Wake the sender only when the datagram brought its next deadline forward
                // (a handshake's answer, the end of the test); an echo of the stream leaves
                // the schedule as it was, and waking for it costs two context switches.
                if brings_forward(before, after) {
                    shared.wake.notify_one();
                }
            }
            // Timeouts let us see the stop flag; refused/unreachable are lost packets.
            Err(_) => continue,
        }
    }
}

/// Whether a datagram that moved the next deadline from `before` to `after` must wake the
/// sender: the deadline came earlier, appeared, or vanished (the test is over).
fn brings_forward(before: Option<u64>, after: Option<u64>) -> bool {
    match (before, after) {
        (Some(b), Some(a)) => a < b,
        (None, Some(_)) | (_, None) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spin_covers_the_90th_percentile_of_recent_overshoots_within_its_bounds() {
        // The figures below are for these constants.
        assert_eq!(
            (SPIN_HISTORY, SPIN_COVER_PERCENT, SPIN_WARMUP),
            (250, 90, 20)
        );
        assert_eq!((SPIN_MARGIN_US, MIN_SPIN_US, SPIN_US), (10, 20, 200));
        let mut b = SpinBudget::default();
        // Nothing known yet: the full spin, for the first SPIN_WARMUP wake-ups.
        assert_eq!(b.spin_us(), SPIN_US);
        for _ in 0..19 {
            b.record(15);
        }
        assert_eq!(b.spin_us(), SPIN_US);
        b.record(15);
        // A quiet machine: the margin over 15 µs.
        assert_eq!(b.spin_us(), 25);
        for _ in 0..SPIN_HISTORY {
            b.record(0);
        }
        // Not less than the floor.
        assert_eq!(b.spin_us(), MIN_SPIN_US);
        // 25 late wake-ups in 250 (10 %) are beyond the 90th percentile: 50 + 10.
        for _ in 0..225 {
            b.record(50);
        }
        for _ in 0..25 {
            b.record(150);
        }
        assert_eq!(b.spin_us(), 60);
        // A 26th (10.4 %) is not: 150 + 10.
        b.record(150);
        assert_eq!(b.spin_us(), 160);
        // They age out after SPIN_HISTORY wake-ups, oldest first.
        for _ in 0..224 {
            b.record(40);
        }
        assert_eq!(b.spin_us(), 160);
        b.record(40);
        assert_eq!(b.spin_us(), 50);
        // Never more than the ceiling.
        for _ in 0..26 {
            b.record(10_000);
        }
        assert_eq!(b.spin_us(), SPIN_US);
    }

    #[test]
    fn only_a_datagram_that_brings_the_deadline_forward_wakes_the_sender() {
        assert!(!brings_forward(Some(100), Some(100)));
        assert!(!brings_forward(Some(100), Some(101)));
        assert!(brings_forward(Some(100), Some(99)));
        assert!(brings_forward(None, Some(5)));
        assert!(brings_forward(Some(100), None));
        assert!(brings_forward(None, None));
    }

    #[test]
    fn before_the_history_fills_the_quantile_is_of_what_was_seen() {
        let mut b = SpinBudget::default();
        // 20 seen: the 90th percentile is the 18th smallest (ceil(18.0)), so two outliers are
        // ignored; with 21 seen it is the 19th (ceil(18.9)), and three are not.
        for _ in 0..18 {
            b.record(30);
        }
        b.record(120);
        b.record(120);
        assert_eq!(b.spin_us(), 40);
        b.record(120);
        assert_eq!(b.spin_us(), 130);
    }
}
