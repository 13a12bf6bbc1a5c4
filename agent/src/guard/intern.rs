//! Interning of names the kernel compares: ENI ids, security-group sets, pods → small integers.
//!
//! Ids start at 1 (0 means "none" in the datapath) and are stable for the life of the agent, so
//! that reloading a spec never renumbers what is already programmed.

use std::{collections::HashMap, hash::Hash};

#[derive(Debug)]
pub struct Interner<K> {
    ids: HashMap<K, u32>,
    names: Vec<K>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Self { ids: HashMap::new(), names: Vec::new() }
    }
}

impl<K: Hash + Eq + Clone> Interner<K> {
    /// The id of `key`, assigning the next one on first sight.
    pub fn id(&mut self, key: &K) -> u32 {
        if let Some(id) = self.ids.get(key) {
            return *id;
        }
        self.names.push(key.clone());
        let id = self.names.len() as u32;
        self.ids.insert(key.clone(), id);
        id
    }

    pub fn name(&self, id: u32) -> Option<&K> {
        id.checked_sub(1).and_then(|i| self.names.get(i as usize))
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
    fn sg_sets_are_order_and_duplicate_insensitive() {
        let mut i = Interner::default();
        let a = i.id(&sg_set(&["sg-2".into(), "sg-1".into()]));
        let b = i.id(&sg_set(&["sg-1".into(), "sg-2".into(), "sg-1".into()]));
        let c = i.id(&sg_set(&["sg-1".into()]));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
