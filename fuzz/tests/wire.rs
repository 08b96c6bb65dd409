//! Wire stability: the encoded bytes of one value of every variant of every wire enum, against a fixture
//! committed with the code. A reordered, removed or changed variant (or field) changes bytes that old peers
//! decode, and fails here instead of silently breaking them. A deliberate protocol change regenerates the
//! fixture with `UPDATE_WIRE_FIXTURES=1 cargo test -p fuzz --test wire` (and, if old peers cannot read the
//! result, gets a new ALPN); appending a variant only adds lines.

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/wire.txt");

fn render() -> String {
    fuzz::samples::all().iter().map(|(name, bytes)| format!("{name} {}\n", shared::peer::to_hex(bytes))).collect()
}

#[test]
fn every_variant_encodes_as_the_fixture_says() {
    let now = render();
    if std::env::var("UPDATE_WIRE_FIXTURES").is_ok_and(|v| v == "1") {
        std::fs::write(FIXTURE, &now).unwrap();
    }
    let fixed = std::fs::read_to_string(FIXTURE).expect("tests/fixtures/wire.txt (UPDATE_WIRE_FIXTURES=1 makes it)");
    let names: Vec<&str> = now.lines().map(|l| l.split(' ').next().unwrap()).collect();
    let unique: std::collections::HashSet<&&str> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "one sample per variant");
    for (want, got) in fixed.lines().zip(now.lines()) {
        assert_eq!(got, want, "wire bytes changed");
    }
    assert_eq!(now.lines().count(), fixed.lines().count(), "variants were added or removed: regenerate on purpose");
}

#[test]
fn every_sample_decodes_back() {
    use shared::frame::{HEADER_LEN, decode_body};
    for (name, bytes) in fuzz::samples::all() {
        let body = &bytes[HEADER_LEN..];
        let ok = match name.split("::").next().unwrap() {
            "Request" => decode_body::<shared::proto::Request>(body).is_ok(),
            "Response" => decode_body::<shared::proto::Response>(body).is_ok(),
            "ErrorCode" => decode_body::<shared::proto::ErrorCode>(body).is_ok(),
            "Event" => decode_body::<shared::proto::Event>(body).is_ok(),
            "PeerFrame" => decode_body::<shared::peer::PeerFrame>(body).is_ok(),
            "PeerAck" => decode_body::<shared::peer::PeerAck>(body).is_ok(),
            "OfferAnswer" => decode_body::<shared::files::OfferAnswer>(body).is_ok(),
            "ControlRequest" => decode_body::<shared::control::ControlRequest>(body).is_ok(),
            "ControlResponse" => decode_body::<shared::control::ControlResponse>(body).is_ok(),
            "AgentEvent" => decode_body::<shared::control::AgentEvent>(body).is_ok(),
            "TransferState" => decode_body::<shared::control::TransferState>(body).is_ok(),
            "MessageStatus" => decode_body::<shared::control::MessageStatus>(body).is_ok(),
            "RelayHello" => decode_body::<shared::relay::RelayHello>(body).is_ok(),
            "LinkFrame" => decode_body::<shared::link::LinkFrame>(body).is_ok(),
            "LinkReply" => decode_body::<shared::link::LinkReply>(body).is_ok(),
            "Letter" => decode_body::<shared::mailbox::SignedLetter>(body).is_ok(),
            other => panic!("no decoder listed for {other}"),
        };
        assert!(ok, "{name} does not decode");
    }
}
