//! TLS for the agent protocol: a self-signed server certificate, and clients that trust exactly
//! that certificate by its fingerprint (pinned at enrollment) instead of a CA.

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// One crypto backend everywhere (aws-lc-rs), passed explicitly so no process-wide default is needed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// `sha256:<hex>` of a certificate's DER bytes: what the server prints and agents pin.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", patchcast_pack::hash::sha256_bytes(der))
}

/// A server identity on disk: `cert.pem` and `key.pem` (0600) under `dir`.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: String,
}

impl Identity {
    /// Loads the identity in `dir`, creating a self-signed one for `names` on first start.
    pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Identity> {
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert_path.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let ck = rcgen::generate_simple_self_signed(names.to_vec())
                .context("generating the server certificate")?;
            patchcast_pack::keys::write_private(
                &key_path,
                ck.signing_key.serialize_pem().as_bytes(),
            )?;
            std::fs::write(&cert_path, ck.cert.pem())
                .with_context(|| format!("writing {}", cert_path.display()))?;
        }
        let cert = CertificateDer::from_pem_file(&cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("reading {}", key_path.display()))?;
        let fingerprint = fingerprint(&cert);
        Ok(Identity {
            cert,
            key,
            fingerprint,
        })
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .context("loading the server certificate")?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Stateless session tickets: an agent whose connection dropped (a restart, a load
        // balancer's idle timeout) resumes without a full handshake. The default stateful cache
        // holds 256 sessions, far fewer than a fleet; keys rotate every six hours.
        cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        Ok(cfg)
    }
}

/// A client configuration that accepts only the certificate with `fingerprint`.
pub fn pinned_client_config(fingerprint: &str) -> Result<rustls::ClientConfig> {
    pinned_any_client_config(&[fingerprint.to_string()])
}

/// A client configuration that accepts any of the certificates with `fingerprints` (an agent
/// that accepted a re-pin statement holds the old and the renewed certificate's, `repin`).
pub fn pinned_any_client_config(fingerprints: &[String]) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let verifier = Pinned {
        fingerprints: fingerprints
            .iter()
            .map(|f| f.to_ascii_lowercase())
            .collect(),
        algorithms: provider.signature_verification_algorithms,
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// An HTTP client for a server pinned by fingerprint, through this process's proxy if it has
/// one (`proxy`: the pin is checked inside the tunnel all the same).
pub fn pinned_http_client(fingerprint: &str) -> Result<reqwest::Client> {
    pinned_any_http_client(&[fingerprint.to_string()])
}

/// `pinned_http_client` accepting any of `fingerprints`.
pub fn pinned_any_http_client(fingerprints: &[String]) -> Result<reqwest::Client> {
    crate::proxy::apply(reqwest::Client::builder())?
        .use_preconfigured_tls(pinned_any_client_config(fingerprints)?)
        .connect_timeout(std::time::Duration::from_secs(10))
        .tcp_nodelay(true)
        .build()
        .context("building the HTTPS client")
}

/// The certificate a server presented is not the pinned one: a typed error inside the TLS
/// failure, so callers tell it apart without reading messages (`client::Client::unreachable`).
#[derive(Debug, thiserror::Error)]
#[error(
    "server certificate {seen} is not the pinned {pinned}; if the server was re-installed, enroll again"
)]
pub struct PinMismatch {
    pub seen: String,
    pub pinned: String,
}

impl PinMismatch {
    /// Whether a pin mismatch is anywhere in an error's source chain, including inside the
    /// `io::Error` that carries rustls's error (whose `source()` skips the error it wraps).
    pub fn in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(e);
        while let Some(e) = next {
            // The TLS stack nests `io::Error`s, each holding the next one inside.
            let mut inner = e;
            while let Some(i) = inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                inner = i;
            }
            if inner.is::<PinMismatch>()
                || matches!(inner.downcast_ref::<rustls::Error>(),
                    Some(rustls::Error::Other(o)) if o.0.is::<PinMismatch>())
            {
                return true;
            }
            next = e.source();
        }
        false
    }
}

#[derive(Debug)]
struct Pinned {
    fingerprints: Vec<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        if self.fingerprints.contains(&seen) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::Other(rustls::OtherError(Arc::new(
                PinMismatch {
                    seen,
                    pinned: self.fingerprints.join(" or "),
                },
            ))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
