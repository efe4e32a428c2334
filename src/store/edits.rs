//! Edits and deletions of stored messages. An edit replaces a message's
//! text; a delete erases it and leaves the message's place (its seq, time,
//! author and client id) as a tombstone, so pages and `total` stay stable.
//!
//! Erased text is gone, not hidden: `PRAGMA secure_delete` (set in
//! `Store::configure`) zeroes the bytes SQLite frees, the search index's
//! `secure-delete` option takes the words out of the index's pages (see
//! `search`; a message not indexed yet has none there, and is indexed later
//! with its text as it is then), and [`Store::scrub_erased`] copies the new
//! pages over the old ones and empties the WAL, which still holds the old
//! pages until then.

use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::{RoomId, Store, UserId};
use crate::protocol::{NameKey, Seq};

/// Schema version 4, the columns an edit and a delete set.
pub(super) const SCHEMA_V4: &str = "
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
ALTER TABLE messages ADD COLUMN deleted_at INTEGER;
";

/// A stored message, as an edit or a delete needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Its author.
    pub author: UserId,
    /// Its room.
    pub room_id: RoomId,
    /// Its room's display name.
    pub room: String,
    /// Whether its room has been deleted.
    pub room_deleted: bool,
    /// Whether it has been deleted.
    pub deleted: bool,
}

impl Store {
    /// The message with this seq, if there is one.
    pub fn message(&self, seq: Seq) -> rusqlite::Result<Option<MessageRecord>> {
        self.conn
            .prepare_cached(
                "SELECT m.user_id, m.room_id, r.name, r.deleted_at IS NOT NULL,
                     m.deleted_at IS NOT NULL
                 FROM messages m JOIN rooms r ON r.id = m.room_id WHERE m.seq = ?1",
            )?
            .query_row([seq], |row| {
                Ok(MessageRecord {
                    author: row.get(0)?,
                    room_id: row.get(1)?,
                    room: row.get(2)?,
                    room_deleted: row.get(3)?,
                    deleted: row.get(4)?,
                })
            })
            .optional()
    }

    /// Replaces the text of a message that is not deleted, and its words
    /// in the search index if it is indexed yet (a trigger), in one
    /// transaction. False if there was no such message.
    pub fn edit_message(&mut self, seq: Seq, text: &str, now: i64) -> rusqlite::Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE messages SET text = ?2, edited_at = ?3
                 WHERE seq = ?1 AND deleted_at IS NULL",
            )?
            .execute(params![seq, text, now])?;
        self.erased |= changed > 0;
        Ok(changed > 0)
    }

    /// Erases the text of a message that is not deleted yet, the names it
    /// mentions and its words in the search index if it is indexed yet (a
    /// trigger), in one transaction, keeping its place. Returns the users
    /// whose mention it was (their unread mentions go down), or None if
    /// there was no such message.
    pub fn delete_message(&mut self, seq: Seq, now: i64) -> rusqlite::Result<Option<Vec<UserId>>> {
        let tx = self.conn.transaction()?;
        let found: Option<(RoomId, Option<String>)> = tx
            .prepare_cached(
                "SELECT room_id, mentions FROM messages WHERE seq = ?1 AND deleted_at IS NULL",
            )?
            .query_row([seq], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let Some((room_id, mentioned)) = found else {
            return Ok(None);
        };
        tx.prepare_cached(
            "UPDATE messages SET text = '', mentions = NULL, deleted_at = ?2 WHERE seq = ?1",
        )?
        .execute(params![seq, now])?;
        // Whom it mentioned is part of what it said. By the mentions
        // table's key, user first, one row per name.
        let mut forget = tx.prepare_cached(
            "DELETE FROM mentions WHERE room_id = ?2 AND seq = ?3
                 AND user_id = (SELECT id FROM users WHERE name_key = ?1)
             RETURNING user_id",
        )?;
        let mut forgotten = Vec::new();
        for name in super::mention_names(mentioned) {
            let key = NameKey::of(&name);
            if let Some(user) = forget
                .query_row(params![key.as_str(), room_id, seq], |row| row.get(0))
                .optional()?
            {
                forgotten.push(user);
            }
        }
        drop(forget);
        tx.commit()?;
        self.erased = true;
        Ok(Some(forgotten))
    }

    /// After an edit or delete, takes the old text out of the WAL: a
    /// checkpoint writes the new pages over the old ones in the database
    /// file, then the WAL is truncated to nothing. Skipped while another
    /// program checkpoints (Litestream: see `leave_checkpoints_to_others`).
    /// When a reader (an export, a backup) still holds an older snapshot
    /// the checkpoint cannot finish; it is tried again after every later
    /// batch until it does, without ever waiting for the reader.
    ///
    /// Returns whether the scrub is still to be done (it is tried again at
    /// the next call).
    pub fn scrub_erased(&mut self) -> rusqlite::Result<bool> {
        if !self.erased {
            return Ok(false);
        }
        let ours: i64 = self
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))?;
        if ours == 0 {
            self.erased = false;
            return Ok(false);
        }
        self.conn.busy_timeout(Duration::ZERO)?;
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
        self.conn.busy_timeout(super::BUSY_TIMEOUT)?;
        self.erased = busy? != 0;
        Ok(self.erased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PageQuery;
    use crate::store::tests::temp_store;
    use crate::store::{NewMessage, Stored};

    const GENERAL: RoomId = RoomId(1);

    /// Stores `text` in `general` under a client id that says nothing of it.
    fn store_one(store: &mut Store, user: UserId, text: &str) -> Seq {
        let count = store.live_rooms().unwrap()[0].message_count;
        let stored = store
            .insert_messages(&[NewMessage {
                room_id: GENERAL,
                user_id: user,
                client_id: format!("c{count}"),
                text: text.into(),
                ts: 10,
                received_at: 10,
                mentions: Vec::new(),
            }])
            .unwrap();
        let Stored::New(seq) = stored[0] else {
            panic!("stored before: {stored:?}");
        };
        seq
    }

    #[test]
    fn edits_and_deletes_keep_the_message_in_its_place() {
        let (_dir, mut store) = temp_store();
        let ann = store.login_user("ann", 1).unwrap();
        let bob = store.login_user("bob", 1).unwrap();
        let first = store_one(&mut store, ann.id, "frist");
        let stored = store
            .insert_messages(&[NewMessage {
                room_id: GENERAL,
                user_id: ann.id,
                client_id: "mention".into(),
                text: "second, @bob".into(),
                ts: 10,
                received_at: 10,
                mentions: vec![(bob.id, "bob".into())],
            }])
            .unwrap();
        let second = stored[0].seq();
        let mentions = |store: &Store| -> i64 {
            store
                .conn
                .query_row("SELECT count(*) FROM mentions", [], |row| row.get(0))
                .unwrap()
        };
        assert_eq!(mentions(&store), 1);
        assert!(store.edit_message(first, "first", 20).unwrap());
        assert_eq!(
            store.delete_message(second, 30).unwrap(),
            Some(vec![bob.id])
        );
        // A deleted message can be neither edited nor deleted again.
        assert!(!store.edit_message(second, "back", 40).unwrap());
        assert!(store.delete_message(second, 40).unwrap().is_none());
        assert!(!store.edit_message(Seq(999), "none", 40).unwrap());
        let page = store
            .page(GENERAL, "general", PageQuery::Newest, 50)
            .unwrap();
        let shown: Vec<_> = page
            .messages
            .iter()
            .map(|m| (m.0.seq, m.0.text.as_str(), m.0.edited_at, m.0.deleted))
            .collect();
        assert_eq!(
            shown,
            [(first, "first", Some(20), false), (second, "", None, true)]
        );
        // Whom it mentioned went with its text.
        assert!(page.messages[1].0.mentions.is_empty());
        assert_eq!(mentions(&store), 0);
        let record = store.message(second).unwrap().unwrap();
        assert_eq!(
            record,
            MessageRecord {
                author: ann.id,
                room_id: GENERAL,
                room: "general".into(),
                room_deleted: false,
                deleted: true
            }
        );
        assert_eq!(store.message(Seq(999)).unwrap(), None);
        assert_eq!(store.live_rooms().unwrap()[0].message_count, 2);
    }

    /// Whether `needle` occurs anywhere in the bytes of the database file
    /// or its WAL.
    fn on_disk(dir: &tempfile::TempDir, needle: &str) -> bool {
        ["t.db", "t.db-wal"].iter().any(|name| {
            std::fs::read(dir.path().join(name)).is_ok_and(|bytes| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
        })
    }

    #[test]
    fn deleted_and_replaced_text_is_gone_from_the_files_after_the_scrub() {
        let (dir, mut store) = temp_store();
        let ann = store.login_user("ann", 1).unwrap();
        // Long enough to need overflow pages, and short; words of their own
        // in the search index.
        let long = format!("quixoticzebra {}", "wombatfjord ".repeat(800));
        let secret = "my password is hunter2zanzibar";
        let typo = "recieve the parcelxylophone";
        let long_seq = store_one(&mut store, ann.id, &long);
        let secret_seq = store_one(&mut store, ann.id, secret);
        let typo_seq = store_one(&mut store, ann.id, typo);
        for n in 0..20 {
            store_one(&mut store, ann.id, &format!("filler message {n}"));
        }
        // In the search index, then everything on disk: checkpointed into
        // the file.
        store.index_for_search(u64::MAX).unwrap();
        store
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        for needle in [
            "quixoticzebra",
            "wombatfjord",
            secret,
            "hunter2zanzibar",
            typo,
        ] {
            assert!(on_disk(&dir, needle), "{needle} was never written");
        }
        assert!(store.delete_message(long_seq, 2).unwrap().is_some());
        assert!(store.delete_message(secret_seq, 2).unwrap().is_some());
        assert!(
            store
                .edit_message(typo_seq, "receive the parcel", 2)
                .unwrap()
        );
        assert!(!store.scrub_erased().unwrap(), "nothing left in the WAL");
        for needle in [
            "quixoticzebra",
            "wombatfjord",
            "hunter2zanzibar",
            "recieve",
            "parcelxylophone",
        ] {
            assert!(!on_disk(&dir, needle), "{needle} is still on disk");
        }
        assert!(on_disk(&dir, "receive the parcel"));
        assert!(!store.scrub_erased().unwrap(), "once is enough");
    }

    /// The texts a search for `word` finds.
    fn found(store: &Store, word: &str) -> Vec<String> {
        let rows = store.search(&[word.to_string()], None, None, 10).unwrap();
        rows.messages.into_iter().map(|m| m.0.text).collect()
    }

    #[test]
    fn text_deleted_or_replaced_before_it_was_indexed_never_reaches_the_index_or_the_files() {
        let (dir, mut store) = temp_store();
        let ann = store.login_user("ann", 1).unwrap();
        let secret = store_one(&mut store, ann.id, "the safe opens with 5150marmoset");
        let typo = store_one(&mut store, ann.id, "pick up the recieved parcelnarwhal");
        store
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        assert!(on_disk(&dir, "5150marmoset") && on_disk(&dir, "parcelnarwhal"));
        assert!(store.search_behind(), "indexed with the insert");
        assert!(store.delete_message(secret, 2).unwrap().is_some());
        assert!(store.edit_message(typo, "pick up the parcel", 2).unwrap());
        assert!(!store.scrub_erased().unwrap());
        let indexed = store.index_for_search(u64::MAX).unwrap();
        assert_eq!(indexed.messages, 2);
        assert!(found(&store, "5150marmoset").is_empty());
        assert!(found(&store, "parcelnarwhal").is_empty());
        assert_eq!(found(&store, "parcel"), ["pick up the parcel"]);
        // Indexing wrote only what the text says now.
        store
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        for needle in ["5150marmoset", "recieved", "parcelnarwhal"] {
            assert!(!on_disk(&dir, needle), "{needle} is on disk");
        }
    }

    #[test]
    fn the_scrub_waits_for_a_reader_without_blocking_and_then_finishes() {
        let (dir, mut store) = temp_store();
        let ann = store.login_user("ann", 1).unwrap();
        let seq = store_one(&mut store, ann.id, "tell nobody about zanzibarquokka");
        let snapshot = crate::store::Snapshot::open(&dir.path().join("t.db")).unwrap();
        assert!(store.delete_message(seq, 2).unwrap().is_some());
        let started = std::time::Instant::now();
        assert!(store.scrub_erased().unwrap(), "a reader holds the old page");
        assert!(started.elapsed() < crate::store::BUSY_TIMEOUT);
        drop(snapshot);
        assert!(!store.scrub_erased().unwrap());
        assert!(!on_disk(&dir, "zanzibarquokka"));
    }

    #[test]
    fn with_checkpoints_left_to_another_program_nothing_is_checkpointed() {
        let (dir, mut store) = temp_store();
        store.leave_checkpoints_to_others().unwrap();
        let ann = store.login_user("ann", 1).unwrap();
        let seq = store_one(&mut store, ann.id, "replicated quokkazanzibar");
        assert!(store.delete_message(seq, 2).unwrap().is_some());
        assert!(!store.scrub_erased().unwrap());
        // The old page is still in the WAL, for the replicator to copy and
        // checkpoint.
        assert!(on_disk(&dir, "quokkazanzibar"));
    }
}
