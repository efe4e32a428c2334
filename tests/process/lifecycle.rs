//! The built `parlor` binary as a person runs it: its command line, its
//! refusal to touch a file that is not its database, its durability when
//! killed with SIGKILL right after acknowledging messages, a clean stop on
//! SIGTERM, live backups, and carrying on with its stdout closed or after
//! being stopped and continued.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::{Client, PARLOR, Running, TempDir, now_ms};

#[test]
fn every_acked_message_survives_sigkill() {
    let dir = TempDir::new("crash");
    let db = dir.db();
    let mut acked: Vec<(String, i64)> = Vec::new();
    for round in 0..3 {
        let server = Running::start(&db, &["--messages-per-second", "10000"]);
        let mut clients: Vec<Client> = (0..3)
            .map(|i| {
                let mut c = Client::connect(server.ws);
                c.hello(&format!("writer{i}"));
                c.join("general");
                c
            })
            .collect();
        for (i, c) in clients.iter_mut().enumerate() {
            for n in 0..100 {
                c.send_json(json!({"type": "send", "id": format!("{round}-{i}-{n}"),
                                   "text": format!("round {round} writer {i} #{n}"), "ts": now_ms()}));
            }
        }
        for c in &mut clients {
            for _ in 0..100 {
                let ack = c.wait_for("ack", |f| f["type"] == "ack");
                acked.push((
                    ack["id"].as_str().unwrap().to_string(),
                    ack["seq"].as_i64().unwrap(),
                ));
            }
        }
        // Killed right after the last ack: no clean shutdown, no checkpoint.
        server.kill();
    }

    let server = Running::start(&db, &[]);
    let mut reader = Client::connect(server.ws);
    reader.hello("reader");
    let mut stored = Vec::new();
    let mut since = 0;
    loop {
        let page = reader.request(
            json!({"type": "history", "room": "general", "since_seq": since, "limit": 500}),
        );
        for m in page["messages"].as_array().unwrap() {
            stored.push((
                m["id"].as_str().unwrap().to_string(),
                m["seq"].as_i64().unwrap(),
            ));
        }
        if page["has_newer"] != true {
            break;
        }
        since = stored.last().unwrap().1;
    }
    acked.sort_by_key(|a| a.1);
    assert_eq!(
        stored, acked,
        "every acked message, exactly once, with its seq"
    );
}

#[test]
fn bad_arguments_exit_with_code_2_and_one_line() {
    for args in [
        &["--max-users", "none"][..],
        &["--bogus"],
        &["--db"],
        &["--log-level", "chatty"],
    ] {
        let out = Command::new(PARLOR)
            .args(args)
            .output()
            .expect("run parlor");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("parlor: "), "{stderr}");
    }
    let help = Command::new(PARLOR).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--max-users"));
    let version = Command::new(PARLOR).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("parlor "));
}

#[test]
fn a_file_that_is_not_a_parlor_database_is_refused_and_left_alone() {
    let dir = TempDir::new("notdb");
    let path = dir.path().join("notes.txt");
    let content =
        "These are my notes. They are not a database, and must stay exactly as they are.\n"
            .repeat(3);
    std::fs::write(&path, &content).unwrap();
    let out = Command::new(PARLOR)
        .args(["--http", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--db"])
        .arg(&path)
        .output()
        .expect("run parlor");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.txt"),
        "the error names the file: {stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_cleanly() {
    let dir = TempDir::new("sigterm");
    let mut server = Running::start(&dir.db(), &[]);
    let mut alice = Client::connect(server.ws);
    alice.hello("alice");
    alice.join("general");
    assert_eq!(alice.say("m", "kept")["type"], "ack");
    server.signal("TERM");
    let close = alice.wait_for("close", |f| {
        f["type"] == "__close" || f["type"] == "__closed"
    });
    assert_eq!(close["code"], 1001, "{close}");
    let exit = server.wait_exit(Duration::from_secs(2));
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn backup_copies_a_live_database_that_restores() {
    let dir = TempDir::new("backup");
    let server = Running::start(&dir.db(), &[]);
    let mut alice = Client::connect(server.ws);
    alice.hello("alice");
    alice.request(json!({"type": "create_room", "room": "Archive"}));
    alice.join("Archive");
    for n in 0..5 {
        alice.say(&format!("b{n}"), &format!("backed up {n}"));
    }
    let copy = dir.path().join("copy.db");
    let out = Command::new(PARLOR)
        .args(["backup", "--db"])
        .arg(dir.db())
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The live server keeps working during and after the backup.
    assert_eq!(alice.say("after", "not in the copy")["type"], "ack");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // A second backup to the same file is refused rather than overwriting.
    let again = Command::new(PARLOR)
        .args(["backup", "--db"])
        .arg(dir.db())
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!again.status.success());

    let restored = Running::start(&copy, &[]);
    let mut reader = Client::connect(restored.ws);
    reader.hello("reader");
    let joined = reader.join("Archive");
    let texts: Vec<&str> = joined["history"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "backed up 0",
            "backed up 1",
            "backed up 2",
            "backed up 3",
            "backed up 4"
        ]
    );
}

#[test]
fn logging_never_takes_the_server_down_when_its_output_is_gone() {
    // `Running` closes stdout after the start-up line; logs go to stderr.
    // A warning (a far-off client clock) must not break anything.
    let dir = TempDir::new("closed-stdout");
    let server = Running::start(&dir.db(), &["--log-level", "info"]);
    let mut alice = Client::connect(server.ws);
    alice.hello("alice");
    alice.join("general");
    let skewed = alice.request(json!({"type": "send", "id": "a", "text": "old clock", "ts": 0}));
    assert_eq!(skewed["type"], "ack");
    assert_eq!(alice.say("b", "still here")["type"], "ack");
}

#[test]
fn a_server_stopped_and_continued_keeps_its_connections() {
    // Linux fails blocking calls on sockets with a timeout with EINTR when
    // the process is stopped and continued (Ctrl+Z then `fg`, a debugger,
    // a frozen container); a connection must not take that for a break.
    let dir = TempDir::new("stop-cont");
    let server = Running::start(&dir.db(), &[]);
    let mut alice = Client::connect(server.ws);
    let mut bob = Client::connect(server.ws);
    alice.hello("alice");
    bob.hello("bob");
    alice.join("general");
    bob.join("general");
    for _ in 0..3 {
        server.signal("STOP");
        std::thread::sleep(Duration::from_millis(100));
        server.signal("CONT");
    }
    let ack = alice.say("after", "still here");
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = bob.wait_for("alice's message", |f| {
        f["type"] == "message" || f["type"].as_str().is_some_and(|t| t.starts_with("__"))
    });
    assert_eq!(got["type"], "message", "{got}");
    assert_eq!(got["text"], "still here", "{got}");
}
