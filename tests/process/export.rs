//! `parlor export` run as a person runs it, next to a live server: a room
//! of 1,234 messages comes out complete, in order and byte for byte; bad
//! input is refused with one line and the right exit code, and nothing is
//! ever overwritten.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::{Client, PARLOR, Running, TempDir, now_ms};

const MESSAGES: usize = 1234;
/// Which of them carries markup, emoji and more than one line.
const MARKUP_AT: usize = 617;
const MARKUP: &str = "<script>alert('x')</script> **bold** _it_ `code` [link](javascript:x) \
                      & &amp; | ~~gone~~ \\ \"quoted\" 🎉👩‍👩‍👧 ünïcödé\n# line two\twith a tab";

fn export(db: &Path, args: &[&str], dest: &Path) -> Output {
    Command::new(PARLOR)
        .arg("export")
        .arg("--db")
        .arg(db)
        .args(args)
        .arg(dest)
        .output()
        .expect("run parlor export")
}

/// The one line a refused export prints, after checking its exit code.
fn refusal(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("parlor: "), "{stderr}");
    stderr
}

fn text_of(n: usize) -> String {
    if n == MARKUP_AT {
        MARKUP.to_string()
    } else {
        format!("message number {n}")
    }
}

#[test]
fn a_long_room_is_exported_whole_in_order_and_byte_for_byte_while_the_server_runs() {
    let dir = TempDir::new("export");
    let db = dir.db();
    let server = Running::start(&db, &["--messages-per-second", "100000"]);
    let mut bob = Client::connect(server.ws);
    bob.hello("bob");
    bob.join("general");
    assert_eq!(bob.say("g1", "in general")["type"], "ack");
    let mut alice = Client::connect(server.ws);
    alice.hello("alice");
    alice.request(json!({"type": "create_room", "room": "Long Room"}));
    alice.join("Long Room");
    // One millisecond apart, a minute ago: the export's order is the
    // sending order. Sent in rounds, so alice's unread replies stay small.
    let start = now_ms() - 60_000;
    let mut acked = Vec::with_capacity(MESSAGES);
    for round in (0..MESSAGES).collect::<Vec<_>>().chunks(100) {
        for &n in round {
            alice.send_json(
                json!({"type": "send", "id": format!("m{n}"), "text": text_of(n),
                                   "ts": start + n as i64}),
            );
        }
        for _ in round {
            let ack = alice.wait_for("ack", |f| f["type"] == "ack");
            acked.push(ack["seq"].as_i64().unwrap());
        }
        alice.backlog.clear();
    }

    let jsonl = dir.path().join("long.jsonl");
    let out = export(&db, &["--room", "long ROOM"], &jsonl);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.contains("Exported 1234 message(s) from 1 room"),
        "{said}"
    );
    // The server is still there, and writing.
    assert_eq!(alice.say("after", "not exported")["type"], "ack");

    let raw = std::fs::read_to_string(&jsonl).unwrap();
    let lines: Vec<&str> = raw.lines().collect();
    assert_eq!(lines.len(), MESSAGES);
    assert!(raw.ends_with('\n'));
    let mut seqs = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let m: Value = serde_json::from_str(line).unwrap();
        assert_eq!(m["type"], "message");
        assert_eq!(m["room"], "Long Room");
        assert_eq!(m["id"], format!("m{n}"), "out of order at {n}");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["ts"], start + n as i64);
        assert_eq!(m["text"], text_of(n));
        seqs.push(m["seq"].as_i64().unwrap());
    }
    acked.sort();
    assert_eq!(seqs, acked, "every acked message once, by seq");
    // The message with markup is the protocol's frame, byte for byte: the
    // text is only JSON-escaped, its emoji and markup left as they are.
    let expected = format!(
        r#"{{"type":"message","room":"Long Room","seq":{},"id":"m{MARKUP_AT}","from":"alice","text":{},"ts":{}}}"#,
        seqs[MARKUP_AT],
        serde_json::to_string(MARKUP).unwrap(),
        start + MARKUP_AT as i64
    );
    assert_eq!(lines[MARKUP_AT], expected);
    assert!(lines[MARKUP_AT].contains("<script>") && lines[MARKUP_AT].contains("🎉👩‍👩‍👧"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&jsonl).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "history is private");
    }

    // Markdown, every room: a section each, sorted by name.
    let md = dir.path().join("all.md");
    let out = export(&db, &["--format", "markdown"], &md);
    assert!(out.status.success(), "{out:?}");
    let transcript = std::fs::read_to_string(&md).unwrap();
    let general = transcript.find("# general\n").expect("a general section");
    let long = transcript
        .find("\n# Long Room\n")
        .expect("a Long Room section");
    assert!(general < long, "{transcript:.300}");
    let items = transcript.lines().filter(|l| l.starts_with("- ")).count();
    assert_eq!(items, MESSAGES + 2, "one item per message");
    assert!(transcript.contains("\n## "), "a heading per day");
    assert!(
        transcript.contains(
            "**: \\<script\\>alert('x')\\</script\\> \\*\\*bold\\*\\* \\_it\\_ \\`code\\` \
             \\[link\\](javascript:x) \\& \\&amp; \\| \\~\\~gone\\~\\~ \\\\ \"quoted\" \
             🎉👩‍👩‍👧 ünïcödé\\\n  \\# line two\twith a tab\n"
        ),
        "the markup message is escaped to show as typed"
    );

    // From a day to come: nothing yet.
    let later = dir.path().join("later.jsonl");
    let out = export(&db, &["--since", "2999-01-01"], &later);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&later).unwrap(), "");
}

#[test]
fn bad_input_is_refused_in_one_line_and_nothing_is_overwritten() {
    let dir = TempDir::new("export-refusals");
    let db = dir.db();
    let server = Running::start(&db, &[]);
    let mut alice = Client::connect(server.ws);
    alice.hello("alice");
    alice.join("general");
    alice.say("a", "hello");
    drop(server);

    let dest = dir.path().join("out.jsonl");
    std::fs::write(&dest, "precious\n").unwrap();
    let stderr = refusal(&export(&db, &[], &dest), 1);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "precious\n");

    let fresh = dir.path().join("fresh.jsonl");
    let stderr = refusal(&export(&db, &["--room", "Nowhere"], &fresh), 1);
    assert!(stderr.contains("no room named \"Nowhere\""), "{stderr}");
    assert!(!fresh.exists(), "a refused export leaves no file");

    let stderr = refusal(&export(&db, &["--since", "2025-13-01"], &fresh), 2);
    assert!(stderr.contains("like 2025-11-25"), "{stderr}");
    let stderr = refusal(&export(&db, &["--format", "pdf"], &fresh), 2);
    assert!(stderr.contains("jsonl or markdown"), "{stderr}");
    let stderr = refusal(&export(&dir.path().join("none.db"), &[], &fresh), 1);
    assert!(stderr.contains("no database file"), "{stderr}");
    assert!(!fresh.exists());
}
