//! What can go wrong in the hub.

/// Why the hub could not do what was asked. Every variant means "not
/// stored": callers answer 503 and providers retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("the write queue is full")]
    Overloaded,
    #[error("the store is unavailable")]
    Unavailable,
}
