//! The `/api/*` endpoints: push (publish, send), disconnect, and the read-only views of rooms,
//! presence, connections and counts. Each handler is a thin layer over a
//! [`ServerHandle`](crate::ServerHandle) method, so the API and embedding applications share
//! one code path.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::ApiState;
use crate::server::ConnectionQuery;

/// Registers the endpoints under the `/api` scope.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/publish").route(web::post().to(publish)))
        .service(super::resource("/send").route(web::post().to(send)))
        .service(super::resource("/disconnect").route(web::post().to(disconnect)))
        .service(super::resource("/rooms").route(web::get().to(rooms)))
        .service(super::resource("/rooms/{room}").route(web::get().to(room)))
        .service(super::resource("/rooms/{room}/presence").route(web::get().to(presence)))
        .service(super::resource("/connections").route(web::get().to(connections)))
        .service(super::resource("/stats").route(web::get().to(stats)));
}

/// `POST /api/publish`.
#[derive(Deserialize)]
struct PublishBody {
    room: String,
    data: Box<RawValue>,
    #[serde(default)]
    id: Option<String>,
}

async fn publish(
    state: web::Data<ApiState>,
    body: web::Json<PublishBody>,
) -> Result<HttpResponse, ApiError> {
    let PublishBody { room, data, id } = body.into_inner();
    let seq = state.server.publish_raw(&room, data, id.as_deref()).await?;
    tracing::debug!(%room, seq, "HTTP publish");
    Ok(HttpResponse::Ok().json(json!({ "seq": seq })))
}

/// `POST /api/send`.
#[derive(Deserialize)]
struct SendBody {
    to: String,
    data: Box<RawValue>,
    #[serde(default)]
    id: Option<String>,
}

async fn send(
    state: web::Data<ApiState>,
    body: web::Json<SendBody>,
) -> Result<HttpResponse, ApiError> {
    let SendBody { to, data, id } = body.into_inner();
    let delivered = state.server.send_raw(&to, data, id.as_deref()).await?;
    tracing::debug!(%to, delivered, "HTTP send");
    Ok(HttpResponse::Ok().json(json!({ "delivered": delivered })))
}

/// `POST /api/disconnect`: exactly one of `user` and `session`.
#[derive(Deserialize)]
struct DisconnectBody {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    session: Option<String>,
}

async fn disconnect(
    state: web::Data<ApiState>,
    body: web::Json<DisconnectBody>,
) -> Result<HttpResponse, ApiError> {
    let n = match body.into_inner() {
        DisconnectBody {
            user: Some(user),
            session: None,
        } => {
            let n = state.server.kick_user(&user).await?;
            tracing::info!(%user, sessions = n, "disconnected through the HTTP API");
            n
        }
        DisconnectBody {
            user: None,
            session: Some(session),
        } => {
            let n = state.server.kick_session(&session).await?;
            tracing::info!(%session, sessions = n, "disconnected through the HTTP API");
            n
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `user` and `session`",
            ))
        }
    };
    Ok(HttpResponse::Ok().json(json!({ "disconnected": n })))
}

/// Paging of `/api/rooms`.
#[derive(Deserialize)]
struct RoomsQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

async fn rooms(
    state: web::Data<ApiState>,
    query: web::Query<RoomsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = state.page_limit(query.limit);
    let page = state.server.rooms(query.after.as_deref(), limit).await?;
    Ok(HttpResponse::Ok().json(page))
}

async fn room(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = path.into_inner();
    match state.server.room(&room).await? {
        Some(details) => Ok(HttpResponse::Ok().json(details)),
        None => Err(ApiError::not_found(format!(
            "room `{room}` has no subscribers and no history"
        ))),
    }
}

async fn presence(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let room = path.into_inner();
    let users = state.server.presence(&room).await?;
    Ok(HttpResponse::Ok().json(json!({ "room": room, "users": users })))
}

/// Paging and filter of `/api/connections`.
#[derive(Deserialize)]
struct ConnectionsQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    user: Option<String>,
}

async fn connections(
    state: web::Data<ApiState>,
    query: web::Query<ConnectionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let page = state
        .server
        .connections(ConnectionQuery {
            after: query.after,
            limit: state.page_limit(query.limit),
            user: query.user,
        })
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

async fn stats(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let overview = state.server.overview().await?;
    let history = state.server.history_totals().await?;
    Ok(HttpResponse::Ok().json(json!({
        "sessions": overview.sessions,
        "identified": overview.identified,
        "users": overview.users,
        "rooms": overview.rooms,
        "draining": overview.draining,
        "store_healthy": overview.store_healthy,
        "history_rooms": history.map(|h| h.rooms),
        "history_messages": history.map(|h| h.messages),
    })))
}
