//! The reflector's tokio driver: one task per listening UDP socket, one shared [`Reflector`].

use super::core::{Limits, Reflector, ReflectorStats};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running reflector: its bound addresses, counters, and the tasks to stop.
pub struct ReflectorHandle {
    pub addrs: Vec<SocketAddr>,
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

/// Binds every address (port 0 picks a free port) and starts reflecting.
pub async fn spawn_reflector(
    addrs: &[SocketAddr],
    limits: Limits,
) -> std::io::Result<ReflectorHandle> {
    let secret: [u8; 32] = rand::random();
    let state = Arc::new(Mutex::new(Reflector::new(secret, limits)));
    // Reflector time: microseconds on a monotonic clock, started well above zero so that cookie
    // issue times are never at the origin.
    let epoch = Instant::now();
    let mut bound = Vec::new();
    let mut tasks = Vec::new();
    for addr in addrs {
        let socket = UdpSocket::bind(addr).await?;
        bound.push(socket.local_addr()?);
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut since_sweep = 0u32;
            loop {
                let (len, src) = match socket.recv_from(&mut buf).await {
                    Ok(x) => x,
                    // ICMP errors from earlier sends surface here on some systems; keep serving.
                    Err(e) => {
                        tracing::debug!("reflector recv error: {e}");
                        continue;
                    }
                };
                let now_us = 1_000_000_000 + epoch.elapsed().as_micros() as u64;
                let answer = {
                    let mut r = lock(&state);
                    since_sweep += 1;
                    if since_sweep >= 10_000 {
                        since_sweep = 0;
                        r.sweep(now_us);
                    }
                    r.handle(now_us, src, &buf[..len])
                };
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
        state,
        tasks,
    })
}
