//! Presence, a protocol extension: who is in a room, and `join`/`leave` events.
//!
//! - A client sends `{"type":"presence","room":R}` (optionally with an `id`) and gets
//!   `{"type":"presence","room":R,"users":[...]}` (with the same `id`): the users with at
//!   least one session subscribed to `R`, sorted. The room is checked like any room a client
//!   names: its length against `limits.max_room_len`, then the token's `rooms` claim.
//! - The answer is a frame like any other, so it never exceeds the `max_frame` the server
//!   announced (a longer one would be skipped by a client, or overrun the session's outbound
//!   budget and close it as a slow consumer): when every user does not fit, it lists the first
//!   ones that do and says `"truncated": true`.
//! - In rooms whose name starts with one of the configured `presence_events` prefixes, the
//!   other subscribers get `{"type":"join","room":R,"user":U}` when a user's first session
//!   subscribes and `{"type":"leave","room":R,"user":U}` when its last one leaves.
//!
//! Both halves live here. The session half is a frame handler the
//! [`ServerBuilder`](crate::ServerBuilder) registers first (an application may replace it),
//! built on the same extension point applications use. The registry half answers on the
//! asking session's outbox and sends the events. Events follow users, not sessions: a second
//! tab of a user already present announces nothing, and `leave` is sent when the user's last
//! session leaves (unsubscribe, close, or sweep). They reach the room's other subscribers
//! through their outboxes, in the same order as the room's messages. Clients written against
//! protocol v1 never see these frames unless they ask, or subscribe to a room configured for
//! events.

use actix::prelude::*;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Registry, SessionId};
use crate::broker::BrokerError;
use crate::names::{RoomName, UserName};
use crate::protocol::{encode_line, ErrorCode};
use crate::session::{AppFrame, Handlers, Session};

/// The `type` of the presence query and its answer.
pub(crate) const PRESENCE: &str = "presence";

/// Frames of the presence extension, as the server sends them.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum PresenceFrame<'a> {
    /// The answer to `presence{room}`.
    Presence {
        /// Room name.
        room: &'a str,
        /// Users present, sorted; the first of them when `truncated`.
        users: &'a [UserName],
        /// Some users were left out: all of them would not fit in `max_frame`.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
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
pub(crate) fn install(handlers: &mut Handlers) {
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
        Ok(q) => q.room,
        Err(e) => {
            let message = format!("presence needs a string `room`: {e}");
            session.send_error(ErrorCode::BadRequest, &message, id);
            return;
        }
    };
    let Some(room) = session.allowed_room(&room, id) else {
        return;
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

impl Registry {
    /// The users of this node's sessions subscribed to `room`, sorted. Presence across every
    /// node comes from the broker ([`ServerHandle::presence`](crate::ServerHandle::presence)).
    pub fn users_in(&self, room: &str) -> Vec<UserName> {
        let mut users: Vec<UserName> = self
            .members_of(room)
            .filter_map(|id| self.sessions.get(&id)?.user.clone())
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    fn presence_events_in(&self, room: &str) -> bool {
        self.presence_events
            .iter()
            .any(|p| p == "*" || room.starts_with(p.as_str()))
    }

    /// A user's first session anywhere joined `room`, or its last one left: the room's members
    /// on this node are told, but not the user's own sessions.
    pub(super) fn announce(&self, room: &RoomName, user: &UserName, joined: bool) {
        if !self.presence_events_in(room) {
            return;
        }
        let Some(state) = self.rooms.get(room) else {
            return;
        };
        let frame = if joined {
            encode_line(&PresenceFrame::Join { room, user })
        } else {
            encode_line(&PresenceFrame::Leave { room, user })
        };
        for member in state.members.values() {
            if member.user.as_ref() != Some(user) {
                member.outbox.push(frame.clone());
            }
        }
    }
}
/// Asks for the users present in a room on every node (for the application).
#[derive(Message)]
#[rtype(result = "Result<Vec<UserName>, BrokerError>")]
pub(crate) struct Presence {
    /// Room name.
    pub(crate) room: RoomName,
}

impl Handler<Presence> for Registry {
    type Result = ResponseFuture<Result<Vec<UserName>, BrokerError>>;

    fn handle(&mut self, msg: Presence, _: &mut Self::Context) -> Self::Result {
        self.broker.presence(&msg.room)
    }
}

/// A session's `presence{room}` frame; the registry queues the answer on its outbox, in order
/// with the room's events.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PresenceQuery {
    /// The asking session.
    pub(crate) id: SessionId,
    /// Room name.
    pub(crate) room: RoomName,
    /// The frame's `id`, echoed in the answer.
    pub(crate) frame_id: Option<String>,
}

/// The `presence` answer, newline included, at most `max_frame` bytes long without it: every
/// user when they all fit, else the first ones (in the sorted order of `users`) that do, with
/// `truncated`. `None` when not even an empty list fits (a room name and id near the limit).
fn presence_answer(
    room: &str,
    users: &[UserName],
    id: Option<&str>,
    max_frame: usize,
) -> Option<Bytes> {
    let answer = |users: &[UserName], truncated| {
        encode_line(&PresenceFrame::Presence {
            room,
            users,
            truncated,
            id,
        })
    };
    let whole = answer(users, false);
    // Every encoded line ends with its newline, which `max_frame` does not count.
    if whole.len() - 1 <= max_frame {
        return Some(whole);
    }
    let mut len = answer(&[], true).len() - 1;
    if len > max_frame {
        return None;
    }
    let mut fit = 0;
    for user in users {
        // The name as JSON, and the comma before it.
        let cost =
            serde_json::to_string(user).map_or(usize::MAX, |u| u.len()) + usize::from(fit > 0);
        if cost > max_frame - len {
            break;
        }
        len += cost;
        fit += 1;
    }
    Some(answer(&users[..fit], true))
}

impl Handler<PresenceQuery> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: PresenceQuery, _: &mut Self::Context) -> Self::Result {
        let users = self.broker.presence(&msg.room);
        Box::pin(users.into_actor(self).map(move |users, act, _| {
            let id = msg.frame_id.as_deref();
            match users {
                Ok(users) => match presence_answer(&msg.room, &users, id, act.limits.max_frame) {
                    Some(answer) => {
                        act.push_to(msg.id, answer);
                    }
                    None => act.push_error(
                        msg.id,
                        ErrorCode::BadRequest,
                        "the room name and id leave no room for users within max_frame",
                        id,
                    ),
                },
                Err(e) => act.broker_failed(msg.id, &e, id),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: usize, len: usize) -> Vec<UserName> {
        (0..n)
            .map(|i| UserName::checked(format!("{i:04}{}", "u".repeat(len - 4))))
            .collect()
    }

    fn decode(line: &Bytes) -> serde_json::Value {
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn an_answer_that_fits_is_whole_and_says_nothing_more() {
        let all = users(3, 5);
        let line = presence_answer("r", &all, Some("q"), 1024).unwrap();
        assert_eq!(
            decode(&line),
            serde_json::json!({"type": "presence", "room": "r", "users": ["0000u", "0001u", "0002u"], "id": "q"})
        );
    }

    #[test]
    fn a_long_answer_keeps_the_first_users_that_fit_in_max_frame() {
        for max_frame in [100, 200, 1000, 1024, 4096] {
            for len in [5, 17, 103] {
                let all = users(1000, len);
                let line = presence_answer("room", &all, Some("q1"), max_frame).unwrap();
                assert!(
                    line.len() <= max_frame + 1,
                    "{max_frame} {len}: {}",
                    line.len()
                );
                let frame = decode(&line);
                assert_eq!(frame["truncated"], true);
                let got: Vec<String> = serde_json::from_value(frame["users"].clone()).unwrap();
                let expected: Vec<String> = all[..got.len()]
                    .iter()
                    .map(|u| u.as_str().to_owned())
                    .collect();
                assert_eq!(got, expected, "a prefix of the sorted users");
                // One more user would not have fitted.
                let one_more = encode_line(&PresenceFrame::Presence {
                    room: "room",
                    users: &all[..got.len() + 1],
                    truncated: true,
                    id: Some("q1"),
                });
                assert!(one_more.len() > max_frame + 1, "{max_frame} {len}");
            }
        }
    }

    /// `{"type":"presence","room":"rrrrrrrrrr","users":[],"id":"q"}` is 57 bytes; with
    /// `"truncated":true,` 74.
    #[test]
    fn no_answer_when_not_even_an_empty_list_fits() {
        let room = "r".repeat(10);
        assert!(presence_answer(&room, &users(2, 5), Some("q"), 64).is_none());
        assert!(presence_answer(&room, &[], Some("q"), 64).is_some());
    }
}
