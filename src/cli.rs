//! The command line: `serve` (default), `migrate`, `token`.

use clap::{Parser, Subcommand};

use crate::config::{SecretArgs, ServeArgs, StoreArgs};

/// statushub: real-time delivery statuses for messaging campaigns.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
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
