//! Storage that turns hostile under a running server: the database and its
//! WAL files made immutable (`chattr +i`) while a client writes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Client, PARLOR, TempDir, now_ms};

/// Files made immutable for as long as this lives (so the temporary
/// directory can be removed after, whatever happened).
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// None where `chattr +i` cannot be used (not root, or a filesystem
    /// without the attribute).
    fn set(files: Vec<PathBuf>) -> Option<Immutable> {
        let guard = Immutable(Vec::new());
        files.into_iter().try_fold(guard, |mut guard, file| {
            let set = Command::new("chattr")
                .arg("+i")
                .arg(&file)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            set.then(|| {
                guard.0.push(file);
                guard
            })
        })
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for file in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(file).status();
        }
    }
}

#[test]
fn immutable_database_files_never_end_the_server_silently() {
    let dir = TempDir::new("immutable");
    let db = dir.db();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(PARLOR)
        .args(["--http", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("create the log file"))
        .spawn()
        .expect("start parlor");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the start-up line");
    let ws = line
        .split("ws://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .expect("the start-up line names the WebSocket");
    let mut alice = Client::connect(ws);
    alice.hello("alice");
    alice.join("general");
    assert_eq!(alice.say("m0", "before")["type"], "ack");

    let files = ["", "-wal", "-shm"].map(|suffix| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    });
    let Some(immutable) = Immutable::set(files.to_vec()) else {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("NOTICE: chattr +i does not work here (needs root and ext4); skipped");
        return;
    };
    let mut replies = Vec::new();
    for n in 1..=5 {
        let frame = json!({"type": "send", "id": format!("m{n}"), "text": "now", "ts": now_ms()});
        if alice
            .ws
            .send(tungstenite::Message::text(frame.to_string()))
            .is_err()
        {
            break;
        }
        let reply = alice.try_wait_for(Duration::from_secs(5), &|f| {
            f["type"] == "ack" || f["type"] == "error"
        });
        match reply {
            Some(reply) => replies.push(reply),
            None => break,
        }
    }
    let started = Instant::now();
    let exit = loop {
        match child.try_wait().expect("wait") {
            Some(status) => break Some(status),
            None if started.elapsed() > Duration::from_millis(500) => break None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    drop(immutable);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).expect("read the log");
    match exit {
        // Still running: every write was answered, with storage_error.
        None => {
            assert_eq!(replies.len(), 5, "{replies:?}");
            for reply in &replies {
                assert_eq!(reply["code"], "storage_error", "{reply}");
            }
        }
        // Stopped: the log says why, and what to look at.
        Some(status) => assert!(
            stderr.contains("ERROR") && stderr.contains("-shm"),
            "parlor ended ({status}) without saying why; its log:\n{stderr}"
        ),
    }
}
