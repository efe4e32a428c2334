//! Edits and deletions against the `parlor` binary killed with SIGKILL:
//! what the author was told is on disk, and the erased text is gone from
//! the database file, its WAL and the search index once the server runs
//! again, whether the message was indexed before it was changed or not.

use std::path::Path;

use serde_json::json;

use crate::support::{Client, Running, TempDir, assert_error};

/// Whether `needle` occurs in the database file or its WAL.
fn on_disk(db: &Path, needle: &str) -> bool {
    ["", "-wal"].iter().any(|suffix| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        std::fs::read(&name).is_ok_and(|bytes| {
            bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
    })
}

#[test]
fn an_acknowledged_edit_and_delete_survive_sigkill_and_the_old_text_is_gone_after_restart() {
    let dir = TempDir::new("erase");
    let db = dir.db();
    let server = Running::start(&db, &[]);
    let mut alice = Client::connect(server.ws);
    alice.hello("alice");
    alice.join("general");
    let typo = alice.say("a", "meet at the zebrafishcafe")["seq"].clone();
    let secret = alice.say("b", "the vault code is 7391quokka")["seq"].clone();
    // A search indexes both first; the next message is (most likely)
    // deleted before the server's next indexing step.
    let found = alice.request(json!({"type": "search", "query": "7391quokka"}));
    assert_eq!(found["messages"][0]["seq"], secret, "{found}");
    let unindexed = alice.say("c", "the alarm is 2468wombat")["seq"].clone();
    let deleted = alice.request(json!({"type": "delete_message", "seq": unindexed}));
    assert_eq!(deleted["type"], "message_deleted", "{deleted}");
    let edited = alice.request(json!({"type": "edit", "seq": typo, "text": "meet at noon"}));
    assert_eq!(edited["type"], "edited", "{edited}");
    let deleted = alice.request(json!({"type": "delete_message", "seq": secret}));
    assert_eq!(deleted["type"], "message_deleted", "{deleted}");
    server.kill();

    let server = Running::start(&db, &[]);
    let mut bob = Client::connect(server.ws);
    bob.hello("bob");
    let page = bob.request(json!({"type": "history", "room": "general"}));
    assert_eq!(page["total"], 3, "{page}");
    assert_eq!(page["messages"][0]["text"], "meet at noon");
    assert_eq!(page["messages"][0]["edited_at"], edited["edited_at"]);
    assert_eq!(page["messages"][1]["text"], "");
    assert_eq!(page["messages"][1]["deleted"], true);
    assert_eq!(page["messages"][2]["deleted"], true);
    let search = |bob: &mut Client, query: &str| {
        let reply = bob.request(json!({"type": "search", "query": query}));
        assert_eq!(reply["type"], "search_results", "{reply}");
        reply["messages"].as_array().map_or(0, Vec::len)
    };
    assert_eq!(search(&mut bob, "noon"), 1);
    for word in [
        "zebrafishcafe",
        "7391quokka",
        "2468wombat",
        "vault",
        "alarm",
    ] {
        assert_eq!(search(&mut bob, word), 0, "{word} is found");
    }
    // Each batch ends with the scrub before the next begins: after this
    // reply, the restarted server has cleared whatever the kill left.
    assert_error(
        &bob.request(json!({"type": "delete_message", "seq": secret})),
        "no_such_message",
    );
    for needle in ["zebrafishcafe", "7391quokka", "2468wombat"] {
        assert!(!on_disk(&db, needle), "{needle} is still on disk");
    }
    assert!(on_disk(&db, "meet at noon"));
}
