//! The socket's writer: drains the socket's queue through its view onto the wire, one
//! write for everything taken (a chunk at a time), and closes the socket with the code its
//! reason calls for.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use futures_util::task::AtomicWaker;
use tokio::time::Sleep;

use super::close_code;
use super::connection::Outgoing;
use super::view::{Effect, Revoked, View};
use crate::hub::Hub;
use crate::layer::Subscriber;
use crate::layer::outbox::{KEEP_SLOTS, Stop};
use crate::layer::{Outbound, Reply, room_group};
use crate::views;

/// Bytes of a socket's own replies (history, catch-up, errors) queued and not yet written.
///
/// The reader takes the next action only while this is under `MAX_REPLY_BACKLOG`: a client
/// that asks and asks but never reads would otherwise have the node hold every answer, up
/// to the queue's thousand slots of history pages each.
#[derive(Default)]
pub(super) struct Backlog {
    bytes: AtomicUsize,
    /// The reader, while it waits for room (see `poll_room`).
    reader: AtomicWaker,
}

/// See `Backlog`.
const MAX_REPLY_BACKLOG: usize = 256 * 1024;

impl Backlog {
    pub(super) fn queued(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn written(&self, bytes: usize) {
        if bytes > 0 {
            self.bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.reader.wake();
        }
    }

    /// Ready while fewer than `MAX_REPLY_BACKLOG` bytes of replies wait to be written.
    /// Polled by hand, so that the reader's wait holds nothing of its own (a `Notify`'s
    /// wait is 80 bytes in every socket's task).
    pub(super) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.bytes.load(Ordering::Acquire) < MAX_REPLY_BACKLOG {
            return Poll::Ready(());
        }
        self.reader.register(cx.waker());
        // Written between the look above and the registration: no one was woken.
        if self.bytes.load(Ordering::Acquire) < MAX_REPLY_BACKLOG {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Waits until fewer than `MAX_REPLY_BACKLOG` bytes of replies wait to be written.
    pub(super) async fn wait_for_room(&self) {
        poll_fn(|cx| self.poll_room(cx)).await
    }
}

/// Roughly how many bytes `reply` puts on the wire: what the socket's own replies hold in
/// memory until they are written (see `Backlog`).
pub(super) fn weight(reply: &Reply) -> usize {
    match reply {
        Reply::Frame(f) => f.len(),
        Reply::Frames(frames) | Reply::NoRoom(frames) | Reply::Enter { frames, .. } => {
            frames.iter().map(|f| f.len()).sum()
        }
        Reply::Missed { messages, .. } => messages.iter().map(views::article_weight).sum(),
        Reply::Rooms { .. }
        | Reply::Entering { .. }
        | Reply::NotEntered { .. }
        | Reply::CaughtUp { .. }
        | Reply::Goodbye => 0,
    }
}

/// Live messages a socket holds while it catches up, at least: a resuming client reads its
/// backlog a page at a time while the room goes on, and a queue set very small (a few
/// slots) would otherwise cut it off for the few messages said meanwhile. A held message
/// is a shared frame, not a copy.
const MIN_HELD: usize = 64;

/// Frames' room the writer keeps between writes while the node paces (a quiet node's
/// writer gives it all back once nothing is queued); a burst's more (a room entered is a
/// dozen frames or so) is given back after its write rather than held for the socket's life.
const KEEP_FRAMES: usize = 4;
/// The same for the connection's buffer, in bytes: a batch that grew it past this (a room
/// entered, a history page) gives it back after its write.
const KEEP_OUT: usize = 4 * 1024;

/// How long one write may wait for a client to read before the socket is dropped.
const WRITE_DEADLINE: Duration = Duration::from_secs(20);

/// Drains the socket's queue onto the wire until the socket closes.
///
/// Not an `async fn`, and the view is made before the future, as for the socket's own task
/// (see `super::run`): what an async fn is given, and what its body moves elsewhere, keeps
/// its room in the future for as long as it runs.
pub(super) fn write_loop(
    hub: Arc<Hub>,
    member: Subscriber,
    backlog: Arc<Backlog>,
    revoked: Arc<Revoked>,
    session: Arc<str>,
    user_id: &str,
    mut sink: Outgoing,
) -> impl Future<Output = ()> + Send + 'static {
    let mut view = View::new(
        revoked,
        session,
        user_id,
        hub.limits.outbound_queue.max(MIN_HELD),
    );
    async move {
        let outbox = &member.outbox;
        let mut taken = VecDeque::new();
        let mut frames = Vec::new();
        let mut last_write: Option<Instant> = None;
        let mut timer = Timer::default();
        loop {
            // Polled by hand, like the pacing's and the write's waits below: what an await
            // holds stays in the writer's future for the socket's life, idle or not. An
            // answer to a ping wakes it too, and goes out with the next write; the queue is
            // looked at first, so that pings however many never hold up a delivery or a stop.
            // On a node not busy enough to pace, a socket with nothing queued may stay idle
            // for hours: what its last write needed (up to `KEEP_FRAMES` and `KEEP_OUT`) is
            // given back rather than held beside every idle socket. A pacing node's sockets
            // keep them: they write again within a gap, and would allocate both afresh for
            // every write.
            let quiet = last_write.is_none();
            let take = poll_fn(|cx| match outbox.poll_take(&mut taken, cx) {
                Poll::Pending => {
                    if quiet {
                        frames = Vec::new();
                        sink.release_beyond(0);
                    }
                    sink.poll_controls(cx).map(Ok)
                }
                taken => taken,
            });
            if let Err(stop) = take.await {
                return Box::pin(close_for(&mut sink, stop)).await;
            }
            // A socket that wrote moments ago is busy: gather what arrives until its gap is
            // over and send it in one write. Loopback or not, each write is a system call and a
            // TCP segment; a busy room otherwise costs one of each per message per socket.
            if let Some(due) = last_write.map(|at| at + hub.pacing.gap())
                && Instant::now() < due
            {
                poll_fn(|cx| {
                    if outbox.poll_stopped(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    timer.at(due).poll(cx)
                })
                .await;
                // Falling behind drops what is queued; a shutdown lets it out first, and the
                // close follows at the next take.
                if let Err(Stop::Lagging) = outbox.take_queued(&mut taken) {
                    return Box::pin(close_for(&mut sink, Stop::Lagging)).await;
                }
            }
            let mut replies = 0;
            for outbound in taken.drain(..) {
                if let Outbound::Reply(reply) = &outbound {
                    replies += weight(reply);
                }
                view.frames(outbound, &mut frames);
            }
            for effect in view.take_effects() {
                match effect {
                    // Registered now; confirmation is not awaited, as the room is new.
                    Effect::Join(room) => drop(hub.layer.join(&room_group(&room), &member)),
                    Effect::Leave(room) => hub.layer.leave(&room_group(&room), member.id),
                    Effect::Lagging => member.outbox.stop(Stop::Lagging),
                }
            }
            if taken.capacity() > KEEP_SLOTS {
                // After a burst: let the memory go rather than hold it for the socket's life.
                taken = VecDeque::new();
            }
            if view.take_resync() {
                Box::pin(missed_frames(&hub, &mut view, &mut frames)).await;
            }
            // One write for everything taken: one system call for many frames. A client that
            // stops reading blocks the write; if it is meanwhile stopped as lagging (or the
            // node stops), or the write is still blocked at its deadline (a quiet room
            // overflows no queue), the connection is dropped, as no close frame could reach
            // it. Nearly every write finishes at its first poll, and only one that does not
            // arms the deadline: a timer per write is a cost per write.
            let written = {
                // Moved into the wait, not kept beside it.
                let (mut copied, mut deadline) = (0, None);
                let (sink, frames, timer, member) = (&mut sink, &mut frames, &mut timer, &member);
                poll_fn(move |cx| {
                    if let Poll::Ready(written) = poll_write(sink, frames, &mut copied, cx) {
                        return Poll::Ready(written.is_ok());
                    }
                    if member.outbox.poll_stopped(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    let at = *deadline.get_or_insert_with(|| Instant::now() + WRITE_DEADLINE);
                    if timer.at(at).poll(cx).is_ready() {
                        tracing::debug!(
                            socket = member.id,
                            "a write was stuck; dropping the socket"
                        );
                        return Poll::Ready(false);
                    }
                    Poll::Pending
                })
                .await
            };
            frames.clear();
            if !written {
                return;
            }
            if frames.capacity() > KEEP_FRAMES {
                frames = Vec::new();
            }
            sink.release_beyond(KEEP_OUT);
            backlog.written(replies);
            if view.ended {
                return Box::pin(close(&mut sink, close_code::LOGGED_OUT, "Logged out.")).await;
            }
            if view.goodbye {
                // The answer to the client's close, as RFC 6455 asks.
                return Box::pin(close(&mut sink, close_code::NORMAL, "")).await;
            }
            let metrics = hub.layer.registry().metrics();
            metrics.socket_writes.fetch_add(1, Ordering::Relaxed);
            // Only a busy node needs the time; a quiet one forgets it and reads no clock.
            last_write = (!hub.pacing.gap().is_zero()).then(Instant::now);
        }
    }
}

/// Frames are copied into the connection's buffer up to this much at a time, then written:
/// a client that reads slowly has the node hold a chunk of copies, not a whole queue's.
const WRITE_CHUNK: usize = 32 * 1024;

/// Writes `frames` from `copied` on, a chunk at a time; each frame's shared text is let go
/// once copied. `copied` counts the frames copied, across polls. The next chunk is copied
/// only once the last is all written: a client that reads a little at a time would
/// otherwise have the written front of the buffer kept with a new chunk behind it.
fn poll_write(
    sink: &mut Outgoing,
    frames: &mut [Utf8Bytes],
    copied: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    loop {
        if sink.held() == 0 {
            while let Some(frame) = frames.get_mut(*copied)
                && sink.held() < WRITE_CHUNK
            {
                sink.text(std::mem::take(frame).as_str());
                *copied += 1;
            }
        }
        ready!(sink.poll_write(cx))?;
        if *copied == frames.len() {
            return Poll::Ready(Ok(()));
        }
    }
}

/// The writer's one timer (pacing, a stuck write's deadline), made the first time it is
/// needed and kept: inline, each of the two would take a timer's room (~130 bytes) in every
/// socket's writer, and a quiet socket never needs either.
#[derive(Default)]
struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// Resolves at `deadline`. Polled again for the same deadline, it is not set again: a
    /// timer set anew takes the runtime's timer lock, and one that already fired always
    /// is set anew.
    fn at(&mut self, deadline: Instant) -> Pin<&mut Sleep> {
        let deadline = tokio::time::Instant::from(deadline);
        let sleep = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut()
    }
}

/// After a gap in delivery: what is not shown yet from the first hole on, up to the
/// catch-up limit. Further behind, the page finds the gap after these and asks to
/// `Catch up`, which shows the room afresh.
async fn missed_frames(hub: &Hub, view: &mut View, out: &mut Vec<Utf8Bytes>) {
    let Some((room, shown_through)) = view.shown() else {
        return;
    };
    let limit = hub.limits.catch_up_limit;
    match hub.store.changes_after(&room, shown_through, limit).await {
        Ok(page) => view.show_missed(page.messages, page.through, out),
        Err(e) => tracing::warn!(error = %e, "could not fetch missed messages"),
    }
}

async fn close_for(sink: &mut Outgoing, stop: Stop) {
    let (code, reason) = match stop {
        Stop::Shutdown => (close_code::RESTARTING, "Server restarting; reconnect."),
        Stop::Lagging => (
            close_code::TRY_AGAIN,
            "You fell behind; reconnect to catch up.",
        ),
    };
    close(sink, code, reason).await;
}

/// How long the socket's last frame may wait for the client to read.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Sends the socket's last frame; the connection closes once the writer returns, or when
/// the client does not read it in time.
async fn close(sink: &mut Outgoing, code: u16, reason: &'static str) {
    sink.close(code, reason);
    let _ = tokio::time::timeout(CLOSE_DEADLINE, sink.write()).await;
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpSocket, TcpStream};

    use super::super::Connection;
    use super::*;

    /// A client that reads a little at a time has the node hold a chunk of copied frames
    /// at most: the rest of what is queued stays the shared frames it was.
    #[tokio::test]
    async fn a_slow_reader_has_a_chunk_of_copies_held_at_most() {
        // Small kernel buffers, so that 1 MiB cannot go out before the client reads.
        let listener = TcpSocket::new_v4().expect("socket");
        listener
            .set_send_buffer_size(16 * 1024)
            .expect("send buffer");
        listener
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let listener = listener.listen(1).expect("listen");
        let client = TcpSocket::new_v4().expect("socket");
        client
            .set_recv_buffer_size(16 * 1024)
            .expect("receive buffer");
        let (client, accepted) = tokio::join!(client.connect(address), listener.accept());
        let client: TcpStream = client.expect("connect");
        let (_incoming, mut sink) =
            Connection::new(accepted.expect("accept").0, Vec::new()).split(1024);
        let frame = Utf8Bytes::from("x".repeat(4096));
        let mut frames = vec![frame; 256];
        let expected = frames.len() * (4096 + 4);
        let (mut copied, mut read, mut buffer) = (0, 0, vec![0; 8 * 1024]);
        let mut stalled = 0;
        loop {
            let polled =
                poll_fn(|cx| Poll::Ready(poll_write(&mut sink, &mut frames, &mut copied, cx)))
                    .await;
            assert!(
                sink.held() <= WRITE_CHUNK + 4096 + 4,
                "{} bytes held",
                sink.held()
            );
            if polled.is_ready() {
                break;
            }
            stalled += 1;
            // A little at a time; the yield lets the runtime see the socket writable again.
            if let Ok(n) = client.try_read(&mut buffer) {
                read += n;
            }
            tokio::task::yield_now().await;
        }
        assert!(stalled > 0, "1 MiB went out without the client reading");
        while read < expected {
            client.readable().await.expect("readable");
            if let Ok(n) = client.try_read(&mut buffer) {
                assert!(n > 0, "the connection ended early");
                read += n;
            }
        }
        assert_eq!(read, expected);
    }
}
