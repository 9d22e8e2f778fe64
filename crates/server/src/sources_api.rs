//! HTTP routes for update sources and relays (see `transport::sources` for the table).

use super::Server;
use super::api::{Admin, AgentId, ApiErr};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use patchcast_proto::admin_api::MACHINES;
use patchcast_proto::sources::{
    ADMIN_RELAYS, ADMIN_SOURCES, ADMIN_SOURCES_TEST, AGENT_SOURCES, AgentSources, RELAY_STATUS,
    RelayRole, RelayStatus, SetSources,
};
use serde::Deserialize;
use std::sync::Arc;

type S = State<Arc<Server>>;
type R<T> = Result<T, ApiErr>;

pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route(RELAY_STATUS, post(relay_status))
        .route(AGENT_SOURCES, get(agent_sources))
        .route(ADMIN_SOURCES, get(show).put(set))
        .route(ADMIN_SOURCES_TEST, get(test))
        .route(ADMIN_RELAYS, get(relays))
        .route(&format!("{MACHINES}/{{id}}/relay"), post(relay_role))
}

async fn relay_status(
    State(s): S,
    AgentId(m): AgentId,
    Json(st): Json<RelayStatus>,
) -> R<Response> {
    match s.relay_status(&m, &st).await? {
        Some(ack) => Ok(Json(ack).into_response()),
        None => Err(ApiErr::new(
            StatusCode::FORBIDDEN,
            format!(
                "machine {m} does not have the relay role; `patchcast machine relay {m} --enable` gives it"
            ),
            None,
        )),
    }
}

async fn agent_sources(State(s): S, AgentId(m): AgentId) -> R<Response> {
    let sources = s.machine_sources(&m).await?;
    Ok(Json(AgentSources { sources }).into_response())
}

async fn show(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.source_list().await?).into_response())
}

async fn set(State(s): S, _: Admin, Json(req): Json<SetSources>) -> R<Response> {
    match s.set_sources(&req.list).await? {
        Ok(v) => Ok(Json(v).into_response()),
        Err(refused) => Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(refused)).into_response()),
    }
}

#[derive(Deserialize)]
struct TestQ {
    address: String,
}

async fn test(State(s): S, _: Admin, Query(q): Query<TestQ>) -> R<Response> {
    let addr = q.address.trim().parse().map_err(|_| {
        ApiErr::new(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not an IPv4 or IPv6 address", q.address),
            None,
        )
    })?;
    Ok(Json(s.sources_test(addr).await?).into_response())
}

async fn relays(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.relays().await?).into_response())
}

async fn relay_role(
    State(s): S,
    _: Admin,
    Path(id): Path<String>,
    Json(role): Json<RelayRole>,
) -> R<Response> {
    match s.set_relay_role(&id, &role).await {
        Ok(Some(v)) => Ok(Json(v).into_response()),
        Ok(None) => Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("no machine `{id}`; see `patchcast machine list`"),
            None,
        )),
        Err(e) => Err(ApiErr::new(StatusCode::BAD_REQUEST, format!("{e:#}"), None)),
    }
}
