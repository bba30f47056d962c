//! The reflector's driver: one OS thread per listening UDP socket, one shared [`Reflector`].
//!
//! The reflector's clock is the measurement, so nothing else the collector does may stand
//! between a probe and its reply: the threads are the reflector's own (not the async runtime's
//! workers or its blocking pool, which ingest, exports and the HTTP API share), each blocks in
//! `recvmsg` on its socket, and the work per datagram is bounded (one lock, one `handle`, one
//! `sendto`). Where the kernel can say when a datagram arrived (`SO_TIMESTAMPNS`) and how many it
//! dropped for a full receive queue (`SO_RXQ_OVFL`), the reply carries that receive time and
//! count (see [`super::core`] rule 10): what the reflector's own scheduling adds is then measured
//! as its residence time, not published as network delay.

use super::core::{Arrival, Limits, Reflector, ReflectorStats};
use callwatch_proto::seal::{ReflectorKey, ReflectorSecret};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};
use tokio::net::UdpSocket;

/// A running reflector: its bound addresses, counters, and the threads to stop.
pub struct ReflectorHandle {
    pub addrs: Vec<SocketAddr>,
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
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
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
    socket.bind(&addr.into())?;
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
    let unknown: super::RegionLookup = Box::new(|_| (*b"ZZ", 0));
    spawn_reflector_attested(
        addrs,
        limits,
        ReflectorSecret::from_bytes(rand::random()),
        Some((attest, unknown, None)),
    )
    .await
}

/// Binds every address and starts reflecting; sealed platform cores are opened with `seal`
/// (the collector keeps it in its data folder, so agents' pinned key survives restarts), and
/// region attestations (core rule 9) are signed with `attest`'s key and region lookup when given,
/// with path tokens sealed to its collector key when that is given too.
pub async fn spawn_reflector_attested(
    addrs: &[SocketAddr],
    limits: Limits,
    seal: ReflectorSecret,
    attest: Option<(
        ed25519_dalek::SigningKey,
        super::RegionLookup,
        Option<callwatch_proto::carry::CarryKey>,
    )>,
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
        let mut attester = super::Attester::new(key, lookup, unix_us - 1_000_000_000);
        if let Some(c) = collector {
            attester = attester.with_collector_key(c);
        }
        reflector = reflector.with_attestation(attester);
    }
    let state = Arc::new(Mutex::new(reflector));
    let stop = Arc::new(AtomicBool::new(false));
    let mut bound = Vec::new();
    let mut sockets = Vec::new();
    for addr in addrs {
        let socket = bind_socket(*addr)?;
        kernel_stamps::enable(&socket);
        // The timeout only paces the once-a-second sweep when nothing arrives.
        socket.set_read_timeout(Some(SWEEP_EVERY))?;
        bound.push(socket.local_addr()?);
        sockets.push(Arc::new(socket));
    }
    let mut threads = Vec::new();
    for (i, socket) in sockets.iter().enumerate() {
        let (socket, state, flag) = (socket.clone(), state.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("reflector-{i}"))
            .spawn(move || serve_socket(&socket, &state, &flag, epoch));
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
        seal_key,
        state,
        sockets,
        stop,
        threads: Mutex::new(threads),
    })
}

/// One socket's loop: receive (with the kernel's time), handle, answer; sweep once a second.
fn serve_socket(
    socket: &std::net::UdpSocket,
    state: &Mutex<Reflector>,
    stop: &AtomicBool,
    epoch: Instant,
) {
    let now_us = || 1_000_000_000 + epoch.elapsed().as_micros() as u64;
    let mut buf = vec![0u8; 2048];
    let mut last_sweep = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if last_sweep.elapsed() >= SWEEP_EVERY {
            // Expired sessions leave the table once a second, also when nothing arrives, so
            // memory and the sessions gauge follow the sessions actually alive.
            lock(state).sweep(now_us());
            last_sweep = Instant::now();
        }
        let received = match kernel_stamps::recv(socket, &mut buf) {
            Ok(r) => r,
            // A timeout (time to sweep), or ICMP errors from earlier sends: keep serving.
            Err(_) => continue,
        };
        let Some(src) = received.src else {
            continue; // woken by shutdown (0 bytes from nobody)
        };
        // The kernel's receive time on the reflector's clock: how long ago it was, taken
        // from now. Without a kernel stamp, the datagram arrived now as far as we know.
        let mut guard = lock(state);
        let now = now_us();
        let age_us = received.kernel_rx.map_or(0, |rx| {
            SystemTime::now()
                .duration_since(rx)
                .map_or(0, |d| d.as_micros().min(10_000_000) as u64)
        });
        let arrival = Arrival {
            rx_us: now.saturating_sub(age_us),
            socket_drops: received.drops,
        };
        let answer = if received.truncated {
            None
        } else {
            guard.handle_arrival(arrival, now, src, &buf[..received.len])
        };
        drop(guard);
        if let Some(out) = answer {
            if let Err(e) = socket.send_to(&out, src) {
                tracing::debug!("reflector send to agent failed: {e}");
            }
        }
    }
}

/// Receiving with the kernel's timestamp and drop count (Linux); plain `recv_from` elsewhere.
mod kernel_stamps {
    use std::net::{SocketAddr, UdpSocket};
    use std::time::SystemTime;

    /// One datagram as the kernel delivered it.
    pub struct Received {
        pub len: usize,
        /// `None` when the socket was shut down (no datagram).
        pub src: Option<SocketAddr>,
        /// The datagram did not fit the buffer (so it is not answered).
        pub truncated: bool,
        /// When the kernel received it, if it said.
        pub kernel_rx: Option<SystemTime>,
        /// Datagrams the kernel dropped on this socket so far, if it said (else 0).
        pub drops: u32,
    }

    /// Asks the kernel for receive timestamps and drop counts; without them the reflector
    /// still works, stamping in user space.
    pub fn enable(socket: &UdpSocket) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let on: libc::c_int = 1;
            for opt in [libc::SO_TIMESTAMPNS, libc::SO_RXQ_OVFL] {
                // SAFETY: setsockopt with a c_int option value on a socket we own.
                let rc = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        libc::SOL_SOCKET,
                        opt,
                        (&on as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    tracing::warn!(
                        "reflector socket: kernel option {opt} unavailable ({}); stamping in user space",
                        std::io::Error::last_os_error()
                    );
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = socket;
    }

    #[cfg(target_os = "linux")]
    pub fn recv(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Received> {
        use std::os::fd::AsRawFd;
        // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // Room for a timespec and a u32 with their headers; u64s keep it aligned for cmsghdr.
        let mut control = [0u64; 16];
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: msg points at live buffers of the sizes it states, for the call's duration.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut received = Received {
            len: n as usize,
            src: None,
            truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
            kernel_rx: None,
            drops: 0,
        };
        received.src = socket_addr(&addr, msg.msg_namelen);
        // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen;
        // each payload is read unaligned at its stated type.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let h = &*c;
                if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    received.kernel_rx = Some(
                        SystemTime::UNIX_EPOCH
                            + std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                    );
                } else if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SO_RXQ_OVFL {
                    received.drops = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(received)
    }

    /// The address the kernel wrote into `addr` (`len` bytes), if it is an IP one.
    #[cfg(target_os = "linux")]
    fn socket_addr(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
        use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
        let len = len as usize;
        match i32::from(addr.ss_family) {
            libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says sockaddr_in, and that many bytes were written.
                let a: libc::sockaddr_in = unsafe {
                    std::ptr::read_unaligned((addr as *const libc::sockaddr_storage).cast())
                };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family says sockaddr_in6, and that many bytes were written.
                let a: libc::sockaddr_in6 = unsafe {
                    std::ptr::read_unaligned((addr as *const libc::sockaddr_storage).cast())
                };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    u32::from_be(a.sin6_flowinfo),
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn recv(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Received> {
        let (len, src) = socket.recv_from(buf)?;
        Ok(Received {
            len,
            src: Some(src),
            truncated: false,
            kernel_rx: None,
            drops: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
