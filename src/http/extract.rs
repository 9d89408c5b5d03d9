//! Strict extractors. JSON bodies must be `application/json`, within the size limit, and match
//! the request type exactly: unknown fields, duplicate keys, wrong types and missing fields are
//! refused with the offending `param` named. Query strings get the same treatment.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::service::{Principal, RequestMeta};

/// A JSON request body, deserialised strictly.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                unreadable()
            }
        })?;
        // Every request body is an object; serde would take an array for a struct, field by
        // position, and name the fault `[0]`.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(not_an_object());
        }
        let started = std::time::Instant::now();
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
        de.end().map_err(|_| trailing_data())?;
        crate::observability::phases::record(
            crate::observability::phases::Phase::Parse,
            started.elapsed(),
        );
        Ok(ApiJson(value))
    }
}

/// 415 unless the request says its body is JSON.
pub(crate) fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        "unsupported_media_type",
        "request bodies must be JSON with Content-Type: application/json",
    ))
}

/// 413 `request_too_large`.
pub(crate) fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
        "the request body is larger than the limit",
    )
}

/// 400 `invalid_body`: the body could not be read (the client went away mid-body).
pub(crate) fn unreadable() -> ApiError {
    ApiError::invalid("invalid_body", None, "the request body could not be read")
}

pub(crate) fn not_an_object() -> ApiError {
    ApiError::invalid(
        "parameter_invalid",
        None,
        "the request body must be a JSON object",
    )
}

pub(crate) fn trailing_data() -> ApiError {
    ApiError::invalid("invalid_json", None, "unexpected data after the JSON value")
}

/// A body that did not deserialise: the field at fault, or why it is not JSON.
pub(crate) fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data => data_error(&path, &inner.to_string()),
        _ => ApiError::invalid(
            "invalid_json",
            None,
            format!("the body is not valid JSON: {inner}"),
        ),
    }
}

/// A query string, deserialised strictly. It is decoded by
/// [`crate::domain::signing::decode_query`], the decoder request signing canonicalises with,
/// so a signed query means what the handler reads (`+` is a space in both).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(crate::domain::signing::decode_query(query));
        serde_path_to_error::deserialize(de)
            .map(ApiQuery)
            .map_err(|e| {
                let path = e.path().to_string();
                data_error(&path, &e.into_inner().to_string())
            })
    }
}

/// Maps a serde data error to a param-level error.
fn data_error(path: &str, msg: &str) -> ApiError {
    let path = if path == "." { "" } else { path };
    // serde's messages: "unknown field `x`, expected …", "missing field `x`",
    // "duplicate field `x`", "invalid type: …", "invalid value: …".
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    let field = msg.split('`').nth(1).unwrap_or("");
    // The path sometimes already ends at the field (unknown fields) and sometimes at its parent.
    let param = if path.is_empty() {
        field.to_owned()
    } else if field.is_empty() || path.rsplit('.').next() == Some(field) {
        path.to_owned()
    } else {
        format!("{path}.{field}")
    };
    let (code, message) = if msg.starts_with("unknown field") {
        ("parameter_unknown", format!("unknown parameter `{param}`"))
    } else if msg.starts_with("missing field") {
        (
            "parameter_missing",
            format!("missing required parameter `{param}`"),
        )
    } else if msg.starts_with("duplicate field") {
        (
            "parameter_duplicate",
            format!("parameter `{param}` appears more than once"),
        )
    } else {
        let param = (!path.is_empty()).then(|| path.to_owned());
        return ApiError::invalid("parameter_invalid", param, without_value(msg));
    };
    ApiError::invalid(code, Some(param), message)
}

/// serde's "invalid type: string \"…\", expected …" quotes the value it refused, which may be
/// personal data: the message keeps only what was expected.
fn without_value(msg: &str) -> String {
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if msg.starts_with(kind)
            && let Some((_, expected)) = msg.split_once(", expected ")
        {
            return format!("{kind}: expected {expected}");
        }
    }
    msg.to_owned()
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| crate::error::AppError::AuthenticationRequired.into())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestMeta>()
            .cloned()
            .unwrap_or_default())
    }
}
