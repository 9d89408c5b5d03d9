//! Security alerts to a signed webhook: a receiver on a real socket records what Kasho POSTs.
//! Events at or above the threshold are delivered once, signed, without personal data; lower
//! ones are not; failures are retried only after the back-off (the clock is moved, not waited
//! for) and given up after three days.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::BodyExt;
use kasho::domain::audit::Outcome;
use kasho::domain::security::SecurityEvent;
use kasho::service::alerts::deliver_due;
use kasho::service::{AuditBuilder, Core, RequestMeta};
use serde_json::{Value, json};
use sha2::Sha256;
use tower::ServiceExt;

use crate::backend_tests;
use crate::support::{PASSWORD, TestApp};

const SECRET: &str = "whsec-test-0123456789abcdef0123456789abcdef";
const PREVIOUS: &str = "whsec-previous-0123456789abcdef0123456789ab";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Seen {
    event_id: String,
    signature: String,
    content_type: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    seen: Mutex<Vec<Seen>>,
    /// Statuses to answer, in order; 200 once empty (or `always` when set).
    script: Mutex<VecDeque<u16>>,
    always: Mutex<Option<u16>>,
}

/// A webhook receiver on 127.0.0.1:<free port>.
struct Receiver {
    url: String,
    inner: Arc<Inner>,
}

impl Receiver {
    async fn start() -> Receiver {
        async fn hook(State(r): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
            let h = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            r.seen.lock().unwrap().push(Seen {
                event_id: h("kasho-event-id"),
                signature: h("kasho-signature"),
                content_type: h("content-type"),
                body: body.to_vec(),
            });
            let code = match *r.always.lock().unwrap() {
                Some(c) => c,
                None => r.script.lock().unwrap().pop_front().unwrap_or(200),
            };
            StatusCode::from_u16(code).unwrap()
        }
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/hooks/kasho", axum::routing::post(hook))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hooks/kasho"),
            inner,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    fn answer(&self, codes: &[u16]) {
        self.inner.script.lock().unwrap().extend(codes);
    }

    fn always(&self, code: u16) {
        *self.inner.always.lock().unwrap() = Some(code);
    }
}

/// An instance of the app configured to deliver alerts to `receiver`.
async fn alerting(
    app: &TestApp,
    receiver: &Receiver,
    extra: &[(&str, &str)],
) -> (Arc<Core>, Router) {
    let mut pairs = vec![
        ("alert_webhook_url", receiver.url.as_str()),
        ("alert_webhook_secret", SECRET),
    ];
    pairs.extend_from_slice(extra);
    app.instance_with(&pairs).await
}

async fn post_via(router: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Every `v1` of a `Kasho-Signature` header, and its `t`.
fn parse_signature(header: &str) -> (i64, Vec<String>) {
    let mut t = 0;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse().unwrap(),
            Some(("v1", v)) => v1.push(v.to_owned()),
            other => panic!("unexpected signature part {other:?} in {header}"),
        }
    }
    (t, v1)
}

/// What a receiver computes: hex HMAC-SHA256 of "<t>.<body>".
fn expected_mac(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Records a security event of `kind` through the alerting core, as the use cases do.
async fn raise(core: &Core, kind: SecurityEvent) {
    let meta = RequestMeta {
        request_id: Some("req_0192a0c0d0e0f0a0b0c0d0e0f0a0b0c0".into()),
        ip: Some("198.51.100.23".into()),
        user_agent: None,
    };
    let ev = AuditBuilder::new(core, &meta, None)
        .event(None, "security.test", None, Outcome::Denied, Some("test"))
        .security(kind);
    kasho::service::security::record(core, ev).await;
}

async fn a_high_severity_event_is_delivered_once_signed_and_without_personal_data(app: &TestApp) {
    let receiver = Receiver::start().await;
    let (core, router) = alerting(app, &receiver, &[]).await;
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let email = "manager@acme.test";

    // Below the threshold (a failed sign-in is low): logged as a security event, no alert.
    let (s, _) = post_via(
        &router,
        "/v1/auth/login",
        json!({ "tenant": t.slug, "email": email, "password": "not the password at all" }),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let counts = deliver_due(&core).await.unwrap();
    assert_eq!(counts.delivered + counts.retried + counts.failed, 0);
    assert!(
        receiver.seen().is_empty(),
        "a low-severity event was delivered"
    );
    assert!(core.store.security_alerts(10).await.unwrap().is_empty());

    // Refresh-token reuse is high.
    let (s, login) = post_via(
        &router,
        "/v1/auth/login",
        json!({ "tenant": t.slug, "email": email, "password": PASSWORD }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{login}");
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let (s, _) = post_via(
        &router,
        "/v1/auth/refresh",
        json!({ "refresh_token": refresh }),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, reused) = post_via(
        &router,
        "/v1/auth/refresh",
        json!({ "refresh_token": refresh }),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{reused}");

    // Durable before any delivery: the outbox row was written with the audit record.
    let queued = core.store.security_alerts(10).await.unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].status, "pending");
    assert_eq!(queued[0].event_type, "refresh_token_reused");

    let counts = deliver_due(&core).await.unwrap();
    assert_eq!(counts.delivered, 1, "{counts:?}");
    // Another pass (and another instance's pass) sends nothing again.
    assert_eq!(deliver_due(&core).await.unwrap().delivered, 0);
    app.clock.advance_seconds(7_200);
    assert_eq!(deliver_due(&core).await.unwrap().delivered, 0);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "exactly one delivery: {seen:?}");
    let got = &seen[0];
    assert_eq!(got.content_type, "application/json");

    // The signature verifies with the secret, within the receiver's 300 s tolerance.
    let (ts, v1) = parse_signature(&got.signature);
    assert_eq!(v1.len(), 1, "one secret, one v1: {}", got.signature);
    assert_eq!(v1[0], expected_mac(SECRET, ts, &got.body));
    assert_ne!(v1[0], expected_mac(PREVIOUS, ts, &got.body));
    let sent_at = app.clock_now().unix_seconds() - 7_200;
    assert!((sent_at - ts).abs() <= 300, "t={ts}, now={sent_at}");

    let body: Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["object"], "security_alert");
    assert_eq!(body["type"], "refresh_token_reused");
    assert_eq!(body["severity"], "high");
    assert_eq!(body["tenant_id"], t.id.as_str());
    assert_eq!(body["ip"], "203.0.113.9");
    assert_eq!(body["request_id"], reused["error"]["request_id"]);
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("evt_"), "{id}");
    assert_eq!(got.event_id, id, "Kasho-Event-Id names the alert");
    assert!(
        kasho::clock::Timestamp::parse_rfc3339(body["occurred_at"].as_str().unwrap()).is_some(),
        "{body}"
    );
    let text = String::from_utf8_lossy(&got.body);
    for secret in [email, "acme.test", PASSWORD, refresh.as_str(), SECRET] {
        assert!(!text.contains(secret), "`{secret}` in the alert: {text}");
    }
    let row = core.store.security_alert(id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 1));
}

async fn failed_deliveries_are_retried_after_the_back_off_without_duplicates(app: &TestApp) {
    let receiver = Receiver::start().await;
    receiver.answer(&[500, 500]);
    let (core, _) = alerting(
        app,
        &receiver,
        &[("alert_webhook_secret_previous", PREVIOUS)],
    )
    .await;
    raise(&core, SecurityEvent::AccountLocked).await;
    let alert = core.store.security_alerts(10).await.unwrap().remove(0);

    // Attempt 1 fails: the next is due 30 s later, not before.
    assert_eq!(deliver_due(&core).await.unwrap().retried, 1);
    assert_eq!(receiver.seen().len(), 1);
    assert_eq!(deliver_due(&core).await.unwrap().retried, 0);
    app.clock.advance_seconds(29);
    deliver_due(&core).await.unwrap();
    assert_eq!(receiver.seen().len(), 1, "retried before the back-off");
    let row = core.store.security_alert(&alert.id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 1));
    assert_eq!(row.last_error.as_deref(), Some("HTTP 500"));

    // Attempt 2 at 30 s fails: the back-off doubles to 60 s.
    app.clock.advance_seconds(1);
    assert_eq!(deliver_due(&core).await.unwrap().retried, 1);
    assert_eq!(receiver.seen().len(), 2);
    app.clock.advance_seconds(59);
    deliver_due(&core).await.unwrap();
    assert_eq!(
        receiver.seen().len(),
        2,
        "retried before the doubled back-off"
    );

    // Attempt 3 is answered 200: delivered, and never sent again.
    app.clock.advance_seconds(1);
    assert_eq!(deliver_due(&core).await.unwrap().delivered, 1);
    for _ in 0..3 {
        app.clock.advance_seconds(3_600);
        deliver_due(&core).await.unwrap();
    }
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    // The same alert each time: one event id and one body (a receiver de-duplicates on the id),
    // signed afresh with both secrets during the roll.
    for s in &seen {
        assert_eq!(s.event_id, alert.id);
        assert_eq!(s.body, seen[0].body);
        let (ts, v1) = parse_signature(&s.signature);
        assert_eq!(
            v1,
            vec![
                expected_mac(SECRET, ts, &s.body),
                expected_mac(PREVIOUS, ts, &s.body)
            ]
        );
    }
    let row = core.store.security_alert(&alert.id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("delivered", 3));
}

async fn an_alert_failing_for_three_days_is_marked_failed_and_not_retried(app: &TestApp) {
    let receiver = Receiver::start().await;
    receiver.always(503);
    let (core, _) = alerting(app, &receiver, &[]).await;
    let start = app.clock_now();
    raise(&core, SecurityEvent::RequestReplayed).await;
    let alert = core.store.security_alerts(10).await.unwrap().remove(0);

    let mut failed_at = None;
    for _ in 0..200 {
        let c = deliver_due(&core).await.unwrap();
        if c.failed > 0 {
            failed_at = Some(app.clock_now());
            break;
        }
        app.clock.advance_seconds(1_800);
    }
    let failed_at = failed_at.expect("the alert was never given up");
    let elapsed = start.seconds_until(failed_at);
    // Given up at the first attempt whose next retry would fall past three days, not earlier.
    assert!(
        (3 * 86_400 - 3_600..=3 * 86_400).contains(&elapsed),
        "given up after {elapsed} s"
    );
    let row = core.store.security_alert(&alert.id).await.unwrap().unwrap();
    assert_eq!(row.status, "failed");
    assert_eq!(row.last_error.as_deref(), Some("HTTP 503"));
    let attempts = receiver.seen().len();
    assert_eq!(i64::try_from(attempts).unwrap(), row.attempts);
    // Retried with back-off for three days: far fewer attempts than passes.
    assert!((70..=90).contains(&attempts), "{attempts} attempts");

    // No more attempts, whatever time passes.
    for _ in 0..5 {
        app.clock.advance_seconds(86_400);
        deliver_due(&core).await.unwrap();
    }
    assert_eq!(receiver.seen().len(), attempts);

    // Retention removes finished alerts after 30 days; the audit record stays.
    app.clock.advance_seconds(30 * 86_400);
    let report = kasho::service::retention::run_once(&core, app.clock_now())
        .await
        .unwrap();
    assert_eq!(report.counts.security_alerts, 1, "{report:?}");
    assert!(
        core.store
            .security_alert(&alert.id)
            .await
            .unwrap()
            .is_none()
    );
}

async fn the_threshold_is_configurable_and_no_webhook_means_log_only(app: &TestApp) {
    let receiver = Receiver::start().await;
    let (core, _) = alerting(app, &receiver, &[("alert_min_severity", "medium")]).await;
    raise(&core, SecurityEvent::MfaFailed).await; // medium
    raise(&core, SecurityEvent::TokenRejected).await; // low
    let queued = core.store.security_alerts(10).await.unwrap();
    assert_eq!(
        queued
            .iter()
            .map(|a| a.event_type.as_str())
            .collect::<Vec<_>>(),
        ["mfa_failed"]
    );
    assert_eq!(deliver_due(&core).await.unwrap().delivered, 1);

    // The default instance has no webhook: a high event is logged, nothing is queued.
    raise(&app.core, SecurityEvent::AccountLocked).await;
    assert_eq!(core.store.security_alerts(10).await.unwrap().len(), 1);
    assert_eq!(deliver_due(&app.core).await.unwrap().delivered, 0);
}

backend_tests!(
    a_high_severity_event_is_delivered_once_signed_and_without_personal_data,
    failed_deliveries_are_retried_after_the_back_off_without_duplicates,
    an_alert_failing_for_three_days_is_marked_failed_and_not_retried,
    the_threshold_is_configurable_and_no_webhook_means_log_only,
);
