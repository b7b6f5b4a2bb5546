//! TLS on the client API: round trips through the client crate and the CLI,
//! the refusals a wrong CA, a missing client certificate, and an expired or
//! not yet valid certificate (the node's or the client's) get, and a
//! certificate rotated on disk served without a restart. Certificates are made
//! at run time (rcgen), one CA per test.

#[allow(dead_code)] // not every helper is used here
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, date_time_ymd};
use tessera::config::NodeConfig;
use tessera::server::{self, NodeHandle};
use tessera_client::{Client, ClientConfig, ClientTls, NewTicket};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A CA, and the files of a server and a client certificate it signed.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
enum Validity {
    /// rcgen's default: 1975 to 4096.
    Now,
    /// 2020 to 2021: expired.
    Expired,
    /// From 3000 (to 4096): not valid yet.
    NotYet,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, issuer) = ca();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let pki = Pki {
            dir,
            ca_pem,
            issuer,
        };
        pki.sign("server", &["localhost", "127.0.0.1"], &pki.issuer);
        pki.sign("client", &["cas-client"], &pki.issuer);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<name>.pem` and `<name>.key` for `names`, signed by `issuer`.
    fn sign(&self, name: &str, names: &[&str], issuer: &Issuer<'static, KeyPair>) {
        self.sign_valid(name, names, issuer, Validity::Now)
    }

    /// `<name>.pem` and `<name>.key` for `names`, signed by `issuer`, valid
    /// over `validity`.
    fn sign_valid(
        &self,
        name: &str,
        names: &[&str],
        issuer: &Issuer<'static, KeyPair>,
        validity: Validity,
    ) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        match validity {
            Validity::Now => {}
            Validity::Expired => {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2021, 1, 1);
            }
            Validity::NotYet => params.not_before = date_time_ymd(3000, 1, 1),
        }
        let cert = params.signed_by(&key, issuer).unwrap();
        write_private(&self.path(&format!("{name}.key")), &key.serialize_pem());
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
    }

    /// Trusts this CA and presents `<name>.pem` (with `<name>.key`).
    fn identity_of(&self, name: &str) -> ClientTls {
        ClientTls {
            identity_pem: Some((
                std::fs::read(self.path(&format!("{name}.pem"))).unwrap(),
                std::fs::read(self.path(&format!("{name}.key"))).unwrap(),
            )),
            ..self.trust()
        }
    }

    fn trust(&self) -> ClientTls {
        ClientTls {
            ca_pem: Some(self.ca_pem.clone().into_bytes()),
            identity_pem: None,
        }
    }

    fn identity(&self) -> ClientTls {
        self.identity_of("client")
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

/// The CLI trusting the test CA and presenting `<name>.pem` / `<name>.key`.
fn cli_presenting(node: &NodeHandle, pki: &Pki, name: &str, args: &[&str]) -> std::process::Output {
    let (cert, key, ca) = (
        pki.path(&format!("{name}.pem")),
        pki.path(&format!("{name}.key")),
        pki.path("ca.pem"),
    );
    let mut all = vec![
        "--ca-file",
        ca.to_str().unwrap(),
        "--cert-file",
        cert.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    cli(node, &all)
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

/// What the nodes of this test process log at `tessera::api::tls` (debug
/// included), from [`capture_logs`] on.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collect the TLS module's log lines into [`LOGS`] (once per process).
fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "tessera::api::tls=debug",
            ))
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .init();
    });
}

/// The first captured log line with every one of `parts`, waited for up to 5 s
/// (the node logs a refused handshake from a task of its own).
async fn logged(parts: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let found = {
            let logs = LOGS.lock().unwrap();
            String::from_utf8_lossy(&logs)
                .lines()
                .find(|line| parts.iter().all(|part| line.contains(part)))
                .map(str::to_owned)
        };
        if let Some(line) = found {
            return line;
        }
        if start.elapsed() > Duration::from_secs(5) {
            let logs = LOGS.lock().unwrap();
            panic!(
                "no log line with {parts:?} in:\n{}",
                String::from_utf8_lossy(&logs)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A new client (a new connection, a new handshake) each time until one
/// reads `id` as not found: the node answers again.
async fn until_answered(node: &NodeHandle, tls: ClientTls, id: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let fresh = client(node, tls.clone()).await;
        match fresh.get(id).await {
            Err(e) if e.is_not_found() => return,
            other => assert!(
                start.elapsed() < within,
                "not answered within {within:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
    let out = cli_presenting(&node, &pki, "client", &["get", "TGT-m"]);
    assert!(out.status.success(), "{out:?}");
    common::stop(node).await;
}

/// The node serves a certificate of the CA the client trusts, but outside its
/// validity: the client, `tessera get` (exit 3) and `tessera health` (exit 3)
/// each name `reason`.
async fn refused_for_its_validity(pki: &Pki, node: &NodeHandle, reason: &str) {
    let e = client(node, pki.trust())
        .await
        .get("TGT-v")
        .await
        .unwrap_err();
    let message = e.to_string();
    eprintln!("client: {message}");
    assert!(message.contains(reason), "{message}");
    assert!(
        matches!(e, tessera_client::Error::Unavailable(_)),
        "no node could be used: {e:?}"
    );
    let ca = pki.path("ca.pem");
    let ca = ca.to_str().unwrap();
    let out = cli(node, &["--ca-file", ca, "get", "TGT-v"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(reason), "{stderr}");
    eprintln!("cli get: {stderr}");
    let out = cli(node, &["--ca-file", ca, "health"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unreachable"), "{stdout}");
    assert!(stdout.contains(reason), "{stdout}");
    eprintln!("cli health: {stdout}");
}

/// An expired certificate, signed by the CA the client trusts: refused, with
/// the reason. The node itself serves on: once its files are renewed, a new
/// connection gets in (within the reload check) and finds the refused calls
/// changed nothing.
// The CLI runs as a blocking child process: the node needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_node_certificate_is_refused_with_a_clear_message() {
    let pki = Pki::new();
    let names = ["localhost", "127.0.0.1"];
    pki.sign_valid("server", &names, &pki.issuer, Validity::Expired);
    let node = server::start(tls_config(&pki, false)).await.unwrap();
    refused_for_its_validity(&pki, &node, "certificate expired").await;
    pki.sign("server", &names, &pki.issuer);
    until_answered(&node, pki.trust(), "TGT-v", Duration::from_secs(30)).await;
    common::stop(node).await;
}

// The CLI runs as a blocking child process: the node needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_not_valid_yet_is_refused_with_a_clear_message() {
    let pki = Pki::new();
    pki.sign_valid(
        "server",
        &["localhost", "127.0.0.1"],
        &pki.issuer,
        Validity::NotYet,
    );
    let node = server::start(tls_config(&pki, false)).await.unwrap();
    refused_for_its_validity(&pki, &node, "certificate not valid yet").await;
    common::stop(node).await;
}

/// What a client whose certificate the node refuses sees. With TLS 1.3 it has
/// finished its side of the handshake and sent its request when the node
/// refuses: the node's alert (rustls sends `CertificateExpired` for a
/// certificate not valid yet too) or the closed connection, whichever reaches
/// it first (a closed connection shows as "connection closed" or, when the
/// request was still being written, "broken pipe").
fn refused_or_closed(message: &str) -> bool {
    message.contains(
        "received fatal alert: CertificateExpired (the node refused this client's certificate)",
    ) || message.contains("connection closed")
        || message.contains("broken pipe")
}

/// mTLS: client certificates of the node's CA, one expired, one not valid
/// yet, are refused during the handshake and the node logs why; a valid one
/// still gets in afterwards.
// The CLI runs as a blocking child process: the node needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_an_expired_client_certificate_and_logs_why() {
    capture_logs();
    let pki = Pki::new();
    pki.sign_valid("expired", &["cas-client"], &pki.issuer, Validity::Expired);
    pki.sign_valid("early", &["cas-client"], &pki.issuer, Validity::NotYet);
    let node = server::start(tls_config(&pki, true)).await.unwrap();
    for (name, reason) in [
        ("expired", "certificate expired"),
        ("early", "certificate not valid yet"),
    ] {
        let refused = client(&node, pki.identity_of(name)).await;
        let e = refused.get("TGT-c").await.unwrap_err().to_string();
        assert!(refused_or_closed(&e), "{name}: {e}");
        let line = logged(&["TLS handshake refused", reason]).await;
        eprintln!("{name}: client: {e}\n{name}: node: {line}");
        let out = cli_presenting(&node, &pki, name, &["get", "TGT-c"]);
        assert_eq!(out.status.code(), Some(3), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(refused_or_closed(&stderr), "{name}: {stderr}");
        eprintln!("{name}: cli: {stderr}");
    }
    let valid = client(&node, pki.identity()).await;
    valid
        .put(NewTicket::new("TGT-c", Duration::from_secs(60)).payload(b"in".to_vec()))
        .await
        .unwrap();
    assert_eq!(&valid.get("TGT-c").await.unwrap().payload[..], b"in");
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
