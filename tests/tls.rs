//! TLS on the client API: round trips through the client crate and the CLI,
//! the refusals a wrong CA or a missing client certificate get, and a
//! certificate rotated on disk served without a restart. Certificates are made
//! at run time (rcgen), one CA per test.

#[allow(dead_code)] // not every helper is used here
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tessera::config::NodeConfig;
use tessera::server::{self, NodeHandle};
use tessera_client::{Client, ClientConfig, ClientTls, NewTicket};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A CA, and the files of a server and a client certificate it signed.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, issuer) = ca();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let pki = Pki { dir, ca_pem };
        pki.sign("server", &["localhost", "127.0.0.1"], &issuer);
        pki.sign("client", &["cas-client"], &issuer);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<name>.pem` and `<name>.key` for `names`, signed by `issuer`.
    fn sign(&self, name: &str, names: &[&str], issuer: &Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        write_private(&self.path(&format!("{name}.key")), &key.serialize_pem());
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
    }

    fn trust(&self) -> ClientTls {
        ClientTls {
            ca_pem: Some(self.ca_pem.clone().into_bytes()),
            identity_pem: None,
        }
    }

    fn identity(&self) -> ClientTls {
        ClientTls {
            identity_pem: Some((
                std::fs::read(self.path("client.pem")).unwrap(),
                std::fs::read(self.path("client.key")).unwrap(),
            )),
            ..self.trust()
        }
    }
}

fn ca() -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn tls_config(pki: &Pki, mtls: bool) -> NodeConfig {
    NodeConfig {
        tls_cert_file: Some(pki.path("server.pem")),
        tls_key_file: Some(pki.path("server.key")),
        tls_client_ca_file: mtls.then(|| pki.path("ca.pem")),
        ..common::config()
    }
}

async fn client(node: &NodeHandle, tls: ClientTls) -> Client {
    let config = ClientConfig {
        call_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(2),
        tls,
        ..ClientConfig::default()
    };
    Client::connect_with(
        [format!("https://127.0.0.1:{}", node.api_addr().port())],
        config,
    )
    .await
    .unwrap()
}

fn cli(node: &NodeHandle, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .env_remove("TESSERA_ADDR")
        .env_remove("TESSERA_API_TOKEN")
        .env_remove("TESSERA_CA_FILE")
        .args([
            "--addr",
            &format!("https://127.0.0.1:{}", node.api_addr().port()),
        ])
        .args(["--timeout", "3s"])
        .args(args)
        .output()
        .unwrap()
}

// The CLI runs as a blocking child process: the node needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_round_trip_over_tls_through_the_client_and_the_cli() {
    let pki = Pki::new();
    let node = server::start(tls_config(&pki, false)).await.unwrap();
    let client = client(&node, pki.trust()).await;
    client
        .put(NewTicket::new("TGT-tls", Duration::from_secs(60)).payload(b"over tls".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        &client.get("TGT-tls").await.unwrap().payload[..],
        b"over tls"
    );
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let out = cli(&node, &["--ca-file", ca, "get", "TGT-tls"]);
    assert!(out.status.success(), "{out:?}");
    let out = cli(&node, &["--ca-file", ca, "health"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("serving"));
    // Plaintext to a TLS port is no way in.
    let plain = Client::connect_with(
        [format!("http://127.0.0.1:{}", node.api_addr().port())],
        ClientConfig {
            call_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        },
    )
    .await
    .unwrap();
    assert!(plain.get("TGT-tls").await.is_err());
    common::stop(node).await;
}

// The CLI runs as a blocking child process: the node needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_is_refused_with_a_clear_message() {
    let pki = Pki::new();
    let node = server::start(tls_config(&pki, false)).await.unwrap();
    let stranger = Pki::new();
    let client = client(&node, stranger.trust()).await;
    let e = client.get("TGT-x").await.unwrap_err().to_string();
    assert!(e.contains("certificate"), "{e}");
    let ca = stranger.path("ca.pem");
    let out = cli(&node, &["--ca-file", ca.to_str().unwrap(), "get", "TGT-x"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr} (library: {e})");
    let out = cli(&node, &["--ca-file", ca.to_str().unwrap(), "health"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("certificate"),
        "{out:?}"
    );
    common::stop(node).await;
}

// The CLI runs as a blocking child process: the node needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_client_without_a_certificate_of_its_ca() {
    let pki = Pki::new();
    let node = server::start(tls_config(&pki, true)).await.unwrap();
    let without = client(&node, pki.trust()).await;
    // With TLS 1.3 the client has finished its side of the handshake when the
    // node refuses it, so it sees the connection closed, not the reason.
    assert!(without.get("TGT-m").await.is_err(), "no client certificate");
    let other = Pki::new();
    let wrong = client(
        &node,
        ClientTls {
            ca_pem: Some(pki.ca_pem.clone().into_bytes()),
            identity_pem: other.identity().identity_pem,
        },
    )
    .await;
    assert!(
        wrong.get("TGT-m").await.is_err(),
        "a certificate of another CA"
    );
    let with = client(&node, pki.identity()).await;
    with.put(NewTicket::new("TGT-m", Duration::from_secs(60)))
        .await
        .unwrap();
    let (cert, key, ca) = (
        pki.path("client.pem"),
        pki.path("client.key"),
        pki.path("ca.pem"),
    );
    let out = cli(
        &node,
        &[
            "--ca-file",
            ca.to_str().unwrap(),
            "--cert-file",
            cert.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
            "get",
            "TGT-m",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    common::stop(node).await;
}

/// The certificate files are replaced (another CA's pair): within the reload
/// check, new connections get the new certificate, without a restart.
#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    let node = server::start(tls_config(&pki, false)).await.unwrap();
    let old = client(&node, pki.trust()).await;
    old.put(NewTicket::new("TGT-r", Duration::from_secs(120)))
        .await
        .unwrap();
    let (new_ca, issuer) = ca();
    pki.sign("server", &["localhost", "127.0.0.1"], &issuer);
    let trusting_new = ClientTls {
        ca_pem: Some(new_ca.into_bytes()),
        identity_pem: None,
    };
    let start = Instant::now();
    loop {
        // A new client each time: a new connection, a new handshake.
        let fresh = client(&node, trusting_new.clone()).await;
        if fresh.get("TGT-r").await.is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the rotated certificate was not served within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    common::stop(node).await;
}

/// `tessera serve` with these TLS files, as far as it gets.
fn serve_with(cert: &Path, key: &Path) -> std::process::Output {
    Command::new(BIN)
        .env("TESSERA_DATA_DIR", "none")
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert-file")
        .arg(cert)
        .arg("--tls-key-file")
        .arg(key)
        .output()
        .unwrap()
}

#[test]
fn bad_tls_files_stop_the_node_at_start_with_exit_2() {
    // A key that does not go with the certificate, a missing certificate, a
    // key others can read.
    let pki = Pki::new();
    let other = Pki::new();
    let out = serve_with(&pki.path("server.pem"), &other.path("server.key"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not go with"), "{stderr}");
    let out = serve_with(&pki.path("missing.pem"), &pki.path("server.key"));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pem"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = pki.path("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = serve_with(&pki.path("server.pem"), &key);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("readable by other users"), "{stderr}");
    }
}
