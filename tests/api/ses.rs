//! AWS SES events through SNS, end to end over HTTP: real RSA signatures
//! (by the crate's SNS signer, whose self-signed certificate is served from a
//! temporary `SNS_CERT_DIR`), AWS's genuine signed notifications and
//! documented SES examples from `../shared/vectors/`, topics, subscription
//! confirmation against a local stand-in, and the shared secret.
//!
//! The harness (signer, stand-in, envelopes) is in `ses/harness.rs`; the
//! tests are in one file per concern.

mod events;
pub(crate) mod harness;
mod signatures;
mod subscriptions;
