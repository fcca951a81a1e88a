//! The Subnet status as Kube-OVN writes it (usage per family and the `Validated`, `Ready` and
//! `Full` conditions), and when it needs writing at all: only when something other than the
//! times changes, and a condition's `lastTransitionTime` moves only when its status does.

use serde_json::{Value, json};

use crate::ipam::Usage;

/// A condition as Kube-OVN writes them.
pub(crate) fn condition(kind: &str, ok: bool, reason: &str, message: &str, now: &str) -> Value {
    json!({
        "type": kind,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "lastUpdateTime": now,
        "lastTransitionTime": now,
    })
}

/// The Subnet status: usage per family and the `Validated`/`Ready`/`Full` conditions.
/// `validation` is `Err(message)` for a refused spec.
pub fn subnet_status(usage: Option<Usage>, validation: Result<(), &str>, now: &str) -> Value {
    let u = usage.unwrap_or_default();
    let mut conditions = vec![match validation {
        Ok(()) => condition("Validated", true, "ValidatedSubnet", "", now),
        Err(m) => condition("Validated", false, "ValidateLogicalSwitchFailed", m, now),
    }];
    conditions.push(condition(
        "Ready",
        validation.is_ok(),
        if validation.is_ok() {
            "SubnetReady"
        } else {
            "ValidationFailed"
        },
        "",
        now,
    ));
    // Full when a family has nothing left to hand out, whether held or excluded.
    let full = validation.is_ok()
        && ((u.has_v4 && u.v4_available == 0) || (u.has_v6 && u.v6_available == 0));
    conditions.push(condition(
        "Full",
        full,
        if full {
            "NoAvailableAddress"
        } else {
            "AddressesAvailable"
        },
        if full {
            "every address of the subnet is in use"
        } else {
            ""
        },
        now,
    ));
    #[expect(
        clippy::cast_precision_loss,
        reason = "Kube-OVN writes these counts as floats"
    )]
    let f = |n: u64| n as f64;
    json!({
        "v4availableIPs": f(u.v4_available),
        "v4usingIPs": f(u.v4_used),
        "v6availableIPs": f(u.v6_available),
        "v6usingIPs": f(u.v6_used),
        "v4usingIPrange": u.v4_using_range,
        "v4availableIPrange": u.v4_available_range,
        "v6usingIPrange": u.v6_using_range,
        "v6availableIPrange": u.v6_available_range,
        "conditions": conditions,
    })
}

/// `status` with `Ready=False` because the Subnet's switch, deleted with it, stays for another
/// owner's rows (`holds` says which).
pub fn switch_held(mut status: Value, holds: &str, now: &str) -> Value {
    if let Some(conditions) = status["conditions"].as_array_mut() {
        for c in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
            *c = condition("Ready", false, "LogicalSwitchHeld", holds, now);
        }
    }
    status
}

/// Whether two JSON values are equal, numbers compared by value (the API server gives back
/// `5` for the `5.0` written).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|other| same(v, other)))
        }
        _ => a == b,
    }
}

/// Adds the `IsolationValidated` condition of a Subnet with `private`, `allowSubnets` or
/// `acls`: `False` naming the field and value when they are refused.
pub fn with_isolation(status: &mut Value, refusal: Option<&str>, now: &str) {
    let c = match refusal {
        None => condition("IsolationValidated", true, "ValidatedIsolation", "", now),
        Some(m) => condition("IsolationValidated", false, "InvalidSubnetACL", m, now),
    };
    if let Some(conditions) = status["conditions"].as_array_mut() {
        conditions.push(c);
    }
}

/// The status to write over `current` (the Subnet's, as the API server has it): `None` when
/// `wanted` says nothing new; otherwise `wanted`, each condition keeping its times where its
/// status (for `lastTransitionTime`) or its whole content (for `lastUpdateTime`) is unchanged.
pub fn status_change(current: Option<&Value>, mut wanted: Value) -> Option<Value> {
    let previous = current
        .and_then(|c| c["conditions"].as_array())
        .cloned()
        .unwrap_or_default();
    if let Some(conditions) = wanted["conditions"].as_array_mut() {
        for c in conditions {
            let Some(before) = previous.iter().find(|p| p["type"] == c["type"]) else {
                continue;
            };
            if before["status"] != c["status"] {
                continue;
            }
            c["lastTransitionTime"] = before["lastTransitionTime"].clone();
            if before["reason"] == c["reason"] && before["message"] == c["message"] {
                c["lastUpdateTime"] = before["lastUpdateTime"].clone();
            }
        }
    }
    let unchanged = current.is_some_and(|cur| {
        wanted.as_object().is_some_and(|w| {
            w.iter()
                .all(|(k, v)| cur.get(k).is_some_and(|have| same(v, have)))
        })
    });
    (!unchanged).then_some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(used: u64, available: u64) -> Usage {
        Usage {
            has_v4: true,
            v4_used: used,
            v4_available: available,
            ..Usage::default()
        }
    }

    /// The status as the API server gives it back: counts as whole numbers.
    fn as_served(status: &Value) -> Value {
        let text = serde_json::to_string(status)
            .expect("JSON")
            .replace(".0,", ",")
            .replace(".0}", "}");
        serde_json::from_str(&text).expect("JSON")
    }

    #[test]
    fn a_full_subnet_says_so_in_its_conditions() {
        let status = subnet_status(Some(usage(5, 0)), Ok(()), "2026-11-23T00:00:00Z");
        assert_eq!(status["v4usingIPs"], 5.0);
        let full = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == "Full")
            .expect("a Full condition")
            .clone();
        assert_eq!(full["status"], "True");
        let invalid = subnet_status(None, Err("gateway 1.1.1.1 is not in cidr 10.0.0.0/8"), "t");
        assert_eq!(invalid["conditions"][0]["status"], "False");
        assert_eq!(
            invalid["conditions"][0]["message"],
            "gateway 1.1.1.1 is not in cidr 10.0.0.0/8"
        );
    }

    #[test]
    fn a_subnet_whose_every_address_is_excluded_is_full_and_says_which_are_free() {
        let all_excluded = usage(0, 0);
        let status = subnet_status(Some(all_excluded), Ok(()), "t");
        assert_eq!(status["conditions"][2]["type"], "Full");
        assert_eq!(status["conditions"][2]["status"], "True");
        let some = Usage {
            v4_using_range: "10.0.0.2-10.0.0.3".to_owned(),
            v4_available_range: "10.0.0.4-10.0.0.14".to_owned(),
            ..usage(2, 11)
        };
        let status = subnet_status(Some(some), Ok(()), "t");
        assert_eq!(status["conditions"][2]["status"], "False");
        assert_eq!(status["v4usingIPrange"], "10.0.0.2-10.0.0.3");
        assert_eq!(status["v4availableIPrange"], "10.0.0.4-10.0.0.14");
        assert_eq!(status["v6usingIPrange"], "");
    }

    #[test]
    fn a_status_that_differs_only_in_its_times_is_not_written_again() {
        let written = as_served(&subnet_status(Some(usage(3, 7)), Ok(()), "10:00"));
        let later = subnet_status(Some(usage(3, 7)), Ok(()), "10:05");
        assert_eq!(status_change(Some(&written), later), None);
        let invalid = as_served(&subnet_status(None, Err("bad gateway"), "10:00"));
        let later = subnet_status(None, Err("bad gateway"), "10:05");
        assert_eq!(status_change(Some(&invalid), later), None);
    }

    #[test]
    fn a_new_count_is_written_with_the_conditions_times_kept() {
        let written = as_served(&subnet_status(Some(usage(3, 7)), Ok(()), "10:00"));
        let later = subnet_status(Some(usage(4, 6)), Ok(()), "10:05");
        let change = status_change(Some(&written), later).expect("the count changed");
        assert_eq!(change["v4usingIPs"], 4.0);
        for c in change["conditions"].as_array().expect("conditions") {
            assert_eq!(c["lastTransitionTime"], "10:00", "{c}");
            assert_eq!(c["lastUpdateTime"], "10:00", "{c}");
        }
    }

    #[test]
    fn only_the_condition_whose_status_flips_gets_a_new_transition_time() {
        let written = as_served(&subnet_status(Some(usage(9, 1)), Ok(()), "10:00"));
        let later = subnet_status(Some(usage(10, 0)), Ok(()), "10:05");
        let change = status_change(Some(&written), later).expect("now full");
        let times: Vec<(String, String)> = change["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| {
                (
                    c["type"].as_str().unwrap_or_default().to_owned(),
                    c["lastTransitionTime"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        assert_eq!(
            times,
            [
                ("Validated".to_owned(), "10:00".to_owned()),
                ("Ready".to_owned(), "10:00".to_owned()),
                ("Full".to_owned(), "10:05".to_owned())
            ]
        );
    }

    #[test]
    fn a_subnet_without_a_status_gets_one() {
        let wanted = subnet_status(Some(usage(0, 10)), Ok(()), "10:00");
        assert_eq!(status_change(None, wanted.clone()), Some(wanted.clone()));
        assert_eq!(
            status_change(Some(&json!({})), wanted.clone()),
            Some(wanted)
        );
    }
}
