//! A small map from block name to value, stored as a sorted vector.
//!
//! Decisions produce a handful of entries per device and are made millions of
//! times; a sorted `Vec` builds, iterates and drops far faster than a
//! `BTreeMap` at that size, and keeps the same ordered, deterministic output.

use std::ops::Index;

use super::ids::BlockName;

/// Entries ordered by block name, at most one per block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockMap<V> {
    entries: Vec<(BlockName, V)>,
}

impl<V> Default for BlockMap<V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<V> BlockMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds from entries already in strictly increasing block order, as
    /// produced by walking a `BTreeMap`; falls back to sorting (last value for
    /// a duplicated block wins) otherwise.
    pub fn from_sorted(mut entries: Vec<(BlockName, V)>) -> Self {
        let sorted = entries.windows(2).all(|w| w[0].0 < w[1].0);
        if !sorted {
            entries.reverse();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|later, earlier| later.0 == earlier.0);
        }
        Self { entries }
    }

    /// Builds from entries the caller guarantees are in strictly increasing
    /// block order (checked in debug builds): no comparisons at all, for the
    /// decision hot path whose outputs are produced in order.
    pub(crate) fn from_sorted_unchecked(entries: Vec<(BlockName, V)>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        Self { entries }
    }

    fn position(&self, block: &BlockName) -> Result<usize, usize> {
        self.entries.binary_search_by(|(n, _)| n.cmp(block))
    }

    pub fn get(&self, block: &BlockName) -> Option<&V> {
        self.position(block).ok().map(|i| &self.entries[i].1)
    }

    pub fn contains_key(&self, block: &BlockName) -> bool {
        self.position(block).is_ok()
    }

    /// Inserts or replaces, keeping the order. Returns the previous value.
    pub fn insert(&mut self, block: BlockName, value: V) -> Option<V> {
        match self.position(&block) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (block, value));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&BlockName, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &BlockName> {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn into_keys(self) -> impl ExactSizeIterator<Item = BlockName> {
        self.entries.into_iter().map(|(k, _)| k)
    }
}

impl<V> Index<&BlockName> for BlockMap<V> {
    type Output = V;
    fn index(&self, block: &BlockName) -> &V {
        match self.get(block) {
            Some(v) => v,
            None => panic!("block {block} not in map"),
        }
    }
}

impl<V> FromIterator<(BlockName, V)> for BlockMap<V> {
    fn from_iter<T: IntoIterator<Item = (BlockName, V)>>(iter: T) -> Self {
        Self::from_sorted(iter.into_iter().collect())
    }
}

impl<V> IntoIterator for BlockMap<V> {
    type Item = (BlockName, V);
    type IntoIter = std::vec::IntoIter<(BlockName, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a, V> IntoIterator for &'a BlockMap<V> {
    type Item = (&'a BlockName, &'a V);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (BlockName, V)>,
        fn(&'a (BlockName, V)) -> (&'a BlockName, &'a V),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> BlockName {
        BlockName::new(s).unwrap()
    }

    #[test]
    fn unsorted_input_is_sorted_and_the_last_duplicate_wins() {
        let m: BlockMap<i32> = [(b("c"), 1), (b("a"), 2), (b("c"), 3)]
            .into_iter()
            .collect();
        assert_eq!(
            m.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
            vec![("a", 2), ("c", 3)]
        );
    }

    #[test]
    fn insert_keeps_order_and_replaces() {
        let mut m = BlockMap::new();
        assert_eq!(m.insert(b("b"), 1), None);
        assert_eq!(m.insert(b("a"), 2), None);
        assert_eq!(m.insert(b("b"), 3), Some(1));
        assert_eq!(
            m.keys().map(BlockName::as_str).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(m[&b("b")], 3);
        assert!(m.contains_key(&b("a")) && !m.contains_key(&b("z")));
        assert_eq!(m.len(), 2);
        assert!(!m.is_empty());
        assert_eq!(m.values().copied().collect::<Vec<_>>(), vec![2, 3]);
    }
}
