//! UDP sockets handed over by systemd's socket activation (`sd_listen_fds(3)`: `LISTEN_PID`
//! names this process, `LISTEN_FDS` counts the descriptors, which start at 3). A `.socket` unit
//! binds a port the service's user may not bind (599, below 1024) and the reflector takes that
//! socket instead of binding its own, so the service itself needs no capability.
//!
//! The sockets are looked at once, on first use; each is handed out once, to the reflector
//! address it is bound to exactly ([`take`]). One that no address asks for stays open and is
//! named by [`untaken`], for the caller to log.

use socket2::Socket;
use std::net::SocketAddr;
use std::sync::Mutex;

/// The passed datagram sockets not yet taken, with their local addresses; `None` until first use.
static PASSED: Mutex<Option<Vec<(SocketAddr, Socket)>>> = Mutex::new(None);

/// The passed UDP socket bound to exactly `addr`, if systemd passed one (taken: a second call
/// with the same address gets `None`).
pub fn take(addr: SocketAddr) -> Option<Socket> {
    let mut passed = PASSED.lock().unwrap_or_else(|e| e.into_inner());
    let list = passed.get_or_insert_with(collect);
    let i = list.iter().position(|(a, _)| *a == addr)?;
    Some(list.swap_remove(i).1)
}

/// The addresses of passed sockets no [`take`] asked for (a unit listening on another address
/// than the reflector's, e.g. `ListenDatagram=0.0.0.0:599` with `--reflector-ip 127.0.0.1`).
pub fn untaken() -> Vec<SocketAddr> {
    let passed = PASSED.lock().unwrap_or_else(|e| e.into_inner());
    passed.iter().flatten().map(|(a, _)| *a).collect()
}

/// The datagram sockets among the descriptors passed to this process (none when `LISTEN_PID`
/// is another process's: the variables were inherited, not meant for us).
#[cfg(unix)]
fn collect() -> Vec<(SocketAddr, Socket)> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    if !ours || count <= 0 {
        return Vec::new();
    }
    let mut sockets = Vec::new();
    for fd in 3..3 + count {
        // SAFETY: systemd passes descriptors 3..3+LISTEN_FDS to the process LISTEN_PID names,
        // which is this one, and nothing else here opens or uses them; from here on they are
        // owned by the Socket (or given back untouched below).
        let socket = unsafe { Socket::from_raw_fd(fd) };
        let udp = matches!(socket.r#type(), Ok(socket2::Type::DGRAM));
        match socket.local_addr().ok().and_then(|a| a.as_socket()) {
            Some(addr) if udp => {
                // Not inherited by programs the process starts.
                // SAFETY: fcntl(2) on a descriptor this process owns, setting one flag.
                if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                    tracing::debug!(
                        "socket activation: descriptor {fd}: close-on-exec: {}",
                        std::io::Error::last_os_error()
                    );
                }
                sockets.push((addr, socket));
            }
            _ => {
                tracing::warn!(
                    "socket activation: descriptor {fd} is not an IP datagram socket; left alone"
                );
                let _ = socket.into_raw_fd();
            }
        }
    }
    sockets
}

#[cfg(not(unix))]
fn collect() -> Vec<(SocketAddr, Socket)> {
    Vec::new()
}
