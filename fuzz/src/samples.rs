//! One value of every variant of every wire enum: the seeds of the fuzzer and the wire fixtures.
//!
//! Each list is built through a `match` that names every variant (`variant_of_*`), so adding a variant
//! does not compile until it has a sample here, and then the fixture test fails until the fixture file is
//! regenerated on purpose: a reordered or changed variant can never slip through unnoticed.

use shared::control::{AgentEvent, AgentStatus, ControlRequest, ControlResponse, MessageStatus, PeerLink};
use shared::control::{Transfer, TransferState};
use shared::files::{FileOffer, OfferAnswer};
use shared::link::{Approval, HistoryRow, LinkFrame, LinkReply, PinnedKey};
use shared::mailbox::{Deposit, Letter, LetterBody, MailboxKeys};
use shared::peer::{Chat, PeerAck, PeerFrame};
use shared::proto::{DeviceEndpoint, ErrorBody, ErrorCode, Event, FriendInfo, FriendRequestInfo};
use shared::proto::{GroupInfo, GroupInvitation, GroupMember, GroupMessage, Request, Response, UserInfo};
use shared::relay::RelayHello;
use shared::trust::{CertifiedDevice, DeviceRecord, Located, OwnDevice, Revocation, Signed};
use std::net::SocketAddr;

/// A named, encoded sample: `(type::Variant, frame bytes with header)`.
pub type Sample = (String, Vec<u8>);

fn addr() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 7], 7878))
}

fn user() -> UserInfo {
    UserInfo { username: "zhang_san".into(), display_name: "张三".into() }
}

fn msg() -> GroupMessage {
    GroupMessage { group_id: 7, seq: 42, sender: "bob".into(), system: false, text: "早上好".into(), at: 1_700_000 }
}

fn device() -> DeviceEndpoint {
    DeviceEndpoint { fingerprint: [9; 32], observed: addr(), local: vec![SocketAddr::from(([192, 0, 2, 3], 5000))] }
}

fn transfer() -> Transfer {
    Transfer {
        id: "00ff".into(),
        peer: "bob".into(),
        outgoing: true,
        name: "a.pdf".into(),
        size: 1 << 20,
        hash: "ab".into(),
        state: TransferState::Transferring,
        bytes: 4096,
        path: Some("/tmp/a.pdf".into()),
        error: None,
        resumed_from: 0,
        created_at: 1,
        updated_at: 2,
    }
}

fn record() -> Signed<DeviceRecord> {
    let body = DeviceRecord { username: "bob".into(), fingerprint: [9; 32], name: "laptop".into(), created_at: 5 };
    Signed { body, signature: vec![7; 64] }
}

fn revocation() -> Signed<Revocation> {
    Signed { body: Revocation { username: "bob".into(), fingerprint: [9; 32], at: 6 }, signature: vec![8; 64] }
}

fn certified() -> CertifiedDevice {
    CertifiedDevice { endpoint: device(), record: Some(record()) }
}

fn mailbox_keys() -> Signed<MailboxKeys> {
    let body = MailboxKeys {
        username: "bob".into(),
        fingerprint: [9; 32],
        seal_key: [2; 32],
        verify_key: [3; 32],
        created_at: 5,
    };
    Signed { body, signature: vec![7; 64] }
}

fn chat() -> Chat {
    Chat { id: shared::id::MessageId([3; 16]), sent_at: 1_700_000, text: "你好 👋".into() }
}

pub fn requests() -> Vec<Request> {
    let s = String::from;
    vec![
        Request::Ping,
        Request::Register { username: s("alice"), display_name: s("Alice"), password: s("password1") },
        Request::Login { username: s("alice"), password: s("password1") },
        Request::Hello { token: s("tok"), local_addrs: vec![addr()] },
        Request::Logout,
        Request::SearchUsers { query: s("ali"), offset: 0, limit: 20 },
        Request::FriendAdd { username: s("bob"), message: s("hi") },
        Request::FriendRequests,
        Request::FriendAccept { username: s("bob") },
        Request::FriendDecline { username: s("bob") },
        Request::FriendRemove { username: s("bob") },
        Request::FriendRemark { username: s("bob"), remark: s("Bobby") },
        Request::Friends,
        Request::SetDisplayName { display_name: s("A") },
        Request::ChangePassword { old: s("old password"), new: s("new password") },
        Request::Lookup { username: s("bob") },
        Request::GroupCreate { name: s("家人群") },
        Request::GroupInvite { group_id: 7, username: s("bob") },
        Request::GroupInvitations,
        Request::GroupJoin { group_id: 7 },
        Request::GroupDecline { group_id: 7 },
        Request::GroupLeave { group_id: 7 },
        Request::GroupMembers { group_id: 7 },
        Request::Groups,
        Request::GroupPost { group_id: 7, text: s("hello") },
        Request::GroupSync { group_id: 7, after_seq: 3, limit: 500 },
        Request::GroupRemove { group_id: 7, username: s("bob") },
        Request::GroupRename { group_id: 7, name: s("new") },
        Request::GroupTransfer { group_id: 7, username: s("bob") },
        Request::GroupDisband { group_id: 7 },
        Request::Relay { username: s("bob"), fingerprint: [5; 32] },
        Request::RevokeToken { token: s("tok") },
        Request::Block { username: s("mallory") },
        Request::Unblock { username: s("mallory") },
        Request::Blocked,
        Request::Certify { account_key: [1; 32], record: record() },
        Request::Locate { username: s("bob") },
        Request::Devices,
        Request::RevokeDevice { revocation: revocation() },
        Request::ResetAccountKey { password: s("password1"), account_key: [2; 32], record: record() },
        Request::LinkOffer { link_id: [3; 5] },
        Request::LinkClaim { link_id: [3; 5], local_addrs: vec![addr()] },
        Request::LinkToken { link_id: [3; 5] },
        Request::PublishMailbox { keys: mailbox_keys() },
        Request::Mailboxes { username: s("bob") },
        Request::Deposit { username: s("bob"), device: [9; 32], blob: vec![1, 2, 3] },
        Request::Pickup { after: 4, limit: 100 },
        Request::MailboxAck { ids: vec![5, 6] },
        Request::GroupPostOnce { group_id: 7, text: s("hello"), post_id: [4; 16] },
    ]
}

pub fn error_codes() -> Vec<ErrorCode> {
    vec![
        ErrorCode::Malformed("bad".into()),
        ErrorCode::InvalidUsername,
        ErrorCode::InvalidDisplayName,
        ErrorCode::InvalidPassword,
        ErrorCode::InvalidText("long".into()),
        ErrorCode::UsernameTaken,
        ErrorCode::BadCredentials,
        ErrorCode::RateLimited { retry_after_secs: 12 },
        ErrorCode::NotLoggedIn,
        ErrorCode::InvalidToken,
        ErrorCode::AlreadyInSession,
        ErrorCode::UnknownUser,
        ErrorCode::NotFriends,
        ErrorCode::AlreadyFriends,
        ErrorCode::RequestPending,
        ErrorCode::NoSuchRequest,
        ErrorCode::SelfRequest,
        ErrorCode::Busy,
        ErrorCode::Internal,
        ErrorCode::UnknownGroup,
        ErrorCode::NotMember,
        ErrorCode::NotInvited,
        ErrorCode::AlreadyMember,
        ErrorCode::NotOwner,
        ErrorCode::RelayUnavailable("off".into()),
        ErrorCode::YouBlocked("mallory".into()),
        ErrorCode::NotBlocked,
        ErrorCode::AccountKeyMismatch,
        ErrorCode::BadSignature("bad".into()),
        ErrorCode::DeviceRevoked,
        ErrorCode::UnknownLink,
        ErrorCode::UnknownDevice,
        ErrorCode::MailboxOff,
        ErrorCode::MailboxFull("64 MiB".into()),
    ]
}

fn variant_of_error(e: &ErrorCode) -> &'static str {
    match e {
        ErrorCode::Malformed(_) => "Malformed",
        ErrorCode::InvalidUsername => "InvalidUsername",
        ErrorCode::InvalidDisplayName => "InvalidDisplayName",
        ErrorCode::InvalidPassword => "InvalidPassword",
        ErrorCode::InvalidText(_) => "InvalidText",
        ErrorCode::UsernameTaken => "UsernameTaken",
        ErrorCode::BadCredentials => "BadCredentials",
        ErrorCode::RateLimited { .. } => "RateLimited",
        ErrorCode::NotLoggedIn => "NotLoggedIn",
        ErrorCode::InvalidToken => "InvalidToken",
        ErrorCode::AlreadyInSession => "AlreadyInSession",
        ErrorCode::UnknownUser => "UnknownUser",
        ErrorCode::NotFriends => "NotFriends",
        ErrorCode::AlreadyFriends => "AlreadyFriends",
        ErrorCode::RequestPending => "RequestPending",
        ErrorCode::NoSuchRequest => "NoSuchRequest",
        ErrorCode::SelfRequest => "SelfRequest",
        ErrorCode::Busy => "Busy",
        ErrorCode::Internal => "Internal",
        ErrorCode::UnknownGroup => "UnknownGroup",
        ErrorCode::NotMember => "NotMember",
        ErrorCode::NotInvited => "NotInvited",
        ErrorCode::AlreadyMember => "AlreadyMember",
        ErrorCode::NotOwner => "NotOwner",
        ErrorCode::RelayUnavailable(_) => "RelayUnavailable",
        ErrorCode::YouBlocked(_) => "YouBlocked",
        ErrorCode::NotBlocked => "NotBlocked",
        ErrorCode::AccountKeyMismatch => "AccountKeyMismatch",
        ErrorCode::BadSignature(_) => "BadSignature",
        ErrorCode::DeviceRevoked => "DeviceRevoked",
        ErrorCode::UnknownLink => "UnknownLink",
        ErrorCode::UnknownDevice => "UnknownDevice",
        ErrorCode::MailboxOff => "MailboxOff",
        ErrorCode::MailboxFull(_) => "MailboxFull",
    }
}

pub fn responses() -> Vec<Response> {
    let s = String::from;
    let request = FriendRequestInfo { user: user(), message: s("hi"), created_at: 5 };
    vec![
        Response::Ok,
        Response::Pong,
        Response::Token { username: s("alice"), token: s("tok"), expires_at: 9 },
        Response::Welcome { session_id: 1, user: user(), observed_addr: addr() },
        Response::Users(vec![user()]),
        Response::FriendRequests { incoming: vec![request.clone()], outgoing: vec![request] },
        Response::Friends(vec![FriendInfo { user: user(), remark: Some(s("r")), online: true, since: Some(3) }]),
        Response::FriendAdded { now_friends: true },
        Response::Error(ErrorBody::from(ErrorCode::NotFriends)),
        Response::Endpoints(vec![device()]),
        Response::GroupCreated { group_id: 7 },
        Response::GroupInvitations(vec![GroupInvitation { group_id: 7, name: s("g"), inviter: user(), created_at: 4 }]),
        Response::GroupMembers(vec![GroupMember { user: user(), owner: true, online: false }]),
        Response::Groups(vec![GroupInfo { group_id: 7, name: s("g"), owner: s("a"), last_seq: 3, members: 2 }]),
        Response::GroupPosted { seq: 43 },
        Response::GroupMessages(vec![msg()]),
        Response::Located(Located { account_key: Some([1; 32]), devices: vec![certified()] }),
        Response::Devices {
            account_key: Some([1; 32]),
            devices: vec![OwnDevice { record: record(), online: false, last_seen: Some(9) }],
        },
        Response::LinkPeer { username: s("alice"), device: device() },
        Response::Mailboxes { account_key: Some([1; 32]), devices: vec![mailbox_keys()] },
        Response::Deposits(vec![Deposit { id: 4, from: s("alice"), blob: vec![1, 2, 3], at: 8 }]),
    ]
}

fn variant_of_response(r: &Response) -> &'static str {
    match r {
        Response::Ok => "Ok",
        Response::Pong => "Pong",
        Response::Token { .. } => "Token",
        Response::Welcome { .. } => "Welcome",
        Response::Users(_) => "Users",
        Response::FriendRequests { .. } => "FriendRequests",
        Response::Friends(_) => "Friends",
        Response::FriendAdded { .. } => "FriendAdded",
        Response::Error(_) => "Error",
        Response::Endpoints(_) => "Endpoints",
        Response::GroupCreated { .. } => "GroupCreated",
        Response::GroupInvitations(_) => "GroupInvitations",
        Response::GroupMembers(_) => "GroupMembers",
        Response::Groups(_) => "Groups",
        Response::GroupPosted { .. } => "GroupPosted",
        Response::GroupMessages(_) => "GroupMessages",
        Response::Located(_) => "Located",
        Response::Devices { .. } => "Devices",
        Response::LinkPeer { .. } => "LinkPeer",
        Response::Mailboxes { .. } => "Mailboxes",
        Response::Deposits(_) => "Deposits",
    }
}

pub fn events() -> Vec<Event> {
    let s = String::from;
    vec![
        Event::FriendRequest { from: user(), message: s("hi"), created_at: 1 },
        Event::FriendAccepted { friend: user() },
        Event::FriendRemoved { username: s("bob") },
        Event::Presence { username: s("bob"), online: true, at: 2 },
        Event::FriendProfile { friend: user() },
        Event::SessionRevoked,
        Event::PeerIncoming { username: s("bob"), device: device() },
        Event::GroupInvited(GroupInvitation { group_id: 7, name: s("g"), inviter: user(), created_at: 4 }),
        Event::GroupMessage(msg()),
        Event::GroupPresence { group_id: 7, username: s("bob"), online: false, at: 3 },
        Event::FriendDevices { username: s("bob"), fingerprints: vec![[1; 32]] },
        Event::PeerCalling { username: s("bob"), account_key: Some([1; 32]), device: certified() },
        Event::DeviceRevoked { username: s("bob"), revocation: revocation() },
        Event::AccountKeyChanged { username: s("bob") },
        Event::LinkClaimed { link_id: [3; 5], device: device() },
        Event::MailWaiting,
    ]
}

fn variant_of_event(e: &Event) -> &'static str {
    match e {
        Event::FriendRequest { .. } => "FriendRequest",
        Event::FriendAccepted { .. } => "FriendAccepted",
        Event::FriendRemoved { .. } => "FriendRemoved",
        Event::Presence { .. } => "Presence",
        Event::FriendProfile { .. } => "FriendProfile",
        Event::SessionRevoked => "SessionRevoked",
        Event::PeerIncoming { .. } => "PeerIncoming",
        Event::GroupInvited(_) => "GroupInvited",
        Event::GroupMessage(_) => "GroupMessage",
        Event::GroupPresence { .. } => "GroupPresence",
        Event::FriendDevices { .. } => "FriendDevices",
        Event::PeerCalling { .. } => "PeerCalling",
        Event::DeviceRevoked { .. } => "DeviceRevoked",
        Event::AccountKeyChanged { .. } => "AccountKeyChanged",
        Event::LinkClaimed { .. } => "LinkClaimed",
        Event::MailWaiting => "MailWaiting",
    }
}

pub fn peer_frames() -> Vec<PeerFrame> {
    let s = String::from;
    vec![
        PeerFrame::Chat(chat()),
        PeerFrame::ChatBatch(vec![chat(), chat()]),
        PeerFrame::FileOffer(FileOffer {
            id: shared::id::TransferId([4; 16]),
            name: s("a.pdf"),
            size: 10,
            hash: [6; 32],
        }),
        PeerFrame::FileFetch { id: shared::id::TransferId([4; 16]), offset: 5 },
        PeerFrame::FileCancel { id: shared::id::TransferId([4; 16]), declined: true, reason: s("no") },
        PeerFrame::FileResult { id: shared::id::TransferId([4; 16]), ok: false, reason: s("hash") },
        PeerFrame::Search(search()),
    ]
}

fn variant_of_peer_frame(f: &PeerFrame) -> &'static str {
    match f {
        PeerFrame::Chat(_) => "Chat",
        PeerFrame::ChatBatch(_) => "ChatBatch",
        PeerFrame::FileOffer(_) => "FileOffer",
        PeerFrame::FileFetch { .. } => "FileFetch",
        PeerFrame::FileCancel { .. } => "FileCancel",
        PeerFrame::FileResult { .. } => "FileResult",
        PeerFrame::Search(_) => "Search",
    }
}

pub fn peer_acks() -> Vec<PeerAck> {
    vec![
        PeerAck::Stored,
        PeerAck::Refused("too long".into()),
        PeerAck::Batch(vec![PeerAck::Stored, PeerAck::Refused("x".into())]),
        PeerAck::Offer(OfferAnswer::Receiving { have: 9 }),
        PeerAck::Search(search()),
    ]
}

fn search() -> shared::peer::Search {
    shared::peer::Search { token: [7; 16], port_kept: true }
}

fn variant_of_peer_ack(a: &PeerAck) -> &'static str {
    match a {
        PeerAck::Stored => "Stored",
        PeerAck::Refused(_) => "Refused",
        PeerAck::Batch(_) => "Batch",
        PeerAck::Offer(_) => "Offer",
        PeerAck::Search(_) => "Search",
    }
}

pub fn offer_answers() -> Vec<OfferAnswer> {
    vec![
        OfferAnswer::Offered,
        OfferAnswer::Receiving { have: 1 },
        OfferAnswer::Done,
        OfferAnswer::Declined,
        OfferAnswer::Cancelled,
    ]
}

fn variant_of_offer_answer(a: &OfferAnswer) -> &'static str {
    match a {
        OfferAnswer::Offered => "Offered",
        OfferAnswer::Receiving { .. } => "Receiving",
        OfferAnswer::Done => "Done",
        OfferAnswer::Declined => "Declined",
        OfferAnswer::Cancelled => "Cancelled",
    }
}

pub fn control_requests() -> Vec<ControlRequest> {
    let s = String::from;
    vec![
        ControlRequest::Status,
        ControlRequest::Watch,
        ControlRequest::Logout,
        ControlRequest::Broker(Request::Friends),
        ControlRequest::Send { to: s("bob"), text: s("hi") },
        ControlRequest::SendFile { to: s("bob"), path: s("/a"), name: s("a"), size: 1, hash: [2; 32] },
        ControlRequest::Files,
        ControlRequest::FileAccept { id: s("00ff"), dir: s("/tmp") },
        ControlRequest::FileDecline { id: s("00ff") },
        ControlRequest::FileCancel { id: s("00ff") },
        ControlRequest::Stop,
        ControlRequest::MarkRead { conversation: s("u:bob"), up_to: 12 },
        ControlRequest::Verify { username: s("bob"), action: shared::control::VerifyAction::Confirm },
        ControlRequest::LinkStart,
        ControlRequest::LinkConfirm { link_id: [3; 5], accept: true },
        ControlRequest::Paths,
    ]
}

fn variant_of_control_request(r: &ControlRequest) -> &'static str {
    match r {
        ControlRequest::Status => "Status",
        ControlRequest::Watch => "Watch",
        ControlRequest::Logout => "Logout",
        ControlRequest::Broker(_) => "Broker",
        ControlRequest::Send { .. } => "Send",
        ControlRequest::SendFile { .. } => "SendFile",
        ControlRequest::Files => "Files",
        ControlRequest::FileAccept { .. } => "FileAccept",
        ControlRequest::FileDecline { .. } => "FileDecline",
        ControlRequest::FileCancel { .. } => "FileCancel",
        ControlRequest::Stop => "Stop",
        ControlRequest::MarkRead { .. } => "MarkRead",
        ControlRequest::Verify { .. } => "Verify",
        ControlRequest::LinkStart => "LinkStart",
        ControlRequest::LinkConfirm { .. } => "LinkConfirm",
        ControlRequest::Paths => "Paths",
    }
}

pub fn control_responses() -> Vec<ControlResponse> {
    let s = String::from;
    let status = AgentStatus {
        username: s("alice"),
        display_name: Some(s("A")),
        broker: s("127.0.0.1:7878"),
        broker_fingerprint: s("ab"),
        device_fingerprint: s("cd"),
        online: true,
        session_id: Some(1),
        observed_addr: Some(addr()),
        local_addrs: vec![addr()],
        since: Some(1),
        agent_pid: 42,
        peers: vec![PeerLink {
            username: s("bob"),
            path: s("direct"),
            remote_addr: addr(),
            device_fingerprint: s("ef"),
            relay: None,
        }],
    };
    vec![
        ControlResponse::Status(status),
        ControlResponse::Ok,
        ControlResponse::Broker(Response::Pong),
        ControlResponse::Event(AgentEvent::Disconnected { reason: s("gone"), at: 1 }),
        ControlResponse::Error(s("no")),
        ControlResponse::Sent { id: s("00"), status: MessageStatus::Queued, detail: Some(s("offline")) },
        ControlResponse::Transfers(vec![transfer()]),
        ControlResponse::Transfer(transfer()),
        ControlResponse::failed(shared::control::ControlErrorCode::Offline, "not connected"),
        ControlResponse::Verification(shared::control::Verification {
            username: s("bob"),
            safety_number: Some(s("12345 67890")),
            their_key: Some(s("ab")),
            verified: true,
            key_changed: false,
        }),
        ControlResponse::LinkCode { code: s("ABCD-EFGH-JKMN-PQRS"), link_id: [3; 5], expires_in_secs: 300 },
        ControlResponse::Paths(vec![shared::control::PathHistory {
            device_fingerprint: s("ef"),
            path: s("direct"),
            since: 5,
            upgrades: 1,
            fallbacks: 0,
        }]),
    ]
}

fn variant_of_control_response(r: &ControlResponse) -> &'static str {
    match r {
        ControlResponse::Status(_) => "Status",
        ControlResponse::Ok => "Ok",
        ControlResponse::Broker(_) => "Broker",
        ControlResponse::Event(_) => "Event",
        ControlResponse::Error(_) => "Error",
        ControlResponse::Sent { .. } => "Sent",
        ControlResponse::Transfers(_) => "Transfers",
        ControlResponse::Transfer(_) => "Transfer",
        ControlResponse::Failed(_) => "Failed",
        ControlResponse::Verification(_) => "Verification",
        ControlResponse::LinkCode { .. } => "LinkCode",
        ControlResponse::Paths(_) => "Paths",
    }
}

pub fn agent_events() -> Vec<AgentEvent> {
    let s = String::from;
    vec![
        AgentEvent::Connected { observed_addr: addr(), at: 1 },
        AgentEvent::Disconnected { reason: s("gone"), at: 1 },
        AgentEvent::Broker { event: Event::SessionRevoked, at: 1 },
        AgentEvent::MessageReceived { from: s("bob"), id: s("00"), text: s("hi"), sent_at: 1, at: 2 },
        AgentEvent::MessageDelivered { to: s("bob"), id: s("00"), at: 2 },
        AgentEvent::MessageFailed { to: s("bob"), id: s("00"), reason: s("refused"), at: 2 },
        AgentEvent::FileOffered { transfer: transfer(), at: 1 },
        AgentEvent::FileProgress { id: s("00"), peer: s("bob"), outgoing: true, bytes: 1, size: 2, at: 3 },
        AgentEvent::FileUpdated { transfer: transfer(), at: 1 },
        AgentEvent::Read { conversation: s("g:7"), up_to: 3, at: 4 },
        AgentEvent::KeyChanged { username: s("bob"), at: 5 },
        AgentEvent::LinkRequest { link_id: [3; 5], device_name: s("laptop"), words: s("apple onyx"), at: 5 },
        AgentEvent::Linked { link_id: [3; 5], device_name: s("laptop"), messages: 10, at: 5 },
        AgentEvent::LinkFailed { link_id: [3; 5], reason: s("refused"), at: 5 },
        AgentEvent::MessageSent { to: s("bob"), id: s("00"), at: 6 },
        AgentEvent::MessageCopied { to: s("bob"), id: s("00"), text: s("hi"), sent_at: 1, delivered: true, at: 6 },
    ]
}

fn variant_of_agent_event(e: &AgentEvent) -> &'static str {
    match e {
        AgentEvent::Connected { .. } => "Connected",
        AgentEvent::Disconnected { .. } => "Disconnected",
        AgentEvent::Broker { .. } => "Broker",
        AgentEvent::MessageReceived { .. } => "MessageReceived",
        AgentEvent::MessageDelivered { .. } => "MessageDelivered",
        AgentEvent::MessageFailed { .. } => "MessageFailed",
        AgentEvent::FileOffered { .. } => "FileOffered",
        AgentEvent::FileProgress { .. } => "FileProgress",
        AgentEvent::FileUpdated { .. } => "FileUpdated",
        AgentEvent::Read { .. } => "Read",
        AgentEvent::KeyChanged { .. } => "KeyChanged",
        AgentEvent::LinkRequest { .. } => "LinkRequest",
        AgentEvent::Linked { .. } => "Linked",
        AgentEvent::LinkFailed { .. } => "LinkFailed",
        AgentEvent::MessageSent { .. } => "MessageSent",
        AgentEvent::MessageCopied { .. } => "MessageCopied",
    }
}

pub fn transfer_states() -> Vec<TransferState> {
    use TransferState::*;
    vec![Waiting, Offered, Transferring, Done, Declined, Cancelled, Failed]
}

fn variant_of_transfer_state(t: &TransferState) -> &'static str {
    t.as_str()
}

pub fn message_statuses() -> Vec<MessageStatus> {
    vec![
        MessageStatus::Sending,
        MessageStatus::Delivered,
        MessageStatus::Queued,
        MessageStatus::Failed,
        MessageStatus::Sent,
    ]
}

fn variant_of_message_status(m: &MessageStatus) -> &'static str {
    m.as_str()
}

pub fn relay_hellos() -> Vec<RelayHello> {
    vec![RelayHello { username: "bob".into(), fingerprint: [8; 32] }]
}

pub fn link_frames() -> Vec<LinkFrame> {
    vec![LinkFrame::Hello { proof: [4; 32], device_name: "laptop".into() }, LinkFrame::Stored { messages: 3 }]
}

fn variant_of_link_frame(f: &LinkFrame) -> &'static str {
    match f {
        LinkFrame::Hello { .. } => "Hello",
        LinkFrame::Stored { .. } => "Stored",
    }
}

pub fn link_replies() -> Vec<LinkReply> {
    let s = String::from;
    vec![
        LinkReply::Approved(Box::new(Approval {
            username: s("bob"),
            account_key: vec![1; 83],
            record: record(),
            token: s("tok"),
            expires_at: 9,
            messages: 2,
        })),
        LinkReply::Refused(s("no")),
        LinkReply::Pins(vec![PinnedKey { username: s("carol"), account_key: [5; 32], verified: true }]),
        LinkReply::Rows(vec![
            HistoryRow::Direct {
                id: s("00ff"),
                peer: s("carol"),
                outgoing: true,
                text: s("你好"),
                sent_at: 1,
                stored_at: 2,
                status: s("delivered"),
            },
            HistoryRow::Group {
                group_id: 7,
                seq: 1,
                sender: s("carol"),
                system: false,
                text: s("hi"),
                sent_at: 1,
                stored_at: 2,
            },
        ]),
        LinkReply::Done { messages: 2 },
    ]
}

fn variant_of_link_reply(r: &LinkReply) -> &'static str {
    match r {
        LinkReply::Approved(_) => "Approved",
        LinkReply::Refused(_) => "Refused",
        LinkReply::Pins(_) => "Pins",
        LinkReply::Rows(_) => "Rows",
        LinkReply::Done { .. } => "Done",
    }
}

pub fn letters() -> Vec<Signed<Letter>> {
    let letter = |body| Signed {
        body: Letter {
            from: "alice".into(),
            from_device: [1; 32],
            to: "bob".into(),
            to_device: [9; 32],
            written_at: 7,
            body,
        },
        signature: vec![6; 64],
    };
    vec![
        letter(LetterBody::Chat(vec![chat(), chat()])),
        letter(LetterBody::Copy { to: "carol".into(), chats: vec![chat()], delivered: true }),
        letter(LetterBody::Delivered(vec![shared::id::MessageId([3; 16])])),
        letter(LetterBody::FileOffer(FileOffer {
            id: shared::id::TransferId([4; 16]),
            name: "a.pdf".into(),
            size: 10,
            hash: [6; 32],
        })),
    ]
}

fn variant_of_letter(l: &Signed<Letter>) -> &'static str {
    match l.body.body {
        LetterBody::Chat(_) => "Chat",
        LetterBody::Copy { .. } => "Copy",
        LetterBody::Delivered(_) => "Delivered",
        LetterBody::FileOffer(_) => "FileOffer",
    }
}

fn named<T: bincode::Encode>(ty: &str, values: Vec<T>, name: fn(&T) -> &'static str) -> Vec<Sample> {
    values
        .iter()
        .map(|v| (format!("{ty}::{}", name(v)), shared::frame::encode(v).expect("every sample encodes")))
        .collect()
}

/// Every sample of every wire type, encoded as frames, in a fixed order.
pub fn all() -> Vec<Sample> {
    let mut out = Vec::new();
    // `Request::kind` is already an exhaustive match over its variants.
    out.extend(named("Request", requests(), Request::kind));
    out.extend(named("Response", responses(), variant_of_response));
    out.extend(named("ErrorCode", error_codes(), variant_of_error));
    out.extend(named("Event", events(), variant_of_event));
    out.extend(named("PeerFrame", peer_frames(), variant_of_peer_frame));
    out.extend(named("PeerAck", peer_acks(), variant_of_peer_ack));
    out.extend(named("OfferAnswer", offer_answers(), variant_of_offer_answer));
    out.extend(named("ControlRequest", control_requests(), variant_of_control_request));
    out.extend(named("ControlResponse", control_responses(), variant_of_control_response));
    out.extend(named("AgentEvent", agent_events(), variant_of_agent_event));
    out.extend(named("TransferState", transfer_states(), variant_of_transfer_state));
    out.extend(named("MessageStatus", message_statuses(), variant_of_message_status));
    out.extend(named("RelayHello", relay_hellos(), |_| "RelayHello"));
    out.extend(named("LinkFrame", link_frames(), variant_of_link_frame));
    out.extend(named("LinkReply", link_replies(), variant_of_link_reply));
    out.extend(named("Letter", letters(), variant_of_letter));
    out
}
