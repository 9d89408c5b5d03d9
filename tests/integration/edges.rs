//! Edges found by outside tools (issue 13 item 18), tried over raw sockets against a
//! `kasho serve` child process: answers the HTTP layer used to make on its own (431 for an
//! oversized head, more than 100 headers, a malformed head, a long request target, a path with
//! invalid percent-encoding) come in the error shape with the security headers; `Host` is
//! required once; keep-alive connections are followed from head to head; the development key
//! material is read by `openssl` and Python `cryptography`; /docs calls no outside host.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend_tests;
use crate::support::{Served, TestApp, free_port, generous_limits_env, serve_command};

async fn serve(app: &TestApp, extra: &[(&str, &str)]) -> Served {
    let port = free_port();
    let log = app.data_dir.path().join(format!("edges-{port}.log"));
    let mut cmd = serve_command(app.data_dir.path(), &app.database_url, port, &log);
    for (k, v) in generous_limits_env() {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Served::start(cmd, port, log).await
}

/// One answer read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// Writes `bytes` on a fresh connection and reads every answer until the server closes it.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<Answer> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("the server closes the connection")
        .unwrap_or(0);
    parse_answers(&raw)
}

fn parse_answers(mut raw: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        raw = &raw[end + 4..];
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            let b = raw[..len.min(raw.len())].to_vec();
            raw = &raw[len.min(raw.len())..];
            b
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut b = Vec::new();
            while let Some(nl) = raw.windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&raw[..nl])
                        .split(';')
                        .next()
                        .unwrap_or("0")
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                raw = &raw[nl + 2..];
                if size == 0 {
                    raw = raw.get(2..).unwrap_or(&[]);
                    break;
                }
                b.extend_from_slice(&raw[..size]);
                raw = &raw[size + 2..];
            }
            b
        } else {
            Vec::new()
        };
        out.push(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    out
}

/// The error shape and the headers every answer carries.
fn assert_shaped(what: &str, a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}");
    assert_eq!(a.code(), code, "{what}: {a:?}");
    let e = &a.json()["error"];
    assert_eq!(e["type"], "invalid_request_error", "{what}: {a:?}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}"
    );
    let id = a.header("x-request-id").unwrap_or("");
    assert!(id.starts_with("req_"), "{what}: {a:?}");
    assert_eq!(e["request_id"], id, "{what}: {a:?}");
    assert!(
        a.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{what}: {a:?}"
    );
    assert_eq!(
        a.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(a.header("x-frame-options"), Some("DENY"), "{what}");
    assert_eq!(a.header("cache-control"), Some("no-store"), "{what}");
    assert!(
        a.header("content-security-policy")
            .is_some_and(|v| v.contains("default-src 'none'")),
        "{what}: {a:?}"
    );
}

fn one(mut answers: Vec<Answer>, what: &str) -> Answer {
    assert_eq!(answers.len(), 1, "{what}: {answers:?}");
    answers.remove(0)
}

async fn answers_below_the_application_come_in_the_error_shape(app: &TestApp) {
    let server = serve(app, &[]).await;
    let addr = server.addr();

    // A request head over max_header_bytes (16 KiB): 431, shaped, and the connection ends.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: kasho\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let a = one(exchange(addr, big.as_bytes()).await, "oversized head");
    assert_shaped("oversized head", &a, 431, "request_headers_too_large");
    assert_eq!(a.header("connection"), Some("close"));

    // More than 100 header lines.
    let many: String = (0..101).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let a = one(
        exchange(
            addr,
            format!("GET /healthz HTTP/1.1\r\nHost: kasho\r\n{many}\r\n").as_bytes(),
        )
        .await,
        "too many headers",
    );
    assert_shaped("too many headers", &a, 431, "too_many_headers");
    // 100 are fine.
    let hundred: String = (0..98).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let a = one(
        exchange(
            addr,
            format!("GET /healthz HTTP/1.1\r\nHost: kasho\r\nConnection: close\r\n{hundred}\r\n")
                .as_bytes(),
        )
        .await,
        "100 headers",
    );
    assert_eq!(a.status, 200, "{a:?}");

    // Heads hyper cannot parse.
    for (what, head) in [
        (
            "a header line without a colon",
            "GET /healthz HTTP/1.1\r\nHost: kasho\r\nNot a header\r\n\r\n",
        ),
        (
            "an unknown HTTP version",
            "GET /healthz HTTP/7.0\r\nHost: kasho\r\n\r\n",
        ),
        (
            "a method that is not a token",
            "G(T /healthz HTTP/1.1\r\nHost: kasho\r\n\r\n",
        ),
        (
            "two different Content-Lengths",
            "POST /v1/auth/refresh HTTP/1.1\r\nHost: kasho\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        ),
        (
            "a Transfer-Encoding that does not end in chunked",
            "POST /v1/auth/refresh HTTP/1.1\r\nHost: kasho\r\nTransfer-Encoding: gzip\r\n\r\n",
        ),
    ] {
        let a = one(exchange(addr, head.as_bytes()).await, what);
        assert_shaped(what, &a, 400, "malformed_request");
    }

    // A path whose percent-encoding is not UTF-8 (an overlong `.`), on a route and off one.
    for path in ["/v1/accounts/%c0%ae", "/%ff%fe"] {
        let a = one(
            exchange(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: kasho\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await,
            path,
        );
        assert_shaped(path, &a, 400, "invalid_path");
    }

    // Host: exactly one on HTTP/1.1; HTTP/1.0 may leave it out.
    for (what, head) in [
        ("no Host", "GET /healthz HTTP/1.1\r\n\r\n"),
        (
            "two Hosts",
            "GET /healthz HTTP/1.1\r\nHost: kasho\r\nHost: other\r\n\r\n",
        ),
        (
            "two Hosts on HTTP/1.0",
            "GET /healthz HTTP/1.0\r\nHost: kasho\r\nHost: other\r\n\r\n",
        ),
        (
            "a Host that is no authority",
            "GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
        ),
    ] {
        let a = one(exchange(addr, head.as_bytes()).await, what);
        assert_shaped(what, &a, 400, "host_header_invalid");
    }
    let a = one(
        exchange(addr, b"GET /healthz HTTP/1.0\r\n\r\n").await,
        "HTTP/1.0 without Host",
    );
    assert_eq!(a.status, 200, "{a:?}");
    drop(server);

    // A request target longer than hyper takes (reachable with a larger head limit).
    let server = serve(app, &[("KASHO_MAX_HEADER_BYTES", "131072")]).await;
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: kasho\r\n\r\n",
        "a".repeat(70_000)
    );
    let a = one(
        exchange(server.addr(), long.as_bytes()).await,
        "long target",
    );
    assert_shaped("long target", &a, 414, "uri_too_long");
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

async fn keep_alive_connections_are_checked_head_by_head(app: &TestApp) {
    let server = serve(app, &[]).await;
    // Pipelined on one connection: a body by Content-Length, a chunked body (whose chunks look
    // nothing like a request head), a plain request, then a head too large. Each body is passed
    // whole, the next head found after it, and the bad head refused after the good answers.
    let json = r#"{"refresh_token":"not-a-token"}"#;
    let (first, second) = json.split_at(10);
    let pipelined = format!(
        "POST /v1/auth/refresh HTTP/1.1\r\nHost: kasho\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}\
         POST /v1/auth/refresh HTTP/1.1\r\nHost: kasho\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{first}\r\n{:x};ext=1\r\n{second}\r\n0\r\nX-Trailer: GET / HTTP/1.1\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: kasho\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: kasho\r\nX-Pad: {}\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: kasho\r\n\r\n",
        json.len(),
        first.len(),
        second.len(),
        "a".repeat(20_000),
    );
    let answers = exchange(server.addr(), pipelined.as_bytes()).await;
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![401, 401, 200, 431],
        "{answers:?}"
    );
    // The refresh bodies reached the handler intact (a JSON error about the token, not the
    // body), and nothing after the refused head was served.
    assert_eq!(answers[0].code(), "invalid_token", "{:?}", answers[0]);
    assert_eq!(answers[1].code(), "invalid_token", "{:?}", answers[1]);
    assert_shaped(
        "refused after keep-alive",
        &answers[3],
        431,
        "request_headers_too_large",
    );

    // HTTP/2 with prior knowledge still passes the guard (hyper answers its preface with a
    // SETTINGS frame).
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut frame))
        .await
        .expect("an HTTP/2 answer")
        .unwrap();
    assert_eq!(frame[3], 0x04, "a SETTINGS frame: {frame:?}");
}

async fn the_docs_page_calls_no_outside_host_and_serves_no_oauth_redirect(app: &TestApp) {
    let (status, init) = get_text(app, "/docs/swagger-initializer.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        init.contains(r#""validatorUrl": "none""#),
        "Swagger UI would call validator.swagger.io: {init}"
    );
    for path in ["/docs/oauth2-redirect.html", "/docs/oauth2-redirect.js"] {
        let r = app.request(Method::GET, path, None, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {r:?}");
        assert_eq!(r.code(), "resource_missing", "{path}");
    }
    // The page itself still loads.
    let (status, page) = get_text(app, "/docs/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("swagger-initializer.js"), "{page}");
}

/// A GET answered as text (the docs assets are not JSON).
async fn get_text(app: &TestApp, path: &str) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let resp = app
        .router
        .clone()
        .oneshot(
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn python_has_cryptography() -> bool {
    Command::new("python3")
        .args(["-c", "import cryptography.x509.verification"])
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn development_key_material_is_read_by_the_standard_tools(app: &TestApp) {
    // The generated JWT signing key (the test app generated it, as `kasho serve` does in
    // development): PKCS#8 v1, which `openssl pkey` 3.0 and Python `cryptography` read.
    let jwt = app.data_dir.path().join("keys").join("jwt-signing-key.pem");
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(&jwt)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl pkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = Command::new("openssl")
        .args(["asn1parse", "-in"])
        .arg(&jwt)
        .output()
        .unwrap();
    let der = String::from_utf8_lossy(&der.stdout).into_owned();
    assert!(
        der.lines()
            .find(|l| l.contains("INTEGER"))
            .is_some_and(|l| l.trim_end().ends_with(":00")),
        "PKCS#8 version 0 (v1): {der}"
    );

    // A development certificate: Subject and Authority Key Identifiers.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kasho"))
        .args(["dev-cert", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cert = dir.path().join("cert.pem");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("X509v3 Authority Key Identifier")
            && text.contains("X509v3 Subject Key Identifier"),
        "{text}"
    );

    if !python_has_cryptography() {
        eprintln!(
            "python3 with `cryptography` is not installed: skipping the strict-verifier checks \
             (pip install cryptography)"
        );
        return;
    }
    let script = r#"
import sys
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from cryptography.hazmat.primitives.serialization import load_pem_private_key
cert = x509.load_pem_x509_certificate(open(sys.argv[1], 'rb').read())
verifier = PolicyBuilder().store(Store([cert])).build_server_verifier(x509.DNSName("localhost"))
verifier.verify(cert, [])
load_pem_private_key(open(sys.argv[2], 'rb').read(), None)
print("verified")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&cert)
        .arg(&jwt)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("verified"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The checks that do not depend on the wire, in process: an HTTP/2 header list over
/// `max_header_bytes` (HTTP/1 heads are refused by the wire guard; over HTTP/2 the h2 layer
/// lets lists up to 4 × through, for the application to answer in the error shape), two
/// `Host` headers on any protocol, and a path that does not decode to UTF-8.
async fn protocol_independent_checks_answer_in_the_error_shape(app: &TestApp) {
    let build = |version: axum::http::Version, pad: usize| {
        axum::http::Request::get("/healthz")
            .version(version)
            .header("x-pad", "a".repeat(pad))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let r = app.send(build(axum::http::Version::HTTP_2, 17_000)).await;
    assert_eq!(
        r.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{r:?}"
    );
    assert_eq!(r.code(), "request_headers_too_large");
    assert_eq!(
        r.headers.get("x-content-type-options").unwrap(),
        "nosniff",
        "{r:?}"
    );
    let r = app.send(build(axum::http::Version::HTTP_2, 8_000)).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let r = app
        .send(
            axum::http::Request::get("/healthz")
                .header("host", "a")
                .header("host", "b")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "host_header_invalid");
    let r = app
        .request(Method::GET, "/v1/accounts/%c0%ae", None, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "invalid_path");
}

backend_tests!(
    answers_below_the_application_come_in_the_error_shape,
    keep_alive_connections_are_checked_head_by_head,
    the_docs_page_calls_no_outside_host_and_serves_no_oauth_redirect,
    development_key_material_is_read_by_the_standard_tools,
    protocol_independent_checks_answer_in_the_error_shape,
);
