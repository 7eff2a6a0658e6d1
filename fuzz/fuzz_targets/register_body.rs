//! Bytes as a registration body: serde_json into the wire type, then the
//! registry's validation. Neither may panic, and whatever validation accepts
//! must be within the limits it enforces.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use roster_client::api::RegisterRequest;
use roster_registry::model::{InstanceSpec, Limits};

fuzz_target!(|data: &[u8]| {
    // The HTTP layer's own parser (`http::extract::parse_json`) is private to
    // the registry; it runs serde_json the same way after a cheap check.
    let Ok(request) = serde_json::from_slice::<RegisterRequest>(data) else {
        return;
    };
    let limits = Limits::default();
    let peer = Some(IpAddr::from([192, 0, 2, 1]));
    if let Ok(spec) = InstanceSpec::from_request(request, peer, &limits) {
        assert!(spec.address.len() <= 253 || spec.address.parse::<IpAddr>().is_ok());
        assert!(spec.tags.len() <= limits.max_tags);
        assert!(spec.meta.len() <= limits.max_meta);
    }
});
