//! The page builder: reads `history` pages from the database and sends
//! them, on a thread of its own, so that the hub never keeps everyone's
//! messages waiting while it reads and encodes a page (the largest are
//! 8 MB).
//!
//! The hub checks each `history` request and the room, commits what is
//! pending, and hands the page over as a [`PageJob`] in its mail; the post
//! passes the job on here once the frames said to the connection before it
//! are in its outbox. The builder reads the page through a read-only
//! connection of its own ([`Store::reader`]: WAL lets it read one snapshot
//! while the hub writes), tells the hub how large it is so the asker's
//! budget pays for it ([`Event::PageSent`]), and sends it as the post sends
//! frames.
//!
//! A page is never built for a connection that has a large reply still
//! unread (more than [`BACKLOG_BYTES`] waiting in its outbox): the job waits
//! here, holding one of the connection's slots for requests in flight, until
//! the client has read enough. A client that asks for pages and reads none
//! makes the server build one, and soon finds its own requests held back;
//! one that reads slowly gets its pages as fast as it reads them, in the
//! order it asked.

use std::collections::VecDeque;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error::Error;
use crate::frame::Frame;
use crate::metrics::Metrics;
use crate::post::{self, Routes};
use crate::protocol::ServerFrame;
use crate::store::Store;
use crate::vocab::{ConnId, Event, PageJob};

/// A connection with more than this waiting in its outbox gets no new page
/// until it has read down to it. Larger than any page of ordinary chat
/// (500 messages of 200 characters are about 150 KB), so only clients
/// reading pages of the largest messages, or not reading, wait.
pub const BACKLOG_BYTES: usize = 512 * 1024;

/// How often waiting jobs' outboxes are looked at again.
const RECHECK: Duration = Duration::from_millis(20);

/// The running page builder.
pub struct Pages {
    thread: JoinHandle<()>,
}

impl Pages {
    /// Opens a reader of the database at `db` (which the hub's store has
    /// opened and migrated) and starts the `pages` thread. Returns the
    /// sender the post hands jobs to; the thread ends once every sender is
    /// gone, dropping jobs still waiting.
    pub fn start(
        db: &Path,
        routes: Routes,
        hub_tx: Sender<Event>,
        metrics: Metrics,
    ) -> Result<(Pages, Sender<PageJob>), Error> {
        let store = Store::reader(db)?;
        // Unbounded: each job holds a slot of its connection's, which bounds
        // how many there are, and the post must never wait for the builder.
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("pages".into())
            .spawn(move || run(&store, &jobs_rx, &routes, &hub_tx, &metrics))?;
        Ok((Pages { thread }, jobs_tx))
    }

    /// Waits for the thread to end (after the post, the jobs' only sender,
    /// has stopped).
    pub fn stop(self) {
        if self.thread.join().is_err() {
            log::error!("the pages thread panicked");
        }
    }
}

fn run(
    store: &Store,
    jobs: &Receiver<PageJob>,
    routes: &Routes,
    hub_tx: &Sender<Event>,
    metrics: &Metrics,
) {
    let mut waiting: VecDeque<PageJob> = VecDeque::new();
    loop {
        // Sleep until a job comes, or, while jobs wait for their clients to
        // read, until it is time to look at their outboxes again.
        let next = if waiting.is_empty() {
            jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            jobs.recv_timeout(RECHECK)
        };
        match next {
            Ok(job) => waiting.push_back(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        waiting.extend(jobs.try_iter());
        // In order; a connection's later jobs wait behind its first.
        let mut held: Vec<ConnId> = Vec::new();
        waiting.retain(|job| {
            if held.contains(&job.conn) {
                return true;
            }
            let Some(outbox) = routes.outbox(job.conn).filter(|o| !o.is_closed()) else {
                // Gone, or going (a closed outbox takes nothing, and its
                // queue may have been dropped): the job and its slot are
                // dropped, and no page is built for nobody.
                return false;
            };
            if outbox.queued_bytes() > BACKLOG_BYTES {
                held.push(job.conn);
                return true;
            }
            let frame = build(store, job, metrics);
            // Before the page, so the hub charges for it before the client,
            // having read it, can ask for more.
            let _ = hub_tx.send(Event::PageSent {
                conn: job.conn,
                bytes: frame.bytes().len(),
            });
            if post::send_one(routes, job.conn, frame, metrics) {
                // The hub is gone only at shutdown.
                let _ = hub_tx.send(Event::TooSlow { conn: job.conn });
            }
            false
        });
    }
}

/// The reply to a page job: the page, or `storage_error` (logged).
pub fn build(store: &Store, job: &PageJob, metrics: &Metrics) -> Frame {
    let reply = match store.page_and_total(job.room_id, &job.room, job.query, job.limit) {
        Ok((rows, total)) => ServerFrame::History(rows.into_page(job.room.clone(), total)),
        Err(e) => {
            log::error!("storage: loading history failed for {}: {e}", job.conn);
            metrics.storage_error();
            ServerFrame::storage_error()
        }
    };
    Frame::text(&reply.encode(job.req.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::SignedIn;
    use crate::outbox::{Outbox, POOL_BYTES, Pool};
    use crate::post::Route;
    use crate::protocol::PageQuery;
    use crate::store::RoomId;
    use crate::store::tests::temp_store;
    use crate::vocab::Slots;
    use std::time::Instant;

    fn route(routes: &Routes, n: u64) -> Outbox {
        // No socket: everything pushed waits in the queue until taken.
        let (outbox, _woken) = Outbox::new(None, &Pool::new(POOL_BYTES));
        let (close_tx, _close_rx) = crossbeam_channel::unbounded();
        routes.add(
            ConnId(n),
            Route {
                outbox: outbox.clone(),
                close_tx,
                signed_in: SignedIn::detached(),
            },
        );
        outbox
    }

    /// A page builder on the database in `dir`; the hub's end of its events.
    fn start(dir: &tempfile::TempDir, routes: Routes) -> (Pages, Sender<PageJob>, Receiver<Event>) {
        let (hub_tx, hub_rx) = crossbeam_channel::unbounded();
        let (pages, jobs_tx) =
            Pages::start(&dir.path().join("t.db"), routes, hub_tx, Metrics::default()).unwrap();
        (pages, jobs_tx, hub_rx)
    }

    fn job(slots: &Slots, conn: u64, req: &str) -> PageJob {
        PageJob {
            conn: ConnId(conn),
            req: Some(req.into()),
            room_id: RoomId(1),
            room: "general".into(),
            query: PageQuery::Newest,
            limit: 50,
            slot: slots.take(),
        }
    }

    /// Takes what the outbox holds, waiting up to 10 s for `n` frames.
    fn take(outbox: &Outbox, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while outbox.queued() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut texts = Vec::new();
        while let Some((frame, _)) = outbox.next(false) {
            outbox.written();
            texts.push(frame.payload().to_string());
        }
        texts
    }

    fn req_of(text: &str) -> String {
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(value["type"], "history", "{text}");
        value["req"].as_str().unwrap().to_string()
    }

    #[test]
    fn a_page_waits_while_its_connection_has_a_large_reply_unread() {
        let (dir, _store) = temp_store();
        let routes = Routes::default();
        let slow = route(&routes, 1);
        let other = route(&routes, 2);
        // Conn 1 has a large reply it has not read.
        let large = Frame::text(&"x".repeat(BACKLOG_BYTES + 1));
        slow.push(&[large]).unwrap();
        let (pages, jobs_tx, hub_rx) = start(&dir, routes.clone());
        let slots = Slots::new(8);
        jobs_tx.send(job(&slots, 1, "first")).unwrap();
        jobs_tx.send(job(&slots, 1, "second")).unwrap();
        jobs_tx.send(job(&slots, 2, "other")).unwrap();
        // The other connection is not held up by it.
        let got = take(&other, 1);
        assert_eq!(got.iter().map(|t| req_of(t)).collect::<Vec<_>>(), ["other"]);
        match hub_rx.recv().unwrap() {
            Event::PageSent { conn, bytes } => {
                assert_eq!(conn, ConnId(2));
                assert_eq!(bytes, got[0].len() + 2, "a short frame's header is 2 bytes");
            }
            event => panic!("{event:?}"),
        }
        // Conn 1's pages were not built: its jobs still hold their slots.
        assert_eq!(slow.queued(), 1);
        assert_eq!(slots.taken(), 2);
        // Once it reads, both come, in the order asked.
        let large_read = take(&slow, 1);
        assert_eq!(large_read.len(), 1);
        let got = take(&slow, 2);
        assert_eq!(
            got.iter().map(|t| req_of(t)).collect::<Vec<_>>(),
            ["first", "second"]
        );
        drop(jobs_tx);
        pages.stop();
        assert_eq!(slots.taken(), 0);
    }

    #[test]
    fn no_page_is_built_for_a_connection_whose_outbox_was_closed() {
        let (dir, _store) = temp_store();
        let routes = Routes::default();
        let closing = route(&routes, 4);
        closing.close(true);
        let (pages, jobs_tx, hub_rx) = start(&dir, routes.clone());
        let slots = Slots::new(1);
        jobs_tx.send(job(&slots, 4, "late")).unwrap();
        drop(jobs_tx);
        pages.stop();
        assert_eq!(slots.taken(), 0);
        assert!(hub_rx.try_recv().is_err(), "a page was built and charged");
    }

    #[test]
    fn a_job_for_a_connection_that_is_gone_is_dropped() {
        let (dir, _store) = temp_store();
        let (pages, jobs_tx, hub_rx) = start(&dir, Routes::default());
        let slots = Slots::new(1);
        jobs_tx.send(job(&slots, 3, "lost")).unwrap();
        drop(jobs_tx);
        pages.stop();
        assert_eq!(slots.taken(), 0);
        assert!(hub_rx.try_recv().is_err(), "nothing was charged");
    }
}
