//! The extension point: application handlers for frame types the protocol does not define.
//!
//! A frame whose `type` is not part of protocol v1 is looked up in [`Handlers`]; with no
//! handler the client gets `error{code:"unknown_type"}`. A handler runs inside the session
//! actor with full access to it (reply with [`Session::send_frame`], reach the registry with
//! [`Session::registry`], spawn futures on `ctx`). For new *actor* messages, implement
//! `actix::Handler<YourMessage>` for [`Session`] or [`Registry`](crate::Registry) in your own
//! crate: the orphan rule allows it because the message type is yours.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use actix::Context;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::session::Session;

/// An application frame: its `type`, its `id` (when a string) and the raw line.
#[derive(Debug, Clone)]
pub struct AppFrame {
    /// The frame's `type`.
    pub kind: String,
    /// The frame's `id`, when it has a string one.
    pub id: Option<String>,
    /// The whole line as received, without its newline.
    pub line: Bytes,
}

impl AppFrame {
    /// Decodes the line into the application's own frame struct.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.line)
    }
}

/// Handles one application frame type.
pub trait FrameHandler: Send + Sync + 'static {
    /// Called in the session actor for each frame of the registered type.
    fn handle(&self, session: &mut Session, ctx: &mut Context<Session>, frame: AppFrame);
}

impl<F> FrameHandler for F
where
    F: Fn(&mut Session, &mut Context<Session>, AppFrame) + Send + Sync + 'static,
{
    fn handle(&self, session: &mut Session, ctx: &mut Context<Session>, frame: AppFrame) {
        self(session, ctx, frame)
    }
}

/// Frame handlers by `type`, shared by every session.
#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn FrameHandler>>,
}

impl Handlers {
    /// Registers `handler` for frames of `kind`; replaces an earlier one.
    pub fn insert(&mut self, kind: impl Into<String>, handler: impl FrameHandler) {
        self.by_kind.insert(kind.into(), Arc::new(handler));
    }

    /// The handler for `kind`, if any.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn FrameHandler>> {
        self.by_kind.get(kind).cloned()
    }
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_kind.keys()).finish()
    }
}
