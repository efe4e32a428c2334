//! Read marks, unread counts and mentions: `read`, the counts in room
//! lists, the `unread` frames, `joined.read_seq`, and `mentions` on
//! messages.

use serde_json::{Value, json};

use crate::support::{Client, TestServer, assert_error};

/// The entry for `room` in a `welcome` or `rooms` frame.
fn room<'a>(list: &'a Value, room: &str) -> &'a Value {
    let rooms = list["rooms"].as_array().expect("a room list");
    rooms
        .iter()
        .find(|r| r["name"] == room)
        .unwrap_or_else(|| panic!("no {room} in {list}"))
}

/// Waits for the `unread` frame of `room` that carries these counts; earlier
/// ones (counts on the way there) are passed over.
fn wait_unread(client: &mut Client, room: &str, unread: u64, mentions: u64) -> Value {
    client.wait_for(
        &format!("{room} at {unread} unread, {mentions} mentions"),
        |f| {
            f["type"] == "unread"
                && f["room"] == room
                && f["unread"] == unread
                && f["mentions"] == mentions
        },
    )
}

#[test]
fn unread_counts_follow_messages_from_others_and_read_marks() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    alice.request(json!({"type": "create_room", "room": "Design"}));
    assert_eq!(alice.join("Design")["type"], "joined");
    let mut bob = server.login_in("bob", "general");
    // Bob writes in general while alice is in Design: three messages, one
    // naming her.
    let mut last = 0;
    for (id, text) in [
        ("b1", "hello"),
        ("b2", "ping @Alice, look"),
        ("b3", "anyone?"),
    ] {
        last = bob.say(id, text)["seq"].as_i64().unwrap();
    }
    wait_unread(&mut alice, "general", 3, 1);
    // Bob's own messages are not unread for him, and he is in the room.
    bob.assert_none(std::time::Duration::from_millis(300), "unread", |f| {
        f["type"] == "unread"
    });
    let list = bob.request(json!({"type": "create_room", "room": "Ops"}));
    assert_eq!(room(&list, "general")["unread"], 0, "{list}");
    // The room lists alice gets carry her counts, not bob's.
    let list = alice.wait_for("the room list with Ops", |f| {
        f["type"] == "rooms"
            && f["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "Ops")
    });
    assert_eq!(room(&list, "general")["unread"], 3, "{list}");
    assert_eq!(room(&list, "general")["mentions"], 1, "{list}");
    assert_eq!(room(&list, "Ops")["unread"], 0, "{list}");
    // Reading part of it: only what is newer counts.
    let first = last - 2;
    let counts = alice.request(json!({"type": "read", "room": "general", "seq": first}));
    assert_eq!(
        (
            counts["type"].as_str(),
            counts["unread"].as_u64(),
            counts["mentions"].as_u64()
        ),
        (Some("unread"), Some(2), Some(1)),
        "{counts}"
    );
    // A mark never goes back.
    let counts = alice.request(json!({"type": "read", "room": "general", "seq": 0}));
    assert_eq!(counts["unread"], 2, "{counts}");
    // Joining tells her where she had read to.
    let joined = alice.join("general");
    assert_eq!(joined["read_seq"], first, "{joined}");
    let counts = alice.request(json!({"type": "read", "room": "general", "seq": last + 1000}));
    assert_eq!(
        (counts["unread"].as_u64(), counts["mentions"].as_u64()),
        (Some(0), Some(0))
    );
    // Past the newest message the mark stops at it.
    assert_eq!(alice.join("general")["read_seq"], last);
}

#[test]
fn read_marks_survive_a_restart_and_new_users_start_with_everything_read() {
    let mut server = TestServer::start();
    let mut alice = server.login("alice");
    alice.request(json!({"type": "create_room", "room": "Design"}));
    let mut bob = server.login_in("bob", "general");
    let mut seqs = Vec::new();
    for n in 0..4 {
        seqs.push(
            bob.say(&format!("b{n}"), &format!("message {n}"))["seq"]
                .as_i64()
                .unwrap(),
        );
    }
    wait_unread(&mut alice, "general", 4, 0);
    let counts = alice.request(json!({"type": "read", "room": "general", "seq": seqs[1]}));
    assert_eq!(counts["unread"], 2);
    // Someone new: what was said before they first came counts as read.
    let carol = server.connect().hello("carol");
    assert_eq!(room(&carol, "general")["unread"], 0, "{carol}");
    drop((alice, bob));
    server.restart();
    let mut alice = server.connect();
    let welcome = alice.hello("alice");
    assert_eq!(room(&welcome, "general")["unread"], 2, "{welcome}");
    assert_eq!(alice.join("general")["read_seq"], seqs[1]);
    // A room created after a user first came is unread from its start.
    let mut bob = server.login_in("bob", "Design");
    bob.say("d1", "first in Design");
    let counts = alice.request(json!({"type": "read", "room": "Design", "seq": 0}));
    assert_eq!(counts["unread"], 1, "{counts}");
}

#[test]
fn deleted_messages_are_not_unread_live_or_after_a_restart() {
    let mut server = TestServer::start();
    let mut alice = server.login("alice");
    let mut bob = server.login_in("bob", "general");
    let naming = bob.say("b1", "@alice have a look")["seq"].clone();
    let plain = bob.say("b2", "or not")["seq"].clone();
    bob.say("b3", "still here");
    wait_unread(&mut alice, "general", 3, 1);
    // Bob takes back the one naming her: her counts go down with it.
    let deleted = bob.request(json!({"type": "delete_message", "seq": naming}));
    assert_eq!(deleted["type"], "message_deleted", "{deleted}");
    wait_unread(&mut alice, "general", 2, 0);
    bob.request(json!({"type": "delete_message", "seq": plain}));
    wait_unread(&mut alice, "general", 1, 0);
    // Counted again from the database, the tombstones stay out.
    drop((alice, bob));
    server.restart();
    let welcome = server.connect().hello("alice");
    let general = room(&welcome, "general");
    assert_eq!(
        (general["unread"].as_u64(), general["mentions"].as_u64()),
        (Some(1), Some(0)),
        "{welcome}"
    );
}

#[test]
fn mentions_name_existing_users_once_in_their_own_casing() {
    let server = TestServer::start();
    let _alice = server.login("Alice");
    let mut bob = server.login_in("bob", "general");
    bob.say("m1", "@alice and @ALICE, @nobody, mail@bob.example, @bob.");
    let message = bob.wait_for("m1", |f| f["type"] == "message" && f["id"] == "m1");
    assert_eq!(message["mentions"], json!(["Alice", "bob"]), "{message}");
    bob.say("m2", "no one here");
    let plain = bob.wait_for("m2", |f| f["type"] == "message" && f["id"] == "m2");
    assert!(plain.get("mentions").is_none(), "{plain}");
    let page = bob.request(json!({"type": "history", "room": "general"}));
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages[0]["mentions"], json!(["Alice", "bob"]), "{page}");
    assert!(messages[1].get("mentions").is_none(), "{page}");
    // Mentioning yourself is no unread mention.
    let mut carol = server.login("carol");
    let counts = carol.request(json!({"type": "read", "room": "general", "seq": 0}));
    assert_eq!(counts["mentions"], 0);
}

#[test]
fn bad_reads_are_refused() {
    let server = TestServer::start();
    let mut alice = server.login("alice");
    assert_error(
        &alice.request(json!({"type": "read", "room": "nowhere", "seq": 1})),
        "no_such_room",
    );
    assert_error(
        &alice.request(json!({"type": "read", "room": "general", "seq": -5})),
        "bad_request",
    );
    assert_error(
        &alice.request(json!({"type": "read", "room": "general"})),
        "bad_request",
    );
    assert_error(
        &server
            .connect()
            .request(json!({"type": "read", "room": "general", "seq": 1})),
        "not_logged_in",
    );
}

/// `read_by`: the others in the room hear how far someone has read, at most
/// once a second per reader (the newest mark), and `joined` lists every
/// member's mark.
#[test]
fn the_room_hears_who_has_read_how_far() {
    let server = TestServer::start();
    let mut alice = server.login_in("alice", "general");
    let mut bob = server.login_in("bob", "general");
    let mut seqs = Vec::new();
    for n in 0..3 {
        seqs.push(alice.say(&format!("a{n}"), "hi")["seq"].as_i64().unwrap());
    }
    // Bob's coming in told alice his mark then.
    let seen = alice.expect("read_by");
    assert_eq!(
        (seen["user"].as_str(), seen["seq"].as_i64()),
        (Some("bob"), Some(0))
    );
    bob.request(json!({"type": "read", "room": "general", "seq": seqs[0]}));
    let seen = alice.expect("read_by");
    assert_eq!(
        seen,
        json!({"type": "read_by", "room": "general", "user": "bob", "seq": seqs[0]})
    );
    // Two more marks within the second: alice hears only the newest.
    bob.request(json!({"type": "read", "room": "general", "seq": seqs[1]}));
    bob.request(json!({"type": "read", "room": "general", "seq": seqs[2]}));
    let seen = alice.expect("read_by");
    assert_eq!(seen["seq"], seqs[2], "{seen}");
    alice.assert_none(std::time::Duration::from_millis(1500), "read_by", |f| {
        f["type"] == "read_by"
    });
    // The reader is not told of their own marks.
    bob.assert_none(std::time::Duration::from_millis(100), "read_by", |f| {
        f["type"] == "read_by"
    });
    let mut carol = server.login("carol");
    let joined = carol.join("general");
    assert_eq!(joined["read_by"]["bob"], seqs[2], "{joined}");
    assert!(joined["read_by"]["alice"].is_i64(), "{joined}");
    // Someone coming in: the room hears how far they had read it.
    bob.request(json!({"type": "leave"}));
    let back = bob.join("general");
    assert_eq!(back["read_seq"], seqs[2]);
    let seen = carol.wait_for("bob's mark as he comes back", |f| {
        f["type"] == "read_by" && f["user"] == "bob"
    });
    assert_eq!(seen["seq"], seqs[2], "{seen}");
}
