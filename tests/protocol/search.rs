//! Search: what a query finds (every word, the last as a prefix, ignoring
//! case and diacritics, never as syntax), what it never finds (deleted
//! messages and rooms, replaced text), the room filter, paging, the
//! refusals; and `history` around a result.

use serde_json::{Value, json};

use crate::support::{Client, TestServer, assert_error, now_ms};

fn search(client: &mut Client, query: Value) -> Value {
    let mut frame = json!({"type": "search"});
    for (key, value) in query.as_object().expect("an object") {
        frame[key] = value.clone();
    }
    client.request(frame)
}

/// The texts a search found, newest first.
fn texts(reply: &Value) -> Vec<String> {
    assert_eq!(reply["type"], "search_results", "{reply}");
    reply["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().expect("text").to_string())
        .collect()
}

fn found(client: &mut Client, query: &str) -> Vec<String> {
    texts(&search(client, json!({"query": query})))
}

fn said(client: &mut Client, id: &str, text: &str) -> i64 {
    let ack = client.say(id, text);
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["seq"].as_i64().expect("an ack has a seq")
}

#[test]
fn every_word_must_match_the_last_as_a_prefix_ignoring_case_and_diacritics() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    for (id, text) in [
        ("1", "Deploy plan for Friday"),
        ("2", "the plan: deploy on Monday"),
        ("3", "deployment postponed"),
        ("4", "Crème brûlée at the Café in Zürich"),
        ("5", "nothing to see"),
    ] {
        said(&mut alice, id, text);
    }
    // Found the moment it is acked, newest first.
    assert_eq!(
        found(&mut alice, "deploy plan"),
        ["the plan: deploy on Monday", "Deploy plan for Friday"]
    );
    assert_eq!(
        found(&mut alice, "depl"),
        [
            "deployment postponed",
            "the plan: deploy on Monday",
            "Deploy plan for Friday"
        ]
    );
    // Only the last word is a prefix.
    assert!(found(&mut alice, "depl plan").is_empty());
    assert_eq!(found(&mut alice, "PLAN FRI"), ["Deploy plan for Friday"]);
    let creme = ["Crème brûlée at the Café in Zürich"];
    assert_eq!(found(&mut alice, "creme brulee"), creme);
    assert_eq!(found(&mut alice, "CAFÉ zurich"), creme);
    assert_eq!(found(&mut alice, "cafe\tzu"), creme);
    assert!(found(&mut alice, "plan friday monday").is_empty());

    let reply = search(&mut alice, json!({"query": "deploy plan"}));
    let message = &reply["messages"][1];
    assert_eq!(reply["query"], "deploy plan");
    assert_eq!(reply["room"], Value::Null);
    assert_eq!(reply["has_more"], false);
    assert_eq!(message["type"], "message");
    assert_eq!(message["room"], "general");
    assert_eq!(message["from"], "alice");
    assert_eq!(message["id"], "1");
    assert!(
        message["seq"].is_i64() && message["ts"].is_i64(),
        "{message}"
    );
}

#[test]
fn search_syntax_in_a_query_is_only_text() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    said(
        &mut alice,
        "1",
        "say \"quoted\" OR NEAR(this) - that * star",
    );
    said(&mut alice, "2", "an e-mail about the plan");
    said(&mut alice, "3", "plan only");
    for query in [
        "\"quoted\"",
        "\"quoted",
        "OR",
        "near(this)",
        "NEAR(this) -",
        "say * star",
        "that*",
        "- that",
    ] {
        assert_eq!(
            found(&mut alice, query),
            ["say \"quoted\" OR NEAR(this) - that * star"],
            "{query}"
        );
    }
    // Operators are words to find, not operators: "OR" does not widen,
    // "-" and NOT do not exclude.
    assert!(found(&mut alice, "plan OR quoted").is_empty());
    assert_eq!(
        found(&mut alice, "plan -mail"),
        ["an e-mail about the plan"]
    );
    assert!(found(&mut alice, "plan NOT mail").is_empty());
    // A word split by the index is a phrase: its parts in order.
    assert_eq!(found(&mut alice, "e-mail"), ["an e-mail about the plan"]);
    assert!(found(&mut alice, "mail-e").is_empty());
    // Nothing but punctuation, quotes, stars, brackets, colons, carets:
    // no error, and nothing found.
    for query in [
        "\"", "***", "(", ")", ":", "text:", "^", "\"\"", "{text}:", "-", "+", "'",
    ] {
        assert!(found(&mut alice, query).is_empty(), "{query}");
    }
}

#[test]
fn deleted_messages_rooms_and_replaced_text_are_never_found() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let edited = said(&mut alice, "1", "the launch code is swordfish");
    let deleted = said(&mut alice, "2", "the launch is at noon");
    alice.request(json!({"type": "create_room", "room": "Secret"}));
    alice.join("Secret");
    said(&mut alice, "3", "the launch room");
    alice.join("general");
    assert_eq!(found(&mut alice, "launch").len(), 3);

    let reply =
        alice.request(json!({"type": "edit", "seq": edited, "text": "the launch code is marlin"}));
    let edited_at = reply["edited_at"].as_i64().expect("edited");
    assert!(found(&mut alice, "swordfish").is_empty());
    let reply = search(&mut alice, json!({"query": "marlin"}));
    assert_eq!(texts(&reply), ["the launch code is marlin"]);
    assert_eq!(reply["messages"][0]["edited_at"], edited_at);

    alice.request(json!({"type": "delete_message", "seq": deleted}));
    assert!(found(&mut alice, "noon").is_empty());
    alice.request(json!({"type": "delete_room", "room": "Secret"}));
    assert_eq!(
        found(&mut alice, "launch"),
        ["the launch code is marlin"],
        "neither the deleted message nor the deleted room's"
    );
    // A new room of the same name starts empty, in search too.
    alice.request(json!({"type": "create_room", "room": "secret"}));
    let reply = search(&mut alice, json!({"query": "launch", "room": "secret"}));
    assert!(texts(&reply).is_empty());
}

#[test]
fn a_search_can_be_kept_to_one_room_which_must_be_live() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    said(&mut alice, "1", "standup in general");
    alice.request(json!({"type": "create_room", "room": "Ops"}));
    alice.join("Ops");
    said(&mut alice, "2", "standup in ops");
    // Anyone signed in may search, in a room or not.
    let mut bob = server.login("bob");
    assert_eq!(
        found(&mut bob, "standup"),
        ["standup in ops", "standup in general"]
    );
    let reply = search(&mut bob, json!({"query": "standup", "room": " OPS "}));
    assert_eq!(texts(&reply), ["standup in ops"]);
    assert_eq!(reply["room"], "Ops");
    assert_eq!(reply["messages"][0]["room"], "Ops");
    let reply = search(&mut bob, json!({"query": "standup", "room": "general"}));
    assert_eq!(texts(&reply), ["standup in general"]);
    assert_error(
        &search(&mut bob, json!({"query": "standup", "room": "Opps"})),
        "no_such_room",
    );
}

#[test]
fn results_come_a_page_at_a_time_with_before_seq() {
    let server = TestServer::start_with(|config| config.messages_per_second = 1000);
    let mut alice = server.login_in("alice", "general");
    let seqs: Vec<i64> = (0..7)
        .map(|n| said(&mut alice, &format!("m{n}"), &format!("retro note {n}")))
        .collect();
    said(&mut alice, "other", "unrelated");
    let page_seqs = |reply: &Value| -> Vec<i64> {
        reply["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_i64().unwrap())
            .collect()
    };
    let first = search(&mut alice, json!({"query": "retro", "limit": 3}));
    assert_eq!(page_seqs(&first), [seqs[6], seqs[5], seqs[4]]);
    assert_eq!(first["has_more"], true);
    let second = search(
        &mut alice,
        json!({"query": "retro", "limit": 3, "before_seq": seqs[4]}),
    );
    assert_eq!(page_seqs(&second), [seqs[3], seqs[2], seqs[1]]);
    assert_eq!(second["has_more"], true);
    let last = search(
        &mut alice,
        json!({"query": "retro", "limit": 3, "before_seq": seqs[1]}),
    );
    assert_eq!(page_seqs(&last), [seqs[0]]);
    assert_eq!(last["has_more"], false);
    // The default is 50.
    let all = search(&mut alice, json!({"query": "retro note"}));
    assert_eq!(page_seqs(&all).len(), 7);
    assert_eq!(all["has_more"], false);
}

#[test]
fn empty_or_long_queries_and_odd_limits_are_bad_requests() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    for query in [
        json!(""),
        json!("   "),
        json!(" \t\n "),
        json!("x".repeat(201)),
    ] {
        assert_error(&search(&mut alice, json!({"query": query})), "bad_request");
    }
    for limit in [json!(0), json!(101), json!(-1), json!("50")] {
        assert_error(
            &search(&mut alice, json!({"query": "x", "limit": limit})),
            "bad_request",
        );
    }
    assert_error(&alice.request(json!({"type": "search"})), "bad_request");
    // The edges are fine.
    let reply = search(&mut alice, json!({"query": "é".repeat(200), "limit": 100}));
    assert_eq!(reply["type"], "search_results", "{reply}");
    let reply = search(&mut alice, json!({"query": "x", "limit": 1}));
    assert_eq!(reply["type"], "search_results", "{reply}");
}

#[test]
fn history_around_a_message_puts_it_in_the_middle_of_the_page() {
    let server = TestServer::start_with(|config| config.messages_per_second = 1000);
    let mut alice = server.login_in("alice", "general");
    let base = now_ms() - 100_000;
    let mut keys = Vec::new();
    for n in 0..120 {
        let ts = base + n * 100;
        let ack = alice.request(
            json!({"type": "send", "id": format!("m{n}"), "text": format!("#{n}"), "ts": ts}),
        );
        keys.push((ack["ts"].as_i64().unwrap(), ack["seq"].as_i64().unwrap()));
    }
    let around = |alice: &mut Client, i: usize| {
        let (ts, seq) = keys[i];
        alice.request(json!({"type": "history", "room": "general", "limit": 50,
                             "around": {"ts": ts, "seq": seq}}))
    };
    let page_keys = |page: &Value| -> Vec<(i64, i64)> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["ts"].as_i64().unwrap(), m["seq"].as_i64().unwrap()))
            .collect()
    };
    // In the middle: 25 older, the message, 24 newer.
    let page = around(&mut alice, 60);
    assert_eq!(page["type"], "history", "{page}");
    assert_eq!(page_keys(&page), keys[35..85]);
    assert_eq!(
        (page["has_older"].clone(), page["has_newer"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(page["total"], 120);
    // Near an end, the other side fills the page.
    let page = around(&mut alice, 3);
    assert_eq!(page_keys(&page), keys[0..50]);
    assert_eq!(
        (page["has_older"].clone(), page["has_newer"].clone()),
        (json!(false), json!(true))
    );
    let page = around(&mut alice, 118);
    assert_eq!(page_keys(&page), keys[70..120]);
    assert_eq!(
        (page["has_older"].clone(), page["has_newer"].clone()),
        (json!(true), json!(false))
    );
    // At most one cursor.
    let (ts, seq) = keys[10];
    assert_error(
        &alice.request(json!({"type": "history", "room": "general",
                              "around": {"ts": ts, "seq": seq}, "before": {"ts": ts, "seq": seq}})),
        "bad_request",
    );
}
