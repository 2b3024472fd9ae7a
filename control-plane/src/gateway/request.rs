//! What the gateway reads of a request before forwarding it: the model,
//! whether it streams, and an upper bound on the tokens it may use (the
//! budget's reservation). The body is forwarded as sent except where the
//! gateway must change it: the model's name at the provider, and OpenAI's
//! `stream_options.include_usage` (without it a stream carries no usage).
//! Only the top level is parsed (`RawValue`s keep every nested byte and the
//! key order); a body that needs no change is forwarded byte for byte.

use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::value::RawValue;

use crate::types::Wire;

/// Output tokens reserved for a call that names no limit.
pub const DEFAULT_MAX_OUTPUT: u64 = 4096;

/// The model endpoints the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/responses`.
    Responses,
}

impl Endpoint {
    pub fn wire(self) -> Wire {
        match self {
            Endpoint::Messages => Wire::Anthropic,
            Endpoint::ChatCompletions | Endpoint::Responses => Wire::OpenAi,
        }
    }

    /// Appended to the provider's base URL (as SDKs take it).
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::Messages => "/v1/messages",
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Responses => "/responses",
        }
    }

    /// The fields that cap the output, in the order they are looked at.
    fn output_limits(self) -> &'static [&'static str] {
        match self {
            Endpoint::Messages => &["max_tokens"],
            Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
            Endpoint::Responses => &["max_output_tokens"],
        }
    }
}

/// Why a request body was refused before anything was sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the body must be a JSON object: {0}")]
    NotJson(String),
    #[error("'model' must be a string naming a model (GET /v1/models lists them)")]
    NoModel,
    #[error("'stream' must be true or false")]
    BadStream,
    #[error("'{field}' must be a positive integer")]
    BadLimit { field: &'static str },
    #[error("'stream_options' must be an object")]
    BadStreamOptions,
}

/// A parsed request: what the gateway needs to know of it.
#[derive(Debug)]
pub struct Parsed {
    fields: IndexMap<String, Box<RawValue>>,
    pub model: String,
    pub stream: bool,
    /// The most output tokens it may produce.
    pub max_output: u64,
}

/// A JSON object's top level, refusing a key given twice: the gateway and
/// the provider must not read different models (or limits) from one body.
struct TopLevel(IndexMap<String, Box<RawValue>>);

impl<'de> serde::Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TopLevel;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevel, A::Error> {
                let mut fields = IndexMap::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    if fields.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "key {key:?} is given twice"
                        )));
                    }
                    fields.insert(key, value);
                }
                Ok(TopLevel(fields))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Reads the top level of `body`.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Parsed, RequestError> {
    let TopLevel(fields) =
        serde_json::from_slice(body).map_err(|error| RequestError::NotJson(error.to_string()))?;
    let model = fields
        .get("model")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .filter(|model| !model.is_empty())
        .ok_or(RequestError::NoModel)?;
    let stream = match fields.get("stream") {
        None => false,
        Some(raw) => match raw.get() {
            "null" => false,
            text => serde_json::from_str::<bool>(text).map_err(|_| RequestError::BadStream)?,
        },
    };
    let mut max_output = DEFAULT_MAX_OUTPUT;
    for &field in endpoint.output_limits() {
        if let Some(raw) = fields.get(field).filter(|raw| raw.get() != "null") {
            max_output = serde_json::from_str::<u64>(raw.get())
                .ok()
                .filter(|limit| *limit > 0)
                .ok_or(RequestError::BadLimit { field })?;
            break;
        }
    }
    Ok(Parsed {
        fields,
        model,
        stream,
        max_output,
    })
}

impl Parsed {
    /// The body to send upstream: `original` itself when nothing changes.
    pub fn upstream_body(
        mut self,
        endpoint: Endpoint,
        upstream_model: &str,
        original: Bytes,
    ) -> Result<Bytes, RequestError> {
        let mut changed = false;
        if upstream_model != self.model {
            self.fields.insert("model".to_owned(), raw(upstream_model));
            changed = true;
        }
        if endpoint == Endpoint::ChatCompletions && self.stream {
            changed |= include_usage(&mut self.fields)?;
        }
        if !changed {
            return Ok(original);
        }
        let body = serde_json::to_vec(&self.fields)
            .map_err(|error| RequestError::NotJson(error.to_string()))?;
        Ok(Bytes::from(body))
    }
}

/// Sets `stream_options.include_usage`; whether anything changed.
fn include_usage(fields: &mut IndexMap<String, Box<RawValue>>) -> Result<bool, RequestError> {
    let mut options: IndexMap<String, Box<RawValue>> = match fields.get("stream_options") {
        None => IndexMap::new(),
        Some(raw) if raw.get() == "null" => IndexMap::new(),
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| RequestError::BadStreamOptions)?,
    };
    if options
        .get("include_usage")
        .is_some_and(|value| value.get() == "true")
    {
        return Ok(false);
    }
    options.insert("include_usage".to_owned(), raw(&true));
    let text = serde_json::to_string(&options).expect("a map of raw values serializes");
    fields.insert(
        "stream_options".to_owned(),
        RawValue::from_string(text).expect("serde_json wrote valid JSON"),
    );
    Ok(true)
}

fn raw(value: &(impl serde::Serialize + ?Sized)) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("strings and booleans serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_needs_nothing_is_forwarded_byte_for_byte() {
        let body = Bytes::from_static(
            br#"{"model":"m",  "max_tokens":64,"messages":[{"role":"user","content":"hi \u00e9"}],"stream":true}"#,
        );
        let parsed = parse(Endpoint::Messages, &body).unwrap();
        assert_eq!(
            (parsed.model.as_str(), parsed.stream, parsed.max_output),
            ("m", true, 64)
        );
        let out = parsed
            .upstream_body(Endpoint::Messages, "m", body.clone())
            .unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn the_model_is_renamed_and_nested_bytes_and_order_kept() {
        let body = Bytes::from_static(
            br#"{"z":1,"model":"alias","messages":[{"content":"a\u00e9",  "role":"user"}]}"#,
        );
        let parsed = parse(Endpoint::ChatCompletions, &body).unwrap();
        assert_eq!(parsed.max_output, DEFAULT_MAX_OUTPUT);
        let out = parsed
            .upstream_body(Endpoint::ChatCompletions, "real", body)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"z":1,"model":"real","messages":[{"content":"a\u00e9",  "role":"user"}]}"#
        );
    }

    #[test]
    fn openai_streams_ask_for_usage() {
        for (body, expected) in [
            (
                r#"{"model":"m","stream":true}"#,
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"model":"m","stream":true,"stream_options":{"x":2,"include_usage":false}}"#,
                r#"{"model":"m","stream":true,"stream_options":{"x":2,"include_usage":true}}"#,
            ),
        ] {
            let bytes = Bytes::from(body);
            let parsed = parse(Endpoint::ChatCompletions, &bytes).unwrap();
            let out = parsed
                .upstream_body(Endpoint::ChatCompletions, "m", bytes)
                .unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
        }
        // Already asked for: unchanged.
        let bytes = Bytes::from_static(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
        );
        let parsed = parse(Endpoint::ChatCompletions, &bytes).unwrap();
        let out = parsed
            .upstream_body(Endpoint::ChatCompletions, "m", bytes.clone())
            .unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn bad_bodies_are_refused_with_what_is_wrong() {
        for (body, error) in [
            ("[1]", None),
            ("{", None),
            (r#"{"model":"cheap","model":"dear"}"#, None),
            (r#"{"stream":true}"#, Some(RequestError::NoModel)),
            (r#"{"model":7}"#, Some(RequestError::NoModel)),
            (
                r#"{"model":"m","stream":"yes"}"#,
                Some(RequestError::BadStream),
            ),
            (
                r#"{"model":"m","max_tokens":-1}"#,
                Some(RequestError::BadLimit {
                    field: "max_tokens",
                }),
            ),
        ] {
            let got = parse(Endpoint::Messages, body.as_bytes()).unwrap_err();
            match error {
                Some(error) => assert_eq!(got, error, "{body}"),
                None => assert!(matches!(got, RequestError::NotJson(_)), "{body}: {got}"),
            }
        }
        let bytes = Bytes::from_static(br#"{"model":"m","stream":true,"stream_options":3}"#);
        let parsed = parse(Endpoint::ChatCompletions, &bytes).unwrap();
        assert_eq!(
            parsed
                .upstream_body(Endpoint::ChatCompletions, "m", bytes)
                .unwrap_err(),
            RequestError::BadStreamOptions
        );
    }
}
