//! TLS from the environment, as ECS hands a certificate kept in Secrets
//! Manager to a task: `TESSERA_TLS_CERT` / `TESSERA_TLS_KEY` (PEM text) for
//! `tessera serve`, `TESSERA_CA` for the client subcommands (the task's own
//! health check). Real processes; certificates made at run time (rcgen).

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A CA's PEM, and a server certificate and key for 127.0.0.1 it signed.
fn pki() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(addr: &str, envs: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args([
            "serve",
            "--node-id",
            "tls-env",
            "--listen",
            addr,
            "--data-dir",
            "none",
        ])
        .args(args)
        .env_remove("TESSERA_API_TOKEN")
        .env_remove("TESSERA_TLS_CERT")
        .env_remove("TESSERA_TLS_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    command
}

fn client(addr: &str, args: &[&str], ca: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--addr", &format!("https://{addr}"), "--timeout", "2s"])
        .env_remove("TESSERA_ADDR")
        .env_remove("TESSERA_API_TOKEN")
        .env_remove("TESSERA_CA_FILE")
        .env("TESSERA_CA", ca)
        .output()
        .expect("run tessera")
}

fn free_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn a_node_serves_tls_from_pem_in_the_environment_and_the_cli_trusts_a_ca_from_it() {
    let (ca, cert, key) = pki();
    let addr = free_addr();
    let _node = Serve(
        serve(
            &addr,
            &[("TESSERA_TLS_CERT", &cert), ("TESSERA_TLS_KEY", &key)],
            &[],
        )
        .spawn()
        .expect("spawn serve"),
    );
    let start = Instant::now();
    let mut health = client(&addr, &["health"], &ca);
    while health.status.code() != Some(0) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
        health = client(&addr, &["health"], &ca);
    }
    assert_eq!(
        health.status.code(),
        Some(0),
        "health over TLS: {}",
        String::from_utf8_lossy(&health.stderr)
    );
    let put = client(&addr, &["put", "TGT-env", "--ttl", "1m"], &ca);
    assert_eq!(
        put.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    // Another CA is not trusted: exit 3, naming the reason (rcgen's CAs share
    // an empty name, so rustls reports BadSignature rather than UnknownIssuer).
    let (other_ca, _, _) = pki();
    let refused = client(&addr, &["get", "TGT-env"], &other_ca);
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("invalid peer certificate"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn half_a_pair_or_both_kinds_of_source_stop_the_node_at_start_with_exit_2() {
    let (_, cert, key) = pki();
    let half = serve(&free_addr(), &[("TESSERA_TLS_CERT", &cert)], &[])
        .output()
        .unwrap();
    assert_eq!(half.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&half.stderr).contains("TESSERA_TLS_KEY"));

    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let both = serve(
        &free_addr(),
        &[("TESSERA_TLS_CERT", &cert), ("TESSERA_TLS_KEY", &key)],
        &[
            "--tls-cert-file",
            cert_file.to_str().unwrap(),
            "--tls-key-file",
            key_file.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(both.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("not both"),
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );

    let garbage = serve(
        &free_addr(),
        &[("TESSERA_TLS_CERT", "not pem"), ("TESSERA_TLS_KEY", &key)],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(garbage.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&garbage.stderr).contains("TESSERA_TLS_CERT"),
        "{}",
        String::from_utf8_lossy(&garbage.stderr)
    );
}
