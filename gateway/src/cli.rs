//! The command line: `isogate serve`, `isogate check`, `isogate hash-key`, `isogate schema`,
//! `isogate explain`.

use clap::{Parser, Subcommand, ValueEnum};
use isogate_config::Config;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// isogate: run AI-agent code in per-tenant QuickJS isolates behind one gateway.
#[derive(Debug, Parser)]
#[command(name = "isogate", version, about)]
pub struct Cli {
    /// Log format (default: `pretty` when stderr is a terminal, else `json`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
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
    /// Print the JSON Schema of the configuration file (checked in as
    /// deploy/isogate.schema.json).
    Schema,
    /// Explain what the gateway would do with one outbound fetch() of a tenant's Worker,
    /// without sending it.
    ///
    /// Reports the normalised target, the egress decision (rule or reason),
    /// the credential that would be injected (its name and where it goes, never its value),
    /// the rate limits that apply, and the SSRF guard's verdict on the addresses the host
    /// resolves to (the only network access is that DNS lookup).
    #[command(after_help = "\
Exit status:
  0  the request is allowed by a rule and passes the SSRF guard
  1  the configuration is invalid, the tenant is unknown, or the arguments are wrong
  2  the request would be denied (also in report mode, where it would still be sent and
     counted as report_deny), refused by the SSRF guard, the host does not resolve, or
     the URL would be refused

Examples:
  isogate explain -c isogate.yaml -t demo GET https://api.github.com/repos/o/r
  isogate explain -c isogate.yaml -t demo --json POST http://10.0.0.5:8080/hook")]
    Explain {
        /// YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The tenant whose egress policy applies.
        #[arg(long, short)]
        tenant: String,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// The request method, e.g. GET.
        method: String,
        /// The URL the Worker would pass to fetch().
        url: String,
    },
}

/// What `RUST_LOG` defaults to: isogate's lines from `info`, pingora's (its start-up and
/// service chatter) from `warn`.
pub const DEFAULT_LOG_FILTER: &str = "info,pingora=warn,pingora_core=warn,pingora_proxy=warn";

/// The format when none is asked for: for people at a terminal, for machines otherwise.
fn default_log_format() -> LogFormat {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The most isolate threads (channel lanes) a worker process accepts; the configuration bounds
/// `pool.threads` lower.
const MAX_LANES: usize = 1024;

/// The worker process (`isogate __worker`, started by the supervisor with an empty environment
/// and its channel at fd 3): confines itself, then serves invocations until the channel closes.
/// It reads no configuration file and no environment variable.
pub fn worker_main() -> ExitCode {
    // Logging first: it must not need anything (a terminal check, a file) after confinement.
    init_logging(LogFormat::Json);
    let args: Vec<String> = std::env::args().skip(2).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let parent = arg("--parent").and_then(|p| u32::try_from(p).ok());
    let Some(parent) = parent else {
        tracing::error!("isogate __worker is started by the gateway (--parent PID missing)");
        return ExitCode::from(64);
    };
    // One lane (two channels) per isolate thread after the control channel.
    let Some(lanes) = arg("--lanes")
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=MAX_LANES).contains(n))
    else {
        tracing::error!(
            "isogate __worker is started by the gateway (--lanes N missing or out of range)"
        );
        return ExitCode::from(64);
    };
    let served = isogate_pool::worker::serve(
        isogate_pool::confine::Confinement::worker(
            arg("--data-limit"),
            parent,
            isogate_pool::wire::channels(lanes),
        ),
        lanes,
    );
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "worker process failed");
            ExitCode::from(70)
        }
    }
}

/// Runs the CLI.
///
/// Argument errors exit 1 (not clap's default 2), so that `isogate explain`'s exit status 2
/// always means "denied or refused".
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Check { config } => match Config::load_lowered(&config) {
            Ok((c, _)) => {
                // The certificates are read as `serve` reads them (paths relative to the working
                // directory): their keys must match and they must be valid now.
                let now = crate::server::unix_now() as i64;
                let (lines, certs_ok) = crate::tls::report(&c.tls.certificates, now);
                for line in &lines {
                    if certs_ok {
                        println!("{line}");
                    } else {
                        eprintln!("{}: {line}", config.display());
                    }
                }
                if !certs_ok {
                    return ExitCode::from(1);
                }
                let routes: usize = c.tenants.iter().map(|t| t.routes.len()).sum();
                let plural = |n: usize| if n == 1 { "" } else { "s" };
                println!(
                    "{}: ok ({} tenant{}, {routes} public route{})",
                    config.display(),
                    c.tenants.len(),
                    plural(c.tenants.len()),
                    plural(routes)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::from(1)
            }
        },
        Command::Schema => match serde_json::to_string_pretty(&Config::json_schema()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("isogate: cannot serialise the schema: {e}");
                ExitCode::from(1)
            }
        },
        Command::Explain {
            config,
            tenant,
            json,
            method,
            url,
        } => explain(&config, &tenant, json, &method, &url),
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
            init_logging(cli.log_format.unwrap_or_else(default_log_format));
            let path = config;
            let loaded = match &path {
                Some(path) => {
                    Config::load_lowered(path).map_err(|e| format!("{}: {e}", path.display()))
                }
                None => {
                    let c = Config::embedded_default();
                    eprintln!(
                        "isogate: no --config given, running the embedded development configuration.\n\
                         Try:\n  curl -s -H 'Authorization: Bearer dev-key' -d '{{\"code\":\"async (env) => ({{ hello: \\\"world\\\" }})\"}}' http://{}/v1/execute\n\
                         Health: http://{}/healthz",
                        c.listen.ingress, c.listen.admin
                    );
                    c.lower().map(|lowered| (c, lowered)).map_err(|e| {
                        format!(
                            "embedded configuration: {}",
                            isogate_config::ConfigError::Invalid(e)
                        )
                    })
                }
            };
            let (config, lowered) = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            match crate::server::run(config, lowered, path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("isogate: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `isogate explain`.
fn explain(path: &Path, tenant: &str, json: bool, method: &str, url: &str) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    };
    match crate::explain::explain(&config, tenant, method, url) {
        Ok(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("isogate: cannot serialise the report: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{report}");
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("isogate explain: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
