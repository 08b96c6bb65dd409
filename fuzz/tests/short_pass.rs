//! A short fuzzing pass over every target in every `cargo test` (the long run is in BENCHMARKS.md): no
//! panic, round trips hold, and no input makes a decoder allocate more than twice what its type may claim.

#[global_allocator]
static ALLOC: fuzz::alloc::Counting = fuzz::alloc::Counting;

#[test]
fn every_target_survives_a_short_pass() {
    for (name, target, seeds, limit) in fuzz::targets() {
        assert!(!seeds.is_empty(), "{name} has seeds");
        let peak = fuzz::run(target, &seeds, 0x5eed, 20_000);
        assert!(peak > 0, "the counting allocator is installed");
        assert!(peak <= limit, "{name}: one input allocated {peak} bytes (limit {limit})");
    }
}
