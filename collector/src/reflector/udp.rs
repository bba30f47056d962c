//! The reflector's tokio driver: one task per listening UDP socket, one shared [`Reflector`].

use super::core::{Limits, Reflector, ReflectorStats};
use callwatch_proto::seal::{ReflectorKey, ReflectorSecret};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running reflector: its bound addresses, counters, and the tasks to stop.
pub struct ReflectorHandle {
    pub addrs: Vec<SocketAddr>,
    /// The public key agents seal their platform arms to (`reflector_key` in their config).
    pub seal_key: ReflectorKey,
    state: Arc<Mutex<Reflector>>,
    tasks: Vec<JoinHandle<()>>,
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

    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
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
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Binds every address (port 0 picks a free port) and starts reflecting, with a sealing key of
/// its own (see [`spawn_reflector_sealed`]; tests read it from [`ReflectorHandle::seal_key`])
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
        Some((attest, unknown)),
    )
    .await
}

/// Binds every address and starts reflecting; sealed platform cores are opened with `seal`
/// (the collector keeps it in its data folder, so agents' pinned key survives restarts).
pub async fn spawn_reflector_sealed(
    addrs: &[SocketAddr],
    limits: Limits,
    seal: ReflectorSecret,
) -> std::io::Result<ReflectorHandle> {
    spawn_reflector_attested(addrs, limits, seal, None).await
}

/// [`spawn_reflector_sealed`], also signing region attestations (core rule 9) with `attest`'s
/// key and region lookup when given.
pub async fn spawn_reflector_attested(
    addrs: &[SocketAddr],
    limits: Limits,
    seal: ReflectorSecret,
    attest: Option<(ed25519_dalek::SigningKey, super::RegionLookup)>,
) -> std::io::Result<ReflectorHandle> {
    let secret: [u8; 32] = rand::random();
    let seal_key = seal.public();
    let mut reflector = Reflector::new(secret, limits).with_seal(seal);
    // Reflector time: microseconds on a monotonic clock, started well above zero so that cookie
    // issue times are never at the origin.
    let epoch = Instant::now();
    if let Some((key, lookup)) = attest {
        // The wall clock at reflector time 0, for the attestations' hour.
        let unix_us = chrono::Utc::now().timestamp_micros();
        reflector =
            reflector.with_attestation(super::Attester::new(key, lookup, unix_us - 1_000_000_000));
    }
    let state = Arc::new(Mutex::new(reflector));
    let mut bound = Vec::new();
    let mut tasks = Vec::new();
    for addr in addrs {
        let socket = bind_with_buffers(*addr)?;
        bound.push(socket.local_addr()?);
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let now_us = || 1_000_000_000 + epoch.elapsed().as_micros() as u64;
            // Expired sessions leave the table once a second, also when no datagram arrives,
            // so memory and the sessions gauge follow the sessions actually alive.
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let received = tokio::select! {
                    r = socket.recv_from(&mut buf) => r,
                    _ = sweep.tick() => {
                        lock(&state).sweep(now_us());
                        continue;
                    }
                };
                let (len, src) = match received {
                    Ok(x) => x,
                    // ICMP errors from earlier sends surface here on some systems; keep serving.
                    Err(e) => {
                        tracing::debug!("reflector recv error: {e}");
                        continue;
                    }
                };
                let now_us = now_us();
                let answer = lock(&state).handle(now_us, src, &buf[..len]);
                if let Some(out) = answer {
                    if let Err(e) = socket.send_to(&out, src).await {
                        tracing::debug!("reflector send to agent failed: {e}");
                    }
                }
            }
        }));
    }
    Ok(ReflectorHandle {
        addrs: bound,
        seal_key,
        state,
        tasks,
    })
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
