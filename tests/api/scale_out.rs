//! Scale-out (SPEC, "Scale-out"): several hubs over one PostgreSQL database.
//! Correctness must not rely on a campaign living on one instance, and a
//! change committed on any instance must reach the subscribers of every
//! instance within one second, also after a reconnect, in an order that
//! resuming clients can rely on.
//!
//! These tests are about PostgreSQL, so each makes its databases with
//! [`TestDb::postgres_fresh`] whatever `STATUSHUB_TEST_BACKEND` says (they
//! need `STATUSHUB_TEST_POSTGRES_URL`, and fail saying so without it). Hubs
//! run in process ([`hub_on`]), except in the `kill -9` test, which runs the
//! real binary twice. Random choices come from a seed printed with every
//! failure; `STATUSHUB_SCALE_OUT_SEED=N` replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource as _};
use futures_util::StreamExt as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;
use sqlx::Connection as _;

use crate::helpers::*;

/// How late a change committed on one instance may reach the subscribers
/// of another: SPEC, "Changes reach the subscribers of every instance
/// within one second".
const FOLLOW_BOUND: Duration = Duration::from_secs(1);

/// What an assertion of [`FOLLOW_BOUND`] allows on top. Latencies are
/// measured from the provider's 200, which comes after the commit (so the
/// request's own time is never charged to the hub), to the instant the
/// event was parsed on a thread of the test's own ([`Recorder`]). The
/// margin is for that thread, the hub's feed thread and its workers being
/// scheduled late on a loaded 2-core CI machine: a few scheduler slices,
/// far below 250 ms. A follower that misses a change misses it for good,
/// and one without its periodic re-read (500 ms) misses lost wake-ups by
/// far more than the margin, so the margin hides no failure mode.
const FOLLOW_MARGIN: Duration = Duration::from_millis(250);

/// Longest any one wait of these tests may take: a hang guard, not a bound
/// on speed.
const HANG_GUARD: Duration = Duration::from_secs(10);

/// Taken by the tests that time how fast changes are followed (shared) and
/// by those that hold a transaction open on purpose (exclusive): an open
/// transaction anywhere on the server holds every follower back (see
/// src/store/postgres/follow.rs), so one test's would count against the
/// other's one-second bound.
static HORIZON: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// WhatsApp status values the tests send, with the statuses each puts in
/// a message's seen set (SPEC: `played` counts as `read`; read ⇒ delivered
/// ⇒ sent; a value statushub does not know changes no status).
const VALUES: [(&str, &[&str]); 6] = [
    ("sent", &["sent"]),
    ("delivered", &["sent", "delivered"]),
    ("read", &["sent", "delivered", "read"]),
    ("played", &["sent", "delivered", "read"]),
    ("failed", &["failed"]),
    ("deleted", &[]),
];

/// Returns the statuses a WhatsApp status value puts in the seen set.
fn implied(value: &str) -> &'static [&'static str] {
    VALUES
        .iter()
        .find(|(name, _)| *name == value)
        .map_or_else(|| panic!("no such test value {value}"), |(_, seen)| seen)
}

/// Returns the seen set that `values` give a message, whatever their order.
fn seen_after<'a>(values: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    values
        .into_iter()
        .flat_map(implied)
        .map(|status| (*status).to_owned())
        .collect()
}

/// Returns a message's current status from its seen set (SPEC: read,
/// else delivered, else failed, else sent, else pending).
fn current_status(seen: &BTreeSet<String>) -> &'static str {
    ["read", "delivered", "failed", "sent"]
        .into_iter()
        .find(|status| seen.contains(*status))
        .unwrap_or("pending")
}

/// The seed of a test's random choices: `STATUSHUB_SCALE_OUT_SEED` when
/// set, else a fresh one.
fn seed() -> u64 {
    std::env::var("STATUSHUB_SCALE_OUT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(rand::random)
}

fn refs(ids: &[String]) -> Vec<&str> {
    ids.iter().map(String::as_str).collect()
}

/// Starts a hub in process on the PostgreSQL database at `url`. The hub
/// does not own the database: the test keeps its [`TestDb`] alive.
async fn hub_on(url: &str) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(move |settings| settings.database_url = url).await
}

/// Posts a signed WhatsApp body to `app` until it answers 200, as a
/// provider retries a 503 (which must say when, with `Retry-After`);
/// returns the instant of the 200, which the hub sends after the commit
/// holding the statuses.
async fn deliver_bytes(app: &TestApp, body: Vec<u8>) -> Instant {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let response = app.post_whatsapp_bytes(body.clone()).await;
        match response.status().as_u16() {
            200 => return Instant::now(),
            503 => {
                assert!(
                    response.headers().contains_key("retry-after"),
                    "a 503 without Retry-After"
                );
                assert!(
                    Instant::now() < deadline,
                    "{}: still refused after {HANG_GUARD:?}",
                    app.address
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{}: {other} {:?}", app.address, response.text().await),
        }
    }
}

/// [`deliver_bytes`] of a payload carrying `statuses`.
async fn deliver(app: &TestApp, statuses: &[WaStatus<'_>]) -> Instant {
    deliver_bytes(
        app,
        serde_json::to_vec(&whatsapp_payload(statuses)).unwrap(),
    )
    .await
}

/// Waits until `app`'s live counters of `campaign` (`GET …/metrics`) equal
/// an independent recount of `db` (which also checks every message row and
/// the stored counters row), with the stored version; returns them. Another
/// instance's commits reach these counters through this instance's change
/// feed, hence the wait.
async fn converged(app: &TestApp, db: &TestDb, campaign: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let metrics = app.metrics(campaign).await;
        let recount = db.recount(campaign).await;
        let version = recount
            .stored_counters
            .as_ref()
            .map(|stored| stored["version"].clone());
        let counts = recount.checked(campaign);
        if counts_only(&metrics) == counts && version.as_ref() == Some(&metrics["version"]) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{} never caught up on {campaign} in {within:?}: live {metrics}, recount {counts}, \
             stored version {version:?}",
            app.address
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The statuses of a message's seen set (`GET /api/v1/messages/…`).
fn seen_of(message: &Value) -> BTreeSet<String> {
    message["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|seen| seen["status"].as_str().unwrap().to_owned())
        .collect()
}

/// The provider notifications of a message's timeline, by name.
fn timeline_events(message: &Value) -> BTreeSet<String> {
    message["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event"].as_str().unwrap().to_owned())
        .collect()
}

/// The `(provider_message_id, event)` of an `event: status`; `None` for
/// any other event.
fn change_of(event: &Event) -> Option<(String, String)> {
    (event.event == "status").then(|| {
        let data: Value = serde_json::from_str(&event.data).unwrap();
        (
            data["provider_message_id"].as_str().unwrap().to_owned(),
            data["event"].as_str().unwrap().to_owned(),
        )
    })
}

/// Describes events for a failure message.
fn describe<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<String> {
    events
        .into_iter()
        .map(|event| format!("{} id={} {}", event.event, event.id, event.data))
        .collect()
}

/// An SSE stream read on a thread of its own, so the test's work never
/// delays its events; each event comes with the instant it was parsed.
struct Recorder {
    events: tokio::sync::mpsc::UnboundedReceiver<(Instant, Event)>,
    /// Every event taken so far, in arrival order.
    log: Vec<(Instant, Event)>,
}

impl Recorder {
    /// Opens `path` on `app` with `token`, resuming after `last_event_id`
    /// when given, and records its events until the stream ends or the
    /// recorder goes. A refused stream ends at once (and says why on
    /// stderr).
    fn start(app: &TestApp, path: &str, token: &str, last_event_id: Option<&str>) -> Recorder {
        let url = app.url(path);
        let token = token.to_owned();
        let last_event_id = last_event_id.map(str::to_owned);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut request = reqwest::Client::new().get(&url).bearer_auth(token);
                if let Some(id) = last_event_id {
                    request = request.header("last-event-id", id);
                }
                let response = match request.send().await {
                    Ok(response) if response.status() == 200 => response,
                    other => {
                        eprintln!("recorder: {url} refused: {other:?}");
                        return;
                    }
                };
                let mut events = response.bytes_stream().eventsource();
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        event = events.next() => match event {
                            Some(Ok(event)) => {
                                let _ = tx.send((Instant::now(), event));
                            }
                            _ => return,
                        },
                    }
                }
            });
        });
        Recorder {
            events: rx,
            log: Vec::new(),
        }
    }

    /// Takes events until `done` holds for one; returns those this call
    /// took, or, after `within` or when the stream ends, why it stopped and
    /// what it took.
    async fn take_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Event) -> bool,
    ) -> Result<Vec<(Instant, Event)>, (&'static str, Vec<(Instant, Event)>)> {
        let deadline = Instant::now() + within;
        let mut taken: Vec<(Instant, Event)> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, event) = match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(arrived)) => arrived,
                Ok(None) => return Err(("the stream ended", taken)),
                Err(_) => return Err(("time ran out", taken)),
            };
            self.log.push((at, event.clone()));
            let stop = done(&event);
            taken.push((at, event));
            if stop {
                return Ok(taken);
            }
        }
    }

    /// Takes events until `done` holds for one; returns those this call
    /// took. Panics after `within` or when the stream ends.
    async fn until(
        &mut self,
        within: Duration,
        done: impl FnMut(&Event) -> bool,
    ) -> Vec<(Instant, Event)> {
        self.take_until(within, done)
            .await
            .unwrap_or_else(|(why, taken)| {
                panic!(
                    "{why} ({within:?}) before the event awaited; took {:#?}",
                    describe(taken.iter().map(|(_, event)| event))
                )
            })
    }

    /// Takes events until each of `changes` came as an `event: status`;
    /// returns when each first arrived. Panics, naming the missing ones,
    /// after `within` or when the stream ends.
    async fn changes(
        &mut self,
        within: Duration,
        changes: &BTreeSet<(String, String)>,
    ) -> BTreeMap<(String, String), Instant> {
        let mut missing = changes.clone();
        let mut arrived = BTreeMap::new();
        if missing.is_empty() {
            return arrived;
        }
        let taken = self
            .take_until(within, |event| {
                if let Some(change) = change_of(event) {
                    missing.remove(&change);
                }
                missing.is_empty()
            })
            .await
            .unwrap_or_else(|(why, taken)| {
                panic!(
                    "{why} ({within:?}) with {} of {} changes missing: {missing:?}; took {:#?}",
                    missing.len(),
                    changes.len(),
                    describe(taken.iter().map(|(_, event)| event))
                )
            });
        for (at, event) in taken {
            if let Some(change) = change_of(&event).filter(|change| changes.contains(change)) {
                arrived.entry(change).or_insert(at);
            }
        }
        arrived
    }

    /// Takes whatever arrives during `during`.
    async fn during(&mut self, during: Duration) -> Vec<Event> {
        let deadline = Instant::now() + during;
        let mut taken = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some((at, event))) => {
                    self.log.push((at, event.clone()));
                    taken.push(event);
                }
                Ok(None) | Err(_) => return taken,
            }
        }
    }
}

/// A TCP relay between one hub and the PostgreSQL server, on a thread of
/// its own, that the test can cut (every relayed connection closed, new
/// ones refused) and restore: one instance loses the database while the
/// others keep it, which no outage on the server's side can do (those end
/// every instance's sessions).
struct PgProxy {
    /// `DATABASE_URL` of the database through the relay.
    url: String,
    control: Arc<ProxyControl>,
    /// Stops the relay (and closes what it relays) when the proxy goes.
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// What the test and the relay's thread share.
struct ProxyControl {
    /// Whether new connections are relayed (else they are closed at once).
    open: AtomicBool,
    /// Bumped by every cut; each relayed connection ends when it changes.
    cuts: tokio::sync::watch::Sender<u64>,
}

impl PgProxy {
    /// Starts relaying to the server of `db`, on a free port of 127.0.0.1.
    fn start(db: &TestDb) -> PgProxy {
        let options = sqlx::postgres::PgConnectOptions::from_str(&db.url()).unwrap();
        let (host, port) = (options.get_host().to_owned(), options.get_port());
        assert!(
            !host.starts_with('/'),
            "PgProxy relays TCP; the test server is on a Unix socket ({host})"
        );
        let upstream = format!("{host}:{port}");
        let url = db.url();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let local: SocketAddr = listener.local_addr().unwrap();
        let url = if url.contains(&upstream) {
            url.replacen(&upstream, &local.to_string(), 1)
        } else {
            // No port in the URL: the default one, after the host.
            let at = url.find("://").unwrap() + 3;
            let host_at = url[at..].find('@').map_or(at, |user_end| at + user_end + 1);
            format!("{}{local}{}", &url[..host_at], &url[host_at + host.len()..])
        };
        assert!(url.contains(&local.to_string()), "cannot relay {url}");
        let control = Arc::new(ProxyControl {
            open: AtomicBool::new(true),
            cuts: tokio::sync::watch::channel(0).0,
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&control);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            let Ok((mut client, _)) = accepted else { continue };
                            // Watch for cuts before looking at `open`: a cut
                            // made after the look is seen by the watch.
                            let mut cut = shared.cuts.subscribe();
                            if !shared.open.load(Ordering::SeqCst) {
                                continue;
                            }
                            let upstream = upstream.clone();
                            tokio::spawn(async move {
                                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                                    return;
                                };
                                tokio::select! {
                                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                    _ = cut.changed() => {}
                                }
                            });
                        }
                    }
                }
            });
        });
        PgProxy {
            url,
            control,
            _stop: stop,
        }
    }

    /// Closes every relayed connection and refuses new ones until
    /// [`PgProxy::restore`].
    fn cut(&self) {
        self.control.open.store(false, Ordering::SeqCst);
        self.control.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// Relays new connections again.
    fn restore(&self) {
        self.control.open.store(true, Ordering::SeqCst);
    }
}

/// The instance a webhook call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Instance {
    A,
    B,
}

/// The same events, shuffled, duplicated and sent concurrently to two
/// instances (the same message on both at once), end exactly where one
/// instance given them one by one ends: per message status, seen set (with
/// first timestamps), error and timeline, and per campaign the counters on
/// both instances, which equal a recount of the messages. Part of the
/// messages are registered on B in the middle of it, so statuses buffered
/// on either instance meet a registration on the other.
#[actix_web::test]
async fn two_instances_fed_the_same_events_concurrently_end_where_one_instance_does() {
    // Arrange: A and B over one database; a third hub, alone on a database
    // of its own, as the reference.
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::postgres_fresh();
    let a = hub_on(&db.url()).await;
    let b = hub_on(&db.url()).await;
    let alone_db = TestDb::postgres_fresh();
    let alone = hub_on(&alone_db.url()).await;
    let c1: Vec<String> = (0..24).map(|i| format!("wamid.so.c1.{i}")).collect();
    let c2: Vec<String> = (0..24).map(|i| format!("wamid.so.c2.{i}")).collect();
    let late: Vec<String> = (0..12).map(|i| format!("wamid.so.late.{i}")).collect();
    for hub in [&a, &alone] {
        hub.register_whatsapp("t1", "c1", &refs(&c1)).await;
        hub.register_whatsapp("t1", "c2", &refs(&c2)).await;
    }
    // Each message gets some of the values, each delivered one to three
    // times (a redelivery is the same notification).
    let odds = [0.9, 0.7, 0.5, 0.2, 0.3, 0.2];
    let mut events: Vec<(String, &str, i64)> = Vec::new();
    let mut sent: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut firsts: Vec<Vec<(String, &str, i64)>> = Vec::new();
    for (n, id) in c1.iter().chain(&c2).chain(&late).enumerate() {
        let values = sent.entry(id.clone()).or_default();
        let mut once = Vec::new();
        for (k, ((value, _), odds)) in VALUES.iter().zip(odds).enumerate() {
            if rng.gen_bool(odds) {
                values.insert(value);
                let ts = 1_700_000_000 + 100 * n as i64 + 10 * k as i64 + rng.gen_range(0..5);
                once.push((id.clone(), *value, ts));
                for _ in 0..rng.gen_range(1..=3) {
                    events.push((id.clone(), value, ts));
                }
            }
        }
        firsts.push(once);
    }
    let call = |part: &[(String, &str, i64)]| {
        let statuses: Vec<WaStatus<'_>> = part
            .iter()
            .map(|(id, value, ts)| (id.as_str(), *value, *ts))
            .collect();
        serde_json::to_vec(&whatsapp_payload(&statuses)).unwrap()
    };
    let pick = |rng: &mut StdRng| {
        if rng.gen_bool(0.5) {
            (Instance::A, Instance::B)
        } else {
            (Instance::B, Instance::A)
        }
    };
    // First, a burst: for most messages, their values split over two calls
    // sent at the same moment, one to A and one to B, so both instances
    // change one message at once.
    let mut calls: Vec<(Instance, Vec<u8>)> = Vec::new();
    firsts.shuffle(&mut rng);
    for mut once in firsts.into_iter().filter(|once| once.len() >= 2) {
        if rng.gen_bool(0.7) {
            once.shuffle(&mut rng);
            let split = rng.gen_range(1..once.len());
            let (first, second) = pick(&mut rng);
            calls.push((first, call(&once[..split])));
            calls.push((second, call(&once[split..])));
        }
    }
    // Then every delivery, shuffled, in calls of one to four statuses, each
    // call to A or B and three in ten to both, at different moments.
    events.shuffle(&mut rng);
    let mut rest: Vec<(Instance, Vec<u8>)> = Vec::new();
    for four in events.chunks(4) {
        let size = rng.gen_range(1..=four.len());
        for part in [&four[..size], &four[size..]] {
            if part.is_empty() {
                continue;
            }
            let (first, second) = pick(&mut rng);
            rest.push((first, call(part)));
            if rng.gen_bool(0.3) {
                rest.push((second, call(part)));
            }
        }
    }
    rest.shuffle(&mut rng);
    calls.extend(rest);

    // Act: 24 calls in flight at a time, over both instances; the late
    // messages are registered on B a third of the way through.
    let started = Instant::now();
    let done = AtomicUsize::new(0);
    let load = futures_util::stream::iter(calls.iter().cloned())
        .map(|(instance, body)| {
            let hub = match instance {
                Instance::A => &a,
                Instance::B => &b,
            };
            let done = &done;
            async move {
                deliver_bytes(hub, body).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
        .buffer_unordered(24)
        .collect::<Vec<()>>();
    let registration = async {
        for (n, id) in late.iter().enumerate() {
            while done.load(Ordering::SeqCst) < calls.len() * n / (2 * late.len()) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let hub = if n % 2 == 0 { &b } else { &a };
            hub.register_whatsapp("t1", "c2", &[id.as_str()]).await;
        }
    };
    // The reference, meanwhile: the same calls one at a time, then the
    // registration.
    let one_by_one = async {
        for (_, body) in &calls {
            deliver_bytes(&alone, body.clone()).await;
        }
        alone.register_whatsapp("t1", "c2", &refs(&late)).await;
        started.elapsed()
    };
    let ((), (), alone_took) = futures_util::join!(
        async {
            load.await;
            eprintln!(
                "scale_out two instances: {} calls in {:?} on A and B",
                calls.len(),
                started.elapsed()
            );
        },
        registration,
        one_by_one
    );
    eprintln!("scale_out two instances: the same one by one in {alone_took:?} alone");

    // Assert: per campaign, both instances show the counters a recount
    // gives, which are the lone hub's.
    let context = format!("seed {seed}, {} calls", calls.len());
    for campaign in ["c1", "c2"] {
        let on_a = converged(&a, &db, campaign, HANG_GUARD).await;
        let on_b = converged(&b, &db, campaign, HANG_GUARD).await;
        let reference = converged(&alone, &alone_db, campaign, HANG_GUARD).await;
        assert_eq!(on_a["version"], on_b["version"], "{context}: {campaign}");
        assert_eq!(
            counts_only(&on_a),
            counts_only(&reference),
            "{context}: {campaign} on two instances against one alone"
        );
    }
    // Per message: both instances show the same message, which is the lone
    // hub's (timeline ids, arrival times and which redelivery changed
    // something aside), and what the status algebra says.
    let messages: Vec<(Value, Value, Value)> = futures_util::stream::iter(sent.keys())
        .map(|id| async {
            futures_util::join!(
                a.message("whatsapp", id),
                b.message("whatsapp", id),
                alone.message("whatsapp", id)
            )
        })
        .buffered(8)
        .collect()
        .await;
    for ((id, values), (on_a, on_b, reference)) in sent.iter().zip(messages) {
        assert_eq!(on_a, on_b, "{context}: {id} on A and on B");
        for key in ["campaign_id", "status", "seen", "error"] {
            assert_eq!(on_a[key], reference[key], "{context}: {id}: {key}");
        }
        let notifications = |message: &Value| -> Vec<String> {
            let mut each: Vec<String> = message["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .map(|event| {
                    format!(
                        "{} {} {} {}",
                        event["event"], event["status"], event["provider_at"], event["details"]
                    )
                })
                .collect();
            each.sort();
            each
        };
        assert_eq!(
            notifications(&on_a),
            notifications(&reference),
            "{context}: {id}: timeline"
        );
        let seen = seen_after(values.iter().copied());
        assert_eq!(seen_of(&on_a), seen, "{context}: {id}: seen set");
        assert_eq!(on_a["status"], current_status(&seen), "{context}: {id}");
        assert_eq!(
            timeline_events(&on_a),
            values.iter().map(|value| (*value).to_owned()).collect(),
            "{context}: {id}: one timeline event per distinct notification"
        );
    }
}

/// Asserts that each change arrived within [`FOLLOW_BOUND`] (plus
/// [`FOLLOW_MARGIN`]) of its acknowledgement; returns the slowest.
fn assert_followed_in_time(
    what: &str,
    acked: &BTreeMap<(String, String), Instant>,
    arrived: &BTreeMap<(String, String), Instant>,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for (change, at) in acked {
        let came = arrived
            .get(change)
            .unwrap_or_else(|| panic!("{what}: {change:?} never came"));
        let late = came.saturating_duration_since(*at);
        assert!(
            late <= FOLLOW_BOUND + FOLLOW_MARGIN,
            "{what}: {change:?} came {late:?} after its commit was acknowledged"
        );
        slowest = slowest.max(late);
    }
    slowest
}

/// Asserts that a campaign stream's ids (versions) never go backwards,
/// that its status events have rising versions, and that it carried each
/// of `changes` exactly once and no other status.
fn assert_campaign_stream_in_order(log: &[(Instant, Event)], changes: &BTreeSet<(String, String)>) {
    let events: Vec<&Event> = log.iter().map(|(_, event)| event).collect();
    let mut last_id = i64::MIN;
    let mut last_status = i64::MIN;
    for event in &events {
        if event.id.is_empty() {
            continue;
        }
        let id: i64 = event.id.parse().unwrap();
        assert!(
            id >= last_id,
            "the version went back from {last_id} to {id}: {:#?}",
            describe(events.iter().copied())
        );
        last_id = id;
        if event.event == "status" {
            assert!(id > last_status, "status versions not rising at {id}");
            last_status = id;
        }
    }
    let mut carried: Vec<(String, String)> = events.iter().filter_map(|e| change_of(e)).collect();
    carried.sort();
    let expected: Vec<(String, String)> = changes.iter().cloned().collect();
    assert_eq!(carried, expected, "status events on the campaign stream");
}

/// A change ingested on A reaches B's campaign and tenant streams within
/// a second; then every session of the database is ended (B's LISTEN
/// connection, A's writer) and B's streams still get every change, in
/// order; then B alone loses the database while A commits (notifications
/// B cannot hear), and once B can reach it again its streams get what was
/// committed meanwhile, re-read from its cursor. B's `GET …/metrics`
/// follows all along.
#[actix_web::test]
async fn changes_on_one_instance_reach_the_other_instances_streams_in_time_and_after_reconnects() {
    let _timing = HORIZON.read().await;
    // Arrange: A on the database, B through a relay the test can cut; B's
    // streams open and live (their snapshots arrived).
    let db = TestDb::postgres_fresh();
    let relay = PgProxy::start(&db);
    let a = hub_on(&db.url()).await;
    let b = hub_on(&relay.url).await;
    let ids: Vec<String> = (0..23).map(|i| format!("wamid.follow{i}")).collect();
    a.register_whatsapp("t1", "c1", &refs(&ids)).await;
    a.register_whatsapp("t1", "c2", &["wamid.follow.other"])
        .await;
    let token = b.tenant_token("t1", None);
    let mut campaign = Recorder::start(
        &b,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        None,
    );
    let mut tenant = Recorder::start(&b, "/api/v1/stream?include=statuses", &token, None);
    campaign
        .until(HANG_GUARD, |event| event.event == "snapshot")
        .await;
    let mut snapshots = 0;
    tenant
        .until(HANG_GUARD, |event| {
            snapshots += usize::from(event.event == "snapshot");
            snapshots == 2
        })
        .await;
    let change = |id: &str| (id.to_owned(), "sent".to_owned());
    let mut all = BTreeSet::new();

    // 1. Three changes on A, one at a time: each reaches both streams of B
    // within a second.
    let mut slowest = Vec::new();
    for id in &ids[..3] {
        let acked = deliver(&a, &[(id.as_str(), "sent", 1_700_000_000)]).await;
        let expected = BTreeSet::from([change(id)]);
        all.extend(expected.clone());
        let acked = BTreeMap::from([(change(id), acked)]);
        for (name, stream) in [("campaign", &mut campaign), ("tenant", &mut tenant)] {
            let arrived = stream.changes(HANG_GUARD, &expected).await;
            slowest.push(assert_followed_in_time(name, &acked, &arrived));
        }
    }

    // 2. Every session ends (B's LISTEN connection and A's writer among
    // them); ten more changes on A, one at a time (retried while A
    // reconnects): B's streams get each, within a second of its commit.
    let ended = db.terminate_connections().await;
    let mut acked = BTreeMap::new();
    for id in &ids[3..13] {
        acked.insert(
            change(id),
            deliver(&a, &[(id.as_str(), "sent", 1_700_000_000)]).await,
        );
    }
    let expected: BTreeSet<_> = acked.keys().cloned().collect();
    all.extend(expected.clone());
    for (name, stream) in [("campaign", &mut campaign), ("tenant", &mut tenant)] {
        let arrived = stream.changes(HANG_GUARD, &expected).await;
        slowest.push(assert_followed_in_time(
            &format!("{name}, after {ended} sessions ended"),
            &acked,
            &arrived,
        ));
    }

    // 3. B alone is cut off; ten changes commit on A meanwhile, and their
    // wake-ups are lost for B. Nothing reaches B's streams while it cannot
    // read the database; once it can, everything does.
    relay.cut();
    let mut during_cut = BTreeSet::new();
    for id in &ids[13..] {
        deliver(&a, &[(id.as_str(), "sent", 1_700_000_000)]).await;
        during_cut.insert(change(id));
    }
    // Two polls and more: B would have read them by now if it could.
    let leaked: Vec<Event> = [
        campaign.during(Duration::from_millis(1200)).await,
        tenant.during(Duration::ZERO).await,
    ]
    .concat();
    assert!(
        !leaked
            .iter()
            .filter_map(change_of)
            .any(|change| during_cut.contains(&change)),
        "B got changes while cut off from the database: the relay does not cut: {:#?}",
        describe(&leaked)
    );
    relay.restore();
    let restored = Instant::now();
    all.extend(during_cut.clone());
    let mut caught_up = Duration::ZERO;
    for stream in [&mut campaign, &mut tenant] {
        let arrived = stream.changes(HANG_GUARD, &during_cut).await;
        for at in arrived.values() {
            caught_up = caught_up.max(at.saturating_duration_since(restored));
        }
    }

    // Assert: B's counters caught up; its campaign stream never went back
    // and carried each change once; the tenant stream too.
    converged(&b, &db, "c1", HANG_GUARD).await;
    converged(&a, &db, "c1", HANG_GUARD).await;
    campaign.during(Duration::from_millis(300)).await;
    tenant.during(Duration::ZERO).await;
    assert_campaign_stream_in_order(&campaign.log, &all);
    let mut carried: Vec<(String, String)> = tenant
        .log
        .iter()
        .filter_map(|(_, event)| change_of(event))
        .collect();
    carried.sort();
    assert_eq!(
        carried,
        all.iter().cloned().collect::<Vec<_>>(),
        "status events on the tenant stream"
    );
    eprintln!(
        "scale_out follow: slowest per phase {slowest:?}; caught up {caught_up:?} after the relay came back"
    );
}

/// Returns the id of the one event in a message's timeline.
async fn only_event_id(app: &TestApp, id: &str) -> i64 {
    let message = app.message("whatsapp", id).await;
    let timeline = message["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 1, "{id}: {message}");
    timeline[0]["id"].as_i64().unwrap()
}

/// The status events a resuming client gets: everything up to the end of
/// the replay, then nothing more for a while.
async fn resumed_changes(app: &TestApp, token: &str, after: i64) -> Vec<(String, String)> {
    let mut resumed = Recorder::start(
        app,
        "/api/v1/stream?include=statuses",
        token,
        Some(&after.to_string()),
    );
    // The snapshots and the replay are queued at once on connect; what
    // comes within the wait is all of it.
    resumed
        .during(Duration::from_millis(1500))
        .await
        .iter()
        .filter_map(change_of)
        .collect()
}

/// A transaction that sends no wake-up when it ends (another
/// application's, a migration, a statushub commit that changed no
/// counters) holds the changes committed after it began while it is open;
/// once it ends, they reach the streams at once (the follower looks again
/// every few tens of milliseconds while changes wait), not at the next
/// periodic read, up to 500 ms later.
#[actix_web::test]
async fn changes_held_back_by_a_silent_transaction_follow_soon_after_it_ends() {
    /// How late after the transaction ends a change may arrive: the
    /// follower's longest retry (50 ms), the fan-out and the recorder's
    /// thread (about 40 ms in all, measured). Without the retries a change
    /// waits for the next poll: here 200 ms after the end in every round
    /// (the poll comes 500 ms after the wake-up of its commit).
    const AFTER_END: Duration = Duration::from_millis(150);
    const ROUNDS: usize = 8;
    let _holding = HORIZON.write().await;
    // Arrange: one hub, a campaign stream with statuses, no coalescing
    // delay (the first change after a quiet spell goes out at once anyway).
    let db = TestDb::postgres_fresh();
    let url = db.url();
    let app = spawn_app_with(move |settings| {
        settings.database_url = url;
        settings.sse_coalesce = Duration::from_millis(1);
    })
    .await;
    let ids: Vec<String> = (0..ROUNDS).map(|i| format!("wamid.held{i}")).collect();
    app.register_whatsapp("t1", "c1", &refs(&ids)).await;
    let mut stream = Recorder::start(
        &app,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        None,
    );
    stream
        .until(HANG_GUARD, |event| event.event == "snapshot")
        .await;
    let mut session = sqlx::PgConnection::connect(&db.url()).await.unwrap();

    let mut late = Vec::new();
    for id in &ids {
        // Act: a transaction with an id stays open while a change commits...
        let mut silent = session.begin().await.unwrap();
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *silent)
            .await
            .unwrap();
        deliver(&app, &[(id.as_str(), "sent", 1_700_000_000)]).await;
        // ...which it holds back (else this test would prove nothing)...
        let held = stream.during(Duration::from_millis(300)).await;
        assert!(
            held.iter().all(|event| change_of(event).is_none()),
            "a change passed an open transaction: {:?}",
            describe(held.iter())
        );
        // ...until it ends, with no wake-up.
        silent.commit().await.unwrap();
        let ended = Instant::now();
        let expected = BTreeSet::from([(id.clone(), "sent".to_owned())]);
        let arrived = stream.changes(HANG_GUARD, &expected).await;
        late.push(arrived[&(id.clone(), "sent".to_owned())].duration_since(ended));
    }

    // Assert: all but one round (a loaded machine may delay one) within
    // the bound.
    let in_time = late.iter().filter(|late| **late <= AFTER_END).count();
    assert!(
        in_time >= ROUNDS - 1,
        "changes arrived {late:?} after the transaction holding them ended"
    );
}

/// Event ids are drawn when a transaction inserts, not when it commits: a
/// slow instance's commit (made here by hand, as the hub makes one) holds
/// the lower id and commits after a commit with a higher id. Both reach a
/// live tenant-stream subscriber; a client resuming from the first event
/// it saw gets the other, and one resuming from before both gets both, in
/// the live order.
#[actix_web::test]
async fn events_committed_out_of_id_order_reach_live_and_resuming_tenant_streams() {
    let _holding = HORIZON.write().await;
    // Arrange: two campaigns of one tenant, one event before everything,
    // and a live tenant stream.
    let db = TestDb::postgres_fresh();
    let app = hub_on(&db.url()).await;
    app.register_whatsapp("t1", "c1", &["wamid.ooo.c1a", "wamid.ooo.c1b"])
        .await;
    app.register_whatsapp("t1", "c2", &["wamid.ooo.c2a"]).await;
    app.send_statuses(&[("wamid.ooo.c1a", "sent", 1_700_000_000)])
        .await;
    let before_both = only_event_id(&app, "wamid.ooo.c1a").await;
    let token = app.tenant_token("t1", None);
    let mut live = Recorder::start(&app, "/api/v1/stream?include=statuses", &token, None);
    let mut snapshots = 0;
    live.until(HANG_GUARD, |event| {
        snapshots += usize::from(event.event == "snapshot");
        snapshots == 2
    })
    .await;
    let c2_pk = db
        .fetch(
            "SELECT id FROM campaigns WHERE tenant_id = 't1' AND campaign_id = 'c2'",
            &[],
        )
        .await[0][0]
        .int();

    // Act: T1, a slow instance's commit for c2 (the hub's statements: the
    // campaign's lock first, then the event, the message, the counters by
    // delta, the outbox row and the wake-up), stays open...
    let mut session = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let mut t1 = session.begin().await.unwrap();
    let now_ms = 1_700_000_100_000_i64;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(c2_pk)
        .execute(&mut *t1)
        .await
        .unwrap();
    let (message_pk, version): (i64, i64) = sqlx::query_as(
        "SELECT m.id, k.version FROM messages m JOIN campaign_counters k ON k.campaign_pk = m.campaign_pk
         WHERE m.provider_message_id = 'wamid.ooo.c2a'",
    )
    .fetch_one(&mut *t1)
    .await
    .unwrap();
    let slow_id: i64 = sqlx::query_scalar(
        "INSERT INTO status_events (idempotency_key, message_pk, campaign_pk, event, status, changed,
                                    campaign_version, message_status, provider_ts, details, received_at)
         VALUES ('wa:wamid.ooo.c2a:sent', $1, $2, 'sent', 'sent', true, $3, 'sent', $4, NULL, $4)
         RETURNING id",
    )
    .bind(message_pk)
    .bind(c2_pk)
    .bind(version + 1)
    .bind(now_ms)
    .fetch_one(&mut *t1)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE messages SET seen = 1, status = 'sent', sent_at = $2, updated_at = $2 WHERE id = $1",
    )
    .bind(message_pk)
    .bind(now_ms)
    .execute(&mut *t1)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE campaign_counters SET version = version + 1, sent = sent + 1,
                now_pending = now_pending - 1, now_sent = now_sent + 1, updated_at = $2
         WHERE campaign_pk = $1",
    )
    .bind(c2_pk)
    .bind(now_ms)
    .execute(&mut *t1)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO campaign_changes (campaign_pk, version, total, sent, delivered, read, clicked,
                complained, now_pending, now_sent, now_delivered, now_read, now_failed, updated_at)
         SELECT campaign_pk, version, total, sent, delivered, read, clicked, complained, now_pending,
                now_sent, now_delivered, now_read, now_failed, updated_at
         FROM campaign_counters WHERE campaign_pk = $1",
    )
    .bind(c2_pk)
    .execute(&mut *t1)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('statushub_changes', '')")
        .execute(&mut *t1)
        .await
        .unwrap();
    // ...while the hub commits a change of c1, with a higher event id...
    app.send_statuses(&[("wamid.ooo.c1b", "delivered", 1_700_000_001)])
        .await;
    let fast_id = only_event_id(&app, "wamid.ooo.c1b").await;
    assert!(
        slow_id < fast_id,
        "the premise: T1's event {slow_id} holds the lower id, the hub's {fast_id} the higher"
    );
    // ...then T1 commits.
    t1.commit().await.unwrap();
    session.close().await.unwrap();

    // Assert: the live subscriber gets both.
    let slow = ("wamid.ooo.c2a".to_owned(), "sent".to_owned());
    let fast = ("wamid.ooo.c1b".to_owned(), "delivered".to_owned());
    live.changes(HANG_GUARD, &BTreeSet::from([slow.clone(), fast.clone()]))
        .await;
    // Only those: the event committed before the stream opened is in its
    // snapshot (even when other tests' transactions held the horizon
    // back, so that the snapshot's position is before it).
    let received: Vec<(String, (String, String))> = live
        .log
        .iter()
        .filter_map(|(_, event)| change_of(event).map(|change| (event.id.clone(), change)))
        .collect();
    let ids: Vec<String> = [slow_id, fast_id].map(|id| id.to_string()).into();
    let mut received_ids: Vec<String> = received.iter().map(|(id, _)| id.clone()).collect();
    received_ids.sort_by_key(|id| id.parse::<i64>().unwrap());
    assert_eq!(
        received_ids, ids,
        "live: exactly the two events, each once, by event id: {received:?}"
    );
    let live_order: Vec<(String, String)> =
        received.iter().map(|(_, change)| change.clone()).collect();
    let (first_id, _) = &received[0];
    let second = received[1].1.clone();
    // A client that saw the first resumes from it and gets the second.
    assert_eq!(
        resumed_changes(&app, &token, first_id.parse().unwrap()).await,
        [second],
        "resuming after {first_id} (live order {live_order:?})"
    );
    // A client that saw neither gets both, in the live order.
    assert_eq!(
        resumed_changes(&app, &token, before_both).await,
        live_order,
        "resuming from before both"
    );
    // The hub followed the hand-made commit's outbox row too.
    let metrics = converged(&app, &db, "c2", HANG_GUARD).await;
    assert_eq!(
        (&metrics["sent"], &metrics["version"]),
        (&1.into(), &(version + 1).into())
    );
}

/// A running `statushub serve` process, killed (SIGKILL) and reaped when
/// dropped, so that a failing test leaves no server behind.
struct Process(Child);

impl Process {
    /// `kill -9`, then waits for the process to be gone.
    fn kill_9(mut self) {
        self.0.kill().expect("kill -9 failed");
        self.0.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real binary on `db` (a data directory of its own, a free
/// port) and returns it with a [`TestApp`] that talks to it; waits until
/// it is ready.
async fn start_binary(db: &TestDb) -> (Process, TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_statushub"))
        .arg("serve")
        .env("STATUSHUB_BIND", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", db.url())
        .env("STATUSHUB_DATA_DIR", dir.path().join("data"))
        .env("WHATSAPP_WEBHOOK_SECRET", WHATSAPP_SECRET)
        .env("WHATSAPP_WEBHOOK_VERIFY_TOKEN", VERIFY_TOKEN)
        .env("STATUSHUB_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("STATUSHUB_AUTH_SECRET", AUTH_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("failed to start the statushub binary");
    let process = Process(child);
    let app = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client: test_client(),
        db_path: None,
        dir,
        db: db.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = app.client.get(app.url("/readyz")).send().await {
            if response.status() == 200 {
                return (process, app);
            }
        }
        assert!(
            Instant::now() < deadline,
            "statushub did not become ready at {}",
            app.address
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kill -9` of one of two instances in the middle of a load on both loses
/// nothing it acknowledged: every status A answered 200 (and B) is in the
/// message's seen set and timeline, read through B, and B's counters equal
/// a recount of the messages.
#[actix_web::test]
async fn kill_9_of_one_instance_under_load_loses_nothing_it_acknowledged() {
    // Arrange: two real processes on one database, 300 messages in three
    // campaigns.
    let db = TestDb::postgres_fresh();
    let ((process_a, a), (_process_b, b)) =
        futures_util::join!(start_binary(&db), start_binary(&db));
    let campaigns = ["k9a", "k9b", "k9c"];
    let ids: Vec<String> = (0..300).map(|i| format!("wamid.k9.{i}")).collect();
    for (campaign, ids) in campaigns.iter().zip(ids.chunks(100)) {
        b.register_whatsapp("t1", campaign, &refs(ids)).await;
    }

    // Act: 24 senders, half on A, half on B. A is killed once it has
    // acknowledged 150 calls; B's senders go on until B has acknowledged
    // 150 more after the kill. A sender to A stops at its first failure.
    let acknowledged: Mutex<BTreeSet<(String, &str)>> = Mutex::default();
    let (on_a, on_b, refused_by_b) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let stop = AtomicBool::new(false);
    let statuses = ["sent", "delivered", "read", "failed"];
    let senders = (0..24).map(|sender| {
        let (hub, count) = if sender % 2 == 0 {
            (&a, &on_a)
        } else {
            (&b, &on_b)
        };
        let (ids, acknowledged, stop, refused_by_b) = (&ids, &acknowledged, &stop, &refused_by_b);
        async move {
            for round in 0.. {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let id = &ids[(sender * 13 + round * 7) % ids.len()];
                let status = statuses[(sender + round) % statuses.len()];
                let body = serde_json::to_vec(&whatsapp_payload(&[(
                    id,
                    status,
                    1_700_000_000 + round as i64,
                )]))
                .unwrap();
                let signature = statushub::webhooks::whatsapp::signature::sign(
                    WHATSAPP_SECRET.as_bytes(),
                    &body,
                );
                let answer = hub
                    .client
                    .post(hub.url("/webhooks/whatsapp"))
                    .header("x-hub-signature-256", signature)
                    .body(body)
                    .send()
                    .await;
                match answer.map(|response| response.status().as_u16()) {
                    Ok(200) => {
                        acknowledged.lock().unwrap().insert((id.clone(), status));
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    // B's senders retry what B refuses, as providers do.
                    Ok(503) if sender % 2 == 1 => {
                        refused_by_b.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(other) if sender % 2 == 1 => panic!("B answered {other}"),
                    Err(error) if sender % 2 == 1 => panic!("B failed: {error}"),
                    _ => return,
                }
            }
        }
    });
    let killer = async {
        let deadline = Instant::now() + HANG_GUARD;
        while on_a.load(Ordering::SeqCst) < 150 {
            assert!(
                Instant::now() < deadline,
                "A acknowledged {} calls in {HANG_GUARD:?}, B {}",
                on_a.load(Ordering::SeqCst),
                on_b.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        process_a.kill_9();
        let at_kill = on_b.load(Ordering::SeqCst);
        while on_b.load(Ordering::SeqCst) < at_kill + 150 {
            assert!(
                Instant::now() < deadline + HANG_GUARD,
                "B acknowledged too little after A was killed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.store(true, Ordering::SeqCst);
    };
    futures_util::join!(futures_util::future::join_all(senders), killer);
    let acknowledged = acknowledged.into_inner().unwrap();

    // Assert: B shows every acknowledged status of every message...
    let mut by_message: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, status) in &acknowledged {
        by_message.entry(id).or_default().push(status);
    }
    let mut lost = Vec::new();
    for (id, statuses) in &by_message {
        let message = b.message("whatsapp", id).await;
        let (seen, timeline) = (seen_of(&message), timeline_events(&message));
        for status in statuses {
            if !seen.contains(*status) || !timeline.contains(*status) {
                lost.push(format!("{id}:{status}"));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged statuses lost, such as {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
    // ...and its counters equal a recount of the stored messages.
    for campaign in campaigns {
        let metrics = converged(&b, &db, campaign, HANG_GUARD).await;
        assert_eq!(metrics["total"], 100);
    }
    eprintln!(
        "scale_out kill -9: A acknowledged {} calls, B {} ({} refused and retried); {} distinct statuses",
        on_a.load(Ordering::SeqCst),
        on_b.load(Ordering::SeqCst),
        refused_by_b.load(Ordering::SeqCst),
        acknowledged.len()
    );
}

/// Waits until `enough` holds; panics, saying `what` never happened, after
/// [`HANG_GUARD`].
async fn wait_for(seed: u64, what: &str, enough: impl Fn() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !enough() {
        assert!(Instant::now() < deadline, "seed {seed}: never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One webhook call of the outage test and its answer.
#[derive(Debug)]
struct Call {
    statuses: Vec<(String, &'static str, i64)>,
    code: u16,
    retry_after: bool,
    /// The phase when the call was sent and when it was answered: 0 before
    /// the outage, 1 during it, 2 once it is ending or over.
    sent_in: u8,
    answered_in: u8,
}

impl Call {
    fn body(&self) -> Vec<u8> {
        let statuses: Vec<WaStatus<'_>> = self
            .statuses
            .iter()
            .map(|(id, value, ts)| (id.as_str(), *value, *ts))
            .collect();
        serde_json::to_vec(&whatsapp_payload(&statuses)).unwrap()
    }
}

/// With the database refusing connections in the middle of a load,
/// webhooks get 503 with `Retry-After` and nothing else, `/readyz` is 503,
/// and nothing is acknowledged that is not committed: afterwards every
/// status answered 200 is stored, and no status is half-applied (each
/// message's seen set is exactly what its stored events give, and the
/// counters are a recount). Then the hub recovers by itself: webhooks are
/// answered 200 again, `/readyz` is 200, a stream opened before the outage
/// gets new changes, and the providers' retries of what was refused go
/// through.
#[actix_web::test]
async fn with_postgres_unreachable_webhooks_get_503_and_the_hub_recovers_by_itself() {
    let _timing = HORIZON.read().await;
    // Arrange: 150 messages, a stream, a ready hub; every notification
    // the providers will send is a distinct one (a message id and a
    // status), so that a status acknowledged but lost is never sent again.
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::postgres_fresh();
    let app = hub_on(&db.url()).await;
    let ids: Vec<String> = (0..150).map(|i| format!("wamid.down{i}")).collect();
    app.register_whatsapp("t1", "c1", &refs(&ids)).await;
    app.register_whatsapp("t1", "c1", &["wamid.down.after"])
        .await;
    let mut stream = Recorder::start(
        &app,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        None,
    );
    stream
        .until(HANG_GUARD, |event| event.event == "snapshot")
        .await;
    assert_eq!(app.readyz().await.status(), 200);
    let mut notifications: Vec<(String, &'static str, i64)> = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        for (k, value) in ["sent", "delivered", "read", "failed"]
            .into_iter()
            .enumerate()
        {
            notifications.push((id.clone(), value, 1_700_000_000 + 10 * n as i64 + k as i64));
        }
    }
    notifications.shuffle(&mut rng);
    let notifications = Mutex::new(notifications);

    // Act: eight providers send calls of one to three new statuses all
    // along, each retrying a refused call until it goes through; the
    // database refuses connections once 30 calls went through, for as long
    // as 30 calls take to be refused, then comes back.
    let phase = AtomicU8::new(0);
    let stop = AtomicBool::new(false);
    let calls: Mutex<Vec<Call>> = Mutex::default();
    let providers = (0..8_u64).map(|provider| {
        let (notifications, phase, stop, calls, app) =
            (&notifications, &phase, &stop, &calls, &app);
        let mut rng = StdRng::seed_from_u64(seed ^ provider);
        async move {
            let mut refused: Option<Vec<(String, &'static str, i64)>> = None;
            while !stop.load(Ordering::SeqCst) {
                let statuses = match refused.take() {
                    Some(statuses) => statuses,
                    None => {
                        let mut left = notifications.lock().unwrap();
                        let take = rng.gen_range(1..=3).min(left.len());
                        assert!(take > 0, "seed {seed}: the test ran out of notifications");
                        let at = left.len() - take;
                        left.split_off(at)
                    }
                };
                let mut call = Call {
                    statuses,
                    code: 0,
                    retry_after: false,
                    sent_in: phase.load(Ordering::SeqCst),
                    answered_in: 0,
                };
                let response = app.post_whatsapp_bytes(call.body()).await;
                call.answered_in = phase.load(Ordering::SeqCst);
                call.code = response.status().as_u16();
                call.retry_after = response.headers().contains_key("retry-after");
                if call.code == 503 {
                    refused = Some(call.statuses.clone());
                }
                calls.lock().unwrap().push(call);
                if refused.is_some() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
    let count =
        |done: &dyn Fn(&Call) -> bool| calls.lock().unwrap().iter().filter(|c| done(c)).count();
    let mut readyz_down = Vec::new();
    let mut recovered_in = Duration::ZERO;
    let control = async {
        wait_for(seed, "30 calls before the outage", || {
            count(&|c| c.code == 200) >= 30
        })
        .await;
        let outage = db.refuse_connections().await;
        phase.store(1, Ordering::SeqCst);
        readyz_down.push(app.readyz().await);
        wait_for(seed, "30 calls refused in the outage", || {
            count(&|c| c.sent_in == 1 && c.answered_in == 1) >= 30
        })
        .await;
        readyz_down.push(app.readyz().await);
        // Before the database comes back: a call answered in phase 1 was
        // answered while it refused every connection.
        phase.store(2, Ordering::SeqCst);
        outage.end().await;
        let back = Instant::now();
        wait_for(seed, "a call through after the outage", || {
            count(&|c| c.sent_in == 2 && c.code == 200) >= 1
        })
        .await;
        recovered_in = back.elapsed();
        wait_for(seed, "30 calls through after the outage", || {
            count(&|c| c.sent_in == 2 && c.code == 200) >= 30
        })
        .await;
        stop.store(true, Ordering::SeqCst);
    };
    futures_util::join!(futures_util::future::join_all(providers), control);
    let calls = calls.into_inner().unwrap();
    let context = format!("seed {seed}");

    // Assert: 503 with Retry-After or 200, nothing else; during the outage
    // only 503, and /readyz said so.
    for call in &calls {
        assert!(
            call.code == 200 || (call.code == 503 && call.retry_after),
            "{context}: {call:?}"
        );
        if call.sent_in == 1 && call.answered_in == 1 {
            assert_eq!(
                call.code, 503,
                "{context}: acknowledged with the database unreachable: {call:?}"
            );
        }
    }
    for readyz in &readyz_down {
        assert_eq!(readyz.status(), 503, "{context}: /readyz during the outage");
        assert!(readyz.headers().contains_key("retry-after"));
    }
    // /readyz recovers by itself.
    let deadline = Instant::now() + HANG_GUARD;
    while app.readyz().await.status() != 200 {
        assert!(Instant::now() < deadline, "{context}: /readyz stayed down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every acknowledged status is stored; every stored event is one that
    // was sent, and each message's seen set is exactly what its stored
    // events give (no event without its message change, nor the reverse);
    // the counters are a recount.
    let mut sent: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut acknowledged: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for call in &calls {
        for (id, value, _) in &call.statuses {
            sent.entry(id).or_default().insert(value);
            if call.code == 200 {
                acknowledged.entry(id).or_default().insert(value);
            }
        }
    }
    let messages: Vec<Value> = futures_util::stream::iter(&ids)
        .map(|id| app.message("whatsapp", id))
        .buffered(8)
        .collect()
        .await;
    for (id, message) in ids.iter().zip(&messages) {
        let stored = timeline_events(message);
        let acked: BTreeSet<String> = acknowledged
            .get(id.as_str())
            .into_iter()
            .flatten()
            .map(|value| (*value).to_owned())
            .collect();
        let sent_here: BTreeSet<String> = sent
            .get(id.as_str())
            .into_iter()
            .flatten()
            .map(|value| (*value).to_owned())
            .collect();
        assert!(
            stored.is_superset(&acked),
            "{context}: {id}: acknowledged {acked:?}, stored {stored:?}"
        );
        assert!(
            stored.is_subset(&sent_here),
            "{context}: {id}: stored {stored:?}, sent {sent_here:?}"
        );
        assert_eq!(
            seen_of(message),
            seen_after(stored.iter().map(String::as_str)),
            "{context}: {id}: seen set against stored events"
        );
    }
    converged(&app, &db, "c1", HANG_GUARD).await;
    // A stream opened before the outage gets changes made after it.
    let acked = deliver(&app, &[("wamid.down.after", "sent", 1_700_000_000)]).await;
    let change = ("wamid.down.after".to_owned(), "sent".to_owned());
    let arrived = stream
        .changes(HANG_GUARD, &BTreeSet::from([change.clone()]))
        .await;
    assert_followed_in_time(
        "the stream opened before the outage",
        &BTreeMap::from([(change, acked)]),
        &arrived,
    );
    // The providers' retries of what was refused go through, and then
    // every status sent is stored and counted.
    for call in calls.iter().filter(|call| call.code == 503) {
        deliver_bytes(&app, call.body()).await;
    }
    let messages: Vec<Value> = futures_util::stream::iter(&ids)
        .map(|id| app.message("whatsapp", id))
        .buffered(8)
        .collect()
        .await;
    for (id, message) in ids.iter().zip(&messages) {
        let expected = seen_after(sent.get(id.as_str()).into_iter().flatten().copied());
        assert_eq!(
            seen_of(message),
            expected,
            "{context}: {id} after the retries"
        );
        assert_eq!(
            message["status"],
            current_status(&expected),
            "{context}: {id}"
        );
    }
    converged(&app, &db, "c1", HANG_GUARD).await;
    eprintln!(
        "scale_out outage: {} calls ({} refused); first call through {recovered_in:?} after the database came back",
        calls.len(),
        calls.iter().filter(|call| call.code == 503).count()
    );
}

/// `/readyz` judges the write path on PostgreSQL too: with reads working
/// and writes refused, it is 503 (and webhooks too), while the API still
/// reads; once writes work again, both are back.
#[actix_web::test]
async fn readyz_is_503_on_postgres_when_reads_work_but_writes_do_not() {
    let db = TestDb::postgres_fresh();
    let app = hub_on(&db.url()).await;
    app.register_whatsapp("t1", "c1", &["wamid.ro"]).await;
    assert_eq!(app.readyz().await.status(), 200);

    let outage = db.refuse_writes().await;
    let ready = app.readyz().await;
    let read = app
        .get("/api/v1/messages/whatsapp/wamid.ro", ADMIN_TOKEN)
        .await;
    let webhook = app
        .post_whatsapp(&whatsapp_payload(&[("wamid.ro", "read", 1_700_000_000)]))
        .await;
    outage.end().await;

    assert_eq!(ready.status(), 503, "/readyz with writes refused");
    assert!(ready.headers().contains_key("retry-after"));
    assert_eq!(read.status(), 200, "reads work meanwhile");
    assert_eq!(webhook.status(), 503, "a webhook with writes refused");
    assert!(webhook.headers().contains_key("retry-after"));
    assert_eq!(app.readyz().await.status(), 200);
    deliver(&app, &[("wamid.ro", "read", 1_700_000_000)]).await;
    assert_eq!(app.message("whatsapp", "wamid.ro").await["status"], "read");
    app.assert_counts_agree("c1").await;
}

/// The outbox every instance follows (`campaign_changes`) is history kept
/// for an hour (the schema says so; SPEC: bounded stored history), not
/// forever: retention prunes its rows older than that, as it prunes the
/// timeline, and keeps the newer ones.
#[actix_web::test]
async fn retention_prunes_outbox_rows_older_than_an_hour() {
    let db = TestDb::postgres_fresh();
    let url = db.url();
    let app = spawn_app_with(move |settings| {
        settings.database_url = url;
        settings.retention.interval = Duration::from_millis(200);
    })
    .await;
    app.register_whatsapp("t1", "c1", &["wamid.outbox1", "wamid.outbox2"])
        .await;
    deliver(&app, &[("wamid.outbox1", "sent", 1_700_000_000)]).await;
    deliver(&app, &[("wamid.outbox2", "read", 1_700_000_001)]).await;
    let rows = db.count_rows("campaign_changes").await;
    assert_eq!(rows, 3, "one outbox row per commit that changed c1");

    // Every row but the newest was written two hours ago.
    db.tamper(&[
        "UPDATE campaign_changes SET updated_at = updated_at - 7200000
         WHERE id < (SELECT MAX(id) FROM campaign_changes)",
    ])
    .await;

    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let left = db.count_rows("campaign_changes").await;
        if left == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} outbox rows left {HANG_GUARD:?} after {} of them got two hours old \
             (retention runs every 200 ms)",
            rows - 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The hub goes on following its commits.
    deliver(&app, &[("wamid.outbox1", "read", 1_700_000_002)]).await;
    assert_eq!(converged(&app, &db, "c1", HANG_GUARD).await["read"], 2);
}

/// A dashboard that had version `v` of a campaign on A and reconnects to
/// B (A went away, or the load balancer chose B) never gets an older
/// snapshot than `v` there, nor `v`'s status again, even while B has not
/// followed `v` yet; it then gets what comes after. B lags here for as
/// long as a transaction elsewhere in the cluster stays open, which holds
/// every follower back (src/store/postgres/follow.rs); without one it lags
/// for the milliseconds a wake-up takes, and a reconnect can fall in them.
#[actix_web::test]
async fn resuming_on_an_instance_that_has_not_followed_yet_never_goes_back() {
    let _holding = HORIZON.write().await;
    // Arrange: B follows c1 (its campaign actor runs); a transaction of
    // some other client stays open, so no follower moves.
    let db = TestDb::postgres_fresh();
    let a = hub_on(&db.url()).await;
    let b = hub_on(&db.url()).await;
    a.register_whatsapp("t1", "c1", &["wamid.lag1", "wamid.lag2"])
        .await;
    converged(&b, &db, "c1", HANG_GUARD).await;
    let mut session = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let mut open = session.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .unwrap();
    // A change on A; a dashboard on A gets its counters (A's own commit).
    deliver(&a, &[("wamid.lag1", "sent", 1_700_000_000)]).await;
    let mut on_a = Recorder::start(
        &a,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        None,
    );
    let (_, snapshot) = on_a.until(HANG_GUARD, |_| true).await.remove(0);
    assert_eq!(snapshot.event, "snapshot");
    let had: i64 = snapshot.id.parse().unwrap();

    // Act: it reconnects to B, resuming from that version; later the open
    // transaction ends and one more change comes.
    let mut on_b = Recorder::start(
        &b,
        "/api/v1/campaigns/c1/stream?include=statuses",
        ADMIN_TOKEN,
        Some(&had.to_string()),
    );
    let while_lagging = on_b.during(Duration::from_millis(300)).await;
    open.commit().await.unwrap();
    session.close().await.unwrap();
    deliver(&a, &[("wamid.lag2", "read", 1_700_000_001)]).await;
    let next = ("wamid.lag2".to_owned(), "read".to_owned());
    on_b.changes(HANG_GUARD, &BTreeSet::from([next])).await;

    // Assert: nothing older than what it had, nor what it had again.
    let events: Vec<&Event> = on_b.log.iter().map(|(_, event)| event).collect();
    for event in &events {
        let id: i64 = event.id.parse().unwrap_or(i64::MAX);
        assert!(
            id > had || (id == had && event.event != "status"),
            "resumed from {had} on B, got {} {}: {:#?} (while B lagged: {:#?})",
            event.event,
            event.id,
            describe(events.iter().copied()),
            describe(&while_lagging)
        );
    }
}

/// A tenant stream opened while an older transaction is still in flight
/// somewhere takes its position below that transaction (the horizon), yet
/// its snapshot counts everything committed: a change committed just
/// before it opened is in the snapshot and never comes again as a live
/// status event, once the follower gets past the old transaction.
#[actix_web::test]
async fn a_tenant_stream_does_not_resend_what_its_snapshot_counts() {
    let _holding = HORIZON.write().await;
    let db = TestDb::postgres_fresh();
    let app = hub_on(&db.url()).await;
    app.register_whatsapp("t1", "c1", &["wamid.snap1", "wamid.snap2"])
        .await;
    // An older transaction in flight (some other client's).
    let mut session = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let mut older = session.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await
        .unwrap();
    deliver(&app, &[("wamid.snap1", "sent", 1_700_000_000)]).await;
    let token = app.tenant_token("t1", None);
    let mut stream = Recorder::start(&app, "/api/v1/stream?include=statuses", &token, None);
    let (_, snapshot) = stream
        .until(HANG_GUARD, |event| event.event == "snapshot")
        .await
        .pop()
        .unwrap();
    let counted: Value = serde_json::from_str(&snapshot.data).unwrap();
    assert_eq!(
        counted["sent"], 1,
        "the snapshot counts the change: {counted}"
    );

    older.commit().await.unwrap();
    session.close().await.unwrap();
    deliver(&app, &[("wamid.snap2", "sent", 1_700_000_001)]).await;
    let next = ("wamid.snap2".to_owned(), "sent".to_owned());
    stream
        .changes(HANG_GUARD, &BTreeSet::from([next.clone()]))
        .await;

    let carried: Vec<(String, String)> = stream
        .log
        .iter()
        .filter_map(|(_, event)| change_of(event))
        .collect();
    assert_eq!(carried, [next], "live status events after the snapshot");
}

/// Runs `EXPLAIN EXECUTE` of each prepared lookup the commit and the reads
/// depend on, on `connection`, and returns the plans' text.
async fn lookup_plans(connection: &mut sqlx::PgConnection) -> Vec<String> {
    let mut plans = Vec::new();
    for execute in [
        "EXPLAIN EXECUTE find_messages(ARRAY['whatsapp'], ARRAY['wamid.x'])",
        "EXPLAIN EXECUTE existing_keys(ARRAY['wa:wamid.x:read'])",
        "EXPLAIN EXECUTE load_states(ARRAY[1, 2]::int8[])",
    ] {
        let rows: Vec<(String,)> = sqlx::query_as(execute)
            .fetch_all(&mut *connection)
            .await
            .unwrap_or_else(|error| panic!("{execute}: {error}"));
        plans.push(
            rows.into_iter()
                .map(|(line,)| line)
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    plans
}

/// Prepares the lookups as sqlx keeps them prepared on a connection.
async fn prepare_lookups(connection: &mut sqlx::PgConnection) {
    for prepare in [
        "PREPARE find_messages(text[], text[]) AS SELECT m.id, m.campaign_pk FROM UNNEST($1, $2) AS k(c, i) \
         JOIN messages m ON m.channel = k.c AND m.provider_message_id = k.i",
        "PREPARE existing_keys(text[]) AS SELECT idempotency_key FROM status_events WHERE idempotency_key = ANY($1)",
        "PREPARE load_states(int8[]) AS SELECT * FROM messages WHERE id = ANY($1)",
    ] {
        sqlx::query(prepare)
            .execute(&mut *connection)
            .await
            .unwrap_or_else(|error| panic!("{prepare}: {error}"));
    }
}

/// PostgreSQL keeps a generic plan per prepared statement and connection;
/// one made while the tables were empty scans them sequentially and is
/// never re-planned while they grow (autovacuum is off on this machine).
/// The writer's settings keep even that plan on the indexes, and the
/// readers' plan each execution for the table as it is.
#[actix_web::test]
async fn plans_made_while_the_tables_were_empty_still_read_by_index() {
    // Arrange: a fresh database, migrated by a hub, its tables empty.
    let db = TestDb::postgres_fresh();
    let hub = hub_on(&db.url()).await;
    let base = sqlx::postgres::PgConnectOptions::from_str(&db.url()).unwrap();
    let connect = |options: sqlx::postgres::PgConnectOptions| async move {
        sqlx::PgConnection::connect_with(&options).await.unwrap()
    };
    let mut plain = connect(base.clone()).await;
    let mut writer = connect(base.clone().options(statushub::store::PG_WRITER_OPTIONS)).await;
    let mut reader = connect(base.clone().options(statushub::store::PG_SESSION_OPTIONS)).await;
    for connection in [&mut plain, &mut writer] {
        // The generic plan, as a connection ends up with after five runs.
        sqlx::query("SET plan_cache_mode = force_generic_plan")
            .execute(&mut *connection)
            .await
            .unwrap();
        prepare_lookups(connection).await;
    }
    prepare_lookups(&mut reader).await;
    for _ in 0..6 {
        lookup_plans(&mut reader).await;
    }

    // Act: the tables grow (no ANALYZE runs).
    let ids: Vec<String> = (0..3000).map(|i| format!("wamid.plan.{i}")).collect();
    hub.register_whatsapp("t1", "c1", &refs(&ids)).await;
    let statuses: Vec<WaStatus<'_>> = ids
        .iter()
        .take(1000)
        .map(|id| (id.as_str(), "read", 1_700_000_000))
        .collect();
    for chunk in statuses.chunks(200) {
        hub.send_statuses(chunk).await;
    }

    // Assert: the trap is real here (a plain connection's generic plans
    // scan)...
    let scans = |plans: &[String]| {
        plans
            .iter()
            .filter(|plan| {
                plan.contains("Seq Scan on messages") || plan.contains("Seq Scan on status_events")
            })
            .count()
    };
    let plain_plans = lookup_plans(&mut plain).await;
    assert!(
        scans(&plain_plans) > 0,
        "no generic plan scans: {plain_plans:#?}"
    );
    // ...and the writer's and the readers' settings avoid it.
    let writer_plans = lookup_plans(&mut writer).await;
    assert_eq!(scans(&writer_plans), 0, "{writer_plans:#?}");
    let reader_plans = lookup_plans(&mut reader).await;
    assert_eq!(scans(&reader_plans), 0, "{reader_plans:#?}");
    for connection in [plain, writer, reader] {
        connection.close().await.ok();
    }
}
