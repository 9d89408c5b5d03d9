//! Records of processing (GDPR Art. 30) and the retention policy.
//!
//! [`REGISTRY`] declares each class of personal data Kasho holds: what it is, why it is held,
//! on which Art. 6 basis, how long it is kept, whether it is encrypted at rest and who receives
//! it. It describes what the code does today; a class another issue is still adding is declared
//! with `held: false`. `GET /v1/compliance/processing-records` publishes it with the retention
//! periods in force ([`RetentionPolicy`]), and `service::retention` enforces the periods that
//! are automated.

/// Audit and security records are kept at least this long whatever the configuration says:
/// 366 days covers any twelve calendar months (PCI DSS 10.5.1 asks for 12 months).
pub const AUDIT_MINIMUM_RETENTION_DAYS: u32 = 366;
// Twelve calendar months span up to 366 days: the floor must never be lowered below that.
const _: () = assert!(AUDIT_MINIMUM_RETENTION_DAYS >= 366);

/// The retention periods configured for the classes the retention job purges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Days an ended (expired or revoked) session and its refresh tokens are kept.
    pub session_days: u32,
    /// Hours an idempotency record is kept after it expires (0: purged once expired).
    pub idempotency_hours: u32,
    /// Days audit and security records are kept, as configured (see
    /// [`audit_days_effective`](Self::audit_days_effective)).
    pub audit_days: u32,
    /// How often `kasho serve` runs the retention job.
    pub interval_seconds: u32,
}

impl RetentionPolicy {
    pub const DEFAULT: RetentionPolicy = RetentionPolicy {
        session_days: 30,
        idempotency_hours: 0,
        // Thirteen months: the twelve PCI DSS asks for, and a month's margin.
        audit_days: 396,
        interval_seconds: 3600,
    };

    /// The audit retention that applies: the configured value, never below
    /// [`AUDIT_MINIMUM_RETENTION_DAYS`].
    pub fn audit_days_effective(&self) -> u32 {
        self.audit_days.max(AUDIT_MINIMUM_RETENTION_DAYS)
    }

    /// Whether the configured audit retention was raised to the minimum.
    pub fn audit_clamped(&self) -> bool {
        self.audit_days < AUDIT_MINIMUM_RETENTION_DAYS
    }
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The Art. 6(1) basis of a processing activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegalBasis {
    /// Art. 6(1)(b): needed to perform the contract with the data subject.
    Contract,
    /// Art. 6(1)(c): required by law (AML/KYC record keeping, financial record retention).
    LegalObligation,
    /// Art. 6(1)(f): the controller's legitimate interest (security, fraud prevention).
    LegitimateInterest,
}

impl LegalBasis {
    pub const fn code(self) -> &'static str {
        match self {
            LegalBasis::Contract => "contract",
            LegalBasis::LegalObligation => "legal_obligation",
            LegalBasis::LegitimateInterest => "legitimate_interest",
        }
    }

    pub const fn article(self) -> &'static str {
        match self {
            LegalBasis::Contract => "GDPR Art. 6(1)(b)",
            LegalBasis::LegalObligation => "GDPR Art. 6(1)(c)",
            LegalBasis::LegitimateInterest => "GDPR Art. 6(1)(f)",
        }
    }
}

/// How long a class is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Kept for this many years after the business relationship ends (AML record keeping).
    /// Nothing deletes these automatically: the ledger is append-only.
    YearsAfterRelationship(u32),
    /// Kept while the user account exists; Kasho disables accounts and never deletes them yet.
    WhileAccountExists,
    /// Until the session ends (expiry or revocation), then `session_retention_days`; purged by
    /// the retention job.
    SessionEndPlusConfigured,
    /// `idempotency_ttl_seconds`, then `idempotency_retention_hours` after expiry; purged by the
    /// retention job.
    IdempotencyTtlPlusConfigured,
    /// `audit_retention_days`, at least [`AUDIT_MINIMUM_RETENTION_DAYS`]; pruned by the
    /// retention job, leaving a sealed checkpoint.
    AuditConfigured,
    /// Written to standard error; kept as long as the deployment's log collector keeps it.
    DeploymentLogs,
    /// A period fixed in the code, in words, with what deletes the data.
    Fixed {
        period: &'static str,
        days: Option<u32>,
        enforced_by: &'static str,
    },
}

/// A retention rule made concrete with the periods in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionInForce {
    /// In words, with the numbers in force.
    pub period: String,
    /// The period in days after the starting event, when there is a fixed one.
    pub days: Option<u32>,
    /// The configuration key that sets it.
    pub config_key: Option<&'static str>,
    /// What deletes the data when the period is over.
    pub enforced_by: &'static str,
}

impl Retention {
    /// The rule with today's configured values filled in.
    pub fn in_force(
        self,
        policy: &RetentionPolicy,
        idempotency_ttl_seconds: i64,
    ) -> RetentionInForce {
        match self {
            Retention::YearsAfterRelationship(years) => RetentionInForce {
                period: format!(
                    "at least {years} years after the business relationship ends (AML record keeping)"
                ),
                days: None,
                config_key: None,
                enforced_by: "database triggers refuse deleting transfers, entries, holds, accounts and reversal legs; the retention job keeps the audit records of money movements and account changes at least 5 years (1827 days)",
            },
            Retention::WhileAccountExists => RetentionInForce {
                period: "while the user account exists (accounts are disabled, never deleted yet)"
                    .to_owned(),
                days: None,
                config_key: None,
                enforced_by: "not automated: no account deletion yet",
            },
            Retention::SessionEndPlusConfigured => RetentionInForce {
                period: format!(
                    "until the session ends (expiry or revocation), then {} days",
                    policy.session_days
                ),
                days: Some(policy.session_days),
                config_key: Some("session_retention_days"),
                enforced_by: "retention job",
            },
            Retention::IdempotencyTtlPlusConfigured => RetentionInForce {
                period: format!(
                    "{} seconds after the request, then {} hours after expiry",
                    idempotency_ttl_seconds, policy.idempotency_hours
                ),
                days: None,
                config_key: Some("idempotency_retention_hours"),
                enforced_by: "retention job",
            },
            Retention::AuditConfigured => RetentionInForce {
                period: if policy.audit_clamped() {
                    format!(
                        "{} days after the event (configured {} days, raised to the {}-day minimum)",
                        policy.audit_days_effective(),
                        policy.audit_days,
                        AUDIT_MINIMUM_RETENTION_DAYS
                    )
                } else {
                    format!("{} days after the event", policy.audit_days_effective())
                },
                days: Some(policy.audit_days_effective()),
                config_key: Some("audit_retention_days"),
                enforced_by: "retention job (sealed checkpoint keeps the rest verifiable)",
            },
            Retention::DeploymentLogs => RetentionInForce {
                period: "as long as the deployment's log collector keeps standard error".to_owned(),
                days: None,
                config_key: None,
                enforced_by: "the deployment",
            },
            Retention::Fixed {
                period,
                days,
                enforced_by,
            } => RetentionInForce {
                period: period.to_owned(),
                days,
                config_key: None,
                enforced_by,
            },
        }
    }
}

/// One class of personal data and how it is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessingRecord {
    pub id: &'static str,
    pub description: &'static str,
    pub data_subjects: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub purpose: &'static str,
    pub legal_basis: &'static [LegalBasis],
    pub retention: Retention,
    /// Whether the data is encrypted at rest by Kasho itself (disk or database encryption of
    /// the deployment is not counted).
    pub encrypted_at_rest: bool,
    /// How the data is protected in storage, in words.
    pub protection: &'static str,
    pub recipients: &'static [&'static str],
    /// Where it is stored.
    pub storage: &'static [&'static str],
    /// `false` for a class declared ahead of the code that will hold it.
    pub held: bool,
}

const TENANT_STAFF: &str =
    "the tenant (controller) and its staff holding the permission that reads it";
const DB_OPERATOR: &str =
    "the operator of the database server (when PostgreSQL is hosted by a provider)";

/// Every class of personal data, in the order published.
pub const REGISTRY: &[ProcessingRecord] = &[
    ProcessingRecord {
        id: "user_accounts",
        description: "Sign-in accounts of tenant staff, customers with API access and platform admins",
        data_subjects: &["tenant staff", "customers", "platform admins"],
        categories: &[
            "email address",
            "password hash (Argon2id)",
            "roles",
            "account status",
        ],
        purpose: "authenticate users and decide what each may do",
        legal_basis: &[LegalBasis::Contract],
        retention: Retention::WhileAccountExists,
        encrypted_at_rest: false,
        protection: "passwords stored only as Argon2id hashes; every email also as a keyed hash (HMAC-SHA256 of tenant and email under a key derived from the master key) for lookup and uniqueness; a customer's login's email sealed with AES-256-GCM under the login's own data key, destroyed by the customer's erasure; staff and platform admins' emails in clear",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &["users"],
        held: true,
    },
    ProcessingRecord {
        id: "sessions_and_devices",
        description: "Signed-in sessions with the device facts seen at sign-in, and their refresh tokens",
        data_subjects: &["tenant staff", "customers", "platform admins"],
        categories: &[
            "IP address",
            "user agent",
            "session times",
            "refresh-token hashes",
        ],
        purpose: "keep users signed in, revoke sessions, detect refresh-token theft",
        legal_basis: &[LegalBasis::LegitimateInterest],
        retention: Retention::SessionEndPlusConfigured,
        encrypted_at_rest: false,
        protection: "refresh tokens stored only as SHA-256; staff sessions' IP and user agent in clear; a customer's sealed under its own key, its last address a keyed hash",
        recipients: &[DB_OPERATOR],
        storage: &["sessions", "refresh_tokens"],
        held: true,
    },
    ProcessingRecord {
        id: "customer_records",
        description: "The tenant's customers: a link to their user account and the tenant's own reference",
        data_subjects: &["customers"],
        categories: &["customer id", "linked user id", "external reference"],
        purpose: "hold accounts on behalf of a customer",
        legal_basis: &[LegalBasis::Contract, LegalBasis::LegalObligation],
        retention: Retention::YearsAfterRelationship(5),
        encrypted_at_rest: false,
        protection: "ids in clear; the external reference sealed under the customer's own key (shredded by erasure); names and contact details are the identity and contact classes (`customers.pii`)",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &["customers"],
        held: true,
    },
    ProcessingRecord {
        id: "accounts_and_ledger",
        description: "Accounts, balances, holds and the double-entry ledger",
        data_subjects: &["customers"],
        categories: &[
            "account ids",
            "currencies",
            "balances",
            "entries with running balances",
            "holds (review holds included)",
            "running totals per customer, currency and day or month (KYC limits, monitoring)",
            "events committed with movements (checks' side writes)",
        ],
        purpose: "keep customers' money and its history",
        legal_basis: &[LegalBasis::Contract, LegalBasis::LegalObligation],
        retention: Retention::YearsAfterRelationship(5),
        encrypted_at_rest: false,
        protection: "append-only transfers and entries (database triggers); in clear",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &[
            "accounts",
            "entries",
            "holds",
            "reversal_legs",
            "ledger_counters",
            "ledger_events",
        ],
        held: true,
    },
    ProcessingRecord {
        id: "transaction_details",
        description: "What each money movement says: amounts, counterparties, references and descriptions",
        data_subjects: &["customers", "their counterparties"],
        categories: &[
            "amount",
            "debit and credit accounts (counterparties)",
            "reference",
            "free-text description",
            "integrator metadata",
            "external counterparty (name, account number, institution)",
            "initiating user",
        ],
        purpose: "execute and evidence payments; answer disputes and regulators",
        legal_basis: &[LegalBasis::Contract, LegalBasis::LegalObligation],
        retention: Retention::YearsAfterRelationship(5),
        encrypted_at_rest: true,
        protection: "append-only (database triggers); description, metadata and counterparty sealed with AES-256-GCM under the tenant's data key; amounts, accounts and references in clear for the ledger's constraints",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &["transfers", "entries"],
        held: true,
    },
    ProcessingRecord {
        id: "idempotency_records",
        description: "Stored answers to money-moving requests, replayed when a client retries",
        data_subjects: &["customers", "tenant staff"],
        categories: &[
            "user id",
            "request fingerprint",
            "response body (transfer, account ids, balances)",
        ],
        purpose: "make retries safe: a retried payment is never posted twice",
        legal_basis: &[LegalBasis::Contract],
        retention: Retention::IdempotencyTtlPlusConfigured,
        encrypted_at_rest: true,
        protection: "the stored answer is sealed with AES-256-GCM under the tenant's data key; scoped to tenant and user",
        recipients: &[DB_OPERATOR],
        storage: &["idempotency_keys"],
        held: true,
    },
    ProcessingRecord {
        id: "audit_and_security_logs",
        description: "The tamper-evident audit log: every state change, sign-in, refused access and security event",
        data_subjects: &[
            "tenant staff",
            "customers",
            "platform admins",
            "anonymous callers",
        ],
        categories: &[
            "actor id",
            "action and outcome",
            "target id",
            "IP address",
            "request id",
            "time",
        ],
        purpose: "accountability, security monitoring, fraud investigation",
        legal_basis: &[LegalBasis::LegalObligation, LegalBasis::LegitimateInterest],
        retention: Retention::AuditConfigured,
        encrypted_at_rest: false,
        protection: "HMAC-sealed hash chains (integrity, not confidentiality); in clear",
        recipients: &[
            TENANT_STAFF,
            "platform admins (the platform chain only)",
            DB_OPERATOR,
        ],
        storage: &["audit_events", "audit_heads", "audit_checkpoints"],
        held: true,
    },
    ProcessingRecord {
        id: "application_logs",
        description: "Structured process logs: one line per request and security events",
        data_subjects: &["tenant staff", "customers", "anonymous callers"],
        categories: &[
            "request id",
            "method and route template",
            "status",
            "latency",
            "security event names",
        ],
        purpose: "operate the service and alert on security events",
        legal_basis: &[LegalBasis::LegitimateInterest],
        retention: Retention::DeploymentLogs,
        encrypted_at_rest: false,
        protection: "no bodies, query strings, path ids or IP addresses are logged",
        recipients: &["the operator's log collector"],
        storage: &["standard error"],
        held: true,
    },
    ProcessingRecord {
        id: "customer_identity",
        description: "Customers' identity",
        data_subjects: &["customers"],
        categories: &["name", "date of birth", "nationality"],
        purpose: "know the customer (KYC) and address them",
        legal_basis: &[LegalBasis::Contract, LegalBasis::LegalObligation],
        retention: Retention::YearsAfterRelationship(5),
        encrypted_at_rest: true,
        protection: "AES-256-GCM under the customer's own data key (destroyed on erasure); masked in answers unless revealed, each revealed read audited",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &["customers.pii"],
        held: true,
    },
    ProcessingRecord {
        id: "contact_details",
        description: "Customers' contact details",
        data_subjects: &["customers"],
        categories: &["email address", "phone number", "postal address"],
        purpose: "contact the customer about their accounts",
        legal_basis: &[LegalBasis::Contract],
        retention: Retention::YearsAfterRelationship(5),
        encrypted_at_rest: true,
        protection: "AES-256-GCM under the customer's own data key; email and phone also as blind indexes (HMAC per tenant and field) for exact-match search; masked in answers unless revealed",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &["customers.pii", "customer_lookup"],
        held: true,
    },
    ProcessingRecord {
        id: "national_identifiers",
        description: "National identity numbers (BVN, NIN, SSN, South African id, passport)",
        data_subjects: &["customers"],
        categories: &["national id number", "document numbers"],
        purpose: "verify identity as AML law requires",
        legal_basis: &[LegalBasis::LegalObligation],
        retention: Retention::YearsAfterRelationship(5),
        encrypted_at_rest: true,
        protection: "AES-256-GCM under the customer's own data key, with a blind index per type for exact-match search; masked to the last 4 unless revealed",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &["customers.pii", "customer_lookup"],
        held: true,
    },
    ProcessingRecord {
        id: "kyc_documents",
        description: "KYC verification: identity documents, submissions, decisions and the customer's tier",
        data_subjects: &["customers"],
        categories: &[
            "identity document files (passport, national id, driver's licence, proof of address, selfie)",
            "document type, size and SHA-256",
            "verification decisions and their reasons",
            "KYC tier",
        ],
        purpose: "customer due diligence as AML law requires, and the transaction limits of each tier",
        legal_basis: &[LegalBasis::LegalObligation],
        retention: Retention::YearsAfterRelationship(5),
        encrypted_at_rest: true,
        protection: "document files (and the free-text reasons of decisions made before reasons became codes) sealed with AES-256-GCM under the customer's own data key (destroyed on erasure); type, size, digest, tier, decision codes and times in clear; downloads by COMPLIANCE_OFFICERs only, each audited",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &[
            "kyc_submissions",
            "kyc_documents",
            "kyc_decisions",
            "customers",
        ],
        held: true,
    },
    ProcessingRecord {
        id: "staff_notes",
        description: "Staff-only notes attached to account freezes, unfreezes and closures, restrictions of processing and KYC decisions",
        data_subjects: &["customers"],
        categories: &[
            "free text staff wrote about a customer's account, restriction or verification",
            "the action's reason code, who wrote it and when",
        ],
        purpose: "record why a compliance action was taken (AML record keeping) without ever telling the customer (tipping off)",
        legal_basis: &[LegalBasis::LegalObligation],
        retention: Retention::YearsAfterRelationship(5),
        encrypted_at_rest: true,
        protection: "AES-256-GCM under the tenant's data key (kept when the customer is erased: AML records); readable with staff_notes:read (COMPLIANCE_OFFICER) only, each read audited; never in the audit chain or in anything a customer reads",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &["staff_notes"],
        held: true,
    },
    ProcessingRecord {
        id: "multi_factor_authentication",
        description: "Second factors of sign-in: TOTP enrolments, recovery codes and the challenges between a password and its code",
        data_subjects: &["tenant staff", "customers", "platform admins"],
        categories: &[
            "TOTP secret",
            "recovery-code hashes",
            "challenge-token hashes",
            "IP address and user agent of a pending sign-in",
            "failed-code counts",
        ],
        purpose: "authenticate users with a second factor",
        legal_basis: &[LegalBasis::Contract, LegalBasis::LegitimateInterest],
        retention: Retention::Fixed {
            period: "TOTP secrets and recovery codes while MFA is enabled; a challenge until it expires (minutes), then until the next challenge clean-up",
            days: None,
            enforced_by: "MFA reset and disable delete the enrolment and codes; expired challenges are deleted when challenges are issued",
        },
        encrypted_at_rest: true,
        protection: "TOTP secrets sealed with AES-256-GCM (tenant data key, or the platform's); recovery codes and challenge tokens stored only as hashes; the challenge's IP address and user agent in clear",
        recipients: &[DB_OPERATOR],
        storage: &["mfa_totp", "mfa_recovery_codes", "mfa_challenges"],
        held: true,
    },
    ProcessingRecord {
        id: "password_history",
        description: "Hashes of a user's previous passwords",
        data_subjects: &["tenant staff", "customers", "platform admins"],
        categories: &["previous password hashes (Argon2id)", "when each was set"],
        purpose: "refuse the reuse of a recent password (the tenant's password_history policy)",
        legal_basis: &[LegalBasis::LegitimateInterest],
        retention: Retention::Fixed {
            period: "the newest N of a user's passwords, N being the tenant's password_history (4 by default, at most 24)",
            days: None,
            enforced_by: "each password change deletes the hashes beyond N",
        },
        encrypted_at_rest: false,
        protection: "Argon2id hashes only, never the passwords",
        recipients: &[DB_OPERATOR],
        storage: &["password_history"],
        held: true,
    },
    ProcessingRecord {
        id: "abuse_counters",
        description: "Counters of failed sign-ins per account and per client address, and of refused money movements per credential",
        data_subjects: &[
            "tenant staff",
            "customers",
            "platform admins",
            "anonymous callers",
        ],
        categories: &[
            "keyed hash of tenant and email",
            "client IP address",
            "failure counts, lock and delay times",
            "credential id and refusal counts",
        ],
        purpose: "stop password guessing and abuse of money movements",
        legal_basis: &[LegalBasis::LegitimateInterest],
        retention: Retention::Fixed {
            period: "until a day passes without a failure and no lock is in force",
            days: Some(1),
            enforced_by: "retention job (login_throttle); refusal budgets are deleted when their window ends",
        },
        encrypted_at_rest: false,
        protection: "accounts are keyed by HMAC-SHA256 of tenant and email under a key derived from the master key (not confirmable by guessing without it); client addresses in clear",
        recipients: &[DB_OPERATOR],
        storage: &["login_throttle", "refusal_budgets"],
        held: true,
    },
    ProcessingRecord {
        id: "security_alerts",
        description: "Security alerts waiting for, or done with, delivery to the operator's webhook",
        data_subjects: &[
            "tenant staff",
            "customers",
            "platform admins",
            "anonymous callers",
        ],
        categories: &[
            "actor id",
            "client IP address",
            "request id",
            "event type, action, outcome and target id",
        ],
        purpose: "tell the operator about security events as they happen",
        legal_basis: &[LegalBasis::LegitimateInterest],
        retention: Retention::Fixed {
            period: "until delivered or failed, then 30 days (the event itself stays in the audit log)",
            days: Some(30),
            enforced_by: "retention job",
        },
        encrypted_at_rest: false,
        protection: "no emails, names or secrets in the payload; ids and address in clear",
        recipients: &["the operator's alert webhook", DB_OPERATOR],
        storage: &["security_alerts"],
        held: true,
    },
    ProcessingRecord {
        id: "outgoing_mail",
        description: "Emails waiting for delivery (invitations, password resets, security notices) and the development mailbox",
        data_subjects: &["tenant staff", "customers"],
        categories: &["email address", "message text with one-time links"],
        purpose: "deliver the emails an account needs",
        legal_basis: &[LegalBasis::Contract],
        retention: Retention::Fixed {
            period: "the sealed text until sent or failed; the row 7 days after",
            days: Some(7),
            enforced_by: "delivery clears the text; retention job deletes the row",
        },
        encrypted_at_rest: true,
        protection: "recipient and text sealed with AES-256-GCM (under the login's own data key for mail to a customer's login, destroyed by the customer's erasure; under the tenant's data key otherwise) and cleared once sent or failed",
        recipients: &["the SMTP relay", DB_OPERATOR],
        storage: &["mail_outbox"],
        held: true,
    },
    ProcessingRecord {
        id: "account_links",
        description: "One-time links: password resets and invitations",
        data_subjects: &["tenant staff", "customers"],
        categories: &["user id", "token hash", "who issued an invitation", "times"],
        purpose: "let a user set a password through a link sent to them",
        legal_basis: &[LegalBasis::Contract],
        retention: Retention::Fixed {
            period: "reset tokens 1 day after expiry; invitations while the account exists",
            days: Some(1),
            enforced_by: "retention job (reset tokens)",
        },
        encrypted_at_rest: false,
        protection: "tokens stored only as SHA-256 digests",
        recipients: &[DB_OPERATOR],
        storage: &["password_reset_tokens", "user_invitations"],
        held: true,
    },
    ProcessingRecord {
        id: "api_credentials",
        description: "API tokens of users and integrations, their secrets and the nonces of signed requests",
        data_subjects: &["tenant staff", "customers"],
        categories: &[
            "token name, scopes and allowed IP addresses",
            "secret hashes",
            "signing secrets",
            "owner and revoker ids",
            "last use",
        ],
        purpose: "authenticate integrations and refuse replayed requests",
        legal_basis: &[LegalBasis::Contract, LegalBasis::LegitimateInterest],
        retention: Retention::Fixed {
            period: "while the user account exists; nonces until they expire",
            days: None,
            enforced_by: "nonces are deleted once expired; tokens are revoked, not deleted",
        },
        encrypted_at_rest: true,
        protection: "bearer secrets stored only as keyed hashes; signing secrets sealed with AES-256-GCM under the tenant's data key",
        recipients: &[TENANT_STAFF, DB_OPERATOR],
        storage: &["api_tokens", "api_token_secrets", "request_nonces"],
        held: true,
    },
    ProcessingRecord {
        id: "break_glass_requests",
        description: "Requests by one platform admin, approved by another, to create a manager in a tenant that lost them all",
        data_subjects: &["tenant staff", "platform admins"],
        categories: &[
            "email address of the new manager",
            "requesting and approving admin ids",
            "times",
        ],
        purpose: "recover a tenant's administration under two-person control",
        legal_basis: &[LegalBasis::LegitimateInterest],
        retention: Retention::WhileAccountExists,
        encrypted_at_rest: false,
        protection: "email in clear; platform admins only",
        recipients: &["platform admins", DB_OPERATOR],
        storage: &["break_glass_requests"],
        held: true,
    },
];

/// Tables that hold no personal data, each with the reason: with [`REGISTRY`], they account for
/// every table of both backends' schemas (a test keeps it so).
pub const TABLES_WITHOUT_PERSONAL_DATA: &[(&str, &str)] = &[
    (
        "tenants",
        "the tenant organisations: names, slugs, currencies, status",
    ),
    (
        "tenant_security",
        "each tenant's security policy (numbers and role names)",
    ),
    ("tenant_cors_origins", "web origins a tenant allows"),
    ("kyc_limits", "per-tier transaction limits of a tenant"),
    (
        "data_keys",
        "wrapped data keys (key material, described in docs/SECURITY.md's key hierarchy)",
    ),
    (
        "master_keys",
        "wrapped master key versions (key material, described in docs/SECURITY.md's key hierarchy)",
    ),
    (
        "root_key_check",
        "the root key's id, a keyed check value and the JWT key's id (proof of the keys at start)",
    ),
    ("_sqlx_migrations", "the applied migrations"),
    (
        "auth_generation",
        "one counter bumped by every change to credentials (the SQLite session cache's signal)",
    ),
];

/// Financial records (ledger entries, transfers, holds, their accounts and the audit records
/// of money movements) are kept at least this long: five years of 365 days and two leap days.
/// Database triggers refuse deleting the ledger's rows at all; the retention job never prunes
/// an audit record of a money movement younger than this.
pub const FINANCIAL_RETENTION_DAYS: u32 = 5 * 365 + 2;

/// The audit actions that record money movements and account changes: the audit records kept
/// [`FINANCIAL_RETENTION_DAYS`].
pub const FINANCIAL_AUDIT_ACTIONS: &[&str] = &[
    "account.open",
    "account.freeze",
    "account.unfreeze",
    "account.close",
    "account.overdraft.set",
    "deposit.create",
    "withdrawal.create",
    "transfer.create",
    "transfer.batch",
    "hold.create",
    "hold.void",
    "capture.create",
    "reversal.create",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_retention_never_falls_below_twelve_months() {
        let mut p = RetentionPolicy {
            audit_days: 1,
            ..RetentionPolicy::DEFAULT
        };
        assert_eq!(p.audit_days_effective(), AUDIT_MINIMUM_RETENTION_DAYS);
        assert!(p.audit_clamped());
        p.audit_days = 400;
        assert_eq!(p.audit_days_effective(), 400);
        assert!(!p.audit_clamped());
        assert_eq!(RetentionPolicy::DEFAULT.audit_days_effective(), 396);
    }

    #[test]
    fn registry_ids_are_unique_and_retention_names_the_values_in_force() {
        let mut ids: Vec<_> = REGISTRY.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), REGISTRY.len());
        for r in REGISTRY {
            assert!(!r.legal_basis.is_empty(), "{}", r.id);
            assert!(!r.categories.is_empty(), "{}", r.id);
            assert_eq!(r.held, !r.storage.is_empty(), "{}: held iff stored", r.id);
        }
        let p = RetentionPolicy {
            session_days: 7,
            idempotency_hours: 2,
            audit_days: 10,
            interval_seconds: 60,
        };
        let s = Retention::SessionEndPlusConfigured.in_force(&p, 86_400);
        assert_eq!(s.days, Some(7));
        assert!(s.period.contains("7 days"), "{}", s.period);
        let a = Retention::AuditConfigured.in_force(&p, 86_400);
        assert_eq!(a.days, Some(AUDIT_MINIMUM_RETENTION_DAYS));
        assert!(a.period.contains("configured 10 days"), "{}", a.period);
        let i = Retention::IdempotencyTtlPlusConfigured.in_force(&p, 172_800);
        assert!(i.period.contains("172800 seconds") && i.period.contains("2 hours"));
    }
}
