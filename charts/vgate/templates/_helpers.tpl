{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "vgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: "<release>-<chart>", or just the release name when it already
contains the chart name.
*/}}
{{- define "vgate.fullname" -}}
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
"name-version" for the helm.sh/chart label.
*/}}
{{- define "vgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels on every object of the release.
*/}}
{{- define "vgate.labels" -}}
helm.sh/chart: {{ include "vgate.chart" . }}
{{ include "vgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vgate
{{- end }}

{{/*
Labels that select the operator pods; immutable once the Deployment exists.
*/}}
{{- define "vgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "vgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "vgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.registry }}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The kopf peering object's name.
*/}}
{{- define "vgate.peeringName" -}}
{{- default (include "vgate.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{/*
Namespace of the VGateDeployment created from values.
*/}}
{{- define "vgate.deploymentNamespace" -}}
{{- default .Release.Namespace (first .Values.watchNamespaces) }}
{{- end }}

{{/*
The namespaces the operator watches, as a JSON list: empty with clusterWide (every one),
else watchNamespaces, else the release namespace.
*/}}
{{- define "vgate.watchNamespaces" -}}
{{- if .Values.clusterWide }}[]
{{- else if .Values.watchNamespaces }}{{ toJson .Values.watchNamespaces }}
{{- else }}{{ list .Release.Namespace | toJson }}
{{- end }}
{{- end }}

{{/*
In-cluster URL of the gateway of the VGateDeployment created from values
(the operator names its Service "<name>-gateway", port 8000).
*/}}
{{- define "vgate.gatewayURL" -}}
{{- printf "http://%s-gateway.%s.svc:8000" .Values.deployment.name (include "vgate.deploymentNamespace" .) }}
{{- end }}
