//! Live scenario progress: `GET /scenarios/{id}/events` streams the count of deliveries in
//! each state as server-sent events (`event: progress`, JSON data) whenever they change, and
//! ends after the event that shows every delivery finished. The page's script updates the
//! counts; without script the page is a static snapshot.
//!
//! The stream reads one small `GROUP BY` per second: dispatch has no change feed, and an
//! admin console has a handful of viewers, so polling the database is the simple, robust
//! choice (reconnects resume by themselves: EventSource retries).

use super::{WebError, WebResult, WebState};
use crate::results::{Counts, counts};
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use std::convert::Infallible;
use std::time::Duration;

pub async fn scenario_events(
    axum::extract::State(w): WebState,
    h: HeaderMap,
    Path(id): Path<String>,
) -> WebResult<Response> {
    if w.server.viewer(&h).await?.is_none() {
        return Err(WebError(StatusCode::UNAUTHORIZED, "sign in first".into()));
    }
    let first = counts(&w.server, &id).await?;
    if first.total == 0 {
        return Err(WebError::not_found(format!(
            "no scenario `{id}` with deliveries"
        )));
    }
    let server = w.server.clone();
    // State: (last counts sent, finished). The first event goes out at once.
    let events = stream::unfold((None::<Counts>, false), move |(last, finished)| {
        let server = server.clone();
        let id = id.clone();
        async move {
            if finished {
                return None;
            }
            loop {
                if last.is_some() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let now = match counts(&server, &id).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("progress stream for {id}: {e:#}");
                        return None;
                    }
                };
                if last.as_ref() != Some(&now) {
                    let done = now.done;
                    let ev = Event::default()
                        .event("progress")
                        .json_data(&now)
                        .unwrap_or_else(|_| Event::default().comment("unserializable"));
                    return Some((Ok::<_, Infallible>(ev), (Some(now), done)));
                }
            }
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
