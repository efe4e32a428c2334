//! The post: carries out what the hub asked of its connections in a batch
//! (frames to send, connections to close or forget), in the order it asked,
//! on a thread of its own.
//!
//! Sending is most of the work of a busy hub, and it needs no chat state:
//! each frame is already encoded, and [`Routes`] says which outbox each
//! connection's mail goes to. Handing a batch's mail to this thread lets
//! the hub go on to its next batch, and wait for that batch's commit to
//! reach the disk, while this one is still being sent. Frames for the same
//! connection in one batch leave in one send call.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::admission::SignedIn;
use crate::frame::Frame;
use crate::metrics::Metrics;
use crate::outbox::{Full, Outbox};
use crate::vocab::{ConnId, Event, Mail, MailSink, PageJob};

/// What the post asks of a connection's writer thread besides its outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// The WebSocket close code.
    pub code: u16,
    /// The close frame's reason, for people.
    pub reason: String,
}

/// How mail reaches one connection.
pub struct Route {
    /// The connection's outbox; the writer thread holds the other handle.
    pub outbox: Outbox,
    /// To the connection's writer thread: close with this code after the
    /// queue. Dropping it (the route is forgotten) ends the writer with no
    /// close frame.
    pub close_tx: Sender<CloseRequest>,
    /// Marks the socket as signed in, so it is no longer evicted to make
    /// room for newcomers.
    pub signed_in: SignedIn,
}

/// Every open connection's route, by [`ConnId`]. A connection thread adds
/// its route before telling the hub it is connected, so mail the hub sends
/// afterwards always finds it; the post removes it when carrying out the
/// hub's `Close` or `Forget`, in mail order. The lock is held for one map
/// operation at a time.
#[derive(Clone, Default)]
pub struct Routes(Arc<Mutex<HashMap<ConnId, Route>>>);

impl Routes {
    fn lock(&self) -> MutexGuard<'_, HashMap<ConnId, Route>> {
        self.0
            .lock()
            .expect("BUG: no thread panics while holding the routes")
    }

    /// Connection thread: mail for `conn` goes to `route` from now on.
    pub fn add(&self, conn: ConnId, route: Route) {
        self.lock().insert(conn, route);
    }

    /// Forgets a connection's route, returning it.
    pub fn remove(&self, conn: ConnId) -> Option<Route> {
        self.lock().remove(&conn)
    }

    /// The connection's user has been welcomed: its socket is no longer
    /// evicted to make room.
    fn signed_in(&self, conn: ConnId) {
        if let Some(route) = self.lock().get(&conn) {
            route.signed_in.signed_in();
        }
    }

    /// The connection's outbox, while it has a route.
    pub fn outbox(&self, conn: ConnId) -> Option<Outbox> {
        self.lock().get(&conn).map(|route| route.outbox.clone())
    }
}

/// Per connection, the frames of a batch not yet pushed, in order; None: it
/// has no route (it is gone), so its frames are dropped without asking again.
/// Built anew for every batch, keyed by the server's own connection numbers:
/// foldhash, not SipHash (no client picks these keys).
type Pending = HashMap<ConnId, Option<(Outbox, Vec<Frame>)>, foldhash::fast::RandomState>;

/// Carries out a batch of mail. Returns the connections found too far
/// behind: their outboxes are closed and emptied, and the hub should end
/// them.
fn deliver(
    routes: &Routes,
    mail: Vec<Mail>,
    pages: &Sender<PageJob>,
    metrics: &Metrics,
) -> Vec<ConnId> {
    let mut too_slow = Vec::new();
    let mut pending = Pending::default();
    for item in mail {
        match item {
            Mail::Frame(conn, frame) => match pending.entry(conn) {
                Entry::Occupied(entry) => {
                    if let Some((_, frames)) = entry.into_mut() {
                        frames.push(frame);
                    }
                }
                Entry::Vacant(entry) => {
                    entry.insert(routes.outbox(conn).map(|outbox| (outbox, vec![frame])));
                }
            },
            Mail::Close { conn, code, reason } => {
                let close = CloseRequest { code, reason };
                end(
                    routes,
                    &mut pending,
                    &mut too_slow,
                    conn,
                    Some(close),
                    metrics,
                );
            }
            Mail::Forget(conn) => end(routes, &mut pending, &mut too_slow, conn, None, metrics),
            Mail::SignedIn(conn) => routes.signed_in(conn),
            Mail::Page(job) => {
                // What was said to the connection before goes first.
                if let Some(Some((outbox, frames))) = pending.remove(&job.conn) {
                    push(job.conn, &outbox, &frames, &mut too_slow, metrics);
                }
                // An error means the page builder has stopped (at shutdown):
                // the job, and its slot, are dropped.
                let _ = pages.send(job);
            }
        }
    }
    for (conn, (outbox, frames)) in pending.into_iter().filter_map(|(c, p)| Some((c, p?))) {
        push(conn, &outbox, &frames, &mut too_slow, metrics);
    }
    too_slow
}

/// Sends one frame made off the hub thread (a history page) to `conn`, if
/// it is still there. Returns whether its outbox was found full: it is then
/// closed and emptied, and the hub must be told, as after [`deliver`].
pub fn send_one(routes: &Routes, conn: ConnId, frame: Frame, metrics: &Metrics) -> bool {
    let mut too_slow = Vec::new();
    if let Some(outbox) = routes.outbox(conn) {
        push(conn, &outbox, &[frame], &mut too_slow, metrics);
    }
    !too_slow.is_empty()
}

/// Pushes a batch's frames for one connection; a full outbox is closed and
/// emptied, and the connection reported.
fn push(
    conn: ConnId,
    outbox: &Outbox,
    frames: &[Frame],
    too_slow: &mut Vec<ConnId>,
    metrics: &Metrics,
) {
    match outbox.push(frames) {
        Ok(pushed) => metrics.frames_sent(pushed.sent, pushed.queued),
        Err(Full) => {
            outbox.close(true);
            too_slow.push(conn);
        }
    }
}

/// Ends a connection's route: what was said to it before still goes first
/// (the client may be reading until the writer closes), then the writer is
/// asked to close, or, without a close request, ends with no close frame
/// (dropping the route drops its close sender).
fn end(
    routes: &Routes,
    pending: &mut Pending,
    too_slow: &mut Vec<ConnId>,
    conn: ConnId,
    close: Option<CloseRequest>,
    metrics: &Metrics,
) {
    if let Some(Some((outbox, frames))) = pending.remove(&conn) {
        push(conn, &outbox, &frames, too_slow, metrics);
    }
    if let Some(route) = routes.remove(conn)
        && let Some(close) = close
    {
        route.outbox.close(false);
        // An error means the writer is already gone.
        let _ = route.close_tx.send(close);
    }
}

/// The running `post` thread, the hub's [`MailSink`].
pub struct Post {
    /// From the hub (sole sender) to the post thread, one batch at a time;
    /// dropping it (in [`Post::stop`]) lets the thread deliver what it has
    /// and end.
    mail_tx: Sender<Vec<Mail>>,
    thread: JoinHandle<()>,
}

impl Post {
    /// Starts the `post` thread. It tells the hub of connections too far
    /// behind with [`Event::TooSlow`], and `metrics` of the frames it sends,
    /// and hands history pages to the page builder through `pages` (an
    /// unbounded channel: each job holds a slot of its connection's, which
    /// bounds how many wait, and the post never waits for the builder).
    pub fn start(
        routes: Routes,
        hub_tx: Sender<Event>,
        pages: Sender<PageJob>,
        metrics: Metrics,
    ) -> std::io::Result<Post> {
        // The hub may be a few batches ahead; beyond that it waits, so a
        // post that cannot keep up slows the hub instead of piling up mail.
        let (mail_tx, mail_rx) = crossbeam_channel::bounded(MAIL_BATCHES);
        let thread = std::thread::Builder::new()
            .name("post".into())
            .spawn(move || run(&routes, &mail_rx, &hub_tx, &pages, &metrics))?;
        Ok(Post { mail_tx, thread })
    }

    /// Delivers what was handed over and stops.
    pub fn stop(self) {
        drop(self.mail_tx);
        if self.thread.join().is_err() {
            log::error!("the post thread panicked");
        }
    }
}

impl MailSink for Post {
    fn post(&mut self, mail: Vec<Mail>) {
        self.mail_tx
            .send(mail)
            .expect("BUG: the post thread lives as long as the hub");
    }
}

/// Batches the hub may hand over before it waits for the post.
const MAIL_BATCHES: usize = 4;

fn run(
    routes: &Routes,
    mail_rx: &Receiver<Vec<Mail>>,
    hub_tx: &Sender<Event>,
    pages: &Sender<PageJob>,
    metrics: &Metrics,
) {
    for mut mail in mail_rx {
        // Batches that waited while the post was busy go out together: a
        // connection then gets their frames in one send, which is most of
        // a delivery's cost. This never delays a batch: only what is
        // already waiting is joined.
        while let Ok(more) = mail_rx.try_recv() {
            mail.extend(more);
        }
        for conn in deliver(routes, mail, pages, metrics) {
            // The hub is gone only at shutdown, when no one needs to know.
            let _ = hub_tx.send(Event::TooSlow { conn });
        }
    }
    // The hub has stopped. Connections it never heard of (their `Connected`
    // came after its last batch) still have routes: dropping them ends their
    // writers, which shut the sockets down.
    routes.lock().clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{OUTBOX_FRAMES, POOL_BYTES, Pool};

    fn route(routes: &Routes, n: u64) -> (Outbox, Receiver<CloseRequest>) {
        let (outbox, _woken) = Outbox::new(None, &Pool::new(POOL_BYTES));
        let (close_tx, close_rx) = crossbeam_channel::unbounded();
        routes.add(
            ConnId(n),
            Route {
                outbox: outbox.clone(),
                close_tx,
                signed_in: SignedIn::detached(),
            },
        );
        (outbox, close_rx)
    }

    /// A page builder that is not there.
    fn no_pages() -> Sender<PageJob> {
        crossbeam_channel::unbounded().0
    }

    fn drain(outbox: &Outbox) -> Vec<String> {
        let mut texts = Vec::new();
        while let Some((frame, _)) = outbox.next(false) {
            outbox.written();
            texts.push(frame.payload().to_string());
        }
        texts
    }

    #[test]
    fn mail_is_carried_out_in_order_and_closes_forget_the_route() {
        let routes = Routes::default();
        let (a, a_close) = route(&routes, 1);
        let (b, _b_close) = route(&routes, 2);
        let mail = vec![
            Mail::Frame(ConnId(1), Frame::text("one")),
            Mail::Frame(ConnId(2), Frame::text("for b")),
            Mail::Frame(ConnId(1), Frame::text("two")),
            Mail::Close {
                conn: ConnId(1),
                code: 1008,
                reason: "bye".into(),
            },
            Mail::Frame(ConnId(1), Frame::text("after the close")),
            Mail::Frame(ConnId(9), Frame::text("nobody")),
        ];
        assert!(deliver(&routes, mail, &no_pages(), &Metrics::default()).is_empty());
        assert_eq!(drain(&a), ["one", "two"]);
        assert_eq!(drain(&b), ["for b"]);
        assert_eq!(
            a_close.try_recv(),
            Ok(CloseRequest {
                code: 1008,
                reason: "bye".into()
            })
        );
        assert!(routes.outbox(ConnId(1)).is_none());
        deliver(
            &routes,
            vec![Mail::Forget(ConnId(2))],
            &no_pages(),
            &Metrics::default(),
        );
        assert!(routes.outbox(ConnId(2)).is_none());
    }

    #[test]
    fn a_page_goes_to_the_page_builder_after_what_was_said_before_it() {
        let routes = Routes::default();
        let (outbox, _close) = route(&routes, 7);
        let (pages_tx, pages_rx) = crossbeam_channel::unbounded::<PageJob>();
        let slots = crate::vocab::Slots::new(1);
        let job = PageJob {
            conn: ConnId(7),
            req: Some("p".into()),
            room_id: crate::store::RoomId(1),
            room: "general".into(),
            query: crate::protocol::PageQuery::Newest,
            limit: 50,
            slot: slots.take(),
        };
        let mail = vec![
            Mail::Frame(ConnId(7), Frame::text("before")),
            Mail::Page(job),
            Mail::Frame(ConnId(7), Frame::text("after")),
        ];
        // The builder sees the job only once "before" is in the outbox.
        let seen = std::thread::spawn(move || {
            let job = pages_rx.recv().unwrap();
            (job.req, drain(&outbox))
        });
        assert!(deliver(&routes, mail, &pages_tx, &Metrics::default()).is_empty());
        let (req, at_the_job) = seen.join().unwrap();
        assert_eq!(req.as_deref(), Some("p"));
        assert_eq!(at_the_job[0], "before");
        // The job was dropped by the test's thread: its slot is back.
        assert_eq!(slots.taken(), 0);
    }

    #[test]
    fn frames_said_before_a_forget_still_go_and_its_writer_is_ended() {
        let routes = Routes::default();
        let (outbox, close_rx) = route(&routes, 5);
        let mail = vec![
            Mail::Frame(ConnId(5), Frame::text("reply")),
            Mail::Forget(ConnId(5)),
            Mail::Frame(ConnId(5), Frame::text("too late")),
        ];
        assert!(deliver(&routes, mail, &no_pages(), &Metrics::default()).is_empty());
        assert_eq!(drain(&outbox), ["reply"]);
        assert!(routes.outbox(ConnId(5)).is_none());
        // No close request: the writer sees its channel end.
        assert_eq!(close_rx.recv(), Err(crossbeam_channel::RecvError));
    }

    #[test]
    fn a_stopped_post_drops_the_routes_the_hub_never_heard_of() {
        let routes = Routes::default();
        let (_outbox, close_rx) = route(&routes, 6);
        let (hub_tx, _hub_rx) = crossbeam_channel::unbounded();
        let post = Post::start(routes.clone(), hub_tx, no_pages(), Metrics::default()).unwrap();
        post.stop();
        assert!(routes.outbox(ConnId(6)).is_none());
        assert_eq!(close_rx.recv(), Err(crossbeam_channel::RecvError));
    }

    #[test]
    fn a_connection_that_stops_reading_is_reported_and_its_queue_dropped() {
        let routes = Routes::default();
        let (slow, _close) = route(&routes, 3);
        let (reader, _close) = route(&routes, 4);
        let mut reported = Vec::new();
        for n in 0..=OUTBOX_FRAMES {
            let mail = vec![
                Mail::Frame(ConnId(3), Frame::text(&format!("m{n}"))),
                Mail::Frame(ConnId(4), Frame::text(&format!("m{n}"))),
            ];
            reported.extend(deliver(&routes, mail, &no_pages(), &Metrics::default()));
            drain(&reader);
        }
        assert_eq!(reported, [ConnId(3)]);
        // What it had not read is dropped, not kept.
        assert_eq!(slow.queued(), 0);
    }
}
