//! HTTP hygiene a client relies on: security headers on every answer (every route of the
//! table, and the error answers), body limits in the error shape (with and without
//! Content-Length), the request time limit (408 for a stalled body, 503 for a slow server,
//! retries with the same idempotency key safe), and strict JSON on the main write routes.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{Backend, Resp, TestApp};

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The headers every API answer carries (REFERENCE, Transport and platform).
fn assert_security_headers(what: &str, r: &Resp) {
    assert_eq!(
        header(r, "x-content-type-options"),
        Some("nosniff"),
        "{what}: {r:?}"
    );
    assert_eq!(
        header(r, "referrer-policy"),
        Some("no-referrer"),
        "{what}: {r:?}"
    );
    assert_eq!(header(r, "x-frame-options"), Some("DENY"), "{what}: {r:?}");
    let csp = header(r, "content-security-policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{what}: CSP {csp:?}"
    );
    assert_eq!(header(r, "cache-control"), Some("no-store"), "{what}: {r:?}");
    assert!(
        header(r, "x-request-id").is_some_and(|v| v.starts_with("req_")),
        "{what}"
    );
}

/// Error answers are in the one error shape.
fn assert_error_shape(what: &str, r: &Resp) {
    let e = &r.body["error"];
    assert!(
        e["type"].is_string() && e["code"].is_string() && e["message"].is_string(),
        "{what}: {r:?}"
    );
    assert!(e["request_id"].is_string(), "{what}: {r:?}");
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "xyz_00000000000000000000000000000000")
}

async fn raw(app: &TestApp, method: Method, path: &str, token: Option<&str>, body: Body) -> Resp {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req = req.header("content-type", "application/json");
    app.send(req.body(body).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_and_every_error_answer_carries_the_security_headers() {
    // A low per-address sign-in budget, so a 429 is quick to provoke.
    let app = TestApp::with_config(Backend::Sqlite, &[("login_ip_max_failures", "5")]).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;

    // Every route of the table: unauthenticated, then as the manager (sign-outs last, so the
    // manager's token lives through the walk).
    let mut table = kasho::http::routes::table();
    table.sort_by_key(|d| d.action.starts_with("auth.logout") || d.action.starts_with("session."));
    let mut statuses = std::collections::BTreeSet::new();
    for token in [None, Some(t.manager_token.as_str())] {
        for def in &table {
            let path = concrete(def.path);
            let body = if matches!(def.method, Method::GET | Method::DELETE) {
                None
            } else {
                Some(json!({}))
            };
            let r = app.request(def.method.clone(), &path, token, body).await;
            let what = format!("{} {} (token: {})", def.method, def.path, token.is_some());
            assert_security_headers(&what, &r);
            assert!(r.status.as_u16() < 500, "{what}: {r:?}");
            if r.status.is_client_error() {
                assert_error_shape(&what, &r);
            }
            statuses.insert(r.status.as_u16());
        }
    }
    // The walk met successes and the usual refusals.
    for s in [200, 400, 401, 404] {
        assert!(statuses.contains(&s), "{statuses:?}");
    }

    // The error answers no route produces itself.
    let t2 = app.tenant(&admin, "globex").await;
    let m = t2.manager_token.as_str();
    let cases: Vec<(&str, Resp)> = vec![
        ("404", app.get("/v1/no-such-route", m).await),
        ("404 unauthenticated", app.request(Method::GET, "/nope", None, None).await),
        ("405", app.request(Method::PATCH, "/v1/transfers", Some(m), None).await),
        (
            "413",
            raw(&app, Method::POST, "/v1/customers", Some(m), Body::from(vec![b' '; 2 << 20])).await,
        ),
        (
            "415",
            app.send(
                Request::builder()
                    .method(Method::POST)
                    .uri("/v1/customers")
                    .header("authorization", format!("Bearer {m}"))
                    .header("content-type", "text/plain")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await,
        ),
        (
            "OPTIONS preflight refused",
            app.send(
                Request::builder()
                    .method(Method::OPTIONS)
                    .uri("/v1/transfers")
                    .header("origin", "https://evil.example")
                    .header("access-control-request-method", "POST")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await,
        ),
        ("OPTIONS", app.request(Method::OPTIONS, "/v1/transfers", None, None).await),
        ("/v1/openapi.json", app.request(Method::GET, "/v1/openapi.json", None, None).await),
    ];
    for (what, r) in &cases {
        assert_security_headers(what, r);
    }
    assert_eq!(cases[2].1.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(cases[3].1.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(cases[4].1.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for (what, r) in &cases[..6] {
        assert_error_shape(what, r);
    }

    // 429: the address's sign-in budget spent.
    let mut last = None;
    for _ in 0..7 {
        last = Some(app.login(Some("acme"), "nobody@acme.test", "wrong password!!").await);
    }
    let r = last.unwrap();
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert!(header(&r, "retry-after").is_some());
    assert_security_headers("429", &r);
    assert_error_shape("429", &r);
    app.cleanup().await;
}

/// A request body sent in chunks without a Content-Length; after the last chunk it either
/// ends or, `stall`, never finishes (a client that stops sending).
struct Chunks {
    left: Vec<Bytes>,
    stall: bool,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        if self.left.is_empty() {
            return if self.stall {
                Poll::Pending
            } else {
                Poll::Ready(None)
            };
        }
        let next = self.left.remove(0);
        Poll::Ready(Some(Ok(http_body::Frame::data(next))))
    }
}

fn chunked(chunks: Vec<Bytes>, stall: bool) -> Body {
    Body::new(Chunks {
        left: chunks,
        stall,
    })
}

async fn a_chunked_body_over_the_limit_is_413_in_the_error_shape(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let before = app.raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM customers").await;
    // No Content-Length: the limit is enforced while reading.
    let body = chunked(
        (0..40).map(|_| Bytes::from(vec![b' '; 64 * 1024])).collect(),
        false,
    );
    let r = raw(app, Method::POST, "/v1/customers", Some(&t.manager_token), body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{r:?}");
    assert_eq!(r.code(), "request_too_large");
    assert_error_shape("chunked 413", &r);
    assert_security_headers("chunked 413", &r);
    // The same with a Content-Length that says so up front.
    let r = raw(
        app,
        Method::POST,
        "/v1/deposits",
        Some(&t.manager_token),
        Body::from(vec![b' '; (1 << 20) + 1]),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{r:?}");
    assert_eq!(r.code(), "request_too_large");
    assert_eq!(
        app.raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM customers").await,
        before
    );
}
