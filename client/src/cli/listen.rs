//! `listen`: show what arrives, acknowledge it, until told to stop.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tracing::warn;

use super::explain::Notice;
use super::inbox::{close_quietly, load_seen, load_sent, show_delivery, show_receipt};
use super::{Cli, CliError, Loaded};
use crate::ClientError;
use crate::profile::ProfileDir;
use crate::proto::v1::{ServerFrame, server_frame};
use crate::receipts::check;

pub(crate) struct ListenOptions {
    pub read: bool,
    pub exit_on_empty: bool,
    pub timeout: Option<Duration>,
}

pub(crate) async fn listen(
    cli: &Cli,
    dir: &ProfileDir,
    options: ListenOptions,
) -> Result<(), CliError> {
    let loaded = Loaded::new(cli, dir)?;
    let explain = &loaded.explain;
    let mut session = loaded.connect().await?;
    let mut seen = load_seen(dir);
    let mut sent = load_sent(dir);
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut last_notice = None;
    loop {
        // `next_frame` is cancel-safe, so losing this race to a signal or
        // the deadline drops no frame; it also sends the keepalive pings.
        let frame = tokio::select! {
            () = &mut shutdown => {
                close_quietly(session).await;
                return Ok(());
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                close_quietly(session).await;
                if options.exit_on_empty {
                    return Err(CliError::new("timed out before all queued messages arrived"));
                }
                return Ok(());
            }
            frame = session.next_frame() => frame,
        };
        let frame: ServerFrame = match frame {
            Ok(frame) => frame,
            Err(ClientError::Closed { code, reason }) => {
                return Err(CliError::new(explain.closed(
                    code,
                    &reason,
                    last_notice.as_ref(),
                )));
            }
            Err(e) => return Err(explain.client(e)),
        };
        match frame.frame {
            Some(server_frame::Frame::Deliver(deliver)) => {
                show_delivery(
                    &mut session,
                    &mut seen,
                    dir,
                    &deliver,
                    options.read,
                    explain,
                )
                .await?;
            }
            Some(server_frame::Frame::Receipt(receipt)) => {
                let mut checked = check(&sent, receipt);
                if !checked.unknown.is_empty() {
                    // A `send` of this profile may have recorded messages
                    // since this run started.
                    if let Ok(fresh) = dir.load_sent() {
                        sent = fresh;
                        checked = check(&sent, checked.receipt);
                    }
                }
                show_receipt(&mut session, &mut seen, dir, &checked, explain).await?;
            }
            Some(server_frame::Frame::QueueEmpty(_)) if options.exit_on_empty => {
                close_quietly(session).await;
                return Ok(());
            }
            Some(server_frame::Frame::Closing(c)) => last_notice = Some(Notice::Closing(c.reason)),
            Some(server_frame::Frame::Error(e)) => {
                last_notice = Some(Notice::Error(e.code, e.reason));
            }
            // QueueEmpty without --exit-on-empty changes nothing; acks and
            // send errors answer sends, and `listen` makes none.
            _ => {}
        }
    }
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
