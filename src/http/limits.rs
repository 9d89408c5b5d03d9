//! Request limits at the router: the time limit (`request_timeout_seconds`). Body size is
//! `DefaultBodyLimit` (server-wide `max_body_bytes`, per route `body_limit`) and every
//! extractor turns an overrun into 413 in the error shape; header size and slow-client limits
//! on the connection belong to the listener.
//!
//! A request unanswered when its time is up is cut off: 408 `request_timeout` while its body
//! is still arriving (a client sending too slowly), 503 `timeout` otherwise. Dropping the
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

/// A request body that records when it has been read to its end (or failed).
struct Tracked {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None | Some(Err(_))) => self.done.store(true, Ordering::Release),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => {
                self.done.store(true, Ordering::Release);
            }
            _ => {}
        }
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
pub async fn request_timeout(
    State(limit): State<Duration>,
    req: Request,
    next: Next,
) -> Response {
    let done = Arc::new(AtomicBool::new(req.body().is_end_stream()));
    let req = req.map(|inner| {
        Body::new(Tracked {
            inner,
            done: done.clone(),
        })
    });
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) if !done.load(Ordering::Acquire) => ApiError::new(
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
