//! Our OVSDB client against a real ovsdb-server serving OVN's Northbound schema: typed
//! transactions, monitors kept in a replica, the server's echo probes over a minute of
//! idleness, many replies in one read, and a server restart survived by reconnecting.

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use sidelane_ovsdb::{
    Client, ClientError, Condition, MonitorEvent, MonitorRequest, Mutation, Operation, Options,
    Replica, Row, datum, parse_remotes,
};
use sidelane_tests::ovn::{self, DbServer};

const NB: &str = "OVN_Northbound";

fn nb_server() -> (tempfile::TempDir, DbServer) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = DbServer::create(dir.path(), "nb", "/usr/share/ovn/ovn-nb.ovsschema")
        .expect("ovsdb-server starts");
    (dir, server)
}

fn options(remote: &str) -> Options {
    let mut o = Options::new(parse_remotes(remote).expect("a valid remote"));
    o.request_timeout = Duration::from_secs(20);
    o
}

fn row(pairs: &[(&str, Value)]) -> Row {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn insert_switch(name: &str, ports: &[&str]) -> Vec<Operation> {
    let mut ops: Vec<Operation> = ports
        .iter()
        .map(|p| Operation::Insert {
            table: "Logical_Switch_Port".into(),
            row: row(&[
                ("name", json!(p)),
                ("addresses", datum::string_set(["unknown"])),
            ]),
            uuid_name: Some(format!("p_{}", p.replace('-', "_"))),
        })
        .collect();
    ops.push(Operation::Insert {
        table: "Logical_Switch".into(),
        row: row(&[
            ("name", json!(name)),
            (
                "ports",
                datum::set(
                    ports
                        .iter()
                        .map(|p| datum::named_uuid(&format!("p_{}", p.replace('-', "_")))),
                ),
            ),
        ]),
        uuid_name: None,
    });
    ops
}

async fn select_names(client: &Client, table: &str) -> Vec<String> {
    let r = client
        .transact(
            NB,
            &[Operation::Select {
                table: table.into(),
                conditions: vec![],
                columns: Some(vec!["name".into()]),
            }],
        )
        .await
        .expect("select");
    let mut names: Vec<String> = r[0]
        .rows
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[tokio::test]
#[expect(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn transactions_insert_update_mutate_delete_and_report_failures_by_operation() {
    if !ovn::require_installed(
        "transactions_insert_update_mutate_delete_and_report_failures_by_operation",
    ) {
        return;
    }
    let (_dir, server) = nb_server();
    let client = Client::connect(options(&server.unix_remote()))
        .await
        .expect("connects");
    assert!(
        client
            .list_dbs()
            .await
            .expect("list_dbs")
            .contains(&NB.to_owned())
    );
    client.echo().await.expect("echo");

    let results = client
        .transact(NB, &insert_switch("ls1", &["a", "b"]))
        .await
        .expect("insert");
    let ls = results[2].uuid.clone().expect("the switch's uuid");
    assert_eq!(
        select_names(&client, "Logical_Switch_Port").await,
        vec!["a", "b"]
    );

    // Mutate: one more port on the existing switch.
    let r = client
        .transact(
            NB,
            &[
                Operation::Insert {
                    table: "Logical_Switch_Port".into(),
                    row: row(&[("name", json!("c"))]),
                    uuid_name: Some("c".into()),
                },
                Operation::Mutate {
                    table: "Logical_Switch".into(),
                    conditions: vec![Condition::uuid(&ls)],
                    mutations: vec![Mutation::insert(
                        "ports",
                        datum::set([datum::named_uuid("c")]),
                    )],
                },
            ],
        )
        .await
        .expect("mutate");
    assert_eq!(r[1].count, Some(1));
    // Update, then read back.
    client
        .transact(
            NB,
            &[Operation::Update {
                table: "Logical_Switch".into(),
                conditions: vec![Condition::eq("name", json!("ls1"))],
                row: row(&[("other_config", json!(["map", [["subnet", "10.0.0.0/24"]]]))]),
            }],
        )
        .await
        .expect("update");
    let got = client
        .transact(
            NB,
            &[Operation::Select {
                table: "Logical_Switch".into(),
                conditions: vec![Condition::uuid(&ls)],
                columns: Some(vec!["other_config".into(), "ports".into()]),
            }],
        )
        .await
        .expect("select");
    assert_eq!(
        datum::as_string_map(&got[0].rows[0]["other_config"])
            .get("subnet")
            .map(String::as_str),
        Some("10.0.0.0/24")
    );
    assert_eq!(datum::as_uuid_set(&got[0].rows[0]["ports"]).len(), 3);
    // A wait that holds, then one that does not (aborting the transaction).
    let wait = |name: &str| Operation::Wait {
        table: "Logical_Switch".into(),
        conditions: vec![Condition::uuid(&ls)],
        columns: vec!["name".into()],
        until_equal: true,
        rows: vec![row(&[("name", json!(name))])],
        timeout_ms: 0,
    };
    client
        .transact(NB, &[wait("ls1")])
        .await
        .expect("the wait holds");
    let err = client
        .transact(NB, &[wait("other")])
        .await
        .expect_err("the wait fails");
    assert!(
        matches!(err, ClientError::Operation { index: 0, ref error, .. } if error == "timed out"),
        "{err}"
    );
    // A duplicate port name violates the index at commit.
    let err = client
        .transact(NB, &insert_switch("ls2", &["a"]))
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, ClientError::Commit { ref error, .. } if error == "constraint violation"),
        "{err}"
    );
    assert_eq!(select_names(&client, "Logical_Switch").await, vec!["ls1"]);
    // Delete the switch: its ports go with it (they are not root rows).
    let r = client
        .transact(
            NB,
            &[Operation::Delete {
                table: "Logical_Switch".into(),
                conditions: vec![Condition::uuid(&ls)],
            }],
        )
        .await
        .expect("delete");
    assert_eq!(r[0].count, Some(1));
    assert!(
        select_names(&client, "Logical_Switch_Port")
            .await
            .is_empty()
    );
}

async fn next_event(monitor: &mut sidelane_ovsdb::Monitor) -> MonitorEvent {
    tokio::time::timeout(Duration::from_secs(20), monitor.recv())
        .await
        .expect("a monitor event in time")
        .expect("the monitor is open")
}

fn switch_monitor() -> BTreeMap<String, MonitorRequest> {
    [
        ("Logical_Switch".to_owned(), MonitorRequest::default()),
        ("Logical_Switch_Port".to_owned(), MonitorRequest::default()),
    ]
    .into()
}

#[tokio::test]
async fn a_monitor_delivers_a_snapshot_then_updates_that_keep_a_replica_exact() {
    if !ovn::require_installed(
        "a_monitor_delivers_a_snapshot_then_updates_that_keep_a_replica_exact",
    ) {
        return;
    }
    let (_dir, server) = nb_server();
    let client = Client::connect(options(&server.unix_remote()))
        .await
        .expect("connects");
    client
        .transact(NB, &insert_switch("before", &["p0"]))
        .await
        .expect("insert");
    let mut replica = Replica::new(client.schema(NB).await.expect("schema"));
    let mut monitor = client.monitor(NB, &switch_monitor());
    let MonitorEvent::Snapshot(s) = next_event(&mut monitor).await else {
        panic!("a snapshot first")
    };
    replica.reset(s);
    assert_eq!(replica.len("Logical_Switch"), 1);
    assert_eq!(replica.len("Logical_Switch_Port"), 1);

    client
        .transact(NB, &insert_switch("after", &["p1", "p2"]))
        .await
        .expect("insert");
    let MonitorEvent::Update(u) = next_event(&mut monitor).await else {
        panic!("an update")
    };
    replica.apply(u);
    assert_eq!(replica.len("Logical_Switch_Port"), 3);
    // A change made by another client (ovn-nbctl) is seen too: addresses is a set column,
    // external_ids a map, and both are modified by diff.
    let mut cmd = std::process::Command::new("ovn-nbctl");
    cmd.args([
        &format!("--db={}", server.unix_remote()),
        "lsp-set-addresses",
        "p1",
        "0a:00:00:00:00:01 10.0.0.5",
        "0a:00:00:00:00:01 10.0.0.6",
    ]);
    sidelane_tests::process::run(&mut cmd, None, Duration::from_secs(20))
        .expect("runs")
        .checked()
        .expect("ovn-nbctl");
    let MonitorEvent::Update(u) = next_event(&mut monitor).await else {
        panic!("an update")
    };
    replica.apply(u);
    let p1 = replica
        .rows("Logical_Switch_Port")
        .find(|(_, r)| r["name"] == json!("p1"))
        .map(|(_, r)| r.clone())
        .expect("p1 in the replica");
    assert_eq!(
        datum::as_string_set(&p1["addresses"]),
        vec!["0a:00:00:00:00:01 10.0.0.5", "0a:00:00:00:00:01 10.0.0.6"]
    );
}

#[tokio::test]
async fn hundreds_of_requests_in_flight_get_their_own_replies_however_reads_group_them() {
    if !ovn::require_installed(
        "hundreds_of_requests_in_flight_get_their_own_replies_however_reads_group_them",
    ) {
        return;
    }
    let (_dir, server) = nb_server();
    let client = Client::connect(options(&server.tcp_remote()))
        .await
        .expect("connects");
    let names: Vec<String> = (0..300).map(|i| format!("ls{i:03}")).collect();
    let inserts = names.iter().map(|n| {
        let client = client.clone();
        let n = n.clone();
        async move {
            client
                .transact(NB, &insert_switch(&n, &[]))
                .await
                .map(|r| (n, r))
        }
    });
    let results = futures::future::join_all(inserts).await;
    for r in results {
        let (name, r) = r.expect("every transaction succeeds");
        assert!(r[0].uuid.is_some(), "{name} got its uuid");
    }
    assert_eq!(select_names(&client, "Logical_Switch").await, names);
    let echoes = futures::future::join_all((0..200).map(|_| client.echo())).await;
    assert!(echoes.iter().all(Result::is_ok));
    assert_eq!(client.connects(), 1);
}

#[tokio::test]
async fn a_restarted_server_is_reconnected_to_and_monitors_resync_with_a_fresh_snapshot() {
    if !ovn::require_installed(
        "a_restarted_server_is_reconnected_to_and_monitors_resync_with_a_fresh_snapshot",
    ) {
        return;
    }
    let (_dir, mut server) = nb_server();
    let client = Client::connect(options(&server.unix_remote()))
        .await
        .expect("connects");
    let mut monitor = client.monitor(NB, &switch_monitor());
    assert!(matches!(
        next_event(&mut monitor).await,
        MonitorEvent::Snapshot(_)
    ));
    client
        .transact(NB, &insert_switch("kept", &["k1"]))
        .await
        .expect("insert");
    assert!(matches!(
        next_event(&mut monitor).await,
        MonitorEvent::Update(_)
    ));

    server.kill();
    // Changed while we are away: the file persists what was committed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.start().expect("restarts");
    let MonitorEvent::Snapshot(s) = next_event(&mut monitor).await else {
        panic!("a resync snapshot")
    };
    let mut replica = Replica::new(client.schema(NB).await.expect("schema after reconnect"));
    replica.reset(s);
    assert_eq!(replica.len("Logical_Switch"), 1);
    client
        .transact(NB, &insert_switch("new", &[]))
        .await
        .expect("transact after reconnect");
    assert!(matches!(
        next_event(&mut monitor).await,
        MonitorEvent::Update(_)
    ));
    assert_eq!(client.connects(), 2);
}

#[tokio::test]
async fn idling_through_five_server_probes_keeps_the_connection_because_they_are_answered() {
    if !ovn::require_installed(
        "idling_through_five_server_probes_keeps_the_connection_because_they_are_answered",
    ) {
        return;
    }
    let (_dir, server) = nb_server();
    // Our own probes off: only the server's (every 5 s on a TCP remote) keep the line alive.
    let mut opts = options(&server.tcp_remote());
    opts.probe_interval = None;
    let client = Client::connect(opts).await.expect("connects");
    // Idle (reading a local counter sends nothing) until five probes were answered: 25 s,
    // well past the 10 s after which the server drops a client that does not answer.
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    while client.echoes_answered() < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .transact(NB, &insert_switch("still-here", &[]))
        .await
        .expect("transact after idling");
    assert!(
        client.echoes_answered() >= 5,
        "answered {} echo probes",
        client.echoes_answered()
    );
    assert_eq!(client.connects(), 1, "never reconnected");
}

#[tokio::test]
async fn requests_with_no_server_fail_with_the_remote_named() {
    let mut opts = options("unix:/nonexistent/sidelane-nb.sock");
    opts.request_timeout = Duration::from_millis(300);
    let client = Client::start(opts);
    let err = client.echo().await.expect_err("no server");
    assert!(
        err.to_string()
            .contains("unix:/nonexistent/sidelane-nb.sock"),
        "{err}"
    );
}

/// Whether the server at `remote` leads its clustered Northbound database.
async fn leads(remote: &str) -> bool {
    let client = Client::connect(options(remote)).await.expect("connects");
    let r = client
        .transact(
            "_Server",
            &[Operation::Select {
                table: "Database".into(),
                conditions: vec![Condition::eq("name", json!(NB))],
                columns: Some(vec!["leader".into()]),
            }],
        )
        .await
        .expect("select from _Server");
    r[0].rows
        .first()
        .is_some_and(|row| row["leader"] == json!(true))
}

#[tokio::test]
async fn against_a_clustered_database_only_the_leader_is_used() {
    if !ovn::require_installed("against_a_clustered_database_only_the_leader_is_used") {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let schema = "/usr/share/ovn/ovn-nb.ovsschema";
    let raft_a = DbServer::free_port().expect("a port");
    let raft_b = DbServer::free_port().expect("a port");
    let a = DbServer::create_cluster_member(dir.path(), "a", schema, NB, raft_a, None)
        .expect("member a");
    let b = DbServer::create_cluster_member(dir.path(), "b", schema, NB, raft_b, Some(raft_a))
        .expect("member b");
    // Wait until the cluster has a leader and b has joined.
    let start = std::time::Instant::now();
    let (leader, follower) = loop {
        let (la, lb) = (leads(&a.tcp_remote()).await, leads(&b.tcp_remote()).await);
        match (la, lb) {
            (true, false) => break (a.tcp_remote(), b.tcp_remote()),
            (false, true) => break (b.tcp_remote(), a.tcp_remote()),
            _ if start.elapsed() > Duration::from_secs(30) => {
                panic!("no single leader within 30 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    // The follower is listed first: the client passes over it.
    let mut opts = options(&format!("{follower},{leader}"));
    opts.leader_of = Some(NB.to_owned());
    let client = Client::connect(opts).await.expect("connects to the leader");
    assert_eq!(client.connected_to().as_deref(), Some(leader.as_str()));
    client
        .transact(NB, &insert_switch("via-leader", &["p"]))
        .await
        .expect("a transaction through the leader");
}
