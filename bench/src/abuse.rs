//! `parlor-bench abuse`: attacks a hostile client can make with the
//! protocol alone, each against a fresh `parlor` while ordinary users chat
//! at the spec's load, and what each costs them: the server's memory, the
//! bystanders' latency and losses, and whether a person can still sign in.
//!
//! The server keeps its default limits, budgets and caps except for room
//! for the bystanders themselves ([`server_options`] says exactly what).
//! Bystanders sign in from 127.0.0.1, attackers from other loopback
//! addresses, so limits per address act as they would on a network.
//! Attacker threads run at the lowest priority (nice 19): on the
//! generator's core their floods must not delay the bystanders' own
//! clocks, and they still get every cycle the bystanders leave.
//!
//! Each attack acts for `--duration`, as long as the bystanders send; its
//! sockets stay open until the bystanders' last messages are in (or the
//! drain ends), then get a few seconds to take their last replies and are
//! cut. An attack that takes the server past `--rss-limit` is cut there,
//! and a server that goes on growing to twice that is killed, both
//! reported, for the machine's sake.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parlor::protocol::{MAX_ROOM_CHARS, MAX_TEXT_CHARS, PAGE_SIZES};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{Conn, Frame, write_text};
use crate::load::{Fleet, Shape, StepResult};
use crate::server::{Memory, ParlorLaunch, ServerProcess, TempDir, knows_flag};
use crate::stats::{Summary, round3};

/// Where bystanders come from is the fleet's own 127.0.0.1; the attackers
/// and the person trying to sign in each have an address of their own.
const ATTACKER_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const ATTACKER_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const PERSON: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));

/// Parlor's defaults that the bystanders change (see the README's Options).
const DEFAULT_MAX_USERS: usize = 10;
const DEFAULT_MESSAGES_PER_SECOND: usize = 10;
/// New names one address may sign in with in an hour: every bystander is a
/// new name from 127.0.0.1.
const DEFAULT_NEW_USERS_PER_IP_PER_HOUR: usize = 20;

/// `--max-connections` by default: 4 per user and 16.
fn default_max_connections(max_users: usize) -> usize {
    4 * max_users + 16
}

/// `--max-connections-per-ip` by default: 2 per user and 8.
fn default_max_connections_per_ip(max_users: usize) -> usize {
    2 * max_users + 8
}

/// How long an attacker's handshake or sign-in may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a person waits for a handshake and then for `welcome`.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long attacker threads block on a read before looking at the clock.
const POLL: Duration = Duration::from_millis(200);
/// After an attack's time is up, how long its threads get to finish what
/// they started (read the last replies, finish a request) before their
/// sockets are cut.
const GRACE: Duration = Duration::from_secs(3);
/// How often the server's memory is looked at during an attack.
const WATCH_EVERY: Duration = Duration::from_millis(50);
/// Most connections one attacker thread opens (each loop also ends with
/// the attack's time).
const MAX_OPENS: u64 = 100_000;
/// Pause after a refused handshake or sign-in before the next try.
const REFUSED_PAUSE: Duration = Duration::from_millis(50);
/// Attacker threads only parse small frames (pages stay on the heap).
const ATTACKER_STACK: usize = 256 * 1024;
/// A slow reader's pace: a 1 Mbit/s link.
const SLOW_BYTES_PER_S: u64 = 128 * 1024;

/// One attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// No attack: the bystanders alone, for comparison.
    None,
    /// Case 1: signed-in sockets flood pings, reading the replies.
    Pings,
    /// Case 2: a room of big messages, read in pages of 500 that are not
    /// read, or read slowly.
    History,
    /// Case 5: two addresses hold every socket they may, never saying hello.
    Crowd,
    /// Case 7: rooms created as fast as allowed, and created and deleted.
    Rooms,
}

impl Case {
    pub const ALL: [Case; 5] = [
        Case::None,
        Case::Pings,
        Case::History,
        Case::Crowd,
        Case::Rooms,
    ];

    /// `0`/`none`, `1`/`pings`, `2`/`history`, `5`/`crowd`, `7`/`rooms`.
    pub fn parse(word: &str) -> Result<Case, String> {
        Case::ALL
            .into_iter()
            .find(|c| word == c.number().to_string() || word == c.name())
            .ok_or_else(|| {
                format!(
                    "unknown case {word:?}: 0 (none), 1 (pings), 2 (history), 5 (crowd), 7 (rooms)"
                )
            })
    }

    fn number(self) -> u8 {
        match self {
            Case::None => 0,
            Case::Pings => 1,
            Case::History => 2,
            Case::Crowd => 5,
            Case::Rooms => 7,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Case::None => "none",
            Case::Pings => "pings",
            Case::History => "history",
            Case::Crowd => "crowd",
            Case::Rooms => "rooms",
        }
    }

    fn describe(self, sizes: &Sizes, per_ip: usize, tries: usize) -> String {
        match self {
            Case::None => "no attack: the bystanders alone".into(),
            Case::Pings => format!(
                "{} signed-in sockets from {ATTACKER_A} send {{\"type\":\"ping\"}} as fast as they can, reading replies",
                sizes.ping_sockets
            ),
            Case::History => format!(
                "`general` holds {} messages of {MAX_TEXT_CHARS} four-byte characters; {} sockets from {ATTACKER_A} send \
                 `history` limit {} requests {} at once every second and never read, {} from {ATTACKER_B} send {} at once \
                 and read at {} KiB/s; closed ones sign in again",
                sizes.fill_messages,
                sizes.unread_sockets,
                PAGE_LIMIT,
                sizes.history_burst,
                sizes.slow_sockets,
                sizes.history_burst,
                SLOW_BYTES_PER_S / 1024
            ),
            Case::Crowd => format!(
                "{ATTACKER_A} and {ATTACKER_B} each hold {per_ip} handshaken WebSockets (the per-address cap), never say \
                 hello and reopen any that closes; a person from {PERSON} signs in {tries} times"
            ),
            Case::Rooms => format!(
                "one user from {ATTACKER_A} creates rooms with {MAX_ROOM_CHARS}-character names as fast as allowed, \
                 another creates and deletes one in a loop"
            ),
        }
    }
}

/// The biggest history page.
const PAGE_LIMIT: u32 = PAGE_SIZES[PAGE_SIZES.len() - 1];

/// How big each attack is; `--quick` makes them tiny.
struct Sizes {
    ping_sockets: usize,
    fill_messages: usize,
    history_burst: usize,
    unread_sockets: usize,
    slow_sockets: usize,
    /// How long case 5's crowd has before the person's first try.
    head_start: Duration,
    /// How long the server gets after an attack before "RSS after".
    after: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                ping_sockets: 2,
                fill_messages: 20,
                history_burst: 10,
                unread_sockets: 1,
                slow_sockets: 1,
                head_start: Duration::from_millis(200),
                after: Duration::from_millis(200),
            }
        } else {
            Sizes {
                ping_sockets: 10,
                fill_messages: 500,
                history_burst: 100,
                unread_sockets: 3,
                slow_sockets: 2,
                head_start: Duration::from_secs(1),
                after: Duration::from_secs(2),
            }
        }
    }
}

pub struct AbuseOptions {
    pub binary: PathBuf,
    pub cases: Vec<Case>,
    pub bystanders: Shape,
    /// The bystanders' messages per second, in all.
    pub rate: f64,
    pub duration: Duration,
    pub drain: Duration,
    /// Sign-in tries of the person in case 5.
    pub tries: usize,
    pub rss_limit_kib: u64,
    pub quick: bool,
    pub pin: bool,
    pub out: PathBuf,
}

/// The targets every attack is held to.
const TARGET_RSS_KIB: u64 = 100 * 1024;
const TARGET_DELIVERY_P99_MS: f64 = 50.0;
/// At least 24 sign-ins in 25.
const TARGET_SIGN_INS: (usize, usize) = (24, 25);

/// The server's options: its defaults, plus what the bystanders need.
///
/// - `--max-users`: the default 10, plus one place per bystander, so the
///   attackers and the person find the 10 places a fresh server has.
/// - `--max-connections`: the default for 10 users (56), plus one socket
///   per bystander; `--max-connections-per-ip`: the default for 10 users
///   (28), which the bystanders' 127.0.0.1 stays under. Both are given
///   because their defaults grow with `--max-users`.
/// - `--messages-per-second`: twice a bystander's own rate, and at least
///   the default 10: a client sending at exactly the limit is refused
///   whenever two of its sends arrive a little closer than average, and no
///   attack here sends messages.
///
/// Everything else (request budgets, room limits, new names per address)
/// is the default. Options the binary does not know are left out (older
/// builds); they come back as the second list.
fn server_options(binary: &Path, shape: &Shape, rate: f64) -> (Vec<String>, Vec<String>) {
    let per_sender = rate / shape.senders.max(1) as f64;
    let messages_per_second = ((2.0 * per_sender).ceil() as usize).max(DEFAULT_MESSAGES_PER_SECOND);
    let wanted = [
        ("--max-users", DEFAULT_MAX_USERS + shape.connections),
        (
            "--max-connections",
            default_max_connections(DEFAULT_MAX_USERS) + shape.connections,
        ),
        (
            "--max-connections-per-ip",
            default_max_connections_per_ip(DEFAULT_MAX_USERS),
        ),
        ("--messages-per-second", messages_per_second),
    ];
    let (mut given, mut unknown) = (Vec::new(), Vec::new());
    for (flag, value) in wanted {
        if knows_flag(binary, flag) {
            given.extend([flag.to_string(), value.to_string()]);
        } else {
            unknown.push(flag.to_string());
        }
    }
    (given, unknown)
}

/// Counts by what happened (`sent`, a reply's type or error code, how a
/// connection ended), and time samples, of one kind of attacker.
#[derive(Default, Debug)]
struct Tally {
    counts: BTreeMap<String, u64>,
    samples: Vec<Duration>,
}

impl Tally {
    fn add(&mut self, what: impl Into<String>, n: u64) {
        *self.counts.entry(what.into()).or_default() += n;
    }

    /// Counts how a connection ended (`what` says how), unless the end of
    /// the attack cut it.
    fn ended(&mut self, control: &Control, what: String) {
        if control.running() {
            self.add(what, 1);
        }
    }

    fn count(&self, what: &str) -> u64 {
        self.counts.get(what).copied().unwrap_or(0)
    }

    fn merge(&mut self, other: Tally) {
        for (what, n) in other.counts {
            self.add(what, n);
        }
        self.samples.extend(other.samples);
    }
}

/// What every thread of one attack shares: when to stop, and each
/// socket's second handle, to cut it from outside.
#[derive(Clone)]
struct Control {
    stop: Arc<AtomicBool>,
    until: Instant,
    lines: Arc<Mutex<Vec<Line>>>,
}

/// Where one attacker's current socket can be cut.
#[derive(Clone, Default)]
struct Line(Arc<Mutex<Option<TcpStream>>>);

impl Line {
    /// Remembers the connection's socket; false when the attack is over
    /// (then the caller stops: the cut may have come before this).
    fn hold(&self, conn: &Conn, control: &Control) -> bool {
        if let (Ok(socket), Ok(mut slot)) = (conn.socket(), self.0.lock()) {
            *slot = Some(socket);
        }
        control.running()
    }

    fn cut(&self) {
        if let Ok(mut slot) = self.0.lock()
            && let Some(socket) = slot.take()
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Control {
    fn new(duration: Duration) -> Control {
        Control {
            stop: Arc::new(AtomicBool::new(false)),
            until: Instant::now() + duration,
            lines: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.until
    }

    fn line(&self) -> Line {
        let line = Line::default();
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line.clone());
        }
        line
    }

    /// Sleeps `d`, or less when the attack ends meanwhile.
    fn wait(&self, d: Duration) {
        let end = Instant::now() + d;
        while self.running() && Instant::now() < end {
            std::thread::sleep(end.saturating_duration_since(Instant::now()).min(POLL));
        }
    }

    /// Ends the attack now: every socket is shut down, which also wakes
    /// threads blocked on one.
    fn cut_all(&self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(lines) = self.lines.lock() {
            for line in lines.iter() {
                line.cut();
            }
        }
    }
}

/// A running attack's threads, each returning what it did under a role.
struct Attack {
    control: Control,
    /// Threads that end by themselves (the person's tries): the attack goes
    /// on until they are done.
    awaited: Vec<JoinHandle<(&'static str, Tally)>>,
    threads: Vec<JoinHandle<(&'static str, Tally)>>,
}

impl Attack {
    fn new(duration: Duration) -> Attack {
        Attack {
            control: Control::new(duration),
            awaited: Vec::new(),
            threads: Vec::new(),
        }
    }

    /// Starts an attacker thread at the lowest priority.
    fn spawn(
        &mut self,
        role: &'static str,
        awaited: bool,
        f: impl FnOnce(Control) -> Tally + Send + 'static,
    ) -> Result<(), String> {
        let control = self.control.clone();
        let n = self.awaited.len() + self.threads.len();
        let handle = std::thread::Builder::new()
            .name(format!("{role}-{n}"))
            .stack_size(ATTACKER_STACK)
            .spawn(move || {
                lower_priority();
                (role, f(control))
            })
            .map_err(|e| format!("cannot start an attacker thread: {e}"))?;
        if awaited {
            self.awaited.push(handle);
        } else {
            self.threads.push(handle);
        }
        Ok(())
    }

    /// Waits for the awaited threads, ends the attack, gives its threads
    /// [`GRACE`] to finish, cuts what is left and adds up what they did.
    fn finish(self) -> BTreeMap<&'static str, Tally> {
        let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
        for handle in self.awaited {
            if let Ok((role, tally)) = handle.join() {
                tallies.entry(role).or_default().merge(tally);
            }
        }
        self.control.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.control.cut_all();
        for handle in self.threads {
            if let Ok((role, tally)) = handle.join() {
                tallies.entry(role).or_default().merge(tally);
            }
        }
        tallies
    }
}

/// Runs the calling thread at nice 19 (`renice` takes a thread id on
/// Linux; by hand because the crate forbids the unsafe `setpriority`).
fn lower_priority() {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    if let Some(tid) = link.file_name() {
        let _ = std::process::Command::new("renice")
            .args(["-n", "19", "-p"])
            .arg(tid)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// What a server frame is, for counting: its `type`, or an error's `code`.
/// The type comes first in every server frame, so big pages and room lists
/// are never parsed.
fn label(text: &str) -> String {
    let kind = text
        .strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("unknown");
    if kind != "error" {
        return kind.to_string();
    }
    #[derive(Deserialize)]
    struct ErrorFrame {
        code: String,
    }
    serde_json::from_str::<ErrorFrame>(text).map_or_else(|_| "error".into(), |e| e.code)
}

/// Frames the server sends unasked; everything else answers a request.
fn unasked(label: &str) -> bool {
    matches!(label, "rooms" | "presence" | "message" | "room_deleted")
}

/// The short reason at the end of an error ("... : 503 Service Unavailable").
fn reason(error: &str) -> String {
    error.rsplit(": ").next().unwrap_or(error).to_string()
}

/// Says hello (resuming the session in `resume`, if any) and waits up to
/// `patience` for the answer: the welcome's text, or why not.
fn hello(
    conn: &mut Conn,
    name: &str,
    resume: &mut Option<String>,
    patience: Duration,
) -> Result<String, String> {
    let mut frame = json!({"type": "hello", "username": name});
    if let Some(token) = resume.as_deref() {
        frame["resume"] = json!(token);
    }
    write_text(&conn.writer, frame.to_string()).map_err(|e| format!("write: {}", reason(&e)))?;
    let _ = conn.set_read_timeout(Some(POLL));
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        match conn.read() {
            Ok(Some(Frame::Text(text))) => match label(&text).as_str() {
                "welcome" => {
                    let welcome: Value =
                        serde_json::from_str(&text).map_err(|e| format!("bad welcome: {e}"))?;
                    *resume = welcome["session"].as_str().map(String::from);
                    return Ok(text.to_string());
                }
                kind if unasked(kind) => {}
                code => return Err(code.to_string()),
            },
            Ok(Some(Frame::Closed(why))) => return Err(why),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    Err(format!("no answer in {} s", patience.as_secs()))
}

/// A connection from `from`, signed in as `name`.
fn signed_in(
    addr: SocketAddr,
    from: IpAddr,
    name: &str,
    resume: &mut Option<String>,
) -> Result<Conn, String> {
    let mut conn = Conn::connect_from(addr, from, HANDSHAKE_TIMEOUT)?;
    hello(&mut conn, name, resume, HANDSHAKE_TIMEOUT)?;
    Ok(conn)
}

/// What an attack needs to know about its target.
struct Target {
    addr: SocketAddr,
    tag: String,
    per_ip: usize,
    tries: usize,
    duration: Duration,
}

/// Case 1: each socket has a writer thread that sends pings as fast as
/// the socket takes them and a reader that counts the replies; when time
/// is up the reader waits (within [`GRACE`]) for the last answers.
fn start_pings(target: &Target, sizes: &Sizes) -> Result<Attack, String> {
    // Everyone signs in first: one flooding socket slows the next sign-in.
    let conns = (0..sizes.ping_sockets)
        .map(|i| {
            let name = format!("p{}-{i}", target.tag);
            signed_in(target.addr, ATTACKER_A, &name, &mut None)
                .map_err(|e| format!("case 1: {name} cannot sign in: {e}"))
        })
        .collect::<Result<Vec<Conn>, String>>()?;
    let mut attack = Attack::new(target.duration);
    for mut conn in conns {
        let line = attack.control.line();
        line.hold(&conn, &attack.control);
        let sent = Arc::new(AtomicU64::new(0));
        let writing = Arc::new(AtomicBool::new(true));
        let writer = conn.writer.clone();
        let (sent_w, writing_w) = (sent.clone(), writing.clone());
        attack.spawn("pinger", false, move |control| {
            let mut tally = Tally::default();
            while control.running() {
                if let Err(e) = write_text(&writer, r#"{"type":"ping"}"#.to_string()) {
                    tally.ended(&control, format!("ended: write failed: {}", reason(&e)));
                    break;
                }
                sent_w.fetch_add(1, Ordering::Relaxed);
            }
            tally.add("sent", sent_w.load(Ordering::Relaxed));
            writing_w.store(false, Ordering::Relaxed);
            tally
        })?;
        attack.spawn("pinger", false, move |control| {
            let mut tally = Tally::default();
            let _ = conn.set_read_timeout(Some(POLL));
            let mut answered = 0;
            loop {
                match conn.read() {
                    Ok(Some(Frame::Text(text))) => {
                        let kind = label(&text);
                        if !unasked(&kind) {
                            answered += 1;
                            tally.add(kind, 1);
                        }
                    }
                    Ok(Some(Frame::Closed(why))) => {
                        tally.ended(&control, format!("ended: {why}"));
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tally.ended(&control, format!("ended: {e}"));
                        break;
                    }
                }
                if !writing.load(Ordering::Relaxed) && answered >= sent.load(Ordering::Relaxed) {
                    break;
                }
            }
            tally
        })?;
    }
    Ok(attack)
}

/// Fills `general` through the protocol on a server of its own (limits
/// raised, as the other modes run it), which then stops: any binary can
/// then open the database.
fn fill_general(
    binary: &Path,
    db: &Path,
    log: &Path,
    messages: usize,
    pin: bool,
) -> Result<(), String> {
    let server = ServerProcess::parlor(&ParlorLaunch {
        binary,
        db,
        max_users: 2,
        pin,
        log,
    })?;
    let mut conn = Conn::connect(server.ws_addrs[0])?;
    conn.expect(json!({"type": "hello", "username": "filler"}), "welcome")?;
    conn.expect(json!({"type": "join", "room": "general"}), "joined")?;
    // 🙂 is four bytes in UTF-8: the longest text in bytes Parlor takes.
    let text = "🙂".repeat(MAX_TEXT_CHARS);
    let now = crate::now_ms();
    for i in 0..messages {
        let frame = json!({"type": "send", "id": format!("fill-{i}"), "text": text, "ts": now});
        write_text(&conn.writer, frame.to_string())?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut acks = 0;
    while acks < messages {
        match conn.read()? {
            Some(Frame::Text(text)) => match label(&text).as_str() {
                "ack" => acks += 1,
                kind if unasked(kind) => {}
                other => return Err(format!("filling general: {other}")),
            },
            Some(Frame::Closed(why)) => return Err(format!("filling general: {why}")),
            None if Instant::now() < deadline => {}
            None => return Err(format!("filling general: {acks} of {messages} acked")),
        }
    }
    server.stop();
    Ok(())
}

/// Case 2: sockets that ask for pages of 500 and never read (another
/// burst every second, signing in again when closed), and sockets that ask
/// and read slowly.
fn start_history(target: &Target, sizes: &Sizes) -> Result<Attack, String> {
    let request = json!({"type": "history", "room": "general", "limit": PAGE_LIMIT}).to_string();
    let burst = sizes.history_burst;
    // Everyone signs in first, so the attack starts at once.
    let sign_in = |kind: &str, i: usize, from: IpAddr| {
        let name = format!("{kind}{}-{i}", target.tag);
        let mut resume = None;
        signed_in(target.addr, from, &name, &mut resume)
            .map(|conn| (name, resume, conn))
            .map_err(|e| format!("case 2: cannot sign in: {e}"))
    };
    let unread = (0..sizes.unread_sockets)
        .map(|i| sign_in("u", i, ATTACKER_A))
        .collect::<Result<Vec<_>, String>>()?;
    let slow = (0..sizes.slow_sockets)
        .map(|i| sign_in("s", i, ATTACKER_B))
        .collect::<Result<Vec<_>, String>>()?;
    let mut attack = Attack::new(target.duration);
    for (name, mut resume, first) in unread {
        let (line, addr, request) = (attack.control.line(), target.addr, request.clone());
        attack.spawn("unread", false, move |control| {
            let mut tally = Tally::default();
            let mut conn = Some(first);
            let mut opens = 0;
            while control.running() && opens < MAX_OPENS {
                let Some(c) = &conn else {
                    opens += 1;
                    match signed_in(addr, ATTACKER_A, &name, &mut resume) {
                        Ok(c) => {
                            tally.add("signed in again", 1);
                            conn = Some(c);
                        }
                        Err(e) => {
                            tally.add(format!("sign-in refused: {e}"), 1);
                            control.wait(REFUSED_PAUSE);
                        }
                    }
                    continue;
                };
                if !line.hold(c, &control) {
                    break;
                }
                let mut broken = false;
                for _ in 0..burst {
                    match write_text(&c.writer, request.clone()) {
                        Ok(()) => tally.add("sent", 1),
                        Err(e) => {
                            tally.ended(&control, format!("ended: write failed: {}", reason(&e)));
                            broken = true;
                            break;
                        }
                    }
                }
                if broken {
                    conn = None;
                } else {
                    control.wait(Duration::from_secs(1));
                }
            }
            tally
        })?;
    }
    for (name, mut resume, first) in slow {
        let (line, addr, request) = (attack.control.line(), target.addr, request.clone());
        attack.spawn("slow reader", false, move |control| {
            let mut tally = Tally::default();
            let mut conn = Some(first);
            let mut opens = 0;
            while control.running() && opens < MAX_OPENS {
                let mut c = match conn.take() {
                    Some(c) => c,
                    None => {
                        opens += 1;
                        match signed_in(addr, ATTACKER_B, &name, &mut resume) {
                            Ok(c) => {
                                tally.add("signed in again", 1);
                                c
                            }
                            Err(e) => {
                                tally.add(format!("sign-in refused: {e}"), 1);
                                control.wait(REFUSED_PAUSE);
                                continue;
                            }
                        }
                    }
                };
                if !line.hold(&c, &control) {
                    break;
                }
                c.pace_reads(SLOW_BYTES_PER_S);
                let _ = c.set_read_timeout(Some(POLL));
                for _ in 0..burst {
                    if write_text(&c.writer, request.clone()).is_err() {
                        break;
                    }
                    tally.add("sent", 1);
                }
                while control.running() {
                    match c.read() {
                        Ok(Some(Frame::Text(text))) => {
                            let kind = label(&text);
                            if !unasked(&kind) {
                                tally.add(kind, 1);
                            }
                        }
                        Ok(Some(Frame::Closed(why))) => {
                            tally.ended(&control, format!("ended: {why}"));
                            break;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tally.ended(&control, format!("ended: {e}"));
                            break;
                        }
                    }
                }
                tally.add("bytes read", c.paced_bytes());
            }
            tally
        })?;
    }
    Ok(attack)
}

/// Case 5: every socket the per-address cap allows, from two addresses,
/// handshaken and silent, each reopened as soon as it is closed; and a
/// person who signs in `tries` times, evenly over the attack, each time on
/// a new connection (resuming the last session, so that one that has not
/// ended yet does not make the name look taken).
fn start_crowd(target: &Target, sizes: &Sizes) -> Result<Attack, String> {
    let mut attack = Attack::new(target.duration);
    for from in [ATTACKER_A, ATTACKER_B] {
        for _ in 0..target.per_ip {
            let (line, addr) = (attack.control.line(), target.addr);
            attack.spawn("crowd", false, move |control| {
                let mut tally = Tally::default();
                let mut opens = 0;
                while control.running() && opens < MAX_OPENS {
                    opens += 1;
                    let mut conn = match Conn::connect_from(addr, from, HANDSHAKE_TIMEOUT) {
                        Ok(conn) => conn,
                        Err(e) => {
                            tally.add(format!("refused: {}", reason(&e)), 1);
                            control.wait(REFUSED_PAUSE);
                            continue;
                        }
                    };
                    tally.add("opened", 1);
                    if !line.hold(&conn, &control) {
                        break;
                    }
                    let _ = conn.set_read_timeout(Some(POLL));
                    while control.running() {
                        match conn.read() {
                            Ok(Some(Frame::Text(text))) => tally.add(label(&text), 1),
                            Ok(Some(Frame::Closed(why))) => {
                                tally.ended(
                                    &control,
                                    format!("closed by the server: {}", reason(&why)),
                                );
                                break;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tally.ended(
                                    &control,
                                    format!("closed by the server: {}", reason(&e)),
                                );
                                break;
                            }
                        }
                    }
                }
                tally
            })?;
        }
    }
    let (addr, tries, name) = (target.addr, target.tries, format!("person{}", target.tag));
    let head_start = sizes.head_start.min(target.duration / 2);
    let every = target.duration.saturating_sub(head_start) / tries.max(1) as u32;
    attack.spawn("person", true, move |_| {
        let mut tally = Tally::default();
        let start = Instant::now() + head_start;
        let mut resume = None;
        for k in 0..tries {
            let at = start + every * k as u32;
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            tally.add("tries", 1);
            let began = Instant::now();
            let outcome = Conn::connect_from(addr, PERSON, PATIENCE)
                .map_err(|e| format!("no handshake: {}", reason(&e)))
                .and_then(|mut conn| {
                    let welcome = hello(&mut conn, &name, &mut resume, PATIENCE);
                    if let Ok(socket) = conn.socket() {
                        let _ = socket.shutdown(Shutdown::Both);
                    }
                    welcome
                });
            match outcome {
                Ok(_) => {
                    tally.add("welcome", 1);
                    tally.samples.push(began.elapsed());
                }
                Err(e) => tally.add(format!("failed: {e}"), 1),
            }
        }
        tally
    })?;
    Ok(attack)
}

/// A room name of exactly [`MAX_ROOM_CHARS`] characters.
fn long_room_name(prefix: &str, n: u64) -> String {
    let mut name = format!("{prefix}-{n:06}-");
    while name.chars().count() < MAX_ROOM_CHARS {
        name.push('x');
    }
    name
}

/// How long a refused room change waits: what the server asked, or a
/// second when it did not say.
fn retry_after(reply: &Value) -> Duration {
    Duration::from_millis(reply["retry_after_ms"].as_u64().unwrap_or(1000))
}

/// Case 7: one user creates rooms as fast as the server allows, another
/// creates a room and deletes it, over and over. Each waits for every
/// reply, and when refused waits as long as the server says.
fn start_rooms(target: &Target) -> Result<Attack, String> {
    let sign_in = |name: String| {
        signed_in(target.addr, ATTACKER_A, &name, &mut None)
            .map_err(|e| format!("case 7: {name} cannot sign in: {e}"))
    };
    let mut conn = sign_in(format!("c{}", target.tag))?;
    let mut cycler_conn = sign_in(format!("d{}", target.tag))?;
    let mut attack = Attack::new(target.duration);
    attack.control.line().hold(&conn, &attack.control);
    let prefix = format!("flood{}", target.tag);
    attack.spawn("creator", false, move |control| {
        let mut tally = Tally::default();
        let mut n = 0;
        while control.running() {
            n += 1;
            let frame = json!({"type": "create_room", "room": long_room_name(&prefix, n)});
            tally.add("sent", 1);
            match conn.request(frame) {
                Ok((reply, _)) if reply["type"] == "rooms" => tally.add("created", 1),
                Ok((reply, _)) => {
                    let code = reply["code"].as_str().unwrap_or("unknown").to_string();
                    tally.add(code, 1);
                    control.wait(retry_after(&reply));
                }
                Err(e) => {
                    tally.ended(&control, format!("ended: {e}"));
                    break;
                }
            }
        }
        tally
    })?;
    attack.control.line().hold(&cycler_conn, &attack.control);
    let prefix = format!("cycle{}", target.tag);
    attack.spawn("cycler", false, move |control| {
        let mut tally = Tally::default();
        let mut n = 0;
        let mut live: Option<String> = None;
        while control.running() {
            let (verb, frame) = match &live {
                Some(room) => ("delete", json!({"type": "delete_room", "room": room})),
                None => {
                    n += 1;
                    let room = long_room_name(&prefix, n);
                    ("create", json!({"type": "create_room", "room": room}))
                }
            };
            tally.add(format!("{verb} sent"), 1);
            match cycler_conn.request(frame.clone()) {
                Ok((reply, _)) if reply["type"] == "rooms" => {
                    if live.take().is_some() {
                        tally.add("deleted", 1);
                    } else {
                        tally.add("created", 1);
                        live = frame["room"].as_str().map(String::from);
                    }
                }
                Ok((reply, _)) => {
                    let code = reply["code"].as_str().unwrap_or("unknown");
                    tally.add(format!("{verb} {code}"), 1);
                    control.wait(retry_after(&reply));
                }
                Err(e) => {
                    tally.ended(&control, format!("ended: {e}"));
                    break;
                }
            }
        }
        tally
    })?;
    Ok(attack)
}

/// The rooms a new sign-in from `from` sees, and its welcome's size.
fn room_census(
    addr: SocketAddr,
    from: IpAddr,
    name: &str,
    resume: &mut Option<String>,
) -> Result<(usize, usize), String> {
    let mut conn = Conn::connect_from(addr, from, HANDSHAKE_TIMEOUT)?;
    let text = hello(&mut conn, name, resume, Duration::from_secs(30))?;
    let welcome: Value = serde_json::from_str(&text).map_err(|e| format!("bad welcome: {e}"))?;
    let rooms = welcome["rooms"].as_array().map_or(0, Vec::len);
    if let Ok(socket) = conn.socket() {
        let _ = socket.shutdown(Shutdown::Both);
    }
    Ok((rooms, text.len()))
}

/// What the memory watcher saw.
struct Watched {
    highest_kib: u64,
    /// When the server passed the limit and the attack was cut off.
    cut_at: Option<Duration>,
    /// When it passed twice the limit and was killed.
    killed_at: Option<Duration>,
}

/// Watches the server's memory during an attack: past the limit it ends
/// the attack; past twice the limit (a server may go on growing with the
/// requests it has already taken) it kills the server, for the machine's
/// sake.
fn watch(
    pid: u32,
    limit_kib: u64,
    control: Control,
    done: Arc<AtomicBool>,
) -> Result<JoinHandle<Watched>, String> {
    std::thread::Builder::new()
        .name("rss-watch".into())
        .spawn(move || {
            let started = Instant::now();
            let mut seen = Watched {
                highest_kib: 0,
                cut_at: None,
                killed_at: None,
            };
            while !done.load(Ordering::Relaxed) {
                if let Some(m) = Memory::of(pid) {
                    seen.highest_kib = seen.highest_kib.max(m.rss_kib);
                    if m.rss_kib > limit_kib && seen.cut_at.is_none() {
                        seen.cut_at = Some(started.elapsed());
                        control.cut_all();
                    }
                    if m.rss_kib > limit_kib.saturating_mul(2) && seen.killed_at.is_none() {
                        seen.killed_at = Some(started.elapsed());
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status();
                    }
                }
                std::thread::sleep(WATCH_EVERY);
            }
            seen
        })
        .map_err(|e| format!("cannot start a thread: {e}"))
}

/// What one case measured.
struct Outcome {
    case: Case,
    rss_before: Option<Memory>,
    rss_peak_kib: Option<u64>,
    rss_highest_sampled_kib: u64,
    rss_after: Option<Memory>,
    stopped_at: Option<Duration>,
    killed_at: Option<Duration>,
    tallies: BTreeMap<&'static str, Tally>,
    rooms: Option<Value>,
    step: StepResult,
}

impl Outcome {
    fn sign_ins(&self) -> Option<(usize, usize)> {
        let person = self.tallies.get("person")?;
        Some((
            person.count("welcome") as usize,
            person.count("tries") as usize,
        ))
    }

    fn rss_held(&self) -> Option<bool> {
        Some(self.rss_peak_kib? < TARGET_RSS_KIB && self.stopped_at.is_none())
    }

    /// A lost delivery counts as a late one.
    fn delivery_held(&self) -> bool {
        self.step.lost == 0 && self.step.delivery.p99 < TARGET_DELIVERY_P99_MS
    }

    fn sign_ins_held(&self) -> Option<bool> {
        let (welcomed, tries) = self.sign_ins()?;
        let (need, of) = TARGET_SIGN_INS;
        Some(tries > 0 && welcomed * of >= need * tries)
    }

    fn to_json(&self, description: &str) -> Value {
        let attackers: serde_json::Map<String, Value> = self
            .tallies
            .iter()
            .map(|(role, tally)| {
                let mut counts = json!(tally.counts);
                if let Some(n) = unanswered(tally) {
                    counts["unanswered"] = json!(n);
                }
                if !tally.samples.is_empty() {
                    counts["time"] = Summary::of_durations(&tally.samples).to_json();
                }
                (role.to_string(), counts)
            })
            .collect();
        json!({
            "case": self.case.number(),
            "name": self.case.name(),
            "what": description,
            "stopped_at_rss_limit_after_s": self.stopped_at.map(|d| round3(d.as_secs_f64())),
            "server_killed_at_twice_rss_limit_after_s": self.killed_at.map(|d| round3(d.as_secs_f64())),
            "server_rss_kib": {
                "before": self.rss_before.map(|m| m.rss_kib),
                "peak": self.rss_peak_kib,
                "highest_sampled": self.rss_highest_sampled_kib,
                "after_attack": self.rss_after.map(|m| m.rss_kib),
            },
            "attackers": attackers,
            "rooms": self.rooms,
            "bystanders": self.step.to_json(),
            "targets": {
                "rss_under_100_mib": self.rss_held(),
                "delivery_p99_under_50_ms_nothing_lost": self.delivery_held(),
                "sign_ins_24_of_25": self.sign_ins_held(),
            },
        })
    }
}

/// Requests still unanswered when the attack ended: those sent minus the
/// answers read (None for attackers that count no requests).
fn unanswered(tally: &Tally) -> Option<u64> {
    let sent = tally.counts.get("sent")?;
    let answered: u64 = tally
        .counts
        .iter()
        .filter(|(k, _)| is_answer(k))
        .map(|(_, n)| n)
        .sum();
    Some(sent.saturating_sub(answered))
}

/// Counts that are answers to requests (not what was sent, how a
/// connection ended, or bytes).
fn is_answer(what: &str) -> bool {
    !(what == "sent"
        || what == "bytes read"
        || what == "signed in again"
        || what.starts_with("ended: ")
        || what.starts_with("sign-in refused: "))
}

/// Runs every case in turn, each on a fresh server, and reports.
pub fn run(options: &AbuseOptions) -> Result<Value, String> {
    if options.bystanders.connections > DEFAULT_NEW_USERS_PER_IP_PER_HOUR {
        return Err(format!(
            "abuse: at most {DEFAULT_NEW_USERS_PER_IP_PER_HOUR} bystanders (all are new names from 127.0.0.1, \
             and the server's default lets one address sign in that many new names an hour)"
        ));
    }
    std::fs::create_dir_all(&options.out)
        .map_err(|e| format!("cannot create {}: {e}", options.out.display()))?;
    let sizes = Sizes::new(options.quick);
    let (server_flags, unknown) =
        server_options(&options.binary, &options.bystanders, options.rate);
    let per_ip = default_max_connections_per_ip(DEFAULT_MAX_USERS);
    println!(
        "abuse: {} bystanders in {} room(s) send {:.0} messages/s in all from 127.0.0.1; each attack runs {:.1} s \
         on a fresh server with its defaults and {}{}",
        options.bystanders.connections,
        options.bystanders.rooms,
        options.rate,
        options.duration.as_secs_f64(),
        server_flags.join(" "),
        if unknown.is_empty() {
            String::new()
        } else {
            format!(" (the binary does not know {})", unknown.join(", "))
        }
    );
    let mut outcomes = Vec::new();
    let mut cases_json = Vec::new();
    for &case in &options.cases {
        let description = case.describe(&sizes, per_ip, options.tries);
        println!(
            "\n== case {} ({}): {description}",
            case.number(),
            case.name()
        );
        let outcome = run_case(case, options, &sizes, &server_flags, per_ip)?;
        print_outcome(&outcome);
        cases_json.push(outcome.to_json(&description));
        outcomes.push(outcome);
    }
    print_summary(&outcomes);
    Ok(json!({
        "binary": options.binary.display().to_string(),
        "server_options": server_flags,
        "server_options_unknown_to_binary": unknown,
        "bystanders": options.bystanders.to_json(),
        "rate_msgs_per_s": options.rate,
        "duration_s": options.duration.as_secs_f64(),
        "rss_limit_kib": options.rss_limit_kib,
        "cases": cases_json,
    }))
}

fn run_case(
    case: Case,
    options: &AbuseOptions,
    sizes: &Sizes,
    server_flags: &[String],
    per_ip: usize,
) -> Result<Outcome, String> {
    let dir = TempDir::new("abuse").map_err(|e| format!("temp dir: {e}"))?;
    let db = dir.path().join("parlor.db");
    let log = options
        .out
        .join(format!("abuse-case{}-server.log", case.number()));
    if case == Case::History {
        let fill_log = dir.path().join("fill.log");
        fill_general(
            &options.binary,
            &db,
            &fill_log,
            sizes.fill_messages,
            options.pin,
        )?;
    }
    let launch = ParlorLaunch {
        binary: &options.binary,
        db: &db,
        max_users: DEFAULT_MAX_USERS + options.bystanders.connections,
        pin: options.pin,
        log: &log,
    };
    let server = ServerProcess::parlor_with(&launch, server_flags)?;
    let mut fleet = Fleet::open(&options.bystanders, &server.ws_addrs)?;
    crate::settle(Some(&server));
    let rss_before = server.memory();
    let target = Target {
        addr: server.ws_addrs[0],
        tag: crate::nonce(),
        per_ip,
        tries: options.tries,
        duration: options.duration,
    };
    let observer = format!("o{}", target.tag);
    let mut observer_session = None;
    let rooms_before = match case {
        Case::Rooms => Some(room_census(
            target.addr,
            ATTACKER_A,
            &observer,
            &mut observer_session,
        )?),
        _ => None,
    };
    let attack = match case {
        Case::None => Attack::new(options.duration),
        Case::Pings => start_pings(&target, sizes)?,
        Case::History => start_history(&target, sizes)?,
        Case::Crowd => start_crowd(&target, sizes)?,
        Case::Rooms => start_rooms(&target)?,
    };
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch(
        server.pid,
        options.rss_limit_kib,
        attack.control.clone(),
        done.clone(),
    )?;
    let step = fleet.step(options.rate, options.duration, options.drain, Some(&server))?;
    let tallies = attack.finish();
    done.store(true, Ordering::Relaxed);
    let watched = watcher
        .join()
        .map_err(|_| "the memory watcher panicked".to_string())?;
    let rooms = rooms_before.map(|(before, welcome_before)| {
        // A server killed for its memory has no rooms to count.
        let after = room_census(target.addr, ATTACKER_A, &observer, &mut observer_session).ok();
        json!({
            "before": before,
            "after": after.map(|a| a.0),
            "welcome_bytes_before": welcome_before,
            "welcome_bytes_after": after.map(|a| a.1),
        })
    });
    std::thread::sleep(sizes.after);
    let rss_after = server.memory();
    // A killed server has no peak to read any more: the highest seen.
    let rss_peak_kib =
        rss_after.map_or(watched.highest_kib, |m| m.peak_kib.max(watched.highest_kib));
    fleet.close();
    server.stop();
    Ok(Outcome {
        case,
        rss_before,
        rss_peak_kib: Some(rss_peak_kib),
        rss_highest_sampled_kib: watched.highest_kib,
        rss_after,
        stopped_at: watched.cut_at,
        killed_at: watched.killed_at,
        tallies,
        rooms,
        step,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn held(ok: bool) -> &'static str {
    if ok { "held" } else { "MISSED" }
}

fn print_outcome(o: &Outcome) {
    for (role, tally) in &o.tallies {
        let mut parts: Vec<String> = tally
            .counts
            .iter()
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        if let Some(n) = unanswered(tally) {
            parts.push(format!("unanswered {n}"));
        }
        if !tally.samples.is_empty() {
            let s = Summary::of_durations(&tally.samples);
            parts.push(format!(
                "sign-in time p50 {:.1} ms, max {:.1} ms",
                s.p50, s.max
            ));
        }
        println!("  {role:<12} {}", parts.join(", "));
    }
    if let Some(rooms) = &o.rooms {
        println!(
            "  rooms        {} before, {} after; a sign-in's welcome {} bytes before, {} after",
            rooms["before"],
            rooms["after"],
            rooms["welcome_bytes_before"],
            rooms["welcome_bytes_after"]
        );
    }
    if let Some(at) = o.stopped_at {
        println!(
            "  STOPPED      the server passed --rss-limit {:.1} s into the attack; the attackers were cut off",
            at.as_secs_f64()
        );
    }
    if let Some(at) = o.killed_at {
        println!(
            "  KILLED       the server passed twice --rss-limit {:.1} s into the attack",
            at.as_secs_f64()
        );
    }
    println!(
        "  server RSS   before {}, peak {}, after the attack {}",
        o.rss_before.map_or("-".into(), |m| mib(m.rss_kib)),
        o.rss_peak_kib.map_or("-".into(), mib),
        o.rss_after.map_or("-".into(), |m| mib(m.rss_kib)),
    );
    crate::report::print_step("  bystanders:", &o.step);
}

/// "p50/p99 ms", or "none" when nothing arrived.
fn p50_p99(s: &Summary) -> String {
    if s.count == 0 {
        "none".into()
    } else {
        format!("{:.2}/{:.2} ms", s.p50, s.p99)
    }
}

fn print_summary(outcomes: &[Outcome]) {
    println!(
        "\n== summary (targets: peak RSS < 100 MiB; bystanders' delivery p99 < 50 ms with nothing lost; \
         a person signs in >= 24 times in 25)\n  \
         lost: deliveries that never came, those of refused sends included; \
         refused: bystanders' sends answered with an error"
    );
    println!(
        "  {:<14} {:>10} {:>10} {:>19} {:>19} {:>6} {:>7} {:>9}  targets",
        "case",
        "RSS before",
        "peak RSS",
        "delivery p50/p99",
        "ack p50/p99",
        "lost",
        "refused",
        "sign-ins"
    );
    for o in outcomes {
        let mut verdicts = Vec::new();
        if let Some(ok) = o.rss_held() {
            verdicts.push(format!("RSS {}", held(ok)));
        }
        verdicts.push(format!("p99 {}", held(o.delivery_held())));
        if let Some(ok) = o.sign_ins_held() {
            verdicts.push(format!("sign-ins {}", held(ok)));
        }
        println!(
            "  {:<14} {:>10} {:>10} {:>19} {:>19} {:>6} {:>7} {:>9}  {}",
            format!("{} {}", o.case.number(), o.case.name()),
            o.rss_before.map_or("-".into(), |m| mib(m.rss_kib)),
            o.rss_peak_kib.map_or("-".into(), mib),
            p50_p99(&o.step.delivery),
            p50_p99(&o.step.ack),
            o.step.lost,
            o.step.errors.values().sum::<u64>(),
            o.sign_ins().map_or("-".into(), |(w, t)| format!("{w}/{t}")),
            verdicts.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_labelled_by_type_or_error_code() {
        assert_eq!(label(r#"{"type":"pong"}"#), "pong");
        assert_eq!(
            label(
                r#"{"type":"error","code":"rate_limited","message":"Wait.","retry_after_ms":40}"#
            ),
            "rate_limited"
        );
        assert_eq!(label(r#"{"type":"history","messages":[]}"#), "history");
        assert_eq!(label("not json"), "unknown");
        assert!(unasked("rooms") && !unasked("pong"));
    }

    #[test]
    fn room_names_are_as_long_as_allowed() {
        let name = long_room_name("flood1a2b3c", 42);
        assert_eq!(name.chars().count(), MAX_ROOM_CHARS);
        assert!(name.starts_with("flood1a2b3c-000042-"));
    }

    #[test]
    fn unanswered_is_sent_less_every_answer() {
        let mut tally = Tally::default();
        tally.add("sent", 10);
        tally.add("pong", 3);
        tally.add("rate_limited", 5);
        tally.add("ended: closed", 1);
        tally.add("bytes read", 900);
        assert_eq!(unanswered(&tally), Some(2));
        assert_eq!(unanswered(&Tally::default()), None);
    }
}
