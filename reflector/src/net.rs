//! UDP receive with the kernel's receive time and drop count, and batched receive and send:
//! the only place callwatch reads `SO_TIMESTAMPNS`/`SO_RXQ_OVFL` control messages or calls
//! `recvmmsg`/`sendmmsg`. Linux; elsewhere a plain `recv_from`, with no kernel time.
//!
//! Both ends of a call test use it: the reflector's driver ([`crate::udp`]) for the receive
//! time its replies carry (core rule 10), and the agent's driver (`callwatch_agent::engine::
//! driver`) so its own scheduling delay is not read as the network's. It lives here, not in
//! `callwatch-proto`, because proto is what two parties must agree on and does no I/O (the fuzz
//! targets and every crate build on that); the reflector crate is the lowest one that already
//! does UDP I/O, and it builds without region lookup (`default-features = false`), so the agent
//! takes on no dependency it would not have had (no store, no HTTP, no QUIC comes with it).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime};

/// Most datagrams one [`Batch::recv`] takes (and one [`send_batch`] call usually sends):
/// bounds the work between two looks at a stop flag and the time a reply waits for the rest of
/// its batch.
pub const BATCH: usize = 32;

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

impl Received {
    /// How long ago the kernel received it, on the wall clock, at most `max`; zero when the
    /// kernel did not say, or when the wall clock was stepped back since (no age rather than a
    /// wrong one; more than `max` is not a receive delay but a clock step).
    pub fn age(&self, max: Duration) -> Duration {
        self.kernel_rx.map_or(Duration::ZERO, |rx| {
            SystemTime::now()
                .duration_since(rx)
                .unwrap_or_default()
                .min(max)
        })
    }
}

/// Asks the kernel to stamp every datagram `socket` receives with its receive time
/// (`SO_TIMESTAMPNS`; [`Received::kernel_rx`]). Without it (an error, or not Linux) datagrams
/// carry no kernel time and callers stamp them in user space, as `recv` returns.
pub fn enable_timestamps(socket: &UdpSocket) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    return set_flag(socket, libc::SO_TIMESTAMPNS);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Asks the kernel to tell, with every datagram, how many it has dropped on `socket` for a full
/// receive queue so far (`SO_RXQ_OVFL`; [`Received::drops`]). Without it the count stays 0.
pub fn enable_drop_count(socket: &UdpSocket) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    return set_flag(socket, libc::SO_RXQ_OVFL);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(target_os = "linux")]
fn set_flag(socket: &UdpSocket, option: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int option value on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One datagram into `buf` (`recvmsg`), with what the kernel said of it. Blocks up to the
/// socket's read timeout; a socket shut down for reading returns 0 bytes from nobody
/// (`src: None`).
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
    read_control(&msg, &mut received);
    Ok(received)
}

/// Reads the kernel's receive time and drop count from the control messages of `msg`, as
/// filled by `recvmsg`/`recvmmsg` (its `msg_control` and `msg_controllen` describe the
/// buffer the kernel wrote).
#[cfg(target_os = "linux")]
fn read_control(msg: &libc::msghdr, received: &mut Received) {
    // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen;
    // each payload is read unaligned at its stated type.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                received.kernel_rx = Some(
                    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                );
            } else if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SO_RXQ_OVFL {
                received.drops = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}

/// Receive buffer per datagram: a probe is at most `MAX_PROBE_LEN`; anything longer is
/// truncated and not answered.
#[cfg(target_os = "linux")]
const DATAGRAM: usize = 2048;

/// Control buffer per datagram: room for a timespec and a u32 with their headers; u64s keep
/// it aligned for cmsghdr.
#[cfg(target_os = "linux")]
type Control = [u64; 16];

/// Buffers for one `recvmmsg` of up to [`BATCH`] datagrams, each with its own data,
/// address and control buffer, so every datagram keeps its own kernel time and drop count.
/// The headers point into the other buffers; they are filled anew before every call (the
/// kernel overwrites lengths and flags), so nothing depends on where `Batch` itself sits.
#[cfg(target_os = "linux")]
pub struct Batch {
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Messages the last `recv` filled.
    filled: usize,
}

#[cfg(target_os = "linux")]
impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(target_os = "linux")]
impl Batch {
    /// Buffers for [`BATCH`] datagrams.
    pub fn new() -> Self {
        let n = BATCH;
        Batch {
            data: vec![0; n * DATAGRAM],
            // SAFETY: all-zero is a valid sockaddr_storage (family AF_UNSPEC).
            addrs: vec![unsafe { std::mem::zeroed() }; n],
            controls: vec![[0; 16]; n],
            // SAFETY: all-zero is a valid iovec (null pointer, zero length); set before use.
            iovs: vec![unsafe { std::mem::zeroed() }; n],
            // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths); its
            // pointers are set before every call.
            hdrs: vec![unsafe { std::mem::zeroed() }; n],
            filled: 0,
        }
    }

    /// Receives what is queued on `socket`, up to [`BATCH`] datagrams: blocks (up to
    /// the socket's read timeout) for the first only, then takes the rest without waiting
    /// (`MSG_WAITFORONE`). Returns how many it received; read them with [`Batch::get`].
    pub fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        self.filled = 0;
        let data = self.data.as_mut_ptr();
        for i in 0..self.hdrs.len() {
            self.iovs[i] = libc::iovec {
                // SAFETY: i * DATAGRAM + DATAGRAM <= data.len(): in bounds.
                iov_base: unsafe { data.add(i * DATAGRAM) }.cast(),
                iov_len: DATAGRAM,
            };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = std::mem::size_of::<Control>() as _;
            h.msg_hdr.msg_flags = 0;
        }
        // SAFETY: hdrs holds hdrs.len() headers, each pointing at live buffers of the sizes
        // it states (its own address, iovec, data slice and control buffer), all owned by
        // self and not moved or otherwise touched during the call; a null timeout.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_WAITFORONE as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.filled = (n as usize).min(self.hdrs.len());
        Ok(self.filled)
    }

    /// The `i`th datagram of the last [`Batch::recv`]: what the kernel said of it, and its
    /// bytes; `None` past what it received.
    pub fn get(&self, i: usize) -> Option<(Received, &[u8])> {
        if i >= self.filled {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(DATAGRAM);
        let mut received = Received {
            len,
            src: socket_addr(&self.addrs[i], h.msg_hdr.msg_namelen),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            kernel_rx: None,
            drops: 0,
        };
        read_control(&h.msg_hdr, &mut received);
        Some((received, &self.data[i * DATAGRAM..i * DATAGRAM + len]))
    }
}

/// Sends every reply (bytes, destination) with as few `sendmmsg` calls as the kernel
/// allows. A datagram the kernel refuses (an ICMP error from an earlier send, a full
/// buffer) is logged and skipped, as one `sendto` failing was.
#[cfg(target_os = "linux")]
pub fn send_batch(socket: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) {
    use std::os::fd::AsRawFd;
    if replies.is_empty() {
        return;
    }
    let dests: Vec<socket2::SockAddr> = replies
        .iter()
        .map(|(_, to)| socket2::SockAddr::from(*to))
        .collect();
    let mut iovs: Vec<libc::iovec> = replies
        .iter()
        .map(|(bytes, _)| libc::iovec {
            // The kernel only reads through it (sendmmsg).
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(replies.len());
    for (iov, dest) in iovs.iter_mut().zip(&dests) {
        // SAFETY: all-zero is a valid mmsghdr; the fields that matter are set below.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = dest.as_ptr().cast_mut().cast();
        h.msg_hdr.msg_namelen = dest.len();
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
        hdrs.push(h);
    }
    let mut next = 0;
    while next < hdrs.len() {
        let rest = &mut hdrs[next..];
        // SAFETY: rest holds rest.len() headers, each pointing at a live address (dests),
        // iovec (iovs) and reply bytes (replies), none moved or freed during the call.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                0,
            )
        };
        if n <= 0 {
            // The first of the rest was refused: skip it, keep sending the others.
            tracing::debug!(
                "reflector send to agent failed: {}",
                std::io::Error::last_os_error()
            );
            next += 1;
        } else {
            next += n as usize;
        }
    }
}

/// The address the kernel wrote into `addr` (`len` bytes), if it is an IP one.
#[cfg(target_os = "linux")]
fn socket_addr(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match i32::from(addr.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says sockaddr_in, and that many bytes were written.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read_unaligned((addr as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says sockaddr_in6, and that many bytes were written.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read_unaligned((addr as *const libc::sockaddr_storage).cast()) };
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
