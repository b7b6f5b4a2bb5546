//! `tessera-bench`: load generator for Tessera, side by side with Redis.
//!
//! See docs/benchmarks.md and `scripts/bench`.

mod cluster;
mod load;
mod machine;
mod memory;
mod report;
mod run;
mod stats;
mod storm;
mod target;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tessera-bench",
    version,
    about = "Load generator for Tessera, side by side with Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A workload (cas, put, get, touch, consume, delete) on one target or two.
    Run(run::RunArgs),
    /// Replication lag and catch-up of three nodes this command starts.
    Cluster(cluster::ClusterArgs),
    /// Resident memory per ticket after loading N tickets.
    Memory(memory::MemoryArgs),
    /// N tickets expiring in the same second under a read load.
    ExpiryStorm(storm::StormArgs),
    /// Print a TCP port free on 127.0.0.1 (for scripts).
    FreePort,
    /// Join the JSON files other commands wrote into one JSON and one Markdown file.
    Report {
        #[arg(long)]
        json_out: PathBuf,
        #[arg(long)]
        md_out: PathBuf,
        /// The command line shown in the report.
        #[arg(long, default_value = "scripts/bench")]
        command: String,
        inputs: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Cluster(args) => cluster::run(args).await,
            Command::Memory(args) => memory::run(args).await,
            Command::ExpiryStorm(args) => storm::run(args).await,
            Command::FreePort => {
                let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
                println!("{}", listener.local_addr()?.port());
                Ok(())
            }
            Command::Report {
                json_out,
                md_out,
                command,
                inputs,
            } => report::merge(&inputs, &json_out, &md_out, &command),
        }
    })
}
