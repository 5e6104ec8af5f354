//! Idle: log every user in, then hold the sessions, pinging, until told.

use std::sync::Arc;
use std::time::Duration;

use parley_proto::v1::server_frame;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use super::{Ctx, halted};
use crate::conn::{Conn, Incoming};
use crate::users::User;
use crate::worker::{Control, ToCoordinator, emit, stopped};

pub async fn run(
    ctx: &Arc<Ctx>,
    users: &[User],
    mut ctl: Control,
    max_hold: Duration,
) -> anyhow::Result<crate::stats::Report> {
    let conns = ctx.open_all(users, 0).await;
    let (halt_tx, halt) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let n = conns.len().max(1);
    for (i, conn) in conns.into_iter().enumerate() {
        let Some(conn) = conn else { continue };
        // First pings spread over one interval, so the server sees a steady
        // trickle and not 19,000 pings in the same millisecond.
        let first_ping = Instant::now() + ctx.ping.mul_f64(i as f64 / n as f64);
        tasks.spawn(hold(Arc::clone(ctx), conn, halt.clone(), first_ping));
    }
    emit(&ToCoordinator::Ready {
        counters: ctx.rec().report.counters.clone(),
    })?;
    let _ = ctl.wait_go().await;
    let mut stop = ctl.stop_signal();
    // Bounded: the sessions are let go after `max_hold` even if the
    // coordinator never says stop.
    let _ = timeout(max_hold, stopped(&mut stop)).await;
    let _ = halt_tx.send(true);
    let _ = timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(ctx.take_report())
}

/// Holds one session: pings every interval, acks anything delivered, ends
/// on halt or when the server closes it.
pub async fn hold(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    mut halt: watch::Receiver<bool>,
    first_ping: Instant,
) {
    let mut next_ping = first_ping;
    loop {
        tokio::select! {
            r = conn.next(true) => match r {
                Ok(Incoming::Frame(f)) => {
                    let ack = match f.frame {
                        Some(server_frame::Frame::Deliver(d)) => conn.feed_delivery_ack(&[d.message_id]).await,
                        Some(server_frame::Frame::Receipt(r)) => conn.feed_receipt_ack(&[r.receipt_id]).await,
                        _ => Ok(()),
                    };
                    if ack.is_err() || conn.flush().await.is_err() {
                        ctx.rec().report.counters.closed += 1;
                        return;
                    }
                }
                Ok(Incoming::Raw(_)) => {}
                Err(e) => {
                    ctx.rec().report.counters.closed += 1;
                    ctx.report_error("idle session ended", &e);
                    return;
                }
            },
            () = sleep_until(next_ping) => {
                next_ping += ctx.ping;
                if conn.feed_ping().await.is_err() || conn.flush().await.is_err() {
                    ctx.rec().report.counters.closed += 1;
                    return;
                }
            }
            () = halted(&mut halt) => break,
        }
    }
    conn.close_quickly().await;
}
