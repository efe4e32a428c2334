//! The servers under test when the benchmark starts them itself: a `parlor`
//! binary on a temporary database, or the Node.js `ws` relay. Each runs
//! pinned to its own core (`taskset -c 1`) when asked, and is measured from
//! `/proc`: CPU time from `stat`, resident and peak memory from `status`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server has to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The core the server runs on when pinning; the generator takes core 0.
pub const SERVER_CORE: &str = "1";
pub const GENERATOR_CORE: &str = "0";

/// A directory under the system's temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "parlor-bench-{tag}-{}-{}",
            std::process::id(),
            crate::nonce()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True when `taskset` can pin processes and there are two cores to pin to.
pub fn can_pin() -> bool {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores >= 2
        && Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Pins this process's main thread (and so every thread it starts later) to
/// the generator's core. Call it before starting any thread.
pub fn pin_self() -> Result<(), String> {
    let status = Command::new("taskset")
        .args(["-p", "-c", GENERATOR_CORE, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("taskset: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("taskset -p failed: {status}"))
    }
}

/// What the options say about starting a `parlor`.
pub struct ParlorLaunch<'a> {
    pub binary: &'a Path,
    pub db: &'a Path,
    pub max_users: usize,
    pub pin: bool,
    /// Where the server's log (stderr) goes.
    pub log: &'a Path,
}

/// Whether `parlor --help` lists `flag`.
pub fn knows_flag(binary: &Path, flag: &str) -> bool {
    Command::new(binary)
        .arg("--help")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(flag))
}

/// A server process this benchmark started; killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub pid: u32,
    /// The WebSocket addresses it listens on: one for Parlor, one per room
    /// for the relay.
    pub ws_addrs: Vec<SocketAddr>,
    /// From spawning until it printed its address.
    pub started_in: Duration,
}

impl ServerProcess {
    /// Starts `parlor` on ports chosen by the system, with limits raised so
    /// the benchmark measures the server, not its rate limits.
    pub fn parlor(launch: &ParlorLaunch) -> Result<ServerProcess, String> {
        let mut options: Vec<String> = [
            "--max-users",
            &launch.max_users.to_string(),
            "--messages-per-second",
            "1000000",
            "--room-switches-per-minute",
            "1000000",
        ]
        .map(String::from)
        .to_vec();
        // Request budgets: every benchmark client signs in from 127.0.0.1
        // with a new name. Only binaries that have them are told (so older
        // builds can be measured side by side).
        if knows_flag(launch.binary, "--request-burst") {
            options.extend(
                [
                    "--requests-per-second",
                    "1000000",
                    "--request-burst",
                    "1000000",
                    "--new-users-per-ip-per-hour",
                    "1000000",
                ]
                .map(String::from),
            );
        }
        ServerProcess::parlor_with(launch, &options)
    }

    /// Starts `parlor` on ports chosen by the system with exactly these
    /// options besides its addresses, database and log level (`max_users`
    /// of the launch is not used).
    pub fn parlor_with(launch: &ParlorLaunch, options: &[String]) -> Result<ServerProcess, String> {
        let mut command = pinned(launch.pin);
        command
            .arg(launch.binary)
            .args(["--http", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--db"])
            .arg(launch.db)
            .args(["--log-level", "warn"])
            .args(options);
        let log = std::fs::File::create(launch.log)
            .map_err(|e| format!("cannot create {}: {e}", launch.log.display()))?;
        let started = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.binary.display()))?;
        let line = first_line(&mut child)?;
        let started_in = started.elapsed();
        // "Parlor is running. Open http://ADDR/ in your browser (WebSocket on ws://ADDR/)."
        let addr = line
            .split("ws://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| format!("no WebSocket address in parlor's first line {line:?}"))?;
        Ok(ServerProcess {
            pid: child.id(),
            child,
            ws_addrs: vec![addr],
            started_in,
        })
    }

    /// Starts the Node.js relay script with one broadcast server per room.
    pub fn relay(
        node: &str,
        script: &Path,
        rooms: usize,
        pin: bool,
    ) -> Result<ServerProcess, String> {
        let mut command = pinned(pin);
        command
            .arg(node)
            .arg(script)
            .args(["--rooms", &rooms.to_string()]);
        let started = Instant::now();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {node} {}: {e}", script.display()))?;
        let line = first_line(&mut child)?;
        let started_in = started.elapsed();
        // {"ports":[41235,41236,...]}
        let ports: Vec<u16> = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| serde_json::from_value(v["ports"].clone()).ok())
            .ok_or_else(|| {
                format!("the relay's first line is not {{\"ports\":[...]}}: {line:?}")
            })?;
        if ports.len() != rooms {
            return Err(format!(
                "asked the relay for {rooms} rooms, it opened {}",
                ports.len()
            ));
        }
        Ok(ServerProcess {
            pid: child.id(),
            child,
            ws_addrs: ports
                .into_iter()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
            started_in,
        })
    }

    /// User plus system CPU seconds the server has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid)
    }

    pub fn memory(&self) -> Option<Memory> {
        Memory::of(self.pid)
    }

    pub fn threads(&self) -> Option<u64> {
        status_field(self.pid, "Threads:")
    }

    /// Kills the server and waits for it.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `taskset -c 1 ...` when pinning, otherwise the program itself.
fn pinned(pin: bool) -> Command {
    if pin {
        let mut command = Command::new("taskset");
        command.args(["-c", SERVER_CORE]);
        command
    } else {
        // `env` runs the program as given: one code path for both cases.
        Command::new("env")
    }
}

/// Reads the first stdout line of a starting server, within START_TIMEOUT.
fn first_line(child: &mut Child) -> Result<String, String> {
    let stdout = child.stdout.take().expect("BUG: stdout is piped");
    let (line_tx, line_rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("server-stdout".into())
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = line_tx.send(reader.read_line(&mut line).map(|_| line));
            // Keep draining so the server never blocks on a full pipe.
            let mut sink = String::new();
            while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    match line_rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(line)) if !line.is_empty() => Ok(line),
        Ok(Ok(_)) => Err(format!(
            "the server exited before printing its address ({:?})",
            child.wait().ok()
        )),
        Ok(Err(e)) => Err(format!("reading the server's output: {e}")),
        Err(_) => Err(format!(
            "the server printed nothing within {START_TIMEOUT:?}"
        )),
    }
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Memory> {
        Some(Memory {
            rss_kib: status_field(pid, "VmRSS:")?,
            peak_kib: status_field(pid, "VmHWM:")?,
        })
    }
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// utime + stime of a whole process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; count fields after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat are the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// Busy CPU seconds of the whole machine so far (every core, every
/// process), from the first line of `/proc/stat`.
pub fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some(busy as f64 / clock_ticks() as f64)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 on Linux.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}
