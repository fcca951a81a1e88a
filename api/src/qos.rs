//! QoS annotations: `ingress_rate`, `egress_rate`, `ingress_burst`, `egress_burst`.
//!
//! Semantics are Kube-OVN's (see `docs/qos.md`): rates are non-negative integers in **Mbit/s**,
//! bursts in **Mbit**, written as strings. `ingress` is traffic entering the pod and `egress`
//! traffic leaving it. A rate that is absent or `0` means unlimited. Keys are per attachment
//! (`<provider>.kubernetes.io/ingress_rate`); the pod-wide `ovn.kubernetes.io/...` keys that the
//! Kube-OVN documents show for secondary interfaces apply to every attachment that has no value
//! of its own.

use std::{collections::BTreeMap, fmt};

use crate::annotations::{AnnotationError, DEFAULT_PROVIDER, key};

/// The largest rate accepted: 1 Tbit/s, in Mbit/s. Anything larger is a typo.
pub const MAX_RATE_MBPS: u64 = 1_000_000;
/// The largest burst accepted: 1 Tbit, in Mbit.
pub const MAX_BURST_MBIT: u64 = 1_000_000;

/// A direction, from the pod's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic entering the pod.
    Ingress,
    /// Traffic leaving the pod.
    Egress,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    /// `"ingress"` or `"egress"`, as in the annotation keys.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    /// A phrase that leaves no doubt about the direction, for logs and reports.
    pub const fn describe(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress (into the pod)",
            Direction::Egress => "egress (out of the pod)",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One direction's limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// The rate in Mbit/s; 0 means unlimited.
    pub rate_mbps: u64,
    /// The burst in Mbit, when the user set one; otherwise the dataplane chooses.
    pub burst_mbit: Option<u64>,
}

impl RateLimit {
    /// No limit.
    pub const UNLIMITED: RateLimit = RateLimit {
        rate_mbps: 0,
        burst_mbit: None,
    };

    /// A limit of `rate_mbps` Mbit/s with the dataplane's default burst.
    pub const fn mbps(rate_mbps: u64) -> RateLimit {
        RateLimit {
            rate_mbps,
            burst_mbit: None,
        }
    }

    /// Whether this is a limit at all.
    pub const fn is_limited(&self) -> bool {
        self.rate_mbps > 0
    }

    /// The rate in bits per second.
    pub const fn rate_bps(&self) -> u64 {
        self.rate_mbps * 1_000_000
    }

    /// The explicit burst in bytes, if any.
    pub const fn burst_bytes(&self) -> Option<u64> {
        match self.burst_mbit {
            Some(mbit) => Some(mbit * 125_000),
            None => None,
        }
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.is_limited() {
            return f.write_str("unlimited");
        }
        write!(f, "{} Mbit/s", self.rate_mbps)?;
        if let Some(burst) = self.burst_mbit {
            write!(f, ", burst {burst} Mbit")?;
        }
        Ok(())
    }
}

/// Both directions' limits of one attachment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosSpec {
    /// Traffic entering the pod.
    pub ingress: RateLimit,
    /// Traffic leaving the pod.
    pub egress: RateLimit,
}

impl QosSpec {
    /// No limit in either direction.
    pub const UNLIMITED: QosSpec = QosSpec {
        ingress: RateLimit::UNLIMITED,
        egress: RateLimit::UNLIMITED,
    };

    /// The limit of `dir`.
    pub const fn get(&self, dir: Direction) -> &RateLimit {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether any direction is limited.
    pub const fn is_limited(&self) -> bool {
        self.ingress.is_limited() || self.egress.is_limited()
    }

    /// Checks the limits are within range; the error names the direction and value.
    pub fn validate(&self) -> Result<(), AnnotationError> {
        for dir in Direction::ALL {
            let limit = self.get(dir);
            if limit.rate_mbps > MAX_RATE_MBPS {
                return Err(AnnotationError::OutOfRange {
                    key: format!("{dir}_rate"),
                    value: limit.rate_mbps.to_string(),
                    reason: format!("rates are in Mbit/s and at most {MAX_RATE_MBPS} (1 Tbit/s)"),
                });
            }
            if let Some(burst) = limit.burst_mbit
                && burst > MAX_BURST_MBIT
            {
                return Err(AnnotationError::OutOfRange {
                    key: format!("{dir}_burst"),
                    value: burst.to_string(),
                    reason: format!("bursts are in Mbit and at most {MAX_BURST_MBIT}"),
                });
            }
        }
        Ok(())
    }

    /// Reads the QoS of `provider`'s attachment from a pod's annotations.
    ///
    /// For each of the four fields the provider's own key wins; otherwise the pod-wide
    /// `ovn.kubernetes.io/<field>` applies. A malformed value is an error naming the key and
    /// the value, never a silent "unlimited".
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        provider: &str,
    ) -> Result<QosSpec, AnnotationError> {
        let field = |name: &str| -> Result<Option<u64>, AnnotationError> {
            let own = key(provider, name);
            let (key, value) = if let Some(v) = annotations.get(&own) {
                (own, v)
            } else {
                let shared = key(DEFAULT_PROVIDER, name);
                let Some(v) = annotations.get(&shared) else {
                    return Ok(None);
                };
                (shared, v)
            };
            parse_non_negative(&key, value).map(Some)
        };
        let limit = |dir: Direction| -> Result<RateLimit, AnnotationError> {
            Ok(RateLimit {
                rate_mbps: field(&format!("{dir}_rate"))?.unwrap_or(0),
                burst_mbit: field(&format!("{dir}_burst"))?,
            })
        };
        let spec = QosSpec {
            ingress: limit(Direction::Ingress)?,
            egress: limit(Direction::Egress)?,
        };
        spec.validate().map_err(|e| e.with_provider(provider))?;
        Ok(spec)
    }
}

impl fmt::Display for QosSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ingress (into the pod) {}; egress (out of the pod) {}",
            self.ingress, self.egress
        )
    }
}

/// Parses a non-negative decimal integer as Kube-OVN's `ValidatePodNetwork` accepts it.
fn parse_non_negative(key: &str, value: &str) -> Result<u64, AnnotationError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AnnotationError::Invalid {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: "expected a non-negative integer".to_owned(),
        });
    }
    trimmed
        .parse::<u64>()
        .map_err(|_| AnnotationError::OutOfRange {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: "the number is too large".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "attachnet.default.ovn";

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn provider_keys_give_rates_in_megabits_per_second() {
        let a = annotations(&[
            ("attachnet.default.ovn.kubernetes.io/ingress_rate", "3"),
            ("attachnet.default.ovn.kubernetes.io/egress_rate", "1"),
            ("attachnet.default.ovn.kubernetes.io/egress_burst", "2"),
        ]);
        let spec = QosSpec::from_annotations(&a, P).expect("valid annotations");
        assert_eq!(spec.ingress, RateLimit::mbps(3));
        assert_eq!(
            spec.egress,
            RateLimit {
                rate_mbps: 1,
                burst_mbit: Some(2)
            }
        );
        assert_eq!(spec.egress.rate_bps(), 1_000_000);
        assert_eq!(spec.egress.burst_bytes(), Some(250_000));
    }

    #[test]
    fn pod_wide_ovn_keys_apply_when_the_provider_has_none() {
        let a = annotations(&[
            ("ovn.kubernetes.io/ingress_rate", "3"),
            ("ovn.kubernetes.io/egress_rate", "1"),
            ("attachnet.default.ovn.kubernetes.io/egress_rate", "5"),
        ]);
        let spec = QosSpec::from_annotations(&a, P).expect("valid annotations");
        assert_eq!(spec.ingress.rate_mbps, 3);
        assert_eq!(spec.egress.rate_mbps, 5);
    }

    #[test]
    fn absent_or_zero_means_unlimited() {
        assert_eq!(
            QosSpec::from_annotations(&BTreeMap::new(), P).expect("empty is valid"),
            QosSpec::UNLIMITED
        );
        let a = annotations(&[("attachnet.default.ovn.kubernetes.io/ingress_rate", "0")]);
        assert!(
            !QosSpec::from_annotations(&a, P)
                .expect("zero is valid")
                .is_limited()
        );
    }

    #[test]
    fn a_negative_rate_is_refused_naming_key_and_value() {
        let a = annotations(&[("attachnet.default.ovn.kubernetes.io/ingress_rate", "-5")]);
        let err = QosSpec::from_annotations(&a, P).expect_err("negative is invalid");
        let msg = err.to_string();
        assert!(
            msg.contains("-5") && msg.contains("attachnet.default.ovn.kubernetes.io/ingress_rate"),
            "{msg}"
        );
    }

    #[test]
    fn non_numeric_and_fractional_rates_are_refused() {
        for bad in ["fast", "1.5", "10M", ""] {
            let a = annotations(&[("ovn.kubernetes.io/egress_rate", bad)]);
            let err = QosSpec::from_annotations(&a, P).expect_err("not an integer");
            assert!(
                err.to_string().contains("ovn.kubernetes.io/egress_rate"),
                "{err}"
            );
        }
    }

    #[test]
    fn absurd_rates_are_refused() {
        let a = annotations(&[("ovn.kubernetes.io/egress_rate", "99999999")]);
        let err = QosSpec::from_annotations(&a, P).expect_err("absurd");
        assert!(err.to_string().contains("99999999"), "{err}");
        let a = annotations(&[("ovn.kubernetes.io/egress_rate", "999999999999999999999999")]);
        assert!(QosSpec::from_annotations(&a, P).is_err());
    }

    #[test]
    fn display_names_directions_from_the_pods_side() {
        let spec = QosSpec {
            ingress: RateLimit::mbps(10),
            egress: RateLimit::UNLIMITED,
        };
        assert_eq!(
            spec.to_string(),
            "ingress (into the pod) 10 Mbit/s; egress (out of the pod) unlimited"
        );
    }
}
