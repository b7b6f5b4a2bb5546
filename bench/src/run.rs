//! `tessera-bench run`: a workload on one target, or on two side by side in
//! alternating rounds, with medians and ratios.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::load::{self, Round, Spec, Workload};
use crate::machine;
use crate::report::{self, cores, micros, ms, percent, ratio, thousands};
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
    /// PID of --target's server process: its CPU time (utime + stime of
    /// /proc/PID/stat) is read around each measured phase, for the server's
    /// CPU microseconds per operation and cores used.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// PID of --compare's server process (as --target-pid).
    #[arg(long, requires = "compare")]
    pub compare_pid: Option<u32>,
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
    /// The server process whose CPU was read (--target-pid / --compare-pid).
    pub pid: Option<u32>,
    /// Medians over the rounds of [`Round::server_cpu`]: the server's CPU
    /// microseconds per operation and the cores it kept busy.
    pub server_cpu_us_per_op_median: Option<f64>,
    pub server_cores_median: Option<f64>,
}

#[derive(Serialize)]
pub struct RunFigures {
    pub spec: Spec,
    pub sharing: Sharing,
    pub targets: Vec<TargetFigures>,
    /// First target over second, per operation: ops/s and latencies (and, for
    /// "all", `server_cpu_us_per_op` when both PIDs were given).
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
    let mut targets: Vec<(Target, Vec<Conn>, Option<u32>)> = Vec::new();
    let named = [
        (Some(&args.target), args.target_pid),
        (args.compare.as_ref(), args.compare_pid),
    ];
    for (t, pid) in named {
        let Some(t) = t else { continue };
        if let Some(pid) = pid {
            // A wrong PID fails here, not after the warm-up.
            machine::cpu_secs(pid).map_err(|e| anyhow::anyhow!("{}: {e}", t.label()))?;
        }
        let conns = t.connect(args.clients, sharing, token.as_deref()).await?;
        targets.push((t.clone(), conns, pid));
    }
    // The measured phase's bound: the duration, or a generous cap with --ops.
    let duration = if args.ops.is_some() {
        args.duration.max(Duration::from_secs(300))
    } else {
        args.duration
    };
    if !args.warmup.is_zero() {
        for (t, conns, _) in &targets {
            let mut warm = spec.clone();
            if matches!(warm.workload, Workload::Consume | Workload::Delete) {
                warm.workload = Workload::Put;
            }
            eprintln!("warm-up {} {}", t.label(), args.warmup.as_secs_f64());
            load::run_phase(conns, &warm, args.warmup, None, "w", None).await?;
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
            let (t, conns, pid) = &targets[i];
            let mut round =
                load::run_phase(conns, &spec, duration, args.ops, &format!("r{r}"), *pid).await?;
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
                "round {} {:<8} {:>10} ops/s  p50 {} ms  p99 {} ms  errors {}  cpu busy {}  server cpu {} us/op {} cores",
                r + 1,
                t.kind(),
                thousands(all.ops_per_sec),
                ms(all.p50_ms),
                ms(all.p99_ms),
                all.errors,
                percent(round.cpu_busy),
                micros(round.server_cpu.and_then(|c| c.us_per_op)),
                cores(round.server_cpu.and_then(|c| c.cores)),
            );
            rounds[i].push(round);
        }
    }
    if let Some(mut log) = latency_log {
        log.flush()?;
    }
    let mut figures = Vec::new();
    for ((t, _, pid), rounds) in targets.iter().zip(rounds) {
        let mut names: Vec<String> = rounds.iter().flat_map(|r| r.ops.keys().cloned()).collect();
        names.sort();
        names.dedup();
        let mut median = BTreeMap::new();
        for name in names {
            let per: Vec<&OpSummary> = rounds.iter().filter_map(|r| r.ops.get(&name)).collect();
            median.insert(name, median_summary(&per));
        }
        let median_of = |f: fn(&Round) -> Option<f64>| {
            let values: Vec<f64> = rounds.iter().filter_map(f).collect();
            (!values.is_empty()).then(|| stats::median(&values))
        };
        let cpu_busy_median = median_of(|r| r.cpu_busy);
        let server_cpu_us_per_op_median = median_of(|r| r.server_cpu.and_then(|c| c.us_per_op));
        let server_cores_median = median_of(|r| r.server_cpu.and_then(|c| c.cores));
        figures.push(TargetFigures {
            target: t.label(),
            kind: t.kind().to_owned(),
            rounds,
            median,
            cpu_busy_median,
            pid: *pid,
            server_cpu_us_per_op_median,
            server_cores_median,
        });
    }
    let mut ratios = BTreeMap::new();
    if let [a, b] = figures.as_slice() {
        for (name, x) in &a.median {
            if let Some(y) = b.median.get(name) {
                let div = |p: f64, q: f64| if q > 0.0 { p / q } else { f64::NAN };
                let mut m = BTreeMap::from([
                    ("ops_per_sec".to_owned(), div(x.ops_per_sec, y.ops_per_sec)),
                    ("p50_ms".to_owned(), div(x.p50_ms, y.p50_ms)),
                    ("p90_ms".to_owned(), div(x.p90_ms, y.p90_ms)),
                    ("p99_ms".to_owned(), div(x.p99_ms, y.p99_ms)),
                    ("p999_ms".to_owned(), div(x.p999_ms, y.p999_ms)),
                ]);
                if name == "all"
                    && let (Some(p), Some(q)) =
                        (a.server_cpu_us_per_op_median, b.server_cpu_us_per_op_median)
                {
                    m.insert("server_cpu_us_per_op".to_owned(), div(p, q));
                }
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
    // The server's CPU covers every operation of the phase, so it is on the
    // "all" rows only.
    let server = |name: &str, v: Option<f64>, show: fn(Option<f64>) -> String| {
        if name == "all" {
            show(v)
        } else {
            String::new()
        }
    };
    for name in names {
        for f in figures {
            if let Some(s) = f.median.get(name) {
                rows.push(vec![
                    name.clone(),
                    f.kind.clone(),
                    thousands(s.ops_per_sec),
                    server(name, f.server_cpu_us_per_op_median, micros),
                    server(name, f.server_cores_median, cores),
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
            let cpu_ratio = match (a.server_cpu_us_per_op_median, b.server_cpu_us_per_op_median) {
                (Some(p), Some(q)) => format!("**{}**", ratio(p, q)),
                _ => "-".to_owned(),
            };
            rows.push(vec![
                name.clone(),
                format!("**{} / {}**", a.kind, b.kind),
                format!("**{}**", ratio(x.ops_per_sec, y.ops_per_sec)),
                if name == "all" {
                    cpu_ratio
                } else {
                    String::new()
                },
                String::new(),
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
            "op",
            "target",
            "ops/s",
            "server CPU us/op",
            "server cores",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "errors",
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
    md.push_str(
        "\nServer CPU us/op: user + system CPU time of the target's server process (`/proc/PID/stat`, all its threads) over each measured phase, per operation completed in it; server cores: that CPU time per second of the phase (`-`: no PID given). It holds better than ops/s when the machine is shared, though it still falls as load rises and batching or pipelining spreads more of the work.\n",
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::ProcessCpu;

    fn figures(kind: &str, ops_per_sec: f64, cpu: Option<ProcessCpu>) -> TargetFigures {
        let all = OpSummary {
            count: 1000,
            ops_per_sec,
            ..OpSummary::default()
        };
        let round = Round {
            elapsed_secs: 1.0,
            cpu_busy: None,
            server_cpu: cpu,
            ops: BTreeMap::from([("all".to_owned(), all.clone())]),
            samples: Vec::new(),
        };
        TargetFigures {
            target: format!("{kind}://x"),
            kind: kind.to_owned(),
            rounds: vec![round],
            median: BTreeMap::from([("all".to_owned(), all)]),
            cpu_busy_median: None,
            pid: cpu.map(|_| 1),
            server_cpu_us_per_op_median: cpu.and_then(|c| c.us_per_op),
            server_cores_median: cpu.and_then(|c| c.cores),
        }
    }

    fn spec() -> Spec {
        Spec {
            workload: Workload::Put,
            clients: 1,
            duration: Duration::from_secs(1),
            ops: None,
            rate: None,
            tgt_payload: 0,
            st_payload: 0,
            payload: 0,
            services: 0,
            logout_ratio: 1.0,
            keys_per_client: 0,
            prefill: 0,
            keep_samples: false,
        }
    }

    #[test]
    fn server_cpu_columns_and_their_ratio() {
        let cpu = |us| ProcessCpu::between(0.0, us * 1000.0 / 1e6, 1000, 1.0);
        let md = markdown(
            &[
                figures("tessera", 2000.0, cpu(20.0)),
                figures("redis", 1000.0, cpu(10.0)),
            ],
            &spec(),
            1,
        );
        assert!(
            md.contains("| ops/s | server CPU us/op | server cores |"),
            "{md}"
        );
        assert!(
            md.contains("| all | tessera | 2,000 | 20.0 | 0.02 |"),
            "{md}"
        );
        assert!(md.contains("| all | redis | 1,000 | 10.0 | 0.01 |"), "{md}");
        assert!(md.contains("| **2.00x** | **2.00x** |  |"), "{md}");
    }

    #[test]
    fn without_pids_the_server_cpu_columns_show_a_dash() {
        let md = markdown(
            &[
                figures("tessera", 2000.0, None),
                figures("redis", 1000.0, None),
            ],
            &spec(),
            1,
        );
        assert!(md.contains("| all | tessera | 2,000 | - | - |"), "{md}");
        assert!(md.contains("| **2.00x** | - |  |"), "{md}");
    }
}
