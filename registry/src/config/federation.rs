//! Flags and TOML keys that federate this datacenter with others: the remote
//! datacenters and their servers, the shared federation token, and the
//! failover lists of services.
//!
//! ```text
//! --federate 'dc2=10.1.0.5:8500,r2.example:8500;dc3=https://r3.example:8500'
//! --federation-token "$SECRET"           # at least 16 characters, the same in every DC
//! --failover 'web=dc2,dc3;*=dc2'         # per service, `*` for every other one
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use roster_api::duration;
use serde::Deserialize;

use super::ConfigError;

/// Federation flags of `roster serve`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct FederationArgs {
    /// Other datacenters and the HTTP addresses of their servers:
    /// `dc2=HOST:PORT,HOST:PORT;dc3=HOST:PORT`. Hosts may be names or IPs; an
    /// `https://` prefix calls that server over TLS.
    #[arg(long, env = "ROSTER_FEDERATE", value_name = "DC=ADDRS;…")]
    pub federate: Option<String>,
    /// Shared secret datacenters present to each other on forwarded calls
    /// (at least 16 characters); required with --federate, and needed to
    /// accept calls forwarded by other datacenters.
    #[arg(
        long,
        env = "ROSTER_FEDERATION_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub federation_token: Option<String>,
    /// Failover lists: `SERVICE=DC,DC;*=DC`. When the local datacenter has no
    /// healthy instance of a service, healthy-only answers come from the first
    /// datacenter of its list (or of `*`) that has some.
    #[arg(long, env = "ROSTER_FAILOVER", value_name = "SERVICE=DCS;…")]
    pub failover: Option<String>,
    /// Bound of one call to another datacenter that is not a watch, connection
    /// included [default: 2s].
    #[arg(long, env = "ROSTER_FEDERATION_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)]
    pub federation_timeout: Option<Duration>,
    /// Period of the probes of remote servers, jittered by up to a fifth
    /// [default: 2s].
    #[arg(long, env = "ROSTER_FEDERATION_PROBE_INTERVAL", value_name = "DURATION", value_parser = duration::parse)]
    pub federation_probe_interval: Option<Duration>,
}

/// `federate` in the TOML file: the flag's string, or a table of arrays.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FederateFile {
    /// `federate = "dc2=a:8500,b:8500;dc3=c:8500"`.
    Text(String),
    /// `[federate]` with `dc2 = ["a:8500", "b:8500"]`.
    Table(BTreeMap<String, Vec<String>>),
}

/// `failover` in the TOML file: the flag's string, or a table of arrays.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FailoverFile {
    /// `failover = "web=dc2,dc3;*=dc2"`.
    Text(String),
    /// `[failover]` with `web = ["dc2", "dc3"]` and `"*" = ["dc2"]`.
    Table(BTreeMap<String, Vec<String>>),
}

/// The federation keys of the TOML file.
#[derive(Debug, Default)]
pub(super) struct FederationFile {
    pub federate: Option<FederateFile>,
    pub federation_token_file: Option<std::path::PathBuf>,
    pub failover: Option<FailoverFile>,
    pub federation_timeout: Option<Duration>,
    pub federation_probe_interval: Option<Duration>,
}

impl super::FileConfig {
    /// Moves the federation keys out of the file.
    pub(super) fn take_federation(&mut self) -> FederationFile {
        FederationFile {
            federate: self.federate.take(),
            federation_token_file: self.federation_token_file.take(),
            failover: self.failover.take(),
            federation_timeout: self.federation_timeout.take(),
            federation_probe_interval: self.federation_probe_interval.take(),
        }
    }
}

/// One server of a remote datacenter, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteServer {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// HTTP port.
    pub port: u16,
    /// Called over TLS (`https://` given, or peer TLS configured).
    pub https: bool,
}

impl RemoteServer {
    /// `host:port`, IPv6 in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }
}

/// A remote datacenter and its servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDatacenter {
    /// Its name, as its servers' `--datacenter`.
    pub name: String,
    /// Its servers, any of which answers for it.
    pub servers: Vec<RemoteServer>,
}

/// Failover lists: an ordered list of remote datacenters per service, and
/// the list of every other service (`*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailoverPolicy {
    /// Per service (lowercase).
    pub services: BTreeMap<String, Vec<String>>,
    /// For services without a list of their own.
    pub default: Vec<String>,
}

impl FailoverPolicy {
    /// The datacenters `service` fails over to, in order; empty for none.
    pub fn targets(&self, service: &str) -> &[String] {
        self.services.get(service).unwrap_or(&self.default)
    }
}

/// Validated federation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct FederationConfig {
    /// The other datacenters, in the order given.
    pub remotes: Vec<RemoteDatacenter>,
    /// The shared federation token.
    pub token: String,
    /// Failover lists.
    pub failover: FailoverPolicy,
    /// Bound of a call that is not a watch.
    pub timeout: Duration,
    /// Probe period.
    pub probe_interval: Duration,
    /// Peer TLS of this node, used as client identity and roots towards
    /// remote datacenters when set.
    pub tls: Option<crate::cluster::PeerTls>,
}

fn invalid<T>(setting: &'static str, message: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid { setting, message })
}

/// Datacenter names follow `--datacenter`'s rule.
fn dc_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Parses one server address: `[https://|http://]HOST:PORT`.
pub fn parse_server(raw: &str, tls: bool) -> Result<RemoteServer, String> {
    let raw = raw.trim();
    let (https, rest) = if let Some(r) = raw.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = raw.strip_prefix("http://") {
        (false, r)
    } else {
        (tls, raw)
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{raw:?}: expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{raw:?}: the port must be a number from 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let is_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !is_ip && !is_name {
        return Err(format!(
            "{raw:?}: the host must be an IP address or a DNS name"
        ));
    }
    if tls && !https {
        return Err(format!(
            "{raw:?}: with peer TLS, other datacenters are called over https: drop the http:// scheme"
        ));
    }
    Ok(RemoteServer {
        host: host.to_ascii_lowercase(),
        port,
        https,
    })
}

/// Splits `NAME=A,B;NAME=C` into pairs; empty entries are skipped.
fn pairs(text: &str, setting: &'static str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut out = Vec::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, list)) = entry.split_once('=') else {
            return invalid(setting, format!("{entry:?}: expected NAME=VALUE,VALUE"));
        };
        let list = list
            .split(',')
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .collect();
        out.push((name.trim().to_owned(), list));
    }
    Ok(out)
}

impl FederationArgs {
    /// The federation settings, flags over the file's keys; `None` when this
    /// node neither federates nor takes forwarded calls.
    pub(super) fn to_config(
        &self,
        file: FederationFile,
        local: &str,
        tls: Option<crate::cluster::PeerTls>,
    ) -> Result<Option<FederationConfig>, ConfigError> {
        let federate = match (&self.federate, file.federate) {
            (Some(text), _) => pairs(text, "federate")?,
            (None, Some(FederateFile::Text(text))) => pairs(&text, "federate")?,
            (None, Some(FederateFile::Table(t))) => t.into_iter().collect(),
            (None, None) => Vec::new(),
        };
        let token = match (&self.federation_token, &file.federation_token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Invalid {
                        setting: "federation_token_file",
                        message: format!("cannot read {}: {e}", path.display()),
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let failover = match (&self.failover, file.failover) {
            (Some(text), _) => pairs(text, "failover")?,
            (None, Some(FailoverFile::Text(text))) => pairs(&text, "failover")?,
            (None, Some(FailoverFile::Table(t))) => t.into_iter().collect(),
            (None, None) => Vec::new(),
        };
        if federate.is_empty() && token.is_none() {
            if !failover.is_empty() {
                return invalid(
                    "failover",
                    "failover needs other datacenters: give --federate".into(),
                );
            }
            return Ok(None);
        }
        let Some(token) = token else {
            // Forwarded calls read the catalog on the caller's behalf: without
            // a shared secret anyone could pose as another datacenter.
            return invalid(
                "federation_token",
                "--federate needs --federation-token (the same secret of at least 16 characters in every datacenter)".into(),
            );
        };
        if token.len() < crate::cluster::MIN_TOKEN_LEN {
            return invalid("federation_token", "must be at least 16 characters".into());
        }
        let mut remotes: Vec<RemoteDatacenter> = Vec::new();
        for (name, servers) in federate {
            if !dc_name_ok(&name) {
                return invalid(
                    "federate",
                    format!(
                        "{name:?}: a datacenter name is 1 to 128 letters, digits, '-', '_' or '.'"
                    ),
                );
            }
            if name.eq_ignore_ascii_case(local) {
                return invalid(
                    "federate",
                    format!("{name:?} is this node's own datacenter (--datacenter)"),
                );
            }
            if remotes.iter().any(|r| r.name.eq_ignore_ascii_case(&name)) {
                return invalid("federate", format!("{name:?} is given twice"));
            }
            if servers.is_empty() {
                return invalid(
                    "federate",
                    format!("{name:?}: give at least one HOST:PORT of its servers"),
                );
            }
            if servers.len() > 16 {
                return invalid("federate", format!("{name:?}: at most 16 servers"));
            }
            let servers = servers
                .iter()
                .map(|s| parse_server(s, tls.is_some()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::Invalid {
                    setting: "federate",
                    message: format!("datacenter {name:?}: {e}"),
                })?;
            remotes.push(RemoteDatacenter { name, servers });
        }
        let mut policy = FailoverPolicy::default();
        for (service, dcs) in failover {
            let service = service.to_ascii_lowercase();
            if service != "*" && crate::model::ServiceName::parse(&service).is_err() {
                return invalid(
                    "failover",
                    format!("{service:?}: expected a service name or *"),
                );
            }
            for dc in &dcs {
                if !remotes.iter().any(|r| &r.name == dc) {
                    return invalid(
                        "failover",
                        format!(
                            "{service}={}: {dc:?} is not a datacenter of --federate",
                            dcs.join(",")
                        ),
                    );
                }
            }
            let mut unique: Vec<String> = Vec::new();
            for dc in dcs {
                if !unique.contains(&dc) {
                    unique.push(dc);
                }
            }
            if service == "*" {
                policy.default = unique;
            } else {
                policy.services.insert(service, unique);
            }
        }
        let timeout = self
            .federation_timeout
            .or(file.federation_timeout)
            .unwrap_or(Duration::from_secs(2));
        if timeout < Duration::from_millis(50) || timeout > Duration::from_secs(60) {
            return invalid("federation_timeout", "must be between 50ms and 1m".into());
        }
        let probe_interval = self
            .federation_probe_interval
            .or(file.federation_probe_interval)
            .unwrap_or(Duration::from_secs(2));
        if probe_interval < Duration::from_millis(100) || probe_interval > Duration::from_secs(300)
        {
            return invalid(
                "federation_probe_interval",
                "must be between 100ms and 5m".into(),
            );
        }
        Ok(Some(FederationConfig {
            remotes,
            token,
            failover: policy,
            timeout,
            probe_interval,
            tls,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ServeArgs};

    fn args(federate: &str) -> ServeArgs {
        let mut a = ServeArgs {
            datacenter: Some("dc1".into()),
            ..ServeArgs::default()
        };
        a.federation.federate = Some(federate.into());
        a.federation.federation_token = Some("a-federation-token-1".into());
        a
    }

    fn refused(a: &ServeArgs) -> (&'static str, String) {
        match Config::load(a) {
            Err(ConfigError::Invalid { setting, message }) => (setting, message),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn federate_list_parses_names_ips_and_schemes() {
        let cfg = Config::load(&args(
            "dc2=10.0.0.1:8500, r2.example.com:8501 ;dc3=https://[::1]:8500;",
        ))
        .unwrap();
        let fed = cfg.federation.unwrap();
        assert_eq!(fed.remotes.len(), 2);
        assert_eq!(fed.remotes[0].name, "dc2");
        assert_eq!(fed.remotes[0].servers[1].host, "r2.example.com");
        assert_eq!(
            fed.remotes[0].servers[1].base_url(),
            "http://r2.example.com:8501"
        );
        assert_eq!(fed.remotes[1].servers[0].base_url(), "https://[::1]:8500");
        assert_eq!(fed.timeout, Duration::from_secs(2));
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, needle) in [
            ("dc2", "\"dc2\""),
            ("dc2=", "at least one"),
            ("dc2=host", "\"host\""),
            ("dc2=host:0", "port"),
            ("dc2=ho st:80", "host"),
            ("dc1=a:80", "own datacenter"),
            ("dc2=a:80;dc2=b:80", "twice"),
            ("d c=a:80", "datacenter name"),
        ] {
            let (setting, message) = refused(&args(text));
            assert_eq!(setting, "federate", "{text}");
            assert!(message.contains(needle), "{text}: {message}");
        }
    }

    #[test]
    fn with_peer_tls_remote_datacenters_are_called_over_https() {
        let https = parse_server("r2.example:8500", true).unwrap();
        assert_eq!(https.base_url(), "https://r2.example:8500");
        let err = parse_server("http://r2.example:8500", true).unwrap_err();
        assert!(err.contains("https"), "{err}");
        assert!(!parse_server("10.0.0.1:8500", false).unwrap().https);
    }

    #[test]
    fn token_is_required_and_long() {
        let mut a = args("dc2=a:80");
        a.federation.federation_token = None;
        assert_eq!(refused(&a).0, "federation_token");
        a.federation.federation_token = Some("short".into());
        assert_eq!(refused(&a).0, "federation_token");
        // A token alone: this node takes forwarded calls, calls no one.
        let alone = ServeArgs {
            federation: FederationArgs {
                federation_token: Some("a-federation-token-1".into()),
                ..FederationArgs::default()
            },
            ..ServeArgs::default()
        };
        let fed = Config::load(&alone).unwrap().federation.unwrap();
        assert!(fed.remotes.is_empty());
    }

    #[test]
    fn failover_lists_name_known_datacenters() {
        let mut a = args("dc2=a:80;dc3=b:80");
        a.federation.failover = Some("web=dc3,dc2;*=dc2".into());
        let fed = Config::load(&a).unwrap().federation.unwrap();
        assert_eq!(fed.failover.targets("web"), ["dc3", "dc2"]);
        assert_eq!(fed.failover.targets("api"), ["dc2"]);
        a.federation.failover = Some("web=dc9".into());
        let (setting, message) = refused(&a);
        assert_eq!(setting, "failover");
        assert!(message.contains("dc9"), "{message}");
        a.federation.failover = Some("Not A Name=dc2".into());
        assert_eq!(refused(&a).0, "failover");
    }

    #[test]
    fn toml_tables() {
        let dir = std::env::temp_dir().join(format!("roster-fed-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "a-federation-token-1\n").unwrap();
        let file = dir.join("roster.toml");
        std::fs::write(
            &file,
            format!(
                "datacenter = \"dc1\"\nfederation_token_file = {token:?}\nfederation_timeout = \"500ms\"\n\
                 [federate]\ndc2 = [\"a:8500\", \"b:8500\"]\n[failover]\nweb = [\"dc2\"]\n\"*\" = [\"dc2\"]\n"
            ),
        )
        .unwrap();
        let a = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        };
        let fed = Config::load(&a).unwrap().federation.unwrap();
        assert_eq!(fed.remotes[0].servers.len(), 2);
        assert_eq!(fed.token, "a-federation-token-1");
        assert_eq!(fed.timeout, Duration::from_millis(500));
        assert_eq!(fed.failover.targets("db"), ["dc2"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
