//! Presence on the registry's side: who is in a room, and `join`/`leave` events.
//!
//! A user is *present* in a room while at least one of its sessions is subscribed to it.
//! Events follow users, not sessions: a second tab of a user already present announces
//! nothing, and `leave` is sent when the user's last session leaves (unsubscribe, close, or
//! sweep). Events go to the room's other subscribers through their outboxes, in the same
//! order as the room's messages. Only rooms matching the configured prefixes
//! (`presence_events`) get events; the `presence` query works in every room.

use std::sync::Arc;

use actix::prelude::*;

use super::{Registry, SessionId};
use crate::presence::PresenceFrame;
use crate::protocol::encode_line;

impl Registry {
    /// The users present in `room`, sorted.
    pub fn users_in(&self, room: &str) -> Vec<Arc<str>> {
        let mut users: Vec<Arc<str>> = self
            .members_of(room)
            .filter_map(|id| self.sessions.get(&id)?.user.clone())
            .collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Whether some session of `user` is subscribed to `room`.
    fn user_present(&self, room: &str, user: &str) -> bool {
        match self.rooms.get(room) {
            Some(members) => self.sessions_of(user).any(|id| members.contains(&id)),
            None => false,
        }
    }

    fn presence_events_in(&self, room: &str) -> bool {
        self.presence_events
            .iter()
            .any(|p| p == "*" || room.starts_with(p.as_str()))
    }

    /// Called before a session of `user` becomes a member of `room`.
    pub(super) fn announce_join(&self, room: &str, user: &str) {
        if self.presence_events_in(room) && !self.user_present(room, user) {
            self.fan_out(room, &encode_line(&PresenceFrame::Join { room, user }));
        }
    }

    /// Called after a session of `user` stopped being a member of `room`.
    pub(super) fn announce_leave(&self, room: &str, user: &str) {
        if self.presence_events_in(room) && !self.user_present(room, user) {
            self.fan_out(room, &encode_line(&PresenceFrame::Leave { room, user }));
        }
    }
}

/// Asks for the users present in a room (for the application).
#[derive(Message)]
#[rtype(result = "Vec<Arc<str>>")]
pub struct Presence {
    /// Room name.
    pub room: String,
}

impl Handler<Presence> for Registry {
    type Result = Vec<Arc<str>>;

    fn handle(&mut self, msg: Presence, _: &mut Self::Context) -> Vec<Arc<str>> {
        self.users_in(&msg.room)
    }
}

/// A session's `presence{room}` frame; the registry queues the answer on its outbox, in order
/// with the room's events.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PresenceQuery {
    /// The asking session.
    pub id: SessionId,
    /// Room name.
    pub room: String,
    /// The frame's `id`, echoed in the answer.
    pub frame_id: Option<String>,
}

impl Handler<PresenceQuery> for Registry {
    type Result = ();

    fn handle(&mut self, msg: PresenceQuery, _: &mut Self::Context) {
        let users = self.users_in(&msg.room);
        let frame = PresenceFrame::Presence {
            room: &msg.room,
            users: &users,
            id: msg.frame_id.as_deref(),
        };
        self.push_to(msg.id, encode_line(&frame));
    }
}
