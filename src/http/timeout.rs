//! Request limits at the router: the time limit (`request_timeout_seconds`). Body size is
//! `DefaultBodyLimit` (server-wide `max_body_bytes`, per route `body_limit`) and every
//! extractor turns an overrun into 413 in the error shape; header size and slow-client limits
//! on the connection belong to the listener.
//!
//! A request unanswered when its time is up is cut off: 408 `request_timeout` when the server
//! was waiting for more of the body (a client sending too slowly), 503 `timeout` when the
//! server itself was slow (a body not yet read because the server was busy counts as the
//! server's delay). Dropping the
//! handler's future rolls back any open transaction, so a timed-out request either committed
//! (its idempotent reply is stored with it) or left nothing: a retry with the same
//! `Idempotency-Key` is safe either way.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::error::ApiError;

/// A request body that records whether the server is waiting for the client: its last poll
/// found no data yet.
struct Tracked {
    inner: Body,
    waiting: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.waiting.store(polled.is_pending(), Ordering::Release);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The time limit of one request.
pub async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    let waiting = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        Body::new(Tracked {
            inner,
            waiting: waiting.clone(),
        })
    });
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) if waiting.load(Ordering::Acquire) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            "the request body did not arrive in time",
        )
        .into_response(),
        Err(_) => {
            tracing::warn!(
                limit_seconds = limit.as_secs(),
                "request exceeded the time limit"
            );
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "timeout",
                "the request took too long; it either completed or changed nothing, and may be retried with the same Idempotency-Key",
            )
            .into_response()
        }
    }
}
