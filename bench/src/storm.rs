//! `tessera-bench expiry-storm`: N tickets that expire within the same second
//! while a fixed-rate read load runs; read latency before and during.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

use crate::load::{Ids, Rng};
use crate::memory;
use crate::report::{self, ms, thousands};
use crate::run::read_token;
use crate::stats::{OpStats, OpSummary};
use crate::target::{Conn, Sharing, Target};

/// Long-lived tickets the readers read.
const HOT_TTL: Duration = Duration::from_secs(3600);
/// Tickets written to estimate the load rate before the storm's deadline is set.
const CALIBRATION: u64 = 10_000;

#[derive(clap::Args, Debug)]
pub struct StormArgs {
    #[arg(long)]
    pub target: Target,
    #[arg(long)]
    pub compare: Option<Target>,
    /// Tickets that expire together.
    #[arg(long, default_value_t = 1_000_000)]
    pub tickets: u64,
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Clients writing the tickets.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// `tessera-client` handles shared by the clients (see `run --help`).
    #[arg(long, default_value_t = 1)]
    pub tessera_conns: usize,
    /// Clients reading during the storm.
    #[arg(long, default_value_t = 16)]
    pub readers: usize,
    /// Total reads per second (fixed, so latency is not hidden by back-pressure).
    #[arg(long, default_value_t = 4000.0)]
    pub read_rate: f64,
    #[arg(long, default_value_t = 1000)]
    pub hot_keys: usize,
    /// How long after the deadline reads count as "during".
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub window: Duration,
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Serialize)]
pub struct StormFigures {
    pub target: String,
    pub kind: String,
    pub tickets: u64,
    pub load_errors: u64,
    pub before: OpSummary,
    pub during: OpSummary,
    /// Highest p99 of any one second of the window.
    pub worst_second_p99_ms: f64,
    pub count_after: Option<u64>,
}

async fn storm(
    target: &Target,
    args: &StormArgs,
    token: Option<&str>,
) -> anyhow::Result<StormFigures> {
    let loaders = target
        .connect(args.clients, Sharing::tessera(args.tessera_conns), token)
        .await?;
    let readers = target
        .connect(args.readers, Sharing::tessera(args.tessera_conns), token)
        .await?;
    let payload = Bytes::from(vec![b'h'; args.payload]);
    let ids = Ids::new("hot");
    let mut hot = Vec::new();
    let mut first = readers[0].clone();
    for i in 0..args.hot_keys {
        let id = ids.id("TGT", 0, i as u64);
        first
            .put_plain(&id, &payload, HOT_TTL, 0)
            .await
            .map_err(anyhow::Error::msg)?;
        hot.push(id);
    }
    let (_, took) = memory::load(&loaders, CALIBRATION, args.payload, "cal", HOT_TTL).await;
    let rate = CALIBRATION as f64 / took.as_secs_f64().max(1e-3);
    let expected =
        Duration::from_secs_f64(args.tickets as f64 / rate * 1.5) + Duration::from_secs(15);
    let deadline_wall = SystemTime::now() + expected;
    let deadline = Instant::now() + expected;
    eprintln!(
        "expiry storm {}: {} tickets at ~{} /s, all expiring in {:.0} s",
        target.kind(),
        args.tickets,
        thousands(rate),
        expected.as_secs_f64()
    );
    let errors = load_expiring(&loaders, args.tickets, args.payload, deadline_wall).await;
    let loaded_at = Instant::now();
    if loaded_at + Duration::from_secs(3) > deadline {
        anyhow::bail!("the load finished too close to the deadline to measure 'before'");
    }
    let before_from = loaded_at + Duration::from_secs(1);
    let end = deadline + args.window;
    let gap = Duration::from_secs_f64(args.readers as f64 / args.read_rate);
    let seconds = args.window.as_secs().max(1) as usize;
    let readers_n = readers.len().max(1);
    let mut tasks = Vec::new();
    for (r, conn) in readers.iter().enumerate() {
        let mut conn = conn.clone();
        let hot = hot.clone();
        tasks.push(tokio::spawn(async move {
            let mut before = OpStats::default();
            let mut during = vec![OpStats::default(); seconds];
            let mut rng = Rng::new(r as u64 + 99);
            let mut next = before_from + gap.mul_f64(r as f64 / readers_n as f64);
            while next < end {
                let at = next;
                next += gap;
                tokio::time::sleep_until(at).await;
                let id = &hot[rng.below(hot.len())];
                let result = conn.get(id).await;
                let latency = at.elapsed();
                let bucket = if at < deadline - Duration::from_secs(1) {
                    Some(&mut before)
                } else if at >= deadline {
                    let s = (at - deadline).as_secs() as usize;
                    during.get_mut(s)
                } else {
                    None
                };
                if let Some(b) = bucket {
                    match result {
                        Ok(()) => b.record(latency),
                        Err(e) => b.error(e),
                    }
                }
            }
            (before, during)
        }));
    }
    let mut before = OpStats::default();
    let mut during = vec![OpStats::default(); seconds];
    for t in tasks {
        let (b, d) = t.await?;
        before.merge(&b);
        for (all, one) in during.iter_mut().zip(&d) {
            all.merge(one);
        }
    }
    let mut during_all = OpStats::default();
    let mut worst = 0.0f64;
    for s in &during {
        during_all.merge(s);
        worst = worst.max(s.summary(Duration::from_secs(1)).p99_ms);
    }
    let before_span = deadline - Duration::from_secs(1) - before_from;
    Ok(StormFigures {
        target: target.label(),
        kind: target.kind().to_owned(),
        tickets: args.tickets,
        load_errors: errors,
        before: before.summary(before_span),
        during: during_all.summary(args.window),
        worst_second_p99_ms: worst,
        count_after: first.count().await.ok(),
    })
}

async fn load_expiring(conns: &[Conn], tickets: u64, payload: usize, deadline: SystemTime) -> u64 {
    let payload = Bytes::from(vec![b's'; payload]);
    let ids = Ids::new("storm");
    let clients = conns.len() as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, conn) in conns.iter().enumerate() {
        let mut conn = conn.clone();
        let payload = payload.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            let mut i = c as u64;
            while i < tickets {
                if start.elapsed() > memory::LOAD_LIMIT
                    || conn
                        .put_expiring_at(&ids.id("ST", c, i), &payload, deadline)
                        .await
                        .is_err()
                {
                    errors += 1;
                }
                i += clients;
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap_or(0);
    }
    errors
}

pub async fn run(args: StormArgs) -> anyhow::Result<()> {
    let token = read_token(args.token_file.as_ref())?;
    let mut figures = vec![storm(&args.target, &args, token.as_deref()).await?];
    if let Some(other) = &args.compare {
        figures.push(storm(other, &args, token.as_deref()).await?);
    }
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            vec![
                f.kind.clone(),
                ms(f.before.p50_ms),
                ms(f.before.p99_ms),
                ms(f.during.p50_ms),
                ms(f.during.p99_ms),
                ms(f.worst_second_p99_ms),
                report::ratio(f.during.p99_ms, f.before.p99_ms),
                (f.before.errors + f.during.errors + f.load_errors).to_string(),
            ]
        })
        .collect();
    let mut md = report::table(
        &[
            "target",
            "read p50 before",
            "read p99 before",
            "p50 during",
            "p99 during",
            "worst 1 s p99",
            "p99 during / before",
            "errors",
        ],
        &rows,
    );
    md.push_str(&format!(
        "\n{} tickets of {} B all expire in the same second; {} readers read {} long-lived tickets at a fixed {} reads/s in total. 'During' = the {:?} from the deadline. Times in ms.\n",
        thousands(args.tickets as f64),
        args.payload,
        args.readers,
        args.hot_keys,
        thousands(args.read_rate),
        args.window
    ));
    report::write_section(
        args.json_out.as_deref(),
        "expiry-storm",
        &format!("Expiry storm, {} tickets", thousands(args.tickets as f64)),
        figures,
        md,
    )
}
