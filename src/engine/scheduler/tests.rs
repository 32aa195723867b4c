//! The scheduler's unit tests: policy cases and randomized workloads.

use super::*;

impl Scheduler {
    fn submit1(&mut self, id: SeqId, prompt: Vec<u32>) -> Result<(), AdmitError> {
        self.submit(vec![(id, prompt)], CacheScope::default())
    }
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        block_size: 4,
        num_blocks: 16,
        context_length: 64,
        max_batch: 8,
        max_step_tokens: 64,
        prefill_chunk: 6,
        max_queue: 4,
        watermark_blocks: 1,
    }
}

/// Runs a step as the engine would: every chunk computes, sampling ones produce
/// `token`.
fn run(scheduler: &mut Scheduler, step: &Step, token: u32) {
    for chunk in &step.chunks {
        assert!(
            chunk.block_table.len() * scheduler.config.block_size
                >= chunk.cached + chunk.tokens.len(),
            "table of {} too short for {:?}",
            chunk.id,
            chunk
        );
        let sampled = chunk.samples.then_some(token);
        scheduler.complete(chunk.id, chunk.tokens.len(), sampled);
    }
    scheduler.check().unwrap();
}

fn ids(step: &Step) -> Vec<SeqId> {
    step.chunks.iter().map(|c| c.id).collect()
}

/// Runs steps until `id` has generated `n` tokens.
fn run_until(scheduler: &mut Scheduler, id: SeqId, n: usize) {
    for token in 0..100 {
        if scheduler.generated(id).len() >= n {
            return;
        }
        let step = scheduler.schedule();
        run(scheduler, &step, 1000 + token);
    }
    panic!("{id} did not generate {n} tokens");
}

#[test]
fn long_prompts_prefill_in_chunks_while_others_decode() {
    let mut s = Scheduler::new(config(), StoredBlocks::default());
    s.submit1(1, vec![1, 2, 3]).unwrap();
    let step = s.schedule();
    assert_eq!(step.admitted, vec![(1, 0)]);
    assert_eq!(step.chunks.len(), 1);
    assert!(step.chunks[0].samples && step.chunks[0].tokens == vec![1, 2, 3]);
    run(&mut s, &step, 10);

    s.submit1(2, (0..14).collect()).unwrap();
    let step = s.schedule();
    // Sequence 1 decodes its token 10; sequence 2 starts with a 6-token chunk.
    assert_eq!(step.chunks[0].tokens, vec![10]);
    assert_eq!((step.chunks[1].id, step.chunks[1].tokens.len()), (2, 6));
    assert!(!step.chunks[1].samples);
    run(&mut s, &step, 11);
    let step = s.schedule();
    assert_eq!(step.chunks[0].tokens, vec![11]);
    assert_eq!((step.chunks[1].cached, step.chunks[1].tokens.len()), (6, 6));
    run(&mut s, &step, 12);
    let step = s.schedule();
    assert_eq!(step.chunks[1].tokens, vec![12, 13]);
    assert!(step.chunks[1].samples);
    run(&mut s, &step, 13);
    assert_eq!(s.generated(1), &[10, 11, 12, 13]);
    assert_eq!(s.generated(2), &[13]);
    s.finish(1);
    s.finish(2);
    assert_eq!(s.pool().in_use(), 0);
}

#[test]
fn prompt_budget_while_decoding_limits_only_steps_that_decode() {
    let chunk_lens =
        |step: &Step| -> Vec<usize> { step.chunks.iter().map(|c| c.tokens.len()).collect() };
    let mut s = Scheduler::new(config(), StoredBlocks::default());
    s.set_prompt_budget_while_decoding(Some(4));
    // Nobody decodes: two arrivals prefill together, up to their chunks (6 each).
    s.submit1(1, (0..10).collect()).unwrap();
    s.submit1(2, (10..20).collect()).unwrap();
    let step = s.schedule();
    assert_eq!(chunk_lens(&step), vec![6, 6]);
    run(&mut s, &step, 10);
    let step = s.schedule();
    run(&mut s, &step, 10);
    // Both decode now. The oldest new prompt still gets its whole chunk (one stall, not
    // several), and the budget (4) is spent, so the next prompt waits.
    s.submit1(3, (20..30).collect()).unwrap();
    s.submit1(4, (30..40).collect()).unwrap();
    let step = s.schedule();
    assert_eq!(chunk_lens(&step), vec![1, 1, 6]);
    run(&mut s, &step, 11);
    // With room left after the first prompt's chunk, the next one gets what remains.
    s.set_prompt_budget_while_decoding(Some(7));
    let step = s.schedule();
    assert_eq!(ids(&step), vec![1, 2, 3, 4]);
    assert_eq!(chunk_lens(&step), vec![1, 1, 4, 3]);
    run(&mut s, &step, 12);
    // Lifting the limit gives every prompt its whole chunk again.
    s.set_prompt_budget_while_decoding(None);
    let step = s.schedule();
    assert_eq!(chunk_lens(&step), vec![1, 1, 1, 6]);
}

#[test]
fn paused_sequences_run_nothing_and_give_up_their_slot_first() {
    let mut s = Scheduler::new(
        SchedulerConfig {
            max_batch: 2,
            ..config()
        },
        StoredBlocks::default(),
    );
    s.submit1(1, vec![1, 2, 3]).unwrap();
    s.submit1(2, vec![4, 5, 6]).unwrap();
    let step = s.schedule();
    run(&mut s, &step, 7);
    // 1's client is behind: it keeps its blocks but does not run.
    s.set_paused(1, true);
    let in_use = s.pool().in_use();
    let step = s.schedule();
    assert_eq!(ids(&step), vec![2]);
    assert_eq!(s.pool().in_use(), in_use);
    run(&mut s, &step, 8);
    // A third sequence needs a slot: the paused one gives up its slot and blocks.
    s.submit1(3, vec![9, 9, 9]).unwrap();
    let step = s.schedule();
    assert_eq!(step.parked, vec![1]);
    assert_eq!(step.admitted, vec![(3, 0)]);
    assert_eq!((s.running(), s.parked()), (2, 1));
    run(&mut s, &step, 10);
    // Its client caught up: it queues again and is recomputed once a slot is free.
    s.set_paused(1, false);
    assert_eq!(s.waiting(), 1);
    s.finish(2);
    let step = s.schedule();
    let chunk = step.chunks.iter().find(|c| c.id == 1).unwrap();
    assert_eq!((chunk.cached, chunk.tokens.clone()), (0, vec![1, 2, 3, 7]));
    assert_eq!(s.generated(1), &[7]);
    s.finish(1);
    s.finish(3);
    assert_eq!(s.pool().in_use(), 0);
    s.check().unwrap();
}

#[test]
fn paused_sequences_give_up_blocks_before_anyone_is_preempted() {
    let mut s = Scheduler::new(
        SchedulerConfig {
            num_blocks: 6,
            watermark_blocks: 0,
            ..config()
        },
        StoredBlocks::default(),
    );
    // Two sequences of 2 blocks each; 1 is paused.
    s.submit1(1, (0..8).collect()).unwrap();
    s.submit1(2, (10..18).collect()).unwrap();
    run_until(&mut s, 1, 1);
    run_until(&mut s, 2, 1);
    s.set_paused(1, true);
    // 2 grows into the last 2 free blocks, then needs one more: 1 is parked, not 2.
    for t in 0..12 {
        let step = s.schedule();
        assert!(step.preempted.is_empty(), "{step:?}");
        run(&mut s, &step, 30 + t);
    }
    assert_eq!(s.parked(), 1);
    assert!(s.generated(2).len() > 8, "{:?}", s.generated(2));
    s.check().unwrap();
    // A prompt that needs the paused sequence's blocks parks it too.
    let mut t = Scheduler::new(
        SchedulerConfig {
            num_blocks: 4,
            watermark_blocks: 0,
            ..config()
        },
        StoredBlocks::default(),
    );
    t.submit1(1, (0..8).collect()).unwrap();
    let step = t.schedule();
    run(&mut t, &step, 20);
    t.set_paused(1, true);
    t.submit1(2, (50..62).collect()).unwrap();
    let step = t.schedule();
    assert_eq!(step.parked, vec![1]);
    assert_eq!(step.admitted, vec![(2, 0)]);
    t.check().unwrap();
}

#[test]
fn step_limits_are_respected() {
    let mut s = Scheduler::new(
        SchedulerConfig {
            max_batch: 2,
            max_step_tokens: 5,
            ..config()
        },
        StoredBlocks::default(),
    );
    for id in 0..3 {
        s.submit1(id, vec![1, 2, 3, 4]).unwrap();
    }
    let step = s.schedule();
    assert_eq!(step.admitted.len(), 2, "max_batch sequences admitted");
    let tokens: usize = step.chunks.iter().map(|c| c.tokens.len()).sum();
    assert!(tokens <= 5, "{tokens} tokens in one step");
    assert_eq!(s.waiting(), 1);
}

#[test]
fn impossible_prompts_are_refused() {
    let mut s = Scheduler::new(config(), StoredBlocks::default());
    assert_eq!(s.submit1(1, vec![]), Err(AdmitError::EmptyPrompt));
    assert!(matches!(
        s.submit1(1, vec![0; 64]),
        Err(AdmitError::PromptTooLong { tokens: 64, .. })
    ));
    let mut small = Scheduler::new(
        SchedulerConfig {
            num_blocks: 2,
            ..config()
        },
        StoredBlocks::default(),
    );
    assert!(matches!(
        small.submit1(1, vec![0; 9]),
        Err(AdmitError::PromptLargerThanPool {
            needed: 3,
            total: 2
        })
    ));
    // More prompts than the batch and the queue can ever hold (8 + 4).
    let prompts = (0..13).map(|id| (id, vec![1, 2])).collect();
    assert_eq!(
        s.submit(prompts, CacheScope::default()),
        Err(AdmitError::TooManyGenerations {
            requested: 13,
            limit: 12
        })
    );
    // One bad prompt refuses the whole request.
    assert_eq!(
        s.submit(vec![(1, vec![1]), (2, vec![])], CacheScope::default()),
        Err(AdmitError::EmptyPrompt)
    );
    assert_eq!(s.waiting(), 0);
}

#[test]
fn the_queue_bound_counts_generations_left_waiting() {
    // Two slots, two queue places: a request is refused when, with it, more than two
    // generations would wait after the next step's admissions.
    let mut s = Scheduler::new(
        SchedulerConfig {
            max_batch: 2,
            max_queue: 2,
            ..config()
        },
        StoredBlocks::default(),
    );
    // Two start at the next step and two wait: accepted, all four.
    let four = (0..4).map(|id| (id, vec![id as u32; 3])).collect();
    s.submit(four, CacheScope::default()).unwrap();
    assert_eq!(
        s.submit1(9, vec![9; 3]),
        Err(AdmitError::Busy(Busy::QueueFull {
            waiting: 4,
            limit: 2
        }))
    );
    let step = s.schedule();
    assert_eq!(step.admitted.len(), 2);
    assert!(step.refused.is_empty());
    // Still two waiting behind two running: still full, and a request of three is
    // refused whole.
    assert!(s.submit1(9, vec![9; 3]).is_err());
    s.finish(0);
    s.finish(1);
    let three: Vec<(SeqId, Vec<u32>)> = (5..8).map(|id| (id, vec![id as u32; 3])).collect();
    assert_eq!(
        s.submit(three, CacheScope::default()),
        Err(AdmitError::Busy(Busy::QueueFull {
            waiting: 2,
            limit: 2
        }))
    );
    assert_eq!(s.waiting(), 2, "all or nothing");
    // Whatever its prompts, a request of three would wait: refused before they are
    // even tokenized. One might start.
    assert!(matches!(s.reserve_room(3), Err(Busy::QueueFull { .. })));
    let room = s.reserve_room(1).unwrap().expect("room held");
    s.submit_in_room(vec![(9, vec![9; 3])], CacheScope::default(), room)
        .unwrap();
    // Two start, 9 waits: room for one more waiting generation, not two.
    assert!(s.reserve_room(2).is_err());
    let room = s.reserve_room(1).unwrap().expect("room held");
    s.release_room(room);
    s.check().unwrap();
}

#[test]
fn without_a_queue_only_what_starts_next_step_is_taken() {
    // The pool: 4 blocks; one 3-block prompt runs.
    let mut pool = Scheduler::new(
        SchedulerConfig {
            num_blocks: 4,
            max_queue: 0,
            ..config()
        },
        StoredBlocks::default(),
    );
    pool.submit1(1, vec![0; 12]).unwrap();
    pool.schedule();
    assert_eq!(
        pool.submit1(2, vec![0; 12]),
        Err(AdmitError::Busy(Busy::PoolExhausted))
    );
    // The batch: two slots taken.
    let mut batch = Scheduler::new(
        SchedulerConfig {
            max_batch: 2,
            max_queue: 0,
            ..config()
        },
        StoredBlocks::default(),
    );
    batch.submit1(1, vec![1; 3]).unwrap();
    batch.submit1(2, vec![2; 3]).unwrap();
    assert_eq!(
        batch.submit1(3, vec![3; 3]),
        Err(AdmitError::Busy(Busy::BatchFull))
    );
    let step = batch.schedule();
    assert_eq!(step.admitted.len(), 2);
    // A paused sequence's slot counts as free: the request is taken and it is parked.
    batch.set_paused(1, true);
    batch.submit1(3, vec![3; 3]).unwrap();
    let step = batch.schedule();
    assert_eq!(
        (step.parked.clone(), step.admitted.clone()),
        (vec![1], vec![(3, 0)])
    );
    // Requests arriving together are all taken while the pool has room for them.
    let mut together = Scheduler::new(
        SchedulerConfig {
            num_blocks: 16,
            max_queue: 0,
            watermark_blocks: 2,
            ..config()
        },
        StoredBlocks::default(),
    );
    together.submit1(1, vec![1; 12]).unwrap();
    together.submit1(2, vec![2; 12]).unwrap();
    together.submit1(3, vec![3; 12]).unwrap();
    together.submit1(4, vec![4; 12]).unwrap();
    // 4 x 3 blocks ahead, 3 more + 2 watermark > 16 free.
    assert_eq!(
        together.submit1(5, vec![5; 12]),
        Err(AdmitError::Busy(Busy::PoolExhausted))
    );
    let step = together.schedule();
    assert_eq!(step.admitted.len(), 4);
    // A request predicted to start is refused by the step that cannot start it after
    // all: a running sequence's growth took the blocks first.
    let mut late = Scheduler::new(
        SchedulerConfig {
            num_blocks: 4,
            max_queue: 0,
            watermark_blocks: 0,
            ..config()
        },
        StoredBlocks::default(),
    );
    late.submit1(1, vec![1; 3]).unwrap();
    for token in 0..2 {
        let step = late.schedule();
        run(&mut late, &step, token);
    }
    // 1 needs its second block in the next step; 3 are free for now.
    late.submit1(2, vec![2; 12]).unwrap();
    let step = late.schedule();
    assert_eq!(step.refused, vec![(2, Busy::PoolExhausted)]);
    assert_eq!(late.waiting(), 0);
    late.check().unwrap();
}

#[test]
fn running_out_of_blocks_preempts_the_newest_and_recomputes_it() {
    let mut s = Scheduler::new(
        SchedulerConfig {
            num_blocks: 4,
            watermark_blocks: 0,
            ..config()
        },
        StoredBlocks::default(),
    );
    s.submit1(1, vec![1, 2, 3, 4]).unwrap();
    s.submit1(2, vec![5, 6, 7, 8]).unwrap();
    let step = s.schedule();
    assert_eq!(step.admitted.len(), 2);
    run(&mut s, &step, 20);
    // Both need a second block for position 4: 2 blocks left, fine.
    let step = s.schedule();
    assert!(step.preempted.is_empty());
    run(&mut s, &step, 21);
    // Decode until the pool (4 blocks) cannot hold both past 8 tokens each.
    let mut preempted = Vec::new();
    for t in 30..40 {
        let step = s.schedule();
        preempted.extend(step.preempted.iter().copied());
        run(&mut s, &step, t);
    }
    assert_eq!(preempted.first(), Some(&2), "the newest goes back first");
    assert!(s.generated(1).len() > s.generated(2).len());
    // Once 1 finishes, 2 is recomputed (prompt + what it had generated) and resumes.
    let before = s.generated(2).to_vec();
    s.finish(1);
    let step = s.schedule();
    let chunk = step.chunks.iter().find(|c| c.id == 2).unwrap();
    assert_eq!(chunk.cached, 0);
    assert_eq!(&chunk.tokens[4..], &before[..chunk.tokens.len() - 4]);
    s.finish(2);
    assert_eq!(s.pool().in_use(), 0);
    s.pool().check().unwrap();
}

/// Random traffic through a small pool: arrivals over time, prompts that share prefixes
/// and conversations that come back with their history, clients that pause and resume,
/// tight queue bounds. At every step every block table covers its tokens and every
/// invariant holds ([`Scheduler::check`]); every sequence that is not refused ends with
/// exactly its requested tokens, and everything is returned at the end.
#[test]
fn random_workloads_complete_without_leaks() {
    for seed in 0..1000u64 {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let mut s = Scheduler::new(
            SchedulerConfig {
                num_blocks: 12,
                max_batch: 1 + next(4) as usize,
                max_queue: next(5) as usize,
                ..config()
            },
            StoredBlocks::default(),
        );
        let mut wanted: HashMap<SeqId, usize> = HashMap::new();
        let mut history: Vec<Vec<u32>> = Vec::new();
        let (mut submitted, mut steps) = (0u64, 0u32);
        while submitted < 30 || !wanted.is_empty() {
            steps += 1;
            assert!(steps < 5000, "seed {seed}: no progress");
            if submitted < 30 && next(3) == 0 {
                let mut prompt: Vec<u32> = match history.len() {
                    0 => Vec::new(),
                    n => history[next(n as u64) as usize].clone(),
                };
                if next(2) == 0 {
                    prompt.clear();
                }
                prompt.truncate(28);
                prompt.extend((0..1 + next(12) as u32).map(|t| 100 + t));
                match s.submit1(submitted, prompt) {
                    Ok(()) => {
                        wanted.insert(submitted, 1 + next(12) as usize);
                    }
                    Err(AdmitError::Busy(_)) => {}
                    Err(e) => panic!("seed {seed}: {e}"),
                }
                submitted += 1;
            }
            // Clients fall behind and catch up; all have caught up once traffic ends.
            let mut ids: Vec<SeqId> = wanted.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                let paused = submitted < 30 && next(5) == 0;
                s.set_paused(id, paused);
            }
            let step = s.schedule();
            for &(id, _) in &step.refused {
                assert!(!s.started(id));
                wanted.remove(&id);
            }
            for &id in &step.out_of_blocks {
                s.finish(id);
                wanted.remove(&id);
            }
            run(&mut s, &step, steps);
            let done: Vec<SeqId> = wanted
                .iter()
                .filter(|(id, n)| s.generated(**id).len() >= **n)
                .map(|(id, _)| *id)
                .collect();
            for id in done {
                assert_eq!(s.generated(id).len(), wanted[&id], "seed {seed}, seq {id}");
                let seq = &s.sequences[&id];
                history.push(seq.tokens.clone());
                s.finish(id);
                wanted.remove(&id);
            }
        }
        assert_eq!((s.running(), s.waiting(), s.parked()), (0, 0, 0));
        assert_eq!(s.pool().in_use(), 0);
        s.check().unwrap();
    }
}

/// A returning prompt whose prefix is cached (refcount 0) in a nearly full pool: taking
/// those blocks back shrinks what is left for the rest of the prompt.
#[test]
fn a_cached_prefix_is_counted_as_taken_at_admission() {
    let mut s = Scheduler::new(
        SchedulerConfig {
            num_blocks: 16,
            watermark_blocks: 1,
            ..config()
        },
        StoredBlocks::default(),
    );
    let history: Vec<u32> = (100..112).collect();
    s.submit1(1, history.clone()).unwrap();
    run_until(&mut s, 1, 1);
    s.finish(1);
    assert_eq!((s.pool().cached(), s.pool().free()), (3, 13));
    // Another sequence takes 12 blocks: 1 free, 3 cached.
    s.submit1(2, (500..548).collect()).unwrap();
    let step = s.schedule();
    run(&mut s, &step, 8);
    assert_eq!((s.pool().cached(), s.pool().free()), (3, 1));
    // The history plus 8 tokens: 3 shared + 2 new blocks, 5 of the 4 available.
    let mut returning = history.clone();
    returning.extend(200..208);
    s.submit1(3, returning).unwrap();
    let step = s.schedule();
    assert!(step.admitted.iter().all(|&(id, _)| id != 3), "{step:?}");
    run(&mut s, &step, 9);
    // Once the other ends there is room, and the prefix is still shared.
    s.finish(2);
    let step = s.schedule();
    assert_eq!(step.admitted, vec![(3, 12)]);
    run(&mut s, &step, 10);
}

#[test]
fn a_sequence_outgrowing_the_whole_pool_is_reported_not_spun() {
    let mut s = Scheduler::new(
        SchedulerConfig {
            num_blocks: 2,
            watermark_blocks: 0,
            ..config()
        },
        StoredBlocks::default(),
    );
    s.submit1(1, vec![1, 2, 3, 4, 5]).unwrap();
    let mut step = s.schedule();
    for t in 0..10 {
        run(&mut s, &step, t);
        step = s.schedule();
        if !step.out_of_blocks.is_empty() {
            break;
        }
    }
    assert_eq!(step.out_of_blocks, vec![1]);
    assert!(step.chunks.is_empty());
    // 8 slots: 5 prompt tokens + 3 generated fill them; the 4th needs a third block.
    assert_eq!(s.generated(1).len(), 4);
    s.finish(1);
    assert_eq!(s.pool().in_use(), 0);
}

#[test]
fn identical_prompt_prefixes_reuse_cached_blocks() {
    let mut s = Scheduler::new(config(), StoredBlocks::default());
    let prompt: Vec<u32> = (0..10).collect();
    s.submit1(1, prompt.clone()).unwrap();
    let step = s.schedule();
    run(&mut s, &step, 99);
    let step = s.schedule();
    run(&mut s, &step, 98);
    s.finish(1);
    assert_eq!(s.pool().in_use(), 0);
    assert!(s.pool().cached() >= 2);
    // Same prompt: its two full blocks (8 tokens) come from the cache.
    s.submit1(2, prompt.clone()).unwrap();
    let step = s.schedule();
    assert_eq!(step.admitted, vec![(2, 8)]);
    assert_eq!(step.chunks[0].tokens, vec![8, 9]);
    assert_eq!(step.chunks[0].cached, 8);
    // A prompt of exactly two blocks still computes its last token.
    s.submit1(3, (0..8).collect()).unwrap();
    let step = s.schedule();
    let admitted = step.admitted.iter().find(|a| a.0 == 3).unwrap();
    assert_eq!(admitted.1, 4);
    s.finish(2);
    s.finish(3);
    assert_eq!(s.pool().in_use(), 0);
}

#[test]
fn room_held_for_prompts_being_prepared_counts_until_given_back() {
    // Two run and two may wait: four requests arriving together get room, the fifth is
    // refused although none of the four has been submitted yet.
    let mut s = Scheduler::new(
        SchedulerConfig {
            max_batch: 2,
            max_queue: 2,
            ..config()
        },
        StoredBlocks::default(),
    );
    let rooms: Vec<RoomId> = (0..4)
        .map(|_| s.reserve_room(1).unwrap().expect("room held"))
        .collect();
    assert_eq!(
        s.reserve_room(1),
        Err(Busy::QueueFull {
            waiting: 4,
            limit: 2
        }),
        "the held room counts as waiting"
    );
    // The first hands its room to its prompt: still full.
    s.submit_in_room(vec![(0, vec![1; 3])], CacheScope::default(), rooms[0])
        .unwrap();
    assert_eq!(s.waiting(), 1);
    assert!(s.reserve_room(1).is_err());
    // One gives up (its client left): room for one more.
    s.release_room(rooms[2]);
    let fifth = s.reserve_room(1).unwrap().expect("room held");
    // A request larger than the batch and queue together holds nothing; submit refuses it.
    assert_eq!(s.reserve_room(5), Ok(None));
    // The others submit in their rooms; the held room is all given back.
    for (id, room) in [(1, rooms[1]), (3, rooms[3]), (4, fifth)] {
        s.submit_in_room(vec![(id, vec![id as u32; 3])], CacheScope::default(), room)
            .unwrap();
    }
    assert!(s.rooms.is_empty());
    assert_eq!(s.waiting(), 4);
    s.check().unwrap();
}

#[test]
fn a_later_arrival_never_crowds_out_an_earlier_one() {
    // No queue, and a pool where a long prompt fits only when it runs alone (no room for
    // the watermark beside it).
    let mut s = Scheduler::new(
        SchedulerConfig {
            max_queue: 0,
            num_blocks: 4,
            ..config()
        },
        StoredBlocks::default(),
    );
    let first = s.reserve_room(1).unwrap().expect("room held");
    // A second request arrives while the first is still being tokenized; as far as
    // anyone can tell, both small prompts can start together.
    let second = s.reserve_room(1).unwrap().expect("room held");
    // The first's prompt needs all four blocks. Counted behind the second's room it would
    // no longer run alone and be refused; counted only behind rooms that arrived before
    // it, it is taken.
    s.submit_in_room(vec![(0, vec![1; 15])], CacheScope::default(), first)
        .unwrap();
    // The second is judged behind it.
    assert_eq!(
        s.submit_in_room(vec![(1, vec![2; 3])], CacheScope::default(), second),
        Err(AdmitError::Busy(Busy::PoolExhausted))
    );
    assert!(s.rooms.is_empty());
    s.check().unwrap();
}

#[test]
fn held_room_that_a_larger_prompt_crowds_out_is_revoked() {
    // Two may run and one wait. Three requests arriving together get room, counted at one
    // block each; the first's prompt then takes all but one block of the pool.
    let mut s = Scheduler::new(
        SchedulerConfig {
            max_batch: 2,
            max_queue: 1,
            ..config()
        },
        StoredBlocks::default(),
    );
    let rooms: Vec<RoomId> = (0..3)
        .map(|_| s.reserve_room(1).unwrap().expect("room held"))
        .collect();
    assert!(s.revoke_rooms().is_empty(), "nothing was submitted yet");
    s.submit_in_room(vec![(0, vec![1; 60])], CacheScope::default(), rooms[0])
        .unwrap();
    // The second can no longer start beside it and would wait; the third would be a
    // second one waiting: it is given up, and the second keeps its room.
    assert_eq!(
        s.revoke_rooms(),
        vec![(
            rooms[2],
            Busy::QueueFull {
                waiting: 2,
                limit: 1
            }
        )]
    );
    assert_eq!(s.rooms.keys().copied().collect::<Vec<_>>(), vec![rooms[1]]);
    assert!(s.revoke_rooms().is_empty(), "a room is revoked once");
    s.submit_in_room(vec![(1, vec![2; 3])], CacheScope::default(), rooms[1])
        .unwrap();
    assert_eq!(s.waiting(), 2);
    s.check().unwrap();
}
