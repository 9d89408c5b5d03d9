//! HTTP hygiene a client relies on: security headers on every answer (every route of the
//! table, and the error answers), body limits in the error shape (with and without
//! Content-Length), the request time limit (408 for a stalled body, 503 for a slow server,
//! retries with the same idempotency key safe), and strict JSON on the main write routes.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use serde_json::json;

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
    assert_eq!(
        header(r, "cache-control"),
        Some("no-store"),
        "{what}: {r:?}"
    );
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
        (
            "404 unauthenticated",
            app.request(Method::GET, "/nope", None, None).await,
        ),
        (
            "405",
            app.request(Method::PATCH, "/v1/transfers", Some(m), None)
                .await,
        ),
        (
            "413",
            raw(
                &app,
                Method::POST,
                "/v1/customers",
                Some(m),
                Body::from(vec![b' '; 2 << 20]),
            )
            .await,
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
        (
            "OPTIONS",
            app.request(Method::OPTIONS, "/v1/transfers", None, None)
                .await,
        ),
        (
            "/v1/openapi.json",
            app.request(Method::GET, "/v1/openapi.json", None, None)
                .await,
        ),
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
        last = Some(
            app.login(Some("acme"), "nobody@acme.test", "wrong password!!")
                .await,
        );
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
    let before = app
        .raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM customers")
        .await;
    // No Content-Length: the limit is enforced while reading.
    let body = chunked(
        (0..40)
            .map(|_| Bytes::from(vec![b' '; 64 * 1024]))
            .collect(),
        false,
    );
    let r = raw(
        app,
        Method::POST,
        "/v1/customers",
        Some(&t.manager_token),
        body,
    )
    .await;
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
        app.raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM customers")
            .await,
        before
    );
}

/// A customer with a USD account, for the money routes.
async fn funded_account(app: &TestApp, token: &str) -> String {
    let c = app.post("/v1/customers", Some(token), json!({})).await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    let a = app
        .post(
            "/v1/accounts",
            Some(token),
            json!({ "customer_id": c.body["id"], "currency": "USD" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    a.body["id"].as_str().unwrap().to_owned()
}

async fn posted_balance(app: &TestApp, token: &str, account: &str) -> i64 {
    let r = app.get(&format!("/v1/accounts/{account}"), token).await;
    r.body["posted_balance"].as_i64().unwrap()
}

async fn deposit(app: &TestApp, token: &str, account: &str, key: &str) -> Resp {
    app.send(
        Request::builder()
            .method(Method::POST)
            .uri("/v1/deposits")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(
                json!({ "account_id": account, "amount": 2500, "currency": "USD" }).to_string(),
            ))
            .unwrap(),
    )
    .await
}

/// A client that stops sending its body is cut off with 408 in the error shape, on time, and
/// nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_when_the_time_limit_passes() {
    let app = TestApp::with_config(Backend::Sqlite, &[("request_timeout_seconds", "1")]).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let before = app
        .raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM customers")
        .await;
    let started = Instant::now();
    let body = chunked(vec![Bytes::from_static(b"{\"first_name\": \"Ad")], true);
    let r = raw(
        &app,
        Method::POST,
        "/v1/customers",
        Some(&t.manager_token),
        body,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT, "{r:?}");
    assert_eq!(r.code(), "request_timeout");
    assert_error_shape("408", &r);
    assert_security_headers("408", &r);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        app.raw_strings("SELECT CAST(COUNT(*) AS TEXT) FROM customers")
            .await,
        before
    );
    // A prompt request on the same app is unaffected.
    assert_eq!(
        app.get("/v1/me", &t.manager_token).await.status,
        StatusCode::OK
    );
    app.cleanup().await;
}

/// A server too slow to answer (here: the database is locked by someone else) answers 503
/// `timeout`; whatever the timed-out request did, a retry with the same Idempotency-Key moves
/// the money exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_answers_503_and_a_retry_with_the_same_key_moves_money_once() {
    use sqlx::Connection;
    let app = TestApp::with_config(Backend::Sqlite, &[("request_timeout_seconds", "1")]).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let account = funded_account(&app, &t.manager_token).await;

    // Another process holds the write lock for a while.
    let mut locker = sqlx::SqliteConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let started = Instant::now();
    let r = deposit(&app, &t.manager_token, &account, "dep-slow-1").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{r:?}");
    assert_eq!(r.code(), "timeout");
    assert_eq!(r.body["error"]["type"], "api_error");
    assert_error_shape("503", &r);
    assert_security_headers("503", &r);
    assert!(started.elapsed() < Duration::from_secs(5));
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    locker.close().await.unwrap();

    // The retry either replays the deposit the timed-out request committed after all, or
    // makes it now: one deposit either way.
    let mut retried = deposit(&app, &t.manager_token, &account, "dep-slow-1").await;
    for _ in 0..50 {
        if retried.status != StatusCode::CONFLICT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        retried = deposit(&app, &t.manager_token, &account, "dep-slow-1").await;
    }
    assert_eq!(retried.status, StatusCode::CREATED, "{retried:?}");
    let again = deposit(&app, &t.manager_token, &account, "dep-slow-1").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(header(&again, "idempotency-replayed"), Some("true"));
    assert_eq!(posted_balance(&app, &t.manager_token, &account).await, 2500);
    app.cleanup().await;
}

/// One malformed request and what it must produce.
#[derive(Clone)]
struct Bad {
    what: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
    param: Option<&'static str>,
}

fn bad(
    what: &'static str,
    body: impl Into<Vec<u8>>,
    code: &'static str,
    param: Option<&'static str>,
) -> Bad {
    Bad {
        what,
        content_type: Some("application/json"),
        body: body.into(),
        status: StatusCode::BAD_REQUEST,
        code,
        param,
    }
}

/// What the write routes hold: nothing may change when a request is refused.
async fn state_counts(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    for table in [
        "customers",
        "accounts",
        "transfers",
        "entries",
        "holds",
        "users",
        "api_tokens",
        "tenants",
        "idempotency_keys",
        "tenant_security",
    ] {
        out.extend(
            app.raw_strings(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"))
                .await,
        );
    }
    out
}

/// The main write routes refuse malformed JSON with 400/413/415 in the error shape, the
/// field named where there is one, never a 500, and change nothing.
async fn malformed_json_is_refused_with_the_field_named_and_changes_nothing(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let account = funded_account(app, &t.manager_token).await;
    let other = funded_account(app, &t.manager_token).await;
    app.post(
        "/v1/deposits",
        Some(&t.manager_token),
        json!({ "account_id": account, "amount": 10_000, "currency": "USD" }),
    )
    .await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_field = format!(
        "{{\"account_id\": \"{account}\", \"amount\": 1, \"currency\": \"USD\", \"metadata\": {}}}",
        "{\"a\":".repeat(5_000) + "1" + &"}".repeat(5_000)
    );

    // Cases that hold for any JSON route.
    let generic = |amount_route: bool| {
        let mut v = vec![
            bad("empty body", "", "invalid_json", None),
            bad("not JSON", "amount=1", "invalid_json", None),
            bad("truncated", "{\"", "invalid_json", None),
            bad(
                "non-UTF-8",
                b"{\"\xff\xfe\": 1}".to_vec(),
                "invalid_json",
                None,
            ),
            bad(
                "deeply nested array",
                deep.clone(),
                "parameter_invalid",
                None,
            ),
            bad(
                "unknown field",
                "{\"surprise\": 1}",
                "parameter_unknown",
                Some("surprise"),
            ),
            Bad {
                what: "text/plain",
                content_type: Some("text/plain"),
                body: b"{}".to_vec(),
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "unsupported_media_type",
                param: None,
            },
            Bad {
                what: "no content type",
                content_type: None,
                body: b"{}".to_vec(),
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                code: "unsupported_media_type",
                param: None,
            },
            Bad {
                what: "too large",
                content_type: Some("application/json"),
                body: vec![b' '; (1 << 20) + 10],
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "request_too_large",
                param: None,
            },
        ];
        if amount_route {
            v.push(bad(
                "deep value in a field",
                deep_field.clone(),
                "parameter_invalid",
                Some("metadata.a"),
            ));
        }
        v
    };
    let money = |extra: &str| {
        let base = |amount: &str| {
            format!(
                "{{\"account_id\": \"{account}\", \"amount\": {amount}, \"currency\": \"USD\"{extra}}}"
            )
        };
        vec![
            bad(
                "amount as string",
                base("\"10\""),
                "parameter_invalid",
                Some("amount"),
            ),
            bad(
                "amount as float",
                base("1.5"),
                "parameter_invalid",
                Some("amount"),
            ),
            bad(
                "amount in exponent form",
                base("1e3"),
                "parameter_invalid",
                Some("amount"),
            ),
            bad(
                "amount beyond i64",
                base("9223372036854775808"),
                "parameter_invalid",
                Some("amount"),
            ),
            bad(
                "huge amount",
                base("1000000000000000000000000000000"),
                "parameter_invalid",
                Some("amount"),
            ),
            bad(
                "zero amount",
                base("0"),
                "parameter_invalid",
                Some("amount"),
            ),
            bad(
                "negative amount",
                base("-5"),
                "parameter_invalid",
                Some("amount"),
            ),
            bad(
                "null amount",
                base("null"),
                "parameter_invalid",
                Some("amount"),
            ),
            bad(
                "duplicate key",
                format!(
                    "{{\"account_id\": \"{account}\", \"amount\": 1, \"amount\": 2, \"currency\": \"USD\"}}"
                ),
                "parameter_duplicate",
                Some("amount"),
            ),
            bad(
                "missing amount",
                format!("{{\"account_id\": \"{account}\", \"currency\": \"USD\"}}"),
                "parameter_missing",
                Some("amount"),
            ),
            bad(
                "array instead of object",
                "[1, 2]",
                "parameter_invalid",
                None,
            ),
            bad(
                "trailing data",
                format!("{} {{}}", base("1")),
                "invalid_json",
                None,
            ),
        ]
    };
    let transfer = |amount: &str| {
        format!(
            "{{\"debit_account_id\": \"{account}\", \"credit_account_id\": \"{other}\", \"amount\": {amount}, \"currency\": \"USD\"}}"
        )
    };
    let routes: Vec<(Method, &str, Vec<Bad>)> = vec![
        (
            Method::POST,
            "/v1/deposits",
            [generic(true), money("")].concat(),
        ),
        (
            Method::POST,
            "/v1/withdrawals",
            [generic(true), money("")].concat(),
        ),
        (
            Method::POST,
            "/v1/transfers",
            [
                generic(false),
                vec![
                    bad(
                        "float",
                        transfer("0.5"),
                        "parameter_invalid",
                        Some("amount"),
                    ),
                    bad(
                        "beyond i64",
                        transfer("99999999999999999999"),
                        "parameter_invalid",
                        Some("amount"),
                    ),
                    bad("zero", transfer("0"), "parameter_invalid", Some("amount")),
                    bad(
                        "negative",
                        transfer("-1"),
                        "parameter_invalid",
                        Some("amount"),
                    ),
                ],
            ]
            .concat(),
        ),
        (
            Method::POST,
            "/v1/holds",
            [generic(false), money(", \"expires_in_seconds\": 60")].concat(),
        ),
        (
            Method::POST,
            "/v1/transfers/batch",
            [
                generic(false),
                vec![
                    bad(
                        "transfers not a list",
                        "{\"transfers\": 5}",
                        "parameter_invalid",
                        Some("transfers"),
                    ),
                    bad(
                        "float inside the batch",
                        format!("{{\"transfers\": [{}]}}", transfer("2.5")),
                        "parameter_invalid",
                        Some("transfers[0].amount"),
                    ),
                ],
            ]
            .concat(),
        ),
        (
            Method::POST,
            "/v1/customers",
            [
                generic(false),
                vec![bad(
                    "email as number",
                    "{\"email\": 5}",
                    "parameter_invalid",
                    Some("email"),
                )],
            ]
            .concat(),
        ),
        (
            Method::POST,
            "/v1/accounts",
            [
                generic(false),
                vec![bad(
                    "currency as list",
                    "{\"customer_id\": \"x\", \"currency\": [\"USD\"]}",
                    "parameter_invalid",
                    Some("currency"),
                )],
            ]
            .concat(),
        ),
        (
            Method::POST,
            "/v1/users",
            [
                generic(false),
                vec![bad(
                    "roles as string",
                    "{\"email\": \"a@b.example\", \"roles\": \"MANAGER\"}",
                    "parameter_invalid",
                    Some("roles"),
                )],
            ]
            .concat(),
        ),
        (
            Method::POST,
            "/v1/api-tokens",
            [
                generic(false),
                vec![bad(
                    "scopes as object",
                    "{\"name\": \"x\", \"scopes\": {}, \"expires_in\": \"24h\"}",
                    "parameter_invalid",
                    Some("scopes"),
                )],
            ]
            .concat(),
        ),
        (
            Method::PUT,
            "/v1/security/policy",
            [
                generic(false),
                vec![bad(
                    "negative figure",
                    "{\"lockout_threshold\": -1}",
                    "parameter_invalid",
                    Some("lockout_threshold"),
                )],
            ]
            .concat(),
        ),
        (Method::POST, "/v1/auth/login", generic(false)),
    ];

    let before = state_counts(app).await;
    let mut failures = Vec::new();
    for (method, path, cases) in &routes {
        for case in cases {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(*path)
                .header("authorization", format!("Bearer {}", t.manager_token))
                .header(
                    "idempotency-key",
                    format!("k-{}", uuid::Uuid::now_v7().simple()),
                );
            if let Some(ct) = case.content_type {
                req = req.header("content-type", ct);
            }
            let r = app
                .send(req.body(Body::from(case.body.clone())).unwrap())
                .await;
            let what = format!("{method} {path} [{}]", case.what);
            assert!(r.status.as_u16() < 500, "{what}: {r:?}");
            assert_error_shape(&what, &r);
            let param = r.body["error"]["param"].as_str();
            if r.status != case.status || r.code() != case.code || param != case.param {
                failures.push(format!(
                    "{what}: expected {} {} {:?}, got {} {} {:?}",
                    case.status,
                    case.code,
                    case.param,
                    r.status,
                    r.code(),
                    param
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        state_counts(app).await,
        before,
        "a refused request changed something"
    );
    assert_eq!(
        posted_balance(app, &t.manager_token, &account).await,
        10_000
    );
}

backend_tests!(
    a_chunked_body_over_the_limit_is_413_in_the_error_shape,
    malformed_json_is_refused_with_the_field_named_and_changes_nothing,
);
