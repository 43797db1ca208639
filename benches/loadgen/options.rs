//! The load generator's flags (clap). The module documentation of
//! `main.rs` says what each measurement uses; here, each flag's meaning.

use std::path::PathBuf;

use anyhow::bail;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, ValueEnum};
use secrecy::SecretString;

/// Flags of `cargo bench --bench loadgen -- …`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for statushub: signed WhatsApp or SES-through-SNS webhooks, \
             closed or open loop, SSE subscribers, RSS"
)]
pub struct Options {
    /// The hub; several instances of one hub comma-separated (registration
    /// and counters go to the first; webhooks and subscribers are spread
    /// over all in turn).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    pub url: Vec<String>,
    /// `load` (register, then send webhooks), `seed` (register only, then
    /// exit) or `ready` (wait for `/readyz`, report the time since the hub
    /// process started; needs `--hub-pid`).
    #[arg(long, value_enum, default_value_t = Mode::Load)]
    pub mode: Mode,
    /// `whatsapp` (Meta status webhooks, HMAC-signed) or `ses` (SES events
    /// in SNS notifications, RSA-signed; needs `--sns-cert-dir`).
    #[arg(long, value_enum, default_value_t = Channel::Whatsapp)]
    pub channel: Channel,
    /// Messages in each campaign (the total is this times `--campaigns`).
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Campaigns the messages are spread over (1: one hot campaign).
    #[arg(long, default_value_t = 1)]
    pub campaigns: usize,
    /// Order of the statuses: `in-order` (every message's statuses in their
    /// natural order, stage by stage), `shuffled` (each message's statuses
    /// in a random order, e.g. read before delivered) or `duplicated` (in
    /// order, each status sent again at a random later point).
    #[arg(long, value_enum, default_value_t = Order::InOrder)]
    pub order: Order,
    /// Statuses per WhatsApp webhook (Meta batches up to 20 or so); SES
    /// carries one event per SNS notification, so 1.
    #[arg(long, default_value_t = 1)]
    pub per_request: usize,
    /// Open loop: requests per second, request i due at start + i/R, latency
    /// measured from the due time. Without it, closed loop: each connection
    /// sends its next request when the previous one is answered.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connections (requests in flight at most).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Longest time the load runs (open loop: sends R × seconds requests at
    /// most).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Times the plan of statuses is played; 0 = as many as fit in
    /// `--seconds`. Every lap after the first is all redeliveries, which the
    /// hub answers as duplicates.
    #[arg(long, default_value_t = 1)]
    pub laps: usize,
    /// Metrics-only SSE subscribers (dashboards), spread over the campaigns.
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
    /// SSE subscribers with `?include=statuses`, spread over the campaigns.
    #[arg(long, default_value_t = 0)]
    pub status_subscribers: usize,
    /// Seconds subscribers may take, after the load, to reach each
    /// campaign's final version before they are stopped.
    #[arg(long, default_value_t = 5.0)]
    pub sse_grace: f64,
    /// The hub's process id(s), for RSS from /proc/PID/status (summed when
    /// several) and, with `--mode ready`, the start time.
    #[arg(long, value_delimiter = ',')]
    pub hub_pid: Vec<u32>,
    /// Messages per `POST /api/v1/messages`.
    #[arg(long, default_value_t = 10_000)]
    pub register_chunk: usize,
    /// Registration requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub register_parallel: usize,
    /// SES: most notifications signed before the clock starts (RSA costs
    /// the generator about 2 ms of CPU each, and each takes about 3 KB);
    /// any more the run sends are signed as they go, and counted.
    #[arg(long, default_value_t = 100_000)]
    pub presign: usize,
    /// Seed of the shuffles (random when absent; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Tenant of the load's campaigns.
    #[arg(long, default_value = "load")]
    pub tenant: String,
    /// Names this run's campaigns and messages (`load-<run>-<n>`): lowercase
    /// letters and digits, at most 16; random when absent.
    #[arg(long)]
    pub run_id: Option<String>,
    /// The hub's data directory, where its generated secrets are read.
    #[arg(long, env = "STATUSHUB_DATA_DIR", default_value = ".statushub")]
    pub data_dir: PathBuf,
    /// The hub's admin token (default: from the data directory).
    #[arg(long, env = "STATUSHUB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    /// The hub's Meta app secret (default: from the data directory).
    #[arg(long, env = "WHATSAPP_WEBHOOK_SECRET", hide_env_values = true)]
    pub whatsapp_webhook_secret: Option<SecretString>,
    /// The hub's `SNS_CERT_DIR`: the generator writes this run's signing
    /// certificate there (removed at the end).
    #[arg(long, env = "SNS_CERT_DIR")]
    pub sns_cert_dir: Option<PathBuf>,
    /// `TopicArn` of the SNS notifications (must be in the hub's
    /// `SNS_TOPIC_ARNS` when that is set).
    #[arg(long, default_value = statushub::simulate::SNS_TOPIC_ARN)]
    pub sns_topic_arn: String,
    /// The hub's `SES_WEBHOOK_SECRET`, when it has one (sent as the
    /// basic-auth password, as SNS does).
    #[arg(long, env = "SES_WEBHOOK_SECRET", hide_env_values = true)]
    pub ses_webhook_secret: Option<SecretString>,
    /// Also print the summary as one line of JSON, last.
    #[arg(long)]
    pub json: bool,
}

/// What the run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Load,
    Seed,
    Ready,
}

/// Which provider's webhooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Channel {
    Whatsapp,
    Ses,
}

impl Channel {
    /// The hub's name of the channel, as registrations carry it.
    pub const fn registered_as(self) -> &'static str {
        match self {
            Channel::Whatsapp => "whatsapp",
            Channel::Ses => "email",
        }
    }
}

/// Order of the statuses; see [`Options::order`].
// The variants are the flag's values: in-order, shuffled, duplicated.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Order {
    InOrder,
    Shuffled,
    Duplicated,
}

impl Options {
    /// Parses flags as the bench receives them: `cargo bench` adds `--bench`,
    /// which is dropped.
    pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Self, clap::Error> {
        Self::parse_with(Options::command(), args)
    }

    /// Parses `args` (the program name first) as [`Options::parse_args`]
    /// does, without reading any environment variable: tests must not pick
    /// up a developer's `SNS_CERT_DIR` or `STATUSHUB_ADMIN_TOKEN`.
    #[cfg(test)]
    pub fn parse_without_env<I: IntoIterator<Item = String>>(args: I) -> Result<Self, clap::Error> {
        Self::parse_with(
            Options::command().mut_args(|arg| arg.env(None::<&str>)),
            args,
        )
    }

    fn parse_with<I: IntoIterator<Item = String>>(
        command: clap::Command,
        args: I,
    ) -> Result<Self, clap::Error> {
        let matches =
            command.try_get_matches_from(args.into_iter().filter(|arg| arg != "--bench"))?;
        Options::from_arg_matches(&matches)
    }

    /// Refuses flags that cannot make a run.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.url.is_empty() || self.url.iter().any(|url| url.is_empty()) {
            bail!("--url names no hub");
        }
        if self.messages == 0 || self.campaigns == 0 {
            bail!("--messages and --campaigns must be at least 1");
        }
        if u32::try_from(self.messages).is_err() || u32::try_from(self.campaigns).is_err() {
            bail!("--messages and --campaigns must each fit in 32 bits");
        }
        if self.per_request == 0 || self.concurrency == 0 {
            bail!("--per-request and --concurrency must be at least 1");
        }
        if self.channel == Channel::Ses && self.per_request != 1 {
            bail!("--channel ses sends one SES event per SNS notification: --per-request 1");
        }
        if self
            .rate
            .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
        {
            bail!("--rate must be a positive number of requests per second");
        }
        if !(self.seconds.is_finite() && self.seconds > 0.0) {
            bail!("--seconds must be positive");
        }
        if !(self.sse_grace.is_finite() && self.sse_grace >= 0.0) {
            bail!("--sse-grace must be zero or more");
        }
        if self.register_chunk == 0 || self.register_parallel == 0 {
            bail!("--register-chunk and --register-parallel must be at least 1");
        }
        if let Some(run) = &self.run_id {
            let plain = run
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if run.is_empty() || run.len() > 16 || !plain {
                bail!("--run-id: 1 to 16 lowercase letters and digits");
            }
        }
        if self.mode == Mode::Ready && self.hub_pid.is_empty() {
            bail!("--mode ready measures from the hub's start: give --hub-pid");
        }
        if self.mode == Mode::Load && self.channel == Channel::Ses && self.sns_cert_dir.is_none() {
            bail!(
                "--channel ses signs with a key the hub trusts through its SNS_CERT_DIR: start \
                 the hub with SNS_CERT_DIR=<dir> and give the generator --sns-cert-dir <dir>"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        let args = std::iter::once("loadgen")
            .chain(args.iter().copied())
            .map(str::to_owned);
        let options = Options::parse_without_env(args).map_err(|error| error.to_string())?;
        options.check().map_err(|error| error.to_string())?;
        Ok(options)
    }

    #[test]
    fn defaults_are_a_closed_loop_whatsapp_run_on_one_hot_campaign() {
        let options = parse(&["--bench", "--admin-token", "x"]).unwrap();
        assert_eq!(options.url, ["http://127.0.0.1:8080"]);
        assert_eq!(options.mode, Mode::Load);
        assert_eq!(options.channel, Channel::Whatsapp);
        assert_eq!(options.order, Order::InOrder);
        assert_eq!((options.messages, options.campaigns), (10_000, 1));
        assert_eq!((options.per_request, options.concurrency), (1, 64));
        assert_eq!(options.laps, 1);
        assert_eq!(options.rate, None);
        // As cargo bench calls it, environment and all.
        let args = ["loadgen", "--bench", "--messages", "5"].map(str::to_owned);
        assert_eq!(Options::parse_args(args).unwrap().messages, 5);
    }

    #[test]
    fn flags_parse_into_their_fields() {
        let options = parse(&[
            "--url",
            "http://a:1,http://b:2",
            "--order",
            "shuffled",
            "--rate",
            "2500",
            "--per-request",
            "20",
            "--campaigns",
            "1000",
            "--subscribers",
            "10000",
            "--status-subscribers",
            "3",
            "--hub-pid",
            "12,34",
            "--run-id",
            "r1",
        ])
        .unwrap();
        assert_eq!(options.url, ["http://a:1", "http://b:2"]);
        assert_eq!(options.order, Order::Shuffled);
        assert_eq!(options.rate, Some(2_500.0));
        assert_eq!(options.per_request, 20);
        assert_eq!(options.campaigns, 1_000);
        assert_eq!(
            (options.subscribers, options.status_subscribers),
            (10_000, 3)
        );
        assert_eq!(options.hub_pid, [12, 34]);
        assert_eq!(
            parse(&["--order", "duplicated"]).unwrap().order,
            Order::Duplicated
        );
    }

    #[test]
    fn impossible_runs_are_refused_with_the_reason() {
        for (args, reason) in [
            (
                &[
                    "--channel",
                    "ses",
                    "--sns-cert-dir",
                    "d",
                    "--per-request",
                    "20",
                ][..],
                "one SES event",
            ),
            (&["--channel", "ses"][..], "SNS_CERT_DIR"),
            (&["--rate", "0"][..], "--rate"),
            (&["--rate", "NaN"][..], "--rate"),
            (&["--messages", "0"][..], "at least 1"),
            (&["--mode", "ready"][..], "--hub-pid"),
            (&["--run-id", "Has.Dots"][..], "--run-id"),
            (&["--seconds", "0"][..], "--seconds"),
        ] {
            let error = parse(args).unwrap_err();
            assert!(error.contains(reason), "{args:?}: {error}");
        }
        assert!(parse(&["--order", "sideways"]).is_err());
        assert!(parse(&["--channel", "ses", "--sns-cert-dir", "d"]).is_ok());
    }
}
