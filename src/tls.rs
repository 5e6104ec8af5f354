//! TLS for both listeners: the operator's certificate, or a self-signed one
//! generated on first start so that `parley` serves TLS on a laptop with no
//! setup. Phones (and parley-cli) trust the generated certificate through
//! `<data-dir>/tls/cert.pem`.
//!
//! The certificate can be renewed without a restart: both listeners take
//! it from one [`Certificate`] resolver, and `SIGHUP` makes the server read
//! the files again ([`Certificate::reload`]). Connections already open keep
//! the TLS session they have; new ones get the new certificate. A new pair
//! that does not load (unreadable, the wrong kind of PEM, a key that does
//! not match the certificate) is refused and the old one stays in use.
//!
//! The generated key is ECDSA P-256: signing it is cheaper than Ed25519 with
//! the ring provider, and every TLS 1.3 handshake signs once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSource;

/// Why a certificate or key could not be used. Each names the one file at
/// fault, so an operator who swapped the two is told which.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not PEM: expected -----BEGIN CERTIFICATE----- blocks")]
    NotPem(PathBuf),
    #[error(
        "{0} holds a private key, not a certificate: give the certificate chain (fullchain.pem) as the certificate"
    )]
    CertIsKey(PathBuf),
    #[error("{0} holds no certificate (no -----BEGIN CERTIFICATE----- block)")]
    NoCertificate(PathBuf),
    #[error(
        "{0} holds a certificate, not a private key: give the key file (privkey.pem, key.pem) as the key"
    )]
    KeyIsCert(PathBuf),
    #[error("{0} holds no private key (no -----BEGIN PRIVATE KEY----- block)")]
    NoKey(PathBuf),
    #[error("{path}: the private key cannot be used: {source}")]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{key} is not the private key of the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The files a certificate comes from.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where the configured certificate is, generating the self-signed one
/// first if it is missing.
pub fn files(source: &TlsSource, data_dir: &Path) -> Result<CertFiles, TlsError> {
    match source {
        TlsSource::Files { cert, key } => Ok(CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        TlsSource::SelfSigned { extra_names } => {
            let dir = data_dir.join("tls");
            let files = CertFiles {
                cert: dir.join("cert.pem"),
                key: dir.join("key.pem"),
            };
            if !files.cert.exists() || !files.key.exists() {
                generate(&dir, &files, extra_names)?;
            }
            Ok(files)
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The PEM sections of `path`, or the error naming it.
fn sections(path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::NotPem(path.to_owned()))
}

fn is_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// The certificate chain in `path`.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let sections = sections(path)?;
    let chain: Vec<CertificateDer<'static>> = sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if chain.is_empty() {
        if sections.iter().any(|(kind, _)| is_key(*kind)) {
            return Err(TlsError::CertIsKey(path.to_owned()));
        }
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(chain)
}

/// The private key in `path`.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let sections = sections(path)?;
    let holds_certificate = sections
        .iter()
        .any(|(kind, _)| *kind == SectionKind::Certificate);
    let key = sections.into_iter().find_map(|(kind, der)| match kind {
        SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
        SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.into())),
        SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
        _ => None,
    });
    match key {
        Some(key) => Ok(key),
        None if holds_certificate => Err(TlsError::KeyIsCert(path.to_owned())),
        None => Err(TlsError::NoKey(path.to_owned())),
    }
}

/// Loads and checks a certificate and its key: every problem of both files,
/// each naming its file (for the start-up report of every problem at once).
pub fn check(files: &CertFiles) -> Result<Arc<CertifiedKey>, Vec<TlsError>> {
    let chain = read_chain(&files.cert);
    let key = read_key(&files.key);
    let (chain, key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => {
            return Err([chain.err(), key.err()].into_iter().flatten().collect());
        }
    };
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| {
            vec![TlsError::BadKey {
                path: files.key.clone(),
                source,
            }]
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(vec![TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }]),
        Err(other) => Err(vec![TlsError::Rustls(other)]),
    }
}

/// The certificate both listeners present, replaceable while they run.
#[derive(Debug)]
pub struct Certificate {
    files: CertFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    /// Loads `files`; the first problem is the error (start-up has already
    /// reported them all, see [`check`]).
    pub fn load(files: CertFiles) -> Result<Arc<Self>, TlsError> {
        let current = check(&files).map_err(first)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(current),
        }))
    }

    pub fn files(&self) -> &CertFiles {
        &self.files
    }

    /// Reads the files again and, if they make a usable pair, serves them to
    /// new connections from now on. On error the current one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let next = check(&self.files).map_err(first)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// The end-entity certificate served now (for tests and logs).
    pub fn served(&self) -> CertificateDer<'static> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.cert[0].clone()
    }
}

fn first(mut problems: Vec<TlsError>) -> TlsError {
    // `check` fails with at least one problem.
    problems.remove(0)
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn generate(dir: &Path, files: &CertFiles, extra: &[String]) -> Result<(), TlsError> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    names.extend(extra.iter().cloned());
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Parley self-signed");
    let certificate = params.self_signed(&key_pair)?;
    let write = |path: &Path, contents: &str| {
        write_file(path, contents).map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
    };
    crate::datadir::create_private_dir(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write(&files.key, &key_pair.serialize_pem())?;
    write(&files.cert, &certificate.pem())?;
    tracing::info!(cert = %files.cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

/// Writes `contents` to a temporary file (mode 0600, like every file in the
/// data directory), syncs it and renames it over `path`: a crash during the
/// first start leaves either no file (generated again at the next start) or
/// a whole one, never a truncated certificate that every later start would
/// refuse.
fn write_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    let mut file = crate::datadir::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// A rustls server configuration (TLS 1.3 and 1.2, ring provider) that
/// offers HTTP/1.1 over ALPN, the only protocol both listeners speak, and
/// takes its certificate from `certificate` at every handshake.
pub fn server_config(certificate: Arc<Certificate>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(dir: &Path) -> CertFiles {
        let source = TlsSource::SelfSigned {
            extra_names: vec!["parley.test".into()],
        };
        files(&source, dir).expect("generated")
    }

    #[test]
    fn a_generated_certificate_is_kept_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Certificate::load(self_signed(dir.path())).expect("loads");
        let again = Certificate::load(self_signed(dir.path())).expect("loads again");
        assert_eq!(first.served(), again.served());
        server_config(again).expect("usable by rustls");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("tls/key.pem"))
                .expect("key written")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the private key is private");
        }
    }

    #[test]
    fn each_problem_blames_its_own_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = self_signed(dir.path());
        // Swapped: both files are blamed, each for what it holds.
        let swapped = CertFiles {
            cert: good.key.clone(),
            key: good.cert.clone(),
        };
        let problems: Vec<String> = check(&swapped)
            .expect_err("swapped")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("holds a private key, not a certificate"));
        assert!(problems[1].contains("holds a certificate, not a private key"));
        // The certificate given as the key too: only the key is blamed.
        let cert_as_key = CertFiles {
            cert: good.cert.clone(),
            key: good.cert.clone(),
        };
        let problems = check(&cert_as_key).expect_err("cert as key");
        assert_eq!(problems.len(), 1);
        assert!(matches!(&problems[0], TlsError::KeyIsCert(p) if *p == good.cert));
        // Another certificate's key.
        let other = tempfile::tempdir().expect("tempdir");
        let mismatched = CertFiles {
            cert: good.cert.clone(),
            key: self_signed(other.path()).key,
        };
        let problems = check(&mismatched).expect_err("mismatch");
        assert!(matches!(problems[0], TlsError::Mismatch { .. }));
        // Missing and non-PEM files.
        std::fs::write(dir.path().join("junk"), b"not pem at all").expect("write");
        let problems = check(&CertFiles {
            cert: dir.path().join("missing.pem"),
            key: dir.path().join("junk"),
        })
        .expect_err("bad");
        assert!(matches!(problems[0], TlsError::Read { .. }));
        assert!(matches!(problems[1], TlsError::NoKey(_)));
    }

    #[test]
    fn a_bad_reload_keeps_the_served_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = self_signed(dir.path());
        let certificate = Certificate::load(files.clone()).expect("loads");
        let before = certificate.served();
        std::fs::write(&files.cert, b"garbage").expect("overwrite");
        assert!(certificate.reload().is_err());
        assert_eq!(certificate.served(), before);
        // A new good pair is taken.
        std::fs::remove_file(&files.cert).expect("remove");
        std::fs::remove_file(&files.key).expect("remove");
        self_signed(dir.path());
        certificate.reload().expect("reloads");
        assert_ne!(certificate.served(), before);
    }
}
