{{/* Names, labels and checks shared by the templates. */}}

{{- define "pdpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-pdpool, or <release> when it already contains the chart name. */}}
{{- define "pdpool.fullname" -}}
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

{{- define "pdpool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pdpool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pdpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "pdpool.labels" -}}
helm.sh/chart: {{ include "pdpool.chart" . }}
{{ include "pdpool.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pdpool
{{- end }}

{{- define "pdpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pdpool.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pdpool.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "pdpool.leaderElectionNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/* Prometheus' job label of the controller's metrics (the Service's name, as the Prometheus
Operator sets it for a ServiceMonitor). */}}
{{- define "pdpool.metricsServiceName" -}}
{{- printf "%s-metrics" (include "pdpool.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fails the render on combinations that cannot work. */}}
{{- define "pdpool.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: replicas without a leader would reconcile the same pools at once" }}
{{- end }}
{{- $workers := int .Values.controller.workers }}
{{- if or (lt $workers 1) (gt $workers 64) }}
{{- fail (printf "controller.workers must be within 1..64 (got %v)" .Values.controller.workers) }}
{{- end }}
{{- if not (has .Values.controller.logLevel (list "debug" "info" "warn" "error")) }}
{{- fail (printf "controller.logLevel must be debug, info, warn or error (got %q)" .Values.controller.logLevel) }}
{{- end }}
{{- range .Values.prometheusRule.quantiles }}
{{- if or (lt (int .) 1) (gt (int .) 99) (ne (float64 .) (float64 (int .))) }}
{{- fail (printf "prometheusRule.quantiles: %v is not an integer percentile within 1..99" .) }}
{{- end }}
{{- end }}
{{- $slo := .Values.prometheusRule.alerts.slo }}
{{- if and .Values.prometheusRule.enabled $slo.enabled }}
{{- $found := false }}
{{- range .Values.prometheusRule.quantiles }}
{{- if eq (int .) (int $slo.percentile) }}{{ $found = true }}{{ end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "prometheusRule.alerts.slo.percentile %v is not one of prometheusRule.quantiles %v" $slo.percentile .Values.prometheusRule.quantiles) }}
{{- end }}
{{- range $slo.pools }}
{{- if or (not .namespace) (not .pool) }}
{{- fail "prometheusRule.alerts.slo.pools: every entry needs namespace and pool" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
