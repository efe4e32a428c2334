//! `parlor-bench` works and its books balance: a short `--quick` fan-out
//! against a `parlor` it starts itself, a raw fan-out against a minimal
//! broadcast relay started here, a quick history run and a quick round of
//! attacks. Counts are checked (every expected delivery is received or
//! lost, none twice, nothing lost at this tiny load; every attack request
//! answered at most once); timings and memory never are.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use tungstenite::{Message, WebSocket};

const BENCH: &str = env!("CARGO_BIN_EXE_parlor-bench");

/// The `parlor` binary, built by the cargo that runs these tests.
///
/// Cargo hands a test only its own package's binaries (`CARGO_BIN_EXE_*`),
/// and parlor is another package of the workspace. So the first test to ask
/// runs `cargo build -p parlor --bin parlor` (a no-op when it is fresh;
/// cargo holds no lock on the target directory while tests run) and takes
/// the path cargo reports instead of guessing one, so a test never runs a
/// stale or missing binary. By hand rather than with escargot: one command
/// and one JSON field.
fn parlor() -> &'static str {
    static PARLOR: OnceLock<String> = OnceLock::new();
    PARLOR.get_or_init(|| {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let output = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", "parlor", "--bin", "parlor"])
            .args(["--message-format", "json-render-diagnostics"])
            .args(["--manifest-path", manifest])
            .output()
            .expect("run cargo build");
        assert!(
            output.status.success(),
            "cargo build --bin parlor failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "parlor")
            .find_map(|m| m["executable"].as_str().map(String::from))
            .expect("cargo build names the parlor executable")
    })
}

/// An output directory of its own, removed afterwards.
struct OutDir(PathBuf);

impl OutDir {
    fn new(tag: &str) -> OutDir {
        let path =
            std::env::temp_dir().join(format!("parlor-bench-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the output dir");
        OutDir(path)
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs parlor-bench with these arguments and returns the JSON it wrote.
fn bench(out: &Path, args: &[&str]) -> Value {
    let output = Command::new(BENCH)
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run parlor-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "parlor-bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("read the output dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json") && !p.to_string_lossy().contains(".db.")
        })
        .collect();
    assert_eq!(json.len(), 1, "one JSON file per run: {json:?}\n{stdout}");
    let text = std::fs::read_to_string(&json[0]).expect("read the JSON");
    std::fs::remove_file(&json[0]).expect("remove the JSON");
    serde_json::from_str(&text).expect("the run's JSON parses")
}

/// Every expected delivery was received exactly once.
fn assert_books_balance(step: &Value, with_acks: bool) {
    let d = &step["deliveries"];
    let n = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a count: {v} in {step}"))
    };
    assert!(n(&step["sent"]) > 0, "{step}");
    assert!(n(&d["expected"]) > 0, "{step}");
    assert_eq!(
        n(&d["expected"]),
        n(&d["received"]) + n(&d["lost"]),
        "{step}"
    );
    assert_eq!(n(&d["duplicated"]), 0, "{step}");
    assert_eq!(n(&d["lost"]), 0, "{step}");
    assert_eq!(n(&step["send_failures"]), 0, "{step}");
    assert_eq!(
        n(&step["delivery_latency"]["count"]),
        n(&d["received"]),
        "one latency sample per delivery: {step}"
    );
    if with_acks {
        assert_eq!(n(&step["acks"]["expected"]), n(&step["sent"]), "{step}");
        assert_eq!(n(&step["acks"]["received"]), n(&step["sent"]), "{step}");
        assert_eq!(n(&step["acks"]["duplicated"]), 0, "{step}");
        assert_eq!(
            step["errors"].as_object().map(|e| e.len()),
            Some(0),
            "{step}"
        );
    }
}

#[test]
fn quick_fanout_against_parlor_counts_every_delivery() {
    let out = OutDir::new("fanout");
    let report = bench(&out.0, &["fanout", "--quick", "--spawn", parlor()]);
    assert_eq!(report["kind"], "fanout");
    let run = &report["result"]["runs"][0];
    assert_eq!(run["server"], "parlor");
    let step = &run["step"];
    assert_books_balance(step, true);
    // --quick: 6 users in 2 rooms of 3, everyone sending; Parlor delivers
    // to every member, the sender included.
    assert_eq!(
        step["deliveries"]["expected"].as_u64(),
        step["sent"].as_u64().map(|s| s * 3),
        "{step}"
    );
    assert!(step["server_cpu_s"].is_number(), "{step}");
    assert!(
        step["server_peak_rss_kib"].as_u64().is_some_and(|k| k > 0),
        "{step}"
    );
}

#[test]
fn quick_sweep_reports_a_passing_rate() {
    let out = OutDir::new("sweep");
    // The limit is far above any latency, so the rate passes however busy
    // the machine is: this checks the sweep's mechanics, not a timing.
    let report = bench(
        &out.0,
        &[
            "sweep",
            "--quick",
            "--spawn",
            parlor(),
            "--p99-limit",
            "600000",
        ],
    );
    let run = &report["result"]["runs"][0];
    let steps = run["steps"].as_array().expect("steps");
    assert!(!steps.is_empty(), "{run}");
    for step in steps {
        assert_books_balance(step, true);
    }
    assert!(
        run["highest_passing"]["rate_msgs_per_s"].is_number(),
        "{run}"
    );
}

#[test]
fn quick_fanout_against_a_raw_relay_counts_every_delivery() {
    let (addrs, _relays) = relays(2);
    let out = OutDir::new("raw");
    let list = addrs.join(",");
    let report = bench(
        &out.0,
        &["fanout", "--quick", "--protocol", "raw", "--ws", &list],
    );
    let step = &report["result"]["runs"][0]["step"];
    assert_books_balance(step, false);
    // A relay skips the sender: 2 of the 3 members get each message.
    assert_eq!(
        step["deliveries"]["expected"].as_u64(),
        step["sent"].as_u64().map(|s| s * 2),
        "{step}"
    );
}

#[test]
fn quick_history_catches_up_exactly() {
    let out = OutDir::new("history");
    let report = bench(&out.0, &["history", "--quick", "--spawn", parlor()]);
    let result = &report["result"];
    assert_eq!(result["database"]["big_room_messages"], 20_000);
    assert_eq!(result["catch_up"]["messages"], 1_000);
    assert_eq!(result["total_matches_room_size"], true);
    for page in result["pages"].as_array().expect("pages") {
        assert!(
            page["deep_before"]["count"].as_u64().is_some_and(|n| n > 0),
            "{page}"
        );
    }
}

/// A count in an attack's report (0 when it never happened).
fn count(counts: &Value, what: &str) -> u64 {
    counts[what].as_u64().unwrap_or(0)
}

/// Requests an attacker sent are each answered once or still unanswered:
/// the answers (every count but what was sent, bytes and how connections
/// ended) and the unanswered add up to what was sent.
fn assert_requests_balance(role: &Value) {
    let counts = role.as_object().expect("an attacker's counts");
    let sent = count(role, "sent");
    assert!(sent > 0, "{role}");
    let answered: u64 = counts
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "sent" | "unanswered" | "bytes read" | "signed in again"
            ) && !k.starts_with("ended: ")
                && !k.starts_with("sign-in refused: ")
        })
        .map(|(_, n)| n.as_u64().expect("a count"))
        .sum();
    assert_eq!(answered + count(role, "unanswered"), sent, "{role}");
}

#[test]
fn quick_abuse_runs_every_attack_and_counts_add_up() {
    let out = OutDir::new("abuse");
    let report = bench(&out.0, &["abuse", "--quick", "--spawn", parlor()]);
    assert_eq!(report["kind"], "abuse");
    let cases = report["result"]["cases"].as_array().expect("cases");
    let numbers: Vec<u64> = cases.iter().filter_map(|c| c["case"].as_u64()).collect();
    assert_eq!(numbers, [0, 1, 2, 5, 7]);
    for case in cases {
        // Under attack a bystander's message may be late (lost past the
        // drain), never duplicated; every one is accounted for.
        let step = &case["bystanders"];
        let d = &step["deliveries"];
        let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));
        assert!(n(&step["sent"]) > 0, "{case}");
        assert_eq!(
            n(&d["expected"]),
            n(&d["received"]) + n(&d["lost"]),
            "{case}"
        );
        assert_eq!(n(&d["duplicated"]), 0, "{case}");
        assert_eq!(n(&step["acks"]["duplicated"]), 0, "{case}");
        assert_eq!(n(&step["acks"]["expected"]), n(&step["sent"]), "{case}");
        assert!(
            case["server_rss_kib"]["peak"]
                .as_u64()
                .is_some_and(|k| k > 0),
            "{case}"
        );
    }
    let attackers =
        |number: u64| &cases.iter().find(|c| c["case"] == number).expect("case")["attackers"];
    assert_eq!(attackers(0).as_object().map(|a| a.len()), Some(0));
    assert_requests_balance(&attackers(1)["pinger"]);
    assert_requests_balance(&attackers(2)["unread"]);
    assert_requests_balance(&attackers(2)["slow reader"]);
    // Case 5: every try of the person either got a welcome or failed.
    let person = &attackers(5)["person"];
    let failed: u64 = person
        .as_object()
        .expect("the person's counts")
        .iter()
        .filter(|(k, _)| k.starts_with("failed: "))
        .map(|(_, n)| n.as_u64().expect("a count"))
        .sum();
    assert_eq!(count(person, "tries"), 5, "{person}");
    assert_eq!(count(person, "welcome") + failed, 5, "{person}");
    assert!(count(&attackers(5)["crowd"], "opened") > 0);
    // Case 7: the rooms a new sign-in sees are those before, plus every
    // creation answered, minus every deletion.
    let rooms_case = cases.iter().find(|c| c["case"] == 7).expect("case 7");
    let creator = &rooms_case["attackers"]["creator"];
    let cycler = &rooms_case["attackers"]["cycler"];
    assert_requests_balance(creator);
    let rooms = &rooms_case["rooms"];
    assert_eq!(
        rooms["after"].as_u64().expect("rooms after"),
        rooms["before"].as_u64().expect("rooms before")
            + count(creator, "created")
            + count(cycler, "created")
            - count(cycler, "deleted"),
        "{rooms_case}"
    );
}

/// Minimal broadcast relays (one per room) in this process: every text
/// frame a client sends goes to the relay's other clients.
fn relays(rooms: usize) -> (Vec<String>, Vec<std::thread::JoinHandle<()>>) {
    let mut addrs = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..rooms {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a relay");
        addrs.push(listener.local_addr().expect("relay address").to_string());
        handles.push(std::thread::spawn(move || relay(listener)));
    }
    (addrs, handles)
}

type Peers = Arc<Mutex<Vec<(usize, WebSocket<TcpStream>)>>>;

fn relay(listener: TcpListener) {
    let peers: Peers = Arc::new(Mutex::new(Vec::new()));
    for (id, stream) in listener.incoming().enumerate() {
        let Ok(stream) = stream else { return };
        let Ok(reader) = stream.try_clone() else {
            return;
        };
        let Ok(ws) = tungstenite::accept(stream) else {
            continue;
        };
        peers.lock().expect("peers").push((id, ws));
        let peers = peers.clone();
        // The handshake is done: read raw frames from the clone with a
        // server-role socket of our own; writes go through the shared list.
        std::thread::spawn(move || {
            let mut ws =
                WebSocket::from_raw_socket(reader, tungstenite::protocol::Role::Server, None);
            while let Ok(message) = ws.read() {
                if let Message::Text(text) = message {
                    let mut peers = peers.lock().expect("peers");
                    for (other, peer) in peers.iter_mut() {
                        if *other != id {
                            let _ = peer.send(Message::Text(text.clone()));
                        }
                    }
                }
            }
        });
    }
}
