//! Full-text search over messages: an SQLite FTS5 index of their text, kept
//! by triggers in the same transaction as every insert, edit and delete, so
//! a message is found the moment it is acked and never after it is deleted;
//! and the query that reads it, newest first.
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

use std::time::Instant;

use rusqlite::{Connection, params};

use super::{MESSAGE_COLUMNS, RoomId, Store, message_row};
use crate::protocol::{PageMessage, Seq};

/// The index and the triggers that keep it, in schema version 4. Words are
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
/// stored, logging how many and how long it took.
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
    /// Deleted messages are not in the index.
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
        let mut messages = stmt
            .query_map(params![expression, before, fetch], |row| {
                let room = row.get(8)?;
                message_row(row, room).map(PageMessage)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let has_more = messages.len() > limit as usize;
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
        let found = store.search(&words("exist"), None, None, 10).unwrap();
        assert_eq!(found.messages.len(), 1);
        assert_eq!(found.messages[0].0.text, "stored before search existed");
        assert_eq!(found.messages[0].0.room, "general");
        assert_eq!(found.messages[0].0.from, "ann");
    }
}
