//! One node, wired together: the store, its workers and the gRPC server
//! (ticket API, standard health service, server reflection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::v1::ticket_store_server::TicketStoreServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::api::{NodeInfo, TicketApi};
use crate::clock::{Clock, HlcClock};
use crate::config::{ConfigError, NodeConfig};
use crate::store::Store;
use crate::sweeper::Sweeper;
use crate::worker::{self, Shutdown};

/// Room for the protobuf framing around the largest payload.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("gRPC server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running node. Dropping it without [`NodeHandle::stop`] stops the workers
/// but not gracefully.
pub struct NodeHandle {
    api_addr: SocketAddr,
    store: Arc<Store>,
    workers: Shutdown,
    worker_tasks: Vec<JoinHandle<()>>,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl NodeHandle {
    /// The address the client API listens on (the real port when 0 was asked).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stop taking calls, let in-flight calls finish, then stop the workers.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        let served = (&mut self.server).await;
        self.workers.stop();
        for task in self.worker_tasks.drain(..) {
            let _ = task.await;
        }
        info!("node stopped");
        Ok(served??)
    }

    /// Wait until the server stops by itself (it only does on error).
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        Ok((&mut self.server).await??)
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.workers.stop();
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
    }
}

/// Start a node with the system clock.
pub async fn start(config: NodeConfig) -> Result<NodeHandle, ServerError> {
    start_with_clock(config, Clock::system()).await
}

/// Start a node on a given clock (tests pass a paused or shifted one).
pub async fn start_with_clock(config: NodeConfig, clock: Clock) -> Result<NodeHandle, ServerError> {
    config.validate()?;
    let incoming = TcpIncoming::bind(config.listen)
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let api_addr = incoming.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;

    let hlc = HlcClock::new(clock, config.node_id.as_str().into());
    let store = Arc::new(Store::new(config.store_config(), hlc));
    let workers = Shutdown::new();
    let worker_tasks = vec![worker::spawn(Sweeper::new(store.clone()), &workers)];

    let node = NodeInfo {
        node_id: config.node_id.clone(),
        api_addr: api_addr.to_string(),
    };
    let max_message = config.max_payload_bytes + MESSAGE_OVERHEAD;
    let api = TicketStoreServer::new(TicketApi::new(store.clone(), node))
        .max_decoding_message_size(max_message);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TicketStoreServer<TicketApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tessera_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let (stop_server, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
            // Load balancers see NOT_SERVING while in-flight calls finish.
            health
                .set_not_serving::<TicketStoreServer<TicketApi>>()
                .await;
            info!("shutting down: finishing in-flight calls");
        };
        Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(api)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .inspect_err(|e| warn!(error = %e, "gRPC server stopped"))
    });
    info!(node_id = %config.node_id, api = %api_addr, "node serving");
    Ok(NodeHandle {
        api_addr,
        store,
        workers,
        worker_tasks,
        stop_server: Some(stop_server),
        server,
    })
}
