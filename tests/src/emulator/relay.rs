//! The UDP relay: puts the impairment model on a real path between agents and a reflector.
//!
//! For each [`Route`] the relay listens on `listen` and forwards to `upstream`. Each client address seen
//! on a route gets its own upstream-facing socket, connected to the upstream, so the reflector sees one
//! peer per client and its replies find their way back to that client.
//!
//! One core task owns the model, the client table and the delivery queue: a binary heap ordered by due
//! time that the core sleeps on with `sleep_until`. Small reader tasks only receive datagrams and hand
//! them to the core over a bounded channel, stamped with the time they arrived.
//!
//! What DPI rules see as ports: the ports on the agent's side of the path. Up: `src` = the client's port,
//! `dst` = the upstream's port. Down: `src` = the upstream's port, `dst` = the client's port. So a rule
//! `ports=3478` (dst side) hits what agents send to a reflector on 3478, and `side=either` hits replies
//! too.
//!
//! Bounds, visible in the counters:
//! 1. At most `max_clients` clients. When full, the least recently active client is evicted if it has
//!    been idle for `client_idle_timeout`; otherwise the newcomer's datagrams are refused.
//! 2. At most `max_queued_packets` deliveries wait. A datagram that arrives when the queue is full is
//!    dropped before it reaches the model (`queue_overflow`), so the ground truth never counts as
//!    delivered what the relay could not hold.
//! 3. The channel from readers to the core holds `EVENT_CHANNEL_CAPACITY` datagrams; beyond that readers
//!    wait and the kernel's socket buffers take the excess, as on a real congested path.
//!
//! Shutdown: [`Relay::shutdown`] stops the core, which drops what is still queued (counted in
//! `discarded_at_shutdown`) and ends every reader task. Dropping a [`Relay`] does the same.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::model::{Delivery, Direction, GroundTruth, Impairment, ImpairmentConfig, UdpPorts};

/// Datagrams the readers may hand to the core before they have to wait.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;
/// Largest UDP payload; receive buffers are this big so nothing is truncated.
const MAX_DATAGRAM_BYTES: usize = 65_535;

/// Listen here, forward to there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub routes: Vec<Route>,
    pub impairment: ImpairmentConfig,
    pub max_clients: usize,
    pub max_queued_packets: usize,
    pub client_idle_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            routes: Vec::new(),
            impairment: ImpairmentConfig::default(),
            max_clients: 256,
            max_queued_packets: 65_536,
            client_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What the relay itself did, apart from the model's decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCounters {
    pub clients_active: u64,
    pub clients_total: u64,
    pub clients_evicted: u64,
    /// Datagrams from new clients refused because the client table was full of active clients.
    pub clients_refused: u64,
    /// Failures to open an upstream-facing socket for a new client (its datagram is dropped).
    pub upstream_socket_errors: u64,
    pub received_up: u64,
    pub received_down: u64,
    /// Datagrams dropped before the model because the delivery queue was full.
    pub queue_overflow: u64,
    /// Copies sent, per direction.
    pub sent_up: u64,
    pub sent_down: u64,
    /// Copies the model delivered that the operating system refused to send.
    pub send_errors: u64,
    /// Copies due to a client that was evicted meanwhile, and replies for such a client.
    pub undeliverable: u64,
    /// Deliveries waiting right now.
    pub queued: u64,
    pub discarded_at_shutdown: u64,
}

/// The model's ground truth and the relay's counters, taken together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelaySnapshot {
    pub ground_truth: GroundTruth,
    pub relay: RelayCounters,
}

/// State the core changes and the handle reads, under one lock so a snapshot is always consistent.
struct Shared {
    model: Impairment,
    counters: RelayCounters,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock leaves plain counters behind; they are still worth reading.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running relay. Dropping it stops the relay.
pub struct Relay {
    local_addrs: Vec<SocketAddr>,
    shared: Arc<Mutex<Shared>>,
    progress: watch::Receiver<RelayCounters>,
    shutdown: oneshot::Sender<()>,
    core: JoinHandle<()>,
}

impl Relay {
    /// Binds every route's listening socket and starts relaying. Fails on a bad config or a port that
    /// cannot be bound, before anything runs.
    pub async fn start(config: RelayConfig) -> anyhow::Result<Relay> {
        if config.routes.is_empty() {
            bail!("the relay needs at least one route (listen → upstream)");
        }
        if config.max_clients == 0 {
            bail!("max_clients must be at least 1");
        }
        if config.max_queued_packets < 2 {
            bail!("max_queued_packets must be at least 2 (a duplicated datagram needs two slots)");
        }
        let model =
            Impairment::new(config.impairment.clone()).context("invalid impairment config")?;

        let mut listeners = Vec::with_capacity(config.routes.len());
        let mut local_addrs = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let socket = bind_udp(route.listen)
                .with_context(|| format!("cannot listen on {}", route.listen))?;
            let local = socket.local_addr()?;
            info!(listen = %local, upstream = %route.upstream, "relaying");
            local_addrs.push(local);
            listeners.push(Arc::new(socket));
        }

        let shared = Arc::new(Mutex::new(Shared {
            model,
            counters: RelayCounters::default(),
        }));
        let (progress_tx, progress) = watch::channel(RelayCounters::default());
        let (events_tx, events_rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let (shutdown, shutdown_rx) = oneshot::channel();

        let mut readers = JoinSet::new();
        for (route, socket) in listeners.iter().enumerate() {
            readers.spawn(read_from_clients(route, socket.clone(), events_tx.clone()));
        }
        let core = Core {
            config,
            start: Instant::now(),
            listeners,
            client_ids: HashMap::new(),
            clients: HashMap::new(),
            next_client_id: 0,
            queue: BinaryHeap::new(),
            next_seq: 0,
            shared: shared.clone(),
            progress: progress_tx,
            events: events_tx,
            _readers: readers,
        };
        let core = tokio::spawn(core.run(events_rx, shutdown_rx));
        Ok(Relay {
            local_addrs,
            shared,
            progress,
            shutdown,
            core,
        })
    }

    /// The addresses actually bound, one per route in order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn ground_truth(&self) -> GroundTruth {
        lock(&self.shared).model.ground_truth()
    }

    pub fn counters(&self) -> RelayCounters {
        lock(&self.shared).counters.clone()
    }

    pub fn snapshot(&self) -> RelaySnapshot {
        let shared = lock(&self.shared);
        RelaySnapshot {
            ground_truth: shared.model.ground_truth(),
            relay: shared.counters.clone(),
        }
    }

    /// Changes whenever the relay has handled a datagram or a delivery: await `changed()` on it instead
    /// of sleeping, then look at [`Relay::snapshot`].
    pub fn progress(&self) -> watch::Receiver<RelayCounters> {
        self.progress.clone()
    }

    /// Stops relaying and returns the final snapshot.
    pub async fn shutdown(self) -> anyhow::Result<RelaySnapshot> {
        let Relay {
            shared,
            shutdown,
            core,
            ..
        } = self;
        // An error means the core has already stopped; the join below tells how.
        let _ = shutdown.send(());
        core.await.context("the relay's core task failed")?;
        let shared = lock(&shared);
        Ok(RelaySnapshot {
            ground_truth: shared.model.ground_truth(),
            relay: shared.counters.clone(),
        })
    }
}

enum Event {
    FromClient {
        route: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
        at: Instant,
    },
    FromUpstream {
        client: u64,
        bytes: Vec<u8>,
        at: Instant,
    },
}

#[derive(Clone, Copy)]
enum Target {
    Upstream { client: u64 },
    Client { route: usize, addr: SocketAddr },
}

/// A copy waiting to be sent; ordered by due time, then by scheduling order.
struct Scheduled {
    at: Instant,
    seq: u64,
    target: Target,
    bytes: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Client {
    route: usize,
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
    last_active: Instant,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How long before a delivery is due the core stops sleeping and starts yielding.
const SPIN: Duration = Duration::from_micros(1500);

struct Core {
    config: RelayConfig,
    start: Instant,
    listeners: Vec<Arc<UdpSocket>>,
    client_ids: HashMap<(usize, SocketAddr), u64>,
    clients: HashMap<u64, Client>,
    next_client_id: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    shared: Arc<Mutex<Shared>>,
    progress: watch::Sender<RelayCounters>,
    /// Handed to each new client's reader.
    events: mpsc::Sender<Event>,
    /// The listeners' readers; dropped (so aborted) with the core.
    _readers: JoinSet<()>,
}

impl Core {
    async fn run(mut self, mut events: mpsc::Receiver<Event>, mut shutdown: oneshot::Receiver<()>) {
        let sleep = tokio::time::sleep_until(self.start);
        tokio::pin!(sleep);
        loop {
            // Tokio's timer has millisecond granularity: sleep until SPIN before a delivery is
            // due, then keep yielding until it is, so added delays are exact to tens of µs and a
            // zero-delay path adds no timer wait at all.
            let mut spin = false;
            if let Some(Reverse(next)) = self.queue.peek() {
                let now = Instant::now();
                if next.at <= now {
                    self.deliver_due().await;
                    self.publish();
                    continue;
                }
                if next.at - now <= SPIN {
                    spin = true;
                } else {
                    sleep.as_mut().reset(next.at - SPIN);
                }
            }
            tokio::select! {
                biased;
                // Sent, or the handle was dropped: stop either way.
                _ = &mut shutdown => break,
                () = &mut sleep, if !spin && !self.queue.is_empty() => {}
                () = tokio::task::yield_now(), if spin => {}
                event = events.recv() => match event {
                    Some(Event::FromClient { route, from, bytes, at }) => {
                        self.on_client_datagram(route, from, bytes, at).await
                    }
                    Some(Event::FromUpstream { client, bytes, at }) => {
                        self.on_upstream_datagram(client, bytes, at)
                    }
                    // The core holds a sender itself, so this cannot happen; stop cleanly if it does.
                    None => break,
                },
            }
            self.publish();
        }
        let discarded = self.queue.len() as u64;
        self.queue.clear();
        {
            let mut shared = lock(&self.shared);
            shared.counters.discarded_at_shutdown += discarded;
            shared.counters.queued = 0;
        }
        self.publish();
        self.clients.clear(); // aborts the client readers
        debug!(discarded, "relay stopped");
    }

    fn publish(&self) {
        let counters = lock(&self.shared).counters.clone();
        self.progress.send_replace(counters);
    }

    fn has_room(&self) -> bool {
        self.queue.len() + 2 <= self.config.max_queued_packets
    }

    async fn on_client_datagram(
        &mut self,
        route: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
        at: Instant,
    ) {
        lock(&self.shared).counters.received_up += 1;
        if !self.has_room() {
            lock(&self.shared).counters.queue_overflow += 1;
            return;
        }
        let Some(client) = self.client_for(route, from, at).await else {
            return;
        };
        let upstream = self.config.routes[route].upstream;
        let ports = UdpPorts {
            src: from.port(),
            dst: upstream.port(),
        };
        self.impair(
            Direction::Up,
            ports,
            &bytes,
            at,
            Target::Upstream { client },
        );
    }

    fn on_upstream_datagram(&mut self, client: u64, bytes: Vec<u8>, at: Instant) {
        lock(&self.shared).counters.received_down += 1;
        let Some(entry) = self.clients.get(&client) else {
            // Read just before the client was evicted.
            lock(&self.shared).counters.undeliverable += 1;
            return;
        };
        let (route, addr) = (entry.route, entry.addr);
        if !self.has_room() {
            lock(&self.shared).counters.queue_overflow += 1;
            return;
        }
        let upstream = self.config.routes[route].upstream;
        let ports = UdpPorts {
            src: upstream.port(),
            dst: addr.port(),
        };
        self.impair(
            Direction::Down,
            ports,
            &bytes,
            at,
            Target::Client { route, addr },
        );
    }

    /// Runs the model and queues its deliveries, updating the counters under the same lock so that a
    /// snapshot never sees the model ahead of the queue.
    fn impair(
        &mut self,
        dir: Direction,
        ports: UdpPorts,
        bytes: &[u8],
        at: Instant,
        target: Target,
    ) {
        let mut shared = lock(&self.shared);
        let now = at.saturating_duration_since(self.start);
        for Delivery { at, bytes } in shared.model.on_datagram(now, dir, bytes, ports) {
            self.queue.push(Reverse(Scheduled {
                at: self.start + at,
                seq: self.next_seq,
                target,
                bytes,
            }));
            self.next_seq += 1;
        }
        shared.counters.queued = self.queue.len() as u64;
    }

    /// The client for this source address on this route, opening its upstream socket if it is new.
    async fn client_for(&mut self, route: usize, from: SocketAddr, now: Instant) -> Option<u64> {
        if let Some(&id) = self.client_ids.get(&(route, from)) {
            if let Some(client) = self.clients.get_mut(&id) {
                client.last_active = now;
            }
            return Some(id);
        }
        if self.clients.len() >= self.config.max_clients && !self.evict_idle(now) {
            lock(&self.shared).counters.clients_refused += 1;
            return None;
        }
        let upstream = self.config.routes[route].upstream;
        let socket = match upstream_socket(upstream).await {
            Ok(socket) => Arc::new(socket),
            Err(error) => {
                warn!(%upstream, %error, "cannot open an upstream socket for a new client");
                lock(&self.shared).counters.upstream_socket_errors += 1;
                return None;
            }
        };
        let id = self.next_client_id;
        self.next_client_id += 1;
        let reader = tokio::spawn(read_from_upstream(id, socket.clone(), self.events.clone()));
        self.clients.insert(
            id,
            Client {
                route,
                addr: from,
                socket,
                reader,
                last_active: now,
            },
        );
        self.client_ids.insert((route, from), id);
        debug!(client = %from, route, "new client");
        let mut shared = lock(&self.shared);
        shared.counters.clients_total += 1;
        shared.counters.clients_active = self.clients.len() as u64;
        Some(id)
    }

    /// Evicts the least recently active client if it has been idle long enough.
    fn evict_idle(&mut self, now: Instant) -> bool {
        let Some((&id, oldest)) = self
            .clients
            .iter()
            .min_by_key(|(_, client)| client.last_active)
        else {
            return false;
        };
        if now.saturating_duration_since(oldest.last_active) < self.config.client_idle_timeout {
            return false;
        }
        if let Some(client) = self.clients.remove(&id) {
            self.client_ids.remove(&(client.route, client.addr));
            debug!(client = %client.addr, "evicted idle client");
        }
        let mut shared = lock(&self.shared);
        shared.counters.clients_evicted += 1;
        shared.counters.clients_active = self.clients.len() as u64;
        true
    }

    async fn deliver_due(&mut self) {
        let now = Instant::now();
        while self
            .queue
            .peek()
            .is_some_and(|Reverse(next)| next.at <= now)
        {
            let Some(Reverse(item)) = self.queue.pop() else {
                break;
            };
            let (result, up) = match item.target {
                Target::Upstream { client } => match self.clients.get(&client) {
                    Some(client) => {
                        let socket = client.socket.clone();
                        (Some(socket.send(&item.bytes).await), true)
                    }
                    None => (None, true),
                },
                Target::Client { route, addr } => (
                    Some(self.listeners[route].send_to(&item.bytes, addr).await),
                    false,
                ),
            };
            let mut shared = lock(&self.shared);
            match result {
                Some(Ok(_)) if up => shared.counters.sent_up += 1,
                Some(Ok(_)) => shared.counters.sent_down += 1,
                Some(Err(error)) => {
                    debug!(%error, "send failed");
                    shared.counters.send_errors += 1;
                }
                None => shared.counters.undeliverable += 1,
            }
            // Updated with the send it belongs to (see `impair`).
            shared.counters.queued = self.queue.len() as u64;
        }
    }
}

/// A socket for one client's traffic to `upstream`, connected so it hears only the upstream. It binds
/// the loopback address when the upstream is on loopback, so nothing listens beyond the machine.
async fn upstream_socket(upstream: SocketAddr) -> io::Result<UdpSocket> {
    let ip: IpAddr = match (upstream.ip().is_loopback(), upstream) {
        (true, SocketAddr::V4(_)) => Ipv4Addr::LOCALHOST.into(),
        (true, SocketAddr::V6(_)) => Ipv6Addr::LOCALHOST.into(),
        (false, SocketAddr::V4(_)) => Ipv4Addr::UNSPECIFIED.into(),
        (false, SocketAddr::V6(_)) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = bind_udp(SocketAddr::new(ip, 0))?;
    socket.connect(upstream).await?;
    Ok(socket)
}

/// Binds a relay socket with the reflector's large buffers: the emulator must not add kernel
/// drops of its own (the default 208 KiB holds only a few hundred small datagrams when the host
/// is busy), or its ground truth would miss losses it did not model.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    callwatch_reflector::bind_with_buffers(addr)
}

/// ICMP errors from earlier sends surface on a later receive; they say nothing about this socket.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

async fn read_from_clients(route: usize, socket: Arc<UdpSocket>, events: mpsc::Sender<Event>) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let event = Event::FromClient {
                    route,
                    from,
                    bytes: buf[..len].to_vec(),
                    at: Instant::now(),
                };
                if events.send(event).await.is_err() {
                    return; // the core has stopped
                }
            }
            Err(error) if is_transient(&error) => debug!(%error, "receive from clients"),
            Err(error) => {
                warn!(route, %error, "stopped receiving from clients on this route");
                return;
            }
        }
    }
}

async fn read_from_upstream(client: u64, socket: Arc<UdpSocket>, events: mpsc::Sender<Event>) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        match socket.recv(&mut buf).await {
            Ok(len) => {
                let event = Event::FromUpstream {
                    client,
                    bytes: buf[..len].to_vec(),
                    at: Instant::now(),
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Err(error) if is_transient(&error) => debug!(%error, "receive from upstream"),
            Err(error) => {
                warn!(client, %error, "stopped receiving from upstream for this client");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::model::{DelayConfig, Fate, LossModel, PathConfig};
    use super::*;

    const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    /// A reflector stand-in: echoes every datagram to its sender. Aborted when the guard drops.
    struct EchoServer {
        addr: SocketAddr,
        task: JoinHandle<()>,
    }

    impl Drop for EchoServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn echo_server() -> EchoServer {
        let socket = bind_udp(LOCALHOST).expect("bind echo");
        let addr = socket.local_addr().expect("echo addr");
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if socket.send_to(&buf[..len], from).await.is_err() {
                    return;
                }
            }
        });
        EchoServer { addr, task }
    }

    fn config(upstream: SocketAddr, up: PathConfig) -> RelayConfig {
        RelayConfig {
            routes: vec![Route {
                listen: LOCALHOST,
                upstream,
            }],
            impairment: ImpairmentConfig {
                seed: 42,
                up,
                ..ImpairmentConfig::default()
            },
            ..RelayConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echoes_through_the_relay_equal_sent_minus_ground_truth_drops() {
        const N: u32 = 500;
        const BATCH: u32 = 25;
        let echo = echo_server().await;
        let up = PathConfig {
            loss: LossModel::bernoulli(0.2),
            delay: DelayConfig {
                delay_ms: 1.0,
                jitter_ms: 1.0,
                ..DelayConfig::default()
            },
            ..PathConfig::default()
        };
        let relay = Relay::start(config(echo.addr, up))
            .await
            .expect("relay starts");
        let mut progress = relay.progress();
        let agent = Arc::new(bind_udp(LOCALHOST).expect("bind agent"));
        agent
            .connect(relay.local_addrs()[0])
            .await
            .expect("connect");

        // The agent reads echoes all the time, so its socket buffer never overflows.
        let (echo_tx, mut echoes) = mpsc::unbounded_channel();
        let reader = {
            let agent = agent.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(len) = agent.recv(&mut buf).await {
                    let Ok(seq) = <[u8; 4]>::try_from(&buf[..len]) else {
                        return;
                    };
                    if echo_tx.send(u32::from_be_bytes(seq)).is_err() {
                        return;
                    }
                }
            })
        };

        // A bound on failure, not a synchronisation: every wait below is on an event. Generous,
        // since a 2-core CI host may be running other test binaries meanwhile.
        let timeout = Duration::from_secs(60);
        // Send in batches, each once the relay has read the previous one, so no kernel buffer on the
        // way overflows and every datagram sent reaches the model.
        for batch in 0..N / BATCH {
            for seq in batch * BATCH..(batch + 1) * BATCH {
                agent.send(&seq.to_be_bytes()).await.expect("send");
            }
            let sent = u64::from((batch + 1) * BATCH);
            tokio::time::timeout(timeout, progress.wait_for(|c| c.received_up >= sent))
                .await
                .expect("relay reads in time")
                .expect("relay running");
        }

        // Settled: the model has seen all N, every copy sent upstream came back through the model, the
        // queue is empty, and the agent has every copy sent down. Each step is awaited, never slept on.
        let mut received = Vec::new();
        let settled = tokio::time::timeout(timeout, async {
            for _ in 0..(10 * N) {
                let snapshot = relay.snapshot();
                let (truth, counters) = (&snapshot.ground_truth, &snapshot.relay);
                if truth.up.seen == u64::from(N)
                    && counters.queued == 0
                    && truth.down.seen == counters.sent_up
                    && counters.sent_down == received.len() as u64
                {
                    return snapshot;
                }
                tokio::select! {
                    seq = echoes.recv() => received.push(seq.expect("agent reader running")),
                    changed = progress.changed() => changed.expect("relay running"),
                }
            }
            panic!("did not settle within the event budget");
        })
        .await
        .expect("relay settles");
        reader.abort();

        let truth = &settled.ground_truth;
        let drops = truth.up.dropped.total() + truth.down.dropped.total();
        assert!(
            truth.up.dropped.random_loss > 50,
            "loss 0.2 over {N} should drop some: {:?}",
            truth.up.dropped
        );
        assert_eq!(received.len() as u64, u64::from(N) - drops);
        assert_eq!(truth.down.dropped.total(), 0);
        // Exactly the datagrams the ground truth delivered came back (one client: index = sequence).
        let delivered: BTreeSet<u32> = truth
            .up
            .log
            .iter()
            .filter(|r| matches!(r.fate, Fate::Delivered { .. }))
            .map(|r| r.index as u32)
            .collect();
        assert_eq!(
            received.iter().copied().collect::<BTreeSet<u32>>(),
            delivered
        );
        let counters = &settled.relay;
        assert_eq!(
            (
                counters.queue_overflow,
                counters.clients_refused,
                counters.send_errors,
                counters.undeliverable
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(counters.clients_total, 1);

        let last = relay.shutdown().await.expect("clean shutdown");
        assert_eq!(last.ground_truth, settled.ground_truth);
        assert_eq!(last.relay.discarded_at_shutdown, 0);
    }

    #[tokio::test]
    async fn refuses_clients_beyond_the_cap() {
        let echo = echo_server().await;
        let relay = Relay::start(RelayConfig {
            max_clients: 1,
            ..config(echo.addr, PathConfig::default())
        })
        .await
        .expect("relay starts");
        let mut progress = relay.progress();
        let first = UdpSocket::bind(LOCALHOST).await.expect("bind");
        let second = UdpSocket::bind(LOCALHOST).await.expect("bind");
        let target = relay.local_addrs()[0];
        first.send_to(b"one", target).await.expect("send");
        let mut buf = [0u8; 16];
        let (len, _) = tokio::time::timeout(Duration::from_secs(10), first.recv_from(&mut buf))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&buf[..len], b"one");
        second.send_to(b"two", target).await.expect("send");
        let counters = tokio::time::timeout(
            Duration::from_secs(10),
            progress.wait_for(|c| c.clients_refused == 1),
        )
        .await
        .expect("refusal in time")
        .expect("relay running")
        .clone();
        assert_eq!((counters.clients_total, counters.clients_active), (1, 1));
        assert_eq!(
            relay.ground_truth().up.seen,
            1,
            "a refused datagram never reaches the model"
        );
    }

    #[tokio::test]
    async fn evicts_an_idle_client_for_a_new_one() {
        let echo = echo_server().await;
        let relay = Relay::start(RelayConfig {
            max_clients: 1,
            client_idle_timeout: Duration::ZERO,
            ..config(echo.addr, PathConfig::default())
        })
        .await
        .expect("relay starts");
        let target = relay.local_addrs()[0];
        for message in [&b"first"[..], &b"second"[..]] {
            let agent = UdpSocket::bind(LOCALHOST).await.expect("bind");
            agent.send_to(message, target).await.expect("send");
            let mut buf = [0u8; 16];
            let (len, _) = tokio::time::timeout(Duration::from_secs(10), agent.recv_from(&mut buf))
                .await
                .expect("echo in time")
                .expect("echo");
            assert_eq!(&buf[..len], message);
        }
        let counters = relay.counters();
        assert_eq!(
            (
                counters.clients_total,
                counters.clients_active,
                counters.clients_evicted
            ),
            (2, 1, 1)
        );
        assert_eq!(counters.clients_refused, 0);
    }

    #[tokio::test]
    async fn start_fails_clearly() {
        let err = Relay::start(RelayConfig::default())
            .await
            .err()
            .expect("no routes");
        assert!(err.to_string().contains("at least one route"), "{err}");
        let mut bad = config(LOCALHOST, PathConfig::default());
        bad.impairment.up.duplicate = 2.0;
        let err = Relay::start(bad).await.err().expect("bad model");
        assert!(format!("{err:#}").contains("up.duplicate"), "{err:#}");
    }
}
