//! The fuzz target bodies over a fixed pseudo-random corpus, on the stable
//! toolchain: random byte strings, and mutations of valid planned segments
//! and layouts (bit flips, overwritten words, boundary values, truncation
//! and extension). Deterministic (fixed seed), so CI exercises the targets
//! without nightly or cargo-fuzz.
//!
//! ```text
//! cargo test -p cuframes-verification --test fuzz_smoke --release
//! ```
//!
//! `FUZZ_SMOKE_SEEDS_DIR=fuzz/seeds` writes the seed inputs for the
//! cargo-fuzz corpus instead of (in addition to) testing.
#![cfg(not(loom))]

use cuframes_core::SegmentInfo;
use cuframes_verification::fuzz;

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Values that sit on the edges validation checks.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    63,
    64,
    384,
    4095,
    4096,
    u32::MAX as u64,
    1 << 32,
    u64::MAX - 4095,
    u64::MAX,
];

/// One mutation of `base`: flip bits, overwrite an aligned word with an
/// interesting or random value, truncate, or extend.
fn mutate(rng: &mut Rng, base: &[u8], header_len: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let span = header_len.min(v.len()).max(1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(span);
                v[i] ^= 1 << rng.below(8);
            }
            1 | 2 if v.len() >= 8 => {
                let width = [1, 2, 4, 8][rng.below(4)];
                let at = rng.below(span.saturating_sub(width).max(1)) & !(width - 1);
                let value = if rng.below(2) == 0 {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    rng.next()
                };
                if at + width <= v.len() {
                    v[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
            }
            3 => {
                let cut = rng.below(v.len() + 1);
                v.truncate(cut);
            }
            4 => {
                let extra = [1, 63, 4096][rng.below(3)];
                v.extend(std::iter::repeat_n(0, extra));
            }
            _ => {
                let i = rng.below(span);
                if i < v.len() {
                    v[i] = rng.next() as u8;
                }
            }
        }
    }
    v
}

fn write_seeds() {
    let Ok(dir) = std::env::var("FUZZ_SMOKE_SEEDS_DIR") else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    for (target, seeds) in [
        ("validate", fuzz::segment_seeds()),
        ("layout", fuzz::layout_seeds()),
    ] {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).expect("seed dir");
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i:02}")), s).expect("write seed");
        }
    }
}

#[test]
fn seeds_are_valid() {
    write_seeds();
    for s in fuzz::segment_seeds() {
        SegmentInfo::validate(&s).expect("segment seed validates");
        fuzz::validate(&s);
    }
    for s in fuzz::layout_seeds() {
        fuzz::layout(&s);
    }
}

#[test]
fn validate_target_on_random_and_mutated_segments() {
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let seeds = fuzz::segment_seeds();
    let (mut ran, mut accepted) = (0, 0);
    for i in 0..6000 {
        let input = if i % 6 == 0 {
            let len = [0, 16, 383, 384, 4096, 8192][rng.below(6)];
            rng.bytes(len)
        } else {
            let base = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, base, 384)
        };
        fuzz::validate(&input);
        ran += 1;
        accepted += usize::from(SegmentInfo::validate(&input).is_ok());
    }
    eprintln!("validate: {ran} inputs, {accepted} accepted");
    // The mutations must keep some inputs valid, or the valid-path checks
    // never run.
    assert!(accepted > 100, "only {accepted} mutated segments validated");
}

#[test]
fn layout_target_on_random_and_mutated_layouts() {
    let mut rng = Rng(0x5eed_cafe_f00d_0002);
    let seeds = fuzz::layout_seeds();
    let (mut ran, mut accepted) = (0, 0);
    for i in 0..20000 {
        let input = if i % 5 == 0 {
            let len = rng.below(160);
            rng.bytes(len)
        } else {
            let base = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, base, 120)
        };
        fuzz::layout(&input);
        ran += 1;
        if let Ok((l, _)) =
            <cuframes_core::FrameLayout as zerocopy::FromBytes>::read_from_prefix(&input)
        {
            accepted += usize::from(l.validate().is_ok());
        }
    }
    eprintln!("layout: {ran} inputs, {accepted} accepted");
    assert!(accepted > 100, "only {accepted} mutated layouts validated");
}
