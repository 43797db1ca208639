//! Rate control: the closed loop (each connection sends its next request
//! when the previous one is answered) and the open loop (request i is due
//! at start + i/R, whatever the hub does).
//!
//! In the open loop the latency of a request is measured from its due
//! time, not from when it was sent: when the hub stalls, the requests that
//! should have gone out meanwhile wait for a connection and their wait
//! counts, so the latency reported at a given load is the latency a
//! provider sending at that rate would see (no coordinated omission). A
//! request is *late* when it starts more than [`LATE_AFTER`] after its due
//! time, because every connection was busy (`--concurrency` caps requests
//! in flight) or the generator itself fell behind; the report gives how
//! many and the start lag's percentiles, so a run whose generator could
//! not keep up is visible as such.
//!
//! The closed loop measures from the send, as a closed loop must; its
//! latency is the service time at the throughput it reached.
//!
//! Time is [`tokio::time::Instant`], so the tests run these loops on a
//! paused clock, deterministically.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::histogram::Histogram;

/// Start lag beyond which a request counts as late (tokio's timer ticks
/// in milliseconds, so up to one is the timer's, not a backlog).
pub const LATE_AFTER: Duration = Duration::from_millis(2);

/// When the open loop's requests are due.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Requests per second.
    pub rate: f64,
    /// Requests in all.
    pub count: usize,
}

impl Schedule {
    /// `rate` requests per second for `seconds`, at most `available`
    /// (`None`: no limit but the clock).
    pub fn for_run(rate: f64, seconds: f64, available: Option<usize>) -> Schedule {
        let fit = (rate * seconds).ceil() as usize;
        Schedule {
            rate,
            count: available.map_or(fit, |available| available.min(fit)),
        }
    }

    /// Due time of request `i` after the start.
    pub fn due(&self, i: usize) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }
}

/// What a loop measured.
#[derive(Debug, Default)]
pub struct Load {
    /// Requests sent.
    pub issued: usize,
    /// Requests answered as `send` wanted (a 200).
    pub ok: usize,
    /// Requests that failed (an error status, a timeout, a refused
    /// connection).
    pub failed: usize,
    /// Latency of the successful requests: from the due time (open loop)
    /// or the send (closed loop) to the end of the reply.
    pub latency: Histogram,
    /// Open loop: how long after its due time each request started.
    pub start_lag: Histogram,
    /// Open loop: requests that started more than [`LATE_AFTER`] late.
    pub late: usize,
    /// From the start to the last reply.
    pub elapsed: Duration,
    /// Whether latency is measured from the due time (open loop).
    pub from_due: bool,
}

impl Load {
    /// Counts one request that started `lag` after its due time (`None` in
    /// the closed loop), succeeded or not, taking `latency`, and ended at
    /// `ended` after the start.
    fn record(&mut self, lag: Option<Duration>, ok: bool, latency: Duration, ended: Duration) {
        self.issued += 1;
        if let Some(lag) = lag {
            self.start_lag.record(lag);
            self.late += usize::from(lag > LATE_AFTER);
        }
        if ok {
            self.ok += 1;
            self.latency.record(latency);
        } else {
            self.failed += 1;
        }
        self.elapsed = self.elapsed.max(ended);
    }

    /// Successful requests per second over the run.
    pub fn achieved_rate(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the open loop: request `i` (0 ≤ i < `schedule.count`) is handed to
/// `send` at its due time or, when `concurrency` requests are in flight,
/// as soon as one ends (first come, first served); `send` returns whether
/// it succeeded. Returns once every request has ended.
pub async fn open_loop<F, Fut>(schedule: Schedule, concurrency: usize, send: F) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let send = Arc::new(send);
    let connections = Arc::new(Semaphore::new(concurrency));
    let load = Arc::new(Mutex::new(Load {
        from_due: true,
        ..Load::default()
    }));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..schedule.count {
        let due = start + schedule.due(i);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let (send, connections, load) = (send.clone(), connections.clone(), load.clone());
        tasks.spawn(async move {
            let Ok(_connection) = connections.acquire_owned().await else {
                return;
            };
            let lag = Instant::now().saturating_duration_since(due);
            let ok = send(i).await;
            let ended = Instant::now();
            load.lock().unwrap_or_else(PoisonError::into_inner).record(
                Some(lag),
                ok,
                ended - due,
                ended - start,
            );
        });
        // Keep the set small: collect what has ended.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    take(load)
}

/// Runs the closed loop: `concurrency` workers each send request after
/// request (numbers handed out in order, below `count` when given) until
/// `duration` has passed or no request is left.
pub async fn closed_loop<F, Fut>(
    count: Option<usize>,
    concurrency: usize,
    duration: Duration,
    send: F,
) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let send = Arc::new(send);
    let next = Arc::new(AtomicUsize::new(0));
    let load = Arc::new(Mutex::new(Load::default()));
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (send, next, load) = (send.clone(), next.clone(), load.clone());
        workers.spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if count.is_some_and(|count| i >= count) {
                    break;
                }
                let sent = Instant::now();
                let ok = send(i).await;
                let ended = Instant::now();
                load.lock().unwrap_or_else(PoisonError::into_inner).record(
                    None,
                    ok,
                    ended - sent,
                    ended - start,
                );
            }
        });
    }
    while workers.join_next().await.is_some() {}
    take(load)
}

/// The load the tasks recorded into, once they are all done.
fn take(load: Arc<Mutex<Load>>) -> Load {
    std::mem::take(&mut *load.lock().unwrap_or_else(PoisonError::into_inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// Within a millisecond (tokio's timer) and the histogram's 0.1 %.
    fn about(actual: Duration, expected: Duration) -> bool {
        let slack = ms(1) + expected / 1_000;
        actual + slack >= expected && actual <= expected + slack
    }

    #[test]
    fn requests_are_due_at_i_over_r() {
        let schedule = Schedule::for_run(200.0, 2.0, None);
        assert_eq!(schedule.count, 400);
        assert_eq!(schedule.due(0), Duration::ZERO);
        assert_eq!(schedule.due(1), ms(5));
        assert_eq!(schedule.due(399), ms(1_995));
        // No drift: the millionth request of 3/s is due exactly then.
        let slow = Schedule::for_run(3.0, 1e6, None);
        assert_eq!(slow.due(3_000_000), Duration::from_secs(1_000_000));
        // The plan may end first; a fraction of a request is one more.
        assert_eq!(Schedule::for_run(200.0, 2.0, Some(150)).count, 150);
        assert_eq!(Schedule::for_run(10.0, 0.25, None).count, 3);
    }

    /// A hub that keeps up: every request starts on time, is measured from
    /// its due time (= its send), and the achieved rate is the offered one.
    #[tokio::test(start_paused = true)]
    async fn the_open_loop_sends_at_the_rate() {
        let schedule = Schedule::for_run(100.0, 1.0, None);
        let load = open_loop(schedule, 4, |_| async {
            tokio::time::sleep(ms(5)).await;
            true
        })
        .await;
        assert_eq!(
            (load.issued, load.ok, load.failed, load.late),
            (100, 100, 0, 0)
        );
        assert!(load.from_due);
        assert!(
            about(load.latency.quantile(0.99), ms(5)),
            "{:?}",
            load.latency.percentiles()
        );
        assert!(about(load.elapsed, ms(995)), "{:?}", load.elapsed);
        assert!(
            (load.achieved_rate() - 100.5).abs() < 1.0,
            "{}",
            load.achieved_rate()
        );
    }

    /// A hub slower than the rate, with one connection: 30 ms per request
    /// at 100 requests/s. Request i starts when i − 1 ends (30·i ms), late
    /// by 20·i ms, and its latency from the due time (10·i ms) is
    /// 20·i + 30 ms: the backlog shows. The closed loop on the same hub
    /// sees only the 30 ms of service time.
    #[tokio::test(start_paused = true)]
    async fn the_open_loop_counts_the_wait_for_a_busy_hub() {
        let slow = |_| async {
            tokio::time::sleep(ms(30)).await;
            true
        };
        let load = open_loop(Schedule::for_run(100.0, 0.2, None), 1, slow).await;
        assert_eq!((load.issued, load.ok), (20, 20));
        assert_eq!(load.late, 19);
        assert!(
            about(load.latency.max(), ms(20 * 19 + 30)),
            "{:?}",
            load.latency.max()
        );
        assert!(about(load.latency.quantile(0.0), ms(30)));
        assert!(about(load.start_lag.max(), ms(20 * 19)));
        assert!(about(load.elapsed, ms(600)));
        assert!(load.achieved_rate() < 34.0, "{}", load.achieved_rate());

        let closed = closed_loop(Some(20), 1, Duration::from_secs(60), slow).await;
        assert_eq!((closed.issued, closed.ok, closed.late), (20, 20, 0));
        assert!(!closed.from_due);
        assert!(about(closed.latency.max(), ms(30)));
        assert!(about(closed.elapsed, ms(600)));
    }

    /// One stalled request holds one connection; with others free, the
    /// requests after it are neither late nor slower.
    #[tokio::test(start_paused = true)]
    async fn a_stall_on_one_connection_does_not_delay_the_others() {
        let load = open_loop(Schedule::for_run(100.0, 0.5, None), 8, |i| async move {
            tokio::time::sleep(if i == 3 { ms(300) } else { ms(2) }).await;
            true
        })
        .await;
        assert_eq!((load.ok, load.late), (50, 0));
        assert!(about(load.latency.quantile(0.9), ms(2)));
        assert!(about(load.latency.max(), ms(300)));
    }

    /// Failures are counted, not timed; the closed loop stops at its
    /// duration or when the requests run out.
    #[tokio::test(start_paused = true)]
    async fn failures_are_counted_and_the_closed_loop_stops_in_time() {
        let load = closed_loop(None, 2, ms(100), |i| async move {
            tokio::time::sleep(ms(10)).await;
            i % 4 != 0
        })
        .await;
        assert_eq!(load.issued, 20);
        assert_eq!((load.ok, load.failed), (15, 5));
        assert_eq!(load.latency.count(), 15);
        let load = closed_loop(Some(7), 3, Duration::from_secs(60), |_| async { true }).await;
        assert_eq!((load.issued, load.ok), (7, 7));
        let load = open_loop(Schedule::for_run(1_000.0, 0.01, None), 2, |_| async {
            false
        })
        .await;
        assert_eq!(
            (load.issued, load.failed, load.latency.count()),
            (10, 10, 0)
        );
    }
}
