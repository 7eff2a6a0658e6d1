//! The `roster` binary: parse the command line, then serve or run a client command.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use roster_cli::{Cli, Command, GlobalArgs, run_client};
use roster_registry::config::Config;
use roster_registry::server::Server;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Dns(args) => dns(&cli.global, args).await,
        Command::Agent(args) => agent(&cli.global, args).await,
        Command::SyncK8s(args) => sync_k8s(&cli.global, args).await,
        Command::Client(command) => run_client(&cli.global, command, &mut std::io::stdout().lock())
            .await
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roster: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: many of our errors already put
/// their cause in their own message, and anyhow's `{:#}` would repeat it.
fn chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

async fn serve(args: &roster_registry::config::ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args)?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        .with_ansi(colour())
        .init();
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    let shutdown = cancel_on_signal();
    let server = Server::start(&config, listener, shutdown).await?;
    server.wait().await.context("server failed")
}

async fn dns(global: &GlobalArgs, args: &roster_cli::command::DnsArgs) -> anyhow::Result<()> {
    let client = client_command(global, &args.log)?;
    let config = roster_dns::DnsConfig {
        domain: args.dns_domain.clone(),
        ttl: args.dns_ttl,
        ..roster_dns::DnsConfig::default()
    };
    let shutdown = cancel_on_signal();
    let front =
        roster_cli::remote::RemoteDns::start(client, args.dns_addr, config, shutdown).await?;
    front.wait().await.context("DNS front end failed")
}

async fn agent(global: &GlobalArgs, args: &roster_cli::command::AgentArgs) -> anyhow::Result<()> {
    let client = client_command(global, &args.log)?;
    let prober = std::sync::Arc::new(roster_registry::checks::probe::NetProber::new());
    let agent = roster_cli::agent::Agent::new(client, prober);
    let shutdown = cancel_on_signal();
    agent.run(&args.config, shutdown).await.map_err(Into::into)
}

async fn sync_k8s(
    global: &GlobalArgs,
    args: &roster_cli::command::SyncK8sArgs,
) -> anyhow::Result<()> {
    let roster = client_command(global, &args.log)?;
    // In-cluster (the pod's ServiceAccount) or KUBECONFIG / ~/.kube/config;
    // `default_client` installs rustls' crypto provider before it connects.
    // `{e}` already carries the cause: printed as a chain it would repeat.
    let kube = roster_cli::k8s::default_client()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = cancel_on_signal();
    roster_cli::k8s::run(args.settings(), kube, roster, shutdown)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Logs per `log` and a client for `--registry` (with `--token`, `--ca-cert`
/// and the client certificate when given):
/// the start of every long-running command that follows a registry.
fn client_command(global: &GlobalArgs, log: &str) -> anyhow::Result<roster_client::RosterClient> {
    let filter = tracing_subscriber::EnvFilter::try_new(log).context("invalid --log filter")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .init();
    Ok(roster_cli::client::connect(global)?)
}

/// A token cancelled on SIGTERM or Ctrl-C.
fn cancel_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received, shutting down");
        stop.cancel();
    });
    shutdown
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Colour in logs only on a terminal: a log file or journal gets plain text.
fn colour() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout())
}
