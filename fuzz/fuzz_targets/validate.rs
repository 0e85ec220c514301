//! Arbitrary bytes as a whole mapped segment: `SegmentInfo::validate`, and
//! on success the layout, region and host-slot checks of
//! `cuframes_verification::fuzz::validate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cuframes_verification::fuzz::validate(data);
});
