//! Floods against the server: idle sockets against the WebSocket port, a
//! client that floods pings and never reads the pongs, and endless request
//! headers against the page's port. Each test measures
//! the whole process (its threads, its memory), so each runs alone in a
//! process of its own (see [`alone`]).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use support::TestServer;
use tungstenite::{Bytes, Message};

/// Set in the process that runs one test alone.
const ALONE: &str = "PARLOR_TEST_ALONE";

/// The tests take turns, so neither slows the other down.
static TURN: Mutex<()> = Mutex::new(());

/// Runs `test`, this binary's test named `name`, in a fresh process of this
/// binary that runs nothing else, one test at a time: as if each test were a
/// binary of its own, without linking the crate once per test. Written here
/// rather than with rusty-fork, whose tests run side by side.
fn alone(name: &str, test: fn()) {
    if std::env::var_os(ALONE).is_some() {
        test();
        return;
    }
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let out = Command::new(std::env::current_exe().expect("the path of this test binary"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .expect("run the test in a process of its own");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Shown, like a test's own output, when it fails or under --nocapture.
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} failed in its own process ({})",
        out.status
    );
}

fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_flood_of_idle_sockets_does_not_lock_out_a_real_client() {
    alone(
        "a_flood_of_idle_sockets_does_not_lock_out_a_real_client",
        idle_socket_flood,
    );
}

fn idle_socket_flood() {
    let server = TestServer::start();
    let before = thread_count();
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(server.ws_addr()).unwrap())
        .collect();
    let started = Instant::now();
    let mut alice = server.login_in("alice", "general");
    assert_eq!(alice.say("m", "still works")["type"], "ack");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a real client needed {took:?}"
    );
    let threads = thread_count();
    assert!(
        threads < before + 100,
        "threads grew from {before} to {threads}"
    );
    drop(idle);
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_leaves_memory_bounded() {
    alone(
        "a_ping_flood_from_a_client_that_never_reads_leaves_memory_bounded",
        ping_flood,
    );
}

fn ping_flood() {
    let server = TestServer::start();
    let mut flooder = server.login("flooder");
    let before = rss_kib();
    // 300,000 pings of 125 bytes (about 40 MB on the wire); their pongs
    // fill the flooder's socket and the server's writer stops, so every
    // ping the server keeps an answer for would stay in memory.
    let payload = Bytes::from(vec![b'p'; 125]);
    for n in 0..300_000 {
        flooder
            .ws
            .write(Message::Ping(payload.clone()))
            .unwrap_or_else(|e| panic!("ping {n}: {e}"));
        if n % 1000 == 999 {
            flooder.ws.flush().expect("flush the pings");
        }
    }
    flooder.ws.flush().expect("flush the pings");
    // Everyone else carries on.
    let mut alice = server.login_in("alice", "general");
    assert_eq!(alice.say("m", "still here")["type"], "ack");
    // The server reads the flood at its own pace: watch for a while.
    let mut grown = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        grown = grown.max(rss_kib().saturating_sub(before));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(grown < 16 * 1024, "memory grew by {grown} KiB");
}

#[test]
fn endless_request_headers_leave_memory_bounded() {
    alone(
        "endless_request_headers_leave_memory_bounded",
        endless_headers,
    );
}

fn endless_headers() {
    let server = TestServer::start();
    let before = rss_kib();
    // Four at once, each up to 64 MiB of one header line, sent as fast as
    // the server takes it.
    let attackers: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.http_addr();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let sender = std::thread::spawn(move || {
                    let _ = writer.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Endless: ");
                    let chunk = vec![b'a'; 64 * 1024];
                    for _ in 0..1024 {
                        if writer.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                });
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
                drop(stream);
                let _ = sender.join();
                String::from_utf8_lossy(&answer).into_owned()
            })
        })
        .collect();
    let mut grown = 0;
    while attackers.iter().any(|a| !a.is_finished()) {
        grown = grown.max(rss_kib().saturating_sub(before));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(grown < 16 * 1024, "memory grew by {grown} KiB");
    for attacker in attackers {
        let answer = attacker.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    }
}
