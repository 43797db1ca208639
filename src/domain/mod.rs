//! Provider-neutral domain types: the status algebra and the update every
//! parser produces.

pub mod analytics;
mod counters;
mod status;
mod update;

pub use counters::CampaignCounters;
pub use status::{CurrentStatus, Status, StatusSet, Tally};
pub use update::{Channel, Failure, Parsed, StatusUpdate, StoredDetails};
