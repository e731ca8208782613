{{/* The chart's name, overridable. */}}
{{- define "nodeguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: object names start with it. */}}
{{- define "nodeguard.fullname" -}}
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

{{- define "nodeguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The standard app.kubernetes.io labels, on every object. */}}
{{- define "nodeguard.labels" -}}
helm.sh/chart: {{ include "nodeguard.chart" . }}
{{ include "nodeguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: nodeguard
{{- end }}

{{/* What the DaemonSet selects its pods by: never changes across upgrades. */}}
{{- define "nodeguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nodeguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nodeguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nodeguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest pins the image, else repository:tag (the appVersion by default). */}}
{{- define "nodeguard.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding OTEL_EXPORTER_OTLP_HEADERS, if any: the user's or the chart's own. */}}
{{- define "nodeguard.otlpHeadersSecret" -}}
{{- if .Values.otlp.existingSecret.name }}
{{- .Values.otlp.existingSecret.name }}
{{- else if .Values.otlp.headers }}
{{- printf "%s-otlp" (include "nodeguard.fullname" .) }}
{{- end }}
{{- end }}

{{/* The policy document the agent loads: the values' policy section, with mode as its spec.mode. */}}
{{- define "nodeguard.policy" -}}
apiVersion: nodeguard.io/v1alpha1
kind: NodeGuardPolicy
metadata:
  name: {{ include "nodeguard.fullname" . }}
spec:
  {{- toYaml (merge (dict "mode" .Values.mode) (deepCopy (default (dict) .Values.policy))) | nindent 2 }}
{{- end }}
