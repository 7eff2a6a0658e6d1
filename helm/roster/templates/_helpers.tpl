{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "roster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources. Truncated to 52 characters so that the
longest suffix ("-headless", 9 characters) and the StatefulSet's pod and
controller-revision suffixes still fit in 63.
*/}}
{{- define "roster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "roster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "roster.labels" -}}
helm.sh/chart: {{ include "roster.chart" . }}
{{ include "roster.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: roster
{{- end }}

{{/* Labels that select the registry pods; never change them (immutable selector). */}}
{{- define "roster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "roster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "roster.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "roster.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "roster.dnsServiceName" -}}
{{- printf "%s-dns" (include "roster.fullname" .) }}
{{- end }}

{{/*
The Secret holding the ACL token file (key tokens.toml) and the admin token
(key admin-token): the user's acl.existingSecret, or the one the chart creates.
*/}}
{{- define "roster.aclSecretName" -}}
{{- default (printf "%s-acl" (include "roster.fullname" .)) .Values.acl.existingSecret }}
{{- end }}

{{/* Where the token file is mounted in the roster container. */}}
{{- define "roster.aclDir" -}}
/etc/roster/acl
{{- end }}

{{- define "roster.headlessServiceName" -}}
{{- printf "%s-headless" (include "roster.fullname" .) }}
{{- end }}

{{/* "true" when the release runs a Raft cluster (replicas above 1), else empty. */}}
{{- define "roster.clustered" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/*
Fully qualified name of the headless Service. It resolves to every pod, ready or
not (publishNotReadyAddresses), and POD.<this name> to one pod.
*/}}
{{- define "roster.headlessFqdn" -}}
{{- printf "%s.%s.svc.%s" (include "roster.headlessServiceName" .) .Release.Namespace (trimSuffix "." .Values.clusterDomain) }}
{{- end }}

{{/* The Secret holding the cluster token (key cluster-token). */}}
{{- define "roster.clusterSecretName" -}}
{{- default (printf "%s-cluster" (include "roster.fullname" .)) .Values.cluster.existingSecret }}
{{- end }}

{{/*
The environment that makes the pods one Raft cluster. Environment rather than
flags, so that a flag in roster.extraArgs still overrides any of them (a flag
wins over its ROSTER_* variable). POD_NAME comes first: Kubernetes expands
$(POD_NAME) only from variables defined before it.
*/}}
{{- define "roster.clusterEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: ROSTER_ADVERTISE_ADDR
  value: {{ printf "$(POD_NAME).%s:%d" (include "roster.headlessFqdn" .) (int .Values.containerPorts.http) | quote }}
- name: ROSTER_JOIN
  value: {{ printf "%s:%d" (include "roster.headlessFqdn" .) (int .Values.containerPorts.http) | quote }}
- name: ROSTER_BOOTSTRAP_EXPECT
  value: {{ int .Values.replicas | quote }}
- name: ROSTER_CLUSTER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "roster.clusterSecretName" . }}
      key: cluster-token
{{- if .Values.cluster.peerTls.enabled }}
- name: ROSTER_PEER_TLS_CERT
  value: {{ printf "%s/tls.crt" (include "roster.peerTlsDir" .) | quote }}
- name: ROSTER_PEER_TLS_KEY
  value: {{ printf "%s/tls.key" (include "roster.peerTlsDir" .) | quote }}
- name: ROSTER_PEER_TLS_CA
  value: {{ printf "%s/ca.crt" (include "roster.peerTlsDir" .) | quote }}
{{- end }}
{{- end }}

{{/*
Where the peer certificate Secret is mounted. A whole-Secret mount (no subPath),
so the kubelet swaps in a renewed certificate and roster reloads it.
*/}}
{{- define "roster.peerTlsDir" -}}
/etc/roster/peer-tls
{{- end }}

{{/* Peer TLS is on: the value, and a cluster to use it in. */}}
{{- define "roster.peerTls" -}}
{{- if and (include "roster.clustered" .) .Values.cluster.peerTls.enabled }}true{{ end }}
{{- end }}

{{/*
How many pods a PodDisruptionBudget value lets be unavailable out of the
replicas, for an integer or a percentage (which Kubernetes rounds up). Context:
(list VALUE REPLICAS).
*/}}
{{- define "roster.pdbPods" -}}
{{- $value := index . 0 }}
{{- $replicas := int (index . 1) }}
{{- if kindIs "string" $value }}
{{- $percent := int (trimSuffix "%" $value) }}
{{- div (add (mul $replicas $percent) 99) 100 }}
{{- else }}
{{- int $value }}
{{- end }}
{{- end }}

{{/*
The arguments of `roster serve`. One "--flag=value" word each, so that nothing
depends on how the next word is read.
*/}}
{{- define "roster.args" -}}
- {{ printf "--http-addr=0.0.0.0:%d" (int .Values.containerPorts.http) | quote }}
- {{ printf "--data-dir=%s" .Values.persistence.mountPath | quote }}
{{- if .Values.roster.dns.enabled }}
- {{ printf "--dns-addr=0.0.0.0:%d" (int .Values.containerPorts.dns) | quote }}
- {{ printf "--dns-domain=%s" .Values.roster.dns.domain | quote }}
- {{ printf "--dns-ttl=%d" (int64 .Values.roster.dns.ttl) | quote }}
{{- else }}
- "--no-dns"
{{- end }}
{{- if .Values.roster.grpc.enabled }}
- {{ printf "--grpc-addr=0.0.0.0:%d" (int .Values.containerPorts.grpc) | quote }}
- {{ printf "--max-xds-streams=%d" (int64 .Values.roster.grpc.maxStreams) | quote }}
{{- else }}
- "--no-grpc"
{{- end }}
- {{ printf "--log=%s" .Values.roster.log | quote }}
- {{ printf "--lease-grace=%s" .Values.roster.leaseGrace | quote }}
- {{ printf "--deregister-critical-after=%s" .Values.roster.deregisterCriticalAfter | quote }}
- {{ printf "--max-instances-per-service=%d" (int64 .Values.roster.maxInstancesPerService) | quote }}
- {{ printf "--max-instances=%d" (int64 .Values.roster.maxInstances) | quote }}
{{- if .Values.acl.enabled }}
- "--acl=true"
- {{ printf "--acl-tokens=%s/tokens.toml" (include "roster.aclDir" .) | quote }}
{{- end }}
{{- range .Values.roster.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The token file of the Secret the chart creates (roster serve --acl-tokens),
from a dict: "token", the admin token, and "anonymous", acl.anonymousPolicies.
The chart's tokens are alphanumeric and the schema restricts the policies to
letters, digits and "*._-:", so neither needs escaping in TOML (a JSON array
of such strings is a TOML array). [anonymous] only when policies are given.
*/}}
{{- define "roster.aclTokensToml" -}}
# Written by the roster Helm chart. To add tokens, give your own Secret in
# acl.existingSecret (see the chart README).
[[tokens]]
name = "admin"
secret = "{{ .token }}"
policies = ["admin"]
{{- with .anonymous }}

# Calls without a token (acl.anonymousPolicies).
[anonymous]
policies = {{ toJson . }}
{{- end }}
{{ end }}

{{/* Name of the `roster sync-k8s` Deployment, ServiceAccount and RBAC objects. */}}
{{- define "roster.syncName" -}}
{{- printf "%s-sync-k8s" (include "roster.fullname" .) }}
{{- end }}

{{/*
Labels that select the registrar's pods. Its app.kubernetes.io/name differs
from the registry's, so that the registry's Services never select it.
*/}}
{{- define "roster.syncSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-sync-k8s" (include "roster.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: sync-k8s
{{- end }}

{{- define "roster.syncLabels" -}}
helm.sh/chart: {{ include "roster.chart" . }}
{{ include "roster.syncSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: roster
{{- end }}

{{/* The registry URL the registrar talks to. */}}
{{- define "roster.syncRegistry" -}}
{{- default (printf "http://%s.%s.svc:%d" (include "roster.fullname" .) .Release.Namespace (int .Values.service.port)) .Values.syncCatalog.registry }}
{{- end }}
