//! Kasho's integration suite: one binary, every behaviour test run against SQLite and against
//! PostgreSQL (see `backend_tests!`). PostgreSQL must be reachable (KASHO_TEST_DATABASE_URL,
//! default postgres://postgres@127.0.0.1:5432/test): an unreachable server fails the suite.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod support;

mod access_rules;
mod alerts;
mod api_tokens;
mod architecture;
mod attacks;
mod audit;
mod auth;
mod authz;
mod cli;
mod commit_checks;
mod conventions;
mod cors;
mod crash;
mod customers;
mod docs;
mod duties;
mod edges;
mod encryption;
mod erasure_hardening;
mod hygiene;
mod instances;
mod invitations;
mod key_proof;
mod kyc;
mod kyc_uploads;
mod ledger;
mod ledger_model;
mod limits;
mod login_email;
mod logs;
mod mfa;
mod money_rules;
mod observability;
mod openapi;
mod password_reset;
mod passwords;
mod privacy;
mod production_settings;
mod retention;
mod secret_hygiene;
mod security;
mod session_cache;
mod storage_faults;
mod tenants;
mod throttle;
mod tipping_off;
mod tls;
mod users;
