//! `parlor-bench`: the load generator and benchmark for Parlor, and, with
//! `--protocol raw`, for any plain broadcast WebSocket relay, so Parlor can
//! be compared in the same run on the same machine.
//!
//! Threads only, no async runtime: each client connection has a reader
//! thread, and one scheduler thread writes every send at its intended time
//! (open loop). When it starts the servers itself (`--spawn`, `--relay`) it
//! pins them to core 1 and itself to core 0 with `taskset`, so the
//! generator and the server do not compete for a core. Every run prints a
//! table and writes JSON under `target/bench/`.

#![forbid(unsafe_code)]

mod abuse;
mod client;
mod history;
mod load;
mod report;
mod server;
mod stats;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use lexopt::Arg;
// Parlor's clock (message timestamps are its milliseconds), for every module.
use parlor::protocol::now_ms;
use serde_json::{Value, json};

use load::{Fleet, Protocol, Shape, StepResult};
use server::{ParlorLaunch, ServerProcess, TempDir};

const USAGE: &str = "\
parlor-bench: load generator and benchmark for Parlor.

Usage:
  parlor-bench fanout  [TARGET] [LOAD] [OPTIONS]
  parlor-bench sweep   [TARGET] [LOAD] [SWEEP] [OPTIONS]
  parlor-bench history --spawn PATH [HISTORY] [OPTIONS]
  parlor-bench abuse   --spawn PATH [LOAD] [ABUSE] [OPTIONS]

fanout: N connections over R rooms, S of them sending at a fixed total rate,
  open loop; reports deliveries expected/received/duplicated/lost, delivery
  and ack latency percentiles, deliveries/s, and for spawned servers their CPU
  per million deliveries and RSS.
sweep: raises the rate step by step until delivery p99 exceeds the limit or
  anything is lost; reports the highest passing rate.
history: builds a database with a big room through Parlor's store, starts
  parlor on it and measures start-up, joins, pages, catch-up, room switches.
abuse: runs attacks in turn, each --duration long against a fresh parlor
  with its default limits (room made only for the bystanders), while the
  LOAD (default: 10 users in one room, 100 messages/s) chats from 127.0.0.1;
  reports the server's RSS before and at peak, the bystanders' latency and
  losses, and in case 5 how often a person signs in.

TARGET (one or more; each is measured in turn, in this order):
  --spawn PATH          start this parlor binary (127.0.0.1, port 0, temp db,
                        limits raised)
  --relay SCRIPT        start `node SCRIPT --rooms R` (bench/relay.js), a plain
                        broadcast relay with one server per room; raw protocol
  --ws ADDR[,ADDR...]   an already running server (raw: one address per room)
  --protocol P          parlor (default) or raw, for --ws
  --node PATH           Node.js binary for --relay (default node)

LOAD:
  --connections N       clients, each its own user (default 10)
  --rooms R             rooms; client i joins room i mod R (default 1)
  --senders S           the first S clients send (default: all)
  --rate MSGS           messages per second in total (default 100)
  --duration SECS       sending time (default 10)
  --drain SECS          wait this long at most for the last deliveries
                        (default 5; sweep 2)
  --text-bytes N        padding per message text (default 40)
  --stall SECS          the last client (not a sender) stops reading this
                        long after the load starts
  --stall-for SECS      ... and reads again after this long (default: at
                        the end of the run)

SWEEP:
  --from MSGS           first rate (default 100)
  --factor F            next rate = rate * F while passing (default 1.5)
  --max-rate MSGS       stop here (default 100000)
  --refine K            bisect between the last pass and the first fail K
                        times (default 2)
  --p99-limit MS        delivery p99 that still passes (default 50)
  --retries N           run a step that failed on latency alone (nothing
                        lost) again up to N times (default 1)

HISTORY:
  --messages N          messages in the big room (default 1000000)
  --catch-up N          since_seq catch-up size (default 10000)
  --reps N              repetitions per measurement (default 200)
  --startups N          server starts to time (default 5)
  --rebuild             rebuild the cached database

ABUSE (attackers come from 127.0.0.2 and 127.0.0.3, the person from 127.0.0.4):
  --cases LIST          which, in this order (default 0,1,2,5,7):
                        0 none: the bystanders alone, for comparison
                        1 pings: 10 signed-in sockets flood pings
                        2 history: pages of 500 big messages, unread or
                          read slowly
                        5 crowd: two addresses hold every socket they may
                          and never say hello; a person signs in
                        7 rooms: rooms created as fast as allowed, and a
                          create/delete loop
  --tries N             the person's sign-in tries in case 5 (default 25)
  --rss-limit MIB       cut an attack off when the server's RSS passes this
                        (default 1024) and kill the server at twice this,
                        for the machine's sake

OPTIONS:
  --out DIR             JSON output directory (default target/bench)
  --no-pin              do not pin generator and servers to cores
  --quick               a tiny, short run (for the integration test)
  -h, --help            this help
";

/// A random-enough tag that keeps names of different runs apart.
pub fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9e37_79b9, Ordering::Relaxed);
    // splitmix64's finalizer spreads the bits.
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    format!("{:06x}", x & 0xff_ffff)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    Fanout,
    Sweep,
    History,
    Abuse,
}

/// A server to measure.
enum Subject {
    Spawn(PathBuf),
    Relay(PathBuf),
    Connect(Protocol, Vec<SocketAddr>),
}

struct Options {
    command: Command,
    subjects: Vec<Subject>,
    node: String,
    connections: usize,
    rooms: usize,
    senders: Option<usize>,
    rate: f64,
    duration: f64,
    drain: Option<f64>,
    text_bytes: usize,
    stall: Option<f64>,
    stall_for: Option<f64>,
    from: f64,
    factor: f64,
    max_rate: f64,
    refine: u32,
    retries: u32,
    p99_limit: f64,
    messages: usize,
    catch_up: usize,
    reps: usize,
    startups: usize,
    rebuild: bool,
    cases: Vec<abuse::Case>,
    tries: usize,
    rss_limit_mib: u64,
    quick: bool,
    out: PathBuf,
    pin: bool,
}

fn parse_args(args: Vec<OsString>) -> Result<Option<Options>, String> {
    // --quick changes the default of every flag not given, wherever it
    // stands, so look for it before parsing.
    let quick = args.iter().any(|a| a == "--quick");
    let mut parser = lexopt::Parser::from_args(args);
    let command = match next(&mut parser)? {
        None | Some(Arg::Short('h') | Arg::Long("help")) => return Ok(None),
        Some(Arg::Value(word)) if word == "fanout" => Command::Fanout,
        Some(Arg::Value(word)) if word == "sweep" => Command::Sweep,
        Some(Arg::Value(word)) if word == "history" => Command::History,
        Some(Arg::Value(word)) if word == "abuse" => Command::Abuse,
        Some(Arg::Value(word)) => return Err(format!("unknown command {word:?} (see --help)")),
        Some(_) => {
            return Err("the command comes first: fanout, sweep, history or abuse".into());
        }
    };
    let mut o = Options {
        command,
        subjects: Vec::new(),
        node: "node".into(),
        connections: if quick { 6 } else { 10 },
        rooms: if quick { 2 } else { 1 },
        senders: None,
        rate: if quick { 40.0 } else { 100.0 },
        // Each attack needs time to build up.
        duration: match (command, quick) {
            (Command::Abuse, false) => 20.0,
            (Command::Abuse, true) => 1.5,
            (_, false) => 10.0,
            (_, true) => 1.0,
        },
        drain: None,
        text_bytes: 40,
        stall: None,
        stall_for: None,
        from: if quick { 20.0 } else { 100.0 },
        factor: if quick { 2.0 } else { 1.5 },
        max_rate: if quick { 40.0 } else { 100_000.0 },
        refine: if quick { 0 } else { 2 },
        retries: if quick { 0 } else { 1 },
        p99_limit: 50.0,
        messages: if quick { 20_000 } else { 1_000_000 },
        catch_up: if quick { 1_000 } else { 10_000 },
        reps: if quick { 10 } else { 200 },
        startups: if quick { 2 } else { 5 },
        rebuild: false,
        cases: abuse::Case::ALL.to_vec(),
        tries: if quick { 5 } else { 25 },
        rss_limit_mib: 1024,
        quick,
        out: PathBuf::from("target/bench"),
        pin: !quick,
    };
    let mut protocol = Protocol::Parlor;
    let mut ws: Option<Vec<SocketAddr>> = None;
    while let Some(arg) = next(&mut parser)? {
        let flag = match arg {
            Arg::Long(name) => format!("--{name}"),
            Arg::Short(letter) => format!("-{letter}"),
            Arg::Value(word) => return Err(format!("unknown argument {word:?} (see --help)")),
        };
        match flag.as_str() {
            "--spawn" => o.subjects.push(Subject::Spawn(path(&mut parser, &flag)?)),
            "--relay" => o.subjects.push(Subject::Relay(path(&mut parser, &flag)?)),
            "--ws" => {
                let addrs = value(&mut parser, &flag)?
                    .split(',')
                    .map(|a| a.trim_start_matches("ws://").trim_end_matches('/').parse())
                    .collect::<Result<Vec<SocketAddr>, _>>()
                    .map_err(|e| format!("--ws: {e}"))?;
                ws = Some(addrs);
            }
            "--protocol" => {
                protocol = match value(&mut parser, &flag)?.as_str() {
                    "parlor" => Protocol::Parlor,
                    "raw" => Protocol::Raw,
                    other => return Err(format!("--protocol is parlor or raw, not {other:?}")),
                }
            }
            "--node" => o.node = value(&mut parser, &flag)?,
            "--connections" => o.connections = number(&mut parser, &flag)?,
            "--rooms" => o.rooms = number(&mut parser, &flag)?,
            "--senders" => o.senders = Some(number(&mut parser, &flag)?),
            "--rate" => o.rate = positive(&mut parser, &flag)?,
            "--duration" => o.duration = positive(&mut parser, &flag)?,
            "--drain" => o.drain = Some(positive(&mut parser, &flag)?),
            "--text-bytes" => o.text_bytes = whole(&mut parser, &flag)?,
            "--stall" => o.stall = Some(positive(&mut parser, &flag)?),
            "--stall-for" => o.stall_for = Some(positive(&mut parser, &flag)?),
            "--from" => o.from = positive(&mut parser, &flag)?,
            "--factor" => o.factor = positive(&mut parser, &flag)?,
            "--max-rate" => o.max_rate = positive(&mut parser, &flag)?,
            "--refine" => o.refine = whole(&mut parser, &flag)?,
            "--retries" => o.retries = whole(&mut parser, &flag)?,
            "--p99-limit" => o.p99_limit = positive(&mut parser, &flag)?,
            "--messages" => o.messages = number(&mut parser, &flag)?,
            "--catch-up" => o.catch_up = number(&mut parser, &flag)?,
            "--reps" => o.reps = number(&mut parser, &flag)?,
            "--startups" => o.startups = number(&mut parser, &flag)?,
            "--rebuild" => o.rebuild = true,
            "--cases" => {
                o.cases = value(&mut parser, &flag)?
                    .split(',')
                    .map(|word| abuse::Case::parse(word.trim()))
                    .collect::<Result<_, _>>()?;
            }
            "--tries" => o.tries = number(&mut parser, &flag)?,
            "--rss-limit" => o.rss_limit_mib = number(&mut parser, &flag)? as u64,
            "--out" => o.out = path(&mut parser, &flag)?,
            "--no-pin" => o.pin = false,
            "--quick" => {}
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if let Some(addrs) = ws {
        o.subjects.push(Subject::Connect(protocol, addrs));
    }
    if o.subjects.is_empty() {
        return Err("say what to measure: --spawn PATH, --relay SCRIPT or --ws ADDR".into());
    }
    if o.factor <= 1.0 {
        return Err("--factor must be above 1".into());
    }
    if command == Command::History && !matches!(o.subjects.as_slice(), [Subject::Spawn(_)]) {
        return Err("history needs exactly --spawn PATH (it builds the database itself)".into());
    }
    if command == Command::Abuse && !matches!(o.subjects.as_slice(), [Subject::Spawn(_)]) {
        return Err("abuse needs exactly --spawn PATH (it starts a server per attack)".into());
    }
    Ok(Some(o))
}

/// The next argument; a value given to a flag that takes none
/// (`--rebuild=yes`) is an error.
fn next(parser: &mut lexopt::Parser) -> Result<Option<Arg<'_>>, String> {
    parser.next().map_err(|e| match e {
        lexopt::Error::UnexpectedValue { option, .. } => format!("{option} takes no value"),
        e => e.to_string(),
    })
}

/// The value of `flag`, given as `flag VALUE` or `flag=VALUE`.
fn value(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    parser
        .value()
        .map_err(|_| format!("{flag} needs a value"))?
        .into_string()
        .map_err(|raw| format!("{flag} must be valid UTF-8, not {raw:?}"))
}

/// The value of `flag` as a path, which need not be UTF-8.
fn path(parser: &mut lexopt::Parser, flag: &str) -> Result<PathBuf, String> {
    parser
        .value()
        .map(PathBuf::from)
        .map_err(|_| format!("{flag} needs a value"))
}

/// The value of `flag` as a whole number, zero included.
fn whole<T: FromStr>(parser: &mut lexopt::Parser, flag: &str) -> Result<T, String> {
    let raw = value(parser, flag)?;
    raw.parse()
        .map_err(|_| format!("{flag} must be a whole number, not {raw:?}"))
}

/// The value of `flag` as a whole number above zero.
fn number(parser: &mut lexopt::Parser, flag: &str) -> Result<usize, String> {
    let raw = value(parser, flag)?;
    match raw.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{flag} must be a positive whole number, not {raw:?}"
        )),
    }
}

/// The value of `flag` as a finite number above zero.
fn positive(parser: &mut lexopt::Parser, flag: &str) -> Result<f64, String> {
    let raw = value(parser, flag)?;
    match raw.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("{flag} must be a positive number, not {raw:?}")),
    }
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("parlor-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let spawns = options
        .subjects
        .iter()
        .any(|s| matches!(s, Subject::Spawn(_) | Subject::Relay(_)));
    // Pin before any thread exists: threads inherit the main thread's mask.
    let pinned = options.pin && spawns && server::can_pin() && server::pin_self().is_ok();
    let machine = report::machine();
    println!("{}", report::machine_line(&machine));
    if pinned {
        println!(
            "pinned: generator on cpu {}, servers on cpu {}",
            server::GENERATOR_CORE,
            server::SERVER_CORE
        );
    }
    let result = match options.command {
        Command::Fanout => fanout(&options, pinned),
        Command::Sweep => sweep(&options, pinned),
        Command::History => history(&options, pinned),
        Command::Abuse => abuse(&options, pinned),
    };
    match result.and_then(|(kind, body)| report::write_json(&options.out, kind, pinned, body)) {
        Ok(path) => {
            println!("\nJSON: {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("parlor-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

impl Options {
    fn shape(&self, protocol: Protocol) -> Shape {
        Shape {
            protocol,
            connections: self.connections,
            rooms: self.rooms,
            senders: self
                .senders
                .unwrap_or(self.connections)
                .min(self.connections),
            text_bytes: self.text_bytes,
            stall_after: self.stall.map(Duration::from_secs_f64),
            stall_for: self.stall_for.map(Duration::from_secs_f64),
        }
    }
}

/// A server under test and the clients connected to it.
struct Session {
    name: String,
    shape: Shape,
    fleet: Fleet,
    process: Option<ServerProcess>,
    _dir: Option<TempDir>,
    setup: Value,
}

/// Starts (or finds) the subject's server and connects the fleet.
fn open_session(options: &Options, subject: &Subject, pinned: bool) -> Result<Session, String> {
    let (protocol, name) = match subject {
        Subject::Spawn(_) => (Protocol::Parlor, "parlor".to_string()),
        Subject::Relay(_) => (Protocol::Raw, "node-ws-relay".to_string()),
        Subject::Connect(p, addrs) => (*p, format!("{} at {}", p.name(), addrs[0])),
    };
    let shape = options.shape(protocol);
    let (process, dir, addrs) = match subject {
        Subject::Spawn(binary) => {
            let dir = TempDir::new("fanout").map_err(|e| format!("temp dir: {e}"))?;
            std::fs::create_dir_all(&options.out)
                .map_err(|e| format!("cannot create {}: {e}", options.out.display()))?;
            let log = options.out.join("parlor-server.log");
            let db = dir.path().join("parlor.db");
            let process = ServerProcess::parlor(&ParlorLaunch {
                binary,
                db: &db,
                max_users: shape.connections + 10,
                pin: pinned,
                log: &log,
            })?;
            let addrs = process.ws_addrs.clone();
            (Some(process), Some(dir), addrs)
        }
        Subject::Relay(script) => {
            let process = ServerProcess::relay(&options.node, script, shape.rooms, pinned)?;
            let addrs = process.ws_addrs.clone();
            (Some(process), None, addrs)
        }
        Subject::Connect(_, addrs) => (None, None, addrs.clone()),
    };
    let base_rss = process.as_ref().and_then(|p| p.memory());
    let fleet = Fleet::open(&shape, &addrs)?;
    // Signing in broadcasts room lists to everyone; measure nothing until
    // the server has written them all and is idle again.
    let settled_in = settle(process.as_ref());
    let connected = process.as_ref().and_then(|p| p.memory());
    let threads = process.as_ref().and_then(|p| p.threads());
    let setup = json!({
        "setup_s": stats::round3(fleet.setup.as_secs_f64()),
        "settled_after_setup_s": stats::round3(settled_in.as_secs_f64()),
        "server_started_in_ms": process.as_ref().map(|p| stats::round3(p.started_in.as_secs_f64() * 1000.0)),
        "server_rss_kib_before_clients": base_rss.map(|m| m.rss_kib),
        "server_rss_kib_all_connected": connected.map(|m| m.rss_kib),
        "server_peak_rss_kib_all_connected": connected.map(|m| m.peak_kib),
        "server_threads_all_connected": threads,
    });
    println!(
        "\n== {name}: {} connections over {} rooms, {} senders; connected in {:.2} s, idle {:.2} s later{}",
        shape.connections,
        shape.rooms,
        shape.senders,
        fleet.setup.as_secs_f64(),
        settled_in.as_secs_f64(),
        match connected {
            Some(m) => format!(
                "; server RSS {:.1} MiB with everyone connected ({} threads)",
                m.rss_kib as f64 / 1024.0,
                threads.unwrap_or(0)
            ),
            None => String::new(),
        }
    );
    Ok(Session {
        name,
        shape,
        fleet,
        process,
        _dir: dir,
        setup,
    })
}

/// Waits until a server we started uses under 5 % of a core over 500 ms
/// (at most 120 s); a server we did not start gets one second.
fn settle(process: Option<&ServerProcess>) -> Duration {
    let started = std::time::Instant::now();
    let Some(process) = process else {
        std::thread::sleep(Duration::from_secs(1));
        return started.elapsed();
    };
    let window = Duration::from_millis(500);
    while started.elapsed() < Duration::from_secs(120) {
        let before = process.cpu_seconds();
        std::thread::sleep(window);
        match before.zip(process.cpu_seconds()) {
            Some((a, b)) if b - a < 0.05 * window.as_secs_f64() => break,
            None => break,
            _ => {}
        }
    }
    started.elapsed()
}

impl Session {
    fn finish(self) {
        self.fleet.close();
        if let Some(p) = self.process {
            p.stop();
        }
    }
}

fn drain(options: &Options, default: f64) -> Duration {
    Duration::from_secs_f64(options.drain.unwrap_or(default))
}

fn fanout(options: &Options, pinned: bool) -> Result<(&'static str, Value), String> {
    let mut runs = Vec::new();
    let mut results: Vec<(String, StepResult)> = Vec::new();
    for subject in &options.subjects {
        let mut session = open_session(options, subject, pinned)?;
        let mut result = session.fleet.step(
            options.rate,
            Duration::from_secs_f64(options.duration),
            drain(options, 5.0),
            session.process.as_ref(),
        )?;
        result.stall = session.fleet.stall_report();
        report::print_step("", &result);
        runs.push(json!({
            "server": session.name,
            "shape": session.shape.to_json(),
            "setup": session.setup,
            "step": result.to_json(),
        }));
        results.push((session.name.clone(), result));
        session.finish();
    }
    if let [(a, ra), (b, rb), ..] = results.as_slice() {
        println!(
            "\n{a}/{b}: delivery p99 {:.3}/{:.3} ms, deliveries/s {:.0}/{:.0}",
            ra.delivery.p99, rb.delivery.p99, ra.deliveries_per_s, rb.deliveries_per_s
        );
    }
    Ok(("fanout", json!({ "runs": runs })))
}

fn sweep(options: &Options, pinned: bool) -> Result<(&'static str, Value), String> {
    let step_time = Duration::from_secs_f64(options.duration);
    let mut runs = Vec::new();
    let mut bests: Vec<(String, Option<StepResult>)> = Vec::new();
    for subject in &options.subjects {
        let mut session = open_session(options, subject, pinned)?;
        println!(
            "sweep: {:.0} s per step, pass = nothing lost and delivery p99 <= {} ms",
            step_time.as_secs_f64(),
            options.p99_limit
        );
        report::print_sweep_header();
        let mut steps = Vec::new();
        let mut best: Option<StepResult> = None;
        let mut failed_at: Option<f64> = None;
        // A step that fails on latency alone is run again (`--retries`),
        // so one stall of the machine does not end the sweep; a loss is
        // never retried.
        let mut run = |rate: f64, session: &mut Session| -> Result<bool, String> {
            for attempt in 0..=options.retries {
                let r = session.fleet.step(
                    rate,
                    step_time,
                    drain(options, 2.0),
                    session.process.as_ref(),
                )?;
                let pass = r.passes(options.p99_limit);
                report::print_sweep_step(&r, pass);
                let mut j = r.to_json();
                j["pass"] = json!(pass);
                j["attempt"] = json!(attempt + 1);
                steps.push(j);
                let lost = r.lost > 0;
                if pass && best.as_ref().is_none_or(|b| b.rate < r.rate) {
                    best = Some(r);
                }
                // Let queues empty before the next step.
                std::thread::sleep(Duration::from_millis(300));
                if pass {
                    return Ok(true);
                }
                if lost {
                    break;
                }
            }
            Ok(false)
        };
        let mut rate = options.from;
        while rate <= options.max_rate {
            if !run(rate, &mut session)? {
                failed_at = Some(rate);
                break;
            }
            rate *= options.factor;
        }
        if let Some(mut high) = failed_at {
            let mut low = high / options.factor;
            for _ in 0..options.refine {
                if low < options.from {
                    break;
                }
                let mid = (low + high) / 2.0;
                if run(mid, &mut session)? {
                    low = mid;
                } else {
                    high = mid;
                }
            }
        }
        match &best {
            Some(b) => println!(
                "  {}: highest passing rate {:.0} msgs/s = {:.0} deliveries/s (p99 {:.3} ms, {} CPU s/1M deliveries)",
                session.name,
                b.rate,
                b.deliveries_per_s,
                b.delivery.p99,
                b.cpu_per_million()
                    .map_or("-".into(), |c| format!("{c:.2}"))
            ),
            None => println!("  {}: no rate passed", session.name),
        }
        runs.push(json!({
            "server": session.name,
            "shape": session.shape.to_json(),
            "setup": session.setup,
            "p99_limit_ms": options.p99_limit,
            "steps": steps,
            "highest_passing": best.as_ref().map(|b| json!({
                "rate_msgs_per_s": stats::round3(b.rate),
                "deliveries_per_s": b.deliveries_per_s.round(),
                "delivery_p99_ms": b.delivery.p99,
                "server_cpu_s_per_million_deliveries": b.cpu_per_million().map(stats::round3),
            })),
        }));
        bests.push((session.name.clone(), best));
        session.finish();
    }
    let mut comparison = Value::Null;
    if let [(a, Some(ra)), (b, Some(rb)), ..] = bests.as_slice() {
        let msgs = ra.rate / rb.rate;
        let deliveries = ra.deliveries_per_s / rb.deliveries_per_s;
        println!(
            "\n{a}/{b} sustained throughput ratio: {msgs:.2} in messages/s, {deliveries:.2} in deliveries/s"
        );
        comparison = json!({
            "a": a, "b": b,
            "messages_ratio": stats::round3(msgs),
            "deliveries_ratio": stats::round3(deliveries),
        });
    }
    Ok(("sweep", json!({ "runs": runs, "comparison": comparison })))
}

fn history(options: &Options, pinned: bool) -> Result<(&'static str, Value), String> {
    let Some(Subject::Spawn(binary)) = options.subjects.first() else {
        return Err("history needs --spawn PATH".into());
    };
    let result = history::run(&history::HistoryOptions {
        binary: binary.clone(),
        messages: options.messages,
        catch_up: options.catch_up,
        reps: options.reps,
        startups: options.startups,
        rebuild: options.rebuild,
        pin: pinned,
        out: options.out.clone(),
    })?;
    Ok(("history", result))
}

fn abuse(options: &Options, pinned: bool) -> Result<(&'static str, Value), String> {
    let Some(Subject::Spawn(binary)) = options.subjects.first() else {
        return Err("abuse needs --spawn PATH".into());
    };
    let result = abuse::run(&abuse::AbuseOptions {
        binary: binary.clone(),
        cases: options.cases.clone(),
        bystanders: options.shape(Protocol::Parlor),
        rate: options.rate,
        duration: Duration::from_secs_f64(options.duration),
        drain: drain(options, 5.0),
        tries: options.tries,
        rss_limit_kib: options.rss_limit_mib.saturating_mul(1024),
        quick: options.quick,
        pin: pinned,
        out: options.out.clone(),
    })?;
    Ok(("abuse", result))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        parse_args(args.iter().map(OsString::from).collect())
    }

    fn options(args: &[&str]) -> Options {
        parse(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .expect("options, not help")
    }

    fn error(args: &[&str]) -> String {
        parse(args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} parsed"))
    }

    #[test]
    fn flag_value_and_flag_equals_value_agree() {
        let cases: [&[&str]; 2] = [
            &["fanout", "--spawn", "p", "--rate", "5", "--out", "o"],
            &["fanout", "--spawn=p", "--rate=5", "--out=o"],
        ];
        for args in cases {
            let o = options(args);
            assert!(matches!(o.subjects.as_slice(), [Subject::Spawn(p)] if p == Path::new("p")));
            assert_eq!(o.rate, 5.0);
            assert_eq!(o.out, Path::new("o"));
        }
    }

    #[test]
    fn quick_changes_the_defaults_wherever_it_stands() {
        let normal = options(&["sweep", "--spawn", "p"]);
        assert_eq!(
            (normal.connections, normal.rate, normal.pin),
            (10, 100.0, true)
        );
        let cases: [&[&str]; 2] = [
            &["sweep", "--quick", "--spawn", "p"],
            &["sweep", "--spawn", "p", "--quick"],
        ];
        for args in cases {
            let quick = options(args);
            assert_eq!((quick.connections, quick.rate, quick.pin), (6, 40.0, false));
        }
        let given = options(&["sweep", "--quick", "--spawn", "p", "--connections=8"]);
        assert_eq!(given.connections, 8);
        assert!(!options(&["sweep", "--spawn", "p", "--no-pin"]).pin);
    }

    #[test]
    fn abuse_cases_by_number_or_name_and_its_own_durations() {
        use abuse::Case;
        let o = options(&["abuse", "--spawn", "p"]);
        assert_eq!(o.cases, Case::ALL);
        assert_eq!((o.duration, o.tries, o.rss_limit_mib), (20.0, 25, 1024));
        let o = options(&["abuse", "--spawn", "p", "--cases", "7, pings,0", "--quick"]);
        assert_eq!(o.cases, [Case::Rooms, Case::Pings, Case::None]);
        assert_eq!((o.duration, o.tries), (1.5, 5));
        assert_eq!(options(&["fanout", "--spawn", "p"]).duration, 10.0);
    }

    #[test]
    fn bad_arguments_say_why() {
        assert!(error(&["fanout", "--spawn"]).contains("--spawn needs a value"));
        assert!(error(&["fanout", "--spawn", "p", "--rate=0"]).contains("positive number"));
        assert!(error(&["fanout", "--spawn", "p", "--refine", "x"]).contains("whole number"));
        assert!(error(&["fanout", "--spawn", "p", "--rebuild=yes"]).contains("takes no value"));
        assert!(error(&["fanout", "--spawn", "p", "--frob"]).contains("unknown argument"));
        assert!(error(&["fanout", "--spawn", "p", "extra"]).contains("unknown argument"));
        assert!(error(&["fanout"]).contains("say what to measure"));
        assert!(error(&["history", "--ws", "127.0.0.1:1"]).contains("history needs"));
        assert!(error(&["abuse", "--ws", "127.0.0.1:1"]).contains("abuse needs"));
        assert!(error(&["abuse", "--spawn", "p", "--cases", "1,3"]).contains("unknown case"));
        assert!(error(&["frobnicate"]).contains("unknown command"));
        assert!(error(&["--spawn", "p", "fanout"]).contains("command comes first"));
        for help in [&["--help"][..], &[], &["fanout", "--spawn", "p", "-h"]] {
            assert!(matches!(parse(help), Ok(None)), "{help:?}");
        }
    }
}
