//! Application hooks: a connect hook that looks users up, and a moderated room.
//!
//! * **Connect** ([`connect`]): the client's `hello.token` is looked up in a user directory
//!   (a stand-in for the application's database, answered asynchronously). Unknown tokens are
//!   refused (`error{code:"unauthorized"}`, `bye{reason:"unauthorized"}`); known ones become
//!   the session's user, with their [`Profile`] attached as meta (frame handlers read it:
//!   see [`whoami`]) and the rooms their role may use.
//! * **Publish** ([`Moderator`]): an actor, installed as an actix `Recipient` of
//!   [`PublishRequest`], moderates rooms whose name starts with `mod:`. A message with a banned
//!   word is refused (`error{code:"forbidden"}` with the publish's `id`); mild words are masked
//!   and the author's display name is added, so subscribers receive the rewritten `data`.
//!
//! Run it with `cargo run --example hooks` and try it with `nc 127.0.0.1 7702`:
//!
//! ```text
//! {"type":"hello","token":"t-alice"}
//!   → {"type":"welcome",…,"user":"alice",…}
//! {"type":"whoami","id":"1"}
//!   → {"type":"whoami","id":"1","user":"alice","display":"Alice Liddell","role":"member"}
//! {"type":"subscribe","room":"mod:lobby"}
//! {"type":"publish","room":"mod:lobby","data":{"text":"darn printers"},"id":"m1"}
//!   → {"type":"message","room":"mod:lobby","seq":1,"from":"alice",
//!      "data":{"text":"d**n printers","by":"Alice Liddell"},"id":"m1"}
//! {"type":"publish","room":"mod:lobby","data":{"text":"cheap spam here"},"id":"m2"}
//!   → {"type":"error","code":"forbidden","message":"refused: banned word `spam`","id":"m2"}
//! {"type":"subscribe","room":"staff"}
//!   → {"type":"error","code":"forbidden",…}      (alice is a member, not staff)
//! ```
//!
//! A token the directory does not know (`{"type":"hello","token":"nope"}`) is refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use heartwire::hooks::{
    ConnectAccept, ConnectDecision, ConnectRequest, HookError, MessageDecision, PublishRequest,
    Rejection,
};
use heartwire::{AppFrame, Config, ErrorCode, ServerBuilder, Session, UserName};
use serde::Deserialize;
use serde_json::json;

/// What the application knows about a user; attached to the session by the connect hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The user name the session gets.
    pub user: String,
    /// Shown next to their messages.
    pub display: String,
    /// `member` or `staff`.
    pub role: String,
}

/// Tokens to profiles: the application's user database, here in memory.
#[derive(Debug, Clone, Default)]
pub struct Directory(Arc<HashMap<String, Profile>>);

impl Directory {
    /// A directory with a member (`t-alice`) and a staff user (`t-sam`).
    pub fn sample() -> Self {
        let profile = |user: &str, display: &str, role: &str| Profile {
            user: user.into(),
            display: display.into(),
            role: role.into(),
        };
        Directory(Arc::new(HashMap::from([
            (
                "t-alice".to_owned(),
                profile("alice", "Alice Liddell", "member"),
            ),
            ("t-sam".to_owned(), profile("sam", "Sam Staff", "staff")),
        ])))
    }

    /// Looks a token up, as a database query would: asynchronously.
    pub async fn lookup(&self, token: &str) -> Option<Profile> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.0.get(token).cloned()
    }
}

/// The connect hook: `hello.token` must be in the directory; the session gets the profile's
/// user, the profile as meta, and the rooms of its role.
pub async fn connect(directory: Directory, hello: ConnectRequest) -> ConnectDecision {
    let Some(token) = hello.token.as_deref() else {
        return ConnectDecision::reject("a token is required");
    };
    let Some(profile) = directory.lookup(token).await else {
        return ConnectDecision::reject("unknown token");
    };
    let Ok(user) = UserName::new(&profile.user) else {
        return ConnectDecision::reject("this account has an unusable name");
    };
    let rooms = match profile.role.as_str() {
        "staff" => vec!["*"],
        _ => vec!["mod:*", "lobby"],
    };
    ConnectDecision::Accept(
        ConnectAccept::default()
            .user(user)
            .rooms(rooms)
            .meta(profile),
    )
}

/// `{"type":"whoami","id":"1"}` → the profile the connect hook attached.
pub fn whoami(session: &mut Session, _ctx: &mut Context<Session>, frame: AppFrame) {
    let Some(profile) = session.meta().get::<Profile>() else {
        session.send_error(ErrorCode::Internal, "no profile", frame.id.as_deref());
        return;
    };
    let mut reply = json!({
        "type": "whoami",
        "user": profile.user,
        "display": profile.display,
        "role": profile.role,
    });
    if let Some(id) = frame.id {
        reply["id"] = id.into();
    }
    session.send_frame(&reply);
}

/// Moderates rooms named `mod:*`: refuses banned words, masks mild ones, signs messages.
#[derive(Debug)]
pub struct Moderator {
    banned: Vec<&'static str>,
    masked: Vec<(&'static str, &'static str)>,
    refused: u64,
}

impl Default for Moderator {
    fn default() -> Self {
        Moderator {
            banned: vec!["spam", "scam"],
            masked: vec![("darn", "d**n"), ("heck", "h**k")],
            refused: 0,
        }
    }
}

impl Actor for Moderator {
    type Context = Context<Self>;
}

/// The payload moderated rooms expect.
#[derive(Deserialize)]
struct Text {
    text: String,
}

impl Handler<PublishRequest> for Moderator {
    type Result = Result<MessageDecision, HookError>;

    fn handle(&mut self, publish: PublishRequest, _: &mut Context<Self>) -> Self::Result {
        if !publish.room.starts_with("mod:") {
            return Ok(MessageDecision::Accept);
        }
        let Ok(Text { text }) = serde_json::from_str(publish.data.get()) else {
            return Ok(MessageDecision::Reject(Rejection::new(
                ErrorCode::BadRequest,
                "moderated rooms take {\"text\": string}",
            )));
        };
        let lower = text.to_lowercase();
        if let Some(word) = self.banned.iter().find(|w| lower.contains(*w)) {
            self.refused += 1;
            return Ok(MessageDecision::Reject(Rejection::forbidden(format!(
                "refused: banned word `{word}`"
            ))));
        }
        let masked = self
            .masked
            .iter()
            .fold(text, |text, (word, mask)| text.replace(word, mask));
        let by = match publish.caller.meta.get::<Profile>() {
            Some(profile) => profile.display.clone(),
            None => publish.caller.user.to_string(),
        };
        MessageDecision::replace(&json!({"text": masked, "by": by}))
            .map_err(|e| HookError::new(e.to_string()))
    }
}

/// How many messages the moderator refused.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Refused;

impl Handler<Refused> for Moderator {
    type Result = u64;

    fn handle(&mut self, _: Refused, _: &mut Context<Self>) -> u64 {
        self.refused
    }
}

/// Installs this example's hooks and its `whoami` frame on a server builder.
pub fn with_hooks(
    builder: ServerBuilder,
    directory: Directory,
    moderator: Addr<Moderator>,
) -> ServerBuilder {
    builder
        .on_connect(move |hello| connect(directory.clone(), hello))
        .hook(moderator.recipient::<PublishRequest>())
        .frame_handler("whoami", whoami)
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        listen: "127.0.0.1:7702".parse()?,
        ..Config::default()
    };
    let moderator = Moderator::default().start();
    let server = with_hooks(ServerBuilder::new(config), Directory::sample(), moderator).start()?;
    println!(
        "listening on {}; hello with token t-alice or t-sam",
        server.local_addr()
    );
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
