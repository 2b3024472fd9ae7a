//! The LLM gateway's replicated records: model providers (their keys are
//! sealed apart and never here), budgets, and usage.
//!
//! Money is integers: prices are pico-dollars per token (US$1 per million
//! tokens is 1,000,000), costs nano-dollars, so applying is exact and the same
//! on every replica.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ProviderKind {
    /// Anthropic Messages (`/v1/messages`).
    #[serde(rename = "anthropic")]
    Anthropic,
    /// OpenAI (`/chat/completions`, `/responses`).
    #[serde(rename = "openai")]
    OpenAi,
    /// Any server with OpenAI's API (vLLM, llama.cpp's server, Ollama).
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
}

impl ProviderKind {
    pub fn wire(self) -> Wire {
        match self {
            ProviderKind::Anthropic => Wire::Anthropic,
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => Wire::OpenAi,
        }
    }

    pub fn parse(text: &str) -> Option<ProviderKind> {
        match text {
            "anthropic" => Some(ProviderKind::Anthropic),
            "openai" => Some(ProviderKind::OpenAi),
            "openai-compatible" => Some(ProviderKind::OpenAiCompatible),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenAi => "openai",
            ProviderKind::OpenAiCompatible => "openai-compatible",
        }
    }
}

/// The two wire formats the gateway forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Anthropic,
    OpenAi,
}

/// What a model costs, in pico-dollars per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Price {
    #[serde(default)]
    pub input: u64,
    #[serde(default)]
    pub output: u64,
    #[serde(default)]
    pub cache_read: u64,
    #[serde(default)]
    pub cache_write: u64,
}

/// One model a provider serves: the name agents ask for maps to the
/// provider's own name for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelRoute {
    /// The provider's name for the model (often the same).
    pub upstream: String,
    #[serde(default)]
    pub price: Price,
}

/// A model provider, as the state holds it (without its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    /// 1-64 of `[A-Za-z0-9_-]`.
    pub name: String,
    pub kind: ProviderKind,
    /// As an SDK takes it: `https://api.anthropic.com`,
    /// `https://api.openai.com/v1`, `http://gpu-7:8000/v1`.
    pub base_url: String,
    /// Names agents ask for → the provider's model.
    pub models: BTreeMap<String, ModelRoute>,
    pub created_at_ms: u64,
}

/// Limits on what a task or project may spend; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    /// Input + output + cache tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Nano-dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_nanos: Option<u64>,
}

impl Budget {
    pub fn is_unlimited(&self) -> bool {
        self.max_tokens.is_none() && self.max_cost_nanos.is_none()
    }
}

/// Tokens and cost summed over calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageTotals {
    #[serde(default)]
    pub calls: u64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Nano-dollars.
    #[serde(default)]
    pub cost_nanos: u64,
}

impl UsageTotals {
    pub fn is_empty(&self) -> bool {
        *self == UsageTotals::default()
    }

    /// Every kind of token, as budgets count them.
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_write_tokens)
    }

    pub fn add(&mut self, other: &UsageTotals) {
        self.calls = self.calls.saturating_add(other.calls);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
    }

    /// Whether these totals are past `budget`.
    pub fn exceeds(&self, budget: &Budget) -> bool {
        budget.max_tokens.is_some_and(|max| self.tokens() > max)
            || budget
                .max_cost_nanos
                .is_some_and(|max| self.cost_nanos > max)
    }
}

/// One model call, as the gateway settled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub task_id: String,
    /// The task's project when the call was made (`None`: no repository).
    #[serde(default)]
    pub project: Option<String>,
    pub desktop_id: String,
    pub provider: String,
    pub model: String,
    pub at_ms: u64,
    pub usage: UsageTotals,
    /// Set when the gateway refused the call (budget): the board says why
    /// the agent stopped.
    #[serde(default)]
    pub refused: Option<String>,
}

/// Usage of one task with one model within one hour, for `usage --since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    /// Start of the hour, wall-clock milliseconds.
    pub hour_ms: u64,
    pub task_id: String,
    #[serde(default)]
    pub project: Option<String>,
    pub provider: String,
    pub model: String,
    pub usage: UsageTotals,
}

/// One hour, in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// The cost of `usage` at `price`, in nano-dollars.
pub fn cost_nanos(usage: &UsageTotals, price: &Price) -> u64 {
    let picos = u128::from(usage.input_tokens) * u128::from(price.input)
        + u128::from(usage.output_tokens) * u128::from(price.output)
        + u128::from(usage.cache_read_tokens) * u128::from(price.cache_read)
        + u128::from(usage.cache_write_tokens) * u128::from(price.cache_write);
    u64::try_from(picos / 1000).unwrap_or(u64::MAX)
}
