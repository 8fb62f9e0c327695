//! `node-agent check`: every checker on every selected node, once.

use std::fmt::Write as _;
use std::time::Duration;

use health_core::{CheckOutcome, HealthChecker};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use crate::agent::RunError;
use crate::config::Config;
use crate::node::{AgentNode, NodeRef};

/// One checker's verdict on one node.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckRow {
    /// The node.
    pub node: String,
    /// `standard` or `gpu`.
    pub class: String,
    /// The checker.
    pub checker: String,
    /// `pass`, `fail`, `skip` or `error`.
    pub result: String,
    /// The reason (CamelCase), or the error.
    pub reason: String,
}

/// Lists the selected nodes once and runs every configured checker on each.
pub async fn check(config: &Config, kube_config: kube::Config) -> Result<Vec<CheckRow>, RunError> {
    recovery_exec::install_crypto_provider();
    let mut kc = kube_config;
    kc.read_timeout = Some(config.kube.call_timeout);
    let client = kube::Client::try_from(kc).map_err(|e| RunError::Kube(e.to_string()))?;
    let api: Api<Node> = Api::all(client);
    let mut lp = ListParams::default().limit(500);
    if let Some(s) = config.node_selector() {
        lp = lp.labels(&s);
    }
    let checkers = config.checkers_config().build::<NodeRef>().map_err(|e| RunError::Engine(e.to_string()))?;
    let mut nodes = Vec::new();
    loop {
        let page = tokio::time::timeout(config.kube.call_timeout, api.list(&lp))
            .await
            .map_err(|_| RunError::Kube(format!("listing nodes timed out after {:?}", config.kube.call_timeout)))?
            .map_err(|e| RunError::Kube(format!("cannot list nodes: {e}")))?;
        nodes.extend(
            page.items.iter().map(|n| std::sync::Arc::new(AgentNode::from_node(n, &config.policy.domains.labels))),
        );
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
    }
    let mut rows = Vec::new();
    let ctx = health_core::CheckContext::at(health_core::Clock::now(&health_core::SystemClock));
    for node in &nodes {
        let class = node.view().class().as_str().to_owned();
        for c in &checkers {
            let result = match c.check_sync(node, &ctx) {
                Some(r) => r,
                None => {
                    match tokio::time::timeout(
                        config.engine.check_timeout.max(Duration::from_millis(1)),
                        c.check(node, &ctx),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(health_core::CheckError::new(format!(
                            "timed out after {:?}",
                            config.engine.check_timeout
                        ))),
                    }
                }
            };
            let (result, reason) = match result {
                Ok(CheckOutcome::Pass) => ("pass", String::new()),
                Ok(CheckOutcome::Fail { reason, detail }) => {
                    ("fail", detail.map_or_else(|| reason.to_string(), |d| format!("{reason}: {d}")))
                }
                Ok(CheckOutcome::Skip { reason }) => ("skip", reason.to_string()),
                Err(e) => ("error", e.to_string()),
            };
            rows.push(CheckRow {
                node: node.name().to_owned(),
                class: class.clone(),
                checker: c.name().to_owned(),
                result: result.to_owned(),
                reason,
            });
        }
    }
    Ok(rows)
}

/// The rows as a table.
#[must_use]
pub fn table(rows: &[CheckRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<26} {:<9} {:<16} {:<6} REASON", "NODE", "CLASS", "CHECKER", "RESULT");
    for r in rows {
        let _ = writeln!(out, "{:<26} {:<9} {:<16} {:<6} {}", r.node, r.class, r.checker, r.result, r.reason);
    }
    out
}
