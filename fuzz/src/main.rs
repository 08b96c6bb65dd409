//! `cargo run --release -p fuzz -- [--iterations N] [--seed S] [TARGET...]`: a long fuzzing run over every
//! target (or the named ones), printing inputs per second and the largest allocation one input caused.

#[global_allocator]
static ALLOC: fuzz::alloc::Counting = fuzz::alloc::Counting;

fn main() {
    let mut iterations: u64 = 10_000_000;
    let mut seed: u64 = 1;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--iterations" => iterations = args.next().and_then(|v| v.parse().ok()).unwrap_or(iterations),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).unwrap_or(seed),
            "--help" | "-h" => {
                println!("fuzz [--iterations N (10000000)] [--seed S (1)] [TARGET...]");
                for (name, _, _, _) in fuzz::targets() {
                    println!("  {name}");
                }
                return;
            }
            name => only.push(name.to_string()),
        }
    }
    let mut over = Vec::new();
    for (name, target, seeds, limit) in fuzz::targets() {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let started = std::time::Instant::now();
        let peak = fuzz::run(target, &seeds, seed, iterations);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name:<18} {iterations} inputs in {secs:.1} s ({:.0}/s), largest allocation {peak} bytes (limit {limit})",
            iterations as f64 / secs
        );
        if peak > limit {
            over.push(name);
        }
    }
    assert!(over.is_empty(), "inputs made these decoders allocate over their limit: {over:?}");
    println!("no panic; every allocation within its target's limit");
}
