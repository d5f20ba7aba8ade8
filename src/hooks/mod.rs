//! Application hooks: the application's backend decides who connects, which rooms a user may
//! join, what may be published (validate, reject, rewrite) and who may message whom.
//!
//! **Why in the session, before the registry.** A hook is an awaited call (often a network
//! round trip to the application's backend), so it must not run in the registry, whose one
//! mailbox every session shares: one slow answer there would stall every room. A session runs
//! its hook inside `ctx.wait`, exactly like its registry requests: nothing else reaches the
//! session until the hook has answered (or timed out) and the registry has taken the frame.
//! So a session's frames keep their order across a slow hook, and a client that floods while
//! its hook is slow is slowed by TCP at its own socket instead of being buffered; a session
//! never has more than one hook call in flight.
//!
//! **Order of checks for a frame.** Names (lengths), then the token's claims (`rooms`, `send`,
//! or what the connect hook set), then the hook, then the registry. A hook only sees what
//! the claims already allow, and its answer is final for the frame.
//!
//! **Failures.** Every call is bounded by `hooks.timeout`. A hook that does not answer in time
//! or fails (an unreachable URL, a bad answer, a stopped actor) gets the configured answer,
//! `hooks.on_failure` (deny by default); each outcome is counted in
//! `heartwire_hook_calls_total{hook,outcome}` and failures are logged, at most once a second.
//!
//! An application writes a hook as an async closure ([`ServerBuilder::on_publish`] and the
//! like), as an actix [`Recipient`] of the request type ([`ServerBuilder::hook`]), or as any
//! type implementing [`Hook`]. `heartwire serve` gets HTTP hooks from `hooks.url` and friends
//! (feature `hooks-http`); `docs/hooks.md` describes their JSON.

mod config;
#[cfg(feature = "hooks-http")]
mod http;

pub use config::{FailurePolicy, HooksConfig};

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::panic::AssertUnwindSafe;

use actix::{Message, Recipient};
use futures_util::future::LocalBoxFuture;
use futures_util::FutureExt;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::Config;
use crate::metrics::{HookName, HookOutcome, Metrics};
use crate::names::{FrameId, RoomName, UserName};
use crate::protocol::ErrorCode;
use crate::server::{ServerBuilder, StartError};

/// The four points where a hook can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    /// After `hello` (and the token check), before `welcome`.
    Connect,
    /// Before a `subscribe` reaches the registry.
    Subscribe,
    /// Before a `publish` is sequenced.
    Publish,
    /// Before a direct `send` is delivered.
    Send,
}

impl HookKind {
    /// The hook's name, as in metrics, logs and the HTTP hook's `hook` field.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Connect => "connect",
            HookKind::Subscribe => "subscribe",
            HookKind::Publish => "publish",
            HookKind::Send => "send",
        }
    }

    fn label(self) -> HookName {
        match self {
            HookKind::Connect => HookName::Connect,
            HookKind::Subscribe => HookName::Subscribe,
            HookKind::Publish => HookName::Publish,
            HookKind::Send => HookName::Send,
        }
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hook that could not decide: the configured `hooks.on_failure` answer applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HookError(pub String);

impl HookError {
    /// A failure described by `message` (logged, never sent to the client).
    pub fn new(message: impl Into<String>) -> Self {
        HookError(message.into())
    }
}

/// Data the connect hook attached to a session, for frame handlers ([`Session::meta`]) and
/// later hooks ([`Caller::meta`]). Any `Send + Sync` value; HTTP hooks store the JSON of
/// their answer's `meta` as a [`serde_json::Value`]. Cloning shares it.
///
/// [`Session::meta`]: crate::Session::meta
#[derive(Clone, Default)]
pub struct Meta(Option<Arc<dyn Any + Send + Sync>>);

impl Meta {
    /// Meta holding `value`.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Meta(Some(Arc::new(value)))
    }

    /// The value, if there is one of type `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref()?.downcast_ref()
    }

    /// Whether no value is attached.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.get::<serde_json::Value>() {
            Some(json) => write!(f, "Meta({json})"),
            None if self.is_empty() => f.write_str("Meta(None)"),
            None => f.write_str("Meta(..)"),
        }
    }
}

/// The session a subscribe, publish or send hook decides for.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its id, as in `welcome.session`.
    pub session: Arc<str>,
    /// Its user.
    pub user: UserName,
    /// Its remote address.
    pub peer: SocketAddr,
    /// What the connect hook attached.
    pub meta: Meta,
}

/// Why a hook refused a frame: the client gets `error{code, message}` with the frame's `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One of the protocol's codes; `forbidden` unless the hook has a better one.
    pub code: ErrorCode,
    /// Human-readable text for the client.
    pub message: String,
}

impl Rejection {
    /// `error{code:"forbidden", message}`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Rejection::new(ErrorCode::Forbidden, message)
    }

    /// `error{code, message}`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// `hello`, as the connect hook sees it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<ConnectDecision, HookError>")]
pub struct ConnectRequest {
    /// The session's id, as `welcome.session` will say.
    pub session: Arc<str>,
    /// The remote address.
    pub peer: SocketAddr,
    /// The user: the token's `sub` when authentication is configured, else `hello.user`
    /// (absent when the client left it out for the hook to decide).
    pub user: Option<UserName>,
    /// `hello.token` as sent (verified already when authentication is configured; otherwise
    /// the hook's to interpret, e.g. as a session cookie of the application).
    pub token: Option<String>,
    /// `hello.client`.
    pub client: Option<String>,
}

/// The connect hook's answer.
#[derive(Debug, Clone)]
pub enum ConnectDecision {
    /// Welcome the client, with what [`ConnectAccept`] sets.
    Accept(ConnectAccept),
    /// Refuse: `error{code:"unauthorized", message: reason}` then `bye{reason:"unauthorized"}`.
    Reject(String),
}

impl ConnectDecision {
    /// Accept as things are.
    pub fn accept() -> Self {
        ConnectDecision::Accept(ConnectAccept::default())
    }

    /// Refuse with `reason` (shown to the client in `error.message`).
    pub fn reject(reason: impl Into<String>) -> Self {
        ConnectDecision::Reject(reason.into())
    }
}

/// What an accepting connect hook sets; every field left `None` keeps what the server had.
#[derive(Debug, Clone, Default)]
pub struct ConnectAccept {
    /// The session's user (replaces the token's `sub` or `hello.user`).
    pub user: Option<UserName>,
    /// Data for frame handlers and later hooks.
    pub meta: Meta,
    /// Rooms the session may name, as `prefix*` patterns; replaces the token's `rooms` claim.
    pub rooms: Option<Vec<String>>,
    /// Users the session may `send` to; replaces the token's `send` claim and `auth.send`.
    pub send: Option<Vec<String>>,
}

impl ConnectAccept {
    /// Sets the user.
    pub fn user(mut self, user: UserName) -> Self {
        self.user = Some(user);
        self
    }

    /// Attaches `meta` to the session.
    pub fn meta<T: Any + Send + Sync>(mut self, meta: T) -> Self {
        self.meta = Meta::new(meta);
        self
    }

    /// Restricts the rooms the session may name.
    pub fn rooms<I: IntoIterator<Item = S>, S: Into<String>>(mut self, rooms: I) -> Self {
        self.rooms = Some(rooms.into_iter().map(Into::into).collect());
        self
    }

    /// Restricts the users the session may `send` to.
    pub fn send<I: IntoIterator<Item = S>, S: Into<String>>(mut self, users: I) -> Self {
        self.send = Some(users.into_iter().map(Into::into).collect());
        self
    }
}

/// A `subscribe` the token's `rooms` claim allows.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Decision, HookError>")]
pub struct SubscribeRequest {
    /// Who subscribes.
    pub caller: Caller,
    /// The room.
    pub room: RoomName,
    /// `subscribe.since`, when given.
    pub since: Option<u64>,
}

/// The subscribe hook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the frame through.
    Accept,
    /// Refuse it.
    Reject(Rejection),
}

/// A `publish` the token's `rooms` claim allows.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<MessageDecision, HookError>")]
pub struct PublishRequest {
    /// Who publishes.
    pub caller: Caller,
    /// The room.
    pub room: RoomName,
    /// The payload, raw JSON.
    pub data: Box<RawValue>,
    /// The publisher's `id`.
    pub id: Option<FrameId>,
}

/// A `send` the `send` policy allows.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<MessageDecision, HookError>")]
pub struct SendRequest {
    /// Who sends.
    pub caller: Caller,
    /// The recipient.
    pub to: UserName,
    /// The payload, raw JSON.
    pub data: Box<RawValue>,
    /// The sender's `id`.
    pub id: Option<FrameId>,
}

/// The publish or send hook's answer.
#[derive(Debug, Clone)]
pub enum MessageDecision {
    /// Deliver the payload as sent.
    Accept,
    /// Deliver this payload instead (at most `max_frame` bytes of JSON).
    Replace(Box<RawValue>),
    /// Refuse the frame.
    Reject(Rejection),
}

impl MessageDecision {
    /// Deliver `data` instead of what the client sent.
    pub fn replace<T: Serialize + ?Sized>(data: &T) -> Result<Self, serde_json::Error> {
        Ok(MessageDecision::Replace(serde_json::value::to_raw_value(
            data,
        )?))
    }
}

/// A request type a hook can answer; its [`Decision`](HookRequest::Decision) is the answer.
pub trait HookRequest: Send + Sized + 'static {
    /// The answer.
    type Decision: Send + 'static;
    /// Where in a session's life it is asked.
    const KIND: HookKind;
}

impl HookRequest for ConnectRequest {
    type Decision = ConnectDecision;
    const KIND: HookKind = HookKind::Connect;
}

impl HookRequest for SubscribeRequest {
    type Decision = Decision;
    const KIND: HookKind = HookKind::Subscribe;
}

impl HookRequest for PublishRequest {
    type Decision = MessageDecision;
    const KIND: HookKind = HookKind::Publish;
}

impl HookRequest for SendRequest {
    type Decision = MessageDecision;
    const KIND: HookKind = HookKind::Send;
}

/// An application hook for requests of type `R`. Shared by every session of a server (so
/// `Send + Sync`); the future it returns runs on the session's own thread and need not be
/// `Send`. An `Err` means "could not decide": `hooks.on_failure` applies.
pub trait Hook<R: HookRequest>: Send + Sync + 'static {
    /// Decides on `request`.
    fn call(&self, request: R) -> LocalBoxFuture<'static, Result<R::Decision, HookError>>;
}

/// An actor answers: a hook as an actix [`Recipient`]. A stopped actor or a full mailbox
/// counts as a failure.
impl<R> Hook<R> for Recipient<R>
where
    R: HookRequest + Message<Result = Result<<R as HookRequest>::Decision, HookError>>,
{
    fn call(&self, request: R) -> LocalBoxFuture<'static, Result<R::Decision, HookError>> {
        let answer = self.send(request);
        Box::pin(async move {
            answer
                .await
                .map_err(|e| HookError::new(format!("hook actor: {e}")))?
        })
    }
}

/// An async closure as a hook.
struct FnHook<F>(F);

impl<R, F, Fut> Hook<R> for FnHook<F>
where
    R: HookRequest,
    F: Fn(R) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R::Decision> + 'static,
{
    fn call(&self, request: R) -> LocalBoxFuture<'static, Result<R::Decision, HookError>> {
        let answer = (self.0)(request);
        Box::pin(async move { Ok(answer.await) })
    }
}

/// The hooks of one server, shared by its sessions.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) connect: Option<Arc<dyn Hook<ConnectRequest>>>,
    pub(crate) subscribe: Option<Arc<dyn Hook<SubscribeRequest>>>,
    pub(crate) publish: Option<Arc<dyn Hook<PublishRequest>>>,
    pub(crate) send: Option<Arc<dyn Hook<SendRequest>>>,
    failures: Arc<FailureLog>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("connect", &self.connect.is_some())
            .field("subscribe", &self.subscribe.is_some())
            .field("publish", &self.publish.is_some())
            .field("send", &self.send.is_some())
            .finish()
    }
}

impl Hooks {
    /// Installs `hook` for `R`, replacing an earlier one.
    fn set<R: HookRequest>(&mut self, hook: Arc<dyn Hook<R>>) {
        // The kind says which slot `R` belongs to; the downcast cannot miss.
        let hook: Box<dyn Any> = Box::new(hook);
        match R::KIND {
            HookKind::Connect => self.connect = hook.downcast().ok().map(|h| *h),
            HookKind::Subscribe => self.subscribe = hook.downcast().ok().map(|h| *h),
            HookKind::Publish => self.publish = hook.downcast().ok().map(|h| *h),
            HookKind::Send => self.send = hook.downcast().ok().map(|h| *h),
        }
    }

    /// Adds the HTTP hooks `config.hooks` names for the kinds that have no hook in code.
    pub(crate) fn with_http(self, config: &Config) -> Result<Self, StartError> {
        if !config.hooks.has_urls() {
            return Ok(self);
        }
        #[cfg(feature = "hooks-http")]
        {
            let mut hooks = self;
            let hooks_config = &config.hooks;
            let http = http::HttpHooks::new(hooks_config, config.max_frame);
            let url = |kind| hooks_config.url_for(kind);
            let key = |kind| hooks_config.url_key(kind);
            if hooks.connect.is_none() {
                hooks.connect = http.hook(key(HookKind::Connect), url(HookKind::Connect))?;
            }
            if hooks.subscribe.is_none() {
                hooks.subscribe = http.hook(key(HookKind::Subscribe), url(HookKind::Subscribe))?;
            }
            if hooks.publish.is_none() {
                hooks.publish = http.hook(key(HookKind::Publish), url(HookKind::Publish))?;
            }
            if hooks.send.is_none() {
                hooks.send = http.hook(key(HookKind::Send), url(HookKind::Send))?;
            }
            Ok(hooks)
        }
        #[cfg(not(feature = "hooks-http"))]
        Err(StartError::Config(crate::config::invalid(
            "hooks.url",
            "heartwire was built without the `hooks-http` feature",
        )))
    }
}

/// How a hook call ended.
pub(crate) enum Outcome<D> {
    /// The hook decided.
    Decided(D),
    /// It did not answer within `hooks.timeout`.
    TimedOut,
    /// It failed.
    Failed(HookError),
}

/// Decisions the metrics can label.
pub(crate) trait Labelled {
    fn outcome(&self) -> HookOutcome;
}

impl Labelled for ConnectDecision {
    fn outcome(&self) -> HookOutcome {
        match self {
            ConnectDecision::Accept(_) => HookOutcome::Accept,
            ConnectDecision::Reject(_) => HookOutcome::Reject,
        }
    }
}

impl Labelled for Decision {
    fn outcome(&self) -> HookOutcome {
        match self {
            Decision::Accept => HookOutcome::Accept,
            Decision::Reject(_) => HookOutcome::Reject,
        }
    }
}

impl Labelled for MessageDecision {
    fn outcome(&self) -> HookOutcome {
        match self {
            MessageDecision::Accept => HookOutcome::Accept,
            MessageDecision::Replace(_) => HookOutcome::Replace,
            MessageDecision::Reject(_) => HookOutcome::Reject,
        }
    }
}

impl Hooks {
    /// Calls `hook` with `request`, bounded by `timeout`, and counts the outcome. A hook that
    /// panics has failed (the session lives on). The future is `'static` so that a session can
    /// wait on it in `ctx.wait`.
    pub(crate) fn call<R>(
        &self,
        hook: &Arc<dyn Hook<R>>,
        request: R,
        timeout: Duration,
        metrics: Arc<Metrics>,
        session: Arc<str>,
    ) -> impl Future<Output = Outcome<R::Decision>> + 'static
    where
        R: HookRequest,
        R::Decision: Labelled,
    {
        let started = Instant::now();
        let call = std::panic::catch_unwind(AssertUnwindSafe(|| hook.call(request)));
        let failures = self.failures.clone();
        async move {
            let answer = match call {
                Ok(call) => tokio::time::timeout(timeout, AssertUnwindSafe(call).catch_unwind())
                    .await
                    .map(|answer| answer.unwrap_or_else(|_| Err(hook_panicked()))),
                Err(_) => Ok(Err(hook_panicked())),
            };
            let outcome = match answer {
                Ok(Ok(decision)) => Outcome::Decided(decision),
                Ok(Err(error)) => Outcome::Failed(error),
                Err(_) => Outcome::TimedOut,
            };
            let label = match &outcome {
                Outcome::Decided(d) => d.outcome(),
                Outcome::TimedOut => HookOutcome::Timeout,
                Outcome::Failed(_) => HookOutcome::Error,
            };
            metrics.hook_call(R::KIND.label(), label, started.elapsed());
            match &outcome {
                Outcome::TimedOut => failures.report(R::KIND, &session, "no answer in time"),
                Outcome::Failed(error) => failures.report(R::KIND, &session, &error.0),
                Outcome::Decided(_) => {}
            }
            outcome
        }
    }
}

/// Logs hook failures at `warn`, at most once a second, with how many it left out: a backend
/// that is down would otherwise write one line per frame of every client.
#[derive(Default)]
struct FailureLog {
    /// Milliseconds since `epoch` of the last line written, plus one (0: never).
    last: AtomicU64,
    skipped: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl FailureLog {
    fn report(&self, kind: HookKind, session: &str, error: &str) {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= 1000;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let skipped = self.skipped.swap(0, Ordering::Relaxed);
            tracing::warn!(hook = %kind, session, error, skipped, "hook failed; hooks.on_failure applies");
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(hook = %kind, session, error, "hook failed");
        }
    }
}

/// Hooks, from the application's code.
impl ServerBuilder {
    /// Installs `hook` (an actix [`Recipient`] of the request type, or any [`Hook`]) for
    /// requests of type `R`, replacing an earlier hook for them and any HTTP hook the
    /// configuration names for them.
    ///
    /// ```no_run
    /// # use actix::prelude::*;
    /// # use heartwire::hooks::{Decision, HookError, SubscribeRequest};
    /// struct Rooms;
    /// impl Actor for Rooms { type Context = Context<Self>; }
    /// impl Handler<SubscribeRequest> for Rooms {
    ///     type Result = Result<Decision, HookError>;
    ///     fn handle(&mut self, req: SubscribeRequest, _: &mut Context<Self>) -> Self::Result {
    ///         Ok(if req.room.starts_with("staff-") { Decision::Reject(
    ///             heartwire::hooks::Rejection::forbidden("staff only")) } else { Decision::Accept })
    ///     }
    /// }
    /// # fn build(config: heartwire::Config) -> heartwire::ServerBuilder {
    /// heartwire::ServerBuilder::new(config).hook(Rooms.start().recipient::<SubscribeRequest>())
    /// # }
    /// ```
    pub fn hook<R: HookRequest>(mut self, hook: impl Hook<R>) -> Self {
        self.hooks.set::<R>(Arc::new(hook));
        self
    }

    /// Decides on each `hello` with an async closure: accept (optionally setting the user,
    /// [`Meta`] for frame handlers, and the rooms and users it may reach) or reject.
    pub fn on_connect<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ConnectDecision> + 'static,
    {
        self.hook::<ConnectRequest>(FnHook(hook))
    }

    /// Decides on each `subscribe` (that the token's claims allow) with an async closure.
    pub fn on_subscribe<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(SubscribeRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Decision> + 'static,
    {
        self.hook::<SubscribeRequest>(FnHook(hook))
    }

    /// Decides on each `publish` (that the token's claims allow) with an async closure: accept,
    /// reject, or replace its `data`.
    pub fn on_publish<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(PublishRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = MessageDecision> + 'static,
    {
        self.hook::<PublishRequest>(FnHook(hook))
    }

    /// Decides on each `send` (that the `send` policy allows) with an async closure: accept,
    /// reject, or replace its `data`.
    pub fn on_send<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(SendRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = MessageDecision> + 'static,
    {
        self.hook::<SendRequest>(FnHook(hook))
    }
}

/// A hook's caught panic as a failure. The record the panic left on this thread is taken
/// here, so that the next session to stop on it is not taken for a crash.
fn hook_panicked() -> HookError {
    let message = crate::panics::take().unwrap_or_default();
    HookError::new(format!("the hook panicked: {message}"))
}
