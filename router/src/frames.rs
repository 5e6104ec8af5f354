//! The server frames the router queues, encoded once when they are queued.
//!
//! A queued entry keeps its frame already encoded: a delivery that is sent
//! again after a reconnect costs no re-encoding, and the gateway writes the
//! bytes as they are.

use bytes::Bytes;
use parley_proto::v1::{Deliver, ReadSync, Receipt, ReceiptKind, ServerFrame, server_frame};
use prost::Message;

use crate::{Device, DeviceId, UserId};

/// The most bytes of encoded message ids in one receipt. A receipt must fit
/// the frame limit that the phone receiving it enforces; a phone's
/// `DeliveryAck` or `MarkRead` may carry a whole frame of ids, and a receipt
/// adds up to 41 bytes of its own fields, so ids are split into runs that
/// leave the same 1 KiB of room as a message body: one frame's ids make at
/// most two receipts. (Without it, one `MarkRead` at the frame limit queued
/// a receipt a few bytes over it, which the recipient could never receive:
/// every session of theirs broke on it, again on each reconnect.)
const MAX_RECEIPT_IDS_BYTES: usize = parley_proto::limits::MAX_FRAME_BYTES - 1024;

/// Splits `ids` into runs of at most [`MAX_RECEIPT_IDS_BYTES`] encoded, one
/// receipt each. Nearly always one run.
pub(crate) fn receipt_runs(ids: &[u64]) -> impl Iterator<Item = &[u64]> {
    let mut rest = ids;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let end = rest
            .iter()
            .position(|&id| {
                bytes += prost::encoding::encoded_len_varint(id);
                bytes > MAX_RECEIPT_IDS_BYTES
            })
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}

fn encode(frame: server_frame::Frame) -> Bytes {
    Bytes::from(ServerFrame { frame: Some(frame) }.encode_to_vec())
}

/// A message from `from` to `to`. The same frame goes to every device of
/// the recipient and to the sender's other devices (which tell a copy of
/// their own account's message by `from_user`), so it is encoded once.
pub(crate) fn deliver(
    message_id: u64,
    from: Device,
    to: UserId,
    timestamp_ms: u64,
    body: Bytes,
) -> Bytes {
    encode(server_frame::Frame::Deliver(Deliver {
        message_id,
        from_user: from.user,
        timestamp_ms,
        body,
        from_device: from.device,
        to_user: to,
    }))
}

/// A receipt made by `by` (the recipient's device that received or read).
pub(crate) fn receipt(
    receipt_id: u64,
    kind: ReceiptKind,
    by: Device,
    message_ids: Vec<u64>,
    timestamp_ms: u64,
) -> Bytes {
    encode(server_frame::Frame::Receipt(Receipt {
        receipt_id,
        kind: kind.into(),
        from_user: by.user,
        message_ids,
        timestamp_ms,
        from_device: by.device,
    }))
}

/// This account read `message_ids` from `peer` on its device `by_device`.
pub(crate) fn read_sync(
    sync_id: u64,
    peer: UserId,
    message_ids: Vec<u64>,
    by_device: DeviceId,
    timestamp_ms: u64,
) -> Bytes {
    encode(server_frame::Frame::ReadSync(ReadSync {
        sync_id,
        peer_user: peer,
        message_ids,
        by_device,
        timestamp_ms,
    }))
}

/// A `Deliver` frame of the one-device release, with `to_user` (the
/// recipient it was queued for) filled in; other frames as they are.
pub(crate) fn upgraded(frame: &[u8], to: UserId) -> Bytes {
    match ServerFrame::decode(frame) {
        Ok(ServerFrame {
            frame: Some(server_frame::Frame::Deliver(mut deliver)),
        }) => {
            deliver.to_user = to;
            encode(server_frame::Frame::Deliver(deliver))
        }
        _ => Bytes::copy_from_slice(frame),
    }
}

pub(crate) fn queue_empty() -> Bytes {
    encode(server_frame::Frame::QueueEmpty(
        parley_proto::v1::QueueEmpty {},
    ))
}

#[cfg(test)]
mod tests {
    use parley_proto::limits::MAX_FRAME_BYTES;

    use super::*;

    fn runs(ids: &[u64]) -> Vec<usize> {
        receipt_runs(ids).map(<[u64]>::len).collect()
    }

    #[test]
    fn ids_are_split_only_past_what_a_receipt_can_carry() {
        assert!(runs(&[]).is_empty());
        assert_eq!(runs(&[7, 8, 9]), [3]);
        // One byte per id below 128.
        assert_eq!(
            runs(&vec![1; MAX_RECEIPT_IDS_BYTES]),
            [MAX_RECEIPT_IDS_BYTES]
        );
        assert_eq!(
            runs(&vec![1; MAX_RECEIPT_IDS_BYTES + 1]),
            [MAX_RECEIPT_IDS_BYTES, 1]
        );
        // Ten bytes per id at u64::MAX; the runs keep every id, in order.
        let big: Vec<u64> = (0..10_000).map(|i| u64::MAX - i).collect();
        let split: Vec<&[u64]> = receipt_runs(&big).collect();
        assert_eq!(split.len(), 2);
        assert_eq!(split.concat(), big);
    }

    #[test]
    fn a_receipt_of_the_largest_run_fits_a_frame() {
        // The largest ids, in the largest run, with every other field at its
        // widest.
        let ids: Vec<u64> = vec![u64::MAX; MAX_RECEIPT_IDS_BYTES / 10];
        let run = receipt_runs(&ids).next().expect("a run");
        assert_eq!(run.len(), ids.len());
        let frame = receipt(
            u64::MAX,
            ReceiptKind::Read,
            Device::new(u64::MAX, u64::MAX),
            run.to_vec(),
            u64::MAX,
        );
        assert!(frame.len() <= MAX_FRAME_BYTES);
        let frame = read_sync(u64::MAX, u64::MAX, run.to_vec(), u64::MAX, u64::MAX);
        assert!(frame.len() <= MAX_FRAME_BYTES);
    }
}
