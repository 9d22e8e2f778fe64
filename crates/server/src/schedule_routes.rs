//! HTTP routes of `transport::schedule_api`: policies, schedule, automatic update, rollouts,
//! and the test clock. Admin only; the logic is in `windows`, `settings`, `autoupdate`,
//! `rollout` and `clock`.

use super::Server;
use super::api::{Admin, ApiErr, R};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use patchcast_core::model::group_policy::GroupPolicy;
use patchcast_core::model::rollout::Rollout;
use patchcast_proto::schedule_api::ClockChange;
use patchcast_proto::schedule_api::{self as sched, Assign};
use serde::Deserialize;
use std::sync::Arc;

type S = State<Arc<Server>>;

pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        .route(sched::POLICIES, get(policies).post(set_policy))
        .route(sched::SCHEDULE, get(schedule))
        .route(sched::AUTOUPDATE, get(assignments).post(assign))
        .route(sched::ROLLOUTS, get(rollouts).post(start_rollout))
        .route(&format!("{}/{{id}}", sched::ROLLOUTS), get(rollout))
        .route(
            &format!("{}/{{id}}/{{verb}}", sched::ROLLOUTS),
            axum::routing::post(rollout_action),
        )
        .route(sched::CLOCK, get(clock).post(change_clock))
}

/// Refusals the admin can fix (unknown group, unpublished package) are 400 with the message.
fn bad(e: anyhow::Error) -> ApiErr {
    ApiErr::bad(format!("{e:#}"))
}

async fn policies(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.policies().await?.as_ref()).into_response())
}

async fn set_policy(State(s): S, _: Admin, Json(p): Json<GroupPolicy>) -> R<Response> {
    if p.group.trim().is_empty() {
        return Err(ApiErr::bad("the policy names no group"));
    }
    Ok(Json(s.set_policy(&p).await?).into_response())
}

#[derive(Deserialize)]
struct ScheduleQuery {
    group: Option<String>,
    count: Option<usize>,
}

async fn schedule(State(s): S, _: Admin, Query(q): Query<ScheduleQuery>) -> R<Response> {
    let count = q.count.unwrap_or(5).clamp(1, 500);
    Ok(Json(s.schedule(q.group.as_deref(), count).await.map_err(bad)?).into_response())
}

async fn assignments(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.assignments().await?).into_response())
}

async fn assign(State(s): S, _: Admin, Json(a): Json<Assign>) -> R<Response> {
    Ok(Json(
        s.assign(&a, &crate::actions::Actor::token())
            .await
            .map_err(bad)?,
    )
    .into_response())
}

async fn rollouts(State(s): S, _: Admin) -> R<Response> {
    s.evaluate_rollouts().await?;
    Ok(Json(s.rollouts().await?).into_response())
}

async fn start_rollout(State(s): S, _: Admin, Json(r): Json<Rollout>) -> R<Response> {
    Ok(Json(
        s.start_rollout(&r, &crate::actions::Actor::token())
            .await
            .map_err(bad)?,
    )
    .into_response())
}

async fn rollout(State(s): S, _: Admin, Path(id): Path<String>) -> R<Response> {
    s.evaluate_rollouts().await?;
    match s.rollout_status(&id).await {
        Ok(r) => Ok(Json(r).into_response()),
        Err(e) => Err(ApiErr::new(StatusCode::NOT_FOUND, format!("{e:#}"), None)),
    }
}

/// `pause`, `resume` or `abort` (`actions`).
async fn rollout_action(
    State(s): S,
    _: Admin,
    Path((id, verb)): Path<(String, String)>,
) -> R<Response> {
    let Some(v) = patchcast_core::model::rollout::RolloutVerb::parse(&verb) else {
        return Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("no rollout action `{verb}`: use pause, resume or abort"),
            None,
        ));
    };
    super::api::act(&s, crate::actions::AdminAction::Rollout(id, v)).await
}

async fn clock(State(s): S, _: Admin) -> R<Response> {
    Ok(Json(s.clock.reading()).into_response())
}

async fn change_clock(State(s): S, _: Admin, Json(c): Json<ClockChange>) -> R<Response> {
    match s.change_clock(&c) {
        Ok(r) => Ok(Json(r).into_response()),
        Err(e) => Err(ApiErr::new(StatusCode::FORBIDDEN, e.to_string(), None)),
    }
}
