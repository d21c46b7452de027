//! The `twilio-sidecar` binary: `run`, `dev`, `check`, `validate`, `client-key`, `ca init`.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use twilio_sidecar::app::{Sidecar, StartError};
use twilio_sidecar::config::{Config, DEFAULT_ADMIN, DEFAULT_LISTEN, EXIT_CONFIG};
use twilio_sidecar::telemetry::{self, LogFormat};
use twilio_sidecar::{commands, dev};

// mimalloc's per-thread free lists suit the hot path, where every request allocates and frees
// a few small buffers on the same serving thread; glibc malloc spent ~6% of the proxy's CPU
// there under load (benches/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Outbound authenticating sidecar for Twilio's REST APIs.
#[derive(Debug, Parser)]
#[command(name = "twilio-sidecar", version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `warn,twilio_sidecar::access=info`.
    /// Defaults to $TWILIO_SIDECAR_LOG, then `info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the proxy against a built-in stand-in for Twilio, with fake credentials. Not for production.
    Dev {
        /// Proxy listen address.
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Admin listen address.
        #[arg(long, default_value = DEFAULT_ADMIN)]
        admin: SocketAddr,
    },
    /// Explain the decision for one request. Exit 0 allowed, 1 denied, 2 invalid input.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// HTTP method, e.g. POST.
        method: String,
        /// A Twilio URL (https://api.twilio.com/...), a path, or a URL on the sidecar's address.
        url: String,
        /// Explain the request as this [[clients]] entry makes it.
        #[arg(long)]
        client: Option<String>,
        /// A request parameter, decoded (`--param To=+15558675310`), for rules with
        /// parameter conditions; repeat for more. The URL's query counts too.
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
    },
    /// Transparent mode's local CA.
    Ca {
        #[command(subcommand)]
        action: CaCommand,
    },
    /// Print a new local secret for a [[clients]] table, and the secret_sha256 line for it.
    ClientKey {
        /// The client id to put in the printed table.
        #[arg(long)]
        id: Option<String>,
    },
    /// Load and lint a config; print every error and warning. Exit 64 on error.
    Validate {
        #[arg(long)]
        config: PathBuf,
        /// Do not read secret files and variables (lint a config away from where it runs).
        #[arg(long)]
        skip_secrets: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Write a new CA, name-constrained to twilio.com, as DIR/ca.pem (0644) and DIR/ca.key
    /// (0600). Never overwrites.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 1825)]
        days: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            method,
            url,
            client,
            params,
        } => finish(commands::check_as(
            &config,
            &method,
            &url,
            client.as_deref(),
            &params,
        )),
        Command::ClientKey { id } => finish(commands::client_key(id.as_deref())),
        Command::Ca {
            action: CaCommand::Init { dir, days },
        } => finish(commands::ca_init(&dir, days)),
        Command::Validate {
            config,
            skip_secrets,
        } => finish(commands::validate(&config, skip_secrets)),
        Command::Run { config } => {
            let _logs = telemetry::init(cli.log_format, cli.log_level.as_deref());
            serve(async move {
                let (config, warnings) = Config::load(&config)?;
                Sidecar::start(config, warnings, Vec::new()).await
            })
        }
        Command::Dev { listen, admin } => {
            let _logs = telemetry::init(cli.log_format, cli.log_level.as_deref());
            runtime_then(async move {
                dev::run(listen, admin, shutdown_signal(), |banner| {
                    println!("{banner}")
                })
                .await
            })
        }
    }
}

fn finish((text, code): (String, i32)) -> ExitCode {
    if code == 0 {
        print!("{text}");
    } else {
        eprint!("{text}");
        if !text.ends_with('\n') {
            eprintln!();
        }
    }
    ExitCode::from(code as u8)
}

/// Starts the sidecar built by `start`, serves until SIGTERM/SIGINT, reloads on SIGHUP.
fn serve(start: impl std::future::Future<Output = Result<Sidecar, StartError>>) -> ExitCode {
    runtime_then(async move {
        let sidecar = start.await?;
        // Every handler is registered before `serve` logs "listening": a supervisor may
        // signal as soon as it reads that line, and an unregistered SIGHUP would kill the
        // process with the default action instead of reloading it.
        let shutdown = shutdown_signal();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(mut hup) => {
                    let reloader = sidecar.reloader.clone();
                    tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            info!("SIGHUP: reloading config");
                            // Failures are logged and counted by the reloader.
                            let _ = reloader.reload("signal").await;
                        }
                    });
                }
                Err(e) => warn!(error = %e, "cannot handle SIGHUP; reload with POST /reload"),
            }
        }
        sidecar.serve(shutdown).await;
        Ok(())
    })
}

fn runtime_then(fut: impl std::future::Future<Output = Result<(), StartError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twilio-sidecar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Config(e)) => {
            error!("config is not usable; not starting");
            eprintln!("{e}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(e) => {
            // Once, through the log (stderr), so log collectors see it too.
            error!(error = %e, "cannot start");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are registered when this is called, not
/// when the future is first polled, so a signal sent right after start-up is not lost to the
/// default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        if let Err(e) = term.as_ref().and(int.as_ref()) {
            // The default action still stops the process, only without draining.
            warn!(error = %e, "cannot handle SIGTERM/SIGINT; shutdown will not drain");
        }
        async move {
            let received = |stream: std::io::Result<tokio::signal::unix::Signal>| async move {
                match stream {
                    Ok(mut stream) => {
                        stream.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = received(term) => info!("SIGTERM received"),
                _ = received(int) => info!("SIGINT received"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `NAME=VALUE` for `check --param`.
fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}
