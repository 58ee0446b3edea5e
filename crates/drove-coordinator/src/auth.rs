//! Who is calling: the credential a gRPC or HTTP request carries, and the audit log
//! of what authenticated callers did. Who may do what is decided in
//! [`drove_core::access`]; tokens are checked against the metadata by the state.

use std::fmt::Display;

use drove_core::access::{Identity, Role};
use tracing::info;

use crate::{Error, Result};

/// The tenant of the CA's first admin token (`admin.token`) and of the cluster's own
/// nodes: a name no certificate or token tenant can have.
pub const ADMIN_TENANT: &str = "(admin)";

/// The cookie the web UI keeps a token in: `__Host-` makes browsers keep it for this
/// host only, over HTTPS only, for every path.
pub const TOKEN_COOKIE: &str = "__Host-drove_token";

/// What a request carried to say who sent it.
#[derive(Clone, Default)]
pub enum Credential {
    /// A bearer token's text.
    Token(String),
    /// The name in the client certificate its TLS connection was made with.
    Certificate(String),
    /// A node's certificate: the cluster's own coordinators and workers (and the
    /// embedded cluster's client), which act as admins.
    Node,
    #[default]
    None,
}

/// Never shows a token.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(hidden)"),
            Self::Certificate(name) => write!(f, "Certificate({name})"),
            Self::Node => f.write_str("Node"),
            Self::None => f.write_str("None"),
        }
    }
}

impl Credential {
    /// A token (`authorization: Bearer ...`) first, else the connection's client
    /// certificate.
    pub fn of_grpc<T>(request: &tonic::Request<T>) -> Self {
        if let Some(value) = request.metadata().get("authorization") {
            return Self::bearer(value.to_str().unwrap_or_default());
        }
        Self::certificate_of_grpc(request)
    }

    /// What the certificate of a gRPC request's connection says, token or not.
    pub fn certificate_of_grpc<T>(request: &tonic::Request<T>) -> Self {
        match request.peer_certs() {
            Some(chain) => Self::of_certificate(chain.first().map(|c| c.as_ref())),
            None => Self::None,
        }
    }

    /// What the first certificate of a verified TLS peer's chain says.
    pub fn of_certificate(certificate: Option<&[u8]>) -> Self {
        let Some(der) = certificate else {
            return Self::None;
        };
        if drove_exec::tls::is_node(der) {
            return Self::Node;
        }
        match drove_exec::tls::client_name(der) {
            Some(name) => Self::Certificate(name),
            None => Self::None,
        }
    }

    /// A token (the `Authorization` header, else the UI's cookie) first, else what
    /// the connection's certificate says (`connection`).
    pub fn of_http(headers: &axum::http::HeaderMap, connection: Credential) -> Self {
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            return Self::bearer(value.to_str().unwrap_or_default());
        }
        if let Some(token) = cookie(headers, TOKEN_COOKIE) {
            return Self::Token(token);
        }
        connection
    }

    /// Who a credential other than a token is: a node (an admin), or a client
    /// certificate's name as a tenant with the submit role.
    pub fn certificate_identity(self) -> Result<Identity> {
        match self {
            Self::Node => Ok(Identity {
                tenant: ADMIN_TENANT.into(),
                role: Role::Admin,
                principal: "a node certificate".into(),
            }),
            Self::Certificate(name) => Ok(Identity {
                tenant: name.clone(),
                role: Role::Submit,
                principal: format!("certificate {name}"),
            }),
            Self::Token(_) | Self::None => Err(Error::Unauthenticated(
                "this cluster authenticates its clients: pass --token TOKEN (or set DROVE_TOKEN, or --token-file FILE) with a token from `drove token create`, or connect with a client certificate (--tls-dir)".into(),
            )),
        }
    }

    fn bearer(value: &str) -> Self {
        // A malformed header is still a token, refused with what a token looks like.
        let token = value.strip_prefix("Bearer ").unwrap_or(value);
        Self::Token(token.trim().to_string())
    }
}

/// The value of the cookie `name` a request carries.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    (headers.get_all(axum::http::header::COOKIE).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

/// Logs what an authenticated caller did or tried, as one structured line (target
/// `drove::audit`).
pub fn audit<T>(who: &Identity, action: &str, target: &dyn Display, outcome: &Result<T>) {
    let (outcome, reason) = match outcome {
        Ok(_) => ("ok", String::new()),
        Err(e @ (Error::Denied(_) | Error::NotFound(_) | Error::Unauthenticated(_))) => {
            ("refused", e.to_string())
        }
        Err(e) => ("failed", e.to_string()),
    };
    info!(
        target: "drove::audit",
        tenant = %who.tenant,
        role = %who.role,
        principal = %who.principal,
        action,
        target = %target,
        outcome,
        reason,
        "audit"
    );
}

/// Logs a request refused for its credential.
pub fn refused_credential(error: &Error) {
    info!(
        target: "drove::audit",
        action = "authenticate",
        outcome = "refused",
        reason = %error,
        "audit"
    );
}
