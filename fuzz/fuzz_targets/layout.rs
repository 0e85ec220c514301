//! Arbitrary bytes as a `FrameLayout`: validation, and every accessor on
//! every plane (`cuframes_verification::fuzz::layout`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cuframes_verification::fuzz::layout(data);
});
