//! The header every changelog record this build writes starts with (`{prefix}.state`,
//! `{prefix}.delivered`, `{prefix}.alerts.retry`): one home for it, used by the state record
//! (`engine::record`) and by the ledger's and backlog's (`bus::changelog::stamp`).
//!
//! - one byte, the format version: [`V1`]. Records written before versions existed are JSON and
//!   start with `{` (or JSON whitespace): they read as generation 0, the whole record their body.
//!   Any other first byte is a format this build does not know (a newer build wrote it): the
//!   record is refused as unreadable, never guessed at.
//! - the writer's partition generation, an unsigned LEB128 varint: a reader can tell a late write
//!   of an old owner from the current owner's.
//! - the body, each topic's own.

/// Version 1: the header above.
pub const V1: u8 = 1;

/// The most bytes a LEB128 varint of a `u64` takes.
pub const VARINT_MAX: usize = 10;

/// Appends the header of `generation` to `out`.
pub fn write(out: &mut Vec<u8>, generation: u64) {
    out.push(V1);
    let mut value = generation;
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// The record header (Kafka's, beside key and value) in which a tombstone carries its writer's
/// partition generation: a tombstone has no value to start with the stamp, so the stamp's
/// bytes ([`header`]: version and generation, nothing after) travel there. A tombstone without
/// it (an earlier build's, or `forget`'s) reads as generation 0.
pub const TOMBSTONE_HEADER: &str = "leadwatch-stamp";

/// The stamp of `generation` alone: what a tombstone's [`TOMBSTONE_HEADER`] holds.
pub fn header(generation: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + VARINT_MAX);
    write(&mut out, generation);
    out
}

/// The generation a tombstone's [`TOMBSTONE_HEADER`] value names: 0 without one, or when it
/// cannot be read (as a tombstone of an earlier build).
pub fn tombstone_generation(header: Option<&[u8]>) -> u64 {
    header
        .and_then(read)
        .filter(|(_, rest)| rest.is_empty())
        .map_or(0, |(generation, _)| generation)
}

/// Whether `record` predates the header: JSON of an earlier build (serde_json writes no leading
/// whitespace, but JSON allows it).
pub fn is_unstamped(record: &[u8]) -> bool {
    matches!(
        record.first(),
        None | Some(b'{' | b' ' | b'\t' | b'\n' | b'\r')
    )
}

/// A record's writer generation and body: (0, the whole record) for one without a header;
/// `None` when the version is unknown or the varint is cut short or over 64 bits.
pub fn read(record: &[u8]) -> Option<(u64, &[u8])> {
    if is_unstamped(record) {
        return Some((0, record));
    }
    if record[0] != V1 {
        return None;
    }
    let bytes = &record[1..];
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(VARINT_MAX) {
        let part = u64::from(byte & 0x7f);
        if i == VARINT_MAX - 1 && part > 1 {
            return None;
        }
        value |= part << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_its_generation_and_leaves_the_body() {
        for generation in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut record = Vec::new();
            write(&mut record, generation);
            record.extend_from_slice(b"body");
            assert_eq!(read(&record), Some((generation, &b"body"[..])));
        }
        assert_eq!(read(b"{\"a\":1}"), Some((0, &b"{\"a\":1}"[..])));
        assert_eq!(read(&[2, 0]), None, "an unknown version is refused");
        for generation in [1, 300, u64::MAX] {
            assert_eq!(tombstone_generation(Some(&header(generation))), generation);
        }
        assert_eq!(
            tombstone_generation(None),
            0,
            "an earlier build's tombstone"
        );
        assert_eq!(tombstone_generation(Some(&[2, 5])), 0, "an unknown version");
        assert_eq!(tombstone_generation(Some(&[V1, 5, 0])), 0, "bytes after it");
        assert_eq!(read(&[V1, 0x80]), None, "a varint cut short");
        assert_eq!(read(&[V1; 12]), Some((1, &[V1; 10][..])));
        assert_eq!(
            read(&[
                V1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02
            ]),
            None
        );
    }
}
