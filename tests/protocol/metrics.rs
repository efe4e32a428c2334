//! `GET /metrics`: scraped while people chat, the counters move by what
//! happened; it is served only with `--metrics`, and only to the clients it
//! is meant for.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use parlor::ScrapeAccess;
use serde_json::json;

use crate::support::{TestServer, now_ms};

/// One HTTP/1.0 GET with extra header lines; returns (status, body).
fn get(addr: SocketAddr, path: &str, extra_headers: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).expect("connect");
    get_on(stream, addr, path, extra_headers)
}

/// The same GET from another loopback address than 127.0.0.1.
fn get_from(from: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    socket
        .bind(&from.into())
        .expect("bind the client's address");
    socket.connect(&addr.into()).expect("connect");
    get_on(socket.into(), addr, path, "")
}

fn get_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    extra_headers: &str,
) -> (u16, String) {
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The metrics as a scraper sees them.
fn scrape(server: &TestServer) -> String {
    let (status, body) = get(server.http_addr(), "/metrics", "");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one sample, `name` with its labels as written.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .parse()
        .expect("a number")
}

/// Scrapes until `name` reads `want` (the counts of a connection's end
/// move when its threads notice it), failing after 10 s.
fn wait_for_sample(server: &TestServer, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(server);
        if sample(&text, name) == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {want}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn counters_move_by_what_happened_while_chatting() {
    let server = TestServer::start_with(|c| {
        c.metrics = Some(ScrapeAccess::loopback());
        c.room_switches_per_minute = 1;
    });
    let before = scrape(&server);
    assert_eq!(sample(&before, "parlor_users_signed_in"), 0.0);
    assert_eq!(sample(&before, "parlor_websockets_open"), 0.0);
    assert!(before.contains("parlor_build_info{version=\""), "{before}");
    assert!(sample(&before, "process_start_time_seconds") > 1.7e9);

    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let signed_in = scrape(&server);
    assert_eq!(sample(&signed_in, "parlor_users_signed_in"), 2.0);
    assert_eq!(sample(&signed_in, "parlor_websockets_open"), 2.0);
    let stored_before = sample(&signed_in, "parlor_messages_stored_total");

    let sent = 7;
    for n in 0..sent {
        let text = format!("message {n}");
        let ack = alice
            .request(json!({"type": "send", "id": format!("m{n}"), "text": text, "ts": now_ms()}));
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    // A retry is acked again but stores nothing.
    let again = alice.request(json!({"type": "send", "id": "m0", "text": "again", "ts": now_ms()}));
    assert_eq!(again["type"], "ack", "{again}");
    for n in 0..sent {
        bob.wait_for("a message", |f| {
            f["type"] == "message" && f["id"] == format!("m{n}")
        });
    }
    // alice has used her one room switch (into general): the next is refused.
    assert_eq!(
        alice.request(json!({"type": "create_room", "room": "side"}))["type"],
        "rooms"
    );
    let refused = alice.request(json!({"type": "join", "room": "side"}));
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert_eq!(get(server.http_addr(), "/", "").0, 200);
    assert_eq!(get(server.http_addr(), "/nowhere", "").0, 404);

    let after = scrape(&server);
    assert_eq!(
        sample(&after, "parlor_messages_stored_total") - stored_before,
        f64::from(sent)
    );
    assert_eq!(
        sample(&after, "parlor_commit_messages_sum"),
        f64::from(sent)
    );
    // The retry is found by a commit's insert too (storing nothing).
    let commits = sample(&after, "parlor_commit_messages_count");
    assert!(
        (1.0..=f64::from(sent + 1)).contains(&commits),
        "{commits} commits"
    );
    assert_eq!(
        sample(&after, "parlor_commit_duration_seconds_count"),
        commits
    );
    assert_eq!(
        sample(&after, "parlor_commit_duration_seconds_bucket{le=\"+Inf\"}"),
        commits
    );
    assert!(sample(&after, "parlor_commit_duration_seconds_sum") > 0.0);
    // Each message went to both members and was acked to its sender.
    assert!(sample(&after, "parlor_frames_sent_total") >= f64::from(3 * sent));
    assert_eq!(
        sample(&after, "parlor_rate_limited_total{request=\"join\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "parlor_rate_limited_total{request=\"send\"}"),
        0.0
    );
    assert_eq!(sample(&after, "parlor_storage_errors_total"), 0.0);
    assert_eq!(sample(&after, "parlor_connections_too_slow_total"), 0.0);
    assert_eq!(
        sample(&after, "parlor_http_requests_total{code=\"404\"}"),
        1.0
    );
    // Two scrapes and the page; this scrape is counted once answered.
    assert_eq!(
        sample(&after, "parlor_http_requests_total{code=\"200\"}"),
        3.0
    );

    drop(bob);
    wait_for_sample(&server, "parlor_users_signed_in", 1.0);
    wait_for_sample(&server, "parlor_websockets_open", 1.0);
    drop(alice);
    wait_for_sample(&server, "parlor_users_signed_in", 0.0);
    wait_for_sample(&server, "parlor_websockets_open", 0.0);
}

#[test]
fn clients_outside_the_allowed_ranges_are_refused_whatever_they_claim() {
    let ranges = vec!["192.0.2.0/24".parse().unwrap(), "::2".parse().unwrap()];
    let server = TestServer::start_with(|c| c.metrics = Some(ScrapeAccess::ranges(ranges)));
    let (status, body) = get(server.http_addr(), "/metrics", "");
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("parlor_"), "{body}");
    // Headers a client sends about itself are not believed.
    let claims =
        "X-Forwarded-For: 192.0.2.1\r\nX-Real-IP: 192.0.2.1\r\nForwarded: for=192.0.2.1\r\n";
    assert_eq!(get(server.http_addr(), "/metrics", claims).0, 403);
    // The rest of the site is not affected.
    assert_eq!(get(server.http_addr(), "/healthz", "").0, 200);
}

#[test]
fn the_client_behind_the_relay_is_who_counts() {
    // tiny_http sees every request come from 127.0.0.1 through the front's
    // relay; only the front knows which client is behind each one.
    let only = vec!["127.0.0.2".parse().unwrap()];
    let server = TestServer::start_with(|c| c.metrics = Some(ScrapeAccess::ranges(only)));
    let (status, body) = get_from("127.0.0.2", server.http_addr(), "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("parlor_messages_stored_total 0"), "{body}");
    assert_eq!(get_from("127.0.0.3", server.http_addr(), "/metrics").0, 403);
    assert_eq!(get(server.http_addr(), "/metrics", "").0, 403);
}

#[test]
fn without_the_flag_there_are_no_metrics() {
    let server = TestServer::start();
    let (status, body) = get(server.http_addr(), "/metrics", "");
    assert_eq!(status, 404, "{body}");
}
