//! Integers as JSON and OpenAPI define them. JSON has one number type:
//! `12658` and `12658.0` are the same number, and an OpenAPI `integer`
//! admits both, while serde's `u64` refuses the second. Request fields
//! that are integers deserialize through here (`deserialize_with`), so a
//! client whose JSON library writes every number as a float is understood.
//! Query strings arrive as text and go through the same rules (`query`);
//! in a JSON body a string is not a number and stays refused.
//!
//! Refused with a clear message: fractions, negatives, out-of-range
//! values and anything that is not a number. The range is the document's:
//! utoipa writes a `u64` as `int64` and a `u32` as `int32`, so their
//! largest values are `i64::MAX` and `i32::MAX` ([`JsonInteger`]).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

/// A non-negative integer field of type `T` (`u64`, `u32`, ...).
pub(crate) fn integer<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: JsonInteger,
{
    deserializer
        .deserialize_any(IntegerVisitor::<T, false>(PhantomData))?
        .ok_or_else(|| de::Error::custom("expected a non-negative integer, found null"))
}

/// An optional non-negative integer field: absent or `null` is `None`.
/// Use with `#[serde(default, deserialize_with = "integer::optional")]`.
pub(crate) fn optional<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: JsonInteger,
{
    deserializer.deserialize_any(IntegerVisitor::<T, false>(PhantomData))
}

/// An optional non-negative integer query parameter (text: `5`, `5.0`).
pub(crate) fn query<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: JsonInteger,
{
    deserializer.deserialize_any(IntegerVisitor::<T, true>(PhantomData))
}

/// An integer type of the API, with the largest value its OpenAPI format
/// (`int64`, `int32`) allows.
pub(crate) trait JsonInteger: TryFrom<u64> {
    const MAX: u64;
}

impl JsonInteger for u64 {
    const MAX: u64 = i64::MAX as u64;
}

impl JsonInteger for u32 {
    const MAX: u64 = i32::MAX as u64;
}

/// `TEXT`: the value arrives as text (a query string), to be parsed.
struct IntegerVisitor<T, const TEXT: bool>(PhantomData<T>);

impl<T: JsonInteger, const TEXT: bool> IntegerVisitor<T, TEXT> {
    fn fit<E: de::Error>(value: u64) -> Result<Option<T>, E> {
        if value > T::MAX {
            return Err(E::custom(format!(
                "{value} is out of range (at most {})",
                T::MAX
            )));
        }
        T::try_from(value)
            .map(Some)
            .map_err(|_| E::custom(format!("{value} is out of range")))
    }
}

impl<'de, T: JsonInteger, const TEXT: bool> Visitor<'de> for IntegerVisitor<T, TEXT> {
    type Value = Option<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a non-negative integer")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Self::fit(value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        let value = u64::try_from(value).map_err(|_| {
            E::custom(format!(
                "{value} is negative: expected a non-negative integer"
            ))
        })?;
        Self::fit(value)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        // 2^64 is exact as an f64; anything below it with no fraction
        // converts without loss of what the client sent.
        if value.fract() != 0.0 || !value.is_finite() {
            return Err(E::custom(format!("{value} is not an integer")));
        }
        if !(0.0..18_446_744_073_709_551_616.0).contains(&value) {
            return Err(E::custom(format!("{value} is out of range")));
        }
        // Exact: the value is integral and in range.
        Self::fit(value as u64)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if !TEXT {
            return Err(E::invalid_type(de::Unexpected::Str(text), &self));
        }
        if let Ok(value) = text.parse::<u64>() {
            return Self::fit(value);
        }
        match text.parse::<f64>() {
            Ok(value) if !text.trim().is_empty() => self.visit_f64(value),
            _ => Err(E::custom(format!("{text:?} is not a non-negative integer"))),
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Body {
        #[serde(deserialize_with = "super::integer")]
        size: u64,
        #[serde(default, deserialize_with = "super::optional")]
        count: Option<u32>,
    }

    fn body(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|error| error.to_string())
    }

    #[test]
    fn integral_floats_are_integers() {
        assert_eq!(
            body(r#"{"size": 12658.0, "count": 3.0}"#),
            Ok(Body {
                size: 12658,
                count: Some(3)
            })
        );
        assert_eq!(
            body(r#"{"size": 1e3}"#),
            Ok(Body {
                size: 1000,
                count: None
            })
        );
        assert_eq!(
            body(r#"{"size": 7, "count": null}"#),
            Ok(Body {
                size: 7,
                count: None
            })
        );
    }

    #[test]
    fn fractions_negatives_and_overflow_are_refused() {
        for (json, expected) in [
            (r#"{"size": 1.5}"#, "not an integer"),
            (r#"{"size": -1}"#, "negative"),
            (r#"{"size": 1e30}"#, "out of range"),
            (r#"{"size": 1, "count": 4294967296}"#, "out of range"),
            (r#"{"size": 1, "count": 2147483648}"#, "out of range"),
            (r#"{"size": 9223372036854775808}"#, "out of range"),
            (r#"{"size": "12"}"#, "a non-negative integer"),
            (r#"{"size": null}"#, "found null"),
            (r#"{"size": true}"#, "a non-negative integer"),
        ] {
            let error = body(json).expect_err(json);
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct Query {
        #[serde(default, deserialize_with = "super::query")]
        tail: Option<u64>,
    }

    #[test]
    fn query_strings_follow_the_same_rules() {
        let query = |text: &str| serde_urlencoded::from_str::<Query>(text);
        assert_eq!(query("tail=12658.0").unwrap(), Query { tail: Some(12658) });
        assert_eq!(query("tail=5").unwrap(), Query { tail: Some(5) });
        assert_eq!(query("").unwrap(), Query { tail: None });
        assert!(query("tail=-1").is_err());
        assert!(query("tail=x").is_err());
        assert!(query("tail=").is_err());
    }
}
