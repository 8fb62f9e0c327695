//! gRPC health probes against a real tonic-health server on loopback.
#![cfg(feature = "grpc")]

use std::time::Duration;

use health_checks::*;
use health_core::CheckOutcome;

struct Host(String);

impl NodeIdentity for Host {
    fn node_name(&self) -> &str {
        "node-1"
    }
    fn internal_ip(&self) -> Option<&str> {
        Some(&self.0)
    }
}

fn probe(port: u16, service: &str) -> GrpcHealthProbe {
    let mut c = GrpcProbeConfig::new("DevicePlugin", format!("http://{{internal_ip}}:{port}"));
    c.service = service.to_owned();
    c.timeout = Duration::from_millis(500);
    c.connect_timeout = Duration::from_millis(500);
    GrpcHealthProbe::new(c).expect("valid probe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_probe_outcomes() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("plugin.v1.Device", tonic_health::ServingStatus::Serving).await;
    reporter.set_service_status("plugin.v1.Broken", tonic_health::ServingStatus::NotServing).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let host = Host("127.0.0.1".into());
    assert_eq!(probe(port, "").probe(&host).await.unwrap(), CheckOutcome::Pass, "the whole server");
    assert_eq!(probe(port, "plugin.v1.Device").probe(&host).await.unwrap(), CheckOutcome::Pass);
    let out = probe(port, "plugin.v1.Broken").probe(&host).await.unwrap();
    assert_eq!(out.reason(), Some("NotServing"), "{out:?}");
    let out = probe(port, "plugin.v1.Missing").probe(&host).await.unwrap();
    assert_eq!(out.reason(), Some("ServiceUnknown"), "{out:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().port();
    drop(closed);
    let out = probe(dead, "").probe(&host).await.unwrap();
    assert_eq!(out.reason(), Some("Unreachable"), "{out:?}");
}

#[test]
fn grpc_probes_are_configured_like_the_others() {
    let cfg: CheckersConfig = toml::from_str(
        "[[checkers]]\nkind = \"grpc-health\"\nname = \"DevicePlugin\"\nurl = \"http://{internal_ip}:50051\"\nservice = \"plugin.v1.Device\"\n",
    )
    .unwrap();
    assert!(cfg.build::<k8s_openapi::api::core::v1::Node>().is_ok());
    let bad: CheckersConfig =
        toml::from_str("[[checkers]]\nkind = \"grpc-health\"\nurl = \"http://{internal_ip}:1\"\nprogram = \"x\"\n")
            .unwrap();
    let err =
        bad.build::<k8s_openapi::api::core::v1::Node>().err().expect("program is not a grpc-health field").to_string();
    assert!(err.contains("program") && err.contains("service"), "{err}");
    let missing: CheckersConfig = toml::from_str("[[checkers]]\nkind = \"grpc-health\"\n").unwrap();
    let err = missing.build::<k8s_openapi::api::core::v1::Node>().err().expect("url is required").to_string();
    assert!(err.contains("url"), "{err}");
}
