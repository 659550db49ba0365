//! Where a key goes: the partition Kafka's murmur2 partitioner gives it. Vocabulary shared by the
//! producers, which are pinned to that partitioner (a lead's state lives in the partition its
//! events go to), and by `simulate`, which places leads as they do (the pools rotate per
//! partition).
//!
//! A leaf: it imports nothing from the crate.

/// The partitioner of every producer (librdkafka's name for it): murmur2 of the key, as Kafka's
/// Java clients place keys. Pinned, because a lead's state lives in the partition its events go
/// to, and `simulate` places leads the same way ([`partition_for`]) to rotate the pools as the
/// daemon does.
pub const PARTITIONER: &str = "murmur2_random";

/// The partition [`PARTITIONER`] gives `key` among `partitions`.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// MurmurHash2 with Kafka's seed, as `org.apache.kafka.common.utils.Utils.murmur2` and
/// librdkafka's `rd_murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_own_vectors() {
        // From Kafka's UtilsTest.
        for (key, want) in [
            (&b"21"[..], -973_932_308i32),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }
}
