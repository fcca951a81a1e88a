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

/// The TLS flags of the controller and the agent, for `ssl:` remotes: OVN's tools call them
/// `--private-key`, `--certificate` and `--ca-cert`; Kube-OVN mounts them from the `kube-ovn-tls`
/// Secret at `/var/run/tls/{key,cert,cacert}` when `ENABLE_SSL` is on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct TlsArgs {
    /// The client's private key (PEM), for `ssl:` OVSDB remotes.
    #[cfg_attr(
        feature = "clap",
        arg(long = "ovsdb-private-key", env = "OVSDB_PRIVATE_KEY")
    )]
    pub private_key: Option<PathBuf>,
    /// The client's certificate (PEM), for `ssl:` OVSDB remotes.
    #[cfg_attr(
        feature = "clap",
        arg(long = "ovsdb-certificate", env = "OVSDB_CERTIFICATE")
    )]
    pub certificate: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the OVSDB servers' certificates.
    #[cfg_attr(feature = "clap", arg(long = "ovsdb-ca-cert", env = "OVSDB_CA_CERT"))]
    pub ca_cert: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS set-up `remotes` need: loaded when one is `ssl:` (every flag is then required),
    /// `None` otherwise.
    pub fn for_remotes(&self, remotes: &[crate::Remote]) -> Result<Option<Tls>, TlsError> {
        let Some(remote) = remotes.iter().find(|r| r.is_tls()) else {
            return Ok(None);
        };
        let missing = |flag| TlsError::Missing {
            remote: remote.to_string(),
            flag,
        };
        let files = TlsFiles {
            private_key: self
                .private_key
                .clone()
                .ok_or_else(|| missing("--ovsdb-private-key"))?,
            certificate: self
                .certificate
                .clone()
                .ok_or_else(|| missing("--ovsdb-certificate"))?,
            ca_cert: self
                .ca_cert
                .clone()
                .ok_or_else(|| missing("--ovsdb-ca-cert"))?,
        };
        Tls::load(&files).map(Some)
    }
}

/// The TLS files could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// An `ssl:` remote was given without one of the TLS files.
    #[error("{remote} needs {flag}")]
    Missing {
        /// The remote.
        remote: String,
        /// The flag not given.
        flag: &'static str,
    },
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
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_remotes;

    #[test]
    fn tls_files_are_needed_only_for_ssl_remotes_and_a_missing_one_is_named() {
        let none = TlsArgs::default();
        let plain = parse_remotes("tcp:10.0.0.1:6641,unix:/run/ovn/nb.sock").expect("remotes");
        assert!(none.for_remotes(&plain).expect("no TLS needed").is_none());
        let ssl = parse_remotes("tcp:10.0.0.1:6641,ssl:10.0.0.2:6641").expect("remotes");
        let err = none.for_remotes(&ssl).expect_err("TLS files are needed");
        assert_eq!(
            err.to_string(),
            "ssl:10.0.0.2:6641 needs --ovsdb-private-key"
        );
        let partial = TlsArgs {
            private_key: Some("/k".into()),
            certificate: Some("/c".into()),
            ca_cert: None,
        };
        let err = partial.for_remotes(&ssl).expect_err("the CA is needed");
        assert!(err.to_string().ends_with("--ovsdb-ca-cert"), "{err}");
    }
}
