//! Which key (and whether Shift) types each character, from the same xkb
//! keymap the seat's keyboard uses (libxkbcommon's defaults, or the
//! `XKB_DEFAULT_*` environment): what `text` and named keys of the control
//! socket go through.

use std::collections::HashMap;

use smithay::input::keyboard::xkb;

/// Why a keyboard name or keymap was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeymapError {
    #[error("longer than 64 characters")]
    NameTooLong,
    #[error("{character:?} is not in an xkb name (a-z, 0-9, _ , - ( ))")]
    NameCharacter { character: char },
    #[error("no xkb keymap for layout {layout:?} variant {variant:?} (unknown, or xkb-data is not installed)")]
    NoKeymap { layout: String, variant: String },
}

/// evdev's KEY_LEFTSHIFT.
pub const LEFT_SHIFT: u32 = 42;

pub struct Keymap {
    /// keysym → (evdev code, needs Shift), the first key that makes it.
    by_keysym: HashMap<u32, (u32, bool)>,
}

/// Checks an xkb layout or variant name from the command line: short,
/// and only the characters xkb's names use (`us`, `de`, `fr`, `us,de`,
/// `dvorak`, `nodeadkeys`...); empty means xkb's default.
pub fn check_name(name: &str) -> Result<String, KeymapError> {
    if name.len() > 64 {
        return Err(KeymapError::NameTooLong);
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_,-()".contains(*c)))
    {
        return Err(KeymapError::NameCharacter { character: bad });
    }
    Ok(name.to_owned())
}

impl Keymap {
    /// The keymap of xkb `layout` and `variant` (empty: xkb's default,
    /// `us`), the one the seat gives clients.
    pub fn new(layout: &str, variant: &str) -> Result<Keymap, KeymapError> {
        let context = xkb::Context::new(xkb::CONTEXT_NO_FLAGS);
        let keymap = xkb::Keymap::new_from_names(
            &context,
            "",
            "",
            layout,
            variant,
            None,
            xkb::KEYMAP_COMPILE_NO_FLAGS,
        )
        .ok_or_else(|| KeymapError::NoKeymap {
            layout: layout.to_owned(),
            variant: variant.to_owned(),
        })?;
        let mut by_keysym = HashMap::new();
        let (min, max) = (keymap.min_keycode().raw(), keymap.max_keycode().raw());
        // Level 0 of every key first, then level 1 (Shift): a keysym both
        // can make is typed without Shift.
        for level in 0..2 {
            for raw in min.max(8)..=max {
                let code = xkb::Keycode::new(raw);
                if keymap.num_levels_for_key(code, 0) <= level {
                    continue;
                }
                for sym in keymap.key_get_syms_by_level(code, 0, level) {
                    by_keysym.entry(sym.raw()).or_insert((raw - 8, level == 1));
                }
            }
        }
        Ok(Keymap { by_keysym })
    }

    /// The key (evdev code) and Shift that type `c`; None if the keymap
    /// has no key for it.
    pub fn for_char(&self, c: char) -> Option<(u32, bool)> {
        let sym = match c {
            '\n' | '\r' => xkb::keysyms::KEY_Return,
            '\t' => xkb::keysyms::KEY_Tab,
            '\u{8}' => xkb::keysyms::KEY_BackSpace,
            '\u{1b}' => xkb::keysyms::KEY_Escape,
            c => xkb::utf32_to_keysym(c as u32).raw(),
        };
        self.by_keysym.get(&sym).copied()
    }

    /// The key for an xkb keysym name (`Return`, `a`, `F5`, `Control_L`).
    pub fn for_name(&self, name: &str) -> Option<(u32, bool)> {
        let sym = xkb::keysym_from_name(name, xkb::KEYSYM_NO_FLAGS).raw();
        if sym == 0 {
            return None;
        }
        self.by_keysym.get(&sym).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keymap_types_ascii() {
        let keymap = Keymap::new("", "").expect("a keymap (xkb-data)");
        assert_eq!(keymap.for_char('a'), Some((30, false)));
        assert_eq!(keymap.for_char('A'), Some((30, true)));
        assert_eq!(keymap.for_char('\n'), Some((28, false)));
        assert_eq!(keymap.for_char('>'), Some((52, true)));
        assert_eq!(keymap.for_char(' '), Some((57, false)));
        assert_eq!(keymap.for_name("Return"), Some((28, false)));
        assert_eq!(keymap.for_name("Control_L"), Some((29, false)));
        // Not on a US keyboard; not a keysym at all.
        assert_eq!(keymap.for_char('é'), None);
        assert_eq!(keymap.for_name("NoSuchKey"), None);
    }

    #[test]
    fn layouts_are_named_and_checked() {
        for good in [
            "",
            "us",
            "de",
            "us,de",
            "dvorak",
            "mac_nodeadkeys",
            "latin9(basic)",
        ] {
            assert_eq!(check_name(good).as_deref(), Ok(good));
        }
        for bad in ["US", "us;rm -rf", "../x", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let fr = Keymap::new("fr", "").expect("fr in xkb-data");
        // AZERTY: the key that is Q on a US keyboard types a.
        assert_eq!(fr.for_char('a'), Some((16, false)));
        assert!(fr.for_char('é').is_some());
        assert!(Keymap::new("nosuchlayout", "").is_err());
    }
}
