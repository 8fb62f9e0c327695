//! Checker sets from configuration, with errors naming the entry and field.

use std::time::Duration;

use health_checks::*;
use k8s_openapi::api::core::v1::Node;

fn parse(toml_text: &str) -> CheckersConfig {
    toml::from_str(toml_text).unwrap()
}

#[test]
fn the_default_set_is_the_civo_agents() {
    let built = CheckersConfig::default().build::<Node>().unwrap();
    let names: Vec<(&str, Duration)> = built.iter().map(|c| (c.name(), c.threshold())).collect();
    assert_eq!(
        names,
        [
            ("NodeReady", Duration::from_secs(300)),
            ("GPU", Duration::from_secs(600)),
            ("DiskPressure", Duration::from_secs(1800)),
            ("Cilium", Duration::from_secs(600)),
        ]
    );
}

#[test]
fn every_kind_builds_with_overrides() {
    let c = parse(
        r#"
[[checkers]]
kind = "node-ready"
threshold = "3m"

[[checkers]]
kind = "memory-pressure"

[[checkers]]
kind = "pid-pressure"
enabled = false

[[checkers]]
kind = "condition"
name = "KernelDeadlock"
condition_type = "KernelDeadlock"
bad_statuses = ["True", "Unknown"]
for_at_least = "2m"
missing = "skip"

[[checkers]]
kind = "kubelet-lease"
stale_after = "1m"

[[checkers]]
kind = "http"
name = "Sidecar"
url = "http://{internal_ip}:8080/v0/healthz"
timeout = "3s"

[[checkers]]
kind = "command"
name = "KubeletActive"
program = "/usr/bin/systemctl"
args = ["is-active", "kubelet"]
reason = "KubeletInactive"

[[checkers]]
kind = "file"
name = "RebootRequired"
path = "/var/run/reboot-required"
reason = "RebootRequired"
"#,
    );
    let built = c.build::<Node>().unwrap();
    let names: Vec<&str> = built.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        ["NodeReady", "MemoryPressure", "KernelDeadlock", "KubeletLease", "Sidecar", "KubeletActive", "RebootRequired"]
    );
    assert_eq!(built[0].threshold(), Duration::from_secs(180));
}

#[test]
fn errors_name_the_entry_and_field() {
    let cases = [
        ("[[checkers]]\nkind = \"http\"\n", "checkers[0] (http): url: is required"),
        (
            "[[checkers]]\nkind = \"http\"\nurl = \"http://{ip}/\"\n",
            "checkers[0] (http): url: unknown placeholder {ip}",
        ),
        (
            "[[checkers]]\nkind = \"gpu\"\npath = \"/x\"\n",
            "checkers[0] (gpu): path: does not apply to gpu checkers (their own fields: none)",
        ),
        (
            "[[checkers]]\nkind = \"file\"\npath = \"/x\"\nreason = \"not camel\"\n",
            "checkers[0] (file): reason: \"not camel\" must be a CamelCase word",
        ),
        ("[[checkers]]\nkind = \"condition\"\n", "checkers[0] (condition): condition_type: is required"),
        (
            "[[checkers]]\nkind = \"condition\"\ncondition_type = \"X\"\nbad_statuses = [\"Yes\"]\n",
            "checkers[0] (condition): bad_statuses:",
        ),
        ("[[checkers]]\nkind = \"command\"\n", "checkers[0] (command): program: is required"),
        (
            "[[checkers]]\nkind = \"node-ready\"\n[[checkers]]\nkind = \"node-ready\"\n",
            "checkers[1] (node-ready): the name \"NodeReady\" is already used",
        ),
        ("[[checkers]]\nname = \"x\"\n", "checkers[0]: kind: is required"),
        (
            "[[checkers]]\nkind = \"kubelet-lease\"\nstale_after = \"0s\"\n",
            "checkers[0] (kubelet-lease): stale_after: must be a positive duration",
        ),
    ];
    for (text, want) in cases {
        let e = parse(text).build::<Node>().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with(want), "{e:?} should start with {want:?}");
    }
    // Unknown fields, kinds and bad durations are parse errors with line numbers.
    for (text, want) in [
        ("[[checkers]]\nkind = \"smoke\"\n", "unknown variant `smoke`"),
        ("[[checkers]]\nkind = \"gpu\"\nthreshhold = \"1m\"\n", "unknown field `threshhold`"),
        ("[[checkers]]\nkind = \"gpu\"\nthreshold = \"soon\"\n", "invalid duration \"soon\""),
    ] {
        let e = toml::from_str::<CheckersConfig>(text).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("line"), "{e}");
    }
}

#[test]
fn any_checker_can_be_a_validation_probe() {
    let c = parse(
        r#"
        [[checkers]]
        kind = "node-ready"
        [[checkers]]
        kind = "command"
        name = "BurnIn"
        program = "/bin/true"
        validation_only = true
        "#,
    );
    let built = c.build::<Node>().expect("valid");
    let flags: Vec<(&str, bool)> = built.iter().map(|c| (c.name(), c.validation_only())).collect();
    assert_eq!(flags, [("NodeReady", false), ("BurnIn", true)]);
}
