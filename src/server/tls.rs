//! The server's TLS identity, kept in one PEM file holding the certificate
//! followed by its private key (the layout of the Datadog Agent's
//! `ipc_cert.pem`). Clients use the same file as their CA: the certificate is
//! self-signed.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Identity, ServerTlsConfig};

use super::secret_file::read_or_create;

/// Names a generated certificate is valid for: local clients only.
pub const GENERATED_CERT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate and its private key, checked to parse as PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    pem: Vec<u8>,
}

/// The key is secret: Debug shows nothing of the file.
impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsIdentity(<redacted>)")
    }
}

/// Why a certificate file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use TLS certificate file {}: {reason}", path.display())]
pub struct CertFileError {
    pub path: PathBuf,
    pub reason: String,
}

impl TlsIdentity {
    /// Reads the certificate and key from `path`, or, when the file does not
    /// exist, generates a self-signed ECDSA P-256 certificate for
    /// [`GENERATED_CERT_NAMES`] and writes it there (mode 0600).
    pub fn load_or_generate(path: impl Into<PathBuf>) -> Result<Self, CertFileError> {
        let path = path.into();
        let error = |reason: String| CertFileError {
            path: path.clone(),
            reason,
        };
        let (pem, created) =
            read_or_create(&path, generate_self_signed_pem).map_err(|e| error(e.to_string()))?;
        let identity = Self::from_pem(pem).map_err(|e| {
            error(format!(
                "{e} (it must hold a PEM certificate followed by its private key; delete it to have one generated)"
            ))
        })?;
        if created {
            tracing::info!(path = %path.display(), "generated a self-signed TLS certificate for localhost");
        }
        Ok(identity)
    }

    /// Reads `path` without ever creating it.
    pub fn load(path: &Path) -> Result<Self, CertFileError> {
        let error = |reason: String| CertFileError {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| error(format!("cannot read it: {e}")))?;
        Self::from_pem(pem).map_err(|e| error(e.to_string()))
    }

    /// Checks that `pem` holds at least one certificate and a private key.
    pub fn from_pem(pem: Vec<u8>) -> Result<Self, PemProblem> {
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(PemProblem::Malformed)?;
        if certificates.is_empty() {
            return Err(PemProblem::NoCertificate);
        }
        match PrivateKeyDer::from_pem_slice(&pem) {
            Ok(_) => {}
            Err(pem::Error::NoItemsFound) => return Err(PemProblem::NoPrivateKey),
            Err(e) => return Err(PemProblem::Malformed(e)),
        }
        let identity = Self { pem };
        // Building a server configuration is what checks that the key is
        // usable and belongs to the certificate: fail now, naming the file,
        // rather than at the first connection.
        tonic::transport::Server::builder()
            .tls_config(identity.server_config())
            .map_err(|e| PemProblem::Rejected(crate::error_text::error_chain(&e)))?;
        Ok(identity)
    }

    /// The PEM text: certificate then key.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// Server TLS configuration: this identity, ALPN `h2` (tonic sets it),
    /// and a bound on the handshake so a silent peer cannot hold a slot.
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        // Both halves come from the same text: the PEM readers pick the
        // certificate and the key sections out of it.
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.pem, &self.pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }
}

const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What is wrong with a PEM certificate file.
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    #[error("it holds no PEM certificate")]
    NoCertificate,
    #[error("it holds no PEM private key")]
    NoPrivateKey,
    #[error("it is not valid PEM: {0}")]
    Malformed(pem::Error),
    #[error("its certificate and key are not usable together: {0}")]
    Rejected(String),
}

/// A fresh self-signed certificate and its key, as one PEM text.
fn generate_self_signed_pem() -> Result<Vec<u8>, rcgen::Error> {
    // rcgen's default key is ECDSA P-256; names that parse as IP addresses
    // become IP SANs, the others DNS SANs.
    let names = GENERATED_CERT_NAMES.map(str::to_owned).to_vec();
    let certified = rcgen::generate_simple_self_signed(names)?;
    let mut pem = certified.cert.pem();
    pem.push_str(&certified.signing_key.serialize_pem());
    Ok(pem.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc_cert.pem");
        let first = TlsIdentity::load_or_generate(&path).unwrap();
        let text = String::from_utf8(first.pem().to_vec()).unwrap();
        let cert_at = text.find("BEGIN CERTIFICATE").unwrap();
        let key_at = text.find("BEGIN PRIVATE KEY").unwrap();
        assert!(cert_at < key_at, "certificate first, then key");
        let second = TlsIdentity::load_or_generate(&path).unwrap();
        assert_eq!(first.pem(), second.pem());
        assert_eq!(TlsIdentity::load(&path).unwrap().pem(), first.pem());
    }

    #[test]
    fn unusable_files_are_reported_by_path_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, "not pem at all").unwrap();
        let message = TlsIdentity::load_or_generate(&path)
            .unwrap_err()
            .to_string();
        assert!(message.contains("cert.pem"), "{message}");
        assert!(message.contains("no PEM certificate"), "{message}");

        let generated = generate_self_signed_pem().unwrap();
        let text = String::from_utf8(generated).unwrap();
        let cert_only = &text[..text.find("-----BEGIN PRIVATE KEY").unwrap()];
        std::fs::write(&path, cert_only).unwrap();
        let message = TlsIdentity::load(&path).unwrap_err().to_string();
        assert!(message.contains("no PEM private key"), "{message}");
    }
}
