//! The client commands (`register`, `services`, `watch`, `operator`,
//! `snapshot` …): calls to a running registry through `roster-client`, printed
//! as tables or JSON.

use std::collections::BTreeMap;
use std::io::Write;

use roster_api::{self as api, MaintenanceRequest, RegisterRequest, Weights, duration};
use roster_client::{InstanceQuery, RosterClient};

use crate::command::{ClientCommand, GlobalArgs, OperatorCommand, RaftCommand, SnapshotCommand};

/// Why a client subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The registry refused or could not be reached.
    #[error(transparent)]
    Client(#[from] roster_client::Error),
    /// Output could not be written.
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    /// A certificate or key file given on the command line cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A client for the registry `global` names: its addresses, its token, and
/// the CA and client certificate to use over https.
pub fn connect(global: &GlobalArgs) -> Result<RosterClient, CliError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| CliError::ReadFile {
            path: path.to_owned(),
            source,
        })
    };
    let mut tls = roster_client::TlsOptions::default();
    if let Some(ca) = &global.ca_cert {
        tls.ca_pem = Some(read(ca)?);
    }
    if let (Some(cert), Some(key)) = (&global.client_cert, &global.client_key) {
        let mut identity = read(cert)?;
        identity.push(b'\n');
        identity.extend(read(key)?);
        tls.identity_pem = Some(identity);
    }
    let mut client =
        RosterClient::with_tls(&global.registry, std::time::Duration::from_secs(10), &tls)?;
    if let Some(token) = &global.token {
        client = client.with_token(token.clone());
    }
    Ok(client)
}

/// Runs a client command against the registry `global` names, writing its
/// output to `out`.
pub async fn run_client(
    global: &GlobalArgs,
    command: &ClientCommand,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let client = connect(global)?;
    let json = global.json;
    match command {
        ClientCommand::Register(args) => {
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
            print_instances(out, json, std::slice::from_ref(&inst), true)?;
        }
        ClientCommand::Deregister { service, id } => {
            client.deregister(service, id).await?;
            if json {
                writeln!(out, "{}", serde_json::json!({ "deregistered": id }))?;
            } else {
                writeln!(out, "deregistered {service}/{id}")?;
            }
        }
        ClientCommand::Heartbeat { service, id } => {
            client.heartbeat(service, id).await?;
            if json {
                writeln!(out, "{}", serde_json::json!({ "renewed": id }))?;
            } else {
                writeln!(out, "renewed {service}/{id}")?;
            }
        }
        ClientCommand::Maintenance {
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
            print_instances(out, json, std::slice::from_ref(&inst), true)?;
        }
        ClientCommand::Services => {
            let list = client.services().await?;
            if json {
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
        ClientCommand::Watch { services, count } => {
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
                if json {
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
        ClientCommand::Operator(OperatorCommand::Raft(cmd)) => match cmd {
            RaftCommand::ListPeers => {
                let status = client.raft_status().await?;
                if json {
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
        ClientCommand::Snapshot(SnapshotCommand::Save { file }) => {
            let bytes = client.snapshot_save().await?;
            // Write then rename, so a crash never leaves half a backup under the name.
            let tmp = file.with_extension("partial");
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, file)?;
            writeln!(out, "saved {} bytes to {}", bytes.len(), file.display())?;
        }
        ClientCommand::Snapshot(SnapshotCommand::Restore { file }) => {
            let bytes = std::fs::read(file)?;
            let index = client.snapshot_restore(bytes).await?;
            writeln!(out, "restored {} at index {index}", file.display())?;
        }
        ClientCommand::Instances { service, all, tags } => {
            let query = InstanceQuery {
                all: *all,
                tags: tags.clone(),
            };
            let list = client.instances(service, &query).await?;
            if json {
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
}
