//! History: pages of a room's messages, for `history` requests and for the
//! page a `join` carries.
//!
//! A `history` page is not built here: the hub checks the request and the
//! room, and hands the page builder ([`crate::pages`]) a
//! [`PageJob`](crate::vocab::PageJob) through its mail. A page can be
//! megabytes, and reading and encoding it on the hub's thread would stall
//! everyone else's messages meanwhile. A `join`'s page is built here, since
//! it must reach the client before the room's next message does.

use crate::protocol::{Checked, ErrorCode, Page, PageQuery, RoomRef};
use crate::store::Store;
use crate::vocab::{PageJob, Permit};

use super::outgoing::{Outgoing, To};
use super::rooms::{Room, Rooms};

/// Answers a `history` request: a page of a live room, built by the page
/// builder, which holds the connection's slot of `permit` until it is sent.
pub(super) fn history(
    rooms: &Rooms,
    out: &mut Outgoing,
    to: &To,
    room: &RoomRef,
    limit: Checked<u32>,
    query: Checked<PageQuery>,
    permit: Permit,
) {
    let (limit, query) = match (limit, query) {
        (Ok(limit), Ok(query)) => (limit, query),
        (Err(message), _) | (_, Err(message)) => {
            return out.error(to, ErrorCode::BadRequest, message);
        }
    };
    let Some(live) = rooms.get(&room.key) else {
        return out.no_such_room(to, &room.typed);
    };
    out.page(PageJob {
        conn: to.conn,
        req: to.req.map(str::to_string),
        room_id: live.id,
        room: live.name.clone(),
        query,
        limit,
        slot: permit.into_conn_slot(),
    });
}

/// Reads one page of a room's history.
pub(super) fn read_page(
    store: &Store,
    room: &Room,
    query: PageQuery,
    limit: u32,
) -> rusqlite::Result<Page> {
    let rows = store.page(room.id, &room.name, query, limit)?;
    Ok(rows.into_page(room.name.clone(), room.total))
}
