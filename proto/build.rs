//! Compiles `nodeagent/v1/*.proto` with protox (pure Rust: no system protoc).

use std::io;

fn main() -> io::Result<()> {
    let protos = ["nodeagent/v1/health.proto", "nodeagent/v1/admin.proto", "nodeagent/v1/executor.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."]).map_err(|e| io::Error::other(e.to_string()))?;
    // Maps as BTreeMap: a report prints (and compares) the same every time.
    tonic_prost_build::configure().build_client(true).build_server(true).btree_map(".").compile_fds(fds)
}
