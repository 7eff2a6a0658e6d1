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

use crate::http::serve::{read_certs, read_key, read_roots};

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
    pub fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        read_roots(&self.ca, &mut roots)?;
        Ok(roots)
    }

    /// The TLS configuration of outgoing peer calls: this node's certificate as
    /// client identity, the peer CA alone as roots.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("{} and {}: {e}", self.cert.display(), self.key.display()))
    }

    /// Checks a certificate a client presented against the peer CA alone
    /// (the handshake accepts the API's client CA too).
    pub fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider,
        )
        .build()
        .map_err(|e| format!("{}: {e}", self.ca.display()))
    }

    /// Loads every file once: whether the settings can be used.
    pub fn check(&self) -> Result<(), String> {
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
