//! `node-agent replay` of a recorded simulation: under the recorded policy,
//! and two policies compared on a control-plane blip.

mod common;

use std::process::Command;

use common::scratch;

fn node_agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_node-agent")).args(args).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The simulator's policy at test speed, with `max_unhealthy` as given.
fn policy(max_unhealthy: &str) -> String {
    format!(
        r#"
[policy]
monitor_only = false
reboot_wait = "5s"
history_reset_after = "1m"
verify_for = "1s"

[policy.gates]
startup_grace = "0s"
max_unhealthy = "{max_unhealthy}"

[[checkers]]
kind = "node-ready"
threshold = "2s"
"#
    )
}

#[test]
fn a_looser_storm_guard_would_have_rebooted_nodes_in_a_control_plane_blip() {
    let dir = scratch("replay-blip");
    let tape = dir.join("blip.tape");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/scenarios/control-plane-blip.toml");
    let (code, _, err) = node_agent(&[
        "simulate",
        "--json",
        "--scenario",
        scenario,
        "--duration",
        "15s",
        "--record",
        tape.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (strict, loose) = (dir.join("strict.toml"), dir.join("loose.toml"));
    std::fs::write(&strict, policy("20%")).unwrap();
    std::fs::write(&loose, policy("50%")).unwrap();

    let (code, out, err) = node_agent(&[
        "replay",
        tape.to_str().unwrap(),
        "--json",
        "--compare",
        strict.to_str().unwrap(),
        loose.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    // 20%: three of five Unknown is a storm, nothing is rebooted.
    assert_eq!(r["a_summary"]["actions"], serde_json::json!({}), "{r}");
    assert!(r["a_summary"]["holds"]["StormGuard"].as_u64().unwrap() >= 3, "{r}");
    // 50%: three of five is tolerated; the pool's own guard lets one node at
    // a time be rebooted (the floor), and holds the others.
    assert!(r["b_summary"]["actions"]["reboot"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["b_summary"]["holds"]["DomainStorm"].as_u64().unwrap() >= 1, "{r}");
    let diff = r["differences"].as_array().unwrap();
    assert!(diff.iter().any(|d| d["b"] == "reboot (active)"), "a reboot only the loose policy takes: {r}");
    assert!(diff.iter().any(|d| d["a"] == "reboot held: StormGuard"), "a hold only the strict policy takes: {r}");

    // The text form says the same, one line per difference.
    let (code, text, _) =
        node_agent(&["replay", tape.to_str().unwrap(), "--compare", strict.to_str().unwrap(), loose.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(text.contains("decisions differ:") && text.contains("B: reboot (active)"), "{text}");

    // Under the strict policy alone: every reboot held.
    let (code, text, _) = node_agent(&["replay", tape.to_str().unwrap(), "--config", strict.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(text.contains("holds: StormGuard") && text.contains("actions: none"), "{text}");
}

#[test]
fn bad_recordings_and_configurations_are_refused_clearly() {
    let dir = scratch("replay-bad");
    let missing = dir.join("missing.tape");
    let (code, _, err) = node_agent(&["replay", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.tape") && err.contains("cannot read the recording"), "{err}");
    let junk = dir.join("junk.tape");
    std::fs::write(&junk, "not json\n").unwrap();
    let (code, _, err) = node_agent(&["replay", junk.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("line 1: not a recording line"), "{err}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[policy.domains]\nlabels = [\"bad key!\"]\n").unwrap();
    let (code, _, err) = node_agent(&["replay", junk.to_str().unwrap(), "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml") && err.contains("domains.labels[0]"), "{err}");
}
