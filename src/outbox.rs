//! A connection's outbox: how the hub's frames reach a client's socket.
//!
//! A frame is encoded and framed once (`frame::Frame`) and shared by all its
//! recipients. When a plain (non-TLS) socket can take the whole frame at
//! once, the post thread (which carries out the hub's mail, see `post`)
//! writes it there itself with a non-blocking send: no other
//! thread wakes up, which is most of the cost of a delivery. Otherwise the
//! frame waits in the outbox's queue and the connection's writer thread,
//! woken once, writes the queue out with blocking writes. From the moment a
//! frame is queued until the queue is empty again, only the writer writes,
//! so frames leave in the order they were pushed and never interleave with
//! the writer's own control frames (pongs, pings, the close).
//!
//! The queue is bounded in frames ([`OUTBOX_FRAMES`]) and in bytes
//! ([`OUTBOX_BYTES`] besides the frame being written), and all queues
//! together share a [`Pool`] of bytes: a client whose queue would pass
//! either has stopped reading (or reads too slowly to follow), and the hub
//! disconnects it instead of buffering more. The frame being written does
//! not count against the bytes behind it, so a client that is reading a page
//! larger than the bound (a page of 500 messages of up to 4,000 four-byte
//! characters is 8 MB) still receives what is said meanwhile; a connection
//! holds at most its largest frame and [`OUTBOX_BYTES`].
//!
//! A frame shared with other connections (a broadcast) costs memory once,
//! but counts in full against every queue it waits in: the bound is then
//! simple to state and to check, and never lower than what is held.
//!
//! A push onto an empty queue is always taken, whatever its size: the
//! client had kept up, and refusing it would disconnect a client that asked
//! for one large page after smaller frames. That push is bounded elsewhere: it is one batch's frames for one
//! connection, and the hub ends a batch once its mail passes a byte bound,
//! so one push is at most that bound plus the replies to one request.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::{Receiver, Sender};

use crate::frame::Frame;
use crate::net::retry_interrupted;

/// Frames queued for one connection before it counts as too slow and is
/// disconnected.
pub const OUTBOX_FRAMES: usize = 1024;

/// Bytes queued for one connection, besides the frame being written, before
/// it counts as too slow and is disconnected: what one client that stops
/// reading can make the server hold beyond one frame (about 250 of the
/// largest messages, or thousands of ordinary ones).
pub const OUTBOX_BYTES: usize = 4 << 20;

/// Bytes queued for all connections together, by default, before the next
/// one that has a queue and needs more is disconnected: what a crowd of
/// clients that stop reading can make the server hold. Clients that keep up
/// have empty queues and are never refused by it.
pub const POOL_BYTES: usize = 64 << 20;

/// The queue is full: the client stopped reading.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// What a push did with its frames.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Frames sent or queued; none once the outbox is closed.
    pub sent: usize,
    /// Of those, the frames queued for the writer thread.
    pub queued: usize,
}

/// The bytes queued in all outboxes together, and how many there may be.
/// Every outbox holds a handle.
#[derive(Clone)]
pub struct Pool(Arc<PoolState>);

struct PoolState {
    /// Bytes queued now. Only the post adds (in [`Outbox::push`]), so a
    /// check followed by an add never overshoots; writers subtract.
    queued: AtomicUsize,
    limit: usize,
}

impl Pool {
    /// A pool of `limit` bytes.
    pub fn new(limit: usize) -> Pool {
        Pool(Arc::new(PoolState {
            queued: AtomicUsize::new(0),
            limit,
        }))
    }

    fn has_room(&self, bytes: usize) -> bool {
        self.0.queued.load(Ordering::Relaxed) + bytes <= self.0.limit
    }

    fn add(&self, bytes: usize) {
        self.0.queued.fetch_add(bytes, Ordering::Relaxed);
    }

    fn remove(&self, bytes: usize) {
        self.0.queued.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes queued now, in all outboxes.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.0.queued.load(Ordering::Relaxed)
    }
}

/// Bytes of these frames on the wire.
fn size(frames: &[Frame]) -> usize {
    frames.iter().map(|f| f.bytes().len()).sum()
}

/// A handle on a connection's outbox: the post holds one (in the
/// connection's route) and pushes through it, the connection's writer
/// thread another (see [`Outbox::new`]).
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// Where pushes write directly; `None` (TLS, tests) queues everything.
    direct: Option<Arc<TcpStream>>,
    /// Shared with every other outbox; holds this queue's bytes.
    pool: Pool,
    /// Wakes the writer: one token at most, so wake-ups coalesce.
    wake: Sender<()>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Frame>,
    /// Bytes of the queued frames, each counted whole (also the first while
    /// it is partly written); the same bytes are counted in the pool.
    bytes: usize,
    /// Bytes of the queue's first frame already on the socket.
    written: usize,
    /// The writer thread is writing; everyone else queues.
    writer_busy: bool,
    /// Nothing more is accepted (the connection is being closed or broke).
    closed: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.pool.remove(state.bytes);
    }
}

impl State {
    /// Drops these queued frames (written or discarded), giving their bytes
    /// back.
    fn drop_frames(&mut self, frames: impl std::ops::RangeBounds<usize>, pool: &Pool) {
        let freed: usize = self.queue.drain(frames).map(|f| f.bytes().len()).sum();
        self.bytes -= freed;
        pool.remove(freed);
    }
}

impl Outbox {
    /// An outbox for a connection, its queue's bytes counted in `pool`, and
    /// the receiver that wakes its writer thread when there is something to
    /// write. `direct` is a clone of a plain socket that pushes may write to
    /// without blocking.
    pub fn new(direct: Option<Arc<TcpStream>>, pool: &Pool) -> (Outbox, Receiver<()>) {
        let (wake, woken) = crossbeam_channel::bounded(1);
        let shared = Shared {
            state: Mutex::new(State::default()),
            direct,
            pool: pool.clone(),
            wake,
        };
        (Outbox(Arc::new(shared)), woken)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0
            .state
            .lock()
            .expect("BUG: no thread panics while holding an outbox")
    }

    fn wake_writer(&self) {
        let _ = self.0.wake.try_send(());
    }

    /// Sends frames in order: at once, in one call, as far as the socket
    /// takes them, and the rest through the queue. Never blocks. `Err(Full)`
    /// means the client has fallen too far behind: its queue already held
    /// frames and these would take it past [`OUTBOX_FRAMES`] or
    /// [`OUTBOX_BYTES`], or the pool past its limit; none of them was sent
    /// or queued. (A push onto an empty queue is always taken: the client
    /// had kept up, and one push is one batch for one connection; see the
    /// module's documentation.)
    pub fn push(&self, frames: &[Frame]) -> Result<Pushed, Full> {
        let mut state = self.lock();
        if state.closed || frames.is_empty() {
            return Ok(Pushed::default());
        }
        let backlog = state.queue.len();
        if backlog > 0 {
            let bytes = size(frames);
            // The first frame is on its way (or next): what the bound is
            // for is what waits behind it.
            let on_its_way = state.queue.front().map_or(0, |f| f.bytes().len());
            if backlog + frames.len() > OUTBOX_FRAMES
                || state.bytes - on_its_way + bytes > OUTBOX_BYTES
                || !self.0.pool.has_room(bytes)
            {
                return Err(Full);
            }
        }
        let mut rest = frames;
        if state.queue.is_empty()
            && !state.writer_busy
            && let Some(sock) = &self.0.direct
        {
            // The socket takes whole frames until it is full (or until a
            // frame went out in part, which means the same).
            loop {
                let mut sent = match send_now(sock, rest) {
                    Ok(0) => break,
                    Ok(sent) => sent,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // The socket is broken (or the system out of
                        // buffers): end it, so that its reader reports the
                        // end and the hub forgets the connection.
                        log::debug!("outbox: direct send failed: {e}");
                        state.closed = true;
                        let _ = sock.shutdown(std::net::Shutdown::Both);
                        let sent = frames.len() - rest.len();
                        return Ok(Pushed { sent, queued: 0 });
                    }
                };
                while let Some(first) = rest.first()
                    && sent >= first.bytes().len()
                {
                    sent -= first.bytes().len();
                    rest = &rest[1..];
                }
                if rest.is_empty() {
                    let sent = frames.len();
                    return Ok(Pushed { sent, queued: 0 });
                }
                if sent > 0 {
                    state.written = sent;
                    break;
                }
            }
        }
        let queued = size(rest);
        state.bytes += queued;
        self.0.pool.add(queued);
        state.queue.extend(rest.iter().cloned());
        drop(state);
        self.wake_writer();
        let (sent, queued) = (frames.len(), rest.len());
        Ok(Pushed { sent, queued })
    }

    /// Accepts nothing more; with `discard`, also drops what is queued (a
    /// client that stopped reading will not get it anyway), except the rest
    /// of a frame already partly sent: the close frame must not land inside
    /// it.
    pub fn close(&self, discard: bool) {
        let mut state = self.lock();
        state.closed = true;
        if discard {
            let keep = usize::from(state.written > 0).min(state.queue.len());
            state.drop_frames(keep.., &self.0.pool);
        }
    }

    /// Frames queued and not yet fully written.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether the outbox takes nothing more (the connection is ending, or
    /// fell too far behind and had its queue dropped).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Bytes of the frames [`Outbox::queued`] counts.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Writer thread: takes the socket for itself. Until a call to
    /// [`Outbox::next_run`] finds the queue empty (without `keep_claim`),
    /// pushes only queue, so the writer may write at will.
    pub fn claim(&self) {
        self.lock().writer_busy = true;
    }

    /// Like [`Outbox::next_run`] for one frame: the next queued bytes to
    /// write (the rest of the first frame).
    #[cfg(test)]
    pub fn next(&self, keep_claim: bool) -> Option<(Frame, usize)> {
        self.next_run(0, keep_claim).pop()
    }

    /// The frame [`Outbox::next`] returned is on the socket.
    #[cfg(test)]
    pub fn written(&self) {
        self.written_n(1);
    }

    /// Writer thread: the queue's next frames up to about `max_bytes` (at
    /// least one), with where to start in the first (the rest of a frame
    /// begun), so that they can be written in one call (over TLS, one record
    /// instead of one per frame). Claims the socket; an empty run means the
    /// queue is empty, which releases the socket unless `keep_claim`.
    pub fn next_run(&self, max_bytes: usize, keep_claim: bool) -> Vec<(Frame, usize)> {
        let mut state = self.lock();
        let mut run = Vec::new();
        let mut bytes = 0;
        let mut from = state.written;
        for frame in &state.queue {
            if !run.is_empty() && bytes + frame.bytes().len() > max_bytes {
                break;
            }
            bytes += frame.bytes().len() - from;
            run.push((frame.clone(), from));
            from = 0;
        }
        state.writer_busy = !run.is_empty() || keep_claim;
        run
    }

    /// Writer thread: the first `n` queued frames are on the socket.
    pub fn written_n(&self, n: usize) {
        let mut state = self.lock();
        // A discarding close may have shortened the queue meanwhile.
        let n = n.min(state.queue.len());
        if n > 0 {
            state.drop_frames(..n, &self.0.pool);
            state.written = 0;
        }
    }
}

/// Frames written by one send at most.
const SEND_FRAMES: usize = 64;

/// One non-blocking send of as much of `frames` as the socket takes now.
/// (A flag on this one call: setting the socket non-blocking would also
/// make its reader's blocking reads fail, as clones share that flag.)
fn send_now(sock: &TcpStream, frames: &[Frame]) -> io::Result<usize> {
    let sock = socket2::SockRef::from(sock);
    let slices: Vec<IoSlice<'_>> = frames
        .iter()
        .take(SEND_FRAMES)
        .map(|f| IoSlice::new(f.bytes()))
        .collect();
    retry_interrupted(|| {
        sock.send_vectored_with_flags(&slices, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};
    use std::net::TcpListener;
    use tungstenite::protocol::{Role, WebSocket};

    /// A connected pair of loopback sockets: (ours, the peer's).
    fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        (ours, peer)
    }

    /// What a client reads from these bytes, by tungstenite.
    fn read_as_client(bytes: Vec<u8>) -> Vec<String> {
        let mut ws = WebSocket::from_raw_socket(Cursor::new(bytes), Role::Client, None);
        let mut texts = Vec::new();
        while let Ok(message) = ws.read() {
            texts.push(message.into_text().unwrap().to_string());
        }
        texts
    }

    #[test]
    fn a_socket_with_room_gets_the_frame_at_once_without_waking_the_writer() {
        let (ours, mut peer) = socket_pair();
        let (outbox, woken) = Outbox::new(Some(Arc::new(ours)), &Pool::new(POOL_BYTES));
        let frame = Frame::text(r#"{"type":"pong"}"#);
        outbox.push(std::slice::from_ref(&frame)).unwrap();
        assert_eq!(outbox.queued(), 0);
        assert!(woken.try_recv().is_err(), "the writer was woken");
        let mut got = vec![0; frame.bytes().len()];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, frame.bytes());
    }

    #[test]
    fn frames_pushed_together_leave_together_in_order() {
        let (ours, mut peer) = socket_pair();
        let (outbox, woken) = Outbox::new(Some(Arc::new(ours)), &Pool::new(POOL_BYTES));
        let frames: Vec<Frame> = ["ack", "message", &"x".repeat(70_000)]
            .iter()
            .map(|t| Frame::text(t))
            .collect();
        outbox.push(&frames).unwrap();
        assert_eq!(outbox.queued(), 0);
        assert!(woken.try_recv().is_err(), "the writer was woken");
        let total: usize = frames.iter().map(|f| f.bytes().len()).sum();
        let mut got = vec![0; total];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(read_as_client(got), ["ack", "message", &"x".repeat(70_000)]);
    }

    #[test]
    fn a_burst_larger_than_one_send_call_goes_out_at_once_while_the_socket_has_room() {
        let (ours, _peer) = socket_pair();
        let (outbox, _woken) = Outbox::new(Some(Arc::new(ours)), &Pool::new(POOL_BYTES));
        let burst: Vec<Frame> = (0..OUTBOX_FRAMES * 2)
            .map(|i| Frame::text(&format!("frame {i}")))
            .collect();
        outbox.push(&burst).unwrap();
        assert_eq!(outbox.queued(), 0);
    }

    #[test]
    fn a_client_that_stops_reading_fills_the_queue_in_order_then_is_full() {
        let (ours, peer) = socket_pair();
        let (outbox, woken) = Outbox::new(Some(Arc::new(ours)), &Pool::new(POOL_BYTES));
        // Small enough that the frames, not the bytes, run out first.
        let frame = |i: usize| Frame::text(&format!("{i:08}").repeat(256));
        let mut pushed = 0;
        let full = loop {
            match outbox.push(&[frame(pushed)]) {
                Ok(_) => pushed += 1,
                Err(full) => break full,
            }
        };
        assert_eq!(full, Full);
        assert_eq!(outbox.queued(), OUTBOX_FRAMES);
        assert!(woken.try_recv().is_ok(), "the writer was not woken");
        assert!(pushed > OUTBOX_FRAMES, "the socket took nothing at once");

        // The writer's turn: the rest of the first queued frame, then the
        // others; while it holds the socket, new frames queue behind.
        let first_queued = pushed - OUTBOX_FRAMES;
        let (next, from) = outbox.next(false).unwrap();
        assert_eq!(next.bytes(), frame(first_queued).bytes());
        assert!(from < next.bytes().len());
        outbox.written();
        let (next, from) = outbox.next(false).unwrap();
        assert_eq!(next.bytes(), frame(first_queued + 1).bytes());
        assert_eq!(from, 0);
        drop(peer);
    }

    #[test]
    fn while_the_writer_holds_the_socket_pushes_queue_and_order_is_kept() {
        let (ours, mut peer) = socket_pair();
        let (outbox, woken) = Outbox::new(Some(Arc::new(ours)), &Pool::new(POOL_BYTES));
        outbox.claim();
        let a = Frame::text("a");
        let b = Frame::text("b");
        outbox.push(&[a]).unwrap();
        outbox.push(&[b]).unwrap();
        assert_eq!(outbox.queued(), 2);
        assert!(woken.try_recv().is_ok());
        let mut written = Vec::new();
        while let Some((frame, from)) = outbox.next(false) {
            written.extend_from_slice(&frame.bytes()[from..]);
            outbox.written();
        }
        // The queue is empty: pushes write directly again.
        let c = Frame::text("c");
        outbox.push(std::slice::from_ref(&c)).unwrap();
        assert_eq!(outbox.queued(), 0);
        written.extend_from_slice(c.bytes());
        let mut got = vec![0; c.bytes().len()];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(read_as_client(written), ["a", "b", "c"]);
        assert_eq!(got, c.bytes());
    }

    /// A pair whose sending side takes little before it is full.
    fn small_socket_pair() -> (TcpStream, TcpStream) {
        let (ours, peer) = socket_pair();
        socket2::SockRef::from(&ours)
            .set_send_buffer_size(4096)
            .unwrap();
        socket2::SockRef::from(&peer)
            .set_recv_buffer_size(4096)
            .unwrap();
        (ours, peer)
    }

    #[test]
    fn a_frame_begun_by_a_direct_send_is_finished_before_anything_else() {
        let (ours, peer) = small_socket_pair();
        let (outbox, _woken) = Outbox::new(Some(Arc::new(ours)), &Pool::new(POOL_BYTES));
        let big = Frame::text(&"b".repeat(1 << 20));
        outbox.push(std::slice::from_ref(&big)).unwrap();
        assert_eq!(outbox.queued(), 1, "the socket took the whole frame");
        // The writer claims the socket for a control frame: first it must
        // write the rest of the frame begun, and keep the socket after.
        outbox.claim();
        let (frame, from) = outbox.next(true).unwrap();
        assert!(from > 0, "nothing of the frame went out directly");
        assert_eq!(frame.bytes(), big.bytes());
        outbox.written();
        assert!(outbox.next(true).is_none());
        // Still claimed: a push now queues instead of writing directly.
        outbox.push(&[Frame::text("after")]).unwrap();
        assert_eq!(outbox.queued(), 1);
        // A discarding close keeps nothing but a frame begun.
        outbox.close(true);
        assert_eq!(outbox.queued(), 0);
        drop(peer);
    }

    #[test]
    fn a_discarding_close_keeps_the_rest_of_a_frame_begun() {
        let (ours, _peer) = small_socket_pair();
        let (outbox, _woken) = Outbox::new(Some(Arc::new(ours)), &Pool::new(POOL_BYTES));
        outbox.push(&[Frame::text(&"b".repeat(1 << 20))]).unwrap();
        outbox.push(&[Frame::text("queued behind")]).unwrap();
        assert_eq!(outbox.queued(), 2);
        outbox.close(true);
        assert_eq!(outbox.queued(), 1);
        let (_, from) = outbox.next(false).unwrap();
        assert!(from > 0);
    }

    #[test]
    fn a_burst_onto_an_empty_queue_is_taken_whole_even_past_the_bound() {
        let (ours, _peer) = small_socket_pair();
        let (outbox, _woken) = Outbox::new(Some(Arc::new(ours)), &Pool::new(POOL_BYTES));
        let burst: Vec<Frame> = (0..OUTBOX_FRAMES + 100)
            .map(|i| Frame::text(&format!("{i:01000}")))
            .collect();
        outbox.push(&burst).unwrap();
        let queued = outbox.queued();
        assert!(queued > OUTBOX_FRAMES, "only {queued} queued");
        // With that backlog, the next push is refused.
        assert_eq!(outbox.push(&[Frame::text("one more")]), Err(Full));
    }

    #[test]
    fn the_writer_takes_queued_frames_in_runs_starting_where_the_socket_stopped() {
        let (ours, _peer) = small_socket_pair();
        let (outbox, _woken) = Outbox::new(Some(Arc::new(ours)), &Pool::new(POOL_BYTES));
        let big = Frame::text(&"b".repeat(1 << 20));
        outbox.push(std::slice::from_ref(&big)).unwrap();
        let small: Vec<Frame> = (0..10).map(|i| Frame::text(&format!("{i:0100}"))).collect();
        outbox.push(&small).unwrap();
        // The big frame's rest comes alone: it is over the run's size.
        let run = outbox.next_run(4096, false);
        assert_eq!(run.len(), 1);
        assert!(run[0].1 > 0);
        outbox.written_n(run.len());
        // Then the small ones, as many as fit, in order.
        let run = outbox.next_run(4 * small[0].bytes().len(), false);
        let texts: Vec<&str> = run.iter().map(|(f, _)| f.payload()).collect();
        assert_eq!(
            texts,
            small[..4].iter().map(Frame::payload).collect::<Vec<_>>()
        );
        assert!(run.iter().all(|(_, from)| *from == 0));
        outbox.written_n(run.len());
        assert_eq!(outbox.queued(), 6);
        let run = outbox.next_run(1 << 20, false);
        assert_eq!(run.len(), 6);
        outbox.written_n(6);
        assert!(outbox.next_run(1 << 20, false).is_empty());
        // Released: the socket takes a frame directly again.
        outbox.push(&[Frame::text("direct")]).unwrap();
        assert_eq!(outbox.queued(), 0);
    }

    /// A frame of `bytes` bytes on the wire (header included).
    fn frame_of(bytes: usize) -> Frame {
        let header = match bytes {
            ..128 => 2,
            128..65_540 => 4,
            _ => 10,
        };
        let frame = Frame::text(&"x".repeat(bytes - header));
        assert_eq!(frame.bytes().len(), bytes);
        frame
    }

    #[test]
    fn a_queue_is_bounded_in_bytes_as_well_as_in_frames() {
        let (outbox, _woken) = Outbox::new(None, &Pool::new(POOL_BYTES));
        let quarter = OUTBOX_BYTES / 4;
        // The first is on its way; four wait behind it.
        for _ in 0..5 {
            outbox.push(&[frame_of(quarter)]).unwrap();
        }
        assert_eq!(outbox.queued(), 5);
        assert_eq!(outbox.push(&[frame_of(quarter)]), Err(Full));
        // A frame written makes room for another.
        outbox.next(false).unwrap();
        outbox.written();
        outbox.push(&[frame_of(quarter)]).unwrap();
        assert_eq!(outbox.queued(), 5);
    }

    #[test]
    fn a_large_frame_on_its_way_leaves_the_bound_to_the_frames_behind_it() {
        let pool = Pool::new(POOL_BYTES);
        let (outbox, _woken) = Outbox::new(None, &pool);
        // Onto an empty queue, a page larger than the bound is taken, and
        // so is what is said while it is written, up to the bound.
        let page = frame_of(2 * OUTBOX_BYTES);
        outbox.push(&[page, frame_of(OUTBOX_BYTES - 200)]).unwrap();
        outbox.push(&[frame_of(100)]).unwrap();
        assert_eq!(outbox.push(&[frame_of(200)]), Err(Full));
        assert_eq!(outbox.queued_bytes(), 3 * OUTBOX_BYTES - 100);
        assert_eq!(pool.queued(), outbox.queued_bytes());
        // The page is written; what waited behind it is now on its way.
        outbox.next(false).unwrap();
        outbox.written();
        assert_eq!(pool.queued(), OUTBOX_BYTES - 100);
        outbox.push(&[frame_of(OUTBOX_BYTES - 100)]).unwrap();
        assert_eq!(outbox.push(&[frame_of(200)]), Err(Full));
    }

    #[test]
    fn all_queues_share_the_pool_and_give_their_bytes_back() {
        let mib = 1 << 20;
        let pool = Pool::new(3 * mib);
        let (a, _a_woken) = Outbox::new(None, &pool);
        let (b, _b_woken) = Outbox::new(None, &pool);
        a.push(&[frame_of(2 * mib)]).unwrap();
        b.push(&[frame_of(2 * mib)]).unwrap();
        assert_eq!(pool.queued(), 4 * mib, "b's first push was refused");
        // Each is far from its own bound, but the pool is spent: a
        // connection with a queue is refused more.
        assert_eq!(a.push(&[frame_of(100)]), Err(Full));
        assert_eq!(b.push(&[frame_of(100)]), Err(Full));
        // b's writer catches up: a has room again.
        b.next(false).unwrap();
        b.written();
        assert_eq!(pool.queued(), 2 * mib);
        a.push(&[frame_of(100)]).unwrap();
        assert_eq!(pool.queued(), 2 * mib + 100);
        // A discarding close gives a's bytes back; so does dropping b.
        b.push(&[frame_of(mib)]).unwrap();
        a.close(true);
        assert_eq!(pool.queued(), mib);
        drop(b);
        assert_eq!(pool.queued(), 0);
    }

    #[test]
    fn a_closed_outbox_takes_nothing_and_a_discarding_close_drops_the_queue() {
        let (outbox, _woken) = Outbox::new(None, &Pool::new(POOL_BYTES));
        outbox.push(&[Frame::text("kept")]).unwrap();
        outbox.close(false);
        outbox.push(&[Frame::text("after close")]).unwrap();
        assert_eq!(outbox.queued(), 1);
        outbox.close(true);
        assert_eq!(outbox.queued(), 0);
        assert!(outbox.next(false).is_none());
    }
}
