//! Flags of `roster serve` (and keys of its TOML file) that make the node one
//! of a replicated cluster.

use std::path::PathBuf;
use std::time::Duration;

use roster_api::duration;

use super::ConfigError;
use crate::cluster::{ClusterConfig, PeerTls};
use crate::http::serve::TlsFiles;

/// The cluster keys of the TOML file, taken out of it to merge under the flags.
#[derive(Debug, Default)]
pub(super) struct ClusterFile {
    bootstrap_expect: Option<usize>,
    join: Vec<String>,
    advertise_addr: Option<String>,
    node_id: Option<u64>,
    cluster_token_file: Option<std::path::PathBuf>,
    raft_heartbeat: Option<Duration>,
}

impl super::FileConfig {
    /// Moves the cluster keys out of the file.
    pub(super) fn take_cluster(&mut self) -> ClusterFile {
        ClusterFile {
            bootstrap_expect: self.bootstrap_expect.take(),
            join: std::mem::take(&mut self.join),
            advertise_addr: self.advertise_addr.take(),
            node_id: self.node_id.take(),
            cluster_token_file: self.cluster_token_file.take(),
            raft_heartbeat: self.raft_heartbeat.take(),
        }
    }
}

/// `join` in the file: an array of addresses, or one string of them separated
/// by commas (as the flag and `ROSTER_JOIN` take them).
pub(super) fn join_list<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Join {
        One(String),
        Many(Vec<String>),
    }
    let list = match Join::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "expected \"host:port,host:port\" or an array of \"host:port\" strings",
        )
    })? {
        Join::One(s) => s.split(',').map(str::to_owned).collect(),
        Join::Many(v) => v,
    };
    Ok(list)
}

/// Reads a cluster token from a file (a mounted Secret): surrounding
/// whitespace, such as the trailing newline, is not part of it.
fn read_token(path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        setting: "cluster_token_file",
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let token = text.trim();
    if token.len() < crate::cluster::MIN_TOKEN_LEN {
        return Err(ConfigError::Invalid {
            setting: "cluster_token_file",
            message: format!(
                "the token in {} must be at least 16 characters",
                path.display()
            ),
        });
    }
    Ok(token.to_owned())
}

/// Cluster flags. Cluster mode is on with `--bootstrap-expect` or `--join`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClusterArgs {
    /// Form a cluster when this many nodes have met (3 or 5 in production; 1
    /// starts a one-node cluster that others can join later).
    #[arg(long, env = "ROSTER_BOOTSTRAP_EXPECT", value_name = "N")]
    pub bootstrap_expect: Option<usize>,
    /// Peers to contact, `host:port` of their HTTP API; a name may resolve to
    /// several addresses (a headless Service). Comma-separated or repeated.
    #[arg(long, env = "ROSTER_JOIN", value_name = "ADDR", value_delimiter = ',')]
    pub join: Vec<String>,
    /// `host:port` the other nodes reach this node's HTTP API at [default: the
    /// --http-addr].
    #[arg(long, env = "ROSTER_ADVERTISE_ADDR", value_name = "ADDR")]
    pub advertise_addr: Option<String>,
    /// Node id [default: generated once and kept in the data directory].
    #[arg(long, env = "ROSTER_NODE_ID", value_name = "ID")]
    pub node_id: Option<u64>,
    /// Shared secret the nodes present to each other on /v1/raft/*; required
    /// in cluster mode, at least 16 characters.
    #[arg(
        long,
        env = "ROSTER_CLUSTER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub cluster_token: Option<String>,
    /// File holding the cluster token (a mounted Secret), instead of
    /// --cluster-token; surrounding whitespace is trimmed.
    #[arg(
        long,
        env = "ROSTER_CLUSTER_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "cluster_token"
    )]
    pub cluster_token_file: Option<std::path::PathBuf>,
    /// Leader heartbeat period. A failover takes 7-8 of them plus a vote round:
    /// followers wait out the old leader's lease (4), then a random election
    /// timeout (3-4) [default: 100ms].
    #[arg(long, env = "ROSTER_RAFT_HEARTBEAT", value_name = "DURATION", value_parser = duration::parse)]
    pub raft_heartbeat: Option<Duration>,
    /// PEM certificate this node presents to its peers (as server and as
    /// client) [default: the --tls-cert]. Needs the advertised DNS name or IP.
    #[arg(long, env = "ROSTER_PEER_TLS_CERT", value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key of --peer-tls-cert [default: the --tls-key].
    #[arg(long, env = "ROSTER_PEER_TLS_KEY", value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// PEM CA that every peer's certificate must chain to; turns peer TLS on
    /// (Raft, joins and forwarded writes over HTTPS with client certificates).
    #[arg(long, env = "ROSTER_PEER_TLS_CA", value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
}

impl ClusterArgs {
    /// The cluster settings, flags over the file's keys, or `None` for a lone
    /// registry.
    pub(super) fn to_config(
        &self,
        file: ClusterFile,
        http_addr: std::net::SocketAddr,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let bootstrap_expect = self.bootstrap_expect.or(file.bootstrap_expect);
        let join = if self.join.is_empty() {
            file.join
        } else {
            self.join.clone()
        };
        let join: Vec<String> = join
            .iter()
            .map(|j| j.trim().to_owned())
            .filter(|j| !j.is_empty())
            .collect();
        if bootstrap_expect.is_none() && join.is_empty() {
            return Ok(None);
        }
        let invalid = |setting, message: &str| {
            Err(ConfigError::Invalid {
                setting,
                message: message.into(),
            })
        };
        if data_dir.is_none() {
            return invalid(
                "data_dir",
                "a cluster node keeps its Raft log on disk: give it --data-dir",
            );
        }
        let expect = bootstrap_expect.unwrap_or(0);
        if expect > 7 {
            return invalid("bootstrap_expect", "at most 7 nodes (use 3 or 5)");
        }
        if expect > 1 && join.is_empty() {
            return invalid(
                "join",
                "--bootstrap-expect above 1 needs --join to find the other nodes",
            );
        }
        if self.cluster_token.is_some() && self.cluster_token_file.is_some() {
            // clap refuses both flags; this catches the two variables.
            return invalid(
                "cluster_token_file",
                "give the cluster token or a file holding it, not both",
            );
        }
        let token = match (
            self.cluster_token.as_deref().map(str::trim),
            &self.cluster_token_file,
        ) {
            (Some(t), _) if t.len() >= crate::cluster::MIN_TOKEN_LEN => t.to_owned(),
            (Some(_), _) => return invalid("cluster_token", "must be at least 16 characters"),
            (None, Some(path)) => read_token(path)?,
            (None, None) => match &file.cluster_token_file {
                Some(path) => read_token(path)?,
                // Peer endpoints take Raft messages and restores: without a
                // token anyone who reaches the HTTP port could rewrite the catalog.
                None => {
                    return invalid(
                        "cluster_token",
                        "a cluster node needs --cluster-token or --cluster-token-file (the same secret of at least 16 characters on every node); peers present it on every Raft call",
                    );
                }
            },
        };
        let advertise = match self
            .advertise_addr
            .as_ref()
            .or(file.advertise_addr.as_ref())
        {
            Some(a) if !a.trim().is_empty() => a.trim().to_owned(),
            _ if http_addr.ip().is_unspecified() => {
                return invalid(
                    "advertise_addr",
                    "the HTTP address listens on every interface: say which one peers should use with --advertise-addr",
                );
            }
            _ => http_addr.to_string(),
        };
        let node_id = self.node_id.or(file.node_id);
        if node_id.is_some_and(|id| id == 0 || id > i64::MAX as u64) {
            // Ids must survive tools that read JSON numbers as signed 64-bit.
            return invalid("node_id", "must be between 1 and 9223372036854775807");
        }
        let mut cfg = ClusterConfig {
            node_id,
            advertise,
            join,
            bootstrap_expect: expect,
            token,
            ..ClusterConfig::default()
        };
        if let Some(hb) = self.raft_heartbeat.or(file.raft_heartbeat) {
            if hb < Duration::from_millis(10) || hb > Duration::from_secs(10) {
                return invalid("raft_heartbeat", "must be between 10ms and 10s");
            }
            cfg.heartbeat = hb;
        }
        Ok(Some(cfg))
    }
}

/// The peer TLS settings from the flags, else from the file.
#[derive(Debug, Default)]
pub struct PeerTlsSettings {
    /// `peer_tls_cert`.
    pub cert: Option<PathBuf>,
    /// `peer_tls_key`.
    pub key: Option<PathBuf>,
    /// `peer_tls_ca`.
    pub ca: Option<PathBuf>,
}

impl PeerTlsSettings {
    /// The flags' values, else the file's.
    pub fn merge(args: &ClusterArgs, file: PeerTlsSettings) -> PeerTlsSettings {
        PeerTlsSettings {
            cert: args.peer_tls_cert.clone().or(file.cert),
            key: args.peer_tls_key.clone().or(file.key),
            ca: args.peer_tls_ca.clone().or(file.ca),
        }
    }

    /// Peer TLS, validated: all three files, or the CA alone when the API's
    /// certificate (`api`) is the node's peer identity; every file readable
    /// and parsed; no peer address that says `http://`. `cluster` is the
    /// node's cluster settings, `None` for a lone registry.
    pub fn into_config(
        self,
        cluster: Option<&ClusterConfig>,
        api: Option<&TlsFiles>,
    ) -> Result<Option<PeerTls>, ConfigError> {
        let invalid = |setting, message: String| Err(ConfigError::Invalid { setting, message });
        let PeerTlsSettings { cert, key, ca } = self;
        if cert.is_none() && key.is_none() && ca.is_none() {
            return Ok(None);
        }
        let Some(cluster) = cluster else {
            return invalid(
                "peer_tls_ca",
                "peer TLS settings are for a cluster node (--bootstrap-expect or --join)".into(),
            );
        };
        if cluster.advertise.starts_with("http://") {
            return invalid(
                "advertise_addr",
                "with peer TLS, peers are called over https: drop the http:// scheme".into(),
            );
        }
        if cluster.join.iter().any(|j| j.starts_with("http://")) {
            return invalid(
                "join",
                "with peer TLS, peers are called over https: drop the http:// scheme".into(),
            );
        }
        let Some(ca) = ca else {
            return invalid(
                "peer_tls_ca",
                "peer TLS needs --peer-tls-ca, the CA that peers' certificates chain to".into(),
            );
        };
        let (cert, key) = match (cert, key, api) {
            (Some(cert), Some(key), _) => (cert, key),
            (None, None, Some(api)) => (api.cert.clone(), api.key.clone()),
            (None, None, None) => {
                return invalid(
                    "peer_tls_cert",
                    "peer TLS needs --peer-tls-cert and --peer-tls-key (or the API's --tls-cert and --tls-key)".into(),
                );
            }
            _ => {
                return invalid(
                    "peer_tls_cert",
                    "give both peer_tls_cert and peer_tls_key".into(),
                );
            }
        };
        let tls = PeerTls { cert, key, ca };
        if let Err(e) = tls.check() {
            return invalid("peer_tls_cert", e.to_string());
        }
        Ok(Some(tls))
    }
}
