//! What `POST /api/v1/desktops/{id}/input` accepts: the compositor's
//! control requests (`compositor/src/control.rs` is the wire format),
//! typed and range-checked here at the API's edge, so a malformed request
//! is refused with a 400 before anything reaches a desktop, and the
//! OpenAPI document describes each op exactly.
//!
//! What only the desktop can decide stays its own: whether its keymap can
//! type a character, and whether a window id exists (a 400 `input_refused`
//! from the compositor's answer).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most characters one `text` request types (the compositor's `MAX_TEXT`).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Largest scroll step, in pixels, either way.
const MAX_SCROLL: f64 = 10_000.0;

/// One control request for a desktop's compositor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputRequest {
    /// The windows and the output's size. (Ops without fields are empty
    /// structs: serde lets a unit variant ignore unknown fields.)
    Windows {},
    /// Give window `id` the keyboard.
    Focus { id: u32 },
    /// A key by evdev code (1-767): `{"op":"key","code":28}`.
    #[serde(rename = "key")]
    KeyCode {
        #[schema(minimum = 1, maximum = 767)]
        code: u32,
        #[serde(default)]
        state: KeyAction,
    },
    /// Type text through the keymap (Shift where needed).
    Text {
        #[schema(max_length = 4096)]
        text: String,
    },
    /// Move the pointer to an absolute position, in output pixels.
    Motion { x: f64, y: f64 },
    /// A mouse button: evdev BTN_LEFT..BTN_TASK (272-279).
    Button {
        #[schema(minimum = 272, maximum = 279)]
        button: u32,
        #[serde(default)]
        state: KeyAction,
    },
    /// Scroll by pixels (at most 10000 either way).
    Scroll {
        #[serde(default)]
        #[schema(minimum = -10000, maximum = 10000)]
        dx: f64,
        #[serde(default)]
        #[schema(minimum = -10000, maximum = 10000)]
        dy: f64,
    },
    /// Every held key and button up.
    ReleaseAll {},
    /// Resize the output: even sizes, 64×64 to 7680×4320.
    Output {
        #[schema(minimum = 64, maximum = 7680, multiple_of = 2)]
        width: u32,
        #[schema(minimum = 64, maximum = 4320, multiple_of = 2)]
        height: u32,
    },
}

/// A key's transition; a tap (press then release) by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    Press,
    Release,
    #[default]
    Tap,
}

/// A key by its xkb keysym name (`Return`, `ctrl+c` is two requests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyName {
    /// Always `key`.
    #[schema(pattern = "^key$")]
    pub op: String,
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
}

/// Either form of a request: the tagged ops, or a key by name (the one
/// op whose fields are one of two shapes).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum InputBody {
    Op(InputRequest),
    KeyName(KeyName),
}

/// Why an input request was refused at the edge.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("an input request is a JSON object with an \"op\": {0}")]
    Malformed(String),
    #[error("text longer than {MAX_TEXT_CHARS} characters")]
    TextTooLong,
    #[error("{field} must be a finite number")]
    NotFinite { field: &'static str },
    #[error("scroll amounts are at most {MAX_SCROLL} either way")]
    Scroll,
    #[error("key code {0} is outside 1-767")]
    KeyCode(u32),
    #[error("a key name is 1-64 characters")]
    KeyNameLength,
    #[error("button {0} is not a mouse button (272-279)")]
    Button(u32),
    #[error("an output of {0}×{1}: sizes are even, 64×64 to 7680×4320")]
    Output(u32, u32),
}

impl InputBody {
    /// Checks one request (a JSON object). A key by name is told apart by its
    /// `name`, so each malformed request gets its own op's error.
    pub fn from_value(value: serde_json::Value) -> Result<InputBody, InputError> {
        let malformed = |error: serde_json::Error| InputError::Malformed(error.to_string());
        let by_name = value.get("op").and_then(|op| op.as_str()) == Some("key")
            && value.get("name").is_some();
        let body = if by_name {
            InputBody::KeyName(serde_json::from_value(value).map_err(malformed)?)
        } else {
            InputBody::Op(serde_json::from_value(value).map_err(malformed)?)
        };
        body.validate()?;
        Ok(body)
    }

    /// Checks the ranges the types alone cannot; the request the
    /// compositor receives is exactly what was accepted.
    fn validate(&self) -> Result<(), InputError> {
        match self {
            InputBody::KeyName(key) => {
                let length = key.name.chars().count();
                if key.op != "key" || !(1..=64).contains(&length) {
                    return Err(InputError::KeyNameLength);
                }
                Ok(())
            }
            InputBody::Op(request) => request.validate(),
        }
    }
}

impl InputRequest {
    fn validate(&self) -> Result<(), InputError> {
        match *self {
            InputRequest::KeyCode { code, .. } if !(1..=767).contains(&code) => {
                Err(InputError::KeyCode(code))
            }
            InputRequest::Text { ref text } if text.chars().count() > MAX_TEXT_CHARS => {
                Err(InputError::TextTooLong)
            }
            InputRequest::Motion { x, y } => {
                for (field, value) in [("x", x), ("y", y)] {
                    if !value.is_finite() {
                        return Err(InputError::NotFinite { field });
                    }
                }
                Ok(())
            }
            InputRequest::Button { button, .. } if !(272..=279).contains(&button) => {
                Err(InputError::Button(button))
            }
            InputRequest::Scroll { dx, dy }
                if !dx.is_finite()
                    || !dy.is_finite()
                    || dx.abs() > MAX_SCROLL
                    || dy.abs() > MAX_SCROLL =>
            {
                Err(InputError::Scroll)
            }
            InputRequest::Output { width, height }
                if !(64..=7680).contains(&width)
                    || !(64..=4320).contains(&height)
                    || width % 2 != 0
                    || height % 2 != 0 =>
            {
                Err(InputError::Output(width, height))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<InputBody, String> {
        let value = serde_json::from_str(json).map_err(|error| error.to_string())?;
        InputBody::from_value(value).map_err(|error| error.to_string())
    }

    #[test]
    fn every_op_the_cli_and_board_send_is_accepted() {
        for json in [
            r#"{"op":"windows"}"#,
            r#"{"op":"focus","id":2}"#,
            r#"{"op":"key","code":28,"state":"press"}"#,
            r#"{"op":"key","name":"Return"}"#,
            r#"{"op":"text","text":"ls -l\n"}"#,
            r#"{"op":"motion","x":10.5,"y":20}"#,
            r#"{"op":"button","button":272,"state":"release"}"#,
            r#"{"op":"scroll","dy":15}"#,
            r#"{"op":"release_all"}"#,
            r#"{"op":"output","width":1920,"height":1080}"#,
        ] {
            assert!(parse(json).is_ok(), "{json}: {:?}", parse(json));
            // What the compositor receives is what was sent.
            let sent: serde_json::Value = serde_json::from_str(json).unwrap();
            let forwarded =
                serde_json::to_value(InputBody::from_value(sent.clone()).unwrap()).unwrap();
            for (key, value) in sent.as_object().unwrap() {
                let same = match (forwarded.get(key), value.as_f64()) {
                    (Some(forwarded), Some(number)) => forwarded.as_f64() == Some(number),
                    (forwarded, _) => forwarded == Some(value),
                };
                assert!(same, "{json}: {key} became {:?}", forwarded.get(key));
            }
        }
    }

    #[test]
    fn malformed_requests_are_refused_before_a_desktop() {
        for json in [
            r#""""#,
            r#"{}"#,
            r#"{"op":"fly"}"#,
            r#"{"op":"windows","extra":1}"#,
            r#"{"op":"key"}"#,
            r#"{"op":"key","code":0}"#,
            r#"{"op":"key","code":28,"name":"Return"}"#,
            r#"{"op":"key","name":""}"#,
            r#"{"op":"button","button":1}"#,
            r#"{"op":"scroll","dx":20000}"#,
            r#"{"op":"output","width":1921,"height":1080}"#,
            r#"{"op":"output","width":32,"height":1080}"#,
            r#"{"op":"watched","watched":true}"#,
        ] {
            assert!(parse(json).is_err(), "{json} was accepted");
        }
        let long = format!(
            r#"{{"op":"text","text":"{}"}}"#,
            "a".repeat(MAX_TEXT_CHARS + 1)
        );
        assert_eq!(
            parse(&long),
            Err("text longer than 4096 characters".to_owned())
        );
    }
}
