//! Schemas the derive cannot write: string rules as patterns (the same
//! rules the handlers check), labels as property names, nullable fields.
//! Used by the request types' `#[schema(schema_with = ...)]` and by
//! `openapi.rs`; it imports neither.

use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, Object, ObjectBuilder, OneOfBuilder, Schema, SchemaType,
    Type,
};

/// Longest task title, in characters.
pub(crate) const MAX_TITLE_CHARS: usize = 200;
/// Longest repository, in characters.
pub(crate) const MAX_REPOSITORY_CHARS: usize = 512;

/// Characters the API refuses in names and titles: `char::is_control`.
pub(crate) const CONTROL: &str = "\\u0000-\\u001f\\u007f-\\u009f";

/// A string of `min..=max` characters matching `pattern`.
pub(crate) fn string(min: usize, max: usize, pattern: String) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .build()
}

/// A task's title: 1-200 characters, no control characters, not only
/// spaces (as `tasks::validate_title`).
pub(crate) fn title_schema() -> Object {
    string(
        1,
        MAX_TITLE_CHARS,
        format!("^[^{CONTROL}]*[^\\s{CONTROL}][^{CONTROL}]*$"),
    )
}

/// A title that may be `null` (left as it is).
pub(crate) fn nullable_title_schema() -> Object {
    nullable(title_schema())
}

/// A task's repository: 1-512 characters, no spaces or control
/// characters; `null` for none.
pub(crate) fn repository_schema() -> Object {
    nullable(string(
        1,
        MAX_REPOSITORY_CHARS,
        format!("^[^\\s{CONTROL}]*$"),
    ))
}

/// `schema`, or `null`.
fn nullable(mut schema: Object) -> Object {
    if let SchemaType::Type(kind) = schema.schema_type {
        schema.schema_type = SchemaType::from_iter([kind, Type::Null]);
    }
    schema
}

/// Node labels (`types::validate_label`): keys of 1-63 `[A-Za-z0-9._/-]`
/// starting alphanumeric, values of up to 63 of the same.
pub(crate) fn labels_schema() -> Object {
    let mut labels = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::RefOr(
            string(0, 63, "^[A-Za-z0-9._/-]*$".to_owned()).into(),
        )))
        .build();
    labels.property_names = Some(Box::new(
        string(1, 63, "^[A-Za-z0-9][A-Za-z0-9._/-]*$".to_owned()).into(),
    ));
    labels
}

/// A desktop profile (`DesktopProfile::validate`): at most 8 apps of
/// 1-512 characters (not only spaces, no control characters) and xkb
/// names; `null` for the node's defaults. A variant needs a layout: a rule
/// across fields, said in the description (`tests/schemathesis.toml`
/// allows its 400).
pub(crate) fn profile_schema() -> Schema {
    use crate::types::{MAX_APP_CHARS, MAX_KEYBOARD_NAME, MAX_PROFILE_APPS};
    let xkb = || string(0, MAX_KEYBOARD_NAME, "^[A-Za-z0-9_+():-]*$".to_owned());
    let app = string(
        1,
        MAX_APP_CHARS,
        format!("^[^{CONTROL}]*[^\\s{CONTROL}][^{CONTROL}]*$"),
    );
    let fields = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "apps",
            ArrayBuilder::new()
                .items(app)
                .max_items(Some(MAX_PROFILE_APPS)),
        )
        .property("keyboard_layout", xkb())
        .property("keyboard_variant", xkb())
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .description(Some(
            "The desktop's apps and keyboard; a keyboard_variant needs a keyboard_layout.",
        ))
        .build();
    let profile = fields;
    OneOfBuilder::new()
        .item(profile)
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}
