//! [`Meta`]: an instance's metadata, stored compactly.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

/// An instance's metadata: string keys to string values, sorted by key, in
/// one boxed slice. A `BTreeMap` allocates a whole node (over 500 bytes) for
/// a single entry, which at a million instances was more than a third of
/// the registry's memory; this takes 16 bytes plus 48 per entry (and the
/// strings). Reads like the map it replaces (`get`, iteration in key
/// order, serialization as a JSON object).
///
/// ```
/// use roster_registry::model::Meta;
/// let meta = Meta::from_iter([("zone".to_owned(), "b".to_owned()), ("az".to_owned(), "1".to_owned())]);
/// assert_eq!(meta.get("zone").map(String::as_str), Some("b"));
/// assert_eq!(meta.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["az", "zone"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Meta(Box<[(String, String)]>);

impl Meta {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Whether `key` is there.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Sets `key` to `value`; returns the value it had.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                let mut entries = std::mem::take(&mut self.0).into_vec();
                entries.insert(i, (key, value));
                self.0 = entries.into_boxed_slice();
                None
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same entries as a `BTreeMap` (the API's type).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

impl From<BTreeMap<String, String>> for Meta {
    fn from(map: BTreeMap<String, String>) -> Self {
        // Already sorted, keys unique.
        Meta(map.into_iter().collect())
    }
}

impl From<Meta> for BTreeMap<String, String> {
    fn from(meta: Meta) -> Self {
        meta.0.into_vec().into_iter().collect()
    }
}

impl FromIterator<(String, String)> for Meta {
    /// Sorted by key; of a key given twice the last value wins, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        BTreeMap::from_iter(iter).into()
    }
}

impl PartialEq<BTreeMap<String, String>> for Meta {
    fn eq(&self, other: &BTreeMap<String, String>) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a> IntoIterator for &'a Meta {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for Meta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_the_map_it_replaces() {
        let map = BTreeMap::from([
            ("zone".to_owned(), "eu-1a".to_owned()),
            ("version".to_owned(), "2".to_owned()),
            ("a".to_owned(), String::new()),
        ]);
        let meta = Meta::from(map.clone());
        assert_eq!(meta, map);
        assert_eq!(meta.len(), 3);
        for (k, v) in &map {
            assert_eq!(meta.get(k), Some(v));
        }
        assert_eq!(meta.get("zon"), None);
        assert!(!meta.contains_key("b"));
        assert_eq!(
            serde_json::to_string(&meta).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        assert_eq!(BTreeMap::from(meta.clone()), map);
        assert_eq!(meta.to_map(), map);
        let last_wins = Meta::from_iter([
            ("k".to_owned(), "1".to_owned()),
            ("k".to_owned(), "2".to_owned()),
        ]);
        assert_eq!(last_wins.get("k").map(String::as_str), Some("2"));
        assert!(Meta::default().is_empty());
        let mut grown = Meta::default();
        assert_eq!(grown.insert("b".into(), "1".into()), None);
        assert_eq!(grown.insert("a".into(), "2".into()), None);
        assert_eq!(grown.insert("b".into(), "3".into()), Some("1".into()));
        assert_eq!(
            grown,
            BTreeMap::from([("a".into(), "2".into()), ("b".into(), "3".into())])
        );
    }
}
