//! `parlor-bench history`: a room with a million messages (and smaller
//! rooms interleaved with it) written through Parlor's own [`Store`], then
//! the server started on it and measured from one client: start-up, join
//! with its first page, newest and deep pages for every page size,
//! `since_seq` catch-up, room switches, and searches for a rare word and
//! for one in every tenth message.
//!
//! The database is built once and cached under the output directory (its
//! parameters beside it in a `.json`); every run copies it, so runs never
//! change it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parlor::store::{NewMessage, Store, UserId};
use serde_json::{Value, json};

use crate::client::Conn;
use crate::now_ms;
use crate::server::{ParlorLaunch, ServerProcess, TempDir};
use crate::stats::{Summary, round3};

const PAGE_SIZES: [u32; 4] = [50, 100, 200, 500];
const SMALL_ROOMS: usize = 49;
/// Every 26th message goes to one of the small rooms, so the big room gets
/// 25 of every 26 and the small rooms share the rest.
const CYCLE: usize = 26;
const USERS: usize = 20;
const BATCH: usize = 10_000;
/// One message a second, with every 50th from a clock 3 s behind, so
/// `(ts, seq)` order is not `seq` order.
const STEP_MS: i64 = 1000;
/// A word in every 10th message, and one in every 20,000th (52 of the
/// default 1,040,000): what the searches look for (the texts spell them
/// out, so that each is one token of a plain text).
const COMMON_WORD: &str = "deploy";
const COMMON_EVERY: usize = 10;
const RARE_WORD: &str = "zephyr";
const RARE_EVERY: usize = 20_000;

pub struct HistoryOptions {
    pub binary: PathBuf,
    /// Messages in the big room; a multiple of 25.
    pub messages: usize,
    pub catch_up: usize,
    pub reps: usize,
    pub startups: usize,
    pub rebuild: bool,
    pub pin: bool,
    pub out: PathBuf,
}

/// Where generated message `i` went: its room (0 = the big room) and
/// position; `seq` is `i + 1` because the database starts empty.
fn room_of(i: usize) -> usize {
    if i % CYCLE == CYCLE - 1 {
        1 + (i / CYCLE) % SMALL_ROOMS
    } else {
        0
    }
}

fn ts_of(base: i64, i: usize) -> i64 {
    base + i as i64 * STEP_MS - if i % 50 == 49 { 3000 } else { 0 }
}

fn big_name() -> &'static str {
    "million"
}

fn small_name(k: usize) -> String {
    format!("side-{k}")
}

/// The parameters a cached database was built with.
fn manifest(messages: usize, base: i64) -> Value {
    json!({"messages": messages, "small_rooms": SMALL_ROOMS, "cycle": CYCLE,
           "users": USERS, "base_ts": base, "format": 3,
           "common_word": [COMMON_WORD, COMMON_EVERY], "rare_word": [RARE_WORD, RARE_EVERY]})
}

/// Builds (or reuses) the database; returns its path and base timestamp.
fn database(options: &HistoryOptions) -> Result<(PathBuf, i64, Option<Duration>), String> {
    let path = options.out.join(format!("history-{}.db", options.messages));
    let manifest_path = path.with_extension("db.json");
    if !options.rebuild
        && path.exists()
        && let Ok(text) = std::fs::read_to_string(&manifest_path)
        && let Ok(saved) = serde_json::from_str::<Value>(&text)
        && let Some(base) = saved["base_ts"].as_i64()
        && saved == manifest(options.messages, base)
    {
        return Ok((path, base, None));
    }
    for suffix in ["", "-wal", "-shm", ".json"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
    let started = Instant::now();
    let base = now_ms() - 40 * 24 * 3600 * 1000;
    build(&path, options.messages, base)?;
    std::fs::write(&manifest_path, manifest(options.messages, base).to_string())
        .map_err(|e| format!("cannot write {}: {e}", manifest_path.display()))?;
    Ok((path, base, Some(started.elapsed())))
}

fn build(path: &Path, messages: usize, base: i64) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("building {}: {e}", path.display());
    if messages == 0 || !messages.is_multiple_of(25) {
        return Err("--messages must be a positive multiple of 25".into());
    }
    let mut store = Store::open(path).map_err(|e| fail(&e))?;
    let users: Vec<UserId> = (0..USERS)
        .map(|u| store.login_user(&format!("user-{u}"), base).map(|r| r.id))
        .collect::<Result<_, _>>()
        .map_err(|e| fail(&e))?;
    let mut rooms = vec![
        store
            .create_room(big_name(), users[0], base)
            .map_err(|e| fail(&e))?,
    ];
    for k in 0..SMALL_ROOMS {
        rooms.push(
            store
                .create_room(&small_name(k), users[0], base)
                .map_err(|e| fail(&e))?,
        );
    }
    let total = messages / (CYCLE - 1) * CYCLE;
    let filler = "lorem ipsum dolor sit amet ".repeat(8);
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..total {
        let ts = ts_of(base, i);
        let extra = (i * 7) % 120;
        let common = if i % COMMON_EVERY == 3 { " deploy" } else { "" };
        let rare = if i % RARE_EVERY == 11 { " zephyr" } else { "" };
        batch.push(NewMessage {
            room_id: rooms[room_of(i)],
            user_id: users[i % USERS],
            client_id: format!("h{i}"),
            text: format!("message {i} {}{common}{rare}", &filler[..extra]),
            ts,
            received_at: ts,
            mentions: Vec::new(),
        });
        if batch.len() == BATCH || i + 1 == total {
            let seqs = store.insert_messages(&batch).map_err(|e| fail(&e))?;
            let first = (i + 1 - batch.len()) as i64 + 1;
            if seqs.first().map(|s| s.seq().0) != Some(first) {
                return Err(fail(&"sequence numbers are not contiguous from 1"));
            }
            // Indexed for search as the server does it, after the commit;
            // a database left unindexed would have the server index it in
            // slices when it starts, and the first search wait for the rest.
            store.index_for_search(u64::MAX).map_err(|e| fail(&e))?;
            batch.clear();
        }
    }
    Ok(())
}

/// Copies the cached database (and any WAL) into a fresh directory.
fn copy_database(from: &Path, dir: &TempDir) -> Result<PathBuf, String> {
    let to = dir.path().join("history.db");
    for suffix in ["", "-wal"] {
        let mut src = from.as_os_str().to_owned();
        src.push(suffix);
        let mut dst = to.as_os_str().to_owned();
        dst.push(suffix);
        if Path::new(&src).exists() {
            std::fs::copy(&src, &dst).map_err(|e| format!("copying the database: {e}"))?;
        }
    }
    Ok(to)
}

/// A small deterministic generator for cursor positions.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn timed(conn: &mut Conn, frame: Value, kind: &str) -> Result<(Value, Duration), String> {
    let start = Instant::now();
    let (reply, at) = conn.expect(frame, kind)?;
    Ok((reply, at - start))
}

pub fn run(options: &HistoryOptions) -> Result<Value, String> {
    std::fs::create_dir_all(&options.out)
        .map_err(|e| format!("cannot create {}: {e}", options.out.display()))?;
    println!("history: preparing a {}-message room ...", options.messages);
    let (cached, base, built_in) = database(options)?;
    let total = options.messages / (CYCLE - 1) * CYCLE;
    let big: Vec<usize> = (0..total).filter(|&i| room_of(i) == 0).collect();
    let db_bytes = std::fs::metadata(&cached).map(|m| m.len()).unwrap_or(0);
    let index_bytes = Store::open(&cached)
        .map_err(|e| e.to_string())
        .and_then(|store| store.search_index_bytes().map_err(|e| e.to_string()))
        .map_err(|e| format!("measuring the search index: {e}"))?;
    if let Some(took) = built_in {
        println!(
            "history: built {} ({} messages, {:.0} MB) in {:.1} s",
            cached.display(),
            total,
            db_bytes as f64 / 1e6,
            took.as_secs_f64()
        );
    }
    let dir = TempDir::new("history").map_err(|e| format!("temp dir: {e}"))?;
    let db = copy_database(&cached, &dir)?;
    let log = dir.path().join("server.log");
    let launch = ParlorLaunch {
        binary: &options.binary,
        db: &db,
        max_users: 100,
        pin: options.pin,
        log: &log,
    };

    // Start-up: from spawning the process until its address is printed, and
    // until a hello on a fresh connection is answered.
    let mut to_line = Vec::new();
    let mut to_welcome = Vec::new();
    let mut server = None;
    for attempt in 0..options.startups.max(1) {
        drop(server.take());
        let spawned = Instant::now();
        let process = ServerProcess::parlor(&launch)?;
        let mut conn = Conn::connect(process.ws_addrs[0])?;
        conn.expect(
            json!({"type": "hello", "username": format!("starter-{attempt}")}),
            "welcome",
        )?;
        to_welcome.push(spawned.elapsed());
        to_line.push(process.started_in);
        server = Some((process, conn));
    }
    let (process, mut conn) = server.expect("BUG: at least one start-up");
    let rss_idle = process.memory();

    let big_room = big_name();
    let side = small_name(0);
    let reps = options.reps.max(1);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut totals_seen = Vec::new();

    // Room switches with the default first page, both ways.
    let mut switch_in = Vec::new();
    let mut switch_out = Vec::new();
    for _ in 0..reps {
        let (reply, d) = timed(
            &mut conn,
            json!({"type": "join", "room": big_room}),
            "joined",
        )?;
        totals_seen.push(reply["history"]["total"].as_u64());
        switch_in.push(d);
        switch_out.push(timed(&mut conn, json!({"type": "join", "room": side}), "joined")?.1);
    }
    let all_switches: Vec<Duration> = switch_in.iter().chain(&switch_out).copied().collect();

    let mut per_size = Vec::new();
    for limit in PAGE_SIZES {
        let mut join = Vec::new();
        let mut newest = Vec::new();
        let mut before = Vec::new();
        let mut after = Vec::new();
        let page_reps = reps.div_ceil(2);
        for _ in 0..page_reps {
            conn.expect(json!({"type": "join", "room": side}), "joined")?;
            let (reply, d) = timed(
                &mut conn,
                json!({"type": "join", "room": big_room, "limit": limit}),
                "joined",
            )?;
            check_page(&reply["history"], limit)?;
            join.push(d);
        }
        for _ in 0..reps {
            let (reply, d) = timed(
                &mut conn,
                json!({"type": "history", "room": big_room, "limit": limit}),
                "history",
            )?;
            check_page(&reply, limit)?;
            totals_seen.push(reply["total"].as_u64());
            newest.push(d);
            // A cursor anywhere in the oldest 90 %: deep in history.
            let i = big[limit as usize + rng.below(big.len() * 9 / 10)];
            let cursor = json!({"ts": ts_of(base, i), "seq": i + 1});
            let (reply, d) = timed(
                &mut conn,
                json!({"type": "history", "room": big_room, "limit": limit, "before": cursor}),
                "history",
            )?;
            check_page(&reply, limit)?;
            before.push(d);
            let (reply, d) = timed(
                &mut conn,
                json!({"type": "history", "room": big_room, "limit": limit, "after": cursor}),
                "history",
            )?;
            check_page(&reply, limit)?;
            after.push(d);
        }
        per_size.push((limit, join, newest, before, after));
    }

    // Catch-up: everything after a seq with `catch_up` newer messages, in
    // pages of 500, as a reconnecting client does.
    let catch_up = options.catch_up.min(big.len() - 1);
    let since = big[big.len() - catch_up - 1] + 1;
    let mut catch_ups = Vec::new();
    let mut requests = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let mut seq = since as i64;
        let mut got = 0usize;
        requests = 0;
        loop {
            let (reply, _) = conn.expect(
                json!({"type": "history", "room": big_room, "limit": 500, "since_seq": seq}),
                "history",
            )?;
            requests += 1;
            let messages = reply["messages"].as_array().cloned().unwrap_or_default();
            got += messages.len();
            if let Some(last) = messages.last() {
                seq = last["seq"].as_i64().unwrap_or(seq);
            }
            if reply["has_newer"] != true {
                break;
            }
        }
        if got != catch_up {
            return Err(format!(
                "catch-up since seq {since} returned {got} messages, not {catch_up}"
            ));
        }
        catch_ups.push(start.elapsed());
    }
    // Searches, newest 50 results each: a rare word and a word in every
    // tenth message, across all rooms and in one; the common word in a
    // room without it (the whole room and the word's messages to pass
    // over); a deep page of the common word; and a one-letter prefix,
    // which matches every message.
    let rare_total = (0..total).filter(|i| i % RARE_EVERY == 11).count();
    let empty = format!("empty-{}", crate::nonce());
    conn.expect(json!({"type": "create_room", "room": empty}), "rooms")?;
    let searches: Vec<(String, Value, Option<usize>)> = vec![
        (
            format!("rare word ({rare_total}), all rooms"),
            json!({"query": RARE_WORD}),
            Some(rare_total.min(50)),
        ),
        (
            "rare word, the 1M room".to_string(),
            json!({"query": RARE_WORD, "room": big_room}),
            None,
        ),
        (
            "10 % word, all rooms".into(),
            json!({"query": COMMON_WORD}),
            Some(50),
        ),
        (
            "10 % word, the 1M room".into(),
            json!({"query": COMMON_WORD, "room": big_room}),
            Some(50),
        ),
        (
            "10 % word, a side room".into(),
            json!({"query": COMMON_WORD, "room": side}),
            None,
        ),
        (
            "10 % word, a room without it".into(),
            json!({"query": COMMON_WORD, "room": empty}),
            Some(0),
        ),
        (
            "two words, all rooms".into(),
            json!({"query": format!("{COMMON_WORD} lorem")}),
            Some(50),
        ),
        (
            "one-letter prefix (every message)".into(),
            json!({"query": "m"}),
            Some(50),
        ),
    ];
    let mut search_results = Vec::new();
    for (label, query, expected) in &searches {
        let mut times = Vec::new();
        for _ in 0..reps {
            let mut frame = query.clone();
            frame["type"] = json!("search");
            frame["limit"] = json!(50);
            let (reply, d) = timed(&mut conn, frame, "search_results")?;
            check_results(&reply, *expected)?;
            times.push(d);
        }
        search_results.push((label.clone(), query.clone(), Summary::of_durations(&times)));
    }
    let mut deep_search = Vec::new();
    for _ in 0..reps {
        let before = 1 + rng.below(total * 9 / 10) + total / 10;
        let frame =
            json!({"type": "search", "query": COMMON_WORD, "limit": 50, "before_seq": before});
        let (reply, d) = timed(&mut conn, frame, "search_results")?;
        check_results(&reply, Some(50))?;
        deep_search.push(d);
    }
    search_results.push((
        "10 % word, deep page (before_seq)".into(),
        json!({"query": COMMON_WORD, "before_seq": "random"}),
        Summary::of_durations(&deep_search),
    ));

    let unread = sign_ins_with_unread(&process, total)?;
    let rss = process.memory();
    let threads = process.threads();
    process.stop();

    let expected_total = big.len() as u64;
    let totals_ok = totals_seen.iter().all(|t| *t == Some(expected_total));
    let startup_line = Summary::of_durations(&to_line);
    let startup_welcome = Summary::of_durations(&to_welcome);
    let switch_all = Summary::of_durations(&all_switches);
    let catch = Summary::of_durations(&catch_ups);

    println!();
    println!(
        "history on a {}-message room (+{} side rooms, {} messages, {:.0} MB file), {} reps",
        big.len(),
        SMALL_ROOMS,
        total,
        db_bytes as f64 / 1e6,
        reps
    );
    println!(
        "  start-up until the address is printed   median {:7.1} ms  max {:7.1} ms",
        startup_line.p50, startup_line.max
    );
    println!(
        "  start-up until a hello is answered      median {:7.1} ms  max {:7.1} ms   (target <= 300 ms)",
        startup_welcome.p50, startup_welcome.max
    );
    println!("  round trips on loopback (ms)              p50       p99       max");
    let row = |label: &str, s: Summary, target: Option<f64>| {
        let verdict = match target {
            Some(t) if s.p99 <= t => format!("   (target p99 <= {t} ms: met)"),
            Some(t) => format!("   (target p99 <= {t} ms: MISSED)"),
            None => String::new(),
        };
        println!(
            "  {label:<38} {:8.3}  {:8.3}  {:8.3}{verdict}",
            s.p50, s.p99, s.max
        );
    };
    row("room switch (both ways)", switch_all, Some(10.0));
    row(
        "  into the 1M room",
        Summary::of_durations(&switch_in),
        None,
    );
    row(
        "  into a side room",
        Summary::of_durations(&switch_out),
        None,
    );
    let mut sizes_json = Vec::new();
    for (limit, join, newest, before, after) in &per_size {
        let target = match limit {
            50 => Some(5.0),
            500 => Some(20.0),
            _ => None,
        };
        let join = Summary::of_durations(join);
        let newest = Summary::of_durations(newest);
        let before = Summary::of_durations(before);
        let after = Summary::of_durations(after);
        row(&format!("join with first page of {limit}"), join, None);
        row(&format!("newest page of {limit}"), newest, target);
        row(&format!("deep page of {limit} (before)"), before, target);
        row(&format!("deep page of {limit} (after)"), after, None);
        sizes_json.push(json!({
            "limit": limit,
            "join": join.to_json(),
            "newest": newest.to_json(),
            "deep_before": before.to_json(),
            "deep_after": after.to_json(),
        }));
    }
    println!(
        "  since_seq catch-up of {catch_up} ({requests} pages of 500): median {:.1} ms, max {:.1} ms",
        catch.p50, catch.max
    );
    println!("  search, newest 50 results");
    let mut search_json = Vec::new();
    for (label, query, summary) in &search_results {
        let target = if label.starts_with("rare") {
            Some(10.0)
        } else if label.starts_with("10 %") {
            Some(30.0)
        } else {
            None
        };
        row(&format!("  {label}"), *summary, target);
        search_json.push(json!({"what": label, "query": query, "time": summary.to_json()}));
    }
    println!(
        "  search index: {:.1} MB of the {:.1} MB file ({:.1} %)",
        index_bytes as f64 / 1e6,
        db_bytes as f64 / 1e6,
        100.0 * index_bytes as f64 / db_bytes.max(1) as f64
    );
    println!(
        "  `total` reported {} in every reply: {}",
        expected_total,
        if totals_ok { "yes" } else { "NO" }
    );
    if let Some((everything, away)) = &unread {
        row(
            "welcome, everything unread (worst)",
            Summary::of_durations(everything),
            None,
        );
        row(
            &format!("welcome, {AWAY} unread per room"),
            Summary::of_durations(away),
            Some(10.0),
        );
    }
    if let Some(m) = rss {
        println!(
            "  server RSS {:.1} MiB (peak {:.1} MiB), {} threads",
            m.rss_kib as f64 / 1024.0,
            m.peak_kib as f64 / 1024.0,
            threads.unwrap_or(0)
        );
    }
    Ok(json!({
        "database": {
            "path": cached.display().to_string(),
            "bytes": db_bytes,
            "messages": total,
            "big_room_messages": big.len(),
            "side_rooms": SMALL_ROOMS,
            "built_in_s": built_in.map(|d| round3(d.as_secs_f64())),
        },
        "reps": reps,
        "startup": {
            "runs": to_line.len(),
            "until_address_printed": startup_line.to_json(),
            "until_hello_answered": startup_welcome.to_json(),
        },
        "room_switch": {
            "both_ways": switch_all.to_json(),
            "into_big_room": Summary::of_durations(&switch_in).to_json(),
            "into_side_room": Summary::of_durations(&switch_out).to_json(),
        },
        "pages": sizes_json,
        "catch_up": {
            "messages": catch_up,
            "since_seq": since,
            "requests": requests,
            "time": catch.to_json(),
        },
        "search": search_json,
        "search_index_bytes": index_bytes,
        "total_matches_room_size": totals_ok,
        "welcome_with_unread": unread.as_ref().map(|(everything, away)| json!({
            "everything_unread": Summary::of_durations(everything).to_json(),
            "unread_per_room": AWAY,
            "some_unread": Summary::of_durations(away).to_json(),
        })),
        "server_rss_kib": rss.map(|m| m.rss_kib),
        "server_peak_rss_kib": rss.map(|m| m.peak_kib),
        "server_rss_idle_kib": rss_idle.map(|m| m.rss_kib),
    }))
}

/// Search results hold `expected` messages (when known, else at least
/// one), newest first.
fn check_results(reply: &Value, expected: Option<usize>) -> Result<(), String> {
    let seqs: Vec<i64> = reply["messages"]
        .as_array()
        .map(|messages| messages.iter().filter_map(|m| m["seq"].as_i64()).collect())
        .unwrap_or_default();
    if expected.map_or(seqs.is_empty(), |n| n != seqs.len()) {
        return Err(format!(
            "search {} found {} messages, expected {expected:?}",
            reply["query"],
            seqs.len()
        ));
    }
    if seqs.windows(2).any(|w| w[0] <= w[1]) {
        return Err(format!("search {} is not newest first", reply["query"]));
    }
    Ok(())
}

/// Messages per room a user is behind in the second sign-in measurement.
const AWAY: usize = 1000;

/// Times sign-ins whose `welcome` carries unread counts: each built user
/// first as built (it has read nothing: everything in every room is
/// unread, the worst case), then after reading all but the newest [`AWAY`]
/// messages of every room. None when the server does not know `read`.
#[allow(clippy::type_complexity)]
fn sign_ins_with_unread(
    process: &ServerProcess,
    total: usize,
) -> Result<Option<(Vec<Duration>, Vec<Duration>)>, String> {
    let names: Vec<String> = std::iter::once(big_name().to_string())
        .chain((0..SMALL_ROOMS).map(small_name))
        .collect();
    // Each room's seq AWAY messages from its end (seq i + 1 for message i).
    let marks: Vec<usize> = (0..names.len())
        .map(|r| {
            let seqs: Vec<usize> = (0..total).filter(|&i| room_of(i) == r).collect();
            seqs[seqs.len().saturating_sub(AWAY + 1)] + 1
        })
        .collect();
    let mut everything = Vec::new();
    let mut away = Vec::new();
    for u in 0..USERS {
        let hello = json!({"type": "hello", "username": format!("user-{u}")});
        let mut conn = Conn::connect(process.ws_addrs[0])?;
        let (welcome, d) = timed(&mut conn, hello.clone(), "welcome")?;
        if welcome["rooms"][0].get("unread").is_none() {
            return Ok(None);
        }
        everything.push(d);
        for (room, seq) in names.iter().zip(&marks) {
            conn.expect(json!({"type": "read", "room": room, "seq": seq}), "unread")?;
        }
        conn.expect(json!({"type": "sign_out"}), "signed_out")?;
        let mut conn = Conn::connect(process.ws_addrs[0])?;
        let (welcome, d) = timed(&mut conn, hello, "welcome")?;
        let behind = welcome["rooms"].as_array().map_or(0, |rooms| {
            rooms
                .iter()
                .filter_map(|r| r["unread"].as_u64())
                .sum::<u64>()
        });
        if behind == 0 || behind > (AWAY * names.len()) as u64 {
            return Err(format!(
                "user-{u} is {behind} messages behind after reading"
            ));
        }
        away.push(d);
        conn.expect(json!({"type": "sign_out"}), "signed_out")?;
    }
    Ok(Some((everything, away)))
}

/// A page from the big room is full and says there is more on one side.
fn check_page(page: &Value, limit: u32) -> Result<(), String> {
    let n = page["messages"].as_array().map_or(0, Vec::len);
    if n != limit as usize {
        return Err(format!("asked for {limit} messages, got {n}"));
    }
    Ok(())
}
