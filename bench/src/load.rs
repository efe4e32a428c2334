//! The fan-out load: N connections spread over R rooms, S of them sending
//! at a fixed total rate, open loop.
//!
//! Every message carries its intended send time in its id
//! (`step.sender.n.intended_us`), so latency is measured from when the
//! message *should* have been sent: a generator that falls behind makes
//! latency worse, never better. Each connection has a reader thread that
//! timestamps every frame as soon as tungstenite has read it; one scheduler
//! (the calling thread) writes all sends. Readers keep their own samples
//! behind an uncontended mutex per connection, collected once per step.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{Conn, Frame, SharedWriter, hang_up, write_text};
use crate::now_ms;
use crate::server::ServerProcess;
use crate::stats::{Summary, round3};

/// Most steps one fleet can run (a sweep's steps plus its refinements).
pub const MAX_STEPS: usize = 64;
/// How long a reader blocks before looking at the stop flag.
const READER_POLL: Duration = Duration::from_millis(500);
/// Reader threads only parse small frames.
const READER_STACK: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Parlor's protocol: hello, create_room, join, send → ack + message.
    Parlor,
    /// A plain broadcast relay: every text frame goes to the other clients.
    Raw,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Parlor => "parlor",
            Protocol::Raw => "raw",
        }
    }
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct Shape {
    pub protocol: Protocol,
    pub connections: usize,
    pub rooms: usize,
    pub senders: usize,
    /// Bytes of padding in each message text, besides its id.
    pub text_bytes: usize,
    /// One receiver stops reading this long after the first step starts.
    pub stall_after: Option<Duration>,
    /// ... and resumes after this long (None: at the end of the run).
    pub stall_for: Option<Duration>,
}

impl Shape {
    pub fn to_json(&self) -> Value {
        json!({
            "protocol": self.protocol.name(),
            "connections": self.connections,
            "rooms": self.rooms,
            "senders": self.senders,
            "text_bytes": self.text_bytes,
            "stall_after_s": self.stall_after.map(|d| d.as_secs_f64()),
            "stall_for_s": self.stall_for.map(|d| d.as_secs_f64()),
        })
    }
}

/// Counters the scheduler watches to know when a step has drained.
struct Progress {
    received: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    /// The step in progress; errors carry no id, so they count here.
    step: AtomicUsize,
    /// When the staller stops reading, in µs since the fleet's origin
    /// (u64::MAX: not yet scheduled).
    stall_at_us: AtomicU64,
}

/// What one reader saw during one step.
#[derive(Default)]
struct StepLog {
    delivery_us: Vec<u32>,
    ack_us: Vec<u32>,
    seen: HashSet<u64>,
    acked: HashSet<u64>,
    duplicates: u64,
    ack_duplicates: u64,
    errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct ReaderLog {
    steps: Vec<StepLog>,
    /// How the connection ended, and when (µs since origin).
    ended: Option<(String, u64)>,
    /// `presence ... left` frames: who left, when (µs since origin).
    left: Vec<(String, u64)>,
    /// For the staller: when it stopped reading, what it read before, and
    /// what it found when it read again.
    stalled_at_us: Option<u64>,
    resumed_at_us: Option<u64>,
    frames_before_stall: u64,
    frames_after_resume: u64,
}

impl ReaderLog {
    fn step(&mut self, step: usize) -> &mut StepLog {
        if self.steps.len() <= step {
            self.steps.resize_with(step + 1, StepLog::default);
        }
        &mut self.steps[step]
    }
}

/// The fields of incoming frames the readers look at.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    state: Option<Cow<'a, str>>,
}

/// A message id: `step.sender.n.intended_us`.
struct MessageId {
    step: usize,
    key: u64,
    intended_us: u64,
}

fn parse_id(id: &str) -> Option<MessageId> {
    let mut parts = id.split('.').map(|p| p.parse::<u64>().ok());
    let step = parts.next()??;
    let sender = parts.next()??;
    let n = parts.next()??;
    let intended_us = parts.next()??;
    Some(MessageId {
        step: usize::try_from(step).ok().filter(|s| *s < MAX_STEPS)?,
        key: (sender << 32) | (n & 0xffff_ffff),
        intended_us,
    })
}

/// One connection's reader thread.
struct Reader {
    conn: Conn,
    log: Arc<Mutex<ReaderLog>>,
    progress: Arc<Progress>,
    origin: Instant,
    protocol: Protocol,
    /// Counted readers feed `progress`; the staller is not counted.
    counted: bool,
    /// For the staller: how long to stay stalled.
    stall: Option<Option<Duration>>,
    resume_rx: crossbeam_channel::Receiver<()>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    fn run(mut self) {
        let _ = self.conn.set_read_timeout(Some(READER_POLL));
        let mut draining = false;
        let ended = loop {
            if let Some(stall_for) = self.stall
                && !draining
                && self.now_us() >= self.progress.stall_at_us.load(Ordering::Relaxed)
            {
                self.lock().stalled_at_us = Some(self.now_us());
                // Stop reading: the socket fills, then the server's outbox.
                let _ = match stall_for {
                    Some(d) => self.resume_rx.recv_timeout(d).map_err(drop),
                    None => self.resume_rx.recv().map_err(drop),
                };
                self.lock().resumed_at_us = Some(self.now_us());
                let _ = self.conn.set_read_timeout(Some(Duration::from_secs(2)));
                draining = true;
            }
            match self.conn.read() {
                Ok(Some(Frame::Text(text))) => {
                    let at = self.origin.elapsed().as_micros() as u64;
                    if draining {
                        self.lock().frames_after_resume += 1;
                    } else {
                        self.handle(&text, at);
                    }
                }
                Ok(Some(Frame::Closed(why))) => break why,
                Ok(None) if draining => break "nothing more to read (2 s)".into(),
                Ok(None) if self.stop.load(Ordering::Relaxed) => break "stopped".into(),
                Ok(None) => {}
                Err(e) => break e,
            }
        };
        let at = self.now_us();
        self.lock().ended = Some((ended, at));
    }

    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaderLog> {
        self.log
            .lock()
            .expect("BUG: readers do not panic holding their log")
    }

    fn handle(&self, text: &str, at_us: u64) {
        if self.stall.is_some() {
            self.lock().frames_before_stall += 1;
        }
        match self.protocol {
            Protocol::Raw => {
                let id = text.split(' ').next().unwrap_or("");
                if let Some(id) = parse_id(id) {
                    self.delivered(&id, at_us);
                }
            }
            Protocol::Parlor => {
                // The tag comes first in every server frame; skip the
                // frequent large ones (`rooms`) without parsing them.
                const WANTED: [&str; 4] = [
                    "{\"type\":\"message\"",
                    "{\"type\":\"ack\"",
                    "{\"type\":\"error\"",
                    "{\"type\":\"presence\"",
                ];
                if !WANTED.iter().any(|p| text.starts_with(p)) {
                    return;
                }
                // The bulk of the traffic: take the id without parsing the
                // frame. Ids are ours (digits and dots) and come before the
                // message's text, so the first `"id":"` is the id.
                let delivery = text.starts_with(WANTED[0]);
                if delivery || text.starts_with(WANTED[1]) {
                    let id = text
                        .split_once("\"id\":\"")
                        .and_then(|(_, rest)| rest.split_once('"'))
                        .and_then(|(id, _)| parse_id(id));
                    match id {
                        Some(id) if delivery => self.delivered(&id, at_us),
                        Some(id) => self.acked(&id, at_us),
                        None => {}
                    }
                    return;
                }
                let Ok(frame) = serde_json::from_str::<Incoming>(text) else {
                    return;
                };
                match frame.kind.as_ref() {
                    "error" => {
                        let step = self.progress.step.load(Ordering::Relaxed);
                        let code = frame.code.unwrap_or_default().into_owned();
                        *self.lock().step(step).errors.entry(code).or_default() += 1;
                    }
                    "presence" if frame.state.as_deref() == Some("left") => {
                        let user = frame.user.unwrap_or_default().into_owned();
                        self.lock().left.push((user, at_us));
                    }
                    _ => {}
                }
            }
        }
    }

    fn delivered(&self, id: &MessageId, at_us: u64) {
        let latency = at_us
            .saturating_sub(id.intended_us)
            .min(u64::from(u32::MAX)) as u32;
        let mut log = self.lock();
        let step = log.step(id.step);
        if step.seen.insert(id.key) {
            step.delivery_us.push(latency);
            if self.counted {
                self.progress.received[id.step].fetch_add(1, Ordering::Relaxed);
            }
        } else {
            step.duplicates += 1;
        }
    }

    fn acked(&self, id: &MessageId, at_us: u64) {
        let latency = at_us
            .saturating_sub(id.intended_us)
            .min(u64::from(u32::MAX)) as u32;
        let mut log = self.lock();
        let step = log.step(id.step);
        if step.acked.insert(id.key) {
            step.ack_us.push(latency);
            self.progress.acked[id.step].fetch_add(1, Ordering::Relaxed);
        } else {
            step.ack_duplicates += 1;
        }
    }
}

/// The connected clients of one run against one server.
pub struct Fleet {
    shape: Shape,
    origin: Instant,
    /// Wall clock (ms since the epoch) at `origin`, for the `ts` of sends.
    origin_wall_ms: i64,
    names: Vec<String>,
    writers: Vec<SharedWriter>,
    logs: Vec<Arc<Mutex<ReaderLog>>>,
    readers: Vec<JoinHandle<()>>,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
    /// Dropped to let the staller read again.
    resume_tx: Option<crossbeam_channel::Sender<()>>,
    staller: Option<usize>,
    /// Counted recipients of a message from each connection.
    recipients: Vec<u64>,
    next_step: usize,
    pub setup: Duration,
}

/// The result of one step: a fixed rate for a fixed time.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub rate: f64,
    pub duration: Duration,
    pub sent: u64,
    pub send_failures: u64,
    pub expected: u64,
    pub received: u64,
    pub duplicated: u64,
    pub lost: u64,
    pub acks_expected: u64,
    pub acks: u64,
    pub ack_duplicates: u64,
    pub errors: BTreeMap<String, u64>,
    pub disconnected: Vec<String>,
    pub delivery: Summary,
    pub ack: Summary,
    pub deliveries_per_s: f64,
    /// How far the scheduler got behind its own timetable, at worst.
    pub scheduler_max_lag_ms: f64,
    /// From a message's intended send time until its frame was written:
    /// the generator's own share of every latency.
    pub send_lag: Summary,
    pub server_cpu_s: Option<f64>,
    pub generator_cpu_s: Option<f64>,
    /// CPU the rest of the machine used meanwhile: other processes, and
    /// interrupt time (including the benchmark's own network and disk
    /// interrupts). A noisy neighbour shows up here.
    pub other_cpu_s: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub server_peak_kib: Option<u64>,
    pub stall: Option<Value>,
}

impl StepResult {
    /// CPU seconds the server spent per million deliveries.
    pub fn cpu_per_million(&self) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (self.received > 0).then(|| cpu / self.received as f64 * 1e6)
    }

    /// The sweep's criterion: nothing lost or refused, p99 within the limit.
    pub fn passes(&self, p99_limit_ms: f64) -> bool {
        self.lost == 0
            && self.send_failures == 0
            && self.errors.is_empty()
            && self.disconnected.is_empty()
            && self.acks == self.acks_expected
            && self.duplicated == 0
            && self.ack_duplicates == 0
            && self.delivery.p99 <= p99_limit_ms
    }

    pub fn to_json(&self) -> Value {
        json!({
            "rate_msgs_per_s": round3(self.rate),
            "duration_s": self.duration.as_secs_f64(),
            "sent": self.sent,
            "send_failures": self.send_failures,
            "deliveries": {
                "expected": self.expected,
                "received": self.received,
                "duplicated": self.duplicated,
                "lost": self.lost,
            },
            "acks": {
                "expected": self.acks_expected,
                "received": self.acks,
                "duplicated": self.ack_duplicates,
            },
            "errors": self.errors,
            "disconnected": self.disconnected,
            "delivery_latency": self.delivery.to_json(),
            "ack_latency": self.ack.to_json(),
            "deliveries_per_s": self.deliveries_per_s.round(),
            "scheduler_max_lag_ms": round3(self.scheduler_max_lag_ms),
            "send_lag": self.send_lag.to_json(),
            "server_cpu_s": self.server_cpu_s.map(round3),
            "server_cpu_s_per_million_deliveries": self.cpu_per_million().map(round3),
            "generator_cpu_s": self.generator_cpu_s.map(round3),
            "other_processes_cpu_s": self.other_cpu_s.map(round3),
            "server_rss_kib": self.server_rss_kib,
            "server_peak_rss_kib": self.server_peak_kib,
            "stalled_client": self.stall,
        })
    }
}

impl Fleet {
    /// Connects everyone and, for Parlor, signs each in and joins its room.
    /// `addrs` holds one address, or (raw relays) one per room.
    pub fn open(shape: &Shape, addrs: &[SocketAddr]) -> Result<Fleet, String> {
        let Shape {
            protocol,
            connections,
            rooms,
            senders,
            ..
        } = *shape;
        if rooms == 0 || connections < rooms || senders == 0 || senders > connections {
            return Err(format!(
                "need 1 <= rooms <= connections and 1 <= senders <= connections \
                 (got {connections} connections, {rooms} rooms, {senders} senders)"
            ));
        }
        if protocol == Protocol::Raw && addrs.len() != rooms {
            return Err(format!(
                "a raw relay has no rooms: give one address per room ({rooms} rooms, {} addresses)",
                addrs.len()
            ));
        }
        let staller = match shape.stall_after {
            Some(_) if senders < connections => Some(connections - 1),
            Some(_) => {
                return Err(
                    "--stall needs a connection that does not send (senders < connections)".into(),
                );
            }
            None => None,
        };
        let origin = Instant::now();
        let origin_wall_ms = now_ms();
        let progress = Arc::new(Progress {
            received: (0..MAX_STEPS).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..MAX_STEPS).map(|_| AtomicU64::new(0)).collect(),
            step: AtomicUsize::new(0),
            stall_at_us: AtomicU64::new(u64::MAX),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (resume_tx, resume_rx) = crossbeam_channel::bounded::<()>(0);
        let run = crate::nonce();
        let room_names: Vec<String> = (0..rooms).map(|r| format!("bench-{run}-{r}")).collect();
        let mut fleet = Fleet {
            shape: shape.clone(),
            origin,
            origin_wall_ms,
            names: Vec::with_capacity(connections),
            writers: Vec::with_capacity(connections),
            logs: Vec::with_capacity(connections),
            readers: Vec::with_capacity(connections),
            progress,
            stop,
            resume_tx: Some(resume_tx),
            staller,
            recipients: Vec::new(),
            next_step: 0,
            setup: Duration::ZERO,
        };
        for i in 0..connections {
            let room = i % rooms;
            let addr = if protocol == Protocol::Raw {
                addrs[room]
            } else {
                addrs[0]
            };
            let mut conn = Conn::connect(addr).map_err(|e| format!("connection {i}: {e}"))?;
            let name = format!("b{run}-{i}");
            if protocol == Protocol::Parlor {
                sign_in(&mut conn, &name, &room_names[room], i < rooms)
                    .map_err(|e| format!("connection {i} ({name}): {e}"))?;
            }
            let log = Arc::new(Mutex::new(ReaderLog::default()));
            fleet.writers.push(conn.writer.clone());
            fleet.logs.push(log.clone());
            fleet.names.push(name);
            let reader = Reader {
                conn,
                log,
                progress: fleet.progress.clone(),
                origin,
                protocol,
                counted: staller != Some(i),
                stall: (staller == Some(i)).then_some(shape.stall_for),
                resume_rx: resume_rx.clone(),
                stop: fleet.stop.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("rx-{i}"))
                .stack_size(READER_STACK)
                .spawn(move || reader.run())
                .map_err(|e| format!("cannot start reader thread {i}: {e}"))?;
            fleet.readers.push(handle);
        }
        fleet.setup = origin.elapsed();
        fleet.recipients = (0..connections)
            .map(|i| {
                let room = i % rooms;
                let members = (0..connections).filter(|j| j % rooms == room);
                members
                    .filter(|&j| Some(j) != staller)
                    .filter(|&j| protocol == Protocol::Parlor || j != i)
                    .count() as u64
            })
            .collect();
        Ok(fleet)
    }

    /// Sends at `rate` messages per second (in total, round robin over the
    /// senders) for `duration`, waits up to `drain` for the last deliveries,
    /// and collects the step's numbers.
    pub fn step(
        &mut self,
        rate: f64,
        duration: Duration,
        drain: Duration,
        server: Option<&ServerProcess>,
    ) -> Result<StepResult, String> {
        let step = self.next_step;
        if step >= MAX_STEPS {
            return Err(format!("a fleet runs at most {MAX_STEPS} steps"));
        }
        self.next_step += 1;
        self.progress.step.store(step, Ordering::Relaxed);
        let count = ((rate * duration.as_secs_f64()).round() as u64).max(1);
        let interval_us = 1e6 / rate;
        let padding = "x".repeat(self.shape.text_bytes);
        let mut per_sender = vec![0u64; self.shape.senders];
        let mut send_lag_us = Vec::with_capacity(count as usize);
        let (mut sent, mut failures, mut expected, mut max_lag_us) = (0u64, 0u64, 0u64, 0u64);

        let server_cpu_before = server.and_then(|s| s.cpu_seconds());
        let generator_cpu_before = crate::server::cpu_seconds(std::process::id());
        let machine_before = crate::server::machine_busy_seconds();
        // Start a little ahead so the first intended time is not already past.
        let start_us = self.now_us() + 20_000;
        if step == 0
            && let Some(after) = self.shape.stall_after
        {
            let at = start_us + after.as_micros() as u64;
            self.progress.stall_at_us.store(at, Ordering::Relaxed);
        }
        for k in 0..count {
            let intended_us = start_us + (k as f64 * interval_us) as u64;
            let now_us = self.now_us();
            if intended_us > now_us {
                std::thread::sleep(Duration::from_micros(intended_us - now_us));
            } else {
                max_lag_us = max_lag_us.max(now_us - intended_us);
            }
            let slot = (k % self.shape.senders as u64) as usize;
            let n = per_sender[slot];
            per_sender[slot] += 1;
            // Sender slots are the first connections: one per room first,
            // so any number of senders spreads over the rooms.
            let sender = slot;
            let id = format!("{step}.{sender}.{n}.{intended_us}");
            let frame = match self.shape.protocol {
                Protocol::Parlor => {
                    let ts = self.origin_wall_ms + (intended_us / 1000) as i64;
                    format!(
                        "{{\"type\":\"send\",\"id\":\"{id}\",\"text\":\"{id} {padding}\",\"ts\":{ts}}}"
                    )
                }
                Protocol::Raw => format!("{id} {padding}"),
            };
            match write_text(&self.writers[sender], frame) {
                Ok(()) => {
                    send_lag_us.push(self.now_us().saturating_sub(intended_us) as u32);
                    sent += 1;
                    expected += self.recipients[sender];
                }
                Err(_) => failures += 1,
            }
        }
        let send_end_us = self.now_us();
        let acks_expected = if self.shape.protocol == Protocol::Parlor {
            sent
        } else {
            0
        };
        let drain_until = Instant::now() + drain;
        while Instant::now() < drain_until
            && (self.progress.received[step].load(Ordering::Relaxed) < expected
                || self.progress.acked[step].load(Ordering::Relaxed) < acks_expected)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let server_cpu = server_cpu_before
            .zip(server.and_then(|s| s.cpu_seconds()))
            .map(|(a, b)| b - a);
        let generator_cpu = generator_cpu_before
            .zip(crate::server::cpu_seconds(std::process::id()))
            .map(|(a, b)| b - a);
        let machine_busy = machine_before
            .zip(crate::server::machine_busy_seconds())
            .map(|(a, b)| b - a);
        let other_cpu = machine_busy
            .map(|busy| busy - server_cpu.unwrap_or(0.0) - generator_cpu.unwrap_or(0.0))
            .map(|other| other.max(0.0));
        let memory = server.and_then(|s| s.memory());

        let mut delivery_us = Vec::new();
        let mut ack_us = Vec::new();
        let (mut received, mut duplicated, mut acks, mut ack_duplicates) = (0u64, 0u64, 0u64, 0u64);
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut disconnected = Vec::new();
        for (i, log) in self.logs.iter().enumerate() {
            let mut log = log.lock().map_err(|_| "a reader panicked".to_string())?;
            if Some(i) != self.staller
                && let Some((why, _)) = &log.ended
            {
                disconnected.push(format!("{}: {why}", self.names[i]));
            }
            let taken = std::mem::take(log.step(step));
            acks += taken.acked.len() as u64;
            ack_duplicates += taken.ack_duplicates;
            for (code, n) in taken.errors {
                *errors.entry(code).or_default() += n;
            }
            ack_us.extend_from_slice(&taken.ack_us);
            if Some(i) == self.staller {
                continue;
            }
            received += taken.seen.len() as u64;
            duplicated += taken.duplicates;
            delivery_us.extend_from_slice(&taken.delivery_us);
        }
        let window_s =
            (send_end_us.saturating_sub(start_us) as f64 / 1e6).max(duration.as_secs_f64());
        Ok(StepResult {
            rate,
            duration,
            sent,
            send_failures: failures,
            expected,
            received,
            duplicated,
            lost: expected.saturating_sub(received),
            acks_expected,
            acks,
            ack_duplicates,
            errors,
            disconnected,
            delivery: Summary::of_micros(&mut delivery_us),
            ack: Summary::of_micros(&mut ack_us),
            deliveries_per_s: received as f64 / window_s,
            scheduler_max_lag_ms: max_lag_us as f64 / 1000.0,
            send_lag: Summary::of_micros(&mut send_lag_us),
            server_cpu_s: server_cpu,
            generator_cpu_s: generator_cpu,
            other_cpu_s: other_cpu,
            server_rss_kib: memory.map(|m| m.rss_kib),
            server_peak_kib: memory.map(|m| m.peak_kib),
            stall: None,
        })
    }

    /// Lets the staller read again, waits for it to finish, and says what
    /// happened to it.
    pub fn stall_report(&mut self) -> Option<Value> {
        let i = self.staller?;
        self.resume_tx.take();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && self.logs[i]
                .lock()
                .map(|l| l.ended.is_none())
                .unwrap_or(false)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let name = &self.names[i];
        // The hub tells the room when it drops a connection: the first
        // `left` for the staller seen by anyone is when it was dropped.
        let dropped_at = self
            .logs
            .iter()
            .filter_map(|l| l.lock().ok())
            .flat_map(|l| l.left.clone())
            .filter(|(user, _)| user == name)
            .map(|(_, at)| at)
            .min();
        let log = self.logs[i].lock().ok()?;
        let ms = |us: u64| round3(us as f64 / 1000.0);
        let stalled = log.stalled_at_us;
        Some(json!({
            "user": name,
            "frames_read_before_stall": log.frames_before_stall,
            "stalled_at_ms": stalled.map(ms),
            "dropped_by_server_after_ms": dropped_at.zip(stalled).map(|(d, s)| ms(d.saturating_sub(s))),
            "resumed_after_ms": log.resumed_at_us.zip(stalled).map(|(r, s)| ms(r.saturating_sub(s))),
            "frames_read_after_resume": log.frames_after_resume,
            "ended_with": log.ended.as_ref().map(|(why, _)| why.clone()),
        }))
    }

    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    /// Hangs up every connection and waits for the readers.
    pub fn close(mut self) {
        self.resume_tx.take();
        self.stop.store(true, Ordering::Relaxed);
        for writer in &self.writers {
            hang_up(writer);
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Says hello, creates the room when first in it, and joins it.
fn sign_in(conn: &mut Conn, name: &str, room: &str, create: bool) -> Result<(), String> {
    conn.expect(json!({"type": "hello", "username": name}), "welcome")?;
    if create {
        let (reply, _) = conn.request(json!({"type": "create_room", "room": room}))?;
        if reply["type"] != "rooms" && reply["code"] != "room_exists" {
            return Err(format!("create_room {room}: {reply}"));
        }
    }
    conn.expect(json!({"type": "join", "room": room}), "joined")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let id = parse_id("3.17.42.123456").unwrap();
        assert_eq!(id.step, 3);
        assert_eq!(id.key, (17 << 32) | 42);
        assert_eq!(id.intended_us, 123456);
        assert!(parse_id("3.17.42").is_none());
        assert!(parse_id("999.1.1.1").is_none());
        assert!(parse_id("a.b.c.d").is_none());
    }
}
