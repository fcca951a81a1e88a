//! Failed requests as a real API server reports them: an HTTP code and a `Status` body with
//! the same `reason`, `code`, `message` and `details` shapes, so clients branch on them as
//! they would in a cluster.

use serde_json::{Value, json};

use super::resources::ResourceType;

/// The object a failure is about, for messages and `Status.details`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// API group of the resource (empty for core).
    pub group: &'static str,
    /// Plural resource name (`pods`).
    pub plural: &'static str,
    /// Qualified resource name (`pods`, `subnets.kubeovn.io`).
    pub qualified: String,
    /// Object name.
    pub name: String,
}

impl Target {
    /// The object `name` of type `resource`.
    pub fn new(resource: &ResourceType, name: &str) -> Self {
        Self {
            group: resource.group,
            plural: resource.plural,
            qualified: resource.qualified(),
            name: name.to_owned(),
        }
    }

    /// The namespace `name`.
    pub fn namespace(name: &str) -> Self {
        Self {
            group: "",
            plural: "namespaces",
            qualified: "namespaces".to_owned(),
            name: name.to_owned(),
        }
    }
}

/// Why a request failed; each variant is one `Status.reason` of the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The object does not exist (404 `NotFound`).
    #[error("{} \"{}\" not found", .target.qualified, .target.name)]
    NotFound {
        /// The missing object.
        target: Target,
    },
    /// The path names no resource the double serves (404 `NotFound`).
    #[error("the server could not find the requested resource")]
    NoRoute {
        /// The request path.
        path: String,
    },
    /// Create of a name that exists (409 `AlreadyExists`).
    #[error("{} \"{}\" already exists", .target.qualified, .target.name)]
    AlreadyExists {
        /// The existing object.
        target: Target,
    },
    /// A write against a stale `resourceVersion` or a failed precondition (409 `Conflict`).
    #[error("Operation cannot be fulfilled on {} \"{}\": {detail}", .target.qualified, .target.name)]
    Conflict {
        /// The object written.
        target: Target,
        /// What did not match.
        detail: String,
    },
    /// The object is invalid (422 `Invalid`).
    #[error("{kind} \"{name}\" is invalid: {field}: {detail}")]
    Invalid {
        /// Kind of the object.
        kind: &'static str,
        /// Name of the object.
        name: String,
        /// The offending field path.
        field: String,
        /// What is wrong with it (`Forbidden: ...`, `Required value: ...`).
        detail: String,
    },
    /// The request is malformed (400 `BadRequest`).
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
    },
    /// The request is refused (403 `Forbidden`).
    #[error("{} \"{}\" is forbidden: {detail}", .target.qualified, .target.name)]
    Forbidden {
        /// The object written.
        target: Target,
        /// Why.
        detail: String,
    },
    /// The verb is not served on this path (405 `MethodNotAllowed`).
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed {
        /// The HTTP method.
        method: String,
    },
    /// A watch or continue token from a compacted `resourceVersion` (410 `Expired`).
    #[error("{message}")]
    Expired {
        /// The server's explanation.
        message: String,
    },
    /// No acceptable representation (406 `NotAcceptable`).
    #[error("only the following media types are accepted: application/json")]
    NotAcceptable {
        /// The `Accept` header sent.
        accept: String,
    },
    /// The body's media type is not supported here (415 `UnsupportedMediaType`).
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {accepted}"
    )]
    UnsupportedMediaType {
        /// The `Content-Type` header sent.
        content_type: String,
        /// The media types this request accepts.
        accepted: String,
    },
    /// A server-side failure (500 `InternalError`).
    #[error("{message}")]
    Internal {
        /// What failed.
        message: String,
    },
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Self::NotFound { .. } | Self::NoRoute { .. } => 404,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => 409,
            Self::Invalid { .. } => 422,
            Self::BadRequest { .. } => 400,
            Self::Forbidden { .. } => 403,
            Self::MethodNotAllowed { .. } => 405,
            Self::Expired { .. } => 410,
            Self::NotAcceptable { .. } => 406,
            Self::UnsupportedMediaType { .. } => 415,
            Self::Internal { .. } => 500,
        }
    }

    /// `Status.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } | Self::NoRoute { .. } => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::Invalid { .. } => "Invalid",
            Self::BadRequest { .. } => "BadRequest",
            Self::Forbidden { .. } => "Forbidden",
            Self::MethodNotAllowed { .. } => "MethodNotAllowed",
            Self::Expired { .. } => "Expired",
            Self::NotAcceptable { .. } => "NotAcceptable",
            Self::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            Self::Internal { .. } => "InternalError",
        }
    }

    /// The `Status` object a real API server sends for this failure.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        match self {
            Self::NotFound { target }
            | Self::AlreadyExists { target }
            | Self::Conflict { target, .. }
            | Self::Forbidden { target, .. } => {
                let mut details = json!({"name": target.name, "kind": target.plural});
                if !target.group.is_empty() {
                    details["group"] = json!(target.group);
                }
                status["details"] = details;
            }
            Self::Invalid {
                kind,
                name,
                field,
                detail,
            } => {
                let cause_reason = if detail.starts_with("Required value") {
                    "FieldValueRequired"
                } else if detail.starts_with("Forbidden") {
                    "FieldValueForbidden"
                } else {
                    "FieldValueInvalid"
                };
                status["details"] = json!({
                    "name": name,
                    "kind": kind,
                    "causes": [{"reason": cause_reason, "message": detail, "field": field}],
                });
            }
            _ => {}
        }
        status
    }
}

/// The `Status` a successful immediate delete returns.
pub fn deleted(resource: &ResourceType, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": resource.plural, "uid": uid});
    if !resource.group.is_empty() {
        details["group"] = json!(resource.group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;

    #[test]
    fn a_conflict_on_a_custom_resource_names_the_qualified_resource_and_the_object() {
        let subnets = by_plural("kubeovn.io", "v1", "subnets").expect("subnets");
        let error = ApiError::Conflict {
            target: Target::new(subnets, "net1"),
            detail: "the object has been modified; please apply your changes to the latest version and try again".to_owned(),
        };
        assert_eq!(
            error.to_status(),
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "Operation cannot be fulfilled on subnets.kubeovn.io \"net1\": the object has been modified; please apply your changes to the latest version and try again",
                "reason": "Conflict",
                "details": {"name": "net1", "group": "kubeovn.io", "kind": "subnets"},
                "code": 409,
            })
        );
    }

    #[test]
    fn a_missing_pod_is_a_404_not_found_without_a_group() {
        let pods = by_plural("", "v1", "pods").expect("pods");
        let error = ApiError::NotFound {
            target: Target::new(pods, "web"),
        };
        let status = error.to_status();
        assert_eq!(status["code"], 404);
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["message"], "pods \"web\" not found");
        assert_eq!(status["details"], json!({"name": "web", "kind": "pods"}));
    }
}
