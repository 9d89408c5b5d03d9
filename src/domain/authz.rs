//! Roles, permissions and the single role→permission table that decides every route.
//!
//! A permission is granted with a [`Scope`]: `All` resources of the caller's tenant, or only
//! the ones the caller `Own`s (a CUSTOMER reading its own user record). Routes name the
//! permission they need (see `http::routes`); the authorisation middleware is the only place
//! that checks it, and handlers narrow their queries with [`PermissionSet::scope`].

use std::collections::BTreeMap;
use std::fmt;

/// A role a user holds. Every tenant user holds one or more tenant roles; platform admins hold
/// only [`Role::PlatformAdmin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Manager,
    Agent,
    Cashier,
    ComplianceOfficer,
    Auditor,
    Customer,
    PlatformAdmin,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Manager,
        Role::Agent,
        Role::Cashier,
        Role::ComplianceOfficer,
        Role::Auditor,
        Role::Customer,
        Role::PlatformAdmin,
    ];

    pub const TENANT_ROLES: [Role; 6] = [
        Role::Manager,
        Role::Agent,
        Role::Cashier,
        Role::ComplianceOfficer,
        Role::Auditor,
        Role::Customer,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "MANAGER",
            Role::Agent => "AGENT",
            Role::Cashier => "CASHIER",
            Role::ComplianceOfficer => "COMPLIANCE_OFFICER",
            Role::Auditor => "AUDITOR",
            Role::Customer => "CUSTOMER",
            Role::PlatformAdmin => "PLATFORM_ADMIN",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub const fn is_platform(self) -> bool {
        matches!(self, Role::PlatformAdmin)
    }

    /// A tenant role that works for the tenant (every tenant role but CUSTOMER).
    pub const fn is_staff(self) -> bool {
        !matches!(self, Role::Customer | Role::PlatformAdmin)
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        Role::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown role `{s}`; expected one of {}",
                Role::ALL.map(Role::as_str).join(", ")
            ))
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named permission. Routes require exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Create tenants, suspend and reactivate them (platform only).
    TenantsWrite,
    /// List and read tenants (platform only).
    TenantsRead,
    /// Create users, disable and enable them, assign roles.
    UsersWrite,
    /// List and read users.
    UsersRead,
    /// Read the audit log of the caller's tenant (or of the platform, for platform admins).
    AuditRead,
    /// Create customer records.
    CustomersWrite,
    /// List and read customer records.
    CustomersRead,
    /// See customers' personal data unmasked (each such read is audited).
    CustomersReadPii,
    /// Open accounts for customers.
    AccountsWrite,
    /// Read accounts, balances and entries.
    AccountsRead,
    /// See the tenant's system accounts (settlement, fees, suspense): their ids, balances and
    /// entries. Without it they are not listed and a leg on one shows only its kind.
    AccountsReadSystem,
    /// Freeze and unfreeze accounts.
    AccountsFreeze,
    /// Set overdraft limits and close accounts.
    AccountsConfigure,
    /// Move money between accounts.
    TransfersCreate,
    /// Read transfers.
    TransfersRead,
    /// Deposits and withdrawals through the tenant's settlement account (cash desk).
    CashWrite,
    /// Place, capture and void holds on accounts.
    HoldsWrite,
    /// Reverse transfers.
    TransfersReverse,
    /// Read compliance records: the records of processing and the retention in force.
    ComplianceRead,
    /// Read KYC limits, customers' tiers and verification history, and the review queue.
    KycRead,
    /// Submit identity documents for verification (a customer for itself under `Own`).
    KycSubmit,
    /// Approve or reject verification submissions.
    KycDecide,
    /// Download identity documents (a read of personal data, audited).
    KycDocumentsRead,
    /// Configure the tenant's KYC limits per tier and currency.
    KycConfigure,
    /// Export everything held about a customer (data-subject access).
    CustomersExport,
    /// Erase a customer by crypto-shredding.
    CustomersErase,
    /// Restrict (and lift the restriction of) the processing of a customer's data.
    CustomersRestrict,
    /// Read the security policy and the security-event feed.
    SecurityRead,
    /// Change the tenant's security policy.
    SecurityConfigure,
    /// Create, list, rotate and revoke API tokens (`Own`: one's own; `All`: list and revoke
    /// every token of the tenant).
    ApiTokensManage,
    /// Read staff-only notes (the sealed free text attached to freezes, restrictions and KYC
    /// decisions); each read is audited.
    StaffNotesRead,
}

impl Permission {
    pub const ALL: [Permission; 31] = [
        Permission::TenantsWrite,
        Permission::TenantsRead,
        Permission::UsersWrite,
        Permission::UsersRead,
        Permission::AuditRead,
        Permission::CustomersWrite,
        Permission::CustomersRead,
        Permission::CustomersReadPii,
        Permission::AccountsWrite,
        Permission::AccountsRead,
        Permission::AccountsReadSystem,
        Permission::AccountsFreeze,
        Permission::AccountsConfigure,
        Permission::TransfersCreate,
        Permission::TransfersRead,
        Permission::CashWrite,
        Permission::HoldsWrite,
        Permission::TransfersReverse,
        Permission::ComplianceRead,
        Permission::KycRead,
        Permission::KycSubmit,
        Permission::KycDecide,
        Permission::KycDocumentsRead,
        Permission::KycConfigure,
        Permission::CustomersExport,
        Permission::CustomersErase,
        Permission::CustomersRestrict,
        Permission::SecurityRead,
        Permission::SecurityConfigure,
        Permission::ApiTokensManage,
        Permission::StaffNotesRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::TenantsWrite => "tenants:write",
            Permission::TenantsRead => "tenants:read",
            Permission::UsersWrite => "users:write",
            Permission::UsersRead => "users:read",
            Permission::AuditRead => "audit:read",
            Permission::CustomersWrite => "customers:write",
            Permission::CustomersRead => "customers:read",
            Permission::CustomersReadPii => "customers:read_pii",
            Permission::AccountsWrite => "accounts:write",
            Permission::AccountsRead => "accounts:read",
            Permission::AccountsReadSystem => "accounts:read_system",
            Permission::AccountsFreeze => "accounts:freeze",
            Permission::AccountsConfigure => "accounts:configure",
            Permission::TransfersCreate => "transfers:create",
            Permission::TransfersRead => "transfers:read",
            Permission::CashWrite => "cash:write",
            Permission::HoldsWrite => "holds:write",
            Permission::TransfersReverse => "transfers:reverse",
            Permission::ComplianceRead => "compliance:read",
            Permission::KycRead => "kyc:read",
            Permission::KycSubmit => "kyc:submit",
            Permission::KycDecide => "kyc:decide",
            Permission::KycDocumentsRead => "kyc:documents:read",
            Permission::KycConfigure => "kyc:configure",
            Permission::CustomersExport => "customers:export",
            Permission::CustomersErase => "customers:erase",
            Permission::CustomersRestrict => "customers:restrict",
            Permission::SecurityRead => "security:read",
            Permission::SecurityConfigure => "security:configure",
            Permission::ApiTokensManage => "api_tokens:manage",
            Permission::StaffNotesRead => "staff_notes:read",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a granted permission reaches within the caller's tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Only resources the caller owns.
    Own,
    /// Every resource of the caller's tenant.
    All,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Own => "own",
            Scope::All => "all",
        }
    }
}

use Permission as P;
use Scope::{All, Own};

/// THE role→permission table. docs/SECURITY.md reproduces it; a test checks every route
/// against it for every role.
pub const ROLE_PERMISSIONS: &[(Role, &[(Permission, Scope)])] = &[
    (
        Role::Manager,
        &[
            (P::UsersWrite, All),
            (P::UsersRead, All),
            (P::AuditRead, All),
            (P::CustomersWrite, All),
            (P::CustomersRead, All),
            (P::CustomersReadPii, All),
            (P::AccountsWrite, All),
            (P::AccountsRead, All),
            (P::AccountsReadSystem, All),
            (P::AccountsFreeze, All),
            (P::AccountsConfigure, All),
            (P::TransfersCreate, All),
            (P::TransfersRead, All),
            (P::CashWrite, All),
            (P::HoldsWrite, All),
            (P::TransfersReverse, All),
            (P::ComplianceRead, All),
            (P::KycRead, All),
            (P::KycSubmit, All),
            (P::KycConfigure, All),
            (P::CustomersExport, All),
            (P::CustomersErase, All),
            (P::CustomersRestrict, All),
            (P::SecurityRead, All),
            (P::SecurityConfigure, All),
            (P::ApiTokensManage, All),
        ],
    ),
    (
        Role::Agent,
        &[
            (P::CustomersRead, All),
            (P::AccountsRead, All),
            (P::TransfersRead, All),
            (P::ApiTokensManage, Own),
        ],
    ),
    (
        Role::Cashier,
        &[
            (P::CustomersWrite, All),
            (P::CustomersRead, All),
            (P::AccountsWrite, All),
            (P::AccountsRead, All),
            (P::TransfersCreate, All),
            (P::TransfersRead, All),
            (P::CashWrite, All),
            (P::HoldsWrite, All),
            (P::KycRead, All),
            (P::KycSubmit, All),
            (P::ApiTokensManage, Own),
        ],
    ),
    (
        Role::ComplianceOfficer,
        &[
            (P::UsersRead, All),
            (P::CustomersRead, All),
            (P::CustomersReadPii, All),
            (P::AccountsRead, All),
            (P::AccountsFreeze, All),
            (P::TransfersRead, All),
            (P::ComplianceRead, All),
            (P::KycRead, All),
            (P::KycDecide, All),
            (P::KycDocumentsRead, All),
            (P::CustomersExport, All),
            (P::CustomersErase, All),
            (P::CustomersRestrict, All),
            (P::SecurityRead, All),
            (P::ApiTokensManage, Own),
            (P::StaffNotesRead, All),
        ],
    ),
    (
        Role::Auditor,
        &[
            (P::UsersRead, All),
            (P::AuditRead, All),
            (P::CustomersRead, All),
            (P::AccountsRead, All),
            (P::AccountsReadSystem, All),
            (P::TransfersRead, All),
            (P::ComplianceRead, All),
            (P::KycRead, All),
            (P::SecurityRead, All),
            (P::ApiTokensManage, Own),
        ],
    ),
    (
        Role::Customer,
        &[
            (P::UsersRead, Own),
            (P::CustomersRead, Own),
            (P::AccountsRead, Own),
            (P::TransfersCreate, Own),
            (P::TransfersRead, Own),
            (P::KycRead, Own),
            (P::KycSubmit, Own),
            (P::CustomersExport, Own),
        ],
    ),
    (
        Role::PlatformAdmin,
        &[
            (P::TenantsWrite, All),
            (P::TenantsRead, All),
            (P::AuditRead, All),
            (P::SecurityRead, All),
        ],
    ),
];

/// Permissions a role may hand out (by granting a role that carries them) without holding
/// them itself: segregation of duties. A MANAGER appoints COMPLIANCE_OFFICERs but cannot
/// decide verifications, download identity documents or read staff notes; the appointment is
/// audited (`user.create`, `user.roles.update`) and no one can change their own roles.
pub const GRANT_WITHOUT_HOLDING: &[(Role, &[Permission])] = &[(
    Role::Manager,
    &[P::KycDecide, P::KycDocumentsRead, P::StaffNotesRead],
)];

/// Pairs of roles no user may hold together, whatever a tenant's policy says: whoever
/// administers users (and so could create a second identity) never also decides
/// verifications. A tenant's policy may forbid more pairs
/// (`SecurityPolicy::forbidden_role_pairs`, which always lists these).
pub const ALWAYS_FORBIDDEN_PAIRS: &[(Role, Role)] = &[(Role::Manager, Role::ComplianceOfficer)];

/// The first pair of `roles` that `ALWAYS_FORBIDDEN_PAIRS` or `extra` forbids, if any.
pub fn forbidden_pair(roles: &[Role], extra: &[[Role; 2]]) -> Option<(Role, Role)> {
    ALWAYS_FORBIDDEN_PAIRS
        .iter()
        .copied()
        .chain(extra.iter().map(|[a, b]| (*a, *b)))
        .find(|(a, b)| a != b && roles.contains(a) && roles.contains(b))
}

/// What the table grants one role.
pub fn grants(role: Role) -> &'static [(Permission, Scope)] {
    ROLE_PERMISSIONS
        .iter()
        .find(|(r, _)| *r == role)
        .map(|(_, g)| *g)
        .unwrap_or(&[])
}

/// The effective permissions of a set of roles: the union, keeping the widest scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermissionSet(BTreeMap<Permission, Scope>);

impl PermissionSet {
    pub fn for_roles(roles: &[Role]) -> Self {
        let mut map = BTreeMap::new();
        for role in roles {
            for (perm, scope) in grants(*role) {
                let entry = map.entry(*perm).or_insert(*scope);
                if *scope > *entry {
                    *entry = *scope;
                }
            }
        }
        Self(map)
    }

    /// What holders of `roles` may grant: their own permissions plus those of
    /// [`GRANT_WITHOUT_HOLDING`] (at `All`). Used only to check role assignments.
    pub fn grantable_by(roles: &[Role]) -> Self {
        let mut set = Self::for_roles(roles);
        for (role, perms) in GRANT_WITHOUT_HOLDING {
            if roles.contains(role) {
                for p in *perms {
                    set.0.insert(*p, All);
                }
            }
        }
        set
    }

    /// A set from explicit grants (an API token's scopes); the widest scope wins on repeats.
    pub fn from_grants(grants: impl IntoIterator<Item = (Permission, Scope)>) -> Self {
        let mut map = BTreeMap::new();
        for (perm, scope) in grants {
            let entry = map.entry(perm).or_insert(scope);
            if scope > *entry {
                *entry = scope;
            }
        }
        Self(map)
    }

    /// What both sets grant, each at the narrower of the two scopes (an API token's scopes
    /// within its creator's current permissions).
    pub fn intersect(&self, other: &PermissionSet) -> Self {
        Self(
            self.0
                .iter()
                .filter_map(|(p, s)| other.scope(*p).map(|o| (*p, (*s).min(o))))
                .collect(),
        )
    }

    /// The scope at which `perm` is granted, if at all.
    pub fn scope(&self, perm: Permission) -> Option<Scope> {
        self.0.get(&perm).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Permission, Scope)> + '_ {
        self.0.iter().map(|(p, s)| (*p, *s))
    }

    /// Whether every permission of `other` is held here at least as widely.
    pub fn covers(&self, other: &PermissionSet) -> Result<(), Permission> {
        for (perm, scope) in other.iter() {
            match self.scope(perm) {
                Some(mine) if mine >= scope => {}
                _ => return Err(perm),
            }
        }
        Ok(())
    }
}

/// Parses and checks a set of roles for a tenant user: at least one, only tenant roles, no
/// duplicates (sorted, so storage is canonical).
pub fn parse_tenant_roles(raw: &[String]) -> Result<Vec<Role>, String> {
    if raw.is_empty() {
        return Err("at least one role is required".into());
    }
    let mut roles = Vec::with_capacity(raw.len());
    for r in raw {
        let role = Role::parse(r).ok_or_else(|| {
            format!(
                "unknown role `{r}`; expected one of {}",
                Role::TENANT_ROLES.map(Role::as_str).join(", ")
            )
        })?;
        if role.is_platform() {
            return Err("PLATFORM_ADMIN cannot be granted to a tenant user".into());
        }
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    roles.sort();
    Ok(roles)
}

/// Roles as stored: comma-separated names.
pub fn roles_to_storage(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn roles_from_storage(s: &str) -> Vec<Role> {
    s.split(',').filter_map(Role::parse).collect()
}

/// Why an action authorised on reads taken before its write may not commit: what the committing
/// transaction finds of the actor (issue 14). A request is authorised on the session (or API
/// token), the user's status and the user's roles as read when it arrived; a change committed
/// meanwhile (a sign-out, a revocation, a disable, a role change) must win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorRevoked {
    /// The session or API token ended, or the user is no longer active: 401.
    CredentialEnded,
    /// The user's roles are no longer the ones the request was authorised with: 403.
    RolesChanged,
    /// The actor's tenant was suspended: 403 `tenant_suspended`, as at sign-in.
    TenantSuspended,
}

impl ActorRevoked {
    /// The stable API code of the refusal (the ordinary 401 and 403 codes).
    pub const fn code(self) -> &'static str {
        match self {
            ActorRevoked::CredentialEnded => "invalid_token",
            ActorRevoked::RolesChanged => "forbidden",
            ActorRevoked::TenantSuspended => "tenant_suspended",
        }
    }
}

/// What the committing transaction read of the actor: the user's status and roles (storage
/// form), whether the credential is still live (not revoked, not past its end) and whether the
/// actor's tenant is active (a platform admin's: always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorStanding {
    pub user_status: String,
    pub roles: String,
    pub credential_live: bool,
    pub tenant_active: bool,
    /// When the session last proved its user's password or second factor (`None` for an API
    /// token, which cannot step up): the ledger core's step-up rule reads it under lock.
    pub authenticated_at: Option<i64>,
}

/// The rule: the action commits only if the credential is live, the user active, and the user's
/// roles exactly the ones the request was authorised with (`None`: the user or the credential
/// is gone).
pub fn still_authorised(
    authorised_roles: &[Role],
    standing: Option<&ActorStanding>,
) -> Result<(), ActorRevoked> {
    let Some(s) = standing else {
        return Err(ActorRevoked::CredentialEnded);
    };
    if !s.credential_live || s.user_status != "active" {
        return Err(ActorRevoked::CredentialEnded);
    }
    if !s.tenant_active {
        return Err(ActorRevoked::TenantSuspended);
    }
    let mut now = roles_from_storage(&s.roles);
    let mut then = authorised_roles.to_vec();
    now.sort();
    now.dedup();
    then.sort();
    then.dedup();
    if now != then {
        return Err(ActorRevoked::RolesChanged);
    }
    Ok(())
}

/// Who acts, as the request was authorised: re-checked inside the committing transaction
/// (`still_authorised`), so a sign-out, revocation, disable or role change committed after the
/// request's authorisation but before its write is never followed by the write.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorCheck {
    pub user_id: String,
    pub credential: ActorCredential,
    /// The roles the request was authorised with.
    pub roles: Vec<Role>,
    /// The tenant's step-up rule for money leaving an account, as the request was authorised
    /// (`None` when the tenant has no threshold): the ledger core refuses an outgoing movement
    /// above its currency's threshold unless the credential authenticated recently enough.
    pub step_up: Option<StepUpRule>,
}

/// Money leaving an account above a currency's threshold needs an authentication no older than
/// `max_age_seconds` (the tenant's security policy).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepUpRule {
    /// Currency code → the largest amount (minor units) that needs no step-up.
    pub thresholds: std::collections::BTreeMap<String, i64>,
    pub max_age_seconds: u32,
}

impl StepUpRule {
    /// Whether a movement of `amount` in `currency` leaving an account may commit for a
    /// credential last authenticated at `authenticated_at` (microseconds), at `now`.
    pub fn allows(
        &self,
        currency: &str,
        amount: i64,
        authenticated_at: Option<i64>,
        now: i64,
    ) -> bool {
        match self.thresholds.get(currency) {
            Some(limit) if amount > *limit => authenticated_at.is_some_and(|at| {
                at.saturating_add(i64::from(self.max_age_seconds) * 1_000_000) >= now
            }),
            _ => true,
        }
    }
}

/// The credential a request was authorised with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorCredential {
    Session(String),
    ApiToken(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_in_the_table_once() {
        for role in Role::ALL {
            assert_eq!(
                ROLE_PERMISSIONS.iter().filter(|(r, _)| *r == role).count(),
                1,
                "{role}"
            );
        }
    }

    #[test]
    fn union_keeps_widest_scope() {
        let set = PermissionSet::for_roles(&[Role::Customer, Role::Auditor]);
        assert_eq!(set.scope(P::UsersRead), Some(All));
        assert_eq!(set.scope(P::UsersWrite), None);
        let own = PermissionSet::for_roles(&[Role::Customer]);
        assert_eq!(own.scope(P::UsersRead), Some(Own));
    }

    #[test]
    fn covers_refuses_wider_scope_or_missing_permission() {
        let customer = PermissionSet::for_roles(&[Role::Customer]);
        let auditor = PermissionSet::for_roles(&[Role::Auditor]);
        let manager = PermissionSet::for_roles(&[Role::Manager]);
        assert_eq!(customer.covers(&auditor), Err(P::UsersRead));
        assert!(manager.covers(&auditor).is_ok());
        assert!(manager.covers(&customer).is_ok());
        assert!(auditor.covers(&manager).is_err());
        // A cashier holds users:* nowhere, so could never grant MANAGER even with users:write.
        let cashier = PermissionSet::for_roles(&[Role::Cashier]);
        assert!(
            cashier
                .covers(&PermissionSet::for_roles(&[Role::ComplianceOfficer]))
                .is_err()
        );
    }

    #[test]
    fn only_managers_and_compliance_officers_see_personal_data_unmasked() {
        for role in Role::ALL {
            let has = PermissionSet::for_roles(&[role])
                .scope(P::CustomersReadPii)
                .is_some();
            assert_eq!(
                has,
                matches!(role, Role::Manager | Role::ComplianceOfficer),
                "{role}"
            );
        }
    }

    #[test]
    fn a_manager_appoints_compliance_officers_without_deciding() {
        let manager = PermissionSet::for_roles(&[Role::Manager]);
        assert_eq!(manager.scope(P::KycDecide), None);
        assert_eq!(manager.scope(P::KycDocumentsRead), None);
        let officer = PermissionSet::for_roles(&[Role::ComplianceOfficer]);
        assert!(manager.covers(&officer).is_err());
        assert!(
            PermissionSet::grantable_by(&[Role::Manager])
                .covers(&officer)
                .is_ok()
        );
        // Nobody else gains anything from the grant-only list.
        assert_eq!(
            PermissionSet::grantable_by(&[Role::Cashier]),
            PermissionSet::for_roles(&[Role::Cashier])
        );
        // A customer never decides.
        assert_eq!(
            PermissionSet::for_roles(&[Role::Customer]).scope(P::KycDecide),
            None
        );
    }

    #[test]
    fn token_scopes_narrow_to_the_creators_current_permissions() {
        let token = PermissionSet::from_grants([
            (P::TransfersCreate, All),
            (P::UsersWrite, All),
            (P::AccountsRead, All),
        ]);
        let customer = PermissionSet::for_roles(&[Role::Customer]);
        let narrowed = token.intersect(&customer);
        assert_eq!(narrowed.scope(P::TransfersCreate), Some(Own));
        assert_eq!(narrowed.scope(P::AccountsRead), Some(Own));
        assert_eq!(narrowed.scope(P::UsersWrite), None);
        assert_eq!(narrowed.scope(P::UsersRead), None);
    }

    #[test]
    fn staff_manage_api_tokens_customers_and_platform_admins_do_not() {
        for role in Role::ALL {
            let scope = PermissionSet::for_roles(&[role]).scope(P::ApiTokensManage);
            let expected = match role {
                Role::Manager => Some(All),
                Role::Customer | Role::PlatformAdmin => None,
                _ => Some(Own),
            };
            assert_eq!(scope, expected, "{role}");
        }
    }

    #[test]
    fn managers_never_also_decide_verifications() {
        use Role::*;
        assert_eq!(
            forbidden_pair(&[ComplianceOfficer, Manager], &[]),
            Some((Manager, ComplianceOfficer))
        );
        assert_eq!(forbidden_pair(&[Manager, Customer], &[]), None);
        assert_eq!(
            forbidden_pair(&[Cashier, Auditor], &[[Auditor, Cashier]]),
            Some((Auditor, Cashier))
        );
        assert_eq!(forbidden_pair(&[Cashier], &[[Cashier, Cashier]]), None);
        assert!(
            Role::TENANT_ROLES
                .iter()
                .all(|r| r.is_staff() != (*r == Customer))
        );
        assert!(!PlatformAdmin.is_staff());
    }

    #[test]
    fn tenant_roles_parse_strictly() {
        assert!(parse_tenant_roles(&[]).is_err());
        assert!(parse_tenant_roles(&["PLATFORM_ADMIN".into()]).is_err());
        assert!(parse_tenant_roles(&["manager".into()]).is_err());
        assert_eq!(
            parse_tenant_roles(&["CUSTOMER".into(), "MANAGER".into(), "CUSTOMER".into()]),
            Ok(vec![Role::Manager, Role::Customer])
        );
    }

    #[test]
    fn compliance_records_are_read_by_compliance_manager_and_auditor_only() {
        let holders: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| {
                PermissionSet::for_roles(&[*r])
                    .scope(P::ComplianceRead)
                    .is_some()
            })
            .collect();
        assert_eq!(
            holders,
            vec![Role::Manager, Role::ComplianceOfficer, Role::Auditor]
        );
    }

    #[test]
    fn an_action_commits_only_for_a_live_credential_with_unchanged_roles() {
        let live = |status: &str, roles: &str, live: bool| ActorStanding {
            user_status: status.into(),
            roles: roles.into(),
            credential_live: live,
            tenant_active: true,
            authenticated_at: None,
        };
        let m = [Role::Manager, Role::Customer];
        assert_eq!(
            still_authorised(&m, Some(&live("active", "CUSTOMER,MANAGER", true))),
            Ok(())
        );
        assert_eq!(
            still_authorised(&m, Some(&live("active", "MANAGER", true))),
            Err(ActorRevoked::RolesChanged)
        );
        assert_eq!(
            still_authorised(&m, Some(&live("disabled", "MANAGER,CUSTOMER", true))),
            Err(ActorRevoked::CredentialEnded)
        );
        assert_eq!(
            still_authorised(&m, Some(&live("active", "MANAGER,CUSTOMER", false))),
            Err(ActorRevoked::CredentialEnded)
        );
        assert_eq!(
            still_authorised(&m, None),
            Err(ActorRevoked::CredentialEnded)
        );
        let suspended = ActorStanding {
            tenant_active: false,
            ..live("active", "MANAGER,CUSTOMER", true)
        };
        assert_eq!(
            still_authorised(&m, Some(&suspended)),
            Err(ActorRevoked::TenantSuspended)
        );
    }
}
