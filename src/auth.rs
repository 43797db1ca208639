//! Who is calling the API: the admin (a static bearer token) or a tenant
//! (an HMAC-signed JWT, HS256, minted by `statushub token`).
//!
//! Tokens come from `Authorization: Bearer …` or, for EventSource, which
//! cannot set headers, from `?access_token=…`. Request logging records the
//! path only, never the query string, so tokens in URLs are not logged.

use std::future::{Ready, ready};
use std::time::Duration;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::error::ApiError;

/// Claims of a tenant token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The tenant this token may read and write.
    pub sub: String,
    /// When set, the only campaigns the token may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaigns: Option<Vec<String>>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
}

/// Verifies and mints tokens.
#[derive(Clone)]
pub struct Authenticator {
    /// Signs tenant tokens (`statushub token`, tests).
    encoding: EncodingKey,
    /// Verifies tenant tokens, HS256 only.
    decoding: DecodingKey,
    /// SHA-256 of the admin token: comparing digests in constant time hides
    /// the token's length too.
    admin_digest: [u8; 32],
    /// `false` when the admin token is empty: then nothing is the admin.
    admin_enabled: bool,
    /// `false` when the signing key is empty: then no tenant token verifies.
    tokens_enabled: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator { .. }")
    }
}

impl Authenticator {
    /// Returns an authenticator for the given signing secret and admin token.
    pub fn new(auth_secret: &SecretString, admin_token: &SecretString) -> Self {
        let secret = auth_secret.expose_secret().as_bytes();
        Authenticator {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            admin_digest: Sha256::digest(admin_token.expose_secret().as_bytes()).into(),
            admin_enabled: !admin_token.expose_secret().is_empty(),
            tokens_enabled: !secret.is_empty(),
        }
    }

    /// Mints a tenant token valid for `ttl`.
    pub fn mint(
        &self,
        tenant_id: &str,
        campaigns: Option<Vec<String>>,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let now = unix_now();
        let claims = Claims {
            sub: tenant_id.to_owned(),
            campaigns,
            iat: now,
            exp: now + ttl.as_secs(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Tells who `token` belongs to; `Err` for a forged, malformed or
    /// expired token.
    pub fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        // An empty token is no token, even if the admin token were empty.
        if token.is_empty() {
            return Err(ApiError::Unauthorized("missing bearer token"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.admin_enabled && bool::from(digest.ct_eq(&self.admin_digest)) {
            return Ok(Caller::Admin);
        }
        if !self.tokens_enabled {
            return Err(ApiError::Unauthorized("invalid or expired token"));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| ApiError::Unauthorized("invalid or expired token"))?;
        // RFC 7519: not accepted "on or after" `exp` (the library accepts
        // the second `exp` itself); streams end at `exp` too.
        if data.claims.exp <= unix_now() {
            return Err(ApiError::Unauthorized("invalid or expired token"));
        }
        Ok(Caller::Tenant(data.claims))
    }
}

/// An authenticated caller, extracted from the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The admin token: may do everything.
    Admin,
    /// A tenant token.
    Tenant(Claims),
}

impl Caller {
    /// Fails with 403 unless the caller may act for `tenant_id`.
    pub fn require_tenant(&self, tenant_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(claims) if claims.sub == tenant_id => Ok(()),
            Caller::Tenant(_) => Err(ApiError::Forbidden("this token is for another tenant")),
        }
    }

    /// Fails with 403 unless the caller may read `campaign_id` of `tenant_id`.
    pub fn require_campaign(&self, tenant_id: &str, campaign_id: &str) -> Result<(), ApiError> {
        self.require_tenant(tenant_id)?;
        match self {
            Caller::Tenant(Claims {
                campaigns: Some(allowed),
                ..
            }) if !allowed.iter().any(|each| each == campaign_id) => Err(ApiError::Forbidden(
                "this token is not valid for this campaign",
            )),
            _ => Ok(()),
        }
    }

    /// Fails with 403 unless the caller is the admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) => Err(ApiError::Forbidden("admin token required")),
        }
    }

    /// Returns when the caller's token stops being valid (Unix seconds);
    /// `None` for the admin token, which does not expire.
    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(claims) => Some(claims.exp),
        }
    }

    /// Returns the tenant of a tenant token.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(claims) => Some(&claims.sub),
        }
    }
}

#[derive(Deserialize)]
struct AccessTokenQuery {
    access_token: Option<String>,
}

/// Returns the token of a request: the bearer header, else `?access_token=`.
fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    web::Query::<AccessTokenQuery>::from_query(req.query_string())
        .ok()
        .and_then(|query| query.into_inner().access_token)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(auth) = req.app_data::<web::Data<Authenticator>>() else {
            return ready(Err(ApiError::Internal(anyhow::anyhow!(
                "authenticator not configured"
            ))));
        };
        let Some(token) = token_of(req) else {
            return ready(Err(ApiError::Unauthorized("missing bearer token")));
        };
        ready(auth.authenticate(&token))
    }
}

/// Parses a duration such as `90s`, `30m`, `24h` or `7d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?}: use s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator::new(
            &SecretString::from("signing-secret"),
            &SecretString::from("admin-token"),
        )
    }

    #[test]
    fn admin_token_is_recognised() {
        assert_eq!(
            authenticator().authenticate("admin-token").unwrap(),
            Caller::Admin
        );
    }

    #[test]
    fn minted_token_round_trips() {
        let auth = authenticator();
        let token = auth
            .mint("t1", Some(vec!["c1".into()]), Duration::from_secs(60))
            .unwrap();
        let Caller::Tenant(claims) = auth.authenticate(&token).unwrap() else {
            panic!("expected a tenant token");
        };
        assert_eq!(claims.sub, "t1");
        assert_eq!(claims.campaigns, Some(vec!["c1".to_owned()]));
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let auth = authenticator();
        let other = Authenticator::new(
            &SecretString::from("another-secret"),
            &SecretString::from("x"),
        );
        let forged = other.mint("t1", None, Duration::from_secs(60)).unwrap();
        assert!(auth.authenticate(&forged).is_err());
        let expired = auth.mint("t1", None, Duration::from_secs(0)).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(auth.authenticate(&expired).is_err());
        assert!(auth.authenticate("not a token").is_err());
    }

    /// Start-up refuses empty secrets; the authenticator holds the line
    /// anyway: an empty token is nobody, and empty keys admit no one.
    #[test]
    fn empty_tokens_and_empty_keys_admit_no_one() {
        assert!(authenticator().authenticate("").is_err());
        let empty = Authenticator::new(&SecretString::from(""), &SecretString::from(""));
        assert!(empty.authenticate("").is_err());
        let forged = empty.mint("t1", None, Duration::from_secs(60)).unwrap();
        assert!(empty.authenticate(&forged).is_err());
    }

    #[test]
    fn ttl_parses_units() {
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("3w").is_err());
    }
}
