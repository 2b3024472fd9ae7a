//! The cluster as this server sees it, membership removal, and the live
//! change feed (server-sent events) the board and watchers follow.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::query_error;
use crate::control::ControlPlane;
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::raft::WatchError;

#[derive(Serialize, ToSchema)]
pub struct ClusterView {
    leader: Option<u64>,
    term: u64,
    members: Vec<MemberView>,
    cluster_id: String,
    node_id: u64,
    last_log_index: u64,
    last_applied: u64,
    revision: u64,
    snapshot_index: u64,
    purged_index: u64,
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    id: u64,
    addr: String,
    /// `voter` or `learner`.
    role: String,
}

impl From<flotilla_proto::cluster::ClusterStatus> for ClusterView {
    fn from(status: flotilla_proto::cluster::ClusterStatus) -> ClusterView {
        ClusterView {
            leader: status.leader,
            term: status.term,
            members: status
                .members
                .into_iter()
                .map(|member| MemberView {
                    id: member.id,
                    addr: member.addr,
                    role: member.role,
                })
                .collect(),
            cluster_id: status.cluster_id,
            node_id: status.node_id,
            last_log_index: status.last_log_index,
            last_applied: status.last_applied,
            revision: status.revision,
            snapshot_index: status.snapshot_index,
            purged_index: status.purged_index,
        }
    }
}

/// The cluster as this server sees it.
#[utoipa::path(get, path = "/api/v1/cluster", responses((status = 200, body = ClusterView)))]
pub(super) async fn cluster_status(State(control): State<Arc<ControlPlane>>) -> Json<ClusterView> {
    Json(control.status().into())
}

/// Remove a server from the cluster.
#[utoipa::path(
    delete,
    path = "/api/v1/cluster/members/{id}",
    params(("id" = u64, Path)),
    responses((status = 200, body = ClusterView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub(super) async fn remove_member(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
) -> Result<Json<ClusterView>, ApiError> {
    let node_id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("{id:?} is not a server id (a number)"),
        )
    })?;
    let status = control
        .remove_member(node_id, control.cluster_secret())
        .await?;
    Ok(Json(status.into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// Stream changes after this revision (default: the current one, so only
    /// new changes). `Last-Event-ID` overrides it when a browser reconnects.
    #[serde(default, deserialize_with = "super::integer::query")]
    from: Option<u64>,
}

/// Live changes as server-sent events: `event: change`, `id: <revision>`,
/// `data: <Change JSON>`. Resumes from any revision still retained; older
/// ones answer 410 and the client lists again.
#[utoipa::path(
    get,
    path = "/api/v1/watch",
    params(WatchQuery),
    responses((status = 200, description = "text/event-stream of Change"), (status = 410, body = ErrorBody))
)]
pub(super) async fn watch(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be a revision number",
                    )
                })?,
        ),
        None => None,
    };
    let from = last_event_id
        .or(query.from)
        .unwrap_or_else(|| control.state.with_state(|state| state.revision()));
    let watcher = control.state.watch(from).map_err(watch_error)?;
    let stream = futures::stream::unfold(Some(watcher), |watcher| async move {
        let mut watcher = watcher?;
        match watcher.next().await {
            Ok(change) => {
                let event = Event::default()
                    .event("change")
                    .id(change.revision.to_string())
                    .json_data(&change)
                    .unwrap_or_else(|_| Event::default().event("error"));
                Some((Ok(event), Some(watcher)))
            }
            Err(error) => {
                let api_error = watch_error(error);
                let event = Event::default()
                    .event("error")
                    .json_data(serde_json::json!({
                        "error": {"code": api_error.code, "message": api_error.message}
                    }))
                    .unwrap_or_else(|_| Event::default().event("error"));
                Some((Ok(event), None))
            }
        }
    });
    // Server shutdown ends the stream, so graceful shutdown is not held
    // open by watchers; they reconnect to another server with Last-Event-ID.
    let stream = futures::StreamExt::take_until(stream, control.stopped());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn watch_error(error: WatchError) -> ApiError {
    match error {
        WatchError::Compacted { .. } => {
            ApiError::new(ErrorKind::Gone, "compacted", error.to_string())
        }
        WatchError::Closed => ApiError::unavailable(error.to_string()),
    }
}
