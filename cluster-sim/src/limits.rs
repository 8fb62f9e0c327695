//! Bounds on what one client can make the simulator do: request and object
//! sizes, JSON patch work, slow or idle connections.
//!
//! The defaults follow the real API server (`MaxRequestBodyBytes`,
//! `maxJSONPatchOperations`) and etcd (`--max-request-bytes`), so a client
//! that works against the simulator is not relying on more than a real
//! cluster allows.

use std::time::Duration;

/// Bounds on requests, objects and connections, part of
/// [`ClusterConfig`](crate::ClusterConfig).
///
/// Build it from [`Limits::default`] with the setters:
///
/// ```
/// use std::time::Duration;
/// use cluster_sim::{ClusterConfig, Limits};
///
/// let config = ClusterConfig {
///     limits: Limits::default().max_connections(64).header_read_timeout(Duration::from_secs(1)),
///     ..ClusterConfig::default()
/// };
/// assert_eq!(config.validate(), Ok(()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest request body the Kubernetes API reads; a larger one is
    /// answered 413 `RequestEntityTooLarge`. Default 3 MiB, the API server's
    /// `MaxRequestBodyBytes`.
    pub max_request_body_bytes: usize,
    /// Largest object the store keeps (its JSON); a create, update or patch
    /// that would store a larger one is answered 413 `RequestEntityTooLarge`.
    /// It also bounds the bytes one JSON patch may `copy` in total (422
    /// `Invalid` past it), so that a patch cannot grow an object
    /// exponentially while it is applied. Default 1.5 MiB, etcd's default
    /// request limit. At least [`Limits::MIN_OBJECT_BYTES`], so that the
    /// simulator's own Nodes and Pods fit.
    pub max_object_bytes: usize,
    /// Most operations in one JSON patch; more are answered 413
    /// `RequestEntityTooLarge`. Default 10,000, the API server's
    /// `maxJSONPatchOperations`.
    pub max_json_patch_operations: usize,
    /// Time a client has to send a request's headers, counted from when the
    /// server starts reading them (on a new connection, and between the
    /// requests of a kept-alive one, so it is also the idle timeout, as in
    /// Go's `net/http` without an `IdleTimeout`); the connection is closed
    /// when it runs out. It also bounds how long [`SimServer::shutdown`](crate::SimServer::shutdown)
    /// waits for connections to finish. Default 10 s.
    pub header_read_timeout: Duration,
    /// Connections each API (Kubernetes, Civo) serves at once. Further
    /// connections wait in the listen backlog until one closes; with the
    /// header read timeout, a slot held by a client that never finishes its
    /// headers is free again within `header_read_timeout`. Default 1,024.
    pub max_connections: usize,
}

impl Limits {
    /// The smallest accepted [`Limits::max_object_bytes`] (64 KiB): the
    /// simulator's Nodes are 10-20 KB.
    pub const MIN_OBJECT_BYTES: usize = 64 * 1024;

    /// Sets [`Limits::max_request_body_bytes`].
    #[must_use]
    pub fn max_request_body_bytes(mut self, bytes: usize) -> Self {
        self.max_request_body_bytes = bytes;
        self
    }

    /// Sets [`Limits::max_object_bytes`].
    #[must_use]
    pub fn max_object_bytes(mut self, bytes: usize) -> Self {
        self.max_object_bytes = bytes;
        self
    }

    /// Sets [`Limits::max_json_patch_operations`].
    #[must_use]
    pub fn max_json_patch_operations(mut self, operations: usize) -> Self {
        self.max_json_patch_operations = operations;
        self
    }

    /// Sets [`Limits::header_read_timeout`].
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Sets [`Limits::max_connections`].
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// Checks that every limit lets normal requests through.
    pub fn validate(&self) -> Result<(), crate::cluster::ConfigError> {
        use crate::cluster::ConfigError;
        if self.max_request_body_bytes == 0 {
            return Err(ConfigError::new("limits.max_request_body_bytes", "must be at least 1"));
        }
        if self.max_object_bytes < Self::MIN_OBJECT_BYTES {
            return Err(ConfigError::new(
                "limits.max_object_bytes",
                format!(
                    "({}) must be at least {} (the simulator's own objects must fit)",
                    self.max_object_bytes,
                    Self::MIN_OBJECT_BYTES
                ),
            ));
        }
        if self.max_json_patch_operations == 0 {
            return Err(ConfigError::new("limits.max_json_patch_operations", "must be at least 1"));
        }
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::new("limits.header_read_timeout", "must be more than zero"));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("limits.max_connections", "must be at least 1"));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body_bytes: 3 * 1024 * 1024,
            max_object_bytes: 3 * 512 * 1024,
            max_json_patch_operations: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_limit_is_checked() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let cases = [
            (Limits::default().max_request_body_bytes(0), "max_request_body_bytes"),
            (Limits::default().max_object_bytes(Limits::MIN_OBJECT_BYTES - 1), "max_object_bytes"),
            (Limits::default().max_json_patch_operations(0), "max_json_patch_operations"),
            (Limits::default().header_read_timeout(Duration::ZERO), "header_read_timeout"),
            (Limits::default().max_connections(0), "max_connections"),
        ];
        for (limits, field) in cases {
            let err = limits.validate().unwrap_err();
            assert_eq!(err.field.strip_prefix("limits."), Some(field), "{err}");
        }
    }
}
