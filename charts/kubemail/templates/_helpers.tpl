{{/* The operator's name and labels. */}}
{{- define "kubemail.name" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubemail.labels" -}}
app.kubernetes.io/name: kubemail-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubemail.selector" -}}
app.kubernetes.io/name: kubemail-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The namespaces served: the list, or the release's namespace. */}}
{{- define "kubemail.namespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- toJson .Values.watchNamespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{- define "kubemail.allNamespaces" -}}
{{- if has "*" .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}
