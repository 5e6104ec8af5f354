//! Offline: a few senders queue many messages for users who are offline;
//! then those users connect and drain their mailboxes.
//!
//! Message `g` (0-based, over all senders) goes from sender `g % senders` to
//! recipient `g % recipients`, so each recipient knows how many to expect.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use parley_proto::v1::{ServerFrame, server_frame};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use super::{Ctx, halted};
use crate::conn::{Conn, ConnError, Incoming};
use crate::pacing::share;
use crate::stats::Report;
use crate::users::User;
use crate::worker::{Control, ToCoordinator, emit, unix_ns};

#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub senders: usize,
    pub messages: u64,
    pub body_len: usize,
    pub window: usize,
    pub max_secs: f64,
}

pub async fn run(
    ctx: &Arc<Ctx>,
    users: &[User],
    mut ctl: Control,
    p: Params,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        p.senders > 0 && users.len() > p.senders,
        "offline needs senders and at least one recipient"
    );
    let (sender_users, recipient_users) = users.split_at(p.senders);
    let recipients: Arc<[u64]> = recipient_users.iter().map(|u| u.user_id).collect();
    let bound = Instant::now() + Duration::from_secs_f64(p.max_secs);

    // Phase 1: queue everything, closed loop (as fast as the server acks).
    let conns = ctx.open_all(sender_users, 0).await;
    let t0 = Instant::now();
    let base = (unix_ns() / 1_000_000) << 22;
    let mut queueing = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let Some(conn) = conn else { continue };
        let recipients = Arc::clone(&recipients);
        queueing.spawn(queue(Arc::clone(ctx), conn, i, recipients, base, p, bound));
    }
    let mut senders = Vec::new();
    while let Some(joined) = queueing.join_next().await {
        if let Ok(Some(conn)) = joined {
            senders.push(conn);
        }
    }
    ctx.rec().report.counters.queue_ms = t0.elapsed().as_millis() as u64;
    emit(&ToCoordinator::Ready {
        counters: ctx.rec().report.counters.clone(),
    })?;

    // Phase 2: the recipients connect and drain.
    let Some(start) = ctl.wait_go().await else {
        return Ok(ctx.take_report());
    };
    sleep_until(start).await;
    ctx.rec().start = start.into_std();
    let (halt_tx, halt) = watch::channel(false);
    let mut receipts = JoinSet::new();
    for conn in senders {
        receipts.spawn(collect_receipts(Arc::clone(ctx), conn, halt.clone()));
    }
    let mut drains = JoinSet::new();
    for (r, user) in recipient_users.iter().enumerate() {
        let expected = share(p.messages, recipients.len(), r);
        let (ctx, user) = (Arc::clone(ctx), user.clone());
        drains.spawn(async move { drain(&ctx, p.senders + r, &user, expected, bound).await });
    }
    while drains.join_next().await.is_some() {}
    ctx.rec().report.counters.drain_ms = start.elapsed().as_millis() as u64;
    // Receipts trail the deliveries; give them a bounded moment.
    let acked = ctx.rec().report.counters.acked;
    let _ = timeout(Duration::from_secs(30), async {
        while ctx.rec().report.counters.receipts < acked {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let _ = halt_tx.send(true);
    while receipts.join_next().await.is_some() {}
    Ok(ctx.take_report())
}

/// Sends sender `i`'s share, at most `window` unacked; hands the session
/// back (kept for the receipts) unless it failed.
async fn queue(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    i: usize,
    recipients: Arc<[u64]>,
    base: u64,
    p: Params,
    bound: Instant,
) -> Option<Conn> {
    let mut g = i as u64;
    let mut unacked: VecDeque<Instant> = VecDeque::with_capacity(p.window);
    let result: Result<(), ConnError> = async {
        loop {
            let mut wrote = false;
            while g < p.messages && unacked.len() < p.window {
                let to = recipients[(g % recipients.len() as u64) as usize];
                let now = Instant::now();
                conn.feed_send(base + g + 1, to, [ctx.stamp(now); 2], p.body_len)
                    .await?;
                unacked.push_back(now);
                g += p.senders as u64;
                wrote = true;
                ctx.rec().report.counters.sent += 1;
            }
            if wrote {
                conn.flush().await?;
            }
            if g >= p.messages && unacked.is_empty() {
                return Ok(());
            }
            let frame = tokio::select! {
                r = conn.next(true) => r?,
                () = sleep_until(bound) => return Err(ConnError::Timeout),
            };
            let Incoming::Frame(ServerFrame { frame: Some(frame) }) = frame else {
                continue;
            };
            let now = Instant::now();
            let mut rec = ctx.rec();
            match frame {
                server_frame::Frame::Ack(_) => {
                    if let Some(sent) = unacked.pop_front() {
                        rec.report.counters.acked += 1;
                        rec.report.hists.ack.record(now - sent);
                    }
                }
                server_frame::Frame::SendError(_) => {
                    unacked.pop_front();
                    rec.report.counters.send_errors += 1;
                }
                _ => {}
            }
            drop(rec);
        }
    }
    .await;
    match result {
        Ok(()) => Some(conn),
        Err(e) => {
            {
                let c = &mut ctx.rec().report.counters;
                c.unacked += unacked.len() as u64;
                c.closed += 1;
            }
            ctx.report_error("offline sender ended", &e);
            None
        }
    }
}

/// One recipient: connect, take and ack every delivery until `expected`
/// distinct messages arrived.
async fn drain(ctx: &Ctx, source: usize, user: &User, expected: u64, bound: Instant) {
    let permit = ctx.connect_permits.acquire().await;
    let t0 = Instant::now();
    let conn = match ctx.connector() {
        Ok(c) => c.connect(ctx.sources.nth(source), &user.token).await,
        Err(e) => Err(e),
    };
    drop(permit);
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            ctx.rec().report.counters.connect_failed += 1;
            ctx.report_error("recipient connect failed", &e);
            return;
        }
    };
    ctx.rec().report.counters.connected += 1;
    let mut seen = HashSet::with_capacity(expected as usize);
    let mut ids = Vec::with_capacity(64);
    let mut logged_in = false;
    let result: Result<(), ConnError> = async {
        while (seen.len() as u64) < expected {
            let r = tokio::select! {
                r = conn.next(true) => r?,
                () = sleep_until(bound) => return Err(ConnError::Timeout),
            };
            let mut batch = vec![r];
            while batch.len() < 64 {
                match conn.next(true).now_or_never() {
                    Some(r) => batch.push(r?),
                    None => break,
                }
            }
            let now = Instant::now();
            {
                let mut rec = ctx.rec();
                for incoming in batch {
                    let Incoming::Frame(ServerFrame { frame: Some(frame) }) = incoming else {
                        continue;
                    };
                    match frame {
                        server_frame::Frame::Deliver(d) => {
                            ids.push(d.message_id);
                            if seen.insert(d.message_id) {
                                rec.report.counters.delivered += 1;
                                rec.second(now.into_std()).delivered += 1;
                            } else {
                                rec.report.counters.duplicates += 1;
                            }
                        }
                        server_frame::Frame::QueueEmpty(_) if !logged_in => {
                            logged_in = true;
                            rec.report.hists.login.record(now - t0);
                        }
                        _ => {}
                    }
                }
            }
            if !ids.is_empty() {
                conn.feed_delivery_ack(&ids).await?;
                conn.flush().await?;
                ids.clear();
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        ctx.rec().report.counters.closed += 1;
        ctx.report_error("recipient ended before its mailbox was empty", &e);
    }
    conn.close_quickly().await;
}

/// A sender during the drain: acks its DELIVERED receipts and counts them.
async fn collect_receipts(ctx: Arc<Ctx>, mut conn: Conn, mut halt: watch::Receiver<bool>) {
    let mut ids = Vec::with_capacity(64);
    let result: Result<(), ConnError> = async {
        loop {
            let r = tokio::select! {
                r = conn.next(true) => r?,
                () = halted(&mut halt) => return Ok(()),
            };
            let mut batch = vec![r];
            while batch.len() < 64 {
                match conn.next(true).now_or_never() {
                    Some(r) => batch.push(r?),
                    None => break,
                }
            }
            let now = Instant::now();
            {
                let mut rec = ctx.rec();
                for incoming in batch {
                    if let Incoming::Frame(ServerFrame {
                        frame: Some(server_frame::Frame::Receipt(r)),
                    }) = incoming
                    {
                        ids.push(r.receipt_id);
                        rec.report.counters.receipts += r.message_ids.len() as u64;
                        rec.second(now.into_std()).receipts += r.message_ids.len() as u64;
                    }
                }
            }
            if !ids.is_empty() {
                conn.feed_receipt_ack(&ids).await?;
                conn.flush().await?;
                ids.clear();
            }
        }
    }
    .await;
    if let Err(e) = result {
        ctx.report_error("sender ended during the drain", &e);
    }
    conn.close_quickly().await;
}
