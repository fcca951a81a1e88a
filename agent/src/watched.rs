//! Objects of one kind as a watch last delivered them, read into what the agent needs of each:
//! the followers of security groups and of routing keep theirs here.
//!
//! A watch (re)starts with a full list; an object deleted while it was away disappears when that
//! list ends. Nothing counts as changed before the first list has been read, so a follower never
//! acts on half a picture.

use std::collections::BTreeMap;

use kube::{api::DynamicObject, runtime::watcher};

/// The objects as read, by name.
#[derive(Debug)]
pub struct Watched<T> {
    /// By name.
    pub items: BTreeMap<String, T>,
    relisted: Option<Vec<String>>,
    /// A full list has been read.
    pub ready: bool,
}

impl<T> Default for Watched<T> {
    fn default() -> Watched<T> {
        Watched {
            items: BTreeMap::new(),
            relisted: None,
            ready: false,
        }
    }
}

impl<T: PartialEq> Watched<T> {
    /// Takes a watch event, reading objects with `read` (`None`: keep what was read of the
    /// object before); whether what is held changed, counting from the end of the first list.
    pub fn take(
        &mut self,
        event: watcher::Event<DynamicObject>,
        read: impl Fn(&DynamicObject) -> Option<T>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisted = Some(Vec::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                if let Some(seen) = &mut self.relisted {
                    seen.push(name_of(&obj));
                }
                self.apply(&obj, read);
                false
            }
            watcher::Event::InitDone => {
                let seen = self.relisted.take().unwrap_or_default();
                self.items.retain(|name, _| seen.contains(name));
                self.ready = true;
                true
            }
            watcher::Event::Apply(obj) => self.apply(&obj, read) && self.ready,
            watcher::Event::Delete(obj) => {
                self.items.remove(&name_of(&obj)).is_some() && self.ready
            }
        }
    }

    fn apply(&mut self, obj: &DynamicObject, read: impl Fn(&DynamicObject) -> Option<T>) -> bool {
        let Some(item) = read(obj) else {
            return false;
        };
        let name = name_of(obj);
        if self.items.get(&name) == Some(&item) {
            return false;
        }
        self.items.insert(name, item);
        true
    }
}

fn name_of(obj: &DynamicObject) -> String {
    obj.metadata.name.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(name: &str, value: u32) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Thing", "metadata": {"name": name}, "value": value,
        }))
        .expect("an object")
    }

    fn value(obj: &DynamicObject) -> Option<u32> {
        obj.data["value"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v != 0)
    }

    #[test]
    fn nothing_changes_before_the_first_list_ends_and_an_unreadable_object_keeps_what_was_read() {
        let mut w = Watched::default();
        assert!(!w.take(watcher::Event::Init, value));
        assert!(!w.take(watcher::Event::InitApply(object("a", 1)), value));
        assert!(w.take(watcher::Event::InitDone, value));
        assert!(!w.take(watcher::Event::Apply(object("a", 0)), value));
        assert_eq!(w.items["a"], 1);
        assert!(
            !w.take(watcher::Event::Apply(object("a", 1)), value),
            "same as read"
        );
        assert!(w.take(watcher::Event::Apply(object("a", 2)), value));
        assert!(w.take(watcher::Event::Delete(object("a", 2)), value));
        assert!(w.items.is_empty());
    }

    #[test]
    fn an_object_deleted_while_the_watch_was_away_goes_at_the_end_of_the_relist() {
        let mut w = Watched::default();
        w.take(watcher::Event::Init, value);
        w.take(watcher::Event::InitApply(object("old", 1)), value);
        w.take(watcher::Event::InitDone, value);
        w.take(watcher::Event::Init, value);
        w.take(watcher::Event::InitApply(object("new", 1)), value);
        assert!(w.take(watcher::Event::InitDone, value));
        assert_eq!(w.items.keys().collect::<Vec<_>>(), ["new"]);
    }
}
