//! HTTP hooks (feature `hooks-http`): each hook call is a `POST` of a JSON request to the
//! application's backend, whose JSON answer is the decision. `docs/hooks.md` has the bodies.
//!
//! - **Client.** actix's own `awc`, so that requests run on the session's arbiter like
//!   everything else a session does. An `awc::Client` is not `Send`, so each worker thread
//!   keeps one (a thread-local); each keeps its connections to the backend alive and reuses
//!   them.
//! - **Bounded.** One semaphore per server caps the requests in flight (`hooks.max_in_flight`).
//!   A session waits for a permit inside its hook call, within `hooks.timeout`, and since a
//!   session makes one hook call at a time and reads nothing meanwhile, a flooding client is
//!   slowed at its socket: the waiting costs one parked future per session, never a queue of
//!   frames.
//! - **Answers are untrusted input.** The body is read up to a limit, must be JSON with
//!   `result` `accept` or `reject`, and anything else (another status, a malformed body, a
//!   user name the server would refuse) is a failure, which `hooks.on_failure` answers. A
//!   rejection with an unknown `code` is still a rejection (`forbidden`): a typo in the backend
//!   must not let a frame through.

use std::sync::Arc;

use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use super::{
    Caller, ConnectAccept, ConnectDecision, ConnectRequest, Decision, Hook, HookError, HookRequest,
    HooksConfig, MessageDecision, Meta, PublishRequest, Rejection, SendRequest, SubscribeRequest,
};
use crate::config::invalid;
use crate::names::UserName;
use crate::protocol::ErrorCode;
use crate::server::StartError;

/// The header that carries `hooks.secret`.
pub(crate) const SECRET_HEADER: &str = "x-heartwire-secret";

/// Smallest limit on an answer's body; larger when `max_frame` is.
const MIN_ANSWER_LIMIT: usize = 64 * 1024;

thread_local! {
    /// One client per worker thread (`awc::Client` is not `Send`); its connection pool keeps
    /// connections to the backend alive between calls. The semaphore, not the pool, bounds
    /// requests in flight, so the pool itself is unlimited.
    static CLIENT: awc::Client = awc::Client::builder()
        .disable_timeout()
        .connector(awc::Connector::new().limit(0))
        .finish();
}

/// What every HTTP hook of one server shares.
struct Shared {
    secret: Option<String>,
    permits: Semaphore,
    answer_limit: usize,
}

/// The HTTP hooks of one server.
pub(crate) struct HttpHooks {
    shared: Arc<Shared>,
}

impl HttpHooks {
    /// Hooks with `config`'s secret and in-flight limit, reading answers of up to about twice
    /// `max_frame` bytes.
    pub(crate) fn new(config: &HooksConfig, max_frame: usize) -> Self {
        HttpHooks {
            shared: Arc::new(Shared {
                secret: config.secret.clone(),
                permits: Semaphore::new(config.max_in_flight),
                answer_limit: (2 * max_frame).max(MIN_ANSWER_LIMIT),
            }),
        }
    }

    /// A hook posting to `url`, when there is one.
    pub(crate) fn hook<R>(
        &self,
        key: &'static str,
        url: Option<String>,
    ) -> Result<Option<Arc<dyn Hook<R>>>, StartError>
    where
        R: HookRequest,
        HttpHook: Hook<R>,
    {
        let Some(url) = url else {
            return Ok(None);
        };
        let uri = awc::http::Uri::try_from(url.as_str())
            .map_err(|e| StartError::Config(invalid(key, format!("`{url}`: {e}"))))?;
        if uri.host().is_none() {
            return Err(StartError::Config(invalid(
                key,
                format!("`{url}` has no host"),
            )));
        }
        Ok(Some(Arc::new(HttpHook {
            uri,
            shared: self.shared.clone(),
        })))
    }
}

/// One hook's endpoint.
pub(crate) struct HttpHook {
    uri: awc::http::Uri,
    shared: Arc<Shared>,
}

impl HttpHook {
    /// Posts `body` and returns the parsed answer, waiting for a permit first.
    fn post<B: Serialize>(&self, body: &B) -> LocalBoxFuture<'static, Result<Answer, HookError>> {
        let body = match serde_json::to_vec(body) {
            Ok(body) => body,
            Err(e) => return Box::pin(async move { Err(HookError::new(e.to_string())) }),
        };
        let shared = self.shared.clone();
        let uri = self.uri.clone();
        Box::pin(async move {
            let _permit = shared
                .permits
                .acquire()
                .await
                .map_err(|e| HookError::new(e.to_string()))?;
            let mut request = CLIENT.with(|client| client.post(uri));
            request = request.insert_header((
                awc::http::header::CONTENT_TYPE,
                awc::http::header::HeaderValue::from_static("application/json"),
            ));
            if let Some(secret) = &shared.secret {
                request = request.insert_header((SECRET_HEADER, secret.as_str()));
            }
            let mut response = request
                .send_body(body)
                .await
                .map_err(|e| HookError::new(format!("request failed: {e}")))?;
            let status = response.status();
            if status != awc::http::StatusCode::OK {
                return Err(HookError::new(format!("backend answered HTTP {status}")));
            }
            let body = response
                .body()
                .limit(shared.answer_limit)
                .await
                .map_err(|e| HookError::new(format!("reading the answer: {e}")))?;
            serde_json::from_slice(&body).map_err(|e| HookError::new(format!("bad answer: {e}")))
        })
    }
}

/// `result` of an answer.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Accept,
    Reject,
}

/// Any hook's answer; which fields count depends on the hook (docs/hooks.md).
#[derive(Deserialize)]
struct Answer {
    result: Verdict,
    /// Reject: one of the protocol's error codes.
    #[serde(default)]
    code: Option<String>,
    /// Reject: text for the client.
    #[serde(default)]
    message: Option<String>,
    /// Publish and send, accept: the payload to deliver instead.
    #[serde(default)]
    data: Option<Box<RawValue>>,
    /// Connect, accept: the user.
    #[serde(default)]
    user: Option<String>,
    /// Connect, accept: data for later hooks and frame handlers.
    #[serde(default)]
    meta: Option<serde_json::Value>,
    /// Connect, accept: room patterns.
    #[serde(default)]
    rooms: Option<Vec<String>>,
    /// Connect, accept: user patterns for `send`.
    #[serde(default)]
    send: Option<Vec<String>>,
}

impl Answer {
    fn rejection(self) -> Rejection {
        let code = self
            .code
            .and_then(|c| serde_json::from_value(serde_json::Value::String(c)).ok())
            .unwrap_or(ErrorCode::Forbidden);
        let message = self.message.unwrap_or_else(|| "refused".to_owned());
        Rejection::new(code, message)
    }

    fn message_decision(self) -> MessageDecision {
        match self.result {
            Verdict::Reject => MessageDecision::Reject(self.rejection()),
            Verdict::Accept => match self.data {
                Some(data) => MessageDecision::Replace(data),
                None => MessageDecision::Accept,
            },
        }
    }
}

/// The fields of [`Caller`] as the backend sees them.
#[derive(Serialize)]
struct CallerBody<'a> {
    session: &'a str,
    user: &'a str,
    peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a serde_json::Value>,
}

impl<'a> From<&'a Caller> for CallerBody<'a> {
    fn from(caller: &'a Caller) -> Self {
        CallerBody {
            session: &caller.session,
            user: &caller.user,
            peer: caller.peer.to_string(),
            meta: caller.meta.get::<serde_json::Value>(),
        }
    }
}

#[derive(Serialize)]
struct ConnectBody<'a> {
    hook: &'static str,
    session: &'a str,
    peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
}

impl Hook<ConnectRequest> for HttpHook {
    fn call(
        &self,
        r: ConnectRequest,
    ) -> LocalBoxFuture<'static, Result<ConnectDecision, HookError>> {
        let answer = self.post(&ConnectBody {
            hook: "connect",
            session: &r.session,
            peer: r.peer.to_string(),
            user: r.user.as_deref(),
            token: r.token.as_deref(),
            client: r.client.as_deref(),
        });
        Box::pin(async move {
            let answer = answer.await?;
            if let Verdict::Reject = answer.result {
                return Ok(ConnectDecision::Reject(
                    answer.message.unwrap_or_else(|| "refused".to_owned()),
                ));
            }
            let user = match &answer.user {
                Some(user) => Some(
                    UserName::new(user).map_err(|e| HookError::new(format!("bad answer: {e}")))?,
                ),
                None => None,
            };
            Ok(ConnectDecision::Accept(ConnectAccept {
                user,
                meta: answer
                    .meta
                    .filter(|m| !m.is_null())
                    .map(Meta::new)
                    .unwrap_or_default(),
                rooms: answer.rooms,
                send: answer.send,
            }))
        })
    }
}

#[derive(Serialize)]
struct SubscribeBody<'a> {
    hook: &'static str,
    #[serde(flatten)]
    caller: CallerBody<'a>,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<u64>,
}

impl Hook<SubscribeRequest> for HttpHook {
    fn call(&self, r: SubscribeRequest) -> LocalBoxFuture<'static, Result<Decision, HookError>> {
        let answer = self.post(&SubscribeBody {
            hook: "subscribe",
            caller: (&r.caller).into(),
            room: &r.room,
            since: r.since,
        });
        Box::pin(async move {
            let answer = answer.await?;
            Ok(match answer.result {
                Verdict::Accept => Decision::Accept,
                Verdict::Reject => Decision::Reject(answer.rejection()),
            })
        })
    }
}

#[derive(Serialize)]
struct PublishBody<'a> {
    hook: &'static str,
    #[serde(flatten)]
    caller: CallerBody<'a>,
    room: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl Hook<PublishRequest> for HttpHook {
    fn call(
        &self,
        r: PublishRequest,
    ) -> LocalBoxFuture<'static, Result<MessageDecision, HookError>> {
        let answer = self.post(&PublishBody {
            hook: "publish",
            caller: (&r.caller).into(),
            room: &r.room,
            data: &r.data,
            id: r.id.as_deref(),
        });
        Box::pin(async move { Ok(answer.await?.message_decision()) })
    }
}

#[derive(Serialize)]
struct SendBody<'a> {
    hook: &'static str,
    #[serde(flatten)]
    caller: CallerBody<'a>,
    to: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

impl Hook<SendRequest> for HttpHook {
    fn call(&self, r: SendRequest) -> LocalBoxFuture<'static, Result<MessageDecision, HookError>> {
        let answer = self.post(&SendBody {
            hook: "send",
            caller: (&r.caller).into(),
            to: &r.to,
            data: &r.data,
            id: r.id.as_deref(),
        });
        Box::pin(async move { Ok(answer.await?.message_decision()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            session: "abc-1".into(),
            user: UserName::new("alice").unwrap(),
            peer: "127.0.0.1:5000".parse().unwrap(),
            meta: Meta::new(serde_json::json!({"plan": "pro"})),
        }
    }

    #[test]
    fn bodies_carry_raw_data_and_the_callers_meta() {
        let data = serde_json::value::to_raw_value(&serde_json::json!({"text": "hi"})).unwrap();
        let caller = caller();
        let body = PublishBody {
            hook: "publish",
            caller: (&caller).into(),
            room: "lobby",
            data: &data,
            id: Some("m1"),
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"hook": "publish", "session": "abc-1", "user": "alice",
                "peer": "127.0.0.1:5000", "meta": {"plan": "pro"}, "room": "lobby",
                "data": {"text": "hi"}, "id": "m1"})
        );
    }

    #[test]
    fn answers_parse_and_unknown_codes_still_reject() {
        let parse = |text: &str| serde_json::from_str::<Answer>(text);
        assert!(matches!(
            parse(r#"{"result":"accept"}"#).unwrap().message_decision(),
            MessageDecision::Accept
        ));
        match parse(r#"{"result":"accept","data":{"text":"***"}}"#)
            .unwrap()
            .message_decision()
        {
            MessageDecision::Replace(data) => assert_eq!(data.get(), r#"{"text":"***"}"#),
            other => panic!("{other:?}"),
        }
        let rejection = parse(r#"{"result":"reject","code":"rate_limited","message":"slow"}"#)
            .unwrap()
            .rejection();
        assert_eq!(rejection, Rejection::new(ErrorCode::RateLimited, "slow"));
        let typo = parse(r#"{"result":"reject","code":"denied"}"#)
            .unwrap()
            .rejection();
        assert_eq!(typo.code, ErrorCode::Forbidden);
        assert!(parse(r#"{"result":"maybe"}"#).is_err());
        assert!(parse(r#"{"data":1}"#).is_err());
        assert!(parse("[]").is_err());
    }
}
