//! Reading a hub's Server-Sent Events with a real SSE parser.

use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource as _};
use futures_util::{Stream, StreamExt as _};

use super::TestApp;

/// An open SSE stream.
pub struct SseStream {
    events: std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>,
}

impl std::fmt::Debug for SseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseStream").finish_non_exhaustive()
    }
}

impl SseStream {
    /// Returns the stream of events itself, for readers of their own.
    pub fn into_events(self) -> std::pin::Pin<Box<dyn Stream<Item = Event> + Send>> {
        self.events
    }

    /// Returns the next event; panics after `within` or when the stream ends.
    pub async fn next_event(&mut self, within: Duration) -> Event {
        tokio::time::timeout(within, self.events.next())
            .await
            .expect("no event in time")
            .expect("stream ended")
    }

    /// Reads events until `done` holds for one (returned last); panics
    /// after `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Event) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, self.events.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("timed out after {} events: {:?}", seen.len(), seen.last())
                })
                .expect("stream ended");
            let stop = done(&event);
            seen.push(event);
            if stop {
                return seen;
            }
        }
    }
}

impl TestApp {
    /// Opens the SSE stream at `path` with `token` (resuming after
    /// `last_event_id` when given); asserts 200 and the SSE content type.
    pub async fn open_stream(
        &self,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> SseStream {
        let mut request = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseStream {
            events: Box::pin(
                response
                    .bytes_stream()
                    .eventsource()
                    .map(|event| event.unwrap()),
            ),
        }
    }
}
