//! One model call: authenticate, read and check the body, route, reserve,
//! forward, and stream the answer back through a [`Metered`] body that
//! settles the call exactly once: at its end, on an upstream error, or when
//! the agent goes away (hyper drops the body, which drops the provider's
//! connection: the upstream call is cancelled).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;

use super::budget::{Ask, Held, Refusal, Reservation};
use super::errors::{GatewayError, Kind};
use super::request::{self, Endpoint};
use super::usage::UsageTap;
use super::{Gateway, MAX_BODY};
use crate::control::{now_ms, DesktopIdentity};
use crate::seal;
use crate::state::task_project;
use crate::types::{cost_nanos, Price, ProviderKind, UsageRecord, UsageTotals};

/// Request headers passed to the provider (the rest, auth and
/// `accept-encoding` included, are not: the tap reads plain bytes).
const REQUEST_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "idempotency-key",
    "user-agent",
];

/// Answer headers not passed back: hop-by-hop, and cookies.
const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "set-cookie",
];

/// Where and how one call goes.
struct Route {
    provider: String,
    kind: ProviderKind,
    url: String,
    upstream_model: String,
    price: Price,
    key: Option<String>,
    project: Option<String>,
}

pub(super) async fn call(gateway: Arc<Gateway>, endpoint: Endpoint, request: Request) -> Response {
    let wire = endpoint.wire();
    match prepare(&gateway, endpoint, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(wire),
    }
}

async fn prepare(
    gateway: &Arc<Gateway>,
    endpoint: Endpoint,
    request: Request,
) -> Result<Response, GatewayError> {
    let (parts, body) = request.into_parts();
    let identity = gateway.authenticate(&parts.headers).await?;
    let slot = gateway
        .ledger
        .enter(&identity.desktop_id)
        .map_err(|refusal| GatewayError::new(Kind::RateLimit, refusal.to_string()))?;
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|error| {
            GatewayError::new(
                Kind::TooLarge,
                format!(
                    "the request body could not be read whole (at most {} MiB): {error}",
                    MAX_BODY >> 20
                ),
            )
        })?;
    let parsed = request::parse(endpoint, &body)
        .map_err(|error| GatewayError::new(Kind::InvalidRequest, error.to_string()))?;
    let (route, ask_state) = route(gateway, endpoint, &identity, &parsed.model)?;
    let input_price = route
        .price
        .input
        .max(route.price.cache_read)
        .max(route.price.cache_write);
    // A token is at least one byte: the body's length bounds its input.
    let input_bound = body.len() as u64;
    let estimate = Held {
        tokens: input_bound.saturating_add(parsed.max_output),
        cost_nanos: u64::try_from(
            (u128::from(input_bound) * u128::from(input_price)
                + u128::from(parsed.max_output) * u128::from(route.price.output))
                / 1000,
        )
        .unwrap_or(u64::MAX),
    };
    let ask = Ask {
        task: &identity.task_id,
        project: route.project.as_deref(),
        task_used: ask_state.task_used,
        task_budget: ask_state.task_budget,
        project_used: ask_state.project_used,
        project_budget: ask_state.project_budget,
        estimate,
    };
    let reservation = match gateway.ledger.admit(slot, &ask) {
        Ok(reservation) => reservation,
        Err(refusal) => {
            return Err(refuse(
                gateway,
                &identity,
                &route,
                &parsed.model,
                refusal,
                &ask_state,
            ))
        }
    };
    let model = parsed.model.clone();
    let streaming = parsed.stream;
    let upstream_body = parsed
        .upstream_body(endpoint, &route.upstream_model, body)
        .map_err(|error| GatewayError::new(Kind::InvalidRequest, error.to_string()))?;
    let mut upstream = gateway.client.post(&route.url).body(upstream_body);
    for name in REQUEST_HEADERS {
        if let Some(value) = parts.headers.get(*name) {
            upstream = upstream.header(*name, value);
        }
    }
    if let Some(key) = &route.key {
        upstream = match route.kind {
            ProviderKind::Anthropic => upstream.header("x-api-key", key),
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => upstream.bearer_auth(key),
        };
    }
    let settle = Settle {
        gateway: gateway.clone(),
        identity,
        provider: route.provider.clone(),
        project: route.project.clone(),
        model,
        price: route.price,
        reservation: Some(reservation),
    };
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(error) => {
            settle.finish(UsageTotals::default());
            return Err(GatewayError::new(
                Kind::BadGateway,
                format!(
                    "provider {} ({}) could not be reached: {}",
                    route.provider,
                    route.url,
                    error_chain(&error)
                ),
            ));
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !DROPPED_RESPONSE_HEADERS.contains(&name.as_str()) {
            if let Ok(name) = HeaderName::from_bytes(name.as_str().as_bytes()) {
                headers.append(name, value.clone());
            }
        }
    }
    let is_stream = streaming
        && answer
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
    let metered = Metered {
        inner: Box::pin(answer.bytes_stream()),
        tap: Some(UsageTap::new(endpoint, is_stream)),
        settle: Some(settle),
    };
    let mut response = Response::new(Body::from_stream(metered));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// What admission needs from the state, read with the route.
struct AskState {
    task_used: UsageTotals,
    task_budget: crate::types::Budget,
    project_used: UsageTotals,
    project_budget: crate::types::Budget,
    refused: Option<String>,
}

fn route(
    gateway: &Gateway,
    endpoint: Endpoint,
    identity: &DesktopIdentity,
    model: &str,
) -> Result<(Route, AskState), GatewayError> {
    let secret = gateway.control.cluster_secret();
    gateway.control.state.with_state(|state| {
        let task = state.task(&identity.task_id).ok_or_else(|| {
            GatewayError::new(Kind::Authentication, "this desktop's task is gone")
        })?;
        let project = task_project(task.repository.as_deref()).map(str::to_owned);
        let Some(provider) = state.provider_for(endpoint.wire(), model) else {
            let known: Vec<&str> = state
                .providers()
                .filter(|provider| provider.kind.wire() == endpoint.wire())
                .flat_map(|provider| provider.models.keys().map(String::as_str))
                .collect();
            return Err(GatewayError::new(
                Kind::NotFound,
                format!(
                    "no provider serves model {model:?} on this endpoint; models: {}",
                    if known.is_empty() {
                        "none (an operator adds providers with `flotilla llm provider add`)"
                            .to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        let route = &provider.models[model];
        let key = match state.provider_key(&provider.name) {
            None => None,
            Some(sealed) => Some(
                seal::open(secret, &format!("provider:{}", provider.name), sealed).map_err(
                    |error| {
                        GatewayError::new(
                            Kind::Internal,
                            format!("provider {}'s key cannot be opened: {error}", provider.name),
                        )
                    },
                )?,
            ),
        };
        let project_record = project.as_deref().and_then(|id| state.project(id));
        Ok((
            Route {
                provider: provider.name.clone(),
                kind: provider.kind,
                url: format!(
                    "{}{}",
                    provider.base_url.trim_end_matches('/'),
                    endpoint.upstream_path()
                ),
                upstream_model: route.upstream.clone(),
                price: route.price,
                key,
                project: project.clone(),
            },
            AskState {
                task_used: task.usage,
                task_budget: task.budget,
                project_used: project_record.map(|p| p.usage).unwrap_or_default(),
                project_budget: project_record.map(|p| p.budget).unwrap_or_default(),
                refused: task.llm_refused.clone(),
            },
        ))
    })
}

/// A refused call; a budget refusal is recorded once (the board says why
/// the agent stopped), not on every retry.
fn refuse(
    gateway: &Gateway,
    identity: &DesktopIdentity,
    route: &Route,
    model: &str,
    refusal: Refusal,
    ask_state: &AskState,
) -> GatewayError {
    let message = refusal.to_string();
    match refusal {
        Refusal::Concurrency { .. } => GatewayError::new(Kind::RateLimit, message),
        Refusal::Budget { .. } => {
            if ask_state.refused.as_deref() != Some(message.as_str()) {
                gateway.recorder.record(UsageRecord {
                    task_id: identity.task_id.clone(),
                    project: route.project.clone(),
                    desktop_id: identity.desktop_id.clone(),
                    provider: route.provider.clone(),
                    model: model.to_owned(),
                    at_ms: now_ms(),
                    usage: UsageTotals::default(),
                    refused: Some(message.clone()),
                });
            }
            GatewayError::new(
                Kind::Budget,
                format!("{message} (raise it with `flotilla budget set`)"),
            )
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Settles one call: once, whichever way it ends.
struct Settle {
    gateway: Arc<Gateway>,
    identity: DesktopIdentity,
    provider: String,
    project: Option<String>,
    model: String,
    price: Price,
    reservation: Option<Reservation>,
}

impl Settle {
    fn finish(mut self, mut usage: UsageTotals) {
        usage.calls = 1;
        usage.cost_nanos = cost_nanos(&usage, &self.price);
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(Held::of(&usage));
        }
        self.gateway.recorder.record(UsageRecord {
            task_id: std::mem::take(&mut self.identity.task_id),
            project: self.project.take(),
            desktop_id: std::mem::take(&mut self.identity.desktop_id),
            provider: std::mem::take(&mut self.provider),
            model: std::mem::take(&mut self.model),
            at_ms: now_ms(),
            usage,
            refused: None,
        });
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The answer's body as it passes to the agent, read by the tap.
struct Metered {
    inner: ByteStream,
    tap: Option<UsageTap>,
    settle: Option<Settle>,
}

impl Metered {
    fn settle(&mut self) {
        if let (Some(tap), Some(settle)) = (self.tap.take(), self.settle.take()) {
            settle.finish(tap.finish().0);
        }
    }
}

impl Stream for Metered {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.as_mut().poll_next(context) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(tap) = self.tap.as_mut() {
                    tap.feed(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.settle();
                Poll::Ready(Some(Err(std::io::Error::other(error))))
            }
            Poll::Ready(None) => {
                self.settle();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Metered {
    /// The agent went away mid-answer: what was seen is what is counted.
    fn drop(&mut self) {
        self.settle();
    }
}
