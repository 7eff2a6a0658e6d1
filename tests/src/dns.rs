//! Raw DNS queries for the end-to-end tests: hickory-proto messages over real UDP
//! and TCP sockets.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long a reply may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// A query for `name` (fully qualified) and `ty`, with RD set.
pub fn query(name: &str, ty: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
    message
}

/// Sends `message` over UDP and decodes the reply.
pub async fn udp(addr: SocketAddr, message: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), addr)
        .await
        .unwrap();
    let mut buf = vec![0; 65_535];
    let (len, _) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("no UDP reply")
        .unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.metadata.id, message.metadata.id);
    reply
}

/// Sends `message` over a new TCP connection and decodes the reply.
pub async fn tcp(addr: SocketAddr, message: &Message) -> Message {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let bytes = message.to_vec().unwrap();
    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
    let len = tokio::time::timeout(WAIT, stream.read_u16())
        .await
        .expect("no TCP reply")
        .unwrap();
    let mut buf = vec![0; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    let reply = Message::from_vec(&buf).unwrap();
    assert_eq!(reply.metadata.id, message.metadata.id);
    reply
}

/// The answers' data as strings, sorted.
pub fn answer_data(reply: &Message) -> Vec<String> {
    let mut data: Vec<String> = reply.answers.iter().map(|r| r.data.to_string()).collect();
    data.sort();
    data
}

/// Asks `name`/`ty` over UDP and over TCP; both must answer NOERROR alike.
/// Returns the sorted answer data.
pub async fn ask(addr: SocketAddr, name: &str, ty: RecordType) -> Vec<String> {
    let over_udp = udp(addr, &query(name, ty)).await;
    let over_tcp = tcp(addr, &query(name, ty)).await;
    for reply in [&over_udp, &over_tcp] {
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name} {ty}: {reply:?}"
        );
        assert!(reply.metadata.authoritative, "{name} {ty}: AA");
    }
    let data = answer_data(&over_udp);
    assert_eq!(
        data,
        answer_data(&over_tcp),
        "{name} {ty}: UDP and TCP differ"
    );
    data
}
