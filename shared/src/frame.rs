//! Frames: a 4-byte big-endian length, then that many bytes of bincode.
//!
//! The length is checked against [`MAX_FRAME`] before any buffer is sized from it, so a hostile length prefix
//! costs the receiver nothing. Decoding is also limited ([`MAX_CLAIM`]): bincode cannot be talked into
//! allocating more than that for one frame: the types derive bincode's own `Encode`/`Decode` (the same bytes
//! as its serde encoding, which the wire fixtures in `fuzz/tests` pin), whose decoder checks every declared
//! length against that limit before it allocates (serde's path would preallocate up to 1 MiB for a hostile
//! element count).

/// Largest frame body either side accepts. A 16 KiB chat message plus its envelope fits with room to spare;
/// anything bulkier (files) travels as raw bytes on its own stream, never as a frame.
pub const MAX_FRAME: usize = 64 * 1024;

/// What decoding one frame of a [`Message::WIDE`] type may claim. bincode counts against its limit what
/// decoding would allocate, not the bytes read: a `Vec<T>` of `n` claims `n * size_of::<T>()` before its
/// elements (which claim their own fields again). A friends list that fits a frame easily (800 friends:
/// 18 KiB) claims over 64 KiB; 16 frames' worth lets whatever fits in a frame decode.
pub const MAX_CLAIM: usize = 16 * MAX_FRAME;

/// A message that travels in frames, and how much decoding one may claim.
pub trait Message: bincode::Decode<()> {
    /// Whether only a party the reader already trusts sends it (the pinned broker's answers and events,
    /// the local agent's answers to its own user), so that its lists may claim up to [`MAX_CLAIM`].
    /// Everything a stranger or a friend can send stays held to [`MAX_FRAME`]: a hostile frame cannot make
    /// its reader allocate more than twice what it sent.
    const WIDE: bool = false;
}

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The bytes are not a valid message of the expected type (garbage, or a newer protocol's variant).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame holds a valid message followed by extra bytes.
    #[error("frame has {0} trailing bytes")]
    Trailing(usize),
}

/// Encodes `msg` as one frame (header included).
pub fn encode<T: bincode::Encode>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::encode_into_std_write(msg, &mut out, bincode::config::standard())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let body = out.len() - HEADER_LEN;
    if body > MAX_FRAME {
        return Err(FrameError::TooLarge(body));
    }
    out[..HEADER_LEN].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(out)
}

/// Splits `items`, in order, into as few groups as keep each group's summed `cost` within `budget` (an item
/// costlier than the budget goes alone): how batches are packed into frames.
pub fn pack<T>(items: Vec<T>, budget: usize, cost: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut groups = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for item in items {
        let c = cost(&item);
        if !current.is_empty() && size + c > budget {
            groups.push(std::mem::take(&mut current));
            size = 0;
        }
        size += c;
        current.push(item);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// A frame's body alone (no length in front), for values kept rather than sent: what
/// [`decode_body`] reads back.
pub fn encode_body<T: bincode::Encode>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = encode(msg)?;
    Ok(frame.split_off(HEADER_LEN))
}

/// Reads the body length out of a header, refusing lengths over the limit.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes one frame body (without its header). The whole body must be one message.
pub fn decode_body<T: Message>(body: &[u8]) -> Result<T, FrameError> {
    if T::WIDE { decode_within::<MAX_CLAIM, T>(body) } else { decode_within::<MAX_FRAME, T>(body) }
}

/// Decodes `bytes` as exactly one message, letting decoding claim at most `CLAIM` bytes (see
/// [`MAX_CLAIM`]): [`decode_body`]'s work, for messages that travel outside frames with a limit of their
/// own (the broker's cluster messages).
pub fn decode_within<const CLAIM: usize, T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, FrameError> {
    let config = bincode::config::standard().with_limit::<CLAIM>();
    let (msg, used) = bincode::decode_from_slice(bytes, config).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(FrameError::Trailing(bytes.len() - used));
    }
    Ok(msg)
}

// Who sends what, and so what decoding each may claim (see [`Message`]).
// From the pinned broker, or from the local agent to its own user: lists (friends, members, history).
impl Message for crate::proto::Response {
    const WIDE: bool = true;
}
impl Message for crate::proto::Event {
    const WIDE: bool = true;
}
impl Message for crate::control::ControlResponse {
    const WIDE: bool = true;
}
// From anyone who can open a session or a stream (strangers, friends, other devices), or from a local
// process: held to the frame.
impl Message for crate::proto::Request {}
impl Message for crate::control::ControlRequest {}
impl Message for crate::peer::PeerFrame {}
impl Message for crate::peer::PeerAck {}
impl Message for crate::relay::RelayHello {}
impl Message for crate::link::LinkFrame {}
impl Message for crate::link::LinkReply {}
impl<T: bincode::Decode<()>> Message for crate::trust::Signed<T> {}
// Parts of the above that the wire fixtures (`fuzz/tests/wire.rs`) also decode alone.
impl Message for crate::proto::ErrorCode {}
impl Message for crate::files::OfferAnswer {}
impl Message for crate::control::AgentEvent {}
impl Message for crate::control::TransferState {}
impl Message for crate::control::MessageStatus {}

/// Sans-IO frame splitter: feed it bytes as they arrive, take whole frames out.
///
/// Used where frames arrive on a long-lived byte stream (the broker's event stream, the agent's control
/// socket); one-shot request streams simply read one frame.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Takes the next whole frame out, `Ok(None)` if more bytes are needed. An oversized length prefix is
    /// reported as soon as the header is in, before its body is waited for.
    pub fn next_frame<T: Message>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(header) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = body_len(*header)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[HEADER_LEN..HEADER_LEN + len]);
        self.buf.drain(..HEADER_LEN + len);
        msg.map(Some)
    }

    /// Called at end of stream: a clean end has no partial frame left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() { Ok(()) } else { Err(FrameError::Truncated) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ErrorCode, Request, Response};

    #[test]
    fn round_trip_with_unicode() {
        let req = Request::Register {
            username: "zhang_san".into(),
            display_name: "张三 🎉".into(),
            password: "correct horse".into(),
        };
        let bytes = encode(&req).unwrap();
        let mut d = Decoder::new();
        d.push(&bytes);
        assert_eq!(d.next_frame::<Request>().unwrap(), Some(req));
        d.finish().unwrap();
    }

    #[test]
    fn byte_at_a_time() {
        let resp = Response::Error(ErrorCode::RateLimited { retry_after_secs: 7 }.into());
        let bytes = encode(&resp).unwrap();
        let mut d = Decoder::new();
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(d.next_frame::<Response>().unwrap(), None, "frame complete too early at {i}");
            d.push(&[*b]);
        }
        assert_eq!(d.next_frame::<Response>().unwrap(), Some(resp));
    }

    #[test]
    fn oversized_header_rejected_before_body() {
        let mut d = Decoder::new();
        d.push(&u32::MAX.to_be_bytes());
        assert_eq!(d.next_frame::<Request>(), Err(FrameError::TooLarge(u32::MAX as usize)));
    }

    #[test]
    fn oversized_message_not_encoded() {
        let req = Request::Register {
            username: "a".repeat(MAX_FRAME + 1),
            display_name: String::new(),
            password: String::new(),
        };
        assert!(matches!(encode(&req), Err(FrameError::Malformed(_) | FrameError::TooLarge(_))));
    }

    /// The most entries of `item` that fit in one frame.
    fn frame_full_of<T: Clone>(item: T, wrap: impl Fn(Vec<T>) -> Response) -> Response {
        let mut n = 1024;
        while encode(&wrap(vec![item.clone(); n * 2])).is_ok() {
            n *= 2;
        }
        let (mut lo, mut hi) = (n, n * 2);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if encode(&wrap(vec![item.clone(); mid])).is_ok() { lo = mid } else { hi = mid }
        }
        wrap(vec![item; lo])
    }

    #[test]
    fn any_list_that_fits_a_frame_decodes() {
        // Before: decoding was limited to the frame's size, and a list costs more in memory than on the
        // wire: 800 friends (18 KiB) did not decode. The smallest entries a broker can send, a frame full.
        use crate::proto::{FriendInfo, GroupMember, UserInfo};
        let user = UserInfo { username: "abc".into(), display_name: "a".into() };
        let friend = FriendInfo { user: user.clone(), remark: None, online: false, since: None };
        let member = GroupMember { user, owner: false, online: false };
        for full in [frame_full_of(friend, Response::Friends), frame_full_of(member, Response::GroupMembers)] {
            let body = encode_body(&full).unwrap();
            assert!(body.len() > MAX_FRAME - 16, "the frame is full");
            assert_eq!(decode_body::<Response>(&body).unwrap(), full);
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let mut bytes = 5u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff]);
        let mut d = Decoder::new();
        d.push(&bytes);
        assert!(matches!(d.next_frame::<Request>(), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn unknown_variant_is_malformed() {
        // Variant index 200 does not exist in this protocol version.
        let body = [200u8];
        assert!(matches!(decode_body::<Request>(&body), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut body = encode(&Request::Ping).unwrap()[HEADER_LEN..].to_vec();
        body.push(0);
        assert_eq!(decode_body::<Request>(&body), Err(FrameError::Trailing(1)));
    }

    #[test]
    fn truncated_stream_detected() {
        let bytes = encode(&Request::Ping).unwrap();
        let mut d = Decoder::new();
        d.push(&bytes[..bytes.len() - 1]);
        assert_eq!(d.next_frame::<Request>().unwrap(), None);
        assert_eq!(d.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn hostile_length_inside_body_bounded() {
        // A string claiming to be 2^60 bytes long must fail without allocating it.
        let mut body = vec![1u8]; // Register
        body.push(253); // bincode varint marker for u64
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(decode_body::<Request>(&body), Err(FrameError::Malformed(_))));
    }
}
