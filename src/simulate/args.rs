//! The arguments of `statushub simulate`.

/// The SNS topic simulated SES events come from, unless `--sns-topic-arn`
/// names another.
pub const SNS_TOPIC_ARN: &str = "arn:aws:sns:us-east-1:123456789012:statushub-simulate";

/// Arguments of `statushub simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Base URL of the running hub.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: reqwest::Url,
    /// Messages in the demo campaign (in each of the two with `--channel both`).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub messages: u32,
    /// Statuses per second.
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Campaign id (default: `demo-` and a short random suffix).
    #[arg(long)]
    pub campaign: Option<String>,
    /// Tenant of the demo campaign.
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    /// Seed of the random lifecycle, for a reproducible run.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the hub keeps its generated secrets (read for the tokens below).
    #[arg(long, env = "STATUSHUB_DATA_DIR", default_value = ".statushub")]
    pub data_dir: std::path::PathBuf,
    /// The hub's admin token (default: from the data directory).
    #[arg(long, env = "STATUSHUB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<secrecy::SecretString>,
    /// The hub's Meta app secret (default: from the data directory).
    #[arg(long, env = "WHATSAPP_WEBHOOK_SECRET", hide_env_values = true)]
    pub whatsapp_webhook_secret: Option<secrecy::SecretString>,
    /// Which webhooks to play; `email` and `both` need `--sns-cert-dir`.
    #[arg(long, value_enum, default_value_t = SimulateChannel::Whatsapp)]
    pub channel: SimulateChannel,
    /// Where simulate keeps its SNS signing certificate and key (made once);
    /// the hub must run with the same `SNS_CERT_DIR` to trust them.
    #[arg(long, env = "SNS_CERT_DIR")]
    pub sns_cert_dir: Option<std::path::PathBuf>,
    /// SNS topic the simulated SES events come from (the hub's
    /// `SNS_TOPIC_ARNS` must accept it when set).
    #[arg(long, default_value = SNS_TOPIC_ARN)]
    pub sns_topic_arn: String,
    /// The hub's `SES_WEBHOOK_SECRET`, when it has one (sent as the
    /// basic-auth password, as SNS does).
    #[arg(long, env = "SES_WEBHOOK_SECRET", hide_env_values = true)]
    pub ses_webhook_secret: Option<secrecy::SecretString>,
}

/// The webhooks `statushub simulate` plays.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimulateChannel {
    /// Meta's WhatsApp status webhooks, signed with the app secret.
    Whatsapp,
    /// SES events in SNS notifications, signed with simulate's SNS key.
    Email,
    /// Both at once, as two campaigns (`<campaign>-whatsapp`, `<campaign>-email`).
    Both,
}

/// Parses a positive rate of at most 100,000 per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 100_000.0 => Ok(rate),
        _ => Err(format!(
            "invalid rate {text:?}: expected a number above 0 and at most 100000"
        )),
    }
}
