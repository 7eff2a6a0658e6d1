//! Configuration for `roster serve`: flags, `ROSTER_*` environment variables and an
//! optional TOML file, in that order of precedence, validated into a [`Config`]
//! before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use roster_api::duration;
use serde::Deserialize;

use crate::catalog::{CatalogLimits, SelfPreservation};
use crate::checks::checker::CheckerConfig;
use crate::http::limits::LimitConfig;
use crate::http::serve::{ServeConfig, TlsFiles};
use crate::model::{Limits, PanicPolicy};

/// Flags of `roster serve`. Each also reads a `ROSTER_*` variable.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Cluster flags.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Federation flags (other datacenters, failover).
    #[command(flatten)]
    pub federation: FederationArgs,
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "ROSTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:8500].
    #[arg(long, env = "ROSTER_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Keep the catalog on disk in this directory; without it the catalog lives in
    /// memory only and a restart forgets every registration.
    #[arg(long, env = "ROSTER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Extra time every lease gets after a restart or restore, so instances can
    /// heartbeat before anything expires [default: 30s].
    #[arg(long, env = "ROSTER_LEASE_GRACE", value_name = "DURATION", value_parser = duration::parse)]
    pub lease_grace: Option<Duration>,
    /// Log filter, e.g. `info` or `roster_registry=debug` [default: info].
    #[arg(long, env = "ROSTER_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Most instances one service may have [default: 100000].
    #[arg(long, env = "ROSTER_MAX_INSTANCES_PER_SERVICE", value_name = "N")]
    pub max_instances_per_service: Option<usize>,
    /// Most instances in the registry [default: 2000000]; each takes about
    /// 1 KiB of memory (bench/RESULTS.md).
    #[arg(long, env = "ROSTER_MAX_INSTANCES", value_name = "N")]
    pub max_instances: Option<usize>,
    /// Default time an instance may stay critical before removal [default: 1m].
    #[arg(long, env = "ROSTER_DEREGISTER_CRITICAL_AFTER", value_name = "DURATION", value_parser = duration::parse)]
    pub deregister_critical_after: Option<Duration>,
    /// Address of the DNS server, UDP and TCP on the same port [default: 127.0.0.1:8600].
    #[arg(long, env = "ROSTER_DNS_ADDR", value_name = "ADDR")]
    pub dns_addr: Option<SocketAddr>,
    /// Do not serve DNS. `--no-dns=false` turns DNS back on over the file or
    /// environment [default: false].
    #[arg(
        long,
        env = "ROSTER_NO_DNS",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub no_dns: Option<bool>,
    /// Address of the gRPC server (xDS: gRPC clients' `xds:///NAME` and Envoy)
    /// [default: 127.0.0.1:8502].
    #[arg(long, env = "ROSTER_GRPC_ADDR", value_name = "ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Do not serve gRPC (xDS). `--no-grpc=false` turns it back on over the
    /// file or environment [default: false].
    #[arg(
        long,
        env = "ROSTER_NO_GRPC",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub no_grpc: Option<bool>,
    /// Most xDS streams open at once; more are refused with RESOURCE_EXHAUSTED
    /// [default: 16384].
    #[arg(long, env = "ROSTER_MAX_XDS_STREAMS", value_name = "N")]
    pub max_xds_streams: Option<usize>,
    /// DNS domain answered for: names look like `web.service.DOMAIN` [default: roster].
    #[arg(long, env = "ROSTER_DNS_DOMAIN", value_name = "DOMAIN")]
    pub dns_domain: Option<String>,
    /// TTL of positive DNS answers, in seconds; 0 makes clients ask every time,
    /// so they never use an instance the registry has dropped [default: 0].
    #[arg(long, env = "ROSTER_DNS_TTL", value_name = "SECONDS")]
    pub dns_ttl: Option<u32>,
    /// Answer DNS only to these networks (CIDR, repeat); others get REFUSED
    /// [default: everyone].
    #[arg(long = "dns-allow", env = "ROSTER_DNS_ALLOW", value_name = "CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub dns_allow: Vec<(std::net::IpAddr, u8)>,
    /// Rate limit of UDP DNS answers per source /24 (IPv6 /56), per second;
    /// past it most answers are dropped and some truncated so real clients
    /// retry over TCP; 0 is no limit [default: 0].
    #[arg(long, env = "ROSTER_DNS_RATE_LIMIT", value_name = "PER_SECOND")]
    pub dns_rate_limit: Option<u32>,
    /// Largest UDP DNS answer in bytes, whatever the requester's EDNS buffer;
    /// larger answers are truncated and clients retry over TCP [default: 1232].
    #[arg(long, env = "ROSTER_DNS_MAX_UDP_PAYLOAD", value_name = "BYTES")]
    pub dns_max_udp_payload: Option<u16>,
    /// Most DNS TCP connections open at once; more are closed [default: 256].
    #[arg(long, env = "ROSTER_DNS_MAX_TCP_CONNECTIONS", value_name = "N")]
    pub dns_max_tcp_connections: Option<usize>,
    /// Address `ns.DOMAIN` (the zone's name server) resolves to [default: the
    /// DNS address; for 0.0.0.0 or ::, the address of the default route's interface].
    #[arg(long, env = "ROSTER_DNS_ADVERTISE_ADDR", value_name = "IP")]
    pub dns_advertise_addr: Option<std::net::IpAddr>,
    /// Most active health checks (http, tcp, grpc) in flight at once [default: 256].
    #[arg(long, env = "ROSTER_CHECK_CONCURRENCY", value_name = "N")]
    pub check_concurrency: Option<usize>,
    /// Put the start of HTTP check response bodies (512 bytes) in the check
    /// output that every reader sees; off, the output is the status line only
    /// [default: false].
    #[arg(
        long,
        env = "ROSTER_CHECK_OUTPUT_BODY",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub check_output_body: Option<bool>,
    /// Destinations active checks may not reach, as CIDR or host name (repeat),
    /// on top of the built-in ones: link-local 169.254.0.0/16 and fe80::/10,
    /// fd00:ec2::254, 100.100.100.200 and metadata.google.internal.
    #[arg(
        long = "check-deny",
        env = "ROSTER_CHECK_DENY",
        value_name = "CIDR|HOST",
        value_delimiter = ','
    )]
    pub check_deny: Vec<String>,
    /// Deny loopback (127.0.0.0/8, ::1) to active checks too; allowed by
    /// default for sidecar checks [default: false].
    #[arg(
        long,
        env = "ROSTER_CHECK_DENY_LOOPBACK",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub check_deny_loopback: Option<bool>,
    /// Self-preservation: when more than this share of leased instances expire
    /// within one renewal window, stop expiring until heartbeats come back; 0
    /// turns it off [default: 0.15].
    #[arg(long, env = "ROSTER_SELF_PRESERVATION_THRESHOLD", value_name = "RATIO")]
    pub self_preservation_threshold: Option<f64>,
    /// The window self-preservation counts expirations in [default: 1m].
    #[arg(long, env = "ROSTER_RENEWAL_WINDOW", value_name = "DURATION", value_parser = duration::parse)]
    pub renewal_window: Option<Duration>,
    /// Self-preservation applies only with at least this many leased instances
    /// [default: 10].
    #[arg(long, env = "ROSTER_SELF_PRESERVATION_MIN_INSTANCES", value_name = "N")]
    pub self_preservation_min_instances: Option<usize>,
    /// The longest self-preservation holds a lease past its deadline (and a
    /// removal past its time): a registry-side outage shorter than this expires
    /// nothing, a real departure is expired this long after its deadline at the
    /// latest [default: 2m].
    #[arg(long, env = "ROSTER_SELF_PRESERVATION_MAX_HOLD", value_name = "DURATION", value_parser = duration::parse)]
    pub self_preservation_max_hold: Option<Duration>,
    /// Panic threshold of every service: below this share of healthy instances,
    /// healthy-only queries return all instances with their health; 0 turns it
    /// off [default: 0].
    #[arg(long, env = "ROSTER_PANIC_THRESHOLD", value_name = "RATIO")]
    pub panic_threshold: Option<f64>,
    /// Require a token on every API call (`Authorization: Bearer`, or
    /// `X-Consul-Token`); `--acl=false` turns it off over the file [default: false].
    #[arg(
        long,
        env = "ROSTER_ACL",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub acl: Option<bool>,
    /// TOML file listing the tokens and their policies (read, write:PATTERN,
    /// admin); the variable ROSTER_ACL_TOKENS may hold the same text instead.
    #[arg(long, env = "ROSTER_ACL_TOKENS_FILE", value_name = "FILE")]
    pub acl_tokens: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS instead of HTTP (with --tls-key).
    #[arg(
        long,
        env = "ROSTER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "ROSTER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: require client certificates signed by them.
    #[arg(long, env = "ROSTER_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Most HTTP connections open at once; more are closed [default: 10000].
    #[arg(long, env = "ROSTER_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Serve HTTP/1.1 only: HTTP/2 clients (prior knowledge in plain text,
    /// ALPN over TLS) are refused or get HTTP/1.1 [default: false].
    #[arg(
        long,
        env = "ROSTER_NO_HTTP2",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub no_http2: Option<bool>,
    /// Most requests, watch streams included, one HTTP/2 connection may have
    /// open at once [default: 256].
    #[arg(long, env = "ROSTER_HTTP2_MAX_STREAMS", value_name = "N")]
    pub http2_max_streams: Option<u32>,
    /// Most requests in flight, watches excluded; more get 503 [default: 1024].
    #[arg(long, env = "ROSTER_MAX_REQUESTS", value_name = "N")]
    pub max_requests: Option<usize>,
    /// Most blocking queries and watch streams open; more get 503 [default: 16384].
    #[arg(long, env = "ROSTER_MAX_WATCHERS", value_name = "N")]
    pub max_watchers: Option<usize>,
    /// Writes per second allowed per client IP, 0 for no limit [default: 0].
    #[arg(long, env = "ROSTER_WRITE_RATE_LIMIT", value_name = "PER_SECOND")]
    pub write_rate_limit: Option<f64>,
    /// Deadline of a request that is not a watch [default: 30s].
    #[arg(long, env = "ROSTER_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)]
    pub request_timeout: Option<Duration>,
    /// Time a client has to send request headers [default: 15s].
    #[arg(long, env = "ROSTER_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)]
    pub header_read_timeout: Option<Duration>,
    /// Time a client has to send a request's body once its headers are in;
    /// 408 past it. No concurrency slot is held meanwhile [default: 10s].
    #[arg(long, env = "ROSTER_BODY_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)]
    pub body_timeout: Option<Duration>,
    /// A connection whose client takes no bytes of the answer for this long is
    /// closed [default: 15s].
    #[arg(long, env = "ROSTER_WRITE_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)]
    pub write_timeout: Option<Duration>,
    /// Datacenter name the Consul-compatible API reports and accepts in `?dc=`
    /// [default: dc1].
    #[arg(long, env = "ROSTER_DATACENTER", value_name = "NAME")]
    pub datacenter: Option<String>,
    /// Node name the Consul-compatible API reports [default: the host name].
    #[arg(long, env = "ROSTER_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Panic threshold of one service, as SERVICE=RATIO (repeat for several).
    #[arg(long = "service-panic-threshold", value_name = "SERVICE=RATIO", value_parser = parse_service_ratio)]
    pub service_panic_thresholds: Vec<(String, f64)>,
}

/// Why a network (`--dns-allow`, `check_deny`) does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before the `/` is not an IP address.
    #[error("not an IP address: {0:?}")]
    Address(String),
    /// The prefix length is not a number up to 32 (IPv4) or 128 (IPv6).
    #[error("bad prefix length in {0:?}")]
    PrefixLength(String),
}

/// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (a single host).
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), CidrError> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| CidrError::Address(addr.to_owned()))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| CidrError::PrefixLength(s.to_owned()))?,
    };
    Ok((ip, len))
}

/// Why a `--service-panic-threshold` does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceRatioError {
    /// No `=`.
    #[error("expected SERVICE=RATIO, got {0:?}")]
    Shape(String),
    /// The ratio is not a number.
    #[error("not a number: {0:?}")]
    Ratio(String),
}

fn parse_service_ratio(s: &str) -> Result<(String, f64), ServiceRatioError> {
    let (name, ratio) = s
        .split_once('=')
        .ok_or_else(|| ServiceRatioError::Shape(s.to_owned()))?;
    let ratio = ratio
        .parse()
        .map_err(|_| ServiceRatioError::Ratio(ratio.to_owned()))?;
    Ok((name.to_ascii_lowercase(), ratio))
}

/// The TOML file: the same settings as the flags, with the same names in snake_case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    // Cluster settings; merged with the flags in config/cluster.rs.
    bootstrap_expect: Option<usize>,
    #[serde(default, deserialize_with = "cluster::join_list")]
    join: Vec<String>,
    advertise_addr: Option<String>,
    node_id: Option<u64>,
    cluster_token_file: Option<PathBuf>,
    #[serde(default, with = "duration::option")]
    raft_heartbeat: Option<Duration>,
    http_addr: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    #[serde(default, with = "duration::option")]
    lease_grace: Option<Duration>,
    log: Option<String>,
    max_instances_per_service: Option<usize>,
    max_instances: Option<usize>,
    #[serde(default, with = "duration::option")]
    deregister_critical_after: Option<Duration>,
    dns_addr: Option<SocketAddr>,
    no_dns: Option<bool>,
    grpc_addr: Option<SocketAddr>,
    no_grpc: Option<bool>,
    max_xds_streams: Option<usize>,
    dns_domain: Option<String>,
    dns_ttl: Option<u32>,
    check_concurrency: Option<usize>,
    check_output_body: Option<bool>,
    #[serde(default)]
    check_deny: Vec<String>,
    check_deny_loopback: Option<bool>,
    #[serde(default)]
    dns_allow: Vec<String>,
    dns_rate_limit: Option<u32>,
    dns_max_udp_payload: Option<u16>,
    dns_max_tcp_connections: Option<usize>,
    dns_advertise_addr: Option<std::net::IpAddr>,
    self_preservation_threshold: Option<f64>,
    #[serde(default, with = "duration::option")]
    renewal_window: Option<Duration>,
    self_preservation_min_instances: Option<usize>,
    #[serde(default, with = "duration::option")]
    self_preservation_max_hold: Option<Duration>,
    panic_threshold: Option<f64>,
    datacenter: Option<String>,
    node_name: Option<String>,
    acl: Option<bool>,
    acl_tokens: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    max_connections: Option<usize>,
    no_http2: Option<bool>,
    http2_max_streams: Option<u32>,
    max_requests: Option<usize>,
    max_watchers: Option<usize>,
    write_rate_limit: Option<f64>,
    #[serde(default, with = "duration::option")]
    request_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    header_read_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    body_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    write_timeout: Option<Duration>,
    #[serde(default)]
    panic_thresholds: std::collections::BTreeMap<String, f64>,
    peer_tls_cert: Option<PathBuf>,
    peer_tls_key: Option<PathBuf>,
    peer_tls_ca: Option<PathBuf>,
    // Federation settings; merged with the flags in config/federation.rs.
    federate: Option<federation::FederateFile>,
    federation_token_file: Option<PathBuf>,
    failover: Option<federation::FailoverFile>,
    #[serde(default, with = "duration::option")]
    federation_timeout: Option<Duration>,
    #[serde(default, with = "duration::option")]
    federation_probe_interval: Option<Duration>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// Why.
        message: String,
    },
}

/// Validated configuration of a registry server.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Where the catalog is stored; `None` keeps it in memory.
    pub data_dir: Option<PathBuf>,
    /// Extra lease time after a restart or restore.
    pub lease_grace: Duration,
    /// Log filter.
    pub log: String,
    /// Catalog capacity.
    pub catalog: CatalogLimits,
    /// Request validation limits.
    pub limits: Limits,
    /// DNS listen address (UDP and TCP); `None` turns DNS off.
    pub dns_addr: Option<SocketAddr>,
    /// DNS answers: domain and TTLs.
    pub dns: roster_dns::DnsConfig,
    /// gRPC (xDS) listen address; `None` turns it off.
    pub grpc_addr: Option<SocketAddr>,
    /// Most xDS streams open at once.
    pub max_xds_streams: usize,
    /// Health checker settings.
    pub checker: CheckerConfig,
    /// What active checks may reach and show.
    pub probe: crate::checks::probe::ProbePolicy,
    /// The guard against mass expiry.
    pub self_preservation: SelfPreservation,
    /// Panic thresholds of services.
    pub panic: PanicPolicy,
    /// Datacenter of the Consul-compatible API.
    pub datacenter: String,
    /// Node name of the Consul-compatible API.
    pub node_name: String,
    /// Tokens when ACLs are on; `None` when they are off.
    pub acl: Option<crate::acl::Tokens>,
    /// Connections and TLS.
    pub serve: ServeConfig,
    /// Overload limits.
    pub limits_http: LimitConfig,
    /// Replication, when this node is one of a cluster.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Other datacenters, when this node federates or takes forwarded calls.
    pub federation: Option<FederationConfig>,
}

/// Default DNS listen address.
pub const DEFAULT_DNS_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8600,
));

/// Largest TTL a DNS answer may carry (RFC 2181 §8).
const MAX_DNS_TTL: u32 = i32::MAX as u32;

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8500)),
            data_dir: None,
            lease_grace: Duration::from_secs(30),
            log: "info".into(),
            catalog: CatalogLimits::default(),
            limits: Limits::default(),
            dns_addr: Some(DEFAULT_DNS_ADDR),
            dns: roster_dns::DnsConfig::default(),
            grpc_addr: Some(crate::xds::DEFAULT_GRPC_ADDR),
            max_xds_streams: 16_384,
            checker: CheckerConfig::default(),
            probe: crate::checks::probe::ProbePolicy::default(),
            self_preservation: SelfPreservation::default(),
            panic: PanicPolicy::default(),
            datacenter: "dc1".into(),
            node_name: default_node_name(),
            acl: None,
            serve: ServeConfig::default(),
            limits_http: LimitConfig::default(),
            cluster: None,
            federation: None,
        }
    }
}

impl Config {
    /// Merges flags/env over the optional file over the defaults, then validates.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let mut file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let cluster_file = file.take_cluster();
        let federation_file = file.take_federation();
        let mut cfg = Config::default();
        if let Some(a) = args.http_addr.or(file.http_addr) {
            cfg.http_addr = a;
        }
        if let Some(d) = args.data_dir.clone().or(file.data_dir) {
            cfg.data_dir = Some(d);
        }
        if let Some(g) = args.lease_grace.or(file.lease_grace) {
            cfg.lease_grace = g;
        }
        if let Some(l) = args.log.clone().or(file.log) {
            cfg.log = l;
        }
        if let Some(n) = args
            .max_instances_per_service
            .or(file.max_instances_per_service)
        {
            cfg.catalog.max_instances_per_service = n;
        }
        if let Some(n) = args.max_instances.or(file.max_instances) {
            cfg.catalog.max_instances = n;
        }
        if let Some(d) = args
            .deregister_critical_after
            .or(file.deregister_critical_after)
        {
            cfg.limits.default_deregister_critical_after = d;
        }
        if let Some(a) = args.dns_addr.or(file.dns_addr) {
            cfg.dns_addr = Some(a);
        }
        if args.no_dns.or(file.no_dns).unwrap_or(false) {
            cfg.dns_addr = None;
        }
        if let Some(a) = args.grpc_addr.or(file.grpc_addr) {
            cfg.grpc_addr = Some(a);
        }
        if args.no_grpc.or(file.no_grpc).unwrap_or(false) {
            cfg.grpc_addr = None;
        }
        if let Some(n) = args.max_xds_streams.or(file.max_xds_streams) {
            cfg.max_xds_streams = n;
        }
        if let Some(d) = args.dns_domain.clone().or(file.dns_domain) {
            cfg.dns.domain = d;
        }
        if let Some(t) = args.dns_ttl.or(file.dns_ttl) {
            cfg.dns.ttl = t;
        }
        cfg.dns.allow = if args.dns_allow.is_empty() {
            file.dns_allow
                .iter()
                .map(|s| parse_cidr(s))
                .collect::<Result<_, _>>()
                .map_err(|e| ConfigError::Invalid {
                    setting: "dns_allow",
                    message: e.to_string(),
                })?
        } else {
            args.dns_allow.clone()
        };
        match args.dns_rate_limit.or(file.dns_rate_limit) {
            None | Some(0) => {}
            Some(rate) => {
                cfg.dns.rrl = Some(roster_dns::RrlConfig {
                    responses_per_second: rate,
                    burst: rate.saturating_mul(2),
                    ..roster_dns::RrlConfig::default()
                });
            }
        }
        if let Some(n) = args.dns_max_udp_payload.or(file.dns_max_udp_payload) {
            cfg.dns.max_udp_payload = n;
        }
        if let Some(n) = args
            .dns_max_tcp_connections
            .or(file.dns_max_tcp_connections)
        {
            cfg.dns.max_tcp_connections = n;
        }
        if let Some(ip) = args.dns_advertise_addr.or(file.dns_advertise_addr) {
            cfg.dns.advertise_addr = Some(ip);
        }
        if let Some(n) = args.check_concurrency.or(file.check_concurrency) {
            cfg.checker.concurrency = n;
        }
        if let Some(b) = args.check_output_body.or(file.check_output_body) {
            cfg.probe.output_body = b;
        }
        let deny = if args.check_deny.is_empty() {
            &file.check_deny
        } else {
            &args.check_deny
        };
        for entry in deny {
            let entry = entry.trim();
            if let Ok(net) = parse_cidr(entry) {
                cfg.probe.deny.push(net);
            } else if !entry.is_empty()
                && entry.len() <= 253
                && entry
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            {
                let host = entry.trim_end_matches('.').to_ascii_lowercase();
                cfg.probe.deny_hosts.push(host);
            } else {
                return Err(ConfigError::Invalid {
                    setting: "check_deny",
                    message: format!("expected a CIDR, an IP address or a host name: {entry:?}"),
                });
            }
        }
        if args
            .check_deny_loopback
            .or(file.check_deny_loopback)
            .unwrap_or(false)
        {
            cfg.probe.deny_loopback();
        }
        if let Some(t) = args
            .self_preservation_threshold
            .or(file.self_preservation_threshold)
        {
            cfg.self_preservation.threshold = t;
        }
        if let Some(w) = args.renewal_window.or(file.renewal_window) {
            cfg.self_preservation.window = w;
        }
        if let Some(n) = args
            .self_preservation_min_instances
            .or(file.self_preservation_min_instances)
        {
            cfg.self_preservation.min_instances = n;
        }
        if let Some(h) = args
            .self_preservation_max_hold
            .or(file.self_preservation_max_hold)
        {
            cfg.self_preservation.max_hold = h;
        }
        if let Some(t) = args.panic_threshold.or(file.panic_threshold) {
            cfg.panic.default = t;
        }
        if let Some(dc) = args.datacenter.clone().or(file.datacenter) {
            cfg.datacenter = dc;
        }
        if let Some(n) = args.node_name.clone().or(file.node_name) {
            cfg.node_name = n;
        }
        if args.acl.or(file.acl).unwrap_or(false) {
            let text = match args.acl_tokens.clone().or(file.acl_tokens) {
                Some(path) => std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read { path, source })?,
                None => std::env::var("ROSTER_ACL_TOKENS").unwrap_or_default(),
            };
            let tokens = crate::acl::Tokens::parse(&text).map_err(|e| ConfigError::Invalid {
                setting: "acl_tokens",
                message: e.to_string(),
            })?;
            if tokens.is_empty() {
                return Err(ConfigError::Invalid {
                    setting: "acl_tokens",
                    message: "ACLs are on but no token is configured: give --acl-tokens FILE or ROSTER_ACL_TOKENS".into(),
                });
            }
            cfg.acl = Some(tokens);
        }
        match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => {
                cfg.serve.tls = Some(TlsFiles {
                    cert,
                    key,
                    client_ca: args.tls_client_ca.clone().or(file.tls_client_ca),
                });
            }
            (None, None) => {}
            _ => {
                return Err(ConfigError::Invalid {
                    setting: "tls_cert",
                    message: "give both tls_cert and tls_key".into(),
                });
            }
        }
        if let Some(n) = args.max_connections.or(file.max_connections) {
            cfg.serve.max_connections = n;
        }
        if let Some(off) = args.no_http2.or(file.no_http2) {
            cfg.serve.http2 = !off;
        }
        if let Some(n) = args.http2_max_streams.or(file.http2_max_streams) {
            cfg.serve.http2_max_streams = n;
        }
        if let Some(t) = args.header_read_timeout.or(file.header_read_timeout) {
            cfg.serve.header_read_timeout = t;
        }
        if let Some(n) = args.max_requests.or(file.max_requests) {
            cfg.limits_http.max_requests = n;
        }
        if let Some(n) = args.max_watchers.or(file.max_watchers) {
            cfg.limits_http.max_watchers = n;
        }
        if let Some(r) = args.write_rate_limit.or(file.write_rate_limit) {
            cfg.limits_http.write_rate = r;
        }
        if let Some(t) = args.request_timeout.or(file.request_timeout) {
            cfg.limits_http.request_timeout = t;
        }
        if let Some(t) = args.body_timeout.or(file.body_timeout) {
            cfg.limits_http.body_timeout = t;
        }
        if let Some(t) = args.write_timeout.or(file.write_timeout) {
            cfg.serve.write_timeout = t;
        }
        cfg.panic.services = file
            .panic_thresholds
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        cfg.panic
            .services
            .extend(args.service_panic_thresholds.iter().cloned());
        cfg.cluster =
            args.cluster
                .to_config(cluster_file, cfg.http_addr, cfg.data_dir.as_deref())?;
        let peer_tls = cluster::PeerTlsSettings::merge(
            &args.cluster,
            cluster::PeerTlsSettings {
                cert: file.peer_tls_cert,
                key: file.peer_tls_key,
                ca: file.peer_tls_ca,
            },
        )
        .into_config(cfg.cluster.as_ref(), cfg.serve.tls.as_ref())?;
        cfg.federation =
            args.federation
                .to_config(federation_file, &cfg.datacenter, peer_tls.clone())?;
        if let Some(cluster) = &mut cfg.cluster {
            cluster.peer_tls = peer_tls;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, message: &str| {
            Err(ConfigError::Invalid {
                setting,
                message: message.into(),
            })
        };
        if self.catalog.max_instances_per_service == 0 {
            return invalid("max_instances_per_service", "must be at least 1");
        }
        if self.catalog.max_instances < self.catalog.max_instances_per_service {
            return invalid(
                "max_instances",
                "must be at least max_instances_per_service",
            );
        }
        let (lo, hi) = self.limits.dereg_range;
        let d = self.limits.default_deregister_critical_after;
        if d < lo || d > hi {
            return invalid("deregister_critical_after", "must be between 1s and 7 days");
        }
        if self.lease_grace > Duration::from_secs(24 * 3600) {
            return invalid("lease_grace", "must be at most 24h");
        }
        tracing_subscriber::EnvFilter::try_new(&self.log).map_err(|e| ConfigError::Invalid {
            setting: "log",
            message: e.to_string(),
        })?;
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !label_ok(&self.datacenter) {
            return invalid("datacenter", "1 to 128 letters, digits, '-', '_' or '.'");
        }
        if !label_ok(&self.node_name) {
            return invalid("node_name", "1 to 128 letters, digits, '-', '_' or '.'");
        }
        for (setting, n) in [
            ("max_connections", self.serve.max_connections),
            ("max_requests", self.limits_http.max_requests),
            ("max_watchers", self.limits_http.max_watchers),
            ("max_xds_streams", self.max_xds_streams),
        ] {
            if n == 0 || n > 10_000_000 {
                return invalid(setting, "must be between 1 and 10000000");
            }
        }
        if !(1..=100_000).contains(&self.serve.http2_max_streams) {
            return invalid("http2_max_streams", "must be between 1 and 100000");
        }
        if !(0.0..=1e9).contains(&self.limits_http.write_rate) {
            return invalid(
                "write_rate_limit",
                "must be 0 (no limit) or a positive rate",
            );
        }
        for (setting, d) in [
            ("request_timeout", self.limits_http.request_timeout),
            ("header_read_timeout", self.serve.header_read_timeout),
            ("body_timeout", self.limits_http.body_timeout),
            ("write_timeout", self.serve.write_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return invalid(setting, "must be between 100ms and 1h");
            }
        }
        if let Some(tls) = &self.serve.tls {
            tls.load().map_err(|e| ConfigError::Invalid {
                setting: "tls_cert",
                message: e.to_string(),
            })?;
        }
        if self.checker.concurrency == 0 || self.checker.concurrency > 100_000 {
            return invalid("check_concurrency", "must be between 1 and 100000");
        }
        let ratio_ok = |r: f64| (0.0..=1.0).contains(&r);
        if !ratio_ok(self.self_preservation.threshold) {
            return invalid(
                "self_preservation_threshold",
                "must be between 0 (off) and 1",
            );
        }
        if self.self_preservation.window < Duration::from_secs(1)
            || self.self_preservation.window > Duration::from_secs(24 * 3600)
        {
            return invalid("renewal_window", "must be between 1s and 24h");
        }
        if self.self_preservation.max_hold < Duration::from_secs(1)
            || self.self_preservation.max_hold > Duration::from_secs(24 * 3600)
        {
            return invalid(
                "self_preservation_max_hold",
                "must be between 1s and 24h (self-preservation may delay expiry, never stop it)",
            );
        }
        if !ratio_ok(self.panic.default) {
            return invalid("panic_threshold", "must be between 0 (off) and 1");
        }
        for (service, ratio) in &self.panic.services {
            if crate::model::ServiceName::parse(service).is_err() || !ratio_ok(*ratio) {
                return Err(ConfigError::Invalid {
                    setting: "panic_thresholds",
                    message: format!(
                        "{service}={ratio}: expected a service name and a ratio between 0 and 1"
                    ),
                });
            }
        }
        if self.dns.ttl > MAX_DNS_TTL {
            return invalid("dns_ttl", "must be at most 2147483647 (RFC 2181)");
        }
        if self.dns.max_udp_payload < 512 {
            return invalid("dns_max_udp_payload", "must be at least 512 (RFC 1035)");
        }
        if self.dns.max_tcp_connections == 0 || self.dns.max_tcp_connections > 1_000_000 {
            return invalid("dns_max_tcp_connections", "must be between 1 and 1000000");
        }
        // The handler is the authority on what a valid domain is.
        roster_dns::DnsHandler::new(Arc::new(NoServices), self.dns.clone()).map_err(|e| {
            ConfigError::Invalid {
                setting: "dns_domain",
                message: e.to_string(),
            }
        })?;
        Ok(())
    }
}

/// The host name, as Consul names its nodes; `roster` when it cannot be read.
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 128
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .unwrap_or_else(|| "roster".into())
}

/// An empty view, to validate the DNS settings before the registry exists.
struct NoServices;

impl roster_dns::ServiceView for NoServices {
    fn service(&self, _: &str) -> Option<Arc<roster_dns::ServiceRecords>> {
        None
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests;

mod cluster;
pub use cluster::ClusterArgs;
mod federation;
pub use federation::{
    FailoverPolicy, FederationArgs, FederationConfig, RemoteDatacenter, RemoteServer,
};
