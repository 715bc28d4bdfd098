//! Account helpers shared by the web forms and the `seed-users` command: password hashing
//! (argon2, always off the async runtime) and generated names (the `fake` crate).

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use fake::Fake;
use fake::faker::internet::en::{SafeEmail, Username as FakeUsername};

use crate::chat::names::Username;
use crate::store::{Store, StoreError};

/// Hashes a password on a blocking thread: argon2 takes tens of milliseconds of CPU, which
/// would otherwise stall every socket served by the same runtime thread.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
    })
    .await?
}

/// Checks a password against a stored hash, on a blocking thread. With no hash (unknown
/// user, or a guest) it still spends the same work, so timing does not reveal which
/// usernames exist.
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let stored = hash.as_deref().unwrap_or_else(|| dummy_hash());
        let Ok(parsed) = PasswordHash::new(stored) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && hash.is_some()
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"not a real password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// A plausible username (`fake`), made valid and, with a numeric suffix, likely unique.
pub fn generated_username() -> Username {
    let base: String = FakeUsername().fake();
    let mut name: String = base
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(Username::MAX_CHARS - 5)
        .collect();
    if name.len() < Username::MIN_CHARS {
        name = "guest".into();
    }
    let name = format!("{name}{:04}", rand::random::<u16>() % 10_000);
    Username::parse(&name).unwrap_or_else(|_| {
        Username::parse(&format!("guest{:04}", rand::random::<u16>() % 10_000))
            .expect("letters and digits make a valid name")
    })
}

/// Creates a guest account with a generated name, retrying on the rare name collision.
pub async fn create_guest(store: &Store) -> Result<crate::model::User, StoreError> {
    let mut attempts = 0;
    loop {
        match store.create_user(&generated_username(), None, None).await {
            Err(StoreError::Conflict) if attempts < 5 => attempts += 1,
            other => return other,
        }
    }
}

/// `wirechat seed-users`: `count` users with generated names and e-mails. They share one
/// password hash, computed once, so seeding thousands takes seconds, not minutes.
pub async fn seed_users(store: &Store, count: u32, password: &str) -> anyhow::Result<u64> {
    let hash = hash_password(password.to_owned()).await?;
    let mut created = 0;
    while created < u64::from(count) {
        let batch: Vec<(Username, String)> = (created..u64::from(count))
            .map(|_| (generated_username(), SafeEmail().fake()))
            .collect();
        created += store.create_users_bulk(&batch, &hash).await?;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid() {
        for _ in 0..200 {
            let name = generated_username();
            assert!(Username::parse(name.as_str()).is_ok(), "{name:?}");
        }
    }

    #[tokio::test]
    async fn passwords_verify() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(verify_password("correct horse".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong".into(), Some(hash)).await);
        assert!(!verify_password("anything".into(), None).await);
    }
}
