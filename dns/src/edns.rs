//! EDNS option checks that hickory does not make.
//!
//! hickory keeps an option it does not know (COOKIE among them) as opaque
//! bytes whatever its length, and drops every option of an OPT record whose
//! last option runs past the record, so a malformed option would be answered
//! as if it were absent. The RFCs want FORMERR instead; this walks the raw
//! message to find the OPT record and checks its options.

/// EDNS option code of COOKIE (RFC 7873).
const COOKIE: u16 = 10;
/// EDNS option code of CLIENT-SUBNET (RFC 7871).
const CLIENT_SUBNET: u16 = 8;
/// Record type of OPT.
const OPT: u16 = 41;

/// Whether the options of every OPT record in `message` are well formed:
/// options that fill the record exactly, a COOKIE of a client cookie (8
/// bytes) and an optional server cookie (8 to 32 bytes) (RFC 7873 §5.2.2), a
/// CLIENT-SUBNET whose address matches its family and source prefix (RFC 7871
/// §6). A message that cannot be walked is not well formed either.
pub(crate) fn options_valid(message: &[u8]) -> bool {
    walk(message).is_some()
}

fn walk(message: &[u8]) -> Option<()> {
    let count = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes(
            message.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    let questions = count(4)?;
    let records = count(6)? + count(8)? + count(10)?;
    let mut pos = 12;
    for _ in 0..questions {
        pos = skip_name(message, pos)? + 4;
    }
    for _ in 0..records {
        pos = skip_name(message, pos)?;
        let kind = count(pos)?;
        let len = count(pos + 8)?;
        let start = pos + 10;
        let rdata = message.get(start..start + len)?;
        if kind == usize::from(OPT) {
            check_options(rdata)?;
        }
        pos = start + len;
    }
    (pos <= message.len()).then_some(())
}

/// The position after the name starting at `pos`.
fn skip_name(message: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *message.get(pos)?;
        match len & 0xC0 {
            0 if len == 0 => return Some(pos + 1),
            0 => pos += 1 + usize::from(len),
            0xC0 => return Some(pos + 2),
            _ => return None,
        }
    }
}

fn check_options(mut rdata: &[u8]) -> Option<()> {
    while !rdata.is_empty() {
        let code = u16::from_be_bytes(rdata.get(..2)?.try_into().ok()?);
        let len = usize::from(u16::from_be_bytes(rdata.get(2..4)?.try_into().ok()?));
        let data = rdata.get(4..4 + len)?;
        match code {
            COOKIE if len != 8 && !(16..=40).contains(&len) => return None,
            CLIENT_SUBNET => check_client_subnet(data)?,
            _ => {}
        }
        rdata = &rdata[4 + len..];
    }
    Some(())
}

fn check_client_subnet(data: &[u8]) -> Option<()> {
    let (head, address) = data.split_at_checked(4)?;
    let bits = match u16::from_be_bytes([head[0], head[1]]) {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    let source = usize::from(head[2]);
    if source > bits || address.len() != source.div_ceil(8) {
        return None;
    }
    // Bits past the source prefix must be zero.
    match (address.last(), source % 8) {
        (Some(last), used) if used != 0 && last & (0xFF >> used) != 0 => None,
        _ => Some(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `a.` with an OPT record holding `options`.
    fn message(options: &[u8]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend([1, b'a', 0, 0, 1, 0, 1]);
        m.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0]);
        m.extend((options.len() as u16).to_be_bytes());
        m.extend(options);
        m
    }

    fn option(code: u16, data: &[u8]) -> Vec<u8> {
        let mut o = code.to_be_bytes().to_vec();
        o.extend((data.len() as u16).to_be_bytes());
        o.extend(data);
        o
    }

    #[test]
    fn cookies_have_rfc_7873_lengths() {
        assert!(options_valid(&message(&[])));
        for len in [8, 16, 24, 40] {
            assert!(
                options_valid(&message(&option(COOKIE, &vec![7; len]))),
                "{len}"
            );
        }
        for len in [0, 1, 7, 9, 15, 41, 100] {
            assert!(
                !options_valid(&message(&option(COOKIE, &vec![7; len]))),
                "{len}"
            );
        }
    }

    #[test]
    fn options_fill_the_record_exactly() {
        let mut cut = option(COOKIE, &[7; 8]);
        cut.pop();
        assert!(!options_valid(&message(&cut)), "runs past the record");
        assert!(!options_valid(&message(&[0, 12, 0])), "half a header");
        let padding = option(12, &[0; 5]);
        assert!(options_valid(&message(&padding)), "unknown options pass");
    }

    #[test]
    fn client_subnets_match_their_prefix() {
        let ecs = |family: u16, source: u8, address: &[u8]| {
            let mut data = family.to_be_bytes().to_vec();
            data.extend([source, 0]);
            data.extend(address);
            options_valid(&message(&option(CLIENT_SUBNET, &data)))
        };
        assert!(ecs(1, 24, &[10, 1, 2]));
        assert!(ecs(1, 0, &[]));
        assert!(ecs(2, 56, &[0x20, 1, 0xd, 0xb8, 0, 0, 0]));
        assert!(ecs(1, 20, &[10, 1, 0x20]));
        assert!(!ecs(1, 20, &[10, 1, 0x21]), "bits past the prefix");
        assert!(!ecs(1, 24, &[10, 1, 2, 3]), "too many octets");
        assert!(!ecs(1, 33, &[10, 1, 2, 3, 4]), "prefix too long");
        assert!(!ecs(3, 0, &[]), "unknown family");
    }
}
