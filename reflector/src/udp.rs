//! The reflector's driver: one OS thread per listening UDP socket, one shared [`Reflector`].
//!
//! The reflector's clock is the measurement, so nothing else the collector does may stand
//! between a probe and its reply: the threads are the reflector's own (not the async runtime's
//! workers or its blocking pool, which ingest, exports and the HTTP API share), each blocks in
//! `recvmsg` (or `recvmmsg`, see [`Driver`]) on its socket, and the work per datagram is bounded
//! (one `handle` and its share of one lock and one send). Where the kernel can say when a
//! datagram arrived (`SO_TIMESTAMPNS`) and how many it dropped for a full receive queue
//! (`SO_RXQ_OVFL`), the reply carries that receive time and count (see [`crate::core`] rule
//! 10): what the reflector's own scheduling adds is then measured as its residence time, not
//! published as network delay.

use crate::core::{Arrival, Limits, Reflector, ReflectorStats};
use crate::net;
use callwatch_proto::seal::{ReflectorKey, ReflectorSecret};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::net::UdpSocket;

/// How a reflector thread receives datagrams and sends the replies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Driver {
    /// One `recvmsg` and one `sendto` per datagram.
    Single,
    /// Up to [`BATCH`] datagrams per `recvmmsg`, which returns as soon as one is there (it never
    /// waits to fill a batch), and the replies of one batch in one `sendmmsg`. Linux only;
    /// elsewhere it is [`Driver::Single`]. The default: it costs the same while datagrams come
    /// one at a time and ~11 % less CPU per datagram once they queue (RELIABILITY.md,
    /// "Reflector: concurrent 50 packets/s sessions").
    #[default]
    Batched,
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "single" => Ok(Driver::Single),
            "batched" => Ok(Driver::Batched),
            other => Err(format!(
                "unknown reflector driver {other:?} (single, batched)"
            )),
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Driver::Single => "single",
            Driver::Batched => "batched",
        })
    }
}

pub use crate::net::BATCH;

/// A running reflector: its bound addresses, counters, and the threads to stop.
pub struct ReflectorHandle {
    pub addrs: Vec<SocketAddr>,
    /// The addresses it was asked for but could not bind ([`Bind::WhatItCan`]), each with why.
    pub unbound: Vec<(SocketAddr, String)>,
    /// The public key agents seal their platform arms to (`reflector_key` in their config).
    pub seal_key: ReflectorKey,
    state: Arc<Mutex<Reflector>>,
    sockets: Vec<Arc<std::net::UdpSocket>>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A cheap handle for reading a running reflector's counters (for `/metrics`).
#[derive(Clone)]
pub struct ReflectorStatsSource(Arc<Mutex<Reflector>>);

impl ReflectorStatsSource {
    pub fn stats(&self) -> ReflectorStats {
        lock(&self.0).stats()
    }
    pub fn active_sessions(&self) -> usize {
        lock(&self.0).active_sessions()
    }
}

impl ReflectorHandle {
    pub fn stats(&self) -> ReflectorStats {
        lock(&self.state).stats()
    }

    pub fn stats_source(&self) -> ReflectorStatsSource {
        ReflectorStatsSource(self.state.clone())
    }

    pub fn active_sessions(&self) -> usize {
        lock(&self.state).active_sessions()
    }

    /// Stops every thread and waits for them: each is woken from its `recvmsg` by shutting its
    /// socket down for reading, so this returns at once.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for socket in &self.sockets {
            wake(socket);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for ReflectorHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock(m: &Mutex<Reflector>) -> std::sync::MutexGuard<'_, Reflector> {
    // A panic while holding the lock would leave plain counters behind; they stay usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes a thread blocked in `recvmsg` on `socket` return.
fn wake(socket: &std::net::UdpSocket) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: shutdown(2) on a socket we own; on Linux it wakes a blocked receive on a UDP
        // socket, which then returns 0 bytes.
        unsafe {
            libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
    // Elsewhere (and as a fallback) the receive timeout wakes it within SWEEP_EVERY.
    let _ = socket;
}

/// How often expired sessions are swept from the table.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Kernel receive and send buffer the reflector asks for on each socket. At 50 packets/s per
/// session a burst of scheduling delay fills the 208 KiB Linux default within milliseconds at a
/// thousand sessions; 4 MiB holds ~80 ms of 50,000 packets/s of 172-byte probes.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Binds one UDP socket with [`SOCKET_BUFFER`] receive and send buffers. The kernel may grant
/// less (Linux caps at `net.core.rmem_max`/`wmem_max`); that is logged with the sysctl to raise,
/// not an error, since the reflector still works, only with less headroom.
pub fn bind_with_buffers(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = bind_socket(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// [`bind_with_buffers`], as a blocking socket for a thread of its own.
fn bind_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    // A socket systemd bound for us (a port below 1024 without the capability) is used as it is.
    let passed = crate::activation::take(addr);
    let activated = passed.is_some();
    let socket = match passed {
        Some(socket) => {
            tracing::info!("UDP socket {addr}: passed by systemd (socket activation)");
            socket
        }
        None => Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?,
    };
    for (what, set, get, sysctl) in [
        (
            "receive",
            Socket::set_recv_buffer_size as fn(&Socket, usize) -> std::io::Result<()>,
            Socket::recv_buffer_size as fn(&Socket) -> std::io::Result<usize>,
            "net.core.rmem_max",
        ),
        (
            "send",
            Socket::set_send_buffer_size,
            Socket::send_buffer_size,
            "net.core.wmem_max",
        ),
    ] {
        if let Err(e) = set(&socket, SOCKET_BUFFER) {
            tracing::warn!("UDP socket {addr}: cannot set the {what} buffer: {e}");
        }
        // Linux reports double the granted size (it counts its bookkeeping); halve it back.
        let granted = get(&socket).map(|g| if cfg!(target_os = "linux") { g / 2 } else { g });
        match granted {
            Ok(g) if g < SOCKET_BUFFER => tracing::warn!(
                "UDP socket {addr}: the kernel granted a {what} buffer of {g} bytes, not {SOCKET_BUFFER}; \
                 raise {sysctl} to {SOCKET_BUFFER} or more to avoid drops under load"
            ),
            Ok(g) => tracing::debug!("UDP socket {addr}: {what} buffer {g} bytes"),
            Err(e) => tracing::debug!("UDP socket {addr}: cannot read the {what} buffer size: {e}"),
        }
    }
    if !activated {
        socket.bind(&addr.into())?;
    }
    Ok(socket.into())
}

/// Binds every address (port 0 picks a free port) and starts reflecting, with a sealing key of
/// its own (see [`spawn_reflector_attested`]; tests read it from [`ReflectorHandle::seal_key`])
/// and an attestation key of its own that attests every address as `ZZ`/AS0 (so agents get
/// their attestation at once; no collector knows the key).
pub async fn spawn_reflector(
    addrs: &[SocketAddr],
    limits: Limits,
) -> std::io::Result<ReflectorHandle> {
    let attest = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let unknown: crate::RegionLookup = Box::new(|_| crate::AttestedRegion::UNKNOWN);
    spawn_reflector_attested(
        addrs,
        limits,
        ReflectorSecret::from_bytes(rand::random()),
        Some((attest, unknown, None)),
    )
    .await
}

/// What a reflector needs to attest regions: its attestation key, the region lookup, and the
/// collector's carry key to seal path tokens to (when it has one).
pub type Attesting = (
    ed25519_dalek::SigningKey,
    crate::RegionLookup,
    Option<callwatch_proto::carry::CarryKey>,
);

/// Binds every address and starts reflecting; sealed platform cores are opened with `seal`
/// (the collector keeps it in its data folder, so agents' pinned key survives restarts), and
/// region attestations (core rule 9) are signed with `attest`'s key and region lookup when given,
/// with path tokens sealed to its collector key when that is given too.
pub async fn spawn_reflector_attested(
    addrs: &[SocketAddr],
    limits: Limits,
    seal: ReflectorSecret,
    attest: Option<Attesting>,
) -> std::io::Result<ReflectorHandle> {
    spawn_reflector_with(addrs, limits, seal, attest, Driver::default(), Bind::Every).await
}

/// What to do when an address cannot be bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bind {
    /// Fail: the caller named exactly these addresses.
    Every,
    /// Go on with the addresses that could be bound, keeping why the others could not
    /// ([`ReflectorHandle::unbound`]); fail only when none could.
    WhatItCan,
}

/// Why binding `addr` failed, with the likely cause in words an operator acts on.
pub fn bind_failure(addr: SocketAddr, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::PermissionDenied if addr.port() < 1024 => {
            format!("{e} (ports below 1024 need CAP_NET_BIND_SERVICE or root)")
        }
        ErrorKind::AddrInUse => format!("{e} (another program listens on UDP {addr})"),
        ErrorKind::AddrNotAvailable => {
            format!(
                "{e} (no network interface here has the address {})",
                addr.ip()
            )
        }
        _ => e.to_string(),
    }
}

/// [`spawn_reflector_attested`] with the given [`Driver`] (the default is what the capacity
/// benchmark found best; the other stays selectable to measure side by side).
pub async fn spawn_reflector_with(
    addrs: &[SocketAddr],
    limits: Limits,
    seal: ReflectorSecret,
    attest: Option<Attesting>,
    driver: Driver,
    bind: Bind,
) -> std::io::Result<ReflectorHandle> {
    let secret: [u8; 32] = rand::random();
    let seal_key = seal.public();
    let mut reflector = Reflector::new(secret, limits).with_seal(seal);
    // Reflector time: microseconds on a monotonic clock, started well above zero so that cookie
    // issue times are never at the origin.
    let epoch = Instant::now();
    if let Some((key, lookup, collector)) = attest {
        // The wall clock at reflector time 0, for the attestations' hour.
        let unix_us = chrono::Utc::now().timestamp_micros();
        let mut attester = crate::Attester::new(key, lookup, unix_us - 1_000_000_000);
        if let Some(c) = collector {
            attester = attester.with_collector_key(c);
        }
        reflector = reflector.with_attestation(attester);
    }
    let state = Arc::new(Mutex::new(reflector));
    let stop = Arc::new(AtomicBool::new(false));
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    let mut unbound = Vec::new();
    for addr in addrs {
        let socket = match bind_socket(*addr) {
            Ok(socket) => socket,
            Err(e) if bind == Bind::WhatItCan => {
                let why = bind_failure(*addr, &e);
                tracing::warn!("reflector: cannot listen on UDP {addr}: {why}");
                unbound.push((*addr, why));
                continue;
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("UDP {addr}: {}", bind_failure(*addr, &e)),
                ))
            }
        };
        enable_kernel_stamps(&socket);
        // The timeout only paces the once-a-second sweep when nothing arrives.
        socket.set_read_timeout(Some(SWEEP_EVERY))?;
        bound.push(socket.local_addr()?);
        sockets.push(Arc::new(socket));
    }
    for addr in crate::activation::untaken() {
        tracing::warn!(
            "reflector: systemd passed a socket on UDP {addr}, which is none of the reflector's \
             addresses; it is not served (make the socket unit's ListenDatagram= and the \
             reflector's addresses the same)"
        );
    }
    if sockets.is_empty() && !addrs.is_empty() {
        let why: Vec<String> = unbound
            .iter()
            .map(|(a, e)| format!("UDP {a}: {e}"))
            .collect();
        return Err(std::io::Error::other(format!(
            "the reflector could bind none of its addresses ({})",
            why.join("; ")
        )));
    }
    let mut threads = Vec::new();
    for (i, socket) in sockets.iter().enumerate() {
        let (socket, state, flag) = (socket.clone(), state.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("reflector-{i}"))
            .spawn(move || match driver {
                Driver::Single => serve_single(&socket, &state, &flag, epoch),
                Driver::Batched => serve_batched(&socket, &state, &flag, epoch),
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    Ok(ReflectorHandle {
        addrs: bound,
        unbound,
        seal_key,
        state,
        sockets,
        stop,
        threads: Mutex::new(threads),
    })
}

/// Asks the kernel for receive timestamps and drop counts; without them the reflector still
/// works, stamping in user space.
fn enable_kernel_stamps(socket: &std::net::UdpSocket) {
    for (what, enabled) in [
        ("receive timestamps", net::enable_timestamps(socket)),
        ("drop counts", net::enable_drop_count(socket)),
    ] {
        if let Err(e) = enabled {
            tracing::warn!("reflector socket: no kernel {what} ({e}); stamping in user space");
        }
    }
}

/// The reflector's clock: microseconds since `epoch`, started well above zero.
fn clock_us(epoch: Instant) -> u64 {
    1_000_000_000 + epoch.elapsed().as_micros() as u64
}

/// Sweeps expired sessions from the table once a second, also when nothing arrives, so memory
/// and the sessions gauge follow the sessions actually alive.
struct Sweeper(Instant);

impl Sweeper {
    fn new() -> Self {
        Sweeper(Instant::now())
    }
    fn maybe_sweep(&mut self, state: &Mutex<Reflector>, epoch: Instant) {
        if self.0.elapsed() >= SWEEP_EVERY {
            lock(state).sweep(clock_us(epoch));
            self.0 = Instant::now();
        }
    }
}

/// Handles one received datagram (with the lock held) at reflector time `now`: its answer, if
/// any. The kernel's receive time is put on the reflector's clock as how long ago it was, taken
/// from now; without a kernel stamp, the datagram arrived now as far as we know.
fn handle_received(
    reflector: &mut Reflector,
    received: &net::Received,
    src: SocketAddr,
    datagram: &[u8],
    now: u64,
) -> Option<Vec<u8>> {
    let age_us = received.age(std::time::Duration::from_secs(10)).as_micros() as u64;
    let arrival = Arrival {
        rx_us: now.saturating_sub(age_us),
        socket_drops: received.drops,
    };
    if received.truncated {
        None
    } else {
        reflector.handle_arrival(arrival, now, src, datagram)
    }
}

/// One socket's loop, one datagram at a time: receive (with the kernel's time), handle,
/// answer; sweep once a second.
fn serve_single(
    socket: &std::net::UdpSocket,
    state: &Mutex<Reflector>,
    stop: &AtomicBool,
    epoch: Instant,
) {
    let mut buf = vec![0u8; 2048];
    let mut sweeper = Sweeper::new();
    while !stop.load(Ordering::SeqCst) {
        sweeper.maybe_sweep(state, epoch);
        let received = match net::recv(socket, &mut buf) {
            Ok(r) => r,
            // A timeout (time to sweep), or ICMP errors from earlier sends: keep serving.
            Err(_) => continue,
        };
        let Some(src) = received.src else {
            continue; // woken by shutdown (0 bytes from nobody)
        };
        let mut guard = lock(state);
        let now = clock_us(epoch);
        let answer = handle_received(&mut guard, &received, src, &buf[..received.len], now);
        drop(guard);
        if let Some(out) = answer {
            if let Err(e) = socket.send_to(&out, src) {
                tracing::debug!("reflector send to agent failed: {e}");
            }
        }
    }
}

/// One socket's loop, a batch at a time: `recvmmsg` takes what is queued, up to [`BATCH`]
/// datagrams, and returns as soon as one is there (`MSG_WAITFORONE`: a lone probe is answered at
/// once, never held to fill a batch). Each datagram keeps its own kernel receive time and drop
/// count (one control buffer per message). The batch is handled under one lock, each datagram
/// at its own reflector time taken just before its reply is made, and the replies leave
/// together in one `sendmmsg`.
///
/// What batching does to the residence figure: a reply's residence is its own kernel receive
/// → the moment its reply is made, so it includes the handling of the datagrams before it in
/// the batch (they were queued in the kernel, as they would be one at a time). It does not
/// include the handling of the datagrams after it, which the reply waits for before the
/// `sendmmsg`: at most `BATCH - 1` handlings (a few µs each), and only when that many arrived
/// together. That wait is counted as network delay by the agent, as the `sendto` itself always
/// was.
#[cfg(target_os = "linux")]
fn serve_batched(
    socket: &std::net::UdpSocket,
    state: &Mutex<Reflector>,
    stop: &AtomicBool,
    epoch: Instant,
) {
    let mut batch = net::Batch::new();
    let mut replies: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut sweeper = Sweeper::new();
    while !stop.load(Ordering::SeqCst) {
        sweeper.maybe_sweep(state, epoch);
        let count = match batch.recv(socket) {
            Ok(n) => n,
            // A timeout (time to sweep), or ICMP errors from earlier sends: keep serving.
            Err(_) => continue,
        };
        let mut guard = lock(state);
        for (received, datagram) in (0..count).map_while(|i| batch.get(i)) {
            let Some(src) = received.src else {
                continue; // woken by shutdown (0 bytes from nobody)
            };
            let now = clock_us(epoch);
            if let Some(out) = handle_received(&mut guard, &received, src, datagram, now) {
                replies.push((out, src));
            }
        }
        drop(guard);
        net::send_batch(socket, &replies);
        replies.clear();
    }
}

#[cfg(not(target_os = "linux"))]
fn serve_batched(
    socket: &std::net::UdpSocket,
    state: &Mutex<Reflector>,
    stop: &AtomicBool,
    epoch: Instant,
) {
    serve_single(socket, state, stop, epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[tokio::test]
    async fn expired_sessions_leave_the_table_without_further_traffic() {
        use callwatch_proto::probe::{Open, Packet, Probe};
        // Sessions of at most 1 s and no grace: a session lives about 2 s (whole seconds).
        let limits = Limits {
            max_duration_ms: 1000,
            cookie_grace_ms: 0,
            ..Limits::default()
        };
        let reflector = spawn_reflector(&["127.0.0.1:0".parse().unwrap()], limits)
            .await
            .unwrap();
        let agent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        agent.connect(reflector.addrs[0]).await.unwrap();
        let mut buf = [0u8; 2048];
        let open = Packet::Open(Open {
            session: 77,
            interval_ms: 20,
            size: 172,
            duration_ms: 1000,
        });
        agent.send(&open.encode()).await.unwrap();
        let n = agent.recv(&mut buf).await.unwrap();
        let Ok(Packet::Accept(accept)) = Packet::decode(&buf[..n]) else {
            panic!("no Accept");
        };
        let probe = Packet::Probe(Probe {
            session: 77,
            cookie: accept.cookie,
            seq: 0,
            sent_us: 1,
            len: 172,
        });
        agent.send(&probe.encode()).await.unwrap();
        let n = agent.recv(&mut buf).await.unwrap();
        assert!(matches!(Packet::decode(&buf[..n]), Ok(Packet::Reply(_))));
        assert_eq!(reflector.active_sessions(), 1);
        // Nothing more arrives; the once-a-second sweep alone must empty the table. There is no
        // event to await, so the table is polled, bounded at 10 s (the session ends after ~2 s).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while reflector.active_sessions() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the expired session is still held"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A reflector socket as `spawn_reflector_with` makes it, not yet served.
    fn reflector_socket() -> std::net::UdpSocket {
        let socket = bind_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        enable_kernel_stamps(&socket);
        // A bound on a broken test, not a synchronisation: every read below has data queued.
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        socket
    }

    /// Returns once the kernel stamps datagrams to `socket` on arrival. Asking for timestamps
    /// turns on a kernel-wide switch from a work queue; until that has run, a datagram is
    /// stamped when it is read. Each round trip of a datagram from `sender` shows which.
    fn until_stamped_on_arrival(socket: &std::net::UdpSocket, sender: &std::net::UdpSocket) {
        let to = socket.local_addr().unwrap();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        loop {
            sender.send_to(&[0xff], to).unwrap();
            let sent = SystemTime::now();
            let r = net::recv(socket, &mut buf).unwrap();
            if cfg!(not(target_os = "linux")) || r.kernel_rx.is_some_and(|rx| rx <= sent) {
                return;
            }
            assert!(Instant::now() < deadline, "no kernel stamps on arrival");
            std::thread::yield_now();
        }
    }

    /// Spins (no sleep: the point is only that the next send is later) for `us` microseconds.
    fn spin_us(us: u64) {
        let until = Instant::now() + std::time::Duration::from_micros(us);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_batch_keeps_each_datagrams_own_kernel_time_address_and_bytes() {
        let socket = reflector_socket();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        until_stamped_on_arrival(&socket, &sender);
        // 40 datagrams 200 µs apart, all queued before the first receive: a full batch and a
        // partial one. Loopback delivers (and the kernel stamps) inside send_to.
        let mut sent = Vec::new();
        for k in 0..40u8 {
            let before = SystemTime::now();
            sender.send_to(&[k; 100], to).unwrap();
            sent.push((before, SystemTime::now()));
            spin_us(200);
        }
        let mut batch = net::Batch::new();
        let mut got = Vec::new();
        for expected in [BATCH, 40 - BATCH] {
            assert_eq!(batch.recv(&socket).unwrap(), expected);
            assert!(batch.get(expected).is_none());
            for i in 0..expected {
                let (r, bytes) = batch.get(i).unwrap();
                got.push((r.kernel_rx.expect("a kernel stamp"), bytes.to_vec(), r));
            }
        }
        let slack = std::time::Duration::from_micros(50);
        for (k, (rx, bytes, r)) in got.iter().enumerate() {
            assert_eq!(bytes, &vec![k as u8; 100]);
            assert_eq!((r.len, r.truncated, r.drops), (100, false, 0));
            assert_eq!(r.src, Some(sender.local_addr().unwrap()));
            // Its own stamp: taken while its own send_to ran, not the batch's or the reader's.
            let (before, after) = sent[k];
            assert!(
                *rx + slack >= before && *rx <= after + slack,
                "datagram {k}: stamp {rx:?} outside its send {before:?}..{after:?}"
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_batch_reports_the_kernels_drop_count() {
        let socket = reflector_socket();
        // The smallest receive buffer: most of a burst overflows it.
        socket2::SockRef::from(&socket)
            .set_recv_buffer_size(1)
            .unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        for _ in 0..64 {
            sender.send_to(&[7; 172], to).unwrap();
        }
        let mut batch = net::Batch::new();
        let kept = batch.recv(&socket).unwrap();
        assert!(kept > 0 && kept < 64, "kept {kept} of 64");
        for i in 0..kept {
            // Queued before the first drop: no drops yet.
            assert_eq!(batch.get(i).unwrap().0.drops, 0);
        }
        sender.send_to(&[8; 172], to).unwrap();
        assert_eq!(batch.recv(&socket).unwrap(), 1);
        let (after, bytes) = batch.get(0).unwrap();
        assert_eq!(bytes, &[8; 172][..]);
        assert_eq!(after.drops as usize, 64 - kept);
    }

    /// One agent socket per session id in `ids`, connected to `to` (reads time out after
    /// `timeout_s`), its session opened with the core itself (no driver thread needed): the
    /// socket, its cookie and the session id.
    fn open_sessions(
        state: &Arc<Mutex<Reflector>>,
        epoch: Instant,
        to: SocketAddr,
        ids: std::ops::Range<u64>,
        timeout_s: u64,
    ) -> Vec<(std::net::UdpSocket, callwatch_proto::probe::Cookie, u64)> {
        use callwatch_proto::probe::{Open, Packet};
        ids.map(|id| {
            let agent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            agent.connect(to).unwrap();
            agent
                .set_read_timeout(Some(std::time::Duration::from_secs(timeout_s)))
                .unwrap();
            let open = Packet::Open(Open {
                session: id,
                interval_ms: 20,
                size: 172,
                duration_ms: 10_000,
            });
            let from = agent.local_addr().unwrap();
            let accept = lock(state)
                .handle(clock_us(epoch), from, &open.encode())
                .unwrap();
            let Ok(Packet::Accept(accept)) = Packet::decode(&accept) else {
                panic!("no Accept");
            };
            (agent, accept.cookie, id)
        })
        .collect()
    }

    /// 64 probes from 4 sessions, 150 µs apart, queued before the driver's thread starts: every
    /// one is answered, each reply with its own probe's kernel receive time (within its send)
    /// and a residence that starts there, not when the thread got to it.
    fn a_burst_is_answered_in_full_with_each_probes_own_times(driver: Driver) {
        use callwatch_proto::probe::{Packet, Probe};
        let socket = Arc::new(reflector_socket());
        let to = socket.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Reflector::new(
            rand::random(),
            Limits::default(),
        )));
        let epoch = Instant::now();
        until_stamped_on_arrival(&socket, &std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        // Opened with the core itself: the thread does not run yet.
        let agents = open_sessions(&state, epoch, to, 100..104, 2);
        let mut sent = Vec::new();
        for k in 0..64u32 {
            let (agent, cookie, _) = &agents[k as usize % 4];
            let probe = Packet::Probe(Probe {
                session: 100 + k as u64 % 4,
                cookie: *cookie,
                seq: k / 4,
                sent_us: u64::from(k),
                len: 172,
            });
            let before = clock_us(epoch);
            agent.send(&probe.encode()).unwrap();
            sent.push((before, clock_us(epoch)));
            spin_us(150);
        }
        let started = clock_us(epoch);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, state, stop) = (socket.clone(), state.clone(), stop.clone());
            std::thread::spawn(move || match driver {
                Driver::Single => serve_single(&socket, &state, &stop, epoch),
                Driver::Batched => serve_batched(&socket, &state, &stop, epoch),
            })
        };
        let mut replies = Vec::new();
        let mut buf = [0u8; 2048];
        for (agent, _, _) in &agents {
            for _ in 0..16 {
                let n = agent.recv(&mut buf).expect("a reply to every probe");
                let Ok(Packet::Reply(r)) = Packet::decode(&buf[..n]) else {
                    panic!("not a Reply");
                };
                replies.push(r);
            }
        }
        let done = clock_us(epoch);
        stop.store(true, Ordering::SeqCst);
        wake(&socket);
        thread.join().unwrap();

        replies.sort_by_key(|r| r.sent_us);
        assert_eq!(replies.len(), 64);
        // Conversion from the kernel's wall clock to the reflector's, and whole microseconds.
        let slack = 50;
        // The conversion can only move a receive time earlier (the reader preempted between
        // its two clock readings), so the lower bound is let off for a couple of probes.
        let mut early = Vec::new();
        for (k, r) in replies.iter().enumerate() {
            assert_eq!(r.sent_us, k as u64, "every probe answered once");
            assert_eq!(u64::from(r.seq), k as u64 / 4);
            assert_eq!(r.reflector_drops, 0);
            let (before, after) = sent[k];
            assert!(
                r.reflector_rx_us <= after + slack,
                "probe {k}: rx {} after its send {before}..{after}",
                r.reflector_rx_us
            );
            if r.reflector_rx_us + slack < before {
                early.push((k, r.reflector_rx_us, before));
            }
            assert!(r.reflector_tx_us >= started && r.reflector_tx_us <= done);
            // So the residence holds the wait in the socket buffer, and is never negative.
            assert!(r.reflector_tx_us >= r.reflector_rx_us);
            assert!(r.reflector_tx_us - r.reflector_rx_us + slack >= started - after);
        }
        assert!(
            early.len() <= 2,
            "receive times before their send: {early:?}"
        );
    }

    /// CPU the driver's thread spends per datagram on a backlog: `sessions` × `per` probes
    /// queued before its thread starts, the thread's on-CPU time (schedstat) once every reply
    /// is back. Counts only the reflector thread's own CPU, so it holds on a busy host.
    #[cfg(target_os = "linux")]
    fn backlog_cpu_ns_per_datagram(driver: Driver, sessions: u64, per: u32) -> f64 {
        use callwatch_proto::probe::{Packet, Probe};
        let socket = Arc::new(reflector_socket());
        let to = socket.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Reflector::new(
            rand::random(),
            Limits::default(),
        )));
        let epoch = Instant::now();
        let agents = open_sessions(&state, epoch, to, 1000..1000 + sessions, 5);
        for seq in 0..per {
            for (agent, cookie, id) in &agents {
                let probe = Packet::Probe(Probe {
                    session: *id,
                    cookie: *cookie,
                    seq,
                    sent_us: 1,
                    len: 172,
                });
                agent.send(&probe.encode()).unwrap();
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (socket, state, stop) = (socket.clone(), state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("reflector-bench".into())
                .spawn(move || match driver {
                    Driver::Single => serve_single(&socket, &state, &stop, epoch),
                    Driver::Batched => serve_batched(&socket, &state, &stop, epoch),
                })
                .unwrap()
        };
        let mut buf = [0u8; 2048];
        for (agent, _, _) in &agents {
            for _ in 0..per {
                agent.recv(&mut buf).expect("a reply to every probe");
            }
        }
        // The thread's time on a CPU so far, in ns (the first field of its schedstat).
        let mut on_cpu = None;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = task.unwrap().path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim() == "reflector-bench" {
                let stat = std::fs::read_to_string(path.join("schedstat")).unwrap();
                on_cpu = stat
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok());
            }
        }
        stop.store(true, Ordering::SeqCst);
        wake(&socket);
        thread.join().unwrap();
        on_cpu.expect("the thread's schedstat") as f64 / (sessions * u64::from(per)) as f64
    }

    /// `cargo test --release -p callwatch-reflector --lib backlog_cost -- --ignored --nocapture`
    #[cfg(target_os = "linux")]
    #[test]
    #[ignore = "a benchmark, run by hand (see RELIABILITY.md)"]
    fn backlog_cost_batched_against_single() {
        let (mut single, mut batched) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            single.push(backlog_cpu_ns_per_datagram(Driver::Single, 150, 20));
            batched.push(backlog_cpu_ns_per_datagram(Driver::Batched, 150, 20));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (s, b) = (median(&mut single), median(&mut batched));
        println!("single {single:.0?} ns/datagram, median {s:.0}");
        println!("batched {batched:.0?} ns/datagram, median {b:.0}");
        println!("batched / single: {:.2}", b / s);
    }

    #[test]
    fn the_batched_driver_answers_a_burst_with_each_probes_own_times() {
        a_burst_is_answered_in_full_with_each_probes_own_times(Driver::Batched);
    }

    #[test]
    fn the_single_driver_answers_a_burst_with_each_probes_own_times() {
        a_burst_is_answered_in_full_with_each_probes_own_times(Driver::Single);
    }

    #[tokio::test]
    async fn sockets_get_the_larger_buffers_the_kernel_allows() {
        let socket = bind_with_buffers("127.0.0.1:0".parse().unwrap()).unwrap();
        let granted = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        // What an unconfigured socket gets, for comparison.
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = socket2::SockRef::from(&plain).recv_buffer_size().unwrap();
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        match cap {
            // Linux: granted = 2 × min(asked, rmem_max).
            Some(max) => assert_eq!(granted, 2 * SOCKET_BUFFER.min(max)),
            None => assert!(granted >= default),
        }
        if cap.is_some_and(|max| max > default) {
            assert!(granted > default, "granted {granted}, default {default}");
        }
    }
}
