//! Search: the newest messages of live rooms that contain every word of a
//! query, a page at a time; and when stored messages are indexed for it
//! ([`Indexing`]).
//!
//! What a search costs the hub depends on its words more than on its size:
//! a last word that is a prefix of many words ("m") makes SQLite gather
//! every message with any of them before it can take the newest, tens of
//! milliseconds in a million messages. So besides its price by size (see
//! `limits::cost`), a search is charged after the fact for the time it
//! took, which bounds the hub time one user can take by their budget.

use std::time::{Duration, Instant};

use crate::metrics::Metrics;
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

/// How long stored messages may wait to be indexed while the index keeps
/// up. Indexing in its own transaction about once a second, instead of in
/// every commit, spares each commit the index's pages (11 WAL pages for a
/// one-message commit with them, 6 without) and the hub most of the index's
/// work; a search indexes what waits first, so it never misses a message.
pub(super) const INDEX_EVERY: Duration = Duration::from_secs(1);

/// Most messages indexed in one step, which bounds how long one step holds
/// the hub up: 2,000 short messages took about 3 ms of CPU, or 17–20 ms in
/// the one step in four where FTS5 also merged segments (see README,
/// Performance). A backlog (a database a program filled without the hub, a
/// load above 2,000 messages a second) is worked off a slice per batch
/// instead of in one long stall.
pub(super) const INDEX_SLICE: u64 = 2_000;

/// When the hub next indexes stored messages for search.
pub(super) struct Indexing {
    /// When the next step is due; None while every stored message is
    /// indexed.
    pub due: Option<Instant>,
    /// Whether indexing failed last time (logged once per incident).
    failing: bool,
}

impl Indexing {
    /// What the store holds and has not indexed (a server stopped or killed
    /// before its next step) is indexed from the start.
    pub fn new(store: &Store, now: Instant) -> Indexing {
        Indexing {
            due: store.search_behind().then_some(now),
            failing: false,
        }
    }

    /// After a batch: messages stored and not yet indexed are indexed
    /// within [`INDEX_EVERY`], in one step with those stored meanwhile.
    pub fn schedule(&mut self, store: &Store, now: Instant) {
        if self.due.is_none() && store.search_behind() {
            self.due = Some(later(now, INDEX_EVERY));
        }
    }

    /// Indexes up to [`INDEX_SLICE`] messages if a step is due. When more
    /// wait, the next step is due at once: the run loop takes the events
    /// waiting meanwhile as a batch before it.
    pub fn step(&mut self, store: &mut Store, metrics: &Metrics, now: Instant) {
        if self.due.is_none_or(|due| due > now) {
            return;
        }
        match store.index_for_search(INDEX_SLICE) {
            Ok(indexed) => {
                self.recovered();
                self.due = indexed.behind.then_some(now);
            }
            Err(e) => {
                self.failed(metrics, &e);
                self.due = Some(later(now, INDEX_EVERY));
            }
        }
    }

    /// Before a search: indexes every message stored so far, so that the
    /// search finds each the moment it is acked. Between steps that is at
    /// most about a second of messages; only right after start-up on a
    /// file with a backlog can it be more (what the slices have not reached
    /// yet), and the search then waits for all of it rather than miss any.
    ///
    /// When the disk refuses the write, the search still runs on what is
    /// indexed (reads keep working while writes fail, as everywhere), and
    /// the steps go on trying.
    pub fn catch_up(&mut self, store: &mut Store, metrics: &Metrics) {
        match store.index_for_search(u64::MAX) {
            Ok(_) => {
                self.recovered();
                self.due = None;
            }
            Err(e) => self.failed(metrics, &e),
        }
    }

    fn failed(&mut self, metrics: &Metrics, e: &rusqlite::Error) {
        if !self.failing {
            log::error!(
                "storage: cannot index messages for search: {e}; searches find what was \
                 indexed before, and indexing is tried again every second"
            );
            metrics.storage_error();
            self.failing = true;
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            log::info!("storage: indexing for search works again");
            self.failing = false;
        }
    }
}

/// `now` plus `wait`, or `now` in the unlikely case that the clock cannot
/// represent it.
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).unwrap_or(now)
}

/// Answers `search`: in one live room if it names one, else in all.
#[allow(clippy::too_many_arguments)]
pub(super) fn search(
    store: &mut Store,
    indexing: &mut Indexing,
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
    // Before the clock starts: indexing is the hub's work, not this user's.
    indexing.catch_up(store, &out.metrics);
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
