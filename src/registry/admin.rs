//! Read-only views of the registry for operators and applications (the HTTP API and
//! [`ServerHandle`](crate::ServerHandle)'s query methods), and closing a session by the id
//! its client was given.
//!
//! Lists are paged with a cursor (`after`) over a stable order (session ids in connection
//! order, room names alphabetically) so that a page is cheap to produce and paging does not
//! skip or repeat entries that stayed. Per-connection heartbeat numbers come from each
//! session's [`SessionGauge`](crate::session::SessionGauge), so listing sends no message to any
//! session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use serde::{Serialize, Serializer};

use super::{Entry, Registry, SessionId};
use crate::broker::{BrokerError, HistoryTotals, RoomStream};
use crate::names::{RoomName, UserName};
use crate::protocol::ByeReason;

/// One connection, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// The session id its client got in `welcome.session`.
    pub session: Arc<str>,
    /// The user, once the handshake is done.
    pub user: Option<UserName>,
    /// Remote address.
    pub peer: SocketAddr,
    /// When the connection was accepted (RFC 3339).
    #[serde(serialize_with = "rfc3339")]
    pub connected_at: SystemTime,
    /// Rooms it is subscribed to, sorted.
    pub rooms: Vec<RoomName>,
    /// Round trip of its latest answered ping, in milliseconds.
    #[serde(rename = "last_rtt_ms", serialize_with = "millis")]
    pub last_rtt: Option<Duration>,
    /// Pings in a row it left unanswered (any frame resets it).
    pub missed: u32,
    /// Outbound bytes queued and not yet written.
    pub queued_bytes: usize,
    /// When it will be declared dead if it stays silent (RFC 3339); before the handshake, its
    /// handshake deadline.
    #[serde(serialize_with = "rfc3339_opt")]
    pub dead_by: Option<SystemTime>,
    /// Milliseconds from now to `dead_by` (0 when overdue).
    pub dead_in_ms: Option<u64>,
}

/// A page of connections.
#[derive(Debug, Clone, Serialize, MessageResponse)]
pub struct ConnectionPage {
    /// The connections, in connection order.
    pub connections: Vec<ConnectionInfo>,
    /// Connections matching the query, all pages together.
    pub total: usize,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<u64>,
}

/// Lists connections.
#[derive(Debug, Clone, Message)]
#[rtype(result = "ConnectionPage")]
pub(crate) struct ListConnections {
    /// Only connections after this cursor (a previous page's `next`).
    pub(crate) after: Option<u64>,
    /// Page size.
    pub(crate) limit: usize,
    /// Only the sessions of this user.
    pub(crate) user: Option<String>,
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

fn millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64((d.as_micros() as f64) / 1000.0),
        None => s.serialize_none(),
    }
}

/// Wall-clock time of a monotonic instant.
fn wall(at: Instant, now: Instant, wall_now: SystemTime) -> SystemTime {
    if at >= now {
        wall_now + (at - now)
    } else {
        wall_now - (now - at)
    }
}

impl Registry {
    fn connection_info(&self, entry: &Entry, now: Instant, wall_now: SystemTime) -> ConnectionInfo {
        let gauge = &entry.gauge;
        let mut rooms: Vec<RoomName> = entry.rooms.iter().cloned().collect();
        rooms.sort_unstable();
        let dead_by = gauge.dead_by();
        ConnectionInfo {
            session: gauge.wire_id().clone(),
            user: entry.user.clone(),
            peer: entry.gauge.peer(),
            connected_at: gauge.connected_at(),
            rooms,
            last_rtt: gauge.rtt(),
            missed: gauge.missed(),
            queued_bytes: entry.outbox.queued_bytes(),
            dead_by: dead_by.map(|at| wall(at, now, wall_now)),
            dead_in_ms: dead_by.map(|at| {
                u64::try_from(at.saturating_duration_since(now).as_millis()).unwrap_or(0)
            }),
        }
    }

    /// Resolves the id a client got in `welcome.session`.
    pub fn find_session(&self, wire_id: &str) -> Option<SessionId> {
        let n: u64 = wire_id.rsplit('-').next()?.parse().ok()?;
        let entry = self.sessions.get(&SessionId(n))?;
        (&**entry.gauge.wire_id() == wire_id).then_some(SessionId(n))
    }
}

impl Handler<ListConnections> for Registry {
    type Result = ConnectionPage;

    fn handle(&mut self, msg: ListConnections, _: &mut Self::Context) -> ConnectionPage {
        let after = msg.after.unwrap_or(0);
        let mut ids: Vec<SessionId> = match &msg.user {
            Some(user) => self.sessions_of(user).collect(),
            None => self.sessions.keys().copied().collect(),
        };
        let total = ids.len();
        ids.retain(|id| id.0 > after);
        ids.sort_unstable();
        let more = ids.len() > msg.limit;
        ids.truncate(msg.limit);
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let connections: Vec<ConnectionInfo> = ids
            .iter()
            .filter_map(|id| self.sessions.get(id))
            .map(|entry| self.connection_info(entry, now, wall_now))
            .collect();
        ConnectionPage {
            connections,
            total,
            next: if more {
                ids.last().map(|id| id.0)
            } else {
                None
            },
        }
    }
}

/// One room, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSummary {
    /// Room name.
    pub room: RoomName,
    /// Subscribed sessions.
    pub members: usize,
    /// Distinct users among them.
    pub users: usize,
}

/// A page of rooms.
#[derive(Debug, Clone, Serialize, MessageResponse)]
pub struct RoomPage {
    /// Rooms with subscribers, by name.
    pub rooms: Vec<RoomSummary>,
    /// Rooms with subscribers, all pages together.
    pub total: usize,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<RoomName>,
}

/// Lists the rooms that have subscribers.
#[derive(Debug, Clone, Message)]
#[rtype(result = "RoomPage")]
pub(crate) struct ListRooms {
    /// Only rooms whose name sorts after this one (a previous page's `next`).
    pub(crate) after: Option<String>,
    /// Page size.
    pub(crate) limit: usize,
}

impl Handler<ListRooms> for Registry {
    type Result = RoomPage;

    fn handle(&mut self, msg: ListRooms, _: &mut Self::Context) -> RoomPage {
        let total = self.rooms.len();
        let mut names: Vec<&RoomName> = self
            .rooms
            .keys()
            .filter(|r| msg.after.as_deref().is_none_or(|after| &***r > after))
            .collect();
        names.sort_unstable();
        let more = names.len() > msg.limit;
        names.truncate(msg.limit);
        let rooms: Vec<RoomSummary> = names
            .iter()
            .map(|room| RoomSummary {
                room: (*room).clone(),
                members: self.rooms.get(*room).map_or(0, |r| r.members.len()),
                users: self.users_in(room).len(),
            })
            .collect();
        RoomPage {
            next: if more {
                rooms.last().map(|r| r.room.clone())
            } else {
                None
            },
            rooms,
            total,
        }
    }
}

/// A session in a room.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// Its id as its client knows it.
    pub session: Arc<str>,
    /// Its user.
    pub user: Option<UserName>,
}

/// One room in detail.
#[derive(Debug, Clone, Serialize)]
pub struct RoomDetails {
    /// Room name.
    pub room: RoomName,
    /// Subscribed sessions, in connection order.
    pub members: Vec<Member>,
    /// Users present, sorted.
    pub users: Vec<UserName>,
    /// Position and history from the broker (`seq`, `epoch`, `history_len`), when it knows.
    #[serde(flatten)]
    pub stream: Option<RoomStream>,
}

/// Asks for one room; `None` when it has no subscribers and the broker keeps nothing of it.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Option<RoomDetails>, BrokerError>")]
pub(crate) struct RoomInfo {
    /// Room name.
    pub(crate) room: RoomName,
}

impl Handler<RoomInfo> for Registry {
    type Result = ResponseActFuture<Self, Result<Option<RoomDetails>, BrokerError>>;

    fn handle(&mut self, msg: RoomInfo, _: &mut Self::Context) -> Self::Result {
        let mut ids: Vec<SessionId> = self.members_of(&msg.room).collect();
        ids.sort_unstable();
        let members: Vec<Member> = ids
            .iter()
            .filter_map(|id| self.sessions.get(id))
            .map(|e| Member {
                session: e.gauge.wire_id().clone(),
                user: e.user.clone(),
            })
            .collect();
        let users = self.users_in(&msg.room);
        let stream = self.broker.room_stream(&msg.room);
        Box::pin(stream.into_actor(self).map(move |stream, _, _| {
            let stream = stream?;
            if members.is_empty() && stream.is_none() {
                return Ok(None);
            }
            Ok(Some(RoomDetails {
                room: msg.room,
                members,
                users,
                stream,
            }))
        }))
    }
}

/// The server at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, MessageResponse)]
pub struct Overview {
    /// Open connections.
    pub sessions: usize,
    /// Connections past the handshake.
    pub identified: usize,
    /// Distinct users.
    pub users: usize,
    /// Rooms with subscribers.
    pub rooms: usize,
    /// True once a graceful shutdown began: no new sessions are taken.
    pub draining: bool,
    /// The shared store (`broker.url`) is reachable and this node receives from it; always
    /// true with the in-memory broker. `/readyz` reports a node without it as not ready.
    pub store_healthy: bool,
}

/// Asks for an [`Overview`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Overview")]
pub(crate) struct GetOverview;

impl Handler<GetOverview> for Registry {
    type Result = Overview;

    fn handle(&mut self, _: GetOverview, _: &mut Self::Context) -> Overview {
        Overview {
            sessions: self.sessions.len(),
            identified: self.sessions.values().filter(|e| e.user.is_some()).count(),
            users: self.users.len(),
            rooms: self.rooms.len(),
            draining: self.draining,
            store_healthy: self.broker.healthy(),
        }
    }
}

/// Asks the broker for its history totals.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<Option<HistoryTotals>, BrokerError>")]
pub(crate) struct GetHistoryTotals;

impl Handler<GetHistoryTotals> for Registry {
    type Result = ResponseActFuture<Self, Result<Option<HistoryTotals>, BrokerError>>;

    fn handle(&mut self, _: GetHistoryTotals, _: &mut Self::Context) -> Self::Result {
        Box::pin(self.broker.history_totals().into_actor(self))
    }
}

/// Closes one session, named by the id its client got in `welcome.session`, with
/// `bye{reason}`. Answers how many sessions were closed (0 or 1).
#[derive(Debug, Clone, Message)]
#[rtype(result = "usize")]
pub(crate) struct KickSession {
    /// The session's id as its client knows it.
    pub(crate) session: String,
    /// The `bye` reason.
    pub(crate) reason: ByeReason,
}

impl Handler<KickSession> for Registry {
    type Result = usize;

    /// 1 when the session is on this node; otherwise the other nodes are asked to close it
    /// and the answer is 0 (its node is not known here).
    fn handle(&mut self, msg: KickSession, _: &mut Self::Context) -> usize {
        let here = self.kick_session_local(&msg.session, msg.reason);
        if here == 0 {
            let call = self.broker.kick_session_others(&msg.session, msg.reason);
            self.spawn_broker_call(call, "kick session");
        }
        here
    }
}

impl Registry {
    /// Closes the session its client knows as `session`, if it is on this node.
    pub(super) fn kick_session_local(&self, session: &str, reason: ByeReason) -> usize {
        self.find_session(session)
            .and_then(|id| self.sessions.get(&id))
            .filter(|e| e.outbox.close(reason, None))
            .map_or(0, |_| 1)
    }
}
