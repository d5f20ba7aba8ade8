//! Where a session meets the application's hooks ([`crate::hooks`]): the connect hook between
//! `hello` and `welcome`, and the subscribe, publish and send hooks between the claims check
//! and the registry request. The frame dispatch reads "check, gate, ask the registry"; what a
//! hook's answer means for the frame lives here.
//!
//! A hook runs inside `ctx.wait`, like a registry request, so nothing else reaches the session
//! until it has answered or timed out: a session's frames keep their order, and the registry
//! request that follows an accepted frame is queued by the same wait chain before the session
//! reads its next frame. With no hook installed the gate calls straight through.

use std::sync::Arc;

use actix::prelude::*;

use super::Session;
use crate::auth::Patterns;
use crate::hooks::{
    Caller, ConnectAccept, ConnectDecision, ConnectRequest, Decision, FailurePolicy, Hook,
    HookRequest, Hooks, Labelled, MessageDecision, Outcome, PublishRequest, Rejection, SendRequest,
    SubscribeRequest,
};
use crate::names::{FrameId, UserName};
use crate::protocol::{message_len, ByeReason, ErrorCode, Hello};
use crate::registry;

/// A registry request a hook may stop or change on its way.
pub(super) trait Gated: Sized + 'static {
    /// What its hook is asked.
    type Request: HookRequest<Decision = Self::Decision>;
    /// The hook's answer.
    type Decision: Labelled;
    /// Its hook, if the server has one.
    fn hook(hooks: &Hooks) -> Option<&Arc<dyn Hook<Self::Request>>>;
    /// The question for the hook.
    fn request(&self, caller: Caller) -> Self::Request;
    /// The client frame's `id`, for the error frame.
    fn frame_id(&self) -> Option<FrameId>;
    /// The request the hook's answer leaves, or the refusal the client gets.
    fn apply(self, decision: Self::Decision, max_data: usize) -> Result<Self, Rejection>;
}

impl Gated for registry::Subscribe {
    type Request = SubscribeRequest;
    type Decision = Decision;

    fn hook(hooks: &Hooks) -> Option<&Arc<dyn Hook<SubscribeRequest>>> {
        hooks.subscribe.as_ref()
    }

    fn request(&self, caller: Caller) -> SubscribeRequest {
        SubscribeRequest {
            caller,
            room: self.room.clone(),
            since: self.since,
        }
    }

    fn frame_id(&self) -> Option<FrameId> {
        None
    }

    fn apply(self, decision: Decision, _: usize) -> Result<Self, Rejection> {
        match decision {
            Decision::Accept => Ok(self),
            Decision::Reject(rejection) => Err(rejection),
        }
    }
}

/// A replacement payload, checked like a client's: one whose `message` would be longer than
/// `max_frame` is refused with `bad_request`, never delivered. `message_len` measures the
/// `message` frame a payload makes.
fn replacement(
    decision: MessageDecision,
    data: &mut Box<serde_json::value::RawValue>,
    max_frame: usize,
    message_len: impl Fn(&serde_json::value::RawValue) -> usize,
) -> Result<(), Rejection> {
    match decision {
        MessageDecision::Accept => Ok(()),
        MessageDecision::Replace(new) if message_len(&new) > max_frame + 1 => Err(Rejection::new(
            ErrorCode::BadRequest,
            "the payload the hook chose would make a message larger than max_frame",
        )),
        MessageDecision::Replace(new) => {
            *data = new;
            Ok(())
        }
        MessageDecision::Reject(rejection) => Err(rejection),
    }
}

impl Gated for registry::Publish {
    type Request = PublishRequest;
    type Decision = MessageDecision;

    fn hook(hooks: &Hooks) -> Option<&Arc<dyn Hook<PublishRequest>>> {
        hooks.publish.as_ref()
    }

    fn request(&self, caller: Caller) -> PublishRequest {
        PublishRequest {
            caller,
            room: self.room.clone(),
            data: self.data.clone(),
            id: self.id.clone(),
        }
    }

    fn frame_id(&self) -> Option<FrameId> {
        self.id.clone()
    }

    fn apply(mut self, decision: MessageDecision, max_frame: usize) -> Result<Self, Rejection> {
        let (room, from, id) = (self.room.clone(), self.from.clone(), self.id.clone());
        replacement(decision, &mut self.data, max_frame, |data| {
            message_len(Some(&room), from.as_deref(), data, id.as_deref())
        })?;
        Ok(self)
    }
}

impl Gated for registry::SendTo {
    type Request = SendRequest;
    type Decision = MessageDecision;

    fn hook(hooks: &Hooks) -> Option<&Arc<dyn Hook<SendRequest>>> {
        hooks.send.as_ref()
    }

    fn request(&self, caller: Caller) -> SendRequest {
        SendRequest {
            caller,
            to: self.to.clone(),
            data: self.data.clone(),
            id: self.id.clone(),
        }
    }

    fn frame_id(&self) -> Option<FrameId> {
        self.id.clone()
    }

    fn apply(mut self, decision: MessageDecision, max_frame: usize) -> Result<Self, Rejection> {
        let (from, id) = (self.from.clone(), self.id.clone());
        replacement(decision, &mut self.data, max_frame, |data| {
            message_len(None, from.as_deref(), data, id.as_deref())
        })?;
        Ok(self)
    }
}

impl Session {
    /// Puts `msg` before its hook, if the server has one, and runs `then` with what the hook
    /// lets through; a refusal answers the client with `error` and the frame's `id`.
    pub(super) fn gate<G, F>(&mut self, ctx: &mut Context<Self>, msg: G, then: F)
    where
        G: Gated,
        F: FnOnce(&mut Self, &mut Context<Self>, G) + 'static,
    {
        let Some(hook) = G::hook(&self.shared.hooks).cloned() else {
            return then(self, ctx, msg);
        };
        let Some(user) = self.user.clone() else {
            return;
        };
        let caller = Caller {
            session: self.wire_id.clone(),
            user,
            peer: self.peer(),
            meta: self.meta.clone(),
        };
        let call = self.call_hook(&hook, msg.request(caller));
        ctx.wait(call.into_actor(self).map(move |outcome, act, ctx| {
            if act.is_closing() {
                return;
            }
            let allow = act.shared.config.hooks.on_failure == FailurePolicy::Allow;
            let id = msg.frame_id();
            let refusal = match outcome {
                Outcome::Decided(decision) => {
                    match msg.apply(decision, act.shared.config.max_frame) {
                        Ok(msg) => return then(act, ctx, msg),
                        Err(rejection) => rejection,
                    }
                }
                Outcome::TimedOut | Outcome::Failed(_) if allow => return then(act, ctx, msg),
                Outcome::TimedOut => Rejection::new(
                    ErrorCode::Internal,
                    format!("the {} hook did not answer in time", G::Request::KIND),
                ),
                Outcome::Failed(_) => Rejection::new(
                    ErrorCode::Internal,
                    format!("the {} hook failed", G::Request::KIND),
                ),
            };
            act.send_error(refusal.code, &refusal.message, id.as_deref());
        }));
    }

    /// The connect hook, between the token check and `Identify`: runs `then` with the user the
    /// session will have, or closes it with `error{code:"unauthorized"}` and
    /// `bye{reason:"unauthorized"}`. Without a `user` (no token, no `hello.user`) only a connect
    /// hook can name one; with no hook that is a `bad_request`, as before hooks existed.
    pub(super) fn gate_connect<F>(
        &mut self,
        ctx: &mut Context<Self>,
        hello: &Hello<'_>,
        user: Option<UserName>,
        then: F,
    ) where
        F: FnOnce(&mut Self, &mut Context<Self>, UserName) + 'static,
    {
        let Some(hook) = self.shared.hooks.connect.clone() else {
            match user {
                Some(user) => then(self, ctx, user),
                None => {
                    self.send_error(ErrorCode::BadRequest, "`user` is required", None);
                }
            }
            return;
        };
        let request = ConnectRequest {
            session: self.wire_id.clone(),
            peer: self.peer(),
            user: user.clone(),
            token: hello.token.as_deref().map(String::from),
            client: hello.client.as_deref().map(String::from),
        };
        let call = self.call_hook(&hook, request);
        ctx.wait(call.into_actor(self).map(move |outcome, act, ctx| {
            if act.is_closing() {
                return;
            }
            let allow = act.shared.config.hooks.on_failure == FailurePolicy::Allow;
            let accepted = match outcome {
                Outcome::Decided(ConnectDecision::Accept(accept)) => accept,
                Outcome::Decided(ConnectDecision::Reject(reason)) => {
                    tracing::info!(parent: act.span(), session = %act.wire_id, %reason, "connect hook refused");
                    return act.refuse_connect(&reason, None);
                }
                // `allow` lets in the user `hello` or its token named; without one, nobody.
                Outcome::TimedOut | Outcome::Failed(_) if allow && user.is_some() => {
                    ConnectAccept::default()
                }
                Outcome::TimedOut | Outcome::Failed(_) => {
                    // The backend may be down for everyone: spread the reconnects out.
                    let base = act.shared.config.shutdown_reconnect.as_millis() as u64;
                    let hint = base + fastrand::u64(0..=base);
                    return act.refuse_connect(
                        "this connection could not be checked now; try again later",
                        Some(hint),
                    );
                }
            };
            let ConnectAccept {
                user: chosen,
                meta,
                rooms,
                send,
            } = accepted;
            act.meta = meta;
            if let Some(rooms) = rooms {
                act.room_policy = Some(Patterns::new(rooms));
            }
            if let Some(send) = send {
                act.send_policy = Some(Patterns::new(send));
            }
            match chosen.or(user) {
                Some(user) => then(act, ctx, user),
                None => act.refuse_connect("the connect hook named no user", None),
            }
        }));
    }

    /// Whether the session stopped caring about answers: it is closing, or the registry or its
    /// writer closed its outbox (a drain, a kick, a slow consumer) while a hook ran.
    fn is_closing(&self) -> bool {
        self.closing || self.outbox.closing().is_some()
    }

    /// `error{code:"unauthorized"}`, then `bye{reason:"unauthorized"}`.
    fn refuse_connect(&mut self, message: &str, reconnect_ms: Option<u64>) {
        self.send_error(ErrorCode::Unauthorized, message, None);
        self.close(ByeReason::Unauthorized, reconnect_ms);
    }

    fn call_hook<R>(
        &self,
        hook: &Arc<dyn Hook<R>>,
        request: R,
    ) -> impl std::future::Future<Output = Outcome<R::Decision>> + 'static
    where
        R: HookRequest,
        R::Decision: Labelled,
    {
        self.shared.hooks.call(
            hook,
            request,
            self.shared.config.hooks.timeout,
            self.shared.metrics.clone(),
            self.wire_id.clone(),
        )
    }
}
