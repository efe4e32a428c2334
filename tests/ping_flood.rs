//! A client that floods pings and never reads the pongs. In its own test
//! binary because it watches the process's memory.

mod support;

use std::time::{Duration, Instant};

use support::TestServer;
use tungstenite::{Bytes, Message};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_leaves_memory_bounded() {
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
