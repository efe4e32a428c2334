//! A flood of idle sockets against the WebSocket port. In its own test
//! binary because it counts the process's threads.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::TestServer;

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

#[test]
fn a_flood_of_idle_sockets_does_not_lock_out_a_real_client() {
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
