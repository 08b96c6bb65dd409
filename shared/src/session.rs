//! The broker connection's states and which requests each admits.
//!
//! A connection starts anonymous: it may register, log in or open a session with a token. Once
//! [`Request::Hello`] succeeds the connection *is* the user's online row; friend and profile requests need
//! that. After [`Request::Logout`] the connection only waits to be closed.

use crate::proto::{ErrorCode, Request};

/// Where a broker connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// No token presented yet.
    Anonymous,
    /// A session is open for `user` (the connection-table row `session_id`).
    Online { user: String, session_id: u64 },
    /// Logged out: nothing more is served.
    Closed,
}

impl SessionState {
    /// Whether `req` may be served now. The answer does not depend on the request's contents.
    pub fn admits(&self, req: &Request) -> Result<(), ErrorCode> {
        use Request::*;
        match (self, req) {
            (_, Ping | RevokeToken { .. }) => Ok(()),
            (Self::Anonymous, Register { .. } | Login { .. } | Hello { .. } | LinkClaim { .. }) => Ok(()),
            (Self::Anonymous, _) => Err(ErrorCode::NotLoggedIn),
            (Self::Online { .. }, Register { .. } | Login { .. } | Hello { .. } | LinkClaim { .. }) => {
                Err(ErrorCode::AlreadyInSession)
            }
            (Self::Online { .. }, _) => Ok(()),
            (Self::Closed, _) => Err(ErrorCode::NotLoggedIn),
        }
    }

    /// The user this connection speaks for, if any.
    pub fn user(&self) -> Option<&str> {
        match self {
            Self::Online { user, .. } => Some(user),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_may_only_authenticate() {
        let s = SessionState::Anonymous;
        assert!(s.admits(&Request::Ping).is_ok());
        assert!(s.admits(&Request::Login { username: "a".into(), password: "b".into() }).is_ok());
        assert!(s.admits(&Request::Hello { token: "t".into(), local_addrs: vec![] }).is_ok());
        assert_eq!(s.admits(&Request::Friends), Err(ErrorCode::NotLoggedIn));
        assert_eq!(s.admits(&Request::Logout), Err(ErrorCode::NotLoggedIn));
        assert!(s.admits(&Request::RevokeToken { token: "t".into() }).is_ok());
    }

    #[test]
    fn online_cannot_reauthenticate() {
        let s = SessionState::Online { user: "alice".into(), session_id: 1 };
        assert_eq!(s.user(), Some("alice"));
        assert!(s.admits(&Request::Friends).is_ok());
        assert_eq!(
            s.admits(&Request::Hello { token: "t".into(), local_addrs: vec![] }),
            Err(ErrorCode::AlreadyInSession)
        );
    }

    #[test]
    fn closed_serves_nothing_but_ping() {
        let s = SessionState::Closed;
        assert!(s.admits(&Request::Ping).is_ok());
        assert_eq!(s.admits(&Request::Friends), Err(ErrorCode::NotLoggedIn));
        assert_eq!(s.user(), None);
    }
}
