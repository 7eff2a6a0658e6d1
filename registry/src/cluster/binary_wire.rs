//! Raft messages between nodes in binary: appends ([`encode`]) with the
//! entries as the log's own rows ([`super::codec`]), and snapshot chunks
//! ([`encode_chunk`]) with their bytes as they are, not as JSON. A follower spent most of its CPU on an
//! append decoding JSON ops (serde buffers each internally tagged op before
//! reading it), and a follower catching up on large batch entries could not
//! decode one append within the heartbeat it is given.
//!
//! Sent with the content type [`CONTENT_TYPE`]:
//!
//! - one version byte, [`VERSION`];
//! - a big-endian `u32` length, then that many bytes of JSON holding the
//!   request's `vote`, `prev_log_id` and `leader_commit` (openraft's own
//!   shapes, as in the JSON request);
//! - a big-endian `u32` count of entries, then each entry: a big-endian
//!   `u32` length and that many bytes, the entry's row as `raft.redb` stores
//!   it ([`super::codec::encode_entry`]); nothing after the last.
//!
//! A snapshot chunk, sent with [`CHUNK_CONTENT_TYPE`], is the version byte,
//! the length-prefixed JSON header (`vote`, `meta`, `offset`, `done`), then
//! the chunk's bytes to the end of the body. As JSON they were an array of
//! numbers, 3.6 bytes and a parse per byte.
//!
//! A node of an earlier version reads only JSON and answers these content
//! types with 415; the sender then falls back to JSON for that peer (see
//! `network.rs`). Decoding never panics: a length past the end, a bad row,
//! bad JSON or a wrong version is a [`DecodeError`] naming the offset.

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};
use openraft::{BasicNode, LogId, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use super::codec::{self, DecodeError};

/// Content type of a binary append.
pub const CONTENT_TYPE: &str = "application/x-roster-raft-append";

/// Content type of a binary snapshot chunk.
pub const CHUNK_CONTENT_TYPE: &str = "application/x-roster-raft-snapshot-chunk";

/// First byte of a version 1 binary append or chunk.
pub const VERSION: u8 = 1;

/// A snapshot chunk without its bytes.
#[derive(Serialize, Deserialize)]
struct ChunkHead {
    vote: Vote<u64>,
    meta: SnapshotMeta<u64, BasicNode>,
    offset: u64,
    done: bool,
}

/// Encodes a snapshot chunk (see the module documentation).
pub fn encode_chunk(req: &InstallSnapshotRequest<TypeConfig>) -> Vec<u8> {
    let head = ChunkHead {
        vote: req.vote,
        meta: req.meta.clone(),
        offset: req.offset,
        done: req.done,
    };
    // Vote, meta and membership serialize to JSON without fail.
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let mut out = Vec::with_capacity(5 + head.len() + req.data.len());
    out.push(VERSION);
    put_len(&mut out, head.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&req.data);
    out
}

/// Decodes what [`encode_chunk`] wrote.
pub fn decode_chunk(bytes: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, DecodeError> {
    let (head, at) = head_of(bytes)?;
    let head: ChunkHead = serde_json::from_slice(head).map_err(|e| DecodeError {
        offset: 5,
        what: format!("header does not decode: {e}"),
    })?;
    Ok(InstallSnapshotRequest {
        vote: head.vote,
        meta: head.meta,
        offset: head.offset,
        data: bytes[at..].to_vec(),
        done: head.done,
    })
}

/// The request without its entries.
#[derive(Serialize, Deserialize)]
struct Head {
    vote: Vote<u64>,
    prev_log_id: Option<LogId<u64>>,
    leader_commit: Option<LogId<u64>>,
}

/// Encodes `req` (see the module documentation).
pub fn encode(req: &AppendEntriesRequest<TypeConfig>) -> Vec<u8> {
    let head = Head {
        vote: req.vote,
        prev_log_id: req.prev_log_id,
        leader_commit: req.leader_commit,
    };
    // Vote and log ids serialize to JSON without fail.
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let mut out = Vec::with_capacity(5 + head.len() + req.entries.len() * 64);
    out.push(VERSION);
    put_len(&mut out, head.len());
    out.extend_from_slice(&head);
    put_len(&mut out, req.entries.len());
    for entry in &req.entries {
        let row = codec::encode_entry(entry);
        put_len(&mut out, row.len());
        out.extend_from_slice(&row);
    }
    out
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    // Bodies are bounded far below 4 GiB (PEER_BODY_LIMIT).
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

/// Decodes what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<AppendEntriesRequest<TypeConfig>, DecodeError> {
    let (head, mut at) = head_of(bytes)?;
    let head: Head = serde_json::from_slice(head).map_err(|e| DecodeError {
        offset: 5,
        what: format!("header does not decode: {e}"),
    })?;
    let count = u32_at(bytes, at)?;
    at += 4;
    // Each entry takes at least its four length bytes: no larger list to
    // allocate than the input could hold.
    let mut entries = Vec::with_capacity(count.min((bytes.len() - at) / 4));
    for _ in 0..count {
        let (row, next) = part(bytes, at)?;
        let entry = codec::decode_entry(row).map_err(|e| DecodeError {
            offset: at + 4 + e.offset,
            what: e.what,
        })?;
        entries.push(entry);
        at = next;
    }
    if at != bytes.len() {
        return Err(DecodeError {
            offset: at,
            what: format!("{} bytes after the last entry", bytes.len() - at),
        });
    }
    Ok(AppendEntriesRequest {
        vote: head.vote,
        prev_log_id: head.prev_log_id,
        entries,
        leader_commit: head.leader_commit,
    })
}

/// The version check and the length-prefixed header: the header's bytes
/// and the offset after them.
fn head_of(bytes: &[u8]) -> Result<(&[u8], usize), DecodeError> {
    match bytes.first() {
        Some(&VERSION) => part(bytes, 1),
        Some(v) => Err(DecodeError {
            offset: 0,
            what: format!("unknown version {v}"),
        }),
        None => Err(DecodeError {
            offset: 0,
            what: "empty message".into(),
        }),
    }
}

/// The big-endian `u32` at `at`.
fn u32_at(bytes: &[u8], at: usize) -> Result<usize, DecodeError> {
    let b = bytes.get(at..at + 4).ok_or_else(|| DecodeError {
        offset: at,
        what: "length cut short".into(),
    })?;
    Ok(u32::from_be_bytes(b.try_into().expect("four bytes")) as usize)
}

/// The length-prefixed part at `at`, and the offset after it.
fn part(bytes: &[u8], at: usize) -> Result<(&[u8], usize), DecodeError> {
    let len = u32_at(bytes, at)?;
    let start = at + 4;
    let part = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| DecodeError {
            offset: at,
            what: format!("{len} bytes announced, fewer left"),
        })?;
    Ok((part, start + len))
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    use super::super::ops::{Batch, Op};
    use super::*;

    fn sample() -> AppendEntriesRequest<TypeConfig> {
        let at = |index| LogId::new(CommittedLeaderId::new(3, 7), index);
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 7),
            prev_log_id: Some(at(41)),
            entries: vec![
                Entry {
                    log_id: at(42),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: at(43),
                    payload: EntryPayload::Normal(Batch {
                        ops: vec![Op::Heartbeat {
                            service: "web".into(),
                            id: "web-1".into(),
                        }],
                    }),
                },
            ],
            leader_commit: Some(at(42)),
        }
    }

    fn same(a: &AppendEntriesRequest<TypeConfig>, b: &AppendEntriesRequest<TypeConfig>) {
        assert_eq!(a.vote, b.vote);
        assert_eq!(a.prev_log_id, b.prev_log_id);
        assert_eq!(a.leader_commit, b.leader_commit);
        assert_eq!(a.entries.len(), b.entries.len());
        for (x, y) in a.entries.iter().zip(&b.entries) {
            assert_eq!(x.log_id, y.log_id);
            assert_eq!(x.payload, y.payload);
        }
    }

    /// The bytes of a small append are pinned (the rows inside are pinned
    /// on their own in raft_log_rows_v1.hex), and read back as the request.
    #[test]
    fn the_binary_append_keeps_its_bytes() {
        let bytes = encode(&sample());
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!(
            "# AppendEntries, binary version 1: vote T3-N7 committed, prev 41, a blank entry 42 and a heartbeat entry 43, commit 42\n{hex}\n"
        );
        let golden = crate::golden::pin_file(
            "raft_append_v1.hex",
            &text,
            "the binary append changed; if on purpose, a new version byte",
        );
        let line = golden.lines().nth(1).expect("hex line");
        let back: Vec<u8> = (0..line.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("hex"))
            .collect();
        same(&decode(&back).expect("decodes"), &sample());
        // A heartbeat (no entries) too.
        let beat = AppendEntriesRequest {
            entries: Vec::new(),
            ..sample()
        };
        same(&decode(&encode(&beat)).expect("decodes"), &beat);
    }

    /// Every cut of a valid append, and every single byte changed, is an
    /// error or a request, never a panic; a cut one is always an error.
    #[test]
    fn damaged_appends_are_errors() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            let got = decode(&bytes[..cut]);
            assert!(got.is_err(), "cut at {cut} read as a request");
        }
        for i in 0..bytes.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = decode(&b);
            }
        }
        let mut other = bytes.clone();
        other[0] = 2;
        let Err(e) = decode(&other) else {
            panic!("version 2 read as a request")
        };
        assert!(e.what.contains("version"), "{e}");
    }

    /// A snapshot chunk keeps its header and its bytes as they are (every
    /// byte value), and a cut header is an error.
    #[test]
    fn snapshot_chunks_read_back() {
        let req = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 7),
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(3, 7), 9_999)),
                last_membership: openraft::StoredMembership::default(),
                snapshot_id: "3-9999-1".into(),
            },
            offset: 3 << 20,
            data: (0..=255u8).cycle().take(70_000).collect(),
            done: false,
        };
        let bytes = encode_chunk(&req);
        assert!(bytes.len() < req.data.len() + 300, "{} bytes", bytes.len());
        assert_eq!(decode_chunk(&bytes).expect("decodes"), req);
        let head_end = bytes.len() - req.data.len();
        for cut in 0..head_end {
            assert!(decode_chunk(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(decode_chunk(&other).is_err());
    }

    /// The point of it: less than half the bytes of the JSON request once
    /// it carries entries of writes.
    #[test]
    fn binary_appends_are_smaller_than_json() {
        let mut req = sample();
        let write = req.entries[1].clone();
        req.entries = (0..50)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(3, 7), 100 + i),
                payload: write.payload.clone(),
            })
            .collect();
        let json = serde_json::to_vec(&req).expect("serializes").len();
        let binary = encode(&req).len();
        assert!(binary * 2 < json, "{binary} vs {json}");
    }
}
