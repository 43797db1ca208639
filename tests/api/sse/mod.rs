//! Live streams over real HTTP, read with a real SSE parser.
//!
//! This module holds the helpers that open and read a stream; the tests are
//! in one file per concern.

mod access;
mod analytics;
mod basics;
mod fanout;
mod resume;
mod slow;

use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource as _};
use futures_util::{Stream, StreamExt as _};
use serde_json::Value;

use crate::helpers::*;

type Events = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

/// Opens a stream at `path` with `token`, optionally resuming after `last_id`.
async fn open(app: &TestApp, path: &str, token: &str, last_id: Option<&str>) -> Events {
    app.open_stream(path, token, last_id).await.into_events()
}

/// Returns the next event, failing after `within`.
async fn next(events: &mut Events, within: Duration) -> Event {
    tokio::time::timeout(within, events.next())
        .await
        .expect("no event in time")
        .expect("stream ended")
}

/// Reads events until `done` says so, or fails after `within`.
async fn collect_until(
    events: &mut Events,
    within: Duration,
    mut done: impl FnMut(&Event) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} events: {:?}", seen.len(), seen.last()))
            .expect("stream ended");
        let stop = done(&event);
        seen.push(event);
        if stop {
            return seen;
        }
    }
}

/// Returns the next `count` events.
async fn take(events: &mut Events, count: usize) -> Vec<Event> {
    let mut seen = Vec::with_capacity(count);
    for _ in 0..count {
        seen.push(next(events, Duration::from_secs(5)).await);
    }
    seen
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|event| event.event.as_str()).collect()
}

fn data(event: &Event) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

/// The counters of a `snapshot` or `metrics` event: its data without the
/// failure reasons and cost that campaign streams add (see
/// `analytics.rs`), to compare with [`TestApp::metrics`].
fn counters(event: &Event) -> Value {
    let mut value = data(event);
    if let Some(object) = value.as_object_mut() {
        for key in ["failure_reasons", "failure_reasons_other", "cost"] {
            object.remove(key);
        }
    }
    value
}

fn ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("wamid.s{i}")).collect()
}

/// Events of a stream read on a thread of its own, so that the test's work
/// never delays them, each with the instant it arrived.
struct Recorder {
    events: tokio::sync::mpsc::UnboundedReceiver<(Instant, Event)>,
}

impl Recorder {
    /// Opens `path` with `token` and records its events until the stream
    /// ends or the recorder is dropped.
    fn start(app: &TestApp, path: &str, token: &str) -> Recorder {
        let url = app.url(path);
        let token = token.to_owned();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let response = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let mut events = response.bytes_stream().eventsource();
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        event = events.next() => match event {
                            Some(event) => {
                                let _ = tx.send((Instant::now(), event.unwrap()));
                            }
                            None => return,
                        },
                    }
                }
            });
        });
        Recorder { events: rx }
    }

    /// Returns the next event and when it arrived, failing after `within`.
    async fn next(&mut self, within: Duration) -> (Instant, Event) {
        tokio::time::timeout(within, self.events.recv())
            .await
            .expect("no event in time")
            .expect("stream ended")
    }

    /// Returns what arrived so far without waiting.
    fn drain(&mut self) -> Vec<(Instant, Event)> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }
}
