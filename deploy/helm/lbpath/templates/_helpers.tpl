{{/* Full name: the release name, unless it already says lbpath. */}}
{{- define "lbpath.fullname" -}}
{{- if contains "lbpath" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-lbpath" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lbpath.labels" -}}
app.kubernetes.io/name: lbpath
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lbpath.serviceAccountName" -}}
{{- default (include "lbpath.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "lbpath.collectorName" -}}
{{- include "lbpath.fullname" . }}-collector
{{- end -}}

{{- define "lbpath.gatewayName" -}}
{{- include "lbpath.fullname" . }}-gateway
{{- end -}}

{{/* The Service the agents push OTLP to: the gateway in scale-out mode. */}}
{{- define "lbpath.otlpService" -}}
{{- if .Values.collector.scaleOut.enabled -}}
{{- include "lbpath.gatewayName" . -}}
{{- else -}}
{{- include "lbpath.collectorName" . -}}
{{- end -}}
{{- end -}}

{{/* "true" when the agents push delta temporality (scale-out, or chosen). */}}
{{- define "lbpath.agentDelta" -}}
{{- if or .Values.collector.scaleOut.enabled (eq .Values.agent.metricsTemporality "delta") -}}
true
{{- end -}}
{{- end -}}
