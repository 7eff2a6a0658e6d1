//! The binary form of a Raft log entry, as `raft.redb` stores it.
//!
//! Written by hand rather than derived: the ops are serde internally tagged
//! enums (`{"op": "register", ...}`), which formats that do not describe
//! themselves (bincode, postcard) cannot read back, and a mirror type per op
//! would be as long as this file and still need a version story of its own.
//!
//! A row is one format byte, [`FORMAT_V1`], then the entry. Rows written
//! before this format are JSON objects and start with `{` (0x7b), a byte no
//! binary row starts with, so both load (see `log.rs`). Inside:
//!
//! - integers are LEB128 varints (`u16`/`u32` ones refused when too large);
//! - a string is its byte length then UTF-8; a list or map is its length then
//!   its items (map keys in order, each once);
//! - `Option` is a byte 0 (none) or 1 then the value; `bool` a byte 0 or 1;
//! - health is a byte: 0 passing, 1 warning, 2 critical;
//! - a duration is whole seconds then nanoseconds (below 10^9);
//! - an entry is term, leader node id, index, then a payload kind byte: 0
//!   blank, 1 writes (a count of ops, each a kind byte and its fields in
//!   declaration order), 2 membership (openraft's `Membership` as JSON bytes:
//!   it changes once per member change, and openraft owns its shape).
//!
//! Decoding never panics and never allocates more than the input could hold:
//! a length longer than the bytes left, an unknown kind, bad UTF-8, trailing
//! bytes or nesting deeper than a batch in an entry are a [`DecodeError`]
//! naming the byte offset.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

use super::TypeConfig;
use super::ops::{Batch, Op};
use crate::rows::{CheckDefinitionRow, CheckRow, HealthRow, InstanceRow, WeightsRow};

/// First byte of a version 1 binary row. Never `{`, which starts a JSON row.
pub const FORMAT_V1: u8 = 0x01;

/// Nesting allowed for ops: an entry's op, and the items of a batch op.
const MAX_DEPTH: u8 = 2;

/// Why bytes do not decode as a log entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log entry bytes unreadable at byte {offset}: {what}")]
pub struct DecodeError {
    /// Offset of the byte where decoding stopped.
    pub offset: usize,
    /// What was wrong there.
    pub what: String,
}

/// Encodes `entry` as a version 1 row.
pub fn encode_entry(entry: &Entry<TypeConfig>) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64));
    w.0.push(FORMAT_V1);
    w.u64(entry.log_id.leader_id.term);
    w.u64(entry.log_id.leader_id.node_id);
    w.u64(entry.log_id.index);
    match &entry.payload {
        EntryPayload::Blank => w.0.push(0),
        EntryPayload::Normal(batch) => {
            w.0.push(1);
            w.len(batch.ops.len());
            for op in &batch.ops {
                w.op(op);
            }
        }
        EntryPayload::Membership(m) => {
            w.0.push(2);
            // Membership serializes to JSON without fail (string keys).
            let json = serde_json::to_vec(m).unwrap_or_default();
            w.bytes(&json);
        }
    }
    w.0
}

/// Decodes a row that starts with [`FORMAT_V1`].
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    match r.byte("format")? {
        FORMAT_V1 => {}
        other => return Err(r.error_before(format!("unknown format byte {other:#04x}"))),
    }
    let term = r.u64()?;
    let node_id = r.u64()?;
    let index = r.u64()?;
    let payload = match r.byte("payload kind")? {
        0 => EntryPayload::Blank,
        1 => {
            let n = r.len()?;
            let mut ops = Vec::with_capacity(n);
            for _ in 0..n {
                ops.push(r.op(1)?);
            }
            EntryPayload::Normal(Batch { ops })
        }
        2 => {
            let json = r.bytes()?;
            let m = serde_json::from_slice(json)
                .map_err(|e| r.error_before(format!("membership: {e}")))?;
            EntryPayload::Membership(m)
        }
        k => return Err(r.error_before(format!("unknown payload kind {k}"))),
    };
    if r.at != bytes.len() {
        return Err(r.error_here(format!("{} bytes after the entry", bytes.len() - r.at)));
    }
    Ok(Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, node_id), index),
        payload,
    })
}

// Kind bytes of the ops. Never renumber: rows on disk hold them.
const REGISTER: u8 = 0;
const DEREGISTER: u8 = 1;
const HEARTBEAT: u8 = 2;
const SET_MAINTENANCE: u8 = 3;
const SET_CHECK: u8 = 4;
const EXPIRE_LEASE: u8 = 5;
const EXPIRE_CHECK: u8 = 6;
const RESTORE: u8 = 7;
const BATCH: u8 = 8;
const EXPECT: u8 = 9;
const REAP: u8 = 10;

struct Writer(Vec<u8>);

impl Writer {
    fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }

    fn bool(&mut self, b: bool) {
        self.0.push(u8::from(b));
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn opt<T>(&mut self, v: &Option<T>, f: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                f(self, v);
            }
        }
    }

    fn opt_str(&mut self, v: &Option<String>) {
        self.opt(v, |w, s| w.str(s));
    }

    fn health(&mut self, h: HealthRow) {
        self.0.push(match h {
            HealthRow::Passing => 0,
            HealthRow::Warning => 1,
            HealthRow::Critical => 2,
        });
    }

    fn duration(&mut self, d: &Duration) {
        self.u64(d.as_secs());
        self.u64(u64::from(d.subsec_nanos()));
    }

    fn map(&mut self, m: &BTreeMap<String, String>) {
        self.len(m.len());
        for (k, v) in m {
            self.str(k);
            self.str(v);
        }
    }

    fn op(&mut self, op: &Op) {
        match op {
            Op::Register { instance } => {
                self.0.push(REGISTER);
                self.instance(instance);
            }
            Op::Deregister { service, id } => {
                self.0.push(DEREGISTER);
                self.str(service);
                self.str(id);
            }
            Op::Heartbeat { service, id } => {
                self.0.push(HEARTBEAT);
                self.str(service);
                self.str(id);
            }
            Op::SetMaintenance {
                service,
                id,
                reason,
            } => {
                self.0.push(SET_MAINTENANCE);
                self.str(service);
                self.str(id);
                self.opt_str(reason);
            }
            Op::SetCheck {
                service,
                id,
                check,
                status,
                output,
                report,
            } => {
                self.0.push(SET_CHECK);
                self.str(service);
                self.str(id);
                self.str(check);
                self.health(*status);
                self.str(output);
                self.bool(*report);
            }
            Op::ExpireLease {
                service,
                id,
                create_index,
            } => {
                self.0.push(EXPIRE_LEASE);
                self.str(service);
                self.str(id);
                self.u64(*create_index);
            }
            Op::ExpireCheck {
                service,
                id,
                check,
                output,
            } => {
                self.0.push(EXPIRE_CHECK);
                self.str(service);
                self.str(id);
                self.str(check);
                self.str(output);
            }
            Op::Restore {
                index,
                names_index,
                instances,
                grace_ms,
            } => {
                self.0.push(RESTORE);
                self.u64(*index);
                self.u64(*names_index);
                self.len(instances.len());
                for i in instances {
                    self.instance(i);
                }
                self.u64(*grace_ms);
            }
            Op::Batch { ops } => {
                self.0.push(BATCH);
                self.len(ops.len());
                for op in ops {
                    self.op(op);
                }
            }
            Op::Expect { service, id, index } => {
                self.0.push(EXPECT);
                self.str(service);
                self.str(id);
                self.opt(index, |w, i| w.u64(*i));
            }
            Op::Reap {
                service,
                id,
                create_index,
                check,
            } => {
                self.0.push(REAP);
                self.str(service);
                self.str(id);
                self.u64(*create_index);
                self.opt_str(check);
            }
        }
    }

    fn instance(&mut self, row: &InstanceRow) {
        // Destructured whole: a field added to the row fails to compile here
        // until the format (and its version) says where it goes.
        let InstanceRow {
            service,
            id,
            address,
            port,
            tags,
            meta,
            weights: WeightsRow { passing, warning },
            ttl_ms,
            deregister_critical_after_ms,
            lease,
            maintenance,
            checks,
            create_index,
            modify_index,
        } = row;
        self.str(service);
        self.str(id);
        self.str(address);
        self.u64(u64::from(*port));
        self.len(tags.len());
        for t in tags {
            self.str(t);
        }
        self.map(meta);
        self.u64(u64::from(*passing));
        self.u64(u64::from(*warning));
        self.opt(ttl_ms, |w, v| w.u64(*v));
        self.u64(*deregister_critical_after_ms);
        self.opt(lease, |w, h| w.health(*h));
        self.opt_str(maintenance);
        self.len(checks.len());
        for c in checks {
            self.check(c);
        }
        self.u64(*create_index);
        self.u64(*modify_index);
    }

    fn check(&mut self, c: &CheckRow) {
        let CheckRow {
            definition,
            status,
            output,
        } = c;
        let CheckDefinitionRow {
            id,
            name,
            notes,
            http,
            method,
            headers,
            tls_skip_verify,
            tcp,
            grpc,
            ttl,
            interval,
            timeout,
            success_before_passing,
            failures_before_warning,
            failures_before_critical,
            initial_status,
            deregister_critical_after,
        } = definition;
        self.opt_str(id);
        self.opt_str(name);
        self.opt_str(notes);
        self.opt_str(http);
        self.opt_str(method);
        self.map(headers);
        self.bool(*tls_skip_verify);
        self.opt_str(tcp);
        self.opt_str(grpc);
        self.opt(ttl, Self::duration);
        self.opt(interval, Self::duration);
        self.opt(timeout, Self::duration);
        self.u64(u64::from(*success_before_passing));
        self.opt(failures_before_warning, |w, n| w.u64(u64::from(*n)));
        self.u64(u64::from(*failures_before_critical));
        self.opt(initial_status, |w, h| w.health(*h));
        self.opt(deregister_critical_after, Self::duration);
        self.health(*status);
        self.str(output);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn error_here(&self, what: String) -> DecodeError {
        DecodeError {
            offset: self.at,
            what,
        }
    }

    /// An error about the byte (or value) just read.
    fn error_before(&self, what: String) -> DecodeError {
        DecodeError {
            offset: self.at.saturating_sub(1),
            what,
        }
    }

    fn byte(&mut self, what: &str) -> Result<u8, DecodeError> {
        match self.bytes.get(self.at) {
            Some(&b) => {
                self.at += 1;
                Ok(b)
            }
            None => Err(self.error_here(format!("truncated: {what} expected"))),
        }
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte("an integer")?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.error_before("integer over 64 bits".into()));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.error_before("integer over 64 bits".into()))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let v = self.u64()?;
        u32::try_from(v).map_err(|_| self.error_before(format!("{v} is over 32 bits")))
    }

    /// A length, at most the bytes left (every item takes one byte at least).
    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(
                self.error_before(format!("length {n} runs past the end ({left} bytes left)"))
            );
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        let start = self.at;
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|e| DecodeError {
                offset: start,
                what: format!("string is not UTF-8: {e}"),
            })
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.byte("a flag")? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.error_before(format!("flag byte {b} is neither 0 nor 1"))),
        }
    }

    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.byte("an option")? {
            0 => Ok(None),
            1 => f(self).map(Some),
            b => Err(self.error_before(format!("option byte {b} is neither 0 nor 1"))),
        }
    }

    fn opt_str(&mut self) -> Result<Option<String>, DecodeError> {
        self.opt(Self::str)
    }

    fn health(&mut self) -> Result<HealthRow, DecodeError> {
        match self.byte("a health")? {
            0 => Ok(HealthRow::Passing),
            1 => Ok(HealthRow::Warning),
            2 => Ok(HealthRow::Critical),
            b => Err(self.error_before(format!("unknown health {b}"))),
        }
    }

    fn duration(&mut self) -> Result<Duration, DecodeError> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(self.error_before(format!("{nanos} ns is a second or more")));
        }
        Ok(Duration::new(secs, nanos))
    }

    fn map(&mut self) -> Result<BTreeMap<String, String>, DecodeError> {
        let n = self.len()?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.str()?;
            let v = self.str()?;
            if m.insert(k, v).is_some() {
                return Err(self.error_here("a map key given twice".into()));
            }
        }
        Ok(m)
    }

    fn names(&mut self) -> Result<(String, String), DecodeError> {
        Ok((self.str()?, self.str()?))
    }

    fn op(&mut self, depth: u8) -> Result<Op, DecodeError> {
        let kind = self.byte("an op kind")?;
        Ok(match kind {
            REGISTER => Op::Register {
                instance: self.instance()?,
            },
            DEREGISTER => {
                let (service, id) = self.names()?;
                Op::Deregister { service, id }
            }
            HEARTBEAT => {
                let (service, id) = self.names()?;
                Op::Heartbeat { service, id }
            }
            SET_MAINTENANCE => {
                let (service, id) = self.names()?;
                Op::SetMaintenance {
                    service,
                    id,
                    reason: self.opt_str()?,
                }
            }
            SET_CHECK => {
                let (service, id) = self.names()?;
                Op::SetCheck {
                    service,
                    id,
                    check: self.str()?,
                    status: self.health()?,
                    output: self.str()?,
                    report: self.bool()?,
                }
            }
            EXPIRE_LEASE => {
                let (service, id) = self.names()?;
                Op::ExpireLease {
                    service,
                    id,
                    create_index: self.u64()?,
                }
            }
            EXPIRE_CHECK => {
                let (service, id) = self.names()?;
                Op::ExpireCheck {
                    service,
                    id,
                    check: self.str()?,
                    output: self.str()?,
                }
            }
            RESTORE => {
                let index = self.u64()?;
                let names_index = self.u64()?;
                let n = self.len()?;
                let mut instances = Vec::with_capacity(n);
                for _ in 0..n {
                    instances.push(self.instance()?);
                }
                Op::Restore {
                    index,
                    names_index,
                    instances,
                    grace_ms: self.u64()?,
                }
            }
            BATCH => {
                if depth >= MAX_DEPTH {
                    return Err(self.error_before("a batch inside a batch".into()));
                }
                let n = self.len()?;
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    ops.push(self.op(depth + 1)?);
                }
                Op::Batch { ops }
            }
            EXPECT => {
                let (service, id) = self.names()?;
                Op::Expect {
                    service,
                    id,
                    index: self.opt(Self::u64)?,
                }
            }
            REAP => {
                let (service, id) = self.names()?;
                Op::Reap {
                    service,
                    id,
                    create_index: self.u64()?,
                    check: self.opt_str()?,
                }
            }
            k => return Err(self.error_before(format!("unknown op kind {k}"))),
        })
    }

    fn instance(&mut self) -> Result<InstanceRow, DecodeError> {
        let service = self.str()?;
        let id = self.str()?;
        let address = self.str()?;
        let port = self.u64()?;
        let port = u16::try_from(port)
            .map_err(|_| self.error_before(format!("port {port} over 65535")))?;
        let n = self.len()?;
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            tags.push(self.str()?);
        }
        let meta = self.map()?;
        let weights = WeightsRow {
            passing: self.u32()?,
            warning: self.u32()?,
        };
        let ttl_ms = self.opt(Self::u64)?;
        let deregister_critical_after_ms = self.u64()?;
        let lease = self.opt(Self::health)?;
        let maintenance = self.opt_str()?;
        let n = self.len()?;
        let mut checks = Vec::with_capacity(n);
        for _ in 0..n {
            checks.push(self.check()?);
        }
        Ok(InstanceRow {
            service,
            id,
            address,
            port,
            tags,
            meta,
            weights,
            ttl_ms,
            deregister_critical_after_ms,
            lease,
            maintenance,
            checks,
            create_index: self.u64()?,
            modify_index: self.u64()?,
        })
    }

    fn check(&mut self) -> Result<CheckRow, DecodeError> {
        let definition = CheckDefinitionRow {
            id: self.opt_str()?,
            name: self.opt_str()?,
            notes: self.opt_str()?,
            http: self.opt_str()?,
            method: self.opt_str()?,
            headers: self.map()?,
            tls_skip_verify: self.bool()?,
            tcp: self.opt_str()?,
            grpc: self.opt_str()?,
            ttl: self.opt(Self::duration)?,
            interval: self.opt(Self::duration)?,
            timeout: self.opt(Self::duration)?,
            success_before_passing: self.u32()?,
            failures_before_warning: self.opt(Self::u32)?,
            failures_before_critical: self.u32()?,
            initial_status: self.opt(Self::health)?,
            deregister_critical_after: self.opt(Self::duration)?,
        };
        Ok(CheckRow {
            definition,
            status: self.health()?,
            output: self.str()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(7, u64::MAX >> 1), 1 << 40),
            payload,
        }
    }

    fn sample() -> Entry<TypeConfig> {
        entry(EntryPayload::Normal(Batch {
            ops: vec![
                Op::Batch {
                    ops: vec![
                        Op::Heartbeat {
                            service: "web".into(),
                            id: "web-1".into(),
                        },
                        Op::Expect {
                            service: "web".into(),
                            id: "wéb-2".into(),
                            index: Some(u64::MAX),
                        },
                    ],
                },
                Op::SetMaintenance {
                    service: "db".into(),
                    id: "db-1".into(),
                    reason: None,
                },
            ],
        }))
    }

    #[test]
    fn entries_round_trip() {
        for e in [entry(EntryPayload::Blank), sample()] {
            let bytes = encode_entry(&e);
            assert_eq!(bytes[0], FORMAT_V1);
            let back = decode_entry(&bytes).expect("decodes");
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(back.payload, e.payload);
        }
    }

    #[test]
    fn every_cut_of_an_entry_is_an_error_naming_its_offset() {
        let bytes = encode_entry(&sample());
        for cut in 0..bytes.len() {
            let err = decode_entry(&bytes[..cut]).expect_err("a cut entry is refused");
            assert!(err.offset <= cut, "{err} at cut {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = decode_entry(&longer).unwrap_err();
        assert_eq!(err.offset, bytes.len());
        assert!(err.to_string().contains("after the entry"), "{err}");
    }

    #[test]
    fn nesting_and_lengths_are_bounded() {
        // A batch in a batch in an entry.
        let mut bytes = vec![FORMAT_V1, 1, 1, 1, 1, 1, BATCH, 1, BATCH, 0];
        let err = decode_entry(&bytes).unwrap_err();
        assert!(err.to_string().contains("batch inside a batch"), "{err}");
        // A huge count refused before anything is allocated for it.
        bytes = vec![FORMAT_V1, 1, 1, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f];
        let err = decode_entry(&bytes).unwrap_err();
        assert!(err.to_string().contains("runs past the end"), "{err}");
        // A JSON row is not a binary one.
        let err = decode_entry(b"{\"log_id\":1}").unwrap_err();
        assert!(err.to_string().contains("format byte 0x7b"), "{err}");
    }

    fn golden_path(name: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name)
    }

    /// The entries of the golden file: every op kind (the batches pinned in
    /// JSON by `golden.rs`), a blank entry and a membership change.
    fn golden_entries() -> Vec<(&'static str, Entry<TypeConfig>)> {
        let read =
            |name: &str| std::fs::read_to_string(golden_path(name)).expect("golden JSON file");
        let every_op: Batch = serde_json::from_str(&read("raft_batch.json")).expect("raft_batch");
        let (batch_op, _): (Batch, serde_json::Value) =
            serde_json::from_str(&read("raft_op_batch.json")).expect("raft_op_batch");
        let membership_of = |entries: &str| {
            let all: Vec<Entry<TypeConfig>> = serde_json::from_str(entries).expect("raft_entries");
            all.into_iter()
                .find_map(|e| match e.payload {
                    EntryPayload::Membership(m) => Some(m),
                    _ => None,
                })
                .expect("a membership entry")
        };
        let at = |index| LogId::new(CommittedLeaderId::new(3, 1), index);
        vec![
            (
                "writes: every op kind (raft_batch.json)",
                Entry {
                    log_id: at(120),
                    payload: EntryPayload::Normal(every_op),
                },
            ),
            (
                "writes: a batch op with every item kind (raft_op_batch.json)",
                Entry {
                    log_id: at(121),
                    payload: EntryPayload::Normal(batch_op),
                },
            ),
            (
                "blank (a new leader's first entry)",
                Entry {
                    log_id: at(118),
                    payload: EntryPayload::Blank,
                },
            ),
            (
                "membership (raft_entries.json)",
                Entry {
                    log_id: at(119),
                    payload: EntryPayload::Membership(membership_of(&read("raft_entries.json"))),
                },
            ),
        ]
    }

    /// The bytes of format 1, pinned: a change fails here and needs a new
    /// format byte (old rows must still load) and a new golden file
    /// (`ROSTER_BLESS=1 cargo test -p roster-registry codec`).
    #[test]
    fn log_rows_keep_their_bytes() {
        let mut text = String::from(
            "# Raft log rows, binary format 1 (registry/src/cluster/codec.rs), in hex.\n",
        );
        for (what, e) in golden_entries() {
            let bytes = encode_entry(&e);
            text.push_str(&format!("# {what}: {} bytes\n", bytes.len()));
            for line in bytes.chunks(32) {
                let hex: String = line.iter().map(|b| format!("{b:02x}")).collect();
                text.push_str(&hex);
                text.push('\n');
            }
        }
        let golden = crate::golden::pin_file(
            "raft_log_rows_v1.hex",
            &text,
            "the binary log row format changed; if on purpose, new format byte and rebless",
        );
        // The file's bytes read back as the entries, section by section.
        let mut sections: Vec<Vec<u8>> = Vec::new();
        for line in golden.lines() {
            if line.starts_with('#') {
                sections.push(Vec::new());
            } else if let Some(cur) = sections.last_mut() {
                for i in (0..line.len()).step_by(2) {
                    cur.push(u8::from_str_radix(&line[i..i + 2], 16).expect("hex"));
                }
            }
        }
        let decoded: Vec<_> = sections.iter().skip(1).map(|b| decode_entry(b)).collect();
        for ((what, e), got) in golden_entries().into_iter().zip(decoded) {
            let got = got.unwrap_or_else(|err| panic!("{what}: {err}"));
            assert_eq!(got.log_id, e.log_id, "{what}");
            assert_eq!(got.payload, e.payload, "{what}");
        }
    }

    /// Writes take less than half the bytes of the JSON rows they replace
    /// (a membership change keeps openraft's JSON inside).
    #[test]
    fn binary_rows_are_smaller_than_json_rows() {
        for (what, e) in golden_entries() {
            if matches!(e.payload, EntryPayload::Membership(_)) {
                continue;
            }
            let json = serde_json::to_vec(&e).expect("serializes").len();
            let binary = encode_entry(&e).len();
            assert!(
                binary * 2 < json,
                "{what}: {binary} bytes binary vs {json} JSON"
            );
        }
    }

    proptest! {
        /// Any bytes at all: an entry or an error, never a panic.
        #[test]
        fn random_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = vec![FORMAT_V1];
            bytes.extend_from_slice(&tail);
            if let Ok(e) = decode_entry(&bytes) {
                // What decodes writes a row that reads back the same.
                let again = decode_entry(&encode_entry(&e)).expect("re-encoded entry decodes");
                prop_assert_eq!(again.log_id, e.log_id);
                prop_assert_eq!(again.payload, e.payload);
            }
            let _ = decode_entry(&tail);
        }

        /// A valid entry with some bytes flipped: still never a panic.
        #[test]
        fn damaged_entries_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
            let mut bytes = encode_entry(&sample());
            for (at, b) in flips {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            let _ = decode_entry(&bytes);
        }
    }
}
