//! Block allocator throughput: what admission and decode growth cost per block, with and
//! without prefix caching in play. Pure Rust, no model.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mlx_serve::engine::block_pool::{BlockHash, BlockPool};

fn block_pool(c: &mut Criterion) {
    let mut group = c.benchmark_group("block_pool");
    // A 1K-token prompt in 16-token blocks, then 64 single-block growth steps, then free.
    let prompt_blocks = 64;
    group.throughput(Throughput::Elements(2 * prompt_blocks as u64));
    group.bench_function("allocate_grow_free_128_blocks", |b| {
        let mut pool = BlockPool::new(4096);
        b.iter(|| {
            let mut blocks = pool.allocate(prompt_blocks, None).expect("allocate");
            for _ in 0..prompt_blocks {
                let more = pool.allocate(1, blocks.last().copied()).expect("grow");
                blocks.extend(more);
            }
            blocks.iter().for_each(|&block| pool.release(block));
        })
    });

    // The same prompt registered, released into the cache, found again and shared.
    let tokens: Vec<u32> = (0..prompt_blocks as u32 * 16).collect();
    group.throughput(Throughput::Elements(prompt_blocks as u64));
    group.bench_function("hash_register_lookup_share_64_blocks", |b| {
        let mut pool = BlockPool::new(4096);
        b.iter(|| {
            let hashes = BlockHash::chain_all(&tokens, 16);
            let blocks = pool.allocate(prompt_blocks, None).expect("allocate");
            for (&block, &hash) in blocks.iter().zip(&hashes) {
                pool.register(block, hash);
            }
            blocks.iter().for_each(|&block| pool.release(block));
            let found = pool.lookup_prefix(&hashes);
            found.iter().for_each(|&block| pool.retain(block));
            found.iter().for_each(|&block| pool.release(block));
        })
    });
    group.finish();
}

criterion_group!(benches, block_pool);
criterion_main!(benches);
