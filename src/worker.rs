//! Background jobs. Every job (the expiry sweeper now; anti-entropy and
//! discovery refresh later) is a [`Worker`] run by [`spawn`], so they all start,
//! report and stop the same way.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

/// What a worker's last step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// More work is ready now: run `work` again (after yielding).
    Busy,
    /// Nothing to do until `wait_for_work` returns.
    Idle,
}

/// A background job: small steps of work, and a way to wait for more.
pub trait Worker: Send + 'static {
    fn name(&self) -> &'static str;
    /// Do one bounded step of work.
    fn work(&mut self) -> impl Future<Output = WorkerState> + Send;
    /// Resolve when there may be work again.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;
}

/// Tells workers to stop; dropping it (or calling `stop`) stops them.
#[derive(Clone)]
pub struct Shutdown(watch::Sender<bool>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown(watch::channel(false).0)
    }

    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

/// Run `worker` until `shutdown` says stop.
pub fn spawn<W: Worker>(mut worker: W, shutdown: &Shutdown) -> JoinHandle<()> {
    let mut stop = shutdown.subscribe();
    tokio::spawn(async move {
        let name = worker.name();
        debug!(worker = name, "started");
        loop {
            if *stop.borrow() {
                break;
            }
            match worker.work().await {
                WorkerState::Busy => tokio::task::yield_now().await,
                WorkerState::Idle => {
                    tokio::select! {
                        _ = worker.wait_for_work() => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        info!(worker = name, "stopped");
    })
}
