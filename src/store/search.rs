//! Full-text search over messages: an SQLite FTS5 index of their text,
//! written in batches after the messages are stored (never inside the
//! commit that stores them), kept up to date by a trigger when a message's
//! text is edited or deleted, so a message is never found after it is
//! deleted; and the query that reads it, newest first.
//!
//! The index holds no copy of the text (`content='messages'`: it reads the
//! `messages` table when it needs the text), only each word's list of
//! messages and positions. Its `secure-delete` option makes a deletion take
//! the message out of those lists at once instead of recording a marker
//! to be merged away later, so a deleted message's words are not left in
//! the index's pages.
//!
//! Each message's room is indexed too, as a word of a column of its own, so
//! a search in one room walks the shorter of the two lists (the room's, or
//! the words') and skips through the other: filtering the words' matches by
//! room afterwards took 200 ms for a common word in a room without it, in
//! a million messages.
//!
//! Indexing in batches: FTS5 writes each transaction's words as a new
//! segment and merges segments as they pile up, which in every message's
//! commit was about 5 of its 11 WAL pages and, under load, a seventh of the
//! hub's time. Now `search_indexed` holds how far the index goes (every
//! message up to that seq, and none after it), and
//! [`Store::index_for_search`] indexes the messages after it and moves it
//! in one transaction, so after a crash the mark and the index still agree
//! and the rest is indexed later like any other message. The hub calls it
//! about once a second, a bounded slice at a time, and right before every
//! search, so a search finds every message stored before it.

use std::time::Instant;

use rusqlite::{Connection, params};

use super::{MESSAGE_COLUMNS, RoomId, Store, collect_within, message_row};
use crate::protocol::{PageMessage, Seq};

/// The index and the triggers that kept it, in schema version 4 (version 5
/// replaces the triggers: see [`SCHEMA_V5`]). Words are
/// folded to lower case and stripped of diacritics (`remove_diacritics 2`
/// also strips them from letters that carry several). No table of each
/// message's word count (`columnsize = 0`): it only serves ranking by
/// relevance, which search does not do (newest first), and it was one more
/// page written by every commit (12 pages a one-message commit with it,
/// 11 without, 6 without the index at all).
const SCHEMA_V4: &str = "
CREATE VIRTUAL TABLE message_search USING fts5(
    text,
    room_id,
    content = 'messages',
    content_rowid = 'seq',
    columnsize = 0,
    tokenize = 'unicode61 remove_diacritics 2'
);
INSERT INTO message_search (message_search, rank) VALUES ('secure-delete', 1);
CREATE TRIGGER message_search_insert AFTER INSERT ON messages BEGIN
    INSERT INTO message_search (rowid, text, room_id)
        VALUES (new.seq, new.text, new.room_id);
END;
CREATE TRIGGER message_search_update AFTER UPDATE OF text ON messages BEGIN
    INSERT INTO message_search (message_search, rowid, text, room_id)
        VALUES ('delete', old.seq, old.text, old.room_id);
    INSERT INTO message_search (rowid, text, room_id)
        VALUES (new.seq, new.text, new.room_id);
END;
";

/// Creates the index (schema version 4) and indexes the messages already
/// stored, logging how many and how long it took. This is at start-up,
/// before the hub runs, as it was before indexing went in batches: a
/// search is then complete from the first one.
pub(super) fn create_index(tx: &Connection) -> rusqlite::Result<()> {
    tx.execute_batch(SCHEMA_V4)?;
    let messages: i64 = tx.query_row("SELECT count(*) FROM messages", [], |row| row.get(0))?;
    if messages > 0 {
        let started = Instant::now();
        tx.execute(
            "INSERT INTO message_search (message_search) VALUES ('rebuild')",
            [],
        )?;
        log::info!(
            "database: indexed {messages} messages for search in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Schema version 5: no message is indexed by the commit that stores it;
/// `search_indexed` (one row) holds the newest seq the index goes up to,
/// all of what version 4 indexed (every message).
///
/// An edit or a delete changes the index only for a message it holds. With
/// external content, FTS5's 'delete' takes the words it is given out of
/// the index without checking that they are there: for a message not yet
/// indexed it would corrupt the index. A message changed before it is
/// indexed is indexed later with its text as it is then (a deleted one's
/// is empty: nothing of it is found).
const SCHEMA_V5: &str = "
DROP TRIGGER message_search_insert;
DROP TRIGGER message_search_update;
CREATE TABLE search_indexed (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    seq INTEGER NOT NULL
);
INSERT INTO search_indexed (id, seq) SELECT 0, coalesce(max(seq), 0) FROM messages;
CREATE TRIGGER message_search_update AFTER UPDATE OF text ON messages
WHEN old.seq <= (SELECT seq FROM search_indexed) BEGIN
    INSERT INTO message_search (message_search, rowid, text, room_id)
        VALUES ('delete', old.seq, old.text, old.room_id);
    INSERT INTO message_search (rowid, text, room_id)
        VALUES (new.seq, new.text, new.room_id);
END;
";

/// Moves a version 4 index (which holds every message) to batch indexing.
pub(super) fn index_in_batches(tx: &Connection) -> rusqlite::Result<()> {
    tx.execute_batch(SCHEMA_V5)
}

/// How far the index goes: the newest seq it holds every message up to.
pub(super) fn indexed_up_to(conn: &Connection) -> rusqlite::Result<Seq> {
    conn.query_row("SELECT seq FROM search_indexed", [], |row| row.get(0))
}

/// What one call of [`Store::index_for_search`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indexed {
    /// Messages indexed.
    pub messages: u64,
    /// Whether stored messages are still waiting to be indexed.
    pub behind: bool,
}

/// Most bytes of message text in one page of results: 100 results of the
/// longest messages would be 1.6 MB read and encoded by the hub while
/// everyone waits; past this the page ends early and `has_more` is true.
pub const RESULT_TEXT_BYTES: usize = 512 * 1024;

/// One page of search results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRows {
    /// Newest first.
    pub messages: Vec<PageMessage>,
    /// Whether older messages match too.
    pub has_more: bool,
}

/// Whether the index's tokenizer (`unicode61`) starts a word at `c`: a
/// letter, a digit or a private-use character. Everything else separates
/// words, or (diacritics) only continues one.
fn starts_a_word(c: char) -> bool {
    c.is_alphanumeric()
        || matches!(c, '\u{e000}'..='\u{f8ff}' | '\u{f0000}'..='\u{ffffd}' | '\u{100000}'..='\u{10fffd}')
}

/// The FTS5 query for the words a person typed: each word as an FTS5
/// string (in double quotes, its own quotes doubled), so nothing in it is
/// ever search syntax; all of them required; the last also matching as a
/// prefix (`"depl"*` finds "deploy"). A word in which the tokenizer finds
/// nothing to index (only punctuation, say) is left out rather than made an
/// empty string, which would match nothing. None when no word is left.
///
/// A word the tokenizer splits ("e-mail", "don't") is a phrase: its parts
/// must follow each other. Control characters separate a word's parts.
pub fn match_expression(words: &[String]) -> Option<String> {
    let kept: Vec<&String> = words
        .iter()
        .filter(|word| word.chars().any(starts_a_word))
        .collect();
    let last = kept.len().checked_sub(1)?;
    let mut expression = String::new();
    for (i, word) in kept.iter().enumerate() {
        if i > 0 {
            expression.push(' ');
        }
        expression.push('"');
        for c in word.chars() {
            match c {
                '"' => expression.push_str("\"\""),
                // FTS5 reads its query as a C string: a NUL would end it
                // inside the quotes. No control character is part of a word.
                c if c.is_control() => expression.push(' '),
                c => expression.push(c),
            }
        }
        expression.push('"');
        if i == last {
            expression.push('*');
        }
    }
    Some(expression)
}

impl Store {
    /// Whether stored messages wait to be indexed for search.
    pub fn search_behind(&self) -> bool {
        self.newest > self.search_indexed
    }

    /// Indexes for search the oldest `most` messages that are not indexed
    /// yet, and moves the mark past them, in one transaction. Nothing is
    /// written when the index is up to date.
    ///
    /// `most` bounds how long one call holds the hub (and the write
    /// lock): a large backlog is worked off in several calls.
    pub fn index_for_search(&mut self, most: u64) -> rusqlite::Result<Indexed> {
        if !self.search_behind() {
            return Ok(Indexed {
                messages: 0,
                behind: false,
            });
        }
        let from = self.search_indexed;
        let most = i64::try_from(most).unwrap_or(i64::MAX);
        let tx = self.conn.transaction()?;
        // The newest seq of the slice, read first so that the index and
        // the mark are given the same range.
        let to: Option<Seq> = tx
            .prepare_cached(
                "SELECT max(seq) FROM
                     (SELECT seq FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
            )?
            .query_row(params![from, most], |row| row.get(0))?;
        let Some(to) = to else {
            // Nothing after the mark although `newest` is past it. Not
            // expected (`newest` moves only after a commit, and only this
            // connection stores messages); believing the table keeps the
            // hub from stepping again and again for nothing.
            drop(tx);
            self.newest = from;
            return Ok(Indexed {
                messages: 0,
                behind: false,
            });
        };
        let messages = tx
            .prepare_cached(
                "INSERT INTO message_search (rowid, text, room_id)
                 SELECT seq, text, room_id FROM messages WHERE seq > ?1 AND seq <= ?2
                 ORDER BY seq",
            )?
            .execute(params![from, to])?;
        tx.prepare_cached("UPDATE search_indexed SET seq = ?1")?
            .execute([to])?;
        tx.commit()?;
        self.search_indexed = to;
        Ok(Indexed {
            messages: messages as u64,
            behind: self.search_behind(),
        })
    }

    /// Bytes of the file the search index takes (its shadow tables and
    /// their indexes), for the benchmark's report.
    pub fn search_index_bytes(&self) -> rusqlite::Result<u64> {
        self.conn.query_row(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat
             WHERE name LIKE 'message\\_search\\_%' ESCAPE '\\'",
            [],
            |row| {
                row.get::<_, i64>(0)
                    .map(|bytes| bytes.max(0).unsigned_abs())
            },
        )
    }

    /// The newest `limit` messages of live rooms (of `room` alone, if
    /// given) older than `before` that contain every word, newest first.
    /// Deleted messages are not in the index. Only indexed messages are
    /// found: to find every stored message, call
    /// [`Store::index_for_search`] first.
    pub fn search(
        &self,
        words: &[String],
        room: Option<RoomId>,
        before: Option<Seq>,
        limit: u32,
    ) -> rusqlite::Result<SearchRows> {
        let Some(words) = match_expression(words) else {
            return Ok(SearchRows {
                messages: Vec::new(),
                has_more: false,
            });
        };
        // The words only in the text; the room only in its column.
        let expression = match room {
            Some(room) => format!("room_id : \"{}\" AND text : ({words})", room.0),
            None => format!("text : ({words})"),
        };
        // The index is read first, newest match first (FTS5 walks its
        // lists backwards for `ORDER BY rowid DESC`), and each match is
        // looked up until the page is full: CROSS JOIN keeps that order.
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS}, r.name FROM message_search
             CROSS JOIN messages m ON m.seq = message_search.rowid
             CROSS JOIN rooms r ON r.id = m.room_id
             CROSS JOIN users u ON u.id = m.user_id
             WHERE message_search MATCH ?1 AND message_search.rowid < ?2
                 AND r.deleted_at IS NULL
             ORDER BY message_search.rowid DESC LIMIT ?3"
        ))?;
        let before = before.map_or(i64::MAX, |seq| seq.0);
        let fetch = i64::from(limit) + 1;
        let rows = stmt.query_map(params![expression, before, fetch], |row| {
            let room = row.get(8)?;
            message_row(row, room).map(PageMessage)
        })?;
        // The hub builds results on its own thread: past the bound, the rest
        // is left for the next page, unread.
        let (mut messages, cut) = collect_within(rows, RESULT_TEXT_BYTES)?;
        let has_more = cut || messages.len() > limit as usize;
        messages.truncate(limit as usize);
        Ok(SearchRows { messages, has_more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewMessage;
    use crate::store::tests::temp_store;

    fn words(query: &str) -> Vec<String> {
        query.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn every_word_is_a_quoted_string_and_the_last_a_prefix() {
        let expr = |query: &str| match_expression(&words(query));
        assert_eq!(expr("deploy plan").as_deref(), Some(r#""deploy" "plan"*"#));
        assert_eq!(expr("depl").as_deref(), Some(r#""depl"*"#));
        assert_eq!(
            expr(r#"say "hi" NEAR(a b) OR -x"#).as_deref(),
            Some(r#""say" """hi""" "NEAR(a" "b)" "OR" "-x"*"#)
        );
        assert_eq!(expr("e-mail").as_deref(), Some(r#""e-mail"*"#));
        // Only punctuation: left out; nothing left: no query at all.
        assert_eq!(expr("deploy *** ---").as_deref(), Some(r#""deploy"*"#));
        assert_eq!(expr("\" * ( ) :"), None);
        assert_eq!(expr(""), None);
        assert_eq!(
            expr("Ünïcödé 東京").as_deref(),
            Some(r#""Ünïcödé" "東京"*"#)
        );
    }

    #[test]
    fn matches_every_word_ignoring_case_and_diacritics_newest_first() {
        let (_dir, mut store) = temp_store();
        let user = store.login_user("ann", 1).unwrap();
        let texts = [
            "Deploy plan for Friday",
            "the plan is to deploy",
            "Café crème at the Zürich office",
            "deployment postponed",
            "unrelated chatter",
        ];
        let batch: Vec<NewMessage> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| NewMessage {
                room_id: RoomId(1),
                user_id: user.id,
                client_id: format!("c{i}"),
                text: text.to_string(),
                ts: 100 + i as i64,
                received_at: 100,
                mentions: Vec::new(),
            })
            .collect();
        store.insert_messages(&batch).unwrap();
        store.index_for_search(u64::MAX).unwrap();
        let found = |query: &str| -> Vec<String> {
            store
                .search(&words(query), None, None, 10)
                .unwrap()
                .messages
                .into_iter()
                .map(|m| m.0.text)
                .collect()
        };
        assert_eq!(
            found("deploy PLAN"),
            ["the plan is to deploy", "Deploy plan for Friday"]
        );
        assert_eq!(
            found("depl"),
            [
                "deployment postponed",
                "the plan is to deploy",
                "Deploy plan for Friday"
            ]
        );
        assert_eq!(found("cafe zurich"), ["Café crème at the Zürich office"]);
        assert_eq!(found("CRÈME"), ["Café crème at the Zürich office"]);
        assert!(found("plan friday deployment").is_empty());
        assert!(found("NEAR OR").is_empty());
        let page = store
            .search(&words("plan"), None, Some(Seq(2)), 10)
            .unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].0.text, "Deploy plan for Friday");
        assert!(!page.has_more);
        let page = store.search(&words("de"), None, None, 2).unwrap();
        assert_eq!(page.messages.len(), 2);
        assert!(page.has_more);
    }

    #[test]
    fn a_room_is_matched_by_its_own_column_never_by_the_words() {
        let (_dir, mut store) = temp_store();
        let user = store.login_user("ann", 1).unwrap();
        let ops = store.create_room("ops", user.id, 1).unwrap();
        assert_eq!(ops, RoomId(2));
        let batch: Vec<NewMessage> = [
            (RoomId(1), "deploy one"),
            (ops, "deploy two"),
            (ops, "room 1"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (room_id, text))| NewMessage {
            room_id: *room_id,
            user_id: user.id,
            client_id: format!("c{i}"),
            text: text.to_string(),
            ts: i as i64,
            received_at: i as i64,
            mentions: Vec::new(),
        })
        .collect();
        store.insert_messages(&batch).unwrap();
        store.index_for_search(u64::MAX).unwrap();
        let found = |query: &str, room: Option<RoomId>| -> Vec<String> {
            store
                .search(&words(query), room, None, 10)
                .unwrap()
                .messages
                .into_iter()
                .map(|m| m.0.text)
                .collect()
        };
        assert_eq!(found("deploy", None), ["deploy two", "deploy one"]);
        assert_eq!(found("deploy", Some(ops)), ["deploy two"]);
        assert_eq!(found("deploy", Some(RoomId(1))), ["deploy one"]);
        assert!(found("deploy", Some(RoomId(3))).is_empty());
        // "1" and "2" are the rooms' ids in the index, but words only
        // match text.
        assert_eq!(found("1", None), ["room 1"]);
        assert!(found("2", None).is_empty());
        assert_eq!(found("room_id", None), Vec::<String>::new());
    }

    #[test]
    fn the_index_size_counts_its_own_tables_only() {
        let (_dir, mut store) = temp_store();
        let empty = store.search_index_bytes().unwrap();
        assert!(empty > 0, "the index's tables take pages from the start");
        let user = store.login_user("ann", 1).unwrap();
        let batch: Vec<NewMessage> = (0..2000)
            .map(|i| NewMessage {
                room_id: RoomId(1),
                user_id: user.id,
                client_id: format!("c{i}"),
                text: format!("word{i} and some shared words"),
                ts: i,
                received_at: i,
                mentions: Vec::new(),
            })
            .collect();
        store.insert_messages(&batch).unwrap();
        store.index_for_search(u64::MAX).unwrap();
        let full = store.search_index_bytes().unwrap();
        let file: i64 = store
            .conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(full > empty && full < file as u64, "{empty} {full} {file}");
    }

    /// Stores each text as a message of its own in `general`, by ann.
    fn say(store: &mut Store, texts: &[&str]) -> Vec<Seq> {
        let user = store.login_user("ann", 1).unwrap();
        let first = store.live_rooms().unwrap()[0].message_count;
        let batch: Vec<NewMessage> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| NewMessage {
                room_id: RoomId(1),
                user_id: user.id,
                client_id: format!("c{}", first + i as u64),
                text: text.to_string(),
                ts: i as i64,
                received_at: i as i64,
                mentions: Vec::new(),
            })
            .collect();
        let stored = store.insert_messages(&batch).unwrap();
        stored.iter().map(|s| s.seq()).collect()
    }

    /// The texts a search for `query` finds, newest first.
    fn found(store: &Store, query: &str, room: Option<RoomId>) -> Vec<String> {
        store
            .search(&words(query), room, None, 100)
            .unwrap()
            .messages
            .into_iter()
            .map(|m| m.0.text)
            .collect()
    }

    /// The mark as stored.
    fn stored_mark(store: &Store) -> Seq {
        indexed_up_to(&store.conn).unwrap()
    }

    /// FTS5's own check, comparing the index with the `messages` table
    /// (rank 1): it fails unless the index holds exactly what every
    /// message's text says now, no more and no less.
    fn index_matches_messages(store: &Store) -> rusqlite::Result<()> {
        store
            .conn
            .execute(
                "INSERT INTO message_search (message_search, rank) VALUES ('integrity-check', 1)",
                [],
            )
            .map(drop)
    }

    #[test]
    fn a_page_of_results_ends_once_its_text_passes_the_bound() {
        let (_dir, mut store) = temp_store();
        let long = format!("anchor {}", "y".repeat(200_000));
        let seqs = say(&mut store, &[&long, &long, &long, &long]);
        store.index_for_search(u64::MAX).unwrap();
        let page = store.search(&words("anchor"), None, None, 100).unwrap();
        // 200 KB each: two fit in 512 KiB, the third would not.
        let got: Vec<Seq> = page.messages.iter().map(|m| m.0.seq).collect();
        assert_eq!(got, [seqs[3], seqs[2]]);
        assert!(page.has_more);
        // The next page goes on from there.
        let next = store
            .search(&words("anchor"), None, Some(seqs[2]), 100)
            .unwrap();
        let got: Vec<Seq> = next.messages.iter().map(|m| m.0.seq).collect();
        assert_eq!(got, [seqs[1], seqs[0]]);
        assert!(!next.has_more);
    }

    #[test]
    fn stored_messages_are_found_once_indexed_a_slice_at_a_time() {
        let (dir, mut store) = temp_store();
        let texts: Vec<String> = (0..10).map(|i| format!("harbour note {i}")).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let seqs = say(&mut store, &texts);
        assert!(store.search_behind());
        assert!(
            found(&store, "harbour", None).is_empty(),
            "indexed on insert"
        );
        assert_eq!(stored_mark(&store), Seq(0));
        assert!(
            index_matches_messages(&store).is_err(),
            "the check sees nothing"
        );

        let step = store.index_for_search(4).unwrap();
        assert_eq!(
            step,
            Indexed {
                messages: 4,
                behind: true
            }
        );
        assert_eq!(stored_mark(&store), seqs[3]);
        assert_eq!(
            found(&store, "harbour", None),
            [
                "harbour note 3",
                "harbour note 2",
                "harbour note 1",
                "harbour note 0"
            ]
        );

        let step = store.index_for_search(u64::MAX).unwrap();
        assert_eq!(
            step,
            Indexed {
                messages: 6,
                behind: false
            }
        );
        assert!(!store.search_behind());
        assert_eq!(stored_mark(&store), seqs[9]);
        assert_eq!(found(&store, "harbour", None).len(), 10);
        index_matches_messages(&store).unwrap();

        // Up to date: nothing is written.
        let wal = || {
            std::fs::metadata(dir.path().join("t.db-wal"))
                .unwrap()
                .len()
        };
        let before = wal();
        let step = store.index_for_search(u64::MAX).unwrap();
        assert_eq!(
            step,
            Indexed {
                messages: 0,
                behind: false
            }
        );
        assert_eq!(wal(), before);
    }

    #[test]
    fn edits_and_deletes_before_and_after_indexing_leave_the_index_matching_the_text() {
        let (_dir, mut store) = temp_store();
        let seqs = say(
            &mut store,
            &[
                "indexed typo recieve",
                "indexed secret kestrel",
                "indexed untouched osprey",
            ],
        );
        store.index_for_search(u64::MAX).unwrap();
        let later = say(
            &mut store,
            &[
                "waiting typo acheive",
                "waiting secret pelican",
                "waiting untouched plover",
            ],
        );
        assert!(
            store
                .edit_message(seqs[0], "indexed typo receive", 2)
                .unwrap()
        );
        assert!(store.delete_message(seqs[1], 2).unwrap().is_some());
        assert!(
            store
                .edit_message(later[0], "waiting typo achieve", 2)
                .unwrap()
        );
        assert!(store.delete_message(later[1], 2).unwrap().is_some());
        // The indexed messages changed in the index at once; the others are
        // not in it yet.
        assert_eq!(found(&store, "receive", None), ["indexed typo receive"]);
        assert!(found(&store, "recieve", None).is_empty());
        assert!(found(&store, "kestrel", None).is_empty());
        assert!(found(&store, "waiting", None).is_empty());

        store.index_for_search(u64::MAX).unwrap();
        // Indexed with their text as it is now: the old words of neither
        // are found, nor anything of the deleted one, in any room.
        index_matches_messages(&store).unwrap();
        assert_eq!(
            found(&store, "waiting", None),
            ["waiting untouched plover", "waiting typo achieve"]
        );
        assert!(found(&store, "acheive", None).is_empty());
        assert!(found(&store, "pelican", None).is_empty());
        assert!(found(&store, "secret", Some(RoomId(1))).is_empty());
        assert_eq!(
            found(&store, "untouched", Some(RoomId(1))),
            ["waiting untouched plover", "indexed untouched osprey"]
        );

        // And once indexed, they change in the index like the others.
        assert!(
            store
                .edit_message(later[0], "waiting typo fixed", 3)
                .unwrap()
        );
        assert!(store.delete_message(later[2], 3).unwrap().is_some());
        assert_eq!(found(&store, "waiting", None), ["waiting typo fixed"]);
        index_matches_messages(&store).unwrap();
    }

    #[test]
    fn a_reopened_store_keeps_its_mark_and_indexes_the_rest() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("r.db");
        let seqs = {
            let mut store = Store::open(&path).unwrap();
            let seqs = say(&mut store, &["lantern one", "lantern two", "lantern three"]);
            store.index_for_search(1).unwrap();
            // Stopped (or killed) before the rest was indexed.
            seqs
        };
        let mut store = Store::open(&path).unwrap();
        assert_eq!(stored_mark(&store), seqs[0]);
        assert!(store.search_behind());
        assert_eq!(found(&store, "lantern", None), ["lantern one"]);
        let step = store.index_for_search(u64::MAX).unwrap();
        assert_eq!(step.messages, 2);
        assert_eq!(
            found(&store, "lantern", None),
            ["lantern three", "lantern two", "lantern one"]
        );
        index_matches_messages(&store).unwrap();
    }

    #[test]
    fn a_version_4_database_keeps_its_index_and_is_then_indexed_in_batches() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("v4.db");
        // Indexed by version 4's insert trigger, and edited.
        crate::store::tests::version_4_database(
            &path,
            "INSERT INTO messages (room_id, user_id, client_id, text, ts, received_at)
                 VALUES (1, 1, 'a', 'stored by version four', 5, 5),
                        (1, 1, 'b', 'edited by version four', 6, 6);
             UPDATE messages SET text = 'fixed by version four', edited_at = 7 WHERE seq = 2;",
        );
        let mut store = Store::open(&path).unwrap();
        assert_eq!(stored_mark(&store), Seq(2));
        assert!(!store.search_behind());
        assert_eq!(
            found(&store, "version four", None),
            ["fixed by version four", "stored by version four"]
        );
        index_matches_messages(&store).unwrap();
        // No longer indexed by the insert.
        say(&mut store, &["stored by version five"]);
        assert!(found(&store, "five", None).is_empty());
        store.index_for_search(u64::MAX).unwrap();
        assert_eq!(found(&store, "five", None), ["stored by version five"]);

        // The same schema as a database created by this version.
        let schema = |conn: &Connection| -> Vec<(String, String, Option<String>)> {
            conn.prepare("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
                .unwrap()
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        let (_fresh_dir, fresh) = temp_store();
        assert_eq!(schema(&store.conn), schema(&fresh.conn));
        assert_eq!(stored_mark(&fresh), Seq(0));
    }

    #[test]
    fn an_existing_database_is_indexed_when_it_is_first_opened() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("v2.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(super::super::SCHEMA_V1).unwrap();
            conn.execute_batch(
                "INSERT INTO rooms (name, name_key, created_at) VALUES ('general', 'general', 1);
                 INSERT INTO users (name, name_key, created_at, last_seen) VALUES ('ann', 'ann', 1, 1);
                 INSERT INTO messages (room_id, user_id, client_id, text, ts, received_at)
                     VALUES (1, 1, 'a', 'stored before search existed', 5, 5),
                            (1, 1, 'b', 'another old one', 6, 6);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
            conn.pragma_update(None, "application_id", super::super::APPLICATION_ID)
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        // Indexed at start-up, before any search: nothing waits.
        assert!(!store.search_behind());
        assert_eq!(stored_mark(&store), Seq(2));
        let found = store.search(&words("exist"), None, None, 10).unwrap();
        assert_eq!(found.messages.len(), 1);
        assert_eq!(found.messages[0].0.text, "stored before search existed");
        assert_eq!(found.messages[0].0.room, "general");
        assert_eq!(found.messages[0].0.from, "ann");
    }
}
