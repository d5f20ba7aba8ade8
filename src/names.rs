//! Names that cross the server: rooms, users and frame ids.
//!
//! A name enters through a TCP frame, the HTTP API, a [`ServerHandle`](crate::ServerHandle)
//! method, the presence query or an application frame. Each of those turns text into a
//! [`RoomName`], [`UserName`] or [`FrameId`] through one [`NameLimits`] built from the
//! configuration (`limits.max_room_len`, `limits.max_id_len`), so a limit set there holds on
//! every path and the rest of the server handles names it never has to check again. The
//! types are cheap to clone (`Arc<str>` inside) because one name is shared by the registry's
//! maps, the broker and every frame that carries it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::Serialize;

/// Protocol limit on user names (`hello.user`, `send.to`, a token's `sub`), in bytes.
pub const MAX_USER_LEN: usize = 128;
/// Protocol limit on room names, in bytes; `limits.max_room_len` may lower it.
pub const MAX_ROOM_LEN: usize = 256;
/// Protocol limit on frame ids, in bytes; `limits.max_id_len` may lower it.
pub const MAX_ID_LEN: usize = 128;

/// A name that breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {}", self.reason())]
pub struct NameError {
    field: &'static str,
    min: usize,
    max: usize,
}

impl NameError {
    /// The field the name was given as (`room`, `user`, `to`, `id`, ...).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What the rule is, e.g. "must be 1 to 256 bytes".
    pub fn reason(&self) -> String {
        if self.min == 0 {
            format!("must be at most {} bytes", self.max)
        } else {
            format!("must be {} to {} bytes", self.min, self.max)
        }
    }

    /// The same rule, reported for another field (`to` instead of `user`).
    pub fn for_field(mut self, field: &'static str) -> Self {
        self.field = field;
        self
    }
}

/// The length rules of one server, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameLimits {
    room: usize,
    id: usize,
}

impl Default for NameLimits {
    /// The protocol's own limits.
    fn default() -> Self {
        NameLimits {
            room: MAX_ROOM_LEN,
            id: MAX_ID_LEN,
        }
    }
}

fn check(field: &'static str, text: &str, min: usize, max: usize) -> Result<(), NameError> {
    if text.len() < min || text.len() > max {
        return Err(NameError { field, min, max });
    }
    Ok(())
}

impl NameLimits {
    /// Limits of `max_room_len` and `max_id_len` bytes, each capped at the protocol's.
    pub fn new(max_room_len: usize, max_id_len: usize) -> Self {
        NameLimits {
            room: max_room_len.min(MAX_ROOM_LEN),
            id: max_id_len.min(MAX_ID_LEN),
        }
    }

    /// Longest room name in bytes.
    pub fn max_room_len(&self) -> usize {
        self.room
    }

    /// Longest frame id in bytes.
    pub fn max_id_len(&self) -> usize {
        self.id
    }

    /// Checks a room name: 1 to `max_room_len` bytes.
    pub fn check_room(&self, room: &str) -> Result<(), NameError> {
        check("room", room, 1, self.room)
    }

    /// Checks a frame id: at most `max_id_len` bytes.
    pub fn check_id(&self, id: &str) -> Result<(), NameError> {
        check("id", id, 0, self.id)
    }

    /// A room name, checked.
    pub fn room(&self, room: &str) -> Result<RoomName, NameError> {
        self.check_room(room)?;
        Ok(RoomName(room.into()))
    }

    /// A frame id, checked.
    pub fn id(&self, id: &str) -> Result<FrameId, NameError> {
        self.check_id(id)?;
        Ok(FrameId(id.into()))
    }

    /// An optional frame id, checked when present.
    pub fn opt_id(&self, id: Option<&str>) -> Result<Option<FrameId>, NameError> {
        id.map(|id| self.id(id)).transpose()
    }
}

/// Checks a user name: 1 to [`MAX_USER_LEN`] bytes (the protocol fixes it).
pub fn check_user(user: &str) -> Result<(), NameError> {
    check("user", user, 1, MAX_USER_LEN)
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The shared text inside.
            pub fn as_arc(&self) -> &Arc<str> {
                &self.0
            }

            /// Takes the shared text out.
            pub fn into_arc(self) -> Arc<str> {
                self.0
            }

            /// Wraps text a [`NameLimits`] (or the parser, which uses one) already checked.
            pub(crate) fn checked(text: impl Into<Arc<str>>) -> Self {
                $name(text.into())
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}

name_type!(
    /// A room name, 1 to `limits.max_room_len` bytes.
    RoomName
);
name_type!(
    /// A user name, 1 to 128 bytes.
    UserName
);
name_type!(
    /// A frame's `id` (publish, send, or an application frame), at most `limits.max_id_len`
    /// bytes.
    FrameId
);

impl UserName {
    /// A user name, checked against the protocol's limit.
    pub fn new(user: &str) -> Result<UserName, NameError> {
        check_user(user)?;
        Ok(UserName(user.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_limits_apply_and_never_exceed_the_protocol() {
        let limits = NameLimits::new(8, 4);
        assert_eq!(limits.room("lobby").unwrap().as_str(), "lobby");
        let err = limits.room("a-very-long-room").unwrap_err();
        assert_eq!(err.to_string(), "`room` must be 1 to 8 bytes");
        assert!(limits.room("").is_err());
        assert!(limits.id("").is_ok());
        assert_eq!(
            limits.id("12345").unwrap_err().to_string(),
            "`id` must be at most 4 bytes"
        );
        let wide = NameLimits::new(10_000, 10_000);
        assert_eq!(
            (wide.max_room_len(), wide.max_id_len()),
            (MAX_ROOM_LEN, MAX_ID_LEN)
        );
    }

    #[test]
    fn users_follow_the_protocol() {
        assert!(UserName::new("alice").is_ok());
        assert!(UserName::new("").is_err());
        let long = "u".repeat(MAX_USER_LEN + 1);
        let err = UserName::new(&long).unwrap_err().for_field("to");
        assert_eq!(err.to_string(), "`to` must be 1 to 128 bytes");
    }
}
