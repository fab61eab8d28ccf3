//! A topic's local subscribers, by session number (generic over what is
//! kept of each, the registry's `Subscriber`, so this module imports
//! nothing of the hub).
//!
//! **Why not a `HashMap` alone.** Most topics on a node have one
//! subscriber (a topic per user: docs/scaling.md). A `HashMap` given its
//! first entry allocates a table of four buckets, about 250 bytes for one
//! of the registry's subscribers; a vector of one is 56. Up to [`FEW`]
//! subscribers a vector is searched in place (a few comparisons, where a
//! table hashes the key; a fan-out walks it without a table's gaps); the
//! next one moves them into a table, so a topic with thousands still adds
//! and removes in constant time. Measured with `loadtest/peruser.sh`
//! (docs/benchmarks.md: about 590 bytes less per connection with this and
//! the registry's freed confirmation channel together).
//!
//! **Invariants.** Session numbers are unique within a topic. `Few` holds
//! at most [`FEW`] entries. A topic that grew to `Many` stays a table until
//! the registry drops its entry (when the last subscriber leaves).

use std::collections::HashMap;

/// The most subscribers kept in a vector.
const FEW: usize = 8;

/// The subscribers of one topic: few in a vector, many in a table.
pub(super) enum Subscribers<S> {
    Few(Vec<(u64, S)>),
    Many(HashMap<u64, S>),
}

impl<S> Subscribers<S> {
    pub(super) fn new() -> Subscribers<S> {
        Subscribers::Few(Vec::new())
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Subscribers::Few(v) => v.len(),
            Subscribers::Many(m) => m.len(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut S> {
        match self {
            Subscribers::Few(v) => v.iter_mut().find(|(k, _)| *k == id).map(|(_, s)| s),
            Subscribers::Many(m) => m.get_mut(&id),
        }
    }

    /// Adds session `id`, which must not be subscribed yet.
    pub(super) fn insert(&mut self, id: u64, sub: S) {
        match self {
            Subscribers::Few(v) if v.len() < FEW => {
                debug_assert!(v.iter().all(|(k, _)| *k != id));
                if v.capacity() == 0 {
                    // Exactly one: the common case stays 56 bytes.
                    v.reserve_exact(1);
                }
                v.push((id, sub));
            }
            Subscribers::Few(v) => {
                let mut m: HashMap<u64, S> = std::mem::take(v).into_iter().collect();
                m.insert(id, sub);
                *self = Subscribers::Many(m);
            }
            Subscribers::Many(m) => {
                m.insert(id, sub);
            }
        }
    }

    pub(super) fn remove(&mut self, id: u64) -> Option<S> {
        match self {
            Subscribers::Few(v) => {
                let i = v.iter().position(|(k, _)| *k == id)?;
                Some(v.swap_remove(i).1)
            }
            Subscribers::Many(m) => m.remove(&id),
        }
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &S> {
        let (few, many) = match self {
            Subscribers::Few(v) => (Some(v.iter().map(|(_, s)| s)), None),
            Subscribers::Many(m) => (None, Some(m.values())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut S> {
        let (few, many) = match self {
            Subscribers::Few(v) => (Some(v.iter_mut().map(|(_, s)| s)), None),
            Subscribers::Many(m) => (None, Some(m.values_mut())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber: its session number and a flag, as the registry keeps
    /// one (a 48-byte value there).
    #[derive(Debug, PartialEq)]
    struct Sub {
        id: u64,
        presence: bool,
    }

    fn sub(id: u64) -> Sub {
        Sub {
            id,
            presence: false,
        }
    }

    fn ids(s: &Subscribers<Sub>) -> Vec<u64> {
        let mut ids: Vec<u64> = s.values().map(|s| s.id).collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn one_subscriber_is_a_vector_of_one() {
        let mut s = Subscribers::new();
        s.insert(7, sub(7));
        match &s {
            Subscribers::Few(v) => assert_eq!(v.capacity(), 1),
            Subscribers::Many(_) => panic!("one subscriber in a table"),
        }
        assert_eq!(s.len(), 1);
        assert!(s.get_mut(7).is_some());
        assert!(s.get_mut(8).is_none());
        assert!(s.remove(8).is_none());
        assert_eq!(s.remove(7), Some(sub(7)));
        assert!(s.is_empty());
    }

    #[test]
    fn grows_into_a_table_past_few_and_keeps_every_subscriber() {
        let mut s = Subscribers::new();
        for id in 0..FEW as u64 {
            s.insert(id, sub(id));
        }
        assert!(matches!(s, Subscribers::Few(_)));
        s.insert(100, sub(100));
        assert!(matches!(s, Subscribers::Many(_)));
        let mut want: Vec<u64> = (0..FEW as u64).collect();
        want.push(100);
        assert_eq!(ids(&s), want);
        for sub in s.values_mut() {
            sub.presence = true;
        }
        assert!(s.values().all(|s| s.presence));
        assert_eq!(s.remove(3).map(|s| s.id), Some(3));
        assert!(s.get_mut(3).is_none());
        assert_eq!(s.len(), FEW);
    }

    #[test]
    fn removing_from_the_middle_keeps_the_others() {
        let mut s = Subscribers::new();
        for id in 1..=4 {
            s.insert(id, sub(id));
        }
        s.remove(2);
        assert_eq!(ids(&s), vec![1, 3, 4]);
        if let Some(s) = s.get_mut(4) {
            s.presence = true;
        }
        assert!(s.values().any(|s| s.id == 4 && s.presence));
    }
}
