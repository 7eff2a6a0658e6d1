//! The `roster` command line (clap): `serve`, the registrars (`dns`, `agent`,
//! `sync-k8s`) and the client commands that talk to a running registry.

use std::time::Duration;

use clap::{Parser, Subcommand};
use roster_api::{CheckDefinition, duration};
use roster_registry::config::ServeArgs;

/// roster: a service discovery registry.
#[derive(Debug, Parser)]
#[command(
    name = "roster",
    version,
    // The line `roster --help` has always printed (it was roster-registry's
    // package description when the binary lived there).
    about = "The roster service registry: catalog, leases, HTTP API and the roster binary",
    propagate_version = true
)]
pub struct Cli {
    /// The flags every subcommand accepts.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every subcommand accepts (`global`): where the registry is, how
/// to authenticate to it, how to print.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Registry to talk to (client subcommands): a base URL, or several
    /// separated by commas (the nodes of a cluster; calls fail over between them).
    #[arg(
        long,
        global = true,
        env = "ROSTER_REGISTRY",
        default_value = "http://127.0.0.1:8500"
    )]
    pub registry: String,
    /// Token for a registry with ACLs on (client subcommands and `dns`).
    #[arg(long, global = true, env = "ROSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table (client subcommands).
    #[arg(long, global = true)]
    pub json: bool,
    /// CA certificate (PEM) to trust for an `https://` registry, instead of
    /// the system's roots: a private CA, or the cluster's peer CA (client
    /// subcommands, `agent`, `sync-k8s` and `dns`).
    #[arg(long, global = true, env = "ROSTER_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a registry that verifies its clients;
    /// needs --client-key.
    #[arg(
        long,
        global = true,
        env = "ROSTER_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "ROSTER_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<std::path::PathBuf>,
}

/// What `roster` runs: the server, a long-running process that follows a
/// registry, or one client call.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry server.
    Serve(Box<ServeArgs>),
    /// Run only a DNS front end that follows the registry given by --registry
    /// (scale DNS out apart from the registry).
    Dns(DnsArgs),
    /// Register the services of a file and keep them registered: run their
    /// checks locally, heartbeat, deregister on exit, reload on SIGHUP.
    Agent(AgentArgs),
    /// Register Kubernetes Services and their endpoints in the registry given
    /// by --registry, and keep them in step (see docs/registrars.md, "roster
    /// sync-k8s"). Needs get/list/watch on services, endpointslices and
    /// namespaces.
    #[command(name = "sync-k8s")]
    SyncK8s(SyncK8sArgs),
    /// One call to a running registry (flattened: `roster register …`, not
    /// `roster client register …`).
    #[command(flatten)]
    Client(ClientCommand),
}

/// The client commands: one call to the registry given by --registry, its
/// answer printed (see [`crate::run_client`]).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register (or replace) an instance.
    Register(RegisterArgs),
    /// Remove an instance.
    Deregister {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Renew an instance's lease once.
    Heartbeat {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Put an instance in maintenance, or take it out with --off.
    Maintenance {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
        /// End maintenance instead of starting it.
        #[arg(long)]
        off: bool,
        /// Why (shown to operators).
        #[arg(long)]
        reason: Option<String>,
    },
    /// List services.
    Services,
    /// Look at or change the members of a replicated registry.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Save the catalog to a file, or restore it from one.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Print the instances of services now and after every change (Ctrl-C stops).
    Watch {
        /// Service names.
        #[arg(required = true)]
        services: Vec<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// List the instances of a service.
    Instances {
        /// Service name.
        service: String,
        /// Include critical instances.
        #[arg(long)]
        all: bool,
        /// Only instances with this tag (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
}

/// Flags of `roster sync-k8s`.
#[derive(Debug, clap::Args)]
pub struct SyncK8sArgs {
    /// Roster service name of a Kubernetes Service: `name` or `name-namespace`
    /// (the `roster.io/service-name` annotation overrides both).
    #[arg(long, env = "ROSTER_SYNC_NAMING", default_value = "name",
          value_parser = ["name", "name-namespace"])]
    pub naming: String,
    /// Sync Services that carry no `roster.io/sync` annotation, on themselves
    /// or their Namespace.
    #[arg(long, env = "ROSTER_SYNC_DEFAULT", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub default_sync: bool,
    /// Register not-ready endpoints as critical instances (`false`: leave
    /// them out).
    #[arg(long, env = "ROSTER_SYNC_INCLUDE_NOT_READY", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub include_not_ready: bool,
    /// Namespaces never synced, comma-separated.
    #[arg(
        long,
        env = "ROSTER_SYNC_EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,kube-public",
        value_name = "NS,..."
    )]
    pub exclude_namespaces: Vec<String>,
    /// Time between full reconciles against the registry (they also refill a
    /// registry that restarted empty).
    #[arg(long, env = "ROSTER_SYNC_RESYNC", default_value = "60s",
          value_name = "DURATION", value_parser = duration::parse)]
    pub resync: std::time::Duration,
    /// Longest pause between retries after registry errors.
    #[arg(long, env = "ROSTER_SYNC_MAX_BACKOFF", default_value = "30s",
          value_name = "DURATION", value_parser = duration::parse)]
    pub max_backoff: std::time::Duration,
    /// Log filter.
    #[arg(long, env = "ROSTER_LOG", default_value = "info")]
    pub log: String,
}

impl SyncK8sArgs {
    /// The registrar's settings.
    pub fn settings(&self) -> crate::k8s::SyncSettings {
        // `naming` is restricted by value_parser, so parse cannot fail.
        crate::k8s::SyncSettings {
            naming: self.naming.parse().unwrap_or_default(),
            default_sync: self.default_sync,
            include_not_ready: self.include_not_ready,
            exclude_namespaces: self
                .exclude_namespaces
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            resync: self.resync,
            max_backoff: self.max_backoff,
        }
    }
}

/// Flags of `roster agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// TOML file of services (see docs/registrars.md, "roster agent").
    #[arg(long, env = "ROSTER_AGENT_CONFIG", value_name = "FILE")]
    pub config: std::path::PathBuf,
    /// Log filter.
    #[arg(long, env = "ROSTER_LOG", default_value = "info")]
    pub log: String,
}

/// Flags of `roster dns`.
#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    /// DNS listen address, UDP and TCP.
    #[arg(long, env = "ROSTER_DNS_ADDR", default_value = "127.0.0.1:8600")]
    pub dns_addr: std::net::SocketAddr,
    /// Domain answered for.
    #[arg(long, env = "ROSTER_DNS_DOMAIN", default_value = "roster")]
    pub dns_domain: String,
    /// TTL of positive answers, in seconds.
    #[arg(long, env = "ROSTER_DNS_TTL", default_value_t = 0)]
    pub dns_ttl: u32,
    /// Log filter.
    #[arg(long, env = "ROSTER_LOG", default_value = "info")]
    pub log: String,
}

/// `roster operator …`.
#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Raft membership of a replicated registry.
    #[command(subcommand)]
    Raft(RaftCommand),
}

/// `roster operator raft …`.
#[derive(Debug, Subcommand)]
pub enum RaftCommand {
    /// List the members: id, address, voter, leader, last log index known.
    ListPeers,
    /// Add the node whose HTTP API is at ADDR (`host:port`); it catches up as a
    /// learner first, then votes.
    AddPeer {
        /// `host:port` of the new node.
        addr: String,
    },
    /// Remove node ID (as `list-peers` shows it).
    RemovePeer {
        /// Node id.
        id: u64,
    },
}

/// `roster snapshot …`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write the whole catalog to FILE (versioned JSON).
    Save {
        /// Output file.
        file: std::path::PathBuf,
    },
    /// Replace the whole catalog with the contents of FILE. Leases get the
    /// registry's grace period so restored instances can heartbeat.
    Restore {
        /// Snapshot file.
        file: std::path::PathBuf,
    },
}

/// Flags of `roster register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// Service name.
    pub service: String,
    /// Instance id, unique in the registry.
    pub id: String,
    /// Port.
    #[arg(long)]
    pub port: u16,
    /// IP address or hostname [default: the address the registry sees us from].
    #[arg(long)]
    pub address: Option<String>,
    /// Tag (repeat for several).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Metadata as KEY=VALUE (repeat for several).
    #[arg(long = "meta", value_parser = parse_key_value)]
    pub meta: Vec<(String, String)>,
    /// Lease length, e.g. 15s; without it the instance never expires.
    #[arg(long, value_parser = duration::parse)]
    pub ttl: Option<Duration>,
    /// Time in critical before removal, e.g. 1m.
    #[arg(long, value_parser = duration::parse)]
    pub deregister_critical_after: Option<Duration>,
    /// Weight while passing.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// URL the registry requests to check the instance (repeat for several).
    #[arg(long = "http-check")]
    pub http_checks: Vec<String>,
    /// host:port the registry connects to to check the instance.
    #[arg(long = "tcp-check")]
    pub tcp_checks: Vec<String>,
    /// host:port[/service] of a gRPC health server to check.
    #[arg(long = "grpc-check")]
    pub grpc_checks: Vec<String>,
    /// Interval of the checks above [default: 10s].
    #[arg(long, value_parser = duration::parse)]
    pub check_interval: Option<Duration>,
}

impl RegisterArgs {
    /// The `--http-check`, `--tcp-check` and `--grpc-check` flags as check definitions.
    pub(crate) fn checks(&self) -> Vec<CheckDefinition> {
        let base = CheckDefinition {
            interval: self.check_interval,
            ..CheckDefinition::default()
        };
        let http = self.http_checks.iter().map(|u| CheckDefinition {
            http: Some(u.clone()),
            ..base.clone()
        });
        let tcp = self.tcp_checks.iter().map(|a| CheckDefinition {
            tcp: Some(a.clone()),
            ..base.clone()
        });
        let grpc = self.grpc_checks.iter().map(|a| CheckDefinition {
            grpc: Some(a.clone()),
            ..base.clone()
        });
        http.chain(tcp).chain(grpc).collect()
    }
}

/// A `--meta` (or similar) value without `=`.
#[derive(Debug, thiserror::Error)]
#[error("expected KEY=VALUE, got {0:?}")]
pub struct NotKeyValue(String);

fn parse_key_value(s: &str) -> Result<(String, String), NotKeyValue> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| NotKeyValue(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_commands_sit_beside_the_others() {
        use clap::CommandFactory;
        let names: Vec<_> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "serve",
                "dns",
                "agent",
                "sync-k8s",
                "register",
                "deregister",
                "heartbeat",
                "maintenance",
                "services",
                "operator",
                "snapshot",
                "watch",
                "instances",
            ]
        );
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).unwrap();
        let cli = parse(&["roster", "--registry", "http://r:1", "services", "--json"]);
        assert!(matches!(
            cli.command,
            Command::Client(ClientCommand::Services)
        ));
        assert_eq!(cli.global.registry, "http://r:1");
        assert!(cli.global.json);
        assert!(matches!(
            parse(&["roster", "sync-k8s"]).command,
            Command::SyncK8s(_)
        ));
        assert!(matches!(
            parse(&["roster", "dns", "--token", "t"]).command,
            Command::Dns(_)
        ));
    }

    #[test]
    fn parses_register_flags() {
        let cli = Cli::try_parse_from([
            "roster", "register", "web", "web-1", "--port", "8080", "--tag", "v2", "--meta",
            "zone=a", "--ttl", "15s",
        ])
        .unwrap();
        let Command::Client(ClientCommand::Register(args)) = cli.command else {
            panic!("not register")
        };
        assert_eq!(args.ttl, Some(Duration::from_secs(15)));
        assert_eq!(args.meta, [("zone".to_string(), "a".to_string())]);
        assert!(
            Cli::try_parse_from(["roster", "register", "web", "x", "--port", "99999"]).is_err()
        );
    }
}
