//! Tipping off (issue 13, item 8): staff reasons are codes from fixed lists plus an optional
//! sealed staff-only note. A customer's own data export and everything a customer can read
//! carry no staff notes, no staff ids and no compliance actions; free text never enters the
//! audit chain in clear; a COMPLIANCE_OFFICER reads the note; records already in the chain are
//! filtered when read for a customer, never rewritten.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{TenantFixture, TestApp};

const SAR_NOTE: &str = "SAR filed with FIU: suspected structuring, do not tell customer";
const ORDER_NOTE: &str = "Police production order 2026/17 received by the MLRO";
const FORGERY_NOTE: &str = "Passport template matches a known forgery ring";

/// A customer with a login (a CUSTOMER user linked to it) and a funded USD account.
struct Customer {
    id: String,
    account: String,
    user_id: String,
    token: String,
}

async fn customer(app: &TestApp, t: &TenantFixture) -> Customer {
    let (user_id, email) = app.user(t, &["CUSTOMER"]).await;
    let c = app
        .post(
            "/v1/customers",
            Some(&t.manager_token),
            json!({ "user_id": user_id }),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{c:?}");
    let id = c.body["id"].as_str().unwrap().to_owned();
    let a = app
        .post(
            "/v1/accounts",
            Some(&t.manager_token),
            json!({ "customer_id": id, "currency": "USD" }),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let account = a.body["id"].as_str().unwrap().to_owned();
    let d = app
        .post(
            "/v1/deposits",
            Some(&t.manager_token),
            json!({ "account_id": account, "amount": 5_000, "currency": "USD" }),
        )
        .await;
    assert_eq!(d.status, StatusCode::CREATED, "{d:?}");
    let token = app.token(Some(&t.slug), &email).await;
    Customer {
        id,
        account,
        user_id,
        token,
    }
}

/// Fails naming the first of `secrets` that `body` (as JSON text) contains.
fn assert_none_in(what: &str, body: &Value, secrets: &[&str]) {
    let text = body.to_string();
    for s in secrets {
        assert!(!text.contains(s), "{what} shows {s:?}: {text}");
    }
}

/// Everything a customer can read about itself, through its own credential.
async fn customer_reads(app: &TestApp, c: &Customer) -> Vec<(String, Value)> {
    let transfers = app.get("/v1/transfers", &c.token).await;
    assert_eq!(transfers.status, StatusCode::OK, "{transfers:?}");
    let first = transfers.body["data"][0]["id"].as_str().unwrap().to_owned();
    let mut out = Vec::new();
    for path in [
        format!("/v1/customers/{}/export", c.id),
        format!("/v1/customers/{}", c.id),
        format!("/v1/customers/{}/kyc", c.id),
        format!("/v1/accounts/{}", c.account),
        format!("/v1/accounts/{}/entries", c.account),
        "/v1/accounts".to_owned(),
        "/v1/transfers".to_owned(),
        format!("/v1/transfers/{first}"),
        "/v1/kyc/submissions".to_owned(),
        "/v1/me".to_owned(),
        format!("/v1/users/{}", c.user_id),
    ] {
        let r = app.get(&path, &c.token).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {r:?}");
        out.push((path, r.body));
    }
    out
}

async fn a_freeze_note_reaches_neither_the_customer_nor_the_audit_chain(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "tipoff").await;
    let (officer_id, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let c = customer(app, &t).await;

    // A code from the fixed list, and the narrative as a sealed staff-only note.
    let f = app
        .post(
            &format!("/v1/accounts/{}/freeze", c.account),
            Some(&officer),
            json!({ "reason": "suspicious_activity", "note": SAR_NOTE }),
        )
        .await;
    assert_eq!(f.status, StatusCode::OK, "{f:?}");
    assert_eq!(f.body["status"], "frozen");
    let r = app
        .post(
            &format!("/v1/customers/{}/restrict", c.id),
            Some(&officer),
            json!({ "reason": "legal_claims", "note": ORDER_NOTE }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");

    // Free text as a reason is refused with the list of codes, never echoed, and changes
    // nothing (the account stays frozen).
    let bad = app
        .post(
            &format!("/v1/accounts/{}/unfreeze", c.account),
            Some(&officer),
            json!({ "reason": "SAR closed, tell them nothing" }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert_eq!(bad.body["error"]["param"], "reason");
    let msg = bad.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("review_completed") && !msg.contains("SAR"),
        "{msg}"
    );
    let blank = app
        .post(
            &format!("/v1/accounts/{}/unfreeze", c.account),
            Some(&officer),
            json!({ "reason": "review_completed", "note": " \u{7}" }),
        )
        .await;
    assert_eq!(blank.body["error"]["param"], "note", "{blank:?}");
    let still = app
        .get(&format!("/v1/accounts/{}", c.account), &t.manager_token)
        .await;
    assert_eq!(still.body["status"], "frozen");

    // Nothing the customer can read shows the notes, the codes, the staff or the actions;
    // the export says what the customer did and what happened to its money, no more.
    let secrets = [
        SAR_NOTE,
        "structuring",
        ORDER_NOTE,
        "suspicious_activity",
        "legal_claims",
        "account.freeze",
        "customer.restrict",
        "stn_",
        officer_id.as_str(),
        t.manager_id.as_str(),
    ];
    let reads = customer_reads(app, &c).await;
    for (path, body) in &reads {
        assert_none_in(path, body, &secrets);
    }
    let export = &reads[0].1;
    let events = export["audit_events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "deposit.create" && e["actor_id"].is_null()),
        "the deposit is there, without who made it: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "auth.login" && e["actor_id"] == c.user_id.as_str()),
        "its own sign-in is there"
    );
    // The export is the customer's copy whoever asks for it (a DSAR answered by staff).
    let staff_export = app
        .get(&format!("/v1/customers/{}/export", c.id), &t.manager_token)
        .await;
    assert_eq!(staff_export.status, StatusCode::OK);
    assert_none_in("the export made by staff", &staff_export.body, &secrets);

    // The audit chain carries the codes and the notes' ids, never their text, and the notes
    // are sealed at rest.
    let chain = app.audit_chain(&t.id).await;
    let freeze = chain
        .iter()
        .find(|e| e.action == "account.freeze")
        .expect("the freeze is audited");
    let reason = freeze.reason.as_deref().unwrap();
    let note_id = reason
        .strip_prefix("suspicious_activity;note=")
        .unwrap_or_else(|| panic!("code and note ref: {reason}"))
        .to_owned();
    assert!(note_id.starts_with("stn_"), "{note_id}");
    for e in &chain {
        let row = format!("{e:?}");
        for s in [SAR_NOTE, "structuring", ORDER_NOTE, "MLRO"] {
            assert!(!row.contains(s), "audit row in clear: {row}");
        }
    }
    let at_rest = String::from_utf8_lossy(&app.bytes_at_rest().await).into_owned();
    for s in ["structuring", "MLRO"] {
        assert!(!at_rest.contains(s), "{s} stored in clear");
    }

    // A COMPLIANCE_OFFICER reads the notes, by the audit record's ref and by target; each
    // read is audited.
    let one = app
        .get(&format!("/v1/staff-notes/{note_id}"), &officer)
        .await;
    assert_eq!(one.status, StatusCode::OK, "{one:?}");
    assert_eq!(one.headers["cache-control"], "no-store");
    assert_eq!(one.body["note"], SAR_NOTE);
    assert_eq!(one.body["reason_code"], "suspicious_activity");
    assert_eq!(one.body["action"], "account.freeze");
    assert_eq!(one.body["target_id"], c.account.as_str());
    assert_eq!(one.body["created_by"], officer_id.as_str());
    let listed = app
        .get(&format!("/v1/staff-notes?target_id={}", c.id), &officer)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    assert_eq!(listed.body["data"][0]["note"], ORDER_NOTE);
    assert_eq!(listed.body["data"][0]["action"], "customer.restrict");
    let chain = app.audit_chain(&t.id).await;
    assert!(chain.iter().any(|e| e.action == "staff_note.read"
        && e.target_id.as_deref() == Some(note_id.as_str())
        && e.actor_id.as_deref() == Some(officer_id.as_str())));
    assert!(chain.iter().any(|e| e.action == "staff_note.list"));

    // Nobody else reads them: not the manager who could freeze, not the customer.
    for token in [&t.manager_token, &c.token] {
        let r = app.get(&format!("/v1/staff-notes/{note_id}"), token).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    }
    let wrong = app
        .get(
            "/v1/staff-notes?target_id=usr_0000000000000000000000000000000a",
            &officer,
        )
        .await;
    assert_eq!(wrong.body["error"]["param"], "target_id", "{wrong:?}");

    // An account's note follows the tenant key's rotation (storage lets only the ciphertext be
    // rewritten); the restriction's note is sealed under the customer's key (issue 14), which
    // a tenant rotation does not touch.
    let sql = format!("SELECT note FROM staff_notes WHERE id = '{note_id}'");
    let stored = || app.raw_strings(&sql);
    let before = stored().await;
    let tenant = kasho::ids::TenantId::parse(&t.id).unwrap();
    let r = app
        .core
        .keyring
        .rotate_tenant(&tenant, &|_, _| {})
        .await
        .unwrap();
    assert!(r.reencrypted >= 1, "{r:?}");
    assert_ne!(stored().await, before, "re-encrypted under the new version");
    let again = app
        .get(&format!("/v1/staff-notes/{note_id}"), &officer)
        .await;
    assert_eq!(again.body["note"], SAR_NOTE, "{again:?}");
}

async fn a_kyc_rejection_shows_the_customer_a_customer_facing_code_only(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "tipkyc").await;
    let (officer_id, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let (cashier_id, cashier) = app.user_token(&t, &["CASHIER"]).await;
    let c = customer(app, &t).await;
    let pdf = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"%PDF-1.7\ntipping-off\n%%EOF\n",
    );
    let body = json!({ "requested_tier": 1, "documents": [
        { "document_type": "passport", "content_type": "application/pdf", "content": pdf }
    ] });
    // Staff submit for the customer; the customer does not see which staff member.
    let s = app
        .post(
            &format!("/v1/customers/{}/kyc/submissions", c.id),
            Some(&cashier),
            body.clone(),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{s:?}");
    assert_eq!(s.body["submitted_by"], cashier_id.as_str());
    let sid = s.body["id"].as_str().unwrap().to_owned();

    let bad = app
        .post(
            &format!("/v1/kyc/submissions/{sid}/reject"),
            Some(&officer),
            json!({ "reason": "name on the passport looks forged" }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    assert_eq!(bad.body["error"]["param"], "reason");
    let rejected = app
        .post(
            &format!("/v1/kyc/submissions/{sid}/reject"),
            Some(&officer),
            json!({ "reason": "suspected_fraud", "note": FORGERY_NOTE }),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK, "{rejected:?}");
    // Staff see the staff code, the customer-facing one, the note's id and the decider.
    let d = &rejected.body["decision"];
    assert_eq!(d["decision"], "rejected");
    assert_eq!(d["reason_code"], "suspected_fraud");
    assert_eq!(d["customer_reason_code"], "unable_to_verify");
    assert_eq!(d["decided_by"], officer_id.as_str());
    let note_id = d["note_id"].as_str().unwrap().to_owned();
    let n = app
        .get(&format!("/v1/staff-notes/{note_id}"), &officer)
        .await;
    assert_eq!(n.body["note"], FORGERY_NOTE, "{n:?}");

    // The customer sees the decision and the customer-facing code, nothing else.
    let secrets = [
        "suspected_fraud",
        FORGERY_NOTE,
        "forgery",
        "kyc.submission.reject",
        "stn_",
        officer_id.as_str(),
        cashier_id.as_str(),
        t.manager_id.as_str(),
    ];
    for (path, body) in customer_reads(app, &c).await {
        assert_none_in(&path, &body, &secrets);
    }
    let k = app
        .get(&format!("/v1/customers/{}/kyc", c.id), &c.token)
        .await;
    let mine = &k.body["history"][0];
    assert_eq!(mine["status"], "rejected");
    assert!(mine["submitted_by"].is_null(), "{mine}");
    assert_eq!(
        mine["decision"],
        json!({ "decision": "rejected", "tier_after": 0, "customer_reason_code": "unable_to_verify",
                "reason_code": null, "note_id": null, "legacy_reason": null, "decided_by": null,
                "decided_at": mine["decision"]["decided_at"] })
    );

    // The customer's own submission names it as the submitter.
    let own = app
        .post(
            &format!("/v1/customers/{}/kyc/submissions", c.id),
            Some(&c.token),
            body,
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{own:?}");
    assert_eq!(own.body["submitted_by"], c.user_id.as_str());
    let chain = app.audit_chain(&t.id).await;
    let reject = chain
        .iter()
        .find(|e| e.action == "kyc.submission.reject" && e.outcome == "success")
        .unwrap();
    assert_eq!(
        reject.reason.as_deref(),
        Some(format!("suspected_fraud;note={note_id}").as_str())
    );
}

async fn records_already_in_the_chain_are_filtered_for_the_customer_never_rewritten(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "tiplegacy").await;
    let (officer_id, officer) = app.user_token(&t, &["COMPLIANCE_OFFICER"]).await;
    let c = customer(app, &t).await;
    // What the code before codes wrote: a free-text reason in the freeze's audit record, and a
    // KYC rejection whose free-text reason was stored with the decision (legacy plaintext).
    let tenant = kasho::ids::TenantId::parse(&t.id).unwrap();
    let legacy = kasho::domain::audit::NewAuditEvent {
        tenant_id: Some(tenant.clone()),
        occurred_at: app.clock_now(),
        actor_type: kasho::domain::audit::ActorType::User,
        actor_id: Some(officer_id.clone()),
        action: "account.freeze".into(),
        target_type: Some("account".into()),
        target_id: Some(c.account.clone()),
        outcome: kasho::domain::audit::Outcome::Success,
        reason: Some(SAR_NOTE.into()),
        ip: Some("198.51.100.4".into()),
        request_id: None,
        security_event: None,
    };
    app.core.store.append_audit(&legacy).await.unwrap();
    let pdf = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        b"%PDF-1.7\nlegacy\n%%EOF\n",
    );
    let s = app
        .post(
            &format!("/v1/customers/{}/kyc/submissions", c.id),
            Some(&c.token),
            json!({ "requested_tier": 1, "documents": [
                { "document_type": "passport", "content_type": "application/pdf", "content": pdf }
            ] }),
        )
        .await;
    assert_eq!(s.status, StatusCode::CREATED, "{s:?}");
    let sid = s.body["id"].as_str().unwrap();
    app.raw_sql(&format!(
        "UPDATE kyc_submissions SET status = 'rejected' WHERE id = '{sid}'"
    ))
    .await;
    app.raw_sql(&format!(
        "INSERT INTO kyc_decisions (submission_id, tenant_id, customer_id, decision, tier_before, \
         tier_after, reason, decided_by, decided_at) VALUES ('{sid}', '{}', '{}', 'rejected', 0, 0, \
         'SAR: structuring suspected', '{officer_id}', 1)",
        t.id, c.id
    ))
    .await;
    let before: Vec<String> = app
        .audit_chain(&t.id)
        .await
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();

    let secrets = [
        SAR_NOTE,
        "structuring",
        "account.freeze",
        officer_id.as_str(),
    ];
    for (path, body) in customer_reads(app, &c).await {
        assert_none_in(&path, &body, &secrets);
    }
    let k = app
        .get(&format!("/v1/customers/{}/kyc", c.id), &c.token)
        .await;
    let d = &k.body["history"][0]["decision"];
    assert_eq!(d["decision"], "rejected", "{d}");
    assert!(d["customer_reason_code"].is_null() && d["legacy_reason"].is_null());
    // Staff holding staff_notes:read still read the legacy text; other staff do not.
    let as_officer = app
        .get(&format!("/v1/customers/{}/kyc", c.id), &officer)
        .await;
    assert_eq!(
        as_officer.body["history"][0]["decision"]["legacy_reason"],
        "SAR: structuring suspected"
    );
    let as_manager = app
        .get(&format!("/v1/customers/{}/kyc", c.id), &t.manager_token)
        .await;
    assert_eq!(as_manager.status, StatusCode::OK);
    assert!(as_manager.body["history"][0]["decision"]["legacy_reason"].is_null());
    assert_none_in("the manager's KYC view", &as_manager.body, &["structuring"]);

    // The chain is what it was (filtered on the way out, not rewritten), and still verifies.
    let after: Vec<String> = app
        .audit_chain(&t.id)
        .await
        .iter()
        .take(before.len())
        .map(|e| format!("{e:?}"))
        .collect();
    assert_eq!(before, after);
    assert!(after.iter().any(|e| e.contains(SAR_NOTE)));
    kasho::service::audit::verify_all(&*app.core.store, &app.core.sealer, |_| {}, |_| {})
        .await
        .expect("the audit chain verifies");
}

backend_tests!(
    a_freeze_note_reaches_neither_the_customer_nor_the_audit_chain,
    a_kyc_rejection_shows_the_customer_a_customer_facing_code_only,
    records_already_in_the_chain_are_filtered_for_the_customer_never_rewritten,
);
