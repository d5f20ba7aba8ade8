//! A room as one node sees it: its local members, the subscribers joining it, and the order
//! of its stream.
//!
//! Messages reach a node only through the broker's inbound stream, in `seq` order per room
//! (and the publishing node is no exception). The registry never waits for the store: every
//! broker call is spawned, and what keeps a room's stream gapless is the room's own state:
//!
//! - **Position.** The epoch and the last seq this node fanned out. A publication with the
//!   next seq is fanned out; an older one is a duplicate and dropped; a newer one reveals a
//!   hole, and the room holds what arrives while it reads the hole from history (a *fill*).
//!   What history cannot give back becomes `unsubscribed{reason:"resync"}` for the members,
//!   never a silent gap.
//! - **Joining.** A subscriber is not a member until its history read is answered. The read
//!   is issued once the node receives the room's publications (the store confirmed the
//!   subscription), and everything that arrives meanwhile is buffered for that subscriber, so
//!   merging the read and the buffer by seq loses and doubles nothing at the seam.
//! - **Members** carry a [`RoomCursor`], the last seq queued for them: a fan-out skips a
//!   member that already has a seq, which makes every path (fills, joins, re-registrations
//!   after a registry crash) safe to overlap.
//! - **Acks wait for their message.** A publisher subscribed to the room gets its
//!   `ack{id, seq}` after its own `message`, as on one node, even though the message now
//!   makes a round trip through the store.
//!
//! Every buffer here is bounded by [`MAX_HELD`]; a room or a subscriber that would need more
//! is resynced instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Member, Registry, RoomCursor, SessionId};
use crate::broker::{BrokerError, History};
use crate::names::{RoomName, UserName};
use crate::protocol::{ErrorCode, Outbound};

/// Publications one room (or one joining subscriber) may hold while a read is in flight.
pub(crate) const MAX_HELD: usize = 4096;

/// A publication as it arrived.
#[derive(Debug, Clone)]
struct Held {
    epoch: Arc<str>,
    frame: Bytes,
}

/// A subscriber whose history read is in flight.
#[derive(Debug)]
pub(super) struct Joiner {
    /// Replay after this seq (the client's `since`, or a re-registering session's cursor).
    pub(super) since: Option<u64>,
    /// The epoch of `since`.
    pub(super) epoch: Option<String>,
    /// A session re-registering after a registry crash: no `subscribed`, its cursor goes on,
    /// and a hole history cannot fill is a resync.
    pub(super) rejoin: Option<Arc<RoomCursor>>,
    /// Answers the session's `Subscribe` with its cursor once it is a member.
    pub(super) reply: Option<oneshot::Sender<Option<Arc<RoomCursor>>>>,
    /// What arrived since the read was issued, by seq.
    buffer: BTreeMap<u64, Held>,
    overflowed: bool,
    /// `subscribed` was sent: what follows reaches the client as live messages.
    announced: bool,
    /// The read was issued (the node receives the room's publications).
    reading: bool,
}

impl Joiner {
    /// A subscriber waiting to read the room's history.
    pub(super) fn new(
        since: Option<u64>,
        epoch: Option<String>,
        rejoin: Option<Arc<RoomCursor>>,
        reply: Option<oneshot::Sender<Option<Arc<RoomCursor>>>>,
    ) -> Self {
        Joiner {
            since,
            epoch,
            rejoin,
            reply,
            buffer: BTreeMap::new(),
            overflowed: false,
            announced: false,
            reading: false,
        }
    }
}

/// One room on this node.
#[derive(Debug, Default)]
pub(super) struct Room {
    pub(super) members: HashMap<SessionId, Member>,
    pub(super) joiners: HashMap<SessionId, Joiner>,
    /// The store confirmed the node's subscription: reads issued from now on are merged with
    /// what arrives.
    live: bool,
    /// The epoch and last seq fanned out; unknown until the first read answers.
    position: Option<(Arc<str>, u64)>,
    /// Publications waiting for the position, or for a fill.
    held: BTreeMap<u64, Held>,
    filling: bool,
    /// Acks waiting for their message to be fanned out: (seq, session, ack frame).
    acks: Vec<(u64, SessionId, Bytes)>,
    /// Tells this room from an earlier one of the same name, forgotten while a broker call
    /// it made was in flight: such a call's answer is not for this room.
    generation: u64,
}

impl Room {
    /// Nobody is in it or joining it: the node can stop receiving it.
    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty() && self.joiners.is_empty()
    }
}

impl Registry {
    /// Starts the join of a subscriber: subscribes the node to the room if this is its first
    /// local subscriber, then reads the room's history for it.
    pub(super) fn join(
        &mut self,
        ctx: &mut Context<Self>,
        room: RoomName,
        id: SessionId,
        joiner: Joiner,
    ) {
        let first = !self.rooms.contains_key(&room);
        if first {
            self.room_generations += 1;
        }
        let generation = self.room_generations;
        let state = self.rooms.entry(room.clone()).or_insert_with(|| Room {
            generation,
            ..Room::default()
        });
        state.joiners.insert(id, joiner);
        if first {
            let subscribe = self.broker.subscribe_room(&room);
            ctx.spawn(
                subscribe
                    .into_actor(self)
                    .map(move |result, act, ctx| match result {
                        _ if !act.room_is(&room, generation) => {}
                        Ok(()) => {
                            if let Some(state) = act.rooms.get_mut(&room) {
                                state.live = true;
                            }
                            act.read_for_joiners(ctx, &room);
                        }
                        Err(error) => act.room_unavailable(&room, &error),
                    }),
            );
        } else if state.live {
            self.read_for_joiners(ctx, &room);
        }
    }

    /// Issues the history read of every joiner of a live room that has none in flight.
    fn read_for_joiners(&mut self, ctx: &mut Context<Self>, room: &RoomName) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        let mut reads = Vec::new();
        for (id, joiner) in &mut state.joiners {
            if !joiner.reading {
                joiner.reading = true;
                reads.push((*id, joiner.since, joiner.epoch.clone()));
            }
        }
        for (id, since, epoch) in reads {
            self.read_for(ctx, room.clone(), id, since, epoch);
        }
    }

    fn read_for(
        &mut self,
        ctx: &mut Context<Self>,
        room: RoomName,
        id: SessionId,
        since: Option<u64>,
        epoch: Option<String>,
    ) {
        let generation = self.rooms.get(&room).map(|r| r.generation);
        let read = self.broker.history(&room, since, epoch.as_deref());
        ctx.spawn(
            read.into_actor(self)
                .map(move |result, act, ctx| match result {
                    _ if generation.is_none_or(|g| !act.room_is(&room, g)) => {}
                    Ok(history) => act.joined(ctx, &room, id, history),
                    Err(error) => {
                        if let Some(joiner) = act.take_joiner(&room, id) {
                            act.join_failed(id, &room, joiner, &error);
                        }
                        act.forget_room_if_empty(&room);
                    }
                }),
        );
    }

    /// Whether `room` is still the one of `generation`.
    fn room_is(&self, room: &RoomName, generation: u64) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.generation == generation)
    }

    fn take_joiner(&mut self, room: &RoomName, id: SessionId) -> Option<Joiner> {
        self.rooms.get_mut(room)?.joiners.remove(&id)
    }

    /// A joiner's read answered: deliver it merged with what arrived meanwhile, and make the
    /// session a member.
    fn joined(
        &mut self,
        ctx: &mut Context<Self>,
        room: &RoomName,
        id: SessionId,
        history: History,
    ) {
        self.learn_position(ctx, room, &history);
        let Some(mut joiner) = self.take_joiner(room, id) else {
            return;
        };
        let Some(entry) = self.sessions.get(&id) else {
            return self.forget_room_if_empty(room);
        };
        let outbox = entry.outbox.clone();
        let user = entry.user.clone();
        let wanted_epoch_ok = joiner.epoch.as_deref().is_none_or(|e| e == &*history.epoch);
        let mut last = match joiner.since {
            Some(since) if wanted_epoch_ok && since <= history.top => since,
            _ => history.top,
        };
        // A session whose stream already goes on (a rejoin, or a joiner told `subscribed`
        // before a second read) cannot take a hole: it resyncs.
        let continuing = joiner.rejoin.is_some() || joiner.announced;
        if continuing && (!history.complete || joiner.overflowed) {
            return self.resync_one(room, id, &outbox);
        }
        for (seq, frame) in &history.entries {
            if *seq > last {
                outbox.push(frame.clone());
                last = *seq;
            }
        }
        last = last.max(history.top);
        if joiner.rejoin.is_none() && !joiner.announced {
            // `subscribed` goes right after the replay, before what arrived meanwhile: a client
            // reads everything before it as the epoch it asked for, so a message of another
            // epoch must not precede it.
            let recovered = joiner.since.map(|_| history.complete && wanted_epoch_ok);
            outbox.push(
                Outbound::Subscribed {
                    room,
                    seq: last,
                    epoch: &history.epoch,
                    recovered,
                }
                .encode(),
            );
            joiner.announced = true;
        }
        // What arrived while the read was in flight, after what the read covered.
        let mut gap = false;
        for (seq, held) in std::mem::take(&mut joiner.buffer) {
            if held.epoch != history.epoch || seq <= last {
                continue;
            }
            if seq != last + 1 {
                gap = true;
                joiner.buffer.insert(seq, held);
                continue;
            }
            if gap {
                joiner.buffer.insert(seq, held);
                continue;
            }
            outbox.push(held.frame);
            last = seq;
        }
        if joiner.overflowed {
            return self.resync_one(room, id, &outbox);
        }
        if gap {
            // Something arrived out of reach of this read: read again from here.
            joiner.since = Some(last);
            joiner.epoch = Some(history.epoch.to_string());
            if let Some(state) = self.rooms.get_mut(room) {
                state.joiners.insert(id, joiner);
            }
            return self.read_for(
                ctx,
                room.clone(),
                id,
                Some(last),
                Some(history.epoch.to_string()),
            );
        }
        let cursor = match joiner.rejoin.take() {
            Some(cursor) => {
                cursor.advance(last);
                cursor
            }
            None => RoomCursor::new(history.epoch.clone(), last),
        };
        self.become_member(room, id, outbox, user, cursor.clone());
        if let Some(reply) = joiner.reply.take() {
            let _ = reply.send(Some(cursor));
        }
    }

    fn become_member(
        &mut self,
        room: &RoomName,
        id: SessionId,
        outbox: Arc<crate::outbox::Outbox>,
        user: Option<UserName>,
        cursor: Arc<RoomCursor>,
    ) {
        if let Some(entry) = self.sessions.get_mut(&id) {
            entry.rooms.insert(room.clone());
        }
        if let Some(user) = &user {
            let member = self.member_key(id);
            self.spawn_broker_call(
                self.broker.presence_add(room, user, &member),
                "presence add",
            );
        }
        if let Some(state) = self.rooms.get_mut(room) {
            state.members.insert(
                id,
                Member {
                    outbox,
                    cursor,
                    user,
                },
            );
        }
    }

    /// The first read of a room sets the node's position in it; what was held waiting for it
    /// is fanned out.
    fn learn_position(&mut self, ctx: &mut Context<Self>, room: &RoomName, history: &History) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        match &state.position {
            None => {
                state.position = Some((history.epoch.clone(), history.top));
                self.release_held(ctx, room);
            }
            Some((epoch, _)) if *epoch != history.epoch => {
                tracing::warn!(%room, "room's epoch changed under its subscribers");
                self.resync_room(room);
            }
            Some(_) => {}
        }
    }

    /// A publication arrived from the store.
    pub(super) fn on_publication(
        &mut self,
        ctx: &mut Context<Self>,
        room: &RoomName,
        seq: u64,
        epoch: Arc<str>,
        frame: Bytes,
    ) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        let held = Held { epoch, frame };
        for joiner in state.joiners.values_mut().filter(|j| j.reading) {
            if joiner.buffer.len() < MAX_HELD {
                joiner.buffer.insert(seq, held.clone());
            } else {
                joiner.overflowed = true;
            }
        }
        if state.position.is_none() || state.filling {
            return self.hold(room, seq, held);
        }
        self.hold(room, seq, held);
        self.release_held(ctx, room);
    }

    fn hold(&mut self, room: &RoomName, seq: u64, held: Held) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        if state.held.len() >= MAX_HELD {
            tracing::warn!(%room, "too much held for a room; its subscribers resync");
            return self.resync_room(room);
        }
        state.held.insert(seq, held);
    }

    /// Fans out what is held, in order, as far as it follows the position; a hole starts a
    /// fill.
    fn release_held(&mut self, ctx: &mut Context<Self>, room: &RoomName) {
        loop {
            let Some(state) = self.rooms.get_mut(room) else {
                return;
            };
            let Some((epoch, top)) = state.position.clone() else {
                return;
            };
            let Some(entry) = state.held.first_entry() else {
                return;
            };
            let seq = *entry.key();
            if entry.get().epoch != epoch {
                tracing::warn!(%room, "a publication of another epoch: the room's stream restarted");
                return self.resync_room(room);
            }
            if seq <= top {
                entry.remove();
                continue;
            }
            if seq != top + 1 {
                return self.fill(ctx, room, epoch, top);
            }
            let held = entry.remove();
            self.fan_out(room, &held.frame, seq);
        }
    }

    /// Reads the hole after `top` from history; what it cannot give back is a resync.
    fn fill(&mut self, ctx: &mut Context<Self>, room: &RoomName, epoch: Arc<str>, top: u64) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        if state.filling {
            return;
        }
        state.filling = true;
        let generation = state.generation;
        self.metrics.room_filled();
        let room = room.clone();
        let read = self.broker.history(&room, Some(top), Some(&epoch));
        ctx.spawn(read.into_actor(self).map(move |result, act, ctx| {
            let Some(state) = act.rooms.get_mut(&room).filter(|r| r.generation == generation)
            else {
                return;
            };
            state.filling = false;
            match result {
                Ok(history) if history.complete && history.epoch == epoch => {
                    for (seq, frame) in history.entries {
                        act.fan_out(&room, &frame, seq);
                    }
                    act.release_held(ctx, &room);
                }
                Ok(history) if history.epoch == epoch && history.top < top => {
                    act.stream_went_back(ctx, &room, &epoch, top, history.top);
                }
                Ok(_) => {
                    tracing::warn!(%room, "history does not reach back to the hole; subscribers resync");
                    act.resync_room(&room);
                }
                Err(error) => {
                    tracing::warn!(%room, %error, "cannot read the hole from history; subscribers resync");
                    act.resync_room(&room);
                }
            }
        }));
    }

    /// The store's stream of the room is behind what this node fanned out, in the same epoch:
    /// the store lost writes (it restarted from an older snapshot). Its seqs would be reused
    /// for other messages, which subscribers would drop as already seen; so the room's stream
    /// is restarted under a new epoch, and its subscribers resync into it and learn of the loss.
    fn stream_went_back(
        &mut self,
        ctx: &mut Context<Self>,
        room: &RoomName,
        epoch: &str,
        seen: u64,
        top: u64,
    ) {
        tracing::error!(%room, epoch, seen, top,
            "the store's stream went back (it lost writes); the room restarts under a new epoch");
        let room = room.clone();
        let restart = self.broker.restart_room(&room, epoch, seen);
        ctx.spawn(restart.into_actor(self).map(move |result, act, _| {
            if let Err(error) = result {
                tracing::warn!(%room, %error, "cannot restart the room's stream");
            }
            act.resync_room(&room);
        }));
    }

    /// Checks every room for a hole, after the inbound path was interrupted.
    pub(super) fn check_all_rooms(&mut self, ctx: &mut Context<Self>) {
        let rooms: Vec<(RoomName, Arc<str>, u64)> = self
            .rooms
            .iter()
            .filter_map(|(room, s)| s.position.clone().map(|(e, top)| (room.clone(), e, top)))
            .collect();
        for (room, epoch, top) in rooms {
            self.fill(ctx, &room, epoch, top);
        }
        let joining: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, s)| !s.live)
            .map(|(room, _)| room.clone())
            .collect();
        for room in joining {
            // A subscription that was not confirmed before the break is in place now.
            if let Some(state) = self.rooms.get_mut(&room) {
                state.live = true;
            }
            self.read_for_joiners(ctx, &room);
        }
    }

    /// Queues a room message on every member that does not have it yet, advances the room's
    /// position and the members' cursors, and releases the acks it was waiting for.
    pub(super) fn fan_out(&mut self, room: &RoomName, frame: &Bytes, seq: u64) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        for member in state.members.values() {
            if member.cursor.seq() < seq && member.outbox.push(frame.clone()) {
                member.cursor.advance(seq);
            }
        }
        if let Some((_, top)) = &mut state.position {
            *top = (*top).max(seq);
        }
        if state.acks.iter().any(|(s, _, _)| *s <= seq) {
            let (due, waiting): (Vec<_>, Vec<_>) =
                state.acks.drain(..).partition(|(s, _, _)| *s <= seq);
            state.acks = waiting;
            for (_, session, ack) in due {
                self.push_to(session, ack);
            }
        }
    }

    /// Queues a publisher's ack: at once, or after its message when this node will fan it out.
    pub(super) fn ack_after(
        &mut self,
        room: &RoomName,
        seq: u64,
        epoch: &str,
        session: SessionId,
        ack: Bytes,
    ) {
        if let Some(state) = self.rooms.get_mut(room) {
            let pending = match &state.position {
                Some((e, top)) => &**e == epoch && *top < seq,
                None => true,
            };
            if pending && state.members.contains_key(&session) && state.acks.len() < MAX_HELD {
                state.acks.push((seq, session, ack));
                return;
            }
        }
        self.push_to(session, ack);
    }

    /// The room's stream cannot go on without a hole: every member and joiner is told to
    /// subscribe again (`unsubscribed{reason:"resync"}`), and the node starts afresh.
    pub(super) fn resync_room(&mut self, room: &RoomName) {
        let Some(state) = self.rooms.remove(room) else {
            return;
        };
        self.metrics.room_resynced();
        self.broker.unsubscribe_room(room);
        for (_, session, ack) in state.acks {
            self.push_to(session, ack);
        }
        for (id, member) in state.members {
            self.dropped(room, id, &member.outbox, member.user.as_ref());
        }
        for (id, mut joiner) in state.joiners {
            if let Some(outbox) = self.sessions.get(&id).map(|e| e.outbox.clone()) {
                Self::push_resync(room, &outbox);
            }
            if let Some(reply) = joiner.reply.take() {
                let _ = reply.send(None);
            }
        }
    }

    /// One subscriber cannot be given the room's stream without a hole.
    fn resync_one(&mut self, room: &RoomName, id: SessionId, outbox: &Arc<crate::outbox::Outbox>) {
        Self::push_resync(room, outbox);
        if let Some(addr) = self.sessions.get(&id).and_then(|e| e.addr.upgrade()) {
            addr.do_send(super::RoomDropped(room.clone()));
        }
        self.forget_room_if_empty(room);
    }

    fn dropped(
        &mut self,
        room: &RoomName,
        id: SessionId,
        outbox: &Arc<crate::outbox::Outbox>,
        user: Option<&UserName>,
    ) {
        Self::push_resync(room, outbox);
        if let Some(entry) = self.sessions.get_mut(&id) {
            entry.rooms.remove(room);
            // One per room the session was in: bounded by max_rooms_per_session.
            if let Some(addr) = entry.addr.upgrade() {
                addr.do_send(super::RoomDropped(room.clone()));
            }
        }
        if let Some(user) = user {
            let member = self.member_key(id);
            self.spawn_broker_call(
                self.broker.presence_remove(room, user, &member),
                "presence remove",
            );
        }
    }

    fn push_resync(room: &RoomName, outbox: &Arc<crate::outbox::Outbox>) {
        let frame = Outbound::Unsubscribed {
            room,
            reason: Some("resync"),
        };
        outbox.push(frame.encode());
    }

    /// The store could not subscribe the node to the room: its joiners get `unavailable`.
    fn room_unavailable(&mut self, room: &RoomName, error: &BrokerError) {
        let Some(state) = self.rooms.remove(room) else {
            return;
        };
        for (id, joiner) in state.joiners {
            self.join_failed(id, room, joiner, error);
        }
        for (id, member) in state.members {
            self.dropped(room, id, &member.outbox, member.user.as_ref());
        }
    }

    fn join_failed(
        &mut self,
        id: SessionId,
        room: &RoomName,
        mut joiner: Joiner,
        error: &BrokerError,
    ) {
        tracing::warn!(session = %id, %room, %error, "subscribe failed");
        if joiner.rejoin.is_some() {
            if let Some(outbox) = self.sessions.get(&id).map(|e| e.outbox.clone()) {
                self.resync_one(room, id, &outbox);
            }
        } else {
            self.broker_failed(id, error, None);
        }
        if let Some(reply) = joiner.reply.take() {
            let _ = reply.send(None);
        }
    }

    /// A member left (unsubscribe or close).
    pub(super) fn leave_room(&mut self, room: &RoomName, id: SessionId) {
        let Some(state) = self.rooms.get_mut(room) else {
            return;
        };
        let member = state.members.remove(&id);
        state.joiners.remove(&id);
        if let Some(user) = member.and_then(|m| m.user) {
            let key = self.member_key(id);
            self.spawn_broker_call(
                self.broker.presence_remove(room, &user, &key),
                "presence remove",
            );
        }
        self.forget_room_if_empty(room);
    }

    pub(super) fn forget_room_if_empty(&mut self, room: &RoomName) {
        if self.rooms.get(room).is_some_and(Room::is_empty) {
            if let Some(state) = self.rooms.remove(room) {
                for (_, session, ack) in state.acks {
                    self.push_to(session, ack);
                }
            }
            self.broker.unsubscribe_room(room);
        }
    }

    pub(super) fn broker_failed(&self, session: SessionId, error: &BrokerError, id: Option<&str>) {
        let (code, text) = match error {
            BrokerError::Unavailable(_) => (
                ErrorCode::Unavailable,
                "the message store is unavailable; nothing was done, resend later",
            ),
            BrokerError::Failed(_) => (ErrorCode::Internal, "the message store failed"),
        };
        tracing::warn!(%session, %error, "broker call failed");
        self.push_error(session, code, text, id);
    }
}
