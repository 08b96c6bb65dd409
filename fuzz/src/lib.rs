//! Fuzzing that runs on stable Rust, and the wire fixtures.
//!
//! The toolchain here cannot fetch nightly, so coverage-guided fuzzing (cargo-fuzz, libFuzzer) is out; this
//! is structured plus random: every decoder that reads bytes from the network or from disk is fed
//! - pure random bytes (from a seeded generator, so a failure is reproduced by its seed), and
//! - mutations of valid encodings of every variant of every wire type ([`samples`]): bit flips, byte
//!   replacements with boundary values, truncations, insertions, duplicated spans, and tampered length
//!   prefixes,
//!
//! and must not panic; whatever decodes must encode again to a value that decodes to the same thing (no
//! lossy decode); and no single call may allocate more than twice what decoding one frame of its type may
//! claim (checked by the counting allocator in [`alloc`], installed by the binary and the tests).
//!
//! `cargo test -p fuzz` runs a short pass; `cargo run --release -p fuzz -- --iterations N` a long one
//! (BENCHMARKS.md has the command and result).

pub mod alloc;
pub mod samples;

use shared::frame::{self, HEADER_LEN, MAX_FRAME};
use std::fmt::Debug;

/// A small, fast, seeded generator (xorshift64*): reproducible runs without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        // Boundary values often: they are what length and tag decoding trips over.
        const SPECIAL: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfb, 0xfc, 0xfd, 0xff];
        if self.below(2) == 0 { SPECIAL[self.below(SPECIAL.len())] } else { self.next_u64() as u8 }
    }
}

/// One mutated input: a random buffer, or a sample changed in 1-4 places.
pub fn input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if seeds.is_empty() || rng.below(8) == 0 {
        let len = rng.below(300);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut b = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        mutate(rng, &mut b);
    }
    b
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    let at = |rng: &mut Rng, b: &Vec<u8>| if b.is_empty() { 0 } else { rng.below(b.len()) };
    match rng.below(7) {
        0 if !b.is_empty() => {
            let i = at(rng, b);
            b[i] ^= 1 << rng.below(8);
        }
        1 if !b.is_empty() => {
            let i = at(rng, b);
            b[i] = rng.byte();
        }
        2 => {
            let keep = at(rng, b);
            b.truncate(keep);
        }
        3 => {
            let i = at(rng, b);
            for _ in 0..=rng.below(8) {
                b.insert(i, rng.byte());
            }
        }
        4 if b.len() > 2 => {
            let (i, j) = (at(rng, b), at(rng, b));
            let (lo, hi) = (i.min(j), i.max(j));
            let span: Vec<u8> = b[lo..hi].to_vec();
            let to = at(rng, b);
            b.splice(to..to, span);
        }
        5 if b.len() >= HEADER_LEN => {
            // The frame's own length prefix: lie about it.
            let lies = [0u32, 1, (b.len() - HEADER_LEN) as u32 + 1, MAX_FRAME as u32, MAX_FRAME as u32 + 1, u32::MAX];
            b[..HEADER_LEN].copy_from_slice(&lies[rng.below(lies.len())].to_be_bytes());
        }
        _ => {
            // A varint-looking byte somewhere in the body: bincode's lengths and enum tags.
            if b.len() > HEADER_LEN {
                let i = HEADER_LEN + rng.below(b.len() - HEADER_LEN);
                b[i] = [0xfb, 0xfc, 0xfd, 0xfe, 0xff][rng.below(5)];
            }
        }
    }
}

/// What one fuzz target checks, for one input.
pub type Target = fn(&[u8]);

/// Decodes `bytes` as a frame of `T` (header and all), through the one-shot and the streaming decoder fed
/// in awkward pieces; both must agree, and a value that decodes must survive a round trip.
pub fn frame_target<T>(bytes: &[u8])
where
    T: bincode::Encode + frame::Message + PartialEq + Debug,
{
    let one_shot: Option<Result<T, frame::FrameError>> = bytes.first_chunk::<HEADER_LEN>().map(|h| {
        frame::body_len(*h).and_then(|len| match bytes.get(HEADER_LEN..HEADER_LEN + len) {
            Some(body) => frame::decode_body::<T>(body),
            None => Err(frame::FrameError::Truncated),
        })
    });
    let mut d = frame::Decoder::new();
    let mut streamed = None;
    for piece in bytes.chunks(7) {
        d.push(piece);
        match d.next_frame::<T>() {
            Ok(None) => continue,
            other => {
                streamed = Some(other);
                break;
            }
        }
    }
    if let (Some(Ok(a)), Some(Ok(Some(b)))) = (&one_shot, &streamed) {
        assert_eq!(a, b, "the one-shot and streaming decoders disagree");
    }
    if let Some(Ok(v)) = one_shot {
        let again = frame::encode(&v).expect("a decoded value encodes");
        let back: T = frame::decode_body(&again[HEADER_LEN..]).expect("and decodes again");
        assert_eq!(back, v, "round trip changed the value");
    }
}

/// The relay's packet framing: whatever arrives, packets come out whole and never longer than announced.
pub fn relay_target(bytes: &[u8]) {
    let mut d = shared::relay::PacketDecoder::default();
    let mut total = 0;
    for piece in bytes.chunks(5) {
        d.push(piece);
        while let Some(p) = d.next_packet() {
            total += 2 + p.len();
        }
    }
    assert!(total <= bytes.len());
}

/// Names and text from elsewhere: file-name sanitising, input validation, terminal escaping, hex ids and
/// sizes never panic, and what they let through keeps their promises.
pub fn text_target(bytes: &[u8]) {
    let s = String::from_utf8_lossy(bytes);
    if let Ok(name) = shared::files::sanitize_name(&s) {
        assert!(!name.is_empty() && !name.contains(['/', '\\']) && !name.chars().any(char::is_control));
        assert!(!name.chars().any(shared::display::is_bidi));
    }
    let _ = shared::validate::username(&s);
    let _ = shared::validate::display_name(&s);
    let _ = shared::validate::text("t", &s, 256);
    let shown = shared::display::safe(&s).to_string();
    assert!(!shown.chars().any(shared::display::is_unsafe));
    let _ = shared::peer::from_hex::<16>(&s);
    let _ = shared::files::parse_size(&s);
}

/// A frame target for `T`: its name, the decoder, its seeds, and the most one input may allocate (twice what
/// decoding one frame of `T` may claim).
fn frame_of<T>(name: &'static str, seeds: Vec<Vec<u8>>) -> (&'static str, Target, Vec<Vec<u8>>, usize)
where
    T: bincode::Encode + frame::Message + PartialEq + Debug,
{
    (name, frame_target::<T>, seeds, 2 * if T::WIDE { frame::MAX_CLAIM } else { MAX_FRAME })
}

/// Every target, by name, with the seeds it mutates and the most one input may allocate.
pub fn targets() -> Vec<(&'static str, Target, Vec<Vec<u8>>, usize)> {
    use shared::control::{ControlRequest, ControlResponse};
    use shared::link::{LinkFrame, LinkReply};
    use shared::mailbox::SignedLetter;
    use shared::peer::{PeerAck, PeerFrame};
    use shared::proto::{Event, Request, Response};
    use shared::relay::RelayHello;
    let all = samples::all();
    let seeds = |prefix: &str| -> Vec<Vec<u8>> {
        all.iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, b)| b.clone()).collect()
    };
    let relay_seed = {
        let mut w = Vec::new();
        for p in [&b"abc"[..], &[0u8; 1200][..], &[]] {
            let _ = shared::relay::encode_packet(p, &mut w);
        }
        vec![w]
    };
    let text_seeds = ["evil\u{202e}txt.exe", "../../etc/passwd", "张三", "\u{1b}]0;x\u{7}", "CON.txt", "0f1e", "10G"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    vec![
        frame_of::<Request>("request", seeds("Request::")),
        frame_of::<Response>("response", [seeds("Response::"), seeds("ErrorCode::")].concat()),
        frame_of::<Event>("event", seeds("Event::")),
        frame_of::<PeerFrame>("peer_frame", seeds("PeerFrame::")),
        frame_of::<PeerAck>("peer_ack", [seeds("PeerAck::"), seeds("OfferAnswer::")].concat()),
        frame_of::<ControlRequest>("control_request", seeds("ControlRequest::")),
        frame_of::<ControlResponse>("control_response", [seeds("ControlResponse::"), seeds("AgentEvent::")].concat()),
        frame_of::<RelayHello>("relay_hello", seeds("RelayHello::")),
        frame_of::<LinkFrame>("link_frame", seeds("LinkFrame::")),
        frame_of::<LinkReply>("link_reply", seeds("LinkReply::")),
        frame_of::<SignedLetter>("letter", seeds("Letter::")),
        ("relay_packets", relay_target, relay_seed, 2 * MAX_FRAME),
        ("names_and_text", text_target, text_seeds, 2 * MAX_FRAME),
    ]
}

/// Runs `iterations` inputs through one target; returns the largest allocation one input caused.
pub fn run(target: Target, seeds: &[Vec<u8>], seed: u64, iterations: u64) -> usize {
    let mut rng = Rng::new(seed);
    let mut peak = 0;
    for _ in 0..iterations {
        let bytes = input(&mut rng, seeds);
        alloc::reset_peak();
        target(&bytes);
        peak = peak.max(alloc::peak());
    }
    peak
}
