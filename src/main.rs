//! The `kmeta` command line.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kmeta",
    version,
    about = "A KIP-500-style Kafka metadata controller quorum"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Storage tools.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
    /// Run a whole local cluster in one process (not yet implemented).
    Dev,
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Print a new random cluster id.
    RandomUuid,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Storage {
            command: StorageCommand::RandomUuid,
        } => {
            println!("{}", kmeta::random_cluster_id());
            ExitCode::SUCCESS
        }
        Command::Dev => {
            eprintln!("kmeta dev: not yet implemented (the controller quorum and brokers are not built yet; see README)");
            ExitCode::from(2)
        }
    }
}
