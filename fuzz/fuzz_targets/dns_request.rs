//! Raw bytes, as a datagram or a TCP message, through the DNS handler's whole
//! path: header check, rate limiting, hickory's decoder, resolution, sizing
//! and encoding. Whatever comes in, an answer must decode, carry the query's
//! id and fit the transport.
#![no_main]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Message, ResponseCode};
use libfuzzer_sys::fuzz_target;
use roster_dns::{DnsConfig, DnsHandler, InstanceRecord, ServiceRecords, ServiceView, Transport};

/// A few services, one of them too big for a UDP answer.
struct View(BTreeMap<&'static str, Arc<ServiceRecords>>);

impl ServiceView for View {
    fn service(&self, name: &str) -> Option<Arc<ServiceRecords>> {
        self.0.get(name).cloned()
    }
}

fn endpoint(id: String, address: String, tags: &[&str]) -> InstanceRecord {
    InstanceRecord {
        id,
        address,
        port: 8080,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        meta: BTreeMap::from([("zone".to_owned(), "eu-1".to_owned())]),
        weight: 1,
        healthy: true,
    }
}

fn handler() -> &'static DnsHandler {
    static HANDLER: OnceLock<DnsHandler> = OnceLock::new();
    HANDLER.get_or_init(|| {
        let records = |endpoints| {
            Arc::new(ServiceRecords {
                index: 1,
                endpoints,
            })
        };
        let view = View(BTreeMap::from([
            (
                "web",
                records(vec![
                    endpoint("web-1".into(), "10.0.0.1".into(), &["v2"]),
                    endpoint("web-2".into(), "2001:db8::2".into(), &["v1"]),
                    endpoint("web-3".into(), "web3.example.com".into(), &[]),
                ]),
            ),
            (
                "big",
                records(
                    (0..200)
                        .map(|i| {
                            endpoint(format!("big-{i}"), format!("10.2.0.{}", i % 250 + 1), &[])
                        })
                        .collect(),
                ),
            ),
        ]));
        DnsHandler::new(Arc::new(view), DnsConfig::default()).expect("valid config")
    })
}

fuzz_target!(|data: &[u8]| {
    let src: SocketAddr = "192.0.2.1:5353".parse().unwrap();
    for (transport, limit) in [(Transport::Udp, 4096), (Transport::Tcp, 65_535)] {
        let Some(answer) = handler().answer_bytes(data, src, transport) else {
            continue;
        };
        assert!(
            answer.len() <= limit,
            "{} bytes over {transport:?}",
            answer.len()
        );
        let reply = Message::from_vec(&answer).expect("every answer decodes");
        assert_eq!(reply.metadata.id, u16::from_be_bytes([data[0], data[1]]));
        assert_ne!(reply.metadata.response_code, ResponseCode::ServFail);
    }
});
