//! Token authentication: JWTs in `hello.token`, verified with the `jsonwebtoken` crate.
//!
//! With a shared secret (HS256) or a public key file (RS256/RS384/RS512 or ES256/ES384) the
//! server accepts a connection only with a valid token: `sub` becomes the user, `exp` is
//! enforced with a small leeway (and the session is closed when its token expires), an
//! optional `rooms` claim limits the rooms the user may name (subscribe, publish, presence,
//! application frames), and an optional `send` claim limits the users it may `send` to. Patterns
//! are exact names or prefixes ending in `*` (`"team-42-*"`, `"*"`). A token without a `send`
//! claim, and every session when no key is configured, follows `auth.send` ([`SendPolicy`]).
//! Without a key the server trusts `hello.user` as claimed and says so at start.
//!
//! Verification needs the `jwt` feature; without it a configured key is a start-up error, so a
//! server never runs unauthenticated by accident.

use std::path::PathBuf;
use std::time::Duration;
#[cfg(feature = "jwt")]
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(feature = "jwt")]
use jsonwebtoken::errors::ErrorKind;
#[cfg(feature = "jwt")]
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::sync::Arc;

#[cfg(feature = "jwt")]
use serde::Serialize;
use serde::{Deserialize, Deserializer};

use crate::config::ConfigError;
use crate::names::UserName;

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
    /// Whom a session may `send` to when its token has no `send` claim (and every session when
    /// no key is configured) [default: any].
    pub send: SendPolicy,
}

/// `auth.send`: the users a session may `send` to unless its token (or the connect hook) says
/// otherwise. In TOML: `"any"`, `"none"`, or a list of user patterns (`["support", "bot-*"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SendPolicy {
    /// Every user (protocol v1's behaviour).
    #[default]
    Any,
    /// Nobody: direct messages only for tokens whose `send` claim allows them.
    None,
    /// Users matching these patterns (exact names or `prefix*`).
    Users(Vec<String>),
}

impl SendPolicy {
    /// Parses the command-line form: `any`, `none`, or comma-separated user patterns.
    pub fn parse(text: &str) -> SendPolicy {
        match text.trim() {
            "any" => SendPolicy::Any,
            "none" | "" => SendPolicy::None,
            list => SendPolicy::Users(
                list.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect(),
            ),
        }
    }

    /// The patterns a session starts with: `None` allows every user.
    pub(crate) fn patterns(&self) -> Option<Patterns> {
        match self {
            SendPolicy::Any => None,
            SendPolicy::None => Some(Patterns::new(Vec::new())),
            SendPolicy::Users(users) => Some(Patterns::new(users.clone())),
        }
    }
}

impl<'de> Deserialize<'de> for SendPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Word(String),
            Users(Vec<String>),
        }
        match Form::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected \"any\", \"none\" or a list of user patterns")
        })? {
            Form::Word(word) if word == "any" => Ok(SendPolicy::Any),
            Form::Word(word) if word == "none" => Ok(SendPolicy::None),
            Form::Word(word) => Err(serde::de::Error::custom(format!(
                "`{word}`: expected \"any\", \"none\" or a list of user patterns"
            ))),
            Form::Users(users) => Ok(SendPolicy::Users(users)),
        }
    }
}

/// Shortest HS256 secret the server accepts.
#[cfg(feature = "jwt")]
const MIN_SECRET_LEN: usize = 16;

/// Claims heartwire reads from a token. Other claims are ignored.
#[cfg(feature = "jwt")]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Rooms the user may name (subscribe, publish, presence, application frames): exact names
    /// or `prefix*` patterns. Absent: every room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Users the user may `send` to: exact names or `prefix*` patterns. Absent: `auth.send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Vec<String>>,
}

/// Which names (rooms or users) a session may use: exact names or `prefix*` patterns. Shared,
/// because the configured default is the same for every session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Patterns {
    patterns: Arc<[String]>,
}

impl Patterns {
    /// A policy from claim patterns.
    pub(crate) fn new(patterns: Vec<String>) -> Self {
        Patterns {
            patterns: patterns.into(),
        }
    }

    /// Whether `name` matches one of the patterns.
    pub(crate) fn allows(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
    }
}

/// A verified identity.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The user (`sub`).
    pub(crate) user: UserName,
    /// Room restrictions; `None` allows every room.
    pub(crate) rooms: Option<Patterns>,
    /// `send` restrictions from the token; `None` leaves them to `auth.send`.
    pub(crate) send: Option<Patterns>,
    /// How long until the token expires (leeway included).
    pub(crate) expires_in: Duration,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[cfg_attr(not(feature = "jwt"), allow(dead_code))]
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
#[cfg(feature = "jwt")]
pub(crate) struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

#[cfg(feature = "jwt")]
impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "jwt")]
impl Authenticator {
    /// The authenticator `config` describes, or `None` when no key is configured.
    pub(crate) fn from_config(config: &AuthConfig) -> Result<Option<Authenticator>, ConfigError> {
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
                check_secret(secret).map_err(|reason| invalid("auth.jwt_secret", reason))?;
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
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let claims = data.claims;
        let user = UserName::new(&claims.sub)
            .map_err(|e| AuthError::Invalid(format!("`sub` {}", e.reason())))?;
        let deadline = claims.exp.saturating_add(self.validation.leeway);
        Ok(Identity {
            user,
            rooms: claims.rooms.map(Patterns::new),
            send: claims.send.map(Patterns::new),
            expires_in: Duration::from_secs(deadline.saturating_sub(unix_now())),
        })
    }
}

/// Without the `jwt` feature no token can be verified; a configured key refuses to start.
#[cfg(not(feature = "jwt"))]
#[derive(Debug)]
pub(crate) enum Authenticator {}

#[cfg(not(feature = "jwt"))]
impl Authenticator {
    /// `None` when no key is configured; an error when one is, since it cannot be honoured.
    pub(crate) fn from_config(config: &AuthConfig) -> Result<Option<Authenticator>, ConfigError> {
        if config.jwt_secret.is_none() && config.jwt_public_key.is_none() {
            return Ok(None);
        }
        Err(ConfigError::Invalid {
            key: "auth.jwt_secret",
            reason: "heartwire was built without the `jwt` feature".into(),
        })
    }

    pub(crate) fn verify(&self, _token: &str) -> Result<Identity, AuthError> {
        match *self {}
    }
}

/// Checks an HS256 secret the way the server does, so that a token minted with it can be
/// verified.
#[cfg(feature = "jwt")]
fn check_secret(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!("must be at least {MIN_SECRET_LEN} bytes"));
    }
    Ok(())
}

#[cfg(feature = "jwt")]
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Mints an HS256 token, for tests and `heartwire token`. Refuses a secret or a user the
/// server would refuse.
#[cfg(feature = "jwt")]
pub fn mint_token(
    secret: &str,
    user: &str,
    rooms: Option<Vec<String>>,
    ttl: Duration,
) -> Result<String, AuthError> {
    mint_claims(
        secret,
        Claims {
            sub: user.to_owned(),
            exp: unix_now().saturating_add(ttl.as_secs()),
            rooms,
            send: None,
        },
    )
}

/// Mints an HS256 token carrying `claims` (for a `send` claim, or an `exp` of your choosing).
/// Refuses a secret or a user the server would refuse.
#[cfg(feature = "jwt")]
pub fn mint_claims(secret: &str, claims: Claims) -> Result<String, AuthError> {
    check_secret(secret).map_err(|reason| AuthError::Invalid(format!("secret {reason}")))?;
    UserName::new(&claims.sub).map_err(|e| AuthError::Invalid(format!("user {}", e.reason())))?;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

#[cfg(all(test, feature = "jwt"))]
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
        let token = mint_token(
            SECRET,
            "alice",
            Some(vec!["lobby".into(), "team-*".into()]),
            Duration::from_secs(60),
        )
        .unwrap();
        let id = auth().verify(&token).unwrap();
        assert_eq!(id.user.as_str(), "alice");
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
    fn send_claim_and_default() {
        let claims = Claims {
            sub: "alice".into(),
            exp: unix_now() + 60,
            rooms: None,
            send: Some(vec!["support".into(), "bot-*".into()]),
        };
        let id = auth()
            .verify(&mint_claims(SECRET, claims).unwrap())
            .unwrap();
        let send = id.send.unwrap();
        assert!(send.allows("support") && send.allows("bot-7") && !send.allows("bob"));
        let token = mint_token(SECRET, "bob", None, Duration::from_secs(60)).unwrap();
        assert!(auth().verify(&token).unwrap().send.is_none());

        let parse = |text: &str| toml::from_str::<AuthConfig>(text).map(|c| c.send);
        assert_eq!(parse("").unwrap(), SendPolicy::Any);
        assert_eq!(parse("send = \"none\"").unwrap(), SendPolicy::None);
        assert_eq!(
            parse("send = [\"ops-*\"]").unwrap(),
            SendPolicy::Users(vec!["ops-*".into()])
        );
        let err = parse("send = \"everyone\"").unwrap_err().to_string();
        assert!(err.contains("everyone"), "{err}");
        assert!(parse("send = 3").is_err());
        assert_eq!(SendPolicy::parse("any"), SendPolicy::Any);
        assert_eq!(SendPolicy::parse("none"), SendPolicy::None);
        assert_eq!(
            SendPolicy::parse("a, b*"),
            SendPolicy::Users(vec!["a".into(), "b*".into()])
        );
        let none = SendPolicy::None.patterns().unwrap();
        assert!(!none.allows("anyone"));
        assert!(SendPolicy::Any.patterns().is_none());
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let forged = mint_token(
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
            send: None,
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
