//! Failure domains through the engine: a zone down as a whole is held while
//! a broken node elsewhere is repaired, and a small pool is repaired one
//! node at a time. Paused tokio time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use health_core::observer::{DomainStormEvent, HoldEvent};
use health_core::*;
use parking_lot::Mutex;

mod common;

use common::{MIN, Node, T0, ready_checker};

const ZONE: &str = "topology.kubernetes.io/zone";
const POOL: &str = "kubernetes.civo.com/civo-node-pool";

/// The fleet: every node's labels, which are broken, and when a rebooted
/// node comes back (a reboot takes three minutes).
struct World {
    nodes: Vec<(String, Vec<(&'static str, String)>)>,
    broken: Mutex<HashMap<String, Option<tokio::time::Instant>>>,
    actions: Mutex<Vec<(String, Action, Duration)>>,
    start: tokio::time::Instant,
}

impl World {
    fn new(nodes: Vec<(String, Vec<(&'static str, String)>)>, broken: &[&str]) -> Arc<Self> {
        Arc::new(World {
            nodes,
            broken: Mutex::new(broken.iter().map(|n| ((*n).to_owned(), None)).collect()),
            actions: Mutex::new(Vec::new()),
            start: tokio::time::Instant::now(),
        })
    }

    fn targets(&self) -> Vec<Node> {
        let now = tokio::time::Instant::now();
        let mut broken = self.broken.lock();
        broken.retain(|_, back| back.is_none_or(|at| now < at));
        self.nodes
            .iter()
            .map(|(name, labels)| {
                labels.iter().fold(Node::new(name, !broken.contains_key(name)), |n, (k, v)| n.with_label(k, v))
            })
            .collect()
    }

    fn acted_on(&self, node: &str) -> Vec<(Action, Duration)> {
        self.actions.lock().iter().filter(|(n, ..)| n == node).map(|(_, a, t)| (*a, *t)).collect()
    }
}

struct Exec(Arc<World>);

#[async_trait]
impl Executor<Node> for Exec {
    async fn execute(&self, action: Action, target: &Node) -> Result<(), ExecError> {
        let w = &self.0;
        w.actions.lock().push((target.name.clone(), action, w.start.elapsed()));
        if action == Action::Reboot
            && let Some(back) = w.broken.lock().get_mut(&target.name)
        {
            *back = Some(tokio::time::Instant::now() + 3 * MIN);
        }
        Ok(())
    }
}

/// A domain storm report: domain, active, unhealthy, total, limit.
type Storm = (String, bool, u32, u32, u32);

/// What the observers saw: holds (node, reason, domain text) and domain storms.
#[derive(Default)]
struct Seen {
    holds: Mutex<Vec<(String, HoldReason, Option<String>)>>,
    storms: Mutex<Vec<Storm>>,
}

impl Observer<Node> for Seen {
    fn on_hold(&self, _: &Node, e: &HoldEvent<'_>) {
        let domain = e.domain.map(|d| format!("{}={} {}/{} limit {}", d.label, d.value, d.unhealthy, d.total, d.limit));
        self.holds.lock().push((e.node.to_owned(), e.hold.reason, domain));
    }
    fn on_domain_storm(&self, e: &DomainStormEvent<'_>) {
        let d = &e.domain;
        self.storms.lock().push((format!("{}={}", d.label, d.value), e.active, d.unhealthy, d.total, d.limit));
    }
}

async fn run(world: &Arc<World>, policy: Policy, minutes: u32) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let mut e = Engine::builder(Arc::new(MemoryStore::new()), Arc::new(Exec(Arc::clone(world))))
        .policy(policy)
        .checker(ready_checker())
        .observer(Arc::clone(&seen) as Arc<dyn Observer<Node>>)
        .clock(Arc::new(TokioClock::starting_at(Timestamp::from_secs(T0))))
        .build()
        .expect("valid engine");
    for _ in 0..minutes {
        let _ = e.run_pass(&world.targets()).await;
        tokio::time::sleep(MIN).await;
    }
    seen
}

fn active() -> Policy {
    Policy::default().with_monitor_only(false)
}

/// 30 nodes in 6 zones of 5 (`zone-a`: node-0..4, `zone-b`: node-5..9, ...).
fn six_zones() -> Vec<(String, Vec<(&'static str, String)>)> {
    (0..30).map(|i| (format!("node-{i}"), vec![(ZONE, format!("zone-{}", char::from(b'a' + (i / 5) as u8)))])).collect()
}

#[tokio::test(start_paused = true)]
async fn a_zone_down_as_a_whole_is_held_while_a_node_elsewhere_is_repaired() {
    let world = World::new(six_zones(), &["node-0", "node-1", "node-2", "node-3", "node-4", "node-7"]);
    // 6 of 30 unhealthy: under the cluster-wide 20% (6), so only the domain holds zone-a.
    let seen = run(&world, active(), 60).await;

    for i in 0..5 {
        assert_eq!(world.acted_on(&format!("node-{i}")), vec![], "node-{i}: nothing in the broken zone");
    }
    let repaired = world.acted_on("node-7");
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    assert_eq!(repaired[0].0, Action::Reboot);

    let holds = seen.holds.lock();
    for i in 0..5 {
        let node = format!("node-{i}");
        let hold = holds.iter().find(|(n, ..)| *n == node).expect("held");
        assert_eq!(hold.1, HoldReason::DomainStorm);
        assert_eq!(hold.2.as_deref(), Some("topology.kubernetes.io/zone=zone-a 5/5 limit 1"));
    }
    assert!(holds.iter().all(|(n, ..)| n != "node-7"), "node-7 was never held: {holds:?}");
    assert_eq!(*seen.storms.lock(), vec![("topology.kubernetes.io/zone=zone-a".to_owned(), true, 5, 5, 1)]);
}

#[tokio::test(start_paused = true)]
async fn without_domains_the_broken_zone_is_rebooted_node_by_node() {
    // The cluster-wide guard alone (the old behaviour): 6 of 30 is not a storm.
    let world = World::new(six_zones(), &["node-0", "node-1", "node-2", "node-3", "node-4", "node-7"]);
    let _ = run(&world, active().with_domains(Domains::off()), 60).await;
    for i in 0..5 {
        assert!(!world.acted_on(&format!("node-{i}")).is_empty(), "node-{i} rebooted");
    }
}

/// A 20-node cluster: pool `small` (node-0..2) and pool `big` (node-3..19).
fn small_pool() -> Vec<(String, Vec<(&'static str, String)>)> {
    (0..20).map(|i| (format!("node-{i}"), vec![(POOL, if i < 3 { "small" } else { "big" }.to_owned())])).collect()
}

#[tokio::test(start_paused = true)]
async fn one_broken_node_of_a_three_node_pool_is_repaired() {
    let world = World::new(small_pool(), &["node-0"]);
    let seen = run(&world, active(), 30).await;
    assert_eq!(world.acted_on("node-0").iter().map(|a| a.0).collect::<Vec<_>>(), vec![Action::Reboot]);
    assert!(seen.holds.lock().is_empty());
}

#[tokio::test(start_paused = true)]
async fn two_broken_nodes_of_a_three_node_pool_are_repaired_one_at_a_time() {
    let world = World::new(small_pool(), &["node-0", "node-1"]);
    let seen = run(&world, active(), 60).await;
    let (a, b) = (world.acted_on("node-0"), world.acted_on("node-1"));
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
    let (first, second) = if a[0].1 <= b[0].1 { (a[0].1, b[0].1) } else { (b[0].1, a[0].1) };
    // The second starts only once the first is back (a reboot takes 3 minutes).
    assert!(second >= first + 3 * MIN, "first at {first:?}, second at {second:?}");
    let holds = seen.holds.lock().clone();
    assert!(
        holds.iter().any(|(_, r, d)| *r == HoldReason::DomainStorm
            && d.as_deref() == Some("kubernetes.civo.com/civo-node-pool=small 2/3 limit 1")),
        "{holds:?}"
    );
    // Without the floor (min_repairable = 0) the pool would not be repaired at all.
    let world = World::new(small_pool(), &["node-0", "node-1"]);
    let floor_off = Domains { min_repairable: 0, ..Domains::default() };
    let _ = run(&world, active().with_domains(floor_off), 60).await;
    assert_eq!((world.acted_on("node-0"), world.acted_on("node-1")), (vec![], vec![]));
}

#[tokio::test(start_paused = true)]
async fn the_floor_closes_while_another_node_of_the_cluster_is_unhealthy() {
    // Two of the small pool broken and one big-pool node: the pool's storm
    // holds it (the rest of the cluster is not healthy), the big node is repaired.
    let world = World::new(small_pool(), &["node-0", "node-1", "node-10"]);
    let seen = run(&world, active(), 4 + 3).await;
    assert_eq!((world.acted_on("node-0"), world.acted_on("node-1")), (vec![], vec![]));
    assert_eq!(world.acted_on("node-10").len(), 1);
    assert!(seen.holds.lock().iter().filter(|(_, r, _)| *r == HoldReason::DomainStorm).count() >= 2);
}

#[test]
fn domain_settings_are_checked() {
    let bad = |d: Domains| Policy::default().with_domains(d).validate().unwrap_err().to_string();
    assert_eq!(
        bad(Domains { labels: vec!["zone".into(), "zone".into()], ..Domains::default() }),
        "domains.labels[1]: \"zone\" is listed twice"
    );
    assert!(
        bad(Domains { labels: vec!["bad key!".into()], ..Domains::default() })
            .starts_with("domains.labels[0]: \"bad key!\" is not a label key")
    );
    assert!(bad(Domains { labels: vec!["Example.COM/zone".into()], ..Domains::default() }).contains("DNS subdomain"));
    assert_eq!(
        bad(Domains { labels: (0..5).map(|i| format!("l{i}")).collect(), ..Domains::default() }),
        "domains.labels: at most 4 labels, got 5"
    );
    assert_eq!(
        bad(Domains { max_unhealthy: Limit::Count(0), ..Domains::default() }),
        "domains.max_unhealthy must allow at least one node: a count of at least 1 or a percentage above 0%"
    );
    assert_eq!(
        bad(Domains { min_repairable: 101, ..Domains::default() }),
        "domains.min_repairable must be at most 100, got 101"
    );
    let p: Policy = serde_json::from_str(r#"{"domains":{"labels":["rack"],"max_unhealthy":"50%","min_repairable":2}}"#)
        .expect("parses");
    assert_eq!(
        p.domains,
        Domains { labels: vec!["rack".into()], max_unhealthy: Limit::percent(50), min_repairable: 2 }
    );
    assert!(p.validate().is_ok());
}

#[test]
fn the_floor_opens_only_for_a_domain_partly_up_in_a_healthy_cluster() {
    let p = Policy::default();
    let d = DomainCount { total: 3, unhealthy: 2, in_flight: 0 };
    assert!(d.storm(&p));
    assert!(d.floor_open(&p, 2), "the rest of the cluster is healthy");
    assert!(!d.floor_open(&p, 3), "a node outside the domain is unhealthy");
    assert!(!DomainCount { in_flight: 1, ..d }.floor_open(&p, 2), "one already under way");
    assert!(!DomainCount { unhealthy: 3, ..d }.floor_open(&p, 3), "down as a whole");
    let b = Budget { total: 20, unhealthy: 2, domains: [None, Some(d), None, None], ..Budget::default() };
    assert_eq!(b.domain_hold(&p), None);
    let b = Budget { unhealthy: 3, ..b };
    assert_eq!(b.domain_hold(&p), Some(1));
}
