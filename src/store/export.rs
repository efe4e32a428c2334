//! Reading history out for `parlor export`: the live rooms and their
//! messages as of one moment, read on a read-only connection inside one read
//! transaction while a server may keep writing to the file, and handed over
//! one row at a time so that no room is ever held in memory.

use std::path::Path;

use rusqlite::{Connection, params};

use super::{RoomId, database_error, open_read_only};
use crate::error::Error;
use crate::protocol::{ChatMessage, NameKey};

/// The oldest schema version with every column an export reads (version 4
/// added `edited_at` and `deleted_at`; version 5 changed only how the search
/// index is kept), so that a file last opened by the Parlor before this one
/// can be exported without starting a server on it first.
const EXPORTABLE_SINCE: i64 = 4;

/// One read transaction on a Parlor database opened read-only: everything
/// read through it is as of the moment it was opened, whatever is written
/// meanwhile. (In WAL mode the snapshot also holds back checkpoints past
/// that moment until it is dropped, so the WAL may grow during a long
/// export.)
pub struct Snapshot {
    conn: Connection,
    db: std::path::PathBuf,
}

/// A live room, as of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRoom {
    /// Row id.
    pub id: RoomId,
    /// Display name, as created.
    pub name: String,
    /// The name's identity: rooms are named ignoring case.
    pub key: NameKey,
}

impl Snapshot {
    /// Opens `db` read-only and begins the read transaction. Refuses a file
    /// that is missing or not a Parlor database.
    pub fn open(db: &Path) -> Result<Snapshot, Error> {
        let conn = open_read_only(db)?;
        // Older files lack the columns read here, and a read-only
        // connection cannot migrate them.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| database_error(db, format!("cannot read it: {e}"), Some(e.into())))?;
        if version < EXPORTABLE_SINCE {
            let message = format!(
                "its schema version {version} is older than this Parlor exports \
                 ({EXPORTABLE_SINCE}); start this Parlor on it once to bring it up to date"
            );
            return Err(database_error(db, message, None));
        }
        let snapshot = Snapshot {
            conn,
            db: db.to_path_buf(),
        };
        // A deferred transaction takes its snapshot at its first read, so
        // read once now: the export is of this moment.
        snapshot
            .conn
            .execute_batch("BEGIN")
            .and_then(|()| {
                snapshot
                    .conn
                    .query_row("SELECT count(*) FROM rooms", [], |_| Ok(()))
            })
            .map_err(|e| snapshot.failed("cannot begin reading", e))?;
        Ok(snapshot)
    }

    fn failed(&self, what: &str, e: rusqlite::Error) -> Error {
        database_error(&self.db, format!("{what}: {e}"), Some(e.into()))
    }

    /// The live rooms, sorted by name ignoring case (as the room list shows
    /// them).
    pub fn live_rooms(&self) -> Result<Vec<SnapshotRoom>, Error> {
        let read = || -> rusqlite::Result<Vec<SnapshotRoom>> {
            let mut stmt = self.conn.prepare(
                "SELECT id, name FROM rooms WHERE deleted_at IS NULL ORDER BY name_key, id",
            )?;
            let rooms = stmt.query_map([], |row| {
                let name: String = row.get(1)?;
                Ok(SnapshotRoom {
                    id: row.get(0)?,
                    key: NameKey::of(&name),
                    name,
                })
            })?;
            rooms.collect()
        };
        read().map_err(|e| self.failed("cannot read its rooms", e))
    }

    /// Hands `each` every message of `room` whose timestamp is `since` (ms
    /// since the epoch) or later, in the order history pages show them
    /// (timestamp, then seq), one at a time; stops at the first error it
    /// returns. Returns how many messages it was handed.
    pub fn messages(
        &self,
        room: &SnapshotRoom,
        since: Option<i64>,
        mut each: impl FnMut(ChatMessage) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let fail = |e| self.failed(&format!("cannot read the messages of {}", room.name), e);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT m.seq, m.client_id, u.name, m.text, m.ts, m.edited_at, m.mentions
                 FROM messages m JOIN users u ON u.id = m.user_id
                 WHERE m.room_id = ?1 AND m.ts >= ?2 AND m.deleted_at IS NULL
                 ORDER BY m.ts, m.seq",
            )
            .map_err(fail)?;
        let mut rows = stmt
            .query(params![room.id, since.unwrap_or(i64::MIN)])
            .map_err(fail)?;
        let mut count = 0;
        while let Some(row) = rows.next().map_err(fail)? {
            let message = (|| -> rusqlite::Result<ChatMessage> {
                Ok(ChatMessage {
                    room: room.name.clone(),
                    seq: row.get(0)?,
                    id: row.get(1)?,
                    from: row.get(2)?,
                    text: row.get(3)?,
                    ts: row.get(4)?,
                    edited_at: row.get(5)?,
                    deleted: false,
                    mentions: super::mention_names(row.get(6)?),
                })
            })()
            .map_err(fail)?;
            each(message)?;
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_store;
    use crate::store::{NewMessage, UserId};

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

    fn ids(snapshot: &Snapshot, room: &SnapshotRoom, since: Option<i64>) -> Vec<String> {
        let mut ids = Vec::new();
        snapshot
            .messages(room, since, |m| {
                ids.push(m.id);
                Ok(())
            })
            .unwrap();
        ids
    }

    #[test]
    fn a_snapshot_sees_the_file_as_it_was_when_opened() {
        let (dir, mut store) = temp_store();
        let user = store.login_user("alice", 1).unwrap();
        let ops = store.create_room("Ops", user.id, 2).unwrap();
        let gone = store.create_room("Gone", user.id, 2).unwrap();
        store.delete_room(gone, 3).unwrap();
        // Out of seq order in time: the export follows (ts, seq).
        let batch = [
            message(ops, user.id, "b", 20),
            message(ops, user.id, "a", 10),
            message(ops, user.id, "c", 20),
        ];
        store.insert_messages(&batch).unwrap();

        let snapshot = Snapshot::open(&dir.path().join("t.db")).unwrap();
        store
            .insert_messages(&[message(ops, user.id, "later", 30)])
            .unwrap();
        store.create_room("Later", user.id, 4).unwrap();

        let rooms = snapshot.live_rooms().unwrap();
        let names: Vec<&str> = rooms.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["general", "Ops"]);
        assert_eq!(rooms[1].key, NameKey::of("OPS"));
        assert_eq!(ids(&snapshot, &rooms[1], None), ["a", "b", "c"]);
        assert_eq!(ids(&snapshot, &rooms[1], Some(20)), ["b", "c"]);
        assert!(ids(&snapshot, &rooms[0], None).is_empty());
        drop(snapshot);

        let fresh = Snapshot::open(&dir.path().join("t.db")).unwrap();
        let rooms = fresh.live_rooms().unwrap();
        assert_eq!(rooms.len(), 3);
        let ops = rooms.iter().find(|r| r.name == "Ops").unwrap();
        assert_eq!(ids(&fresh, ops, None), ["a", "b", "c", "later"]);
    }

    #[test]
    fn the_first_error_from_the_writer_stops_the_reading() {
        let (dir, mut store) = temp_store();
        let user = store.login_user("bob", 1).unwrap();
        let general = RoomId(1);
        let batch: Vec<_> = (0..5)
            .map(|i| message(general, user.id, &format!("m{i}"), i))
            .collect();
        store.insert_messages(&batch).unwrap();
        let snapshot = Snapshot::open(&dir.path().join("t.db")).unwrap();
        let room = &snapshot.live_rooms().unwrap()[0];
        let mut seen = 0;
        let result = snapshot.messages(room, None, |_| {
            seen += 1;
            if seen == 2 {
                return Err(Error::Io(std::io::Error::other("disk full")));
            }
            Ok(())
        });
        assert_eq!(result.unwrap_err().to_string(), "disk full");
        assert_eq!(seen, 2);
    }

    #[test]
    fn a_database_of_the_previous_schema_is_exported_as_it_is() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("v4.db");
        crate::store::tests::version_4_database(
            &path,
            "INSERT INTO messages (room_id, user_id, client_id, text, ts, received_at)
                 VALUES (1, 1, 'a', 'from version four', 5, 5);",
        );
        let snapshot = Snapshot::open(&path).unwrap();
        let room = &snapshot.live_rooms().unwrap()[0];
        assert_eq!(ids(&snapshot, room, None), ["a"]);
        drop(snapshot);
        // Opened read-only: still version 4.
        let version: i64 = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, 4);

        // Version 3 lacks the columns: refused.
        let path = dir.path().join("v3.db");
        crate::store::tests::version_4_database(&path, "PRAGMA user_version = 3;");
        let error = Snapshot::open(&path).err().unwrap();
        assert!(
            error.to_string().contains("start this Parlor on it once"),
            "{error}"
        );
    }

    #[test]
    fn files_that_are_not_parlor_databases_are_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let missing = Snapshot::open(&dir.path().join("none.db")).err().unwrap();
        assert!(
            missing.to_string().contains("no database file"),
            "{missing}"
        );
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x);")
            .unwrap();
        let error = Snapshot::open(&other).err().unwrap();
        assert!(
            error.to_string().contains("not a Parlor database"),
            "{error}"
        );
    }
}
