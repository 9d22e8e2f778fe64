//! The console's actions: one POST endpoint for every button and form (retry or cancel a
//! delivery, cancel a scenario, pause, resume or abort a rollout, start a scenario, assign
//! automatic update), each carrying the session's CSRF token, run through `crate::actions`
//! like the API's; and the Audit page that lists them.

use super::auth::Viewer;
use super::pages::{Ctx, PageQ, ROWS_PER_PAGE, forbidden, page_url, safe_next};
use super::views::time;
use super::{WebError, WebResult, WebState};
use crate::actions::{Actor, AdminAction, Refused, quick_scenario};
use axum::extract::{Form, OriginalUri, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use patchcast_core::model::rollout::RolloutVerb;
use patchcast_proto::schedule_api::Assign;
use serde::Deserialize;
use serde_json::json;

pub const ACTIONS: &str = "/actions";

/// Every action form's fields; which are used depends on `action`.
#[derive(Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
    action: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    package: String,
    #[serde(default)]
    group: String,
    /// The page to return to (a path on this site).
    back: Option<String>,
}

/// The action a form names, or why it names none.
pub fn parse(f: &ActionForm) -> Result<AdminAction, Refused> {
    let id = || {
        let id = f.id.trim();
        if id.is_empty() {
            Err(Refused::Invalid("the form names no id".into()))
        } else {
            Ok(id.to_string())
        }
    };
    let assign = |assign: bool| {
        if f.group.trim().is_empty() || f.package.trim().is_empty() {
            return Err(Refused::Invalid("choose a group and a package".into()));
        }
        Ok(AdminAction::Assign(Assign {
            group: f.group.trim().to_string(),
            package_id: f.package.trim().to_string(),
            assign,
        }))
    };
    match f.action.as_str() {
        "delivery.retry" => Ok(AdminAction::RetryDelivery(id()?)),
        "delivery.cancel" => Ok(AdminAction::CancelDelivery(id()?)),
        "scenario.cancel" => Ok(AdminAction::CancelScenario(id()?)),
        "scenario.start" => Ok(AdminAction::StartScenario(Box::new(quick_scenario(
            &f.package, &f.group,
        )?))),
        "autoupdate.assign" => assign(true),
        "autoupdate.unassign" => assign(false),
        a => match a.strip_prefix("rollout.").and_then(RolloutVerb::parse) {
            Some(v) => Ok(AdminAction::Rollout(id()?, v)),
            None => Err(Refused::Invalid(format!("unknown action `{a}`"))),
        },
    }
}

/// POST /actions: signed in with a session, the session's CSRF token, then the action; back to
/// the page it came from (a new scenario's page after a start). A refusal is shown with its
/// status (404, 409, 400) and message.
pub async fn post(State(w): WebState, h: HeaderMap, Form(f): Form<ActionForm>) -> WebResult {
    let Some(Viewer::Session { account, csrf }) = w.server.viewer(&h).await? else {
        return Err(forbidden());
    };
    if !super::csrf::matches(&csrf, f.csrf.as_deref()) {
        tracing::warn!(account = %account, action = %f.action, "console action refused: CSRF token");
        return Err(forbidden());
    }
    let refused = |r: Refused| {
        let status = match r {
            Refused::NotFound(_) => StatusCode::NOT_FOUND,
            Refused::Conflict(_) => StatusCode::CONFLICT,
            Refused::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        WebError(status, format!("refused: {}", r.message()))
    };
    let action = parse(&f).map_err(refused)?;
    let done = w
        .server
        .act(&Actor::console(&account), &action)
        .await?
        .map_err(refused)?;
    let to = if done.action == "scenario.start" {
        format!("/scenarios/{}", super::pages::enc(&done.target))
    } else {
        safe_next(f.back.as_deref())
    };
    Ok(Redirect::to(&to).into_response())
}

/// GET /audit: who did what, when, the newest first, a page of entries at a time.
pub async fn page(
    State(w): WebState,
    h: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(p): Query<PageQ>,
) -> WebResult {
    let ctx = Ctx::of(&w, &h, &uri).await?;
    if let Err(redirect) = ctx.require() {
        return Ok(*redirect);
    }
    let per_page = ROWS_PER_PAGE as i64;
    // One more than a page: whether another follows.
    let mut entries = w
        .server
        .audit_page(per_page + 1, (p.page as i64).saturating_mul(per_page))
        .await?;
    let more = entries.len() > ROWS_PER_PAGE;
    entries.truncate(ROWS_PER_PAGE);
    let entries: Vec<_> = entries
        .into_iter()
        .map(|e| {
            json!({"n": e.n, "when": time(e.at_ms), "who": e.actor, "action": e.action,
                   "target": e.target, "detail": e.detail})
        })
        .collect();
    ctx.page(
        &w,
        "audit",
        StatusCode::OK,
        json!({
            "entries": entries,
            "page_number": p.page + 1,
            "prev_url": (p.page > 0).then(|| page_url(&uri, p.page - 1)),
            "next_url": more.then(|| page_url(&uri, p.page + 1)),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(action: &str, id: &str, package: &str, group: &str) -> ActionForm {
        ActionForm {
            csrf: None,
            action: action.into(),
            id: id.into(),
            package: package.into(),
            group: group.into(),
            back: None,
        }
    }

    #[test]
    fn forms_name_actions() {
        assert!(matches!(
            parse(&form("delivery.cancel", "d-1", "", "")),
            Ok(AdminAction::CancelDelivery(id)) if id == "d-1"
        ));
        assert!(matches!(
            parse(&form("rollout.pause", "r-1", "", "")),
            Ok(AdminAction::Rollout(_, RolloutVerb::Pause))
        ));
        assert!(matches!(
            parse(&form("autoupdate.unassign", "", "kb1", "g")),
            Ok(AdminAction::Assign(Assign { assign: false, .. }))
        ));
        assert!(matches!(
            parse(&form("scenario.start", "", "kb1", "g")),
            Ok(AdminAction::StartScenario(_))
        ));
        for bad in [
            form("delivery.cancel", " ", "", ""),
            form("rollout.explode", "r-1", "", ""),
            form("autoupdate.assign", "", "", "g"),
            form("drop.tables", "x", "", ""),
        ] {
            assert!(matches!(parse(&bad), Err(Refused::Invalid(_))));
        }
    }
}
