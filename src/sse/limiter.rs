//! Caps on open SSE streams: in total, per tenant and per token, so that one
//! token (or one tenant) cannot hold the hub's connections. A stream holds a
//! [`StreamPermit`] for its whole life; dropping it gives the slot back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::auth::Caller;
use crate::config::StreamLimits;
use crate::error::ApiError;

/// Counts open streams against [`StreamLimits`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StreamLimiter {
    /// The caps, from the settings.
    limits: StreamLimits,
    /// Streams open now, shared with every permit (which gives its slot back
    /// on drop).
    open: Arc<Mutex<OpenStreams>>,
}

/// Open streams; a tenant or token with none has no entry, so the maps hold
/// at most as many entries as there are open streams.
#[derive(Debug, Default)]
struct OpenStreams {
    /// Every open stream.
    total: usize,
    /// Open streams by tenant.
    per_tenant: HashMap<String, usize>,
    /// Open streams by token (its claims).
    per_token: HashMap<String, usize>,
}

/// One open stream's slot; released on drop.
#[derive(Debug)]
pub struct StreamPermit {
    /// The limiter's counts, decremented on drop.
    open: Arc<Mutex<OpenStreams>>,
    /// `(tenant, token key)` for a tenant token; `None` for the admin.
    holder: Option<(String, String)>,
}

impl StreamLimiter {
    pub fn new(limits: StreamLimits) -> Self {
        StreamLimiter {
            limits,
            open: Arc::default(),
        }
    }

    /// Takes a slot for `caller`, or answers 429 when a cap is reached. The
    /// admin counts toward the total only.
    pub fn acquire(&self, caller: &Caller) -> Result<StreamPermit, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.limits.total {
            return Err(ApiError::TooManyStreams("too many open streams"));
        }
        let holder = match caller {
            Caller::Admin => None,
            Caller::Tenant(claims) => {
                let token = token_key(claims);
                if open.per_token.get(&token).copied().unwrap_or(0) >= self.limits.per_token {
                    return Err(ApiError::TooManyStreams(
                        "too many open streams for this token",
                    ));
                }
                if open.per_tenant.get(&claims.sub).copied().unwrap_or(0) >= self.limits.per_tenant
                {
                    return Err(ApiError::TooManyStreams(
                        "too many open streams for this tenant",
                    ));
                }
                *open.per_token.entry(token.clone()).or_default() += 1;
                *open.per_tenant.entry(claims.sub.clone()).or_default() += 1;
                Some((claims.sub.clone(), token))
            }
        };
        open.total += 1;
        Ok(StreamPermit {
            open: Arc::clone(&self.open),
            holder,
        })
    }

    /// Returns how many streams are open.
    pub fn open_streams(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some((tenant, token)) = &self.holder {
            release(&mut open.per_tenant, tenant);
            release(&mut open.per_token, token);
        }
    }
}

fn release(counts: &mut HashMap<String, usize>, key: &str) {
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// Identifies a token by what it signs: two tokens with the same claims are
/// the same token (HS256 is deterministic).
fn token_key(claims: &crate::auth::Claims) -> String {
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{:?}",
        claims.sub, claims.iat, claims.exp, claims.campaigns
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Claims;

    fn tenant(sub: &str, iat: u64) -> Caller {
        Caller::Tenant(Claims {
            sub: sub.to_owned(),
            campaigns: None,
            exp: iat + 60,
            iat,
        })
    }

    fn limiter(total: usize, per_tenant: usize, per_token: usize) -> StreamLimiter {
        StreamLimiter::new(StreamLimits {
            total,
            per_tenant,
            per_token,
        })
    }

    #[test]
    fn each_cap_holds_and_dropping_a_permit_frees_its_slot() {
        let limiter = limiter(5, 3, 2);
        let first = limiter.acquire(&tenant("a", 1)).unwrap();
        let _second = limiter.acquire(&tenant("a", 1)).unwrap();
        assert!(limiter.acquire(&tenant("a", 1)).is_err(), "per token");
        let _third = limiter.acquire(&tenant("a", 2)).unwrap();
        assert!(limiter.acquire(&tenant("a", 3)).is_err(), "per tenant");
        let _other = limiter.acquire(&tenant("b", 1)).unwrap();
        let _admin = limiter.acquire(&Caller::Admin).unwrap();
        assert!(limiter.acquire(&Caller::Admin).is_err(), "in total");
        assert_eq!(limiter.open_streams(), 5);
        drop(first);
        assert_eq!(limiter.open_streams(), 4);
        let _again = limiter.acquire(&tenant("a", 1)).unwrap();
    }

    #[test]
    fn released_holders_leave_no_entries() {
        let limiter = limiter(10, 10, 10);
        let permits: Vec<_> = (0..5)
            .map(|i| limiter.acquire(&tenant(&format!("t{i}"), i)).unwrap())
            .collect();
        drop(permits);
        let open = limiter.open.lock().unwrap();
        assert_eq!(open.total, 0);
        assert!(open.per_tenant.is_empty() && open.per_token.is_empty());
    }
}
