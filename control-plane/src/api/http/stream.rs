//! Watching and driving desktops live (issue 7), on the API's one port.
//!
//! - `GET /api/v1/desktops/{id}/stream` upgrades to a WebSocket. Binary
//!   messages from the server are frame messages (header and payload as
//!   [`flotilla_stream::frame`] documents: H.264 Annex B access units,
//!   the first one a viewer gets is a keyframe). Text messages from the
//!   server are JSON events:
//!   - `{"type":"control","holder":NAME|null,"viewers":N}` whenever
//!     control or the audience changes;
//!   - `{"type":"rate","bitrate":BPS,"fps":N}` when the stream's rate
//!     changes (see below);
//!   - `{"type":"skipped","frames":N}` when this viewer fell behind and
//!     its stale frames were dropped (it resumes at the next keyframe);
//!   - `{"type":"error","error":"..."}` for a refused message;
//!   - `{"type":"end","reason":"..."}` before the server closes the
//!     stream.
//!
//!   Text messages from the viewer are [`flotilla_stream::input`]'s,
//!   among them `{"type":"ack","sequence":N}`: at most
//!   [`flotilla_stream::hub::WINDOW`] frames are in flight unacknowledged,
//!   so TCP buffers never hold seconds of video. `?name=` names the
//!   viewer (shown when it takes control).
//! - `GET /api/v1/desktops/{id}/thumbnail[?width=N]` answers a JPEG of
//!   the current frame (16-1280 pixels wide, default 320) with an ETag of
//!   the frame's number: `If-None-Match` gets 304 while the picture is the
//!   same. A thumbnail fetched less than a second ago is served again
//!   rather than asked of the node.
//!
//! One encoder per desktop however many watch: the first viewer opens a
//! stream session on the desktop's node (over its tunnel); its frames go
//! to a [`Hub`] that fans them out; the last viewer leaving ends the
//! session and the encoder with it. The encoder's bitrate (and with it
//! the frame rate) follows the slowest viewer that keeps up ([`Adapt`]);
//! viewers too slow for any rate skip ahead without holding the others
//! back.
//!
//! The leader holds the nodes' tunnels and serves streams. A follower
//! relays: thumbnails are forwarded as HTTP, and a stream is a second
//! WebSocket to the leader joined to the viewer's, so the board works
//! through any server of the cluster.

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

use super::HttpState;
use crate::control::ControlPlane;
use crate::error::{ApiError, ErrorKind};
use crate::tunnel::{Request, Session, SessionEvent};

/// The stream's frame rate and bitrate at best.
const MAX_FPS: u32 = 30;
const MIN_FPS: u32 = 5;
const MAX_BITRATE: u32 = 4_000_000;
const MIN_BITRATE: u32 = 250_000;
/// How long a thumbnail is served from the cache.
const THUMBNAIL_TTL: Duration = Duration::from_secs(1);

pub(crate) fn routes() -> Router<HttpState> {
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

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ThumbnailQuery {
    /// Pixels wide (16-1280, default 320); the height keeps the aspect.
    #[serde(default, deserialize_with = "super::integer::query")]
    #[param(minimum = 16, maximum = 1280)]
    width: Option<u32>,
}

/// A desktop's latest frame as a small JPEG (cached for a second).
#[utoipa::path(
    get,
    path = "/api/v1/desktops/{id}/thumbnail",
    params(("id" = String, Path, description = "the desktop"), ThumbnailQuery),
    responses(
        (status = 200, description = "the frame", content_type = "image/jpeg"),
        (status = 409, description = "the desktop is not running", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn thumbnail(
    State(control): State<Arc<ControlPlane>>,
    State(http): State<HttpState>,
    Path(id): Path<String>,
    query: Result<Query<ThumbnailQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(crate::api::http::query_error)?;
    let width = query.width.unwrap_or(320);
    if !(16..=1280).contains(&width) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "width is 16-1280 pixels",
        ));
    }
    let (node_id, generation) = crate::api::http::exec::running_desktop(&control, &id).await?;
    if !control.is_leader() {
        let path = format!("/api/v1/desktops/{id}/thumbnail?width={width}");
        return crate::api::http::exec::forward_get(&control, &path, &headers).await;
    }
    let key = (id.clone(), generation, width);
    let cached = http
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
            let message = crate::api::http::exec::collect(
                &http.tunnels,
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
            let mut cache = http
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
    State(http): State<HttpState>,
    Path(id): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(crate::api::http::query_error)?;
    let name: String = query
        .name
        .unwrap_or_else(|| "viewer".to_owned())
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let (node_id, generation) = crate::api::http::exec::running_desktop(&control, &id).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad_request(
            "not_websocket",
            format!("the stream is a WebSocket: {}", rejection.body_text()),
        )
    })?;
    if !control.is_leader() {
        return relay_to_leader(&control, &id, &name, &headers, upgrade).await;
    }
    let hub = hub_for(&http, &node_id, &id, generation)?;
    let viewer = hub.join(&name);
    Ok(upgrade
        .max_message_size(flotilla_stream::input::MAX_MESSAGE)
        .on_upgrade(move |socket| serve_viewer(http, node_id, id, generation, hub, viewer, socket)))
}

/// A follower's answer to a viewer: the same stream, relayed from the
/// leader (which holds the node's tunnel). The leader is asked first, so
/// its refusals (404, 409, 401) reach the viewer as they are; then both
/// sockets are joined message for message until either closes.
async fn relay_to_leader(
    control: &ControlPlane,
    id: &str,
    name: &str,
    headers: &HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error as WsError;
    if headers.contains_key(crate::api::http::exec::FORWARDED) {
        return Err(ApiError::unavailable(
            "relayed to a server that is not the leader; retry",
        ));
    }
    let leader = crate::api::http::exec::leader_to_forward_to(control)?;
    let name = crate::api::http::fleet::urlencode(name);
    let mut request = format!("ws://{leader}/api/v1/desktops/{id}/stream?name={name}")
        .into_client_request()
        .map_err(|error| ApiError::internal(error.to_string()))?;
    let token = crate::api::http::session::session_token(headers)
        .ok_or_else(|| ApiError::unauthorized("sign in first"))?;
    let outgoing = request.headers_mut();
    outgoing.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ApiError::unauthorized("a malformed token"))?,
    );
    outgoing.insert(
        crate::api::http::exec::FORWARDED,
        HeaderValue::from_static("1"),
    );
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(
            flotilla_stream::frame::HEADER_LEN + flotilla_stream::frame::MAX_PAYLOAD,
        ))
        .max_frame_size(Some(
            flotilla_stream::frame::HEADER_LEN + flotilla_stream::frame::MAX_PAYLOAD,
        ));
    let leader_socket =
        match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
            Ok((socket, _)) => socket,
            Err(WsError::Http(answer)) => {
                // The leader refused: its status and error body, as they are.
                let (parts, body) = answer.into_parts();
                let mut response = Response::new(axum::body::Body::from(body.unwrap_or_default()));
                *response.status_mut() = parts.status;
                if let Some(value) = parts.headers.get(header::CONTENT_TYPE) {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, value.clone());
                }
                return Ok(response);
            }
            Err(error) => {
                return Err(ApiError::unavailable(format!(
                    "reach the leader's stream: {error}"
                )))
            }
        };
    Ok(upgrade
        .max_message_size(flotilla_stream::input::MAX_MESSAGE)
        .on_upgrade(move |viewer| relay(viewer, leader_socket)))
}

/// Joins a viewer's socket to the leader's until either ends.
async fn relay(
    mut viewer: WebSocket,
    mut leader: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Upstream;
    loop {
        tokio::select! {
            down = leader.next() => {
                let message = match down {
                    Some(Ok(Upstream::Binary(data))) => WsMessage::Binary(data),
                    Some(Ok(Upstream::Text(text))) => WsMessage::Text(text.as_str().into()),
                    Some(Ok(Upstream::Ping(_) | Upstream::Pong(_) | Upstream::Frame(_))) => continue,
                    Some(Ok(Upstream::Close(_))) | Some(Err(_)) | None => break,
                };
                if viewer.send(message).await.is_err() {
                    let _ = leader.close(None).await;
                    return;
                }
            }
            up = viewer.recv() => {
                let message = match up {
                    Some(Ok(WsMessage::Text(text))) => Upstream::Text(text.as_str().into()),
                    Some(Ok(WsMessage::Binary(data))) => Upstream::Binary(data),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                        let _ = leader.close(None).await;
                        return;
                    }
                };
                if leader.send(message).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = viewer
        .send(WsMessage::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "stream ended".into(),
        })))
        .await;
}

/// The desktop's hub, opening its stream on the node if nobody watches
/// yet.
fn hub_for(
    http: &HttpState,
    node_id: &str,
    id: &str,
    generation: u64,
) -> Result<Arc<Hub>, ApiError> {
    let mut hubs = http.streams.hubs.lock().unwrap_or_else(|p| p.into_inner());
    let key = (id.to_owned(), generation);
    if let Some(hub) = hubs.get(&key).filter(|hub| !hub.is_closed()) {
        return Ok(hub.clone());
    }
    let session = http.tunnels.open(
        node_id,
        Request::Stream {
            desktop_id: id.to_owned(),
            generation,
            bitrate_bps: MAX_BITRATE,
            max_fps: MAX_FPS,
        },
    )?;
    let hub = Hub::new();
    hubs.insert(key.clone(), hub.clone());
    tokio::spawn(feed(http.streams.clone(), key, hub.clone(), session));
    Ok(hub)
}

/// The rate the encoder is asked for: the bitrate, and the frame rate
/// that goes with it (full down to half the bitrate, then in proportion).
fn fps_for(bitrate: u32) -> u32 {
    (u64::from(MAX_FPS) * u64::from(bitrate) / u64::from(MAX_BITRATE / 2))
        .clamp(u64::from(MIN_FPS), u64::from(MAX_FPS)) as u32
}

/// Fits the stream's bitrate to the slowest viewer that keeps up, from
/// what the hub published and each viewer acknowledged and lost in each
/// second.
///
/// - A viewer that lost no frames, or drained nine tenths of what was
///   published, keeps up at the present rate.
/// - A viewer that lost frames and drained less, but at least
///   [`MIN_FPS`] frames or [`MIN_BITRATE`] per second, is slow. Slow two
///   seconds running, it can keep up at a lower rate: the bitrate goes
///   down in proportion to what it drained of what was published, with a
///   fifth to spare (never below `MIN_BITRATE`).
/// - A viewer that drained less than that (a stalled tab, a link too
///   poor for any rate) is not keeping up: it skips to keyframes on its
///   own and does not hold the others back. Nor does one catching up
///   after a stall (its first second back drains more than was
///   published).
/// - After a change down, the next decision waits for measures taken at
///   the new rate.
/// - Five seconds with nobody slow: the bitrate climbs by half, up to
///   [`MAX_BITRATE`].
struct Adapt {
    bitrate: u32,
    calm_since: Instant,
    /// The last snapshot: when, bytes published so far, the viewers'
    /// counts.
    last: Option<(Instant, u64, Vec<flotilla_stream::hub::ViewerStats>)>,
    /// The viewers that were slow in the last second.
    slow_before: std::collections::HashSet<u64>,
}

impl Adapt {
    fn new() -> Adapt {
        Adapt {
            bitrate: MAX_BITRATE,
            calm_since: Instant::now(),
            last: None,
            slow_before: std::collections::HashSet::new(),
        }
    }

    /// The bitrate wanted now (called about once a second).
    fn tick(
        &mut self,
        now: Instant,
        published: u64,
        stats: Vec<flotilla_stream::hub::ViewerStats>,
    ) -> u32 {
        // Slow viewers of this second: the share of the present bitrate
        // each can take.
        let mut slow: HashMap<u64, f64> = HashMap::new();
        if let Some((at, published_before, before)) = &self.last {
            let secs = now.duration_since(*at).as_secs_f64().max(0.1);
            let produced = published.saturating_sub(*published_before) as f64;
            for viewer in &stats {
                let Some(was) = before.iter().find(|b| b.id == viewer.id) else {
                    continue;
                };
                let drained = viewer.acked_bytes.saturating_sub(was.acked_bytes) as f64;
                if viewer.dropped == was.dropped || drained >= produced * 0.9 {
                    continue;
                }
                let fps = viewer.acked_frames.saturating_sub(was.acked_frames) as f64 / secs;
                if fps < f64::from(MIN_FPS) && drained * 8.0 / secs < f64::from(MIN_BITRATE) {
                    continue;
                }
                slow.insert(viewer.id, 0.8 * drained / produced.max(1.0));
            }
        }
        let share = slow
            .iter()
            .filter(|(id, _)| self.slow_before.contains(id))
            .map(|(_, share)| *share)
            .reduce(f64::min);
        self.last = Some((now, published, stats));
        if !slow.is_empty() {
            self.calm_since = now;
        }
        self.slow_before = if share.is_some() {
            // What was measured at the old rate is spent.
            std::collections::HashSet::new()
        } else {
            slow.into_keys().collect()
        };
        self.bitrate = match share {
            Some(share) => ((f64::from(self.bitrate) * share) as u32).max(MIN_BITRATE),
            None if now.duration_since(self.calm_since) >= Duration::from_secs(5) => {
                self.calm_since = now;
                (self.bitrate.saturating_mul(3) / 2).min(MAX_BITRATE)
            }
            None => self.bitrate,
        };
        self.bitrate
    }
}

/// Feeds a hub from its node's stream session until the last viewer
/// leaves or the session ends.
async fn feed(streams: Arc<Streams>, key: (String, u64), hub: Arc<Hub>, mut session: Session) {
    let mut adapt = Adapt::new();
    // What the node was last asked for.
    let mut asked = (MAX_BITRATE, MAX_FPS);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let reason = loop {
        // A keyframe ask whose time has come goes to the node.
        if hub.take_keyframe_request() && session.send_line(b"keyframe".to_vec()).is_err() {
            // The tunnel is full: ask again later.
            hub.request_keyframe();
        }
        let keyframe_due = hub.keyframe_due();
        tokio::select! {
            event = session.next() => match event {
                Some(SessionEvent::Stdout(message)) => match Header::parse(&message) {
                    Ok((header, _)) if header.kind == flotilla_stream::frame::Kind::H264 => {
                        hub.publish(Arc::new(message), header.keyframe, header.sequence);
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
            }
            _ = async {
                if let Some(at) = keyframe_due {
                    tokio::time::sleep_until(at.into()).await;
                }
            }, if keyframe_due.is_some() => {}
            _ = tick.tick() => {
                let bitrate = adapt.tick(Instant::now(), hub.published_bytes(), hub.stats());
                let wanted = (bitrate, fps_for(bitrate));
                // Changes under a tenth are not worth telling the node.
                let small = wanted.1 == asked.1
                    && u64::from(wanted.0.abs_diff(asked.0)) * 10 < u64::from(asked.0);
                if !small
                    && session
                        .send_line(format!("rate {} {}", wanted.0, wanted.1).into_bytes())
                        .is_ok()
                {
                    asked = wanted;
                    hub.broadcast(
                        &serde_json::json!({
                            "type": "rate",
                            "bitrate": wanted.0,
                            "fps": wanted.1,
                        })
                        .to_string(),
                    );
                }
            }
        }
    };
    {
        let mut hubs = streams.hubs.lock().unwrap_or_else(|p| p.into_inner());
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
    http: HttpState,
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
                        if socket.send(error_event(&error.to_string())).await.is_err() {
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
                            match http.tunnels.open(
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
                    ViewerMessage::Ack { sequence } => viewer.ack(sequence),
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

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_stream::hub::ViewerStats;

    fn viewer(id: u64, acked_frames: u64, acked_bytes: u64, dropped: u64) -> ViewerStats {
        ViewerStats {
            id,
            acked_frames,
            acked_bytes,
            dropped,
        }
    }

    #[test]
    fn the_rate_fits_the_slowest_viewer_that_keeps_up() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut adapt = Adapt::new();
        // Two seconds of 500 kB published: viewer 1 takes it all; viewer
        // 2 stalls (nothing acknowledged, frames lost).
        assert_eq!(
            adapt.tick(at(0), 0, vec![viewer(1, 0, 0, 0), viewer(2, 0, 0, 0)]),
            MAX_BITRATE
        );
        adapt.tick(
            at(1),
            250_000,
            vec![viewer(1, 30, 250_000, 0), viewer(2, 0, 0, 40)],
        );
        assert_eq!(
            adapt.tick(
                at(2),
                500_000,
                vec![viewer(1, 60, 500_000, 0), viewer(2, 0, 0, 80)]
            ),
            MAX_BITRATE,
            "a stalled viewer holds nobody back"
        );
        // Viewer 2 comes back in a burst: it drains what was published
        // (and lost a few frames on the way): still nobody held back.
        assert_eq!(
            adapt.tick(
                at(3),
                750_000,
                vec![viewer(1, 90, 750_000, 0), viewer(2, 40, 740_000, 90)]
            ),
            MAX_BITRATE
        );
        // A third viewer on a poor link drains half of what is published
        // at 15 frames a second, losing the rest: the rate goes down to
        // fit it, with room to spare.
        adapt.tick(at(4), 1_000_000, vec![viewer(3, 0, 0, 0)]);
        adapt.tick(at(5), 1_250_000, vec![viewer(3, 15, 125_000, 15)]);
        let fitted = adapt.tick(at(6), 1_500_000, vec![viewer(3, 30, 250_000, 30)]);
        assert_eq!(fitted, MAX_BITRATE / 10 * 4, "80% of its half");
        assert_eq!(fps_for(fitted), 24);
        // Then it keeps up: after five calm seconds the rate climbs back.
        let mut rate = fitted;
        for second in 7..=12 {
            let drained = 250_000 * (second - 6) + 250_000;
            rate = adapt.tick(
                at(second),
                1_500_000 + drained,
                vec![viewer(3, 30 * second, drained, 30)],
            );
        }
        assert_eq!(rate, fitted * 3 / 2);
        // Never below the floor, never above the top.
        assert_eq!(fps_for(MIN_BITRATE), MIN_FPS);
        assert_eq!(fps_for(MAX_BITRATE), MAX_FPS);
    }
}
