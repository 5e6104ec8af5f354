//! `send`: one message, its server ack, and with `--wait` its receipt.
//!
//! With `--file`, the file is uploaded first (`upload`, resumably) and the
//! message is a Content (`parley_proto::content`) holding its text and the
//! attachment.
//!
//! With `--per-device`, the message goes as one envelope per device, from
//! the device lists the profile keeps; a `DEVICES_CHANGED` answer fixes the
//! lists and the message is sent again once, with the same `client_msg_id`
//! (nothing was queued).

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::warn;

use super::devices::{fanout_for, remember_fanout};
use super::explain::{Notice, human_secs};
use super::inbox::{Inbox, close_quietly, load_seen, load_sent, show_receipt};
use super::output::{address, note, say};
use super::upload::upload;
use super::{Cli, CliError, Loaded, WaitFor};
use crate::phone::{looks_like_phone, normalize};
use crate::profile::{ProfileDir, SeenIds};
use crate::proto::content;
use crate::proto::limits::MAX_BODY_BYTES;
use crate::proto::v1::{Content, DeviceAddress, ErrorCode, ReceiptKind, SendError, server_frame};
use crate::receipts::{CheckedReceipt, ReceiptTracker, copy_recipient};
use crate::{ClientError, DevicesChanged, Fanout, Session, devices_changed};

pub(crate) struct SendOptions {
    /// `--file PATH`: upload it, and send a Content referring to it.
    pub file: Option<std::path::PathBuf>,
    pub wait: Option<WaitFor>,
    pub timeout: Duration,
    pub per_device: bool,
}

/// The recipient argument: a user id, never a phone number.
///
/// `u64::from_str` accepts a leading `+`, so `send +15550002222` would go to
/// the user with id 15550002222 (there is none): a phone number is refused
/// here, pointing at the exact `lookup` that finds the id.
pub(crate) fn parse_user_id(arg: &str, command: &str) -> Result<u64, CliError> {
    if looks_like_phone(arg) {
        let lookup = match normalize(arg) {
            Ok(phone) => format!("`{command} lookup {phone}`"),
            Err(_) => format!("`{command} lookup +<country code><number>`"),
        };
        return Err(CliError::new(format!(
            "{arg:?} is a phone number; send needs the user id of its owner: find it with {lookup}"
        )));
    }
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
        return arg.parse().map_err(|_| {
            CliError::new(format!(
                "{arg:?} is too large for a user id (at most {})",
                u64::MAX
            ))
        });
    }
    Err(CliError::new(format!(
        "{arg:?} is not a user id (a number, from `{command} lookup <phone>`)"
    )))
}

/// How far one message got: the ids with a DELIVERED or READ receipt from
/// its recipient so far.
#[derive(Debug, Default)]
struct Progress {
    delivered: HashSet<u64>,
    read: HashSet<u64>,
}

impl Progress {
    /// Counts only accepted ids: a receipt from anyone but the recipient
    /// does not make a message delivered or read.
    fn note(&mut self, checked: &CheckedReceipt) {
        let ids = checked.accepted.iter().copied();
        match ReceiptKind::try_from(checked.receipt.kind) {
            Ok(ReceiptKind::Delivered) => self.delivered.extend(ids),
            // Read implies delivered.
            Ok(ReceiptKind::Read) => {
                let ids: Vec<u64> = ids.collect();
                self.delivered.extend(ids.iter().copied());
                self.read.extend(ids);
            }
            _ => {}
        }
    }

    fn done(&self, message_id: Option<u64>, wait: Option<WaitFor>) -> bool {
        match (message_id, wait) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(id), Some(WaitFor::Delivered)) => self.delivered.contains(&id),
            (Some(id), Some(WaitFor::Read)) => self.read.contains(&id),
        }
    }
}

pub(crate) async fn send(
    cli: &Cli,
    dir: &ProfileDir,
    user_id: &str,
    text: Option<&str>,
    options: SendOptions,
) -> Result<(), CliError> {
    let to_user = parse_user_id(user_id, &dir.command())?;
    let text = text.unwrap_or_default();
    if text.len() > MAX_BODY_BYTES {
        return Err(CliError::new(format!(
            "the text is {} bytes; the limit is {MAX_BODY_BYTES}",
            text.len()
        )));
    }
    let loaded = Loaded::new(cli, dir)?;
    let explain = &loaded.explain;
    // The file goes first, before the session is opened: an upload may take
    // minutes, and a message must not refer to a file that is not there.
    let body = match &options.file {
        Some(path) => {
            let uploaded = upload(&loaded, dir, path).await?;
            let body = content::encode(&Content {
                text: text.to_string(),
                attachments: vec![uploaded.attachment],
            });
            if body.len() > MAX_BODY_BYTES {
                return Err(CliError::new(format!(
                    "the message with its attachment is {} bytes; the limit is {MAX_BODY_BYTES}: \
                     send a shorter text (the file {} is uploaded; sending again reuses nothing)",
                    body.len(),
                    uploaded.info.media_id
                )));
            }
            Bytes::from(body)
        }
        None => Bytes::from(text.as_bytes().to_vec()),
    };
    let own_user = loaded.profile.user_id;
    let mut fanout = if options.per_device {
        Some(fanout_for(&loaded, dir, to_user).await?)
    } else {
        None
    };
    let mut session = loaded.connect().await?;
    // Reserved (and saved) before the send: if this run dies after sending,
    // the next run must not reuse the id, or the server would answer it with
    // this message's ack and drop the new one.
    let client_msg_id = dir.take_client_msg_id()?;
    let deadline = Instant::now() + options.timeout;
    let mut tracker = ReceiptTracker::new(if options.wait.is_some() {
        load_sent(dir)
    } else {
        Default::default()
    });
    tracker.sending(client_msg_id, to_user);
    send_once(&mut session, client_msg_id, to_user, &body, fanout.as_ref())
        .await
        .map_err(|e| explain.client(e))?;
    // One resend after DEVICES_CHANGED: the fixed list is exactly what the
    // server asked for, so a second refusal means the devices changed again
    // meanwhile, and looping could go on as long as someone keeps linking.
    let mut resent = false;

    let mut inbox = Inbox {
        dir,
        explain,
        own_user,
        seen: if options.wait.is_some() {
            load_seen(dir)
        } else {
            SeenIds::default()
        },
        download: None,
    };
    let mut message_id = None;
    let mut progress = Progress::default();
    let mut last_notice = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let frame = match session.next_frame_timeout(remaining).await {
            Ok(frame) => frame,
            Err(ClientError::Timeout) => {
                close_quietly(session).await;
                return Err(timed_out(
                    options.timeout,
                    message_id,
                    options.wait,
                    &explain.command("listen"),
                ));
            }
            Err(ClientError::Closed { code, reason }) => {
                return Err(CliError::new(explain.closed(
                    code,
                    &reason,
                    last_notice.as_ref(),
                )));
            }
            Err(e) => return Err(explain.client(e)),
        };
        let decided = match frame.frame {
            Some(server_frame::Frame::Ack(ack)) if ack.client_msg_id == client_msg_id => {
                // Remembered before it is shown: a receipt is believed only
                // for messages on record.
                if let Err(e) = dir.record_sent(ack.message_id, to_user) {
                    warn!(error = %e, "cannot record the sent message; its receipts will be shown unchecked");
                }
                if let Some(fanout) = &fanout {
                    remember_fanout(dir, fanout, own_user);
                }
                say(&format!("✓ sent {}", ack.message_id))?;
                message_id = Some(ack.message_id);
                tracker.acked(&ack)
            }
            Some(server_frame::Frame::SendError(e)) if e.client_msg_id == client_msg_id => {
                let changed = devices_changed(&e);
                match (fanout.as_mut(), changed) {
                    (Some(fanout), Some(changed)) if !resent => {
                        if let Err(why) = fanout.apply(changed) {
                            close_quietly(session).await;
                            return Err(CliError::new(format!(
                                "send failed: DEVICES_CHANGED, and the server's lists cannot be used ({why}): \
                                 nothing was sent; run the same command again"
                            )));
                        }
                        note(&format!(
                            "the device list was out of date ({}); sending again",
                            describe(changed)
                        ));
                        remember_fanout(dir, fanout, own_user);
                        // The same send, still awaited by the tracker: a
                        // receipt held for its ack stays held.
                        send_once(&mut session, client_msg_id, to_user, &body, Some(fanout))
                            .await
                            .map_err(|e| explain.client(e))?;
                        resent = true;
                        Vec::new()
                    }
                    _ => {
                        close_quietly(session).await;
                        return Err(send_failed(&e, to_user, &explain.command("lookup")));
                    }
                }
            }
            // A copy of a message another device of this account sent: its
            // receipts may come here too, and are believed from its
            // recipient. The copy itself is left for `listen`.
            Some(server_frame::Frame::Deliver(deliver)) if options.wait.is_some() => {
                match copy_recipient(&deliver, own_user) {
                    Some(to) => tracker.copied(deliver.message_id, to),
                    None => Vec::new(),
                }
            }
            // Without --wait, receipts stay queued for `listen`.
            Some(server_frame::Frame::Receipt(receipt)) if options.wait.is_some() => {
                tracker.receipt(receipt)
            }
            Some(server_frame::Frame::Closing(c)) => {
                last_notice = Some(Notice::Closing(c.reason));
                Vec::new()
            }
            Some(server_frame::Frame::Error(e)) => {
                last_notice = Some(Notice::Error(e.code, e.reason));
                Vec::new()
            }
            // Deliveries and read-syncs are left unacknowledged: `listen`
            // shows them.
            _ => Vec::new(),
        };
        for checked in &decided {
            progress.note(checked);
            show_receipt(&mut session, &mut inbox, checked).await?;
        }
        if progress.done(message_id, options.wait) {
            close_quietly(session).await;
            return Ok(());
        }
    }
}

/// The message, with one body for all devices or one envelope per device.
async fn send_once(
    session: &mut Session,
    client_msg_id: u64,
    to_user: u64,
    body: &Bytes,
    fanout: Option<&Fanout>,
) -> Result<(), ClientError> {
    match fanout {
        Some(fanout) => {
            session
                .send_envelopes(client_msg_id, to_user, fanout.envelopes(body))
                .await
        }
        None => session.send(client_msg_id, to_user, body.clone()).await,
    }
}

/// `missing 42/421, 3/31; extra 42/429`.
fn describe(changed: DevicesChanged<'_>) -> String {
    let list = |addresses: &[DeviceAddress]| {
        addresses
            .iter()
            .map(|a| address(a.user_id, a.device_id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !changed.missing.is_empty() {
        parts.push(format!("missing {}", list(changed.missing)));
    }
    if !changed.extra.is_empty() {
        parts.push(format!("extra {}", list(changed.extra)));
    }
    parts.join("; ")
}

/// `send` ran out of time: what is known about the message, and where its
/// receipts will show up.
fn timed_out(
    timeout: Duration,
    message_id: Option<u64>,
    wait: Option<WaitFor>,
    listen: &str,
) -> CliError {
    let after = human_secs(timeout.as_secs());
    CliError::new(match (message_id, wait) {
        (None, _) => format!(
            "timed out after {after} waiting for the server's ack: the message may not have been stored (no ✓)"
        ),
        (Some(id), wait) => {
            let receipt = match wait {
                Some(WaitFor::Read) => "read receipt",
                _ => "delivered receipt",
            };
            format!(
                "timed out after {after} waiting for the {receipt}: message {id} was sent (✓); \
                 its receipts will arrive in `{listen}`"
            )
        }
    })
}

/// A `SendError`, with the fix for the common mistakes.
fn send_failed(e: &SendError, to_user: u64, lookup: &str) -> CliError {
    let code = ErrorCode::try_from(e.code).ok();
    match code {
        Some(ErrorCode::ClientMsgIdReused) => {
            return CliError::new(format!(
                "send failed: the server says this message's id ({}) was used before for another message \
                 (CLIENT_MSG_ID_REUSED): this profile's id counter went back (restored from a backup?); \
                 nothing was sent: run the same command again, it takes the next id",
                e.client_msg_id
            ));
        }
        Some(ErrorCode::DevicesChanged) => {
            return CliError::new(format!(
                "send failed: the devices of user {to_user} or of this account changed again while sending \
                 (DEVICES_CHANGED): nothing was sent; run the same command again"
            ));
        }
        _ => {}
    }
    if code == Some(ErrorCode::UnknownRecipient) {
        // A phone number typed without its `+` is a plausible user id to
        // the parser; say so when it has a phone number's length.
        let digits = to_user.to_string();
        let hint = if (8..=15).contains(&digits.len()) {
            format!(
                "; if {to_user} is a phone number, find its owner's user id with `{lookup} +{to_user}`"
            )
        } else {
            String::new()
        };
        return CliError::new(format!(
            "no user has the id {to_user} (UNKNOWN_RECIPIENT): find user ids with `{lookup} <phone>`{hint}"
        ));
    }
    let name = code.map(|c| c.as_str_name()).unwrap_or("UNKNOWN");
    let retry = if e.retry_after_ms > 0 {
        format!(" (retry after {} ms)", e.retry_after_ms)
    } else {
        String::new()
    };
    CliError::new(format!("send failed: {name}: {}{retry}", e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{Receipt, ServerAck};

    #[test]
    fn phone_numbers_are_not_user_ids() {
        let cmd = "parley-cli --profile alice";
        let err = parse_user_id("+15550002222", cmd).expect_err("a phone");
        assert!(
            err.to_string()
                .contains("`parley-cli --profile alice lookup +15550002222`"),
            "{err}"
        );
        let err = parse_user_id("+1 555-000-2222", cmd).expect_err("a phone");
        assert!(err.to_string().contains("lookup +15550002222`"), "{err}");
        let err = parse_user_id("+1", cmd).expect_err("a short phone");
        assert!(err.to_string().contains("lookup +<country code>"), "{err}");
        assert_eq!(
            parse_user_id("3948730036402321031", cmd),
            Ok(3948730036402321031)
        );
        assert!(parse_user_id("99999999999999999999", cmd).is_err());
        assert!(parse_user_id("bob", cmd).is_err());
        assert!(parse_user_id("", cmd).is_err());
        assert!(parse_user_id("-1", cmd).is_err());
    }

    #[test]
    fn unknown_recipient_points_to_lookup() {
        let e = SendError {
            client_msg_id: 1,
            code: ErrorCode::UnknownRecipient as i32,
            reason: "no such user".into(),
            retry_after_ms: 0,
            ..SendError::default()
        };
        let lookup = "parley-cli --profile alice lookup";
        let text = send_failed(&e, 15550002222, lookup).to_string();
        assert!(
            text.contains("`parley-cli --profile alice lookup <phone>`"),
            "{text}"
        );
        assert!(
            text.contains("`parley-cli --profile alice lookup +15550002222`"),
            "{text}"
        );
        let text = send_failed(&e, 3948730036402321031, lookup).to_string();
        assert!(
            !text.contains("if 3948730036402321031 is a phone number"),
            "{text}"
        );
        let full = SendError {
            code: ErrorCode::MailboxFull as i32,
            reason: "full".into(),
            retry_after_ms: 500,
            ..e
        };
        assert_eq!(
            send_failed(&full, 1, lookup).to_string(),
            "send failed: MAILBOX_FULL: full (retry after 500 ms)"
        );
        let reused = SendError {
            client_msg_id: 7,
            code: ErrorCode::ClientMsgIdReused as i32,
            ..full.clone()
        };
        let text = send_failed(&reused, 1, lookup).to_string();
        assert!(
            text.contains("(7)") && text.contains("run the same command again"),
            "{text}"
        );
        let changed = SendError {
            code: ErrorCode::DevicesChanged as i32,
            ..full
        };
        let text = send_failed(&changed, 42, lookup).to_string();
        assert!(
            text.contains("user 42") && text.contains("nothing was sent"),
            "{text}"
        );
    }

    #[test]
    fn a_stale_list_is_described_by_device() {
        let missing = [
            DeviceAddress {
                user_id: 42,
                device_id: 421,
            },
            DeviceAddress {
                user_id: 3,
                device_id: 31,
            },
        ];
        let extra = [DeviceAddress {
            user_id: 42,
            device_id: 429,
        }];
        assert_eq!(
            describe(DevicesChanged {
                missing: &missing,
                extra: &extra
            }),
            "missing 42/421, 3/31; extra 42/429"
        );
        assert_eq!(
            describe(DevicesChanged {
                missing: &[],
                extra: &extra
            }),
            "extra 42/429"
        );
    }

    #[test]
    fn timeouts_say_what_happened_to_the_message() {
        let listen = "parley-cli --profile alice listen";
        let acked = timed_out(
            Duration::from_secs(30),
            Some(77),
            Some(WaitFor::Read),
            listen,
        );
        let acked = acked.to_string();
        assert!(acked.contains("after 30 s"), "{acked}");
        assert!(acked.contains("read receipt"), "{acked}");
        assert!(acked.contains("message 77 was sent"), "{acked}");
        assert!(
            acked.contains("`parley-cli --profile alice listen`"),
            "{acked}"
        );
        let unacked = timed_out(Duration::from_secs(5), None, None, listen).to_string();
        assert!(unacked.contains("server's ack"), "{unacked}");
    }

    /// The wait ends on the recipient's receipt, even when it came before
    /// the ack, and never on someone else's.
    #[test]
    fn the_wait_ends_on_the_recipients_receipt_only() {
        const BOB: u64 = 2;
        const MALLORY: u64 = 3;
        let read = |receipt_id, from_user| Receipt {
            receipt_id,
            kind: ReceiptKind::Read as i32,
            from_user,
            message_ids: vec![500],
            timestamp_ms: 0,
            ..Receipt::default()
        };
        let mut tracker = ReceiptTracker::default();
        let mut progress = Progress::default();
        tracker.sending(7, BOB);
        let mut decided = tracker.receipt(read(1, MALLORY));
        decided.extend(tracker.receipt(read(2, BOB)));
        assert!(decided.is_empty(), "both held until the ack");
        assert!(!progress.done(None, Some(WaitFor::Read)));
        let decided = tracker.acked(&ServerAck {
            client_msg_id: 7,
            message_id: 500,
            timestamp_ms: 0,
        });
        assert_eq!(decided.len(), 2);
        progress.note(&decided[0]);
        assert!(
            !progress.done(Some(500), Some(WaitFor::Read)),
            "Mallory's is ignored"
        );
        progress.note(&decided[1]);
        assert!(progress.done(Some(500), Some(WaitFor::Read)));
        assert!(
            progress.done(Some(500), Some(WaitFor::Delivered)),
            "read implies delivered"
        );
    }
}
