//! A socket's queue: the layer and the socket's own session put items in, and the socket's
//! writer takes out everything queued at once.
//!
//! A message to a room is one push into each member's queue, which makes this the hottest
//! path of a busy node. A push is one uncontended lock, and the writer empties the whole
//! queue under one lock, where a channel pays several atomic operations per item on both
//! sides (its permits, its slots, its waker). It is also small: a socket that receives
//! nothing holds no allocation for its queue, against a channel's first block of slots.
//!
//! The queue also carries the socket's reason to stop (it fell behind, or the node is
//! shutting down), so the writer waits on one thing, not on a queue and a token.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Slots a queue keeps once emptied; more are given back (the writer does the same with
/// what it took).
pub const KEEP_SLOTS: usize = 64;

/// Why a socket's writer must close it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its queue overflowed: the client reads too slowly (close code 1013).
    Lagging,
    /// The node is shutting down (close code 1012).
    Shutdown,
}

/// What became of a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full: the socket is now stopped as lagging, and its queue dropped.
    Overflowed,
    /// The socket is stopping or its writer is gone; the item was dropped.
    Dropped,
}

pub struct Outbox<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

struct State<T> {
    queue: VecDeque<T>,
    stop: Option<Stop>,
    /// The writer has ended: nothing is queued any more.
    closed: bool,
    /// The writer's waker while it waits.
    waker: Option<Waker>,
    /// Whether a push wakes the writer, or only a stop does (while it writes or paces).
    wake_on_push: bool,
}

impl<T> State<T> {
    fn wait(&mut self, cx: &Context<'_>, wake_on_push: bool) {
        if !self
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            self.waker = Some(cx.waker().clone());
        }
        self.wake_on_push = wake_on_push;
    }
}

impl<T> Outbox<T> {
    /// A queue that stops the socket as lagging when `capacity` items wait in it.
    pub fn new(capacity: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                stop: None,
                closed: false,
                waker: None,
                wake_on_push: false,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding the lock; should it, the queue is still whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` without waiting. A full queue stops the socket: one slow reader must
    /// not hold up a room, nor grow the node's memory without bound.
    pub fn push(&self, item: T) -> Pushed {
        let mut state = self.lock();
        if state.closed || state.stop.is_some() {
            return Pushed::Dropped;
        }
        if state.queue.len() >= self.capacity {
            state.stop = Some(Stop::Lagging);
            let dropped = std::mem::take(&mut state.queue);
            let waker = state.waker.take();
            drop(state);
            drop(dropped);
            if let Some(waker) = waker {
                waker.wake();
            }
            return Pushed::Overflowed;
        }
        state.queue.push_back(item);
        let waker = if state.wake_on_push {
            state.waker.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Pushed::Queued
    }

    /// Tells the writer to close the socket. A shutdown overrides falling behind: the
    /// client had better reconnect to another node.
    pub fn stop(&self, why: Stop) {
        let mut state = self.lock();
        if state.closed || state.stop == Some(Stop::Shutdown) || state.stop == Some(why) {
            return;
        }
        state.stop = Some(why);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The writer has ended: drops what is queued and every later push. Its waker is
    /// dropped unwoken, as no one waits on it any more.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let dropped = std::mem::take(&mut state.queue);
        let waker = state.waker.take();
        drop(state);
        drop((dropped, waker));
    }

    /// Ready once something is queued, having moved all of it to the back of `into`; or with
    /// why the socket must stop, which comes before anything still queued. A poll function,
    /// not a future: the writer's wait then holds nothing of its own.
    pub fn poll_take(&self, into: &mut VecDeque<T>, cx: &Context<'_>) -> Poll<Result<(), Stop>> {
        let mut state = self.lock();
        match Self::take_locked(&mut state, into) {
            Err(stop) => Poll::Ready(Err(stop)),
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => {
                state.wait(cx, true);
                Poll::Pending
            }
        }
    }

    /// Like `poll_take`, without waiting: moves whatever is queued now (perhaps nothing).
    pub fn take_queued(&self, into: &mut VecDeque<T>) -> Result<(), Stop> {
        Self::take_locked(&mut self.lock(), into).map(|_| ())
    }

    fn take_locked(state: &mut State<T>, into: &mut VecDeque<T>) -> Result<bool, Stop> {
        if let Some(stop) = state.stop {
            return Err(stop);
        }
        if state.queue.is_empty() {
            return Ok(false);
        }
        if into.is_empty() {
            // The two buffers trade places, so neither side allocates in a steady stream.
            std::mem::swap(&mut state.queue, into);
        } else {
            into.extend(state.queue.drain(..));
            if state.queue.capacity() > KEEP_SLOTS {
                // After a burst: let the memory go rather than hold it for the socket's life.
                state.queue = VecDeque::new();
            }
        }
        Ok(true)
    }

    /// Ready once the socket must stop. Pushes do not wake a writer waiting here, so a
    /// writer blocked on a slow client, or pacing its writes, sleeps until it is done.
    pub fn poll_stopped(&self, cx: &Context<'_>) -> Poll<Stop> {
        let mut state = self.lock();
        match state.stop {
            Some(stop) => Poll::Ready(stop),
            None => {
                state.wait(cx, false);
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<R>(wait: impl FnOnce(&Context<'_>) -> Poll<R>, count: &Arc<Count>) -> Poll<R> {
        let waker = Waker::from(count.clone());
        wait(&Context::from_waker(&waker))
    }

    #[test]
    fn the_writer_takes_everything_queued_in_order_and_is_woken_by_a_push() {
        let outbox = Outbox::new(8);
        let wakes = Arc::new(Count::default());
        let mut taken = VecDeque::new();
        assert!(poll(|cx| outbox.poll_take(&mut taken, cx), &wakes).is_pending());
        assert_eq!(outbox.push(1), Pushed::Queued);
        assert_eq!(outbox.push(2), Pushed::Queued);
        // One wake-up for the first push; the writer is already due for the second.
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            poll(|cx| outbox.poll_take(&mut taken, cx), &wakes),
            Poll::Ready(Ok(()))
        );
        assert_eq!(outbox.push(3), Pushed::Queued);
        assert_eq!(outbox.take_queued(&mut taken), Ok(()));
        assert_eq!(taken, [1, 2, 3]);
    }

    #[test]
    fn a_writer_back_from_waiting_for_a_stop_is_woken_by_the_next_push() {
        let outbox = Outbox::new(8);
        let wakes = Arc::new(Count::default());
        let mut taken = VecDeque::new();
        assert!(poll(|cx| outbox.poll_stopped(cx), &wakes).is_pending());
        assert!(poll(|cx| outbox.poll_take(&mut taken, cx), &wakes).is_pending());
        outbox.push(1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_writer_waiting_for_a_stop_sleeps_through_pushes() {
        let outbox = Outbox::new(8);
        let wakes = Arc::new(Count::default());
        assert!(poll(|cx| outbox.poll_stopped(cx), &wakes).is_pending());
        outbox.push(1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        outbox.stop(Stop::Shutdown);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            poll(|cx| outbox.poll_stopped(cx), &wakes),
            Poll::Ready(Stop::Shutdown)
        );
    }

    #[test]
    fn a_full_queue_stops_the_socket_as_lagging_once() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(1), Pushed::Queued);
        assert_eq!(outbox.push(2), Pushed::Queued);
        assert_eq!(outbox.push(3), Pushed::Overflowed);
        assert_eq!(outbox.push(4), Pushed::Dropped);
        let mut taken = VecDeque::new();
        assert_eq!(outbox.take_queued(&mut taken), Err(Stop::Lagging));
        assert!(taken.is_empty());
        // Shutting down overrides it; nothing overrides a shutdown.
        outbox.stop(Stop::Shutdown);
        outbox.stop(Stop::Lagging);
        assert_eq!(outbox.take_queued(&mut taken), Err(Stop::Shutdown));
    }

    #[test]
    fn a_queue_emptied_after_a_burst_gives_its_slots_back() {
        let outbox = Outbox::new(1024);
        let mut taken = VecDeque::from([0]);
        for n in 0..1000 {
            outbox.push(n);
        }
        assert_eq!(outbox.take_queued(&mut taken), Ok(()));
        assert_eq!(taken.len(), 1001);
        assert_eq!(outbox.lock().queue.capacity(), 0);
    }

    #[test]
    fn a_closed_queue_keeps_nothing() {
        let outbox = Outbox::new(2);
        outbox.push(1);
        outbox.close();
        assert_eq!(outbox.push(2), Pushed::Dropped);
        let mut taken = VecDeque::new();
        assert_eq!(outbox.take_queued(&mut taken), Ok(()));
        assert!(taken.is_empty());
    }
}
