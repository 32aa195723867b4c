//! Property test of the KV block allocator: any interleaving of allocate / share / grow /
//! register / finish / preempt keeps every refcount equal to the number of sequences holding
//! the block, keeps the pool's own invariants, and returns every block once all sequences
//! end.

use mlx_serve::engine::block_pool::{BlockHash, BlockId, BlockPool};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// A new sequence of `len` blocks, sharing up to `share` leading blocks of an existing
    /// sequence (picked by `from`), as prefix reuse does.
    Start {
        len: usize,
        from: usize,
        share: usize,
    },
    /// A sequence needs `count` more blocks (decode growth).
    Grow { seq: usize, count: usize },
    /// A sequence's block `index` is full: register its content hash.
    Register { seq: usize, index: usize },
    /// A sequence finishes (or is cancelled).
    Finish { seq: usize },
    /// A sequence is preempted: its blocks go back, it will be recomputed.
    Preempt { seq: usize },
    /// A new sequence whose prompt matches cached content reuses it.
    Reuse { seq: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1usize..6, any::<usize>(), 0usize..4).prop_map(|(len, from, share)| Op::Start {
            len,
            from,
            share
        }),
        (any::<usize>(), 1usize..4).prop_map(|(seq, count)| Op::Grow { seq, count }),
        (any::<usize>(), any::<usize>()).prop_map(|(seq, index)| Op::Register { seq, index }),
        any::<usize>().prop_map(|seq| Op::Finish { seq }),
        any::<usize>().prop_map(|seq| Op::Preempt { seq }),
        any::<usize>().prop_map(|seq| Op::Reuse { seq }),
    ]
}

/// The hash a test sequence registers for its block `index`: sequences registering the same
/// (origin, index) describe the same content.
fn hash_for(origin: usize, index: usize) -> BlockHash {
    BlockHash::chain(None, &[origin as u32, index as u32])
}

#[derive(Debug, Clone)]
struct Sequence {
    blocks: Vec<BlockId>,
    /// Content identity (shared prefixes share it).
    origin: usize,
}

fn assert_consistent(pool: &BlockPool, sequences: &[Sequence]) {
    pool.check().expect("pool invariants");
    for block in 0..pool.total() as BlockId {
        let holders = sequences
            .iter()
            .flat_map(|s| &s.blocks)
            .filter(|&&b| b == block)
            .count();
        assert_eq!(
            pool.refcount(block) as usize,
            holders,
            "refcount of block {block}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn refcounts_stay_consistent_and_everything_returns(
        total in 1usize..24,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut pool = BlockPool::new(total);
        let mut sequences: Vec<Sequence> = Vec::new();
        let mut next_origin = 0;
        for op in ops {
            match op {
                Op::Start { len, from, share } => {
                    let (shared, origin) = match sequences.get(from % sequences.len().max(1)) {
                        Some(source) if share > 0 => {
                            let n = share.min(source.blocks.len()).min(len);
                            (source.blocks[..n].to_vec(), source.origin)
                        }
                        _ => {
                            next_origin += 1;
                            (Vec::new(), next_origin)
                        }
                    };
                    shared.iter().for_each(|&b| pool.retain(b));
                    match pool.allocate(len - shared.len(), shared.last().copied()) {
                        Ok(more) => {
                            let mut blocks = shared;
                            blocks.extend(more);
                            sequences.push(Sequence { blocks, origin });
                        }
                        Err(e) => {
                            prop_assert!(e.requested > e.available);
                            shared.iter().for_each(|&b| pool.release(b));
                        }
                    }
                }
                Op::Grow { seq, count } => {
                    let count_of_sequences = sequences.len().max(1);
                    if let Some(s) = sequences.get_mut(seq % count_of_sequences) {
                        let before = pool.in_use();
                        match pool.allocate(count, s.blocks.last().copied()) {
                            Ok(more) => s.blocks.extend(more),
                            Err(_) => prop_assert_eq!(pool.in_use(), before),
                        }
                    }
                }
                Op::Register { seq, index } => {
                    if let Some(s) = sequences.get(seq % sequences.len().max(1)) {
                        let index = index % s.blocks.len();
                        pool.register(s.blocks[index], hash_for(s.origin, index));
                    }
                }
                Op::Finish { seq } | Op::Preempt { seq } => {
                    if !sequences.is_empty() {
                        let s = sequences.remove(seq % sequences.len());
                        s.blocks.iter().for_each(|&b| pool.release(b));
                    }
                }
                Op::Reuse { seq } => {
                    if let Some(s) = sequences.get(seq % sequences.len().max(1)) {
                        let origin = s.origin;
                        let hashes: Vec<BlockHash> =
                            (0..s.blocks.len()).map(|i| hash_for(origin, i)).collect();
                        let found = pool.lookup_prefix(&hashes);
                        found.iter().for_each(|&b| pool.retain(b));
                        if !found.is_empty() {
                            sequences.push(Sequence { blocks: found, origin });
                        }
                    }
                }
            }
            assert_consistent(&pool, &sequences);
        }
        for s in sequences.drain(..) {
            s.blocks.iter().for_each(|&b| pool.release(b));
        }
        assert_consistent(&pool, &sequences);
        prop_assert_eq!(pool.in_use(), 0);
        prop_assert_eq!(pool.available(), total);
    }
}
