//! Editing and deleting your own messages: who may, who is told, what
//! history shows afterwards, the message budget, and durability across a
//! restart.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Client, TestServer, assert_error, now_ms};

/// Sends a message and returns its seq.
fn said(client: &mut Client, id: &str, text: &str) -> i64 {
    let ack = client.say(id, text);
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["seq"].as_i64().expect("an ack has a seq")
}

fn without_req(mut frame: Value) -> Value {
    frame.as_object_mut().expect("an object").remove("req");
    frame
}

fn newest_page(client: &mut Client, room: &str) -> Value {
    let page = client.request(json!({"type": "history", "room": room}));
    assert_eq!(page["type"], "history", "{page}");
    page
}

#[test]
fn an_edit_is_stored_and_told_to_every_member_and_to_the_author_wherever_they_are() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let mut olga = server.login("olga");
    olga.request(json!({"type": "create_room", "room": "ops"}));
    olga.join("ops");
    let seq = said(&mut alice, "c-1", "fixed tpyo");
    bob.expect("message");
    // The author has moved on to another room; the edit still reaches
    // general, and the author by its reply.
    alice.join("ops");
    bob.clear();
    olga.clear();
    let before = now_ms();
    let reply = alice.request(json!({"type": "edit", "seq": seq, "text": "fixed typo"}));
    assert_eq!(reply["type"], "edited", "{reply}");
    assert!(reply["req"].is_string(), "the reply echoes req: {reply}");
    let edited_at = reply["edited_at"].as_i64().expect("edited_at");
    assert!(edited_at >= before && edited_at <= now_ms(), "{reply}");
    let expected = json!({"type": "edited", "room": "general", "seq": seq,
                          "text": "fixed typo", "edited_at": edited_at});
    assert_eq!(without_req(reply), expected);
    assert_eq!(bob.expect("edited"), expected);
    olga.assert_none(Duration::from_millis(300), "an edit of another room", |f| {
        f["type"] == "edited"
    });
    alice.assert_none(Duration::from_millis(100), "a second copy", |f| {
        f["type"] == "edited"
    });

    let page = newest_page(&mut bob, "general");
    let message = &page["messages"][0];
    assert_eq!(message["text"], "fixed typo");
    assert_eq!(message["edited_at"], edited_at);
    assert_eq!(message["id"], "c-1");
    assert_eq!(message["seq"], seq);
    assert!(message.get("deleted").is_none(), "{message}");
}

#[test]
fn a_deleted_message_keeps_its_place_in_history_as_an_empty_tombstone() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let first = said(&mut alice, "a", "first");
    let oops = said(&mut alice, "b", "@bob my password is hunter2");
    let last = said(&mut bob, "c", "last");
    let before = newest_page(&mut bob, "general");
    assert_eq!(before["total"], 3);
    bob.clear();

    let reply = alice.request(json!({"type": "delete_message", "seq": oops}));
    let expected = json!({"type": "message_deleted", "room": "general", "seq": oops});
    assert!(reply["req"].is_string(), "{reply}");
    assert_eq!(without_req(reply), expected);
    assert_eq!(bob.expect("message_deleted"), expected);

    let after = newest_page(&mut bob, "general");
    assert_eq!(after["total"], 3, "total stays stable");
    let seqs: Vec<i64> = after["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [first, oops, last], "the tombstone keeps its place");
    let tombstone = &after["messages"][1];
    let mut expected = before["messages"][1].clone();
    assert_eq!(expected["mentions"], json!(["bob"]), "{expected}");
    // Only its place is kept: not the text, nor whom it mentioned.
    expected["text"] = json!("");
    expected["deleted"] = json!(true);
    expected.as_object_mut().unwrap().remove("mentions");
    assert_eq!(tombstone, &expected);
    assert!(
        !after.to_string().contains("hunter2"),
        "the text is gone: {after}"
    );
    // Pages around it still line up.
    let older = bob.request(json!({"type": "history", "room": "general", "limit": 50,
                                   "before": {"ts": tombstone["ts"], "seq": oops}}));
    assert_eq!(older["messages"].as_array().unwrap().len(), 1);
    assert_eq!(older["has_newer"], true);
}

#[test]
fn only_the_author_may_edit_or_delete_and_only_a_live_message() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let seq = said(&mut alice, "a", "alice's words");

    for frame in [
        json!({"type": "edit", "seq": seq, "text": "bob's words"}),
        json!({"type": "delete_message", "seq": seq}),
    ] {
        assert_error(&bob.request(frame), "forbidden");
    }
    for missing in [seq + 1000, 0, -1, i64::MAX] {
        assert_error(
            &alice.request(json!({"type": "edit", "seq": missing, "text": "x"})),
            "no_such_message",
        );
        assert_error(
            &alice.request(json!({"type": "delete_message", "seq": missing})),
            "no_such_message",
        );
    }
    // An edit is checked like a send.
    for text in ["", "  \n ", "bell \u{7}", &"x".repeat(4001)] {
        assert_error(
            &alice.request(json!({"type": "edit", "seq": seq, "text": text})),
            "invalid_message",
        );
    }
    assert_error(
        &alice.request(json!({"type": "edit", "seq": "one", "text": "x"})),
        "bad_request",
    );
    // Deleted: gone for edits and deletes, and for everyone.
    assert_eq!(
        alice.request(json!({"type": "delete_message", "seq": seq}))["type"],
        "message_deleted"
    );
    assert_error(
        &alice.request(json!({"type": "edit", "seq": seq, "text": "back"})),
        "no_such_message",
    );
    assert_error(
        &alice.request(json!({"type": "delete_message", "seq": seq})),
        "no_such_message",
    );
    assert_error(
        &bob.request(json!({"type": "delete_message", "seq": seq})),
        "no_such_message",
    );
    bob.clear();
    bob.assert_none(
        Duration::from_millis(200),
        "a broadcast of a refusal",
        |f| f["type"] == "edited" || f["type"] == "message_deleted",
    );
}

#[test]
fn messages_of_a_deleted_room_cannot_be_edited_even_when_its_name_lives_again() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    alice.request(json!({"type": "create_room", "room": "Design"}));
    alice.join("Design");
    let seq = said(&mut alice, "d", "in the old room");
    alice.request(json!({"type": "delete_room", "room": "Design"}));
    alice.request(json!({"type": "create_room", "room": "design"}));
    for frame in [
        json!({"type": "edit", "seq": seq, "text": "x"}),
        json!({"type": "delete_message", "seq": seq}),
    ] {
        assert_error(&alice.request(frame), "no_such_message");
    }
}

#[test]
fn edits_and_deletes_spend_the_message_budget() {
    let server = TestServer::start_with(|config| config.messages_per_second = 3);
    let mut alice = server.login_in("alice", "general");
    let seq = said(&mut alice, "a", "one");
    // With the send, three in a second: the fourth of any kind waits.
    alice.send_json(json!({"type": "edit", "seq": seq, "text": "two"}));
    alice.send_json(json!({"type": "edit", "seq": seq, "text": "three"}));
    let refused = alice.request(json!({"type": "delete_message", "seq": seq}));
    assert_error(&refused, "rate_limited");
    let wait = refused["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(wait > 0 && wait <= 1000, "{refused}");
    std::thread::sleep(Duration::from_millis(wait));
    assert_eq!(
        alice.request(json!({"type": "delete_message", "seq": seq}))["type"],
        "message_deleted"
    );
}

#[test]
fn an_edit_of_a_message_sent_just_before_it_follows_the_ack() {
    // A client that guesses the seq of a message it has sent but whose ack
    // it has not read yet: the send is stored and acked before the edit is
    // looked at, so the author reads the ack first.
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let previous = said(&mut alice, "a", "before");
    alice.clear();
    alice.send_json(json!({"type": "send", "id": "b", "text": "draft", "ts": now_ms()}));
    alice.send_json(json!({"type": "edit", "seq": previous + 1, "text": "final", "req": "e"}));
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let frame = alice.wait_for("ack, message and edited", |f| {
            matches!(
                f["type"].as_str(),
                Some("ack" | "message" | "edited" | "error")
            )
        });
        kinds.push(frame["type"].as_str().unwrap().to_string());
        if frame["type"] == "edited" {
            assert_eq!(frame["seq"], previous + 1);
            assert_eq!(frame["req"], "e");
        }
    }
    assert_eq!(kinds, ["ack", "message", "edited"]);
}

#[test]
fn edits_and_deletes_are_kept_across_a_restart() {
    let mut server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let kept = said(&mut alice, "a", "frist");
    let gone = said(&mut alice, "b", "regret");
    let edited = alice.request(json!({"type": "edit", "seq": kept, "text": "first"}));
    assert_eq!(edited["type"], "edited");
    alice.request(json!({"type": "delete_message", "seq": gone}));
    drop(alice);
    server.restart();
    let mut bob = server.login("bob");
    let page = newest_page(&mut bob, "general");
    assert_eq!(page["total"], 2);
    assert_eq!(page["messages"][0]["text"], "first");
    assert_eq!(page["messages"][0]["edited_at"], edited["edited_at"]);
    assert_eq!(page["messages"][1]["text"], "");
    assert_eq!(page["messages"][1]["deleted"], true);
    let mut alice = server.login("alice");
    assert_error(
        &alice.request(json!({"type": "edit", "seq": gone, "text": "x"})),
        "no_such_message",
    );
}
