//! TLS to an OVSDB server (`ssl:` remotes), as OVN's own tools speak it with `--private-key`,
//! `--certificate` and `--ca-cert`: the client presents its certificate (an ovsdb-server
//! listening on `pssl:` asks for one and refuses a client without it) and accepts a server
//! whose certificate chains to the CA. Like OVS, it does not match the server's name against
//! its certificate: certificates made by `ovs-pki` (Kube-OVN's `ENABLE_SSL`) name no host.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, ring},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// The client's key, certificate and CA certificate, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The client's private key (`--private-key`).
    pub private_key: PathBuf,
    /// The client's certificate (`--certificate`).
    pub certificate: PathBuf,
    /// The CA that signed the servers' certificates (`--ca-cert`).
    pub ca_cert: PathBuf,
}

/// The TLS files could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read as PEM.
    #[error("reading the {what} {path}")]
    Read {
        /// Which file (`private key`, `certificate`, `CA certificate`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file held no certificate.
    #[error("the {what} {path} holds no certificate")]
    NoCertificate {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// rustls refused the CA, the key or the certificate.
    #[error("setting up TLS with {path}")]
    Config {
        /// The file concerned.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
}

/// A client's TLS set-up, loaded once and shared by every connection.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    files: TlsFiles,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

impl Tls {
    /// Loads the files (PEM) and checks that rustls accepts them.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in certificates("CA certificate", &files.ca_cert)? {
            roots.add(ca).map_err(|source| TlsError::Config {
                path: files.ca_cert.clone(),
                source,
            })?;
        }
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError::Config {
                    path: files.ca_cert.clone(),
                    source: rustls::Error::General(e.to_string()),
                })?;
        let key =
            PrivateKeyDer::from_pem_file(&files.private_key).map_err(|source| TlsError::Read {
                what: "private key",
                path: files.private_key.clone(),
                source,
            })?;
        let chain = certificates("certificate", &files.certificate)?;
        let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config {
                path: files.certificate.clone(),
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly { webpki, provider }))
            .with_client_auth_cert(chain, key)
            .map_err(|source| TlsError::Config {
                path: files.certificate.clone(),
                source,
            })?;
        Ok(Tls {
            config: Arc::new(config),
            files: files.clone(),
        })
    }

    /// The files it was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The TLS handshake over `tcp` to `host`.
    pub(crate) async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        // The name is only sent (SNI); the certificate is not matched against it.
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        TlsConnector::from(Arc::clone(&self.config))
            .connect(name, tcp)
            .await
    }
}

/// Accepts a server certificate that chains to the CA, whatever names it holds (OVS's own
/// check); everything else is webpki's.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name only after it holds.
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            verdict => verdict,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
