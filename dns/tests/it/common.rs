//! Shared test fixtures: a fake in-memory view, a server on 127.0.0.1:0 and
//! plain UDP/TCP clients built on hickory-proto messages.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use roster_dns::{DnsConfig, DnsHandler, DnsServer, InstanceRecord, ServiceRecords, ServiceView};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(5);

/// An in-memory [`ServiceView`].
#[derive(Debug, Default)]
pub struct FakeView {
    services: RwLock<HashMap<String, Arc<ServiceRecords>>>,
    /// The global index, raised by every `set`.
    index: AtomicU64,
}

impl FakeView {
    pub fn set(&self, name: &str, index: u64, endpoints: Vec<InstanceRecord>) {
        self.index.fetch_max(index, Ordering::Relaxed);
        self.services
            .write()
            .unwrap()
            .insert(name.into(), Arc::new(ServiceRecords { index, endpoints }));
    }
}

impl ServiceView for FakeView {
    fn service(&self, name: &str) -> Option<Arc<ServiceRecords>> {
        self.services.read().unwrap().get(name).cloned()
    }

    fn index(&self) -> u64 {
        self.index.load(Ordering::Relaxed)
    }
}

pub fn ep(id: &str, address: &str, port: u16, tags: &[&str], healthy: bool) -> InstanceRecord {
    InstanceRecord {
        id: id.into(),
        address: address.into(),
        port,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        meta: BTreeMap::new(),
        weight: 1,
        healthy,
    }
}

/// The catalog most tests query.
pub fn sample_view() -> Arc<FakeView> {
    let view = Arc::new(FakeView::default());
    let mut web1 = ep("web-1", "10.0.0.1", 8080, &["v2"], true);
    web1.meta.insert("zone".into(), "eu-1".into());
    web1.weight = 10;
    let mut web2 = ep("web-2", "10.0.0.2", 8081, &["v1"], true);
    web2.weight = 5;
    let web3 = ep("web-3", "10.0.0.3", 8082, &["v2", "old"], false);
    let web4 = ep("web-4", "2001:db8::4", 8083, &["v6"], true);
    let web5 = ep("web-5", "10.0.0.5", 8085, &["legacy"], false);
    view.set("web", 1, vec![web1, web2, web3, web4, web5]);
    let mut db1 = ep("db-1", "db1.example.com", 5432, &[], true);
    db1.meta.insert("role".into(), "primary".into());
    view.set("db", 1, vec![db1]);
    view.set(
        "mixed",
        1,
        vec![
            ep("m-1", "10.9.0.1", 80, &[], true),
            ep("m-2", "m2.example.com", 80, &[], true),
        ],
    );
    view.set("v4only", 1, vec![ep("v-1", "10.1.0.1", 80, &[], true)]);
    view.set("down", 1, vec![ep("d-1", "10.3.0.1", 80, &[], false)]);
    let big = (0..200)
        .map(|i| {
            ep(
                &format!("big-{i}"),
                &format!("10.2.{}.{}", i / 250, i % 250 + 1),
                9000,
                &[],
                true,
            )
        })
        .collect();
    view.set("big", 1, big);
    view
}

/// A running server; dropping it leaves the task to the runtime.
pub struct Running {
    pub addr: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

pub async fn start(view: Arc<FakeView>) -> Running {
    start_with(view, DnsConfig::default()).await
}

pub async fn start_with(view: Arc<FakeView>, config: DnsConfig) -> Running {
    let handler = DnsHandler::new(view, config).unwrap();
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), handler)
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(stopped));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

/// A query for `name`/`ty` with RD set.
pub fn query(name: &str, ty: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    message
}

/// The same with an OPT record advertising `size`.
pub fn query_edns(name: &str, ty: RecordType, size: u16) -> Message {
    let mut message = query(name, ty);
    let mut edns = Edns::new();
    edns.set_max_payload(size);
    message.set_edns(edns);
    message
}

pub fn query_class(name: &str, ty: RecordType, class: DNSClass) -> Message {
    let mut message = Message::query();
    let mut q = Query::query(Name::from_ascii(name).unwrap(), ty);
    q.set_query_class(class);
    message.add_query(q);
    message
}

/// Sends raw bytes over UDP; the raw reply, or `None` after `wait`.
pub async fn udp_raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, addr).await.unwrap();
    let mut buf = vec![0; 65_535];
    let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    buf.truncate(len);
    Some(buf)
}

/// Sends `message` over UDP: the decoded reply and its size on the wire.
pub async fn udp(addr: SocketAddr, message: &Message) -> (Message, usize) {
    let raw = udp_raw(addr, &message.to_vec().unwrap(), WAIT)
        .await
        .expect("no UDP reply");
    let reply = Message::from_vec(&raw).unwrap();
    assert_eq!(reply.metadata.id, message.metadata.id);
    (reply, raw.len())
}

/// Sends raw bytes over one TCP connection and reads one framed reply.
pub async fn tcp_raw(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.unwrap();
    let len = tokio::time::timeout(WAIT, stream.read_u16())
        .await
        .expect("no TCP reply")
        .unwrap();
    let mut buf = vec![0; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// Sends `message` over a new TCP connection.
pub async fn tcp(addr: SocketAddr, message: &Message) -> (Message, usize) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let raw = tcp_raw(&mut stream, &message.to_vec().unwrap()).await;
    let reply = Message::from_vec(&raw).unwrap();
    assert_eq!(reply.metadata.id, message.metadata.id);
    (reply, raw.len())
}

/// The answers' data as strings, sorted.
pub fn answer_data(reply: &Message) -> Vec<String> {
    let mut data: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
    data.sort();
    data
}
