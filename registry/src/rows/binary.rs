//! The compact binary form of an [`InstanceRow`]: the store's rows since
//! store format 2, and the instances of a binary Raft snapshot.
//!
//! A JSON row spends most of a start-up in field names and number parsing; at
//! a million instances that is seconds. This form has no names and no text
//! numbers. Layout (integers are LEB128 varints unless said otherwise; a
//! string is its byte length then its UTF-8 bytes):
//!
//! ```text
//! version byte 0x02
//! service, id, address: string
//! port: varint (≤ 65535)
//! tags: count, then each string
//! meta: count, then each key and value string, keys strictly ascending
//! weights: passing, warning
//! flags byte: 1 ttl, 2 lease, 4 maintenance (other bits must be 0)
//! ttl_ms (if flag 1), deregister_critical_after_ms
//! lease health byte (if flag 2): 0 passing, 1 warning, 2 critical
//! maintenance reason (if flag 4): string
//! create_index, modify_index
//! checks: byte length, then the JSON of the check rows (length 0: none)
//! ```
//!
//! The rare and intricate part (health checks besides the lease) stays JSON
//! inside the row, with the same names and rules as a JSON row. A JSON row
//! starts with `{`, never with the version byte, so a reader tells the two
//! apart by the first byte ([`decode_row`]). Every damage (a short row,
//! trailing bytes, bad UTF-8, a number out of range, an unknown flag) is an
//! error naming what it was reading, never a panic.

use std::collections::BTreeMap;

use super::{CheckRow, HealthRow, InstanceRow, WeightsRow};

/// First byte of a binary row.
pub const BINARY_ROW_VERSION: u8 = 2;

const FLAG_TTL: u8 = 1;
const FLAG_LEASE: u8 = 2;
const FLAG_MAINTENANCE: u8 = 4;

/// Why a row's bytes do not decode.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The row is empty.
    #[error("empty row")]
    Empty,
    /// The first byte is no known row version.
    #[error("unknown row version {0:#04x} (this roster reads JSON rows and binary version 2)")]
    Version(u8),
    /// Binary bytes that break the layout.
    #[error("damaged binary row at byte {at}: {what}")]
    Damaged {
        /// Offset of the problem.
        at: usize,
        /// What was wrong.
        what: String,
    },
    /// A JSON row (or the JSON checks of a binary row) that does not parse.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes a stored row in either form: JSON (store format 1) or binary.
pub fn decode_row(bytes: &[u8]) -> Result<InstanceRow, RowError> {
    match bytes.first() {
        None => Err(RowError::Empty),
        Some(b'{') | Some(b' ') | Some(b'\n') => Ok(serde_json::from_slice(bytes)?),
        Some(&BINARY_ROW_VERSION) => Reader { bytes, at: 1 }.row(),
        Some(&v) => Err(RowError::Version(v)),
    }
}

/// Appends the binary form of `row` to `out`.
pub fn encode_row(row: &InstanceRow, out: &mut Vec<u8>) {
    out.push(BINARY_ROW_VERSION);
    put_str(out, &row.service);
    put_str(out, &row.id);
    put_str(out, &row.address);
    put_varint(out, u64::from(row.port));
    put_varint(out, row.tags.len() as u64);
    for tag in &row.tags {
        put_str(out, tag);
    }
    put_varint(out, row.meta.len() as u64);
    for (k, v) in &row.meta {
        put_str(out, k);
        put_str(out, v);
    }
    put_varint(out, u64::from(row.weights.passing));
    put_varint(out, u64::from(row.weights.warning));
    let mut flags = 0;
    if row.ttl_ms.is_some() {
        flags |= FLAG_TTL;
    }
    if row.lease.is_some() {
        flags |= FLAG_LEASE;
    }
    if row.maintenance.is_some() {
        flags |= FLAG_MAINTENANCE;
    }
    out.push(flags);
    if let Some(ttl) = row.ttl_ms {
        put_varint(out, ttl);
    }
    put_varint(out, row.deregister_critical_after_ms);
    if let Some(lease) = row.lease {
        out.push(match lease {
            HealthRow::Passing => 0,
            HealthRow::Warning => 1,
            HealthRow::Critical => 2,
        });
    }
    if let Some(reason) = &row.maintenance {
        put_str(out, reason);
    }
    put_varint(out, row.create_index);
    put_varint(out, row.modify_index);
    if row.checks.is_empty() {
        put_varint(out, 0);
    } else {
        let json = serde_json::to_vec(&row.checks).expect("check rows serialize");
        put_varint(out, json.len() as u64);
        out.extend_from_slice(&json);
    }
}

/// The binary form of `row`.
pub fn row_bytes(row: &InstanceRow) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    encode_row(row, &mut out);
    out
}

/// `f` of every item, computed on every core, in order; the error of the
/// first failing item (by position) with its position.
pub(crate) fn map_parallel<A: Sync, T: Send, E: Send>(
    items: &[A],
    f: impl Fn(&A) -> Result<T, E> + Sync,
) -> Result<Vec<T>, (usize, E)> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let part = items.len().div_ceil(workers).max(1024);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(part)
            .enumerate()
            .map(|(n, chunk)| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, item)| f(item).map_err(|e| (n * part + i, e)))
                        .collect::<Result<Vec<T>, (usize, E)>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        let mut first_error = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(part)) if first_error.is_none() => out.extend(part),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    })
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads the pieces of a binary row (or of a message made of them) and
/// names what it was reading when the bytes run out or make no sense.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes` from offset `at`.
    pub(crate) fn new(bytes: &'a [u8], at: usize) -> Self {
        Reader { bytes, at }
    }

    /// Whether every byte has been read; an error naming the rest if not.
    pub(crate) fn finish(&self) -> Result<(), RowError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            self.damaged(format!(
                "{} bytes after the end",
                self.bytes.len() - self.at
            ))
        }
    }

    fn damaged<T>(&self, what: impl Into<String>) -> Result<T, RowError> {
        Err(RowError::Damaged {
            at: self.at,
            what: what.into(),
        })
    }

    pub(crate) fn byte(&mut self, what: &str) -> Result<u8, RowError> {
        match self.bytes.get(self.at) {
            Some(&b) => {
                self.at += 1;
                Ok(b)
            }
            None => self.damaged(format!("row ends before {what}")),
        }
    }

    pub(crate) fn varint(&mut self, what: &str) -> Result<u64, RowError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(what)?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return self.damaged(format!("{what} is larger than 64 bits"));
            }
            n |= part << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        self.damaged(format!("{what} is larger than 64 bits"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, RowError> {
        let n = self.varint(what)?;
        u32::try_from(n).or_else(|_| self.damaged(format!("{what} {n} is out of range")))
    }

    pub(crate) fn len(&mut self, what: &str) -> Result<usize, RowError> {
        let n = self.varint(what)?;
        let left = self.bytes.len() - self.at;
        match usize::try_from(n) {
            Ok(n) if n <= left => Ok(n),
            _ => self.damaged(format!("{what} of {n} bytes, only {left} left")),
        }
    }

    pub(crate) fn slice(&mut self, what: &str) -> Result<&'a [u8], RowError> {
        let n = self.len(what)?;
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    pub(crate) fn string(&mut self, what: &str) -> Result<String, RowError> {
        let start = self.at;
        let s = self.slice(what)?;
        match std::str::from_utf8(s) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => {
                self.at = start;
                self.damaged(format!("{what} is not UTF-8"))
            }
        }
    }

    /// A count of items that take at least one byte each.
    fn count(&mut self, what: &str) -> Result<usize, RowError> {
        self.len(what)
    }

    fn row(mut self) -> Result<InstanceRow, RowError> {
        let service = self.string("the service")?;
        let id = self.string("the id")?;
        let address = self.string("the address")?;
        let port = self.varint("the port")?;
        let port = u16::try_from(port).or_else(|_| self.damaged(format!("port {port}")))?;
        let n = self.count("the tag count")?;
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            tags.push(self.string("a tag")?);
        }
        let n = self.count("the metadata count")?;
        let mut meta = BTreeMap::new();
        for _ in 0..n {
            let k = self.string("a metadata key")?;
            let v = self.string("a metadata value")?;
            if meta.last_key_value().is_some_and(|(last, _)| *last >= k) {
                return self.damaged(format!("metadata key {k:?} out of order or repeated"));
            }
            meta.insert(k, v);
        }
        let weights = WeightsRow {
            passing: self.u32("the passing weight")?,
            warning: self.u32("the warning weight")?,
        };
        let flags = self.byte("the flags")?;
        if flags & !(FLAG_TTL | FLAG_LEASE | FLAG_MAINTENANCE) != 0 {
            return self.damaged(format!("unknown flags {flags:#04x}"));
        }
        let ttl_ms = if flags & FLAG_TTL != 0 {
            Some(self.varint("the ttl")?)
        } else {
            None
        };
        let deregister_critical_after_ms = self.varint("deregister_critical_after")?;
        let lease = if flags & FLAG_LEASE != 0 {
            Some(match self.byte("the lease")? {
                0 => HealthRow::Passing,
                1 => HealthRow::Warning,
                2 => HealthRow::Critical,
                b => return self.damaged(format!("lease health {b}")),
            })
        } else {
            None
        };
        let maintenance = if flags & FLAG_MAINTENANCE != 0 {
            Some(self.string("the maintenance reason")?)
        } else {
            None
        };
        let create_index = self.varint("the create index")?;
        let modify_index = self.varint("the modify index")?;
        let json = self.slice("the checks")?;
        let checks: Vec<CheckRow> = if json.is_empty() {
            Vec::new()
        } else {
            serde_json::from_slice(json)?
        };
        self.finish()?;
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
            create_index,
            modify_index,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;

    fn golden_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name)
    }

    /// The row of the JSON golden file `name`.
    fn golden_row(name: &str) -> InstanceRow {
        let text = std::fs::read_to_string(golden_path(name)).expect("golden row file");
        serde_json::from_str(&text).expect("golden row parses")
    }

    fn hex(bytes: &[u8]) -> String {
        let mut out = String::new();
        for line in bytes.chunks(32) {
            for b in line {
                out.push_str(&format!("{b:02x}"));
            }
            out.push('\n');
        }
        out
    }

    /// The binary form of the row in `json_name` must be the bytes in
    /// `hex_name` (hex, 32 bytes a line), and those bytes must decode to the
    /// row. `ROSTER_BLESS=1` writes the hex file.
    fn pin_binary(json_name: &str, hex_name: &str) {
        let row = golden_row(json_name);
        let bytes = row_bytes(&row);
        let golden = crate::golden::pin_file(
            hex_name,
            &hex(&bytes),
            "the binary row format changed; if on purpose, keep old rows readable and rebless",
        );
        let text: String = golden.split_whitespace().collect();
        let from_file: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(decode_row(&from_file).expect("golden bytes decode"), row);
    }

    #[test]
    fn binary_rows_keep_their_format() {
        pin_binary("store_row.json", "store_row_v2.hex");
    }

    #[test]
    fn binary_rows_without_options_keep_their_format() {
        pin_binary("store_row_minimal.json", "store_row_minimal_v2.hex");
    }

    /// Rows written by store format 1 (JSON) still decode, to the same row.
    #[test]
    fn json_rows_still_decode() {
        for name in ["store_row.json", "store_row_minimal.json"] {
            let text = std::fs::read_to_string(golden_path(name)).unwrap();
            let compact = serde_json::to_vec(&golden_row(name)).unwrap();
            assert_eq!(decode_row(text.as_bytes()).unwrap(), golden_row(name));
            assert_eq!(decode_row(&compact).unwrap(), golden_row(name));
        }
    }

    /// Every shortened row, and every row with bytes after it, is an error.
    #[test]
    fn truncated_and_padded_rows_are_errors() {
        let bytes = row_bytes(&golden_row("store_row.json"));
        for end in 0..bytes.len() {
            assert!(decode_row(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut long = bytes.clone();
        long.push(0);
        let err = decode_row(&long).unwrap_err().to_string();
        assert!(err.contains("1 bytes after the end"), "{err}");
    }

    #[test]
    fn damage_is_named() {
        let cases: [(&[u8], &str); 6] = [
            (&[], "empty row"),
            (&[7, 1], "unknown row version 0x07"),
            (&[2, 3, b'w'], "byte 2: the service of 3 bytes, only 1 left"),
            (&[2, 1, 0xff], "the service is not UTF-8"),
            (&[2, 0, 0, 0, 0xff, 0xff, 0x04], "port 81919"),
            (
                &[
                    2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                ],
                "the port is larger than 64 bits",
            ),
        ];
        for (bytes, text) in cases {
            let err = decode_row(bytes).unwrap_err().to_string();
            assert!(err.contains(text), "{bytes:?}: {err}");
        }
        // Port 65536 is one too many.
        let err = decode_row(&[2, 0, 0, 0, 0x80, 0x80, 0x04])
            .unwrap_err()
            .to_string();
        assert!(err.contains("port 65536"), "{err}");
    }

    proptest! {
        /// Damaged bytes never panic: any byte changed, or random bytes after
        /// the version byte, decode to a row or to an error.
        #[test]
        fn damaged_rows_never_panic(at in 0usize..400, value: u8, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = row_bytes(&golden_row("store_row.json"));
            let at = at % bytes.len();
            bytes[at] = value;
            let _ = decode_row(&bytes);
            let mut random = vec![BINARY_ROW_VERSION];
            random.extend(tail);
            let _ = decode_row(&random);
        }

        /// Rows round-trip, whatever their strings and numbers.
        #[test]
        fn rows_round_trip(
            service in "[a-z0-9-]{1,20}",
            id in "\\PC{1,30}",
            port: u16,
            tags in proptest::collection::vec("\\PC{0,10}", 0..4),
            meta in proptest::collection::btree_map("\\PC{1,8}", "\\PC{0,8}", 0..4),
            ttl in proptest::option::of(any::<u64>()),
            dereg: u64,
            lease in proptest::option::of(0u8..3),
            maintenance in proptest::option::of("\\PC{0,12}"),
            create: u64,
            modify: u64,
            passing: u32,
            warning: u32,
        ) {
            let row = InstanceRow {
                service,
                id,
                address: "10.1.2.3".into(),
                port,
                tags,
                meta,
                weights: WeightsRow { passing, warning },
                ttl_ms: ttl,
                deregister_critical_after_ms: dereg,
                lease: lease.map(|l| [HealthRow::Passing, HealthRow::Warning, HealthRow::Critical][l as usize]),
                maintenance,
                checks: Vec::new(),
                create_index: create,
                modify_index: modify,
            };
            prop_assert_eq!(decode_row(&row_bytes(&row)).unwrap(), row);
        }
    }
}
