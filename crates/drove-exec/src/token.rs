//! Client tokens: `drove_<id>_<secret>`. The id names the token in the metadata, in
//! audit lines and in `drove token revoke`; the secret is known only to its holder,
//! and the cluster keeps its SHA-256.
//!
//! Also grants: what lets a client read a job's blocks, or read or write a drove fs
//! chunk, on the workers. The coordinator signs (what, the client certificate's name,
//! an expiry) with the cluster's ticket key, which workers get when they register; a
//! worker serves a client only what its grant names, only to the certificate it was
//! made for, and only until it expires.

use ring::digest::{SHA256, digest};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "drove_";
/// Bytes of an id and of a secret (each written as hex).
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// The first admin token, made by `drove cert init` in the CA's directory.
pub const ADMIN_TOKEN: &str = "admin.token";
/// Its id and digest (no secret), copied by `drove cert issue` into every node's
/// directory so coordinators accept it.
pub const ADMIN_DIGEST: &str = "admin.token.sha256";

/// A token taken apart: its id and the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub id: String,
    pub digest: Vec<u8>,
}

/// How long a grant lets its client read a job's blocks (a result is kept 10 minutes
/// by default once its job ends).
pub const GRANT_LIFE_MS: u64 = 60 * 60 * 1000;

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random source failed".to_string())?;
    Ok(bytes)
}

/// A random value for a form's anti-forgery field (16 bytes, as hex).
pub fn nonce() -> Result<String, String> {
    Ok(hex(&random::<16>()?))
}

/// A new key for signing grants.
pub fn new_ticket_key() -> Result<Vec<u8>, String> {
    Ok(random::<32>()?.to_vec())
}

/// What a grant opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// A job's blocks.
    Job(u64),
    /// Reading a drove fs chunk.
    ChunkRead(u64),
    /// Writing a new drove fs chunk.
    ChunkWrite(u64),
}

fn grant_message(what: Granted, reader: &str, expires_ms: u64) -> Vec<u8> {
    let (kind, id) = match what {
        Granted::Job(id) => (b'j', id),
        Granted::ChunkRead(id) => (b'r', id),
        Granted::ChunkWrite(id) => (b'w', id),
    };
    let mut message = vec![kind];
    message.extend_from_slice(&id.to_le_bytes());
    message.extend_from_slice(&expires_ms.to_le_bytes());
    message.extend_from_slice(reader.as_bytes());
    message
}

/// The grant that lets the holder of the client certificate named `reader` reach
/// `what` until `expires_ms` (Unix milliseconds): the expiry, then the signature.
pub fn grant(key: &[u8], what: Granted, reader: &str, expires_ms: u64) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let signature = hmac::sign(&key, &grant_message(what, reader, expires_ms));
    [&expires_ms.to_le_bytes()[..], signature.as_ref()].concat()
}

/// Whether `grant` is [`grant`]'s for `what` and `reader` and not expired at `now_ms`
/// (the signature checked in constant time); never without a key.
pub fn check_grant(key: &[u8], what: Granted, reader: &str, grant: &[u8], now_ms: u64) -> bool {
    let Some((expires, signature)) = grant.split_first_chunk::<8>() else {
        return false;
    };
    let expires_ms = u64::from_le_bytes(*expires);
    if key.is_empty() || now_ms >= expires_ms {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::verify(&key, &grant_message(what, reader, expires_ms), signature).is_ok()
}

/// A new token: its text for its holder, and what the cluster keeps.
pub fn generate() -> Result<(String, Presented), String> {
    let bytes = random::<{ ID_BYTES + SECRET_BYTES }>()?;
    let (id, secret) = (hex(&bytes[..ID_BYTES]), hex(&bytes[ID_BYTES..]));
    let text = format!("{PREFIX}{id}_{secret}");
    let presented = parse(&text)?;
    Ok((text, presented))
}

/// Takes a token's text apart; the error says what is wrong with it, never its text.
pub fn parse(text: &str) -> Result<Presented, String> {
    let bad = || {
        format!(
            "the token is not a drove token (drove_ID_SECRET, {} characters); give one from `drove token create` or `admin.token`",
            PREFIX.len() + 2 * ID_BYTES + 1 + 2 * SECRET_BYTES
        )
    };
    let rest = text.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
    let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
    if !is_hex(id, ID_BYTES) || !is_hex(secret, SECRET_BYTES) {
        return Err(bad());
    }
    Ok(Presented {
        id: id.to_string(),
        digest: digest(&SHA256, secret.as_bytes()).as_ref().to_vec(),
    })
}

/// Whether `id` could be a token's id (for `drove token revoke ID`).
pub fn check_id(id: &str) -> Result<(), String> {
    if is_hex(id, ID_BYTES) {
        Ok(())
    } else {
        Err(format!(
            "'{id}' is not a token id: {} hex digits, as `drove token list` shows",
            2 * ID_BYTES
        ))
    }
}

/// The [`ADMIN_DIGEST`] file's text for a token.
pub fn digest_line(token: &Presented) -> String {
    format!("{} {}\n", token.id, hex(&token.digest))
}

/// Reads an [`ADMIN_DIGEST`] file's text.
pub fn parse_digest_line(text: &str) -> Option<Presented> {
    let (id, digest) = text.trim().split_once(' ')?;
    check_id(id).ok()?;
    let digest = unhex(digest)?;
    (digest.len() == 32).then(|| Presented {
        id: id.to_string(),
        digest,
    })
}

/// Whether `text` is `bytes` bytes in lower-case hex.
fn is_hex(text: &str, bytes: usize) -> bool {
    text.len() == 2 * bytes && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `bytes` in lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The bytes `text` spells in hex; `None` if it is not hex.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_parses_to_what_the_cluster_keeps() {
        let (text, kept) = generate().unwrap();
        assert_eq!(parse(&text).unwrap(), kept);
        assert_eq!(parse_digest_line(&digest_line(&kept)), Some(kept.clone()));
        let (other, _) = generate().unwrap();
        assert_ne!(text, other);
        // Another secret under the same id does not match.
        let forged = format!("{}{}_{}", PREFIX, kept.id, "0".repeat(64));
        assert_ne!(parse(&forged).unwrap().digest, kept.digest);
    }

    #[test]
    fn a_grant_opens_one_job_to_one_reader_for_a_while() {
        let key = new_ticket_key().unwrap();
        let (now, until) = (1_000, 2_000);
        let g = grant(&key, Granted::Job(7), "alice", until);
        assert!(check_grant(&key, Granted::Job(7), "alice", &g, now));
        assert!(
            !check_grant(&key, Granted::Job(7), "alice", &g, until),
            "expired"
        );
        assert!(
            !check_grant(&key, Granted::Job(8), "alice", &g, now),
            "another job"
        );
        assert!(
            !check_grant(&key, Granted::Job(7), "bob", &g, now),
            "another reader"
        );
        let other = new_ticket_key().unwrap();
        assert!(
            !check_grant(&other, Granted::Job(7), "alice", &g, now),
            "another cluster"
        );
        assert!(
            !check_grant(&key, Granted::Job(7), "alice", &[], now),
            "no grant"
        );
        assert!(
            !check_grant(&key, Granted::Job(7), "alice", &g[..39], now),
            "a cut grant"
        );
        assert!(
            !check_grant(&[], Granted::Job(7), "alice", &g, now),
            "no key yet"
        );
        // A later expiry written over the grant's breaks its signature.
        let mut extended = g.clone();
        extended[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(!check_grant(
            &key,
            Granted::Job(7),
            "alice",
            &extended,
            until
        ));
        assert!(
            !check_grant(&key, Granted::ChunkRead(7), "alice", &g, now),
            "a chunk of the same id"
        );
        let read = grant(&key, Granted::ChunkRead(7), "alice", until);
        assert!(check_grant(
            &key,
            Granted::ChunkRead(7),
            "alice",
            &read,
            now
        ));
        assert!(
            !check_grant(&key, Granted::ChunkWrite(7), "alice", &read, now),
            "a read is no write"
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        for bad in [
            "",
            "secret",
            "drove_",
            "drove_0123456789abcdef",
            "drove_0123456789abcdeX_00",
            &format!("drove_0123456789abcdef_{}", "0".repeat(63)),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("drove token create"), "{e}");
            assert!(bad.len() < 10 || !e.contains(bad), "{e}");
        }
        assert!(check_id("0123456789abcdef").is_ok());
        assert!(check_id("xyz").is_err());
        assert!(parse_digest_line("nonsense").is_none());
    }
}
