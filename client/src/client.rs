use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::api::{
    Instance, MaintenanceRequest, Problem, RegisterRequest, ServiceInstances, ServiceList,
};
use crate::error::{Error, Unavailable};
use crate::failover::{Registries, fails_over};
use crate::watch::{CatalogStream, WatchStream};

/// Filters for [`RosterClient::instances`].
#[derive(Clone, Debug, Default)]
pub struct InstanceQuery {
    /// Include critical instances too (default: only passing and warning).
    pub all: bool,
    /// Only instances carrying every one of these tags.
    pub tags: Vec<String>,
}

/// Which services a catalog stream ([`RosterClient::watch_catalog`])
/// follows: the ones named, plus the ones whose name starts with a prefix;
/// with neither, the whole catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogFilter {
    /// Services named exactly.
    pub services: Vec<String>,
    /// Name prefixes.
    pub prefixes: Vec<String>,
}

impl CatalogFilter {
    /// Every service.
    pub fn all() -> Self {
        Self::default()
    }

    /// These services.
    pub fn services<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        CatalogFilter {
            services: names.into_iter().map(|s| s.as_ref().to_owned()).collect(),
            prefixes: Vec::new(),
        }
    }

    /// Services whose name starts with `prefix`.
    pub fn prefix(prefix: &str) -> Self {
        CatalogFilter {
            services: Vec::new(),
            prefixes: vec![prefix.to_owned()],
        }
    }
}

/// TLS settings for an `https://` registry.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM CA certificates to trust instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain and private key, for registries that verify
    /// clients.
    pub identity_pem: Option<Vec<u8>>,
}

/// A typed HTTP client for the native roster API (`/v1`).
///
/// # Several registry addresses
///
/// Every constructor takes one base URL or a comma-separated list of them, the
/// nodes of a replicated registry:
///
/// ```
/// # fn demo() -> Result<(), roster_client::Error> {
/// use roster_client::RosterClient;
/// let client = RosterClient::new("http://10.0.0.1:8500,http://10.0.0.2:8500,http://10.0.0.3:8500")?;
/// assert_eq!(client.addresses().len(), 3);
/// assert_eq!(client.base_url(), "http://10.0.0.1:8500");
/// # Ok(()) }
/// ```
///
/// Calls go to the address that last worked. A call whose address cannot be
/// reached, times out, or answers 502, 503 (a node without a leader) or 504 is
/// tried on the next address, each address at most once per call; when all
/// fail, the call returns the last error. Any other answer, 4xx and 500
/// included, is the registry's answer and is returned as it is. Watch streams
/// that break move the client to the next address, so the reconnect goes
/// there. Clones share what they learn about the addresses.
#[derive(Clone, Debug)]
pub struct RosterClient {
    http: reqwest::Client,
    /// For watch streams: no overall timeout, but a read timeout well above the
    /// server's 15 s keep-alives, so a dead connection is noticed.
    stream_http: reqwest::Client,
    registries: Arc<Registries>,
    token: Option<String>,
    /// What the HTTP clients were built from, to build new ones.
    settings: Arc<HttpSettings>,
    /// Another datacenter every call is for (`?dc=`), when set.
    datacenter: Option<Arc<str>>,
}

/// Why one attempt of a call, on one registry address, failed.
/// Times one call is sent again on the same address after its connection
/// turned out to be closed ([`Error::is_stale_connection`]).
const STALE_CONNECTION_RETRIES: usize = 3;

enum Failed {
    /// This address cannot serve now (unreachable, timed out, no leader):
    /// another one may.
    Next(Error),
    /// The registry answered with an error: the result of the call.
    Answer(Error),
}

impl RosterClient {
    /// A client for the registry at `base_url` (e.g. `http://127.0.0.1:8500`, or
    /// several such URLs separated by commas) with a 10 s request timeout and a
    /// 2 s connect timeout.
    pub fn new(base_url: &str) -> Result<Self, Error> {
        Self::with_timeout(base_url, Duration::from_secs(10))
    }

    /// Like [`RosterClient::new`] with a chosen request timeout (per address
    /// tried).
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self, Error> {
        Self::with_tls(base_url, timeout, &TlsOptions::default())
    }

    /// A client for an `https://` registry with its own CA and, when the
    /// registry verifies clients, a client certificate.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), roster_client::Error> {
    /// use roster_client::{RosterClient, TlsOptions};
    /// let tls = TlsOptions {
    ///     ca_pem: Some(std::fs::read("ca.pem").unwrap()),
    ///     ..TlsOptions::default()
    /// };
    /// let client = RosterClient::with_tls("https://roster:8500", std::time::Duration::from_secs(10), &tls)?
    ///     .with_token("my-secret-token");
    /// # Ok(()) }
    /// ```
    pub fn with_tls(base_url: &str, timeout: Duration, tls: &TlsOptions) -> Result<Self, Error> {
        let registries = Arc::new(Registries::parse(base_url)?);
        let settings = HttpSettings {
            timeout,
            tls: tls.clone(),
            http2: false,
        };
        let (http, stream_http) = build_http(&settings, &registries)?;
        Ok(RosterClient {
            http,
            stream_http,
            registries,
            token: None,
            settings: Arc::new(settings),
            datacenter: None,
        })
    }

    /// The same client with HTTP connection pools of its own, for use on
    /// another runtime (the pooled connections of a runtime that is shutting
    /// down or blocked cannot carry requests).
    pub(crate) fn detached(&self) -> Result<Self, Error> {
        let (http, stream_http) = build_http(&self.settings, &self.registries)?;
        Ok(RosterClient {
            http,
            stream_http,
            ..self.clone()
        })
    }

    /// The same client speaking HTTP/2: with prior knowledge to an `http://`
    /// registry, by ALPN to an `https://` one (falling back to HTTP/1.1
    /// where the registry offers only that). All calls then share one
    /// connection per registry address, and all watch streams another, so a
    /// process that follows many services holds two sockets instead of one
    /// per stream. A plain-text registry started with `--no-http2` refuses
    /// such a client (`HTTP_1_1_REQUIRED`).
    ///
    /// ```
    /// # fn demo() -> Result<(), roster_client::Error> {
    /// use roster_client::RosterClient;
    /// let client = RosterClient::new("http://127.0.0.1:8500")?.with_http2()?;
    /// assert!(client.speaks_http2());
    /// # Ok(()) }
    /// ```
    pub fn with_http2(self) -> Result<Self, Error> {
        let settings = Arc::new(HttpSettings {
            http2: true,
            ..(*self.settings).clone()
        });
        let (http, stream_http) = build_http(&settings, &self.registries)?;
        Ok(RosterClient {
            http,
            stream_http,
            settings,
            ..self
        })
    }

    /// Whether the client speaks HTTP/2 ([`RosterClient::with_http2`]).
    pub fn speaks_http2(&self) -> bool {
        self.settings.http2
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The same client with every call for datacenter `dc` (`?dc=` on every
    /// path): the registry forwards reads, and writes the token may make, to
    /// that datacenter's servers. A [`crate::Discovery`] over such a client
    /// follows services in `dc`.
    ///
    /// ```
    /// # fn demo() -> Result<(), roster_client::Error> {
    /// use roster_client::RosterClient;
    /// let dc2 = RosterClient::new("http://127.0.0.1:8500")?.with_datacenter("dc2");
    /// assert_eq!(dc2.datacenter(), Some("dc2"));
    /// # Ok(()) }
    /// ```
    pub fn with_datacenter(mut self, dc: &str) -> Self {
        self.datacenter = Some(Arc::from(dc));
        self
    }

    /// The datacenter calls are for, when not the registry's own.
    pub fn datacenter(&self) -> Option<&str> {
        self.datacenter.as_deref()
    }

    /// The URL of `path` on the registry at `base`, with `?dc=` when set.
    fn url(&self, base: &str, path: &str) -> String {
        match &self.datacenter {
            None => format!("{base}{path}"),
            Some(dc) => {
                let sep = if path.contains('?') { '&' } else { '?' };
                format!("{base}{path}{sep}dc={}", encode(dc))
            }
        }
    }

    /// The base URL of the registry address in use now: the one that last
    /// answered (the first one given, before any call).
    pub fn base_url(&self) -> &str {
        self.registries.url(self.registries.current())
    }

    /// Every registry address this client knows, in the order given.
    pub fn addresses(&self) -> &[String] {
        self.registries.all()
    }

    /// Registers (or replaces) an instance. Returns the instance as stored.
    pub async fn register(
        &self,
        service: &str,
        id: &str,
        req: &RegisterRequest,
    ) -> Result<Instance, Error> {
        let path = instance_path(service, id)?;
        self.send(Method::PUT, &path, Some(req)).await
    }

    /// Removes an instance. An instance that is already gone counts as success.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), Error> {
        let path = instance_path(service, id)?;
        match self
            .send::<serde_json::Value>(Method::DELETE, &path, None::<&()>)
            .await
        {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Renews the instance's lease. [`Error::NotFound`] means the registry forgot the
    /// instance and it should register again.
    pub async fn heartbeat(&self, service: &str, id: &str) -> Result<(), Error> {
        let path = format!("{}/heartbeat", instance_path(service, id)?);
        self.send::<serde_json::Value>(Method::PUT, &path, None::<&()>)
            .await
            .map(drop)
    }

    /// Reports the result of a `ttl` check the instance runs itself (this also
    /// restarts the check's TTL). [`Error::NotFound`] means the registry does
    /// not know the instance or the check.
    pub async fn report_check(
        &self,
        service: &str,
        id: &str,
        check: &str,
        status: crate::api::Health,
        output: &str,
    ) -> Result<(), Error> {
        let verdict = match status {
            crate::api::Health::Passing => "pass",
            crate::api::Health::Warning => "warn",
            crate::api::Health::Critical => "fail",
        };
        let path = format!(
            "{}/checks/{}/{verdict}",
            instance_path(service, id)?,
            encode(check)
        );
        let body = crate::api::CheckUpdate {
            output: Some(output.to_owned()),
        };
        self.send::<serde_json::Value>(Method::PUT, &path, Some(&body))
            .await
            .map(drop)
    }

    /// Puts an instance in maintenance (`enabled = true`) or takes it out.
    pub async fn maintenance(
        &self,
        service: &str,
        id: &str,
        req: &MaintenanceRequest,
    ) -> Result<Instance, Error> {
        let path = format!("{}/maintenance", instance_path(service, id)?);
        self.send(Method::PUT, &path, Some(req)).await
    }

    /// Lists all services with instance counts.
    pub async fn services(&self) -> Result<ServiceList, Error> {
        self.send(Method::GET, "/v1/services", None::<&()>).await
    }

    /// The replicated registry as the node answering sees it: members, leader,
    /// term, log positions. 404 ([`Error::NotFound`]) from a lone registry.
    pub async fn raft_status(&self) -> Result<crate::api::RaftStatus, Error> {
        self.send(Method::GET, "/v1/operator/raft", None::<&()>)
            .await
    }

    /// Adds the registry node whose HTTP API is at `addr` (`host:port`) to the
    /// cluster as a voter, once it has caught up. Needs an admin token.
    pub async fn raft_add_peer(&self, addr: &str) -> Result<crate::api::RaftMember, Error> {
        self.send(
            Method::POST,
            "/v1/operator/raft/peers",
            Some(&serde_json::json!({ "addr": addr })),
        )
        .await
    }

    /// Removes node `id` from the cluster. Needs an admin token.
    pub async fn raft_remove_peer(&self, id: u64) -> Result<(), Error> {
        self.send::<serde_json::Value>(
            Method::DELETE,
            &format!("/v1/operator/raft/peers/{id}"),
            None::<&()>,
        )
        .await
        .map(|_| ())
    }

    /// Lists the instances of a service (healthy ones unless `query.all`).
    pub async fn instances(
        &self,
        service: &str,
        query: &InstanceQuery,
    ) -> Result<ServiceInstances, Error> {
        let path = instances_path(service, query);
        self.send(Method::GET, &path, None::<&()>).await
    }

    /// Blocking query: like [`RosterClient::instances`], but the registry holds the
    /// request until the service's index differs from `index` or `wait` passes.
    /// Pass the `index` of the previous answer; 0 answers at once.
    pub async fn instances_blocking(
        &self,
        service: &str,
        query: &InstanceQuery,
        index: u64,
        wait: Duration,
    ) -> Result<ServiceInstances, Error> {
        self.get_blocking(instances_path(service, query), index, wait)
            .await
    }

    /// Blocking query on the service list (any change anywhere answers it).
    pub async fn services_blocking(
        &self,
        index: u64,
        wait: Duration,
    ) -> Result<ServiceList, Error> {
        self.get_blocking("/v1/services".to_owned(), index, wait)
            .await
    }

    /// Opens a watch stream on `services`: first the full current set of each,
    /// then the full set again after every change. To resume after a broken
    /// connection, pass the last [`WatchStream::last_event_id`].
    pub async fn watch(
        &self,
        services: &[&str],
        last_event_id: Option<&str>,
    ) -> Result<WatchStream, Error> {
        let query: Vec<String> = services
            .iter()
            .map(|s| format!("service={}", encode(s)))
            .collect();
        let path = format!("/v1/watch?{}", query.join("&"));
        self.open_stream(&path, last_event_id).await
    }

    /// Opens a catalog stream (`GET /v1/catalog/watch`) on the services that
    /// `filter` selects: first a snapshot of them all, then only what changes
    /// (instances added, changed or removed, services gone), one stream for
    /// any number of services. To resume after a broken connection, pass the
    /// last [`CatalogStream::last_event_id`]: the registry sends only the
    /// deltas missed when it still has them, else a new snapshot.
    pub async fn watch_catalog(
        &self,
        filter: &CatalogFilter,
        last_event_id: Option<&str>,
    ) -> Result<CatalogStream, Error> {
        let path = format!("/v1/catalog/watch?{}", catalog_query(filter));
        let stream = self.open_stream(&path, last_event_id).await?;
        Ok(CatalogStream::new(stream))
    }

    /// The blocking form of [`RosterClient::watch_catalog`] (`GET
    /// /v1/catalog/changes`), for callers that poll rather than hold a
    /// stream. Without `after`, a snapshot of the services `filter` selects,
    /// at once. With the previous answer, every change since to those
    /// services merged into one delta as soon as there is one, or an empty
    /// delta at the current index when `wait` runs out; a snapshot again
    /// (`snapshot: true`: replace what you hold) when the registry is another
    /// run than the one that answered `after`, or no longer keeps the changes
    /// since.
    ///
    /// ```no_run
    /// # async fn poll(client: roster_client::RosterClient) -> Result<(), roster_client::Error> {
    /// use std::time::Duration;
    /// use roster_client::CatalogFilter;
    ///
    /// let filter = CatalogFilter::prefix("web-");
    /// let mut last = client.catalog_changes(&filter, None, Duration::ZERO).await?;
    /// loop {
    ///     let next = client.catalog_changes(&filter, Some(&last), Duration::from_secs(30)).await?;
    ///     // apply `next.event` (replace everything first when `next.snapshot`)
    ///     last = next;
    /// }
    /// # }
    /// ```
    pub async fn catalog_changes(
        &self,
        filter: &CatalogFilter,
        after: Option<&crate::api::CatalogChanges>,
        wait: Duration,
    ) -> Result<crate::api::CatalogChanges, Error> {
        let mut path = format!("/v1/catalog/changes?{}", catalog_query(filter));
        let index = match after {
            Some(prev) if !prev.epoch.is_empty() => {
                path.push_str(&format!("&epoch={}", encode(&prev.epoch)));
                prev.event.index
            }
            _ => 0,
        };
        self.get_blocking(path, index, wait).await
    }

    async fn open_stream(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<WatchStream, Error> {
        // A resume token from another node is fine: the registry sends the full
        // state of every service when the token is not from its own run.
        let (at, resp) = self
            .on_each_address(|at, base| {
                let mut req = self
                    .long_request(Method::GET, base, path)
                    .header(reqwest::header::ACCEPT, "text/event-stream");
                if let Some(id) = last_event_id {
                    req = req.header("last-event-id", id);
                }
                async move {
                    let resp = req.send().await.map_err(transport)?;
                    let status = resp.status();
                    if status.is_success() {
                        return Ok((at, resp));
                    }
                    let bytes = resp.bytes().await.map_err(transport)?;
                    let error = error_for(status, &bytes);
                    Err(if fails_over(status) {
                        Failed::Next(error)
                    } else {
                        Failed::Answer(error)
                    })
                }
            })
            .await?;
        Ok(WatchStream::new(
            resp,
            last_event_id.map(str::to_owned),
            self.registries.clone(),
            at,
        ))
    }

    /// Downloads a snapshot of the whole catalog (versioned JSON, opaque here).
    pub async fn snapshot_save(&self) -> Result<Vec<u8>, Error> {
        self.on_each_address(|_, base| {
            fetch(
                self.long_request(Method::GET, base, "/v1/snapshot"),
                body_of,
            )
        })
        .await
    }

    /// Replaces the whole catalog with a snapshot taken by
    /// [`RosterClient::snapshot_save`]. Returns the catalog index after the restore.
    pub async fn snapshot_restore(&self, snapshot: Vec<u8>) -> Result<u64, Error> {
        // Replacing the catalog with the same snapshot twice leaves the same
        // catalog, so trying the next address after a timeout is safe.
        let bytes = self
            .on_each_address(|_, base| {
                let request = self
                    .long_request(Method::PUT, base, "/v1/snapshot")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(snapshot.clone());
                fetch(request, body_of)
            })
            .await?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))?;
        body["index"]
            .as_u64()
            .ok_or_else(|| Error::Protocol("restore answer without index".into()))
    }

    /// Fetches one instance.
    pub async fn instance(&self, service: &str, id: &str) -> Result<Instance, Error> {
        self.send(Method::GET, &instance_path(service, id)?, None::<&()>)
            .await
    }

    /// A GET with `index` and `wait` added, and a timeout that covers the wait.
    async fn get_blocking<T: DeserializeOwned>(
        &self,
        mut path: String,
        index: u64,
        wait: Duration,
    ) -> Result<T, Error> {
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(&format!(
            "index={index}&wait={}",
            crate::api::duration::format(wait)
        ));
        self.send_timeout(
            Method::GET,
            &path,
            None::<&()>,
            Some(blocking_timeout(wait)),
        )
        .await
    }

    /// A request to the registry at `base` on the client without an overall
    /// timeout (streams, snapshots).
    fn long_request(&self, method: Method, base: &str, path: &str) -> reqwest::RequestBuilder {
        let req = self.stream_http.request(method, self.url(base, path));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Runs one call: `attempt(index, base URL)` on the address in use, then on
    /// each next address while the attempt says [`Failed::Next`]. The address
    /// that answers becomes the one in use.
    ///
    /// Retrying on another address is safe for every call of this API: reads
    /// change nothing, and every write is idempotent (PUT register replaces the
    /// instance, DELETE of a missing instance succeeds, PUT heartbeat, check
    /// reports and maintenance set a state rather than add to one, PUT snapshot
    /// replaces the catalog), so a write that reached a node before it failed
    /// does no harm when it is applied again.
    async fn on_each_address<T, F, Fut>(&self, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(usize, &str) -> Fut,
        Fut: Future<Output = Result<T, Failed>>,
    {
        let mut last = None;
        for at in self.registries.attempt_order() {
            let base = self.registries.url(at);
            let mut result = attempt(at, base).await;
            // A request lost on a keep-alive connection the registry had
            // closed (it restarted) is sent again on this address: every
            // call is safe to repeat (see above), and a fresh connection
            // most likely takes it. A few times, as the pool may hold more
            // such connections.
            for _ in 0..STALE_CONNECTION_RETRIES {
                match &result {
                    Err(Failed::Next(error)) if error.is_stale_connection() => {
                        tracing::debug!(registry = base, %error, "connection closed under the request; sending it again");
                        result = attempt(at, base).await;
                    }
                    _ => break,
                }
            }
            let answer = match result {
                Ok(value) => Ok(value),
                Err(Failed::Answer(error)) => Err(error),
                Err(Failed::Next(error)) => {
                    tracing::debug!(registry = base, %error, "registry unusable; trying the next address");
                    last = Some(error);
                    continue;
                }
            };
            let before = self.registries.settle(at);
            if before != at {
                tracing::info!(
                    registry = base,
                    previous = self.registries.url(before),
                    "now using this registry address"
                );
            }
            return answer;
        }
        Err(last.unwrap_or_else(|| Error::Config("no registry address".into())))
    }

    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T, Error> {
        self.send_timeout(method, path, body, None).await
    }

    async fn send_timeout<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
        timeout: Option<Duration>,
    ) -> Result<T, Error> {
        let body = match body {
            Some(body) => {
                Some(serde_json::to_vec(body).map_err(|e| Error::Protocol(e.to_string()))?)
            }
            None => None,
        };
        self.on_each_address(|_, base| {
            let mut req = self.http.request(method.clone(), self.url(base, path));
            if let Some(timeout) = timeout {
                req = req.timeout(timeout);
            }
            if let Some(token) = &self.token {
                req = req.bearer_auth(token);
            }
            if let Some(body) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            fetch(req, |status, bytes| {
                if !status.is_success() {
                    return Err(error_for(status, bytes));
                }
                let bytes: &[u8] = if bytes.is_empty() { b"null" } else { bytes };
                serde_json::from_slice(bytes)
                    .map_err(|e| Error::Protocol(format!("{e} in {path} response")))
            })
        })
        .await
    }
}

/// What a client's HTTP connections are built from.
#[derive(Clone, Debug)]
struct HttpSettings {
    /// Overall timeout of a call (per address tried).
    timeout: Duration,
    tls: TlsOptions,
    /// HTTP/2 ([`RosterClient::with_http2`]); HTTP/1.1 only when false.
    http2: bool,
}

/// The request client (with an overall timeout) and the stream client for
/// `registries`.
fn build_http(
    settings: &HttpSettings,
    registries: &Registries,
) -> Result<(reqwest::Client, reqwest::Client), Error> {
    let HttpSettings {
        timeout,
        tls,
        http2,
    } = settings;
    let timeout = *timeout;
    // Every address in plain text: HTTP/2 goes with prior knowledge.
    let plain = registries.all().iter().all(|u| u.starts_with("http://"));
    let builder = |b: reqwest::ClientBuilder| -> Result<reqwest::ClientBuilder, Error> {
        let mut b = b
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .user_agent(concat!("roster-client/", env!("CARGO_PKG_VERSION")));
        b = match (*http2, plain) {
            (false, _) => b.http1_only(),
            // In plain text the client must know beforehand; over TLS the
            // version is settled by ALPN (with HTTP/1.1 to fall back on).
            (true, true) => b.http2_prior_knowledge(),
            (true, false) => b,
        };
        if let Some(pem) = &tls.ca_pem {
            // A private CA replaces the public roots: a control plane should
            // trust only its own.
            b = b.tls_certs_only(
                reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| Error::Config(format!("CA certificates: {e}")))?,
            );
        }
        if let Some(pem) = &tls.identity_pem {
            b = b.identity(
                reqwest::Identity::from_pem(pem)
                    .map_err(|e| Error::Config(format!("client certificate: {e}")))?,
            );
        }
        Ok(b)
    };
    let http = builder(reqwest::Client::builder().timeout(timeout))?
        .build()
        .map_err(Error::from_reqwest)?;
    let stream_http = builder(reqwest::Client::builder().read_timeout(Duration::from_secs(45)))?
        .build()
        .map_err(Error::from_reqwest)?;
    Ok((http, stream_http))
}

/// Sends `request`, reads the whole answer and gives it to `read`, unless the
/// address failed: the request did not get through, or the answer says that
/// this node cannot serve now ([`fails_over`]).
async fn fetch<T>(
    request: reqwest::RequestBuilder,
    read: impl FnOnce(StatusCode, &[u8]) -> Result<T, Error>,
) -> Result<T, Failed> {
    let resp = request.send().await.map_err(transport)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(transport)?;
    if fails_over(status) {
        return Err(Failed::Next(error_for(status, &bytes)));
    }
    read(status, &bytes).map_err(Failed::Answer)
}

/// The body of a successful answer.
fn body_of(status: StatusCode, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    if !status.is_success() {
        return Err(error_for(status, bytes));
    }
    Ok(bytes.to_vec())
}

/// A request that did not complete: the address is unusable when the request
/// timed out or the connection failed; a request this client could not even
/// build, or an answer it could not decode, would fail on every address.
fn transport(e: reqwest::Error) -> Failed {
    match Error::from_reqwest(e) {
        e @ (Error::Timeout | Error::Unavailable(_)) => Failed::Next(e),
        e => Failed::Answer(e),
    }
}

/// The error for a non-success response carrying `body`.
fn error_for(status: StatusCode, body: &[u8]) -> Error {
    let mut problem: Problem = serde_json::from_slice(body).unwrap_or_else(|_| Problem {
        detail: String::from_utf8_lossy(body).chars().take(512).collect(),
        ..Problem::default()
    });
    problem.status = status.as_u16();
    match status {
        StatusCode::NOT_FOUND => Error::NotFound(problem),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Denied(problem),
        s if s.is_client_error() => Error::Invalid(problem),
        _ => Unavailable::Status { problem }.into(),
    }
}

/// The query string that selects `filter`'s services on the catalog stream
/// and its blocking form.
fn catalog_query(filter: &CatalogFilter) -> String {
    let query: Vec<String> = filter
        .services
        .iter()
        .map(|s| format!("service={}", encode(s)))
        .chain(
            filter
                .prefixes
                .iter()
                .map(|p| format!("prefix={}", encode(p))),
        )
        .collect();
    query.join("&")
}

/// Client-side timeout of a blocking query: the wait, the server's jitter (up to
/// wait/16), and a margin for the network.
fn blocking_timeout(wait: Duration) -> Duration {
    wait + wait / 16 + Duration::from_secs(10)
}

fn instances_path(service: &str, query: &InstanceQuery) -> String {
    let mut path = format!("/v1/services/{}", encode(service));
    let mut sep = '?';
    if query.all {
        path.push_str("?all=true");
        sep = '&';
    }
    for tag in &query.tags {
        path.push(sep);
        path.push_str("tag=");
        path.push_str(&encode(tag));
        sep = '&';
    }
    path
}

/// The path of an instance. The id is checked first with the registry's own
/// rules: `.` and `..` in particular would be resolved away by the URL and
/// address another resource.
fn instance_path(service: &str, id: &str) -> Result<String, Error> {
    crate::api::check_instance_id(id).map_err(|detail| {
        Error::Invalid(crate::api::Problem {
            kind: "urn:roster:problem:invalid-field".into(),
            title: "Invalid request field".into(),
            status: 400,
            detail,
            field: Some("id".into()),
            errors: Box::default(),
        })
    })?;
    Ok(format!(
        "/v1/services/{}/instances/{}",
        encode(service),
        encode(id)
    ))
}

/// Percent-encodes everything outside the URL-safe unreserved set.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that answers every first request of a connection and
    /// closes the connection, unanswered, on its second: what a pooled
    /// keep-alive connection to a registry that restarted looks like.
    async fn closes_kept_connections() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answered = std::sync::Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = 0;
                    loop {
                        // Requests here are small GETs: one read is one request.
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        seen += 1;
                        if seen > 1 {
                            return; // dropped with the request unanswered
                        }
                        let body = r#"{"index":7,"services":[]}"#;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        conn.write_all(head.as_bytes()).await.unwrap();
                        conn.write_all(body.as_bytes()).await.unwrap();
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        (url, answered)
    }

    #[tokio::test]
    async fn a_call_lost_on_a_closed_keep_alive_connection_is_sent_again() {
        let (url, answered) = closes_kept_connections().await;
        let client = RosterClient::new(&url).unwrap();
        for n in 1..=3 {
            let list = client
                .services()
                .await
                .unwrap_or_else(|e| panic!("call {n}: {e}"));
            assert_eq!(list.index, 7);
        }
        // Each call after the first found its pooled connection closed under
        // it and went through on a new one.
        assert_eq!(answered.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn refuses_ids_a_url_would_resolve_away() {
        for id in [".", ".."] {
            let err = instance_path("web", id).unwrap_err();
            assert_eq!(err.problem().unwrap().field.as_deref(), Some("id"));
        }
        assert_eq!(
            instance_path("web", "Web-1:8080").unwrap(),
            "/v1/services/web/instances/Web-1%3A8080"
        );
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn rejects_urls_without_scheme() {
        assert!(matches!(
            RosterClient::new("127.0.0.1:8500"),
            Err(Error::Config(_))
        ));
        assert_eq!(
            RosterClient::new("http://h:1/").unwrap().base_url(),
            "http://h:1"
        );
    }

    #[test]
    fn every_constructor_takes_an_address_list() {
        let client = RosterClient::new("http://a:1, http://b:2/").unwrap();
        assert_eq!(client.addresses(), ["http://a:1", "http://b:2"]);
        assert_eq!(client.base_url(), "http://a:1");
        let client = RosterClient::with_timeout("http://a:1,https://b:2", Duration::from_secs(1))
            .unwrap()
            .with_token("t");
        assert_eq!(client.addresses(), ["http://a:1", "https://b:2"]);
        for bad in ["http://a:1,,http://b:2", "http://a:1,", "http://a:1,b:2"] {
            assert!(
                matches!(RosterClient::new(bad), Err(Error::Config(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn clones_share_the_address_in_use() {
        let client = RosterClient::new("http://a:1,http://b:2").unwrap();
        let clone = client.clone();
        client.registries.settle(1);
        assert_eq!(clone.base_url(), "http://b:2");
    }
}
