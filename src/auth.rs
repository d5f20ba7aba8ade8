//! Token authentication: JWTs in `hello.token`, verified with the `jsonwebtoken` crate.
//!
//! With a shared secret (HS256) or a public key file (RS256/RS384/RS512 or ES256/ES384) the
//! server accepts a connection only with a valid token: `sub` becomes the user, `exp` is
//! enforced with a small leeway (and the session is closed when its token expires), and an
//! optional `rooms` claim limits what the user may subscribe and publish to. Patterns are
//! exact room names or prefixes ending in `*` (`"team-42-*"`, `"*"`). Without a key the
//! server trusts `hello.user` as claimed and says so at start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::protocol::MAX_USER_LEN;

/// `[auth]` settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens.
    pub jwt_secret: Option<String>,
    /// PEM file with an RSA or EC public key for RS*/ES* tokens.
    pub jwt_public_key: Option<PathBuf>,
    /// Clock skew tolerated on `exp` [default: 5s].
    #[serde(with = "humantime_serde")]
    pub leeway: Option<Duration>,
}

/// Claims heartwire reads from a token. Other claims are ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Rooms the user may subscribe and publish to: exact names or `prefix*` patterns.
    /// Absent: every room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
}

/// Which rooms a user may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPolicy {
    patterns: Vec<String>,
}

impl RoomPolicy {
    /// A policy from `rooms` claim patterns.
    pub fn new(patterns: Vec<String>) -> Self {
        RoomPolicy { patterns }
    }

    /// Whether `room` matches one of the patterns.
    pub fn allows(&self, room: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => room.starts_with(prefix),
            None => p == room,
        })
    }
}

/// A verified identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user (`sub`).
    pub user: Arc<str>,
    /// Room restrictions; `None` allows every room.
    pub rooms: Option<RoomPolicy>,
    /// How long until the token expires (leeway included).
    pub expires_in: Duration,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// `hello` had no token.
    #[error("a token is required")]
    Missing,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// Bad signature, wrong algorithm, malformed token or claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies tokens; built once per server from [`AuthConfig`].
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// The authenticator `config` describes, or `None` when no key is configured.
    pub fn from_config(config: &AuthConfig) -> Result<Option<Authenticator>, ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        let (key, algorithms) = match (&config.jwt_secret, &config.jwt_public_key) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "auth.jwt_secret",
                    "set either jwt_secret or jwt_public_key, not both".into(),
                ))
            }
            (Some(secret), None) => {
                if secret.len() < 16 {
                    return Err(invalid(
                        "auth.jwt_secret",
                        "must be at least 16 bytes".into(),
                    ));
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    vec![Algorithm::HS256],
                )
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    invalid(
                        "auth.jwt_public_key",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (
                        key,
                        vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                    )
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, vec![Algorithm::ES256, Algorithm::ES384])
                } else {
                    return Err(invalid(
                        "auth.jwt_public_key",
                        format!("{} is not an RSA or EC public key in PEM", path.display()),
                    ));
                }
            }
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = config.leeway.unwrap_or(Duration::from_secs(5)).as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Some(Authenticator { key, validation }))
    }

    /// Verifies `token` and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let claims = data.claims;
        if claims.sub.is_empty() || claims.sub.len() > MAX_USER_LEN {
            return Err(AuthError::Invalid("`sub` must be 1 to 128 bytes".into()));
        }
        let deadline = claims.exp.saturating_add(self.validation.leeway);
        Ok(Identity {
            user: claims.sub.into(),
            rooms: claims.rooms.map(RoomPolicy::new),
            expires_in: Duration::from_secs(deadline.saturating_sub(unix_now())),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Mints an HS256 token, for tests and `heartwire token`.
pub fn mint(
    secret: &str,
    user: &str,
    rooms: Option<Vec<String>>,
    ttl: Duration,
) -> Result<String, AuthError> {
    let claims = Claims {
        sub: user.to_owned(),
        exp: unix_now().saturating_add(ttl.as_secs()),
        rooms,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-test";

    fn auth() -> Authenticator {
        Authenticator::from_config(&AuthConfig {
            jwt_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn valid_token_gives_user_and_rooms() {
        let token = mint(
            SECRET,
            "alice",
            Some(vec!["lobby".into(), "team-*".into()]),
            Duration::from_secs(60),
        )
        .unwrap();
        let id = auth().verify(&token).unwrap();
        assert_eq!(&*id.user, "alice");
        let rooms = id.rooms.unwrap();
        assert!(
            rooms.allows("lobby")
                && rooms.allows("team-7")
                && !rooms.allows("lobby2")
                && !rooms.allows("other")
        );
        assert!(id.expires_in > Duration::from_secs(60));
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let forged = mint(
            "another-secret-of-16",
            "alice",
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(matches!(auth().verify(&forged), Err(AuthError::Invalid(_))));
        let claims = Claims {
            sub: "alice".into(),
            exp: unix_now() - 60,
            rooms: None,
        };
        let expired = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(auth().verify(&expired).unwrap_err(), AuthError::Expired);
        assert!(matches!(
            auth().verify("not.a.jwt"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn none_algorithm_is_refused() {
        // header {"alg":"none"} with an empty signature
        let token =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(auth().verify(token).is_err());
    }

    #[test]
    fn config_errors_name_the_key() {
        let err = Authenticator::from_config(&AuthConfig {
            jwt_secret: Some("short".into()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("auth.jwt_secret"));
        let err = Authenticator::from_config(&AuthConfig {
            jwt_public_key: Some("/nonexistent.pem".into()),
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("auth.jwt_public_key"));
    }
}
