//! The command line: `serve` (default), `migrate`, `token`, `simulate`,
//! `replay-dead-letters`.
//!
//! Each subcommand's arguments live beside the subcommand (`ServeArgs` and
//! `StoreArgs` in [`crate::config`], `SimulateArgs` in [`crate::simulate`]);
//! this module imports them and nothing imports it but the binary and
//! [`crate::run`].

use clap::{Parser, Subcommand};

use crate::config::{SecretArgs, ServeArgs, StoreArgs};
use crate::dead_letters::ReplayArgs;
use crate::simulate::SimulateArgs;
use crate::telemetry::LogFormat;

/// statushub: real-time delivery statuses for messaging campaigns.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Log lines as `text` (the default; coloured only on a terminal) or
    /// `json` (one object a line, for log collectors).
    #[arg(
        long,
        global = true,
        env = "STATUSHUB_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the hub (the default).
    Serve(Box<ServeArgs>),
    /// Creates or upgrades the database schema, then exits.
    Migrate(StoreArgs),
    /// Prints a subscriber/API token for a tenant.
    Token(TokenArgs),
    /// Registers a demo campaign on a running hub and plays signed WhatsApp
    /// and/or SES (through SNS) webhooks against it, so the debug page moves.
    Simulate(SimulateArgs),
    /// Asks a running hub to replay its open dead letters through its
    /// current parsers (over HTTP, with the admin token).
    ReplayDeadLetters(ReplayArgs),
}

/// Arguments of `statushub token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// Tenant the token may read and write.
    #[arg(long)]
    pub tenant: String,
    /// Restrict the token to these campaigns (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub campaign: Vec<String>,
    /// Lifetime: `90s`, `30m`, `24h`, `7d`.
    #[arg(long, default_value = "24h", value_parser = crate::auth::parse_ttl)]
    pub ttl: std::time::Duration,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub secrets: SecretArgs,
}
