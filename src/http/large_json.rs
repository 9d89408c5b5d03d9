//! Large JSON request bodies (KYC submissions, up to about 27 MiB), read with one copy.
//!
//! [`ApiJson`](super::extract::ApiJson) collects a body and deserialises owned strings from it,
//! which is right for small bodies. For a KYC submission that held the body, every base64
//! string as a `String`, and the decoded files at once, per request (issue 13, item 13). Here:
//!
//! - a declared `Content-Length` above the limit is refused (413) before anything is read;
//! - the body is read into one buffer of its declared length (never grown by doubling), up to
//!   the limit (413 beyond);
//! - it is parsed in place on a blocking thread: strings are borrowed from the buffer, so the
//!   target type can decode each large one as it is parsed (see `handlers::kyc`) without a
//!   copy of its text, and the buffer is freed as soon as the parse ends.
//!
//! The checks are those of `ApiJson`: an object at the top level, strict fields with the faulty
//! `param` named, nothing after the value.

use std::pin::Pin;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::extract::{json_error, not_an_object, too_large, trailing_data, unreadable};

/// What a body of unknown length starts with.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// Reads `body` (at most `limit` bytes) and parses it as a `T`.
pub async fn read_json<T>(headers: &HeaderMap, body: Body, limit: usize) -> Result<T, ApiError>
where
    T: DeserializeOwned + Send + 'static,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(INITIAL_CAPACITY));
    let mut body = body;
    loop {
        let frame =
            std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await;
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(unreadable()),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers carry nothing the parser needs.
                Err(_) => continue,
            },
        };
        if buf.len() + data.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&data);
    }
    // Every request body is an object; serde would take an array for a struct, field by
    // position.
    if buf.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(not_an_object());
    }
    tokio::task::spawn_blocking(move || {
        let mut de = serde_json::Deserializer::from_slice(&buf);
        let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(json_error)?;
        de.end().map_err(|_| trailing_data())?;
        Ok(value)
    })
    .await
    .map_err(|e| ApiError::from(crate::error::AppError::internal(e)))?
}
