//! Login: `concurrency` loops, each connecting, logging in (QueueEmpty) and
//! closing, over and over, for a bounded time and count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};

use super::{Ctx, LOGIN_TIMEOUT};
use crate::conn::ConnError;
use crate::stats::Report;
use crate::users::User;
use crate::worker::{Control, ToCoordinator, emit};

pub async fn run(
    ctx: &Arc<Ctx>,
    users: &[User],
    mut ctl: Control,
    concurrency: usize,
    secs: f64,
    max_logins: u64,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        users.len() >= concurrency && concurrency > 0,
        "login needs at least one user per loop ({concurrency} loops, {} users)",
        users.len()
    );
    emit(&ToCoordinator::Ready {
        counters: Default::default(),
    })?;
    let Some(start) = ctl.wait_go().await else {
        return Ok(ctx.take_report());
    };
    ctx.rec().start = start.into_std();
    let deadline = start + Duration::from_secs_f64(secs);
    let budget = Arc::new(AtomicU64::new(max_logins));
    let next_source = Arc::new(AtomicUsize::new(0));
    let users: Arc<[User]> = users.into();
    tokio::time::sleep_until(start).await;
    let mut loops = JoinSet::new();
    for l in 0..concurrency {
        let (ctx, budget, next_source, users) = (
            Arc::clone(ctx),
            Arc::clone(&budget),
            Arc::clone(&next_source),
            Arc::clone(&users),
        );
        loops.spawn(async move {
            // Loop `l` owns users l, l + concurrency, ...: no two loops ever
            // log in as the same device (which would displace each other).
            let mine: Vec<&User> = users.iter().skip(l).step_by(concurrency).collect();
            let mut k = 0;
            while Instant::now() < deadline
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .is_ok()
            {
                let user = mine[k % mine.len()];
                k += 1;
                let source = ctx.sources.nth(next_source.fetch_add(1, Ordering::Relaxed));
                let t0 = Instant::now();
                let result = timeout(LOGIN_TIMEOUT, async {
                    let mut conn = ctx.connector()?.connect(source, &user.token).await?;
                    conn.login().await?;
                    Ok::<_, ConnError>(conn)
                })
                .await
                .unwrap_or(Err(ConnError::Timeout));
                let now = Instant::now();
                let took = now - t0;
                match result {
                    Ok(conn) => {
                        {
                            let mut rec = ctx.rec();
                            rec.report.counters.logins += 1;
                            rec.report.hists.login.record(took);
                            let second = rec.second(now.into_std());
                            second.done += 1;
                            second.latency.record(took);
                        }
                        conn.close_quickly().await;
                    }
                    Err(e) => {
                        {
                            let mut rec = ctx.rec();
                            rec.report.counters.login_failed += 1;
                            rec.second(now.into_std()).errors += 1;
                        }
                        ctx.report_error("login failed", &e);
                    }
                }
            }
        });
    }
    while loops.join_next().await.is_some() {}
    Ok(ctx.take_report())
}
