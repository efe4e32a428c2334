//! Nothing acknowledged is lost, twenty crashes in a row: the built binary
//! is started on one database file, several clients send bursts, and the
//! process is killed with SIGKILL at a random moment while sends are in
//! flight. Some unacknowledged ids are sent again after the next start, as a
//! client does when its ack was lost. At the end every acked message is
//! there exactly once with the seq its ack gave, nothing is there twice or
//! was never sent, and SQLite finds the file intact.
//!
//! The random choices (kill delays, which ids to retry) come from a seed
//! printed when the test fails; `PARLOR_CRASH_SEED=N` replays them. The
//! exact interleaving of threads is up to the machine and is not replayed.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::support::{Retry, Running, TempDir, now_ms};

const ROUNDS: usize = 20;
const WRITERS: usize = 4;
/// Most messages one writer sends in a round. Far more than the server
/// stores in the longest delay before the kill, so it dies mid-burst.
const BURST: usize = 4000;
/// Messages written between two reads of the replies.
const CHUNK: usize = 20;
/// Longest wait, after the burst starts, before the SIGKILL.
const MAX_KILL_DELAY_MS: u64 = 100;
/// Most earlier unacked ids a writer sends again at the start of a round.
const RETRIES_PER_ROUND: usize = 10;
/// How long a writer keeps going if the kill somehow never comes.
const WRITER_DEADLINE: Duration = Duration::from_secs(30);
/// A rate limit that no burst reaches.
/// Limits raised: the writers send as fast as they can, and the check reads
/// every page of history at once.
const SERVER_ARGS: [&str; 6] = [
    "--messages-per-second",
    "100000",
    "--requests-per-second",
    "100000",
    "--request-burst",
    "100000",
];

/// xorshift64*: enough randomness for choosing delays, and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    match std::env::var("PARLOR_CRASH_SEED") {
        Ok(seed) => seed.parse().expect("PARLOR_CRASH_SEED is a number"),
        // Any non-zero value will do; xorshift stays at zero from zero.
        Err(_) => (now_ms() as u64).max(1),
    }
}

/// Opens a WebSocket. Each read may wait up to 10 s, the handshake's
/// included: a machine busy with other tests can be slow to answer.
fn connect(addr: SocketAddr) -> WebSocket<Retry<TcpStream>> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    let (ws, _) = tungstenite::client(format!("ws://{addr}/"), Retry(stream)).expect("handshake");
    ws
}

/// Sends `frame` and returns the reply that echoes its `req`, passing over
/// broadcasts.
fn request(ws: &mut WebSocket<Retry<TcpStream>>, mut frame: Value) -> Value {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let req = format!("q{}", NEXT.fetch_add(1, Ordering::Relaxed));
    frame["req"] = json!(req);
    ws.send(Message::text(frame.to_string()))
        .expect("send a request");
    loop {
        if let Message::Text(text) = ws.read().expect("read a reply within 10 s") {
            let reply: Value = serde_json::from_str(&text).expect("server sends JSON");
            if reply["req"] == req || reply["ref"] == req {
                return reply;
            }
        }
    }
}

/// What one writer did in one round.
#[derive(Default)]
struct WriterLog {
    /// Every send written to the socket: (id, text).
    sent: Vec<(String, String)>,
    /// Every ack read: (id, seq).
    acks: Vec<(String, i64)>,
    /// Error frames, which none of these sends should get.
    errors: Vec<Value>,
    /// A close frame from the server: it ended the connection itself.
    closed: Option<Value>,
}

/// One writer's round: signs in and joins before the barrier, then sends
/// `retries` and fresh messages in chunks, reading replies between chunks,
/// until the server dies (or the burst ends and the server then dies).
fn write_burst(
    ws: SocketAddr,
    name: String,
    round: usize,
    retries: Vec<String>,
    start: Arc<Barrier>,
) -> WriterLog {
    let mut ws = connect(ws);
    let welcome = request(&mut ws, json!({"type": "hello", "username": name}));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let joined = request(&mut ws, json!({"type": "join", "room": "general"}));
    assert_eq!(joined["type"], "joined", "{joined}");
    ws.get_mut()
        .0
        .set_read_timeout(Some(Duration::from_millis(2)))
        .expect("set timeout");

    let mut log = WriterLog::default();
    let fresh = (0..BURST).map(|n| format!("r{round}-{n}"));
    let mut outgoing = retries.into_iter().chain(fresh).map(|id| {
        let text = format!("{name} round {round} {id}");
        (id, text)
    });
    let deadline = Instant::now() + WRITER_DEADLINE;
    start.wait();
    let mut alive = true;
    let mut sending = true;
    while alive && Instant::now() < deadline {
        if sending {
            let chunk: Vec<(String, String)> = outgoing.by_ref().take(CHUNK).collect();
            sending = !chunk.is_empty();
            for (id, text) in chunk {
                let frame = json!({"type": "send", "id": id, "text": text, "ts": now_ms()});
                // Recorded before writing: a send cut off half-written may
                // still have reached the server.
                log.sent.push((id, text));
                if ws.write(Message::text(frame.to_string())).is_err() {
                    alive = false;
                    break;
                }
            }
            if alive && ws.flush().is_err() {
                alive = false;
            }
        }
        // Read whatever has arrived; once everything is sent, wait here
        // for the kill.
        loop {
            match ws.read() {
                Ok(Message::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).expect("server sends JSON");
                    match frame["type"].as_str() {
                        Some("ack") => {
                            log.acks.push((
                                frame["id"].as_str().expect("ack id").to_string(),
                                frame["seq"].as_i64().expect("ack seq"),
                            ));
                            // The next chunk goes before the last acks of
                            // this one come, so that sends are always in
                            // flight when the kill lands (a fast disk acks
                            // a chunk before the reads here time out).
                            if sending && log.sent.len() - log.acks.len() < CHUNK {
                                break;
                            }
                        }
                        Some("error") => log.errors.push(frame),
                        _ => {}
                    }
                }
                Ok(Message::Close(frame)) => {
                    log.closed = Some(json!(frame.map(|f| f.to_string())));
                    alive = false;
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if sending {
                        break;
                    }
                }
                Err(_) => {
                    alive = false;
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
    }
    log
}

/// Everything stored, read back through `history` with `since_seq`
/// paging: (from, id, seq, text) in seq order, and the page's `total`.
fn read_back(ws: SocketAddr) -> (Vec<(String, String, i64, String)>, u64) {
    let mut reader = connect(ws);
    let welcome = request(&mut reader, json!({"type": "hello", "username": "reader"}));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let mut stored = Vec::new();
    let mut since = 0;
    loop {
        let page = request(
            &mut reader,
            json!({"type": "history", "room": "general", "since_seq": since, "limit": 500}),
        );
        assert_eq!(page["type"], "history", "{page}");
        let messages = page["messages"].as_array().expect("messages");
        for m in messages {
            stored.push((
                m["from"].as_str().expect("from").to_string(),
                m["id"].as_str().expect("id").to_string(),
                m["seq"].as_i64().expect("seq"),
                m["text"].as_str().expect("text").to_string(),
            ));
        }
        if page["has_newer"] != true {
            let total = page["total"].as_u64().expect("total");
            return (stored, total);
        }
        assert!(!messages.is_empty(), "has_newer with an empty page: {page}");
        since = stored.last().expect("not empty").2;
    }
}

#[test]
fn acked_messages_survive_twenty_sigkills_mid_burst() {
    let seed = seed();
    eprintln!("crash loop seed {seed} (replay the random choices with PARLOR_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = TempDir::new("crash-loop");
    let db = dir.db();
    let started = Instant::now();

    // Keyed by (sender, id): every text sent with it, and the seq acked.
    let mut sent: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut acked: HashMap<(String, String), i64> = HashMap::new();
    let mut sends = 0;
    let mut kills_mid_burst = 0;

    for round in 0..ROUNDS {
        let server = Running::start(&db, &SERVER_ARGS);
        let start = Arc::new(Barrier::new(WRITERS + 1));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let name = format!("writer{w}");
                let mut unacked: Vec<String> = sent
                    .keys()
                    .filter(|(from, id)| {
                        *from == name && !acked.contains_key(&(from.clone(), id.clone()))
                    })
                    .map(|(_, id)| id.clone())
                    .collect();
                unacked.sort();
                let retries: Vec<String> = (0..RETRIES_PER_ROUND.min(unacked.len()))
                    .map(|_| unacked.swap_remove(rng.below(unacked.len() as u64) as usize))
                    .collect();
                let (ws, start) = (server.ws, start.clone());
                std::thread::spawn(move || write_burst(ws, name, round, retries, start))
            })
            .collect();
        start.wait();
        std::thread::sleep(Duration::from_millis(rng.below(MAX_KILL_DELAY_MS + 1)));
        server.kill();

        let mut round_acks = 0;
        let mut round_sends = 0;
        for (w, writer) in writers.into_iter().enumerate() {
            let log = writer.join().expect("writer thread");
            let name = format!("writer{w}");
            assert!(
                log.errors.is_empty(),
                "seed {seed}, round {round}, {name}: error replies {:?}",
                log.errors
            );
            if let Some(closed) = &log.closed {
                panic!(
                    "seed {seed}, round {round}, {name}: the server closed the connection itself: {closed}"
                );
            }
            let this_round: HashSet<&str> = log.sent.iter().map(|(id, _)| id.as_str()).collect();
            round_sends += log.sent.len();
            if log.sent.len() > log.acks.len() {
                kills_mid_burst += 1;
            }
            for (id, seq) in &log.acks {
                assert!(
                    this_round.contains(id.as_str()),
                    "seed {seed}, round {round}, {name}: ack for {id}, which was not sent"
                );
                let key = (name.clone(), id.clone());
                if let Some(earlier) = acked.insert(key, *seq) {
                    assert_eq!(
                        earlier, *seq,
                        "seed {seed}, round {round}, {name}: {id} acked with two seqs"
                    );
                }
            }
            round_acks += log.acks.len();
            for (id, text) in log.sent {
                sent.entry((name.clone(), id)).or_default().push(text);
            }
        }
        sends += round_sends;
        eprintln!("round {round}: {round_sends} sends, {round_acks} acks");
    }

    let mut server = Running::start(&db, &SERVER_ARGS);
    let (stored, total) = read_back(server.ws);
    server.signal("TERM");
    let exit = server.wait_exit(Duration::from_secs(5));
    assert!(
        exit.success(),
        "seed {seed}: parlor exited with {exit} on SIGTERM"
    );

    let mut seen: HashMap<(String, String), i64> = HashMap::new();
    let mut last_seq = 0;
    for (from, id, seq, text) in &stored {
        assert!(*seq > last_seq, "seed {seed}: seq {seq} after {last_seq}");
        last_seq = *seq;
        let key = (from.clone(), id.clone());
        let texts = sent
            .get(&key)
            .unwrap_or_else(|| panic!("seed {seed}: stored {from}/{id}, which was never sent"));
        assert!(
            texts.contains(text),
            "seed {seed}: {from}/{id} stored with text {text:?}, sent as {texts:?}"
        );
        if let Some(first) = seen.insert(key, *seq) {
            panic!("seed {seed}: {from}/{id} stored twice, as {first} and {seq}");
        }
    }
    for ((from, id), seq) in &acked {
        assert_eq!(
            seen.get(&(from.clone(), id.clone())),
            Some(seq),
            "seed {seed}: {from}/{id} was acked with seq {seq}"
        );
    }
    assert_eq!(total, stored.len() as u64, "seed {seed}: the room's total");

    let conn = rusqlite::Connection::open(&db).expect("open the database directly");
    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
        .expect("integrity_check runs");
    assert_eq!(integrity, ["ok"], "seed {seed}");
    let broken_keys: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
            row.get(0)
        })
        .expect("foreign_key_check runs");
    assert_eq!(broken_keys, 0, "seed {seed}: rows pointing nowhere");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
        .expect("count messages");
    assert_eq!(
        rows,
        stored.len() as i64,
        "seed {seed}: every row is in general"
    );

    eprintln!(
        "{ROUNDS} rounds in {:.1} s: {sends} sends, {} acked, {} stored, {kills_mid_burst} writer rounds cut off mid-burst",
        started.elapsed().as_secs_f64(),
        acked.len(),
        stored.len()
    );
    assert!(
        kills_mid_burst >= ROUNDS,
        "seed {seed}: the kill should usually land while sends are unanswered"
    );
}
