//! What one client may ask of the server, with the default budgets: every
//! request is priced, rooms and new names are limited, and every refusal is
//! `rate_limited` with a `retry_after_ms` after which the request goes
//! through.

use std::time::Duration;

use parlor::Config;
use serde_json::json;

use crate::support::{Client, TestServer, assert_error};

/// A server with the default request budgets (the test servers raise them).
fn with_default_budgets(tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|config| {
        let defaults = Config::default();
        config.requests_per_second = defaults.requests_per_second;
        config.request_burst = defaults.request_burst;
        config.new_users_per_ip_per_hour = defaults.new_users_per_ip_per_hour;
        tweak(config);
    })
}

fn retry_after(frame: &serde_json::Value) -> Duration {
    assert_error(frame, "rate_limited");
    Duration::from_millis(frame["retry_after_ms"].as_u64().expect("retry_after_ms"))
}

#[test]
fn a_ping_flood_is_refused_past_the_burst_and_served_again_after_the_wait() {
    let server = with_default_budgets(|_| {});
    let mut client = server.login("flooder");
    let burst = Config::default().request_burst as usize;
    let mut refused = None;
    for n in 0..burst * 2 {
        let reply = client.request(json!({"type": "ping"}));
        if reply["type"] != "pong" {
            refused = Some((n, reply));
            break;
        }
    }
    let (n, reply) = refused.expect("a flood of pings was never refused");
    // The burst (less the hello and join it paid for), plus what came back
    // while the pings went out.
    assert!(n >= burst - 10, "refused after only {n} pings");
    let wait = retry_after(&reply);
    assert!(wait <= Duration::from_secs(1), "{wait:?}");
    std::thread::sleep(wait);
    assert_eq!(client.request(json!({"type": "ping"}))["type"], "pong");
    // Bystanders have budgets of their own.
    let mut other = server.login("bystander");
    assert_eq!(other.request(json!({"type": "ping"}))["type"], "pong");
}

#[test]
fn big_pages_cost_more_than_small_ones() {
    let server = with_default_budgets(|_| {});
    let mut client = server.login("reader");
    let mut pages = 0;
    loop {
        let reply = client.request(json!({"type": "history", "room": "general", "limit": 500}));
        if reply["type"] != "history" {
            retry_after(&reply);
            break;
        }
        pages += 1;
        assert!(pages < 100, "pages of 500 were never refused");
    }
    // 21 units each out of a burst of 200.
    assert!(
        (8..=10).contains(&pages),
        "{pages} pages of 500 went through"
    );
}

#[test]
fn a_connection_that_has_not_signed_in_has_a_budget_too() {
    let server = with_default_budgets(|_| {});
    let mut anonymous = server.connect();
    let refused = (0..1000)
        .map(|_| anonymous.request(json!({"type": "ping"})))
        .find(|reply| reply["type"] != "pong")
        .expect("an anonymous ping flood was never refused");
    retry_after(&refused);
}

#[test]
fn room_creations_are_limited_per_user_and_rooms_in_all() {
    let server = with_default_budgets(|config| config.max_rooms = 5);
    let mut alice = server.login("alice");
    for n in 1..=4 {
        let reply = alice.request(json!({"type": "create_room", "room": format!("r{n}")}));
        assert_eq!(reply["type"], "rooms", "{reply}");
    }
    // general and four more: the server is full of rooms.
    let reply = alice.request(json!({"type": "create_room", "room": "r5"}));
    assert_error(&reply, "too_many_rooms");
    let welcome = Client::connect(server.ws_addr()).hello("newcomer");
    assert_eq!(welcome["limits"]["max_rooms"], 5);
    // Deleting counts as a change too: 4 creations and 6 deletions and
    // creations more make 10 in 10 minutes.
    for n in 0..6 {
        let frame = if n % 2 == 0 {
            json!({"type": "delete_room", "room": "r1"})
        } else {
            json!({"type": "create_room", "room": "r1"})
        };
        assert_eq!(alice.request(frame)["type"], "rooms");
    }
    let reply = alice.request(json!({"type": "delete_room", "room": "r1"}));
    assert!(retry_after(&reply) > Duration::from_secs(60));
    // Someone else may still.
    let mut bob = server.login("bob");
    assert_eq!(
        bob.request(json!({"type": "delete_room", "room": "r1"}))["type"],
        "rooms"
    );
}

#[test]
fn new_names_are_limited_per_address_but_known_names_sign_in() {
    let server = with_default_budgets(|config| config.max_users = 100);
    let limit = Config::default().new_users_per_ip_per_hour;
    for n in 0..limit {
        let mut client = server.connect();
        assert_eq!(client.hello(&format!("name{n}"))["type"], "welcome");
    }
    let mut client = server.connect();
    let reply = client.hello("one-too-many");
    assert!(retry_after(&reply) > Duration::from_secs(60));
    assert!(reply["message"].as_str().unwrap().contains("new names"));
    // A name used before is not new.
    let mut again = server.connect();
    assert_eq!(again.hello("name0")["type"], "welcome");
}

#[test]
fn users_per_address_can_be_capped() {
    let server = TestServer::start_with(|config| config.max_users_per_ip = Some(2));
    let _a = server.login("a");
    let _b = server.login("b");
    let mut c = server.connect();
    assert_error(&c.hello("c"), "server_full");
}
