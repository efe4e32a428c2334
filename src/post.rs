//! The post: carries out what the hub asked of its connections in a batch
//! (frames to send, connections to close), in the order it asked, on a
//! thread of its own.
//!
//! Sending is most of the work of a busy hub, and it needs no chat state:
//! each frame is already encoded and each connection's outbox says where it
//! goes. Handing a batch's mail to this thread lets the hub go on to its
//! next batch, and wait for that batch's commit to reach the disk, while
//! this one is still being sent. Frames for the same connection in one
//! batch leave in one send call.

use std::collections::HashMap;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::hub::{Command, ConnId, Event};
use crate::outbox::{Frame, Full, Outbox};

/// One thing the hub asks of a connection.
pub enum Mail {
    Frame(ConnId, Outbox, Frame),
    /// Closes the outbox (queued frames still go out) and asks the writer
    /// to end the connection.
    Close {
        conn: ConnId,
        outbox: Outbox,
        commands_tx: Sender<Command>,
        command: Command,
    },
}

/// Carries out a batch of mail. Returns the connections found too far
/// behind: their outboxes are closed and emptied, and the hub should end
/// them.
pub fn deliver(mail: Vec<Mail>) -> Vec<ConnId> {
    let mut too_slow = Vec::new();
    // Per connection, the frames not yet pushed, in order.
    let mut frames: HashMap<ConnId, (Outbox, Vec<Frame>)> = HashMap::new();
    let push = |conn: ConnId, outbox: &Outbox, batch: &[Frame], too_slow: &mut Vec<ConnId>| {
        if outbox.push(batch) == Err(Full) {
            outbox.close(true);
            too_slow.push(conn);
        }
    };
    for item in mail {
        match item {
            Mail::Frame(conn, outbox, frame) => {
                frames
                    .entry(conn)
                    .or_insert_with(|| (outbox, Vec::new()))
                    .1
                    .push(frame);
            }
            Mail::Close {
                conn,
                outbox,
                commands_tx,
                command,
            } => {
                if let Some((outbox, batch)) = frames.remove(&conn) {
                    push(conn, &outbox, &batch, &mut too_slow);
                }
                outbox.close(false);
                // An error means the writer is already gone.
                let _ = commands_tx.send(command);
            }
        }
    }
    for (conn, (outbox, batch)) in frames {
        push(conn, &outbox, &batch, &mut too_slow);
    }
    too_slow
}

/// The running post thread.
pub struct Post {
    mail_tx: Sender<Vec<Mail>>,
    thread: JoinHandle<()>,
}

impl Post {
    /// Starts the `post` thread. It tells the hub of connections too far
    /// behind with [`Event::TooSlow`].
    pub fn start(hub_tx: Sender<Event>) -> std::io::Result<Post> {
        // The hub may be one batch ahead; beyond that it waits, so a post
        // that cannot keep up slows the hub instead of piling up mail.
        let (mail_tx, mail_rx) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("post".into())
            .spawn(move || run(&mail_rx, &hub_tx))?;
        Ok(Post { mail_tx, thread })
    }

    /// Hands over a batch of mail.
    pub fn send(&self, mail: Vec<Mail>) {
        self.mail_tx
            .send(mail)
            .expect("BUG: the post thread lives as long as the hub");
    }

    /// Delivers what was handed over and stops.
    pub fn stop(self) {
        drop(self.mail_tx);
        if self.thread.join().is_err() {
            log::error!("the post thread panicked");
        }
    }
}

fn run(mail_rx: &Receiver<Vec<Mail>>, hub_tx: &Sender<Event>) {
    for mail in mail_rx {
        for conn in deliver(mail) {
            let _ = hub_tx.send(Event::TooSlow { conn });
        }
    }
}
