//! The four PATCH body types, told apart by `Content-Type`, applied to stored JSON.
//!
//! - `application/merge-patch+json`: RFC 7386 JSON merge patch (`null` deletes a key).
//! - `application/strategic-merge-patch+json`: applied as a JSON merge patch. Real servers merge
//!   some lists by key (containers by name, ...); nothing Sidelane patches that way relies on
//!   it. Custom resources reject it with 415, as a real server does.
//! - `application/json-patch+json`: RFC 6902 operations (`test` included), all or nothing.
//! - `application/apply-patch+yaml`: server-side apply, with a JSON body (YAML is not read),
//!   applied as a merge patch; field ownership (`managedFields`, conflicts between managers,
//!   removal of fields a manager stopped setting) is not modelled.

use serde_json::Value;

use super::status::ApiError;

/// The media types a PATCH accepts, for 415 messages.
pub const ACCEPTED: &str = "application/json-patch+json, application/merge-patch+json, \
                            application/strategic-merge-patch+json, application/apply-patch+yaml";

/// How a PATCH body is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// RFC 7386 merge patch.
    Merge,
    /// Strategic merge patch, applied as a merge patch.
    StrategicMerge,
    /// RFC 6902 JSON patch.
    Json,
    /// Server-side apply, applied as a merge patch that may create the object.
    Apply,
}

/// A PATCH body that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The body is not JSON of the right shape for its patch type.
    #[error("decoding the {patch_type:?} patch body: {source}")]
    Decode {
        /// The patch type.
        patch_type: PatchType,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A merge-style patch body is not a JSON object.
    #[error("a {patch_type:?} patch body must be a JSON object, got {body}")]
    NotAnObject {
        /// The patch type.
        patch_type: PatchType,
        /// The body, shortened.
        body: String,
    },
    /// A JSON patch operation failed (a `test` did not match, a path does not exist).
    #[error("applying the JSON patch: {source}")]
    JsonPatch {
        /// The failed operation.
        #[source]
        source: json_patch::PatchError,
    },
}

impl PatchType {
    /// The patch type of a `Content-Type` header value (parameters ignored).
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match media_type.as_str() {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::StrategicMerge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/apply-patch+yaml" => Ok(Self::Apply),
            _ => Err(ApiError::UnsupportedMediaType {
                content_type: content_type.to_owned(),
                accepted: ACCEPTED.to_owned(),
            }),
        }
    }
}

/// Parses a merge-style body (merge, strategic merge, apply): it must be a JSON object.
pub fn merge_body(patch_type: PatchType, body: &[u8]) -> Result<Value, PatchError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|source| PatchError::Decode { patch_type, source })?;
    if value.is_object() {
        Ok(value)
    } else {
        let mut shown = value.to_string();
        shown.truncate(80);
        Err(PatchError::NotAnObject {
            patch_type,
            body: shown,
        })
    }
}

/// `current` with the patch `body` of type `patch_type` applied.
pub fn apply(patch_type: PatchType, current: &Value, body: &[u8]) -> Result<Value, PatchError> {
    let mut patched = current.clone();
    match patch_type {
        PatchType::Merge | PatchType::StrategicMerge | PatchType::Apply => {
            json_patch::merge(&mut patched, &merge_body(patch_type, body)?);
        }
        PatchType::Json => {
            let operations: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|source| PatchError::Decode { patch_type, source })?;
            json_patch::patch(&mut patched, &operations)
                .map_err(|source| PatchError::JsonPatch { source })?;
        }
    }
    Ok(patched)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_content_type_selects_the_patch_type_and_ignores_parameters() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Ok(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Ok(PatchType::Apply)
        );
        assert_eq!(
            PatchType::from_content_type("application/json")
                .expect_err("plain JSON is not a patch type")
                .code(),
            415
        );
    }

    #[test]
    fn a_merge_patch_sets_and_deletes_annotations() {
        let current = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}});
        let patched = apply(
            PatchType::Merge,
            &current,
            br#"{"metadata":{"annotations":{"a":null,"c":"3"}}}"#,
        )
        .expect("patch applies");
        assert_eq!(
            patched,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}}})
        );
    }

    #[test]
    fn a_json_patch_with_a_failing_test_changes_nothing() {
        let current = json!({"metadata": {"resourceVersion": "5"}, "spec": {"x": 1}});
        let result = apply(
            PatchType::Json,
            &current,
            br#"[{"op":"replace","path":"/spec/x","value":2},
                 {"op":"test","path":"/metadata/resourceVersion","value":"4"}]"#,
        );
        assert!(matches!(result, Err(PatchError::JsonPatch { .. })));
    }

    #[test]
    fn a_merge_patch_body_must_be_an_object() {
        assert!(matches!(
            apply(PatchType::Merge, &json!({}), b"[1]"),
            Err(PatchError::NotAnObject { .. })
        ));
    }
}
