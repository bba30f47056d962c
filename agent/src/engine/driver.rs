//! The I/O around a [`CallTest`]: real UDP sockets, a real clock, precise pacing.
//!
//! Pacing is what a call sounds like, so it gets a thread of its own rather than the async
//! runtime's millisecond timer wheel: the sender thread sleeps on a condition variable until just
//! before the next deadline (woken early if a datagram changes the schedule), then spins for the
//! last [`SPIN_US`] µs. Timer slack is set to 1 µs for this thread, so the kernel does not
//! coalesce its wake-ups. One receiver thread per socket blocks in `recvmsg`; each datagram is
//! timestamped with the kernel's receive time where the kernel gives one (`SO_TIMESTAMPNS`,
//! Linux), so the agent's own scheduling delay is not read as the network's, else as `recv`
//! returns. That receive is the reflector's own ([`callwatch_reflector::net`]): one
//! implementation of the kernel's timestamps for both ends. Spinning costs at most `SPIN_US` per 20 ms interval (~1 % of a core).
//!
//! The loop is str0m's: feed what arrived, drain `poll_transmit`, sleep until `poll_timeout`.

use super::call::CallTest;
use super::session::Progress;
use callwatch_reflector::net;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Spin this long before a deadline instead of sleeping through it.
pub const SPIN_US: u64 = 200;

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
        if deadline > now + SPIN_US {
            // Sleep until SPIN_US before the deadline, or until a datagram changes things.
            let wait = Duration::from_micros((deadline - now - SPIN_US).min(100_000));
            guard = shared
                .wake
                .wait_timeout(guard, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
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
                lock(&shared.test).handle_datagram(arm, now, &buf[..received.len]);
                shared.wake.notify_one();
            }
            // Timeouts let us see the stop flag; refused/unreachable are lost packets.
            Err(_) => continue,
        }
    }
}
