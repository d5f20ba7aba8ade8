//! Extending heartwire without forking it: a new actix message handled by the registry, one
//! handled by sessions, and a new frame type.
//!
//! - `{"type":"count","room":R,"id":..}` (a frame type protocol v1 does not define) is
//!   answered with `{"type":"count","room":R,"members":N,"id":..}`. Its handler runs in the
//!   session and asks the registry with [`RoomCount`], a message type of this program.
//! - [`NudgeUser`] (handled by the registry) asks every session of a user to send its client
//!   `{"type":"nudge","text":..}`; each session gets a [`Nudge`] (handled by the session).
//!
//! The orphan rule allows `impl Handler<RoomCount> for Registry` here because `RoomCount` is
//! this crate's type.

use actix::prelude::*;
use heartwire::protocol::ErrorCode;
use heartwire::{AppFrame, Config, Registry, ServerBuilder, ServerHandle, Session};
use serde::Deserialize;
use serde_json::json;

/// How many sessions are subscribed to a room.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct RoomCount(pub String);

impl Handler<RoomCount> for Registry {
    type Result = usize;

    fn handle(&mut self, msg: RoomCount, _: &mut Self::Context) -> usize {
        self.members_of(&msg.0).count()
    }
}

/// Tell a session's client something, as a `nudge` frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Nudge(pub String);

impl Handler<Nudge> for Session {
    type Result = ();

    fn handle(&mut self, msg: Nudge, _: &mut Self::Context) {
        self.send_frame(&json!({ "type": "nudge", "text": msg.0 }));
    }
}

/// Nudges every session of a user; answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct NudgeUser {
    /// The user.
    pub user: String,
    /// The text.
    pub text: String,
}

impl Handler<NudgeUser> for Registry {
    type Result = usize;

    fn handle(&mut self, msg: NudgeUser, _: &mut Self::Context) -> usize {
        let ids: Vec<_> = self.sessions_of(&msg.user).collect();
        ids.iter()
            .filter_map(|id| self.session_addr(*id))
            .map(|addr| addr.do_send(Nudge(msg.text.clone())))
            .count()
    }
}

#[derive(Deserialize)]
struct CountFrame {
    room: String,
}

/// The `count` frame handler: asks the registry, answers the client.
fn count(session: &mut Session, ctx: &mut Context<Session>, frame: AppFrame) {
    let room = match frame.parse::<CountFrame>() {
        Ok(f) => f.room,
        Err(e) => {
            let message = format!("count needs a `room`: {e}");
            session.send_error(ErrorCode::BadRequest, &message, frame.id.as_deref());
            return;
        }
    };
    let ask = session.registry().send(RoomCount(room.clone()));
    // `ctx.wait`: the answer keeps its place among this session's frames.
    ctx.wait(ask.into_actor(session).map(move |members, act, _| {
        let members = members.unwrap_or(0);
        act.send_frame(
            &json!({ "type": "count", "room": room, "members": members, "id": frame.id }),
        );
    }));
}

/// A server builder with the `count` frame registered. Used by `main` and by the tests.
pub fn builder(config: Config) -> ServerBuilder {
    ServerBuilder::new(config).frame_handler("count", count)
}

/// Nudges `user` from the application side.
pub async fn nudge(server: &ServerHandle, user: &str, text: &str) -> usize {
    let msg = NudgeUser {
        user: user.into(),
        text: text.into(),
    };
    server.registry().send(msg).await.unwrap_or(0)
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let config = Config {
        listen: "127.0.0.1:7700".parse()?,
        ..Config::default()
    };
    let server = builder(config).start()?;
    println!(
        "listening on {}; try {{\"type\":\"count\",\"room\":\"lobby\"}}",
        server.local_addr()
    );
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
