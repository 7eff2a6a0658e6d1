//! The prober of one remote datacenter: every period (jittered, so the
//! datacenters of a federation do not probe each other in lockstep), each
//! server is asked `GET /v1/federation/ping` with the federation token. The
//! answer must name the datacenter it was configured as; its round-trip time
//! feeds a smoothed RTT. A round where no server answers counts as a failure
//! of the datacenter's circuit, one where some server answers closes it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pool::{RemoteDc, ServerState, error_chain};

/// Largest ping answer read.
const MAX_PING: usize = 4096;

/// The ping answer.
#[derive(serde::Deserialize)]
struct Ping {
    datacenter: String,
}

pub(super) struct Prober {
    pub dc: Arc<RemoteDc>,
    pub http: reqwest::Client,
    pub local: String,
    pub token: String,
    pub timeout: Duration,
    pub interval: Duration,
}

impl Prober {
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        loop {
            self.round().await;
            // Up to a fifth of jitter either way.
            let jitter = self.interval.mul_f64(0.8 + fastrand::f64() * 0.4);
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(jitter) => {}
            }
        }
    }

    async fn round(&self) {
        let results = join_all(self.dc.servers.iter().map(|s| self.probe(s))).await;
        if results.iter().any(|ok| *ok) {
            self.dc.success();
        } else {
            self.dc.failure();
        }
        self.dc.probed.store(true, Ordering::Relaxed);
    }

    /// Probes one server; true when it answered as the datacenter it should be.
    async fn probe(&self, server: &ServerState) -> bool {
        let start = Instant::now();
        let req = self
            .http
            .get(format!("{}/v1/federation/ping", server.base))
            .headers(super::federation_headers(&self.token, &self.local))
            .timeout(self.timeout);
        let outcome = async {
            let resp = req.send().await.map_err(|e| error_chain(&e))?;
            let status = resp.status();
            let body = read_limited(resp, MAX_PING).await?;
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body);
                return Err(format!(
                    "answered {status}: {}",
                    text.chars().take(200).collect::<String>()
                ));
            }
            let ping: Ping = serde_json::from_slice(&body)
                .map_err(|e| format!("not a roster ping answer: {e}"))?;
            if ping.datacenter != self.dc.name {
                return Err(format!(
                    "answers as datacenter {:?}, not {:?}: check --federate",
                    ping.datacenter, self.dc.name
                ));
            }
            Ok(())
        }
        .await;
        let rtt = start.elapsed();
        let ok = outcome.is_ok();
        if let Ok(mut e) = server.error.lock() {
            *e = outcome.err();
        }
        let was = server.healthy.swap(ok, Ordering::Relaxed);
        if was != ok {
            tracing::info!(dc = %self.dc.name, server = %server.server.authority(), healthy = ok, "remote server changed state");
        }
        if ok {
            let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
            let old = server.rtt_us.load(Ordering::Relaxed);
            // EWMA with weight 1/4 on the new sample.
            let new = if old == 0 { us } else { (old * 3 + us) / 4 };
            server.rtt_us.store(new.max(1), Ordering::Relaxed);
        }
        ok
    }
}

/// Reads a body of at most `limit` bytes.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
