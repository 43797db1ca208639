//! statushub: a real-time delivery-status hub for messaging campaigns.
//!
//! # Layout
//!
//! ```text
//! provider ──HTTP──▶ webhooks (verify, parse) ──▶ hub: CampaignActor (one per campaign)
//!                        ▲                              │ owns counters, serializes the campaign
//!                        │ 200 only after commit        ▼
//!                        └─────────────────────── hub: DbActor ──group commit──▶ store (SQLite)
//!                                                          │ after each commit, once
//!                                                          ▼
//!                                          sse::Broadcaster ──▶ SSE streams, debug page
//! ```
//!
//! - [`domain`]: the status algebra (seen sets, current status, counter
//!   deltas) and the provider-neutral [`domain::StatusUpdate`]; pure.
//! - [`webhooks`]: provider endpoints: signature checks and payload parsers.
//! - [`hub`]: the actors (router, campaign actors, DB actor) behind the
//!   cloneable [`hub::Hub`] handle.
//! - [`store`]: the database: migrations, the batched commit, reads.
//! - [`api`]: `/api/v1` for senders and dashboards; [`auth`]: tokens.
//! - [`sse`]: live streams: the broadcast point, coalescing, resume.
//! - [`ops`]: health, readiness, Prometheus metrics, the debug page.
//! - [`limits`]: what one client may hold: request deadline, no compressed
//!   bodies, connections below the descriptor limit.
//! - [`simulate`]: `statushub simulate`, a demo feed of signed webhooks.
//! - [`config`], [`secrets`], [`startup`], [`telemetry`], [`cli`]: wiring.

pub mod access;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod secrets;
pub mod simulate;
pub mod sse;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod webhooks;

use anyhow::Context as _;

use cli::Command;
use config::Settings;

/// Runs one subcommand to completion.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let settings = Settings::from_args(*args)?;
            let app = startup::Application::build(settings).await?;
            app.run_until_stopped().await.context("server failed")
        }
        Command::Migrate(args) => {
            let store = store::Store::connect(&args.database_url, args.sqlite_synchronous).await?;
            store.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Token(args) => {
            let secrets = secrets::load_or_generate(&args.store.data_dir, &args.secrets)?;
            let authenticator =
                auth::Authenticator::new(&secrets.auth_secret, &secrets.admin_token);
            let campaigns = (!args.campaign.is_empty()).then_some(args.campaign);
            println!("{}", authenticator.mint(&args.tenant, campaigns, args.ttl)?);
            Ok(())
        }
        Command::Simulate(args) => simulate::run(args).await,
    }
}
