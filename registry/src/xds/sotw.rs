//! State-of-the-world ADS (what gRPC clients speak): each response of a type
//! carries the resources the client asked for, versioned by the catalog
//! index; an ACK changes nothing, a NACK is logged and counted and nothing is
//! sent again until the catalog changes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{BufMut as _, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tonic::Status;

use super::resources::{Built, Kind, PerKind};
use super::stream::{Framed, Session};
use super::{Wake, Xds, node_id};

/// Most names one stream may subscribe to per type.
const MAX_NAMES: usize = 10_000;

/// One resource type on one stream.
#[derive(Debug, Default)]
struct Sub {
    /// Names asked for.
    names: BTreeSet<Arc<str>>,
    /// Every cluster of the catalog (an empty CDS request) .
    wildcard: bool,
    /// Version of each resource the client was last sent.
    sent: SentMap,
    /// Catalog index of the last response.
    index: Option<u64>,
    /// For a wildcard CDS subscription, the digest of the clusters last
    /// sent ([`super::resources::All`]).
    all_sent: Option<u64>,
    /// Nonce of the last response.
    nonce: String,
    /// Version of the last response.
    version: String,
}

/// Resource name to the version sent. Hashed with foldhash (seeded per
/// map): it is looked up for every resource of every response.
type SentMap = HashMap<Arc<str>, Arc<str>, foldhash::fast::RandomState>;

/// What one stream holds.
#[derive(Default)]
pub(super) struct State {
    subs: PerKind<Sub>,
    /// Responses that needed a nonce of the stream's own.
    nonce: u64,
    node: String,
    /// The resources of the response being built (kept to save allocating).
    current: Vec<Arc<Built>>,
}

impl Session for State {
    type Request = DiscoveryRequest;
    type Response = Framed;

    /// Takes in one request: a new subscription is answered, an ACK or a
    /// NACK of the current state is not.
    fn request(
        &mut self,
        xds: &Xds,
        wake: &mut Wake,
        req: DiscoveryRequest,
        out: &mut VecDeque<Framed>,
    ) -> Result<(), Status> {
        if self.node.is_empty() {
            self.node = node_id(req.node.as_ref()).to_owned();
        }
        let Some(kind) = super::kind_of(&self.node, &req.type_url) else {
            return Ok(());
        };
        if req.resource_names.len() > MAX_NAMES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_NAMES} resource names per request"
            )));
        }
        let sub = self.subs.entry(kind);
        if !sub.nonce.is_empty()
            && !req.response_nonce.is_empty()
            && req.response_nonce != sub.nonce
        {
            // An answer to an older response: the client will answer the
            // latest one too. (Before the first response of the type on this
            // stream any nonce is one from an earlier stream, and the request
            // is a new subscription.)
            return Ok(());
        }
        if let Some(err) = &req.error_detail {
            super::rejected(
                xds,
                &self.node,
                kind,
                &format!("version {}", sub.version),
                err,
            );
        }
        let wildcard = kind == Kind::Cluster
            && (req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*"));
        let first = sub.nonce.is_empty();
        // Every response is answered (ACK or NACK), nearly always naming what
        // the stream already follows: that case is decided without building a
        // set.
        if !first && wildcard == sub.wildcard && same_names(&req.resource_names, &sub.names) {
            return Ok(()); // an ACK, or a NACK of the current state
        }
        sub.names = req
            .resource_names
            .iter()
            .map(|n| Arc::from(n.as_str()))
            .collect();
        sub.wildcard = wildcard;
        if !wildcard {
            sub.all_sent = None;
        }
        wake.follow(
            xds,
            self.subs.values().flat_map(|s| s.names.iter()),
            self.subs.values().any(|s| s.wildcard),
        );
        let sub = self.subs.get_mut(kind).expect("just added");
        if let Some(r) = respond(xds, kind, sub, &mut self.nonce, true, &mut self.current) {
            out.push_back(r);
        }
        Ok(())
    }

    fn changed(&mut self, xds: &Xds, out: &mut VecDeque<Framed>) {
        for kind in Kind::ALL {
            if let Some(sub) = self.subs.get_mut(kind)
                && !sub.nonce.is_empty()
                && let Some(r) = respond(xds, kind, sub, &mut self.nonce, false, &mut self.current)
            {
                out.push_back(r);
            }
        }
    }
}

/// Whether `asked` names exactly the set `held` (in any order, repeats
/// allowed).
fn same_names(asked: &[String], held: &BTreeSet<Arc<str>>) -> bool {
    if !asked.iter().all(|n| held.contains(n.as_str())) {
        return false;
    }
    // Each asked name is held; equal when every held name is asked too.
    match asked.len() {
        n if n == held.len() => {
            n <= 1 || {
                let mut sorted: Vec<&str> = asked.iter().map(String::as_str).collect();
                sorted.sort_unstable();
                sorted.windows(2).all(|w| w[0] != w[1])
            }
        }
        n if n < held.len() => false,
        _ => held.len() == asked.iter().collect::<BTreeSet<_>>().len(),
    }
}

/// What the client of `sub` should be sent now: for listeners and clusters
/// every existing resource asked for (one left out is gone), for routes and
/// endpoints those that changed (all of them when `asked`). `None` when
/// nothing changed and the client did not ask.
///
/// Nonces: a response is versioned by the catalog index, and the first
/// response of a type at an index takes the index as its nonce too, so the
/// response of one resource is the same bytes on every stream and is framed
/// once ([`Built::sotw_response`]). A further response of the type at the
/// same index (a change of names, another datacenter's answer) takes
/// `INDEX.N` with the stream's own counter: a nonce never repeats on a
/// stream, so a late ACK of an older response is told from the latest.
///
/// `current` is a buffer the stream keeps to save allocating; it holds
/// nothing once this returns (a stream keeps no resource alive between
/// changes), and a large one (a wildcard list) is not kept at all.
fn respond(
    xds: &Xds,
    kind: Kind,
    sub: &mut Sub,
    counter: &mut u64,
    asked: bool,
    current: &mut Vec<Arc<Built>>,
) -> Option<Framed> {
    let response = build_response(xds, kind, sub, counter, asked, current);
    current.clear();
    if current.capacity() > 16 {
        *current = Vec::new();
    }
    response
}

/// [`respond`], leaving what it looked at in `current`.
fn build_response(
    xds: &Xds,
    kind: Kind,
    sub: &mut Sub,
    counter: &mut u64,
    asked: bool,
    current: &mut Vec<Arc<Built>>,
) -> Option<Framed> {
    let snap = xds.registry.snapshot();
    let get = |n: &Arc<str>| xds.resources.get(&snap, kind, n, xds.failover());
    current.clear();
    if sub.wildcard {
        // Only a CDS subscription is a wildcard.
        let all = xds.resources.all(&snap, Kind::Cluster, xds.failover());
        if !asked && sub.all_sent == Some(all.digest) {
            return None; // the same clusters as sent: nothing to look up
        }
        sub.all_sent = Some(all.digest);
        current.extend(all.built.iter().cloned());
    } else {
        current.extend(sub.names.iter().filter_map(get));
    }
    let differs = |sent: &SentMap, b: &Arc<Built>| sent.get(&b.name) != Some(&b.version);
    if kind.full_state() {
        let same =
            current.len() == sub.sent.len() && !current.iter().any(|b| differs(&sub.sent, b));
        if same && !asked {
            return None;
        }
        sub.sent.clear();
    } else {
        // Forget what is gone, so it is sent when it is back.
        forget_gone(&mut sub.sent, current);
        if !asked {
            current.retain(|b| differs(&sub.sent, b));
            if current.is_empty() {
                return None;
            }
        }
    }
    for b in current.iter() {
        sub.sent.insert(b.name.clone(), b.version.clone());
    }
    xds.pushed(kind).inc();
    let index = snap.index;
    let first_at_index = sub.index != Some(index);
    sub.index = Some(index);
    sub.version.clear();
    let _ = write!(sub.version, "{index}");
    if first_at_index && let [only] = current.as_slice() {
        let response = only.sotw_response(index, kind.type_url());
        sub.nonce.clone_from(&sub.version);
        return Some(Framed(response));
    }
    *counter += 1;
    sub.nonce.clear();
    let _ = write!(sub.nonce, "{index}.{counter}");
    let out: Vec<&Built> = current.iter().map(|b| &**b).collect();
    let response = encode_response(&sub.version, &out, kind.type_url(), &sub.nonce);
    Some(Framed(response))
}

/// Drops from `sent` every name that is not among `current`. A stream may
/// follow 10,000 names: past a handful the names are looked up in a set,
/// not searched for, so a change costs it 10,000 steps and not 10,000
/// squared.
fn forget_gone(sent: &mut SentMap, current: &[Arc<Built>]) {
    if current.len() <= 16 {
        sent.retain(|n, _| current.iter().any(|b| &b.name == n));
    } else {
        let now: std::collections::HashSet<&str, foldhash::fast::RandomState> =
            current.iter().map(|b| &*b.name).collect();
        sent.retain(|n, _| now.contains(&**n));
    }
}

/// A `DiscoveryResponse` framed as a gRPC message, its resources copied from
/// their encoding shared by every stream rather than built and encoded
/// again for each: the same bytes prost writes for the same response.
pub(super) fn encode_response(
    version: &str,
    resources: &[&Built],
    type_url: &str,
    nonce: &str,
) -> Bytes {
    use prost::encoding::{encoded_len_varint, key_len};
    let strings = [(1, version), (4, type_url), (5, nonce)];
    let len = strings
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(tag, v)| key_len(*tag) + encoded_len_varint(v.len() as u64) + v.len())
        .sum::<usize>()
        + resources.iter().map(|b| b.entry.len()).sum::<usize>();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    let put = |buf: &mut BytesMut, tag: u32, v: &str| {
        if !v.is_empty() {
            prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
            prost::encoding::encode_varint(v.len() as u64, buf);
            buf.put_slice(v.as_bytes());
        }
    };
    put(&mut buf, 1, version);
    for b in resources {
        buf.put_slice(&b.entry);
    }
    put(&mut buf, 4, type_url);
    put(&mut buf, 5, nonce);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use prost::Message as _;

    use super::*;

    /// One stream: its state, its wake, and what it sent.
    struct Stream(State, Wake, VecDeque<Framed>);

    impl Stream {
        fn new() -> Stream {
            Stream(State::default(), Wake::new(None), VecDeque::new())
        }

        /// Sends an endpoints request; the response it got, if any.
        fn ask(&mut self, xds: &Xds, names: &[&str], nonce: &str) -> Option<Bytes> {
            self.ask_for(xds, Kind::Endpoints, names, nonce)
        }

        /// Sends a request for `kind`; the response it got, if any.
        fn ask_for(&mut self, xds: &Xds, kind: Kind, names: &[&str], nonce: &str) -> Option<Bytes> {
            let req = DiscoveryRequest {
                type_url: kind.type_url().into(),
                resource_names: asked(names),
                response_nonce: nonce.into(),
                ..DiscoveryRequest::default()
            };
            self.0.request(xds, &mut self.1, req, &mut self.2).unwrap();
            self.2.pop_front().map(|f| f.0)
        }

        fn changed(&mut self, xds: &Xds) -> Option<Bytes> {
            self.0.changed(xds, &mut self.2);
            self.2.pop_front().map(|f| f.0)
        }
    }

    fn decode(frame: &Bytes) -> DiscoveryResponse {
        DiscoveryResponse::decode(&frame[5..]).unwrap()
    }

    #[tokio::test]
    async fn streams_share_the_bytes_of_a_change_and_a_nonce_never_repeats_on_a_stream() {
        let (registry, xds) = super::super::test_xds();
        registry.register_plain("web", "w1");
        let (mut a, mut b) = (Stream::new(), Stream::new());
        let first_a = a.ask(&xds, &["web"], "").unwrap();
        let first_b = b.ask(&xds, &["web"], "").unwrap();
        assert_eq!(first_a.as_ptr(), first_b.as_ptr(), "one frame for both");
        let first = decode(&first_a);
        assert_eq!(first.nonce, first.version_info);
        assert!(a.ask(&xds, &["web"], &first.nonce).is_none(), "an ACK");

        registry.register_plain("web", "w2");
        let (pushed_a, pushed_b) = (a.changed(&xds).unwrap(), b.changed(&xds).unwrap());
        assert_eq!(pushed_a.as_ptr(), pushed_b.as_ptr(), "one frame for both");
        let pushed = decode(&pushed_a);
        assert_eq!(pushed.nonce, registry.snapshot().index.to_string());
        assert_ne!(pushed.nonce, first.nonce);
        assert!(a.changed(&xds).is_none(), "nothing new");

        // More names at the same index: a nonce of the stream's own.
        let more = decode(&a.ask(&xds, &["web", "api"], &pushed.nonce).unwrap());
        assert_eq!(more.version_info, pushed.version_info);
        assert_ne!(more.nonce, pushed.nonce);
        // A late answer to the response before (the one name) is not taken
        // as a change of names back to it.
        assert!(a.ask(&xds, &["web"], &pushed.nonce).is_none());
        assert!(
            a.ask(&xds, &["web", "api"], &more.nonce).is_none(),
            "an ACK"
        );
        registry.register_plain("api", "a1");
        let api = decode(&a.changed(&xds).unwrap());
        assert_eq!(api.resources.len(), 1, "only what changed");
        assert!(
            a.0.subs
                .get_mut(Kind::Endpoints)
                .unwrap()
                .sent
                .contains_key("api"),
            "both names still followed"
        );
        assert!(b.changed(&xds).is_none(), "b follows web only");
    }

    fn set(names: &[&str]) -> BTreeSet<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    fn asked(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[tokio::test]
    async fn wildcard_cds_streams_share_one_list_and_hear_only_of_cluster_changes() {
        let (registry, xds) = super::super::test_xds();
        registry.register_plain("web", "w1");
        let (mut a, mut b) = (Stream::new(), Stream::new());
        let first = decode(&a.ask_for(&xds, Kind::Cluster, &[], "").unwrap());
        assert_eq!(first.resources.len(), 1);
        assert_eq!(
            decode(&b.ask_for(&xds, Kind::Cluster, &["*"], "").unwrap())
                .resources
                .len(),
            1
        );
        let snap = registry.snapshot();
        let all = xds.resources.all(&snap, Kind::Cluster, None);
        assert!(
            Arc::ptr_eq(&all, &xds.resources.all(&snap, Kind::Cluster, None)),
            "gathered once per catalog index"
        );

        // An instance comes: a new index, the same clusters, nothing sent.
        registry.register_plain("web", "w2");
        assert!(a.changed(&xds).is_none());
        assert!(b.changed(&xds).is_none());
        // A new service is a new cluster: the whole list, to both.
        registry.register_plain("api", "a1");
        let pushed = decode(&a.changed(&xds).unwrap());
        let names: Vec<String> = pushed
            .resources
            .iter()
            .map(|r| {
                envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&r.value[..])
                    .unwrap()
                    .name
            })
            .collect();
        assert_eq!(names, ["api", "web"]);
        assert_eq!(decode(&b.changed(&xds).unwrap()).resources.len(), 2);
        assert!(a.changed(&xds).is_none(), "nothing new");

        // Named clusters after the wildcard: answered by name again.
        let named = decode(
            &a.ask_for(&xds, Kind::Cluster, &["web"], &pushed.nonce)
                .unwrap(),
        );
        assert_eq!(named.resources.len(), 1);
        registry.register_plain("db", "d1");
        assert!(a.changed(&xds).is_none(), "db is not asked for");
        assert!(a.0.current.is_empty(), "no resource kept between changes");
        assert_eq!(decode(&b.changed(&xds).unwrap()).resources.len(), 3);
    }

    #[tokio::test]
    async fn what_is_gone_is_forgotten_with_few_names_and_with_many() {
        let (registry, xds) = super::super::test_xds();
        let snap_of = |n: usize| {
            for i in 0..n {
                registry.register_plain(&format!("s{i}"), &format!("i{i}"));
            }
            registry.snapshot()
        };
        for n in [3, 40] {
            let snap = snap_of(n);
            let built: Vec<Arc<Built>> = (0..n)
                .map(|i| {
                    let name: Arc<str> = format!("s{i}").into();
                    xds.resources
                        .get(&snap, Kind::Endpoints, &name, None)
                        .unwrap()
                })
                .collect();
            let mut sent = SentMap::default();
            for b in &built {
                sent.insert(b.name.clone(), b.version.clone());
            }
            sent.insert("gone".into(), "1".into());
            forget_gone(&mut sent, &built[1..]);
            assert_eq!(sent.len(), n - 1, "{n} names");
            assert!(!sent.contains_key("gone") && !sent.contains_key("s0"));
            assert!(built[1..].iter().all(|b| sent.contains_key(&b.name)));
        }
    }

    #[test]
    fn same_names_is_set_equality() {
        let cases: &[(&[&str], &[&str], bool)] = &[
            (&[], &[], true),
            (&["web"], &["web"], true),
            (&["web"], &["db"], false),
            (&["web", "db"], &["db", "web"], true),
            (&["web", "web"], &["web"], true),
            (&["web", "web"], &["web", "db"], false),
            (&["web"], &["web", "db"], false),
            (&["web", "db", "x"], &["web", "db"], false),
            (&["web", "db", "db"], &["web", "db"], true),
            (&[], &["web"], false),
            (&["web"], &[], false),
        ];
        for (a, h, want) in cases {
            let expected = asked(a)
                .iter()
                .map(|n| Arc::from(n.as_str()))
                .collect::<BTreeSet<Arc<str>>>()
                == set(h);
            assert_eq!(expected, *want, "case {a:?} {h:?}");
            assert_eq!(same_names(&asked(a), &set(h)), *want, "{a:?} against {h:?}");
        }
    }
}
