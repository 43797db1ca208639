//! Prometheus metrics: one registry, named metrics as fields.

use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The `reason` labels of `statushub_sse_lagged_total`.
pub const SSE_LAG_REASONS: [&str; 3] = ["slow_client", "missed_changes", "resync"];

/// Every metric statushub exports. Cheap to clone (the metrics are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Every metric below, registered once, rendered by `/metrics`.
    registry: Registry,
    /// HTTP requests by route pattern and status code.
    pub http_requests: IntCounterVec,
    /// Seconds from a request's arrival to its response's head, by route
    /// pattern (for a stream, until it starts).
    pub http_request_seconds: HistogramVec,
    /// Statuses by outcome: applied, duplicate, unmatched.
    pub statuses: IntCounterVec,
    /// Payloads stored as dead letters.
    pub dead_letters: IntCounter,
    /// Dead-letter replays by outcome (`applied`, `partial`, `failed`,
    /// `refused`).
    pub dead_letter_replays: IntCounterVec,
    /// Rows per committed batch.
    pub db_batch_rows: Histogram,
    /// Seconds per commit.
    pub db_commit_seconds: Histogram,
    /// Failed commits.
    pub db_commit_failures: IntCounter,
    /// Rows waiting for a commit.
    pub db_queue_depth: IntGauge,
    /// Most rows that may wait for a commit (`STATUSHUB_MAX_QUEUE`): the
    /// bound `db_queue_depth` is compared with.
    pub db_queue_capacity: IntGauge,
    /// Pages of other instances' (and this one's) commits read from the
    /// outbox (PostgreSQL).
    pub feed_pages: IntCounter,
    /// Failed reads of the outbox (PostgreSQL); retried.
    pub feed_failures: IntCounter,
    /// Writes refused because the queue was full (answered 503).
    pub db_queue_rejections: IntCounter,
    /// Message ids looked up in the hub's directory, by result (`hit`:
    /// routed without reading the store; `miss`: read from the store).
    pub directory_lookups: IntCounterVec,
    /// Campaign actors running.
    pub active_campaign_actors: IntGauge,
    /// Rows per table, read when `/metrics` is scraped.
    pub table_rows: IntGaugeVec,
    /// Rows deleted by retention, per table.
    pub pruned_rows: IntCounterVec,
    /// SSE streams open.
    pub sse_streams: IntGauge,
    /// SSE streams refused because a cap was reached (answered 429).
    pub sse_streams_refused: IntCounter,
    /// Topics (campaigns, tenants, everything) that streams follow.
    pub sse_topics: IntGauge,
    /// Coalescing windows the fan-out handed to the topics.
    pub sse_fanout_windows: IntCounter,
    /// The fan-out's current window, seconds (longer than configured while
    /// ingestion is backed up).
    pub sse_fanout_window_seconds: Gauge,
    /// Times a stream was woken with something for it.
    pub sse_wakeups: IntCounter,
    /// Live events serialized, by kind, once each whatever the number of
    /// streams that send it: `metrics` (counters), `status`,
    /// `campaign_metrics` (a campaign stream's counters with its failure
    /// reasons and cost: one store read per frame) and `timeseries` (a
    /// read of the buckets changed since a version, shared by the streams
    /// that have it).
    pub sse_frames_encoded: IntCounterVec,
    /// SSE streams that fell behind, by what happened (`slow_client`:
    /// closed after taking nothing for a while; `missed_changes`: closed,
    /// a status stream that missed changes; `resync`: a metrics-only
    /// stream re-read its counters).
    pub sse_lagged: IntCounterVec,
    /// Webhooks refused because their signature did not verify, by
    /// channel (`whatsapp`, `email`).
    pub webhook_signature_failures: IntCounterVec,
    /// Failed loads of an SNS signing certificate (download, cert dir or
    /// parse); the messages waiting on it are answered 503.
    pub sns_certificate_failures: IntCounter,
    /// 1 while the store answers (as `/readyz` checks, also at every
    /// scrape), 0 when it does not.
    pub ready: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("statushub".to_owned()), None)
            .expect("a constant prefix is a valid metric namespace");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route and status code",
            ),
            &["route", "code"],
        )
        .expect("valid metric definition");
        let http_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Seconds from a request's arrival to its response's head, by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )
        .expect("valid metric definition");
        let statuses = IntCounterVec::new(
            Opts::new("statuses_total", "Provider statuses by outcome"),
            &["outcome"],
        )
        .expect("valid metric definition");
        let dead_letters =
            IntCounter::new("dead_letters_total", "Signed payloads kept as dead letters")
                .expect("valid metric definition");
        let dead_letter_replays = IntCounterVec::new(
            Opts::new(
                "dead_letter_replays_total",
                "Dead-letter replays by outcome (applied, partial, failed, refused)",
            ),
            &["outcome"],
        )
        .expect("valid metric definition");
        for outcome in ["applied", "partial", "failed", "refused"] {
            dead_letter_replays.with_label_values(&[outcome]);
        }
        let db_batch_rows = Histogram::with_opts(
            HistogramOpts::new("db_batch_rows", "Rows per committed batch").buckets(vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
            ]),
        )
        .expect("valid metric definition");
        let db_commit_seconds = Histogram::with_opts(
            HistogramOpts::new("db_commit_seconds", "Seconds per commit").buckets(vec![
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid metric definition");
        let db_commit_failures = IntCounter::new("db_commit_failures_total", "Failed commits")
            .expect("valid metric definition");
        let db_queue_depth = IntGauge::new("db_queue_depth", "Rows waiting for a commit")
            .expect("valid metric definition");
        let db_queue_capacity = IntGauge::new(
            "db_queue_capacity",
            "Most rows that may wait for a commit before writes get 503",
        )
        .expect("valid metric definition");
        let feed_pages = IntCounter::new(
            "change_feed_pages_total",
            "Pages of committed changes read from the outbox (PostgreSQL)",
        )
        .expect("valid metric definition");
        let feed_failures = IntCounter::new(
            "change_feed_failures_total",
            "Failed reads of the outbox (PostgreSQL), retried",
        )
        .expect("valid metric definition");
        let db_queue_rejections = IntCounter::new(
            "db_queue_rejections_total",
            "Writes refused with 503 because the queue was full",
        )
        .expect("valid metric definition");
        let directory_lookups = IntCounterVec::new(
            Opts::new(
                "id_directory_lookups_total",
                "Message ids routed from memory (hit) or read from the store (miss)",
            ),
            &["result"],
        )
        .expect("valid metric definition");
        let active_campaign_actors =
            IntGauge::new("active_campaign_actors", "Campaign actors running")
                .expect("valid metric definition");
        let table_rows = IntGaugeVec::new(
            Opts::new("table_rows", "Rows per table, counted at scrape time"),
            &["table"],
        )
        .expect("valid metric definition");
        let pruned_rows = IntCounterVec::new(
            Opts::new("pruned_rows_total", "Rows deleted by retention, per table"),
            &["table"],
        )
        .expect("valid metric definition");
        let sse_streams =
            IntGauge::new("sse_streams", "SSE streams open").expect("valid metric definition");
        let sse_streams_refused = IntCounter::new(
            "sse_streams_refused_total",
            "SSE streams refused with 429 because a cap was reached",
        )
        .expect("valid metric definition");
        let sse_topics = IntGauge::new(
            "sse_topics",
            "Campaigns, tenants and the everything topic followed by SSE streams",
        )
        .expect("valid metric definition");
        let sse_fanout_windows = IntCounter::new(
            "sse_fanout_windows_total",
            "Coalescing windows the SSE fan-out handed to the topics",
        )
        .expect("valid metric definition");
        let sse_fanout_window_seconds = Gauge::new(
            "sse_fanout_window_seconds",
            "Current SSE coalescing window (stretched while ingestion is backed up)",
        )
        .expect("valid metric definition");
        let sse_wakeups = IntCounter::new(
            "sse_wakeups_total",
            "SSE streams woken with something for them",
        )
        .expect("valid metric definition");
        let sse_frames_encoded = IntCounterVec::new(
            Opts::new(
                "sse_frames_encoded_total",
                "Live SSE events serialized, and campaign streams' store reads (once each, shared by every stream)",
            ),
            &["kind"],
        )
        .expect("valid metric definition");
        // Every kind shows from the start, at 0.
        for kind in ["metrics", "status", "campaign_metrics", "timeseries"] {
            sse_frames_encoded.with_label_values(&[kind]);
        }
        let sse_lagged = IntCounterVec::new(
            Opts::new(
                "sse_lagged_total",
                "SSE streams that fell behind: closed (slow_client, missed_changes) or resynchronised (resync)",
            ),
            &["reason"],
        )
        .expect("valid metric definition");
        let webhook_signature_failures = IntCounterVec::new(
            Opts::new(
                "webhook_signature_failures_total",
                "Webhooks refused because their signature did not verify",
            ),
            &["channel"],
        )
        .expect("valid metric definition");
        let sns_certificate_failures = IntCounter::new(
            "sns_certificate_failures_total",
            "Failed loads (download, cert dir, parse) of an SNS signing certificate",
        )
        .expect("valid metric definition");
        let ready = IntGauge::new("ready", "1 while the store answers, 0 when it does not")
            .expect("valid metric definition");
        // Every label value known in advance shows from the start, at 0, so
        // alerts and dashboards see a series (and a rate) before the first
        // event, and a scrape lists every family the rules use.
        for outcome in ["applied", "duplicate", "unmatched"] {
            statuses.with_label_values(&[outcome]);
        }
        for table in [
            "unmatched_statuses",
            "status_events",
            "dead_letters",
            "campaign_changes",
        ] {
            pruned_rows.with_label_values(&[table]);
        }
        for reason in SSE_LAG_REASONS {
            sse_lagged.with_label_values(&[reason]);
        }
        for channel in ["whatsapp", "email"] {
            webhook_signature_failures.with_label_values(&[channel]);
        }
        let metrics = Metrics {
            registry,
            http_requests,
            http_request_seconds,
            statuses,
            dead_letters,
            dead_letter_replays,
            db_batch_rows,
            db_commit_seconds,
            db_commit_failures,
            db_queue_depth,
            db_queue_capacity,
            feed_pages,
            feed_failures,
            db_queue_rejections,
            directory_lookups,
            active_campaign_actors,
            table_rows,
            pruned_rows,
            sse_streams,
            sse_streams_refused,
            sse_topics,
            sse_fanout_windows,
            sse_fanout_window_seconds,
            sse_wakeups,
            sse_frames_encoded,
            sse_lagged,
            webhook_signature_failures,
            sns_certificate_failures,
            ready,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.http_request_seconds.clone()),
            Box::new(metrics.statuses.clone()),
            Box::new(metrics.dead_letters.clone()),
            Box::new(metrics.dead_letter_replays.clone()),
            Box::new(metrics.db_batch_rows.clone()),
            Box::new(metrics.db_commit_seconds.clone()),
            Box::new(metrics.db_commit_failures.clone()),
            Box::new(metrics.db_queue_depth.clone()),
            Box::new(metrics.feed_pages.clone()),
            Box::new(metrics.feed_failures.clone()),
            Box::new(metrics.db_queue_rejections.clone()),
            Box::new(metrics.directory_lookups.clone()),
            Box::new(metrics.active_campaign_actors.clone()),
            Box::new(metrics.table_rows.clone()),
            Box::new(metrics.pruned_rows.clone()),
            Box::new(metrics.sse_streams.clone()),
            Box::new(metrics.sse_streams_refused.clone()),
            Box::new(metrics.sse_topics.clone()),
            Box::new(metrics.sse_fanout_windows.clone()),
            Box::new(metrics.sse_fanout_window_seconds.clone()),
            Box::new(metrics.sse_wakeups.clone()),
            Box::new(metrics.sse_frames_encoded.clone()),
            Box::new(metrics.db_queue_capacity.clone()),
            Box::new(metrics.sse_lagged.clone()),
            Box::new(metrics.webhook_signature_failures.clone()),
            Box::new(metrics.sns_certificate_failures.clone()),
            Box::new(metrics.ready.clone()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("each metric is registered once");
        }
        metrics
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which
        // `new` cannot create.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
