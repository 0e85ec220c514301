//! Protocol unit tests over rings in ordinary memory (also run under miri).

use crate::*;
use std::vec::Vec;

pub(crate) struct Storage {
    ctl: ControlBlock,
    slots: Vec<SlotHeader>,
    index: Vec<IndexEntry>,
    subs: Vec<SubscriberRecord>,
}

impl Storage {
    pub(crate) fn new(slots: usize, subs: usize) -> Self {
        Self {
            ctl: ControlBlock::new(),
            slots: (0..slots).map(|_| SlotHeader::new()).collect(),
            index: (0..index_len_for(slots as u32))
                .map(|_| IndexEntry::new(0))
                .collect(),
            subs: (0..subs).map(|_| SubscriberRecord::new()).collect(),
        }
    }
    pub(crate) fn ring(&self, policy: LosslessPolicy) -> Ring<'_> {
        Ring::new(&self.ctl, &self.slots, &self.index, &self.subs, policy).unwrap()
    }
}

fn req(mode: Mode, max_held: u32) -> Register<'static> {
    Register {
        mode,
        max_held,
        pid: 42,
        start_time: 7,
        pid_ns: 0,
        heartbeat_ns: 0,
        name: b"test-subscriber-with-a-long-name-cut",
    }
}

#[test]
fn newest_reader_gets_latest_and_counts_skips() {
    let st = Storage::new(4, 2);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::NewestOnly, 1)).unwrap();
    assert_eq!(sub.try_read().unwrap_err(), ReadError::WouldBlock);
    for _ in 0..3 {
        w.try_loan().unwrap().commit(5, 6);
    }
    let f = sub.try_read().unwrap();
    assert_eq!((f.seq(), f.pts_ns(), f.commit_ns()), (3, 5, 6));
    assert_eq!(sub.try_read().unwrap_err(), ReadError::HoldLimit);
    drop(f);
    assert_eq!(sub.try_read().unwrap_err(), ReadError::WouldBlock);
    for _ in 0..4 {
        w.try_loan().unwrap().commit(0, 0);
    }
    assert_eq!(sub.try_read().unwrap().seq(), 7);
    let s = ring.stats();
    let me = s.active().next().unwrap();
    assert_eq!((me.received, me.dropped, me.held), (2, 3, 0));
    assert_eq!(me.name_str(), "test-subscriber-with-a-long-name");
}

#[test]
fn writer_never_touches_held_or_head_slot() {
    let st = Storage::new(3, 1);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::NewestOnly, 1)).unwrap();
    w.try_loan().unwrap().commit(0, 0);
    let held = sub.try_read().unwrap();
    for _ in 0..10 {
        let g = w.try_loan().unwrap();
        assert_ne!(g.slot(), held.slot());
        let c = g.commit(0, 0);
        let g2 = w.try_loan().unwrap();
        assert_ne!(g2.slot(), c.slot, "head slot is never loaned");
        drop(g2);
    }
    assert_eq!(
        st.slots[held.slot() as usize]
            .seq
            .load(sync::Ordering::Relaxed),
        1
    );
}

#[test]
fn retained_slot_survives_drop_oldest_and_a_reader_holding_the_rest() {
    let st = Storage::new(4, 1);
    let ring = st.ring(LosslessPolicy::DropOldest);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::Queue, 1)).unwrap();
    let kept = w.try_loan().unwrap().commit(0, 0).slot;
    assert_eq!(w.retain_head(), Some(kept));
    let held = sub.try_read().unwrap(); // seq 1, in the retained slot too
    for _ in 0..10 {
        let c = w.try_loan().unwrap().commit(0, 0);
        assert_ne!(c.slot, kept, "a retained slot is never loaned");
    }
    drop(held);
    let reader = sub.try_read().unwrap(); // holds one more slot
                                          // Head, retained and the reader's slot: one left, then none.
    let last = w.try_loan().unwrap();
    assert_ne!(last.slot(), kept);
    drop(last);
    let head = w.try_loan().unwrap().commit(0, 0).slot;
    let g = w.try_loan().unwrap();
    assert!(g.slot() != kept && g.slot() != head && g.slot() != reader.slot());
    g.commit(0, 0);
    drop(reader);
    assert_eq!(st.slots[kept as usize].seq.load(sync::Ordering::Relaxed), 1);
    assert!(w.release_retained());
    assert!(!w.release_retained());
    assert_eq!(w.try_loan().unwrap().slot(), kept, "oldest once released");
}

#[test]
fn aborted_loan_publishes_nothing_and_hides_old_frame() {
    let st = Storage::new(3, 1);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::NewestOnly, 1)).unwrap();
    for _ in 0..3 {
        w.try_loan().unwrap().commit(0, 0);
    }
    let g = w.try_loan().unwrap(); // takes the oldest frame's slot
    assert_eq!(g.seq(), 4);
    assert_eq!(
        st.slots[g.slot() as usize]
            .seq
            .load(sync::Ordering::Relaxed),
        0
    );
    drop(g);
    assert_eq!(ring.head().0, 3);
    assert!(st
        .slots
        .iter()
        .all(|s| s.seq.load(sync::Ordering::Relaxed) != 1));
    assert!(st
        .slots
        .iter()
        .all(|s| s.lease.load(sync::Ordering::Relaxed) == 0));
    assert_eq!(sub.try_read().unwrap().seq(), 3);
    assert_eq!(
        w.try_loan().unwrap().seq(),
        4,
        "an aborted seq is not consumed"
    );
}

#[test]
fn queue_reader_sees_every_frame_under_block() {
    let st = Storage::new(4, 2);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::Queue, 1)).unwrap();
    let mut next = 1;
    for round in 0..50 {
        // Fill until backpressure.
        loop {
            match w.try_loan() {
                Ok(g) => {
                    g.commit(0, 0);
                }
                Err(e) => {
                    assert_eq!(e, LoanError::Backpressure, "round {round}");
                    break;
                }
            }
        }
        // Read some.
        for _ in 0..(round % 3 + 1) {
            match sub.try_read() {
                Ok(f) => {
                    assert_eq!(f.seq(), next);
                    next += 1;
                }
                Err(e) => assert_eq!(e, ReadError::WouldBlock),
            }
        }
    }
    let me = ring.stats().active().next().copied().unwrap();
    assert_eq!(me.dropped, 0);
    assert!(next > 50);
}

#[test]
fn queue_reader_counts_drops_under_drop_oldest() {
    let st = Storage::new(4, 1);
    let ring = st.ring(LosslessPolicy::DropOldest);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::Queue, 1)).unwrap();
    for _ in 0..20 {
        w.try_loan().unwrap().commit(0, 0);
    }
    let mut seen = Vec::new();
    while let Ok(f) = sub.try_read() {
        seen.push(f.seq());
    }
    assert_eq!(seen, [17, 18, 19, 20], "the four newest survive");
    let me = ring.stats().active().next().copied().unwrap();
    assert_eq!(me.dropped, 16);
    assert_eq!(me.received, 4);
}

#[test]
fn hold_budget_and_record_capacity() {
    let st = Storage::new(4, 3);
    let ring = st.ring(LosslessPolicy::Block);
    let a = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    let b = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    assert_eq!(
        ring.register(&req(Mode::NewestOnly, 1)),
        Err(RegisterError::HoldBudget)
    );
    assert_eq!(
        ring.register(&req(Mode::NewestOnly, 0)),
        Err(RegisterError::InvalidArgument)
    );
    ring.deregister(a);
    let c = ring.register(&req(Mode::Queue, 1)).unwrap();
    assert_eq!(c.index(), 0, "freed record is reused");
    ring.deregister(b);
    ring.deregister(c);
    let st = Storage::new(8, 1);
    let ring = st.ring(LosslessPolicy::Block);
    let _x = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    assert_eq!(
        ring.register(&req(Mode::NewestOnly, 1)),
        Err(RegisterError::NoRecord)
    );
}

#[test]
fn reclaim_frees_dead_holder_slots() {
    let st = Storage::new(3, 2);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let token = ring.register(&req(Mode::Queue, 1)).unwrap();
    w.try_loan().unwrap().commit(0, 0);
    let f = ReadGrant::acquire(&ring, &token).unwrap();
    let generation = ring.stats().active().next().unwrap().generation;
    // The holder dies: neither its grant nor its token are ever given back.
    core::mem::forget(f);
    let _lost = token;
    w.try_loan().unwrap().commit(0, 0);
    w.try_loan().unwrap().commit(0, 0);
    // Seq 1 is held, seq 3 is the head, seq 2 is unread by the queue reader.
    assert_eq!(w.try_loan().unwrap_err(), LoanError::Backpressure);
    assert_eq!(ring.reclaim(0, generation + 1), None, "wrong generation");
    assert_eq!(ring.reclaim(0, generation), Some(false));
    assert_eq!(ring.reclaim(0, generation), None, "only once");
    assert!(st
        .slots
        .iter()
        .all(|s| s.lease.load(sync::Ordering::Relaxed) == 0));
    assert!(w.try_loan().is_ok());
    assert_eq!(ring.stats().active().count(), 0);
}

#[test]
fn evicted_token_cannot_read() {
    let st = Storage::new(3, 1);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let token = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    let generation = record::generation_of(st.subs[0].state.load(sync::Ordering::Relaxed));
    assert!(ring.reclaim(0, generation).is_some());
    w.try_loan().unwrap().commit(0, 0);
    assert_eq!(
        ReadGrant::acquire(&ring, &token).unwrap_err(),
        ReadError::Evicted
    );
}

#[test]
fn close_drains_queue_then_reports_closed() {
    let st = Storage::new(4, 2);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let q = Subscription::register(&ring, &req(Mode::Queue, 1)).unwrap();
    let n = Subscription::register(&ring, &req(Mode::NewestOnly, 1)).unwrap();
    w.try_loan().unwrap().commit(0, 0);
    w.try_loan().unwrap().commit(0, 0);
    w.close();
    assert_eq!(w.try_loan().unwrap_err(), LoanError::Closed);
    assert_eq!(q.try_read().unwrap().seq(), 1);
    assert_eq!(q.try_read().unwrap().seq(), 2);
    assert_eq!(q.try_read().unwrap_err(), ReadError::Closed);
    assert_eq!(n.try_read().unwrap().seq(), 2);
    assert_eq!(n.try_read().unwrap_err(), ReadError::Closed);
    assert_eq!(
        ring.register(&req(Mode::Queue, 1)),
        Err(RegisterError::Closed)
    );
}

#[test]
fn forged_lease_bit_is_not_trusted() {
    let st = Storage::new(3, 1);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::NewestOnly, 1)).unwrap();
    let c = w.try_loan().unwrap().commit(0, 0);
    st.slots[c.slot as usize]
        .lease
        .fetch_or(1, sync::Ordering::Relaxed);
    // Our bit already set (a forged one here; another thread of the same
    // subscription in real life): not ours to hold or to withdraw.
    assert_eq!(sub.try_read().unwrap_err(), ReadError::WouldBlock);
    assert_eq!(
        st.slots[c.slot as usize]
            .lease
            .load(sync::Ordering::Relaxed),
        1
    );
    assert_eq!(st.subs[0].held.load(sync::Ordering::Relaxed), 0);
    // A head pointing past the table is caught by the bounds check.
    st.ctl.head.store(pack(9, 200), sync::Ordering::Relaxed);
    assert_eq!(sub.try_read().unwrap_err(), ReadError::Corrupt);
}

#[test]
fn new_queue_subscriber_starts_at_newest_frame() {
    let st = Storage::new(4, 1);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    for _ in 0..5 {
        w.try_loan().unwrap().commit(0, 0);
    }
    let q = Subscription::register(&ring, &req(Mode::Queue, 2)).unwrap();
    let a = q.try_read().unwrap();
    w.try_loan().unwrap().commit(0, 0);
    let b = q.try_read().unwrap();
    assert_eq!((a.seq(), b.seq()), (5, 6));
    let s = ring.stats();
    assert_eq!(s.occupancy, 2);
    assert_eq!(s.active().next().unwrap().held, 2);
}

#[test]
fn grant_outliving_its_registration_leaves_the_next_owner_alone() {
    // Found by the verification state machine: a frame still held when its
    // subscriber deregistered, released after the record was claimed again
    // and the new owner took the same slot, cleared the new owner's lease
    // bit, letting the writer rewrite a frame being read.
    let st = Storage::new(5, 1);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    w.try_loan().unwrap().commit(0, 0);
    let old = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    let orphan = ReadGrant::acquire(&ring, &old).unwrap();
    ring.deregister(old);
    let new = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    assert_eq!(new.index(), 0, "same record, next generation");
    let held = ReadGrant::acquire(&ring, &new).unwrap();
    assert_eq!((held.seq(), held.slot()), (orphan.seq(), orphan.slot()));
    drop(orphan);
    let lease = st.slots[held.slot() as usize]
        .lease
        .load(sync::Ordering::Relaxed);
    assert_eq!(lease, 1, "still held by the new owner");
    assert_eq!(ring.stats().active().next().unwrap().held, 1);
    for _ in 0..8 {
        let g = w.try_loan().unwrap();
        assert_ne!(g.slot(), held.slot());
        g.commit(0, 0);
    }
}

#[test]
fn packed_bytes_of_a_hostile_layout_saturates() {
    // Found by the layout fuzz target: summing four planes of
    // u32::MAX x u32::MAX overflowed (a panic in debug builds).
    let mut l = FrameLayout::new(PixelFormat::Nv12, 64, 64, 64).unwrap();
    l.plane_count = 4;
    for p in &mut l.planes {
        p.row_bytes = u32::MAX;
        p.rows = u32::MAX;
    }
    assert!(l.validate().is_err());
    assert_eq!(l.packed_bytes(), u64::MAX);
}

/// Marks record `i` as a process that died at `state` with `max_held`,
/// holding `slots` (raw stores: the step it died at is not reachable
/// single-threaded).
fn died_at(st: &Storage, i: usize, state: u32, max_held: u32, slots: &[usize]) -> u64 {
    use sync::Ordering::Relaxed;
    let generation = 5;
    let r = &st.subs[i];
    r.state.store(record::word(generation, state), Relaxed);
    r.max_held.store(max_held, Relaxed);
    r.held.store(slots.len() as u32, Relaxed);
    for &s in slots {
        st.slots[s].lease.fetch_or(1 << i, Relaxed);
    }
    generation
}

#[test]
fn records_stuck_in_every_transient_state_are_recovered() {
    for state in [record::CLAIMING, record::ACTIVE, record::RECLAIMING] {
        let st = Storage::new(4, 2);
        let ring = st.ring(LosslessPolicy::Block);
        let g = died_at(&st, 0, state, 1, &[2]);
        assert_eq!(
            ring.reclaim(0, g + 1),
            None,
            "another generation is left alone"
        );
        assert_eq!(ring.reclaim(0, g), Some(false), "state {state}");
        assert_eq!(ring.reclaim(0, g), None, "freed once");
        assert!(st
            .slots
            .iter()
            .all(|s| s.lease.load(sync::Ordering::Relaxed) == 0));
        let w = st.subs[0].state.load(sync::Ordering::Relaxed);
        assert_eq!(
            (record::state_of(w), record::generation_of(w)),
            (record::FREE, g)
        );
        let token = ring.register(&req(Mode::Queue, 1)).unwrap();
        assert_eq!((token.index(), token.generation()), (0, g + 1));
    }
}

#[test]
fn budget_counts_records_that_are_not_yet_or_no_longer_active() {
    // A claimant and a half-freed record (its bits still set) each count:
    // otherwise new subscribers could take the slots the writer needs.
    let st = Storage::new(5, 4);
    let ring = st.ring(LosslessPolicy::Block);
    died_at(&st, 0, record::CLAIMING, 1, &[]);
    died_at(&st, 1, record::RECLAIMING, 1, &[1]);
    let _live = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    assert_eq!(
        ring.register(&req(Mode::NewestOnly, 1)),
        Err(RegisterError::HoldBudget)
    );
}

#[test]
fn register_at_claims_exactly_that_record() {
    let st = Storage::new(8, 3);
    let ring = st.ring(LosslessPolicy::Block);
    let t = ring.register_at(2, &req(Mode::NewestOnly, 1)).unwrap();
    assert_eq!(t.index(), 2);
    assert_eq!(
        ring.register_at(2, &req(Mode::NewestOnly, 1)),
        Err(RegisterError::Taken)
    );
    assert_eq!(
        ring.register_at(3, &req(Mode::NewestOnly, 1)),
        Err(RegisterError::NoRecord)
    );
    assert!(!ring.deregister(t));
}

#[test]
fn generation_is_56_bits_and_wraps_past_zero() {
    let w = record::word(record::MAX_GENERATION, record::ACTIVE);
    assert_eq!(record::generation_of(w), record::MAX_GENERATION);
    assert_eq!(record::state_of(w), record::ACTIVE);
    assert_eq!(record::next_generation(record::MAX_GENERATION), 1);
    let st = Storage::new(4, 1);
    let ring = st.ring(LosslessPolicy::Block);
    st.subs[0].state.store(
        record::word(u64::from(u32::MAX), record::FREE),
        sync::Ordering::Relaxed,
    );
    let t = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    assert_eq!(t.generation(), u64::from(u32::MAX) + 1, "no 32-bit wrap");
    assert!(!ring.deregister(t));
}

#[test]
fn waits_of_a_subscriber_that_died_asleep_are_taken_back() {
    use sync::Ordering::Relaxed;
    let st = Storage::new(4, 2);
    let ring = st.ring(LosslessPolicy::Block);
    let dead = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    let live = ring.register(&req(Mode::NewestOnly, 1)).unwrap();
    ring.begin_wait(dead.index());
    ring.begin_wait(live.index());
    assert_eq!(st.ctl.waiters.load(Relaxed), 2);
    let (i, g) = (dead.index(), dead.generation());
    drop(dead); // the process died asleep: its token is lost, nothing deregisters
    assert_eq!(ring.reclaim(i, g), Some(false));
    assert_eq!(st.ctl.waiters.load(Relaxed), 1);
    ring.end_wait(live.index());
    assert_eq!(st.ctl.waiters.load(Relaxed), 0);
    ring.end_wait(i);
    assert_eq!(
        st.ctl.waiters.load(Relaxed),
        0,
        "an ended wait is not ended twice"
    );
    assert!(!ring.deregister(live));
}

#[test]
fn close_aborts_a_pending_loan_so_nothing_is_published_after_it() {
    let st = Storage::new(4, 1);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    w.try_loan().unwrap().commit(0, 0);
    let slot = w.begin().unwrap();
    w.close();
    assert_eq!(w.commit_pending(0, 0), None);
    assert_eq!(ring.head().0, 1);
    assert_eq!(
        st.slots[slot as usize].lease.load(sync::Ordering::Relaxed),
        0
    );
    assert_eq!(w.begin(), Err(LoanError::Closed));
}

#[test]
fn evicted_lossless_reader_keeps_its_frame_and_counts_the_gap() {
    let st = Storage::new(4, 2);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let slow = Subscription::register(&ring, &req(Mode::Queue, 1)).unwrap();
    let fast = Subscription::register(&ring, &req(Mode::Queue, 1)).unwrap();
    w.try_loan().unwrap().commit(0, 0);
    let held = slow.try_read().unwrap();
    assert_eq!(held.seq(), 1);
    let mut seqs = Vec::new();
    for _ in 0..3 {
        match w.try_loan() {
            Ok(g) => drop(g.commit(0, 0)),
            Err(e) => panic!("{e:?}"),
        }
        let f = fast.try_read().unwrap();
        seqs.push(f.seq());
    }
    // slow holds 1 and still needs 2..=4: the writer is held back.
    assert_eq!(w.try_loan().unwrap_err(), LoanError::Backpressure);
    assert_eq!(
        w.evict_laggards(),
        1 << slow.token().index(),
        "only the lagging reader"
    );
    for _ in 0..6 {
        let c = w.try_loan().unwrap().commit(0, 0);
        assert_ne!(c.slot, held.slot(), "a held frame is never rewritten");
        seqs.push(fast.try_read().unwrap().seq());
    }
    assert_eq!(
        seqs,
        (1..=9).collect::<Vec<_>>(),
        "the other reader lost nothing"
    );
    assert_eq!(held.seq(), 1);
    assert_eq!(
        st.slots[held.slot() as usize]
            .seq
            .load(sync::Ordering::Relaxed),
        1
    );
    drop(held);
    assert_eq!(slow.try_read().unwrap_err(), ReadError::Lagged);
    assert_eq!(slow.try_read().unwrap().seq(), 10);
    let me = ring.stats().subscribers[slow.token().index() as usize].unwrap();
    assert_eq!((me.evictions, me.dropped, me.received), (1, 8, 2));
}

#[test]
fn hold_reservation_counts_the_probe() {
    // `held` is reserved before the probe: a subscription at its limit
    // does not even set a transient bit.
    let st = Storage::new(4, 1);
    let ring = st.ring(LosslessPolicy::Block);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::NewestOnly, 1)).unwrap();
    w.try_loan().unwrap().commit(0, 0);
    let f = sub.try_read().unwrap();
    w.try_loan().unwrap().commit(0, 0);
    assert_eq!(sub.try_read().unwrap_err(), ReadError::HoldLimit);
    assert_eq!(st.subs[0].held.load(sync::Ordering::Relaxed), 1);
    drop(f);
    assert_eq!(st.subs[0].held.load(sync::Ordering::Relaxed), 0);
}

/// Commits one packet of `len` bytes, a keyframe when `key`.
fn commit_packet<H: RingRef>(w: &mut Writer<H>, key: bool, len: u64) -> u64 {
    w.begin().unwrap();
    let meta = PacketMeta {
        len,
        pts_ns: 10,
        dts_ns: 5,
        duration_ns: 40,
        flags: if key { packet::KEY } else { 0 },
    };
    w.commit_packet(&meta, 0).unwrap().seq
}

#[test]
fn packet_metadata_and_keyframe_bookkeeping() {
    let st = Storage::new(8, 2);
    let ring = st.ring(LosslessPolicy::Block).for_packets(100);
    let mut w = Writer::new(&ring);
    for (i, key) in [true, false, false, true].into_iter().enumerate() {
        assert_eq!(commit_packet(&mut w, key, 10 + i as u64), i as u64 + 1);
    }
    assert_eq!(
        (ring.last_key().0, ring.stats().gop, ring.stats().bytes),
        (4, 3, 46)
    );
    let sub = Subscription::register(&ring, &req(Mode::Queue, 1)).unwrap();
    let p = sub.try_read().unwrap();
    assert_eq!((p.seq(), p.len(), p.is_key()), (4, 13, true));
    assert_eq!(
        (p.pts_ns(), p.packet().dts_ns, p.packet().duration_ns),
        (10, 5, 40)
    );
    // Frames rings refuse packet commits; packet rings refuse oversize.
    w.begin().unwrap();
    let big = PacketMeta {
        len: 101,
        ..PacketMeta::default()
    };
    assert_eq!(
        w.commit_packet(&big, 0),
        Err(CommitError::TooLarge { len: 101, max: 100 })
    );
    assert!(w.abort_pending());
    let frames = Storage::new(4, 1);
    let fring = frames.ring(LosslessPolicy::Block);
    let mut fw = Writer::new(&fring);
    fw.begin().unwrap();
    assert_eq!(fw.commit_packet(&big, 0), Err(CommitError::NotPackets));
}

#[test]
fn packet_readers_never_see_an_undecodable_gap() {
    let st = Storage::new(4, 2);
    let ring = st.ring(LosslessPolicy::DropOldest).for_packets(100);
    let mut w = Writer::new(&ring);
    let newest = Subscription::register(&ring, &req(Mode::NewestOnly, 1)).unwrap();
    let queue = Subscription::register(&ring, &req(Mode::Queue, 1)).unwrap();
    // No keyframe yet: nothing for anyone.
    commit_packet(&mut w, false, 1);
    assert_eq!(newest.try_read().unwrap_err(), ReadError::WouldBlock);
    assert_eq!(queue.try_read().unwrap_err(), ReadError::WouldBlock);
    commit_packet(&mut w, true, 1); // 2
    assert_eq!(newest.try_read().unwrap().seq(), 2);
    assert_eq!(queue.try_read().unwrap().seq(), 2);
    // 3..=7 overwrite 3 before the queue reader gets to it (4 slots, one
    // kept as head): it must wait for the keyframe at 7, not take 4.
    for key in [false, false, false, false, true] {
        commit_packet(&mut w, key, 1);
    }
    let q = queue.try_read().unwrap();
    assert_eq!((q.seq(), q.is_key()), (7, true));
    drop(q);
    // The newest reader is behind 3 while 7 began a new GOP: it jumps.
    let n = newest.try_read().unwrap();
    assert_eq!((n.seq(), n.is_key()), (7, true));
    drop(n);
    let stats = ring.stats();
    let dropped: Vec<u64> = stats.active().map(|r| r.dropped).collect();
    // Newest: 3..=6. Queue: 3..=6, and 1, the head it was pinned at but
    // could not start from (joining skips count for lossless readers).
    assert_eq!(dropped, [4, 5]);
}

#[test]
fn hostile_packet_length_is_corrupt_and_holds_nothing() {
    let st = Storage::new(4, 1);
    let ring = st.ring(LosslessPolicy::Block).for_packets(100);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::NewestOnly, 1)).unwrap();
    commit_packet(&mut w, true, 1);
    let (_, slot) = ring.head();
    ring.slots()[slot as usize]
        .len
        .store(101, crate::sync::Ordering::Relaxed);
    assert_eq!(sub.try_read().unwrap_err(), ReadError::Corrupt);
    assert_eq!(
        ring.slots()[slot as usize]
            .lease
            .load(crate::sync::Ordering::Relaxed),
        0
    );
    assert_eq!(ring.stats().active().next().unwrap().held, 0);
}

#[test]
fn hostile_counters_do_not_overflow() {
    use crate::sync::Ordering::Relaxed;
    let st = Storage::new(4, 1);
    let ring = st.ring(LosslessPolicy::DropOldest).for_packets(100);
    let mut w = Writer::new(&ring);
    let sub = Subscription::register(&ring, &req(Mode::NewestOnly, 1)).unwrap();
    commit_packet(&mut w, true, 1);
    // A reader whose last seq is the largest there is, and a newest
    // keyframe far ahead of the writer: wrong answers at worst, no panic.
    ring.subscribers()[0].last_seq.store(u64::MAX, Relaxed);
    let _ = sub.try_read();
    ring.control().last_key.store(pack(MAX_SEQ, 0), Relaxed);
    commit_packet(&mut w, true, 1);
    assert_eq!(ring.stats().gop, 0);
}
