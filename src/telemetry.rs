//! Logging set-up: one subscriber, configured once, filtered by `RUST_LOG`,
//! writing text (the default) or one JSON object a line
//! (`STATUSHUB_LOG_FORMAT=json`).
//!
//! Every request runs in a `request` span carrying its `request_id`,
//! `method`, `path` and `route` (see `observe` in [`crate::startup`]), so
//! every line logged while serving it names the request: in text as the
//! `request{…}` prefix, in JSON under `"span"`.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;

/// How log lines are written (`STATUSHUB_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `message` and the
    /// event's fields at the top level, the current span's fields (the
    /// request id, route…) under `span`.
    Json,
}

/// Where and how to log: the format, and whether ANSI colours may be used
/// (only when the sink is a terminal; see [`stderr_is_terminal`]).
#[derive(Clone, Copy, Debug)]
pub struct LogStyle {
    /// Text or JSON.
    pub format: LogFormat,
    /// Colours in text lines. Even when true, colours stay off if `NO_COLOR`
    /// is set to a non-empty value (tracing-subscriber's own rule).
    pub ansi: bool,
}

impl LogStyle {
    /// Plain text without colours, the style for tests and files.
    pub const PLAIN: LogStyle = LogStyle {
        format: LogFormat::Text,
        ansi: false,
    };
}

/// Whether stderr is a terminal: a file or a pipe gets no colour codes.
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal()
}

/// Returns a subscriber that writes to `sink` in `style`, filtered by
/// `RUST_LOG` or else `default_filter`.
pub fn get_subscriber<Sink>(
    default_filter: &str,
    style: LogStyle,
    sink: Sink,
) -> impl Subscriber + Send + Sync
where
    Sink: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // One of the two layers is present; `Option<Layer>` is a layer that does
    // nothing when `None`, so the subscriber's type does not depend on the
    // format (no boxing on the logging path).
    let (text, json) = match style.format {
        LogFormat::Text => {
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(sink)
                .with_target(false);
            // Left alone, the layer colours unless NO_COLOR is set; off the
            // terminal it never does.
            let layer = if style.ansi {
                layer
            } else {
                layer.with_ansi(false)
            };
            (Some(layer), None)
        }
        LogFormat::Json => {
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_ansi(false)
                .with_writer(sink)
                .with_target(false);
            (None, Some(layer))
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
}

/// Installs `subscriber` as the global default; later calls are ignored (tests
/// call it once per binary).
pub fn init_subscriber(subscriber: impl Subscriber + Send + Sync) {
    let _ = tracing::subscriber::set_global_default(subscriber);
}
