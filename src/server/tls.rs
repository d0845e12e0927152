//! The server's TLS identity, kept in one PEM file holding the certificate
//! followed by its private key: the layout of the Datadog Agent's
//! `ipc_cert.pem`, which this server reads (SEC1, PKCS#8 or PKCS#1 key) and
//! writes (exactly as an Agent does, so Agent processes given the file
//! accept it). Clients trust the same file, and present its pair as their
//! client certificate; see `crate::trust` for how both ends verify.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::{self, ServerConfig};

use super::secret_file::read_or_create;
use crate::trust::{PemBlocks, TrustFile};

/// Names a generated certificate is valid for: local clients only (the
/// Agent's own).
pub const GENERATED_CERT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A generated certificate's lifetime: the Agent's 50 years of 365 days.
const GENERATED_CERT_VALIDITY: Duration = Duration::from_secs(50 * 365 * 24 * 60 * 60);

/// A certificate and its private key, checked to be usable together.
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
    /// The certificate file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl TlsIdentity {
    /// Reads the certificate and key from `path`, or, when the file does not
    /// exist, generates one laid out as a Datadog Agent's (see
    /// `generate_agent_layout_pem`) and writes it there (mode 0600).
    pub fn load_or_generate(path: impl Into<PathBuf>) -> Result<Self, CertFileError> {
        let path = path.into();
        let error = |reason: String| CertFileError {
            path: path.clone(),
            reason,
        };
        let (pem, created) =
            read_or_create(&path, generate_agent_layout_pem).map_err(|e| error(e.to_string()))?;
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

    /// Checks that `pem` holds at least one certificate and a private key
    /// that belongs to it.
    pub fn from_pem(pem: Vec<u8>) -> Result<Self, PemProblem> {
        let identity = Self { pem };
        // Building a server configuration is what checks that the key is
        // usable and belongs to the certificate: fail now, naming the file,
        // rather than at the first connection.
        identity.rustls_config(false)?;
        Ok(identity)
    }

    /// The PEM text: certificate then key.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// The rustls server configuration: this identity, ALPN `h2`, TLS 1.2
    /// and 1.3, and client certificates verified against this same file
    /// (pinned, or chained to it), required when `require_client_cert`.
    pub(crate) fn rustls_config(
        &self,
        require_client_cert: bool,
    ) -> Result<Arc<ServerConfig>, PemProblem> {
        let blocks = PemBlocks::parse(&self.pem).map_err(PemProblem::Malformed)?;
        if blocks.certificates.is_empty() {
            return Err(PemProblem::NoCertificate);
        }
        let key = blocks.key.ok_or(PemProblem::NoPrivateKey)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_verifier = TrustFile::new(&blocks.certificates, provider.clone())
            .and_then(|trust| trust.client_verifier(require_client_cert))
            .map_err(PemProblem::Rejected)?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PemProblem::Rejected(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(blocks.certificates, key)
            .map_err(|e| PemProblem::Rejected(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A new certificate and key laid out exactly as the Datadog Agent's
/// `ipc_cert.pem` (its generator: pkg/api/security/cert): ECDSA P-256,
/// self-signed, a CA (basic constraints; key usage CertSign,
/// DigitalSignature and CRLSign), extended key usage serverAuth and
/// clientAuth, the SANs of [`GENERATED_CERT_NAMES`], a random serial below
/// 2^128, valid from now for 50 years of 365 days. PEM `CERTIFICATE` then
/// `EC PRIVATE KEY` (SEC1 naming its curve): the Agent's Go reader
/// accepts no other key block, and `x509.ParseECPrivateKey` needs the
/// curve.
fn generate_agent_layout_pem() -> Result<Vec<u8>, GenerateError> {
    let mut serial = [0u8; 16];
    getrandom::getrandom(&mut serial).map_err(|e| GenerateError(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(GENERATED_CERT_NAMES.map(str::to_owned).to_vec())?;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "remote-tagger");
    params.not_before = time::OffsetDateTime::now_utc();
    params.not_after = params.not_before + GENERATED_CERT_VALIDITY;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    let sec1 =
        sec1_from_p256_pkcs8(key.serialized_der(), key.public_key_raw()).ok_or_else(|| {
            GenerateError("the generated key is not the expected PKCS#8 P-256 key".to_owned())
        })?;
    let key_pem = pem::encode_config(
        &pem::Pem::new("EC PRIVATE KEY", sec1),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    Ok(format!("{}{key_pem}", cert.pem()).into_bytes())
}

/// Why a certificate could not be generated.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a certificate: {0}")]
struct GenerateError(String);

impl From<rcgen::Error> for GenerateError {
    fn from(error: rcgen::Error) -> Self {
        Self(error.to_string())
    }
}

/// What is wrong with a PEM certificate file.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PemProblem {
    /// No `CERTIFICATE` block.
    #[error("it holds no PEM certificate")]
    NoCertificate,
    /// No private key block after the certificate.
    #[error("it holds no PEM private key")]
    NoPrivateKey,
    /// Not PEM at all.
    #[error("it is not valid PEM: {0}")]
    Malformed(rustls_pki_types::pem::Error),
    /// The TLS library refused the pair (its reason).
    #[error("its certificate and key are not usable together: {0}")]
    Rejected(String),
}

/// The object identifier of the P-256 curve (prime256v1), DER-encoded.
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// RFC 5915's `ECPrivateKey` (SEC1) for a P-256 key given as PKCS#8 (as
/// rcgen and ring write it) and its uncompressed public point: version 1,
/// the private scalar, the curve named in `[0]` and the point in `[1]`, as
/// Go's `x509.MarshalECPrivateKey` writes it. `None` when `pkcs8` is not
/// shaped as expected.
fn sec1_from_p256_pkcs8(pkcs8: &[u8], public_point: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::asn1_rs::{Any, FromDer as _, Tag};
    let element = |bytes| Any::from_der(bytes).ok();
    let (_, info) = element(pkcs8).filter(|(_, any)| any.tag() == Tag::Sequence)?;
    let (rest, _version) = element(info.data)?;
    let (rest, _algorithm) = element(rest)?;
    let (_, wrapped) = element(rest).filter(|(_, any)| any.tag() == Tag::OctetString)?;
    let (_, inner) = element(wrapped.data).filter(|(_, any)| any.tag() == Tag::Sequence)?;
    let (rest, _version) = element(inner.data)?;
    let (_, scalar) = element(rest).filter(|(_, any)| any.tag() == Tag::OctetString)?;
    if scalar.data.len() != 32 || public_point.len() != 65 {
        return None;
    }
    let bit_string = [&[0u8][..], public_point].concat();
    let fields = [
        der(0x02, &[1]),
        der(0x04, scalar.data),
        der(0xa0, P256_OID),
        der(0xa1, &der(0x03, &bit_string)),
    ]
    .concat();
    Some(der(0x30, &fields))
}

/// One DER element: `tag`, the definite length, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match u8::try_from(content.len()) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let length = content.len().to_be_bytes();
            let significant = &length[length.iter().take_while(|&&b| b == 0).count()..];
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc_cert.pem");
        let first = TlsIdentity::load_or_generate(&path).unwrap();
        let second = TlsIdentity::load_or_generate(&path).unwrap();
        assert_eq!(first.pem(), second.pem());
        assert_eq!(TlsIdentity::load(&path).unwrap().pem(), first.pem());
    }

    /// Go's `x509.ParseECPrivateKey` reads the curve from `[0]`: without it
    /// the key is refused. The layout must equal what Go writes.
    #[test]
    fn the_generated_key_is_sec1_naming_its_curve() {
        let text = String::from_utf8(generate_agent_layout_pem().unwrap()).unwrap();
        let blocks = rustls_pki_types::pem::PemObject::pem_slice_iter(text.as_bytes())
            .collect::<Result<Vec<(rustls_pki_types::pem::SectionKind, Vec<u8>)>, _>>()
            .unwrap();
        let kinds: Vec<_> = blocks.iter().map(|(kind, _)| *kind).collect();
        use rustls_pki_types::pem::SectionKind;
        assert_eq!(kinds, [SectionKind::Certificate, SectionKind::EcPrivateKey]);
        let sec1 = &blocks[1].1;
        // SEQUENCE(119) { INTEGER 1, OCTET STRING(32), [0] { OID P-256 }, [1] { BIT STRING(66) } }
        assert_eq!(sec1.len(), 121);
        assert_eq!(&sec1[..7], &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
        assert_eq!(&sec1[39..41], &[0xa0, 0x0a]);
        assert_eq!(&sec1[41..51], P256_OID);
        assert_eq!(&sec1[51..56], &[0xa1, 0x44, 0x03, 0x42, 0x00]);
        assert_eq!(sec1[56], 0x04, "an uncompressed point");
    }

    #[test]
    fn der_lengths_use_the_long_form_from_128_bytes() {
        assert_eq!(der(0x04, &[7; 2]), [0x04, 0x02, 7, 7]);
        assert_eq!(der(0x04, &[0; 127])[..2], [0x04, 0x7f]);
        assert_eq!(der(0x04, &[0; 128])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(der(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
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

        let generated = String::from_utf8(generate_agent_layout_pem().unwrap()).unwrap();
        let key_at = generated.find("-----BEGIN EC PRIVATE KEY").unwrap();
        std::fs::write(&path, &generated[..key_at]).unwrap();
        let message = TlsIdentity::load(&path).unwrap_err().to_string();
        assert!(message.contains("no PEM private key"), "{message}");

        let other = String::from_utf8(generate_agent_layout_pem().unwrap()).unwrap();
        let other_key = &other[other.find("-----BEGIN EC PRIVATE KEY").unwrap()..];
        std::fs::write(&path, format!("{}{other_key}", &generated[..key_at])).unwrap();
        let message = TlsIdentity::load(&path).unwrap_err().to_string();
        assert!(message.contains("not usable together"), "{message}");
    }
}
