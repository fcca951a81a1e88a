//! OVN ports held by another owner: a pod whose port name (`<pod>.<namespace>.<provider>`) is
//! a Logical_Switch_Port without Sidelane's marker gets a Warning event and the
//! [`PORTS_HELD_ANNOTATION`] mark, written with its allocation, so the agent refuses to plug it
//! (the address annotated would disagree with that port); the mark goes, with a Normal event,
//! once the row is gone or Sidelane's.

use std::collections::{BTreeMap, HashMap};

use sidelane_api::annotations::PORTS_HELD_ANNOTATION;

use crate::{
    engine::{Event, PodOutcome, ip_name},
    ipam::PodRef,
};

/// Port name → a description of the row of another owner that holds it.
pub type Held = BTreeMap<String, String>;

/// The marks written, per pod UID: annotation prefix → why.
#[derive(Default)]
pub struct Marks {
    marked: HashMap<String, BTreeMap<String, String>>,
}

impl Marks {
    /// A pod's outcome is about to be written: marks the OVN attachments it allocates now whose
    /// port is held, in the same patch (the agent never sees the allocation without the mark).
    pub fn on_allocation(&mut self, pod: &PodRef, outcome: &mut PodOutcome, held: &Held) {
        if held.is_empty() {
            return;
        }
        let prefixes: Vec<String> = outcome
            .annotations
            .keys()
            .filter_map(|k| k.strip_suffix(".kubernetes.io/mac_address"))
            .map(str::to_owned)
            .collect();
        let mut now = self.marked.get(&pod.uid).cloned().unwrap_or_default();
        for prefix in prefixes {
            if let Some(why) = held.get(&ip_name(&pod.name, &pod.namespace, &prefix)) {
                now.insert(prefix, why.clone());
            }
        }
        self.mark(pod, now, outcome);
    }

    /// What is held changed: the outcomes that set, change or clear each pod's mark, over every
    /// OVN attachment held now (`ports`: pod, prefix, port name).
    pub fn on_held_changed<'a>(
        &mut self,
        ports: impl Iterator<Item = (&'a PodRef, &'a str, String)>,
        held: &Held,
    ) -> Vec<(PodRef, PodOutcome)> {
        let mut wanted: HashMap<String, (PodRef, BTreeMap<String, String>)> = HashMap::new();
        for (pod, prefix, port) in ports {
            let entry = wanted
                .entry(pod.uid.clone())
                .or_insert_with(|| (pod.clone(), BTreeMap::new()));
            if let Some(why) = held.get(&port) {
                entry.1.insert(prefix.to_owned(), why.clone());
            }
        }
        // Pods with no attachment left need no mark cleared: their allocation goes too.
        self.marked.retain(|uid, _| wanted.contains_key(uid));
        let mut out = Vec::new();
        for (_, (pod, now)) in wanted {
            let mut outcome = PodOutcome::default();
            self.mark(&pod, now, &mut outcome);
            if !outcome.events.is_empty() {
                out.push((pod, outcome));
            }
        }
        out
    }

    /// The pod is gone.
    pub fn forget(&mut self, uid: &str) {
        self.marked.remove(uid);
    }

    /// Makes `pod`'s mark `now`: the annotation, and an event per change, go into `outcome`.
    fn mark(&mut self, pod: &PodRef, now: BTreeMap<String, String>, outcome: &mut PodOutcome) {
        let before = self.marked.get(&pod.uid).cloned().unwrap_or_default();
        if before == now {
            return;
        }
        for (prefix, why) in &now {
            if before.get(prefix) != Some(why) {
                outcome.events.push(Event {
                    warning: true,
                    reason: "OvnPortHeld",
                    message: format!(
                        "attachment {prefix}: {why}; it is not plugged while that row is \
                         another owner's (delete it, or let Sidelane own it)"
                    ),
                });
            }
        }
        for prefix in before.keys().filter(|p| !now.contains_key(*p)) {
            outcome.events.push(Event {
                warning: false,
                reason: "OvnPortReleased",
                message: format!(
                    "attachment {prefix}: its OVN port is no longer held by another owner"
                ),
            });
        }
        if now.is_empty() {
            outcome.cleared.push(PORTS_HELD_ANNOTATION.to_owned());
            self.marked.remove(&pod.uid);
        } else {
            outcome.annotations.insert(
                PORTS_HELD_ANNOTATION.to_owned(),
                serde_json::to_string(&now).unwrap_or_default(),
            );
            self.marked.insert(pod.uid.clone(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> PodRef {
        PodRef {
            namespace: "default".to_owned(),
            name: "web".to_owned(),
            uid: "u1".to_owned(),
        }
    }

    fn held() -> Held {
        [(
            "web.default.attachnet.default.ovn".to_owned(),
            "Logical_Switch_Port web.default.attachnet.default.ovn belongs to kube-ovn".to_owned(),
        )]
        .into()
    }

    fn allocation() -> PodOutcome {
        let mut o = PodOutcome::default();
        for (k, v) in [
            (
                "attachnet.default.ovn.kubernetes.io/ip_address",
                "10.30.0.5",
            ),
            (
                "attachnet.default.ovn.kubernetes.io/mac_address",
                "00:00:00:8a:3c:4f",
            ),
        ] {
            o.annotations.insert(k.to_owned(), v.to_owned());
        }
        o
    }

    #[test]
    fn an_allocation_whose_port_is_held_is_written_with_the_mark_and_a_warning() {
        let mut marks = Marks::default();
        let mut outcome = allocation();
        marks.on_allocation(&web(), &mut outcome, &held());
        let mark = &outcome.annotations[PORTS_HELD_ANNOTATION];
        assert!(
            mark.contains("attachnet.default.ovn") && mark.contains("kube-ovn"),
            "{mark}"
        );
        assert_eq!(outcome.events.len(), 1);
        assert!(outcome.events[0].warning);
        assert_eq!(outcome.events[0].reason, "OvnPortHeld");
    }

    #[test]
    fn an_allocation_whose_port_is_free_is_written_as_it_is() {
        let mut marks = Marks::default();
        let mut outcome = allocation();
        marks.on_allocation(&web(), &mut outcome, &Held::new());
        assert_eq!(outcome, allocation());
    }

    #[test]
    fn the_mark_goes_once_the_row_does_and_is_said_once() {
        let mut marks = Marks::default();
        let pod = web();
        let ports = || {
            std::iter::once((
                &pod,
                "attachnet.default.ovn",
                "web.default.attachnet.default.ovn".to_owned(),
            ))
        };
        let set = marks.on_held_changed(ports(), &held());
        assert_eq!(set.len(), 1);
        assert!(set[0].1.annotations.contains_key(PORTS_HELD_ANNOTATION));
        assert!(
            marks.on_held_changed(ports(), &held()).is_empty(),
            "said again"
        );
        let cleared = marks.on_held_changed(ports(), &Held::new());
        assert_eq!(cleared.len(), 1);
        assert_eq!(cleared[0].1.cleared, vec![PORTS_HELD_ANNOTATION.to_owned()]);
        assert_eq!(cleared[0].1.events[0].reason, "OvnPortReleased");
    }
}
