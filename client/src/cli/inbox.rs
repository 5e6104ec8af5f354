//! What arrives in a session, shown once and then acknowledged: deliveries
//! (copies of this account's own messages among them), receipts and
//! read-syncs, for `listen` and `send --wait`.

use tracing::{debug, warn};

use super::CliError;
use super::download::Downloader;
use super::output::{
    attachment_line, delivery_line, downloaded_line, read_sync_line, receipt_kind, receipt_line,
    say, warn_user,
};
use crate::Session;
use crate::profile::{ProfileDir, SeenIds};
use crate::proto::content::{self, Body};
use crate::proto::v1::{Deliver, ReadSync};
use crate::receipts::{CheckedReceipt, SentMessages, copy_recipient};

/// What a session shows and remembers: whose device this is, and the
/// profile's records of what was shown and sent.
pub(crate) struct Inbox<'a> {
    pub dir: &'a ProfileDir,
    pub explain: &'a super::Explain,
    /// This device's user: a delivery from it is a copy of the account's
    /// own message, and a receipt from it is not the recipient's.
    pub own_user: u64,
    pub seen: SeenIds,
    /// `listen --download DIR`: where attachments go; `None` shows them
    /// only.
    pub download: Option<Downloader>,
}

/// Shows a delivered message once, then acknowledges it.
///
/// The order matters: shown, then remembered as seen, then acked. If this
/// process dies before the ack, the server redelivers and `seen.json` stops
/// it being shown twice; the ack is re-sent for redeliveries because the
/// first one evidently did not arrive.
///
/// A message whose body is a Content gets one line per attachment after
/// its own, and with `--download` each attachment is downloaded (and a line
/// says where it is) before the message is remembered as seen and acked:
/// a `listen` killed during a download shows the message again next time,
/// and downloads it then.
///
/// A copy of this account's own message (sent from another of its devices)
/// is recorded in `sent` (and `sent.json`) before anything else, so that
/// its receipts, which come after it, are believed from its recipient; it
/// is never marked read (its reader is its recipient, not this account).
pub(crate) async fn show_delivery(
    session: &mut Session,
    inbox: &mut Inbox<'_>,
    sent: &mut SentMessages,
    deliver: &Deliver,
    read: bool,
) -> Result<(), CliError> {
    let copy = copy_recipient(deliver, inbox.own_user);
    if let Some(to_user) = copy {
        sent.insert(deliver.message_id, to_user);
        if let Err(e) = inbox.dir.record_sent(deliver.message_id, to_user) {
            warn!(error = %e, "cannot record a copy of this account's message; its receipts will be shown unchecked by later runs");
        }
    }
    let first_time = !inbox.seen.contains_message(deliver.message_id);
    if first_time {
        say(&delivery_line(deliver, inbox.own_user))?;
        if let Body::Content(content) = content::decode(&deliver.body) {
            for (i, attachment) in content.attachments.iter().enumerate() {
                let n = i + 1;
                say(&attachment_line(deliver.message_id, n, attachment))?;
                let Some(downloader) = &inbox.download else {
                    continue;
                };
                match downloader
                    .fetch(session, deliver.message_id, n, attachment)
                    .await
                {
                    Ok(path) => say(&downloaded_line(deliver.message_id, n, &path))?,
                    Err(why) => warn_user(&format!(
                        "attachment {}/{n} not downloaded: {why}",
                        deliver.message_id
                    )),
                }
            }
        }
        inbox.seen.insert_message(deliver.message_id);
        save_seen(inbox.dir, &inbox.seen);
    }
    session
        .ack_delivery(vec![deliver.message_id])
        .await
        .map_err(|e| inbox.explain.client(e))?;
    if read && first_time && copy.is_none() {
        session
            .mark_read(deliver.from_user, vec![deliver.message_id])
            .await
            .map_err(|e| inbox.explain.client(e))?;
    }
    Ok(())
}

/// Shows a read-sync once (de-duplicated by `sync_id`, which is in the
/// receipts' id space), then acknowledges it like a receipt.
pub(crate) async fn show_read_sync(
    session: &mut Session,
    inbox: &mut Inbox<'_>,
    sync: &ReadSync,
) -> Result<(), CliError> {
    if inbox.seen.insert_receipt(sync.sync_id) {
        say(&read_sync_line(sync, inbox.own_user))?;
        save_seen(inbox.dir, &inbox.seen);
    }
    session
        .ack_receipts(vec![sync.sync_id])
        .await
        .map_err(|e| inbox.explain.client(e))
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
///
/// Ids rejected because the receipt comes from this account's own device
/// (one that stored its copy of a message the account sent to someone
/// else) are dropped quietly: that is not a forgery, and not the
/// recipient's checkmark either. Any other user's are warned about.
pub(crate) async fn show_receipt(
    session: &mut Session,
    inbox: &mut Inbox<'_>,
    checked: &CheckedReceipt,
) -> Result<(), CliError> {
    let receipt = &checked.receipt;
    if !checked.rejected.is_empty() {
        if receipt.from_user == inbox.own_user {
            debug!(
                from_device = receipt.from_device,
                message_ids = ?checked.rejected,
                "ignoring a {} receipt from this account's own device",
                receipt_kind(receipt)
            );
        } else {
            warn!(
                from_user = receipt.from_user,
                message_ids = ?checked.rejected,
                "ignoring a {} receipt: those messages were sent to another user",
                receipt_kind(receipt)
            );
        }
    }
    if !checked.unknown.is_empty() {
        debug!(
            from_user = receipt.from_user,
            message_ids = ?checked.unknown,
            "receipt for messages this profile has no record of; shown unchecked"
        );
    }
    let ids = shown_ids(checked);
    if !ids.is_empty() && inbox.seen.insert_receipt(receipt.receipt_id) {
        say(&receipt_line(receipt, &ids))?;
        save_seen(inbox.dir, &inbox.seen);
    }
    session
        .ack_receipts(vec![receipt.receipt_id])
        .await
        .map_err(|e| inbox.explain.client(e))
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
                ..Receipt::default()
            },
            accepted: vec![12],
            rejected: vec![10],
            unknown: vec![11],
        };
        assert_eq!(shown_ids(&checked), [11, 12]);
    }
}
