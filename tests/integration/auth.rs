//! Login, tokens, refresh rotation and reuse detection, logout.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::backend_tests;
use crate::support::{PASSWORD, TestApp};

fn decode_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
}

async fn login_returns_a_token_pair_with_the_documented_claims(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let r = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 3600);
    assert_eq!(r.body["refresh_expires_in"], 30 * 24 * 3600);
    let refresh = r.body["refresh_token"].as_str().unwrap();
    assert!(
        URL_SAFE_NO_PAD.decode(refresh).unwrap().len() >= 32,
        "refresh token carries >= 256 bits"
    );

    let at = r.body["access_token"].as_str().unwrap();
    let header = decode_part(at, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let jwks = app
        .request(
            axum::http::Method::GET,
            "/.well-known/jwks.json",
            None,
            None,
        )
        .await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(header["kid"], jwks.body["keys"][0]["kid"]);
    assert_eq!(jwks.body["keys"][0]["kty"], "OKP");
    assert!(
        jwks.body["keys"][0].get("d").is_none(),
        "no private part in the JWKS"
    );

    let claims = decode_part(at, 1);
    for c in [
        "iss", "aud", "sub", "tid", "sid", "roles", "iat", "nbf", "exp", "jti",
    ] {
        assert!(claims.get(c).is_some(), "claim {c} missing: {claims}");
    }
    assert_eq!(claims["tid"], t.id.as_str());
    assert_eq!(claims["sub"], t.manager_id.as_str());
    assert_eq!(claims["roles"], json!(["MANAGER"]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );

    let me = app.get("/v1/me", at).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["tenant_id"], t.id.as_str());
    assert_eq!(me.body["roles"], json!(["MANAGER"]));
    let perms: Vec<&str> = me.body["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        perms.contains(&"users:write") && perms.contains(&"audit:read"),
        "{perms:?}"
    );
}

async fn unknown_accounts_and_wrong_passwords_get_the_same_answer(app: &TestApp) {
    let admin = app.platform_admin().await;
    app.tenant(&admin, "acme").await;
    let wrong_pw = app
        .login(Some("acme"), "manager@acme.test", "not the right password")
        .await;
    let no_user = app
        .login(Some("acme"), "nobody@acme.test", "not the right password")
        .await;
    let no_tenant = app.login(Some("nope"), "manager@acme.test", PASSWORD).await;
    let bad_email = app.login(Some("acme"), "not-an-email", PASSWORD).await;
    let platform_as_tenant = app.login(None, "manager@acme.test", PASSWORD).await;
    for r in [
        &wrong_pw,
        &no_user,
        &no_tenant,
        &bad_email,
        &platform_as_tenant,
    ] {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
        assert_eq!(r.code(), "invalid_credentials");
        assert_eq!(
            r.body["error"]["message"],
            wrong_pw.body["error"]["message"]
        );
        assert_eq!(r.body["error"]["type"], "authentication_error");
    }
    // Each failure is audited with its real reason, visible only to auditors.
    let reasons: Vec<String> = app
        .audit_chain(
            &app.core
                .store
                .get_tenant_by_slug("acme")
                .await
                .unwrap()
                .unwrap()
                .id,
        )
        .await
        .into_iter()
        .filter(|e| e.action == "auth.login" && e.outcome == "failure")
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.contains(&"wrong_password".to_owned())
            && reasons.contains(&"unknown_account".to_owned()),
        "{reasons:?}"
    );
}

async fn refresh_rotates_and_a_reused_token_revokes_the_session(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let first = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    let rt1 = first.body["refresh_token"].as_str().unwrap().to_owned();

    let second = app
        .post("/v1/auth/refresh", None, json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(second.status, StatusCode::OK, "{second:?}");
    let rt2 = second.body["refresh_token"].as_str().unwrap().to_owned();
    let at2 = second.body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, rt2);
    assert_eq!(app.get("/v1/me", &at2).await.status, StatusCode::OK);
    assert_eq!(
        decode_part(&at2, 1)["sid"],
        decode_part(first.body["access_token"].as_str().unwrap(), 1)["sid"]
    );

    // The spent token again: refused, and the whole session dies.
    let reuse = app
        .post("/v1/auth/refresh", None, json!({ "refresh_token": rt1 }))
        .await;
    assert_eq!(reuse.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reuse.code(), "refresh_token_reused");
    let descendant = app
        .post("/v1/auth/refresh", None, json!({ "refresh_token": rt2 }))
        .await;
    assert_eq!(
        descendant.status,
        StatusCode::UNAUTHORIZED,
        "{descendant:?}"
    );
    assert_eq!(
        app.get("/v1/me", &at2).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/v1/me", first.body["access_token"].as_str().unwrap())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // Other sessions of the same user are untouched.
    assert_eq!(
        app.get("/v1/me", &t.manager_token).await.status,
        StatusCode::OK
    );

    // A security event is on the tenant's audit chain.
    let events = app.audit_chain(&t.id).await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "security.refresh_token_reused" && e.outcome == "denied")
    );
}

async fn logout_kills_the_access_token_at_once(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let r = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    let at = r.body["access_token"].as_str().unwrap();
    let rt = r.body["refresh_token"].as_str().unwrap();
    assert_eq!(app.get("/v1/me", at).await.status, StatusCode::OK);
    let out = app
        .request(axum::http::Method::POST, "/v1/auth/logout", Some(at), None)
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{out:?}");
    let me = app.get("/v1/me", at).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    assert_eq!(me.code(), "invalid_token");
    let refresh = app
        .post("/v1/auth/refresh", None, json!({ "refresh_token": rt }))
        .await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED);
    // The dead token's use is on the tenant's chain, attributed to its (genuine) subject.
    let events = app.audit_chain(&t.id).await;
    let rejected = events
        .iter()
        .find(|e| e.action == "auth.token_rejected")
        .expect("audited");
    assert_eq!(rejected.reason.as_deref(), Some("session_revoked"));
    assert_eq!(rejected.actor_id.as_deref(), Some(t.manager_id.as_str()));
    assert!(
        events
            .iter()
            .any(|e| e.action == "auth.logout" && e.outcome == "success")
    );
}

async fn access_tokens_expire_and_sessions_have_an_absolute_lifetime(app: &TestApp) {
    let admin = app.platform_admin().await;
    app.tenant(&admin, "acme").await;
    let r = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    let at = r.body["access_token"].as_str().unwrap();
    let rt = r.body["refresh_token"].as_str().unwrap();
    // Used within the idle timeout (an hour by default), the session stays alive.
    app.clock.advance_seconds(3000);
    assert_eq!(app.get("/v1/me", at).await.status, StatusCode::OK);
    app.clock.advance_seconds(600 + 61);
    let me = app.get("/v1/me", at).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    assert_eq!(me.code(), "token_expired");
    let refreshed = app
        .post("/v1/auth/refresh", None, json!({ "refresh_token": rt }))
        .await;
    assert_eq!(
        refreshed.status,
        StatusCode::OK,
        "the refresh token outlives the access token"
    );
    let rt2 = refreshed.body["refresh_token"].as_str().unwrap();

    app.clock.advance_seconds(30 * 24 * 3600);
    let late = app
        .post("/v1/auth/refresh", None, json!({ "refresh_token": rt2 }))
        .await;
    assert_eq!(
        late.status,
        StatusCode::UNAUTHORIZED,
        "past the session's absolute lifetime: {late:?}"
    );
}

async fn per_tenant_access_token_lifetime(app: &TestApp) {
    let admin = app.platform_admin().await;
    let r = app
        .post(
            "/v1/tenants",
            Some(&admin),
            json!({ "slug": "shortlived", "name": "Short", "currencies": ["USD"], "access_token_ttl_seconds": 900,
                    "manager": { "email": "m@short.test" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let accepted = app.accept_invitation("m@short.test", PASSWORD).await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    let login = app
        .login(Some("shortlived"), "m@short.test", PASSWORD)
        .await;
    assert_eq!(login.body["expires_in"], 900);
    let bad = app
        .post(
            "/v1/tenants",
            Some(&admin),
            json!({ "slug": "forever", "name": "F", "currencies": ["USD"], "access_token_ttl_seconds": 31_536_000,
                    "manager": { "email": "m@f.test" } }),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["param"], "access_token_ttl_seconds");
}

async fn the_fincode_x_auth_token_header_is_accepted(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let req = Request::get("/v1/me")
        .header("x-auth-token", &t.manager_token)
        .body(Body::empty())
        .unwrap();
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

async fn forged_tokens_are_refused(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let good = &t.manager_token;
    let header = decode_part(good, 0);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let mut claims = decode_part(good, 1);
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let sig = good.split('.').nth(2).unwrap();

    let mut forged: Vec<(&str, String)> = Vec::new();
    // alg: none, no signature.
    forged.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
            b64(&claims)
        ),
    ));
    // HMAC keyed with the public key (the classic algorithm-confusion attack).
    let jwks = app
        .request(
            axum::http::Method::GET,
            "/.well-known/jwks.json",
            None,
            None,
        )
        .await;
    let public = URL_SAFE_NO_PAD
        .decode(jwks.body["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.typ = Some("at+jwt".into());
    h.kid = Some(kid.clone());
    forged.push((
        "HS256 with the public key",
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&public)).unwrap(),
    ));
    forged.push((
        "HS256 with the JWKS text",
        jsonwebtoken::encode(
            &h,
            &claims,
            &EncodingKey::from_secret(jwks.body.to_string().as_bytes()),
        )
        .unwrap(),
    ));
    // Another Ed25519 key: under its own kid, and under Kasho's kid.
    let other = kasho::crypto::keys::JwtSigningKey::generate().unwrap();
    let other_keys = kasho::crypto::jwt::TokenKeys::new(&other, "kasho", "kasho-api").unwrap();
    let parsed: kasho::crypto::jwt::AccessClaims = serde_json::from_value(claims.clone()).unwrap();
    forged.push(("unknown kid", other_keys.sign(&parsed).unwrap()));
    let mut h = Header::new(Algorithm::EdDSA);
    h.typ = Some("at+jwt".into());
    h.kid = Some(kid.clone());
    forged.push((
        "other key, our kid",
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(other.pkcs8_der())).unwrap(),
    ));
    // An embedded key in the header that would verify the signature.
    let mut h2 = h.clone();
    h2.jwk = Some(serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(other.public_key())})).unwrap());
    forged.push((
        "embedded jwk",
        jsonwebtoken::encode(&h2, &claims, &EncodingKey::from_ed_der(other.pkcs8_der())).unwrap(),
    ));
    let mut h3 = h.clone();
    h3.jku = Some("https://attacker.example/jwks.json".into());
    forged.push((
        "jku",
        jsonwebtoken::encode(&h3, &claims, &EncodingKey::from_ed_der(other.pkcs8_der())).unwrap(),
    ));
    // A missing kid.
    let mut h4 = h.clone();
    h4.kid = None;
    forged.push((
        "no kid",
        jsonwebtoken::encode(&h4, &claims, &EncodingKey::from_ed_der(other.pkcs8_der())).unwrap(),
    ));
    // Our signature over edited claims (privilege escalation attempt).
    claims["roles"] = json!(["MANAGER", "PLATFORM_ADMIN"]);
    forged.push((
        "edited claims",
        format!(
            "{}.{}.{}",
            good.split('.').next().unwrap(),
            b64(&claims),
            sig
        ),
    ));
    // Wrong typ (an ID token or other JWT is not an access token).
    let header_id = json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    forged.push((
        "typ JWT",
        format!(
            "{}.{}.{}",
            b64(&header_id),
            good.split('.').nth(1).unwrap(),
            sig
        ),
    ));
    forged.push(("garbage", "not.a.jwt".into()));

    for (what, token) in &forged {
        let r = app.get("/v1/me", token).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{what} was accepted: {r:?}"
        );
        assert_eq!(r.code(), "invalid_token", "{what}");
    }
    // The real one still works.
    assert_eq!(app.get("/v1/me", good).await.status, StatusCode::OK);
}

async fn suspended_tenants_and_disabled_users_lose_access_at_once(app: &TestApp) {
    let admin = app.platform_admin().await;
    let t = app.tenant(&admin, "acme").await;
    let (uid, email) = app.user(&t, &["CASHIER"]).await;
    let cashier = app.token(Some("acme"), &email).await;

    let r = app
        .post(
            &format!("/v1/users/{uid}/disable"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["status"], "disabled");
    assert_eq!(
        app.get("/v1/me", &cashier).await.status,
        StatusCode::UNAUTHORIZED
    );
    let login = app.login(Some("acme"), &email, PASSWORD).await;
    assert_eq!(login.status, StatusCode::FORBIDDEN);
    assert_eq!(login.code(), "account_disabled");
    let r = app
        .post(
            &format!("/v1/users/{uid}/enable"),
            Some(&t.manager_token),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        app.login(Some("acme"), &email, PASSWORD).await.status,
        StatusCode::OK
    );

    let r = app
        .post(
            &format!("/v1/tenants/{}/suspend", t.id),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["status"], "suspended");
    assert_eq!(
        app.get("/v1/me", &t.manager_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let login = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    assert_eq!(login.status, StatusCode::FORBIDDEN);
    assert_eq!(login.code(), "tenant_suspended");

    let r = app
        .post(
            &format!("/v1/tenants/{}/reactivate", t.id),
            Some(&admin),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        app.login(Some("acme"), "manager@acme.test", PASSWORD)
            .await
            .status,
        StatusCode::OK
    );
}

async fn concurrent_refreshes_of_one_token_never_yield_two_live_sessions(app: &TestApp) {
    let admin = app.platform_admin().await;
    app.tenant(&admin, "acme").await;
    let r = app.login(Some("acme"), "manager@acme.test", PASSWORD).await;
    let rt = r.body["refresh_token"].as_str().unwrap().to_owned();
    let body = json!({ "refresh_token": rt });
    let (a, b) = tokio::join!(
        app.post("/v1/auth/refresh", None, body.clone()),
        app.post("/v1/auth/refresh", None, body.clone())
    );
    // One of them spends the token; the other is a reuse, which revokes the session. Whatever
    // the interleaving, no live token pair survives.
    let reused = [&a, &b]
        .iter()
        .filter(|r| r.code() == "refresh_token_reused")
        .count();
    assert_eq!(reused, 1, "{a:?} / {b:?}");
    for r in [&a, &b] {
        if r.status == StatusCode::OK {
            let at = r.body["access_token"].as_str().unwrap();
            assert_eq!(app.get("/v1/me", at).await.status, StatusCode::UNAUTHORIZED);
            let rt = r.body["refresh_token"].as_str().unwrap();
            let again = app
                .post("/v1/auth/refresh", None, json!({ "refresh_token": rt }))
                .await;
            assert_eq!(again.status, StatusCode::UNAUTHORIZED);
        }
    }
}

backend_tests!(
    login_returns_a_token_pair_with_the_documented_claims,
    unknown_accounts_and_wrong_passwords_get_the_same_answer,
    refresh_rotates_and_a_reused_token_revokes_the_session,
    logout_kills_the_access_token_at_once,
    access_tokens_expire_and_sessions_have_an_absolute_lifetime,
    per_tenant_access_token_lifetime,
    the_fincode_x_auth_token_header_is_accepted,
    forged_tokens_are_refused,
    suspended_tenants_and_disabled_users_lose_access_at_once,
    concurrent_refreshes_of_one_token_never_yield_two_live_sessions,
);
