//! Response sizing: how many records fit in the requester's buffer.
//!
//! hickory truncates while encoding, section by section, and writes the OPT
//! record last, so a truncated hickory answer loses its OPT record. We decide
//! what fits before handing the response to hickory instead: the budget is the
//! limit minus the OPT record, so the OPT record always fits.

use hickory_proto::ProtoError;
use hickory_proto::op::{EmitAndCount, Metadata, emit_message_parts};
use hickory_proto::rr::{RData, Record};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::zone_handler::Queries;

/// Size of the header.
const HEADER: usize = 12;
/// Size of our OPT record: root name, type, class, TTL, empty RDATA.
pub(crate) const OPT_LEN: usize = 11;

/// How much of a response to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fit {
    /// Answer records to send.
    pub answers: usize,
    /// Whether to send the authority section.
    pub authority: bool,
    /// Additional records to send.
    pub additionals: usize,
    /// Whether required data was left out (TC=1).
    pub truncated: bool,
}

/// Decides how much of a response fits in `budget` bytes (the OPT record
/// already deducted). Encodes a trial copy only when a quick upper bound says
/// the whole response may not fit.
pub(crate) fn fit(
    metadata: &Metadata,
    queries: &Queries,
    answers: &[Record],
    authority: &[Record],
    additionals: &[Record],
    budget: usize,
) -> Fit {
    let all = Fit {
        answers: answers.len(),
        authority: true,
        additionals: additionals.len(),
        truncated: false,
    };
    let bound = HEADER
        + queries.as_bytes().len()
        + [answers, authority, additionals]
            .iter()
            .flat_map(|section| section.iter())
            .map(record_bound)
            .sum::<usize>();
    if bound <= budget {
        return all;
    }
    let max = u16::try_from(budget).unwrap_or(u16::MAX);
    let mut buf = Vec::with_capacity(usize::from(max));
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_max_size(max);
    let header = match emit_message_parts(
        metadata,
        &mut QueryBytes(queries),
        &mut answers.iter(),
        &mut authority.iter(),
        &mut additionals.iter(),
        None,
        None,
        &mut encoder,
    ) {
        Ok(header) => header,
        Err(_) => {
            return Fit {
                answers: 0,
                authority: false,
                additionals: 0,
                truncated: true,
            };
        }
    };
    let counts = header.counts;
    if usize::from(counts.answers) < answers.len()
        || usize::from(counts.authorities) < authority.len()
    {
        return Fit {
            answers: usize::from(counts.answers),
            authority: false,
            additionals: 0,
            truncated: true,
        };
    }
    Fit {
        additionals: usize::from(counts.additionals),
        ..all
    }
}

/// An upper bound of the encoded size of a record (no name compression).
fn record_bound(record: &Record) -> usize {
    let name = |n: &hickory_proto::rr::Name| n.len() + 1;
    let rdata = match &record.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::CNAME(c) => name(&c.0),
        RData::NS(n) => name(&n.0),
        RData::SRV(s) => 6 + name(&s.target),
        RData::TXT(t) => t.txt_data.iter().map(|s| s.len() + 1).sum(),
        RData::SOA(s) => name(&s.mname) + name(&s.rname) + 20,
        _ => usize::from(u16::MAX),
    };
    name(&record.name) + 10 + rdata
}

/// The question section exactly as the requester sent it, the way hickory's
/// `MessageResponse` emits it (including the compression pointer it records).
struct QueryBytes<'q>(&'q Queries);

impl EmitAndCount for QueryBytes<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, ProtoError> {
        let bytes = self.0.as_bytes();
        let start = encoder.offset();
        encoder.emit_vec(bytes)?;
        if !self.0.is_empty() {
            encoder.store_label_pointer(start, start + bytes.len());
        }
        Ok(self.0.len())
    }
}
