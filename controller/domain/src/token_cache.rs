//! Owners' API tokens checked from memory for a few seconds.
//!
//! Scripts and dashboards call the owner API many times a second with the same token;
//! each call looking its token up in the database made an owner's `GET /api/v1/me` a
//! tenth of what actix-web serves without one (`bench http`). A token found valid is
//! remembered for `ttl_us`, then checked again: a token revoked on another replica (or
//! by hand in the database) is refused within that time, and the replica that revoked
//! it forgets the owner's tokens at once ([`TokenCache::forget_owner`]). Owners never
//! change once created (no rename, no deletion), so nothing else can go stale. Tokens
//! nobody holds are not remembered: each costs its query, as before.
//!
//! Bounded: at `capacity` tokens, the expired ones go; if none has expired, all go (the
//! next call of each costs one query).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::accounts::{hash_secret, Owner};
use crate::clock::Micros;

struct Remembered {
    owner: Owner,
    checked_at: Micros,
}

/// Tokens recently found valid, by their hash.
pub struct TokenCache {
    ttl_us: Micros,
    capacity: usize,
    tokens: Mutex<HashMap<String, Remembered>>,
}

impl TokenCache {
    pub fn new(ttl_us: Micros, capacity: usize) -> TokenCache {
        TokenCache {
            ttl_us,
            capacity: capacity.max(1),
            tokens: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Remembered>> {
        // Entries are replaced whole: a panic elsewhere leaves nothing half-written.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The owner `token` was found valid for within the last `ttl_us`, if any.
    pub fn owner(&self, token: &str, now: Micros) -> Option<Owner> {
        if self.ttl_us <= 0 {
            return None;
        }
        let hash = hash_secret(token);
        let tokens = self.lock();
        let found = tokens.get(&hash)?;
        (now - found.checked_at < self.ttl_us).then(|| found.owner.clone())
    }

    /// Remembers that `token` authenticated `owner` at `now`.
    pub fn remember(&self, token: &str, owner: &Owner, now: Micros) {
        if self.ttl_us <= 0 {
            return;
        }
        let hash = hash_secret(token);
        let mut tokens = self.lock();
        if !tokens.contains_key(&hash) && tokens.len() >= self.capacity {
            tokens.retain(|_, r| now - r.checked_at < self.ttl_us);
            if tokens.len() >= self.capacity {
                tokens.clear();
            }
        }
        tokens.insert(
            hash,
            Remembered {
                owner: owner.clone(),
                checked_at: now,
            },
        );
    }

    /// Forgets every token of `owner_id` (one of them was just revoked here).
    pub fn forget_owner(&self, owner_id: &str) {
        self.lock().retain(|_, r| r.owner.id != owner_id);
    }

    /// Tokens remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Owner {
        Owner {
            id: id.into(),
            name: format!("owner {id}"),
            token_hash: hash_secret(&format!("lmo_{id}")),
            created_at: 0,
        }
    }

    const S: Micros = 1_000_000;

    #[test]
    fn a_token_is_trusted_for_the_ttl_then_checked_again() {
        let cache = TokenCache::new(2 * S, 10);
        assert!(cache.owner("lmo_a", 0).is_none(), "never seen");
        cache.remember("lmo_a", &owner("a"), 10 * S);
        assert_eq!(cache.owner("lmo_a", 10 * S).unwrap().id, "a");
        assert_eq!(cache.owner("lmo_a", 12 * S - 1).unwrap().id, "a");
        assert!(cache.owner("lmo_a", 12 * S).is_none(), "checked again");
        assert!(cache.owner("lmo_b", 10 * S).is_none(), "another token");
    }

    #[test]
    fn forgetting_an_owner_forgets_only_its_tokens() {
        let cache = TokenCache::new(2 * S, 10);
        cache.remember("lmo_a", &owner("a"), 0);
        cache.remember("lmo_a2", &owner("a"), 0);
        cache.remember("lmo_b", &owner("b"), 0);
        cache.forget_owner("a");
        assert!(cache.owner("lmo_a", 0).is_none());
        assert!(cache.owner("lmo_a2", 0).is_none());
        assert_eq!(cache.owner("lmo_b", 0).unwrap().id, "b");
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = TokenCache::new(2 * S, 3);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            cache.remember(&format!("lmo_{id}"), &owner(id), i as Micros * S);
        }
        // At 2.5 s "a" (seen at 0) has expired: it makes room.
        cache.remember("lmo_d", &owner("d"), 2 * S + S / 2);
        assert_eq!(cache.len(), 3);
        assert!(cache.owner("lmo_a", 2 * S + S / 2).is_none());
        assert!(cache.owner("lmo_b", 2 * S + S / 2).is_some());
        // None expired: all go, and the newcomer stays.
        cache.remember("lmo_e", &owner("e"), 2 * S + S / 2);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.owner("lmo_e", 2 * S + S / 2).unwrap().id, "e");
        // Remembering a token again does not count twice.
        cache.remember("lmo_e", &owner("e"), 3 * S);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let cache = TokenCache::new(0, 3);
        cache.remember("lmo_a", &owner("a"), 0);
        assert!(cache.owner("lmo_a", 0).is_none());
        assert!(cache.is_empty());
    }
}
