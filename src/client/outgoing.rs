//! Frames waiting for an answer: the bounded queue behind "nothing lost" and request/response.
//!
//! Every `publish`, `send` and request carries an `id` and stays here until the server answers
//! with a frame carrying that id (`ack`, `error`, or an application frame), across reconnects.
//! The queue is bounded by count ([`Outgoing::capacity`]): a call that would exceed it fails
//! at once with [`ClientError::QueueFull`] rather than dropping anything silently.
//!
//! Only the first [`Outgoing::window`] entries are on the wire at a time; the rest wait for
//! acks. That bounds what the socket's outbound buffer can hold (window × max frame), so a
//! reconnect with a thousand queued publishes does not overflow it.
//!
//! After a reconnect the fate of an entry depends on its kind:
//! - publishes are resent (the server dedupes by user, room and id, so each is delivered
//!   exactly once, within the server's history window);
//! - direct sends and requests that had been written are failed with
//!   [`ClientError::ConnectionLost`]: the server does not dedupe them, so resending could
//!   deliver twice. Those never written are sent on the new connection.
//!
//! A request whose caller stopped waiting (timed out) is dropped instead of being sent late.
//!
//! A publish the server answers with `error{code:"unavailable"}` (its message store could not
//! be reached; nothing was sequenced) is not failed either: it goes to the back of the queue
//! and is written again after a delay ([`Outgoing::defer`]), with the same id, so that it is
//! sequenced once when the store is back. Everything queued behind it waits with it, which
//! keeps a client's publishes in order.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::error::ClientError;
use super::frames::{Ack, ErrorFrame};

/// The answer a pending frame resolves with.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The answering frame's `type` (`ack` for publishes and sends).
    pub kind: String,
    /// The whole answering frame.
    pub frame: serde_json::Value,
}

impl Reply {
    /// `ack.seq`: the room seq a publish got.
    pub fn seq(&self) -> Option<u64> {
        self.frame.get("seq").and_then(serde_json::Value::as_u64)
    }

    /// `ack.delivered`: how many sessions a send reached.
    pub fn delivered(&self) -> Option<u64> {
        self.frame
            .get("delivered")
            .and_then(serde_json::Value::as_u64)
    }
}

/// What the caller gets.
pub type ReplySender = oneshot::Sender<Result<Reply, ClientError>>;

/// The kind of a pending frame, which decides what happens to it on reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `publish`: resent until acknowledged.
    Publish,
    /// `send`: sent once.
    Send,
    /// Any frame sent with [`request`](super::ClientHandle::request): sent once; dropped when
    /// its caller gave up.
    Request,
}

#[derive(Debug)]
struct Entry {
    id: String,
    kind: Kind,
    line: Bytes,
    reply: Option<ReplySender>,
    /// Not to be written before this (a publish the server could not take yet).
    not_before: Option<Instant>,
}

/// The queue of frames waiting for an answer.
#[derive(Debug)]
pub struct Outgoing {
    entries: BTreeMap<u64, Entry>,
    by_id: HashMap<String, u64>,
    next_key: u64,
    /// Entries with keys below this were written on the current connection.
    cursor: u64,
    in_flight: usize,
    capacity: usize,
    window: usize,
}

impl Outgoing {
    /// A queue of at most `capacity` entries, `window` of them on the wire at a time.
    pub fn new(capacity: usize, window: usize) -> Self {
        Outgoing {
            entries: BTreeMap::new(),
            by_id: HashMap::new(),
            next_key: 0,
            cursor: 0,
            in_flight: 0,
            capacity: capacity.max(1),
            window: window.max(1),
        }
    }

    /// Entries waiting (queued or on the wire).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries written on this connection and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues an encoded frame with `id`.
    pub fn push(
        &mut self,
        id: String,
        kind: Kind,
        line: Bytes,
        reply: Option<ReplySender>,
    ) -> Result<(), ClientError> {
        if self.by_id.contains_key(&id) {
            return Err(ClientError::DuplicateId(id));
        }
        if self.entries.len() >= self.capacity {
            self.prune_abandoned();
            if self.entries.len() >= self.capacity {
                return Err(ClientError::QueueFull {
                    capacity: self.capacity,
                });
            }
        }
        let key = self.next_key;
        self.next_key += 1;
        self.by_id.insert(id.clone(), key);
        self.entries.insert(
            key,
            Entry {
                id,
                kind,
                line,
                reply,
                not_before: None,
            },
        );
        Ok(())
    }

    /// The publish with `id` could not be taken by the server now: it goes to the back of the
    /// queue, to be written again at `until` (nothing behind it is written earlier). Returns
    /// `false` when no publish with that id is waiting.
    pub fn defer(&mut self, id: &str, until: Instant) -> bool {
        let Some(key) = self.by_id.get(id).copied() else {
            return false;
        };
        if self
            .entries
            .get(&key)
            .is_none_or(|e| e.kind != Kind::Publish)
        {
            return false;
        }
        let Some(mut entry) = self.remove(key) else {
            return false;
        };
        entry.not_before = Some(until);
        let key = self.next_key;
        self.next_key += 1;
        self.by_id.insert(entry.id.clone(), key);
        self.entries.insert(key, entry);
        true
    }

    /// Removes requests whose caller gave up (timed out or dropped the future).
    fn prune_abandoned(&mut self) {
        let dead: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.kind == Kind::Request && e.reply.as_ref().is_none_or(|r| r.is_closed())
            })
            .map(|(k, _)| *k)
            .collect();
        for key in dead {
            self.remove(key);
        }
    }

    fn remove(&mut self, key: u64) -> Option<Entry> {
        let entry = self.entries.remove(&key)?;
        self.by_id.remove(&entry.id);
        if key < self.cursor {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        Some(entry)
    }

    /// The frames to write now, in order, within the window; `write` returns `false` when the
    /// connection refuses more (it is closing), which stops the pump.
    pub fn pump(&mut self, mut write: impl FnMut(&Bytes) -> bool) {
        let mut abandoned = Vec::new();
        let mut next = self.cursor;
        let now = Instant::now();
        for (key, entry) in self.entries.range(self.cursor..) {
            if self.in_flight >= self.window || entry.not_before.is_some_and(|at| at > now) {
                break;
            }
            if entry.kind == Kind::Request && entry.reply.as_ref().is_none_or(|r| r.is_closed()) {
                abandoned.push(*key);
                next = key + 1;
                continue;
            }
            if !write(&entry.line) {
                break;
            }
            self.in_flight += 1;
            next = key + 1;
        }
        // Abandoned entries were never written: remove them while they are still above the
        // cursor, so they do not count as in flight.
        for key in abandoned {
            self.remove(key);
        }
        // Everything below `next` is written or gone.
        self.cursor = next.max(self.cursor);
    }

    /// An answer arrived; resolves the entry with `id`. Returns `false` if none was waiting.
    pub fn resolve(&mut self, id: &str, result: Result<Reply, ClientError>) -> bool {
        let Some(key) = self.by_id.get(id).copied() else {
            return false;
        };
        if let Some(entry) = self.remove(key) {
            if let Some(reply) = entry.reply {
                let _ = reply.send(result);
            }
        }
        true
    }

    /// Resolves an `ack`.
    pub fn ack(&mut self, ack: &Ack, frame: serde_json::Value) -> bool {
        self.resolve(
            &ack.id,
            Ok(Reply {
                kind: "ack".into(),
                frame,
            }),
        )
    }

    /// Resolves an `error` that carries an id.
    pub fn error(&mut self, error: &ErrorFrame) -> bool {
        match &error.id {
            Some(id) => self.resolve(
                id,
                Err(ClientError::Server {
                    code: error.code.clone(),
                    message: error.message.clone(),
                }),
            ),
            None => false,
        }
    }

    /// The connection ended: written sends and requests fail (their outcome is unknown),
    /// everything else will be written again on the next connection.
    pub fn connection_lost(&mut self) {
        let written: Vec<u64> = self
            .entries
            .range(..self.cursor)
            .filter(|(_, e)| e.kind != Kind::Publish)
            .map(|(k, _)| *k)
            .collect();
        for key in written {
            if let Some(entry) = self.remove(key) {
                if let Some(reply) = entry.reply {
                    let _ = reply.send(Err(ClientError::ConnectionLost));
                }
            }
        }
        // A new connection starts afresh: a deferral's timer belonged to this one.
        for entry in self.entries.values_mut() {
            entry.not_before = None;
        }
        self.cursor = 0;
        self.in_flight = 0;
    }

    /// Fails everything (the client is closing).
    pub fn fail_all(&mut self, error: &ClientError) {
        for (_, entry) in std::mem::take(&mut self.entries) {
            if let Some(reply) = entry.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
        self.by_id.clear();
        self.cursor = 0;
        self.in_flight = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Bytes {
        Bytes::from(format!("{s}\n"))
    }

    fn written(out: &mut Outgoing) -> Vec<String> {
        let mut w = Vec::new();
        out.pump(|b| {
            w.push(String::from_utf8_lossy(&b[..b.len() - 1]).into_owned());
            true
        });
        w
    }

    fn ack(id: &str) -> Ack {
        Ack { id: id.into() }
    }

    #[test]
    fn bounded_with_a_clear_error_and_window_limits_the_wire() {
        let mut out = Outgoing::new(3, 2);
        for id in ["a", "b", "c"] {
            out.push(id.into(), Kind::Publish, line(id), None).unwrap();
        }
        assert_eq!(
            out.push("d".into(), Kind::Publish, line("d"), None),
            Err(ClientError::QueueFull { capacity: 3 })
        );
        assert_eq!(written(&mut out), ["a", "b"]);
        assert_eq!(written(&mut out), Vec::<String>::new());
        assert!(out.ack(&ack("a"), serde_json::Value::Null));
        assert_eq!(written(&mut out), ["c"]);
        assert_eq!(out.in_flight(), 2);
    }

    #[test]
    fn reconnect_resends_publishes_and_fails_written_sends() {
        let mut out = Outgoing::new(10, 10);
        let (tx, mut rx) = oneshot::channel();
        out.push("p1".into(), Kind::Publish, line("p1"), None)
            .unwrap();
        out.push("s1".into(), Kind::Send, line("s1"), Some(tx))
            .unwrap();
        assert_eq!(written(&mut out), ["p1", "s1"]);
        out.push("p2".into(), Kind::Publish, line("p2"), None)
            .unwrap();
        out.connection_lost();
        assert_eq!(rx.try_recv().unwrap(), Err(ClientError::ConnectionLost));
        assert_eq!(written(&mut out), ["p1", "p2"]);
        assert!(out
            .push("p1".into(), Kind::Publish, line("x"), None)
            .is_err());
    }

    #[test]
    fn a_publish_the_server_could_not_take_waits_and_keeps_its_place_in_line() {
        let mut out = Outgoing::new(10, 10);
        out.push("p1".into(), Kind::Publish, line("p1"), None)
            .unwrap();
        out.push("s1".into(), Kind::Send, line("s1"), None).unwrap();
        assert_eq!(written(&mut out), ["p1", "s1"]);
        let later = Instant::now() + std::time::Duration::from_millis(50);
        assert!(out.defer("p1", later));
        assert!(!out.defer("s1", later), "only publishes are deduped");
        out.push("p2".into(), Kind::Publish, line("p2"), None)
            .unwrap();
        assert_eq!(
            written(&mut out),
            Vec::<String>::new(),
            "p2 waits behind p1"
        );
        assert_eq!(out.in_flight(), 1);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(written(&mut out), ["p1", "p2"]);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn abandoned_requests_are_not_sent_late() {
        let mut out = Outgoing::new(2, 10);
        let (tx, rx) = oneshot::channel();
        out.push("q".into(), Kind::Request, line("q"), Some(tx))
            .unwrap();
        drop(rx);
        out.push("p".into(), Kind::Publish, line("p"), None)
            .unwrap();
        // full, but the abandoned request makes room
        out.push("p2".into(), Kind::Publish, line("p2"), None)
            .unwrap();
        assert_eq!(written(&mut out), ["p", "p2"]);
    }

    #[test]
    fn errors_with_ids_resolve_their_entry() {
        let mut out = Outgoing::new(2, 2);
        let (tx, mut rx) = oneshot::channel();
        out.push("x".into(), Kind::Request, line("x"), Some(tx))
            .unwrap();
        written(&mut out);
        assert!(out.error(&ErrorFrame {
            code: "unknown_type".into(),
            message: "no".into(),
            id: Some("x".into()),
        }));
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(ClientError::Server { ref code, .. }) if code == "unknown_type"
        ));
        assert_eq!(out.len(), 0);
        assert_eq!(out.in_flight(), 0);
    }
}
