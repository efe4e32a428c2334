//! Sending, acks, broadcast, retries, history pages and durability across
//! restarts, at the protocol level against a real server.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestServer, assert_error, now_ms};

fn seqs(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect()
}

fn keys(page: &Value) -> Vec<(i64, i64)> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["ts"].as_i64().unwrap(), m["seq"].as_i64().unwrap()))
        .collect()
}

#[test]
fn a_message_is_acked_to_the_sender_and_delivered_to_every_member() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let mut outsider = server.login("olga");
    let ts = now_ms() - 1234;

    let ack = alice.request(json!({"type": "send", "id": "c-1", "text": "hello", "ts": ts}));
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["id"], "c-1");
    assert_eq!(ack["room"], "general");
    assert_eq!(ack["ts"], ts);
    let seq = ack["seq"].as_i64().unwrap();

    let expected = json!({"type": "message", "room": "general", "seq": seq, "id": "c-1",
                          "from": "alice", "text": "hello", "ts": ts});
    assert_eq!(bob.expect("message"), expected);
    assert_eq!(alice.expect("message"), expected);
    outsider.assert_none(Duration::from_millis(300), "message", |f| {
        f["type"] == "message"
    });

    // seq strictly increases.
    let next = bob.say("b-1", "hi alice");
    assert!(next["seq"].as_i64().unwrap() > seq);
}

#[test]
fn invalid_messages_are_refused_and_nothing_is_stored() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    for text in [
        String::new(),
        "   \n\t ".into(),
        "bell \u{7}".into(),
        "x".repeat(4001),
    ] {
        assert_error(&alice.say("bad", &text), "invalid_message");
    }
    assert_error(&alice.say("", "no id"), "invalid_message");
    assert_error(&alice.say(&"i".repeat(65), "long id"), "invalid_message");
    // 4000 characters of a multi-byte letter are fine.
    assert_eq!(alice.say("max", &"é".repeat(4000))["type"], "ack");
    let page = alice.request(json!({"type": "history", "room": "general"}));
    assert_eq!(page["total"], 1);
    // The rejected id "bad" is still free.
    assert_eq!(alice.say("bad", "now fine")["type"], "ack");
}

#[test]
fn text_is_normalized_and_html_comes_back_byte_for_byte() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let payload = "<img src=x onerror=alert(1)><script>alert('x')</script> &amp; \"q\" \u{1F600}";
    alice.say("h", payload);
    let message = alice.expect("message");
    assert_eq!(message["text"], payload);
    alice.say("crlf", "line one\r\nline two\ttabbed");
    assert_eq!(
        alice.expect("message")["text"],
        "line one\nline two\ttabbed"
    );
    let page = alice.request(json!({"type": "history", "room": "general"}));
    assert_eq!(page["messages"][0]["text"], payload);
}

#[test]
fn far_off_or_missing_client_clocks_are_replaced_by_the_servers() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    for (id, ts) in [
        ("past", Some(now_ms() - 3_600_000)),
        ("future", Some(now_ms() + 600_000)),
        ("none", None),
    ] {
        let before = now_ms();
        let mut frame = json!({"type": "send", "id": id, "text": "t"});
        if let Some(ts) = ts {
            frame["ts"] = json!(ts);
        }
        let ack = alice.request(frame);
        let got = ack["ts"].as_i64().unwrap();
        assert!(got >= before && got <= now_ms(), "{id}: {ack}");
    }
    // Within five minutes the client's clock is kept.
    let skewed = now_ms() - 4 * 60 * 1000;
    let ack = alice.request(json!({"type": "send", "id": "near", "text": "t", "ts": skewed}));
    assert_eq!(ack["ts"], skewed);
}

#[test]
fn a_retried_id_is_stored_and_broadcast_once_even_across_a_restart() {
    let mut server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let mut first = alice.say("same", "original text");
    let mut again = alice.say("same", "different text");
    first.as_object_mut().unwrap().remove("req");
    again.as_object_mut().unwrap().remove("req");
    assert_eq!(first, again);
    bob.expect("message");
    bob.assert_none(Duration::from_millis(300), "second message", |f| {
        f["type"] == "message"
    });

    server.restart();
    let mut alice = server.login_in("alice", "general");
    let after = alice.say("same", "after restart");
    assert_eq!(after["seq"], first["seq"]);
    assert_eq!(after["ts"], first["ts"]);
    let page = alice.request(json!({"type": "history", "room": "general"}));
    assert_eq!(page["total"], 1);
    assert_eq!(page["messages"][0]["text"], "original text");

    // Ids are per user: bob may use the same id.
    let mut bob = server.login_in("bob", "general");
    assert_ne!(bob.say("same", "bob's own")["seq"], first["seq"]);
}

#[test]
fn ten_clients_sending_concurrently_all_see_every_message_once_in_the_same_order() {
    const CLIENTS: usize = 10;
    const EACH: usize = 200;
    let server = TestServer::start_with(|c| c.messages_per_second = 1000);
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|i| server.login_in(&format!("user{i}"), "general"))
        .collect();
    for c in &mut clients {
        c.clear();
    }
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            std::thread::spawn(move || {
                let mut received = Vec::new();
                let mut acks = 0;
                for n in 0..EACH {
                    client.send_json(json!({"type": "send", "id": format!("{i}-{n}"),
                                            "text": format!("message {n} from {i}"), "ts": now_ms()}));
                }
                while received.len() < CLIENTS * EACH || acks < EACH {
                    let frame = client.wait_for("message or ack", |f| {
                        f["type"] == "message" || f["type"] == "ack" || f["type"] == "error"
                    });
                    match frame["type"].as_str() {
                        Some("message") => received.push(frame["seq"].as_i64().unwrap()),
                        Some("ack") => acks += 1,
                        _ => panic!("client {i}: {frame}"),
                    }
                }
                received
            })
        })
        .collect();
    let streams: Vec<Vec<i64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let first = &streams[0];
    assert_eq!(first.len(), CLIENTS * EACH);
    assert_eq!(
        first.iter().collect::<HashSet<_>>().len(),
        CLIENTS * EACH,
        "duplicates"
    );
    assert!(first.windows(2).all(|w| w[0] < w[1]), "not in seq order");
    for stream in &streams[1..] {
        assert_eq!(stream, first);
    }
}

#[test]
fn messages_are_rate_limited_per_user_even_across_reconnects() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    for n in 0..10 {
        alice
            .send_json(json!({"type": "send", "id": format!("m{n}"), "text": "x", "ts": now_ms()}));
    }
    let limited = alice.say("m10", "one too many");
    assert_error(&limited, "rate_limited");
    let wait = limited["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 0 && wait <= 1000, "{limited}");
    // A second connection as the same user shares the limit.
    let session = {
        drop(alice);
        let mut again = server.connect();
        again.hello_retrying("alice", "username_taken");
        again.join("general");
        let reply = again.say("m11", "from a new socket");
        assert_error(&reply, "rate_limited");
        again
    };
    drop(session);
    // Nothing rate-limited was stored.
    let mut bob = server.login("bob");
    let page = bob.request(json!({"type": "history", "room": "general"}));
    assert_eq!(page["total"], 10);
}

#[test]
fn history_pages_walk_1234_messages_in_every_page_size() {
    const TOTAL: usize = 1234;
    let server = TestServer::start_with(|c| c.messages_per_second = 100_000);
    let mut alice = server.login_in("alice", "general");
    // Client clocks disagree: ts jitters by up to ±2 minutes around a
    // steady clock, so (ts, seq) order differs from seq order.
    let base = now_ms() - 60_000;
    for n in 0..TOTAL {
        let jitter = ((n * 7919) % 240_000) as i64 - 120_000;
        alice.send_json(
            json!({"type": "send", "id": format!("h{n}"), "text": format!("#{n}"),
                               "ts": base + n as i64 * 10 + jitter}),
        );
    }
    for n in 0..TOTAL {
        let ack = alice.wait_for("ack", |f| f["type"] == "ack" || f["type"] == "error");
        assert_eq!(ack["type"], "ack", "message {n}: {ack}");
    }
    let all =
        alice.request(json!({"type": "history", "room": "general", "since_seq": 0, "limit": 500}));
    assert_eq!(all["total"], TOTAL);
    let first_seq = seqs(&all)[0];

    // Every message, in (ts, seq) order.
    let mut expected: Vec<(i64, i64)> = Vec::new();
    let mut since = 0;
    loop {
        let page = alice.request(
            json!({"type": "history", "room": "general", "since_seq": since, "limit": 500}),
        );
        let s = seqs(&page);
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "since_seq pages ascend by seq"
        );
        expected.extend(keys(&page));
        match s.last() {
            Some(&last) if page["has_newer"] == true => since = last,
            _ => break,
        }
    }
    assert_eq!(expected.len(), TOTAL);
    expected.sort();

    for size in [50usize, 100, 200, 500] {
        // Newest page, then older pages down to the first message.
        let newest = alice.request(json!({"type": "history", "room": "general", "limit": size}));
        assert_eq!(newest["total"], TOTAL);
        assert_eq!(newest["has_newer"], false);
        let mut walked = keys(&newest);
        assert_eq!(walked, expected[TOTAL - size..]);
        let mut page = newest;
        while page["has_older"] == true {
            let (ts, seq) = keys(&page)[0];
            page = alice.request(json!({"type": "history", "room": "general", "limit": size,
                                        "before": {"ts": ts, "seq": seq}}));
            assert_eq!(page["has_newer"], true);
            let mut k = keys(&page);
            assert!(k.len() <= size && !k.is_empty());
            k.extend(walked);
            walked = k;
        }
        assert_eq!(walked, expected, "walking back with page size {size}");

        // And forward again from the oldest.
        let (ts, seq) = expected[0];
        let mut forward = vec![expected[0]];
        let mut cursor = json!({"ts": ts, "seq": seq});
        loop {
            let page = alice.request(
                json!({"type": "history", "room": "general", "limit": size, "after": cursor}),
            );
            assert_eq!(page["has_older"], true);
            let k = keys(&page);
            forward.extend(&k);
            if page["has_newer"] == false {
                break;
            }
            let (ts, seq) = *k.last().unwrap();
            cursor = json!({"ts": ts, "seq": seq});
        }
        assert_eq!(forward, expected, "walking forward with page size {size}");
    }

    // Catch-up from a seq in the middle.
    let mid = first_seq + 1000;
    let page = alice
        .request(json!({"type": "history", "room": "general", "since_seq": mid, "limit": 500}));
    assert_eq!(
        seqs(&page),
        (mid + 1..first_seq + TOTAL as i64).collect::<Vec<_>>()
    );
    assert_eq!(page["has_older"], true);
    assert_eq!(page["has_newer"], false);

    // join honours its limit.
    let joined = alice.request(json!({"type": "join", "room": "general", "limit": 200}));
    assert_eq!(joined["history"]["messages"].as_array().unwrap().len(), 200);

    for bad in [
        json!({"limit": 10}),
        json!({"limit": 1000}),
        json!({"limit": "50"}),
        json!({"since_seq": 1, "before": {"ts": 1, "seq": 1}}),
    ] {
        let mut frame = json!({"type": "history", "room": "general"});
        for (k, v) in bad.as_object().unwrap() {
            frame[k] = v.clone();
        }
        assert_error(&alice.request(frame), "bad_request");
    }
    assert_error(
        &alice.request(json!({"type": "history", "room": "nope"})),
        "no_such_room",
    );
}

#[test]
fn messages_sent_while_away_are_there_on_return() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let seen = alice.say("a1", "before bob leaves")["seq"]
        .as_i64()
        .unwrap();
    let mut bob = server.login_in("bob", "general");
    drop(bob);
    alice.say("a2", "while bob is away 1");
    alice.say("a3", "while bob is away 2");
    bob = server.connect();
    bob.hello_retrying("bob", "username_taken");
    let joined = bob.join("general");
    let texts: Vec<&str> = joined["history"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "before bob leaves",
            "while bob is away 1",
            "while bob is away 2"
        ]
    );
    let missed = bob.request(json!({"type": "history", "room": "general", "since_seq": seen}));
    assert_eq!(missed["messages"].as_array().unwrap().len(), 2);
}

#[test]
fn restart_keeps_users_rooms_and_messages() {
    let mut server = TestServer::start();
    let mut alice = server.login("Alice");
    alice.request(json!({"type": "create_room", "room": "Kitchen"}));
    alice.join("Kitchen");
    alice.say("k1", "soup is ready");
    drop(alice);
    server.restart();

    let mut again = server.connect();
    let welcome = again.hello("alice");
    assert_eq!(
        welcome["username"], "Alice",
        "first casing survives a restart"
    );
    let kitchen = welcome["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "Kitchen")
        .expect("room survives")
        .clone();
    assert_eq!(kitchen["created_by"], "Alice");
    assert_eq!(kitchen["members"], 0);
    let joined = again.join("kitchen");
    assert_eq!(joined["history"]["messages"][0]["text"], "soup is ready");
    assert_eq!(joined["history"]["messages"][0]["from"], "Alice");
    assert_eq!(joined["history"]["total"], 1);
}

/// `typing` is relayed to the others in the room, at most once per 2 s per
/// user, never answered and never stored.
#[test]
fn typing_is_relayed_to_the_room_and_throttled() {
    let server = TestServer::start_with(|c| c.messages_per_second = 1);
    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let mut elsewhere = server.login("carol");
    alice.clear();
    for _ in 0..5 {
        alice.send_json(json!({"type": "typing"}));
    }
    let typing = bob.expect("typing");
    assert_eq!(
        typing,
        json!({"type": "typing", "room": "general", "user": "alice"})
    );
    bob.assert_none(Duration::from_millis(500), "a second typing", |f| {
        f["type"] == "typing"
    });
    // No reply, and the message budget of one a second is untouched.
    alice.assert_none(Duration::from_millis(100), "a reply", |f| {
        f["type"] != "rooms"
    });
    assert_eq!(alice.say("m1", "done typing")["type"], "ack");
    elsewhere.assert_none(Duration::from_millis(100), "typing", |f| {
        f["type"] == "typing"
    });
    // Out of any room, or before signing in, it is dropped silently.
    elsewhere.send_json(json!({"type": "typing"}));
    let mut anonymous = server.connect();
    anonymous.send_json(json!({"type": "typing"}));
    anonymous.assert_none(Duration::from_millis(200), "a reply", |_| true);
    elsewhere.assert_none(Duration::from_millis(100), "a reply", |f| {
        f["type"] != "rooms" && f["type"] != "unread"
    });
    let history = bob.request(json!({"type": "history", "room": "general"}));
    assert_eq!(history["total"], 1, "{history}");
}
