//! The stable lines on stdout, and writing to the terminal.
//!
//! Lines are written one at a time and flushed, so a test or a script
//! reading them sees each as soon as it is true. A closed stdout (`listen |
//! head -1`) ends the command with an error instead of a panic, and before
//! the message is acknowledged, so the server delivers it again next time.

use std::io::Write;

use super::CliError;
use crate::DeviceInfo;
use crate::proto::content::{self, Body};
use crate::proto::v1::{Attachment, Deliver, ReadSync, Receipt, ReceiptKind, attachment};
use crate::receipts::copy_recipient;

/// Writes one line to stdout.
pub(crate) fn say(line: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| CliError::new(format!("cannot write to stdout ({e}); stopped")))
}

/// Writes one line to stderr: notes, warnings, prompts' companions. A
/// closed stderr is not worth failing a command for.
pub(crate) fn tell(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `warning: ...` on stderr.
pub(crate) fn warn_user(line: &str) {
    tell(&format!("warning: {line}"));
}

/// `note: ...` on stderr.
pub(crate) fn note(line: &str) {
    tell(&format!("note: {line}"));
}

/// A prompt on stderr, without a newline.
pub(crate) fn prompt(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{text}");
    let _ = err.flush();
}

/// `<user>/<device>`, or `<user>` when the device is not known (0: a
/// frame queued by a server that predates several devices).
pub(crate) fn address(user: u64, device: u64) -> String {
    if device == 0 {
        user.to_string()
    } else {
        format!("{user}/{device}")
    }
}

/// A message, the text last and on one line:
///
/// - from someone else: `<from_user>/<from_device> <message_id> <text>`;
/// - a copy of this account's own message (`from_user` is `own_user`: sent
///   from another of its devices, or to itself):
///   `<own_user>/<from_device> → <to_user> <message_id> <text>`.
///
/// The second word tells them apart (a message id is digits). The text of
/// a Content body is its `text` (its attachments get lines of their own,
/// [`attachment_line`]).
pub(crate) fn delivery_line(deliver: &Deliver, own_user: u64) -> String {
    let from = address(deliver.from_user, deliver.from_device);
    let text = shown_text(&deliver.body);
    match copy_recipient(deliver, own_user) {
        Some(to) => format!("{from} → {to} {} {text}", deliver.message_id),
        None => format!("{from} {} {text}", deliver.message_id),
    }
}

/// What a body shows as text: itself, a Content's text, or a note that
/// this client cannot read it.
pub(crate) fn shown_text(body: &[u8]) -> String {
    match content::decode(body) {
        Body::Text(text) => printable(text),
        Body::Content(content) => printable(content.text.as_bytes()),
        Body::Unsupported => UNSUPPORTED.to_string(),
    }
}

/// Shown for a body in a format newer than this client (or broken).
pub(crate) const UNSUPPORTED: &str = "[a message in a format this parley-cli cannot show]";

/// `attachment <message_id>/<n> <content_type> <size> bytes <file_name>`:
/// attachment `n` (from 1) of a message, the name last (it may hold
/// spaces, or be empty).
pub(crate) fn attachment_line(message_id: u64, n: usize, a: &Attachment) -> String {
    let kind = if a.content_type.is_empty() {
        "application/octet-stream"
    } else {
        a.content_type.as_str()
    };
    let line = format!(
        "attachment {message_id}/{n} {} {} bytes",
        printable(kind.as_bytes()),
        a.size
    );
    let name = match (&a.file_name, &a.location) {
        (name, _) if !name.is_empty() => printable(name.as_bytes()),
        (_, Some(attachment::Location::MediaId(id))) => printable(id.as_bytes()),
        _ => String::new(),
    };
    if name.is_empty() {
        line
    } else {
        format!("{line} {name}")
    }
}

/// `downloaded <message_id>/<n> <path>`: attachment `n` is saved there,
/// verified.
pub(crate) fn downloaded_line(message_id: u64, n: usize, path: &std::path::Path) -> String {
    format!(
        "downloaded {message_id}/{n} {}",
        printable(path.to_string_lossy().as_bytes())
    )
}

/// `✓✓ delivered <id>,<id> by <user>/<device>` or `✓✓ read ... by
/// <user>/<device>` (the recipient's device that stored or read them), for
/// the ids of `receipt` that are shown.
pub(crate) fn receipt_line(receipt: &Receipt, ids: &[u64]) -> String {
    format!(
        "✓✓ {} {} by {}",
        receipt_kind(receipt),
        id_list(ids),
        address(receipt.from_user, receipt.from_device)
    )
}

/// `read-sync <id>,<id> from <peer_user> on <own_user>/<by_device>`: this
/// account read these messages from `peer_user` on another of its devices.
pub(crate) fn read_sync_line(sync: &ReadSync, own_user: u64) -> String {
    format!(
        "read-sync {} from {} on {}",
        id_list(&sync.message_ids),
        sync.peer_user,
        address(own_user, sync.by_device)
    )
}

/// `<device_id> primary|linked this|other <last seen> <name>`: one device
/// of the account, the name last (it may hold spaces, or be empty). The
/// last-seen time is UTC, `2025-01-31T09:05:00Z`, or `never`.
pub(crate) fn device_line(device: &DeviceInfo, this_device: u64) -> String {
    let role = if device.primary { "primary" } else { "linked" };
    let this = if device.device_id == this_device {
        "this"
    } else {
        "other"
    };
    let seen = device
        .last_seen_at
        .map(utc)
        .unwrap_or_else(|| "never".into());
    let line = format!("{} {role} {this} {seen}", device.device_id);
    if device.name.is_empty() {
        line
    } else {
        format!("{line} {}", printable(device.name.as_bytes()))
    }
}

fn id_list(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    ids.join(",")
}

/// Unix seconds as an RFC 3339 UTC time, `2025-01-31T09:05:00Z`.
pub(crate) fn utc(unix_secs: u64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    i64::try_from(unix_secs)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|at| at.format(FORMAT).ok())
        .unwrap_or_else(|| format!("@{unix_secs}"))
}

pub(crate) fn receipt_kind(receipt: &Receipt) -> &'static str {
    match ReceiptKind::try_from(receipt.kind) {
        Ok(ReceiptKind::Delivered) => "delivered",
        Ok(ReceiptKind::Read) => "read",
        _ => "receipt",
    }
}

/// The body as UTF-8 (lossy) with control characters escaped, so a message
/// can never break the one-line-per-message output.
pub(crate) fn printable(body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len());
    for c in String::from_utf8_lossy(body).chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_lines_are_one_line() {
        let deliver = Deliver {
            message_id: 9,
            from_user: 42,
            timestamp_ms: 0,
            body: bytes::Bytes::from_static(b"hi\nthere\x1b[31m \xff"),
            ..Deliver::default()
        };
        assert_eq!(
            delivery_line(&deliver, 1),
            "42 9 hi\\nthere\\u{1b}[31m \u{fffd}",
            "no device from an older server"
        );
        let from_device = Deliver {
            from_device: 420,
            to_user: 1,
            ..deliver.clone()
        };
        assert_eq!(
            delivery_line(&from_device, 1),
            "42/420 9 hi\\nthere\\u{1b}[31m \u{fffd}"
        );
    }

    #[test]
    fn contents_show_their_text_and_attachments() {
        use crate::proto::v1::Content;
        let a = Attachment {
            location: Some(attachment::Location::MediaId("ab".repeat(16))),
            size: 1234,
            content_type: "image/jpeg".into(),
            file_name: "beach day.jpg".into(),
            ..Attachment::default()
        };
        let body = content::encode(&Content {
            text: "look\n!".into(),
            attachments: vec![a.clone()],
        });
        let deliver = Deliver {
            message_id: 9,
            from_user: 42,
            from_device: 420,
            to_user: 1,
            body: body.into(),
            ..Deliver::default()
        };
        assert_eq!(delivery_line(&deliver, 1), "42/420 9 look\\n!");
        assert_eq!(
            attachment_line(9, 1, &a),
            "attachment 9/1 image/jpeg 1234 bytes beach day.jpg"
        );
        let bare = Attachment {
            file_name: String::new(),
            content_type: String::new(),
            ..a
        };
        assert_eq!(
            attachment_line(9, 2, &bare),
            format!(
                "attachment 9/2 application/octet-stream 1234 bytes {}",
                "ab".repeat(16)
            )
        );
        assert_eq!(
            downloaded_line(9, 1, std::path::Path::new("/tmp/d/beach day.jpg")),
            "downloaded 9/1 /tmp/d/beach day.jpg"
        );
        assert_eq!(shown_text(&[0xff, 0xff]), UNSUPPORTED);
    }

    #[test]
    fn copies_of_own_messages_name_the_recipient() {
        let copy = Deliver {
            message_id: 9,
            from_user: 1,
            from_device: 10,
            to_user: 42,
            body: bytes::Bytes::from_static(b"7 look like an id"),
            ..Deliver::default()
        };
        assert_eq!(delivery_line(&copy, 1), "1/10 → 42 9 7 look like an id");
        // On the recipient's devices it is a plain message.
        assert_eq!(delivery_line(&copy, 42), "1/10 9 7 look like an id");
        let note_to_self = Deliver { to_user: 1, ..copy };
        assert_eq!(
            delivery_line(&note_to_self, 1),
            "1/10 → 1 9 7 look like an id"
        );
    }

    #[test]
    fn read_syncs_and_devices() {
        let sync = ReadSync {
            sync_id: 3,
            peer_user: 42,
            message_ids: vec![7, 8],
            by_device: 11,
            timestamp_ms: 0,
        };
        assert_eq!(read_sync_line(&sync, 1), "read-sync 7,8 from 42 on 1/11");
        let phone = DeviceInfo {
            device_id: 10,
            name: "Alice's phone".into(),
            primary: true,
            created_at: 0,
            last_seen_at: Some(1_738_314_300),
        };
        assert_eq!(
            device_line(&phone, 10),
            "10 primary this 2025-01-31T09:05:00Z Alice's phone"
        );
        let laptop = DeviceInfo {
            device_id: 11,
            name: String::new(),
            primary: false,
            created_at: 0,
            last_seen_at: None,
        };
        assert_eq!(device_line(&laptop, 10), "11 linked other never");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn receipt_lines() {
        let receipt = Receipt {
            receipt_id: 1,
            kind: ReceiptKind::Read as i32,
            from_user: 7,
            message_ids: vec![3, 4],
            timestamp_ms: 0,
            ..Receipt::default()
        };
        assert_eq!(receipt_line(&receipt, &[3, 4]), "✓✓ read 3,4 by 7");
        let from_device = Receipt {
            from_device: 70,
            ..receipt.clone()
        };
        assert_eq!(receipt_line(&from_device, &[3]), "✓✓ read 3 by 7/70");
        let receipt = Receipt {
            kind: ReceiptKind::Delivered as i32,
            ..receipt
        };
        assert_eq!(receipt_line(&receipt, &[4]), "✓✓ delivered 4 by 7");
    }
}
