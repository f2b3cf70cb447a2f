//! `tlens`: the transferlens command line.
//!
//! Every command has `--help` with an example. Errors go to stderr as one line: exit status 2 for
//! bad usage, 1 for a failure; never a panic message. A closed stdout ends `tlens` by SIGPIPE, as
//! other Unix tools; SIGINT and SIGTERM leave no partial output file.

mod align;
mod analyses;
mod checkpoints;
mod cka;
mod cka_stats;
mod common;
mod eval_server;
mod progress;
mod study;
mod weights;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tlens",
    version,
    about = "What is being transferred in transfer learning? Linear CKA, weight-space distances and the study's other analyses, for checkpoints and activations saved as safetensors.",
    after_help = "Examples:\n  tlens inspect model.safetensors\n  tlens distance pt_t1.safetensors pt_t2.safetensors --json\n  tlens interpolate a.safetensors b.safetensors --lambda 0.5 --output mid.safetensors\n  tlens cka acts_pretrained.safetensors acts_finetuned.safetensors\n  \
tlens curve a.safetensors b.safetensors --lambdas -1,-0.5,0,0.5,1,1.5,2 --eval-server 'python3 server.py'\n  \
tlens rewind init.safetensors final.safetensors --eval-server 'python3 server.py'\n  \
tlens criticality init.safetensors final.safetensors --eval-server 'python3 server.py' --samples 50000\n  \
tlens align a.safetensors b.safetensors --output b_aligned.safetensors\n  \
tlens study --quick"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Inspect(weights::InspectArgs),
    Distance(weights::DistanceArgs),
    Interpolate(weights::InterpolateArgs),
    Cka(cka::CkaArgs),
    Curve(analyses::CurveArgs),
    Rewind(analyses::RewindArgs),
    Criticality(analyses::CriticalityArgs),
    Align(align::AlignArgs),
    Study(study::StudyArgs),
}

fn main() -> ExitCode {
    common::handle_signals();
    common::quiet_panics();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Inspect(args) => weights::inspect(args),
        Command::Distance(args) => weights::distance(args),
        Command::Interpolate(args) => weights::interpolate(args),
        Command::Cka(args) => cka::run(args),
        Command::Curve(args) => analyses::curve(args),
        Command::Rewind(args) => analyses::rewind(args),
        Command::Criticality(args) => analyses::criticality(args),
        Command::Align(args) => align::run(args),
        Command::Study(args) => study::run(args),
    };
    common::wait_if_signalled();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tlens: {e}");
            ExitCode::from(1)
        }
    }
}
