//! The plugin binary driven exactly as Multus drives it (environment, config on stdin, a netns
//! path), against a fake agent serving HTTP/1.1 on a unix socket.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
};

use serde_json::{Value, json};

/// One request the fake agent saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    body: Value,
}

/// A fake agent answering every request with `status` and `body`.
struct FakeAgent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeAgent {
    fn start(status: u16, body: &str) -> FakeAgent {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("kube-ovn-daemon.sock");
        let listener = UnixListener::bind(&socket).expect("binding the fake agent's socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body = body.to_owned();
        let log = Arc::clone(&seen);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                reader.read_line(&mut line).expect("request line");
                let path = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).expect("header");
                    if h == "\r\n" || h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().expect("a numeric Content-Length");
                    }
                }
                let mut req = vec![0; len];
                reader.read_exact(&mut req).expect("body");
                log.lock().expect("lock").push(Seen {
                    path,
                    body: serde_json::from_slice(&req).unwrap_or(Value::Null),
                });
                let mut conn = reader.into_inner();
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        FakeAgent {
            _dir: dir,
            socket,
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Runs the plugin as Multus does; returns (stdout as JSON or Null, exit code).
fn plugin(command: &str, ifname: &str, config: &Value) -> (Value, i32) {
    plugin_raw(command, ifname, config.to_string().as_bytes(), true)
}

fn plugin_raw(command: &str, ifname: &str, stdin: &[u8], pod_args: bool) -> (Value, i32) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidelane-cni"));
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "3f2a9c0d5e7b41aa8c1d")
        .env("CNI_NETNS", "/var/run/netns/cni-test")
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if pod_args {
        cmd.env(
            "CNI_ARGS",
            "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=samplepod;\
             K8S_POD_INFRA_CONTAINER_ID=3f2a9c0d5e7b41aa8c1d;K8S_POD_UID=u-1",
        );
    }
    let mut child = cmd.spawn().expect("starting the plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("writing the config");
    let out = child.wait_with_output().expect("the plugin finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
    };
    (value, out.status.code().expect("an exit code"))
}

fn ovn_config(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "attachnet",
        "type": "kube-ovn",
        "server_socket": socket,
        "provider": "attachnet.default.ovn"
    })
}

const OVN_ANSWER: &str = r#"{"ips":[{"protocol":"IPv4","ip":"172.17.0.5","cidr":"172.17.0.0/16","gateway":"172.17.0.1"}],"mac_address":"00:00:00:8a:3c:4f","routes":null,"mtu":1400,"nicname":"net1","dns":{}}"#;

#[test]
fn add_forwards_the_pod_and_attachment_and_prints_the_result_in_each_version() {
    let agent = FakeAgent::start(200, OVN_ANSWER);
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let (out, code) = plugin("ADD", "net1", &ovn_config(version, &agent.socket));
        assert_eq!(code, 0, "{out}");
        assert_eq!(out["cniVersion"], json!(version));
        assert_eq!(out["interfaces"][0]["name"], json!("net1"));
        assert_eq!(out["interfaces"][0]["mac"], json!("00:00:00:8a:3c:4f"));
        assert_eq!(
            out["interfaces"][0]["sandbox"],
            json!("/var/run/netns/cni-test")
        );
        assert_eq!(out["ips"][0]["address"], json!("172.17.0.5/16"));
        assert_eq!(out["ips"][0]["gateway"], json!("172.17.0.1"));
        assert_eq!(out["ips"][0]["interface"], json!(0));
        let has_version = out["ips"][0].get("version").is_some();
        assert_eq!(has_version, version.starts_with("0."), "{version}: {out}");
        assert_eq!(
            out["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "172.17.0.1"}]),
            "no routes from the agent: a default route per gateway"
        );
    }
    let seen = agent.seen();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0].path, "/api/v1/add");
    let req = &seen[0].body;
    assert_eq!(req["cni_type"], json!("kube-ovn"));
    assert_eq!(req["pod_name"], json!("samplepod"));
    assert_eq!(req["pod_namespace"], json!("default"));
    assert_eq!(req["container_id"], json!("3f2a9c0d5e7b41aa8c1d"));
    assert_eq!(req["net_ns"], json!("/var/run/netns/cni-test"));
    assert_eq!(req["if_name"], json!("net1"));
    assert_eq!(req["provider"], json!("attachnet.default.ovn"));
}

#[test]
fn the_seeds_macvlan_config_gets_an_ipam_result_without_interfaces() {
    let agent = FakeAgent::start(
        200,
        r#"{"ips":[{"protocol":"IPv4","ip":"172.18.0.9","cidr":"172.18.0.0/16"}],"mac_address":"","routes":[{"dst":"10.0.0.0/8","gw":"172.18.0.254"}],"mtu":0,"nicname":"","dns":{}}"#,
    );
    // The seed's NAD (multi-nic-ipam.en.txt) verbatim, with the name Multus adds and our socket.
    let mut cfg: Value = serde_json::from_str(
        r#"{
      "cniVersion": "0.3.0",
      "type": "macvlan",
      "master": "eth0",
      "mode": "bridge",
      "ipam": {
        "type": "kube-ovn",
        "server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
        "provider": "macvlan.default"
      }
    }"#,
    )
    .expect("the seed's JSON");
    cfg["name"] = json!("macvlan");
    cfg["ipam"]["server_socket"] = json!(agent.socket);
    let (out, code) = plugin("ADD", "net1", &cfg);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.get("interfaces"), None);
    assert_eq!(
        out["ips"],
        json!([{"address": "172.18.0.9/16", "version": "4"}])
    );
    assert_eq!(
        out["routes"],
        json!([{"dst": "10.0.0.0/8", "gw": "172.18.0.254"}])
    );
    let seen = agent.seen();
    assert_eq!(seen[0].body["cni_type"], json!("macvlan"));
    assert_eq!(seen[0].body["provider"], json!("macvlan.default"));
}

/// `config` with a `prevResult` naming `net1` in the test's sandbox.
fn with_prev_result(mut config: Value) -> Value {
    config["prevResult"] = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "net1", "mac": "00:00:00:8a:3c:4f",
                        "sandbox": "/var/run/netns/cni-test"}],
        "ips": [{"address": "172.17.0.5/16", "gateway": "172.17.0.1", "interface": 0}]
    });
    config
}

#[test]
fn del_and_check_are_forwarded_and_succeed_silently() {
    let agent = FakeAgent::start(204, "");
    let (out, code) = plugin("DEL", "net1", &ovn_config("1.0.0", &agent.socket));
    assert_eq!((out, code), (Value::Null, 0));
    let checked = with_prev_result(ovn_config("1.0.0", &agent.socket));
    let (out, code) = plugin("CHECK", "net1", &checked);
    assert_eq!((out, code), (Value::Null, 0));
    let seen = agent.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, vec!["/api/v1/del", "/api/v1/check"]);
    assert_eq!(
        seen[1].body["expected"],
        json!({"mac": "00:00:00:8a:3c:4f", "ips": ["172.17.0.5/16"]}),
        "CHECK sends what prevResult says of the interface"
    );
}

#[test]
fn check_without_a_usable_prev_result_fails_with_the_specs_codes() {
    let agent = FakeAgent::start(204, "");
    let bare = ovn_config("1.0.0", &agent.socket);
    let (out, code) = plugin("CHECK", "net1", &bare);
    assert_eq!((out["code"].clone(), code), (json!(7), 1), "{out}");
    assert_eq!(out["msg"], "CHECK needs prevResult");
    let mut garbage = bare.clone();
    garbage["prevResult"] = json!("junk");
    let (out, _) = plugin("CHECK", "net1", &garbage);
    assert_eq!(out["code"], json!(6), "{out}");
    let (out, _) = plugin("CHECK", "net2", &with_prev_result(bare));
    assert_eq!(out["code"], json!(7), "{out}");
    assert_eq!(out["msg"], "prevResult does not name the interface");
    assert!(agent.seen().is_empty(), "nothing reached the agent");
}

#[test]
fn a_request_over_the_agents_limit_is_refused_as_invalid_config_naming_the_limit() {
    let agent = FakeAgent::start(200, OVN_ANSWER);
    let mut config = ovn_config("1.0.0", &agent.socket);
    let routes: Vec<Value> = (0..3000)
        .map(|i| json!({"dst": format!("10.{}.{}.0/24", i / 256, i % 256), "gw": "172.17.0.1"}))
        .collect();
    config["routes"] = json!(routes);
    let (out, exit) = plugin("ADD", "net1", &config);
    assert_eq!(exit, 1);
    assert_eq!(out["code"], json!(7), "{out}");
    let details = out["details"].as_str().unwrap_or_default();
    assert!(details.contains("limit of 65536 bytes"), "{out}");
    assert!(agent.seen().is_empty(), "nothing was sent");
}

#[test]
fn the_agents_code_for_an_error_is_passed_on() {
    for (code, msg) in [
        (4, "invalid environment variables"),
        (7, "invalid network configuration"),
        (3, "unknown container"),
        (101, "the interface is not as expected"),
    ] {
        let agent = FakeAgent::start(
            400,
            &format!(r#"{{"error":"pod default/samplepod: bad","cni_code":{code}}}"#),
        );
        let (out, exit) = plugin("ADD", "net1", &ovn_config("1.0.0", &agent.socket));
        assert_eq!(exit, 1);
        assert_eq!(out["code"], json!(code));
        assert_eq!(out["msg"], json!(msg));
    }
}

#[test]
fn del_without_an_agent_succeeds() {
    let cfg = ovn_config("1.0.0", Path::new("/nonexistent/kube-ovn-daemon.sock"));
    assert_eq!(plugin("DEL", "net1", &cfg), (Value::Null, 0));
}

#[test]
fn version_answers_without_an_agent() {
    let (out, code) = plugin("VERSION", "", &json!({"cniVersion": "1.0.0"}));
    assert_eq!(code, 0);
    assert_eq!(
        out["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn an_agent_error_is_rpc_failed_with_its_status_and_message() {
    let agent = FakeAgent::start(
        500,
        r#"{"error":"no address allocated to pod default/samplepod provider attachnet.default.ovn"}"#,
    );
    let (out, code) = plugin("ADD", "net1", &ovn_config("0.3.1", &agent.socket));
    assert_eq!(code, 1);
    assert_eq!(out["code"], json!(11));
    assert_eq!(out["msg"], json!("RPC failed"));
    assert_eq!(out["cniVersion"], json!("0.3.1"));
    assert_eq!(
        out["details"],
        json!(
            "request ip return 500 no address allocated to pod default/samplepod provider attachnet.default.ovn"
        )
    );
}

#[test]
fn an_unreachable_agent_on_add_is_rpc_failed_naming_the_socket() {
    let cfg = ovn_config("1.0.0", Path::new("/nonexistent/kube-ovn-daemon.sock"));
    let (out, code) = plugin("ADD", "net1", &cfg);
    assert_eq!((out["code"].clone(), code), (json!(11), 1));
    assert!(
        out["details"]
            .as_str()
            .is_some_and(|d| d.contains("/nonexistent/kube-ovn-daemon.sock")),
        "{out}"
    );
}

#[test]
fn every_bad_input_gets_a_spec_error_never_a_panic() {
    let sock = Path::new("/nonexistent.sock");
    let cases: Vec<(&str, Vec<u8>, bool, u64)> = vec![
        ("ADD", b"{not json".to_vec(), true, 6),
        (
            "ADD",
            br#"{"cniVersion":"0.1.0","name":"n","type":"kube-ovn"}"#.to_vec(),
            true,
            1,
        ),
        (
            "ADD",
            br#"{"cniVersion":"1.0.0","type":"kube-ovn"}"#.to_vec(),
            true,
            7,
        ),
        (
            "ADD",
            br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#.to_vec(),
            true,
            7,
        ),
        (
            "ADD",
            ovn_config("1.0.0", sock).to_string().into_bytes(),
            false,
            7,
        ),
        (
            "FROB",
            ovn_config("1.0.0", sock).to_string().into_bytes(),
            true,
            4,
        ),
        (
            "CHECK",
            ovn_config("0.3.1", sock).to_string().into_bytes(),
            true,
            1,
        ),
    ];
    for (command, stdin, pod_args, want) in cases {
        let (out, code) = plugin_raw(command, "net1", &stdin, pod_args);
        assert_eq!(
            code,
            1,
            "{command} {}: {out}",
            String::from_utf8_lossy(&stdin)
        );
        assert_eq!(
            out["code"],
            json!(want),
            "{command} {}: {out}",
            String::from_utf8_lossy(&stdin)
        );
        assert!(out["msg"].as_str().is_some_and(|m| !m.is_empty()), "{out}");
    }
}

#[test]
fn gc_and_status_are_refused_before_cni_1_1_0_and_forwarded_from_it() {
    let agent = FakeAgent::start(204, "");
    for command in ["GC", "STATUS"] {
        let (out, code) = plugin(command, "", &ovn_config("1.0.0", &agent.socket));
        assert_eq!(
            (out["code"].clone(), code),
            (json!(1), 1),
            "{command}: {out}"
        );
        assert_eq!(
            out["msg"],
            json!(format!("{command} needs cniVersion 1.1.0 or later"))
        );
    }
    assert!(agent.seen().is_empty(), "nothing reached the agent");
    for command in ["GC", "STATUS"] {
        let (out, code) = plugin(command, "", &ovn_config("1.1.0", &agent.socket));
        assert_eq!((out, code), (Value::Null, 0), "{command}");
    }
    let paths: Vec<String> = agent.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/api/v1/gc", "/api/v1/status"]);
}
