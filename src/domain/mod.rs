//! Domain rules and value types. Nothing here knows about HTTP or SQL.

pub mod audit;
pub mod authz;
pub mod country;
pub mod currency;
pub mod disclosure;
pub mod kyc;
pub mod ledger;
pub mod password_policy;
pub mod personal;
pub mod processing;
pub mod reasons;
pub mod security;
pub mod signing;
pub mod values;
