//! Presence, a protocol extension: who is in a room, and `join`/`leave` events.
//!
//! - A client sends `{"type":"presence","room":R}` (optionally with an `id`) and gets
//!   `{"type":"presence","room":R,"users":[...]}` (with the same `id`): the users with at
//!   least one session subscribed to `R`, sorted.
//! - In rooms whose name starts with one of the configured `presence_events` prefixes, the
//!   other subscribers get `{"type":"join","room":R,"user":U}` when a user's first session
//!   subscribes and `{"type":"leave","room":R,"user":U}` when its last one leaves.
//!
//! It is built on the same extension point applications use: `presence` is a frame handler
//! the [`ServerBuilder`](crate::ServerBuilder) registers first (an application may replace it),
//! and the handler asks the registry with an actix message. Clients written against protocol
//! v1 never see these frames unless they ask, or subscribe to a room configured for events.

use std::sync::Arc;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use crate::handler::{AppFrame, Handlers};
use crate::protocol::{ErrorCode, MAX_ROOM_LEN};
use crate::registry::presence::PresenceQuery;
use crate::session::Session;

/// The `type` of the presence query and its answer.
pub const PRESENCE: &str = "presence";

/// Frames of the presence extension, as the server sends them.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PresenceFrame<'a> {
    /// The answer to `presence{room}`.
    Presence {
        /// Room name.
        room: &'a str,
        /// Users present, sorted.
        users: &'a [Arc<str>],
        /// The query's `id`, when it had one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    /// A user's first session subscribed to the room.
    Join {
        /// Room name.
        room: &'a str,
        /// The user.
        user: &'a str,
    },
    /// A user's last session left the room.
    Leave {
        /// Room name.
        room: &'a str,
        /// The user.
        user: &'a str,
    },
}

/// Registers the built-in `presence` frame handler.
pub fn install(handlers: &mut Handlers) {
    handlers.insert(PRESENCE, handle_frame);
}

#[derive(Deserialize)]
struct Query {
    room: String,
}

/// The session side of `presence{room}`: check the frame, then let the registry answer on the
/// session's outbox. Like every registry request of a session it is awaited inside `ctx.wait`,
/// so the answer keeps its place among the session's other frames.
fn handle_frame(session: &mut Session, ctx: &mut Context<Session>, frame: AppFrame) {
    let id = frame.id.as_deref();
    let room = match frame.parse::<Query>() {
        Ok(q) if !q.room.is_empty() && q.room.len() <= MAX_ROOM_LEN => q.room,
        Ok(_) => {
            session.send_error(ErrorCode::BadRequest, "`room` must be 1 to 256 bytes", id);
            return;
        }
        Err(e) => {
            let message = format!("presence needs a string `room`: {e}");
            session.send_error(ErrorCode::BadRequest, &message, id);
            return;
        }
    };
    let query = PresenceQuery {
        id: session.id(),
        room,
        frame_id: frame.id,
    };
    let request = session.registry().send(query);
    ctx.wait(request.into_actor(session).map(|answer, act, _| {
        if let Err(error) = answer {
            tracing::error!(parent: act.span(), %error, "registry unreachable");
            act.send_error(ErrorCode::Internal, "registry unavailable", None);
        }
    }));
}
