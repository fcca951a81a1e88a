//! The control plane's certificates, as kubeadm lays them out: one CA, a serving certificate
//! for kube-apiserver (a leaf: rustls refuses a CA certificate used as the server's own), client
//! certificates whose subject is the identity (CN the user, O the groups), and the key pair
//! that signs ServiceAccount tokens.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

/// The CA and the files signed by it, in one folder.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate every component trusts.
    pub ca: PathBuf,
    /// kube-apiserver's serving certificate (SAN 127.0.0.1, localhost, kubernetes…).
    pub apiserver: CertFiles,
    /// kube-apiserver's client certificate towards kubelets (`kubectl exec`, logs).
    pub kubelet_client: CertFiles,
    /// The private key that signs ServiceAccount tokens.
    pub service_account_key: PathBuf,
    /// Its public key, which verifies them.
    pub service_account_public: PathBuf,
}

impl Pki {
    /// Creates the CA, the serving certificate and the ServiceAccount key pair in `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .context("the CA certificate's parameters")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "sidelane-test-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key).context("self-signing the CA")?;
        let ca = dir.join("ca.crt");
        write(&ca, &ca_cert.pem())?;
        write(&dir.join("ca.key"), &ca_key.serialize_pem())?;
        let issuer = Issuer::new(params, ca_key);

        let sa_key = KeyPair::generate().context("generating the ServiceAccount key")?;
        let service_account_key = dir.join("sa.key");
        let service_account_public = dir.join("sa.pub");
        write(&service_account_key, &sa_key.serialize_pem())?;
        write(&service_account_public, &sa_key.public_key_pem())?;

        let mut pki = Self {
            dir: dir.to_owned(),
            issuer,
            ca,
            apiserver: CertFiles {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            kubelet_client: CertFiles {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            service_account_key,
            service_account_public,
        };
        pki.apiserver = pki.sign(
            "kube-apiserver",
            "kube-apiserver",
            &[],
            &[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        pki.kubelet_client = pki.client(
            "kube-apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        )?;
        Ok(pki)
    }

    /// A serving certificate named `common_name`, valid for `names` (none: as `ovs-pki` makes
    /// them for OVN's databases), in `<file>.crt` and `<file>.key`.
    pub fn server(
        &self,
        file: &str,
        common_name: &str,
        names: &[&str],
    ) -> anyhow::Result<CertFiles> {
        self.sign(
            file,
            common_name,
            &[],
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate for `user` in `groups` (files `<file>.crt` and `<file>.key`).
    pub fn client(&self, file: &str, user: &str, groups: &[&str]) -> anyhow::Result<CertFiles> {
        self.sign(file, user, groups, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(
        &self,
        file: &str,
        common_name: &str,
        organizations: &[&str],
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<CertFiles> {
        let key = KeyPair::generate().with_context(|| format!("generating the key of {file}"))?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names)
            .with_context(|| format!("the parameters of {file}'s certificate"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for organization in organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *organization);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing {file}'s certificate"))?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
