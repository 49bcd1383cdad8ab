{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "turnout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: RELEASE-turnout, or RELEASE when it already contains the chart name. */}}
{{- define "turnout.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The controller's objects: RELEASE-turnout-controller. */}}
{{- define "turnout.controller.fullname" -}}
{{- printf "%s-controller" (include "turnout.fullname" . | trunc 52 | trimSuffix "-") -}}
{{- end -}}

{{- define "turnout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "turnout.labels" -}}
helm.sh/chart: {{ include "turnout.chart" . }}
{{ include "turnout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: turnout
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "turnout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "turnout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The controller's labels and selector. */}}
{{- define "turnout.controller.labels" -}}
{{ include "turnout.labels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "turnout.controller.selectorLabels" -}}
{{ include "turnout.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "turnout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "turnout.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
A full image reference: [global.imageRegistry/]repository(@digest | :tag), the tag defaulting to
the chart's appVersion. Call with (dict "image" .Values.x.image "root" $).
*/}}
{{- define "turnout.image" -}}
{{- $registry := .root.Values.global.imageRegistry | trimSuffix "/" -}}
{{- $repository := .image.repository -}}
{{- if $registry -}}{{- $repository = printf "%s/%s" $registry $repository -}}{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the controller acts in, for monitors' namespaceSelector. */}}
{{- define "turnout.namespaceSelector" -}}
{{- if .Values.watchNamespace }}
matchNames:
  - {{ .Values.watchNamespace }}
{{- else }}
any: true
{{- end }}
{{- end -}}

{{- define "turnout.leaseName" -}}
{{- default (include "turnout.fullname" .) .Values.controller.leaderElection.leaseName -}}
{{- end -}}

{{/* The controller's rules in the namespaces it acts in (a ClusterRole, or a Role with watchNamespace). */}}
{{- define "turnout.rbac.namespacedRules" -}}
- apiGroups: ["serving.turnout.dev"]
  resources: ["inferenceservices", "inferencegraphs"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["serving.turnout.dev"]
  resources: ["inferenceservices/status", "inferencegraphs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["serving.turnout.dev"]
  resources: ["inferenceservices/finalizers", "inferencegraphs/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- if .Values.keda.enabled }}
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
{{- end }}
{{- end }}
