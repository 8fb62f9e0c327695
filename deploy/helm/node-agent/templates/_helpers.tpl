{{/* The chart name. */}}
{{- define "node-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name (object names). */}}
{{- define "node-agent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "node-agent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "node-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "node-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "node-agent.labels" -}}
helm.sh/chart: {{ include "node-agent.chart" . }}
{{ include "node-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: node-agent
{{- end }}

{{- define "node-agent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "node-agent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "node-agent.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding CIVO_API_KEY and its key, or nothing. */}}
{{- define "node-agent.apiKeySecretName" -}}
{{- if .Values.civo.apiKey.existingSecret }}
{{- .Values.civo.apiKey.existingSecret }}
{{- else if .Values.civo.apiKey.value }}
{{- printf "%s-civo" (include "node-agent.fullname" .) }}
{{- end }}
{{- end }}

{{- define "node-agent.apiKeySecretKey" -}}
{{- if .Values.civo.apiKey.existingSecret }}
{{- .Values.civo.apiKey.existingSecretKey }}
{{- else }}
{{- "api-key" }}
{{- end }}
{{- end }}

{{/* The Lease's namespace: config.ha.namespace, else the release namespace. */}}
{{- define "node-agent.leaseNamespace" -}}
{{- default .Release.Namespace .Values.config.ha.namespace }}
{{- end }}

{{/* "true" when an operator's pause is kept on the Lease <ha.lease_name>-pause:
the Kubernetes store ("auto" is the Kubernetes store in a pod). */}}
{{- define "node-agent.pauseLease" -}}
{{- if has (toString .Values.config.store.backend) (list "auto" "kubernetes") }}true{{ end }}
{{- end }}

{{/* "true" when the agent may drain through the Eviction API itself: the
Civo executor, or the gRPC executor without remote_drain. */}}
{{- define "node-agent.localDrain" -}}
{{- $kind := toString .Values.config.executor.kind }}
{{- if or (eq $kind "civo") (and (eq $kind "grpc") (ne (toString .Values.config.executor.remote_drain) "true")) }}true{{ end }}
{{- end }}

{{/* config.admin.listen: 127.0.0.1:<port>, or <admin.address>:<port> when exposed. */}}
{{- define "node-agent.adminListen" -}}
{{- $addr := "127.0.0.1" }}
{{- if .Values.admin.expose }}{{ $addr = toString .Values.admin.address }}{{ end }}
{{- if contains ":" $addr }}
{{- printf "[%s]:%d" $addr (int .Values.admin.port) }}
{{- else }}
{{- printf "%s:%d" $addr (int .Values.admin.port) }}
{{- end }}
{{- end }}

{{/* The token and CA files (from Secrets and ConfigMaps, mounted read-only),
as a JSON list of {volume, secret | configMap, key, dir, file, section,
field}; "section"."field" of the configuration is set to dir/file. */}}
{{- define "node-agent.credentialFiles" -}}
{{- $files := list }}
{{- if .Values.admin.token.existingSecret }}
{{- $files = append $files (dict "volume" "admin-token" "secret" .Values.admin.token.existingSecret "key" .Values.admin.token.existingSecretKey "dir" "/var/run/secrets/node-agent/admin" "file" "token" "section" "admin" "field" "token_file") }}
{{- end }}
{{- range $use := list "heartbeat" "executor" }}
{{- $v := get $.Values $use }}
{{- if $v.token.existingSecret }}
{{- $files = append $files (dict "volume" (printf "%s-token" $use) "secret" $v.token.existingSecret "key" $v.token.existingSecretKey "dir" (printf "/var/run/secrets/node-agent/%s" $use) "file" "token" "section" $use "field" "token_file") }}
{{- end }}
{{- if $v.ca.configMap }}
{{- $files = append $files (dict "volume" (printf "%s-ca" $use) "configMap" $v.ca.configMap "key" $v.ca.key "dir" (printf "/etc/node-agent-ca/%s" $use) "file" "ca.crt" "section" $use "field" "ca_file") }}
{{- else if $v.ca.secret }}
{{- $files = append $files (dict "volume" (printf "%s-ca" $use) "secret" $v.ca.secret "key" $v.ca.key "dir" (printf "/etc/node-agent-ca/%s" $use) "file" "ca.crt" "section" $use "field" "ca_file") }}
{{- end }}
{{- end }}
{{- with .Values.etcdTls.secret }}
{{- $files = append $files (dict "volume" "etcd-ca" "secret" . "key" "ca.crt" "dir" "/etc/node-agent-etcd/ca" "file" "ca.crt" "section" "store" "sub" "etcd" "field" "ca_file") }}
{{- if $.Values.etcdTls.clientCertificate }}
{{- $files = append $files (dict "volume" "etcd-cert" "secret" . "key" "tls.crt" "dir" "/etc/node-agent-etcd/cert" "file" "tls.crt" "section" "store" "sub" "etcd" "field" "cert_file") }}
{{- $files = append $files (dict "volume" "etcd-key" "secret" . "key" "tls.key" "dir" "/etc/node-agent-etcd/key" "file" "tls.key" "section" "store" "sub" "etcd" "field" "key_file") }}
{{- end }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{/* A gRPC endpoint the agent will accept ("what", "endpoint", "token"). */}}
{{- define "node-agent.checkEndpoint" -}}
{{- if not (regexMatch "^https?://[^/:]+|^https?://\\[" .endpoint) }}
{{- fail (printf "%s: %q: expected https://host:port (http:// only to loopback)" .what .endpoint) }}
{{- end }}
{{- if and .token (hasPrefix "http://" .endpoint) (not (regexMatch "^http://(127\\.[0-9.]+|localhost|\\[::1\\])(:|/|$)" .endpoint)) }}
{{- fail (printf "%s: %q: the token would cross the network in clear; use https://" .what .endpoint) }}
{{- end }}
{{- end }}

{{/* The add-ons by namespace and kind: {namespace: {DaemonSet: [names], Deployment: [names]}}, as JSON. */}}
{{/* The namespaces of the restart-pods repairs (JSON list, sorted, unique). */}}
{{- define "node-agent.podRestartNamespaces" -}}
{{- $out := list }}
{{- range $name, $r := (.Values.config.repairs | default dict) }}
{{- if not (kindIs "map" $r) }}
{{- fail (printf "config.repairs.%s: expected a table with kind and its settings" $name) }}
{{- end }}
{{- if eq (toString $r.kind) "restart-pods" }}
{{- if not $r.namespace }}
{{- fail (printf "config.repairs.%s.namespace: required for kind restart-pods" $name) }}
{{- end }}
{{- $out = append $out (toString $r.namespace) }}
{{- end }}
{{- end }}
{{- toJson ($out | uniq | sortAlpha) }}
{{- end }}

{{- define "node-agent.addonsByNamespace" -}}
{{- $byNs := dict }}
{{- range $i, $a := (.Values.config.addons | default (list)) }}
{{- if not (kindIs "map" $a) }}
{{- fail (printf "config.addons[%d]: expected a table with kind, namespace and name" $i) }}
{{- end }}
{{- $kind := toString $a.kind }}
{{- if not (has $kind (list "DaemonSet" "Deployment")) }}
{{- fail (printf "config.addons[%d].kind: %q: expected DaemonSet or Deployment" $i $kind) }}
{{- end }}
{{- if or (not $a.namespace) (not $a.name) }}
{{- fail (printf "config.addons[%d]: namespace and name are required" $i) }}
{{- end }}
{{- $ns := toString $a.namespace }}
{{- $kinds := get $byNs $ns | default (dict) }}
{{- $_ := set $kinds $kind (append (get $kinds $kind | default (list)) (toString $a.name) | uniq | sortAlpha) }}
{{- $_ := set $byNs $ns $kinds }}
{{- end }}
{{- toJson $byNs }}
{{- end }}

{{/* "true" when a kubelet-lease checker is configured and not disabled. */}}
{{- define "node-agent.kubeletLeaseChecker" -}}
{{- range (.Values.config.checkers | default list) }}
{{- if and (eq (toString .kind) "kubelet-lease") (ne (toString .enabled) "false") }}true{{ end }}
{{- end }}
{{- end }}

{{/* Settings the chart refuses, with the reason. */}}
{{- define "node-agent.validate" -}}
{{- if not (kindIs "bool" .Values.civo.monitorOnly) }}
{{- fail "civo.monitorOnly: expected true or false" }}
{{- end }}
{{- if not (kindIs "bool" .Values.config.ha.enabled) }}
{{- fail "config.ha.enabled: expected true or false" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.config.ha.enabled) }}
{{- fail "replicaCount > 1 needs config.ha.enabled: true (without leader election every replica would act)" }}
{{- end }}
{{- if and .Values.civo.apiKey.existingSecret .Values.civo.apiKey.value }}
{{- fail "set civo.apiKey.existingSecret or civo.apiKey.value, not both" }}
{{- end }}
{{- if and (not .Values.civo.monitorOnly) (eq (toString .Values.config.executor.kind) "civo") }}
{{- if not (include "node-agent.apiKeySecretName" .) }}
{{- fail "active mode (civo.monitorOnly: false) with the Civo executor needs the API key: civo.apiKey.existingSecret or civo.apiKey.value" }}
{{- end }}
{{- if or (not .Values.civo.clusterId) (not .Values.civo.region) }}
{{- fail "active mode (civo.monitorOnly: false) needs civo.clusterId and civo.region" }}
{{- end }}
{{- end }}
{{- $elsewhere := dict
  "civo.api_key" "civo.apiKey (a Secret)"
  "civo.api_url" "civo.apiUrl"
  "civo.cluster_id" "civo.clusterId"
  "civo.region" "civo.region"
  "civo.node_pool_ids" "civo.nodePoolIds"
  "agent.metrics_port" "metricsPort"
  "agent.instance" "(the pod name)"
  "kube.kubeconfig" "(always in-cluster)"
  "ha.identity" "(the pod name)"
  "admin.listen" "admin.expose and admin.port"
  "admin.token_file" "admin.token.existingSecret"
  "heartbeat.token_file" "heartbeat.token.existingSecret"
  "heartbeat.ca_file" "heartbeat.ca"
  "executor.token_file" "executor.token.existingSecret"
  "executor.ca_file" "executor.ca"
  "policy.monitor_only" "civo.monitorOnly"
  "policy.reboot_wait" "civo.rebootWaitMinutes"
  "policy.gpu_reboot_wait" "civo.gpuRebootWaitMinutes"
  "policy.max_reboot_retries" "civo.maxRebootRetries" }}
{{- range $key, $instead := $elsewhere }}
{{- $parts := splitList "." $key }}
{{- $section := get $.Values.config (first $parts) }}
{{- if and (kindIs "map" $section) (hasKey $section (last $parts)) }}
{{- fail (printf "config.%s is set by the chart; use %s" $key $instead) }}
{{- end }}
{{- end }}
{{- $etcd := (.Values.config.store | default dict).etcd | default dict }}
{{- range $f := list "ca_file" "cert_file" "key_file" }}
{{- if hasKey $etcd $f }}
{{- fail (printf "config.store.etcd.%s is set by the chart; use etcdTls.secret (a Secret with ca.crt, tls.crt and tls.key)" $f) }}
{{- end }}
{{- end }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .Values.config.ha.lease_name)) }}
{{- fail (printf "config.ha.lease_name: %q: expected a DNS label (lowercase letters, digits and '-')" (toString .Values.config.ha.lease_name)) }}
{{- end }}
{{- $admin := .Values.config.admin | default dict }}
{{- if not (kindIs "bool" .Values.admin.expose) }}
{{- fail "admin.expose: expected true or false" }}
{{- end }}
{{- $adminOn := ne (toString $admin.enabled) "false" }}
{{- if and .Values.admin.expose (not $adminOn) }}
{{- fail "admin.expose needs config.admin.enabled: true" }}
{{- end }}
{{- if and .Values.admin.expose (not .Values.admin.token.existingSecret) }}
{{- fail (printf "admin.expose needs admin.token.existingSecret: the agent refuses a non-loopback admin.listen (%s) without admin.token_file, since anyone reaching the pod could pause it" (include "node-agent.adminListen" .)) }}
{{- end }}
{{- if and .Values.admin.token.existingSecret (not $adminOn) }}
{{- fail "admin.token is set but config.admin.enabled is false" }}
{{- end }}
{{- if and .Values.admin.service.enabled (not (and .Values.admin.expose .Values.service.enabled)) }}
{{- fail "admin.service.enabled needs admin.expose and service.enabled" }}
{{- end }}
{{- if and (kindIs "string" $admin.pause_file) $admin.pause_file (ne (dir $admin.pause_file) (dir (toString .Values.config.store.path))) }}
{{- fail (printf "config.admin.pause_file: %q: must be in %s, the directory of config.store.path (the only writable volume)" $admin.pause_file (dir (toString .Values.config.store.path))) }}
{{- end }}
{{- $hb := .Values.config.heartbeat | default dict }}
{{- if $hb.endpoint }}
{{- include "node-agent.checkEndpoint" (dict "what" "config.heartbeat.endpoint" "endpoint" (toString $hb.endpoint) "token" .Values.heartbeat.token.existingSecret) }}
{{- else if or .Values.heartbeat.token.existingSecret .Values.heartbeat.ca.configMap .Values.heartbeat.ca.secret }}
{{- fail "heartbeat.token or heartbeat.ca is set but config.heartbeat.endpoint is empty (heartbeats are off)" }}
{{- end }}
{{- $exec := .Values.config.executor }}
{{- if eq (toString $exec.kind) "grpc" }}
{{- if not $exec.endpoint }}
{{- fail "config.executor.kind \"grpc\" needs config.executor.endpoint (the provisioning service, https://host:port)" }}
{{- end }}
{{- include "node-agent.checkEndpoint" (dict "what" "config.executor.endpoint" "endpoint" (toString $exec.endpoint) "token" .Values.executor.token.existingSecret) }}
{{- else if or .Values.executor.token.existingSecret .Values.executor.ca.configMap .Values.executor.ca.secret }}
{{- fail (printf "executor.token or executor.ca is set but config.executor.kind is %q (they are for \"grpc\")" (toString $exec.kind)) }}
{{- end }}
{{- range $use := list "heartbeat" "executor" }}
{{- $ca := (get $.Values $use).ca }}
{{- if and $ca.configMap $ca.secret }}
{{- fail (printf "%s.ca: set configMap or secret, not both" $use) }}
{{- end }}
{{- end }}
{{- $_ := include "node-agent.addonsByNamespace" . }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled needs service.enabled" }}
{{- end }}
{{- end }}

{{/* One TOML value: a string, boolean, whole number or a list of them. */}}
{{- define "node-agent.tomlValue" -}}
{{- if kindIs "string" . }}
{{- toJson . }}
{{- else if kindIs "bool" . }}
{{- . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- if ne (float64 .) (float64 (int64 .)) }}
{{- fail (printf "config: %v: the agent takes whole numbers only" .) }}
{{- end }}
{{- int64 . }}
{{- else if kindIs "slice" . }}
{{- $items := list }}
{{- range . }}{{ $items = append $items (include "node-agent.tomlValue" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else }}
{{- fail (printf "config: %v: expected a string, boolean, whole number or list" .) }}
{{- end }}
{{- end }}

{{/* The scalar keys of a table, one "key = value" line each (null: left out). */}}
{{- define "node-agent.tomlKeys" -}}
{{- range $k, $v := . }}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) }}
{{ $k }} = {{ include "node-agent.tomlValue" $v }}
{{- end }}
{{- end }}
{{- end }}

{{/* A table ("path" and "table"), then its sub-tables. */}}
{{- define "node-agent.tomlTable" -}}
{{- $path := .path }}

[{{ $path }}]
{{- include "node-agent.tomlKeys" .table }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- include "node-agent.tomlTable" (dict "path" (printf "%s.%s" $path $k) "table" $v) }}
{{- end }}
{{- end }}
{{- end }}
