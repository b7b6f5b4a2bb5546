//! ECS discovery: the other RUNNING tasks of this task's service (or family),
//! found through the ECS API, with no seed list.
//!
//! At start the node reads its own task from the task metadata endpoint
//! ([`metadata`]): cluster, task ARN, family and private IPv4. Which tasks are
//! peers is settled once: `--ecs-service`, else `--ecs-family`, else the
//! service this task belongs to (its `group`, `service:NAME`, as DescribeTasks
//! reports it), else this task's family. Every refresh then lists them:
//!
//! - ListTasks (desiredStatus RUNNING) following every page: the API returns
//!   at most 100 ARNs a page, and a fleet larger than that must not be cut off;
//! - DescribeTasks in chunks of at most 100 ARNs (the API's limit);
//! - keep tasks whose lastStatus is RUNNING and that have an address: the
//!   `privateIPv4Address` detail of the ElasticNetworkInterface attachment,
//!   else `containers[].networkInterfaces[].privateIpv4Address` (either can be
//!   missing depending on launch type and agent version);
//! - a task that stopped between the two calls (failure reason MISSING) is
//!   skipped; any other failure fails the refresh, so it is logged and retried
//!   by the [`DiscoveryWorker`](super::DiscoveryWorker) with the last good list
//!   kept, never silently ignored;
//! - our own task is left out.
//!
//! Credentials and region come from the standard AWS chain (the task role on
//! ECS); `AWS_ENDPOINT_URL_ECS` / `AWS_ENDPOINT_URL` point it elsewhere (the
//! tests' emulator). With no region configured, the region in our own task ARN
//! is used.

pub mod metadata;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ecs::Client;
use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ecs::types::{DesiredStatus, Task};
use tracing::{debug, info};

pub use metadata::TaskMetadata;

use super::{Discovery, DiscoveryError};

/// DescribeTasks accepts at most this many ARNs per call.
pub const DESCRIBE_TASKS_MAX: usize = 100;
/// One attempt of an ECS call; the SDK retries throttling and transient errors
/// (3 attempts), and the whole call is bounded by [`OPERATION_TIMEOUT`], so a
/// refresh never hangs the discovery worker.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the operator chose (see `NodeConfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EcsSettings {
    /// Peers are the tasks of this service.
    pub service: Option<String>,
    /// Peers are the tasks of this task definition family.
    pub family: Option<String>,
    /// The gossip port of every peer task.
    pub gossip_port: u16,
}

/// Which tasks of the cluster are peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    Service(String),
    Family(String),
}

/// What start-up learned besides the provider itself.
#[derive(Debug)]
pub struct EcsStart {
    pub discovery: EcsDiscovery,
    pub task: TaskMetadata,
    /// The service's desiredCount, when asked for and peers are a service.
    pub desired_count: Option<usize>,
}

/// The ECS discovery provider.
#[derive(Debug)]
pub struct EcsDiscovery {
    client: Client,
    cluster: String,
    own_task_arn: String,
    peers: Peers,
    gossip_port: u16,
    /// The service's desiredCount, read again every round when start-up read
    /// it (the expected size follows the service: review #3).
    desired_count: Option<Arc<AtomicUsize>>,
}

fn error(reason: impl Into<String>) -> DiscoveryError {
    DiscoveryError::Provider {
        provider: "ecs".into(),
        reason: reason.into(),
    }
}

/// An SDK error with its whole cause chain (the error code, e.g.
/// ThrottlingException or AccessDeniedException, and its message).
fn sdk_error<E, R>(call: &str, err: SdkError<E, R>) -> DiscoveryError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        // Code and message only: the whole error also prints the raw response,
        // whose Date header made every repetition of one error look new (so it
        // was logged again each time).
        Some(service) => error(format!(
            "{call}: {}: {}",
            service.code().unwrap_or("unknown error"),
            service.message().unwrap_or("no message")
        )),
        None => error(format!("{call}: {}", DisplayErrorContext(err))),
    }
}

impl EcsDiscovery {
    /// Start-up inside an ECS task: own task from the metadata endpoint, an
    /// ECS client from the standard AWS chain, then [`EcsDiscovery::with_client`].
    pub async fn start(
        settings: &EcsSettings,
        want_desired_count: bool,
    ) -> Result<EcsStart, DiscoveryError> {
        let task = metadata::from_env().await?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
        if let Some(region) = arn_region(&task.task_arn) {
            // The standard chain first (AWS_REGION, profile, ...); when it has
            // nothing, the task ARN says where we are.
            loader = loader.region(
                RegionProviderChain::default_provider().or_else(Region::new(region.to_string())),
            );
        }
        let client = Client::new(&loader.load().await);
        Self::with_client(client, task, settings, want_desired_count).await
    }

    /// Settle which tasks are peers (asking ECS for our own task's service
    /// when no setting says) and, if asked and peers are a service, read its
    /// desiredCount.
    pub async fn with_client(
        client: Client,
        task: TaskMetadata,
        settings: &EcsSettings,
        want_desired_count: bool,
    ) -> Result<EcsStart, DiscoveryError> {
        let peers = match (&settings.service, &settings.family) {
            (Some(service), _) => Peers::Service(service.clone()),
            (None, Some(family)) => Peers::Family(family.clone()),
            (None, None) => Self::own_group(&client, &task).await?,
        };
        let desired_count = match (&peers, want_desired_count) {
            (Peers::Service(service), true) => {
                Some(Self::desired_count(&client, &task.cluster, service).await?)
            }
            _ => None,
        };
        info!(
            cluster = %task.cluster,
            task = %task.task_arn,
            family = %task.family,
            availability_zone = task.availability_zone.as_deref().unwrap_or("-"),
            ip = %task.ipv4,
            peers = ?peers,
            desired_count,
            "ecs discovery: own task"
        );
        let discovery = EcsDiscovery {
            client,
            cluster: task.cluster.clone(),
            own_task_arn: task.task_arn.clone(),
            peers,
            gossip_port: settings.gossip_port,
            desired_count: desired_count.map(|count| Arc::new(AtomicUsize::new(count))),
        };
        Ok(EcsStart {
            discovery,
            task,
            desired_count,
        })
    }

    /// The service our own task belongs to (group `service:NAME`), else its family.
    async fn own_group(client: &Client, task: &TaskMetadata) -> Result<Peers, DiscoveryError> {
        let out = client
            .describe_tasks()
            .cluster(&task.cluster)
            .tasks(&task.task_arn)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeTasks (own task)", e))?;
        let group = out
            .tasks()
            .iter()
            .find(|t| t.task_arn() == Some(task.task_arn.as_str()))
            .and_then(Task::group);
        Ok(match group.and_then(|g| g.strip_prefix("service:")) {
            Some(service) if !service.is_empty() => Peers::Service(service.to_string()),
            _ => Peers::Family(task.family.clone()),
        })
    }

    async fn desired_count(
        client: &Client,
        cluster: &str,
        service: &str,
    ) -> Result<usize, DiscoveryError> {
        let out = client
            .describe_services()
            .cluster(cluster)
            .services(service)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeServices", e))?;
        let found = out
            .services()
            .iter()
            .find(|s| s.service_name() == Some(service) || s.service_arn() == Some(service));
        match found {
            Some(s) => Ok(usize::try_from(s.desired_count()).unwrap_or(0)),
            None => Err(error(format!(
                "DescribeServices: service {service} not found in cluster {cluster}"
            ))),
        }
    }

    /// The service's desiredCount as of the latest round, when followed.
    pub fn desired_count_handle(&self) -> Option<Arc<AtomicUsize>> {
        self.desired_count.clone()
    }

    /// Which tasks are peers.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Every ARN ListTasks returns, all pages.
    async fn list_task_arns(&self) -> Result<Vec<String>, DiscoveryError> {
        let request = self
            .client
            .list_tasks()
            .cluster(&self.cluster)
            .desired_status(DesiredStatus::Running);
        let request = match &self.peers {
            Peers::Service(service) => request.service_name(service),
            Peers::Family(family) => request.family(family),
        };
        let mut pages = request.into_paginator().send();
        let mut arns = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("ListTasks", e))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        arns.sort();
        arns.dedup();
        Ok(arns)
    }
}

#[async_trait::async_trait]
impl Discovery for EcsDiscovery {
    async fn discover(&self) -> Result<Vec<SocketAddr>, DiscoveryError> {
        if let (Some(count), Peers::Service(service)) = (&self.desired_count, &self.peers) {
            let desired = Self::desired_count(&self.client, &self.cluster, service).await?;
            let before = count.swap(desired, Ordering::AcqRel);
            if before != desired {
                info!(before, desired, "the ECS service's desiredCount changed");
            }
        }
        let mut arns = self.list_task_arns().await?;
        arns.retain(|arn| *arn != self.own_task_arn);
        let mut found = Vec::new();
        let mut skipped = 0usize;
        for chunk in arns.chunks(DESCRIBE_TASKS_MAX) {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| sdk_error("DescribeTasks", e))?;
            let mut failures = Vec::new();
            for failure in out.failures() {
                if failure.reason() == Some("MISSING") {
                    debug!(
                        task = failure.arn().unwrap_or("-"),
                        "task vanished since ListTasks"
                    );
                } else {
                    failures.push(format!(
                        "{}: {} {}",
                        failure.arn().unwrap_or("-"),
                        failure.reason().unwrap_or("-"),
                        failure.detail().unwrap_or("")
                    ));
                }
            }
            if !failures.is_empty() {
                return Err(error(format!(
                    "DescribeTasks failed for {}",
                    failures.join("; ")
                )));
            }
            for task in out.tasks() {
                if task.task_arn() == Some(self.own_task_arn.as_str()) {
                    continue;
                }
                match (task.last_status(), task_ip(task)) {
                    (Some("RUNNING"), Some(ip)) => {
                        found.push(SocketAddr::new(ip, self.gossip_port));
                    }
                    _ => skipped += 1,
                }
            }
        }
        debug!(
            listed = arns.len(),
            peers = found.len(),
            not_running_or_no_ip = skipped,
            "ecs discovery refreshed"
        );
        Ok(super::dedup(found))
    }

    fn describe(&self) -> String {
        match &self.peers {
            Peers::Service(service) => format!("ecs service {service} in {}", self.cluster),
            Peers::Family(family) => format!("ecs family {family} in {}", self.cluster),
        }
    }
}

/// The task's private IP: the awsvpc ENI attachment's `privateIPv4Address`,
/// else the first container network interface's `privateIpv4Address`.
fn task_ip(task: &Task) -> Option<IpAddr> {
    let from_eni = task
        .attachments()
        .iter()
        .filter(|a| a.r#type() == Some("ElasticNetworkInterface"))
        .flat_map(|a| a.details())
        .filter(|d| d.name() == Some("privateIPv4Address"))
        .filter_map(|d| d.value());
    let from_containers = task
        .containers()
        .iter()
        .flat_map(|c| c.network_interfaces())
        .filter_map(|n| n.private_ipv4_address());
    from_eni
        .chain(from_containers)
        .find_map(|ip| ip.parse::<IpAddr>().ok())
}

/// `arn:aws:ecs:REGION:ACCOUNT:task/...` -> REGION.
fn arn_region(arn: &str) -> Option<&str> {
    let region = arn.split(':').nth(3)?;
    (!region.is_empty()).then_some(region)
}
