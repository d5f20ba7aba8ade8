//! The `heartwire` command: `heartwire serve` runs a server, `heartwire connect` a client,
//! `heartwire bench` measures a server, `heartwire token` mints test tokens.

mod connect;
mod hook_args;
mod http_args;
mod serve_args;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use heartwire::http::HttpService;
use heartwire::ServerBuilder;
use tokio::signal::unix::{signal, SignalKind};
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
    /// Run the chat/push server (protocol v1, newline-delimited JSON over TCP).
    Serve(Box<ServeArgs>),
    /// Mint an HS256 token for `hello.token`, for testing a server run with --jwt-secret.
    Token(TokenArgs),
    /// Connect to a server: print received messages as JSON lines on stdout, status on
    /// stderr, publish stdin lines; reconnects through server restarts.
    Connect(ConnectArgs),
    /// Load a server with many connections and measure it (idle, fanout, detect, churn).
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

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("heartwire: {e}");
            return ExitCode::from(2);
        }
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
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on {}", server.local_addr());
        if let Some(http) = &http {
            let _ = writeln!(stdout, "http on {}", http.local_addr());
        }
        let _ = stdout.flush();
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("heartwire: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down; a second signal exits at once");
        actix_rt::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("heartwire: second signal, exiting now");
            std::process::exit(130);
        });
        let drained = server.shutdown().await;
        // After the drain, so that `/readyz` reported it while it lasted.
        if let Some(http) = http {
            http.stop().await;
        }
        tracing::info!(drained, "stopped");
        ExitCode::SUCCESS
    });
    code
}
