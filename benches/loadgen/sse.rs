//! SSE subscribers: dashboards held open on the campaigns' streams while
//! the load runs.
//!
//! - `--subscribers N`: metrics-only streams (`GET
//!   /api/v1/campaigns/{id}/stream`), subscriber k on campaign k mod C.
//!   Their delivery delay is, for each `metrics` event, the wall-clock time
//!   it is received minus the counters' `updated_at` (the time the hub
//!   stamped the commit with, on the same machine's clock; RFC 3339 with
//!   milliseconds, so a delay is known to about a millisecond). Coalescing
//!   (`STATUSHUB_SSE_COALESCE_MS`, 100 ms by default) is part of that delay,
//!   by design.
//! - `--status-subscribers M`: streams with `?include=statuses`, spread the
//!   same way. Their delay is, per `status` event, the time from the first
//!   200 of a webhook carrying that status to the event; the hub publishes
//!   at commit, a moment before it replies, so an event may arrive first:
//!   that counts as 0.
//!
//! Every subscriber is connected, and has its snapshot, before the load
//! starts. After the load, each is told its campaign's final version (as
//! `GET …/metrics` reports it) and stops once it has seen that version, or
//! when `--sse-grace` has passed: the report says how many reached it, how
//! many were sent `event: lagged`, and how many streams ended early.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use eventsource_stream::{Event, Eventsource as _};
use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::histogram::Histogram;
use super::options::Channel;
use super::payload::parse_message_id;
use super::plan::{Plan, Stage};

/// Streams being opened at once.
const CONNECTING: usize = 64;
/// Time a subscriber may take to get its snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Which events a subscriber asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Metrics,
    Statuses,
}

/// When the first 200 of a webhook carrying each status came, for the
/// status subscribers' delay: nanoseconds after `origin`, plus one (0: not
/// yet), by message and stage.
#[derive(Debug)]
pub struct Replies {
    origin: Instant,
    first_ok: Vec<AtomicU64>,
}

impl Replies {
    pub fn new(origin: Instant, plan: &Plan) -> Replies {
        let slots = plan.campaigns * plan.messages * Stage::ALL.len();
        Replies {
            origin,
            first_ok: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(message: usize, stage: Stage) -> usize {
        message * Stage::ALL.len() + stage.index()
    }

    /// Notes that the status `stage` of message `message` (its global
    /// number) was acknowledged at `at`, unless it was before.
    pub fn acknowledged(&self, message: usize, stage: Stage, at: Instant) {
        let nanos = u64::try_from((at - self.origin).as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        let _ = self.first_ok[Self::slot(message, stage)].compare_exchange(
            0,
            nanos,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// When the status was first acknowledged, if it was.
    fn first(&self, message: usize, stage: Stage) -> Option<Instant> {
        let nanos = self
            .first_ok
            .get(Self::slot(message, stage))?
            .load(Ordering::Relaxed);
        (nanos > 0).then(|| self.origin + Duration::from_nanos(nanos - 1))
    }
}

/// What one subscriber saw.
#[derive(Debug)]
pub struct Seen {
    pub kind: Kind,
    pub campaign: usize,
    /// `metrics` events received.
    pub metrics_events: u64,
    /// `status` events received.
    pub status_events: u64,
    /// Receive time minus `updated_at`, per `metrics` event.
    pub metrics_delay: Histogram,
    /// Status events: (campaign, index, stage) and when received.
    statuses: Vec<(u32, u32, Stage, Instant)>,
    /// The highest campaign version seen.
    pub version: i64,
    pub lagged: bool,
    /// The stream ended (or broke) before the subscriber was done.
    pub ended_early: bool,
    /// It saw its campaign's final version.
    pub reached_final: bool,
}

impl Seen {
    /// Delay from each status's first 200 to this subscriber's event (0
    /// when the event came first), into `into`.
    pub fn status_delays(&self, messages: usize, replies: &Replies, into: &mut Histogram) {
        for &(campaign, index, stage, at) in &self.statuses {
            let message = campaign as usize * messages + index as usize;
            if let Some(replied) = replies.first(message, stage) {
                into.record(at.saturating_duration_since(replied));
            }
        }
    }
}

/// After the load: every campaign's final version, and when to give up.
#[derive(Clone, Debug)]
struct Finals {
    versions: Arc<Vec<i64>>,
    stop_at: Instant,
}

/// Subscribers following their streams.
#[derive(Debug)]
pub struct Subscribers {
    tasks: Vec<JoinHandle<Seen>>,
    finals: watch::Sender<Option<Finals>>,
}

/// Where subscribers connect and how they read ids.
#[derive(Clone, Debug)]
pub struct Streams {
    pub client: reqwest::Client,
    pub urls: Vec<String>,
    pub admin_token: String,
    pub tenant: String,
    pub campaigns: Arc<Vec<String>>,
    pub channel: Channel,
    pub run: String,
}

impl Subscribers {
    /// Opens `metrics` metrics-only and `statuses` status streams, spread
    /// over the campaigns and the hub's instances, and returns once every
    /// one has its snapshot.
    pub async fn connect(
        streams: &Streams,
        metrics: usize,
        statuses: usize,
    ) -> anyhow::Result<Subscribers> {
        let (finals, watching) = watch::channel(None);
        let campaigns = streams.campaigns.len();
        let opened: Vec<anyhow::Result<JoinHandle<Seen>>> =
            futures_util::stream::iter((0..metrics + statuses).map(|k| {
                let (kind, nth) = if k < metrics {
                    (Kind::Metrics, k)
                } else {
                    (Kind::Statuses, k - metrics)
                };
                let url = &streams.urls[k % streams.urls.len()];
                open(streams, url, kind, nth % campaigns, watching.clone())
            }))
            .buffered(CONNECTING)
            .collect()
            .await;
        let mut tasks = Vec::with_capacity(opened.len());
        let mut failures = Vec::new();
        for (k, each) in opened.into_iter().enumerate() {
            match each {
                Ok(task) => tasks.push(task),
                Err(error) => failures.push(format!("subscriber {k}: {error:#}")),
            }
        }
        if !failures.is_empty() {
            for task in &tasks {
                task.abort();
            }
            bail!(
                "{} of {} subscribers could not connect, first: {}",
                failures.len(),
                metrics + statuses,
                failures[0]
            );
        }
        Ok(Subscribers { tasks, finals })
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Tells every subscriber its campaign's final version and waits until
    /// each has seen it or `grace` has passed.
    pub async fn finish(self, versions: Vec<i64>, grace: Duration) -> Vec<Seen> {
        let stop_at = Instant::now() + grace;
        self.finals.send_replace(Some(Finals {
            versions: Arc::new(versions),
            stop_at,
        }));
        let mut seen = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Ok(each) = task.await {
                seen.push(each);
            }
        }
        seen
    }
}

/// Opens one stream and returns its reader once the snapshot came.
async fn open(
    streams: &Streams,
    url: &str,
    kind: Kind,
    campaign: usize,
    finals: watch::Receiver<Option<Finals>>,
) -> anyhow::Result<JoinHandle<Seen>> {
    let mut request = streams
        .client
        .get(format!(
            "{url}/api/v1/campaigns/{}/stream",
            streams.campaigns[campaign]
        ))
        .query(&[("tenant_id", streams.tenant.as_str())])
        .bearer_auth(&streams.admin_token);
    if kind == Kind::Statuses {
        request = request.query(&[("include", "statuses")]);
    }
    let response = request.send().await.context("cannot open the stream")?;
    let status = response.status();
    if status != 200 {
        let text = response.text().await.unwrap_or_default();
        bail!(
            "the stream answered {status} {}{}",
            text.trim(),
            if status == 429 {
                " (raise STATUSHUB_MAX_STREAMS, or the open-file limit of the hub)"
            } else {
                ""
            }
        );
    }
    let (ready, snapshot) = oneshot::channel();
    let reader = Reader {
        channel: streams.channel,
        run: streams.run.clone(),
        seen: Seen {
            kind,
            campaign,
            metrics_events: 0,
            status_events: 0,
            metrics_delay: Histogram::new(),
            statuses: Vec::new(),
            version: -1,
            lagged: false,
            ended_early: false,
            reached_final: false,
        },
        ready: Some(ready),
    };
    let task = tokio::spawn(reader.follow(response, finals));
    match tokio::time::timeout(SNAPSHOT_TIMEOUT, snapshot).await {
        Ok(Ok(())) => Ok(task),
        _ => {
            task.abort();
            bail!("no snapshot within {SNAPSHOT_TIMEOUT:?}")
        }
    }
}

/// The part of a `snapshot`, `metrics` or `status` event a subscriber reads.
#[derive(Deserialize)]
struct EventData<'a> {
    version: i64,
    #[serde(borrow, default)]
    updated_at: Option<&'a str>,
    #[serde(borrow, default)]
    provider_message_id: Option<&'a str>,
    #[serde(borrow, default)]
    event: Option<&'a str>,
}

/// One subscriber's reading loop.
struct Reader {
    channel: Channel,
    run: String,
    seen: Seen,
    ready: Option<oneshot::Sender<()>>,
}

impl Reader {
    async fn follow(
        mut self,
        response: reqwest::Response,
        mut finals: watch::Receiver<Option<Finals>>,
    ) -> Seen {
        let mut events = response.bytes_stream().eventsource();
        loop {
            let now_final = finals.borrow().clone();
            let reached = now_final.as_ref().is_some_and(|finals| {
                finals
                    .versions
                    .get(self.seen.campaign)
                    .is_some_and(|&version| self.seen.version >= version)
            });
            if reached {
                self.seen.reached_final = true;
                break;
            }
            let stop_at = now_final.map(|finals| finals.stop_at);
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.take(&event),
                    _ => {
                        self.seen.ended_early = true;
                        break;
                    }
                },
                changed = finals.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = tokio::time::sleep_until(stop_at.unwrap_or_else(Instant::now)), if stop_at.is_some() => break,
            }
        }
        self.seen
    }

    /// Takes one event.
    fn take(&mut self, event: &Event) {
        let kind = event.event.as_str();
        if kind == "lagged" {
            self.seen.lagged = true;
            return;
        }
        if !matches!(kind, "snapshot" | "metrics" | "status") {
            return;
        }
        let Ok(data) = serde_json::from_str::<EventData<'_>>(&event.data) else {
            return;
        };
        self.seen.version = self.seen.version.max(data.version);
        match kind {
            "snapshot" => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(());
                }
            }
            "metrics" => {
                self.seen.metrics_events += 1;
                if let Some(delay) = data.updated_at.and_then(delay_since) {
                    self.seen.metrics_delay.record(delay);
                }
            }
            _ => {
                self.seen.status_events += 1;
                let received = Instant::now();
                let id = data
                    .provider_message_id
                    .and_then(|id| parse_message_id(self.channel, &self.run, id));
                let stage = data
                    .event
                    .and_then(|name| Stage::from_event(self.channel, name));
                if let (Some((campaign, index)), Some(stage)) = (id, stage) {
                    self.seen.statuses.push((campaign, index, stage, received));
                }
            }
        }
    }
}

/// Time from the RFC 3339 instant `updated_at` to now, on the wall clock
/// (zero if `updated_at` is later).
fn delay_since(updated_at: &str) -> Option<Duration> {
    let at =
        time::OffsetDateTime::parse(updated_at, &time::format_description::well_known::Rfc3339)
            .ok()?;
    let at_nanos = u128::try_from(at.unix_timestamp_nanos()).ok()?;
    let now_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let delay = now_nanos.saturating_sub(at_nanos);
    Some(Duration::from_nanos(
        u64::try_from(delay).unwrap_or(u64::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::options::Order;
    use super::*;

    #[test]
    fn metrics_delay_is_the_wall_clock_since_updated_at() {
        let ago = SystemTime::now() - Duration::from_millis(1_500);
        let ms = ago.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let delay = delay_since(&statushub::clock::format_ms(ms)).unwrap();
        assert!(delay >= Duration::from_millis(1_500), "{delay:?}");
        assert!(delay < Duration::from_millis(1_600), "{delay:?}");
        let future = statushub::clock::format_ms(ms + 60_000);
        assert_eq!(delay_since(&future), Some(Duration::ZERO));
        assert_eq!(delay_since("yesterday"), None);
    }

    /// The first acknowledgement of a status is kept; a status event is
    /// measured from it, and one that came before it counts as 0.
    #[test]
    fn status_delay_is_measured_from_the_first_200() {
        let plan = Plan::new(Channel::Whatsapp, 2, 10, Order::InOrder, 1, 1);
        let origin = Instant::now();
        let replies = Replies::new(origin, &plan);
        let at = |ms| origin + Duration::from_millis(ms);
        replies.acknowledged(13, Stage::Read, at(10));
        replies.acknowledged(13, Stage::Read, at(5));
        replies.acknowledged(0, Stage::Sent, at(0));
        assert_eq!(replies.first(13, Stage::Read), Some(at(10)));
        assert_eq!(replies.first(0, Stage::Sent), Some(at(0)));
        assert_eq!(replies.first(13, Stage::Delivered), None);

        let mut seen = Seen {
            kind: Kind::Statuses,
            campaign: 1,
            metrics_events: 0,
            status_events: 3,
            metrics_delay: Histogram::new(),
            // Message 13 is campaign 1's message 3.
            statuses: vec![
                (1, 3, Stage::Read, at(17)),
                (0, 0, Stage::Sent, at(0)),
                (1, 3, Stage::Delivered, at(30)),
            ],
            version: 3,
            lagged: false,
            ended_early: false,
            reached_final: true,
        };
        let mut delays = Histogram::new();
        seen.status_delays(10, &replies, &mut delays);
        assert_eq!(delays.count(), 2, "an unacknowledged status is not timed");
        // 7 ms, to the histogram's precision.
        let max = delays.max();
        assert!(
            max >= Duration::from_millis(7) && max < Duration::from_micros(7_010),
            "{max:?}"
        );
        seen.statuses = vec![(1, 3, Stage::Read, at(4))];
        let mut early = Histogram::new();
        seen.status_delays(10, &replies, &mut early);
        assert_eq!(early.max(), Duration::ZERO);
    }

    /// A reader takes snapshots, metrics and statuses as the hub sends
    /// them, and ignores what is not its run's.
    #[test]
    fn events_are_read_as_the_hub_writes_them() {
        let (ready, mut snapshot) = oneshot::channel();
        let mut reader = Reader {
            channel: Channel::Ses,
            run: "r1".to_owned(),
            seen: Seen {
                kind: Kind::Statuses,
                campaign: 0,
                metrics_events: 0,
                status_events: 0,
                metrics_delay: Histogram::new(),
                statuses: Vec::new(),
                version: -1,
                lagged: false,
                ended_early: false,
                reached_final: false,
            },
            ready: Some(ready),
        };
        let event = |name: &str, data: String| Event {
            event: name.to_owned(),
            data,
            id: String::new(),
            retry: None,
        };
        let now = statushub::clock::format_ms(statushub::clock::now_ms());
        reader.take(&event(
            "snapshot",
            format!(r#"{{"version":4,"updated_at":"{now}","total":3}}"#),
        ));
        assert!(snapshot.try_recv().is_ok());
        reader.take(&event(
            "metrics",
            format!(r#"{{"version":6,"updated_at":"{now}"}}"#),
        ));
        let id = super::super::payload::message_id(Channel::Ses, "r1", 0, 2);
        reader.take(&event(
            "status",
            format!(
                r#"{{"version":7,"provider_message_id":"{id}","event":"Open","status":"read"}}"#
            ),
        ));
        reader.take(&event(
            "status",
            r#"{"version":8,"provider_message_id":"someone-else","event":"Open"}"#.to_owned(),
        ));
        reader.take(&event(
            "lagged",
            r#"{"reason":"client too slow"}"#.to_owned(),
        ));
        let seen = reader.seen;
        assert_eq!((seen.metrics_events, seen.status_events), (1, 2));
        assert_eq!(seen.version, 8);
        assert_eq!(seen.metrics_delay.count(), 1);
        assert_eq!(seen.statuses.len(), 1);
        assert_eq!(seen.statuses[0].2, Stage::Read);
        assert!(seen.lagged);
    }
}
