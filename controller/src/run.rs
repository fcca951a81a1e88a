//! The leader's work, the thin Kubernetes layer around the [`Engine`]: load the cluster in
//! order (StatefulSets, NADs, IPPools, Subnets, then the recorded allocations — IP resources,
//! then pods' annotations — before anything new is allocated), collect what pods deleted while
//! no leader ran left behind, then follow every change by watch and carry out the engine's
//! outcomes. Writes for one pod run in order; writes for different pods run concurrently.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::{
    api::{apps::v1::StatefulSet, core::v1::Pod},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DynamicObject, ListParams},
    runtime::{
        WatchStreamExt as _,
        events::{Recorder, Reporter},
        watcher,
    },
};
use serde_json::{Value, json};
use sidelane_api::crd::SubnetSpec;
use thiserror::Error;
use tokio::{
    sync::{Semaphore, watch},
    time::Instant,
};
use tracing::{debug, info, warn};

use crate::{
    engine::{Engine, Event, PodOutcome, SubnetOutcome},
    held, isolation,
    metrics::{Metrics, ReasonLabels, SubnetLabels},
    nb,
    objects::{self, POD_UID_ANNOTATION},
    ovn,
    seen::{Refusals, Relists, Specs},
    status, switch_finalizer,
    writer::Writer,
};

/// Tuning of the leader's work.
#[derive(Clone, Debug)]
pub struct Options {
    /// How often garbage is collected (allocations of pods that are gone).
    pub gc_interval: Duration,
    /// Writes in flight at once.
    pub write_concurrency: usize,
    /// The name events are reported under, and this replica's identity.
    pub reporter: String,
    /// This replica's identity (pod name).
    pub instance: String,
    /// The OVN Northbound database, when Sidelane builds OVN topology (`None`: IPAM only).
    pub ovn_nb: Option<sidelane_ovsdb::Options>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            gc_interval: Duration::from_mins(1),
            write_concurrency: 64,
            reporter: "sidelane-controller".to_owned(),
            instance: String::new(),
            ovn_nb: None,
        }
    }
}

/// The leader's work stopped.
#[derive(Debug, Error)]
pub enum RunError {
    /// Listing a kind of object failed.
    #[error("listing {what}: {source}")]
    List {
        /// What was being listed.
        what: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A watch stream ended.
    #[error("the watch of {0} ended")]
    WatchEnded(&'static str),
}

/// One change seen by a watch.
enum Change {
    Pod(watcher::Event<Pod>),
    StatefulSet(watcher::Event<StatefulSet>),
    Nad(watcher::Event<DynamicObject>),
    Subnet(watcher::Event<DynamicObject>),
    IpPool(watcher::Event<DynamicObject>),
    Vpc(watcher::Event<DynamicObject>),
    SecurityGroup(watcher::Event<DynamicObject>),
    Nat(&'static str, watcher::Event<DynamicObject>),
    Node(watcher::Event<k8s_openapi::api::core::v1::Node>),
}

mod nat;

/// Follows leadership forever: works while this replica leads, stops when it does not.
pub async fn lead(
    client: Client,
    opts: Options,
    metrics: Arc<Metrics>,
    mut leading: watch::Receiver<bool>,
) {
    loop {
        metrics.leader.set(0);
        // A follower is ready: it serves probes and would take over.
        metrics.set_ready(true);
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
        }
        metrics.leader.set(1);
        metrics.set_ready(false);
        let work = Leader::new(client.clone(), opts.clone(), Arc::clone(&metrics)).run();
        let mut stepped_down = leading.clone();
        tokio::select! {
            result = work => {
                if let Err(e) = result {
                    warn!(error = %e, "the leader's work stopped; starting over");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            () = async {
                while *stepped_down.borrow_and_update() {
                    if stepped_down.changed().await.is_err() {
                        break;
                    }
                }
            } => {
                info!("no longer the leader; stopped allocating");
            }
        }
    }
}

struct Leader {
    client: Client,
    opts: Options,
    metrics: Arc<Metrics>,
    engine: Engine,
    writer: Arc<Writer>,
    /// Validation of each Subnet, for its status.
    validation: HashMap<String, Result<(), String>>,
    pending_status: BTreeSet<String>,
    /// Each Subnet's status as the API server last showed it.
    statuses: HashMap<String, Value>,
    /// The specs acted on: a watch event that repeats one is not acted on again.
    specs: Specs,
    /// The refusals reported per pod: the same one is not reported again and again.
    refusals: Refusals,
    /// Re-lists in progress, to find what was deleted while a watch was away.
    relists: Relists,
    /// Vpcs' parts in the OVN topology.
    vpcs: BTreeMap<String, ovn::VpcInput>,
    /// Security groups and Subnets' isolation, as accepted.
    isolation: isolation::Store,
    /// Each `SecurityGroup`'s status as the API server last showed it.
    group_statuses: HashMap<String, Value>,
    /// Pods with a refused attachment, by UID, to try again.
    waiting: HashMap<String, Pod>,
    /// The wanted OVN topology, for the Northbound reconciler.
    topology: watch::Sender<Arc<ovn::Topology>>,
    /// Something the topology depends on changed since it was last published.
    topology_dirty: bool,
    /// Switch ports of other owners, from the Northbound reconciler.
    held: watch::Receiver<nb::HeldPorts>,
    held_tx: Option<watch::Sender<nb::HeldPorts>>,
    /// The pods marked as having such a port.
    marks: held::Marks,
    /// Whether the Northbound reconciler has said anything yet.
    nb_seen: bool,
    /// Each Subnet's finalizers, whether it is being deleted and whether it wants a switch.
    finalizing: HashMap<String, (Vec<String>, bool, bool)>,
    /// The finalizer step last acted on per Subnet, so each is done once.
    finalizer_steps: HashMap<String, switch_finalizer::Step>,
    /// NAT gateways, EIPs and rules.
    nat: nat::NatState,
}

impl Leader {
    fn new(client: Client, opts: Options, metrics: Arc<Metrics>) -> Leader {
        let reporter = Reporter {
            controller: opts.reporter.clone(),
            instance: Some(opts.instance.clone()).filter(|i| !i.is_empty()),
        };
        let (held_tx, held_rx) = watch::channel(nb::HeldPorts::default());
        let writer = Arc::new(Writer {
            client: client.clone(),
            recorder: Recorder::new(client.clone(), reporter),
            ips: Api::all_with(client.clone(), &objects::ip_resource()),
            subnets: Api::all_with(client.clone(), &objects::subnet_resource()),
            security_groups: Api::all_with(client.clone(), &objects::security_group_resource()),
            permits: Arc::new(Semaphore::new(opts.write_concurrency.max(1))),
            chains: std::sync::Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            metrics: Arc::clone(&metrics),
            stopped: AtomicBool::new(false),
        });
        Leader {
            client,
            opts,
            metrics,
            engine: Engine::new(),
            writer,
            validation: HashMap::new(),
            pending_status: BTreeSet::new(),
            statuses: HashMap::new(),
            specs: Specs::default(),
            refusals: Refusals::default(),
            relists: Relists::default(),
            vpcs: BTreeMap::new(),
            isolation: isolation::Store::default(),
            group_statuses: HashMap::new(),
            waiting: HashMap::new(),
            topology: watch::channel(Arc::new(ovn::Topology::default())).0,
            topology_dirty: false,
            held: held_rx,
            held_tx: Some(held_tx),
            marks: held::Marks::default(),
            nb_seen: false,
            finalizing: HashMap::new(),
            finalizer_steps: HashMap::new(),
            nat: nat::NatState::default(),
        }
    }

    async fn run(mut self) -> Result<(), RunError> {
        let started = Instant::now();
        self.load().await?;
        self.flush_status();
        self.metrics.set_ready(true);
        info!(elapsed = ?started.elapsed(), "loaded the cluster; following it");
        // The topology is published only now: before the recorded allocations are back, it
        // would lack ports that exist.
        let nb_task = self.opts.ovn_nb.clone().map(|nb| {
            self.publish_topology();
            info!(remotes = ?nb.remotes.iter().map(ToString::to_string).collect::<Vec<_>>(),
                  "building the OVN topology in the Northbound database");
            AbortOnDrop(tokio::spawn(nb::reconcile(
                sidelane_ovsdb::Client::start(nb),
                self.topology.subscribe(),
                self.held_tx
                    .take()
                    .unwrap_or_else(|| watch::channel(nb::HeldPorts::default()).0),
                Arc::clone(&self.metrics),
            )))
        });
        let mut held_open = nb_task.is_some();
        let mut changes = self.changes();
        let mut gc = tokio::time::interval(self.opts.gc_interval);
        gc.tick().await;
        let mut status = tokio::time::interval(Duration::from_millis(500));
        let mut topology = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                change = changes.next() => {
                    let Some(change) = change else {
                        return Err(RunError::WatchEnded("the cluster"));
                    };
                    self.apply(change);
                    self.topology_dirty = true;
                    if self.nat.dirty {
                        self.resolve_nat();
                    }
                }
                _ = topology.tick(), if self.topology_dirty && nb_task.is_some() => self.publish_topology(),
                still = self.held.changed(), if held_open => {
                    held_open = still.is_ok();
                    self.held_changed();
                }
                _ = gc.tick() => {
                    if let Err(e) = self.collect_garbage().await {
                        warn!(error = %e, "garbage collection");
                    }
                    self.retry_waiting();
                    self.resolve_nat();
                }
                _ = status.tick() => self.flush_status(),
            }
        }
    }

    /// Marks (and unmarks) the pods whose OVN port another owner's row holds.
    fn held_changed(&mut self) {
        let held = Arc::clone(&self.held.borrow_and_update());
        self.nb_seen = true;
        let deleting: Vec<String> = self
            .finalizing
            .iter()
            .filter(|(_, (_, deleting, _))| *deleting)
            .map(|(name, _)| name.clone())
            .collect();
        for name in deleting {
            self.finalize(&name);
        }
        for (pod, outcome) in self
            .marks
            .on_held_changed(self.engine.ports(), &held.held_ports)
        {
            self.writer
                .submit(Some(&pod_object(&pod)), String::new(), outcome);
        }
    }

    /// Publishes the wanted OVN topology to the Northbound reconciler.
    fn publish_topology(&mut self) {
        self.topology_dirty = false;
        let mut t = self.engine.topology(&self.vpcs, &self.isolation.wanted);
        t.add_gateways(&self.nat.resolved.gateways);
        self.topology.send_if_modified(|old| {
            if **old == t {
                false
            } else {
                *old = Arc::new(t);
                true
            }
        });
    }

    /// What allocations depend on: StatefulSets, NADs, IPPools, Vpcs, Subnets.
    async fn load_config(&mut self) -> Result<(), RunError> {
        let lp = ListParams::default();
        let list_err = |what| move |source| RunError::List { what, source };
        let sts: Api<StatefulSet> = Api::all(self.client.clone());
        for s in sts.list(&lp).await.map_err(list_err("StatefulSets"))? {
            self.statefulset(&s);
        }
        let nads: Api<DynamicObject> = Api::all_with(self.client.clone(), &objects::nad_resource());
        for n in nads
            .list(&lp)
            .await
            .map_err(list_err("NetworkAttachmentDefinitions"))?
        {
            self.nad(&n);
        }
        let pools: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &objects::ip_pool_resource());
        for p in pools.list(&lp).await.map_err(list_err("IPPools"))? {
            let (name, entries) = objects::ip_pool(&p);
            self.engine.set_ip_pool(&name, entries);
        }
        let vpcs: Api<DynamicObject> = Api::all_with(self.client.clone(), &objects::vpc_resource());
        for v in vpcs.list(&lp).await.map_err(list_err("Vpcs"))? {
            self.vpc(&v);
        }
        // Before the first topology: the groups' port groups must not blink out on a restart.
        for g in self
            .writer
            .security_groups
            .list(&lp)
            .await
            .map_err(list_err("SecurityGroups"))?
        {
            self.security_group(&g);
        }
        for s in self
            .writer
            .subnets
            .list(&lp)
            .await
            .map_err(list_err("Subnets"))?
        {
            self.subnet(&s);
        }
        Ok(())
    }

    /// Lists everything in dependency order and takes back what the cluster records.
    async fn load(&mut self) -> Result<(), RunError> {
        self.load_config().await?;
        let lp = ListParams::default();
        let list_err = |what| move |source| RunError::List { what, source };
        let mut restored = 0usize;
        let ips = self.writer.ips.list(&lp).await.map_err(list_err("IPs"))?;
        for ip in &ips {
            let Some(record) = objects::ip_record(ip) else {
                continue;
            };
            match self.engine.restore_ip(&record) {
                Ok(()) => restored += 1,
                Err(e) => warn!(ip = %record.name, reason = e.reason, "{}", e.message),
            }
        }
        let pods: Api<Pod> = Api::all(self.client.clone());
        let pods = pods.list(&lp).await.map_err(list_err("Pods"))?;
        // NAT objects' addresses after the recorded ones, before any new pod gets one.
        self.load_nat().await?;
        // IP resources Sidelane did not write hold their addresses for their live pods.
        let uids: HashMap<(String, String), String> = pods
            .items
            .iter()
            .filter(|p| !objects::is_gone(p))
            .map(|p| {
                (
                    (p.namespace().unwrap_or_default(), p.name_any()),
                    p.uid().unwrap_or_default(),
                )
            })
            .collect();
        let foreign = self.restore_foreign(&ips.items, &uids, true);
        let mut live = BTreeSet::new();
        // Pods already allocated first, so that their addresses are taken back before any new
        // pod gets one.
        let (allocated, fresh): (Vec<&Pod>, Vec<&Pod>) = pods.items.iter().partition(|p| {
            p.annotations()
                .iter()
                .any(|(k, v)| k.ends_with(".kubernetes.io/allocated") && v == "true")
        });
        for pod in allocated.into_iter().chain(fresh) {
            if !objects::is_gone(pod) {
                live.insert(pod.uid().unwrap_or_default());
            }
            self.pod(pod);
        }
        let outcome = self.engine.collect_garbage(&live);
        self.writer.submit(None, String::new(), outcome);
        // IP resources whose attachment no longer exists (pod deleted meanwhile).
        let owned: BTreeSet<String> = self
            .engine
            .ipam()
            .attachments()
            .map(|(_, p, _)| p.uid.clone())
            .collect();
        let stale: Vec<String> = ips
            .iter()
            .filter(|ip| {
                ip.annotations()
                    .get(POD_UID_ANNOTATION)
                    .is_some_and(|uid| !owned.contains(uid) && !live.contains(uid))
            })
            .map(ResourceExt::name_any)
            .collect();
        if !stale.is_empty() {
            self.writer.submit(
                None,
                String::new(),
                PodOutcome {
                    delete_ips: stale,
                    ..PodOutcome::default()
                },
            );
        }
        info!(
            restored,
            foreign,
            pods = pods.items.len(),
            "took back the recorded allocations"
        );
        Ok(())
    }

    /// Takes back the addresses of IP resources Sidelane did not write whose pods live
    /// (`uids` by namespace and name); returns how many. Refusals are warnings at start-up,
    /// and debug messages at each later collection.
    fn restore_foreign(
        &mut self,
        ips: &[DynamicObject],
        uids: &HashMap<(String, String), String>,
        loud: bool,
    ) -> usize {
        let mut held = 0;
        for obj in ips.iter().filter(|o| !objects::is_ours(o)) {
            let Some(record) = objects::ip_pod(obj)
                .and_then(|pod| uids.get(&pod))
                .and_then(|uid| objects::foreign_ip_record(obj, uid))
            else {
                continue;
            };
            match self.engine.restore_foreign_ip(&record) {
                Ok(()) => held += 1,
                Err(e) if loud => warn!(ip = %record.name, reason = e.reason, "{}", e.message),
                Err(e) => debug!(ip = %record.name, reason = e.reason, "{}", e.message),
            }
        }
        self.metrics
            .foreign_ips
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        held
    }

    fn changes(&self) -> BoxStream<'static, Change> {
        let cfg = watcher::Config::default();
        let pods = watcher(Api::<Pod>::all(self.client.clone()), cfg.clone())
            .default_backoff()
            .map(|e| e.map(Change::Pod));
        let sts = watcher(Api::<StatefulSet>::all(self.client.clone()), cfg.clone())
            .default_backoff()
            .map(|e| e.map(Change::StatefulSet));
        let nads = watcher(
            Api::<DynamicObject>::all_with(self.client.clone(), &objects::nad_resource()),
            cfg.clone(),
        )
        .default_backoff()
        .map(|e| e.map(Change::Nad));
        let subnets = watcher(self.writer.subnets.clone(), cfg.clone())
            .default_backoff()
            .map(|e| e.map(Change::Subnet));
        let pools = watcher(
            Api::<DynamicObject>::all_with(self.client.clone(), &objects::ip_pool_resource()),
            cfg,
        )
        .default_backoff()
        .map(|e| e.map(Change::IpPool));
        let vpcs = watcher(
            Api::<DynamicObject>::all_with(self.client.clone(), &objects::vpc_resource()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|e| e.map(Change::Vpc));
        let groups = watcher(
            self.writer.security_groups.clone(),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|e| e.map(Change::SecurityGroup));
        let mut streams = vec![
            groups.boxed(),
            vpcs.boxed(),
            sts.boxed(),
            nads.boxed(),
            pools.boxed(),
            subnets.boxed(),
            pods.boxed(),
        ];
        streams.extend(self.nat_watches());
        futures::stream::select_all(streams)
            .filter_map(|e| async move {
                match e {
                    Ok(c) => Some(c),
                    Err(err) => {
                        warn!(error = %err, "a watch failed; it retries with backoff");
                        None
                    }
                }
            })
            .boxed()
    }

    fn apply(&mut self, change: Change) {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        let change_kind = if matches!(change, Change::Pod(Apply(_) | InitApply(_))) {
            ChangeKind::Pod
        } else {
            ChangeKind::Other
        };
        match change {
            Change::Pod(Apply(p) | InitApply(p)) => self.pod(&p),
            Change::Pod(Delete(p)) => {
                let uid = p.uid().unwrap_or_default();
                self.waiting.remove(&uid);
                self.refusals.forget(&uid);
                let outcome = self.engine.on_pod_gone(&objects::pod_view(&p));
                self.count(&outcome);
                self.writer.submit(None, String::new(), outcome);
            }
            // Pods deleted during a re-list are found by the next collection.
            Change::Pod(Init | InitDone) => {}
            Change::StatefulSet(e) => self.take(STATEFULSET, e, Self::statefulset),
            Change::Nad(e) => self.take(NAD, e, Self::nad),
            Change::Subnet(e) => self.take(SUBNET, e, Self::subnet),
            Change::IpPool(e) => self.take(IPPOOL, e, Self::ip_pool),
            Change::Vpc(e) => self.take(VPC, e, |l, v| {
                l.vpc(v);
                false
            }),
            Change::SecurityGroup(e) => self.take(SECURITY_GROUP, e, Self::security_group),
            Change::Nat(kind, e) => self.take(kind, e, |l, o| l.nat_object(kind, o)),
            Change::Node(e) => self.take(nat::NODE, e, Self::node),
        }
        if !matches!(change_kind, ChangeKind::Pod) {
            self.nat.dirty = true;
        }
    }

    /// One watch event of a kind whose objects the leader keeps: `take` takes an object in and
    /// says whether it changed (then refused pods are tried again); a deletion, or the end of
    /// a re-list that did not list an object, forgets it.
    fn take<K: Resource>(
        &mut self,
        kind: &'static str,
        event: watcher::Event<K>,
        take: impl FnOnce(&mut Self, &K) -> bool,
    ) {
        use watcher::Event::{Apply, Delete, Init, InitApply, InitDone};
        match event {
            Init => self.relists.begin(kind),
            InitApply(obj) | Apply(obj) => {
                self.relists.saw(&key_of(kind, &obj));
                if take(self, &obj) {
                    self.retry_waiting();
                }
            }
            Delete(obj) => self.forget(&key_of(kind, &obj)),
            InitDone => {
                for key in self.relists.end(kind, &self.specs) {
                    info!(object = %key, "gone while the watch re-listed");
                    self.metrics.gone_while_away.inc();
                    self.forget(&key);
                }
            }
        }
    }

    /// Forgets the object `key` (`kind/namespace/name`): it is gone.
    fn forget(&mut self, key: &str) {
        self.specs.forget(key);
        let mut parts = key.splitn(3, '/');
        let (kind, ns, name) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        match kind {
            STATEFULSET => self.engine.set_statefulset(ns, name, None),
            NAD => self.engine.remove_nad(ns, name),
            SUBNET => {
                self.isolation.subnet_gone(name);
                self.subnet_gone(name);
            }
            IPPOOL => self.engine.set_ip_pool(name, Vec::new()),
            VPC => {
                self.vpcs.remove(name);
            }
            nat::NODE
            | crate::nat::GATEWAY
            | crate::nat::EIP
            | crate::nat::SNAT
            | crate::nat::DNAT
            | crate::nat::FIP => self.nat_gone(kind, name),
            SECURITY_GROUP => {
                self.isolation.group_gone(name);
                self.group_statuses.remove(name);
                self.group_gone_events(name);
                self.flush_group_statuses();
            }
            _ => {}
        }
    }

    fn pod(&mut self, pod: &Pod) {
        let view = objects::pod_view(pod);
        let mut outcome = if objects::is_gone(pod) {
            self.engine.on_pod_gone(&view)
        } else {
            self.engine.on_pod(&view)
        };
        // A pod refused something (its NAD or Subnet not there yet, a conflict) is tried again
        // when NADs, Subnets or IPPools change, and at every garbage collection; the same
        // refusal is reported once (and again only after a while).
        let uid = pod.uid().unwrap_or_default();
        if !objects::is_gone(pod) {
            for (provider, groups) in self.engine.groups_of(&uid) {
                for g in groups.iter().filter(|g| !self.isolation.has_group(g)) {
                    outcome.events.push(missing_group_event(provider, g));
                }
            }
        }
        if outcome.events.is_empty() || objects::is_gone(pod) {
            self.waiting.remove(&uid);
        } else {
            self.waiting.insert(uid.clone(), pod.clone());
        }
        outcome.events = self.refusals.to_report(
            &uid,
            std::mem::take(&mut outcome.events),
            std::time::Instant::now(),
        );
        if objects::is_gone(pod) {
            self.marks.forget(&uid);
        } else {
            let held = Arc::clone(&self.held.borrow());
            let owner = crate::ipam::PodRef {
                namespace: view.namespace.clone(),
                name: view.name.clone(),
                uid: uid.clone(),
            };
            self.marks
                .on_allocation(&owner, &mut outcome, &held.held_ports);
        }
        self.count(&outcome);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        self.writer.submit(Some(pod), node, outcome);
    }

    fn count(&mut self, outcome: &PodOutcome) {
        self.metrics
            .allocations
            .inc_by(u64::from(outcome.new_allocations));
        self.metrics
            .releases
            .inc_by(outcome.delete_ips.len() as u64);
        for e in &outcome.events {
            self.metrics
                .refusals
                .get_or_create(&ReasonLabels {
                    reason: e.reason.to_owned(),
                })
                .inc();
        }
        self.pending_status
            .extend(outcome.touched_subnets.iter().cloned());
    }

    /// Takes in a StatefulSet's replicas (what keeps its pods' slots); whether they changed.
    fn statefulset(&mut self, sts: &StatefulSet) -> bool {
        let ns = sts.namespace().unwrap_or_default();
        let replicas = objects::replicas(sts);
        if !self
            .specs
            .changed(&key_of(STATEFULSET, sts), &json!(replicas))
        {
            return false;
        }
        self.engine
            .set_statefulset(&ns, &sts.name_any(), Some(replicas));
        false
    }

    /// Takes in an IPPool; whether it changed.
    fn ip_pool(&mut self, pool: &DynamicObject) -> bool {
        if !self.specs.changed(&key_of(IPPOOL, pool), &spec_of(pool)) {
            return false;
        }
        let (name, entries) = objects::ip_pool(pool);
        self.engine.set_ip_pool(&name, entries);
        true
    }

    /// Takes in a Vpc.
    fn vpc(&mut self, vpc: &DynamicObject) {
        if self.specs.changed(&key_of(VPC, vpc), &spec_of(vpc)) {
            let (name, input) = objects::vpc_input(vpc);
            self.vpcs.insert(name, input);
        }
    }

    /// Takes in a `SecurityGroup`; whether its rendering changed. A refusal is a Warning event
    /// on the group (its status says it too).
    fn security_group(&mut self, obj: &DynamicObject) -> bool {
        let name = obj.name_any();
        match obj.data.get("status") {
            Some(current) => self.group_statuses.insert(name.clone(), current.clone()),
            None => self.group_statuses.remove(&name),
        };
        let newly_seen = !self.isolation.has_group(&name);
        if !self
            .specs
            .changed(&key_of(SECURITY_GROUP, obj), &spec_of(obj))
        {
            self.flush_group_statuses();
            return false;
        }
        let (changed, refusal) = self.isolation.group(&name, &obj.data);
        if let Some(why) = refusal {
            warn!(security_group = %name, error = %why, "refusing the security group's rules");
            let reference = obj.object_ref(&objects::security_group_resource());
            let writer = Arc::clone(&self.writer);
            let events = vec![Event::warning("InvalidSecurityGroupRule", why)];
            tokio::spawn(async move { writer.publish(&events, &reference).await });
        }
        self.flush_group_statuses();
        // A pod that named it before it existed is tried again (its event goes).
        changed || newly_seen
    }

    /// Every `SecurityGroup`'s status, written where it says something new.
    fn flush_group_statuses(&mut self) {
        let now = Timestamp::now().to_string();
        let names: Vec<String> = self
            .group_statuses
            .keys()
            .cloned()
            .chain(self.isolation.wanted.groups.keys().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for name in names {
            if !self.isolation.has_group(&name) {
                continue;
            }
            let wanted = self.isolation.group_status(&name, &now);
            let Some(status) = status::status_change(self.group_statuses.get(&name), wanted) else {
                continue;
            };
            self.group_statuses.insert(name.clone(), status.clone());
            let writer = Arc::clone(&self.writer);
            tokio::spawn(async move { writer.security_group_status(&name, status).await });
        }
    }

    /// Group `name` is gone: each member pod hears that its attachment is denied all traffic.
    fn group_gone_events(&self, name: &str) {
        let members: Vec<(crate::ipam::PodRef, String)> = self
            .engine
            .members_of(name)
            .map(|(p, provider)| (p.clone(), provider.to_owned()))
            .collect();
        for (pod, provider) in members {
            let outcome = PodOutcome {
                events: vec![missing_group_event(&provider, name)],
                ..PodOutcome::default()
            };
            self.writer
                .submit(Some(&pod_object(&pod)), String::new(), outcome);
        }
    }

    /// Tries the waiting pods again.
    fn retry_waiting(&mut self) {
        let pods: Vec<Pod> = self.waiting.values().cloned().collect();
        for pod in &pods {
            self.pod(pod);
        }
    }

    /// Takes in a NAD; whether anything changed.
    fn nad(&mut self, nad: &DynamicObject) -> bool {
        let ns = nad.namespace().unwrap_or_default();
        let name = nad.name_any();
        if !self.specs.changed(&key_of(NAD, nad), &spec_of(nad)) {
            return false;
        }
        let events = self
            .engine
            .set_nad(&ns, &name, objects::nad_config(nad).as_deref());
        if !events.is_empty() {
            let reference = nad.object_ref(&objects::nad_resource());
            let writer = Arc::clone(&self.writer);
            tokio::spawn(async move { writer.publish(&events, &reference).await });
        }
        true
    }

    /// Takes in a Subnet; whether its spec changed (a repeat, or a change of its status or
    /// metadata only, such as the controller's own status write coming back, is not acted on).
    fn subnet(&mut self, obj: &DynamicObject) -> bool {
        let name = obj.name_any();
        let key = key_of(SUBNET, obj);
        match obj.data.get("status") {
            Some(current) => self.statuses.insert(name.clone(), current.clone()),
            None => self.statuses.remove(&name),
        };
        let deleting = obj.metadata.deletion_timestamp.is_some();
        let wants = SubnetSpec::from_value(obj.data.get("spec").unwrap_or(&Value::Null))
            .is_ok_and(|spec| switch_finalizer::wants_switch(&spec, self.opts.ovn_nb.is_some()));
        let finalizers = obj.metadata.finalizers.clone().unwrap_or_default();
        let was_deleting = self
            .finalizing
            .insert(name.clone(), (finalizers, deleting, wants))
            .is_some_and(|(_, d, _)| d);
        self.finalize(&name);
        if deleting {
            // Released now, as Kube-OVN does; the object stays until its switch is gone.
            if !was_deleting {
                self.validation.remove(&name);
                let released = self.engine.remove_subnet(&name);
                self.delete_ip_resources(released);
            }
            return !was_deleting;
        }
        let spec = spec_of(obj);
        if !self.specs.changed(&key, &spec) {
            return false;
        }
        self.subnet_isolation(obj);
        let outcome = match objects::subnet_input(obj) {
            Ok(input) => self.engine.set_subnet(&input),
            Err(e) => SubnetOutcome::Invalid(e.into()),
        };
        match outcome {
            SubnetOutcome::Valid {
                formatted,
                displaced,
            } => {
                self.validation.insert(name.clone(), Ok(()));
                let wanted = json!({
                    "cidrBlock": formatted.cidr_block,
                    "gateway": formatted.gateway,
                    "excludeIps": formatted.exclude_ips,
                    "protocol": formatted.protocol,
                    "provider": formatted.provider,
                });
                let differs = wanted
                    .as_object()
                    .is_some_and(|w| w.iter().any(|(k, v)| spec.get(k) != Some(v)));
                if differs {
                    let writer = Arc::clone(&self.writer);
                    let name = name.clone();
                    tokio::spawn(async move { writer.format_subnet(&name, wanted).await });
                }
                self.delete_ip_resources(displaced);
            }
            SubnetOutcome::Invalid(e) => {
                warn!(subnet = %name, error = %e, "refusing the subnet");
                self.validation.insert(name.clone(), Err(e.to_string()));
            }
        }
        self.pending_status.insert(name);
        true
    }

    /// Takes in a Subnet's `private`, `allowSubnets` and `acls`; a refusal is a Warning event
    /// on the Subnet and its `IsolationValidated` condition, and what was accepted before stays.
    fn subnet_isolation(&mut self, obj: &DynamicObject) {
        let name = obj.name_any();
        let Ok(spec) = SubnetSpec::from_value(obj.data.get("spec").unwrap_or(&Value::Null)) else {
            return;
        };
        let (changed, refusal) = self.isolation.subnet(&name, &spec);
        self.topology_dirty |= changed;
        if let Some(why) = refusal {
            warn!(subnet = %name, error = %why, "refusing the subnet's isolation");
            let reference = obj.object_ref(&objects::subnet_resource());
            let writer = Arc::clone(&self.writer);
            let events = vec![Event::warning("InvalidSubnetACL", why)];
            tokio::spawn(async move { writer.publish(&events, &reference).await });
        }
    }

    /// Acts on Subnet `name`'s finalizer as [`switch_finalizer::step`] says, once per step.
    fn finalize(&mut self, name: &str) {
        let Some((finalizers, deleting, wants)) = self.finalizing.get(name) else {
            return;
        };
        let view = self.nb_seen.then(|| Arc::clone(&self.held.borrow()));
        let step = switch_finalizer::step(name, finalizers, *deleting, *wants, view.as_deref());
        if step == switch_finalizer::Step::Wait || self.finalizer_steps.get(name) == Some(&step) {
            return;
        }
        self.finalizer_steps.insert(name.to_owned(), step.clone());
        let writer = Arc::clone(&self.writer);
        let subnet = name.to_owned();
        match step {
            switch_finalizer::Step::Wait => {}
            switch_finalizer::Step::Add => {
                tokio::spawn(async move { writer.subnet_finalizer(&subnet, true).await });
            }
            switch_finalizer::Step::Remove => {
                info!(subnet = %name, "the Subnet's switch is gone; letting the Subnet go");
                tokio::spawn(async move { writer.subnet_finalizer(&subnet, false).await });
            }
            switch_finalizer::Step::Hold(holds) => {
                warn!(subnet = %name, %holds, "keeping the deleted Subnet while its switch holds another owner's rows");
                let now = Timestamp::now().to_string();
                let wanted =
                    status::switch_held(status::subnet_status(None, Ok(()), &now), &holds, &now);
                if let Some(status) = status::status_change(self.statuses.get(name), wanted) {
                    tokio::spawn(async move { writer.subnet_status(&subnet, status).await });
                }
            }
        }
    }

    /// The Subnet `name` is gone: what it held is released.
    fn subnet_gone(&mut self, name: &str) {
        self.finalizing.remove(name);
        self.finalizer_steps.remove(name);
        self.statuses.remove(name);
        self.validation.remove(name);
        let released = self.engine.remove_subnet(name);
        self.delete_ip_resources(released);
    }

    /// Deletes the IP resources of allocations a Subnet no longer holds.
    fn delete_ip_resources<T>(&self, released: Vec<(String, T)>) {
        let outcome = PodOutcome {
            delete_ips: released
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !n.is_empty())
                .collect(),
            ..PodOutcome::default()
        };
        self.writer.submit(None, String::new(), outcome);
    }

    /// Writes the status of every Subnet whose usage or validity changed since the last flush.
    fn flush_status(&mut self) {
        if self.pending_status.is_empty() {
            return;
        }
        let now = Timestamp::now().to_string();
        for name in std::mem::take(&mut self.pending_status) {
            let Some(validation) = self.validation.get(&name) else {
                continue;
            };
            let usage = self.engine.usage(&name);
            if let Some(u) = &usage {
                for (family, used, available) in [
                    ("ipv4", u.v4_used, u.v4_available),
                    ("ipv6", u.v6_used, u.v6_available),
                ] {
                    let labels = SubnetLabels {
                        subnet: name.clone(),
                        family: family.to_owned(),
                    };
                    self.metrics
                        .subnet_used
                        .get_or_create(&labels)
                        .set(i64::try_from(used).unwrap_or(i64::MAX));
                    self.metrics
                        .subnet_available
                        .get_or_create(&labels)
                        .set(i64::try_from(available).unwrap_or(i64::MAX));
                }
            }
            let mut wanted = status::subnet_status(
                usage,
                validation.as_ref().copied().map_err(String::as_str),
                &now,
            );
            if self.isolation.subnet_isolated(&name) {
                status::with_isolation(&mut wanted, self.isolation.subnet_error(&name), &now);
            }
            // Written only when it says something new (the times alone are not).
            let Some(status) = status::status_change(self.statuses.get(&name), wanted) else {
                continue;
            };
            let writer = Arc::clone(&self.writer);
            tokio::spawn(async move { writer.subnet_status(&name, status).await });
        }
    }

    async fn collect_garbage(&mut self) -> Result<(), kube::Error> {
        // IP resources first, then pods: the pod of a listed IP resource was created before
        // the IP list, so if it is alive it is in the pod list.
        let ips = self.writer.ips.list(&ListParams::default()).await?;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let listed = pods.list_metadata(&ListParams::default()).await?;
        let uids: HashMap<(String, String), String> = listed
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                Some((
                    (p.metadata.namespace.clone()?, p.metadata.name.clone()?),
                    p.metadata.uid.clone()?,
                ))
            })
            .collect();
        let live: BTreeSet<String> = uids.values().cloned().collect();
        self.restore_foreign(&ips.items, &uids, false);
        // Level-based: an IP resource of ours that the engine does not hold (written by a
        // replica that still believed it led, after this one loaded the cluster) is taken
        // back like at start-up, then collected with the rest if its pod is gone; one that
        // cannot be taken back (its address is someone else's) is deleted if its pod is gone.
        let mut strays = Vec::new();
        let held = self.engine.held_ip_names();
        for obj in &ips.items {
            let Some(record) = objects::ip_record(obj) else {
                continue;
            };
            if held.contains(&record.name) {
                continue;
            }
            if self.engine.restore_ip(&record).is_err() && !live.contains(&record.pod_uid) {
                strays.push(record.name.clone());
            }
        }
        let mut outcome = self.engine.collect_garbage(&live);
        if !strays.is_empty() {
            warn!(
                count = strays.len(),
                "deleting IP resources whose address is held by another pod and whose pod is gone"
            );
        }
        outcome.delete_ips.extend(strays);
        // A pod deleted while a watch was re-listing left no Delete event: it must not be
        // tried again (that would allocate for it anew after every collection).
        self.waiting.retain(|uid, _| live.contains(uid));
        self.refusals.retain(|uid| live.contains(uid));
        if !outcome.delete_ips.is_empty() {
            info!(
                released = outcome.delete_ips.len(),
                "collected allocations of pods that are gone"
            );
        }
        self.count(&outcome);
        self.writer.submit(None, String::new(), outcome);
        Ok(())
    }
}

/// The kinds the leader keeps, as their keys in [`Specs`] begin.
const STATEFULSET: &str = "StatefulSet";
const NAD: &str = "NetworkAttachmentDefinition";
const SUBNET: &str = "Subnet";
const IPPOOL: &str = "IPPool";
const VPC: &str = "Vpc";
const SECURITY_GROUP: &str = "SecurityGroup";

/// Whether a change is a pod's add or update (NAT does not depend on those).
enum ChangeKind {
    Pod,
    Other,
}

/// The key an object is remembered under in [`Specs`]: `kind/namespace/name`.
fn key_of<K: Resource>(kind: &str, obj: &K) -> String {
    format!(
        "{kind}/{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// A pod object carrying only what an event needs (name, namespace, UID).
fn pod_object(pod: &crate::ipam::PodRef) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..kube::api::ObjectMeta::default()
        },
        ..Pod::default()
    }
}

/// The Warning for an attachment (annotation prefix `prefix`) naming a group that does not exist.
fn missing_group_event(prefix: &str, group: &str) -> Event {
    Event::warning(
        "SecurityGroupNotFound",
        format!(
            "{}: {group:?} names no SecurityGroup; the attachment is denied all IP traffic until it exists",
            sidelane_api::annotations::key(prefix, "security_groups")
        ),
    )
}

/// An object's spec (what the controller acts on).
fn spec_of(obj: &DynamicObject) -> Value {
    obj.data.get("spec").cloned().unwrap_or(Value::Null)
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Stepped down (or starting over): nothing queued may be written any more.
        self.writer.stopped.store(true, Ordering::Relaxed);
    }
}

/// Aborts a task when dropped (the Northbound reconciler stops with the leader's work).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
