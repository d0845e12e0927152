//! Trust in a certificate file the way Datadog processes trust each other's
//! `ipc_cert.pem`, on both ends of a connection.
//!
//! Every Datadog Agent serves (and presents as its client certificate) one
//! self-signed certificate with the CA flag set. Go's crypto/x509 accepts a
//! root used as the leaf; webpki refuses it (`CaUsedAsEndEntity`), and so do
//! rustls's stock verifiers. Datadog's own Rust client pins the exact
//! certificate instead. The verifiers here do both, in this order:
//!
//! 1. **Pinned**: when the peer's end-entity certificate is byte for byte a
//!    self-signed certificate of the file, it is accepted once its validity
//!    period covers now, whatever its CA flag and names. The handshake
//!    signature (proof that the peer holds the key) is checked as always.
//! 2. **Chained**: anything else goes to webpki with the file's certificates
//!    as roots (and, for servers, the expected name), as usual.
//!
//! There is no third way: an unknown certificate is refused.
//!
//! Reading the pinned certificate's validity and checking that it signed
//! itself needs an X.509 parser: webpki parses both but exposes neither
//! outside its chain building (which refuses exactly this certificate).
//! `x509-parser` (rusticata, maintained, the parser rcgen uses) reads them,
//! and checks the self-signature with ring, the provider rustls uses here.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject as _, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    self, CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore,
    SignatureScheme,
};

/// The blocks of a PEM text that TLS uses: its certificates in file order
/// and its first private key (PKCS#8, SEC1 or PKCS#1).
pub(crate) struct PemBlocks {
    pub certificates: Vec<CertificateDer<'static>>,
    pub key: Option<PrivateKeyDer<'static>>,
}

/// Only the key's kind: a secret is never printed.
impl fmt::Debug for PemBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemBlocks")
            .field("certificates", &self.certificates.len())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl PemBlocks {
    /// Splits `text` into certificates and key; other blocks are ignored.
    pub fn parse(text: &[u8]) -> Result<Self, pem::Error> {
        let mut blocks = Self {
            certificates: Vec::new(),
            key: None,
        };
        for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(text) {
            let (kind, der) = item?;
            let key = match kind {
                SectionKind::Certificate => {
                    blocks.certificates.push(CertificateDer::from(der));
                    continue;
                }
                SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.into()),
                SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.into()),
                SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
                _ => continue,
            };
            blocks.key.get_or_insert(key);
        }
        Ok(blocks)
    }
}

/// A self-signed certificate of the trust file, accepted as the peer's own
/// when presented byte for byte.
#[derive(Debug, Clone)]
struct Pinned {
    der: CertificateDer<'static>,
    not_before: UnixTime,
    not_after: UnixTime,
}

impl Pinned {
    /// `Some` when `der` is self-signed: its issuer is its subject and its
    /// own key verifies its signature.
    fn if_self_signed(der: &CertificateDer<'static>) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let self_signed = cert.subject().as_raw() == cert.issuer().as_raw()
            && cert.verify_signature(None).is_ok();
        let unix = |seconds: i64| {
            UnixTime::since_unix_epoch(Duration::from_secs(seconds.try_into().unwrap_or(0)))
        };
        self_signed.then(|| Self {
            der: der.clone(),
            not_before: unix(cert.validity().not_before.timestamp()),
            not_after: unix(cert.validity().not_after.timestamp()),
        })
    }

    fn check_validity(&self, now: UnixTime) -> Result<(), rustls::Error> {
        let error = if now.as_secs() < self.not_before.as_secs() {
            CertificateError::NotValidYetContext {
                time: now,
                not_before: self.not_before,
            }
        } else if now.as_secs() > self.not_after.as_secs() {
            CertificateError::ExpiredContext {
                time: now,
                not_after: self.not_after,
            }
        } else {
            return Ok(());
        };
        Err(rustls::Error::InvalidCertificate(error))
    }
}

/// The certificates of one trust file: pinned when self-signed, roots for
/// webpki in any case.
#[derive(Debug, Clone)]
pub(crate) struct TrustFile {
    pinned: Vec<Pinned>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl TrustFile {
    /// Fails (with a reason, not naming the file: the caller does) when
    /// there is no certificate or one cannot serve as a webpki root.
    pub fn new(
        certificates: &[CertificateDer<'static>],
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        if certificates.is_empty() {
            return Err("it holds no PEM certificate".to_owned());
        }
        let mut roots = RootCertStore::empty();
        for certificate in certificates {
            roots
                .add(certificate.clone())
                .map_err(|e| format!("unusable certificate: {e}"))?;
        }
        Ok(Self {
            pinned: certificates
                .iter()
                .filter_map(Pinned::if_self_signed)
                .collect(),
            roots: Arc::new(roots),
            provider,
        })
    }

    /// The pinned certificate `end_entity` is, checked; `None` when it is
    /// none of them (chain verification decides).
    ///
    /// webpki refuses any CA certificate as an end entity, which is what a
    /// Datadog peer presents: when it is not the file's, the refusal says so
    /// in words rather than as webpki's `CaUsedAsEndEntity`.
    fn check_pinned(
        &self,
        end_entity: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Option<Result<(), rustls::Error>> {
        if let Some(pinned) = self
            .pinned
            .iter()
            .find(|pinned| pinned.der.as_ref() == end_entity.as_ref())
        {
            return Some(pinned.check_validity(now));
        }
        let is_ca =
            x509_parser::parse_x509_certificate(end_entity).is_ok_and(|(_, cert)| cert.is_ca());
        is_ca.then(|| {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(CaCertificateNotInTrustFile)),
            )))
        })
    }

    /// The verifier a client uses for servers.
    pub fn server_verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, String> {
        let webpki =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        Ok(Arc::new(PinnedOrChainedServer {
            trust: self.clone(),
            webpki,
        }))
    }

    /// The verifier a server uses for clients. A client that presents no
    /// certificate is refused when `mandatory`, let through otherwise (the
    /// bearer token still guards every request).
    pub fn client_verifier(&self, mandatory: bool) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let webpki =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        Ok(Arc::new(PinnedOrChainedClient {
            trust: self.clone(),
            webpki,
            mandatory,
        }))
    }
}

/// The peer presented a CA certificate as its own, and it is not one of
/// the trust file's (an old copy of a regenerated `ipc_cert.pem`, say).
#[derive(thiserror::Error)]
#[error("{self:?}")]
struct CaCertificateNotInTrustFile;

/// rustls shows the Debug form of such errors: make it the sentence.
impl fmt::Debug for CaCertificateNotInTrustFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the peer presented a CA certificate as its own that is not the trust file's \
             (is the file the peer's current ipc_cert.pem?)",
        )
    }
}

/// Verifies servers: pinned, else webpki with the server name.
#[derive(Debug)]
struct PinnedOrChainedServer {
    trust: TrustFile,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrChainedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.trust.check_pinned(end_entity, now) {
            Some(checked) => checked.map(|()| ServerCertVerified::assertion()),
            None => self.webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Verifies clients: pinned, else webpki (no names: clients have none).
#[derive(Debug)]
struct PinnedOrChainedClient {
    trust: TrustFile,
    webpki: Arc<dyn ClientCertVerifier>,
    mandatory: bool,
}

impl ClientCertVerifier for PinnedOrChainedClient {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// The file's subjects: Go clients send their certificate only when its
    /// issuer is among the hinted names (or none are hinted).
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.trust.check_pinned(end_entity, now) {
            Some(checked) => checked.map(|()| ClientCertVerified::assertion()),
            None => self
                .webpki
                .verify_client_cert(end_entity, intermediates, now),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn self_signed(is_ca: bool) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn at(year_seconds: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(year_seconds))
    }

    /// 2025-01-01, 2019-01-01 and 2031-01-01 in seconds since the epoch.
    const INSIDE: u64 = 1_735_689_600;
    const BEFORE: u64 = 1_546_300_800;
    const AFTER: u64 = 1_924_992_000;

    #[test]
    fn a_self_signed_certificate_is_pinned_within_its_validity_only() {
        let der = self_signed(true);
        let trust = TrustFile::new(std::slice::from_ref(&der), provider()).unwrap();
        assert!(matches!(trust.check_pinned(&der, at(INSIDE)), Some(Ok(()))));
        assert!(matches!(
            trust.check_pinned(&der, at(BEFORE)),
            Some(Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYetContext { .. }
            )))
        ));
        assert!(matches!(
            trust.check_pinned(&der, at(AFTER)),
            Some(Err(rustls::Error::InvalidCertificate(
                CertificateError::ExpiredContext { .. }
            )))
        ));
        let other_ca = self_signed(true);
        let refusal = trust
            .check_pinned(&other_ca, at(INSIDE))
            .unwrap()
            .unwrap_err();
        assert!(
            refusal.to_string().contains("not the trust file's"),
            "{refusal}"
        );
        let other_leaf = self_signed(false);
        assert!(trust.check_pinned(&other_leaf, at(INSIDE)).is_none());
    }

    /// Both carry rcgen's default subject, so the leaf's issuer is its own
    /// subject: only the signature check tells it is not self-signed.
    #[test]
    fn a_certificate_signed_by_another_is_not_pinned() {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let leaf = leaf.der().clone();
        let trust = TrustFile::new(&[leaf.clone(), ca.der().clone()], provider()).unwrap();
        assert!(trust.check_pinned(&leaf, at(INSIDE)).is_none());
        assert!(trust.check_pinned(ca.der(), at(INSIDE)).is_some());
    }

    #[test]
    fn pem_blocks_keep_certificate_order_and_the_key_of_any_format() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let text = format!(
            "{}{}",
            certified.cert.pem(),
            certified.signing_key.serialize_pem()
        );
        let blocks = PemBlocks::parse(text.as_bytes()).unwrap();
        assert_eq!(blocks.certificates, [certified.cert.der().clone()]);
        assert!(matches!(blocks.key, Some(PrivateKeyDer::Pkcs8(_))));
        assert_eq!(format!("{blocks:?}").matches("redacted").count(), 1);

        let sec1 = text.replace("PRIVATE KEY", "EC PRIVATE KEY");
        let blocks = PemBlocks::parse(sec1.as_bytes()).unwrap();
        assert!(matches!(blocks.key, Some(PrivateKeyDer::Sec1(_))));
        let certificate_only = certified.cert.pem();
        assert!(
            PemBlocks::parse(certificate_only.as_bytes())
                .unwrap()
                .key
                .is_none()
        );
    }
}
