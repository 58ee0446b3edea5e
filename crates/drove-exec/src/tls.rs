//! The cluster's identity: a certificate authority of its own (`drove cert init`), the
//! certificates it issues to nodes and clients (`drove cert issue`), and the mutual TLS
//! that every gRPC and Flight connection between them takes from those files
//! (`--tls-dir`).
//!
//! Every certificate the CA signs is trusted by every node: the CA is the cluster. What
//! a certificate may do depends on its role. A node's (coordinator or worker) carries
//! [`NODE_NAME`] among its names: clients check that a server has it, and a coordinator
//! takes worker sessions and Raft messages only from peers that have it. A client's
//! certificate lacks it, so a client cannot pose as a worker.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::token;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{
    CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime, pem::PemObject,
};
use tokio_rustls::rustls;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name every node's certificate carries, and that clients verify servers against,
/// whatever address they dialled.
pub const NODE_NAME: &str = "node.drove.internal";

/// The CA's certificate, in the CA's directory and in every directory it issues to.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key: only in the CA's directory.
pub const CA_KEY: &str = "ca.key";
/// A node's or client's certificate.
pub const CERT: &str = "cert.pem";
/// A node's or client's private key.
pub const KEY: &str = "key.pem";

/// The CA's common name; the issuer of every certificate it signs.
const CA_NAME: &str = "drove cluster CA";
/// How long a CA is valid.
const CA_DAYS: u32 = 3650;
/// Names a certificate may carry besides its own, at most.
pub const HOSTS_MAX: usize = 64;
/// Days a certificate may be valid, at most.
pub const DAYS_MAX: u32 = 3650;

/// What a certificate may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A coordinator or worker: serves, and is a client of other nodes.
    Node,
    /// A user's client: submits jobs and reads results.
    Client,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Client => "client",
        }
    }
}

/// Makes a cluster CA in `out` (created if missing): `ca.pem`, and `ca.key` readable
/// by this user only. Refuses a directory that already holds a CA.
pub fn init(out: &Path) -> Result<(), String> {
    for file in [CA_CERT, CA_KEY] {
        if out.join(file).exists() {
            return Err(format!(
                "{} already holds a CA ({file}); a new one would lock out every node it issued to. Choose another --out",
                out.display()
            ));
        }
    }
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let cert = ca_params(&key)?
        .self_signed(&key)
        .map_err(|e| format!("cannot sign the CA's certificate: {e}"))?;
    let (admin, kept) = token::generate()?;
    write_all_new(
        out,
        &[
            (CA_KEY, key.serialize_pem(), true),
            (CA_CERT, cert.pem(), false),
            (token::ADMIN_TOKEN, format!("{admin}\n"), true),
            (token::ADMIN_DIGEST, token::digest_line(&kept), false),
        ],
    )
}

/// Issues a certificate named `name` for `role`, signed by the CA in `ca`, valid for
/// `days` days and for the names in `hosts` too (DNS names or IP addresses a browser
/// or curl checks), into `out` (created if missing): `cert.pem`, `key.pem` (this
/// user's only) and a copy of `ca.pem`. Refuses to replace a certificate in `out`.
pub fn issue(
    ca: &Path,
    name: &str,
    role: Role,
    hosts: &[String],
    days: u32,
    out: &Path,
) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "--name '{name}' is not a name: use 1 to 64 letters, digits, '-', '_' or '.', e.g. worker-1"
        ));
    }
    if days == 0 || days > DAYS_MAX {
        return Err(format!("--days {days}: give 1 to {DAYS_MAX}"));
    }
    if hosts.len() > HOSTS_MAX {
        return Err(format!("{} --host names; at most {HOSTS_MAX}", hosts.len()));
    }
    for file in [CERT, KEY] {
        if out.join(file).exists() {
            return Err(format!(
                "{} already holds {file}; choose another --out, or remove the old files first",
                out.display()
            ));
        }
    }
    let ca_cert = read(ca, CA_CERT, "the CA's directory, made by `drove cert init`")?;
    let ca_key = read(ca, CA_KEY, "the CA's directory, made by `drove cert init`")?;
    let ca_key = KeyPair::from_pem(&ca_key)
        .map_err(|e| format!("{} is not a private key: {e}", ca.join(CA_KEY).display()))?;
    // The CA's certificate is not parsed: the issuer is rebuilt from the same
    // parameters and key, which is all a signature needs. Check the pair belongs
    // together, so a mismatched ca.pem does not yield certificates nothing trusts.
    let anchor_der = pem_certificate(&ca_cert, &ca.join(CA_CERT))?;
    let issuer = Issuer::new(ca_params(&ca_key)?, ca_key);

    let mut names = vec![name.to_string()];
    if role == Role::Node {
        names.push(NODE_NAME.to_string());
    }
    names.extend(hosts.iter().cloned());
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("cannot make a certificate: {e}"))?;
    for n in &names {
        let not_a_host = || format!("--host '{n}' is neither an IP address nor a DNS name");
        params.subject_alt_names.push(match n.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                DnsName::try_from(n.as_str()).map_err(|_| not_a_host())?;
                SanType::DnsName(n.clone().try_into().map_err(|_| not_a_host())?)
            }
        });
    }
    params.distinguished_name = distinguished_name(&format!("{} {name}", role.name()));
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    params.serial_number = Some(serial(&key));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity(days);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    verify_chain(cert.der(), &anchor_der).map_err(|e| {
        format!(
            "{} does not match {}: {e}",
            ca.join(CA_CERT).display(),
            ca.join(CA_KEY).display()
        )
    })?;
    let copy_ca = match std::fs::read_to_string(out.join(CA_CERT)) {
        Ok(held) if held == ca_cert => false,
        Ok(_) => {
            return Err(format!(
                "{} holds another CA's {CA_CERT}; choose another --out",
                out.display()
            ));
        }
        Err(_) => true,
    };
    let mut files = vec![(KEY, key.serialize_pem(), true), (CERT, cert.pem(), false)];
    if copy_ca {
        files.push((CA_CERT, ca_cert, false));
    }
    // Coordinators accept the first admin token by its digest.
    if role == Role::Node
        && !out.join(token::ADMIN_DIGEST).exists()
        && let Ok(digest) = std::fs::read_to_string(ca.join(token::ADMIN_DIGEST))
    {
        files.push((token::ADMIN_DIGEST, digest, false));
    }
    write_all_new(out, &files)
}

/// A node's or client's TLS files, loaded and checked: the cluster CA's certificate,
/// and its own certificate and key.
#[derive(Clone)]
pub struct ClusterTls {
    dir: PathBuf,
    ca: String,
    cert: String,
    key: String,
    role: Role,
    /// The first admin token's id and digest, for a node whose CA made one.
    admin_token: Option<token::Presented>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("dir", &self.dir)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ClusterTls {
    /// Loads `ca.pem`, `cert.pem` and `key.pem` from `dir`, and checks that the
    /// certificate was issued by that CA and is valid now.
    pub fn load(dir: &Path) -> Result<Arc<Self>, String> {
        if dir.join(CA_KEY).exists() && !dir.join(CERT).exists() {
            return Err(format!(
                "{} is the CA's directory; give --tls-dir a directory made by `drove cert issue --ca {} --out DIR`",
                dir.display(),
                dir.display()
            ));
        }
        let made = "a directory made by `drove cert issue`";
        let ca = read(dir, CA_CERT, made)?;
        let cert = read(dir, CERT, made)?;
        let key = read(dir, KEY, made)?;
        KeyPair::from_pem(&key)
            .map_err(|e| format!("{} is not a private key: {e}", dir.join(KEY).display()))?;
        let ca_der = pem_certificate(&ca, &dir.join(CA_CERT))?;
        let cert_der = pem_certificate(&cert, &dir.join(CERT))?;
        verify_chain(&cert_der, &ca_der).map_err(|e| {
            format!(
                "{} is not a certificate of the cluster in {}: {e}; issue one with `drove cert issue`",
                dir.join(CERT).display(),
                dir.join(CA_CERT).display()
            )
        })?;
        let role = if is_node(&cert_der) {
            Role::Node
        } else {
            Role::Client
        };
        let admin_token = match std::fs::read_to_string(dir.join(token::ADMIN_DIGEST)) {
            Ok(text) => Some(token::parse_digest_line(&text).ok_or_else(|| {
                format!(
                    "{} is damaged; copy it again from the CA's directory",
                    dir.join(token::ADMIN_DIGEST).display()
                )
            })?),
            Err(_) => None,
        };
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            ca,
            cert,
            key,
            role,
            admin_token,
        }))
    }

    /// The first admin token's id and digest, if the CA made one.
    pub fn admin_token(&self) -> Option<&token::Presented> {
        self.admin_token.as_ref()
    }

    /// What this identity's certificate may do.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the files came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server's settings: this identity, and peers must present a certificate of
    /// the cluster.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .timeout(crate::net::CONNECT_TIMEOUT)
    }

    /// A client's settings: this identity, and the server must be a node of the
    /// cluster.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(NODE_NAME)
            .assume_http2(true)
    }

    /// The same settings for a server that is not gRPC (the coordinator's HTTP),
    /// speaking HTTP/1.1.
    pub fn rustls_server(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let fail = |e: &dyn std::fmt::Display| {
            format!(
                "the TLS files in {} do not make a server: {e}",
                self.dir.display()
            )
        };
        // ring, as tonic's connections use (rustls marks it deprecated for lacking
        // post-quantum key exchange; aws-lc-rs has it, at the cost of a C build).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca.as_bytes()) {
            roots.add(ca.map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| fail(&e))?;
        let certs = CertificateDer::pem_slice_iter(self.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|e| fail(&e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| fail(&e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// For a server: refuses a call that came over TLS from a peer without a node's
/// certificate (a client's). Calls over plain TCP pass: that cluster has no TLS.
pub fn require_node<T>(request: &tonic::Request<T>) -> Result<(), tonic::Status> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let Some(info) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
        return Ok(());
    };
    match info.peer_certs() {
        Some(certs) if certs.first().is_some_and(|c| is_node(c)) => Ok(()),
        _ => Err(tonic::Status::permission_denied(
            "only the cluster's coordinators and workers make this call, and this peer's certificate is a client's; give a node a certificate from `drove cert issue` without --client",
        )),
    }
}

/// A gRPC server builder: over mutual TLS with `tls`, if given.
pub fn server_builder(tls: Option<&ClusterTls>) -> Result<tonic::transport::Server, String> {
    let builder = tonic::transport::Server::builder();
    match tls {
        None => Ok(builder),
        Some(tls) => builder.tls_config(tls.server()).map_err(|e| {
            format!(
                "the TLS files in {} cannot serve: {}",
                tls.dir().display(),
                crate::net::error_chain(&e)
            )
        }),
    }
}

/// Refuses to serve `what` on `ip` when that is reachable from a network and no TLS
/// identity is given, unless `insecure` (`--insecure`), which is logged as a warning.
/// A node's listener also needs a node's certificate.
pub fn check_exposure(
    what: &str,
    ip: std::net::IpAddr,
    tls: Option<&ClusterTls>,
    insecure: bool,
) -> Result<(), String> {
    if let Some(tls) = tls {
        if tls.role() != Role::Node {
            return Err(format!(
                "the certificate in {} is a client's; {what} needs a node's: `drove cert issue --ca CA_DIR --name NAME --out DIR` without --client",
                tls.dir().display()
            ));
        }
        return Ok(());
    }
    if ip.is_loopback() {
        return Ok(());
    }
    if insecure {
        tracing::warn!(
            "{what} listens on {ip} without TLS (--insecure): anyone who reaches it can run jobs and read data; use it only on a network you trust"
        );
        return Ok(());
    }
    Err(format!(
        "{what} would listen on {ip}, reachable from the network, without TLS. Make the cluster's certificates (`drove cert init --out CA_DIR`, then `drove cert issue --ca CA_DIR --name NAME --out DIR` for each node) and pass --tls-dir DIR; or, on a network you trust, pass --insecure"
    ))
}

/// What a failed connection's error says about TLS, as the fix; `None` if it says
/// nothing about it.
pub fn mismatch(error: &str) -> Option<&'static str> {
    if error.contains("invalid peer certificate") {
        Some(
            "the server's certificate is not of the cluster in --tls-dir; use a directory its CA issued (`drove cert issue`)",
        )
    } else if error.contains("received fatal alert") {
        Some(
            "the server refused this certificate; use a directory its cluster's CA issued (`drove cert issue`)",
        )
    } else if error.contains("InvalidContentType") {
        Some(
            "the server does not speak TLS; leave out --tls-dir, or start the cluster with --tls-dir",
        )
    } else {
        None
    }
}

/// The fix for a client without `--tls-dir` whose server speaks TLS.
pub const NEEDS_TLS: &str = "the server speaks TLS; pass --tls-dir DIR (or set DROVE_TLS_DIR) with a certificate of its cluster from `drove cert issue`";

/// The name a client's certificate was issued to (`drove cert issue --name`); `None`
/// for a node's. Only call this on a certificate TLS has already verified.
pub fn client_name(cert: &[u8]) -> Option<String> {
    if is_node(cert) {
        return None;
    }
    let der = CertificateDer::from(cert);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    cert.valid_dns_names().next().map(str::to_string)
}

/// Whether `cert` (DER) is a node's certificate: it carries [`NODE_NAME`]. Only call
/// this on a certificate TLS has already verified against the cluster's CA.
pub fn is_node(cert: &[u8]) -> bool {
    let der = CertificateDer::from(cert);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else {
        return false;
    };
    let Ok(name) = DnsName::try_from(NODE_NAME) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&ServerName::DnsName(name))
        .is_ok()
}

fn ca_params(key: &KeyPair) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("cannot make the CA's certificate: {e}"))?;
    params.distinguished_name = distinguished_name(CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(serial(key));
    (params.not_before, params.not_after) = validity(CA_DAYS);
    Ok(params)
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "drove");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A serial number from the certificate's new key: random, so no two certificates
/// share one.
fn serial(key: &KeyPair) -> SerialNumber {
    // An uncompressed EC point: a tag byte, then random coordinates.
    let raw = key.public_key_raw();
    let mut bytes = [0u8; 16];
    for (b, r) in bytes.iter_mut().zip(raw.iter().skip(1)) {
        *b = *r;
    }
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// From an hour ago (clocks differ a little) to `days` days from now.
fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(i64::from(days)),
    )
}

/// Checks that `cert` chains to `ca` and is valid now.
fn verify_chain(cert: &[u8], ca: &[u8]) -> Result<(), String> {
    let ca = CertificateDer::from(ca);
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| format!("bad CA: {e}"))?;
    let der = CertificateDer::from(cert);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| e.to_string())?;
    let now = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    );
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => "it has expired".to_string(),
        webpki::Error::CertNotValidYet { .. } => "it is not valid yet".to_string(),
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            "another CA signed it".to_string()
        }
        e => e.to_string(),
    })
}

/// The certificate in a PEM file's text.
fn pem_certificate(text: &str, path: &Path) -> Result<Vec<u8>, String> {
    CertificateDer::from_pem_slice(text.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("{} holds no PEM certificate: {e}", path.display()))
}

fn read(dir: &Path, file: &str, what: &str) -> Result<String, String> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} has no {file}; expected {what}", dir.display()),
        _ => format!("cannot read {}: {e}", path.display()),
    })
}

/// Writes `files` (name, text, whether secret) into `dir`, made if missing: all of
/// them or none. Each must not exist yet; if one cannot be written, those written
/// before it are removed, and `dir` too if this call made it.
fn write_all_new(dir: &Path, files: &[(&str, String, bool)]) -> Result<(), String> {
    let made = !dir.exists();
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create {}: {e}; choose another --out", dir.display()))?;
    for (i, (file, text, secret)) in files.iter().enumerate() {
        if let Err(e) = write_new(&dir.join(file), text, *secret) {
            for (written, _, _) in &files[..i] {
                let _ = std::fs::remove_file(dir.join(written));
            }
            if made {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Writes a file that must not exist yet, whole or not at all: under a temporary name
/// of its own first (made new, so no file of the user's is touched), synced, then
/// linked into place. A key is readable by this user only.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(fail)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    std::fs::hard_link(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })?;
    std::fs::remove_file(&tmp).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(root: &Path) -> PathBuf {
        let ca = root.join("ca");
        init(&ca).unwrap();
        ca
    }

    #[test]
    fn issued_certificates_load_with_their_roles() {
        let root = tempfile::tempdir().unwrap();
        let ca = cluster(root.path());
        let hosts = ["coordinator.example".to_string(), "10.0.0.1".to_string()];
        issue(
            &ca,
            "worker-1",
            Role::Node,
            &hosts,
            30,
            &root.path().join("w"),
        )
        .unwrap();
        issue(&ca, "alice", Role::Client, &[], 30, &root.path().join("a")).unwrap();

        let node = ClusterTls::load(&root.path().join("w")).unwrap();
        assert_eq!(node.role(), Role::Node);
        let client = ClusterTls::load(&root.path().join("a")).unwrap();
        assert_eq!(client.role(), Role::Client);
        assert!(node.rustls_server().is_ok());
        assert_eq!(
            client_name(&pem_certificate(&client.cert, &ca).unwrap()).as_deref(),
            Some("alice")
        );
        assert_eq!(
            client_name(&pem_certificate(&node.cert, &ca).unwrap()),
            None
        );

        // The CA made the first admin token; nodes get its digest, clients nothing.
        let admin = std::fs::read_to_string(ca.join(token::ADMIN_TOKEN)).unwrap();
        assert_eq!(node.admin_token(), Some(&token::parse(&admin).unwrap()));
        assert!(client.admin_token().is_none());

        // Keys are this user's only; the CA's key stays in the CA's directory.
        use std::os::unix::fs::PermissionsExt;
        for key in [
            ca.join(CA_KEY),
            ca.join(token::ADMIN_TOKEN),
            root.path().join("w").join(KEY),
        ] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is readable by others", key.display());
        }
        assert!(!root.path().join("w").join(CA_KEY).exists());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(root.path().join("w"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(
            !names.contains(&token::ADMIN_TOKEN.to_string()),
            "{names:?}"
        );

        // A directory of the user's keeps the user's files, temporary-looking or not.
        let mine = root.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        for f in ["cert.tmp", "key.tmp", "ca.tmp"] {
            std::fs::write(mine.join(f), "the user's").unwrap();
        }
        issue(&ca, "w2", Role::Node, &[], 30, &mine).unwrap();
        for f in ["cert.tmp", "key.tmp", "ca.tmp"] {
            assert_eq!(std::fs::read_to_string(mine.join(f)).unwrap(), "the user's");
        }
    }

    #[test]
    fn a_certificate_of_another_cluster_or_a_wrong_directory_is_refused_with_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let ca = cluster(root.path());
        let other = root.path().join("other-ca");
        init(&other).unwrap();
        issue(
            &other,
            "rogue",
            Role::Node,
            &[],
            30,
            &root.path().join("rogue"),
        )
        .unwrap();
        // The rogue directory with this cluster's CA: its certificate does not chain.
        std::fs::copy(ca.join(CA_CERT), root.path().join("rogue").join(CA_CERT)).unwrap();
        let e = ClusterTls::load(&root.path().join("rogue")).unwrap_err();
        assert!(e.contains("another CA signed it"), "{e}");

        let e = ClusterTls::load(&ca).unwrap_err();
        assert!(e.contains("is the CA's directory"), "{e}");
        let e = ClusterTls::load(&root.path().join("missing")).unwrap_err();
        assert!(
            e.contains("has no ca.pem") && e.contains("drove cert issue"),
            "{e}"
        );

        std::fs::create_dir(root.path().join("junk")).unwrap();
        for f in [CA_CERT, CERT, KEY] {
            std::fs::write(root.path().join("junk").join(f), "not pem").unwrap();
        }
        let e = ClusterTls::load(&root.path().join("junk")).unwrap_err();
        assert!(e.contains("not a private key"), "{e}");
    }

    #[test]
    fn bad_requests_to_make_certificates_are_refused_and_write_nothing() {
        let root = tempfile::tempdir().unwrap();
        let ca = cluster(root.path());
        let e = init(&ca).unwrap_err();
        assert!(e.contains("already holds a CA"), "{e}");

        let out = root.path().join("out");
        for (name, hosts, days, expected) in [
            ("", vec![], 30, "is not a name"),
            ("a/b", vec![], 30, "is not a name"),
            ("w", vec![], 0, "--days 0"),
            ("w", vec![], DAYS_MAX + 1, "--days"),
            (
                "w",
                vec!["bad host!".to_string()],
                30,
                "neither an IP address nor a DNS name",
            ),
            ("w", vec!["h".to_string(); HOSTS_MAX + 1], 30, "at most"),
        ] {
            let e = issue(&ca, name, Role::Node, &hosts, days, &out).unwrap_err();
            assert!(e.contains(expected), "{name:?} {days}: {e}");
            assert!(!out.exists(), "a refused request wrote {}", out.display());
        }
        let e = issue(&root.path().join("nope"), "w", Role::Node, &[], 30, &out).unwrap_err();
        assert!(e.contains("drove cert init"), "{e}");

        issue(&ca, "w", Role::Node, &[], 30, &out).unwrap();
        let e = issue(&ca, "w", Role::Node, &[], 30, &out).unwrap_err();
        assert!(e.contains("already holds"), "{e}");
    }

    #[test]
    fn off_loopback_a_listener_needs_a_node_certificate_or_insecure() {
        let root = tempfile::tempdir().unwrap();
        let ca = cluster(root.path());
        issue(&ca, "n", Role::Node, &[], 30, &root.path().join("n")).unwrap();
        issue(&ca, "c", Role::Client, &[], 30, &root.path().join("c")).unwrap();
        let node = ClusterTls::load(&root.path().join("n")).unwrap();
        let client = ClusterTls::load(&root.path().join("c")).unwrap();
        let any: std::net::IpAddr = "0.0.0.0".parse().unwrap();
        let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();

        let e = check_exposure("x", any, None, false).unwrap_err();
        assert!(e.contains("--tls-dir") && e.contains("--insecure"), "{e}");
        assert!(check_exposure("x", any, None, true).is_ok());
        assert!(check_exposure("x", loopback, None, false).is_ok());
        assert!(check_exposure("x", any, Some(&node), false).is_ok());
        let e = check_exposure("x", loopback, Some(&client), false).unwrap_err();
        assert!(e.contains("is a client's"), "{e}");
    }
}
