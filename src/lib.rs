//! Kasho: a multi-tenant, security-first fintech core.
//!
//! The crate is layered, and imports point down only (the table with what each layer may
//! import is in docs/ARCHITECTURE.md, "Layers"; `tests/integration/architecture.rs` enforces it):
//!
//! - [`cli`] and [`app`]: the `kasho` binary's commands and the server's assembly.
//! - [`http`]: the REST API; translates requests into service calls and errors into the
//!   public error shape.
//! - [`service`]: use cases (login, tenants, users, customers, KYC, the ledger, audit) combining
//!   the layers below; no HTTP type.
//! - [`config`]: the typed configuration and the settings types it parses.
//! - [`error`]: `AppError`, what a use case refuses.
//! - [`store`]: the storage trait and its SQLite and PostgreSQL implementations.
//! - [`observability`]: the Prometheus recorder and the metric series.
//! - [`domain`]: rules and value types (roles and permissions, validated values, the ledger's
//!   types, the audit chain). No HTTP, no SQL.
//! - [`tls`]: transport security.
//! - Leaf utilities: [`crypto`] (hashing, tokens, key material), [`ids`], [`clock`], and
//!   [`log_limit`] (repeated errors logged once per interval).
//!
//! See `docs/ARCHITECTURE.md` for the map.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod http;
pub mod ids;
pub mod log_limit;
pub mod observability;
pub mod service;
pub mod store;
pub mod tls;
