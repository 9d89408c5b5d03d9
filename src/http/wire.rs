//! The HTTP/1 wire guard (issue 13 item 18): every answer carries the error shape and the
//! security headers, including the ones hyper would otherwise write on its own.
//!
//! hyper answers a request head it cannot take (too large, too many headers, a malformed
//! request line or header, a request target too long) itself, with a bare `431`/`400`/`414`
//! and no body, before the application ever sees a request; and it accepts a request without
//! `Host`, or with two. [`Guarded`] wraps each connection's stream (plain TCP or TLS) and reads
//! every HTTP/1 request head before hyper does, with the same parser (`httparse`) and the same
//! checks hyper makes, plus the `Host` rule (exactly one on HTTP/1.1, at most one on HTTP/1.0,
//! RFC 9112 section 3.2). A head that passes goes to hyper unchanged, then the body by its
//! framing (`Content-Length` bytes, or chunked up to its last chunk and trailers), so the next
//! head of a keep-alive connection is checked too. A head that fails is never shown to hyper:
//! in its place hyper reads a small synthetic request carrying a per-process secret marker and
//! the refusal, which the application answers ([`answer_refusal`]) through its ordinary layers
//! (request id, security headers, access log, metrics) in the JSON error shape, with
//! `Connection: close`. Nothing after a refused head is read.
//!
//! HTTP/2 (the client preface, over TLS with ALPN `h2` or in clear with prior knowledge) is
//! passed through untouched: its header-list limit is checked by the application
//! ([`check_request`]), below a hard ceiling that the h2 layer enforces itself.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, Version, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ApiError;

/// Header lines a request may carry (hyper's `max_headers` is set to the same).
pub const MAX_HEADERS: usize = 100;
/// The longest request target hyper takes.
pub const MAX_URI_LEN: usize = 65_534;
/// HTTP/2's header-list ceiling, as a multiple of `max_header_bytes`: up to it, an oversized
/// list reaches the application and is answered 431 in the error shape; beyond it the h2
/// layer answers a bare 431 and resets the stream.
pub const H2_HEADER_LIST_CEILING: usize = 4;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The synthetic request's marker header.
const MARKER: &str = "kasho-wire-refusal";
/// Longest chunk-size or trailer line followed through a chunked body.
const MAX_CHUNK_LINE: usize = 8192;

/// Why a request head was refused on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request line and headers are longer than `max_header_bytes`.
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    TooManyHeaders,
    /// The request target is longer than hyper takes.
    UriTooLong,
    /// The request line or a header does not parse (or its framing headers are invalid).
    Malformed,
    /// No `Host` on HTTP/1.1, or more than one, or an invalid one.
    HostInvalid,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::HeadTooLarge,
        Refusal::TooManyHeaders,
        Refusal::UriTooLong,
        Refusal::Malformed,
        Refusal::HostInvalid,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Refusal::HeadTooLarge | Refusal::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::Malformed | Refusal::HostInvalid => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Refusal::HeadTooLarge => "request_headers_too_large",
            Refusal::TooManyHeaders => "too_many_headers",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::Malformed => "malformed_request",
            Refusal::HostInvalid => "host_header_invalid",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::HeadTooLarge => {
                "the request line and headers are larger than the server accepts"
            }
            Refusal::TooManyHeaders => "the request has more than 100 header lines",
            Refusal::UriTooLong => "the request target is too long",
            Refusal::Malformed => "the request line or a header could not be parsed as HTTP/1.1",
            Refusal::HostInvalid => {
                "an HTTP/1.1 request needs exactly one valid Host header (HTTP/1.0: at most one)"
            }
        }
    }

    /// The error answer, in the shape every other error has.
    pub fn error(self) -> ApiError {
        ApiError::new(
            self.status(),
            "invalid_request_error",
            self.code(),
            self.message(),
        )
    }
}

/// The per-process secret of the synthetic request's marker: a client cannot make the
/// application believe the wire refused something (not that it would gain anything).
fn marker_secret() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| match crate::crypto::random_bytes::<16>() {
        Ok(bytes) => hex::encode(bytes),
        // Without the CSPRNG (start-up would have failed long before): still unguessable
        // enough for a marker whose forgery gains nothing.
        Err(_) => uuid::Uuid::now_v7().simple().to_string(),
    })
}

/// The request hyper reads in place of a refused head.
fn synthetic_request(r: Refusal) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nhost: kasho\r\nconnection: close\r\n{MARKER}: {} {}\r\n\r\n",
        marker_secret(),
        r.code()
    )
    .into_bytes()
}

/// The refusal a synthetic request carries, if this is one.
pub fn refusal_of(headers: &HeaderMap) -> Option<Refusal> {
    let v = headers.get(MARKER)?.to_str().ok()?;
    let (secret, code) = v.split_once(' ')?;
    if !crate::crypto::constant_time_eq(secret.as_bytes(), marker_secret().as_bytes()) {
        return None;
    }
    Refusal::ALL.into_iter().find(|r| r.code() == code)
}

/// The answer to one of the guard's synthetic requests: its refusal, closing the connection.
/// Called by `middleware::shape_errors`, inside the request-id and security-header layers, so
/// the answer carries both.
pub fn answer_refusal(headers: &HeaderMap) -> Option<Response> {
    let r = refusal_of(headers)?;
    tracing::debug!(code = r.code(), "request head refused on the wire");
    let mut resp = r.error().into_response();
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    Some(resp)
}

/// Middleware: the request checks that hold whatever the protocol (and in-process): a path
/// whose percent-encoding does not decode to UTF-8 (`/v1/accounts/%c0%ae`) is 400
/// `invalid_path`; two `Host` headers are 400 `host_header_invalid`; an HTTP/2 header list
/// over `max_header_bytes` is 431 `request_headers_too_large` (HTTP/1 heads are checked on the
/// wire).
pub async fn check_request(
    axum::extract::State(max_header_bytes): axum::extract::State<usize>,
    req: Request,
    next: Next,
) -> Response {
    if !path_is_utf8(req.uri().path()) {
        return ApiError::invalid(
            "invalid_path",
            None,
            "the path's percent-encoding does not decode to UTF-8",
        )
        .into_response();
    }
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Refusal::HostInvalid.error().into_response();
    }
    if req.version() == Version::HTTP_2 && header_list_size(&req) > max_header_bytes {
        return Refusal::HeadTooLarge.error().into_response();
    }
    next.run(req).await
}

/// RFC 9113 section 6.5.2: each field's name and value plus 32 octets, pseudo-fields included.
fn header_list_size(req: &Request) -> usize {
    let pseudo = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri().scheme_str().map_or(0, str::len)
        + req.uri().authority().map_or(0, |a| a.as_str().len())
        + 4 * 32
        + ":method:path:scheme:authority".len();
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum::<usize>()
        + pseudo
}

/// Whether a path's percent-decoding is UTF-8 (a `%` without two hex digits stays literal,
/// as the router reads it).
pub fn path_is_utf8(path: &str) -> bool {
    if !path.contains('%') {
        return true;
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| char::from(*c).to_digit(16)),
                b.get(i + 2).and_then(|c| char::from(*c).to_digit(16)),
            )
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(0));
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    std::str::from_utf8(&out).is_ok()
}

// ------------------------------------------------------------------------------------------
// The stream wrapper.

/// Where the guard is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing seen yet: HTTP/2's preface, or an HTTP/1 head?
    Detect,
    /// Reading a request head.
    Head,
    /// Passing a body of this many more bytes.
    Body(u64),
    /// Passing a chunked body.
    Chunked(Chunk),
    /// HTTP/2, or a chunked body it could not follow: everything goes through as it is
    /// (hyper refuses what it cannot parse, and a body error reaches the application).
    Passthrough,
    /// A head was refused: hyper has its synthetic request, and nothing more is read.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// This many data bytes of the current chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty one.
    Trailers,
}

/// A connection's stream with its HTTP/1 request heads checked before hyper reads them.
pub struct Guarded<S> {
    inner: S,
    max_head: usize,
    mode: Mode,
    /// Bytes read from the client and not examined yet.
    pending: Vec<u8>,
    /// Examined bytes (or the synthetic request) waiting for hyper.
    ready: Vec<u8>,
    ready_pos: usize,
    /// The current chunk-size or trailer line.
    line: Vec<u8>,
    eof: bool,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, max_head: usize) -> Self {
        Self {
            inner,
            max_head,
            mode: Mode::Detect,
            pending: Vec::new(),
            ready: Vec::new(),
            ready_pos: 0,
            line: Vec::new(),
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn refuse(&mut self, r: Refusal) {
        self.pending.clear();
        self.ready.extend_from_slice(&synthetic_request(r));
        self.mode = Mode::Refused;
    }

    /// Moves `pending` through the state machine as far as it goes.
    fn advance(&mut self) {
        loop {
            match self.mode {
                Mode::Refused => {
                    self.pending.clear();
                    return;
                }
                Mode::Passthrough => {
                    self.ready.append(&mut self.pending);
                    return;
                }
                _ if self.pending.is_empty() => return,
                Mode::Detect => {
                    let n = self.pending.len().min(PREFACE.len());
                    if self.pending[..n] != PREFACE[..n] {
                        self.mode = Mode::Head;
                    } else if n == PREFACE.len() {
                        self.mode = Mode::Passthrough;
                    } else {
                        return; // maybe a preface: wait for the rest
                    }
                }
                Mode::Head => match check_head(&self.pending, self.max_head) {
                    HeadCheck::Partial => {
                        if self.pending.len() > self.max_head {
                            self.refuse(Refusal::HeadTooLarge);
                        }
                        return;
                    }
                    HeadCheck::Refused(r) => {
                        self.refuse(r);
                        return;
                    }
                    HeadCheck::Complete { len, body } => {
                        self.ready.extend(self.pending.drain(..len));
                        self.mode = match body {
                            Framing::Empty => Mode::Head,
                            Framing::Length(n) => Mode::Body(n),
                            Framing::Chunked => Mode::Chunked(Chunk::Size),
                        };
                    }
                },
                Mode::Body(left) => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.pending.len());
                    self.ready.extend(self.pending.drain(..n));
                    let left = left - n as u64;
                    self.mode = if left == 0 {
                        Mode::Head
                    } else {
                        Mode::Body(left)
                    };
                }
                Mode::Chunked(state) => self.follow_chunked(state),
            }
        }
    }

    /// Follows a chunked body through `pending`, passing every byte on.
    fn follow_chunked(&mut self, state: Chunk) {
        match state {
            Chunk::Data(left) => {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(self.pending.len());
                self.ready.extend(self.pending.drain(..n));
                let left = left - n as u64;
                self.mode = Mode::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
            }
            Chunk::Size | Chunk::DataEnd | Chunk::Trailers => {
                // Line-oriented: up to and including `\n`.
                let Some(end) = self.pending.iter().position(|b| *b == b'\n') else {
                    self.line.extend_from_slice(&self.pending);
                    self.ready.append(&mut self.pending);
                    if self.line.len() > MAX_CHUNK_LINE {
                        self.mode = Mode::Passthrough;
                    }
                    return;
                };
                self.line.extend_from_slice(&self.pending[..end]);
                self.ready.extend(self.pending.drain(..=end));
                let line = std::mem::take(&mut self.line);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                self.mode = match state {
                    Chunk::Size => match chunk_size(line) {
                        Some(0) => Mode::Chunked(Chunk::Trailers),
                        Some(n) => Mode::Chunked(Chunk::Data(n)),
                        // hyper refuses the body; nothing after it is a request.
                        None => Mode::Passthrough,
                    },
                    Chunk::DataEnd if line.is_empty() => Mode::Chunked(Chunk::Size),
                    Chunk::DataEnd => Mode::Passthrough,
                    Chunk::Trailers if line.is_empty() => Mode::Head,
                    _ => Mode::Chunked(Chunk::Trailers),
                };
            }
        }
    }
}

/// A chunk-size line's size (hex, optionally followed by `;extensions`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let hex = line.split(|b| *b == b';').next()?;
    let hex = std::str::from_utf8(hex).ok()?.trim_end_matches([' ', '\t']);
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadCheck {
    Partial,
    Complete { len: usize, body: Framing },
    Refused(Refusal),
}

/// Checks a request head at the start of `buf` as hyper would parse it, plus the `Host` rule.
fn check_head(buf: &[u8], max_head: usize) -> HeadCheck {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) => return HeadCheck::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return HeadCheck::Refused(Refusal::TooManyHeaders),
        Err(_) => return HeadCheck::Refused(Refusal::Malformed),
    };
    if len > max_head {
        return HeadCheck::Refused(Refusal::HeadTooLarge);
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return HeadCheck::Refused(Refusal::Malformed);
    };
    if path.len() > MAX_URI_LEN {
        return HeadCheck::Refused(Refusal::UriTooLong);
    }
    if axum::http::Method::from_bytes(method.as_bytes()).is_err()
        || axum::http::Uri::try_from(path).is_err()
    {
        return HeadCheck::Refused(Refusal::Malformed);
    }
    let http11 = version == 1;
    let mut hosts = 0usize;
    let mut host_ok = true;
    let mut length: Option<u64> = None;
    let mut te = false;
    let mut te_chunked = false;
    for h in req.headers.iter() {
        if header::HeaderName::from_bytes(h.name.as_bytes()).is_err()
            || header::HeaderValue::from_bytes(h.value).is_err()
        {
            return HeadCheck::Refused(Refusal::Malformed);
        }
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host_ok &= h.value.is_empty() || axum::http::uri::Authority::try_from(h.value).is_ok();
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return HeadCheck::Refused(Refusal::Malformed);
            }
            te = true;
            te_chunked = std::str::from_utf8(h.value).is_ok_and(|v| {
                v.rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            });
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = digits(h.value) else {
                return HeadCheck::Refused(Refusal::Malformed);
            };
            if length.is_some_and(|prev| prev != n) {
                return HeadCheck::Refused(Refusal::Malformed);
            }
            length = Some(n);
        }
    }
    if !host_ok || hosts > 1 || (http11 && hosts == 0) {
        return HeadCheck::Refused(Refusal::HostInvalid);
    }
    if te && !te_chunked {
        return HeadCheck::Refused(Refusal::Malformed);
    }
    let body = if te {
        Framing::Chunked
    } else {
        match length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };
    HeadCheck::Complete { len, body }
}

/// A `Content-Length` value: ASCII digits only (no sign, no list), as hyper reads it.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_pos < this.ready.len() {
                let n = (this.ready.len() - this.ready_pos).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match this.mode {
                // Never EOF: hyper would take it for a client that went away and drop the
                // answer. It closes the connection itself after answering (`Connection: close`).
                Mode::Refused => return Poll::Pending,
                // Straight through, without copies, when nothing is held back.
                Mode::Passthrough if this.pending.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                Mode::Body(left) if this.pending.is_empty() => {
                    let want = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(buf.remaining());
                    let dst = buf.initialize_unfilled_to(want);
                    let mut rb = ReadBuf::new(dst);
                    std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    buf.advance(n);
                    if n > 0 {
                        let left = left - n as u64;
                        this.mode = if left == 0 {
                            Mode::Head
                        } else {
                            Mode::Body(left)
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                _ => {}
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                // The client is done: hyper sees the end (a partial head is dropped, as
                // hyper would drop it).
                this.eof = true;
                this.pending.clear();
                continue;
            }
            this.pending.extend_from_slice(rb.filled());
            this.advance();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// An acceptor that puts every accepted stream (after TLS, when the inner acceptor does TLS)
/// behind a [`Guarded`] wrapper.
#[derive(Clone)]
pub struct GuardAcceptor<A> {
    inner: A,
    max_head: usize,
}

impl<A> GuardAcceptor<A> {
    pub fn new(inner: A, max_head: usize) -> Self {
        Self { inner, max_head }
    }
}

type AcceptFuture<T> = Pin<Box<dyn std::future::Future<Output = io::Result<T>> + Send>>;

impl<I, S, A> axum_server::accept::Accept<I, S> for GuardAcceptor<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Guarded<A::Stream>;
    type Service = A::Service;
    type Future = AcceptFuture<(Self::Stream, Self::Service)>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let max_head = self.max_head;
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((Guarded::new(stream, max_head), service))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(s: &str) -> HeadCheck {
        check_head(s.as_bytes(), 16_384)
    }

    #[test]
    fn heads_are_checked_as_hyper_would_plus_host() {
        let head = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            check(&format!("{head}GET /next")),
            HeadCheck::Complete {
                len: head.len(),
                body: Framing::Empty
            }
        );
        assert_eq!(
            check("GET /healthz HTTP/1.1\r\nHost: a\r\n"),
            HeadCheck::Partial
        );
        assert_eq!(
            check("GET /healthz HTTP/1.1\r\n\r\n"),
            HeadCheck::Refused(Refusal::HostInvalid)
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
            HeadCheck::Refused(Refusal::HostInvalid)
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            HeadCheck::Refused(Refusal::HostInvalid)
        );
        // HTTP/1.0 may leave Host out.
        assert!(matches!(
            check("GET / HTTP/1.0\r\n\r\n"),
            HeadCheck::Complete { .. }
        ));
        assert_eq!(
            check("GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadCheck::Refused(Refusal::Malformed)
        );
        assert_eq!(
            check("G(T / HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadCheck::Refused(Refusal::Malformed)
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            HeadCheck::Refused(Refusal::Malformed)
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"),
            HeadCheck::Refused(Refusal::Malformed)
        );
        assert_eq!(
            check("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            HeadCheck::Refused(Refusal::Malformed)
        );
        assert!(matches!(
            check("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"),
            HeadCheck::Complete {
                body: Framing::Length(5),
                ..
            }
        ));
        assert!(matches!(
            check(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            HeadCheck::Complete {
                body: Framing::Chunked,
                ..
            }
        ));
        let many: String = (0..101).map(|i| format!("X-{i}: a\r\n")).collect();
        assert_eq!(
            check(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            HeadCheck::Refused(Refusal::TooManyHeaders)
        );
        assert_eq!(
            check_head(
                format!(
                    "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
                    "a".repeat(200)
                )
                .as_bytes(),
                100
            ),
            HeadCheck::Refused(Refusal::HeadTooLarge)
        );
    }

    #[test]
    fn percent_encoded_paths_must_decode_to_utf8() {
        assert!(path_is_utf8("/v1/accounts/acc_1"));
        assert!(path_is_utf8("/v1/caf%C3%A9"));
        assert!(path_is_utf8("/v1/100%"));
        assert!(path_is_utf8("/v1/%zz"));
        assert!(!path_is_utf8("/v1/accounts/%c0%ae"));
        assert!(!path_is_utf8("/v1/%ff"));
    }

    #[test]
    fn refusals_round_trip_only_with_the_secret() {
        let raw = synthetic_request(Refusal::TooManyHeaders);
        let text = String::from_utf8(raw).unwrap_or_default();
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{MARKER}: ")))
            .unwrap_or_default()
            .to_owned();
        let mut h = HeaderMap::new();
        h.insert(
            MARKER,
            value
                .parse()
                .unwrap_or_else(|_| unreachable!("header value")),
        );
        assert_eq!(refusal_of(&h), Some(Refusal::TooManyHeaders));
        h.insert(
            MARKER,
            header::HeaderValue::from_static("00000000000000000000000000000000 too_many_headers"),
        );
        assert_eq!(refusal_of(&h), None);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0;ext=1"), Some(0));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"zz"), None);
    }
}
