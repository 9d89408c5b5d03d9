//! No personal data or secret in the logs: a real `kasho serve` runs the main flows with
//! distinctive canary values at debug level, and its captured output must not contain any.
//! Lines logged while serving a request carry its request id, and the metrics listener shows
//! the request, authentication-failure and transfer series moving after those flows.

use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{PASSWORD, Served, TestApp, free_port, http1, serve_command};

pub const CANARY_FIRST: &str = "Wilhelmina";
pub const CANARY_LAST: &str = "Canarysdottir";
pub const CANARY_EMAIL: &str = "wilhelmina.canary@example.org";
pub const CANARY_PHONE: &str = "+2348031234567";
pub const CANARY_NIN: &str = "73519284601";
pub const CANARY_DESCRIPTION: &str = "Birthday gift for Wilhelmina";
pub const CANARY_COUNTERPARTY: &str = "Bartholomew Canaryfield";

/// One request on a fresh connection: status and JSON body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| ("Authorization", b))
        .into_iter()
        .collect();
    let r = http1(addr, method, path, &headers, body).await;
    (r.status, r.json())
}

/// A plain GET returning the status and the body text (the metrics listener).
async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = http1(addr, "GET", path, &[], None).await;
    (r.status, r.body)
}

/// The value of `name` on the series whose labels include all of `labels` (summed), 0 if none.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.trim().parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

async fn the_logs_never_carry_personal_data_or_secrets(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let port = free_port();
    let metrics_port = free_port();
    let log_path = app.data_dir.path().join("server.log");
    let mut cmd = serve_command(app.data_dir.path(), &app.database_url, port, &log_path);
    cmd.env("KASHO_LOG_LEVEL", "debug")
        .env("KASHO_LOG_FORMAT", "json")
        // Thousands of requests from one address and one token: not what this test is about.
        .envs(crate::support::generous_limits_env())
        .env("KASHO_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"));
    let mut server = Served::start(cmd, port, log_path.clone()).await;
    let addr = server.addr();
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let (s, before) = get_text(metrics_addr, "/metrics").await;
    assert_eq!(s, 200, "{before}");
    // Without metrics_token the main listener does not serve them.
    let (s, _) = http(addr, "GET", "/metrics", None, None).await;
    assert_eq!(s, 404);

    // Sign in (the password is a secret too), and fail to with a canary email.
    let (s, login) = http(
        addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(&json!({ "tenant": t.slug, "email": "manager@acme.test", "password": PASSWORD })),
    )
    .await;
    assert_eq!(s, 200, "{login}");
    let m = login["access_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let (s, failed) = http(
        addr,
        "POST",
        "/v1/auth/login",
        None,
        Some(&json!({ "tenant": t.slug, "email": CANARY_EMAIL, "password": "wrong-canary-password" })),
    )
    .await;
    assert_eq!(s, 401);
    let failed_request = failed["error"]["request_id"].as_str().unwrap().to_owned();

    // A customer with its personal data, searched for and rectified.
    let profile = json!({
        "first_name": CANARY_FIRST, "last_name": CANARY_LAST, "email": CANARY_EMAIL,
        "phone": CANARY_PHONE, "date_of_birth": "1990-04-12",
        "nationality": "NG",
        "address": { "line1": "12 Canary Wharf Road", "city": "Lagos", "country": "NG" },
        "national_ids": [{ "type": "NIN", "number": CANARY_NIN }]
    });
    let (s, c) = http(addr, "POST", "/v1/customers", Some(&m), Some(&profile)).await;
    assert_eq!(s, 201, "{c}");
    let cid = c["id"].as_str().unwrap().to_owned();
    let q = format!("/v1/customers?email={}", CANARY_EMAIL.replace('@', "%40"));
    let (s, _) = http(addr, "GET", &q, Some(&m), None).await;
    assert_eq!(s, 200);
    let (s, _) = http(
        addr,
        "GET",
        &format!("/v1/customers/{cid}?unmasked=true"),
        Some(&m),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = http(
        addr,
        "PATCH",
        &format!("/v1/customers/{cid}"),
        Some(&m),
        Some(&json!({ "phone": "+2348039999999" })),
    )
    .await;
    assert_eq!(s, 200);
    // Bad input echoing a canary must not log it either.
    let (s, _) = http(
        addr,
        "POST",
        "/v1/customers",
        Some(&m),
        Some(
            &json!({ "first_name": CANARY_FIRST, "email": format!("{CANARY_LAST}-not-an-email") }),
        ),
    )
    .await;
    assert!(s >= 400);

    // Money with details, read back.
    let (s, a) = http(
        addr,
        "POST",
        "/v1/accounts",
        Some(&m),
        Some(&json!({ "customer_id": cid, "currency": "USD" })),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let acc = a["id"].as_str().unwrap().to_owned();
    let (s, d) = http(
        addr,
        "POST",
        "/v1/deposits",
        Some(&m),
        Some(
            &json!({ "account_id": acc, "amount": 500, "currency": "USD",
                      "description": CANARY_DESCRIPTION,
                      "counterparty": { "name": CANARY_COUNTERPARTY } }),
        ),
    )
    .await;
    assert_eq!(s, 201, "{d}");
    let (s, _) = http(
        addr,
        "GET",
        &format!("/v1/transfers/{}", d["id"].as_str().unwrap()),
        Some(&m),
        None,
    )
    .await;
    assert_eq!(s, 200);
    // Refresh, then replay the spent refresh token (a logged security event).
    let (s, _) = http(
        addr,
        "POST",
        "/v1/auth/refresh",
        None,
        Some(&json!({ "refresh_token": refresh })),
    )
    .await;
    assert_eq!(s, 200);
    let (s, reused) = http(
        addr,
        "POST",
        "/v1/auth/refresh",
        None,
        Some(&json!({ "refresh_token": refresh })),
    )
    .await;
    assert_eq!(s, 401);
    let reuse_request = reused["error"]["request_id"].as_str().unwrap().to_owned();

    let (s, after) = get_text(metrics_addr, "/metrics").await;
    assert_eq!(s, 200, "{after}");
    let moved =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    assert!(
        moved(
            "kasho_http_requests_total",
            &[r#"route="/v1/auth/login""#, r#"status="200""#]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        moved(
            "kasho_http_requests_total",
            &[r#"route="/v1/customers/{id}""#, r#"method="PATCH""#]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        moved(
            "kasho_http_request_duration_seconds_count",
            &[r#"route="/v1/deposits""#]
        ) >= 1.0,
        "{after}"
    );
    assert!(moved("kasho_auth_failures_total", &[r#"reason="login_failed""#]) >= 1.0);
    assert!(
        moved(
            "kasho_auth_failures_total",
            &[r#"reason="refresh_token_reused""#]
        ) >= 1.0
    );
    assert!(
        moved("kasho_transfers_total", &[r#"outcome="posted""#]) >= 1.0,
        "{after}"
    );
    assert!(moved("kasho_security_alerts_total", &[r#"severity="high""#]) >= 1.0);
    assert!(!after.contains(&cid), "an id became a metric label");

    server.kill();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    // The capture works: the server logged the requests it served.
    assert!(
        logs.contains("\"request\""),
        "no request lines captured:\n{logs}"
    );
    assert!(logs.contains("/v1/customers"), "{logs}");
    // Lines logged while serving a request carry its id (the request span), including the
    // security event and the alert of the refresh-token reuse.
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let carries = |request: &str, message: &str| {
        lines
            .iter()
            .any(|l| l["span"]["request_id"].as_str() == Some(request) && l["message"] == message)
    };
    // The failed sign-in's own lines (its queries, at debug level) carry its id too.
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["request_id"].as_str() == Some(failed_request.as_str())),
        "{logs}"
    );
    assert!(
        carries(
            &reuse_request,
            "a spent refresh token was presented again; the session is revoked"
        ),
        "{logs}"
    );
    assert!(carries(&reuse_request, "security alert"), "{logs}");
    assert!(
        lines.iter().any(|l| l["target"] == "kasho::alert"
            && l["level"] == "WARN"
            && l["security_event"] == "refresh_token_reused"),
        "{logs}"
    );
    // Every line logged inside a request span names a well-formed request id.
    let spanned = lines.iter().filter(|l| !l["span"].is_null()).count();
    assert!(spanned > 10, "few lines inside request spans:\n{logs}");
    for l in lines.iter().filter(|l| l["span"]["name"] == "request") {
        let id = l["span"]["request_id"].as_str().unwrap_or("");
        assert!(id.starts_with("req_") && id.len() == 36, "{l}");
    }
    for canary in [
        CANARY_FIRST,
        CANARY_LAST,
        CANARY_EMAIL,
        CANARY_PHONE,
        CANARY_NIN,
        CANARY_DESCRIPTION,
        CANARY_COUNTERPARTY,
        "wilhelmina.canary%40example.org",
        PASSWORD,
        "wrong-canary-password",
        &refresh,
        &m,
    ] {
        assert!(!logs.contains(canary), "`{canary}` appears in the logs");
    }
}

backend_tests!(the_logs_never_carry_personal_data_or_secrets);
