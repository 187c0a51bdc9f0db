//! One value — temporary credentials, an OAuth access token — kept until it is due for renewal,
//! then fetched again. Whoever fetches it decides when that is (a margin before its expiry, or
//! never for long-term keys); a value the service refused is forgotten at once.

use std::fmt;
use std::sync::{Mutex, MutexGuard};

pub struct Expiring<T> {
    current: Mutex<Option<Held<T>>>,
}

#[derive(Debug)]
struct Held<T> {
    value: T,
    /// When to fetch it again (epoch ms); `None`: never (long-term keys).
    renew_at_ms: Option<u64>,
}

impl<T> Default for Expiring<T> {
    fn default() -> Self {
        Expiring { current: Mutex::new(None) }
    }
}

/// As the mutex it wraps; the values' own `Debug` decides what shows (credentials and tokens
/// show redacted).
impl<T: fmt::Debug> fmt::Debug for Expiring<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.current, f)
    }
}

impl<T: Clone> Expiring<T> {
    /// The held value while `now_ms` is before its renewal time, else a new one from `fetch`,
    /// which returns it with its renewal time. A failed fetch leaves nothing held.
    pub fn get<E>(&self, now_ms: u64, fetch: impl FnOnce() -> Result<(T, Option<u64>), E>) -> Result<T, E> {
        let mut current = self.lock();
        if let Some(held) = current.as_ref() {
            if held.renew_at_ms.is_none_or(|renew_at| now_ms < renew_at) {
                return Ok(held.value.clone());
            }
        }
        let (value, renew_at_ms) = fetch()?;
        *current = Some(Held { value: value.clone(), renew_at_ms });
        Ok(value)
    }

    /// Drops the held value (the service refused it), so the next [`Expiring::get`] fetches.
    pub fn forget(&self) {
        *self.lock() = None;
    }

    /// Whether a value is held.
    pub fn is_held(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Held<T>>> {
        self.current.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_reused_until_its_renewal_time_and_forgotten_on_demand() {
        let cache = Expiring::default();
        let fetch = |value: &'static str, renew_at: Option<u64>| move || Ok::<_, ()>((value, renew_at));
        assert_eq!(cache.get(0, fetch("a", Some(10))), Ok("a"));
        assert_eq!(cache.get(9, fetch("b", Some(20))), Ok("a"));
        assert_eq!(cache.get(10, fetch("c", None)), Ok("c"));
        assert_eq!(cache.get(u64::MAX, fetch("d", None)), Ok("c"), "never renewed without a renewal time");
        cache.forget();
        assert!(!cache.is_held());
        assert_eq!(cache.get(0, || Err::<(&str, Option<u64>), _>("down")), Err("down"));
        assert!(!cache.is_held(), "a failed fetch holds nothing");
    }
}
