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
                for (name, _, _) in fuzz::targets() {
                    println!("  {name}");
                }
                return;
            }
            name => only.push(name.to_string()),
        }
    }
    let limit = shared::MAX_FRAME * 2;
    let mut worst = 0;
    for (name, target, seeds) in fuzz::targets() {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let started = std::time::Instant::now();
        let peak = fuzz::run(target, &seeds, seed, iterations);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{name:<18} {iterations} inputs in {secs:.1} s ({:.0}/s), largest allocation {peak} bytes",
            iterations as f64 / secs
        );
        worst = worst.max(peak);
    }
    assert!(worst <= limit, "an input made a decoder allocate {worst} bytes (limit {limit})");
    println!("no panic; largest single allocation {worst} bytes (limit {limit})");
}
