//! A Kubernetes store: each record is a JSON annotation on its Node, so
//! `kubectl get node -o yaml` shows it and it goes away with the node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use health_core::{NodeRecord, StateStore, StoreError, Stored, Version};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::decode_record_value;

/// The annotation holding a node's record.
pub const STATE_ANNOTATION: &str = "node-agent.civo.com/state";

#[derive(Serialize)]
struct Annotated {
    /// The record's own version (compare-and-swap is on this, not on the
    /// node's resourceVersion, which the kubelet bumps every few seconds).
    v: u64,
    record: NodeRecord,
}

/// The annotation as read: the record is decoded with its format checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnnotated {
    v: u64,
    record: serde_json::Value,
}

/// Records as Node annotations. Writes are merge patches guarded by the
/// node's `resourceVersion` after checking the record's own version, so an
/// unrelated node update only causes a transparent retry, while a concurrent
/// writer of the record is a [`StoreError::Conflict`].
///
/// Every API call has a time limit ([`KubeStore::with_call_timeout`],
/// default 30 s): kube clients have no read timeout of their own.
#[derive(Clone)]
pub struct KubeStore {
    nodes: Api<Node>,
    call_timeout: Duration,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("annotation", &STATE_ANNOTATION)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

fn backend(message: String, e: kube::Error) -> StoreError {
    StoreError::Backend { message, source: Some(Box::new(e)) }
}

fn parse(key: &str, meta: &ObjectMeta) -> Result<Option<Annotated>, StoreError> {
    let Some(text) = meta.annotations.as_ref().and_then(|a| a.get(STATE_ANNOTATION)) else { return Ok(None) };
    let corrupt = |message: String| StoreError::Corrupt {
        key: key.to_owned(),
        message: format!(
            "annotation {STATE_ANNOTATION} is not a state record ({message}); fix or remove it with kubectl annotate"
        ),
    };
    let raw: RawAnnotated = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    let record = match decode_record_value(key, raw.record) {
        Ok(r) => r,
        Err(StoreError::Corrupt { message, .. }) => return Err(corrupt(message)),
        Err(e) => return Err(e),
    };
    Ok(Some(Annotated { v: raw.v, record }))
}

fn fresh_version(previous: Option<u64>) -> u64 {
    // Strictly increasing per node, and never reused after a delete.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    now.max(previous.map_or(0, |p| p.saturating_add(1)))
}

const ATTEMPTS: usize = 5;

/// Nodes per page when listing (the API server's recommended chunk size).
const PAGE: u32 = 500;

/// The field manager of the store's patches (`kubectl get node
/// --show-managed-fields` names who wrote the annotation).
pub const FIELD_MANAGER: &str = "node-agent";

impl KubeStore {
    /// A store on the Nodes of `client`'s cluster.
    #[must_use]
    pub fn new(client: kube::Client) -> Self {
        KubeStore { nodes: Api::all(client), call_timeout: Duration::from_secs(30) }
    }

    /// The same store with another time limit per API call.
    #[must_use]
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// `call`, or a backend error once the call timeout has passed.
    async fn bounded<T>(
        &self,
        what: impl FnOnce() -> String,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, StoreError> {
        tokio::time::timeout(self.call_timeout, call).await.map_err(|_| StoreError::Backend {
            message: format!("{} got no answer from the API server within {:?}", what(), self.call_timeout),
            source: None,
        })
    }

    /// The node's metadata only (a Node is 15-30 KB; its metadata a few
    /// hundred bytes).
    async fn get(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.bounded(|| format!("reading node {key}"), self.nodes.get_metadata_opt(key))
            .await?
            .map(|m| m.map(|m| m.metadata))
            .map_err(|e| backend(format!("cannot read node {key}"), e))
    }

    /// Writes `value` (None: removes) as the annotation if the record's
    /// version is still `expected`.
    async fn write(
        &self,
        key: &str,
        value: Option<&Annotated>,
        expected: Option<&Version>,
        create: bool,
    ) -> Result<(), StoreError> {
        for _ in 0..ATTEMPTS {
            let Some(meta) = self.get(key).await? else {
                if value.is_none() {
                    return Ok(());
                }
                return Err(StoreError::Backend {
                    message: format!("node {key} does not exist; its record is dropped"),
                    source: None,
                });
            };
            let current = parse(key, &meta)?.map(|a| a.v);
            let matches = match (create, expected) {
                (true, _) => current.is_none(),
                (false, Some(e)) => current.is_some_and(|c| c.to_string() == e.as_str()),
                (false, None) => true,
            };
            if !matches {
                return Err(StoreError::conflict(key, expected, current.map(Version::from_u64).as_ref()));
            }
            if value.is_none() && current.is_none() {
                return Ok(());
            }
            let annotation = match value {
                Some(a) => json!(
                    serde_json::to_string(a)
                        .map_err(|e| StoreError::Backend { message: e.to_string(), source: None })?
                ),
                None => serde_json::Value::Null,
            };
            let patch = json!({"metadata": {"resourceVersion": meta.resource_version, "annotations": {STATE_ANNOTATION: annotation}}});
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
            let patch = Patch::Merge(patch);
            let patched = self.nodes.patch(key, &params, &patch);
            match self.bounded(|| format!("patching node {key}"), patched).await? {
                Ok(_) => return Ok(()),
                // The node changed (a heartbeat, or another writer): look again.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(StoreError::Backend {
                        message: format!("node {key} was deleted; its record is dropped"),
                        source: None,
                    });
                }
                Err(e) => return Err(backend(format!("cannot patch node {key}"), e)),
            }
        }
        Err(StoreError::Backend {
            message: format!("node {key} kept changing; gave up after {ATTEMPTS} attempts"),
            source: None,
        })
    }
}

#[async_trait]
impl StateStore for KubeStore {
    async fn load(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let Some(meta) = self.get(key).await? else { return Ok(None) };
        Ok(parse(key, &meta)?.map(|a| Stored { record: a.record, version: Version::from_u64(a.v) }))
    }

    async fn save(&self, key: &str, record: &NodeRecord, expected: Option<&Version>) -> Result<Version, StoreError> {
        let previous = expected.and_then(|v| v.as_str().parse().ok());
        let value = Annotated { v: fresh_version(previous), record: record.clone() };
        self.write(key, Some(&value), expected, expected.is_none()).await?;
        Ok(Version::from_u64(value.v))
    }

    async fn delete(&self, key: &str, expected: Option<&Version>) -> Result<(), StoreError> {
        self.write(key, None, expected, false).await
    }

    /// Every annotated node, listed by metadata only and in pages of 500 (at
    /// 65,536 nodes a full list would be over a gigabyte). A node whose
    /// annotation is garbage makes the list fail naming it; every other
    /// node's record still loads by key.
    async fn list(&self) -> Result<Vec<(String, Stored)>, StoreError> {
        let mut lp = ListParams::default().limit(PAGE);
        let mut out = Vec::new();
        loop {
            let page = self
                .bounded(|| "listing nodes".to_owned(), self.nodes.list_metadata(&lp))
                .await?
                .map_err(|e| backend("cannot list nodes".into(), e))?;
            for n in &page.items {
                let key = n.metadata.name.clone().unwrap_or_default();
                if let Some(a) = parse(&key, &n.metadata)? {
                    out.push((key, Stored { record: a.record, version: Version::from_u64(a.v) }));
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => return Ok(out),
            }
        }
    }
}
