//! Interning of names the kernel compares: ENI ids, security-group sets, pods → small integers.
//!
//! Ids start at 1 (0 means "none" in the datapath) and are stable while their name is in use, so
//! that reloading a spec never renumbers what is already programmed. A released id (a pod that
//! left) is handed out again, lowest first, so ids stay below the maps' capacity under churn.

use std::{
    collections::{BTreeSet, HashMap},
    hash::Hash,
};

#[derive(Debug)]
pub struct Interner<K> {
    ids: HashMap<K, u32>,
    /// Index id - 1; `None` for a released id.
    names: Vec<Option<K>>,
    free: BTreeSet<u32>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Self { ids: HashMap::new(), names: Vec::new(), free: BTreeSet::new() }
    }
}

impl<K: Hash + Eq + Clone> Interner<K> {
    /// The id of `key`, assigning the lowest free one on first sight.
    pub fn id(&mut self, key: &K) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        let id = match self.free.pop_first() {
            Some(id) => {
                if let Some(slot) = self.names.get_mut(id as usize - 1) {
                    *slot = Some(key.clone());
                }
                id
            }
            None => {
                self.names.push(Some(key.clone()));
                self.names.len() as u32
            }
        };
        self.ids.insert(key.clone(), id);
        id
    }

    /// The id of `key` if it has one (never assigns).
    pub fn get(&self, key: &K) -> Option<u32> {
        self.ids.get(key).copied()
    }

    /// Frees `key`'s id for reuse; returns it.
    pub fn release(&mut self, key: &K) -> Option<u32> {
        let id = self.ids.remove(key)?;
        if let Some(slot) = self.names.get_mut(id as usize - 1) {
            *slot = None;
        }
        self.free.insert(id);
        Some(id)
    }

    pub fn name(&self, id: u32) -> Option<&K> {
        id.checked_sub(1).and_then(|i| self.names.get(i as usize)).and_then(Option::as_ref)
    }

    /// Every name with its id.
    pub fn iter(&self) -> impl Iterator<Item = (&K, u32)> {
        self.ids.iter().map(|(k, id)| (k, *id))
    }
}

/// A security-group set as the kernel sees it: sorted, without duplicates.
pub fn sg_set(groups: &[String]) -> Vec<String> {
    let mut set = groups.to_vec();
    set.sort();
    set.dedup();
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_one_and_are_stable() {
        let mut i = Interner::default();
        assert_eq!(i.id(&"eni-a".to_string()), 1);
        assert_eq!(i.id(&"eni-b".to_string()), 2);
        assert_eq!(i.id(&"eni-a".to_string()), 1);
        assert_eq!(i.name(2).map(String::as_str), Some("eni-b"));
        assert_eq!(i.name(0), None);
    }

    #[test]
    fn released_ids_are_reused_lowest_first() {
        let mut i = Interner::default();
        for n in 0..5 {
            i.id(&n);
        }
        assert_eq!(i.release(&1), Some(2));
        assert_eq!(i.release(&3), Some(4));
        assert_eq!(i.name(2), None);
        assert_eq!(i.id(&10), 2);
        assert_eq!(i.id(&11), 4);
        assert_eq!(i.id(&12), 6);
        assert_eq!(i.name(4), Some(&11));
        assert_eq!(i.id(&0), 1, "a name in use keeps its id");
    }

    #[test]
    fn sg_sets_are_order_and_duplicate_insensitive() {
        let mut i = Interner::default();
        let a = i.id(&sg_set(&["sg-2".into(), "sg-1".into()]));
        let b = i.id(&sg_set(&["sg-1".into(), "sg-2".into(), "sg-1".into()]));
        let c = i.id(&sg_set(&["sg-1".into()]));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
