//! A set that is a short vector while it is small.
//!
//! The registry and the in-memory broker keep per-connection and per-user sets that nearly
//! always hold one item or a few: a user's sessions, a session's rooms. An empty `HashSet` is
//! 48 bytes inline and its first insert allocates a table of about 100 bytes; with tens of
//! thousands of connections that is a noticeable share of each one's memory (BENCHMARKS.md,
//! issue 13). This set is 24 bytes inline, holds one item inline and a few more in a vector
//! grown one slot at a time; past [`SPILL`] items it becomes a (boxed) hash set, so a user with
//! thousands of sessions is never scanned linearly.

use std::borrow::Borrow;
use std::collections::{hash_set, HashSet};
use std::hash::Hash;

/// Items kept in the vector before the set turns into a hash set.
const SPILL: usize = 16;

/// A set of `T`: nothing allocated for none or one item, a vector up to [`SPILL`] items, a
/// hash set beyond.
#[derive(Debug, Clone, Default)]
pub(crate) enum SmallSet<T> {
    /// No items.
    #[default]
    Empty,
    /// One item, inline: the usual case (a user with one session), with no allocation.
    One(T),
    /// A few items, unordered, no duplicates.
    Few(Vec<T>),
    /// Many items. Boxed on purpose (so the set stays 24 bytes inline): the rare large set
    /// pays one more allocation, every small one saves 24 bytes in its map's table.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<T>>),
}

impl<T: Eq + Hash> SmallSet<T> {
    /// Adds `item`; `false` if it was there already.
    pub(crate) fn insert(&mut self, item: T) -> bool {
        match self {
            SmallSet::Empty => *self = SmallSet::One(item),
            SmallSet::One(first) => {
                if *first == item {
                    return false;
                }
                let SmallSet::One(first) = std::mem::take(self) else {
                    unreachable!("matched above")
                };
                let mut items = Vec::with_capacity(2);
                items.extend([first, item]);
                *self = SmallSet::Few(items);
            }
            SmallSet::Few(items) => {
                if items.contains(&item) {
                    return false;
                }
                if items.len() < SPILL {
                    // One slot at a time: most of these sets never grow past a few items.
                    items.reserve_exact(1);
                    items.push(item);
                } else {
                    let mut set: HashSet<T> = items.drain(..).collect();
                    set.insert(item);
                    *self = SmallSet::Many(Box::new(set));
                }
            }
            SmallSet::Many(set) => return set.insert(item),
        }
        true
    }

    /// Removes `item`; `false` if it was not there.
    pub(crate) fn remove<Q>(&mut self, item: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallSet::Empty => false,
            SmallSet::One(only) => {
                if (*only).borrow() != item {
                    return false;
                }
                *self = SmallSet::Empty;
                true
            }
            SmallSet::Few(items) => match items.iter().position(|i| i.borrow() == item) {
                Some(at) => {
                    items.swap_remove(at);
                    if items.len() == 1 {
                        if let Some(last) = items.pop() {
                            *self = SmallSet::One(last);
                        }
                    }
                    true
                }
                None => false,
            },
            SmallSet::Many(set) => set.remove(item),
        }
    }

    /// Whether `item` is in the set.
    pub(crate) fn contains<Q>(&self, item: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallSet::Empty => false,
            SmallSet::One(only) => only.borrow() == item,
            SmallSet::Few(items) => items.iter().any(|i| i.borrow() == item),
            SmallSet::Many(set) => set.contains(item),
        }
    }
}

impl<T> SmallSet<T> {
    /// Items in the set.
    pub(crate) fn len(&self) -> usize {
        match self {
            SmallSet::Empty => 0,
            SmallSet::One(_) => 1,
            SmallSet::Few(items) => items.len(),
            SmallSet::Many(set) => set.len(),
        }
    }

    /// Whether the set is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The items, in no particular order.
    pub(crate) fn iter(&self) -> Iter<'_, T> {
        match self {
            SmallSet::Empty => Iter::Few([].iter()),
            SmallSet::One(only) => Iter::Few(std::slice::from_ref(only).iter()),
            SmallSet::Few(items) => Iter::Few(items.iter()),
            SmallSet::Many(set) => Iter::Many(set.iter()),
        }
    }
}

/// The items of a [`SmallSet`].
pub(crate) enum Iter<'a, T> {
    Few(std::slice::Iter<'a, T>),
    Many(hash_set::Iter<'a, T>),
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        match self {
            Iter::Few(items) => items.next(),
            Iter::Many(items) => items.next(),
        }
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_set_on_both_sides_of_the_spill() {
        let mut set = SmallSet::default();
        let mut model = HashSet::new();
        // Up past the spill, down to empty, and up again.
        let ops = (0..40u32)
            .map(|i| (true, i % 25))
            .chain((0..40).map(|i| (false, i % 30)))
            .chain((0..20).map(|i| (true, i * 3 % 7)));
        for (add, item) in ops {
            if add {
                assert_eq!(set.insert(item), model.insert(item), "insert {item}");
            } else {
                assert_eq!(set.remove(&item), model.remove(&item), "remove {item}");
            }
            assert_eq!(set.len(), model.len());
            assert_eq!(set.is_empty(), model.is_empty());
            for probe in 0..30 {
                assert_eq!(
                    set.contains(&probe),
                    model.contains(&probe),
                    "contains {probe}"
                );
            }
            let mut items: Vec<u32> = set.iter().copied().collect();
            items.sort_unstable();
            let mut want: Vec<u32> = model.iter().copied().collect();
            want.sort_unstable();
            assert_eq!(items, want);
            if set.len() > SPILL {
                assert!(matches!(set, SmallSet::Many(_)), "spills past {SPILL}");
            }
        }
    }

    #[test]
    fn one_item_is_inline_and_borrowed_lookups_work() {
        let mut set: SmallSet<String> = SmallSet::default();
        assert!(set.insert("a-1".to_owned()));
        assert!(!set.insert("a-1".to_owned()));
        assert!(
            matches!(set, SmallSet::One(_)),
            "one item allocates nothing"
        );
        assert!(set.insert("a-2".to_owned()));
        assert!(set.remove("a-1"));
        assert!(matches!(set, SmallSet::One(_)), "back to one item");
        assert!(set.contains("a-2"));
        assert!(set.remove("a-2"));
        assert!(set.is_empty());
        assert!(matches!(set, SmallSet::Empty));
        // An id, or a name behind an `Arc`, fits beside the vector: 24 bytes in a map's table.
        assert_eq!(std::mem::size_of::<SmallSet<u64>>(), 24);
        assert_eq!(std::mem::size_of::<SmallSet<std::sync::Arc<str>>>(), 24);
    }
}
