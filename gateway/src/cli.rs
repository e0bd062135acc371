//! The command line: `isogate serve`, `isogate check`, `isogate hash-key`.

use clap::{Parser, Subcommand, ValueEnum};
use isogate_config::Config;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::ExitCode;

/// isogate: run AI-agent code in per-tenant QuickJS isolates behind one gateway.
#[derive(Debug, Parser)]
#[command(name = "isogate", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway. Without --config, runs an embedded development configuration on
    /// loopback (tenant `dev`, API key `dev-key`).
    Serve {
        /// YAML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; exits 1 with the errors (each naming its YAML path).
    Check {
        /// YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Generate a random API key and print it with the sha256 to put in the config.
    HashKey,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Runs the CLI.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} tenant{})",
                    config.display(),
                    c.tenants.len(),
                    if c.tenants.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::from(1)
            }
        },
        Command::HashKey => {
            let mut bytes = [0u8; 32];
            if getrandom::getrandom(&mut bytes).is_err() {
                eprintln!("no randomness available");
                return ExitCode::from(1);
            }
            let key = format!("isogate_{}", hex::encode(bytes));
            let digest = hex::encode(Sha256::digest(key.as_bytes()));
            println!("api key: {key}");
            println!("sha256:  {digest}");
            println!("config:  api_keys: [{{ sha256: \"{digest}\" }}]");
            ExitCode::SUCCESS
        }
        Command::Serve { config } => {
            init_logging(cli.log_format);
            let config = match config {
                Some(path) => match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("{}: {e}", path.display());
                        return ExitCode::from(1);
                    }
                },
                None => {
                    let c = Config::embedded_default();
                    eprintln!(
                        "isogate: no --config given, running the embedded development configuration.\n\
                         Try:\n  curl -s -H 'Authorization: Bearer dev-key' -d '{{\"code\":\"async (env) => ({{ hello: \\\"world\\\" }})\"}}' http://{}/v1/execute\n\
                         Health: http://{}/healthz",
                        c.listen.ingress, c.listen.admin
                    );
                    c
                }
            };
            match crate::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("isogate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
