//! Accounts and session tokens: registration, password login, token checks, logout, password changes.
//!
//! Passwords are argon2id, hashed on blocking threads with a cap on concurrent hashes so that a login storm
//! cannot starve the event loop or exhaust memory. Tokens are 32 random bytes; only their SHA-256 is stored,
//! so a leaked database holds no usable token.

use crate::error::RequestError;
use crate::lockout::LoginGuard;
use crate::ratelimit::Quota;
use crate::store::accounts::NewUser;
use crate::store::{Db, now_ms};
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use parking_lot::Mutex;
use shared::proto::{ErrorCode, Millis, UserInfo};
use shared::validate;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Argon2id cost. The default is OWASP's recommendation; tests lower it through the broker's flags.
#[derive(Debug, Clone, Copy)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2 }
    }
}

/// A token exchanged for a session.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_at: Millis,
}

/// What a valid token stands for.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user: UserInfo,
    pub token_hash: String,
}

/// Account operations over the database.
pub struct Accounts {
    db: Db,
    argon: Argon2<'static>,
    hashing: Semaphore,
    token_ttl: Duration,
    /// A real hash of a random password, verified against when the user does not exist, so that unknown
    /// users and wrong passwords take the same time.
    decoy_hash: String,
    guard: Mutex<LoginGuard>,
    registrations: Mutex<Quota<IpAddr>>,
}

impl Accounts {
    pub fn new(
        db: Db,
        cost: HashCost,
        token_ttl: Duration,
        registrations_per_hour: u32,
        strangers_per_minute: u32,
    ) -> Result<Arc<Self>, RequestError> {
        let params =
            Params::new(cost.memory_kib, cost.iterations, 1, None).map_err(|e| RequestError::Hash(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let decoy_hash =
            argon.hash_password(&random_bytes::<16>()).map_err(|e| RequestError::Hash(e.to_string()))?.to_string();
        let permits = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) * 2;
        Ok(Arc::new(Self {
            db,
            argon,
            hashing: Semaphore::new(permits),
            token_ttl,
            decoy_hash,
            guard: Mutex::new(LoginGuard::new(strangers_per_minute)),
            registrations: Mutex::new(Quota::new(registrations_per_hour, Duration::from_secs(3600))),
        }))
    }

    /// Creates an account and issues its first token.
    pub async fn register(
        &self,
        username: &str,
        display_name: &str,
        password: &str,
        from: IpAddr,
        device: [u8; 32],
    ) -> Result<Issued, RequestError> {
        validate::username(username)?;
        validate::display_name(display_name)?;
        validate::password(password)?;
        self.registrations
            .lock()
            .take(&from, Instant::now())
            .map_err(|retry_after_secs| ErrorCode::RateLimited { retry_after_secs })?;
        let hash = self.hash(password).await?;
        let user = NewUser {
            username,
            display_name,
            search_key: &search_key(username, display_name),
            password_hash: &hash,
            created_at: now_ms(),
        };
        if !self.db.insert_user(&user).await? {
            return Err(ErrorCode::UsernameTaken.into());
        }
        tracing::info!(user = username, "registered");
        self.issue(username, device).await
    }

    /// Checks a password and issues a token. Unknown users and wrong passwords are the same error and cost
    /// the same time; both count towards the limits of [`LoginGuard`], which counts the attempt before the
    /// hash is checked and does not lock out a device or address that logged into the account before.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        from: IpAddr,
        device: [u8; 32],
    ) -> Result<Issued, RequestError> {
        // Checked before anything is keyed on it: no such account can exist, and a stranger's 60 KB
        // "username" must not become a limiter key.
        if validate::username(username).is_err() || password.len() > validate::MAX_PASSWORD_BYTES {
            return Err(ErrorCode::BadCredentials.into());
        }
        let attempt = self
            .guard
            .lock()
            .begin(username, device, from, Instant::now())
            .map_err(|retry_after_secs| ErrorCode::RateLimited { retry_after_secs })?;
        let stored = self.db.password_hash(username).await?;
        let ok = match &stored {
            Some(hash) => self.verify(password, hash).await?,
            None => {
                let _ = self.verify(password, &self.decoy_hash.clone()).await?;
                false
            }
        };
        if !ok {
            tracing::info!(user = username, %from, known_source = attempt.trusted(), "failed login");
            return Err(ErrorCode::BadCredentials.into());
        }
        self.guard.lock().succeeded(&attempt, Instant::now());
        self.issue(username, device).await
    }

    /// Who a token belongs to, if it is known, unexpired, and presented by the device it was issued to (a
    /// token copied to another device is worth nothing there).
    pub async fn check_token(&self, token: &str, device: [u8; 32]) -> Result<TokenOwner, RequestError> {
        let token_hash = sha256_hex(token.as_bytes());
        let Some(row) = self.db.token(&token_hash).await? else {
            return Err(ErrorCode::InvalidToken.into());
        };
        if row.device.as_ref().is_some_and(|d| *d != hex::encode(device)) {
            tracing::warn!(
                device = hex::encode(device),
                "a token was presented by another device than its own; refused"
            );
            return Err(ErrorCode::InvalidToken.into());
        }
        if row.expires_at <= now_ms() {
            self.revoke(&token_hash).await?;
            return Err(ErrorCode::InvalidToken.into());
        }
        Ok(TokenOwner { user: row.user(), token_hash })
    }

    /// Revokes a token given in full (a logout without a session).
    pub async fn revoke_token(&self, token: &str) -> Result<(), RequestError> {
        self.revoke(&sha256_hex(token.as_bytes())).await
    }

    /// Revokes one token (logout).
    pub async fn revoke(&self, token_hash: &str) -> Result<(), RequestError> {
        Ok(self.db.delete_token(token_hash).await?)
    }

    /// Changes a password after checking the old one, and revokes every token of the user but `keep`.
    pub async fn change_password(
        &self,
        username: &str,
        old: &str,
        new: &str,
        keep: &str,
        from: IpAddr,
        device: [u8; 32],
    ) -> Result<(), RequestError> {
        validate::password(new)?;
        self.check_password(username, old, from, device).await?;
        let new_hash = self.hash(new).await?;
        self.db.set_password(username, &new_hash, keep).await?;
        tracing::info!(user = username, "password changed; other sessions revoked");
        Ok(())
    }

    /// Changes a display name.
    pub async fn set_display_name(&self, username: &str, display_name: &str) -> Result<(), RequestError> {
        validate::display_name(display_name)?;
        Ok(self.db.set_display_name(username, display_name, &search_key(username, display_name)).await?)
    }

    /// A token for `username`'s `device` (a device being linked, once its user confirmed on another one).
    pub async fn issue(&self, username: &str, device: [u8; 32]) -> Result<Issued, RequestError> {
        let token = hex::encode(random_bytes::<32>());
        let now = now_ms();
        let expires_at = now + self.token_ttl.as_millis() as i64;
        self.db.insert_token(&sha256_hex(token.as_bytes()), username, &hex::encode(device), now, expires_at).await?;
        Ok(Issued { token, expires_at })
    }

    async fn hash(&self, password: &str) -> Result<String, RequestError> {
        let _permit = self.hashing.acquire().await.map_err(|_| ErrorCode::Busy)?;
        let argon = self.argon.clone();
        let pw = password.to_string();
        tokio::task::spawn_blocking(move || argon.hash_password(pw.as_bytes()).map(|h| h.to_string()))
            .await
            .map_err(|e| RequestError::Hash(e.to_string()))?
            .map_err(|e| RequestError::Hash(e.to_string()))
    }

    /// Checks `username`'s password for a request that needs it again (resetting the account key), under
    /// the same limits as a login.
    pub async fn check_password(
        &self,
        username: &str,
        password: &str,
        from: IpAddr,
        device: [u8; 32],
    ) -> Result<(), RequestError> {
        let attempt = self
            .guard
            .lock()
            .begin(username, device, from, Instant::now())
            .map_err(|retry_after_secs| ErrorCode::RateLimited { retry_after_secs })?;
        let Some(hash) = self.db.password_hash(username).await? else {
            return Err(ErrorCode::UnknownUser.into());
        };
        if password.len() > validate::MAX_PASSWORD_BYTES || !self.verify(password, &hash).await? {
            return Err(ErrorCode::BadCredentials.into());
        }
        self.guard.lock().succeeded(&attempt, Instant::now());
        Ok(())
    }

    async fn verify(&self, password: &str, hash: &str) -> Result<bool, RequestError> {
        let _permit = self.hashing.acquire().await.map_err(|_| ErrorCode::Busy)?;
        let argon = self.argon.clone();
        let (pw, hash) = (password.to_string(), hash.to_string());
        tokio::task::spawn_blocking(move || argon.verify_password(pw.as_bytes(), hash.as_str()).is_ok())
            .await
            .map_err(|e| RequestError::Hash(e.to_string()))
    }
}

/// What user search matches against: lower-cased in Rust, so that all three databases compare the same way.
pub fn search_key(username: &str, display_name: &str) -> String {
    format!("{username}\n{}", display_name.to_lowercase())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    // The system RNG failing is not recoverable for a security service; ring documents it as practically
    // impossible on supported platforms.
    ring::rand::SystemRandom::new().fill(&mut b).expect("system random number generator failed");
    b
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}
