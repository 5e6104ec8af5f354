//! TLS for both listeners: the operator's certificate, or a self-signed one
//! generated on first start so that `parley` serves TLS on a laptop with no
//! setup. Phones (and parley-cli) trust the generated certificate through
//! `<data-dir>/tls/cert.pem`.
//!
//! The generated key is ECDSA P-256: signing it is cheaper than Ed25519 with
//! the ring provider, and every TLS 1.3 handshake signs once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSource;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where the certificate is, for the start-up message.
    pub cert_path: PathBuf,
}

/// Loads the configured certificate, or the generated one (generating it
/// on first start).
pub fn identity(source: &TlsSource, data_dir: &Path) -> Result<Identity, TlsError> {
    match source {
        TlsSource::Files { cert, key } => load(cert, key),
        TlsSource::SelfSigned { extra_names } => {
            let dir = data_dir.join("tls");
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !cert.exists() || !key.exists() {
                generate(&dir, &cert, &key, extra_names)?;
            }
            load(&cert, &key)
        }
    }
}

fn read(path: &Path) -> impl Fn(rustls_pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Read {
        path: path.to_owned(),
        source,
    }
}

fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(read(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(read(key))?;
    Ok(Identity {
        chain,
        key,
        cert_path: cert.to_owned(),
    })
}

fn generate(dir: &Path, cert: &Path, key: &Path, extra: &[String]) -> Result<(), TlsError> {
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
    let write = |path: &Path, contents: &str, private: bool| {
        write_file(path, contents, private).map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write(key, &key_pair.serialize_pem(), true)?;
    write(cert, &certificate.pem(), false)?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

/// Writes `contents` to a temporary file, syncs it and renames it over
/// `path`: a crash during the first start leaves either no file (generated
/// again at the next start) or a whole one, never a truncated certificate
/// that every later start would refuse.
fn write_file(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = std::path::PathBuf::from(temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&temporary)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// A rustls server configuration (TLS 1.3 and 1.2, ring provider) that
/// offers HTTP/1.1 over ALPN: the only protocol both listeners speak.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_is_kept_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = TlsSource::SelfSigned {
            extra_names: vec!["parley.test".into()],
        };
        let first = identity(&source, dir.path()).expect("generated");
        let again = identity(&source, dir.path()).expect("loaded");
        assert_eq!(first.chain, again.chain);
        server_config(&again).expect("usable by rustls");
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
}
