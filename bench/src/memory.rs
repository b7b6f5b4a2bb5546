//! `tessera-bench memory`: resident memory per ticket after loading N tickets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::load::Ids;
use crate::machine::rss_bytes;
use crate::report::{self, thousands};
use crate::run::read_token;
use crate::target::{Conn, Sharing, Target};

/// Time to live of the loaded tickets: long enough to outlive the reading.
const TTL: Duration = Duration::from_secs(3600);
/// Pause after the load before reading memory, so in-flight work settles.
const SETTLE: Duration = Duration::from_secs(2);
/// Longest a bulk load may take; tickets not written by then count as errors.
pub const LOAD_LIMIT: Duration = Duration::from_secs(20 * 60);

#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    #[arg(long)]
    pub target: Target,
    /// PID of the target's server process (its VmRSS is read before and after).
    #[arg(long)]
    pub pid: Option<u32>,
    #[arg(long)]
    pub compare: Option<Target>,
    #[arg(long)]
    pub compare_pid: Option<u32>,
    #[arg(long, default_value_t = 1_000_000)]
    pub tickets: u64,
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// `tessera-client` handles shared by the clients (see `run --help`).
    #[arg(long, default_value_t = 1)]
    pub tessera_conns: usize,
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Serialize, Default)]
pub struct MemoryFigures {
    pub target: String,
    pub kind: String,
    pub tickets: u64,
    pub errors: u64,
    pub load_secs: f64,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub rss_per_ticket: Option<f64>,
    pub redis_used_memory_before: Option<u64>,
    pub redis_used_memory_after: Option<u64>,
    pub redis_used_memory_per_key: Option<f64>,
    pub redis_rss_per_key: Option<f64>,
    pub count_after: Option<u64>,
}

fn info_u64(info: &[(String, String)], key: &str) -> Option<u64> {
    info.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// Writes `tickets` tickets of `payload` bytes with `clients` concurrent clients.
pub async fn load(
    conns: &[Conn],
    tickets: u64,
    payload: usize,
    tag: &str,
    ttl: Duration,
) -> (u64, Duration) {
    let payload = Bytes::from(vec![b'm'; payload]);
    let ids = Ids::new(tag);
    let clients = conns.len() as u64;
    let start = Instant::now();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (c, conn) in conns.iter().enumerate() {
        let mut conn = conn.clone();
        let payload = payload.clone();
        let ids = ids.clone();
        let errors = Arc::clone(&errors);
        tasks.push(tokio::spawn(async move {
            let mut i = c as u64;
            while i < tickets {
                if start.elapsed() > LOAD_LIMIT
                    || conn
                        .put_plain(&ids.id("TGT", c, i), &payload, ttl, 0)
                        .await
                        .is_err()
                {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                i += clients;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        errors.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed(),
    )
}

async fn measure(
    target: &Target,
    pid: Option<u32>,
    args: &MemoryArgs,
    token: Option<&str>,
) -> anyhow::Result<MemoryFigures> {
    let conns = target
        .connect(args.clients, Sharing::tessera(args.tessera_conns), token)
        .await?;
    let mut probe = conns[0].clone();
    let info_before = probe
        .redis_memory_info()
        .await
        .map_err(anyhow::Error::msg)?;
    let rss_before = pid.map(rss_bytes).transpose()?;
    eprintln!(
        "memory: loading {} tickets into {}",
        args.tickets,
        target.label()
    );
    let (errors, took) = load(&conns, args.tickets, args.payload, "m", TTL).await;
    tokio::time::sleep(SETTLE).await;
    let info_after = probe
        .redis_memory_info()
        .await
        .map_err(anyhow::Error::msg)?;
    let rss_after = pid.map(rss_bytes).transpose()?;
    let loaded = args.tickets.saturating_sub(errors).max(1) as f64;
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some((b as f64 - a as f64) / loaded),
        _ => None,
    };
    let used_before = info_u64(&info_before, "used_memory");
    let used_after = info_u64(&info_after, "used_memory");
    let mut f = MemoryFigures {
        target: target.label(),
        kind: target.kind().to_owned(),
        tickets: args.tickets,
        errors,
        load_secs: took.as_secs_f64(),
        rss_before,
        rss_after,
        rss_per_ticket: per(rss_before, rss_after),
        redis_used_memory_before: used_before,
        redis_used_memory_after: used_after,
        redis_used_memory_per_key: per(used_before, used_after),
        redis_rss_per_key: per(
            info_u64(&info_before, "used_memory_rss"),
            info_u64(&info_after, "used_memory_rss"),
        ),
        count_after: probe.count().await.ok(),
    };
    if f.rss_per_ticket.is_none() {
        f.rss_per_ticket = f.redis_rss_per_key;
    }
    Ok(f)
}

pub async fn run(args: MemoryArgs) -> anyhow::Result<()> {
    let token = read_token(args.token_file.as_ref())?;
    let mut figures = vec![measure(&args.target, args.pid, &args, token.as_deref()).await?];
    if let Some(other) = &args.compare {
        figures.push(measure(other, args.compare_pid, &args, token.as_deref()).await?);
    }
    let opt = |v: Option<f64>| v.map(thousands).unwrap_or_else(|| "-".to_owned());
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            vec![
                f.kind.clone(),
                thousands(f.tickets as f64),
                format!("{:.1} s", f.load_secs),
                opt(f.rss_per_ticket),
                opt(f.redis_used_memory_per_key),
                opt(f.rss_after.map(|b| b as f64 / 1_048_576.0)),
                f.errors.to_string(),
            ]
        })
        .collect();
    let mut md = report::table(
        &[
            "target",
            "tickets",
            "load time",
            "RSS B/ticket",
            "used_memory B/key",
            "RSS after MiB",
            "errors",
        ],
        &rows,
    );
    md.push_str(&format!(
        "\n{} B payload per ticket, TTL 1 h, ids like `TGT-<n>-<hex>c<client>-cas01` (~40 B). RSS per ticket = (VmRSS after - before) / tickets of the server process; Redis also reports its allocator's `used_memory`.\n",
        args.payload
    ));
    if let [a, b] = figures.as_slice()
        && let (Some(x), Some(y)) = (a.rss_per_ticket, b.rss_per_ticket)
    {
        md.push_str(&format!(
            "\nRSS per ticket {} / {}: **{}**\n",
            a.kind,
            b.kind,
            report::ratio(x, y)
        ));
    }
    report::write_section(
        args.json_out.as_deref(),
        "memory",
        &format!(
            "Memory, {} tickets of {} B",
            thousands(args.tickets as f64),
            args.payload
        ),
        figures,
        md,
    )
}
