//! The one user of SQLite: opening the database file safely, the schema and
//! its migrations, and typed queries for users, rooms and messages; reading
//! a consistent snapshot for exports in `export`.
//!
//! Durability comes from `journal_mode=WAL` with `synchronous=FULL`: a
//! committed transaction has been fsynced, so an acked message survives a
//! crash. Pages use keyset pagination on `(room_id, ts, seq)`, never OFFSET,
//! so a page deep in a large room costs the same as the newest one.

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::error::Error;
use crate::protocol::{ChatMessage, NameKey, Page, PageMessage, PageQuery, Seq, now_ms};

mod edits;
mod export;
mod search;

pub use edits::MessageRecord;
pub use export::{Snapshot, SnapshotRoom};
pub use search::{Indexed, SearchRows, match_expression};

/// `PRAGMA application_id` of a Parlor database ("PRLR").
const APPLICATION_ID: i64 = 0x5052_4c52;
/// The schema version this code writes; older files are migrated forward.
/// Version 2: names are keyed by `protocol::name_key` (look-alikes are one
/// name) instead of case folding alone. Version 3: read marks and mentions.
/// Version 4: messages can be edited and deleted (`edits`), and are
/// indexed for search (`search`). Version 5: they are indexed in batches
/// after they are stored, up to a mark kept with the index (`search`).
/// Version 6: unread counts leave deleted messages out ([`SCHEMA_V6`]).
const SCHEMA_VERSION: i64 = 6;

/// How long a statement waits for a lock another connection (an export, a
/// backup, Litestream) holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const SCHEMA_V1: &str = "
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE TABLE rooms (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by INTEGER REFERENCES users(id),
    deleted_at INTEGER,
    message_count INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX rooms_live_name ON rooms(name_key) WHERE deleted_at IS NULL;
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id INTEGER NOT NULL REFERENCES rooms(id),
    user_id INTEGER NOT NULL REFERENCES users(id),
    client_id TEXT NOT NULL,
    text TEXT NOT NULL,
    ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (user_id, client_id)
);
CREATE INDEX messages_room_ts ON messages(room_id, ts, seq);
CREATE INDEX messages_room_seq ON messages(room_id, seq);
";

/// Read marks (how far each user has read each room) and mentions (which
/// users each message names, to count them; the display names also ride in
/// `messages.mentions`, one per line). Counting unread messages reads only
/// the `(room_id, seq, user_id)` index.
const SCHEMA_V3: &str = "
CREATE TABLE read_marks (
    user_id INTEGER NOT NULL REFERENCES users(id),
    room_id INTEGER NOT NULL REFERENCES rooms(id),
    seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
) WITHOUT ROWID;
CREATE TABLE mentions (
    user_id INTEGER NOT NULL REFERENCES users(id),
    room_id INTEGER NOT NULL REFERENCES rooms(id),
    seq INTEGER NOT NULL REFERENCES messages(seq),
    PRIMARY KEY (user_id, room_id, seq)
) WITHOUT ROWID;
ALTER TABLE messages ADD COLUMN mentions TEXT;
CREATE INDEX messages_room_seq_user ON messages(room_id, seq, user_id);
DROP INDEX messages_room_seq;
";

/// Counting unread messages reads only an index, and a deleted message
/// (a tombstone) is not unread: the index counted from carries
/// `deleted_at` too. It replaces the version 3 index, whose columns it
/// starts with.
const SCHEMA_V6: &str = "
CREATE INDEX messages_room_seq_user_deleted ON messages(room_id, seq, user_id, deleted_at);
DROP INDEX messages_room_seq_user;
";

/// Every user's read mark in every live room: the room's newest message
/// (for a database from before read marks, and for a new user).
const MARK_ALL_READ: &str = "
INSERT INTO read_marks (user_id, room_id, seq)
SELECT u.id, r.id, COALESCE((SELECT max(m.seq) FROM messages m WHERE m.room_id = r.id), 0)
FROM users u, rooms r WHERE r.deleted_at IS NULL";

/// Counts the messages from others after a read mark that are not deleted
/// (?1 room, ?2 mark, ?3 user, ?4 at most), from the index alone.
const UNREAD_MESSAGES: &str = "SELECT count(*) FROM (SELECT 1 FROM messages
    WHERE room_id = ?1 AND seq > ?2 AND user_id <> ?3 AND deleted_at IS NULL LIMIT ?4)";

/// Unread messages (and mentions) are counted up to this many per room;
/// more are reported as this many.
pub const MAX_UNREAD: u64 = 1_000;

/// A user's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub i64);

/// A room's row id (a deleted room's name may be reused; its id never is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomId(pub i64);

macro_rules! sql_id {
    ($name:ident) => {
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                self.0.to_sql()
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                i64::column_result(value).map($name)
            }
        }
    };
}

sql_id!(UserId);
sql_id!(RoomId);
sql_id!(Seq);

/// A live room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRecord {
    /// Row id.
    pub id: RoomId,
    /// Display name, as created.
    pub name: String,
    /// When it was created, in ms since the epoch.
    pub created_at: i64,
    /// The creator's display name; None for `general`.
    pub created_by: Option<String>,
    /// How many messages it holds.
    pub message_count: u64,
    /// Its newest message's seq; 0 when it has none.
    pub newest: Seq,
}

/// A user as stored; `name` keeps the casing first used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Row id.
    pub id: UserId,
    /// Display name: the casing first used.
    pub name: String,
}

/// Where an already-stored message went, to repeat its ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    /// Its place in the global order.
    pub seq: Seq,
    /// The display name of its room.
    pub room: String,
    /// Its timestamp.
    pub ts: i64,
}

/// What storing one message of a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Stored now, with this seq.
    New(Seq),
    /// Its sender had already sent this client id: nothing was stored, and
    /// this is where the original went.
    Repeat(SentRecord),
}

impl Stored {
    /// The message's seq: the new one, or the original's.
    pub fn seq(&self) -> Seq {
        match self {
            Stored::New(seq) => *seq,
            Stored::Repeat(original) => original.seq,
        }
    }
}

/// A message about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The room it goes to.
    pub room_id: RoomId,
    /// Its sender.
    pub user_id: UserId,
    /// The sender's id for it, unique per sender.
    pub client_id: String,
    /// Checked text.
    pub text: String,
    /// The timestamp it is shown with (see `protocol::message_ts`).
    pub ts: i64,
    /// The server's clock when it arrived.
    pub received_at: i64,
    /// The users it mentions: ids and display names, each once.
    pub mentions: Vec<(UserId, String)>,
}

/// A read mark: `user` has seen `room` up to `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadMark {
    /// Whose.
    pub user: UserId,
    /// In which room.
    pub room: RoomId,
    /// Up to which message.
    pub seq: Seq,
}

/// A slice of history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRows {
    /// The messages, oldest first.
    pub messages: Vec<PageMessage>,
    /// Whether the room has older messages than these.
    pub has_older: bool,
    /// Whether the room has newer messages than these.
    pub has_newer: bool,
}

/// How much of a page to read: at most `rows` messages, stopping before the
/// one that would take their text past `text_bytes`.
#[derive(Debug, Clone, Copy)]
struct Take {
    rows: usize,
    text_bytes: usize,
}

impl Take {
    /// At most `rows` messages, whatever their size.
    fn rows(rows: usize) -> Take {
        Take {
            rows,
            text_bytes: usize::MAX,
        }
    }
}

impl PageRows {
    /// The `history` frame's page, for the room named `room` holding
    /// `total` messages.
    pub fn into_page(self, room: String, total: u64) -> Page {
        Page {
            room,
            messages: self.messages,
            has_older: self.has_older,
            has_newer: self.has_newer,
            total,
        }
    }
}

/// The open database: one connection, owned by the hub thread (and one
/// read-only connection, [`Store::reader`], the page builder's).
pub struct Store {
    conn: Connection,
    /// Whether text was erased (edited or deleted) since the WAL was last
    /// scrubbed (see `Store::scrub_erased`).
    erased: bool,
    /// The newest stored message's seq (0: none).
    newest: Seq,
    /// The mark in `search_indexed`: the index holds every message up to
    /// it and none after it (see `search`).
    search_indexed: Seq,
}

impl Store {
    /// Opens (or creates, mode 0600) the database at `path`. A file that is
    /// not SQLite, or is SQLite but not Parlor's, is refused and left
    /// untouched.
    pub fn open(path: &Path) -> Result<Store, Error> {
        let fail = |message: String| database_error(path, message, None);
        prepare_file(path).map_err(|e| database_error(path, e.to_string(), Some(e.into())))?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| database_error(path, format!("cannot open it: {e}"), Some(e.into())))?;
        // Read before writing anything: a file that is not a database fails
        // here, while it is still byte-for-byte what it was.
        let (tables, app_id, version) = read_identity(&conn).map_err(|e| {
            let message = format!(
                "it is not a readable SQLite database ({e}); move it away or pass another --db"
            );
            database_error(path, message, Some(e.into()))
        })?;
        if app_id != APPLICATION_ID && !(app_id == 0 && tables == 0) {
            return Err(fail(
                "it is a SQLite database but not a Parlor one; pass another --db".into(),
            ));
        }
        if version > SCHEMA_VERSION {
            return Err(fail(format!(
                "its schema version {version} is newer than this Parlor understands ({SCHEMA_VERSION}); run a newer Parlor"
            )));
        }
        let mut store = Store {
            conn,
            // A server killed between an erasure and its scrub may have
            // left the old text in the WAL: the first scrub clears it.
            erased: true,
            newest: Seq(0),
            search_indexed: Seq(0),
        };
        store
            .configure()
            .and_then(|()| store.migrate(version))
            .and_then(|()| store.load_marks())
            .map_err(|e| database_error(path, e.to_string(), Some(e.into())))?;
        tighten_permissions(path);
        Ok(store)
    }

    /// Opens a second, read-only connection to the database a running
    /// [`Store::open`] has opened, for reading on another thread (history
    /// pages): WAL lets it read while the hub writes.
    pub fn reader(path: &Path) -> Result<Store, Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| {
            conn.busy_timeout(BUSY_TIMEOUT)?;
            Ok(conn)
        })
        .map_err(|e| {
            database_error(path, format!("cannot open it to read: {e}"), Some(e.into()))
        })?;
        // A reader never writes: what the fields below track (erasures, the
        // newest message, the search index's mark) is the writer's.
        Ok(Store {
            conn,
            erased: false,
            newest: Seq(0),
            search_indexed: Seq(0),
        })
    }

    fn configure(&self) -> rusqlite::Result<()> {
        let mode: String =
            self.conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            log::warn!("database: journal_mode is {mode}, not WAL");
        }
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.conn.pragma_update(None, "foreign_keys", true)?;
        // Freed bytes are zeroed, so that deleted and replaced text does not
        // linger in the file (see `edits`).
        self.conn.pragma_update(None, "secure_delete", true)?;
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(())
    }

    /// Turns off SQLite's automatic checkpoint after commits, for a program
    /// that replicates the WAL and checkpoints it itself (Litestream). The
    /// WAL grows until someone checkpoints it.
    pub fn leave_checkpoints_to_others(&self) -> rusqlite::Result<()> {
        let pages: i64 =
            self.conn
                .pragma_update_and_check(None, "wal_autocheckpoint", 0, |row| row.get(0))?;
        debug_assert_eq!(pages, 0);
        Ok(())
    }

    /// Reads the newest message's seq and how far the search index goes.
    fn load_marks(&mut self) -> rusqlite::Result<()> {
        self.newest =
            self.conn
                .query_row("SELECT coalesce(max(seq), 0) FROM messages", [], |row| {
                    row.get(0)
                })?;
        self.search_indexed = search::indexed_up_to(&self.conn)?;
        Ok(())
    }

    fn migrate(&self, from: i64) -> rusqlite::Result<()> {
        if from >= SCHEMA_VERSION {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction()?;
        if from < 1 {
            tx.execute_batch(SCHEMA_V1)?;
            tx.execute(
                "INSERT INTO rooms (name, name_key, created_at) VALUES ('general', 'general', ?1)",
                [now_ms()],
            )?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        }
        if from < 2 {
            rekey(&tx, "users", "1 = 1")?;
            // Deleted rooms' names are free again; only live ones must stay
            // unique.
            rekey(&tx, "rooms", "deleted_at IS NULL")?;
        }
        if from < 3 {
            tx.execute_batch(SCHEMA_V3)?;
            // What was there before read marks counts as read.
            tx.execute(MARK_ALL_READ, [])?;
        }
        if from < 4 {
            tx.execute_batch(edits::SCHEMA_V4)?;
            search::create_index(&tx)?;
        }
        if from < 5 {
            search::index_in_batches(&tx)?;
        }
        if from < 6 {
            tx.execute_batch(SCHEMA_V6)?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()
    }

    /// All rooms that have not been deleted.
    pub fn live_rooms(&self) -> rusqlite::Result<Vec<RoomRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.id, r.name, r.created_at, u.name, r.message_count,
                    COALESCE((SELECT max(m.seq) FROM messages m WHERE m.room_id = r.id), 0)
             FROM rooms r LEFT JOIN users u ON u.id = r.created_by
             WHERE r.deleted_at IS NULL ORDER BY r.id",
        )?;
        let rows = stmt.query_map([], |row| {
            Ok(RoomRecord {
                id: row.get(0)?,
                name: row.get(1)?,
                created_at: row.get(2)?,
                created_by: row.get(3)?,
                message_count: row.get::<_, i64>(4)?.max(0) as u64,
                newest: row.get(5)?,
            })
        })?;
        rows.collect()
    }

    /// Records a login: creates the user on first use (keeping that casing,
    /// with every live room read up to its newest message) and updates
    /// `last_seen`.
    pub fn login_user(&self, name: &str, now: i64) -> rusqlite::Result<UserRecord> {
        let key = NameKey::of(name);
        let tx = self.conn.unchecked_transaction()?;
        let known = self.find_user(&key)?;
        let user = tx
            .prepare_cached(
                "INSERT INTO users (name, name_key, created_at, last_seen) VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (name_key) DO UPDATE SET last_seen = excluded.last_seen
                 RETURNING id, name",
            )?
            .query_row(params![name, key.as_str(), now], |row| {
                Ok(UserRecord {
                    id: row.get(0)?,
                    name: row.get(1)?,
                })
            })?;
        if known.is_none() {
            tx.prepare_cached(&format!("{MARK_ALL_READ} AND u.id = ?1"))?
                .execute([user.id])?;
        }
        tx.commit()?;
        Ok(user)
    }

    /// The user with this key, if one ever signed in.
    pub fn find_user(&self, key: &NameKey) -> rusqlite::Result<Option<UserRecord>> {
        self.conn
            .prepare_cached("SELECT id, name FROM users WHERE name_key = ?1")?
            .query_row([key.as_str()], |row| {
                Ok(UserRecord {
                    id: row.get(0)?,
                    name: row.get(1)?,
                })
            })
            .optional()
    }

    /// A user's read marks, by room (rooms without one start at 0).
    pub fn read_marks(&self, user: UserId) -> rusqlite::Result<Vec<(RoomId, Seq)>> {
        self.conn
            .prepare_cached("SELECT room_id, seq FROM read_marks WHERE user_id = ?1")?
            .query_map([user], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect()
    }

    /// What `user` has not read in `room` after `mark`: messages from others
    /// that are not deleted, and how many of them mention the user (a
    /// deleted message's mentions are deleted with it), each counted up to
    /// [`MAX_UNREAD`] (so a count reads at most that many index entries
    /// after the tombstones among them, whatever a client asks).
    pub fn unread(&self, user: UserId, room: RoomId, mark: Seq) -> rusqlite::Result<(u64, u64)> {
        let count = |sql: &str| -> rusqlite::Result<u64> {
            self.conn
                .prepare_cached(sql)?
                .query_row(params![room, mark, user, MAX_UNREAD as i64], |row| {
                    row.get::<_, i64>(0)
                })
                .map(|n| n.max(0) as u64)
        };
        Ok((
            count(UNREAD_MESSAGES)?,
            count(
                "SELECT count(*) FROM (SELECT 1 FROM mentions
                 WHERE user_id = ?3 AND room_id = ?1 AND seq > ?2 LIMIT ?4)",
            )?,
        ))
    }

    /// Stores read marks in one transaction, each only if it is further
    /// than the one stored.
    pub fn save_read_marks(&mut self, marks: &[ReadMark]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut save = tx.prepare_cached(
                "INSERT INTO read_marks (user_id, room_id, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, room_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?;
            for mark in marks {
                save.execute(params![mark.user, mark.room, mark.seq])?;
            }
        }
        tx.commit()
    }

    /// Whether a user with this key has ever signed in.
    pub fn user_exists(&self, key: &NameKey) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE name_key = ?1)")?
            .query_row([key.as_str()], |row| row.get(0))
    }

    /// Records when a user was last online.
    pub fn touch_user(&self, user_id: UserId, now: i64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("UPDATE users SET last_seen = ?2 WHERE id = ?1")?
            .execute(params![user_id, now])?;
        Ok(())
    }

    /// Creates a live room; fails if a live room has the same key.
    pub fn create_room(
        &self,
        name: &str,
        created_by: UserId,
        now: i64,
    ) -> rusqlite::Result<RoomId> {
        let key = NameKey::of(name);
        self.conn
            .prepare_cached(
                "INSERT INTO rooms (name, name_key, created_at, created_by) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![name, key.as_str(), now, created_by])?;
        Ok(RoomId(self.conn.last_insert_rowid()))
    }

    /// Marks a room deleted. Its messages stay in the file but are no longer
    /// reachable through any live room.
    pub fn delete_room(&self, room_id: RoomId, now: i64) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("UPDATE rooms SET deleted_at = ?2 WHERE id = ?1")?
            .execute(params![room_id, now])?;
        Ok(())
    }

    /// The message this user already sent with this client id, if any.
    pub fn find_sent(
        &self,
        user_id: UserId,
        client_id: &str,
    ) -> rusqlite::Result<Option<SentRecord>> {
        find_sent(&self.conn, user_id, client_id)
    }

    /// Stores a batch in one transaction. A message whose sender already
    /// sent its client id (a retry) is not stored again: its original is
    /// returned instead. Either the whole batch is durable when this returns
    /// Ok, or none of it.
    ///
    /// Detecting retries inside the insert (`ON CONFLICT DO NOTHING`) spares
    /// every new message a read transaction of its own; only a retry pays
    /// for the lookup of its original.
    pub fn insert_messages<'a>(
        &mut self,
        batch: impl IntoIterator<Item = &'a NewMessage>,
    ) -> rusqlite::Result<Vec<Stored>> {
        let tx = self.conn.transaction()?;
        let mut stored = Vec::new();
        // New messages per room: one counter update per room and batch.
        let mut counts: Vec<(RoomId, i64)> = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (room_id, user_id, client_id, text, ts, received_at, mentions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (user_id, client_id) DO NOTHING",
            )?;
            for m in batch {
                let names = (!m.mentions.is_empty()).then(|| {
                    let names: Vec<&str> = m.mentions.iter().map(|(_, n)| n.as_str()).collect();
                    names.join("\n")
                });
                let inserted = insert.execute(params![
                    m.room_id,
                    m.user_id,
                    m.client_id,
                    m.text,
                    m.ts,
                    m.received_at,
                    names
                ])?;
                if inserted == 0 {
                    let original = find_sent(&tx, m.user_id, &m.client_id)?
                        .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
                    stored.push(Stored::Repeat(original));
                    continue;
                }
                let seq = Seq(tx.last_insert_rowid());
                stored.push(Stored::New(seq));
                if !m.mentions.is_empty() {
                    let mut mention = tx.prepare_cached(
                        "INSERT INTO mentions (user_id, room_id, seq) VALUES (?1, ?2, ?3)",
                    )?;
                    // They count towards unread mentions; mentioning
                    // yourself does not.
                    for (user, _) in m.mentions.iter().filter(|(u, _)| *u != m.user_id) {
                        mention.execute(params![user, m.room_id, seq])?;
                    }
                }
                match counts.iter_mut().find(|(room, _)| *room == m.room_id) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((m.room_id, 1)),
                }
            }
            let mut count = tx.prepare_cached(
                "UPDATE rooms SET message_count = message_count + ?2 WHERE id = ?1",
            )?;
            for (room, n) in counts {
                count.execute(params![room, n])?;
            }
        }
        tx.commit()?;
        if let Some(newest) = stored.iter().map(Stored::seq).max() {
            self.newest = self.newest.max(newest);
        }
        Ok(stored)
    }

    /// [`Store::page_and_total`] without the total, for tests.
    #[cfg(test)]
    pub fn page(
        &self,
        room_id: RoomId,
        room: &str,
        query: PageQuery,
        limit: u32,
    ) -> rusqlite::Result<PageRows> {
        self.page_and_total(room_id, room, query, limit)
            .map(|(rows, _)| rows)
    }

    /// The newest page of a room, for a `join`, stopping early once its
    /// messages' text passes `max_bytes` (then `has_older` is true): the
    /// hub builds it on its own thread, so it must stay small whatever the
    /// room holds.
    pub fn newest_page(
        &self,
        room_id: RoomId,
        room: &str,
        limit: u32,
        max_bytes: usize,
    ) -> rusqlite::Result<PageRows> {
        let limit = limit as usize;
        let (mut messages, cut) = self.page_rows(
            room_id,
            room,
            "",
            "m.ts DESC, m.seq DESC",
            &[],
            Take {
                rows: limit + 1,
                text_bytes: max_bytes,
            },
        )?;
        let more = cut || messages.len() > limit;
        messages.truncate(limit);
        messages.reverse();
        Ok(PageRows {
            messages,
            has_older: more,
            has_newer: false,
        })
    }

    /// Reads one page of a room's history, oldest first, and how many
    /// messages the room holds, in one snapshot: on a reader connection
    /// the hub may commit between the reads, and the page may hold messages
    /// committed after its request was handled.
    pub fn page_and_total(
        &self,
        room_id: RoomId,
        room: &str,
        query: PageQuery,
        limit: u32,
    ) -> rusqlite::Result<(PageRows, u64)> {
        let snapshot = self.conn.unchecked_transaction()?;
        let page = self.page_in(room_id, room, query, limit)?;
        let total: i64 = snapshot
            .prepare_cached("SELECT message_count FROM rooms WHERE id = ?1")?
            .query_row([room_id.0], |row| row.get(0))?;
        snapshot.finish()?;
        Ok((page, total.max(0) as u64))
    }

    fn page_in(
        &self,
        room_id: RoomId,
        room: &str,
        query: PageQuery,
        limit: u32,
    ) -> rusqlite::Result<PageRows> {
        const NEWEST_FIRST: &str = "m.ts DESC, m.seq DESC";
        const OLDEST_FIRST: &str = "m.ts, m.seq";
        let limit = limit as usize;
        let rows = |filter: &str, order: &str, cursor: &[i64], fetch: usize| {
            self.page_rows(room_id, room, filter, order, cursor, Take::rows(fetch))
                .map(|(messages, _)| messages)
        };
        // Pages walking back in time read newest first and are reversed.
        let (filter, order, cursor, newest_first): (&str, &str, &[i64], bool) = match &query {
            PageQuery::Newest => ("", NEWEST_FIRST, &[], true),
            PageQuery::Before(c) => (
                "AND (m.ts, m.seq) < (?3, ?4)",
                NEWEST_FIRST,
                &[c.ts, c.seq],
                true,
            ),
            PageQuery::After(c) => (
                "AND (m.ts, m.seq) > (?3, ?4)",
                OLDEST_FIRST,
                &[c.ts, c.seq],
                false,
            ),
            PageQuery::SinceSeq(s) => ("AND m.seq > ?3", "m.seq", std::slice::from_ref(s), false),
            PageQuery::Around(c) => {
                // The message and what follows it on one side, what precedes
                // it on the other, half the page each; a side that runs out
                // leaves its share to the other. Each read asks for one more
                // than it may keep, to tell whether there is more.
                const NEWER: &str = "AND (m.ts, m.seq) >= (?3, ?4)";
                const OLDER: &str = "AND (m.ts, m.seq) < (?3, ?4)";
                let cursor = [c.ts, c.seq];
                let half = limit / 2;
                let mut newer = rows(NEWER, OLDEST_FIRST, &cursor, limit - half + 1)?;
                let mut newer_kept = newer.len().min(limit - half);
                let mut older = rows(OLDER, NEWEST_FIRST, &cursor, limit - newer_kept + 1)?;
                let older_kept = older.len().min(limit - newer_kept);
                if older_kept + newer_kept < limit && newer.len() > newer_kept {
                    newer = rows(NEWER, OLDEST_FIRST, &cursor, limit - older_kept + 1)?;
                    newer_kept = newer.len().min(limit - older_kept);
                }
                let (has_older, has_newer) = (older.len() > older_kept, newer.len() > newer_kept);
                older.truncate(older_kept);
                older.reverse();
                newer.truncate(newer_kept);
                older.append(&mut newer);
                return Ok(PageRows {
                    messages: older,
                    has_older,
                    has_newer,
                });
            }
        };
        let mut messages = rows(filter, order, cursor, limit + 1)?;
        let more = messages.len() > limit;
        messages.truncate(limit);
        if newest_first {
            messages.reverse();
        }
        // The page holds everything between its cursor and its far end, so
        // "is there anything on the cursor's side" is one indexed probe.
        let (has_older, has_newer) = match query {
            PageQuery::Newest => (more, false),
            PageQuery::Before(c) => (
                more,
                self.exists(room_id, "(ts, seq) >= (?2, ?3)", &[c.ts, c.seq])?,
            ),
            PageQuery::After(c) => (
                self.exists(room_id, "(ts, seq) <= (?2, ?3)", &[c.ts, c.seq])?,
                more,
            ),
            PageQuery::SinceSeq(s) => (self.exists(room_id, "seq <= ?2", &[s])?, more),
            PageQuery::Around(_) => unreachable!("BUG: answered above"),
        };
        Ok(PageRows {
            messages,
            has_older,
            has_newer,
        })
    }

    /// Up to `fetch` messages of a room matching `filter` (whose cursor
    /// parameters start at ?3), in `order`, stopping before the message
    /// that would take their text past `max_bytes` (but never before the
    /// first); true when it stopped there (see [`Take`]).
    fn page_rows(
        &self,
        room_id: RoomId,
        room: &str,
        filter: &str,
        order: &str,
        cursor: &[i64],
        Take {
            rows: fetch,
            text_bytes: max_bytes,
        }: Take,
    ) -> rusqlite::Result<(Vec<PageMessage>, bool)> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN users u ON u.id = m.user_id
             WHERE m.room_id = ?1 {filter} ORDER BY {order} LIMIT ?2"
        );
        let fetch = i64::try_from(fetch).unwrap_or(i64::MAX);
        let args = [room_id.0, fetch].into_iter().chain(cursor.iter().copied());
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |row| {
            message_row(row, room.to_string()).map(PageMessage)
        })?;
        collect_within(rows, max_bytes)
    }

    /// Caps the file at `pages` pages (at least its current size), so tests
    /// can make writes fail the way a full disk does.
    #[cfg(test)]
    pub(crate) fn set_max_pages(&self, pages: i64) -> rusqlite::Result<()> {
        self.conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
    }

    #[cfg(test)]
    pub(crate) fn conn_page_count(&self) -> i64 {
        self.conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))
            .expect("page_count is always readable")
    }

    fn exists(&self, room_id: RoomId, condition: &str, args: &[i64]) -> rusqlite::Result<bool> {
        self.conn
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE room_id = ?1 AND {condition})"
            ))?
            .query_row(
                params_from_iter(std::iter::once(room_id.0).chain(args.iter().copied())),
                |row| row.get(0),
            )
    }
}

/// Collects messages from `rows` until the next would take their text past
/// `max_bytes` (the first is always kept); true when it stopped there. Rows
/// are read one by one, so the rest are never read.
fn collect_within(
    rows: impl Iterator<Item = rusqlite::Result<PageMessage>>,
    max_bytes: usize,
) -> rusqlite::Result<(Vec<PageMessage>, bool)> {
    let mut messages = Vec::new();
    let mut bytes = 0usize;
    for row in rows {
        let message = row?;
        bytes = bytes.saturating_add(message.0.text.len());
        if bytes > max_bytes && !messages.is_empty() {
            return Ok((messages, true));
        }
        messages.push(message);
    }
    Ok((messages, false))
}

/// The display names in a `messages.mentions` column.
fn mention_names(column: Option<String>) -> Vec<String> {
    column
        .map(|names| names.split('\n').map(str::to_string).collect())
        .unwrap_or_default()
}

/// Writes a consistent copy of the Parlor database at `db` to `dest` (which
/// must not exist) while the server may keep running: SQLite's `VACUUM INTO`
/// reads one snapshot of the WAL database. The copy is created with mode
/// 0600 and opens like any Parlor database.
pub fn backup(db: &Path, dest: &Path) -> Result<(), Error> {
    let fail = |path: &Path, message: String| database_error(path, message, None);
    let conn = open_read_only(db)?;
    if dest.exists() {
        return Err(fail(
            dest,
            "it already exists; choose a new file name".into(),
        ));
    }
    prepare_file(dest).map_err(|e| fail(dest, e.to_string()))?;
    let dest_str = dest
        .to_str()
        .ok_or_else(|| fail(dest, "the path is not valid UTF-8".into()))?;
    if let Err(e) = conn.execute("VACUUM INTO ?1", [dest_str]) {
        let _ = fs::remove_file(dest);
        return Err(fail(dest, format!("the copy failed: {e}")));
    }
    Ok(())
}

/// Opens an existing Parlor database read-only, for reading alongside a
/// running server; refuses a missing file or one that is not Parlor's.
fn open_read_only(db: &Path) -> Result<Connection, Error> {
    let fail = |message: String| database_error(db, message, None);
    if !db.is_file() {
        return Err(fail("there is no database file here".into()));
    }
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| fail(format!("cannot open it: {e}")))?;
    let (_, app_id, _) = read_identity(&conn)
        .map_err(|e| fail(format!("it is not a readable SQLite database ({e})")))?;
    if app_id != APPLICATION_ID {
        return Err(fail("it is not a Parlor database".into()));
    }
    Ok(conn)
}

fn database_error(
    path: &Path,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::Database {
        path: path.to_path_buf(),
        message,
        source,
    }
}

/// Creates the file with mode 0600 if it does not exist, so the database is
/// never readable by others, not even for a moment.
fn prepare_file(path: &Path) -> std::io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(std::io::Error::other("it is not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options
                .open(path)
                .map(drop)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot create it: {e}")))
        }
        Err(e) => Err(e),
    }
}

/// Restricts the database and its WAL files to the owner, warning when they
/// were readable by others.
fn tighten_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        for file in files {
            let Ok(meta) = fs::metadata(&file) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                log::warn!(
                    "database: {} was readable by others (mode {mode:o}); restricting it to 0600",
                    file.display()
                );
                if let Err(e) = fs::set_permissions(&file, fs::Permissions::from_mode(0o600)) {
                    log::error!("database: cannot restrict {}: {e}", file.display());
                }
            }
        }
    }
}

/// Recomputes the name keys of a table's rows matching `live`, oldest
/// first. When two names now have the same key (they look alike), the
/// older keeps it and the newer gets a key no name can have (so nobody can
/// sign in under it, or take the older's name by typing it): logged, since
/// a person loses their name.
fn rekey(conn: &Connection, table: &str, live: &str) -> rusqlite::Result<()> {
    let rows: Vec<(i64, String)> = conn
        .prepare(&format!(
            "SELECT id, name FROM {table} WHERE {live} ORDER BY id"
        ))?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // Keys unique for the moment, so that no update below collides with a
    // key still waiting for its own.
    conn.execute(
        &format!("UPDATE {table} SET name_key = char(0) || id WHERE {live}"),
        [],
    )?;
    let mut taken: std::collections::HashMap<String, String> = Default::default();
    let mut update = conn.prepare(&format!("UPDATE {table} SET name_key = ?2 WHERE id = ?1"))?;
    for (id, name) in rows {
        let key = NameKey::of(&name).as_str().to_string();
        let key = match taken.get(&key) {
            Some(first) => {
                log::warn!(
                    "database: {table}: \"{name}\" looks like the older \"{first}\"; \
                     its name now belongs to \"{first}\""
                );
                format!("{key}\0{id}")
            }
            None => {
                taken.insert(key.clone(), name);
                key
            }
        };
        update.execute(params![id, key])?;
    }
    Ok(())
}

fn find_sent(
    conn: &Connection,
    user_id: UserId,
    client_id: &str,
) -> rusqlite::Result<Option<SentRecord>> {
    conn.prepare_cached(
        "SELECT m.seq, r.name, m.ts FROM messages m JOIN rooms r ON r.id = m.room_id
         WHERE m.user_id = ?1 AND m.client_id = ?2",
    )?
    .query_row(params![user_id, client_id], |row| {
        Ok(SentRecord {
            seq: row.get(0)?,
            room: row.get(1)?,
            ts: row.get(2)?,
        })
    })
    .optional()
}

/// The columns [`message_row`] reads, from `messages m` joined with
/// `users u`.
const MESSAGE_COLUMNS: &str =
    "m.seq, m.client_id, u.name, m.text, m.ts, m.edited_at, m.deleted_at IS NOT NULL, m.mentions";

/// A message read with [`MESSAGE_COLUMNS`], in `room`.
fn message_row(row: &rusqlite::Row, room: String) -> rusqlite::Result<ChatMessage> {
    Ok(ChatMessage {
        room,
        seq: row.get(0)?,
        id: row.get(1)?,
        from: row.get(2)?,
        text: row.get(3)?,
        ts: row.get(4)?,
        edited_at: row.get(5)?,
        deleted: row.get(6)?,
        mentions: mention_names(row.get(7)?),
    })
}

fn read_identity(conn: &Connection) -> rusqlite::Result<(i64, i64, i64)> {
    let tables = conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))?;
    let app_id = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let version = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    Ok((tables, app_id, version))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::Cursor;
    use tempfile::TempDir;

    /// A store on a new database in a directory removed on drop.
    pub(crate) fn temp_store() -> (TempDir, Store) {
        let dir = TempDir::new().unwrap();
        let store = Store::open(&dir.path().join("t.db")).unwrap();
        (dir, store)
    }

    /// Creates a database at `path` as Parlor's schema version 4 left it
    /// (messages indexed for search by a trigger as they were inserted),
    /// with `general` and the user `ann` (id 1), then runs `sql` on it.
    pub(crate) fn version_4_database(path: &Path, sql: &str) {
        let conn = Connection::open(path).unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        tx.execute_batch(SCHEMA_V1).unwrap();
        tx.execute_batch(SCHEMA_V3).unwrap();
        tx.execute_batch(edits::SCHEMA_V4).unwrap();
        search::create_index(&tx).unwrap();
        tx.execute_batch(
            "INSERT INTO rooms (name, name_key, created_at) VALUES ('general', 'general', 1);
             INSERT INTO users (name, name_key, created_at, last_seen) VALUES ('ann', 'ann', 1, 1);
             PRAGMA user_version = 4;",
        )
        .unwrap();
        tx.execute_batch(sql).unwrap();
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        tx.commit().unwrap();
    }

    /// `general`, the room of a new database.
    const GENERAL: RoomId = RoomId(1);

    fn message(room_id: RoomId, user_id: UserId, id: &str, ts: i64) -> NewMessage {
        NewMessage {
            room_id,
            user_id,
            client_id: id.into(),
            text: format!("text {id}"),
            ts,
            received_at: ts,
            mentions: Vec::new(),
        }
    }

    #[test]
    fn new_database_has_general_and_private_permissions() {
        let (dir, store) = temp_store();
        let rooms = store.live_rooms().unwrap();
        assert_eq!(rooms.len(), 1);
        assert_eq!(rooms[0].name, "general");
        assert_eq!(rooms[0].created_by, None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("t.db"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn refuses_files_that_are_not_parlor_databases_and_leaves_them_untouched() {
        let dir = TempDir::new().unwrap();
        let junk = dir.path().join("junk.db");
        let bytes = b"this is a text file, not a database, at least 100 bytes long so SQLite reads its header fully.....".to_vec();
        fs::write(&junk, &bytes).unwrap();
        let err = Store::open(&junk)
            .err()
            .expect("junk must be refused")
            .to_string();
        assert!(err.contains("junk.db"), "{err}");
        assert_eq!(fs::read(&junk).unwrap(), bytes);

        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let before = fs::read(&other).unwrap();
        let err = Store::open(&other)
            .err()
            .expect("foreign db must be refused")
            .to_string();
        assert!(err.contains("not a Parlor"), "{err}");
        assert_eq!(fs::read(&other).unwrap(), before);
    }

    #[test]
    fn users_keep_their_first_casing() {
        let (_dir, store) = temp_store();
        let first = store.login_user("Alice", 1).unwrap();
        let again = store.login_user("ALICE", 2).unwrap();
        assert_eq!(first, again);
        assert_eq!(again.name, "Alice");
    }

    #[test]
    fn deleted_room_names_can_be_reused_and_start_empty() {
        let (_dir, mut store) = temp_store();
        let user = store.login_user("bob", 1).unwrap();
        let design = store.create_room("Design", user.id, 5).unwrap();
        assert!(store.create_room("design", user.id, 6).is_err());
        store
            .insert_messages(&[message(design, user.id, "a", 10)])
            .unwrap();
        store.delete_room(design, 11).unwrap();
        let again = store.create_room("DESIGN", user.id, 12).unwrap();
        assert_ne!(design, again);
        let page = store.page(again, "DESIGN", PageQuery::Newest, 50).unwrap();
        assert!(page.messages.is_empty());
        let live = store.live_rooms().unwrap();
        let room = live.iter().find(|r| r.id == again).unwrap();
        assert_eq!(room.created_by.as_deref(), Some("bob"));
        assert_eq!(room.message_count, 0);
    }

    #[test]
    fn duplicate_client_ids_are_not_stored_again_and_their_original_is_found() {
        let (_dir, mut store) = temp_store();
        let user = store.login_user("carol", 1).unwrap();
        let other = store.login_user("dave", 1).unwrap();
        let stored = store
            .insert_messages(&[message(GENERAL, user.id, "x", 10)])
            .unwrap();
        let Stored::New(seq) = stored[0] else {
            panic!("the first message is new: {stored:?}");
        };
        let original = SentRecord {
            seq,
            room: "general".into(),
            ts: 10,
        };
        // A retry in a later batch, and one beside a new message.
        let again = store
            .insert_messages(&[
                message(GENERAL, user.id, "x", 11),
                message(GENERAL, other.id, "x", 12),
            ])
            .unwrap();
        assert_eq!(again[0], Stored::Repeat(original.clone()));
        assert!(matches!(again[1], Stored::New(s) if s > seq));
        assert_eq!(store.find_sent(user.id, "x").unwrap(), Some(original));
        assert_eq!(store.find_sent(user.id, "y").unwrap(), None);
        // The retry was not counted or stored.
        assert_eq!(store.live_rooms().unwrap()[0].message_count, 2);
        let page = store
            .page(GENERAL, "general", PageQuery::Newest, 50)
            .unwrap();
        assert_eq!(page.messages.len(), 2);
        assert_eq!(page.messages[0].0.text, "text x");
    }

    #[test]
    fn a_join_page_stops_once_its_text_passes_the_bound() {
        let (_dir, mut store) = temp_store();
        let user = store.login_user("dan", 1).unwrap();
        let batch: Vec<_> = (0..10)
            .map(|i| NewMessage {
                text: format!("{i}{}", "x".repeat(999)),
                ..message(GENERAL, user.id, &format!("m{i}"), 1000 + i)
            })
            .collect();
        store.insert_messages(&batch).unwrap();
        let ids = |rows: &PageRows| -> Vec<String> {
            rows.messages.iter().map(|m| m.0.id.clone()).collect()
        };
        // 3,500 bytes: the newest three, oldest first, and more is older.
        let page = store.newest_page(GENERAL, "general", 50, 3500).unwrap();
        assert_eq!(ids(&page), ["m7", "m8", "m9"]);
        assert!(page.has_older && !page.has_newer);
        // Exactly three messages' worth still holds three.
        let page = store.newest_page(GENERAL, "general", 50, 3000).unwrap();
        assert_eq!(ids(&page), ["m7", "m8", "m9"]);
        // One message larger than the bound still comes.
        let page = store.newest_page(GENERAL, "general", 50, 10).unwrap();
        assert_eq!(ids(&page), ["m9"]);
        // Under the bound, the limit and the plain newest page decide.
        let page = store
            .newest_page(GENERAL, "general", 50, usize::MAX)
            .unwrap();
        let plain = store
            .page(GENERAL, "general", PageQuery::Newest, 50)
            .unwrap();
        assert_eq!(page, plain);
        assert!(!page.has_older);
        let page = store
            .newest_page(GENERAL, "general", 4, usize::MAX)
            .unwrap();
        assert_eq!(ids(&page), ["m6", "m7", "m8", "m9"]);
        assert!(page.has_older);
    }

    #[test]
    fn pages_follow_ts_then_seq_in_every_direction() {
        let (_dir, mut store) = temp_store();
        let user = store.login_user("dan", 1).unwrap();
        // ts goes backwards for some messages: order is by (ts, seq), not seq.
        let batch: Vec<_> = (0..25)
            .map(|i| message(GENERAL, user.id, &format!("m{i}"), 1000 + (i % 5) * 10 - i))
            .collect();
        store.insert_messages(&batch).unwrap();
        let mut all: Vec<(i64, i64)> = store
            .page(GENERAL, "general", PageQuery::SinceSeq(0), 500)
            .unwrap()
            .messages
            .iter()
            .map(|m| (m.0.ts, m.0.seq.0))
            .collect();
        assert_eq!(all.len(), 25);
        all.sort();
        let keys = |rows: &PageRows| -> Vec<(i64, i64)> {
            rows.messages.iter().map(|m| (m.0.ts, m.0.seq.0)).collect()
        };

        let newest = store
            .page(GENERAL, "general", PageQuery::Newest, 10)
            .unwrap();
        assert_eq!(keys(&newest), all[15..]);
        assert!(newest.has_older && !newest.has_newer);

        let c = Cursor {
            ts: all[15].0,
            seq: all[15].1,
        };
        let before = store
            .page(GENERAL, "general", PageQuery::Before(c), 10)
            .unwrap();
        assert_eq!(keys(&before), all[5..15]);
        assert!(before.has_older && before.has_newer);

        let c = Cursor {
            ts: all[5].0,
            seq: all[5].1,
        };
        let oldest = store
            .page(GENERAL, "general", PageQuery::Before(c), 10)
            .unwrap();
        assert_eq!(keys(&oldest), all[..5]);
        assert!(!oldest.has_older && oldest.has_newer);

        let c = Cursor {
            ts: all[4].0,
            seq: all[4].1,
        };
        let after = store
            .page(GENERAL, "general", PageQuery::After(c), 10)
            .unwrap();
        assert_eq!(keys(&after), all[5..15]);
        assert!(after.has_older && after.has_newer);

        let since = store
            .page(GENERAL, "general", PageQuery::SinceSeq(20), 10)
            .unwrap();
        let seqs: Vec<i64> = since.messages.iter().map(|m| m.0.seq.0).collect();
        let first = since.messages[0].0.seq.0;
        assert_eq!(seqs, (first..first + 5).collect::<Vec<_>>());
        assert!(since.has_older && !since.has_newer);
    }

    #[test]
    fn a_version_1_database_is_rekeyed_and_the_older_of_two_look_alikes_keeps_the_name() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute_batch(
                "INSERT INTO rooms (name, name_key, created_at) VALUES ('general', 'general', 1);
                 INSERT INTO users (name, name_key, created_at, last_seen) VALUES
                     ('Alice', 'alice', 1, 1), ('\u{430}lice', '\u{430}lice', 2, 2),
                     ('ｂｏｂ', 'ｂｏｂ', 3, 3);
                 INSERT INTO rooms (name, name_key, created_at) VALUES ('Design', 'design', 4);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        // The older keeps the name: signing in as any look-alike is Alice.
        let alice = store.login_user("ALICE", 5).unwrap();
        assert_eq!(alice.name, "Alice");
        assert_eq!(store.login_user("\u{430}lice", 5).unwrap(), alice);
        assert_eq!(store.login_user("bob", 5).unwrap().name, "ｂｏｂ");
        // Room names are unique by their new keys too.
        assert!(store.create_room("DESIGN", alice.id, 6).is_err());
        assert!(store.create_room("Ops", alice.id, 6).is_ok());
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn checkpoints_can_be_left_to_another_program() {
        // A commit of over 1,000 pages, then a small one: how many frames
        // the WAL holds after them.
        let wal_frames_after_two_commits = |store: &mut Store| -> i64 {
            let user = store.login_user("ops", 1).unwrap();
            let big: Vec<_> = (0..1200)
                .map(|i| NewMessage {
                    text: "x".repeat(4000),
                    ..message(GENERAL, user.id, &format!("big{i}"), i)
                })
                .collect();
            store.insert_messages(&big).unwrap();
            store
                .insert_messages(&[message(GENERAL, user.id, "small", 2000)])
                .unwrap();
            // (busy, frames in the WAL, frames checkpointed)
            store
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
                .unwrap()
        };
        // By default the first commit is checkpointed right after it, and
        // the second starts the WAL over.
        let (_dir, mut store) = temp_store();
        assert!(wal_frames_after_two_commits(&mut store) < 100);

        let (_dir, mut store) = temp_store();
        store.leave_checkpoints_to_others().unwrap();
        let autocheckpoint: i64 = store
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))
            .unwrap();
        assert_eq!(autocheckpoint, 0);
        assert!(wal_frames_after_two_commits(&mut store) > 1000);
    }

    #[test]
    fn unread_counts_leave_out_your_own_and_stop_at_the_cap() {
        let (_dir, mut store) = temp_store();
        let alice = store.login_user("alice", 1).unwrap();
        let bob = store.login_user("bob", 1).unwrap();
        // alice came when general was empty: her mark is 0.
        assert_eq!(store.read_marks(alice.id).unwrap(), [(GENERAL, Seq(0))]);
        let n = 2 * MAX_UNREAD as usize + 20;
        let batch: Vec<NewMessage> = (0..n)
            .map(|i| {
                let from = if i % 2 == 0 { bob.id } else { alice.id };
                let mut m = message(GENERAL, from, &format!("m{i}"), i as i64);
                if i < 3 {
                    m.mentions = vec![(alice.id, "alice".into()), (bob.id, "bob".into())];
                }
                m
            })
            .collect();
        let seqs = store.insert_messages(&batch).unwrap();
        // Half are bob's: alice has n / 2 unread, past the cap.
        assert_eq!(
            store.unread(alice.id, GENERAL, Seq(0)).unwrap(),
            (MAX_UNREAD, 2)
        );
        // Messages 0 and 2 are bob's and mention alice; message 1 is hers
        // and her own mention of herself does not count for her.
        assert_eq!(store.unread(bob.id, GENERAL, Seq(0)).unwrap().1, 1);
        let near_end = seqs[n - 7].seq();
        assert_eq!(store.unread(alice.id, GENERAL, near_end).unwrap(), (3, 0));
        // A later user starts with everything read.
        let carol = store.login_user("carol", 2).unwrap();
        assert_eq!(
            store.read_marks(carol.id).unwrap(),
            [(GENERAL, seqs[n - 1].seq())]
        );
        // Marks only move forward.
        let mark = |seq| ReadMark {
            user: alice.id,
            room: GENERAL,
            seq,
        };
        store.save_read_marks(&[mark(Seq(50))]).unwrap();
        store.save_read_marks(&[mark(Seq(10))]).unwrap();
        assert_eq!(store.read_marks(alice.id).unwrap(), [(GENERAL, Seq(50))]);
    }

    #[test]
    fn unread_counts_leave_out_deleted_messages_and_read_only_an_index() {
        let (_dir, mut store) = temp_store();
        let alice = store.login_user("alice", 1).unwrap();
        let bob = store.login_user("bob", 1).unwrap();
        let mut batch: Vec<NewMessage> = (0..4)
            .map(|i| message(GENERAL, bob.id, &format!("b{i}"), i))
            .collect();
        batch[1].mentions = vec![(alice.id, "alice".into())];
        batch.push(message(GENERAL, alice.id, "a0", 9));
        let seqs: Vec<Seq> = store
            .insert_messages(&batch)
            .unwrap()
            .iter()
            .map(|s| s.seq())
            .collect();
        assert_eq!(store.unread(alice.id, GENERAL, Seq(0)).unwrap(), (4, 1));
        // The mentioning one goes, and its mention with it.
        assert_eq!(
            store.delete_message(seqs[1], 20).unwrap(),
            Some(vec![alice.id])
        );
        assert_eq!(store.unread(alice.id, GENERAL, Seq(0)).unwrap(), (3, 0));
        assert_eq!(store.delete_message(seqs[2], 20).unwrap(), Some(Vec::new()));
        assert_eq!(store.unread(alice.id, GENERAL, Seq(0)).unwrap(), (2, 0));
        // Her own deleted message was never unread for her, nor is it for
        // bob now.
        assert_eq!(store.unread(bob.id, GENERAL, Seq(0)).unwrap(), (1, 0));
        store.delete_message(seqs[4], 20).unwrap();
        assert_eq!(store.unread(bob.id, GENERAL, Seq(0)).unwrap(), (0, 0));
        // Still counted from the index alone, without reading a row.
        let plan: Vec<String> = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {UNREAD_MESSAGES}"))
            .unwrap()
            .query_map(params![GENERAL, 0, alice.id, 10], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.contains("COVERING INDEX messages_room_seq_user_deleted")),
            "{plan:?}"
        );
    }

    #[test]
    fn restart_keeps_everything() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("r.db");
        {
            let mut store = Store::open(&path).unwrap();
            let user = store.login_user("eve", 1).unwrap();
            let room = store.create_room("Ops", user.id, 2).unwrap();
            store
                .insert_messages(&[message(room, user.id, "a", 3)])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let rooms = store.live_rooms().unwrap();
        assert_eq!(rooms.len(), 2);
        let ops = rooms.iter().find(|r| r.name == "Ops").unwrap();
        assert_eq!(ops.message_count, 1);
        let page = store.page(ops.id, "Ops", PageQuery::Newest, 50).unwrap();
        assert_eq!(page.messages[0].0.from, "eve");
        assert_eq!(page.messages[0].0.text, "text a");
    }
}
