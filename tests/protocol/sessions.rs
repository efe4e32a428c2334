//! Signing in, sessions and resume, presence, rooms and room switching, at
//! the protocol level against a real server.

use std::time::Duration;

use serde_json::json;
use tungstenite::Message;

use crate::support::{TestServer, assert_error};

#[test]
fn welcome_lists_rooms_and_limits_and_keeps_the_first_casing() {
    let server = TestServer::start();
    let mut alice = server.connect();
    let welcome = alice.hello("  Alice ");
    assert_eq!(welcome["username"], "Alice");
    assert_eq!(welcome["room"], serde_json::Value::Null);
    assert!(welcome["session"].as_str().unwrap().len() >= 32);
    assert_eq!(welcome["rooms"][0]["name"], "general");
    assert_eq!(welcome["rooms"][0]["members"], 0);
    assert_eq!(welcome["rooms"][0]["created_by"], serde_json::Value::Null);
    assert!(welcome["rooms"][0]["created_at"].as_i64().unwrap() > 0);
    // The test servers raise the request budget (see support::config).
    assert_eq!(
        welcome["limits"],
        json!({"max_text_chars": 4000, "page_sizes": [50, 100, 200, 500],
               "messages_per_second": 10, "room_switches_per_minute": 5,
               "requests_per_second": 100_000, "request_burst": 100_000,
               "max_rooms": 100, "room_changes_per_10_minutes": 10})
    );
    drop(alice);

    // Another casing later signs in as the same user, shown as first written.
    let mut again = server.connect();
    let welcome = again.hello_retrying("ALICE", "username_taken");
    assert_eq!(welcome["username"], "Alice");
}

#[test]
fn bad_usernames_are_refused_and_the_socket_stays_open() {
    let server = TestServer::start();
    let mut client = server.connect();
    for bad in [
        "",
        "   ",
        "two words",
        "<b>",
        "x".repeat(33).as_str(),
        "tab\tname",
    ] {
        assert_error(&client.hello(bad), "invalid_username");
    }
    let reply = client.request(json!({"type": "hello"}));
    assert_error(&reply, "bad_request");
    assert_eq!(client.hello("ok_name-1.2")["type"], "welcome");
}

#[test]
fn a_taken_name_is_refused_case_insensitively() {
    let server = TestServer::start();
    let _bob = server.login("bob");
    let mut other = server.connect();
    assert_error(&other.hello("BoB"), "username_taken");
    let reply = other.request(json!({"type": "hello", "username": "bob", "resume": "wrong"}));
    assert_error(&reply, "username_taken");
    assert_eq!(other.hello("bobby")["type"], "welcome");
}

#[test]
fn requests_before_hello_get_not_logged_in() {
    let server = TestServer::start();
    let mut client = server.connect();
    for frame in [
        json!({"type": "join", "room": "general"}),
        json!({"type": "send", "id": "x", "text": "hi"}),
        json!({"type": "create_room", "room": "r"}),
        json!({"type": "history", "room": "general"}),
        json!({"type": "leave"}),
    ] {
        assert_error(&client.request(frame), "not_logged_in");
    }
    assert_eq!(client.request(json!({"type": "ping"}))["type"], "pong");
}

#[test]
fn malformed_frames_get_bad_request_and_the_connection_stays_open() {
    let server = TestServer::start();
    let mut client = server.login("carol");
    client.send_raw(Message::text("this is not json"));
    assert_error(&client.expect("error"), "bad_request");
    client.send_raw(Message::text("[1,2,3]"));
    assert_error(&client.expect("error"), "bad_request");
    client.send_raw(Message::binary(vec![1u8, 2, 3]));
    assert_error(&client.expect("error"), "bad_request");
    let reply = client.request(json!({"type": "teleport"}));
    assert_error(&reply, "bad_request");
    let reply = client.request(json!({"type": "join", "room": 42}));
    assert_error(&reply, "bad_request");
    let reply = client.request(json!({"type": "send", "id": "a"}));
    assert_error(&reply, "bad_request");
    let reply = client.request(json!({"type": "hello", "username": "carol"}));
    assert_error(&reply, "bad_request");
    // Still usable.
    assert_eq!(client.join("general")["type"], "joined");
}

#[test]
fn server_full_counts_distinct_users() {
    let server = TestServer::start_with(|c| c.max_users = 2);
    let _a = server.login("a");
    let mut b = server.connect();
    let session = b.hello("b")["session"].as_str().unwrap().to_string();
    let mut c = server.connect();
    assert_error(&c.hello("c"), "server_full");
    // Resuming an online user needs no free slot.
    let mut b2 = server.connect();
    let welcome = b2.request(json!({"type": "hello", "username": "b", "resume": session}));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    // Once b signs out, c gets in on the same socket.
    assert_eq!(
        b2.request(json!({"type": "sign_out"}))["type"],
        "signed_out"
    );
    let welcome = c.hello_retrying("c", "server_full");
    assert_eq!(welcome["username"], "c");
}

#[test]
fn resume_replaces_the_old_connection_without_presence_flicker() {
    let server = TestServer::start();
    let mut dave = server.connect();
    let welcome = dave.hello("dave");
    let session = welcome["session"].as_str().unwrap().to_string();
    dave.join("general");
    let mut erin = server.login_in("erin", "general");
    erin.clear();

    let mut dave2 = server.connect();
    let welcome = dave2.request(json!({"type": "hello", "username": "Dave", "resume": session}));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["room"], "general");
    assert_eq!(welcome["username"], "dave");

    let close = dave.wait_for("close of the replaced connection", |f| {
        f["type"] == "__close" || f["type"] == "__closed"
    });
    assert_eq!(close["code"], 4001, "{close}");
    assert!(!close["reason"].as_str().unwrap().is_empty());

    // The resumed connection is in the room: it can send, and erin sees it,
    // without any presence change in between.
    let ack = dave2.say("after-resume", "still here");
    assert_eq!(ack["type"], "ack", "{ack}");
    let message = erin.expect("message");
    assert_eq!(message["from"], "dave");
    erin.assert_none(Duration::from_millis(300), "presence", |f| {
        f["type"] == "presence"
    });
}

#[test]
fn join_sends_members_history_and_presence_and_updates_room_counts() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    alice.say("a1", "first");
    let mut bob = server.login("bob");
    let joined = bob.join("General");
    assert_eq!(joined["room"], "general");
    assert_eq!(joined["members"], json!(["alice", "bob"]));
    assert_eq!(joined["history"]["messages"][0]["text"], "first");
    assert_eq!(joined["history"]["total"], 1);

    let presence = alice.expect("presence");
    assert_eq!(
        presence,
        json!({"type": "presence", "room": "general", "user": "bob", "state": "joined"})
    );
    let rooms = alice.wait_for("rooms with 2 members", |f| {
        f["type"] == "rooms" && f["rooms"][0]["members"] == 2
    });
    assert_eq!(rooms["rooms"][0]["name"], "general");

    // Joining the room you are in re-sends joined and changes nothing.
    alice.clear();
    let again = bob.join("general");
    assert_eq!(again["type"], "joined");
    assert_eq!(again["members"], json!(["alice", "bob"]));
    alice.assert_none(Duration::from_millis(300), "any frame", |_| true);

    assert_error(&bob.join("nowhere"), "no_such_room");
}

#[test]
fn leaving_and_disconnecting_update_presence() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let mut carol = server.login_in("carol", "general");
    alice.clear();

    let left = bob.request(json!({"type": "leave"}));
    assert_eq!(left["type"], "left");
    assert_eq!(left["room"], "general");
    let presence = alice.expect("presence");
    assert_eq!(presence["user"], "bob");
    assert_eq!(presence["state"], "left");
    assert_error(&bob.request(json!({"type": "leave"})), "not_in_room");
    assert_error(&bob.say("x", "hello?"), "not_in_room");

    carol.send_raw(Message::Close(None));
    let presence = alice.expect("presence");
    assert_eq!(presence["user"], "carol");
    assert_eq!(presence["state"], "left");
    let rooms = alice.wait_for("rooms with 1 member", |f| {
        f["type"] == "rooms" && f["rooms"][0]["members"] == 1
    });
    assert_eq!(rooms["rooms"][0]["members"], 1);
}

#[test]
fn switching_rooms_moves_presence() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    let created = alice.request(json!({"type": "create_room", "room": "Design"}));
    assert_eq!(created["type"], "rooms");
    alice.join("general");
    let mut in_general = server.login_in("gina", "general");
    let mut in_design = server.login_in("dora", "Design");
    in_general.clear();
    in_design.clear();

    let joined = alice.join("design");
    assert_eq!(joined["room"], "Design");
    assert_eq!(joined["members"], json!(["alice", "dora"]));
    let left = in_general.expect("presence");
    assert_eq!(
        (left["user"].as_str(), left["state"].as_str()),
        (Some("alice"), Some("left"))
    );
    let arrived = in_design.expect("presence");
    assert_eq!(
        (arrived["user"].as_str(), arrived["state"].as_str()),
        (Some("alice"), Some("joined"))
    );

    // Messages now go to Design only.
    alice.say("d1", "hello design");
    assert_eq!(in_design.expect("message")["room"], "Design");
    in_general.assert_none(Duration::from_millis(300), "message", |f| {
        f["type"] == "message"
    });
}

#[test]
fn rooms_are_created_and_deleted_by_anyone() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    let mut bob = server.login_in("bob", "general");

    let reply = alice.request(json!({"type": "create_room", "room": "  Book Club  "}));
    assert_eq!(reply["type"], "rooms");
    let names: Vec<&str> = reply["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Book Club", "general"]);
    assert_eq!(reply["rooms"][0]["created_by"], "alice");
    let seen = bob.wait_for("rooms with Book Club", |f| {
        f["type"] == "rooms" && f["rooms"][0]["name"] == "Book Club"
    });
    assert_eq!(seen["rooms"].as_array().unwrap().len(), 2);

    assert_error(
        &alice.request(json!({"type": "create_room", "room": "book club"})),
        "room_exists",
    );
    assert_error(
        &alice.request(json!({"type": "create_room", "room": "   "})),
        "invalid_room_name",
    );
    assert_error(
        &alice.request(json!({"type": "create_room", "room": "a\u{0007}b"})),
        "invalid_room_name",
    );
    assert_error(
        &alice.request(json!({"type": "create_room", "room": "r".repeat(65)})),
        "invalid_room_name",
    );

    // Bob is in the room when alice deletes it: he is told and is in no room.
    bob.join("book club");
    bob.say("b1", "before the deletion");
    bob.clear();
    let reply = alice.request(json!({"type": "delete_room", "room": "BOOK CLUB"}));
    assert_eq!(reply["type"], "rooms");
    assert_eq!(reply["rooms"].as_array().unwrap().len(), 1);
    let deleted = bob.expect("room_deleted");
    assert_eq!(
        deleted,
        json!({"type": "room_deleted", "room": "Book Club"})
    );
    assert_error(&bob.say("b2", "anyone?"), "not_in_room");
    assert_error(
        &alice.request(json!({"type": "delete_room", "room": "Book Club"})),
        "no_such_room",
    );
    assert_error(
        &alice.request(json!({"type": "history", "room": "Book Club"})),
        "no_such_room",
    );

    // A new room with the same name starts empty.
    alice.request(json!({"type": "create_room", "room": "Book Club"}));
    let joined = alice.join("Book Club");
    assert_eq!(joined["history"]["messages"], json!([]));
    assert_eq!(joined["history"]["total"], 0);
}

#[test]
fn room_switches_are_rate_limited_even_across_reconnects() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    for name in ["r1", "r2", "r3"] {
        alice.request(json!({"type": "create_room", "room": name}));
    }
    // Five switches are fine.
    for room in ["general", "r1", "r2", "r3", "general"] {
        assert_eq!(alice.join(room)["type"], "joined", "{room}");
    }
    let reply = alice.join("r1");
    assert_error(&reply, "rate_limited");
    assert!(reply["retry_after_ms"].as_u64().unwrap() > 0);
    // Still in general: a message lands there.
    assert_eq!(alice.say("m", "still in general")["room"], "general");
    // Rejoining the current room is not a switch.
    assert_eq!(alice.join("general")["type"], "joined");

    // Reconnecting does not reset the limit.
    drop(alice);
    let mut again = server.connect();
    again.hello_retrying("alice", "username_taken");
    assert_error(&again.join("r2"), "rate_limited");
}

#[test]
fn no_hello_within_ten_seconds_closes_the_socket() {
    let server = TestServer::start();
    let mut lurker = server.connect();
    // The deadline is 10 s after the hub hears of the socket, a moment after
    // the handshake: wait for it with room to spare on a busy machine.
    let close = lurker
        .try_wait_for(Duration::from_secs(20), &|f| {
            f["type"] == "__close" || f["type"] == "__closed"
        })
        .expect("the socket is closed");
    assert_eq!(close["code"], 1008, "{close}");
}

#[test]
fn frames_over_64_kib_close_the_connection_with_1009() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let huge = "x".repeat(70 * 1024);
    alice.send_json(json!({"type": "send", "id": "big", "text": huge}));
    let close = alice.wait_for("close", |f| {
        f["type"] == "__close" || f["type"] == "__closed"
    });
    assert_eq!(close["code"], 1009, "{close}");
    // Everyone else keeps going.
    assert_eq!(bob.say("b", "fine here")["type"], "ack");
}

#[test]
fn shutdown_closes_clients_with_1001_and_frees_the_ports() {
    let mut server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let ws_addr = server.ws_addr();
    let http_addr = server.http_addr();
    server.stop();
    let close = alice.wait_for("close", |f| {
        f["type"] == "__close" || f["type"] == "__closed"
    });
    assert_eq!(close["code"], 1001, "{close}");
    // The same ports can be bound again at once (tiny_http's accept thread
    // may take a moment to let go of its listener).
    server.restart_on(http_addr, ws_addr);
    let mut client = server.connect();
    assert_eq!(client.hello("alice")["type"], "welcome");
    server.stop();
}

#[test]
fn a_join_code_is_needed_to_sign_in_but_not_to_resume_and_three_wrong_ones_close() {
    let server = TestServer::start_with(|c| c.join_code = Some("tea at five".into()));
    let hello = |name: &str, code: Option<&str>| match code {
        Some(code) => json!({"type": "hello", "username": name, "code": code}),
        None => json!({"type": "hello", "username": name}),
    };
    let mut alice = server.connect();
    assert_error(&alice.request(hello("alice", None)), "join_code_required");
    assert_error(
        &alice.request(hello("alice", Some("tea at six"))),
        "bad_join_code",
    );
    let welcome = alice.request(hello("alice", Some("tea at five")));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    // Her session's token is proof enough.
    let mut again = server.connect();
    let resumed = again.request(json!({
        "type": "hello", "username": "alice", "resume": welcome["session"]
    }));
    assert_eq!(resumed["type"], "welcome", "{resumed}");
    // Without the code, nobody learns even that alice is online.
    let mut guesser = server.connect();
    assert_error(&guesser.request(hello("alice", None)), "join_code_required");
    for guess in ["a", "b"] {
        assert_error(
            &guesser.request(hello("mallory", Some(guess))),
            "bad_join_code",
        );
    }
    guesser.send_json(hello("mallory", Some("c")));
    assert_error(&guesser.expect("error"), "bad_join_code");
    let close = guesser.wait_for("close", |f| {
        f["type"] == "__close" || f["type"] == "__closed"
    });
    assert_eq!(close["code"], 1008, "{close}");
}

#[test]
fn an_address_that_guesses_join_codes_is_slowed_to_a_few_an_hour() {
    let server = TestServer::start_with(|c| c.join_code = Some("tea at five".into()));
    let mut wrong = 0;
    let refused = loop {
        let mut guesser = server.connect();
        let reply =
            guesser.request(json!({"type": "hello", "username": "m", "code": format!("{wrong}")}));
        if reply["code"] != "bad_join_code" {
            break reply;
        }
        wrong += 1;
        assert!(wrong <= 20, "more than 20 wrong codes an hour were tried");
    };
    assert_eq!(wrong, 20);
    assert_error(&refused, "rate_limited");
    assert!(refused["retry_after_ms"].as_u64().unwrap() > 60_000);
    // Even the right code waits, from there.
    let mut late = server.connect();
    let reply = late.request(json!({"type": "hello", "username": "m", "code": "tea at five"}));
    assert_error(&reply, "rate_limited");
}

/// A page that loses its connection and comes back within the grace period
/// with its token keeps its session: nobody sees it leave or join, and
/// going back into its room is no room switch.
#[test]
fn a_dropped_connection_resumed_within_the_grace_period_is_unnoticed() {
    let server = TestServer::start_with(|c| {
        c.presence_grace = Duration::from_secs(30);
        c.room_switches_per_minute = 1;
    });
    let mut erin = server.login_in("erin", "general");
    let mut dave = server.connect();
    let session = dave.hello("dave")["session"].as_str().unwrap().to_string();
    assert_eq!(dave.join("general")["type"], "joined");
    erin.expect("presence");
    // The network drops: the socket is gone without a sign_out.
    drop(dave);
    erin.assert_none(Duration::from_millis(500), "presence", |f| {
        f["type"] == "presence"
    });
    let mut dave = server.connect();
    let welcome = dave.request(json!({"type": "hello", "username": "dave", "resume": session}));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["room"], "general");
    // The page re-joins its room; its one switch a minute is spent, and
    // this is no switch.
    assert_eq!(dave.join("general")["type"], "joined");
    erin.say("e1", "still here?");
    dave.wait_for("erin's message", |f| {
        f["type"] == "message" && f["id"] == "e1"
    });
    erin.assert_none(Duration::from_millis(300), "presence", |f| {
        f["type"] == "presence"
    });
    // The limit still holds for a real switch.
    let design = dave.request(json!({"type": "create_room", "room": "Design"}));
    assert_eq!(design["type"], "rooms", "{design}");
    assert_error(&dave.join("Design"), "rate_limited");
}

/// Without a resume the session ends when the grace period is over: then
/// the room sees the user leave. Going back into the room they were in is
/// still no room switch.
#[test]
fn a_session_not_resumed_ends_after_the_grace_period() {
    let server = TestServer::start_with(|c| {
        c.presence_grace = Duration::from_millis(1500);
        c.room_switches_per_minute = 1;
    });
    let mut erin = server.login_in("erin", "general");
    let mut dave = server.login_in("dave", "general");
    erin.expect("presence");
    dave.clear();
    drop(dave);
    let dropped = std::time::Instant::now();
    let left = erin.expect("presence");
    assert_eq!(
        (left["user"].as_str(), left["state"].as_str()),
        (Some("dave"), Some("left"))
    );
    assert!(
        dropped.elapsed() >= Duration::from_millis(1000),
        "dave was signed out before the grace period ended"
    );
    // A new sign-in goes back to general without spending a switch.
    let mut dave = server.login("dave");
    assert_eq!(dave.join("general")["type"], "joined");
    assert_eq!(erin.expect("presence")["state"], "joined");
}

/// A sign-in without the token while the old session waits for its
/// connection (a new tab, another device) ends the old session and starts a
/// new one; a sign-in while the old connection is alive is still refused.
#[test]
fn a_sign_in_without_the_token_ends_a_waiting_session() {
    let server = TestServer::start_with(|c| c.presence_grace = Duration::from_secs(30));
    let mut erin = server.login_in("erin", "general");
    let dave = server.login_in("dave", "general");
    erin.expect("presence");
    assert_error(&server.connect().hello("dave"), "username_taken");
    drop(dave);
    let mut again = server.connect();
    let welcome = again.hello_retrying("dave", "username_taken");
    assert_eq!(welcome["room"], json!(null), "{welcome}");
    let left = erin.expect("presence");
    assert_eq!(
        (left["user"].as_str(), left["state"].as_str()),
        (Some("dave"), Some("left"))
    );
}

/// `sign_out` ends the session at once: the room sees the user leave, the
/// socket is closed normally, and the token no longer resumes anything.
#[test]
fn sign_out_ends_the_session_at_once() {
    let server = TestServer::start_with(|c| c.presence_grace = Duration::from_secs(30));
    let mut erin = server.login_in("erin", "general");
    let mut dave = server.connect();
    let session = dave.hello("dave")["session"].as_str().unwrap().to_string();
    dave.join("general");
    erin.expect("presence");
    let bye = dave.request(json!({"type": "sign_out"}));
    assert_eq!(bye["type"], "signed_out", "{bye}");
    let left = erin.expect("presence");
    assert_eq!(
        (left["user"].as_str(), left["state"].as_str()),
        (Some("dave"), Some("left"))
    );
    let close = dave.expect("__close");
    assert_eq!(close["code"], 1000, "{close}");
    // The old token is void: this is a new session, in no room.
    let mut back = server.connect();
    let welcome = back.request(json!({"type": "hello", "username": "dave", "resume": session}));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["room"], json!(null));
    assert_ne!(welcome["session"], json!(session));
    // Before signing in there is nothing to sign out of.
    assert_error(
        &server.connect().request(json!({"type": "sign_out"})),
        "not_logged_in",
    );
}
