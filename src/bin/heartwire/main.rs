//! The `heartwire` command: `heartwire serve` runs a server, `heartwire connect` a client,
//! `heartwire bench` measures a server, `heartwire token` mints test tokens.

mod connect;
mod hook_args;
mod http_args;
mod serve_args;
mod ws_args;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use heartwire::http::HttpService;
use heartwire::ws::WsService;
use heartwire::{ServerBuilder, Shutdown};
use tracing_subscriber::EnvFilter;

use self::connect::ConnectArgs;
use self::serve_args::{ServeArgs, TokenArgs};

#[derive(Parser)]
#[command(
    name = "heartwire",
    version,
    about = "Long-lived TCP connections that stay healthy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the chat/push server (protocol v1, newline-delimited JSON over TCP, and over
    /// WebSocket with --ws).
    Serve(Box<ServeArgs>),
    /// Mint an HS256 token for `hello.token`, for testing a server run with --jwt-secret.
    Token(TokenArgs),
    /// Connect to a server: print received messages as JSON lines on stdout, status on
    /// stderr, publish stdin lines; reconnects through server restarts.
    Connect(ConnectArgs),
    /// Load a server with many connections and measure it (idle, fanout, detect, churn, chat).
    Bench(Box<heartwire_bench::BenchArgs>),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Token(args) => token(args),
        Command::Connect(args) => connect::run(args),
        Command::Bench(args) => heartwire_bench::run_cli(*args),
    }
}

fn token(args: TokenArgs) -> ExitCode {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| now.as_secs())
        .saturating_add(args.ttl.as_secs());
    let claims = heartwire::Claims {
        sub: args.user,
        exp,
        rooms: args.rooms,
        send: args.send,
    };
    match heartwire::mint_claims(&args.secret, claims) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("heartwire: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reports a usage error (bad flags, environment or config file): exit code 2.
fn usage_error(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("heartwire: {error}");
    ExitCode::from(2)
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let system = actix_rt::System::new();
    let code = system.block_on(async move {
        let server = match ServerBuilder::new(config.clone()).start() {
            Ok(server) => server,
            Err(e) => {
                eprintln!("heartwire: {e}");
                return ExitCode::FAILURE;
            }
        };
        let http = match HttpService::start(&server, &config) {
            Ok(http) => http,
            Err(e) => {
                eprintln!("heartwire: {e}");
                server.shutdown().await;
                return ExitCode::FAILURE;
            }
        };
        let ws = match WsService::start(&server, &config) {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("heartwire: {e}");
                server.shutdown().await;
                if let Some(http) = http {
                    http.stop().await;
                }
                return ExitCode::FAILURE;
            }
        };
        let run = server.run_until_signal();
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on {}", server.local_addr());
        if let Some(http) = &http {
            let _ = writeln!(stdout, "http on {}", http.local_addr());
        }
        if let Some(ws) = &ws {
            let _ = writeln!(stdout, "ws on {}", ws.local_addr());
        }
        let _ = stdout.flush();
        let outcome = run.await;
        // The drain closed the WebSocket sessions too; stop taking new ones.
        if let Some(ws) = ws {
            ws.stop().await;
        }
        // After the drain, so that `/readyz` reported it while it lasted.
        if let Some(http) = http {
            http.stop().await;
        }
        match outcome {
            Ok(Shutdown::Interrupted) => ExitCode::from(130),
            Ok(shutdown) => {
                tracing::info!(?shutdown, "stopped");
                ExitCode::SUCCESS
            }
            Err(failed) => {
                eprintln!("heartwire: {failed}");
                ExitCode::FAILURE
            }
        }
    });
    code
}
