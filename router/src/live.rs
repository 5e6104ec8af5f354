//! A device's live session, as every backend holds it: the delivery
//! window, the in-flight count, the queue-empty marker, and the pump that
//! writes queued frames to the session's channel.
//!
//! What is stored (the device's queue, in order) is the backend's, behind
//! [`Backlog`]; this module only decides what of it goes to the session,
//! and when. The first [`Live::in_flight`] entries of the backlog have been
//! pushed to the session and not acknowledged; the rest wait for room in
//! the window. A new session starts again from the front, so whatever the
//! previous session did not acknowledge is delivered again.
//!
//! Nothing here locks or waits: the backend holds whatever lock guards the
//! backlog, and pushing to a session is a non-blocking channel send: the
//! window bounds what a session's channel holds (see [`Live::channel`]).

use std::pin::Pin;

use bytes::Bytes;
use futures_channel::mpsc;
use futures_core::Stream;
use parley_proto::v1::CloseReason;
use tokio::sync::oneshot;

use crate::{Attached, SessionId};

/// A device's queue as the live session sees it: entries in delivery order.
pub trait Backlog {
    /// The frame of the entry at `index`, if it may be pushed now (a backend
    /// may hold back an entry that is not yet stored durably). The first
    /// entry that may not holds back everything after it, so order is kept.
    fn deliverable(&self, index: usize) -> Option<&Bytes>;
}

/// What the session is told when everything queued at attach has gone out.
fn queue_empty() -> Bytes {
    crate::frames::queue_empty()
}

/// The router's end of a live session.
#[derive(Debug)]
pub struct Live {
    id: SessionId,
    frames: mpsc::UnboundedSender<Bytes>,
    /// Taken when the router closes the session.
    close: Option<oneshot::Sender<CloseReason>>,
    /// The first `in_flight` backlog entries have been pushed and not
    /// acknowledged. At most the window.
    in_flight: usize,
    /// Send the queue-empty marker once `in_flight` reaches this position:
    /// the entries queued when the session attached. `None`: sent.
    marker: Option<usize>,
}

impl Live {
    /// A session's channel and its router end. The channel holds what was
    /// pushed and not yet written, bounded by [`Live::push`] at the window
    /// and the queue-empty marker: the router pushes no more than `window`
    /// entries that are not acknowledged, so the bound is never reached by
    /// a session that works; past it the session is dropped (its entries
    /// stay queued for its next session). The channel is futures-channel's
    /// unbounded one under that check because it allocates per frame and
    /// nothing at rest (tokio's bounded channel keeps a 32-slot block, 1
    /// KB, in every idle session), and a push never waits.
    pub fn channel(id: SessionId, queued: usize) -> (Live, Attached) {
        let (frames_tx, frames) = mpsc::unbounded();
        let (close_tx, closed) = oneshot::channel();
        let live = Live {
            id,
            frames: frames_tx,
            close: Some(close_tx),
            in_flight: 0,
            marker: Some(queued),
        };
        let frames = Frames(frames);
        (live, Attached { id, frames, closed })
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Entries pushed and not yet acknowledged: the front of the backlog.
    /// Acknowledgements only count for these (anything else was never sent
    /// to this session, and cannot have been acknowledged by it).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Pushes backlog entries until the window is full, then the marker
    /// once the backlog queued at attach has gone out. Returns `false` when
    /// the session is gone (its channel closed or full): drop it.
    pub fn pump(&mut self, backlog: &impl Backlog, window: usize) -> bool {
        while self.in_flight < window {
            let Some(frame) = backlog.deliverable(self.in_flight) else {
                break;
            };
            if !self.push(frame.clone(), window) {
                return false;
            }
            self.in_flight += 1;
        }
        if let Some(at) = self.marker
            && self.in_flight >= at
        {
            self.marker = None;
            if !self.push(queue_empty(), window) {
                return false;
            }
        }
        true
    }

    /// Sends `frame` to the session unless its channel already holds
    /// `window + 1` frames (the window and the marker: the channel's
    /// bound). Full or closed, the session is gone: `false`.
    fn push(&self, frame: Bytes, window: usize) -> bool {
        self.frames.len() <= window && self.frames.unbounded_send(frame).is_ok()
    }

    /// The backlog entry at `index` is gone (acknowledged or expired).
    pub fn removed(&mut self, index: usize) {
        if index < self.in_flight {
            self.in_flight -= 1;
        }
        if let Some(at) = self.marker.as_mut()
            && index < *at
        {
            *at -= 1;
        }
    }

    /// Ends the session with `reason` (it may already be gone; then no one
    /// is told).
    pub fn close(mut self, reason: CloseReason) {
        if let Some(close) = self.close.take() {
            let _ = close.send(reason);
        }
    }
}

/// The frames a session is to write (deliveries, receipts, read-syncs, the
/// queue-empty marker), in order, as its router end pushes them.
#[derive(Debug)]
pub struct Frames(mpsc::UnboundedReceiver<Bytes>);

impl Frames {
    /// The next frame; `None` once the router has let go of the session.
    pub async fn recv(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| Pin::new(&mut self.0).poll_next(cx)).await
    }

    /// The next frame if one is waiting now.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        self.0.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Queue(Vec<(Bytes, bool)>);

    impl Backlog for Queue {
        fn deliverable(&self, index: usize) -> Option<&Bytes> {
            self.0.get(index).filter(|(_, ok)| *ok).map(|(f, _)| f)
        }
    }

    fn drain(attached: &mut Attached) -> Vec<Bytes> {
        std::iter::from_fn(|| attached.frames.try_recv()).collect()
    }

    #[test]
    fn the_window_bounds_pushes_and_the_marker_follows_the_backlog() {
        let entries = (0..5u8).map(|i| (Bytes::from(vec![i]), true)).collect();
        let mut queue = Queue(entries);
        let (mut live, mut attached) = Live::channel(SessionId(1), queue.0.len());
        assert!(live.pump(&queue, 2));
        assert_eq!(
            drain(&mut attached),
            [Bytes::from(vec![0]), Bytes::from(vec![1])]
        );
        // The first is acknowledged: one more goes, no marker yet.
        queue.0.remove(0);
        live.removed(0);
        assert!(live.pump(&queue, 2));
        assert_eq!(drain(&mut attached), [Bytes::from(vec![2])]);
        for _ in 0..2 {
            queue.0.remove(0);
            live.removed(0);
        }
        assert!(live.pump(&queue, 2));
        let frames = drain(&mut attached);
        assert_eq!(frames[..2], [Bytes::from(vec![3]), Bytes::from(vec![4])]);
        assert_eq!(frames[2], queue_empty());
    }

    #[test]
    fn an_entry_not_yet_deliverable_holds_back_the_rest() {
        let mut queue = Queue(vec![
            (Bytes::from_static(b"a"), false),
            (Bytes::from_static(b"b"), true),
        ]);
        let (mut live, mut attached) = Live::channel(SessionId(1), queue.0.len());
        assert!(live.pump(&queue, 8));
        assert!(drain(&mut attached).is_empty());
        queue.0[0].1 = true;
        assert!(live.pump(&queue, 8));
        assert_eq!(drain(&mut attached).len(), 3);
    }

    #[test]
    fn a_full_channel_reports_the_session_gone() {
        let (live, attached) = Live::channel(SessionId(1), 0);
        for i in 0..3u8 {
            assert!(live.push(Bytes::from(vec![i]), 2), "frame {i} fits");
        }
        assert!(
            !live.push(Bytes::from_static(b"over"), 2),
            "window 2 + marker"
        );
        drop(attached);
    }

    #[test]
    fn a_closed_channel_reports_the_session_gone() {
        let queue = Queue(vec![(Bytes::from_static(b"a"), true)]);
        let (mut live, attached) = Live::channel(SessionId(1), 0);
        drop(attached);
        assert!(!live.pump(&queue, 8));
    }
}
