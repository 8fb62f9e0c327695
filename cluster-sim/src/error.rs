//! Kubernetes-shaped API errors (`Status` objects).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error rendered as a Kubernetes `Status` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes reason (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    /// `details.name`.
    pub name: Option<String>,
    /// `details.kind`.
    pub kind: Option<String>,
    /// `details.causes` as (reason, message, field).
    pub causes: Vec<(String, String, String)>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError { code, reason, message, name: None, kind: None, causes: Vec::new() }
    }

    fn named(mut self, kind: &str, name: &str) -> Self {
        self.kind = Some(kind.to_owned());
        self.name = Some(name.to_owned());
        self
    }

    /// 404 NotFound.
    #[must_use]
    pub fn not_found(plural: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{plural} \"{name}\" not found")).named(plural, name)
    }

    /// 404 for a path the simulator does not serve.
    #[must_use]
    pub fn no_route(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    /// 409 AlreadyExists.
    #[must_use]
    pub fn already_exists(plural: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{plural} \"{name}\" already exists")).named(plural, name)
    }

    /// 409 Conflict on a stale resourceVersion.
    #[must_use]
    pub fn conflict(plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .named(plural, name)
    }

    /// 409 Conflict of a server-side apply (fields owned by another manager).
    #[must_use]
    pub fn apply_conflict(message: &str) -> Self {
        Self::new(409, "Conflict", message.to_owned())
    }

    /// 403 Forbidden, worded like the API server's RBAC denial.
    #[must_use]
    pub fn forbidden(user: &str, verb: &str, resource: &str, name: Option<&str>, namespace: Option<&str>) -> Self {
        let what = match name {
            Some(n) => format!("{resource} \"{n}\""),
            None => resource.to_owned(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let mut e = Self::new(
            403,
            "Forbidden",
            format!(
                "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"\" {scope}"
            ),
        );
        e.name = name.map(str::to_owned);
        e.kind = Some(resource.to_owned());
        e
    }

    /// 400 BadRequest.
    #[must_use]
    pub fn bad_request(message: &str) -> Self {
        Self::new(400, "BadRequest", message.to_owned())
    }

    /// 422 Invalid for a body that does not fit the schema.
    #[must_use]
    pub fn invalid(kind: &str, message: &str) -> Self {
        Self::new(422, "Invalid", format!("{kind} in version \"v1\" cannot be handled as a {kind}: {message}"))
    }

    /// 422 Invalid naming one field.
    #[must_use]
    pub fn invalid_field(kind: &str, name: &str, field: &str, message: &str) -> Self {
        let mut e =
            Self::new(422, "Invalid", format!("{kind} \"{name}\" is invalid: {field}: Invalid value: {message}"));
        e.kind = Some(kind.to_owned());
        e.name = Some(name.to_owned());
        e.causes.push(("FieldValueInvalid".into(), message.to_owned(), field.to_owned()));
        e
    }

    /// 410 Gone for a watch from a compacted resourceVersion.
    #[must_use]
    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"))
    }

    /// 504 for a watch from a resource version the server has not reached.
    #[must_use]
    pub fn too_large_rv(requested: u64, current: u64) -> Self {
        Self::new(504, "Timeout", format!("Too large resource version: {requested}, current: {current}"))
    }

    /// 410 Gone for a continue token whose snapshot expired.
    #[must_use]
    pub fn expired_continue() -> Self {
        Self::new(
            410,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
        )
    }

    /// 429 TooManyRequests from a disruption budget.
    #[must_use]
    pub fn disruption_budget(pdb: &str) -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        );
        e.causes.push((
            "DisruptionBudget".into(),
            format!("The disruption budget {pdb} needs more healthy pods and has no disruptions allowed"),
            String::new(),
        ));
        e
    }

    /// 413 RequestEntityTooLarge, worded as the API server words it
    /// (`Request entity too large: {message}`).
    #[must_use]
    pub fn entity_too_large(message: &str) -> Self {
        Self::new(413, "RequestEntityTooLarge", format!("Request entity too large: {message}"))
    }

    /// 405 MethodNotAllowed.
    #[must_use]
    pub fn method_not_allowed(what: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({what})"),
        )
    }

    /// 406 NotAcceptable: the server cannot answer in the asked form.
    #[must_use]
    pub fn not_acceptable(what: &str) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!("the server was unable to respond with a content type that the client supports ({what})"),
        )
    }

    /// 415 UnsupportedMediaType.
    #[must_use]
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            ),
        )
    }

    /// 503 ServiceUnavailable.
    #[must_use]
    pub fn service_unavailable(message: &str) -> Self {
        Self::new(503, "ServiceUnavailable", message.to_owned())
    }

    /// 500 InternalError.
    #[must_use]
    pub fn internal(message: &str) -> Self {
        Self::new(500, "InternalError", message.to_owned())
    }

    /// The `Status` object.
    #[must_use]
    pub fn status_json(&self) -> serde_json::Value {
        let mut details = serde_json::Map::new();
        if let Some(n) = &self.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(k) = &self.kind {
            details.insert("kind".into(), json!(k));
        }
        if !self.causes.is_empty() {
            details.insert(
                "causes".into(),
                self.causes
                    .iter()
                    .map(|(r, m, f)| {
                        let mut c = json!({"reason": r, "message": m});
                        if !f.is_empty() {
                            c["field"] = json!(f);
                        }
                        c
                    })
                    .collect(),
            );
        }
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            s["details"] = serde_json::Value::Object(details);
        }
        s
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, [("content-type", "application/json")], self.status_json().to_string()).into_response()
    }
}
