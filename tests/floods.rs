//! Floods against the server: idle sockets against the WebSocket port, a
//! client that floods pings and never reads the pongs, endless request
//! headers against the page's port, clients that flood
//! requests as fast as they are answered, and one that asks for the largest
//! pages and never reads them. Each test measures the whole process (its
//! threads, its memory), so each runs alone in a process of its own (see
//! [`alone`]).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, TestServer, WAIT};

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
    let flooder = server.login("flooder");
    let before = rss_kib();
    // Up to 300,000 pings of 125 bytes (about 40 MB on the wire). Their
    // pongs fill the flooder's socket and the server's writer stops, so
    // every ping the server kept an answer for, or read at all, would stay
    // in memory; instead it stops reading, and the pings stay with TCP.
    let ping = client_frame(0x89, &[b'p'; 125]);
    let burst = ping.repeat(1000);
    let mut sock = flooder.ws.get_ref().try_clone().expect("clone the socket");
    sock.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("set a write timeout");
    let (mut at, mut sent) = (0, 0);
    let stalled = loop {
        if sent >= 300_000 * ping.len() {
            break false;
        }
        match sock.write(&burst[at..]) {
            Ok(n) => (at, sent) = ((at + n) % burst.len(), sent + n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break true;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("after {sent} bytes of pings: {e}"),
        }
    };
    assert!(stalled, "the server read all {sent} bytes of pings");
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

/// A client frame as it goes on the wire: final (`first_byte` is 0x81 for
/// text, 0x89 for a ping), masked with a zero key (a server cannot tell it
/// from any other key), `payload` under 126 bytes.
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

/// Has `client` send `frame` over and over as fast as the server takes it,
/// on one thread, and read (and drop) whatever the server sends, on
/// another, until `stop` is set.
fn flood(client: Client, frame: &[u8], stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let stream = client.ws.get_ref();
    let mut reader = stream.try_clone().expect("clone the socket");
    let mut writer = stream.try_clone().expect("clone the socket");
    writer
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let burst = frame.repeat(100);
    let (stop_r, stop_w) = (stop.clone(), stop.clone());
    let read = std::thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        while !stop_r.load(Ordering::Relaxed) {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    // Writes whole bursts of whole frames; a write the server does not take
    // in time resumes where it stopped, so frames stay whole.
    let write = std::thread::spawn(move || {
        let _client = client;
        let mut at = 0;
        while !stop_w.load(Ordering::Relaxed) {
            match writer.write(&burst[at..]) {
                Ok(n) => at = (at + n) % burst.len(),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return,
            }
        }
    });
    vec![read, write]
}

/// Samples the process's RSS every 50 ms until `stop`, keeping the most it
/// grew above `before`.
fn watch_rss(before: u64, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let mut grown = 0;
        while !stop.load(Ordering::Relaxed) {
            grown = grown.max(rss_kib().saturating_sub(before));
            std::thread::sleep(Duration::from_millis(50));
        }
        grown
    })
}

/// How long a ping takes to be answered; [`WAIT`] if it is not answered
/// within that.
fn ping_time(client: &mut Client, req: &str) -> Duration {
    let started = Instant::now();
    client.send_json(json!({"type": "ping", "req": req}));
    match client.try_wait_for(WAIT, &|f| f["req"] == req) {
        Some(pong) => assert_eq!(pong["type"], "pong", "{pong}"),
        None => return WAIT,
    }
    started.elapsed()
}

#[test]
fn a_ping_flood_from_clients_that_read_slows_only_them() {
    alone(
        "a_ping_flood_from_clients_that_read_slows_only_them",
        reading_ping_flood,
    );
}

fn reading_ping_flood() {
    // Ten flooders and a bystander, each a user of their own.
    let server = TestServer::start_with(|c| c.max_users = 11);
    let mut bystander = server.login_in("bystander", "general");
    let before = rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let ping = client_frame(0x81, br#"{"type":"ping"}"#);
    let flooders: Vec<Client> = (0..10)
        .map(|n| server.login(&format!("flooder{n}")))
        .collect();
    let threads: Vec<_> = flooders
        .into_iter()
        .flat_map(|client| flood(client, &ping, &stop))
        .collect();
    let watch = watch_rss(before, &stop);
    // Long enough for a hub that takes every ping it is sent to fall
    // seconds behind and hold hundreds of MiB.
    std::thread::sleep(Duration::from_secs(4));
    let slowest = (0..3)
        .map(|n| ping_time(&mut bystander, &format!("p{n}")))
        .max()
        .expect("three pings");
    stop.store(true, Ordering::Relaxed);
    let grown = watch.join().unwrap();
    for thread in threads {
        thread.join().unwrap();
    }
    println!("memory grew by {grown} KiB; the slowest ping took {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a bystander's ping took {slowest:?}"
    );
    assert!(grown < 64 * 1024, "memory grew by {grown} KiB");
}

#[test]
fn history_requests_never_read_leave_memory_bounded() {
    alone(
        "history_requests_never_read_leave_memory_bounded",
        history_flood,
    );
}

fn history_flood() {
    // Filling the room quickly needs a higher send limit; the pages read
    // back are what is tested.
    let server = TestServer::start_with(|c| c.messages_per_second = 10_000);
    let mut filler = server.login_in("filler", "general");
    // 500 of the largest messages: 4,000 four-byte characters each, so a
    // page of 500 is about 8 MB.
    let text = "\u{1F600}".repeat(4000);
    for n in 0..500 {
        let ack = filler.say(&format!("m{n}"), &text);
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    drop(filler);
    let mut bystander = server.login_in("bystander", "general");
    let before = rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let watch = watch_rss(before, &stop);
    // 100 requests for the largest page, sent at once and never read.
    let mut attacker = server.login("attacker");
    for n in 0..100 {
        attacker.send_json(json!({
            "type": "history", "room": "general", "limit": 500, "req": format!("h{n}")
        }));
    }
    std::thread::sleep(Duration::from_secs(3));
    let slowest = (0..3)
        .map(|n| ping_time(&mut bystander, &format!("p{n}")))
        .max()
        .expect("three pings");
    stop.store(true, Ordering::Relaxed);
    let grown = watch.join().unwrap();
    println!("memory grew by {grown} KiB; the slowest ping took {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a bystander's ping took {slowest:?}"
    );
    assert!(grown < 96 * 1024, "memory grew by {grown} KiB");
    // Its pages wait until it reads: they come in the order asked, and
    // the connection is still open.
    for n in 0..2 {
        let page = attacker.wait_for("a page", |f| f["type"] == "history");
        assert_eq!(page["req"], format!("h{n}"));
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(500));
    }
}
