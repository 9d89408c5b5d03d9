//! Kasho: a multi-tenant, security-first fintech core.
//!
//! The crate is layered so that each layer only knows the ones below it:
//!
//! - [`domain`]: rules and value types (roles and permissions, validated values, the audit
//!   chain). No HTTP, no SQL.
//! - [`crypto`]: password hashing, access tokens, key material.
//! - [`store`]: the storage trait and its SQLite and PostgreSQL implementations.
//! - [`service`]: use cases (login, tenants, users, audit) combining the layers above.
//! - [`http`]: the REST API; translates requests into service calls and errors into the
//!   public error shape.
//! - [`observability`]: the Prometheus recorder and the metric series; [`log_limit`]: repeated
//!   errors logged once per interval.
//! - [`cli`] and [`app`]: the `kasho` binary's commands and the server's assembly.
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
