//! `meshgate-bench`: the benchmark driver behind `bench/run`.
//!
//! `meshgate-bench pipeline --case C --iterations N` runs the pipeline alone
//! N times on fixture frames (used under callgrind to count instructions per
//! packet); `meshgate-bench run` measures the three forwarding paths in the
//! namespace lab (see bench/README.md).

mod pipeline_count;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "meshgate-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the pipeline alone on fixture frames.
    Pipeline {
        /// new, established or reply.
        #[arg(long)]
        case: String,
        #[arg(long, default_value_t = 1_000_000)]
        iterations: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Pipeline { case, iterations } => {
            let ns = pipeline_count::run(&case, iterations)?;
            println!("{case}: {iterations} packets, {ns:.1} ns/packet");
            Ok(())
        }
    }
}
