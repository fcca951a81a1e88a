//! What the leader has already acted on, so that a repeat is not acted on again.
//!
//! A watch delivers an object again when only its status or metadata changed (the controller's
//! own status writes come back this way) and delivers everything again after each re-list;
//! [`Specs`] tells a real change from a repeat. A pod whose attachment is refused is tried again
//! whenever what it waits for may have changed; [`Refusals`] reports the same refusal once, and
//! again only after [`REFUSAL_REPEAT`] (the event's series count then grows, at that rate).

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::engine::Event;

/// How often the same refusal of one pod is reported again.
pub const REFUSAL_REPEAT: Duration = Duration::from_mins(5);

/// The last spec acted on, per object (`kind/namespace/name`).
#[derive(Debug, Default)]
pub struct Specs(HashMap<String, Value>);

impl Specs {
    /// Records `spec` for `key`; whether it differs from the one recorded (a first sight is a
    /// change).
    pub fn changed(&mut self, key: &str, spec: &Value) -> bool {
        if self.0.get(key) == Some(spec) {
            return false;
        }
        self.0.insert(key.to_owned(), spec.clone());
        true
    }

    /// Forgets `key` (the object is gone).
    pub fn forget(&mut self, key: &str) {
        self.0.remove(key);
    }

    /// The keys recorded for objects of `kind`.
    pub fn keys(&self, kind: &str) -> Vec<String> {
        let prefix = format!("{kind}/");
        self.0
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

/// The re-lists in progress, per kind, and the objects each has listed so far. A watch that
/// lost its place lists everything again (`Init`, one `InitApply` per object, `InitDone`) and
/// sends no `Delete` for what was deleted meanwhile: whatever the re-list did not list is gone.
#[derive(Debug, Default)]
pub struct Relists(HashMap<String, BTreeSet<String>>);

impl Relists {
    /// A re-list of `kind` starts.
    pub fn begin(&mut self, kind: &str) {
        self.0.insert(kind.to_owned(), BTreeSet::new());
    }

    /// The object `key` (`kind/namespace/name`) was listed.
    pub fn saw(&mut self, key: &str) {
        let kind = key.split('/').next().unwrap_or_default();
        if let Some(seen) = self.0.get_mut(kind) {
            seen.insert(key.to_owned());
        }
    }

    /// The re-list of `kind` is done: the keys `specs` knows of that it did not list.
    pub fn end(&mut self, kind: &str, specs: &Specs) -> Vec<String> {
        let Some(seen) = self.0.remove(kind) else {
            return Vec::new();
        };
        specs
            .keys(kind)
            .into_iter()
            .filter(|k| !seen.contains(k))
            .collect()
    }
}

/// What a refusal says: each event's reason and message.
type Said = Vec<(&'static str, String)>;

/// The refusals last reported per pod (by UID), and when.
#[derive(Debug, Default)]
pub struct Refusals(HashMap<String, (Said, Instant)>);

impl Refusals {
    /// The events of a pod's outcome that are to be reported at `now`: all of them when they
    /// differ from those last reported for it or those were reported [`REFUSAL_REPEAT`] ago;
    /// none otherwise. An outcome without events clears the pod's record.
    pub fn to_report(&mut self, uid: &str, events: Vec<Event>, now: Instant) -> Vec<Event> {
        if events.is_empty() {
            self.0.remove(uid);
            return events;
        }
        let key: Vec<(&'static str, String)> = events
            .iter()
            .map(|e| (e.reason, e.message.clone()))
            .collect();
        if let Some((last, at)) = self.0.get(uid)
            && *last == key
            && now.duration_since(*at) < REFUSAL_REPEAT
        {
            return Vec::new();
        }
        self.0.insert(uid.to_owned(), (key, now));
        events
    }

    /// Forgets the pod `uid` (it is gone).
    pub fn forget(&mut self, uid: &str) {
        self.0.remove(uid);
    }

    /// Keeps only the pods `keep` says are alive.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|uid, _| keep(uid));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refusal(message: &str) -> Vec<Event> {
        vec![Event {
            warning: true,
            reason: "AcquireAddressFailed",
            message: message.to_owned(),
        }]
    }

    #[test]
    fn a_spec_seen_again_is_not_a_change() {
        let mut specs = Specs::default();
        assert!(specs.changed("Subnet//a", &json!({"cidrBlock": "10.0.0.0/24"})));
        assert!(!specs.changed("Subnet//a", &json!({"cidrBlock": "10.0.0.0/24"})));
        assert!(specs.changed("Subnet//a", &json!({"cidrBlock": "10.0.1.0/24"})));
        specs.forget("Subnet//a");
        assert!(specs.changed("Subnet//a", &json!({"cidrBlock": "10.0.1.0/24"})));
    }

    #[test]
    fn what_a_relist_did_not_list_is_gone() {
        let mut specs = Specs::default();
        for key in ["Subnet//a", "Subnet//b", "Vpc//a"] {
            specs.changed(key, &json!({}));
        }
        let mut relists = Relists::default();
        relists.saw("Subnet//a");
        assert!(
            relists.end("Subnet", &specs).is_empty(),
            "no re-list was running"
        );
        relists.begin("Subnet");
        relists.saw("Subnet//a");
        relists.saw("Vpc//a");
        assert_eq!(relists.end("Subnet", &specs), ["Subnet//b"]);
    }

    #[test]
    fn the_same_refusal_is_reported_once_then_again_only_after_the_repeat_interval() {
        let mut refusals = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(refusals.to_report("p", refusal("taken"), t0).len(), 1);
        let soon = t0 + Duration::from_secs(30);
        assert!(refusals.to_report("p", refusal("taken"), soon).is_empty());
        let later = t0 + REFUSAL_REPEAT;
        assert_eq!(refusals.to_report("p", refusal("taken"), later).len(), 1);
    }

    #[test]
    fn a_different_refusal_or_a_success_in_between_is_reported_at_once() {
        let mut refusals = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(refusals.to_report("p", refusal("taken"), t0).len(), 1);
        assert_eq!(refusals.to_report("p", refusal("no subnet"), t0).len(), 1);
        assert!(refusals.to_report("p", Vec::new(), t0).is_empty());
        assert_eq!(refusals.to_report("p", refusal("no subnet"), t0).len(), 1);
        assert_eq!(refusals.to_report("q", refusal("no subnet"), t0).len(), 1);
    }
}
