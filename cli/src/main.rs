//! `ckpt`: look at, verify and tidy checkpoint directories, on the Rust
//! core of ckpt-manager. Every decision (what is latest, intact, kept,
//! pruned, recovered) is the library's; this crate parses arguments and
//! prints. A directory or prefix may be an `s3://` URL, configured by the
//! `AWS_*` variables and files as the library is. Exit status: 0 ok,
//! 1 damaged or "no", 2 usage or I/O error.

mod diff;
mod export;
mod location;
mod output;
mod read;
mod tidy;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Look at, verify and tidy checkpoint directories.
#[derive(Parser)]
#[command(name = "ckpt", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One row per checkpoint: number, step, time, size, what keeps it, whether it is intact
    List {
        directory: String,
        /// Check CRC32C of every file (default: sizes and existence)
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        rules: RuleArgs,
        #[arg(long)]
        json: bool,
    },
    /// A checkpoint's manifest and, for the built-in saver, its tensor table
    Show {
        prefix: String,
        #[arg(long)]
        json: bool,
    },
    /// Full CRC32C check of the latest checkpoint (DIR), every one (--all) or one PREFIX:
    /// every file, and every saved box of every tensor
    Verify {
        target: String,
        /// Every checkpoint of the directory
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// The latest intact checkpoint's prefix, as tf.train.latest_checkpoint prints it
    Latest {
        directory: String,
        #[arg(long)]
        json: bool,
    },
    /// The global tensors of a checkpoint as one safetensors file (streamed; a
    /// rank-local tensor of several ranks becomes NAME.rank-R)
    Export {
        prefix: String,
        /// The file to write (a local path), replaced when complete
        out: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Per tensor of the built-in saver: what differs between two checkpoints
    Diff {
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Apply the retention rules now: delete what none keeps (takes a local directory's lock)
    Prune {
        directory: String,
        /// Show what would be removed; change nothing (takes no lock)
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        rules: RuleArgs,
        #[arg(long)]
        json: bool,
    },
    /// Finish or remove what interrupted saves left (takes a local directory's lock)
    Recover {
        directory: String,
        /// Show what would be done; change nothing (takes no lock)
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

/// The retention options, which are not stored on disk.
#[derive(Args, Clone, Default)]
struct RuleArgs {
    /// Keep the newest N (max_to_keep)
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// Preserve one every H hours of those no rule keeps
    #[arg(long, value_name = "H")]
    keep_hours: Option<f64>,
    /// Keep the best K by a metric: METRIC:min|max:K
    #[arg(long, value_name = "METRIC:min|max:K", value_parser = parse_keep_best)]
    keep_best: Option<ckpt_manager::KeepBest>,
    /// Keep every checkpoint whose number is a multiple of P
    #[arg(long, value_name = "P")]
    keep_period: Option<u64>,
}

impl RuleArgs {
    fn any(&self) -> bool {
        self.keep.is_some()
            || self.keep_hours.is_some()
            || self.keep_best.is_some()
            || self.keep_period.is_some()
    }
}

fn parse_keep_best(text: &str) -> Result<ckpt_manager::KeepBest, String> {
    let mut parts = text.rsplitn(3, ':');
    let (k, mode, metric) = match (parts.next(), parts.next(), parts.next()) {
        (Some(k), Some(mode), Some(metric)) if !metric.is_empty() => (k, mode, metric),
        _ => return Err("expected METRIC:min|max:K, e.g. val_loss:min:3".into()),
    };
    let mode = match mode {
        "min" => ckpt_manager::MetricMode::Min,
        "max" => ckpt_manager::MetricMode::Max,
        _ => return Err(format!("'{mode}' is not min or max")),
    };
    let k = k
        .parse::<usize>()
        .ok()
        .filter(|&k| k > 0)
        .ok_or_else(|| format!("'{k}' is not a positive number"))?;
    Ok(ckpt_manager::KeepBest {
        metric: metric.to_owned(),
        mode,
        k,
    })
}

/// Why a command did not succeed, and its exit status.
#[derive(Debug)]
pub enum Failure {
    /// Damaged, or the answer is "no" (exit 1); the message may be empty
    /// when the output already says it.
    No(String),
    /// Usage or I/O (exit 2).
    Trouble(String),
}

impl From<ckpt_manager::Error> for Failure {
    fn from(err: ckpt_manager::Error) -> Self {
        use ckpt_manager::Error;
        match err {
            Error::Damaged { .. } => Failure::No(err.to_string()),
            Error::Locked { ref path, holder } => Failure::Trouble(format!(
                "the directory is locked by {} ({}): a training run or another tool is writing \
                 it; stop it first, or use --dry-run",
                holder.map_or("another process".to_owned(), |pid| format!("process {pid}")),
                path.display()
            )),
            err => Failure::Trouble(err.to_string()),
        }
    }
}

pub type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::List {
            directory,
            verify,
            rules,
            json,
        } => read::list(&directory, verify, &rules, json),
        Command::Show { prefix, json } => read::show(&prefix, json),
        Command::Verify { target, all, json } => read::verify(&target, all, json),
        Command::Latest { directory, json } => read::latest(&directory, json),
        Command::Export { prefix, out, json } => export::run(&prefix, &out, json),
        Command::Diff { a, b, json } => diff::run(&a, &b, json),
        Command::Prune {
            directory,
            dry_run,
            rules,
            json,
        } => tidy::prune(&directory, dry_run, &rules, json),
        Command::Recover {
            directory,
            dry_run,
            json,
        } => tidy::recover(&directory, dry_run, json),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::No(message)) => {
            if !message.is_empty() {
                eprintln!("ckpt: {message}");
            }
            ExitCode::from(1)
        }
        Err(Failure::Trouble(message)) => {
            eprintln!("ckpt: {message}");
            ExitCode::from(2)
        }
    }
}
