//! statushub: a real-time delivery-status hub for messaging campaigns.
//!
//! # Layout
//!
//! ```text
//! provider ──HTTP──▶ webhooks (verify, parse) ──▶ hub: Router ──▶ CampaignActor (one per campaign)
//!                        ▲                                          │ owns counters, serializes the campaign
//!                        │ 200 only after commit                    ▼
//!                        └──────────────────────────────── hub: DbActor ──group commit──▶ store (SQLite)
//!   unknown message ids: hub ──Buffer──▶ DbActor (applied when registered)  │ after each commit, once
//!                                                                          ▼
//!                                              hub::broadcast ──▶ sse (streams, debug page)
//! ```
//!
//! Layers, each importing only those below it (the one circle is the
//! router and the campaign actors, which start each other's lifecycle):
//!
//! - HTTP: [`startup`] (composition root; [`shutdown`]: draining on
//!   SIGTERM), [`webhooks`] (provider
//!   endpoints), [`api`] (`/api/v1`), [`sse`] (live streams: coalescing,
//!   resume, caps), [`ops`] (health, readiness, Prometheus, the debug
//!   page), sharing [`state`] (the hub, settings, metrics), [`access`]
//!   (what a caller may read), [`auth`] (tokens), [`error`] (the one HTTP
//!   error type) and [`limits`] (request deadline, no compressed bodies,
//!   connections below the descriptor limit); [`openapi`] documents them
//!   all (`GET /api/v1/openapi.json`).
//! - [`hub`]: the cloneable [`hub::Hub`] handle over the actors: the
//!   router, one campaign actor per active campaign, the DB actor (group
//!   commit, one group in flight), and the broadcast point each commit is
//!   published to once, which fans out to the streams' topics once per
//!   coalescing window.
//! - [`store`]: the database: migrations, the batched commit of typed
//!   writes, reads.
//! - [`domain`]: the status algebra (seen sets, current status, counter
//!   deltas) and the provider-neutral [`domain::StatusUpdate`]; pure.
//! - [`metrics`] (Prometheus registry), [`clock`] (Unix milliseconds),
//!   [`config`] and [`secrets`] (settings), [`telemetry`] (logs).
//! - Commands: [`cli`], [`simulate`] (a demo feed of signed webhooks) and
//!   [`dead_letters`] (`replay-dead-letters`, through a running hub).

pub mod access;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dead_letters;
pub mod domain;
pub mod error;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod request_id;
pub mod secrets;
pub mod shutdown;
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
            app.run_until_signalled().await.context("server failed")
        }
        Command::Migrate(args) => {
            let store = store::Store::connect(&args.store_settings()).await?;
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
        Command::ReplayDeadLetters(args) => dead_letters::run(args).await,
    }
}
