//! Peer TLS: the files a node proves itself with to the other nodes, and the
//! rustls configurations made of them.
//!
//! One certificate serves both ways: a node presents it as a server on its HTTP
//! port and as a client when it calls a peer, so it needs both the `serverAuth`
//! and the `clientAuth` extended key usage (or none), and a subject alternative
//! name for the address it advertises (DNS name or IP).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::danger::ClientCertVerifier;

use crate::http::serve::{TlsError, read_certs, read_key, read_roots};

/// Where a node's peer TLS material lives; read at start and again when it
/// changes (like the API's certificate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTls {
    /// PEM certificate chain: this node's identity towards its peers (the
    /// API's certificate when no separate one is given).
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM CA certificates that peers' certificates must chain to; the only
    /// roots trusted for peer traffic.
    pub ca: PathBuf,
}

impl PeerTls {
    /// The peer CA as a root store.
    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        read_roots(&self.ca, &mut roots)?;
        Ok(roots)
    }

    /// The TLS configuration of outgoing peer calls: this node's certificate as
    /// client identity, the peer CA alone as roots.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocols)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(|source| TlsError::KeyPair {
                cert: self.cert.clone(),
                key: self.key.clone(),
                source,
            })
    }

    /// Checks a certificate a client presented against the peer CA alone
    /// (the handshake accepts the API's client CA too).
    pub fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider,
        )
        .build()
        .map_err(|source| TlsError::Verifier {
            path: self.ca.clone(),
            source,
        })
    }

    /// Loads every file once: whether the settings can be used.
    pub fn check(&self) -> Result<(), TlsError> {
        self.client_config()?;
        self.verifier()?;
        Ok(())
    }
}

/// Whether the chain a client presented (end entity first) leads to the peer
/// CA according to `verifier`.
pub fn is_peer(
    verifier: &dyn ClientCertVerifier,
    chain: &[rustls::pki_types::CertificateDer<'static>],
) -> bool {
    let Some((end, intermediates)) = chain.split_first() else {
        return false;
    };
    verifier
        .verify_client_cert(end, intermediates, rustls::pki_types::UnixTime::now())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use crate::config::{Config, ConfigError, ServeArgs};

    /// A CA and a node certificate in `dir`: ca.pem, node.pem, node.key.
    fn write_files(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        std::fs::write(dir.join("ca.pem"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = leaf
            .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
            .unwrap();
        std::fs::write(dir.join("node.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("node.key"), key.serialize_pem()).unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(dir.join("other.key"), other.serialize_pem()).unwrap();
        std::fs::write(dir.join("garbage.pem"), "not a certificate").unwrap();
    }

    fn args(dir: &Path, clustered: bool) -> ServeArgs {
        let mut args = ServeArgs {
            data_dir: Some(dir.join("data")),
            http_addr: Some("127.0.0.1:8500".parse().unwrap()),
            ..ServeArgs::default()
        };
        if clustered {
            args.cluster.bootstrap_expect = Some(1);
            args.cluster.cluster_token = Some("a-long-enough-cluster-token".into());
        }
        args
    }

    fn refused(args: &ServeArgs) -> (&'static str, String) {
        match Config::load(args) {
            Err(ConfigError::Invalid { setting, message }) => (setting, message),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn peer_tls_settings_are_validated() {
        let dir = std::env::temp_dir().join(format!("roster-peer-tls-{}", std::process::id()));
        write_files(&dir);
        let f = |name: &str| Some::<PathBuf>(dir.join(name));

        // All three flags.
        let mut all = args(&dir, true);
        all.cluster.peer_tls_cert = f("node.pem");
        all.cluster.peer_tls_key = f("node.key");
        all.cluster.peer_tls_ca = f("ca.pem");
        let tls = Config::load(&all)
            .unwrap()
            .cluster
            .unwrap()
            .peer_tls
            .unwrap();
        assert_eq!(tls.cert, dir.join("node.pem"));
        assert_eq!(tls.ca, dir.join("ca.pem"));

        // Off by default.
        let none = Config::load(&args(&dir, true)).unwrap();
        assert_eq!(none.cluster.unwrap().peer_tls, None);

        // The CA is what turns it on.
        let mut no_ca = all.clone();
        no_ca.cluster.peer_tls_ca = None;
        assert_eq!(refused(&no_ca).0, "peer_tls_ca");

        // Cert and key together, or the API's.
        let mut half = all.clone();
        half.cluster.peer_tls_key = None;
        assert_eq!(refused(&half).0, "peer_tls_cert");
        let mut ca_only = all.clone();
        ca_only.cluster.peer_tls_cert = None;
        ca_only.cluster.peer_tls_key = None;
        let (setting, message) = refused(&ca_only);
        assert_eq!(setting, "peer_tls_cert");
        assert!(message.contains("--tls-cert"), "{message}");
        let mut api = ca_only.clone();
        api.tls_cert = f("node.pem");
        api.tls_key = f("node.key");
        let tls = Config::load(&api)
            .unwrap()
            .cluster
            .unwrap()
            .peer_tls
            .unwrap();
        assert_eq!(tls.cert, dir.join("node.pem"));
        assert_eq!(tls.key, dir.join("node.key"));

        // Files that do not parse, do not exist, or do not match.
        for (field, name) in [
            ("ca", "garbage.pem"),
            ("ca", "missing.pem"),
            ("cert", "garbage.pem"),
            ("key", "other.key"),
            ("key", "garbage.pem"),
        ] {
            let mut bad = all.clone();
            match field {
                "ca" => bad.cluster.peer_tls_ca = f(name),
                "cert" => bad.cluster.peer_tls_cert = f(name),
                _ => bad.cluster.peer_tls_key = f(name),
            }
            let (setting, message) = refused(&bad);
            assert_eq!(setting, "peer_tls_cert", "{field}={name}: {message}");
        }

        // Peers are called over https.
        let mut scheme = all.clone();
        scheme.cluster.advertise_addr = Some("http://127.0.0.1:8500".into());
        assert_eq!(refused(&scheme).0, "advertise_addr");
        let mut scheme = all.clone();
        scheme.cluster.join = vec!["http://127.0.0.1:8501".into()];
        assert_eq!(refused(&scheme).0, "join");

        // Only for a cluster node.
        let mut alone = args(&dir, false);
        alone.cluster.peer_tls_ca = f("ca.pem");
        assert_eq!(refused(&alone).0, "peer_tls_ca");

        // The TOML keys.
        let toml = dir.join("roster.toml");
        std::fs::write(
            &toml,
            format!(
                "peer_tls_cert = {:?}\npeer_tls_key = {:?}\npeer_tls_ca = {:?}\n",
                dir.join("node.pem"),
                dir.join("node.key"),
                dir.join("ca.pem")
            ),
        )
        .unwrap();
        let mut file = args(&dir, true);
        file.config = Some(toml);
        let tls = Config::load(&file)
            .unwrap()
            .cluster
            .unwrap()
            .peer_tls
            .unwrap();
        assert_eq!(tls.key, dir.join("node.key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn peer_tls_flags_parse() {
        #[derive(clap::Parser)]
        struct Cmd {
            #[command(flatten)]
            args: ServeArgs,
        }
        let cmd = <Cmd as clap::Parser>::try_parse_from([
            "serve",
            "--peer-tls-cert",
            "c.pem",
            "--peer-tls-key",
            "k.pem",
            "--peer-tls-ca",
            "ca.pem",
        ])
        .unwrap();
        assert_eq!(cmd.args.cluster.peer_tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(cmd.args.cluster.peer_tls_key, Some(PathBuf::from("k.pem")));
        assert_eq!(cmd.args.cluster.peer_tls_ca, Some(PathBuf::from("ca.pem")));
    }
}
