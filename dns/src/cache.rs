//! Positive answers encoded once per (name, type) and service index.
//!
//! An [`Answer`] is the records of a name backed by a service, in groups that
//! rotate on their own. [`Encoded`] holds the wire form of each record
//! without its owner name, so that a query only writes bytes: the header (the
//! requester's id and flags), the requester's question (its exact case, DNS
//! 0x20), the records in this query's rotation and the OPT record.
//!
//! Every owner name in the answer section is the question's name: the first
//! record carries it in full (in the requester's case), every other one a
//! compression pointer to it, which is where hickory's encoder puts them too.
//! An additional record (the address of an SRV target) names the target of an
//! SRV record of the answer section, and points to it. Those pointers only
//! aim at the question or at a record whose position this query's rotation
//! gives, so rotating the records never breaks one. The result decodes to the
//! same message as hickory's encoding of the same records, and is never
//! larger: hickory stops compressing after 120 names or 64 remembered labels,
//! so past 14 SRV targets or 120 records the cached form can be smaller.
//!
//! The sizing is the one of [`wire::fit`](crate::wire::fit): as many whole
//! answer records as fit (TC=1 over UDP when some do not, and no additional
//! record), then as many additional records as fit, the OPT record always.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, PoisonError, RwLock};

use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

/// Shards of the cache, each behind its own lock.
const SHARDS: usize = 16;
/// Most entries in the whole cache.
pub(crate) const MAX_ENTRIES: usize = 8192;
/// Most bytes (approximately) in the whole cache.
const MAX_BYTES: usize = 64 << 20;
/// Offset of an SRV record's target in its encoding without owner name:
/// type, class, TTL, RDATA length, priority, weight, port.
const SRV_TARGET: usize = 16;
/// Size of the header.
const HEADER: usize = 12;
/// Size of our OPT record: root name, type, class, TTL, empty RDATA.
const OPT_LEN: usize = 11;
/// Compression pointers reach the first 16 KiB of a message.
const POINTER_REACH: usize = 0x4000;
/// hickory's encoder compresses the first 120 names of a message (the
/// question aside) and writes the others in full; so do we, for the same
/// sizes and so the same truncation.
const COMPRESSED_NAMES: usize = 120;

/// Records of one answer, all named by the question, in groups.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// Answer-section groups, each rotated by the query's turn on its own.
    pub groups: Vec<Group>,
    /// Additional records, rotated on their own, each with the index (in the
    /// first group) of the SRV record whose target it names.
    pub additionals: Vec<(Record, usize)>,
}

/// Records rotated together.
#[derive(Debug)]
pub(crate) struct Group {
    pub records: Vec<Record>,
    /// Only the first record after rotation is sent (one CNAME per query).
    pub pick: bool,
}

impl Answer {
    /// Adds a group, unless it is empty.
    pub(crate) fn push(&mut self, records: Vec<Record>, pick: bool) {
        if !records.is_empty() {
            self.groups.push(Group { records, pick });
        }
    }

    /// Whether the answer section is empty (NODATA).
    pub(crate) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The answer section for query number `turn`.
    pub(crate) fn answers(&self, turn: usize) -> Vec<Record> {
        let mut out = Vec::new();
        for group in &self.groups {
            let records = &group.records;
            let first = turn % records.len();
            if group.pick {
                out.push(records[first].clone());
            } else {
                out.extend(records[first..].iter().chain(&records[..first]).cloned());
            }
        }
        out
    }

    /// The additional section for query number `turn`.
    pub(crate) fn additionals(&self, turn: usize) -> Vec<Record> {
        let records = &self.additionals;
        let first = turn % records.len().max(1);
        records[first..]
            .iter()
            .chain(&records[..first])
            .map(|(record, _)| record.clone())
            .collect()
    }
}

/// One encoded record: everything after its owner name.
#[derive(Debug)]
struct Tail(Box<[u8]>);

/// A group, encoded.
#[derive(Debug)]
struct EncodedGroup {
    tails: Vec<Tail>,
    /// `sums[i]`: bytes of `tails[..i]`.
    sums: Vec<usize>,
    pick: bool,
}

impl EncodedGroup {
    fn len(&self) -> usize {
        self.tails.len()
    }

    /// Records this group sends.
    fn sent(&self) -> usize {
        if self.pick { 1 } else { self.tails.len() }
    }

    /// Bytes of the first `count` tails sent from rotation `first`.
    fn bytes(&self, first: usize, count: usize) -> usize {
        if self.pick {
            return if count == 0 {
                0
            } else {
                self.tails[first].0.len()
            };
        }
        let len = self.len();
        let end = first + count;
        if end <= len {
            self.sums[end] - self.sums[first]
        } else {
            self.sums[len] - self.sums[first] + self.sums[end - len]
        }
    }
}

/// An additional record, encoded.
#[derive(Debug)]
struct Extra {
    /// Its owner name, uncompressed (used when its SRV target lies beyond
    /// the reach of a pointer).
    name: Box<[u8]>,
    tail: Tail,
    /// Index in the first group of the SRV record it names the target of.
    answer: usize,
}

/// An [`Answer`] encoded, ready to be written for any query.
#[derive(Debug)]
pub(crate) struct Encoded {
    groups: Vec<EncodedGroup>,
    extras: Vec<Extra>,
    /// Answer records sent when all fit.
    sent: usize,
    /// Compressible names in the RDATA of the first record (1 for a CNAME).
    first_names: usize,
    /// Approximate heap size, for the cache's bound.
    size: usize,
}

/// What a query brings to its answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Query<'a> {
    /// The header's id.
    pub id: u16,
    /// RD and CD, copied.
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The question section exactly as received: one question, no pointer.
    pub question: &'a [u8],
    /// Rotation.
    pub turn: usize,
    /// The largest message the transport takes (OPT record included).
    pub limit: usize,
    /// The payload size of our OPT record, when the query had one.
    pub opt: Option<u16>,
    /// UDP: a cut answer sets TC.
    pub udp: bool,
}

/// How much of an answer one query sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sent {
    pub answers: usize,
    pub additionals: usize,
    pub truncated: bool,
}

impl Encoded {
    /// Encodes `answer`; `None` when a record does not encode.
    pub(crate) fn new(answer: &Answer) -> Option<Encoded> {
        let mut size = 64;
        let mut groups = Vec::with_capacity(answer.groups.len());
        for group in &answer.groups {
            let tails = group
                .records
                .iter()
                .map(tail)
                .collect::<Option<Vec<Tail>>>()?;
            let mut sums = Vec::with_capacity(tails.len() + 1);
            sums.push(0);
            for t in &tails {
                sums.push(sums.last().copied().unwrap_or(0) + t.0.len());
            }
            size += tails.iter().map(|t| t.0.len() + 40).sum::<usize>();
            groups.push(EncodedGroup {
                tails,
                sums,
                pick: group.pick,
            });
        }
        let mut extras = Vec::with_capacity(answer.additionals.len());
        for (record, answer) in &answer.additionals {
            let name = name_bytes(&record.name)?;
            let tail = tail(record)?;
            size += name.len() + tail.0.len() + 56;
            extras.push(Extra {
                name,
                tail,
                answer: *answer,
            });
        }
        let cname = answer
            .groups
            .first()
            .is_some_and(|g| g.records[0].record_type() == RecordType::CNAME);
        Some(Encoded {
            first_names: usize::from(cname),
            sent: groups.iter().map(EncodedGroup::sent).sum(),
            groups,
            extras,
            size,
        })
    }

    /// Approximate heap size.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Bytes of the first `count` answer records (owner names included) for
    /// rotation `turn` and a question name of `qname` bytes.
    fn answer_bytes(&self, turn: usize, qname: usize, mut count: usize) -> usize {
        if count == 0 {
            return 0;
        }
        // Owner names after the first: pointers while hickory would
        // compress, then in full.
        let pointers = (count - 1).min(COMPRESSED_NAMES.saturating_sub(1 + self.first_names));
        let mut bytes = qname + 2 * pointers + qname * (count - 1 - pointers);
        for group in &self.groups {
            let take = count.min(group.sent());
            bytes += group.bytes(turn % group.len(), take);
            count -= take;
            if count == 0 {
                break;
            }
        }
        bytes
    }

    /// Where the target of SRV record `answer` of the first group starts,
    /// the answer section starting at `start`.
    fn target_offset(&self, turn: usize, qname: usize, start: usize, answer: usize) -> usize {
        let group = &self.groups[0];
        let len = group.len();
        let position = (answer + len - turn % len) % len;
        let owner = if self.owner_compressed(position) {
            2
        } else {
            qname
        };
        start + self.answer_bytes(turn, qname, position) + owner + SRV_TARGET
    }

    /// Whether the owner name of answer record `position` is a pointer.
    fn owner_compressed(&self, position: usize) -> bool {
        position > 0 && position + self.first_names < COMPRESSED_NAMES
    }

    /// Whether the owner name of the `i`-th additional record sent, naming
    /// the SRV target at `target`, is a pointer.
    fn extra_compressed(&self, i: usize, target: usize) -> bool {
        self.sent + self.first_names + i < COMPRESSED_NAMES && target < POINTER_REACH
    }

    /// The owner name size of the `i`-th additional record sent, `extra`.
    fn extra_owner(
        &self,
        i: usize,
        extra: &Extra,
        turn: usize,
        qname: usize,
        start: usize,
    ) -> usize {
        let target = self.target_offset(turn, qname, start, extra.answer);
        if self.extra_compressed(i, target) {
            2
        } else {
            extra.name.len()
        }
    }

    /// How much of this answer `query` gets.
    ///
    /// Like hickory's encoder, which writes a name in full before it
    /// replaces it with a pointer, a record only fits when its owner name
    /// would fit uncompressed, even when it is sent compressed.
    pub(crate) fn fit(&self, query: &Query<'_>) -> Sent {
        let qname = query.question.len() - 4;
        let start = HEADER + query.question.len();
        let budget = query
            .limit
            .saturating_sub(if query.opt.is_some() { OPT_LEN } else { 0 });
        if start > budget {
            return Sent {
                answers: 0,
                additionals: 0,
                truncated: true,
            };
        }
        let room = budget - start;
        // Whether the first `count` answer records fit.
        let fits = |count: usize| {
            count == 0
                || (self.answer_bytes(query.turn, qname, count) <= room
                    && self.answer_bytes(query.turn, qname, count - 1) + qname - 1 <= room)
        };
        if !fits(self.sent) {
            // Binary search of the most answer records that fit.
            let (mut lo, mut hi) = (0, self.sent);
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if fits(mid) {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            return Sent {
                answers: lo,
                additionals: 0,
                truncated: true,
            };
        }
        let mut used = self.answer_bytes(query.turn, qname, self.sent);
        let mut additionals = 0;
        let count = self.extras.len();
        for i in 0..count {
            let extra = &self.extras[(query.turn + i) % count];
            let bytes = self.extra_owner(i, extra, query.turn, qname, start) + extra.tail.0.len();
            if used + bytes > room || used + extra.name.len() - 1 > room {
                break;
            }
            used += bytes;
            additionals += 1;
        }
        Sent {
            answers: self.sent,
            additionals,
            truncated: false,
        }
    }

    /// The whole message for `query`.
    pub(crate) fn write(&self, query: &Query<'_>) -> Vec<u8> {
        let sent = self.fit(query);
        let qname = query.question.len() - 4;
        let start = HEADER + query.question.len();
        let truncated = sent.truncated && query.udp;
        let mut out = Vec::with_capacity(
            start
                + self.answer_bytes(query.turn, qname, sent.answers)
                + sent.additionals * 64
                + OPT_LEN,
        );
        out.extend_from_slice(&query.id.to_be_bytes());
        // QR, opcode QUERY, AA, TC, RD; RA clear, AD clear, CD, NOERROR.
        out.push(0x84 | (u8::from(truncated) << 1) | u8::from(query.recursion_desired));
        out.push(u8::from(query.checking_disabled) << 4);
        let additionals = sent.additionals + usize::from(query.opt.is_some());
        for count in [1, sent.answers, 0, additionals] {
            out.extend_from_slice(&u16::try_from(count).unwrap_or(u16::MAX).to_be_bytes());
        }
        out.extend_from_slice(query.question);
        let first_owner = pointer(start);
        let mut left = sent.answers;
        'groups: for group in &self.groups {
            let first = query.turn % group.len();
            for i in 0..group.sent() {
                if left == 0 {
                    break 'groups;
                }
                if self.owner_compressed(sent.answers - left) {
                    out.extend_from_slice(&first_owner);
                } else {
                    out.extend_from_slice(&query.question[..qname]);
                }
                out.extend_from_slice(&group.tails[(first + i) % group.len()].0);
                left -= 1;
            }
        }
        let count = self.extras.len();
        for i in 0..sent.additionals {
            let extra = &self.extras[(query.turn + i) % count];
            let target = self.target_offset(query.turn, qname, start, extra.answer);
            if self.extra_compressed(i, target) {
                out.extend_from_slice(&pointer(target));
            } else {
                out.extend_from_slice(&extra.name);
            }
            out.extend_from_slice(&extra.tail.0);
        }
        if let Some(payload) = query.opt {
            out.extend_from_slice(&[0, 0, 41]);
            out.extend_from_slice(&payload.max(512).to_be_bytes());
            out.extend_from_slice(&[0; 6]);
        }
        out
    }
}

/// A compression pointer to `offset` (below [`POINTER_REACH`]).
fn pointer(offset: usize) -> [u8; 2] {
    let offset = u16::try_from(offset).unwrap_or(0) & 0x3FFF;
    (0xC000 | offset).to_be_bytes()
}

/// The encoding of `record` after its owner name.
fn tail(record: &Record) -> Option<Tail> {
    let mut rooted = record.clone();
    rooted.name = Name::root();
    let mut buf = Vec::with_capacity(64);
    rooted.emit(&mut BinEncoder::new(&mut buf)).ok()?;
    // The root name is one byte.
    Some(Tail(buf[1..].into()))
}

/// The uncompressed wire form of `name`.
fn name_bytes(name: &Name) -> Option<Box<[u8]>> {
    let mut buf = Vec::with_capacity(64);
    name.emit(&mut BinEncoder::new(&mut buf)).ok()?;
    Some(buf.into())
}

/// An entry: the answer of one (name, type) at one service index, `None`
/// for a negative answer (sent by the uncached path).
#[derive(Debug)]
pub(crate) struct Entry {
    pub index: u64,
    pub encoded: Option<Encoded>,
}

impl Entry {
    fn size(&self, key: &[u8]) -> usize {
        key.len() + 96 + self.encoded.as_ref().map_or(0, Encoded::size)
    }
}

/// One shard: its map and the bytes it holds.
#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Box<[u8]>, Arc<Entry>>,
    bytes: usize,
}

/// Entries by lowercase question name and type, in shards with their own
/// lock; bounded in entries and bytes (a full shard evicts arbitrary entries).
#[derive(Debug)]
pub(crate) struct AnswerCache {
    hasher: RandomState,
    shards: Box<[RwLock<Shard>]>,
}

impl Default for AnswerCache {
    fn default() -> Self {
        AnswerCache {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl AnswerCache {
    fn shard(&self, key: &[u8]) -> &RwLock<Shard> {
        let hash = self.hasher.hash_one(key);
        &self.shards[(hash as usize) % SHARDS]
    }

    /// The entry of `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Arc<Entry>> {
        let shard = self
            .shard(key)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.map.get(key).cloned()
    }

    /// Stores `entry` under `key`, evicting others while the shard is over
    /// its bound. An entry larger than a shard's bound is not kept.
    pub(crate) fn insert(&self, key: &[u8], entry: Arc<Entry>) {
        let size = entry.size(key);
        let (max_entries, max_bytes) = (MAX_ENTRIES / SHARDS, MAX_BYTES / SHARDS);
        if size > max_bytes {
            return;
        }
        let mut shard = self
            .shard(key)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = shard.map.remove(key) {
            shard.bytes -= old.size(key);
        }
        while shard.map.len() >= max_entries || shard.bytes + size > max_bytes {
            let Some(victim) = shard.map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = shard.map.remove(&victim) {
                shard.bytes -= old.size(&victim);
            }
        }
        shard.bytes += size;
        shard.map.insert(key.into(), entry);
    }

    /// Entries held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}
