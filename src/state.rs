//! The state every HTTP handler shares, as `web::Data<AppState>`.
//!
//! Only what sits below the HTTP layer lives here (the hub, the settings,
//! the metrics). What belongs to one part of the HTTP layer is app data of
//! its own, registered at start-up: the store's read side (`web::Data<Store>`),
//! the SNS verifier and confirmations (`web::Data<SnsVerifier>`,
//! `web::Data<SnsSubscriptions>`), the stream limiter
//! (`web::Data<StreamLimiter>`). So handler modules import this module and
//! what is below them, never one another's owner.

use std::sync::Arc;
use std::time::Instant;

use crate::config::Settings;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// State every handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// Applies webhooks and registrations, serves live counters.
    pub hub: Hub,
    /// The validated settings the hub started with.
    pub settings: Arc<Settings>,
    /// Every metric `/metrics` exports.
    pub metrics: Metrics,
    /// When the hub started, for `/webhooks/health`'s uptime.
    pub started_at: Instant,
}
