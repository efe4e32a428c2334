//! Search: the newest messages of live rooms that contain every word of a
//! query, a page at a time.
//!
//! What a search costs the hub depends on its words more than on its size:
//! a last word that is a prefix of many words ("m") makes SQLite gather
//! every message with any of them before it can take the newest, tens of
//! milliseconds in a million messages. So besides its price by size (see
//! `limits::cost`), a search is charged after the fact for the time it
//! took, which bounds the hub time one user can take by their budget.

use std::time::{Duration, Instant};

use crate::protocol::{Checked, ErrorCode, RoomRef, SearchQuery, Seq, ServerFrame};
use crate::store::Store;

use super::limits::Limits;
use super::outgoing::{Outgoing, To};
use super::rooms::Rooms;
use super::sessions::Online;

/// Hub time a search takes that costs one more request unit: with the
/// default 20 units a second, one user's searches take at most 2 % of the
/// hub's time once their burst is spent.
pub(super) const SEARCH_TIME_PER_UNIT: Duration = Duration::from_millis(1);

/// Answers `search`: in one live room if it names one, else in all.
#[allow(clippy::too_many_arguments)]
pub(super) fn search(
    store: &Store,
    rooms: &Rooms,
    limits: &mut Limits,
    out: &mut Outgoing,
    to: &To,
    user: &Online,
    query: Checked<SearchQuery>,
    room: Option<RoomRef>,
    limit: Checked<u32>,
    before: Option<Seq>,
) {
    let (query, limit) = match (query, limit) {
        (Ok(query), Ok(limit)) => (query, limit),
        (Err(message), _) | (_, Err(message)) => {
            return out.error(to, ErrorCode::BadRequest, message);
        }
    };
    let room = match &room {
        None => None,
        Some(named) => match rooms.get(&named.key) {
            Some(live) => Some(live),
            None => return out.no_such_room(to, &named.typed),
        },
    };
    let started = Instant::now();
    let found = store.search(&query.words, room.map(|r| r.id), before, limit);
    let took = started.elapsed();
    let units = took.as_nanos() / SEARCH_TIME_PER_UNIT.as_nanos();
    limits.owe(
        &user.key,
        u32::try_from(units).unwrap_or(u32::MAX),
        Instant::now(),
    );
    match found {
        Ok(rows) => out.reply(
            to,
            &ServerFrame::SearchResults {
                query: query.sent,
                room: room.map(|r| r.name.clone()),
                messages: rows.messages,
                has_more: rows.has_more,
            },
        ),
        Err(e) => out.storage_failed(to, "searching", &e),
    }
}
