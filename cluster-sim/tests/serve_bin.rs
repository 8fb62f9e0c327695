//! The `cluster-sim serve` binary takes the Civo API key from a file or the
//! environment, so it need not be on the command line (where `ps` shows it).

mod common;

use std::process::Stdio;

use cluster_sim::ClusterConfig;
use common::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `cluster-sim serve` with `args` and `env`, returning the child and its Civo URL.
async fn serve(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cluster-sim"));
    cmd.args(["serve", "--nodes", "1"]).args(args).env_remove("CLUSTER_SIM_CIVO_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).kill_on_drop(true).spawn().expect("cluster-sim starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let line = within("the serve line", BufReader::new(stdout).lines().next_line())
        .await
        .expect("stdout is readable")
        .expect("cluster-sim prints its URLs");
    let urls: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    (child, urls["civo_url"].as_str().expect("civo_url").to_owned())
}

/// The status the Civo API answers a list of instances made with `key`.
async fn status_with_key(civo_url: &str, key: &str) -> u16 {
    let id = ClusterConfig::default().cluster_id;
    let url = format!("{civo_url}/v2/kubernetes/clusters/{id}/instances?region=lon1");
    let r = common::http().get(url).header("authorization", format!("bearer {key}")).send().await.unwrap();
    r.status().as_u16()
}

#[tokio::test]
async fn the_civo_key_is_read_from_a_file_or_the_environment() {
    let file = std::env::temp_dir().join(format!("cluster-sim-{}-civo.key", std::process::id()));
    std::fs::write(&file, "key-from-file\n").unwrap();
    let path = file.to_str().unwrap();

    let (mut child, civo) = serve(&["--civo-api-key-file", path], &[]).await;
    assert_eq!(status_with_key(&civo, "key-from-file").await, 200, "the key in the file is accepted");
    assert_eq!(status_with_key(&civo, "sim-civo-key").await, 401, "the default key is not");
    child.kill().await.unwrap();

    let (mut child, civo) = serve(&[], &[("CLUSTER_SIM_CIVO_API_KEY", "key-from-env")]).await;
    assert_eq!(status_with_key(&civo, "key-from-env").await, 200, "the key in the environment is accepted");
    assert_eq!(status_with_key(&civo, "sim-civo-key").await, 401, "the default key is not");
    child.kill().await.unwrap();

    let (mut child, civo) = serve(&["--civo-key", "key-from-argv"], &[]).await;
    assert_eq!(status_with_key(&civo, "key-from-argv").await, 200, "--civo-key still works");
    child.kill().await.unwrap();

    std::fs::remove_file(&file).unwrap();
}
