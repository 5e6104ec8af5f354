//! What arrives in a session, shown once and then acknowledged: deliveries
//! and receipts, for `listen` and `send --wait`.

use tracing::{debug, warn};

use super::CliError;
use super::output::{delivery_line, receipt_kind, receipt_line, say};
use crate::Session;
use crate::profile::{ProfileDir, SeenIds};
use crate::proto::v1::Deliver;
use crate::receipts::{CheckedReceipt, SentMessages};

/// Shows a delivered message once, then acknowledges it.
///
/// The order matters: shown, then remembered as seen, then acked. If this
/// process dies before the ack, the server redelivers and `seen.json` stops
/// it being shown twice; the ack is re-sent for redeliveries because the
/// first one evidently did not arrive.
pub(crate) async fn show_delivery(
    session: &mut Session,
    seen: &mut SeenIds,
    dir: &ProfileDir,
    deliver: &Deliver,
    read: bool,
    explain: &super::Explain,
) -> Result<(), CliError> {
    let first_time = seen.insert_message(deliver.message_id);
    if first_time {
        say(&delivery_line(deliver))?;
        save_seen(dir, seen);
    }
    session
        .ack_delivery(vec![deliver.message_id])
        .await
        .map_err(|e| explain.client(e))?;
    if read && first_time {
        session
            .mark_read(deliver.from_user, vec![deliver.message_id])
            .await
            .map_err(|e| explain.client(e))?;
    }
    Ok(())
}

/// The ids of a checked receipt that are shown: those from the message's
/// recipient, and those this profile has no record of (sent before it kept
/// records, or forgotten since), in the receipt's order. Ids of messages
/// sent to someone else are left out.
pub(crate) fn shown_ids(checked: &CheckedReceipt) -> Vec<u64> {
    checked
        .receipt
        .message_ids
        .iter()
        .copied()
        .filter(|id| !checked.rejected.contains(id))
        .collect()
}

/// Shows a decided receipt once (de-duplicated by receipt id), then
/// acknowledges it, whatever was shown: an unacknowledged receipt, even an
/// ignored one, would come back at every session.
pub(crate) async fn show_receipt(
    session: &mut Session,
    seen: &mut SeenIds,
    dir: &ProfileDir,
    checked: &CheckedReceipt,
    explain: &super::Explain,
) -> Result<(), CliError> {
    let receipt = &checked.receipt;
    if !checked.rejected.is_empty() {
        warn!(
            from_user = receipt.from_user,
            message_ids = ?checked.rejected,
            "ignoring a {} receipt: those messages were sent to another user",
            receipt_kind(receipt)
        );
    }
    if !checked.unknown.is_empty() {
        debug!(
            from_user = receipt.from_user,
            message_ids = ?checked.unknown,
            "receipt for messages this profile has no record of; shown unchecked"
        );
    }
    let ids = shown_ids(checked);
    if !ids.is_empty() && seen.insert_receipt(receipt.receipt_id) {
        say(&receipt_line(receipt, &ids))?;
        save_seen(dir, seen);
    }
    session
        .ack_receipts(vec![receipt.receipt_id])
        .await
        .map_err(|e| explain.client(e))
}

/// The seen-ids store; a damaged one is replaced rather than blocking
/// `listen` (at worst a redelivered message is shown again).
pub(crate) fn load_seen(dir: &ProfileDir) -> SeenIds {
    dir.load_seen().unwrap_or_else(|e| {
        warn!(error = %e, "starting with an empty seen-ids store");
        SeenIds::default()
    })
}

pub(crate) fn save_seen(dir: &ProfileDir, seen: &SeenIds) {
    if let Err(e) = dir.save_seen(seen) {
        warn!(error = %e, "cannot save seen ids; a redelivery may be shown twice");
    }
}

/// The sent-messages record; a damaged one is replaced (receipts for the
/// messages it held are then shown unchecked).
pub(crate) fn load_sent(dir: &ProfileDir) -> SentMessages {
    dir.load_sent().unwrap_or_else(|e| {
        warn!(error = %e, "starting with an empty record of sent messages");
        SentMessages::default()
    })
}

/// Clean close for a finished command; a server that does not answer the
/// close in time changes nothing for the user.
pub(crate) async fn close_quietly(session: Session) {
    if let Err(e) = session.close().await {
        debug!(error = %e, "closing the session");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{Receipt, ReceiptKind};

    #[test]
    fn rejected_ids_are_not_shown() {
        let checked = CheckedReceipt {
            receipt: Receipt {
                receipt_id: 1,
                kind: ReceiptKind::Read as i32,
                from_user: 3,
                message_ids: vec![10, 11, 12],
                timestamp_ms: 0,
            },
            accepted: vec![12],
            rejected: vec![10],
            unknown: vec![11],
        };
        assert_eq!(shown_ids(&checked), [11, 12]);
    }
}
