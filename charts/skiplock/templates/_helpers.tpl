{{/*
Chart name, overridable with nameOverride. Truncated to 63 characters: some Kubernetes name
fields are limited to that (DNS naming spec).
*/}}
{{- define "skiplock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release name plus chart name, unless the release name already contains
the chart name; fullnameOverride wins. Truncated to 63 characters.
*/}}
{{- define "skiplock.fullname" -}}
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

{{/*
Name of one component's objects: "<fullname>-<component>" in at most 63 characters. The fullname
is shortened, not the suffix, so that a long release name cannot make two components collide.
*/}}
{{- define "skiplock.componentName" -}}
{{- $room := sub 62 (len .component) | int }}
{{- printf "%s-%s" (include "skiplock.fullname" .root | trunc $room | trimSuffix "-") .component }}
{{- end }}

{{/* Chart name and version as used by the helm.sh/chart label. */}}
{{- define "skiplock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The namespace of every namespaced object: namespaceOverride or the release namespace. */}}
{{- define "skiplock.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "skiplock.labels" -}}
helm.sh/chart: {{ include "skiplock.chart" . }}
app.kubernetes.io/name: {{ include "skiplock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: skiplock
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: call with (dict "root" $ "component" "operator"). */}}
{{- define "skiplock.componentLabels" -}}
{{ include "skiplock.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component: call with (dict "root" $ "component" "operator"). A subset of
the pod labels, never changed across upgrades (Deployment selectors are immutable).
*/}}
{{- define "skiplock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skiplock.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The selector labels as a kubectl -l argument (NOTES.txt): call like skiplock.selectorLabels. */}}
{{- define "skiplock.selectorArg" -}}
{{- $labels := include "skiplock.selectorLabels" . | fromYaml }}
{{- $pairs := list }}
{{- range $k := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $k (get $labels $k)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Name of the operator's ServiceAccount. */}}
{{- define "skiplock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "skiplock.componentName" (dict "root" . "component" "operator")) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: call with (dict "image" .Values.operator.image "root" $). */}}
{{- define "skiplock.image" -}}
{{- $registry := .image.registry | default .root.Values.global.imageRegistry }}
{{- $repo := .image.repository }}
{{- if $registry }}{{ $repo = printf "%s/%s" $registry $repo }}{{ end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.image.tag | default .root.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Name of the leader-election Lease. */}}
{{- define "skiplock.leaseName" -}}
{{- default (include "skiplock.componentName" (dict "root" . "component" "operator")) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* Name and key of the Secret holding the database URL (database.existingSecret or the chart's). */}}
{{- define "skiplock.databaseSecretName" -}}
{{- if .Values.database.existingSecret.name }}
{{- .Values.database.existingSecret.name }}
{{- else }}
{{- include "skiplock.componentName" (dict "root" . "component" "database") }}
{{- end }}
{{- end }}

{{- define "skiplock.databaseSecretKey" -}}
{{- if .Values.database.existingSecret.name }}
{{- .Values.database.existingSecret.key }}
{{- else -}}
DATABASE_URL
{{- end }}
{{- end }}

{{/* Whether any database URL is configured (a chart-made Secret or an existing one). */}}
{{- define "skiplock.hasDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret.name }}true{{ end }}
{{- end }}

{{/* Namespace of the Grafana dashboard ConfigMaps. */}}
{{- define "skiplock.dashboardsNamespace" -}}
{{- default (include "skiplock.namespace" .) .Values.dashboards.namespace }}
{{- end }}

{{/* The Prometheus job label of the operator's metrics (alert "operator down"). */}}
{{- define "skiplock.operatorJob" -}}
{{- default (include "skiplock.componentName" (dict "root" . "component" "operator")) .Values.metrics.operatorJob }}
{{- end }}

{{/*
Values that contradict each other stop the install with a message naming them. Included once,
from NOTES.txt's template neighbour validate.yaml, so every render runs it.
*/}}
{{- define "skiplock.validate" -}}
{{- $v := .Values }}
{{- if and $v.database.url $v.database.existingSecret.name }}
{{- fail "database.url and database.existingSecret.name are both set: give the URL inline or name an existing Secret, not both" }}
{{- end }}
{{- if and $v.operator.clusterWide $v.operator.watchNamespaces }}
{{- fail "operator.clusterWide=true watches every namespace: leave operator.watchNamespaces empty, or set clusterWide=false to watch only those namespaces" }}
{{- end }}
{{- if and (not $v.operator.clusterWide) (not $v.operator.watchNamespaces) }}
{{- fail "operator.clusterWide=false needs operator.watchNamespaces: the namespaces the operator may watch (its RBAC is granted there only)" }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled=true needs metrics.enabled=true: there is no metrics Service to scrape" }}
{{- end }}
{{- if and $v.metrics.prometheusRule.enabled (not $v.metrics.enabled) (not $v.metrics.podMonitor.enabled) }}
{{- fail "metrics.prometheusRule.enabled=true with neither metrics.enabled nor metrics.podMonitor.enabled: the alerts would have no data" }}
{{- end }}
{{- if and $v.ui.enabled (not (include "skiplock.hasDatabase" .)) }}
{{- fail "ui.enabled=true needs a database: set database.url or database.existingSecret.name" }}
{{- end }}
{{- if and $v.ui.enabled $v.ui.token $v.ui.existingSecret.name }}
{{- fail "ui.token and ui.existingSecret.name are both set: give the token inline or name an existing Secret, not both" }}
{{- end }}
{{- if and (gt (int $v.operator.replicas) 1) (not $v.operator.leaderElection.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled=true: standalone operators would all reconcile the same JobQueues" }}
{{- end }}
{{- range $q := $v.jobQueues }}
{{- if and (not $q.spec) }}
{{- fail (printf "jobQueues: %s has no spec" $q.name) }}
{{- end }}
{{- end }}
{{- end }}
