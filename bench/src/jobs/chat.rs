//! Chat: pairs of online users, each sender sending to its partner on an
//! open-loop schedule; and its floor twin, echo.
//!
//! With several devices per user (`devices`), every device of both users is
//! online: the sender's first device sends; each message reaches every
//! device of the partner, and a copy every other device of the sender;
//! each of those acks on its own, and the sender's devices get one
//! DELIVERED receipt per partner device. A message counts as done at its
//! first receipt (two checkmarks); every device copy counts as delivered.
//!
//! A sender keeps at most `window` sends without a ServerAck (the server
//! remembers 128 `client_msg_id`s per device, so more would weaken its
//! duplicate detection). Sends that fall due while the window is full wait,
//! and their latency still counts from when they were due.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use parley_proto::v1::{ClientFrame, ReceiptKind, ServerFrame, client_frame, server_frame};
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use super::{Ctx, halted};
use crate::conn::{Conn, ConnError, Incoming, read_stamp, read_written};
use crate::pacing::{Schedule, share};
use crate::stats::Report;
use crate::users::User;
use crate::worker::{Control, ToCoordinator, emit, unix_ns};

/// Frames handled before a session task writes again: a busy reader must
/// not starve its own sends and acks.
const READ_BATCH: usize = 64;
/// `client_msg_id`s are `base + k`, `base` the run's start in ms shifted
/// left by this: unique across runs (the server would answer a reused id
/// with the old ack and not deliver), room for 4M messages per sender.
const SEQ_BITS: u32 = 22;

#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// This worker's total rate, msgs/s.
    pub rate: f64,
    pub secs: f64,
    pub body_len: usize,
    pub window: usize,
    pub drain_secs: f64,
    /// Devices per user.
    pub devices: usize,
    /// Every second pair's partner is offline: its sessions are closed
    /// before the go, and its sender counts a message done at its ack.
    pub offline_partners: bool,
}

impl Params {
    fn total(&self) -> u64 {
        (self.rate * self.secs).round() as u64
    }
}

/// The first `client_msg_id` of this run, less one.
fn cmid_base() -> u64 {
    (unix_ns() / 1_000_000) << SEQ_BITS
}

pub async fn run(
    ctx: &Arc<Ctx>,
    users: &[User],
    mut ctl: Control,
    p: Params,
) -> anyhow::Result<Report> {
    let devices = p.devices.max(1);
    let pairs = users.len() / (2 * devices);
    anyhow::ensure!(pairs > 0, "chat needs at least one pair of users");
    anyhow::ensure!(
        p.total() / pairs as u64 + 1 < 1 << SEQ_BITS,
        "too many messages per sender"
    );
    let mut conns = ctx
        .open_all(&users[..pairs * 2 * devices], 0)
        .await
        .into_iter();
    emit(&ToCoordinator::Ready {
        counters: ctx.rec().report.counters.clone(),
    })?;
    let Some(start) = ctl.wait_go().await else {
        return Ok(ctx.take_report());
    };
    ctx.rec().start = start.into_std();
    let deadline = start + Duration::from_secs_f64(p.secs + p.drain_secs);
    let base = cmid_base();
    let (halt_tx, halt) = watch::channel(false);
    let mut senders = JoinSet::new();
    let mut recipients = JoinSet::new();
    for pair in 0..pairs {
        // The pair's sessions: the sender's devices, then the partner's.
        let group: Vec<Option<Conn>> = conns.by_ref().take(2 * devices).collect();
        let mut group = group.into_iter();
        let Some(Some(sender)) = group.next() else {
            continue;
        };
        let offline = p.offline_partners && pair % 2 == 1;
        for recipient in group.flatten() {
            if offline {
                recipient.close_quickly().await;
            } else {
                recipients.spawn(recipient_loop(Arc::clone(ctx), recipient, halt.clone()));
            }
        }
        let schedule =
            Schedule::for_sender(start, p.rate, pairs, pair, share(p.total(), pairs, pair));
        let to = users[pair * 2 * devices + devices].user_id;
        senders.spawn(sender_loop(
            Arc::clone(ctx),
            sender,
            schedule,
            Partner {
                user: to,
                online: !offline,
            },
            base,
            p,
            deadline,
        ));
    }
    while senders.join_next().await.is_some() {}
    let _ = halt_tx.send(true);
    let _ = timeout(Duration::from_secs(10), async {
        while recipients.join_next().await.is_some() {}
    })
    .await;
    Ok(ctx.take_report())
}

/// Who a sender sends to.
#[derive(Clone, Copy, Debug)]
struct Partner {
    user: u64,
    /// Offline (`--offline-partners`): messages stay queued, no receipts.
    online: bool,
}

/// What a sender has in flight.
struct Sender {
    /// Sends without a ServerAck, oldest first (acks come in send order).
    unacked: VecDeque<(u64, Instant)>,
    /// Acked messages waiting for their DELIVERED receipts: message_id to
    /// intended send time and the receipts still due (one per device of
    /// the partner).
    unreceipted: HashMap<u64, (Instant, usize)>,
    /// Receipts each message gets: the partner's devices (0: the partner
    /// is offline, a message is done at its ack).
    receipts_each: usize,
    /// Receipt ids to acknowledge.
    receipt_ids: Vec<u64>,
}

async fn sender_loop(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    mut schedule: Schedule,
    partner: Partner,
    base: u64,
    p: Params,
    deadline: Instant,
) {
    let to = partner.user;
    let count = schedule.count();
    let mut s = Sender {
        unacked: VecDeque::with_capacity(p.window),
        unreceipted: HashMap::new(),
        receipts_each: if partner.online { p.devices.max(1) } else { 0 },
        receipt_ids: Vec::with_capacity(READ_BATCH),
    };
    let (mut due_end, mut next) = (0, 0);
    let mut next_ping = ctx.first_ping();
    let result: Result<(), ConnError> = async {
        loop {
            due_end = due_end.max(schedule.take_due(Instant::now()).end);
            let mut wrote = false;
            while next < due_end && s.unacked.len() < p.window {
                let intended = schedule.intended(next);
                let cmid = base + next + 1;
                let stamps = [ctx.stamp(intended), ctx.stamp(Instant::now())];
                conn.feed_send(cmid, to, stamps, p.body_len).await?;
                s.unacked.push_back((cmid, intended));
                next += 1;
                wrote = true;
                let mut rec = ctx.rec();
                rec.report.counters.sent += 1;
                rec.report
                    .hists
                    .lag
                    .record(Instant::now().saturating_duration_since(intended));
                rec.second(intended.into_std()).sent += 1;
            }
            if wrote {
                conn.flush().await?;
            }
            if next == count && s.unacked.is_empty() && s.unreceipted.is_empty() {
                return Ok(());
            }
            // Window full: only an ack can let the next send go.
            let wake = if next < due_end {
                None
            } else {
                schedule.next_due()
            };
            tokio::select! {
                r = conn.next(true) => {
                    on_frame(&ctx, &mut s, r?);
                    for _ in 1..READ_BATCH {
                        match conn.next(true).now_or_never() {
                            Some(r) => on_frame(&ctx, &mut s, r?),
                            None => break,
                        }
                    }
                    if !s.receipt_ids.is_empty() {
                        conn.feed_receipt_ack(&s.receipt_ids).await?;
                        conn.flush().await?;
                        s.receipt_ids.clear();
                    }
                }
                () = sleep_until_some(wake) => {}
                () = sleep_until(next_ping) => {
                    next_ping += ctx.ping;
                    conn.feed_ping().await?;
                    conn.flush().await?;
                }
                () = sleep_until(deadline) => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = result {
        ctx.rec().report.counters.closed += 1;
        ctx.report_error("sender session ended", &e);
    }
    {
        let c = &mut ctx.rec().report.counters;
        c.unsent += count - next;
        c.unacked += s.unacked.len() as u64;
        c.unreceipted += s.unreceipted.len() as u64;
    }
    conn.close_quickly().await;
}

fn on_frame(ctx: &Ctx, s: &mut Sender, incoming: Incoming) {
    let Incoming::Frame(ServerFrame { frame: Some(frame) }) = incoming else {
        return;
    };
    let now = Instant::now();
    match frame {
        server_frame::Frame::Ack(a) => {
            let Some(intended) = take_unacked(&mut s.unacked, a.client_msg_id) else {
                return;
            };
            let mut rec = ctx.rec();
            if s.receipts_each == 0 {
                rec.report.counters.queued_offline += 1;
            } else {
                s.unreceipted
                    .insert(a.message_id, (intended, s.receipts_each));
            }
            rec.report.counters.acked += 1;
            rec.report.hists.ack.record(now - intended);
            rec.second(now.into_std()).done += 1;
        }
        server_frame::Frame::SendError(e) => {
            take_unacked(&mut s.unacked, e.client_msg_id);
            let mut rec = ctx.rec();
            rec.report.counters.send_errors += 1;
            rec.second(now.into_std()).errors += 1;
        }
        server_frame::Frame::Receipt(r) => {
            s.receipt_ids.push(r.receipt_id);
            if r.kind != ReceiptKind::Delivered as i32 {
                return;
            }
            let mut rec = ctx.rec();
            for id in r.message_ids {
                let Some((intended, due)) = s.unreceipted.get_mut(&id) else {
                    rec.report.counters.receipt_duplicates += 1;
                    continue;
                };
                let intended = *intended;
                // The first receipt is the message's two checkmarks.
                if *due == s.receipts_each {
                    rec.receipt(now.into_std(), now - intended);
                }
                *due -= 1;
                if *due == 0 {
                    s.unreceipted.remove(&id);
                }
            }
        }
        _ => {}
    }
}

/// Removes the send with this id (normally the oldest).
fn take_unacked(unacked: &mut VecDeque<(u64, Instant)>, cmid: u64) -> Option<Instant> {
    let i = unacked.iter().position(|(c, _)| *c == cmid)?;
    unacked.remove(i).map(|(_, t)| t)
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A recipient: acks every delivery at once (in batches), checks order and
/// duplicates by the sequence number in the body, acks every receipt (a
/// sender's other device gets them), runs until halted.
async fn recipient_loop(ctx: Arc<Ctx>, mut conn: Conn, mut halt: watch::Receiver<bool>) {
    let mut last_seq = 0;
    let mut ids = Vec::with_capacity(READ_BATCH);
    let mut receipt_ids = Vec::with_capacity(READ_BATCH);
    let mut next_ping = ctx.first_ping();
    let result: Result<(), ConnError> = async {
        loop {
            tokio::select! {
                r = conn.next(true) => {
                    on_delivery(&ctx, &mut last_seq, &mut ids, &mut receipt_ids, r?);
                    for _ in 1..READ_BATCH {
                        match conn.next(true).now_or_never() {
                            Some(r) => on_delivery(&ctx, &mut last_seq, &mut ids, &mut receipt_ids, r?),
                            None => break,
                        }
                    }
                    if !ids.is_empty() || !receipt_ids.is_empty() {
                        if !ids.is_empty() {
                            conn.feed_delivery_ack(&ids).await?;
                        }
                        if !receipt_ids.is_empty() {
                            conn.feed_receipt_ack(&receipt_ids).await?;
                        }
                        conn.flush().await?;
                        ids.clear();
                        receipt_ids.clear();
                    }
                }
                () = sleep_until(next_ping) => {
                    next_ping += ctx.ping;
                    conn.feed_ping().await?;
                    conn.flush().await?;
                }
                () = halted(&mut halt) => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = result {
        ctx.rec().report.counters.closed += 1;
        ctx.report_error("recipient session ended", &e);
    }
    conn.close_quickly().await;
}

fn on_delivery(
    ctx: &Ctx,
    last_seq: &mut u64,
    ids: &mut Vec<u64>,
    receipt_ids: &mut Vec<u64>,
    incoming: Incoming,
) {
    let d = match incoming {
        Incoming::Frame(ServerFrame {
            frame: Some(server_frame::Frame::Deliver(d)),
        }) => d,
        Incoming::Frame(ServerFrame {
            frame: Some(server_frame::Frame::Receipt(r)),
        }) => {
            receipt_ids.push(r.receipt_id);
            return;
        }
        Incoming::Frame(ServerFrame {
            frame: Some(server_frame::Frame::ReadSync(r)),
        }) => {
            receipt_ids.push(r.sync_id);
            return;
        }
        _ => return,
    };
    ids.push(d.message_id);
    let now = Instant::now();
    let Some((seq, stamp)) = read_stamp(&d.body) else {
        return;
    };
    let mut rec = ctx.rec();
    if seq <= *last_seq {
        rec.report.counters.duplicates += 1;
        return;
    }
    if *last_seq != 0 && seq != *last_seq + 1 {
        rec.report.counters.gaps += 1;
    }
    *last_seq = seq;
    let latency = now.saturating_duration_since(ctx.unstamp(stamp));
    rec.report.counters.delivered += 1;
    rec.report.hists.deliver.record(latency);
    if let Some(written) = read_written(&d.body) {
        let server = now.saturating_duration_since(ctx.unstamp(written));
        rec.report.hists.deliver_from_write.record(server);
    }
    rec.second(now.into_std()).delivered += 1;
}

/// Echo (the floor): every session sends on its schedule to the echo
/// server and times the echo.
pub async fn run_echo(
    ctx: &Arc<Ctx>,
    users: &[User],
    mut ctl: Control,
    p: Params,
) -> anyhow::Result<Report> {
    let n = users.len();
    anyhow::ensure!(n > 0, "echo needs at least one session");
    let conns = ctx.open_all(users, 0).await;
    emit(&ToCoordinator::Ready {
        counters: ctx.rec().report.counters.clone(),
    })?;
    let Some(start) = ctl.wait_go().await else {
        return Ok(ctx.take_report());
    };
    ctx.rec().start = start.into_std();
    let deadline = start + Duration::from_secs_f64(p.secs + p.drain_secs);
    let mut tasks = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let Some(conn) = conn else { continue };
        let schedule = Schedule::for_sender(start, p.rate, n, i, share(p.total(), n, i));
        tasks.spawn(echo_loop(Arc::clone(ctx), conn, schedule, p, deadline));
    }
    while tasks.join_next().await.is_some() {}
    Ok(ctx.take_report())
}

async fn echo_loop(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    mut schedule: Schedule,
    p: Params,
    deadline: Instant,
) {
    let count = schedule.count();
    let mut unacked: VecDeque<(u64, Instant)> = VecDeque::with_capacity(p.window);
    let (mut due_end, mut next) = (0, 0);
    let result: Result<(), ConnError> = async {
        loop {
            due_end = due_end.max(schedule.take_due(Instant::now()).end);
            let mut wrote = false;
            while next < due_end && unacked.len() < p.window {
                let intended = schedule.intended(next);
                let stamps = [ctx.stamp(intended), ctx.stamp(Instant::now())];
                conn.feed_send(next + 1, 0, stamps, p.body_len).await?;
                unacked.push_back((next + 1, intended));
                next += 1;
                wrote = true;
                let mut rec = ctx.rec();
                rec.report.counters.sent += 1;
                rec.report
                    .hists
                    .lag
                    .record(Instant::now().saturating_duration_since(intended));
                rec.second(intended.into_std()).sent += 1;
            }
            if wrote {
                conn.flush().await?;
            }
            if next == count && unacked.is_empty() {
                return Ok(());
            }
            let wake = if next < due_end {
                None
            } else {
                schedule.next_due()
            };
            tokio::select! {
                r = conn.next(false) => {
                    on_echo(&ctx, &mut unacked, r?);
                    for _ in 1..READ_BATCH {
                        match conn.next(false).now_or_never() {
                            Some(r) => on_echo(&ctx, &mut unacked, r?),
                            None => break,
                        }
                    }
                }
                () = sleep_until_some(wake) => {}
                () = sleep_until(deadline) => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = result {
        ctx.rec().report.counters.closed += 1;
        ctx.report_error("echo session ended", &e);
    }
    {
        let c = &mut ctx.rec().report.counters;
        c.unsent += count - next;
        c.unacked += unacked.len() as u64;
    }
    conn.close_quickly().await;
}

fn on_echo(ctx: &Ctx, unacked: &mut VecDeque<(u64, Instant)>, incoming: Incoming) {
    let Incoming::Raw(bytes) = incoming else {
        return;
    };
    let Ok(ClientFrame {
        frame: Some(client_frame::Frame::Send(send)),
    }) = ClientFrame::decode(bytes)
    else {
        return;
    };
    let now = Instant::now();
    let mut rec = ctx.rec();
    let Some(intended) = take_unacked(unacked, send.client_msg_id) else {
        rec.report.counters.duplicates += 1;
        return;
    };
    rec.report.counters.echoed += 1;
    rec.report.hists.echo.record(now - intended);
    rec.done_at(now.into_std());
    let second = rec.second(now.into_std());
    second.done += 1;
    second.latency.record(now - intended);
}
