//! The stable lines on stdout, and writing to the terminal.
//!
//! Lines are written one at a time and flushed, so a test or a script
//! reading them sees each as soon as it is true. A closed stdout (`listen |
//! head -1`) ends the command with an error instead of a panic, and before
//! the message is acknowledged, so the server delivers it again next time.

use std::io::Write;

use super::CliError;
use crate::proto::v1::{Deliver, Receipt, ReceiptKind};

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

/// `<from_user> <message_id> <text>`, the text on one line.
pub(crate) fn delivery_line(deliver: &Deliver) -> String {
    format!(
        "{} {} {}",
        deliver.from_user,
        deliver.message_id,
        printable(&deliver.body)
    )
}

/// `✓✓ delivered <id>,<id> by <user>` or `✓✓ read <id>,<id> by <user>`, for
/// the ids of `receipt` that are shown.
pub(crate) fn receipt_line(receipt: &Receipt, ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    format!(
        "✓✓ {} {} by {}",
        receipt_kind(receipt),
        ids.join(","),
        receipt.from_user
    )
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
        };
        assert_eq!(
            delivery_line(&deliver),
            "42 9 hi\\nthere\\u{1b}[31m \u{fffd}"
        );
    }

    #[test]
    fn receipt_lines() {
        let receipt = Receipt {
            receipt_id: 1,
            kind: ReceiptKind::Read as i32,
            from_user: 7,
            message_ids: vec![3, 4],
            timestamp_ms: 0,
        };
        assert_eq!(receipt_line(&receipt, &[3, 4]), "✓✓ read 3,4 by 7");
        let receipt = Receipt {
            kind: ReceiptKind::Delivered as i32,
            ..receipt
        };
        assert_eq!(receipt_line(&receipt, &[4]), "✓✓ delivered 4 by 7");
    }
}
