//! The control socket (for the node agent): JSON lines over a Unix stream
//! socket, one request per line, one answer per line:
//!
//! ```text
//! {"op":"windows"}                              → {"ok":true,"output":{"width","height"},"windows":[{"id","title","app_id","x","y","width","height","focused","popups":[{"x","y","width","height"}]}]}
//! {"op":"focus","id":2}                         → {"ok":true}
//! {"op":"key","code":28,"state":"press"}        evdev code (1-767); state press|release|tap (default tap)
//! {"op":"key","name":"Return"}                  an xkb keysym name, tapped
//! {"op":"text","text":"ls -l\n"}                typed through the keymap (Shift where needed)
//! {"op":"motion","x":10.5,"y":20}               absolute, output pixels
//! {"op":"button","button":272,"state":"press"}  evdev BTN_LEFT..BTN_TASK (272-279)
//! {"op":"scroll","dx":0,"dy":15}                pixels
//! {"op":"release_all"}                          every held key and button up
//! {"op":"output","width":1920,"height":1080}   resize the output (even, 64×64 to 7680×4320)
//! {"op":"watched","watched":true}               someone watches: frames at the output's refresh
//!                                               (false, the start: at most 10 a second)
//!                                               → {"ok":true,"frame_period_us":N}
//! ```
//!
//! Errors: `{"ok":false,"error":"..."}` — malformed JSON, unknown ops or
//! fields, out-of-range values, text with a character the keymap cannot
//! type (nothing of that text is typed) — and the connection stays usable.
//! A connection that goes away releases everything it held down, so a
//! dropped controller never leaves a stuck key.
//!
//! Parsing and validation run on the socket's thread; the compositor's
//! loop executes requests (it owns the seat) and answers through a channel.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;

use serde::Deserialize;
use smithay::reexports::calloop::channel::Sender;

use crate::options::{MAX_OUTPUT, MIN_OUTPUT};

mod execute;

/// Why a request line was refused; its text is the answer's `error`.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("bad request: {0}")]
    Json(#[source] serde_json::Error),
    #[error("a request is a JSON object with an \"op\"")]
    NotAnObject,
    #[error("unknown op {op:?}")]
    UnknownOp { op: String },
    #[error("a request needs an \"op\"")]
    NoOp,
    #[error("unknown field {field:?}")]
    UnknownField { field: String },
    #[error("bad request: {0}")]
    Fields(#[source] serde_json::Error),
    #[error("key code {code} is outside 1-767")]
    KeyCode { code: u32 },
    #[error("a key name is 1-64 characters")]
    KeyName,
    #[error("a key needs exactly one of code and name")]
    KeyCodeOrName,
    #[error("text longer than {MAX_TEXT} characters")]
    TextTooLong,
    #[error("a position must be a finite number")]
    Position,
    #[error(
        "an output of {width}×{height}: sizes are even, {min}×{min} to {}×{}",
        MAX_OUTPUT.0,
        MAX_OUTPUT.1,
        min = MIN_OUTPUT
    )]
    OutputSize { width: u32, height: u32 },
    #[error("button {button} is not a mouse button (272-279, BTN_LEFT..BTN_TASK)")]
    Button { button: u32 },
    #[error("scroll amounts must be finite and at most 10000")]
    Scroll,
}

/// Longest request line.
const MAX_LINE: usize = 64 * 1024;
/// Most characters one `text` request types.
pub const MAX_TEXT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    Press,
    Release,
    #[default]
    Tap,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Windows,
    Focus {
        id: u32,
    },
    Key {
        code: Option<u32>,
        name: Option<String>,
        #[serde(default)]
        state: KeyAction,
    },
    Text {
        text: String,
    },
    Motion {
        x: f64,
        y: f64,
    },
    Button {
        button: u32,
        #[serde(default)]
        state: KeyAction,
    },
    Scroll {
        #[serde(default)]
        dx: f64,
        #[serde(default)]
        dy: f64,
    },
    ReleaseAll,
    Output {
        width: u32,
        height: u32,
    },
    Watched {
        watched: bool,
    },
}

impl Request {
    /// Checks what the request alone can show.
    pub fn validate(&self) -> Result<(), ControlError> {
        match self {
            Request::Key { code, name, .. } => match (code, name) {
                (Some(code), None) if (1..=767).contains(code) => Ok(()),
                (Some(code), None) => Err(ControlError::KeyCode { code: *code }),
                (None, Some(name)) if !name.is_empty() && name.len() <= 64 => Ok(()),
                (None, Some(_)) => Err(ControlError::KeyName),
                _ => Err(ControlError::KeyCodeOrName),
            },
            Request::Text { text } if text.chars().count() > MAX_TEXT => {
                Err(ControlError::TextTooLong)
            }
            Request::Motion { x, y } if !x.is_finite() || !y.is_finite() => {
                Err(ControlError::Position)
            }
            Request::Output { width, height }
                if !(MIN_OUTPUT..=MAX_OUTPUT.0).contains(width)
                    || !(MIN_OUTPUT..=MAX_OUTPUT.1).contains(height)
                    || width % 2 != 0
                    || height % 2 != 0 =>
            {
                Err(ControlError::OutputSize {
                    width: *width,
                    height: *height,
                })
            }
            Request::Button { button, .. } if !(272..=279).contains(button) => {
                Err(ControlError::Button { button: *button })
            }
            Request::Scroll { dx, dy }
                if !dx.is_finite()
                    || !dy.is_finite()
                    || dx.abs() > 10_000.0
                    || dy.abs() > 10_000.0 =>
            {
                Err(ControlError::Scroll)
            }
            _ => Ok(()),
        }
    }
}

/// A request for the compositor's loop and where its answer goes.
pub struct Call {
    pub request: Request,
    /// Which connection sent it (its held keys are released when it goes).
    pub connection: u64,
    pub reply: mpsc::Sender<serde_json::Value>,
}

/// Parses one line into a validated request.
pub fn parse(line: &str) -> Result<Request, ControlError> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(ControlError::Json)?;
    let object = value.as_object().ok_or(ControlError::NotAnObject)?;
    // serde cannot refuse unknown fields of a tagged enum's unit variants:
    // every op's fields, checked here.
    let allowed: &[&str] = match object.get("op").and_then(|op| op.as_str()) {
        Some("windows" | "release_all") => &[],
        Some("focus") => &["id"],
        Some("key") => &["code", "name", "state"],
        Some("text") => &["text"],
        Some("motion") => &["x", "y"],
        Some("button") => &["button", "state"],
        Some("scroll") => &["dx", "dy"],
        Some("output") => &["width", "height"],
        Some("watched") => &["watched"],
        Some(op) => return Err(ControlError::UnknownOp { op: op.to_owned() }),
        None => return Err(ControlError::NoOp),
    };
    if let Some(field) = object
        .keys()
        .find(|key| *key != "op" && !allowed.contains(&key.as_str()))
    {
        return Err(ControlError::UnknownField {
            field: field.clone(),
        });
    }
    let request: Request = serde_json::from_value(value).map_err(ControlError::Fields)?;
    request.validate()?;
    Ok(request)
}

fn error(message: impl Into<String>) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": message.into()})
}

/// Serves the control socket at `path` on threads of its own, passing
/// requests to the compositor's loop through `calls`.
pub fn serve(path: &Path, calls: Sender<Call>) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("control".to_owned())
        .spawn(move || {
            for (connection, stream) in (1u64..).zip(listener.incoming()) {
                let Ok(stream) = stream else {
                    continue;
                };
                let calls = calls.clone();
                let _ = std::thread::Builder::new()
                    .name("control-connection".to_owned())
                    .spawn(move || connection_loop(stream, connection, &calls));
            }
        })?;
    Ok(())
}

fn connection_loop(stream: UnixStream, connection: u64, calls: &Sender<Call>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let read = Read::by_ref(&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line);
        let answer = match read {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_LINE => {
                let _ = writeln!(writer, "{}", error("request line too long"));
                break;
            }
            Ok(_) if line.trim().is_empty() => continue,
            Ok(_) => match parse(line.trim()) {
                Err(refused) => error(refused.to_string()),
                Ok(request) => {
                    let (reply, answer) = mpsc::channel();
                    if calls
                        .send(Call {
                            request,
                            connection,
                            reply,
                        })
                        .is_err()
                    {
                        break;
                    }
                    answer
                        .recv()
                        .unwrap_or_else(|_| error("the compositor is stopping"))
                }
            },
        };
        if writeln!(writer, "{answer}").is_err() {
            break;
        }
    }
    // Gone: whatever it held goes up.
    let (reply, answer) = mpsc::channel();
    if calls
        .send(Call {
            request: Request::ReleaseAll,
            connection,
            reply,
        })
        .is_ok()
    {
        let _ = answer.recv();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_are_refused() {
        assert_eq!(parse(r#"{"op":"windows"}"#).ok(), Some(Request::Windows));
        assert_eq!(
            parse(r#"{"op":"watched","watched":true}"#).ok(),
            Some(Request::Watched { watched: true })
        );
        assert!(parse(r#"{"op":"watched","watched":1}"#).is_err());
        assert!(parse(r#"{"op":"watched","watched":true,"rate":5}"#).is_err());
        assert_eq!(
            parse(r#"{"op":"key","code":28}"#).ok(),
            Some(Request::Key {
                code: Some(28),
                name: None,
                state: KeyAction::Tap
            })
        );
        for bad in [
            "",
            "{",
            "[]",
            r#"{"op":"fly"}"#,
            r#"{"op":"key"}"#,
            r#"{"op":"key","code":0}"#,
            r#"{"op":"key","code":768}"#,
            r#"{"op":"key","code":28,"name":"Return"}"#,
            r#"{"op":"key","name":""}"#,
            r#"{"op":"key","code":28,"state":"hold"}"#,
            r#"{"op":"button","button":1}"#,
            r#"{"op":"scroll","dy":1e9}"#,
            r#"{"op":"windows","extra":1}"#,
            r#"{"op":"motion","x":"a","y":1}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let long = format!(r#"{{"op":"text","text":"{}"}}"#, "a".repeat(MAX_TEXT + 1));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn refusals_answer_the_protocols_texts() {
        let text = |line: &str| parse(line).expect_err(line).to_string();
        assert_eq!(text(r#"{"op":"fly"}"#), r#"unknown op "fly""#);
        assert_eq!(text("[]"), r#"a request is a JSON object with an "op""#);
        assert_eq!(text(r#"{"x":1}"#), r#"a request needs an "op""#);
        assert_eq!(
            text(r#"{"op":"windows","extra":1}"#),
            r#"unknown field "extra""#
        );
        assert_eq!(
            text(r#"{"op":"key","code":768}"#),
            "key code 768 is outside 1-767"
        );
        assert_eq!(
            text(r#"{"op":"output","width":63,"height":64}"#),
            "an output of 63×64: sizes are even, 64×64 to 7680×4320"
        );
        assert_eq!(
            text(r#"{"op":"button","button":1}"#),
            "button 1 is not a mouse button (272-279, BTN_LEFT..BTN_TASK)"
        );
        assert!(text("{").starts_with("bad request: "));
        assert!(text(r#"{"op":"motion","x":"a","y":1}"#).starts_with("bad request: "));
    }
}
