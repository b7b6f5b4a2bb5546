//! `tessera-bench run`: a workload on one target, or on two side by side in
//! alternating rounds, with medians and ratios.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::load::{self, Round, Spec, Workload};
use crate::report::{self, ms, percent, ratio, thousands};
use crate::stats::{self, OpSummary, median_summary};
use crate::target::{Conn, Sharing, Target};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// tessera://host:port[,host:port...] or redis://host:port
    #[arg(long)]
    pub target: Target,
    /// A second target run in the same process, in alternating rounds.
    #[arg(long)]
    pub compare: Option<Target>,
    #[arg(long, value_enum, default_value = "cas")]
    pub workload: Workload,
    /// Virtual clients (Redis: one connection each).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// `tessera-client` handles (one HTTP/2 connection per node each) shared
    /// round-robin by the clients; each batches the concurrent calls of its
    /// clients. One, as a CAS node holds one.
    #[arg(long, default_value_t = 1)]
    pub tessera_conns: usize,
    /// Redis connections shared round-robin by the clients (the `redis` crate
    /// pipelines the commands of clients sharing one); 0 = one per client.
    #[arg(long, default_value_t = 0)]
    pub redis_conns: usize,
    /// Measured time per round and target.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop a round after this many operations (over all clients) instead.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Unmeasured load before the first round on each target.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Fixed total operations per second (latency at a given load).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Take the rate from a JSON file an earlier run wrote: its first target's
    /// median ops/s times --rate-factor.
    #[arg(long)]
    pub rate_from: Option<PathBuf>,
    #[arg(long, default_value_t = 0.5)]
    pub rate_factor: f64,
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// TGT payload bytes (cas).
    #[arg(long, default_value_t = 1024)]
    pub tgt_payload: usize,
    /// ST payload bytes (cas).
    #[arg(long, default_value_t = 300)]
    pub st_payload: usize,
    /// Payload bytes of the single-operation workloads.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// Service tickets per session (cas).
    #[arg(long, default_value_t = 5)]
    pub services: u32,
    /// Fraction of sessions that log out (cas); the rest expire.
    #[arg(long, default_value_t = 1.0)]
    pub logout_ratio: f64,
    /// Tickets per client for get and touch.
    #[arg(long, default_value_t = 100)]
    pub keys_per_client: usize,
    /// Tickets written before each consume or delete round.
    #[arg(long, default_value_t = 100_000)]
    pub prefill: u64,
    /// File holding the Tessera API token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Said after the section's title: what the targets were set up with
    /// (e.g. their persistence), which the URLs do not show.
    #[arg(long)]
    pub setup: Option<String>,
    /// Write every measured operation to this file, one line each:
    /// `round target-url op due_micros latency_micros` (due = scheduled start,
    /// from the round's start). Shows when in a round the slow calls were.
    #[arg(long)]
    pub latency_log: Option<PathBuf>,
}

/// One target's rounds and their medians.
#[derive(Serialize)]
pub struct TargetFigures {
    pub target: String,
    pub kind: String,
    pub rounds: Vec<Round>,
    pub median: BTreeMap<String, OpSummary>,
    /// Median over the rounds of the machine's busy fraction ([`Round::cpu_busy`]).
    pub cpu_busy_median: Option<f64>,
}

#[derive(Serialize)]
pub struct RunFigures {
    pub spec: Spec,
    pub sharing: Sharing,
    pub targets: Vec<TargetFigures>,
    /// First target over second, per operation: ops/s and latencies.
    pub ratios: BTreeMap<String, BTreeMap<String, f64>>,
}

pub fn read_token(path: Option<&PathBuf>) -> anyhow::Result<Option<String>> {
    match path {
        Some(p) => Ok(Some(std::fs::read_to_string(p)?.trim().to_owned())),
        None => Ok(std::env::var("TESSERA_API_TOKEN").ok()),
    }
}

/// Median ops/s of the first target in a JSON file `run` wrote.
fn rate_from(path: &PathBuf) -> anyhow::Result<f64> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    v["figures"]["targets"][0]["median"]["all"]["ops_per_sec"]
        .as_f64()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no figures.targets[0].median.all.ops_per_sec",
                path.display()
            )
        })
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let token = read_token(args.token_file.as_ref())?;
    let rate = match (&args.rate_from, args.rate) {
        (Some(path), _) => Some(rate_from(path)? * args.rate_factor),
        (None, r) => r,
    };
    let spec = Spec {
        workload: args.workload,
        clients: args.clients,
        duration: args.duration,
        ops: args.ops,
        rate,
        tgt_payload: args.tgt_payload,
        st_payload: args.st_payload,
        payload: args.payload,
        services: args.services,
        logout_ratio: args.logout_ratio,
        keys_per_client: args.keys_per_client,
        prefill: args.prefill,
        keep_samples: args.latency_log.is_some(),
    };
    let sharing = Sharing {
        tessera: args.tessera_conns,
        redis: args.redis_conns,
    };
    let mut targets: Vec<(Target, Vec<Conn>)> = Vec::new();
    for t in std::iter::once(&args.target).chain(args.compare.as_ref()) {
        let conns = t.connect(args.clients, sharing, token.as_deref()).await?;
        targets.push((t.clone(), conns));
    }
    // The measured phase's bound: the duration, or a generous cap with --ops.
    let duration = if args.ops.is_some() {
        args.duration.max(Duration::from_secs(300))
    } else {
        args.duration
    };
    if !args.warmup.is_zero() {
        for (t, conns) in &targets {
            let mut warm = spec.clone();
            if matches!(warm.workload, Workload::Consume | Workload::Delete) {
                warm.workload = Workload::Put;
            }
            eprintln!("warm-up {} {}", t.label(), args.warmup.as_secs_f64());
            load::run_phase(conns, &warm, args.warmup, None, "w").await?;
        }
    }
    let mut latency_log = match &args.latency_log {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => None,
    };
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    for r in 0..args.rounds.max(1) {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (t, conns) = &targets[i];
            let mut round =
                load::run_phase(conns, &spec, duration, args.ops, &format!("r{r}")).await?;
            if let Some(log) = &mut latency_log {
                for x in std::mem::take(&mut round.samples) {
                    writeln!(
                        log,
                        "{} {} {} {} {}",
                        r + 1,
                        t.label(),
                        x.op,
                        x.due_micros,
                        x.latency_micros
                    )?;
                }
            }
            let all = &round.ops["all"];
            eprintln!(
                "round {} {:<8} {:>10} ops/s  p50 {} ms  p99 {} ms  errors {}  cpu busy {}",
                r + 1,
                t.kind(),
                thousands(all.ops_per_sec),
                ms(all.p50_ms),
                ms(all.p99_ms),
                all.errors,
                percent(round.cpu_busy)
            );
            rounds[i].push(round);
        }
    }
    if let Some(mut log) = latency_log {
        log.flush()?;
    }
    let mut figures = Vec::new();
    for ((t, _), rounds) in targets.iter().zip(rounds) {
        let mut names: Vec<String> = rounds.iter().flat_map(|r| r.ops.keys().cloned()).collect();
        names.sort();
        names.dedup();
        let mut median = BTreeMap::new();
        for name in names {
            let per: Vec<&OpSummary> = rounds.iter().filter_map(|r| r.ops.get(&name)).collect();
            median.insert(name, median_summary(&per));
        }
        let busy: Vec<f64> = rounds.iter().filter_map(|r| r.cpu_busy).collect();
        let cpu_busy_median = (!busy.is_empty()).then(|| stats::median(&busy));
        figures.push(TargetFigures {
            target: t.label(),
            kind: t.kind().to_owned(),
            rounds,
            median,
            cpu_busy_median,
        });
    }
    let mut ratios = BTreeMap::new();
    if let [a, b] = figures.as_slice() {
        for (name, x) in &a.median {
            if let Some(y) = b.median.get(name) {
                let div = |p: f64, q: f64| if q > 0.0 { p / q } else { f64::NAN };
                let m = BTreeMap::from([
                    ("ops_per_sec".to_owned(), div(x.ops_per_sec, y.ops_per_sec)),
                    ("p50_ms".to_owned(), div(x.p50_ms, y.p50_ms)),
                    ("p90_ms".to_owned(), div(x.p90_ms, y.p90_ms)),
                    ("p99_ms".to_owned(), div(x.p99_ms, y.p99_ms)),
                    ("p999_ms".to_owned(), div(x.p999_ms, y.p999_ms)),
                ]);
                ratios.insert(name.clone(), m);
            }
        }
    }
    let markdown = markdown(&figures, &spec, args.rounds);
    let pace = match rate {
        Some(r) => format!("fixed rate {} ops/s", thousands(r)),
        None => "as fast as possible".to_owned(),
    };
    let redis_conns = match sharing.redis {
        0 => "a Redis connection per client".to_owned(),
        n => format!("{n} shared Redis connection(s)"),
    };
    let setup = args
        .setup
        .as_ref()
        .map(|setup| format!("; {setup}"))
        .unwrap_or_default();
    let title = format!(
        "{} workload, {} clients, {pace}; {} tessera-client(s), {redis_conns}{setup}",
        spec.workload.name(),
        spec.clients,
        sharing.tessera,
    );
    let errors: u64 = figures
        .iter()
        .map(|f| f.median.get("all").map_or(0, |s| s.errors))
        .sum();
    let out = RunFigures {
        spec,
        sharing,
        targets: figures,
        ratios,
    };
    report::write_section(args.json_out.as_deref(), "run", &title, out, markdown)?;
    if errors > 0 {
        eprintln!("warning: {errors} errors (see the table)");
    }
    Ok(())
}

fn markdown(figures: &[TargetFigures], spec: &Spec, rounds: usize) -> String {
    let mut rows = Vec::new();
    let Some(first) = figures.first() else {
        return String::new();
    };
    let mut names: Vec<&String> = first.median.keys().collect();
    // "all" first, then the operations in the order a session makes them.
    let order = [
        "all",
        "put_tgt",
        "put_st",
        "touch_tgt",
        "consume_st",
        "delete_tgt",
    ];
    names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(order.len()));
    for name in names {
        for f in figures {
            if let Some(s) = f.median.get(name) {
                rows.push(vec![
                    name.clone(),
                    f.kind.clone(),
                    thousands(s.ops_per_sec),
                    ms(s.p50_ms),
                    ms(s.p90_ms),
                    ms(s.p99_ms),
                    ms(s.p999_ms),
                    s.errors.to_string(),
                ]);
            }
        }
        if let [a, b] = figures
            && let (Some(x), Some(y)) = (a.median.get(name), b.median.get(name))
        {
            rows.push(vec![
                name.clone(),
                format!("**{} / {}**", a.kind, b.kind),
                format!("**{}**", ratio(x.ops_per_sec, y.ops_per_sec)),
                ratio(x.p50_ms, y.p50_ms),
                ratio(x.p90_ms, y.p90_ms),
                format!("**{}**", ratio(x.p99_ms, y.p99_ms)),
                ratio(x.p999_ms, y.p999_ms),
                String::new(),
            ]);
        }
    }
    let mut md = report::table(
        &[
            "op", "target", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors",
        ],
        &rows,
    );
    md.push_str(&format!(
        "\nMedians over {rounds} rounds per target ({}), alternating which target goes first. Latency counts from the scheduled start{}.\n",
        match spec.ops {
            Some(o) => format!("{o} operations each"),
            None => format!("{:?} each", spec.duration),
        },
        if spec.rate.is_some() { " (fixed rate, so queueing is not hidden)" } else { "" }
    ));
    let busy: Vec<String> = figures
        .iter()
        .map(|f| format!("{} {}", f.kind, percent(f.cpu_busy_median)))
        .collect();
    md.push_str(&format!(
        "\nMachine CPU busy during the rounds (all cores; server, load generator and anything else; median): {}.\n",
        busy.join(", ")
    ));
    for f in figures {
        for (name, s) in &f.median {
            if !s.error_samples.is_empty() {
                md.push_str(&format!(
                    "\n{} {name} errors: {}\n",
                    f.kind,
                    s.error_samples.join("; ")
                ));
            }
        }
    }
    md
}
