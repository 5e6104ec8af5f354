//! `listen`: show what arrives, acknowledge it, until told to stop.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tracing::warn;

use super::download::Downloader;
use super::explain::Notice;
use super::inbox::{
    Inbox, close_quietly, load_seen, load_sent, show_delivery, show_read_sync, show_receipt,
};
use super::{Cli, CliError, Loaded};
use crate::ClientError;
use crate::profile::ProfileDir;
use crate::proto::v1::{ServerFrame, server_frame};
use crate::receipts::check;

pub(crate) struct ListenOptions {
    pub read: bool,
    pub exit_on_empty: bool,
    pub timeout: Option<Duration>,
    /// `--download DIR`.
    pub download: Option<std::path::PathBuf>,
}

pub(crate) async fn listen(
    cli: &Cli,
    dir: &ProfileDir,
    options: ListenOptions,
) -> Result<(), CliError> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let loaded = Loaded::new(cli, dir)?;
    let explain = &loaded.explain;
    let download = match &options.download {
        Some(folder) => Some(Downloader::new(&loaded, folder)?),
        None => None,
    };
    let mut session = tokio::select! {
        () = &mut shutdown => return Ok(()),
        session = loaded.connect() => session?,
    };
    let mut inbox = Inbox {
        dir,
        explain,
        own_user: loaded.profile.user_id,
        seen: load_seen(dir),
        download,
    };
    let mut sent = load_sent(dir);
    let deadline = options.timeout.map(|t| Instant::now() + t);
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
                show_delivery(&mut session, &mut inbox, &mut sent, &deliver, options.read).await?;
            }
            Some(server_frame::Frame::ReadSync(sync)) => {
                show_read_sync(&mut session, &mut inbox, &sync).await?;
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
                show_receipt(&mut session, &mut inbox, &checked).await?;
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
///
/// The handlers are installed when this is called, not when the future is
/// first polled: `listen` calls it before it connects, so a signal that
/// arrives while the session is set up, or while a burst of frames keeps
/// the loop from polling it, still ends `listen` cleanly instead of
/// killing it (the default action of SIGTERM).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (term, interrupt) => {
                    if let Err(e) = term.and(interrupt) {
                        warn!(error = %e, "cannot watch SIGTERM and SIGINT");
                    }
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
