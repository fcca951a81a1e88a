//! Our OVSDB client over TLS against a real ovsdb-server listening on `pssl:` with OVN's own
//! flags (`--private-key`, `--certificate`, `--ca-cert`): a client with a certificate from the
//! server's CA transacts; a server whose certificate another CA signed is refused by the client;
//! a client speaking plain TCP to the TLS port is refused by the server; and the files Kube-OVN's
//! generate-ssl.sh makes with `ovs-pki` (the `kube-ovn-tls` Secret) serve both ends. Server
//! certificates name no host usable here, as `ovs-pki` makes them: like OVS, the client checks
//! the chain, not the name.

use std::time::Duration;

use sidelane_ovsdb::{Client, ClientError, Operation, Options, Tls, TlsFiles, parse_remotes};
use sidelane_tests::{
    control_plane::Pki,
    ovn::{self, DbServer},
};

/// A Northbound server also serving TLS with certificates from `pki`.
struct TlsServer {
    _dir: tempfile::TempDir,
    server: DbServer,
    remote: String,
}

fn tls_server(pki: &Pki) -> TlsServer {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut server = DbServer::create(dir.path(), "nb", "/usr/share/ovn/ovn-nb.ovsschema")
        .expect("ovsdb-server starts");
    let remote = server.serve_tls(pki).expect("ovsdb-server serves pssl:");
    TlsServer {
        _dir: dir,
        server,
        remote,
    }
}

fn pki() -> (tempfile::TempDir, Pki) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pki = Pki::create(dir.path()).expect("a CA");
    (dir, pki)
}

fn client_files(pki: &Pki) -> TlsFiles {
    let client = pki
        .client("sidelane-controller", "sidelane-controller", &[])
        .expect("a client certificate");
    TlsFiles {
        private_key: client.key,
        certificate: client.cert,
        ca_cert: pki.ca.clone(),
    }
}

fn options(remote: &str, tls: Option<&TlsFiles>) -> Options {
    let mut o = Options::new(parse_remotes(remote).expect("a valid remote"));
    o.request_timeout = Duration::from_secs(5);
    if let Some(files) = tls {
        o = o.with_tls(Tls::load(files).expect("the TLS files load"));
    }
    o
}

async fn list_switches(client: &Client) -> Result<usize, ClientError> {
    let results = client
        .transact(
            "OVN_Northbound",
            &[Operation::Select {
                table: "Logical_Switch".into(),
                conditions: vec![],
                columns: Some(vec!["name".into()]),
            }],
        )
        .await?;
    Ok(results.len())
}

#[tokio::test]
async fn a_client_with_a_certificate_from_the_servers_ca_transacts_over_ssl() {
    if !ovn::require_installed("a_client_with_a_certificate_from_the_servers_ca_transacts_over_ssl")
    {
        return;
    }
    let (_d, pki) = pki();
    let server = tls_server(&pki);
    let client = Client::connect(options(&server.remote, Some(&client_files(&pki))))
        .await
        .expect("connected over TLS");
    assert_eq!(list_switches(&client).await.expect("a select"), 1);
    assert_eq!(client.connected_to(), Some(server.remote.clone()));
}

#[tokio::test]
async fn the_client_refuses_a_server_whose_certificate_another_ca_signed() {
    if !ovn::require_installed("the_client_refuses_a_server_whose_certificate_another_ca_signed") {
        return;
    }
    let (_d, servers_pki) = pki();
    let (_e, clients_pki) = pki();
    let server = tls_server(&servers_pki);
    // A certificate the server accepts, but a CA that did not sign the server's.
    let mut files = client_files(&servers_pki);
    files.ca_cert = clients_pki.ca.clone();
    let refused = Client::connect(options(&server.remote, Some(&files))).await;
    assert!(
        matches!(refused, Err(ClientError::NotConnected { .. })),
        "connected to a server its CA did not sign: {refused:?}"
    );
    // The server still answers a client of its own CA.
    let client = Client::connect(options(&server.remote, Some(&client_files(&servers_pki))))
        .await
        .expect("connected over TLS");
    assert_eq!(list_switches(&client).await.expect("a select"), 1);
    drop(server.server);
}

#[tokio::test]
async fn the_server_refuses_plain_tcp_on_its_tls_port() {
    if !ovn::require_installed("the_server_refuses_plain_tcp_on_its_tls_port") {
        return;
    }
    let (_d, pki) = pki();
    let server = tls_server(&pki);
    let plain = server.remote.replace("ssl:", "tcp:");
    // The TCP connection opens; the server drops it at the first request, which is not TLS.
    let answered = match Client::connect(options(&plain, None)).await {
        Ok(client) => list_switches(&client).await,
        Err(e) => Err(e),
    };
    assert!(
        answered.is_err(),
        "plain TCP was served on the TLS port: {answered:?}"
    );
}

#[test]
fn unreadable_tls_files_are_refused_naming_the_file() {
    let (_d, pki) = pki();
    let mut files = client_files(&pki);
    files.certificate = "/nonexistent/client.crt".into();
    let err = Tls::load(&files).expect_err("a missing certificate is refused");
    assert!(
        format!("{err:#}").contains("/nonexistent/client.crt"),
        "{err:#}"
    );
    let mut files = client_files(&pki);
    files.ca_cert = files.private_key.clone();
    let err = Tls::load(&files).expect_err("a key is not a CA certificate");
    assert!(err.to_string().contains("holds no certificate"), "{err}");
}

/// What Kube-OVN's generate-ssl.sh puts in the `kube-ovn-tls` Secret, made the same way with
/// `ovs-pki`: one certificate (`ovn`) that servers and clients share, and the switch CA.
fn kube_ovn_tls(dir: &std::path::Path) -> TlsFiles {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ovs-pki")
            .arg(format!("--dir={}", dir.join("pki").display()))
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running ovs-pki");
        assert!(
            out.status.success(),
            "ovs-pki {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["init", "--force"]);
    run(&["req", "ovn"]);
    run(&["-b", "sign", "ovn"]);
    TlsFiles {
        private_key: dir.join("ovn-privkey.pem"),
        certificate: dir.join("ovn-cert.pem"),
        ca_cert: dir.join("pki/switchca/cacert.pem"),
    }
}

#[tokio::test]
async fn the_certificates_kube_ovns_generate_ssl_makes_with_ovs_pki_serve_both_ends() {
    if !ovn::require_installed(
        "the_certificates_kube_ovns_generate_ssl_makes_with_ovs_pki_serve_both_ends",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let files = kube_ovn_tls(dir.path());
    let mut server = DbServer::create(dir.path(), "nb", "/usr/share/ovn/ovn-nb.ovsschema")
        .expect("ovsdb-server starts");
    let remote = server
        .serve_tls_with(&files.private_key, &files.certificate, &files.ca_cert)
        .expect("ovsdb-server serves pssl: with ovs-pki's files");
    let client = Client::connect(options(&remote, Some(&files)))
        .await
        .expect("connected over TLS");
    assert_eq!(list_switches(&client).await.expect("a select"), 1);
}
