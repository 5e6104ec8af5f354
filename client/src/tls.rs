//! TLS client configuration that trusts exactly the server's own certificate.
//!
//! A development or test server presents a self-signed certificate, and a
//! deployment may use a private CA; either way the client is given a PEM file
//! and trusts what is in it and nothing else (no system roots), so a test can
//! never pass by accident against some other server.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ClientError;

/// A rustls `ClientConfig` (ring provider, TLS 1.3 and 1.2, no client
/// certificate, no ALPN) trusting exactly the certificates in `pem`.
///
/// Fails with [`ClientError::Tls`] when `pem` holds no certificate or a
/// certificate rustls cannot use as a trust anchor.
pub fn tls_config_from_pem(pem: &[u8]) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| ClientError::Tls(format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(format!("unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Tls("no certificate found in PEM".into()));
    }
    // An explicit provider, not the process default: the workspace builds
    // rustls with ring only, and a library must not depend on someone having
    // called `install_default`.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// [`tls_config_from_pem`] on the contents of a file (for example the
/// server's `<data-dir>/tls/cert.pem`).
///
/// Fails with [`ClientError::CaFile`] when the file cannot be read or holds
/// no usable certificate, so the caller can say which file to fix.
pub fn tls_config_from_file(path: &Path) -> Result<Arc<ClientConfig>, ClientError> {
    let ca_file = |reason: String| ClientError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| {
        ca_file(match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            _ => crate::error::io_reason(&e),
        })
    })?;
    tls_config_from_pem(&pem).map_err(|e| match e {
        ClientError::Tls(reason) => ca_file(reason),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_generated_certificate() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generates a certificate");
        let config = tls_config_from_pem(key.cert.pem().as_bytes()).expect("valid PEM");
        assert!(config.alpn_protocols.is_empty());
    }

    #[test]
    fn accepts_a_bundle_of_certificates() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).expect("cert a");
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).expect("cert b");
        let bundle = format!("{}{}", a.cert.pem(), b.cert.pem());
        tls_config_from_pem(bundle.as_bytes()).expect("two certificates");
    }

    #[test]
    fn rejects_garbage() {
        let err = tls_config_from_pem(b"not a certificate at all").expect_err("garbage");
        assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    }

    #[test]
    fn rejects_a_certificate_block_that_is_not_der() {
        let pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = tls_config_from_pem(pem).expect_err("junk DER");
        assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    }

    #[test]
    fn a_key_alone_is_not_a_trust_anchor() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("generates a certificate");
        let err = tls_config_from_pem(key.signing_key.serialize_pem().as_bytes())
            .expect_err("only a private key");
        assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let err = tls_config_from_file(Path::new("/nonexistent/parley/cert.pem"))
            .expect_err("missing file");
        assert!(
            matches!(&err, ClientError::CaFile { path, reason }
                if path == Path::new("/nonexistent/parley/cert.pem") && reason == "no such file"),
            "{err:?}"
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let junk = tmp.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let err = tls_config_from_file(&junk).expect_err("no certificate");
        assert!(
            matches!(&err, ClientError::CaFile { reason, .. } if reason.contains("no certificate")),
            "{err:?}"
        );
    }
}
