//! Extending heartwire with your own frames and actor messages.
//!
//! Three extension points, all in application code:
//!
//! * **A new frame type** routed to a function with [`ServerBuilder::frame_handler`]. The
//!   function runs inside the session actor: it answers with [`Session::send_frame`], checks
//!   room names like the server does ([`Session::allowed_room`]), reaches a room's members
//!   ([`Session::broadcast`], see [`typing`]) and can ask the registry without blocking the
//!   session (see [`online`]).
//! * **A new actor message for sessions**: [`Announce`] is defined here, so this crate may
//!   `impl Handler<Announce> for heartwire::Session` (the orphan rule allows it because the
//!   message type is local). The session turns it into an `announce` frame for its client.
//! * **New actor messages for the registry**: [`SessionsOf`] and [`CountUsers`], answered with
//!   the registry's public methods (`sessions_of`, `session_addr`).
//!
//! Run it with `cargo run --example custom_frame` and try it with two `nc 127.0.0.1 7701`
//! terminals, one saying hello as `alice`, the other as `bob`:
//!
//! ```text
//! {"type":"hello","user":"alice"}
//! {"type":"whoami","id":"1"}
//!   → {"type":"whoami","id":"1","user":"alice","session":"…"}
//! {"type":"online","users":["alice","bob","carol"],"id":"2"}
//!   → {"type":"online","id":"2","count":2}
//! {"type":"announce","to":"bob","text":"lunch?","id":"3"}
//!   → {"type":"announced","id":"3","sessions":1}   (and bob gets
//!     {"type":"announce","from":"alice","text":"lunch?"})
//! {"type":"subscribe","room":"lobby"}              (both)
//! {"type":"typing","room":"lobby"}
//!   → bob gets {"type":"typing","room":"lobby","user":"alice"}
//! ```

use actix::prelude::*;
use heartwire::protocol::encode_line;
use heartwire::{AppFrame, Config, ErrorCode, Registry, ServerBuilder, Session};
use serde::Deserialize;
use serde_json::{json, Value};

/// Registers this example's frame handlers on a server builder.
pub fn with_handlers(builder: ServerBuilder) -> ServerBuilder {
    builder
        .frame_handler("whoami", whoami)
        .frame_handler("online", online)
        .frame_handler("announce", announce)
        .frame_handler("typing", typing)
}

/// Adds the request's `id` to a reply, when the request had one.
fn with_id(mut reply: Value, id: Option<String>) -> Value {
    if let Some(id) = id {
        reply["id"] = Value::String(id);
    }
    reply
}

/// `{"type":"whoami","id":"1"}` → `{"type":"whoami","id":"1","user":…,"session":…}`.
///
/// Synchronous: everything it needs is in the session. (Frames other than `hello` and `ping`
/// reach handlers only after the handshake, so `user()` is set.)
pub fn whoami(session: &mut Session, _ctx: &mut Context<Session>, frame: AppFrame) {
    let reply = json!({
        "type": "whoami",
        "user": session.user(),
        "session": session.wire_id(),
    });
    session.send_frame(&with_id(reply, frame.id));
}

/// The body of an `online` frame.
#[derive(Deserialize)]
struct OnlineRequest {
    users: Vec<String>,
}

/// `{"type":"online","users":[…],"id":"2"}` → `{"type":"online","id":"2","count":N}`: how
/// many of those users are connected.
///
/// Asks the registry with an awaited `send`, spawned on the session's context so the session
/// keeps working meanwhile; the answer comes back into the actor (`act`).
pub fn online(session: &mut Session, ctx: &mut Context<Session>, frame: AppFrame) {
    let request: OnlineRequest = match frame.parse() {
        Ok(request) => request,
        Err(e) => {
            session.send_error(ErrorCode::BadRequest, &e.to_string(), frame.id.as_deref());
            return;
        }
    };
    let id = frame.id;
    let ask = session.registry().send(CountUsers(request.users));
    ctx.spawn(ask.into_actor(session).map(move |answer, act, _| {
        match answer {
            Ok(count) => act.send_frame(&with_id(json!({"type": "online", "count": count}), id)),
            Err(_) => act.send_error(ErrorCode::Internal, "registry unavailable", id.as_deref()),
        };
    }));
}

/// The body of a `typing` frame.
#[derive(Deserialize)]
struct Typing {
    room: String,
}

/// `{"type":"typing","room":"lobby"}`: the room's other members get
/// `{"type":"typing","room":"lobby","user":"alice"}`, unsequenced and not kept in history.
/// Only a member may say it is typing; names and the token's room claim are checked like
/// any room frame.
pub fn typing(session: &mut Session, ctx: &mut Context<Session>, frame: AppFrame) {
    let id = frame.id.as_deref();
    let Ok(Typing { room }) = frame.parse() else {
        session.send_error(ErrorCode::BadRequest, "typing needs a string `room`", id);
        return;
    };
    // Answers bad_request or forbidden itself when the name or the token's claim says no.
    let Some(room) = session.allowed_room(&room, id) else {
        return;
    };
    if !session.in_room(&room) {
        session.send_error(ErrorCode::Forbidden, "subscribe to the room first", id);
        return;
    }
    let event = json!({"type": "typing", "room": room, "user": session.user()});
    session.broadcast(ctx, &room, encode_line(&event));
}

/// The body of an `announce` frame.
#[derive(Deserialize)]
struct AnnounceRequest {
    to: String,
    text: String,
}

/// `{"type":"announce","to":"bob","text":"hi","id":"3"}`: every session of `bob` receives
/// [`Announce`] (and writes `{"type":"announce","from":"alice","text":"hi"}`); the sender gets
/// `{"type":"announced","id":"3","sessions":N}`.
pub fn announce(session: &mut Session, ctx: &mut Context<Session>, frame: AppFrame) {
    let request: AnnounceRequest = match frame.parse() {
        Ok(request) => request,
        Err(e) => {
            session.send_error(ErrorCode::BadRequest, &e.to_string(), frame.id.as_deref());
            return;
        }
    };
    let id = frame.id;
    let ask = session.registry().send(SessionsOf(request.to));
    ctx.spawn(ask.into_actor(session).map(move |answer, act, _| {
        let Ok(sessions) = answer else {
            act.send_error(ErrorCode::Internal, "registry unavailable", id.as_deref());
            return;
        };
        let message = Announce {
            from: act.user().map(ToString::to_string).unwrap_or_default(),
            text: request.text,
        };
        for addr in &sessions {
            // One message per recipient per request: bounded by what the sender sends.
            addr.do_send(message.clone());
        }
        let reply = json!({"type": "announced", "sessions": sessions.len()});
        act.send_frame(&with_id(reply, id));
    }));
}

/// An actor message for a session: tell your client that `from` says `text`.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct Announce {
    /// Who announces.
    pub from: String,
    /// What.
    pub text: String,
}

impl Handler<Announce> for Session {
    type Result = ();

    fn handle(&mut self, msg: Announce, _ctx: &mut Context<Self>) {
        // Goes through the session's bounded outbox like every other frame.
        self.send_frame(&json!({"type": "announce", "from": msg.from, "text": msg.text}));
    }
}

/// A registry query: the actor addresses of every live session of a user.
#[derive(Message)]
#[rtype(result = "Vec<Addr<Session>>")]
pub struct SessionsOf(pub String);

impl Handler<SessionsOf> for Registry {
    type Result = Vec<Addr<Session>>;

    fn handle(&mut self, msg: SessionsOf, _ctx: &mut Context<Self>) -> Self::Result {
        self.sessions_of(&msg.0)
            .filter_map(|id| self.session_addr(id))
            .collect()
    }
}

/// A registry query: how many of these users have at least one live session.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountUsers(pub Vec<String>);

impl Handler<CountUsers> for Registry {
    type Result = usize;

    fn handle(&mut self, msg: CountUsers, _ctx: &mut Context<Self>) -> usize {
        msg.0
            .iter()
            .filter(|user| self.sessions_of(user).next().is_some())
            .count()
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        listen: "127.0.0.1:7701".parse()?,
        ..Config::default()
    };
    let server = with_handlers(ServerBuilder::new(config)).start()?;
    println!("listening on {}", server.local_addr());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
