//! TLS on the client API (`tls_cert_file` and `tls_key_file`, optionally
//! `tls_client_ca_file` for client certificates), with rustls: API tokens and
//! tickets are bearer credentials, never to cross a network in cleartext.
//!
//! The certificate and key are read again when either file changes (checked
//! every [`RELOAD_CHECK`] by the [`CertReload`] worker): a certificate rotated
//! on disk (by a Secrets Manager sidecar, cert-manager, an operator) is served
//! to new connections without a restart; connections already open keep the
//! one they were made with. A pair that does not load is logged and the one in
//! use kept. The client CA is read at start only.
//!
//! The pair may instead be given as PEM text at start ([`CertSource::Pem`],
//! from `TESSERA_TLS_CERT` and `TESSERA_TLS_KEY`): ECS injects Secrets Manager
//! values as environment variables only, and a `FROM scratch` task has no
//! sidecar to write files. Such a pair changes with a new deployment.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::{Stream, StreamExt};
use tracing::{debug, info, warn};

use crate::worker::{Worker, WorkerState};

/// How often the certificate files are looked at for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);
/// Longest TLS handshake a client gets: a peer that connects and says
/// nothing holds no more than a task for this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress before new connections wait to be accepted.
const HANDSHAKES_QUEUED: usize = 256;

/// What TLS is served with.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub cert: CertSource,
    /// Client certificates must be signed by this CA (mTLS); none: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// Where the certificate chain and its key come from.
#[derive(Clone)]
pub enum CertSource {
    /// PEM files, re-read when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// PEM text given at start (the environment), never re-read.
    Pem { cert: Vec<u8>, key: Vec<u8> },
}

/// Names the files or the variables, never the key.
impl std::fmt::Debug for CertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertSource::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            CertSource::Pem { .. } => f.write_str("Pem(TESSERA_TLS_CERT, TESSERA_TLS_KEY)"),
        }
    }
}

impl CertSource {
    /// How errors name the certificate and the key.
    fn names(&self) -> (String, String) {
        match self {
            CertSource::Files { cert, key } => {
                (cert.display().to_string(), key.display().to_string())
            }
            CertSource::Pem { .. } => ("TESSERA_TLS_CERT".into(), "TESSERA_TLS_KEY".into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {why}")]
    Bad { path: String, why: String },
    #[error("{0}")]
    Setting(&'static str),
}

/// The TLS side of the client API: the acceptor and the certificate it serves.
pub struct ApiTls {
    acceptor: TlsAcceptor,
    cert: Arc<ReloadingCert>,
}

impl ApiTls {
    /// Load the files and build the server configuration (TLS 1.3 and 1.2,
    /// HTTP/2 by ALPN).
    pub fn load(settings: TlsSettings) -> Result<ApiTls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let (key, stamp) = load_pair(&settings.cert, &provider)?;
        let cert = Arc::new(ReloadingCert {
            current: RwLock::new((Arc::new(key), stamp)),
            source: settings.cert.clone(),
            provider: provider.clone(),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| bad(&settings.cert.names().0, e))?;
        let builder = match &settings.client_ca {
            Some(path) => {
                let name = path.display().to_string();
                let mut roots = RootCertStore::empty();
                for ca in certificates(&name, &read(path)?)? {
                    roots.add(ca).map_err(|e| bad(&name, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| bad(&name, e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ApiTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert,
        })
    }

    /// TLS connections out of accepted TCP ones: each handshake runs in a
    /// task of its own (a slow client holds up nobody else), bounded by
    /// [`HANDSHAKE_TIMEOUT`]; a failed one is logged and dropped.
    pub fn incoming<S>(&self, tcp: S) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>>
    where
        S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
    {
        let (done, handshaken) = tokio::sync::mpsc::channel(HANDSHAKES_QUEUED);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            tokio::pin!(tcp);
            while let Some(accepted) = tcp.next().await {
                let stream = match accepted {
                    Ok(stream) => stream,
                    Err(e) => {
                        debug!(error = %e, "accept failed");
                        continue;
                    }
                };
                if done.is_closed() {
                    break;
                }
                let (acceptor, handed) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let peer = stream.peer_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = handed.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => debug!(?peer, error = %e, "TLS handshake refused"),
                        Err(_) => debug!(?peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(handshaken)
    }

    /// The worker that reloads the certificate when its files change.
    pub fn reloader(&self) -> CertReload {
        CertReload {
            cert: self.cert.clone(),
        }
    }
}

/// The certificate served, and the modification times it was read at.
struct ReloadingCert {
    current: RwLock<(Arc<CertifiedKey>, FileStamp)>,
    source: CertSource,
    provider: Arc<CryptoProvider>,
}

/// Modification times of the certificate and key files.
type FileStamp = (Option<SystemTime>, Option<SystemTime>);

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("source", &self.source)
            .finish()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        Some(current.0.clone())
    }
}

impl ReloadingCert {
    /// Load the pair again if either file changed; keep the old one if the
    /// new one does not load (a half-written rotation is retried next time).
    fn reload_if_changed(&self) {
        if matches!(self.source, CertSource::Pem { .. }) {
            return;
        }
        let stamp = file_stamp(&self.source);
        let unchanged = {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            current.1 == stamp
        };
        if unchanged {
            return;
        }
        match load_pair(&self.source, &self.provider) {
            Ok((key, stamp)) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(key), stamp);
                info!(cert = %self.source.names().0, "TLS certificate reloaded");
            }
            Err(e) => {
                warn!(error = %e, "TLS certificate changed but does not load; serving the previous one")
            }
        }
    }
}

/// Reloads the API's certificate when its files change.
pub struct CertReload {
    cert: Arc<ReloadingCert>,
}

impl Worker for CertReload {
    fn name(&self) -> &'static str {
        "tls-cert-reload"
    }

    async fn work(&mut self) -> WorkerState {
        let cert = self.cert.clone();
        // File reads and key parsing: off the async threads.
        let _ = tokio::task::spawn_blocking(move || cert.reload_if_changed()).await;
        WorkerState::Idle
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(RELOAD_CHECK).await
    }
}

fn bad(name: &str, why: impl std::fmt::Display) -> TlsError {
    TlsError::Bad {
        path: name.to_owned(),
        why: why.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The certificates in `pem` (from what `name` names).
fn certificates(name: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(name, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad(name, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn file_stamp(source: &CertSource) -> FileStamp {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    match source {
        CertSource::Files { cert, key } => (modified(cert), modified(key)),
        CertSource::Pem { .. } => (None, None),
    }
}

/// The certificate chain and key of `source`, checked to belong together.
fn load_pair(
    source: &CertSource,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, FileStamp), TlsError> {
    let stamp = file_stamp(source);
    let (cert_name, key_name) = source.names();
    let (cert_pem, key_pem) = match source {
        CertSource::Files { cert, key } => {
            let key_pem =
                crate::secret::read_private_file("TLS key", key).map_err(|e| bad(&key_name, e))?;
            (read(cert)?, key_pem)
        }
        CertSource::Pem { cert, key } => (cert.clone(), key.clone()),
    };
    let chain = certificates(&cert_name, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad(&key_name, format!("not a PEM private key: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| bad(&key_name, format!("does not go with {cert_name}: {e}")))?;
    Ok((key, stamp))
}
