//! The command executor with real scripts, and the no-op and dry-run wrappers.

use std::time::Duration;

use health_core::{Action, ExecError, Executor};
use recovery_exec::*;

struct Host;

impl ExecTarget for Host {
    fn node_name(&self) -> &str {
        "node-1"
    }
    fn pool_id(&self) -> Option<&str> {
        Some("pool-a")
    }
}

fn sh(script: &str) -> CommandExecutor {
    CommandExecutor::new("/bin/sh", vec!["-c".into(), script.into()], vec![Action::Reboot])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_get_the_node_identity_and_map_exit_codes() {
    sh("test \"$NODE_NAME\" = node-1 && test \"$NODE_POOL\" = pool-a && test \"$ACTION\" = reboot")
        .execute(Action::Reboot, &Host)
        .await
        .unwrap();
    let e = sh("echo ssh: connect refused >&2; exit 255").execute(Action::Reboot, &Host).await.unwrap_err();
    assert_eq!(e.to_string(), "reboot failed: /bin/sh exited with 255: ssh: connect refused");
    let e = sh("exit 0").execute(Action::Drain, &Host).await.unwrap_err();
    assert!(matches!(e, ExecError::Unsupported { action: Action::Drain }));
    let e = sh("sleep 60").with_timeout(Duration::from_millis(200)).execute(Action::Reboot, &Host).await.unwrap_err();
    assert!(matches!(e, ExecError::Timeout { action: Action::Reboot, .. }), "{e}");
    let e = sh("head -c 100000 /dev/zero | tr '\\0' y; exit 3")
        .with_max_output(16)
        .execute(Action::Reboot, &Host)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("yyyyyyyyyyyyyyyy [... 99984 more bytes]"), "{e}");
}

#[tokio::test]
async fn noop_and_dry_run_succeed_without_acting() {
    NoopExecutor.execute(Action::Replace, &Host).await.unwrap();
    DryRun.execute(Action::Reboot, &Host).await.unwrap();
}

/// A command past its timeout is killed with its process group and
/// reported as of unknown outcome (it may have acted).
#[tokio::test]
async fn a_hung_command_times_out_as_unknown() {
    let e = sh("sleep 300 & wait").with_timeout(Duration::from_millis(200)).execute(Action::Reboot, &Host).await;
    assert!(matches!(e, Err(ExecError::Timeout { action: Action::Reboot, .. })), "{e:?}");
}
