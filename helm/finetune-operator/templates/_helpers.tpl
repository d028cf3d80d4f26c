{{/* Chart name, truncated to a label's 63 characters. */}}
{{- define "finetune-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name, unless the release name already contains the chart name. */}}
{{- define "finetune-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "finetune-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Render-time guards: contradictory values fail here, not as a broken operator. */}}
{{- define "finetune-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) -}}
{{- fail "replicaCount > 1 needs peering.enabled=true (otherwise every replica would act on every job)" -}}
{{- end -}}
{{- if and .Values.peering.enabled (ne .Values.rbac.scope "cluster") -}}
{{- fail "peering.enabled needs rbac.scope=cluster (the peering is a ClusterKopfPeering)" -}}
{{- end -}}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.rbac.watchNamespaces) -}}
{{- fail "rbac.scope=namespaced needs rbac.watchNamespaces (the namespaces the operator may act in)" -}}
{{- end -}}
{{- if and (eq .Values.rbac.scope "cluster") (not (empty .Values.rbac.watchNamespaces)) -}}
{{- fail "rbac.watchNamespaces only applies with rbac.scope=namespaced" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" -}}
{{- end -}}
{{- if and .Values.crds.keep (not .Values.crds.enabled) -}}
{{- fail "crds.keep has no effect with crds.enabled=false; set crds.keep=false too" -}}
{{- end -}}
{{- end -}}
