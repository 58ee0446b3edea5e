//! Who may do what: identities, roles and the rules between tenants.
//!
//! A cluster with TLS authenticates every client (a token, or a client certificate)
//! as an [`Identity`]: a tenant and a role. Jobs and cached tables belong to the
//! tenant that made them; a tenant sees and changes only its own, and admins see all.
//! These rules are decided here, apart from how a request carried its credential.

use std::fmt;

/// The tenant of a cluster without authentication (no TLS): everyone.
pub const OPEN_TENANT: &str = "default";

/// Longest tenant name, in bytes.
pub const TENANT_MAX: usize = 64;

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Everything, for every tenant: tokens, every job and table.
    Admin,
    /// Submits jobs, and cancels, reads and releases the tenant's own.
    Submit,
    /// Reads the tenant's jobs and the cluster's status; submits nothing.
    Read,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Submit => "submit",
            Role::Read => "read",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "admin" => Ok(Role::Admin),
            "submit" => Ok(Role::Submit),
            "read" => Ok(Role::Read),
            other => Err(format!(
                "'{other}' is not a role: use admin, submit or read"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks a tenant's name: 1 to [`TENANT_MAX`] letters, digits, '-', '_' or '.'.
pub fn check_tenant(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > TENANT_MAX
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "'{name}' is not a tenant's name: use 1 to {TENANT_MAX} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant: String,
    pub role: Role,
    /// Who, for the audit log: a token's id, or a certificate's name.
    pub principal: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The credential is missing, unknown or revoked.
    Unauthenticated(String),
    /// The caller is known and may not do this.
    Denied(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unauthenticated(m) | Refusal::Denied(m) => f.write_str(m),
        }
    }
}

impl Identity {
    /// Everyone on a cluster without authentication.
    pub fn open() -> Self {
        Self {
            tenant: OPEN_TENANT.into(),
            role: Role::Admin,
            principal: "anyone".into(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether it sees what `tenant` owns: its own, or everything for an admin.
    pub fn sees(&self, tenant: &str) -> bool {
        self.is_admin() || self.tenant == tenant
    }

    /// May it submit jobs?
    pub fn may_submit(&self) -> Result<(), Refusal> {
        if self.role == Role::Read {
            return Err(Refusal::Denied(format!(
                "{} has the read role and cannot submit jobs; ask an admin for a submit token (`drove token create --tenant {} --role submit`)",
                self.principal, self.tenant
            )));
        }
        Ok(())
    }

    /// May it change (cancel, release, uncache) what `owner` owns?
    pub fn may_change(&self, owner: &str, what: &str) -> Result<(), Refusal> {
        if !self.sees(owner) {
            // Said as "not found" by the caller's wording: another tenant's things
            // are not shown to exist.
            return Err(Refusal::Denied(format!("{what} belongs to another tenant")));
        }
        if self.role == Role::Read {
            return Err(Refusal::Denied(format!(
                "{} has the read role and cannot change {what}",
                self.principal
            )));
        }
        Ok(())
    }

    /// May it manage tokens?
    pub fn may_administer(&self) -> Result<(), Refusal> {
        if !self.is_admin() {
            return Err(Refusal::Denied(format!(
                "{} is not an admin; tokens are managed with an admin token (`admin.token` from `drove cert init`)",
                self.principal
            )));
        }
        Ok(())
    }
}

/// A client token as the metadata keeps it: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMeta {
    pub tenant: String,
    pub role: Role,
    pub digest: Vec<u8>,
    pub created_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(tenant: &str, role: Role) -> Identity {
        Identity {
            tenant: tenant.into(),
            role,
            principal: "t".into(),
        }
    }

    #[test]
    fn tenants_see_and_change_only_their_own() {
        let a = who("a", Role::Submit);
        assert!(a.sees("a") && !a.sees("b"));
        assert!(a.may_change("a", "job 1").is_ok());
        assert!(a.may_change("b", "job 1").is_err());
        assert!(a.may_submit().is_ok() && a.may_administer().is_err());
        let reader = who("a", Role::Read);
        assert!(reader.sees("a") && reader.may_submit().is_err());
        assert!(reader.may_change("a", "job 1").is_err());
        let admin = who("ops", Role::Admin);
        assert!(admin.sees("b") && admin.may_change("b", "job 1").is_ok());
        assert!(admin.may_administer().is_ok());
    }

    #[test]
    fn names_and_roles_parse() {
        for role in [Role::Admin, Role::Submit, Role::Read] {
            assert_eq!(Role::parse(role.name()), Ok(role));
        }
        assert!(
            Role::parse("root")
                .unwrap_err()
                .contains("admin, submit or read")
        );
        assert!(check_tenant("team-a_1.x").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(check_tenant(bad).is_err(), "{bad}");
        }
    }
}
