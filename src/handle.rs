//! What an application does with a running server, as plain async methods on
//! [`ServerHandle`]: push to rooms and users, disconnect, and look at rooms, presence and
//! connections. The HTTP API is a thin layer over these same methods, so an application that
//! embeds heartwire gets exactly what the API offers without building registry messages.
//!
//! Every method checks its arguments against the protocol's limits (room names, user names,
//! ids) and goes through the registry's mailbox with an awaited `send`, so a busy registry
//! slows the caller down instead of growing a queue.

use std::sync::Arc;

use actix::MailboxError;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::broker::{BrokerError, HistoryTotals};
use crate::metrics::Levels;
use crate::protocol::{ByeReason, MAX_ID_LEN, MAX_ROOM_LEN, MAX_USER_LEN};
use crate::registry::admin::{
    ConnectionPage, GetHistoryTotals, GetOverview, KickSession, ListConnections, ListRooms,
    Overview, RoomDetails, RoomInfo, RoomPage,
};
use crate::registry::presence::Presence;
use crate::registry::{Kick, Publish, SendTo};
use crate::server::ServerHandle;

/// Why an application call on a [`ServerHandle`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// An argument breaks a protocol limit.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The argument.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The payload could not be turned into JSON.
    #[error("cannot encode `data` as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    /// The registry did not answer (it is stopping, or its mailbox is closed).
    #[error("registry unavailable: {0}")]
    Registry(#[from] MailboxError),
    /// The broker (sequencing and history) failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

fn check_len(
    field: &'static str,
    value: &str,
    max: usize,
    reason: &'static str,
) -> Result<(), HandleError> {
    if value.is_empty() || value.len() > max {
        return Err(HandleError::Invalid { field, reason });
    }
    Ok(())
}

fn check_room(room: &str) -> Result<(), HandleError> {
    check_len("room", room, MAX_ROOM_LEN, "must be 1 to 256 bytes")
}

fn check_user(field: &'static str, user: &str) -> Result<(), HandleError> {
    check_len(field, user, MAX_USER_LEN, "must be 1 to 128 bytes")
}

fn check_id(id: Option<&str>) -> Result<(), HandleError> {
    match id {
        Some(id) if id.len() > MAX_ID_LEN => Err(HandleError::Invalid {
            field: "id",
            reason: "must be at most 128 bytes",
        }),
        _ => Ok(()),
    }
}

/// Which sessions [`ServerHandle::connections`] lists.
#[derive(Debug, Clone, Default)]
pub struct ConnectionQuery {
    /// Start after this cursor (a previous page's `next`).
    pub after: Option<u64>,
    /// Page size (the HTTP API caps it at `http.max_page_size`).
    pub limit: usize,
    /// Only this user's sessions.
    pub user: Option<String>,
}

impl ServerHandle {
    /// Publishes `data` to `room` as the server (`from: null`), exactly like a client's
    /// `publish`: sequenced, kept in the history, deduplicated by `id` (ids of server pushes
    /// form their own namespace). Returns the message's `seq` (for a duplicate, the first one).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        room: &str,
        data: &T,
        id: Option<&str>,
    ) -> Result<u64, HandleError> {
        let data = serde_json::value::to_raw_value(data)?;
        self.publish_raw(room, data, id).await
    }

    /// [`publish`](Self::publish) with a payload that is JSON text already.
    pub async fn publish_raw(
        &self,
        room: &str,
        data: Box<RawValue>,
        id: Option<&str>,
    ) -> Result<u64, HandleError> {
        check_room(room)?;
        check_id(id)?;
        let msg = Publish {
            session: None,
            room: room.into(),
            from: None,
            data,
            id: id.map(Into::into),
        };
        Ok(self.registry().send(msg).await??)
    }

    /// Sends `data` to every session of `user` as a direct `message` with `from: null`.
    /// Returns how many sessions took it.
    pub async fn send_to<T: Serialize + ?Sized>(
        &self,
        user: &str,
        data: &T,
        id: Option<&str>,
    ) -> Result<usize, HandleError> {
        let data = serde_json::value::to_raw_value(data)?;
        self.send_raw(user, data, id).await
    }

    /// [`send_to`](Self::send_to) with a payload that is JSON text already.
    pub async fn send_raw(
        &self,
        user: &str,
        data: Box<RawValue>,
        id: Option<&str>,
    ) -> Result<usize, HandleError> {
        check_user("to", user)?;
        check_id(id)?;
        let msg = SendTo {
            session: None,
            from: None,
            to: user.to_owned(),
            data,
            id: id.map(Into::into),
        };
        Ok(self.registry().send(msg).await?)
    }

    /// Closes every session of `user` with `bye{reason:"kicked"}`; returns how many.
    pub async fn kick_user(&self, user: &str) -> Result<usize, HandleError> {
        check_user("user", user)?;
        let msg = Kick::User(user.to_owned(), ByeReason::Kicked);
        Ok(self.registry().send(msg).await?)
    }

    /// Closes the session its client knows as `session` (`welcome.session`) with
    /// `bye{reason:"kicked"}`; returns 1, or 0 when there is no such session.
    pub async fn kick_session(&self, session: &str) -> Result<usize, HandleError> {
        check_len("session", session, MAX_ID_LEN, "must be 1 to 128 bytes")?;
        let msg = KickSession {
            session: session.to_owned(),
            reason: ByeReason::Kicked,
        };
        Ok(self.registry().send(msg).await?)
    }

    /// Counts and whether the server is draining.
    pub async fn overview(&self) -> Result<Overview, HandleError> {
        Ok(self.registry().send(GetOverview).await?)
    }

    /// The users present in `room` (at least one session subscribed), sorted.
    pub async fn presence(&self, room: &str) -> Result<Vec<Arc<str>>, HandleError> {
        check_room(room)?;
        let msg = Presence {
            room: room.to_owned(),
        };
        Ok(self.registry().send(msg).await?)
    }

    /// A page of the rooms that have subscribers, by name, after `after`.
    pub async fn rooms(&self, after: Option<&str>, limit: usize) -> Result<RoomPage, HandleError> {
        let msg = ListRooms {
            after: after.map(Into::into),
            limit,
        };
        Ok(self.registry().send(msg).await?)
    }

    /// One room: members, users, and the broker's `seq`, `epoch` and history length; `None`
    /// when it has no subscribers and no history.
    pub async fn room(&self, room: &str) -> Result<Option<RoomDetails>, HandleError> {
        check_room(room)?;
        let msg = RoomInfo {
            room: room.to_owned(),
        };
        Ok(self.registry().send(msg).await??)
    }

    /// A page of connections with their heartbeat numbers and queues.
    pub async fn connections(&self, query: ConnectionQuery) -> Result<ConnectionPage, HandleError> {
        let msg = ListConnections {
            after: query.after,
            limit: query.limit,
            user: query.user,
        };
        Ok(self.registry().send(msg).await?)
    }

    /// What the room histories hold together; `None` when the broker cannot tell.
    pub async fn history_totals(&self) -> Result<Option<HistoryTotals>, HandleError> {
        Ok(self.registry().send(GetHistoryTotals).await??)
    }

    /// The metrics in OpenMetrics text ([`CONTENT_TYPE`](crate::metrics::CONTENT_TYPE)), after
    /// reading the current levels (connections, rooms, history) from the registry and broker.
    pub async fn render_metrics(&self) -> Result<String, HandleError> {
        let overview = self.overview().await?;
        let history = match self.registry().send(GetHistoryTotals).await? {
            Ok(totals) => totals.map(|t| (t.rooms, t.messages)),
            Err(error) => {
                tracing::warn!(%error, "broker totals unavailable for metrics");
                None
            }
        };
        self.metrics().set_levels(&Levels {
            connections: overview.sessions,
            identified: overview.identified,
            users: overview.users,
            rooms: overview.rooms,
            draining: overview.draining,
            history,
        });
        Ok(self.metrics().encode())
    }
}
