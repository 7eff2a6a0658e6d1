//! Flags of `roster serve` that make the node one of a replicated cluster.

use std::path::PathBuf;
use std::time::Duration;

use roster_api::duration;

use super::ConfigError;
use crate::cluster::{ClusterConfig, PeerTls};
use crate::http::serve::TlsFiles;

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
    /// Leader heartbeat period. A failover takes 12-16 of them: followers wait out
    /// the old leader's lease (8), then a random election timeout (4-8)
    /// [default: 100ms].
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
    /// The cluster settings, or `None` for a lone registry.
    pub fn to_config(
        &self,
        http_addr: std::net::SocketAddr,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        if self.bootstrap_expect.is_none() && self.join.is_empty() {
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
        let expect = self.bootstrap_expect.unwrap_or(0);
        if expect > 7 {
            return invalid("bootstrap_expect", "at most 7 nodes (use 3 or 5)");
        }
        if expect > 1 && self.join.is_empty() {
            return invalid(
                "join",
                "--bootstrap-expect above 1 needs --join to find the other nodes",
            );
        }
        let token = match self.cluster_token.as_deref().map(str::trim) {
            Some(t) if t.len() >= crate::cluster::MIN_TOKEN_LEN => t.to_owned(),
            Some(_) => return invalid("cluster_token", "must be at least 16 characters"),
            // Peer endpoints take Raft messages and restores: without a token
            // anyone who reaches the HTTP port could rewrite the catalog.
            None => {
                return invalid(
                    "cluster_token",
                    "a cluster node needs --cluster-token (the same secret of at least 16 characters on every node); peers present it on every Raft call",
                );
            }
        };
        let advertise = match &self.advertise_addr {
            Some(a) if !a.trim().is_empty() => a.trim().to_owned(),
            _ if http_addr.ip().is_unspecified() => {
                return invalid(
                    "advertise_addr",
                    "the HTTP address listens on every interface: say which one peers should use with --advertise-addr",
                );
            }
            _ => http_addr.to_string(),
        };
        let mut cfg = ClusterConfig {
            node_id: self.node_id,
            advertise,
            join: self
                .join
                .iter()
                .map(|j| j.trim().to_owned())
                .filter(|j| !j.is_empty())
                .collect(),
            bootstrap_expect: expect,
            token,
            ..ClusterConfig::default()
        };
        if let Some(hb) = self.raft_heartbeat {
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
            return invalid("peer_tls_cert", e);
        }
        Ok(Some(tls))
    }
}
