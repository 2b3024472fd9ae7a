//! What a viewer sends on its WebSocket (text messages, JSON), checked,
//! and turned into the compositor's control requests.
//!
//! ```text
//! {"type":"take_control"}                    take the keyboard and mouse (announced to all)
//! {"type":"release_control"}                 hand them back (every held key released)
//! {"type":"keyframe"}                        ask for a keyframe (a decoder error)
//! {"type":"ack","sequence":N}                 every frame up to sequence N arrived (see below)
//! {"type":"key","code":"KeyA","down":true}   a physical key (KeyboardEvent.code)
//! {"type":"motion","x":10,"y":20}            pointer, output pixels
//! {"type":"button","button":0,"down":true}   MouseEvent.button: 0 left, 1 middle, 2 right, 3 back, 4 forward
//! {"type":"scroll","dx":0,"dy":40}           wheel, pixels
//! {"type":"paste","text":"..."}              typed through the desktop's keymap (at most 4096 characters)
//! {"type":"release_all"}                     every held key and button up (sent on blur)
//! ```
//!
//! Acknowledgements pace the stream: the server sends at most
//! [`crate::hub::WINDOW`] frames that are not yet acknowledged, so a
//! viewer acknowledges each frame (or every few) as it receives it; one
//! that never does gets that many frames and then only events.
//!
//! Anything else — unknown types or fields, unknown key codes, numbers
//! out of range, text too long — is refused with a reason and changes
//! nothing.

use serde::Deserialize;

/// Why a viewer's message was refused; its text is the error event the
/// viewer gets.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("a message is at most {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("not a viewer message: {0}")]
    Json(#[source] serde_json::Error),
    #[error("unknown key code {code:?}")]
    KeyCode { code: String },
    #[error("a position must be finite")]
    Position,
    #[error("mouse button {button} (0-4)")]
    Button { button: u8 },
    #[error("scroll amounts must be finite and at most 10000")]
    Scroll,
    #[error("a paste is at most {MAX_PASTE} characters")]
    PasteTooLong,
}

/// Most characters one paste types.
pub const MAX_PASTE: usize = 4096;
/// Longest message accepted.
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ViewerMessage {
    TakeControl,
    ReleaseControl,
    Keyframe,
    Ack {
        sequence: u64,
    },
    Key {
        code: String,
        down: bool,
    },
    Motion {
        x: f64,
        y: f64,
    },
    Button {
        button: u8,
        down: bool,
    },
    Scroll {
        #[serde(default)]
        dx: f64,
        #[serde(default)]
        dy: f64,
    },
    Paste {
        text: String,
    },
    ReleaseAll,
}

impl ViewerMessage {
    /// Parses and checks one message.
    pub fn parse(text: &str) -> Result<ViewerMessage, InputError> {
        if text.len() > MAX_MESSAGE {
            return Err(InputError::TooLong);
        }
        let message: ViewerMessage = serde_json::from_str(text).map_err(InputError::Json)?;
        match &message {
            ViewerMessage::Key { code, .. } if evdev(code).is_none() => {
                Err(InputError::KeyCode { code: code.clone() })
            }
            ViewerMessage::Motion { x, y } if !x.is_finite() || !y.is_finite() => {
                Err(InputError::Position)
            }
            ViewerMessage::Button { button, .. } if *button > 4 => {
                Err(InputError::Button { button: *button })
            }
            ViewerMessage::Scroll { dx, dy }
                if !dx.is_finite()
                    || !dy.is_finite()
                    || dx.abs() > 10_000.0
                    || dy.abs() > 10_000.0 =>
            {
                Err(InputError::Scroll)
            }
            ViewerMessage::Paste { text } if text.chars().count() > MAX_PASTE => {
                Err(InputError::PasteTooLong)
            }
            _ => Ok(message),
        }
    }

    /// Whether this message is input (needs control).
    pub fn is_input(&self) -> bool {
        !matches!(
            self,
            ViewerMessage::TakeControl
                | ViewerMessage::ReleaseControl
                | ViewerMessage::Keyframe
                | ViewerMessage::Ack { .. }
        )
    }

    /// The compositor control request for an input message.
    pub fn control_request(&self) -> Option<serde_json::Value> {
        let state = |down: bool| if down { "press" } else { "release" };
        Some(match self {
            ViewerMessage::Key { code, down } => {
                serde_json::json!({"op": "key", "code": evdev(code)?, "state": state(*down)})
            }
            ViewerMessage::Motion { x, y } => serde_json::json!({"op": "motion", "x": x, "y": y}),
            ViewerMessage::Button { button, down } => {
                // BTN_LEFT, BTN_MIDDLE, BTN_RIGHT, BTN_SIDE, BTN_EXTRA.
                let code = [272, 274, 273, 275, 276][usize::from(*button)];
                serde_json::json!({"op": "button", "button": code, "state": state(*down)})
            }
            ViewerMessage::Scroll { dx, dy } => {
                serde_json::json!({"op": "scroll", "dx": dx, "dy": dy})
            }
            ViewerMessage::Paste { text } => serde_json::json!({"op": "text", "text": text}),
            ViewerMessage::ReleaseAll => serde_json::json!({"op": "release_all"}),
            _ => return None,
        })
    }
}

/// The evdev key code of a browser `KeyboardEvent.code` (the physical
/// key, whatever the viewer's layout).
pub fn evdev(code: &str) -> Option<u32> {
    if let Some(letter) = code.strip_prefix("Key") {
        const LETTERS: [u32; 26] = [
            30, 48, 46, 32, 18, 33, 34, 35, 23, 36, 37, 38, 50, 49, 24, 25, 16, 19, 31, 20, 22, 47,
            17, 45, 21, 44,
        ];
        let c = letter.as_bytes();
        if c.len() == 1 && c[0].is_ascii_uppercase() {
            return Some(LETTERS[usize::from(c[0] - b'A')]);
        }
        return None;
    }
    if let Some(digit) = code.strip_prefix("Digit") {
        return match digit.parse::<u32>().ok()? {
            0 => Some(11),
            d @ 1..=9 => Some(d + 1),
            _ => None,
        };
    }
    if let Some(n) = code.strip_prefix('F').and_then(|n| n.parse::<u32>().ok()) {
        return match n {
            1..=10 => Some(58 + n),
            11 => Some(87),
            12 => Some(88),
            _ => None,
        };
    }
    Some(match code {
        "Escape" => 1,
        "Minus" => 12,
        "Equal" => 13,
        "Backspace" => 14,
        "Tab" => 15,
        "BracketLeft" => 26,
        "BracketRight" => 27,
        "Enter" => 28,
        "ControlLeft" => 29,
        "Semicolon" => 39,
        "Quote" => 40,
        "Backquote" => 41,
        "ShiftLeft" => 42,
        "Backslash" => 43,
        "Comma" => 51,
        "Period" => 52,
        "Slash" => 53,
        "ShiftRight" => 54,
        "NumpadMultiply" => 55,
        "AltLeft" => 56,
        "Space" => 57,
        "CapsLock" => 58,
        "NumLock" => 69,
        "ScrollLock" => 70,
        "Numpad7" => 71,
        "Numpad8" => 72,
        "Numpad9" => 73,
        "NumpadSubtract" => 74,
        "Numpad4" => 75,
        "Numpad5" => 76,
        "Numpad6" => 77,
        "NumpadAdd" => 78,
        "Numpad1" => 79,
        "Numpad2" => 80,
        "Numpad3" => 81,
        "Numpad0" => 82,
        "NumpadDecimal" => 83,
        "IntlBackslash" => 86,
        "NumpadEnter" => 96,
        "ControlRight" => 97,
        "NumpadDivide" => 98,
        "PrintScreen" => 99,
        "AltRight" => 100,
        "Home" => 102,
        "ArrowUp" => 103,
        "PageUp" => 104,
        "ArrowLeft" => 105,
        "ArrowRight" => 106,
        "End" => 107,
        "ArrowDown" => 108,
        "PageDown" => 109,
        "Insert" => 110,
        "Delete" => 111,
        "Pause" => 119,
        "MetaLeft" => 125,
        "MetaRight" => 126,
        "ContextMenu" => 127,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_evdev() {
        assert_eq!(evdev("KeyA"), Some(30));
        assert_eq!(evdev("KeyZ"), Some(44));
        assert_eq!(evdev("KeyQ"), Some(16));
        assert_eq!(evdev("Digit0"), Some(11));
        assert_eq!(evdev("Digit1"), Some(2));
        assert_eq!(evdev("F1"), Some(59));
        assert_eq!(evdev("F12"), Some(88));
        assert_eq!(evdev("Enter"), Some(28));
        assert_eq!(evdev("ShiftLeft"), Some(42));
        for bad in ["Keya", "KeyAB", "Digit10", "F13", "F", "Nope", ""] {
            assert_eq!(evdev(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_are_checked() {
        let key = ViewerMessage::parse(r#"{"type":"key","code":"KeyA","down":true}"#).unwrap();
        assert!(key.is_input());
        assert_eq!(
            key.control_request().unwrap(),
            serde_json::json!({"op":"key","code":30,"state":"press"})
        );
        let button = ViewerMessage::parse(r#"{"type":"button","button":2,"down":false}"#).unwrap();
        assert_eq!(button.control_request().unwrap()["button"], 273);
        assert!(!ViewerMessage::parse(r#"{"type":"take_control"}"#)
            .unwrap()
            .is_input());
        for bad in [
            "not json",
            r#"{"type":"nope"}"#,
            r#"{"type":"key","code":"Blah","down":true}"#,
            r#"{"type":"key","code":"KeyA","down":true,"extra":1}"#,
            r#"{"type":"button","button":9,"down":true}"#,
            r#"{"type":"scroll","dy":1e9}"#,
        ] {
            assert!(ViewerMessage::parse(bad).is_err(), "{bad}");
        }
        let long = serde_json::json!({"type":"paste","text":"a".repeat(MAX_PASTE + 1)}).to_string();
        assert!(ViewerMessage::parse(&long).is_err());
        // The texts are what the viewer's error events say.
        let text = |message: &str| ViewerMessage::parse(message).unwrap_err().to_string();
        assert_eq!(
            text(r#"{"type":"key","code":"Blah","down":true}"#),
            r#"unknown key code "Blah""#
        );
        assert_eq!(
            text(r#"{"type":"button","button":9,"down":true}"#),
            "mouse button 9 (0-4)"
        );
        assert_eq!(text(&long), "a paste is at most 4096 characters");
        assert!(text("not json").starts_with("not a viewer message: "));
    }
}
