//! Value parsers for flags that several commands share: sizes (`--memory
//! 8GiB`), durations (`--deadline 30m`) and labels (`--label gpu=h200`).
//!
//! Sizes are read by `bytesize` and durations by `humantime`; what stays here
//! is Flotilla's policy on top: every size unit is binary (`G`, `GB` and
//! `GiB` all mean 2^30, as operators mean them and as the CLI always read
//! them, where `bytesize` alone reads `GB` as 10^9), and sizes stop at 2^63.

use std::time::Duration;

/// A flag value that does not parse; clap prints the message after the
/// flag's name.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{text:?} is not a size; use e.g. 2GiB, 512MiB or a byte count")]
    NotASize { text: String },
    #[error("unknown size unit {unit:?} in {text:?}; use KiB, MiB, GiB or TiB")]
    UnknownSizeUnit { text: String, unit: String },
    #[error("{text:?} is out of range")]
    SizeOutOfRange { text: String },
    #[error("{text:?} is not a duration; use e.g. 30s, 5m, 1h30m or 250ms")]
    NotADuration {
        text: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("{text:?} is not a label; use key=value")]
    NotALabel { text: String },
    /// The server's rules for label keys and values refuse it.
    #[error("{reason}")]
    BadLabel { text: String, reason: String },
}

/// A byte size: `2147483648`, `512MiB`, `2GiB`, `1.5G`, `1TiB`; `K`, `M`,
/// `G`, `T`, with or without `B` or `iB`, any case, all binary.
pub fn parse_bytes(text: &str) -> Result<u64, ParseError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let binary_unit = match unit.as_str() {
        "" | "b" => Some("B"),
        "k" | "kb" | "kib" => Some("KiB"),
        "m" | "mb" | "mib" => Some("MiB"),
        "g" | "gb" | "gib" => Some("GiB"),
        "t" | "tb" | "tib" => Some("TiB"),
        _ => None,
    };
    // The number is checked before the unit, so `lots` is "not a size".
    let size: bytesize::ByteSize = format!("{number} {}", binary_unit.unwrap_or("B"))
        .parse()
        .map_err(|_| ParseError::NotASize {
            text: text.to_owned(),
        })?;
    if binary_unit.is_none() {
        return Err(ParseError::UnknownSizeUnit {
            text: text.to_owned(),
            unit,
        });
    }
    // Compared as f64, so 2^63 itself is still accepted, as it always was.
    if size.as_u64() as f64 > u64::MAX as f64 / 2.0 {
        return Err(ParseError::SizeOutOfRange {
            text: text.to_owned(),
        });
    }
    Ok(size.as_u64())
}

/// A duration in `humantime`'s syntax: `250ms`, `30s`, `5m`, `2h`, `1d`,
/// `1h30m` (also `1h 30m`, `90 min`, `1.5h`).
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let text = text.trim();
    humantime::parse_duration(text).map_err(|source| ParseError::NotADuration {
        text: text.to_owned(),
        source,
    })
}

/// `key=value` into a pair, checked as the server would check it.
pub fn parse_label(text: &str) -> Result<(String, String), ParseError> {
    let (key, value) = text.split_once('=').ok_or_else(|| ParseError::NotALabel {
        text: text.to_owned(),
    })?;
    flotilla_control_plane::types::validate_label(key, value).map_err(|error| {
        ParseError::BadLabel {
            text: text.to_owned(),
            reason: error.to_string(),
        }
    })?;
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// Every size accepted before `bytesize`, with what it meant.
    const SIZES_ACCEPTED: &[(&str, u64)] = &[
        ("0", 0),
        ("1", 1),
        ("4096", 4096),
        ("2147483648", 2 * GIB),
        ("9007199254740992", 1 << 53),
        ("10b", 10),
        ("10B", 10),
        ("64k", 64 << 10),
        ("64K", 64 << 10),
        ("64kb", 64 << 10),
        ("64KB", 64 << 10),
        ("64KiB", 64 << 10),
        ("64kib", 64 << 10),
        ("512m", 512 << 20),
        ("512M", 512 << 20),
        ("512MB", 512 << 20),
        ("512MiB", 512 << 20),
        ("2g", 2 * GIB),
        ("2G", 2 * GIB),
        ("2GB", 2 * GIB),
        ("2gb", 2 * GIB),
        ("2GiB", 2 * GIB),
        ("2GIB", 2 * GIB),
        ("1t", 1 << 40),
        ("1TB", 1 << 40),
        ("1TiB", 1 << 40),
        ("1.5G", 3 << 29),
        ("1.5GiB", 3 << 29),
        ("0.5K", 512),
        (".5K", 512),
        ("5.", 5),
        ("5.MiB", 5 << 20),
        ("0.1K", 102),
        ("2 GiB", 2 * GIB),
        ("2   GiB", 2 * GIB),
        (" 2GiB ", 2 * GIB),
        ("\t64MiB\n", 64 << 20),
        ("8388607TiB", 8_388_607 << 40),
        ("8388608TiB", 1 << 63),
    ];

    /// Every size refused before `bytesize`, still refused.
    const SIZES_REJECTED: &[&str] = &[
        "",
        "   ",
        "GiB",
        "lots",
        "-1",
        "-1GiB",
        "+1",
        "1e3",
        "1.2.3G",
        ".",
        "..K",
        "2 furlongs",
        "2XB",
        "2 G B",
        "2KiBs",
        "2PiB",
        "2P",
        "2EiB",
        "2Ki",
        "2Mi",
        "2Gi",
        "8388609TiB",
        "99999999999TiB",
        "18446744073709551615",
        "99999999999999999999999",
    ];

    /// Every duration accepted before `humantime`, with what it meant (ms).
    const DURATIONS_ACCEPTED: &[(&str, u64)] = &[
        ("0s", 0),
        ("0ms", 0),
        ("250ms", 250),
        ("1s", 1000),
        ("30s", 30_000),
        ("5m", 300_000),
        ("30m", 1_800_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1h30m", 5_400_000),
        ("1m30s", 90_000),
        ("10s500ms", 10_500),
        ("1d2h3m4s5ms", 93_784_005),
        ("90m", 5_400_000),
        ("1s1s", 2000),
        (" 30s ", 30_000),
        ("\t10s\n", 10_000),
        ("007s", 7000),
        ("10000000h", 36_000_000_000_000),
        ("18446744073709ms", 18_446_744_073_709),
    ];

    /// Every duration refused before `humantime` that it refuses too.
    const DURATIONS_REJECTED: &[&str] = &[
        "",
        "  ",
        "10",
        "s",
        "ms",
        "h5",
        "5x",
        "5S",
        "5H",
        "-5s",
        "+5s",
        "1h30",
        "5s!",
        "5s,",
        "5s-",
        "1:30",
        "99999999999999999999h",
        "18446744073709551616s",
    ];

    /// Refused before, accepted in `humantime`'s wider syntax.
    const DURATIONS_NOW_ACCEPTED: &[(&str, u64)] = &[
        ("0", 0),
        ("1h 30m", 5_400_000),
        ("30 s", 30_000),
        ("1.5h", 5_400_000),
        ("5sec", 5000),
        ("5 min", 300_000),
        ("1w", 604_800_000),
        ("1M", 2_630_016_000),
        ("1y", 31_557_600_000),
    ];

    #[test]
    fn sizes_parse_as_they_always_did() {
        for (text, bytes) in SIZES_ACCEPTED {
            assert_eq!(parse_bytes(text).ok(), Some(*bytes), "{text:?}");
        }
        for text in SIZES_REJECTED {
            let result = parse_bytes(text);
            assert!(result.is_err(), "{text:?} gave {result:?}");
        }
    }

    #[test]
    fn size_errors_say_what_was_wrong() {
        let message = |text: &str| parse_bytes(text).expect_err("refused").to_string();
        assert_eq!(
            message("lots"),
            "\"lots\" is not a size; use e.g. 2GiB, 512MiB or a byte count"
        );
        assert_eq!(
            message("2 furlongs"),
            "unknown size unit \"furlongs\" in \"2 furlongs\"; use KiB, MiB, GiB or TiB"
        );
        assert_eq!(
            message("99999999999TiB"),
            "\"99999999999TiB\" is out of range"
        );
    }

    #[test]
    fn durations_parse_as_they_always_did() {
        let millis = |text: &str| parse_duration(text).ok().map(|d| d.as_millis() as u64);
        for (text, ms) in DURATIONS_ACCEPTED.iter().chain(DURATIONS_NOW_ACCEPTED) {
            assert_eq!(millis(text), Some(*ms), "{text:?}");
        }
        for text in DURATIONS_REJECTED {
            let result = parse_duration(text);
            assert!(result.is_err(), "{text:?} gave {result:?}");
        }
        // The one narrowing: a millisecond count past 2^64 ns (584 years).
        assert!(parse_duration("18446744073710ms").is_err());
        assert_eq!(
            parse_duration("5x").expect_err("refused").to_string(),
            "\"5x\" is not a duration; use e.g. 30s, 5m, 1h30m or 250ms"
        );
    }

    #[test]
    fn labels_are_key_value_pairs() {
        assert_eq!(
            parse_label("gpu=h200").ok(),
            Some(("gpu".to_owned(), "h200".to_owned()))
        );
        assert_eq!(
            parse_label("gpu").expect_err("refused").to_string(),
            "\"gpu\" is not a label; use key=value"
        );
        assert!(parse_label("=x").is_err());
    }
}
