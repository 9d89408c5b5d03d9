//! Streamed JSON request bodies: parsed while they arrive, never held whole in memory.
//!
//! [`ApiJson`](super::extract::ApiJson) collects a body before parsing it, which is right for
//! small bodies. A KYC submission may be about 27 MiB of base64; collecting it, parsing it into
//! strings and decoding those held three copies at once, per request (issue 13, item 13). Here
//! the body's chunks go through a small bounded channel to a blocking task that runs serde_json
//! over a reader of that channel, so the target type can decode each large string as it is
//! parsed (see `handlers::kyc`) and only what the type keeps stays in memory. The checks are
//! those of `ApiJson`: JSON content type, the size limit (413), an object at the top level,
//! strict fields with the faulty `param` named, nothing after the value.

use std::io::Read;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::extract::{json_error, not_an_object, too_large, trailing_data, unreadable};

/// Body chunks in flight between the connection and the parser.
const CHANNEL_CHUNKS: usize = 4;

/// The parser's buffer over the channel.
const READ_BUFFER: usize = 64 * 1024;

/// A blocking reader of the chunks the request task sends. It notes the body's first
/// non-whitespace byte (an array at the top level is refused like `ApiJson` refuses it).
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, ()>>,
    cur: Bytes,
    first: Option<u8>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.cur = chunk,
                Some(Err(())) => return Err(std::io::Error::other("request body")),
            }
        }
        if self.first.is_none() {
            self.first = self.cur.iter().copied().find(|b| !b.is_ascii_whitespace());
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// Why feeding the parser stopped early.
enum Stop {
    TooLarge,
    Unreadable,
}

/// Parses `body` (at most `limit` bytes) as a `T` while it arrives.
pub async fn read_json<T>(body: Body, limit: usize) -> Result<T, ApiError>
where
    T: DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let parser = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            cur: Bytes::new(),
            first: None,
        };
        let result = {
            let buffered = std::io::BufReader::with_capacity(READ_BUFFER, &mut reader);
            let mut de = serde_json::Deserializer::from_reader(buffered);
            match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Ok(v) => de.end().map(|()| v).map_err(|_| trailing_data()),
                Err(e) => Err(json_error(e)),
            }
        };
        (result, reader.first)
    });

    let mut body = body;
    let mut total = 0usize;
    let mut stop = None;
    loop {
        let frame =
            std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await;
        let data = match frame {
            None => break,
            Some(Err(_)) => {
                stop = Some(Stop::Unreadable);
                break;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers carry nothing the parser needs.
                Err(_) => continue,
            },
        };
        total = total.saturating_add(data.len());
        if total > limit {
            stop = Some(Stop::TooLarge);
            break;
        }
        if tx.send(Ok(data)).await.is_err() {
            // The parser has stopped (a syntax error): the rest of the body is not read.
            break;
        }
    }
    if stop.is_some() {
        let _ = tx.send(Err(())).await;
    }
    drop(tx);
    let (result, first) = parser
        .await
        .map_err(|e| ApiError::from(crate::error::AppError::internal(e)))?;
    match stop {
        Some(Stop::TooLarge) => return Err(too_large()),
        Some(Stop::Unreadable) => return Err(unreadable()),
        None => {}
    }
    if first == Some(b'[') {
        return Err(not_an_object());
    }
    result
}
