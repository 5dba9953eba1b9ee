//! Secrets: the master key, session-link tokens, API keys and admin tokens.
//!
//! Invariants: no secret is written to the log or a log line; API keys and admin tokens are
//! kept as SHA-256 hashes and compared in constant time; session tokens are
//! `base64url(HMAC-SHA256(link key, session id))` — 256 bits no one can compute without the
//! master key, reproducible by the server (so an idempotent retry gets the same URL), stored
//! nowhere, and never equal to the session id.

use crate::core::{SecretHash, SessionId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets.key_file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error(
        "secrets.key_file {path}: the master key is missing, but {why}. Restore the master key \
         file from backup (mode 0600); palmgate generates a new master key only for a new site \
         (empty log and key store), since a new key would open none of the existing templates \
         or webhook secrets"
    )]
    Missing { path: String, why: String },
}

/// What [`Keys::load`] does when the key file does not exist.
pub enum IfMissing {
    /// Creates it with this key (a new site).
    Create([u8; 32]),
    /// Refuses, saying why the key must exist.
    Refuse(String),
}

/// Where the master key comes from, as errors name it.
pub fn master_key_source(key_file: &Path, hex_override: Option<&str>) -> String {
    match hex_override {
        Some(_) => "secrets.master_key (the environment variable PALMGATE_SECRETS_MASTER_KEY \
                    or the config file)"
            .to_string(),
        None => format!("secrets.key_file {}", key_file.display()),
    }
}

/// Hex SHA-256 of a secret string.
pub fn hash_secret(secret: &str) -> SecretHash {
    SecretHash(hex_lower(&Sha256::digest(secret.as_bytes())))
}

/// Lower-case hex of `bytes`, as `hex::encode` gives it; that one pushes one `char` at a time
/// into its `String`, and hashing an API key and a session token did it twice per request.
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("the output is twice the input's length");
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &SecretHash, b: &SecretHash) -> bool {
    a.0.as_bytes().ct_eq(b.0.as_bytes()).into()
}

/// A new API key: `pgk_` + 32 random bytes, base64url.
pub fn new_api_key(random: [u8; 32]) -> String {
    format!("pgk_{}", URL_SAFE_NO_PAD.encode(random))
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Keys derived from the master key.
#[derive(Clone)]
pub struct Keys {
    link_key: [u8; 32],
    wrap_key: [u8; 32],
    secret_key: [u8; 32],
    dash_key: [u8; 32],
    check: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn from_master(master: &[u8; 32]) -> Keys {
        Keys {
            link_key: hmac(master, &[b"palmgate session link v1"]),
            wrap_key: hmac(master, &[b"palmgate template key wrap v1"]),
            secret_key: hmac(master, &[b"palmgate webhook secret v1"]),
            dash_key: hmac(master, &[b"palmgate dashboard cookie v1"]),
            check: hmac(master, &[b"palmgate key store check v1"]),
        }
    }

    /// A MAC of a fixed label under the master key, kept in the key store to recognise the key
    /// it was written with (it reveals nothing of the key).
    pub fn key_check(&self) -> [u8; 32] {
        self.check
    }

    /// Encrypts a webhook secret for the log: base64 of `nonce (24) ‖ ciphertext`.
    pub fn seal_secret(&self, secret: &str, nonce: [u8; 24]) -> String {
        use chacha20poly1305::aead::{Aead, KeyInit};
        let c = chacha20poly1305::XChaCha20Poly1305::new((&self.secret_key).into());
        let ct = c
            .encrypt((&nonce).into(), secret.as_bytes())
            .expect("encrypting a short secret cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Decrypts a webhook secret sealed by [`Keys::seal_secret`].
    pub fn open_secret(&self, sealed: &str) -> Option<String> {
        use chacha20poly1305::aead::{Aead, KeyInit};
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < 24 {
            return None;
        }
        let (nonce, ct) = raw.split_at(24);
        let c = chacha20poly1305::XChaCha20Poly1305::new((&self.secret_key).into());
        let clear = c.decrypt(nonce.into(), ct).ok()?;
        String::from_utf8(clear).ok()
    }

    /// The key that wraps per-user template data keys.
    pub fn wrap_key(&self) -> &[u8; 32] {
        &self.wrap_key
    }

    /// A stable name for this installation (e.g. its MQTT client id), not revealing the key.
    pub fn instance_name(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}",
            &hex::encode(hmac(&self.link_key, &[b"instance name"]))[..12]
        )
    }

    /// MAC of a dashboard cookie or CSRF token over `parts`.
    pub fn dash_mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        hmac(&self.dash_key, parts)
    }

    /// The URL token of a session.
    pub fn session_token(&self, id: SessionId) -> String {
        URL_SAFE_NO_PAD.encode(hmac(&self.link_key, &[id.0.as_bytes()]))
    }

    /// Loads the master key from `hex_override`, or from `path`, creating the file (mode 0600)
    /// with `fresh` if it does not exist. For tools and tests; the server uses [`Keys::load`],
    /// which creates the file only for a new site.
    pub fn load_or_create(
        path: &Path,
        hex_override: Option<&str>,
        fresh: [u8; 32],
    ) -> Result<Keys, SecretsError> {
        Keys::load(path, hex_override, IfMissing::Create(fresh))
    }

    /// Loads the master key from `hex_override`, or from `path`; a missing file is created
    /// (mode 0600) or refused as `missing` says.
    pub fn load(
        path: &Path,
        hex_override: Option<&str>,
        missing: IfMissing,
    ) -> Result<Keys, SecretsError> {
        let err = |reason: String| SecretsError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        if let Some(h) = hex_override {
            let bytes = hex::decode(h.trim()).map_err(|e| err(format!("override: {e}")))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| err("override must be 32 bytes".into()))?;
            return Ok(Keys::from_master(&key));
        }
        match read_private(path) {
            Ok(text) => {
                let text = text.map_err(err)?;
                let bytes = hex::decode(text.trim()).map_err(|e| err(format!("not hex: {e}")))?;
                let key: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| err("must hold 64 hex characters".into()))?;
                Ok(Keys::from_master(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = match missing {
                    IfMissing::Create(fresh) => fresh,
                    IfMissing::Refuse(why) => {
                        return Err(SecretsError::Missing {
                            path: path.display().to_string(),
                            why,
                        });
                    }
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                write_private(path, format!("{}\n", hex::encode(fresh)).as_bytes())
                    .map_err(|e| err(e.to_string()))?;
                tracing::info!(path = %path.display(), "generated a new master key (mode 0600)");
                Ok(Keys::from_master(&fresh))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }
}

/// The text of the key file at `path`, opened once and checked on that open file: it must be
/// owned by the user palmgate runs as and neither group- nor world-accessible (it is created
/// 0600); anyone else who can write it chooses the key, anyone who can read it holds it.
/// The outer error is the file's own (`NotFound` creates it); the inner one says why its
/// permissions are refused.
fn read_private(path: &Path) -> std::io::Result<Result<String, String>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(Err(
                "is not a regular file (a directory?): name the key file itself".into(),
            ));
        }
        let mode = meta.mode() & 0o777;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Ok(Err(format!(
                "owned by uid {}, not by the user palmgate runs as (uid {me}): refused, since its \
                 owner can choose or read the key (chown it, and chmod 600)",
                meta.uid()
            )));
        }
        if mode & 0o077 != 0 {
            return Ok(Err(format!(
                "mode {mode:04o} lets other users read or write it: refused (chmod 600 {})",
                path.display()
            )));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    remove_stale_copies(path);
    Ok(Ok(text))
}

/// Removes the temporary files [`write_private`] leaves beside `path` when it is killed
/// between linking the key in and removing them (`.<name>.<pid>.tmp`): a second copy of the
/// key that no later start would otherwise remove.
fn remove_stale_copies(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix)
            && n.ends_with(".tmp")
            && n[prefix.len()..n.len() - 4]
                .bytes()
                .all(|b| b.is_ascii_digit())
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Creates `path` (mode 0600) holding `bytes`, whole or not at all: the bytes go to a
/// temporary file beside it, synced, which is then linked in as `path` (refused if `path`
/// exists by then) and the directory synced. Written in place, a kill or a power cut between
/// the create and the write left an empty key file, and the next start refused it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp); // left by a process of the same id that was killed
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                // A file system without hard links (vfat, some network mounts): a rename,
                // after making sure nothing is there (the rename would replace it).
                if path.exists() {
                    return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
                }
                tracing::debug!(error = %e, "no hard link here: the new key file is renamed into place");
                std::fs::rename(&tmp, path)
            }
            other => other,
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// The admin bearer token, held as its hash.
#[derive(Clone, Debug)]
pub struct AdminToken(Option<SecretHash>);

impl AdminToken {
    pub fn new(token: &str, token_sha256: &str) -> AdminToken {
        if !token_sha256.is_empty() {
            AdminToken(Some(SecretHash(token_sha256.to_lowercase())))
        } else if !token.is_empty() {
            AdminToken(Some(hash_secret(token)))
        } else {
            AdminToken(None)
        }
    }

    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The token's hash (dashboard cookies are bound to it: a new token ends every session).
    pub fn hash(&self) -> Option<&SecretHash> {
        self.0.as_ref()
    }

    pub fn verify(&self, presented: &str) -> bool {
        match &self.0 {
            Some(h) => hashes_equal(h, &hash_secret(presented)),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lower_is_what_hex_encode_gives() {
        for bytes in [&[][..], &[0u8], &[0xab, 0x01, 0xff, 0x10], &[0x5a; 32]] {
            assert_eq!(hex_lower(bytes), hex::encode(bytes));
        }
        assert_eq!(
            hash_secret("abc").0,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tokens_are_long_stable_and_not_the_id() {
        let keys = Keys::from_master(&[7; 32]);
        let id = SessionId::from_random([1; 16]);
        let t = keys.session_token(id);
        assert_eq!(t, keys.session_token(id));
        assert_eq!(t.len(), 43);
        assert!(!t.contains(&id.to_string()));
        assert_ne!(t, Keys::from_master(&[8; 32]).session_token(id));
    }

    #[test]
    fn webhook_secrets_seal_and_open() {
        let keys = Keys::from_master(&[7; 32]);
        let sealed = keys.seal_secret("whsec_abc", [1; 24]);
        assert!(!sealed.contains("whsec"));
        assert_eq!(keys.open_secret(&sealed).as_deref(), Some("whsec_abc"));
        assert_eq!(Keys::from_master(&[8; 32]).open_secret(&sealed), None);
    }

    #[test]
    fn admin_token_compares_hashes() {
        let a = AdminToken::new("s3cret", "");
        assert!(a.verify("s3cret"));
        assert!(!a.verify("s3cre"));
        assert!(!AdminToken::new("", "").verify(""));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k/master.key");
        let a = Keys::load_or_create(&p, None, [3; 32]).unwrap();
        let b = Keys::load_or_create(&p, None, [4; 32]).unwrap();
        let id = SessionId::from_random([9; 16]);
        assert_eq!(a.session_token(id), b.session_token(id));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The key went in whole through a temporary file, which is gone.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("k"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["master.key"]);
        assert_eq!(std::fs::read_to_string(&p).unwrap().len(), 65);
        // A stale temporary file of a killed first start does not stand in the way.
        let q = dir.path().join("k/other.key");
        std::fs::write(
            dir.path()
                .join(format!("k/.other.key.{}.tmp", std::process::id())),
            "",
        )
        .unwrap();
        Keys::load_or_create(&q, None, [5; 32]).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("k")).unwrap().count(), 2);
        // A copy left by a start killed after the link is removed by the next load.
        std::fs::write(dir.path().join("k/.master.key.4242.tmp"), "copy").unwrap();
        Keys::load_or_create(&p, None, [6; 32]).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("k")).unwrap().count(), 2);
    }

    /// A key file others can read (or write) is refused, naming the file and its mode; the
    /// key is not used. Made private again, it loads.
    #[cfg(unix)]
    #[test]
    fn a_key_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        std::fs::write(&p, format!("{}\n", hex::encode([5u8; 32]))).unwrap();
        for mode in [0o644, 0o640, 0o602] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Keys::load_or_create(&p, None, [6; 32])
                .err()
                .unwrap_or_else(|| panic!("a key file with mode {mode:o} was used"))
                .to_string();
            assert!(
                err.contains(&p.display().to_string()) && err.contains(&format!("mode {mode:04o}")),
                "{err}"
            );
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let keys = Keys::load_or_create(&p, None, [6; 32]).unwrap();
        let id = SessionId::from_random([9; 16]);
        assert_eq!(
            keys.session_token(id),
            Keys::from_master(&[5; 32]).session_token(id)
        );
    }
    /// A key file path that is a directory is refused as such (not with advice to chmod it).
    #[cfg(unix)]
    #[test]
    fn a_key_file_that_is_a_directory_is_refused_as_such() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let Err(err) = Keys::load_or_create(&p, None, [6; 32]) else {
            panic!("a directory was taken for a key file");
        };
        let err = err.to_string();
        assert!(
            err.contains(&format!("secrets.key_file {}", p.display()))
                && err.contains("is not a regular file")
                && !err.contains("chmod"),
            "{err}"
        );
    }

    /// With `IfMissing::Refuse`, a missing key file is an error naming `secrets.key_file` and
    /// the reason, and no file is created; an existing one loads.
    #[test]
    fn a_missing_key_file_is_refused_when_the_site_has_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let e = match Keys::load(&p, None, IfMissing::Refuse("the log has events".into())) {
            Ok(_) => panic!("a missing master key was generated"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&format!("secrets.key_file {}", p.display()))
                && e.contains("master key is missing")
                && e.contains("the log has events"),
            "{e}"
        );
        assert!(!p.exists());
        let a = Keys::load(&p, None, IfMissing::Create([3; 32])).unwrap();
        let b = Keys::load(&p, None, IfMissing::Refuse("x".into())).unwrap();
        assert_eq!(a.key_check(), b.key_check());
        assert_ne!(a.key_check(), Keys::from_master(&[4; 32]).key_check());
    }
}
