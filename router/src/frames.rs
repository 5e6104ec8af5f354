//! The server frames the router queues, encoded once when they are queued.
//!
//! A queued entry keeps its frame already encoded: a delivery that is sent
//! again after a reconnect costs no re-encoding, and the gateway writes the
//! bytes as they are.

use bytes::Bytes;
use parley_proto::v1::{Deliver, Receipt, ReceiptKind, ServerFrame, server_frame};
use prost::Message;

use crate::UserId;

fn encode(frame: server_frame::Frame) -> Bytes {
    Bytes::from(ServerFrame { frame: Some(frame) }.encode_to_vec())
}

pub(crate) fn deliver(message_id: u64, from: UserId, timestamp_ms: u64, body: Bytes) -> Bytes {
    encode(server_frame::Frame::Deliver(Deliver {
        message_id,
        from_user: from,
        timestamp_ms,
        body,
    }))
}

pub(crate) fn receipt(
    receipt_id: u64,
    kind: ReceiptKind,
    from: UserId,
    message_ids: Vec<u64>,
    timestamp_ms: u64,
) -> Bytes {
    encode(server_frame::Frame::Receipt(Receipt {
        receipt_id,
        kind: kind.into(),
        from_user: from,
        message_ids,
        timestamp_ms,
    }))
}

pub(crate) fn queue_empty() -> Bytes {
    encode(server_frame::Frame::QueueEmpty(
        parley_proto::v1::QueueEmpty {},
    ))
}
