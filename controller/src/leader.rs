//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go does it: the holder
//! renews every `retry_period`; a candidate takes the Lease over only after it has seen the
//! same record unchanged for `lease_duration` (its own clock, never the holder's timestamps);
//! a holder that cannot renew within `renew_deadline` steps down before anyone may take over.
//! Every write carries the resourceVersion it read, so two candidates never both win.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::watch, time::Instant};
use tracing::{info, warn};

/// How the Lease is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a silent holder keeps the Lease.
    pub lease_duration: Duration,
    /// How long a holder keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to renew or retry.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate observed of the Lease, to tell when its holder fell silent.
struct Observed {
    record: (Option<String>, Option<String>),
    since: Instant,
}

/// Runs the election forever, publishing whether this replica leads on `leading`.
pub async fn run(client: Client, cfg: LeaseConfig, leading: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed: Option<Observed> = None;
    let mut last_renewal: Option<Instant> = None;
    loop {
        let outcome = attempt(&api, &cfg, &mut observed).await;
        let now = Instant::now();
        match outcome {
            Ok(true) => {
                last_renewal = Some(now);
                if !*leading.borrow() {
                    info!(identity = %cfg.identity, lease = %cfg.name, "became the leader");
                }
                leading.send_replace(true);
            }
            Ok(false) => {
                last_renewal = None;
                if *leading.borrow() {
                    warn!(identity = %cfg.identity, lease = %cfg.name, "lost the lease to another replica");
                }
                leading.send_replace(false);
            }
            Err(e) => {
                warn!(identity = %cfg.identity, lease = %cfg.name, error = %e, "reading or renewing the lease");
                if *leading.borrow()
                    && last_renewal.is_none_or(|t| now.duration_since(t) >= cfg.renew_deadline)
                {
                    warn!(identity = %cfg.identity, "no renewal within the deadline; stepping down");
                    leading.send_replace(false);
                }
            }
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

fn spec_for(cfg: &LeaseConfig, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// One round: `Ok(true)` when this replica holds the Lease afterwards.
async fn attempt(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(spec_for(cfg, None, 0)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (
        holder.clone(),
        spec.renew_time.as_ref().map(|t| t.0.to_string()),
    );
    let now = Instant::now();
    let silent_for = match observed {
        Some(o) if o.record == record => now.duration_since(o.since),
        _ => {
            *observed = Some(Observed { record, since: now });
            Duration::ZERO
        }
    };
    let mine = holder.as_deref() == Some(cfg.identity.as_str());
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(cfg.lease_duration, Duration::from_secs);
    if !mine && holder.is_some() && silent_for < duration {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
    let acquire = if mine {
        spec.acquire_time.clone()
    } else {
        None
    };
    lease.spec = Some(spec_for(cfg, acquire, transitions));
    // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => {
            if !mine {
                info!(identity = %cfg.identity, previous = ?holder, "took over the lease");
            }
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
