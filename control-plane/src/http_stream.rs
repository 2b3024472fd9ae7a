//! Watching and driving desktops live (issue 7), on the API's one port.
//!
//! - `GET /api/v1/desktops/{id}/stream` upgrades to a WebSocket. Binary
//!   messages from the server are frame messages (header and payload as
//!   [`flotilla_stream::frame`] documents: H.264 Annex B access units,
//!   the first one a viewer gets is a keyframe). Text messages from the
//!   server are JSON events: `{"type":"control","holder":NAME|null,
//!   "viewers":N}` whenever control or the audience changes,
//!   `{"type":"error","error":"..."}` for a refused message, and
//!   `{"type":"end","reason":"..."}` before the server closes the stream.
//!   Text messages from the viewer are [`flotilla_stream::input`]'s.
//!   `?name=` names the viewer (shown when it takes control).
//! - `GET /api/v1/desktops/{id}/thumbnail[?width=N]` answers a JPEG of
//!   the current frame (16-1280 pixels wide, default 320) with an ETag of
//!   the frame's number: `If-None-Match` gets 304 while the picture is the
//!   same. A thumbnail fetched less than a second ago is served again
//!   rather than asked of the node.
//!
//! One encoder per desktop however many watch: the first viewer opens a
//! stream session on the desktop's node (over its tunnel); its frames go
//! to a [`Hub`] that fans them out; the last viewer leaving ends the
//! session and the encoder with it. When a viewer falls behind, the frame
//! rate is halved (down to 5 per second) and climbs back after five calm
//! seconds: the stream adapts to the slowest viewer that keeps up.
//!
//! Streams are served by the leader (which holds the tunnels); a follower
//! answers 503 `not_leader` with the leader's address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use flotilla_stream::frame::Header;
use flotilla_stream::hub::{Hub, Message, Viewer};
use flotilla_stream::input::ViewerMessage;
use serde::Deserialize;

use crate::control::ControlPlane;
use crate::error::{ApiError, ErrorKind};
use crate::tunnel::{Request, Session, SessionEvent};

/// The stream's frame rate and bitrate at best.
const MAX_FPS: u32 = 30;
const MIN_FPS: u32 = 5;
const BITRATE: u32 = 4_000_000;
/// How long a thumbnail is served from the cache.
const THUMBNAIL_TTL: Duration = Duration::from_secs(1);

pub(crate) fn routes() -> Router<Arc<ControlPlane>> {
    Router::new()
        .route("/api/v1/desktops/{id}/stream", get(stream))
        .route("/api/v1/desktops/{id}/thumbnail", get(thumbnail))
}

/// Thumbnails by (desktop, generation, width): when fetched, the frame's
/// number, the JPEG.
type ThumbnailCache = HashMap<(String, u64, u32), (Instant, u64, axum::body::Bytes)>;

/// The live streams and the thumbnail cache, by desktop.
#[derive(Default)]
pub struct Streams {
    hubs: Mutex<HashMap<(String, u64), Arc<Hub>>>,
    thumbnails: Mutex<ThumbnailCache>,
}

fn not_leader(control: &ControlPlane) -> ApiError {
    let leader = control.leader_addr().unwrap_or_default();
    ApiError::new(
        ErrorKind::Unavailable,
        "not_leader",
        format!("streams are served by the leader ({leader}); connect there"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ThumbnailQuery {
    width: Option<u32>,
}

pub(crate) async fn thumbnail(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
    query: Result<Query<ThumbnailQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(crate::http::query_error)?;
    let width = query.width.unwrap_or(320);
    if !(16..=1280).contains(&width) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "width is 16-1280 pixels",
        ));
    }
    let (node_id, generation) = crate::http_exec::running_desktop(&control, &id).await?;
    if !control.is_leader() {
        return Err(not_leader(&control));
    }
    let key = (id.clone(), generation, width);
    let cached = control
        .streams
        .thumbnails
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .filter(|(at, _, _)| at.elapsed() < THUMBNAIL_TTL)
        .cloned();
    let (sequence, jpeg) = match cached {
        Some((_, sequence, jpeg)) => (sequence, jpeg),
        None => {
            let message = crate::http_exec::collect(
                &control,
                &node_id,
                Request::Thumbnail {
                    desktop_id: id.clone(),
                    generation,
                    max_width: width,
                },
                "thumbnail_unavailable",
            )
            .await?;
            // From the node: checked before it is served.
            let (header, payload) = Header::parse(&message).map_err(|error| {
                ApiError::new(
                    ErrorKind::FailedPrecondition,
                    "thumbnail_unavailable",
                    format!("the node sent a broken thumbnail: {error}"),
                )
            })?;
            if header.kind != flotilla_stream::frame::Kind::Jpeg
                || !payload.starts_with(&[0xff, 0xd8])
            {
                return Err(ApiError::new(
                    ErrorKind::FailedPrecondition,
                    "thumbnail_unavailable",
                    "the node sent something that is not a JPEG",
                ));
            }
            let jpeg = axum::body::Bytes::copy_from_slice(payload);
            let mut cache = control
                .streams
                .thumbnails
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, (at, _, _)| at.elapsed() < THUMBNAIL_TTL * 10);
            cache.insert(key, (Instant::now(), header.sequence, jpeg.clone()));
            (header.sequence, jpeg)
        }
    };
    let etag = format!("\"{generation}-{sequence}\"");
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, jpeg).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    name: Option<String>,
}

pub(crate) async fn stream(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(crate::http::query_error)?;
    let name: String = query
        .name
        .unwrap_or_else(|| "viewer".to_owned())
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let (node_id, generation) = crate::http_exec::running_desktop(&control, &id).await?;
    if !control.is_leader() {
        return Err(not_leader(&control));
    }
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad_request(
            "not_websocket",
            format!("the stream is a WebSocket: {}", rejection.body_text()),
        )
    })?;
    let hub = hub_for(&control, &node_id, &id, generation)?;
    let viewer = hub.join(&name);
    Ok(upgrade
        .max_message_size(flotilla_stream::input::MAX_MESSAGE)
        .on_upgrade(move |socket| {
            serve_viewer(control, node_id, id, generation, hub, viewer, socket)
        }))
}

/// The desktop's hub, opening its stream on the node if nobody watches
/// yet.
fn hub_for(
    control: &Arc<ControlPlane>,
    node_id: &str,
    id: &str,
    generation: u64,
) -> Result<Arc<Hub>, ApiError> {
    let mut hubs = control
        .streams
        .hubs
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let key = (id.to_owned(), generation);
    if let Some(hub) = hubs.get(&key).filter(|hub| !hub.is_closed()) {
        return Ok(hub.clone());
    }
    let session = control.tunnels.open(
        node_id,
        Request::Stream {
            desktop_id: id.to_owned(),
            generation,
            bitrate_bps: BITRATE,
            max_fps: MAX_FPS,
        },
    )?;
    let hub = Hub::new();
    hubs.insert(key.clone(), hub.clone());
    tokio::spawn(feed(control.clone(), key, hub.clone(), session));
    Ok(hub)
}

/// Feeds a hub from its node's stream session until the last viewer
/// leaves or the session ends.
async fn feed(control: Arc<ControlPlane>, key: (String, u64), hub: Arc<Hub>, mut session: Session) {
    let mut fps = MAX_FPS;
    let mut calm_since = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let reason = loop {
        tokio::select! {
            event = session.next() => match event {
                Some(SessionEvent::Stdout(message)) => match Header::parse(&message) {
                    Ok((header, _)) if header.kind == flotilla_stream::frame::Kind::H264 => {
                        hub.publish(Arc::new(message), header.keyframe);
                    }
                    Ok(_) => {}
                    Err(error) => break format!("the node sent a broken frame: {error}"),
                },
                Some(SessionEvent::Stderr(_)) => {}
                Some(SessionEvent::Exit(_)) => break "the desktop's stream ended".to_owned(),
                Some(SessionEvent::Error(error)) => break error,
                None => break "the node's tunnel closed".to_owned(),
            },
            _ = hub.changed.notified() => {
                if hub.viewers() == 0 {
                    break "nobody watches".to_owned();
                }
                if hub.take_keyframe_request() && session.send_line(b"keyframe".to_vec()).is_err() {
                    // The tunnel is full: ask again on the next wake-up.
                    hub.request_keyframe();
                }
            }
            _ = tick.tick() => {
                // Adapt: a viewer fell behind lately → half the frames;
                // five calm seconds → back up.
                let dropped_lately = hub
                    .last_drop()
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(2));
                let wanted = if dropped_lately {
                    calm_since = Instant::now();
                    (fps / 2).max(MIN_FPS)
                } else if calm_since.elapsed() > Duration::from_secs(5) {
                    calm_since = Instant::now();
                    (fps * 2).min(MAX_FPS)
                } else {
                    fps
                };
                if wanted != fps
                    && session
                        .send_line(format!("rate {BITRATE} {wanted}").into_bytes())
                        .is_ok()
                {
                    fps = wanted;
                }
            }
        }
    };
    {
        let mut hubs = control
            .streams
            .hubs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if hubs.get(&key).is_some_and(|h| Arc::ptr_eq(h, &hub)) {
            hubs.remove(&key);
        }
    }
    tracing::debug!(desktop = %key.0, %reason, "stream ended");
    hub.broadcast(&serde_json::json!({"type": "end", "reason": reason}).to_string());
    hub.close();
}

fn error_event(error: &str) -> WsMessage {
    WsMessage::Text(
        serde_json::json!({"type": "error", "error": error})
            .to_string()
            .into(),
    )
}

/// One viewer's WebSocket: frames and events out, messages in.
async fn serve_viewer(
    control: Arc<ControlPlane>,
    node_id: String,
    id: String,
    generation: u64,
    hub: Arc<Hub>,
    viewer: Viewer,
    mut socket: WebSocket,
) {
    // The input session to the compositor, while this viewer has control.
    let mut input: Option<Session> = None;
    loop {
        tokio::select! {
            out = viewer.next() => {
                let message = match out {
                    Some(Message::Frame { data, .. }) => WsMessage::Binary(data.to_vec().into()),
                    Some(Message::Text(text)) => WsMessage::Text(text.into()),
                    None => break,
                };
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            answer = async { input.as_mut().expect("guarded").next().await }, if input.is_some() => {
                match answer {
                    Some(SessionEvent::Stdout(line)) => {
                        // The compositor is inside the untrusted desktop:
                        // only an error's text is passed on.
                        let answer: serde_json::Value =
                            serde_json::from_slice(&line).unwrap_or_default();
                        if answer.get("ok") != Some(&serde_json::Value::Bool(true)) {
                            let error: String = answer
                                .get("error")
                                .and_then(|e| e.as_str())
                                .unwrap_or("input refused")
                                .chars()
                                .take(500)
                                .collect();
                            if socket.send(error_event(&error)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Some(SessionEvent::Stderr(_)) => {}
                    _ => {
                        input = None;
                        let _ = socket.send(error_event("the desktop's input went away")).await;
                    }
                }
            }
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(WsMessage::Text(text))) => text,
                    Some(Ok(WsMessage::Binary(_))) => {
                        if socket.send(error_event("send JSON text messages")).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
                };
                let message = match ViewerMessage::parse(&text) {
                    Ok(message) => message,
                    Err(error) => {
                        if socket.send(error_event(&error)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                // Control taken by someone else: this viewer's held keys go.
                if input.is_some() && !viewer.has_control() {
                    input = None;
                }
                match message {
                    ViewerMessage::TakeControl => {
                        viewer.take_control();
                        if input.is_none() {
                            match control.tunnels.open(
                                &node_id,
                                Request::InputSession { desktop_id: id.clone(), generation },
                            ) {
                                Ok(session) => input = Some(session),
                                Err(error) => {
                                    viewer.release_control();
                                    let _ = socket.send(error_event(&error.to_string())).await;
                                }
                            }
                        }
                    }
                    ViewerMessage::ReleaseControl => {
                        viewer.release_control();
                        // Closing the compositor connection releases its keys.
                        input = None;
                    }
                    ViewerMessage::Keyframe => hub.request_keyframe(),
                    message => {
                        let (Some(session), true) = (&input, viewer.has_control()) else {
                            if socket.send(error_event("take control before sending input")).await.is_err() {
                                return;
                            }
                            continue;
                        };
                        let request = message.control_request().expect("input");
                        if session.send_line(request.to_string().into_bytes()).is_err() {
                            let _ = socket.send(error_event("the desktop's node is busy; input dropped")).await;
                        }
                    }
                }
            }
        }
    }
    let _ = socket
        .send(WsMessage::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "stream ended".into(),
        })))
        .await;
}
