//! Device credentials: EdDSA (Ed25519) JWTs and the key that signs them.
//!
//! Claims on the wire:
//! `{"iss":"parley","sub":"<user id>","dev":"<device id>","gen":<generation>,"iat":<unix s>,"exp":<unix s>}`.
//! Ids are decimal strings because JSON numbers above 2^53 lose precision in
//! JavaScript and other doubles-only JSON parsers.

use std::fmt;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, UserId};

/// The signing key's file name inside the key directory.
pub const KEY_FILE: &str = "jwt-ed25519.pem";

/// `iss` of every token we issue and the only one we accept.
pub const ISSUER: &str = "parley";

/// Allowed clock difference when checking `exp`, for fleets whose clocks
/// disagree by a few seconds. Small next to a token's lifetime (a year).
const LEEWAY_SECS: u64 = 30;

/// Tokens longer than this are refused before any parsing: ours are about
/// 300 bytes, and a credential arrives in a header a peer controls.
const MAX_TOKEN_LEN: usize = 4096;

/// A key file larger than this is not a PEM Ed25519 key; refuse to read it all.
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;

/// Why a key could not be loaded or created. Carries the path, never key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: &'static str },
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    /// Bad signature, refused algorithm, malformed token or claims, wrong issuer.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The signing key could not be read, written or parsed.
    #[error("signing key: {0}")]
    Key(#[from] KeyError),
    #[error("signing a token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// What a verified token says about its bearer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceClaims {
    pub user: UserId,
    pub device: DeviceId,
    /// The account's registration generation when the token was issued; a
    /// later re-registration raises it, which revokes this token.
    pub generation: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireClaims {
    iss: String,
    sub: String,
    dev: String,
    #[serde(rename = "gen")]
    generation: u64,
    iat: u64,
    exp: u64,
}

/// EdDSA (Ed25519) signing key, generated with ring on first start and kept
/// as PKCS#8 PEM at `<dir>/jwt-ed25519.pem` (file mode 0600; the directory is
/// created with mode 0700 if missing); loaded on later starts. Every node of a
/// cluster must be given the same file.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// Short public fingerprint, sent as the JWT `kid` so a future key
    /// rotation can tell keys apart; safe to log.
    key_id: String,
    path: PathBuf,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately no key material, not even the public key.
        f.debug_struct("TokenKeys")
            .field("alg", &"EdDSA")
            .field("key_id", &self.key_id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// Loads `<dir>/jwt-ed25519.pem`, generating it first if it does not exist.
    ///
    /// Safe against another process starting at the same moment: the new key
    /// is written to a temporary file and hard-linked into place, which fails
    /// if the other process got there first, and then its key is loaded.
    pub fn load_or_generate(dir: &Path) -> Result<Self, TokenError> {
        let path = dir.join(KEY_FILE);
        match fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => generate_key_file(dir, &path)?,
            Err(source) => return Err(KeyError::Io { path, source }.into()),
        }
        Ok(Self::load(path)?)
    }

    fn load(path: PathBuf) -> Result<Self, KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let meta = fs::metadata(&path).map_err(io_err)?;
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::Format {
                path,
                reason: "file too large for an Ed25519 PEM key",
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "JWT signing key is readable by group or others; it should be mode 0600");
            }
        }
        let text = fs::read(&path).map_err(io_err)?;
        let format = |reason| KeyError::Format {
            path: path.clone(),
            reason,
        };
        let pem = pem::parse(&text).map_err(|_| format("not a PEM file"))?;
        if pem.tag() != "PRIVATE KEY" {
            return Err(format("PEM block is not a PKCS#8 \"PRIVATE KEY\""));
        }
        let pkcs8 = pem.contents();
        // `maybe_unchecked` also accepts PKCS#8 v1 documents (e.g. from
        // `openssl genpkey -algorithm ed25519`), so operators can bring a key.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|_| format("not an Ed25519 PKCS#8 private key"))?;
        let public = pair.public_key().as_ref();
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, public);
        let key_id = fingerprint.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();

        let mut validation = Validation::new(Algorithm::EdDSA);
        // Only EdDSA: `none`, HMAC (the classic "sign with the public key"
        // confusion) and everything else are refused before any signature work.
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = false;
        validation.validate_aud = false;

        Ok(Self {
            encoding: EncodingKey::from_ed_der(pkcs8),
            decoding: DecodingKey::from_ed_der(public),
            validation,
            key_id,
            path,
        })
    }

    /// A token for `(user, device, generation)` valid for `ttl` from now.
    pub fn issue(
        &self,
        user: UserId,
        device: DeviceId,
        generation: u64,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.issue_at(iat, user, device, generation, ttl)
    }

    fn issue_at(
        &self,
        iat: u64,
        user: UserId,
        device: DeviceId,
        generation: u64,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let claims = WireClaims {
            iss: ISSUER.to_owned(),
            sub: user.to_string(),
            dev: device.to_string(),
            generation,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(TokenError::Sign)
    }

    /// Checks the signature (EdDSA only: alg `none`, HS256 and anything else
    /// are refused), `exp` (with a 30 s leeway), `iss`, and that the ids are
    /// in range. Says nothing about revocation: that needs the store, see
    /// [`crate::Authenticator`].
    pub fn verify(&self, token: &str) -> Result<DeviceClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid("token too long"));
        }
        let data = jsonwebtoken::decode::<WireClaims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature"),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::Invalid("algorithm not allowed")
                }
                ErrorKind::InvalidIssuer => TokenError::Invalid("wrong issuer"),
                ErrorKind::MissingRequiredClaim(_) => TokenError::Invalid("missing claim"),
                _ => TokenError::Invalid("malformed token"),
            })?;
        let claims = data.claims;
        let user = parse_id(&claims.sub).ok_or(TokenError::Invalid("bad sub claim"))?;
        let device = parse_id(&claims.dev).ok_or(TokenError::Invalid("bad dev claim"))?;
        if claims.generation == 0 {
            return Err(TokenError::Invalid("bad gen claim"));
        }
        Ok(DeviceClaims {
            user,
            device,
            generation: claims.generation,
        })
    }
}

/// A decimal id in `1..=i64::MAX`, the range the store can hold.
fn parse_id(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>()
        .ok()
        .filter(|id| (1..=i64::MAX as u64).contains(id))
}

fn generate_key_file(dir: &Path, path: &Path) -> Result<(), KeyError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| KeyError::Io { path: p, source }
    };
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err(dir))?;

    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).map_err(|_| {
        KeyError::Format {
            path: path.to_path_buf(),
            reason: "the system random generator failed",
        }
    })?;
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));

    let tmp = dir.join(format!(
        ".{KEY_FILE}.{:016x}.tmp",
        rand::rngs::OsRng.r#gen::<u64>()
    ));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Created 0600 rather than chmod-ed afterwards, so the key is never
        // readable by others, not even for a moment.
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(KeyError::Io { path: tmp, source });
    }
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated a new JWT signing key");
            // Make the new directory entry durable too; best effort, as not
            // every filesystem lets a directory be opened for syncing.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        }
        // Another process generated the key first; use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(KeyError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const DAY: Duration = Duration::from_secs(86_400);

    fn keys() -> (tempfile::TempDir, TokenKeys) {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = TokenKeys::load_or_generate(&dir.path().join("keys")).expect("keys");
        (dir, keys)
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn claims_json(exp: u64) -> serde_json::Value {
        serde_json::json!({"iss": "parley", "sub": "42", "dev": "7", "gen": 1, "iat": now(), "exp": exp})
    }

    #[test]
    fn round_trip() {
        let (_dir, keys) = keys();
        let token = keys.issue(42, 7, 3, DAY).expect("issue");
        assert_eq!(
            keys.verify(&token).expect("verify"),
            DeviceClaims {
                user: 42,
                device: 7,
                generation: 3
            }
        );
        // The wire format other languages' clients and servers rely on.
        let payload = token.split('.').nth(1).expect("payload");
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
        assert_eq!(json["iss"], "parley");
        assert_eq!(json["sub"], "42");
        assert_eq!(json["dev"], "7");
        assert_eq!(json["gen"], 3);
        assert_eq!(
            json["exp"].as_u64(),
            json["iat"].as_u64().map(|i| i + 86_400)
        );
        let header = token.split('.').next().expect("header");
        let json: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("json");
        assert_eq!(json["alg"], "EdDSA");
    }

    #[test]
    fn large_ids_survive() {
        let (_dir, keys) = keys();
        let max = i64::MAX as u64;
        let token = keys.issue(max, max - 1, u64::MAX, DAY).expect("issue");
        let claims = keys.verify(&token).expect("verify");
        assert_eq!((claims.user, claims.device), (max, max - 1));
    }

    #[test]
    fn refuses_alg_none() {
        let (_dir, keys) = keys();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims_json(now() + 3600).to_string());
        for token in [
            format!("{header}.{payload}."),
            format!("{header}.{payload}"),
        ] {
            assert!(matches!(keys.verify(&token), Err(TokenError::Invalid(_))));
        }
    }

    #[test]
    fn refuses_hs256_signed_with_the_public_key() {
        let (_dir, keys) = keys();
        let pem = pem::parse(fs::read(&keys.path).expect("read")).expect("pem");
        let public = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pem.contents())
            .expect("pair")
            .public_key()
            .as_ref()
            .to_vec();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims_json(now() + 3600),
            &EncodingKey::from_secret(&public),
        )
        .expect("encode");
        assert!(matches!(
            keys.verify(&token),
            Err(TokenError::Invalid("algorithm not allowed"))
        ));
    }

    #[test]
    fn refuses_another_keys_signature() {
        let (_dir, keys) = keys();
        let (_other_dir, other) = self::keys();
        let token = other.issue(42, 7, 1, DAY).expect("issue");
        assert!(matches!(
            keys.verify(&token),
            Err(TokenError::Invalid("bad signature"))
        ));
    }

    #[test]
    fn refuses_a_tampered_payload() {
        let (_dir, keys) = keys();
        let token = keys.issue(42, 7, 1, DAY).expect("issue");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"iss": "parley", "sub": "43", "dev": "7", "gen": 1, "iat": now(), "exp": now() + 3600})
                .to_string(),
        );
        assert!(matches!(
            keys.verify(&parts.join(".")),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn refuses_expired() {
        let (_dir, keys) = keys();
        let token = keys
            .issue_at(now() - 2 * 86_400, 42, 7, 1, DAY)
            .expect("issue");
        assert!(matches!(keys.verify(&token), Err(TokenError::Expired)));
        // Within the leeway it still passes: clocks of a fleet disagree a little.
        let token = keys
            .issue_at(now() - 86_400 - 5, 42, 7, 1, DAY)
            .expect("issue");
        assert!(keys.verify(&token).is_ok());
    }

    #[test]
    fn refuses_bad_claims() {
        let (_dir, keys) = keys();
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &keys.encoding)
                .expect("encode")
        };
        let exp = now() + 3600;
        for claims in [
            serde_json::json!({"iss": "other", "sub": "42", "dev": "7", "gen": 1, "iat": 0, "exp": exp}),
            serde_json::json!({"sub": "42", "dev": "7", "gen": 1, "iat": 0, "exp": exp}),
            serde_json::json!({"iss": "parley", "sub": "42", "dev": "7", "gen": 1, "iat": 0}),
            serde_json::json!({"iss": "parley", "sub": "x42", "dev": "7", "gen": 1, "iat": 0, "exp": exp}),
            serde_json::json!({"iss": "parley", "sub": "0", "dev": "7", "gen": 1, "iat": 0, "exp": exp}),
            serde_json::json!({"iss": "parley", "sub": "9223372036854775808", "dev": "7", "gen": 1, "iat": 0, "exp": exp}),
            serde_json::json!({"iss": "parley", "sub": "42", "dev": "-7", "gen": 1, "iat": 0, "exp": exp}),
            serde_json::json!({"iss": "parley", "sub": "42", "dev": 7, "gen": 1, "iat": 0, "exp": exp}),
            serde_json::json!({"iss": "parley", "sub": "42", "dev": "7", "gen": 0, "iat": 0, "exp": exp}),
            serde_json::json!({"iss": "parley", "sub": "42", "dev": "7", "iat": 0, "exp": exp}),
        ] {
            let token = sign(claims.clone());
            assert!(
                matches!(keys.verify(&token), Err(TokenError::Invalid(_))),
                "accepted {claims}"
            );
        }
    }

    #[test]
    fn refuses_garbage() {
        let (_dir, keys) = keys();
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        for token in [
            "",
            ".",
            "..",
            "a.b.c",
            "not a token",
            "e30.e30.e30",
            long.as_str(),
        ] {
            assert!(
                matches!(keys.verify(token), Err(TokenError::Invalid(_))),
                "accepted {token:?}"
            );
        }
    }

    #[test]
    fn keys_persist_across_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_dir = dir.path().join("nested").join("keys");
        let first = TokenKeys::load_or_generate(&key_dir).expect("generate");
        let token = first.issue(42, 7, 1, DAY).expect("issue");
        let second = TokenKeys::load_or_generate(&key_dir).expect("load");
        assert_eq!(second.verify(&token).expect("verify").user, 42);
        assert_eq!(first.key_id, second.key_id);
        // Only the key file is left behind, no temporary files.
        let names: Vec<_> = fs::read_dir(&key_dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE)]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(key_dir.join(KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn concurrent_first_starts_agree_on_one_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_dir = dir.path().join("keys");
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| TokenKeys::load_or_generate(&key_dir).expect("keys").key_id))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join"))
                .collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }

    #[test]
    fn debug_prints_no_key_material() {
        let (_dir, keys) = keys();
        let debug = format!("{keys:?}");
        let pem_text = fs::read_to_string(&keys.path).expect("read");
        let body: String = pem_text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!debug.contains(&body[..20]));
        assert!(debug.contains("EdDSA"));
    }

    #[test]
    fn refuses_a_corrupt_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join(KEY_FILE),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        assert!(matches!(
            TokenKeys::load_or_generate(dir.path()),
            Err(TokenError::Key(KeyError::Format { .. }))
        ));
        fs::write(dir.path().join(KEY_FILE), "hello").expect("write");
        assert!(matches!(
            TokenKeys::load_or_generate(dir.path()),
            Err(TokenError::Key(KeyError::Format { .. }))
        ));
    }

    #[test]
    fn parse_id_range() {
        assert_eq!(parse_id("1"), Some(1));
        assert_eq!(parse_id("9223372036854775807"), Some(i64::MAX as u64));
        for bad in [
            "",
            "0",
            "+1",
            " 1",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
