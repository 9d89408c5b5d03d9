//! The cost of KYC uploads (issue 13, item 13): a customer could make the server read, decode,
//! hash and encrypt 27 MiB only to be told 409, and 12 uploads in parallel took the process from
//! 856 MB to 1.25 GB. The cheap refusals come before the body is read, a credential has at most
//! 2 uploads in progress, and 12 parallel maximum-size uploads raise a real server's resident
//! memory by less than 200 MB.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::backend_tests;
use crate::support::{Resp, Served, TenantFixture, TestApp, free_port, serve_command};

/// A request body that never delivers a byte; it records whether anyone asked for one, and
/// tells `asked` the first time.
struct ProbeBody {
    polled: Arc<AtomicBool>,
    asked: Option<tokio::sync::oneshot::Sender<()>>,
}

impl http_body::Body for ProbeBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.polled.store(true, Ordering::SeqCst);
        if let Some(tx) = self.asked.take() {
            let _ = tx.send(());
        }
        // A client still sending (very slowly): nothing yet, and no wake-up.
        Poll::Pending
    }
}

/// A submission whose body never arrives: (whether the body was read, the request).
fn probe_request(
    customer: &str,
    token: &str,
    asked: Option<tokio::sync::oneshot::Sender<()>>,
) -> (Arc<AtomicBool>, Request<Body>) {
    let polled = Arc::new(AtomicBool::new(false));
    let body = Body::new(ProbeBody {
        polled: polled.clone(),
        asked,
    });
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/customers/{customer}/kyc/submissions"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("content-length", "28000000")
        .body(body)
        .unwrap();
    (polled, req)
}

fn small_submission() -> Value {
    let pdf = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.7\nsmall\n%%EOF\n");
    json!({ "requested_tier": 1, "documents": [
        { "document_type": "passport", "content_type": "application/pdf", "content": pdf }
    ] })
}

/// A new customer without a login or account; its id.
async fn bare_customer(app: &TestApp, t: &TenantFixture) -> String {
    let c = app
        .post("/v1/customers", Some(&t.manager_token), json!({}))
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    c.body["id"].as_str().unwrap().to_owned()
}

/// Sends `req` and expects an answer within 10 s (a handler that waited for the body would
/// never answer).
async fn answered(app: &TestApp, req: Request<Body>) -> Resp {
    tokio::time::timeout(Duration::from_secs(10), app.send(req))
        .await
        .expect("answered without the body")
}

async fn refused_uploads_are_answered_before_their_body_is_read(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "uploads").await;
    let m = t.manager_token.clone();
    let (_, agent) = app.user_token(&t, &["AGENT"]).await;

    // An open submission exists: 409, and the body was never asked for.
    let open = bare_customer(app, &t).await;
    let first = app
        .post(
            &format!("/v1/customers/{open}/kyc/submissions"),
            Some(&m),
            small_submission(),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let (polled, req) = probe_request(&open, &m, None);
    let r = answered(app, req).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "kyc_submission_open"),
        "{r:?}"
    );
    assert!(!polled.load(Ordering::SeqCst), "the body was read");

    // Restricted: 422 `processing_restricted`, body unread.
    let restricted = bare_customer(app, &t).await;
    let rr = app
        .post(
            &format!("/v1/customers/{restricted}/restrict"),
            Some(&m),
            json!({ "reason": "legal_claims" }),
        )
        .await;
    assert_eq!(rr.status, StatusCode::OK, "{rr:?}");
    let (polled, req) = probe_request(&restricted, &m, None);
    let r = answered(app, req).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "processing_restricted"),
        "{r:?}"
    );
    assert!(!polled.load(Ordering::SeqCst));

    // Erased: 422 `customer_erased`, body unread.
    let erased = bare_customer(app, &t).await;
    let e = app
        .post(
            &format!("/v1/customers/{erased}/erase"),
            Some(&m),
            json!({ "reason": "data_subject_request" }),
        )
        .await;
    assert_eq!(e.status, StatusCode::OK, "{e:?}");
    let (polled, req) = probe_request(&erased, &m, None);
    let r = answered(app, req).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "customer_erased"),
        "{r:?}"
    );
    assert!(!polled.load(Ordering::SeqCst));

    // No permission (an AGENT), and a customer of no one: body unread.
    let fresh = bare_customer(app, &t).await;
    let (polled, req) = probe_request(&fresh, &agent, None);
    assert_eq!(answered(app, req).await.status, StatusCode::FORBIDDEN);
    assert!(!polled.load(Ordering::SeqCst));
    let (polled, req) = probe_request("cus_0000000000000000000000000000000a", &m, None);
    assert_eq!(answered(app, req).await.status, StatusCode::NOT_FOUND);
    assert!(!polled.load(Ordering::SeqCst));

    // Nothing was stored by any of them.
    let h = app.get(&format!("/v1/customers/{open}/kyc"), &m).await;
    assert_eq!(h.body["history"].as_array().unwrap().len(), 1, "{h:?}");
}

async fn a_credential_has_at_most_two_uploads_in_progress(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "slots").await;
    let (_, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let (_, other) = app.user_token(&t, &["CASHIER"]).await;
    let customers = [
        bare_customer(app, &t).await,
        bare_customer(app, &t).await,
        bare_customer(app, &t).await,
        bare_customer(app, &t).await,
    ];

    // Two uploads whose bodies are still arriving hold the credential's two places.
    let mut held = Vec::new();
    for c in &customers[..2] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (_, req) = probe_request(c, &cashier, Some(tx));
        let router = app.router.clone();
        held.push(tokio::spawn(async move { router.oneshot(req).await }));
        // Wait until the server reads that body: the upload is in progress.
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the upload started")
            .unwrap();
    }

    // A third from the same credential: 429 in the error shape, with Retry-After, at once and
    // without its body being read.
    let (polled, req) = probe_request(&customers[2], &cashier, None);
    let r = answered(app, req).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.code(), "too_many_uploads");
    assert!(r.body["error"]["message"].is_string());
    assert!(r.body["error"]["request_id"].is_string());
    assert!(r.headers.get("retry-after").is_some(), "{:?}", r.headers);
    assert!(!polled.load(Ordering::SeqCst));

    // Another credential is not held back by them.
    let ok = app
        .post(
            &format!("/v1/customers/{}/kyc/submissions", customers[2]),
            Some(&other),
            small_submission(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{ok:?}");

    // Once the two are gone (the clients gave up), the credential uploads again.
    for h in &held {
        h.abort();
    }
    for h in held {
        let _ = h.await;
    }
    let again = app
        .post(
            &format!("/v1/customers/{}/kyc/submissions", customers[3]),
            Some(&cashier),
            small_submission(),
        )
        .await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
}

/// `VmRSS` and `VmHWM` (peak) of a process, in kB.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A raw HTTP/1.1 upload: the head, then `body` (all of it, or only `send` bytes of it while
/// announcing its full length), then the answer's status and body.
async fn upload(
    addr: SocketAddr,
    customer: &str,
    token: &str,
    body: &[u8],
    send: usize,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/customers/{customer}/kyc/submissions HTTP/1.1\r\nHost: kasho\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before it has everything: then stop sending.
    let _ = s.write_all(&body[..send]).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(300), s.read_to_end(&mut raw))
        .await
        .expect("an answer in time");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The largest submission the route accepts: 4 documents of 5 MiB.
fn maximum_submission() -> Vec<u8> {
    let mut file = b"%PDF-1.7\n".to_vec();
    file.resize(kasho::domain::kyc::MAX_DOCUMENT_BYTES, b'k');
    let content = base64::engine::general_purpose::STANDARD.encode(&file);
    let docs: Vec<Value> = [
        "passport",
        "national_id",
        "proof_of_address",
        "drivers_licence",
    ]
    .iter()
    .map(|ty| json!({ "document_type": ty, "content_type": "application/pdf", "content": content }))
    .collect();
    let body = json!({ "requested_tier": 1, "documents": docs })
        .to_string()
        .into_bytes();
    assert!(body.len() > 27_000_000 && body.len() <= kasho::domain::kyc::SUBMISSION_BODY_LIMIT);
    body
}

async fn twelve_parallel_maximum_size_uploads_raise_memory_by_less_than_200_mb(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "memory").await;
    // One desk (one credential) uploading for twelve customers at once: what a single
    // credential can make the server hold.
    let (_, desk) = app.user_token(&t, &["CASHIER"]).await;
    let mut customers = Vec::new();
    for _ in 0..13 {
        customers.push(bare_customer(app, &t).await);
    }

    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = app.data_dir.path().join(format!("serve-{port}.log"));
    let mut cmd = serve_command(app.data_dir.path(), &app.database_url, port, &log);
    cmd.env("KASHO_LOG_LEVEL", "error")
        .env("KASHO_REQUEST_TIMEOUT_SECONDS", "600")
        .envs(crate::support::generous_limits_env());
    let server = Served::start(cmd, port, log).await;

    // Warm up with one small upload (pools, caches, code paths), then take the baseline.
    let small = small_submission().to_string().into_bytes();
    let warm = upload(addr, &customers[12], &desk, &small, small.len()).await;
    assert_eq!(warm.0, 201, "{}", warm.1);
    let body = Arc::new(maximum_submission());
    let (rss_before, _) = memory_kb(server.pid());

    let started = Instant::now();
    let mut uploads = Vec::new();
    for customer in &customers[..12] {
        let (customer, token, body) = (customer.clone(), desk.clone(), body.clone());
        uploads.push(tokio::spawn(async move {
            upload(addr, &customer, &token, &body, body.len()).await
        }));
    }
    let mut created = 0;
    for u in uploads {
        match u.await.unwrap() {
            (201, _) => created += 1,
            (429, answer) => assert!(answer.contains("too_many_uploads"), "{answer}"),
            (status, answer) => panic!("{status}: {answer}\n{}", server.log()),
        }
    }
    let (_, peak) = memory_kb(server.pid());
    let grew_kb = peak.saturating_sub(rss_before);
    eprintln!(
        "12 uploads of {} bytes in {:?} ({created} created): VmRSS before {rss_before} kB, VmHWM after {peak} kB, +{grew_kb} kB",
        body.len(),
        started.elapsed()
    );
    // The credential's two places were used; the others were refused without being read.
    assert!((2..12).contains(&created), "{created} created");
    assert!(
        grew_kb < 200_000,
        "12 parallel maximum-size uploads raised the server's memory by {grew_kb} kB"
    );

    // Over the wire, a refused upload is answered before the client has sent its body: this
    // customer now has a submission awaiting a decision.
    let queue = app
        .get("/v1/kyc/submissions?status=submitted", &t.manager_token)
        .await;
    let open = queue.body["data"][0]["customer_id"].as_str().unwrap();
    let (status, answer) = upload(addr, open, &desk, &body, 1024).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains("kyc_submission_open"), "{answer}");
    // A client that asks first (`Expect: 100-continue`) gets the refusal, not `100 Continue`.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/customers/{open}/kyc/submissions HTTP/1.1\r\nHost: kasho\r\nConnection: close\r\nAuthorization: Bearer {desk}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answered without the body")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 409"), "{text}");
}

backend_tests!(
    refused_uploads_are_answered_before_their_body_is_read,
    a_credential_has_at_most_two_uploads_in_progress,
    twelve_parallel_maximum_size_uploads_raise_memory_by_less_than_200_mb,
);
