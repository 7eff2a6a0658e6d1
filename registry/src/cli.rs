//! The `roster` command line: `serve`, and client subcommands that talk to a
//! running registry through `roster-client`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::{Parser, Subcommand};
use roster_api::{
    self as api, CheckDefinition, MaintenanceRequest, RegisterRequest, Weights, duration,
};
use roster_client::{InstanceQuery, RosterClient};

use crate::config::ServeArgs;

/// roster: a service discovery registry.
#[derive(Debug, Parser)]
#[command(name = "roster", version, about, propagate_version = true)]
pub struct Cli {
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
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
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
    fn checks(&self) -> Vec<CheckDefinition> {
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

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Why a client subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The registry refused or could not be reached.
    #[error(transparent)]
    Client(#[from] roster_client::Error),
    /// Output could not be written.
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    /// `serve`, `dns`, `agent` and `sync-k8s` are not client commands.
    #[error("serve, dns, agent and sync-k8s are not client commands")]
    NotAClientCommand,
}

/// Runs a client subcommand, writing its output to `out`.
pub async fn run_client(cli: &Cli, out: &mut impl Write) -> Result<(), CliError> {
    let mut client = RosterClient::new(&cli.registry)?;
    if let Some(token) = &cli.token {
        client = client.with_token(token.clone());
    }
    match &cli.command {
        Command::Serve(_) | Command::Dns(_) | Command::Agent(_) | Command::SyncK8s(_) => {
            return Err(CliError::NotAClientCommand);
        }
        Command::Register(args) => {
            let req = RegisterRequest {
                address: args.address.clone(),
                port: args.port,
                tags: args.tags.clone(),
                meta: args.meta.iter().cloned().collect::<BTreeMap<_, _>>(),
                weights: Weights {
                    passing: args.weight,
                    ..Weights::default()
                },
                ttl: args.ttl,
                deregister_critical_after: args.deregister_critical_after,
                checks: args.checks(),
            };
            let inst = client.register(&args.service, &args.id, &req).await?;
            print_instances(out, cli.json, std::slice::from_ref(&inst), true)?;
        }
        Command::Deregister { service, id } => {
            client.deregister(service, id).await?;
            if cli.json {
                writeln!(out, "{}", serde_json::json!({ "deregistered": id }))?;
            } else {
                writeln!(out, "deregistered {service}/{id}")?;
            }
        }
        Command::Heartbeat { service, id } => {
            client.heartbeat(service, id).await?;
            if cli.json {
                writeln!(out, "{}", serde_json::json!({ "renewed": id }))?;
            } else {
                writeln!(out, "renewed {service}/{id}")?;
            }
        }
        Command::Maintenance {
            service,
            id,
            off,
            reason,
        } => {
            let req = MaintenanceRequest {
                enabled: !off,
                reason: reason.clone(),
            };
            let inst = client.maintenance(service, id, &req).await?;
            print_instances(out, cli.json, std::slice::from_ref(&inst), true)?;
        }
        Command::Services => {
            let list = client.services().await?;
            if cli.json {
                serde_json::to_writer_pretty(&mut *out, &list).map_err(std::io::Error::other)?;
                writeln!(out)?;
            } else {
                let rows = list
                    .services
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.instances.to_string(),
                            s.passing.to_string(),
                            s.warning.to_string(),
                            s.critical.to_string(),
                            s.tags.join(","),
                        ]
                    })
                    .collect();
                table(
                    out,
                    &[
                        "SERVICE",
                        "INSTANCES",
                        "PASSING",
                        "WARNING",
                        "CRITICAL",
                        "TAGS",
                    ],
                    rows,
                )?;
            }
        }
        Command::Watch { services, count } => {
            let names: Vec<&str> = services.iter().map(String::as_str).collect();
            let mut stream = client.watch(&names, None).await?;
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                let Some(ev) = stream.next().await? else {
                    return Err(CliError::Client(
                        roster_client::Unavailable::StreamClosed.into(),
                    ));
                };
                seen += 1;
                if cli.json {
                    serde_json::to_writer(&mut *out, &ev.event).map_err(std::io::Error::other)?;
                    writeln!(out)?;
                } else {
                    let e = &ev.event;
                    writeln!(
                        out,
                        "# {} at index {}: {} instances",
                        e.service,
                        e.index,
                        e.instances.len()
                    )?;
                    if !e.instances.is_empty() {
                        print_instances(out, false, &e.instances, false)?;
                    }
                }
                out.flush()?;
            }
        }
        Command::Operator(OperatorCommand::Raft(cmd)) => match cmd {
            RaftCommand::ListPeers => {
                let status = client.raft_status().await?;
                if cli.json {
                    writeln!(out, "{}", serde_json::json!(status))?;
                } else {
                    peers_table(out, &status)?;
                }
            }
            RaftCommand::AddPeer { addr } => {
                let m = client.raft_add_peer(addr).await?;
                writeln!(out, "added node {} at {}", m.id, m.addr)?;
            }
            RaftCommand::RemovePeer { id } => {
                client.raft_remove_peer(*id).await?;
                writeln!(out, "removed node {id}")?;
            }
        },
        Command::Snapshot(SnapshotCommand::Save { file }) => {
            let bytes = client.snapshot_save().await?;
            // Write then rename, so a crash never leaves half a backup under the name.
            let tmp = file.with_extension("partial");
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, file)?;
            writeln!(out, "saved {} bytes to {}", bytes.len(), file.display())?;
        }
        Command::Snapshot(SnapshotCommand::Restore { file }) => {
            let bytes = std::fs::read(file)?;
            let index = client.snapshot_restore(bytes).await?;
            writeln!(out, "restored {} at index {index}", file.display())?;
        }
        Command::Instances { service, all, tags } => {
            let query = InstanceQuery {
                all: *all,
                tags: tags.clone(),
            };
            let list = client.instances(service, &query).await?;
            if cli.json {
                serde_json::to_writer_pretty(&mut *out, &list).map_err(std::io::Error::other)?;
                writeln!(out)?;
            } else {
                print_instances(out, false, &list.instances, false)?;
            }
        }
    }
    Ok(())
}

fn print_instances(
    out: &mut impl Write,
    json: bool,
    instances: &[api::Instance],
    single: bool,
) -> Result<(), CliError> {
    if json {
        if single {
            serde_json::to_writer_pretty(&mut *out, &instances[0])
        } else {
            serde_json::to_writer_pretty(&mut *out, instances)
        }
        .map_err(std::io::Error::other)?;
        writeln!(out)?;
        return Ok(());
    }
    let rows = instances
        .iter()
        .map(|i| {
            let health = match (&i.maintenance, i.health) {
                (Some(m), _) if m.reason.is_empty() => "maintenance".to_owned(),
                (Some(m), _) => format!("maintenance ({})", m.reason),
                (None, h) => h.to_string(),
            };
            vec![
                i.service.clone(),
                i.id.clone(),
                format!("{}:{}", bracket_v6(&i.address), i.port),
                health,
                i.ttl.map(duration::format).unwrap_or_else(|| "-".into()),
                i.tags.join(","),
            ]
        })
        .collect();
    table(
        out,
        &["SERVICE", "ID", "ADDRESS", "HEALTH", "TTL", "TAGS"],
        rows,
    )?;
    Ok(())
}

fn bracket_v6(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    }
}

/// `operator raft list-peers`: one row per member, with the leader's view of
/// whether it reaches the member, when it last did, and how far behind it is.
fn peers_table(out: &mut impl Write, status: &roster_api::RaftStatus) -> std::io::Result<()> {
    let known = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows = status
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                if m.leader { "leader" } else { "follower" }.into(),
                if m.voter { "voter" } else { "learner" }.into(),
                known(
                    m.reachable
                        .map(|r| if r { "reachable" } else { "UNREACHABLE" }.to_owned()),
                ),
                known(m.last_contact_ms.map(|ms| format!("{ms}ms ago"))),
                known(m.lag.map(|l| l.to_string())),
            ]
        })
        .collect();
    table(
        out,
        &[
            "NODE",
            "ADDRESS",
            "ROLE",
            "VOTES",
            "LEADER REACHES",
            "LAST CONTACT",
            "LAG",
        ],
        rows,
    )?;
    match status.replication_view {
        Some(_) => writeln!(
            out,
            "term {}, answered by node {}, reachability as leader {} sees it",
            status.term,
            status.node,
            status.leader.map_or("-".into(), |l| l.to_string())
        ),
        None => writeln!(
            out,
            "term {}, answered by node {}; reachability, last contact and lag are known only on the leader, which did not answer",
            status.term, status.node
        ),
    }
}

/// Writes left-aligned columns separated by two spaces.
fn table(out: &mut impl Write, header: &[&str], rows: Vec<Vec<String>>) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_peers_shows_who_the_leader_reaches() {
        let member = |id, leader, reachable, contact, lag| roster_api::RaftMember {
            id,
            addr: format!("10.0.0.{id}:8500"),
            voter: id != 3,
            leader,
            matched: Some(10),
            reachable,
            last_contact_ms: contact,
            lag,
        };
        let mut status = roster_api::RaftStatus {
            node: 1,
            state: "Leader".into(),
            term: 4,
            leader: Some(1),
            last_log_index: Some(10),
            applied: Some(10),
            members: vec![
                member(1, true, Some(true), Some(0), Some(0)),
                member(2, false, Some(false), Some(2300), Some(7)),
                member(3, false, Some(true), Some(40), Some(0)),
            ],
            replication_view: Some(1),
        };
        let mut out = Vec::new();
        peers_table(&mut out, &status).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE  ADDRESS"), "{text}");
        assert!(
            lines[0].contains("LEADER REACHES  LAST CONTACT  LAG"),
            "{text}"
        );
        let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[2])[2..],
            ["follower", "voter", "UNREACHABLE", "2300ms", "ago", "7"]
        );
        assert_eq!(cells(lines[3])[3], "learner");
        assert!(lines[4].contains("as leader 1 sees it"), "{text}");
        // A follower whose leader did not answer says so instead of guessing.
        status.replication_view = None;
        for m in &mut status.members {
            (m.reachable, m.last_contact_ms, m.lag) = (None, None, None);
        }
        let mut out = Vec::new();
        peers_table(&mut out, &status).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("known only on the leader"), "{text}");
        assert_eq!(cells(text.lines().nth(2).unwrap())[4..], ["-", "-", "-"]);
    }

    #[test]
    fn table_aligns_columns() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["A", "BB"],
            vec![vec!["long".into(), "x".into()]],
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A     BB\nlong  x\n");
    }

    #[test]
    fn parses_register_flags() {
        let cli = Cli::try_parse_from([
            "roster", "register", "web", "web-1", "--port", "8080", "--tag", "v2", "--meta",
            "zone=a", "--ttl", "15s",
        ])
        .unwrap();
        let Command::Register(args) = cli.command else {
            panic!("not register")
        };
        assert_eq!(args.ttl, Some(Duration::from_secs(15)));
        assert_eq!(args.meta, [("zone".to_string(), "a".to_string())]);
        assert!(
            Cli::try_parse_from(["roster", "register", "web", "x", "--port", "99999"]).is_err()
        );
    }
}
