//! Names of the Redis keys and channels, in one place.
//!
//! | what | name | type |
//! |---|---|---|
//! | room position | `P:r:<len>:{room}:m` | hash `e` = epoch, `s` = last seq |
//! | room history | `P:r:<len>:{room}:h` | stream, entry ID `<seq>-0`, fields `t` (ms), `f` (frame) |
//! | publish dedupe | `P:r:<len>:{room}:d:<len>:<user>:<id>` (`:d:-:<id>` for server pushes) | string `<seq>:<epoch>` |
//! | room events | `P:r:<len>:{room}:e` | channel: `m<seq>:<epoch>:<frame>`, `j<user>`, `l<user>` |
//! | presence | `P:r:<len>:{room}:pz`, `:pm`, `:pu` | sorted set member → expiry, hash member → user, hash user → count |
//! | user's sessions | `P:u:<len>:{user}:s` | sorted set member → expiry |
//! | user events | `P:u:<len>:{user}:e` | channel: `d<node>:<frame>`, `k<node>:<reason>` |
//! | one node | `P:n:<node>` | channel: `p` (probe), `s<reason>:<session>` (kick a session) |
//!
//! `P` is `broker.key_prefix`. Every key of one room carries the room in one hash tag, so that a
//! script touching them all is safe on Redis Cluster; the same holds for a user. The name's
//! length before the tag keeps the mapping one-to-one whatever a name contains (a room called
//! `a}:m` cannot address another room's keys).

use crate::names::{RoomName, UserName};

/// Builds names under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    fn room(&self, room: &RoomName, suffix: &str) -> String {
        format!("{}:r:{}:{{{room}}}:{suffix}", self.prefix, room.len())
    }

    fn user(&self, user: &UserName, suffix: &str) -> String {
        format!("{}:u:{}:{{{user}}}:{suffix}", self.prefix, user.len())
    }

    pub(super) fn meta(&self, room: &RoomName) -> String {
        self.room(room, "m")
    }

    pub(super) fn history(&self, room: &RoomName) -> String {
        self.room(room, "h")
    }

    /// The dedupe key of a publish id: per publishing user, server pushes apart.
    pub(super) fn dedupe(&self, room: &RoomName, from: Option<&UserName>, id: &str) -> String {
        match from {
            Some(user) => self.room(room, &format!("d:{}:{user}:{id}", user.len())),
            None => self.room(room, &format!("d:-:{id}")),
        }
    }

    pub(super) fn room_channel(&self, room: &RoomName) -> String {
        self.room(room, "e")
    }

    /// The three keys of a room's presence, in the order the scripts expect.
    pub(super) fn presence(&self, room: &RoomName) -> [String; 3] {
        [
            self.room(room, "pz"),
            self.room(room, "pm"),
            self.room(room, "pu"),
        ]
    }

    pub(super) fn sessions(&self, user: &UserName) -> String {
        self.user(user, "s")
    }

    pub(super) fn user_channel(&self, user: &UserName) -> String {
        self.user(user, "e")
    }

    pub(super) fn node_channel(&self, node: &str) -> String {
        format!("{}:n:{node}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_keeps_its_keys_in_one_slot_and_to_itself() {
        let keys = Keys::new("hw");
        let room = RoomName::checked("a}:m");
        assert_eq!(keys.meta(&room), "hw:r:4:{a}:m}:m");
        assert_ne!(keys.meta(&room), keys.meta(&RoomName::checked("a")));
        let user = UserName::checked("bob");
        assert_eq!(
            keys.dedupe(&RoomName::checked("r"), Some(&user), "x"),
            "hw:r:1:{r}:d:3:bob:x"
        );
        assert_eq!(
            keys.dedupe(&RoomName::checked("r"), None, "x"),
            "hw:r:1:{r}:d:-:x"
        );
        assert_eq!(keys.sessions(&user), "hw:u:3:{bob}:s");
    }
}
