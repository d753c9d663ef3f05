{{- define "shopping-guide.name" -}}shopping-guide-operator{{- end -}}
{{- define "shopping-guide.fullname" -}}{{ .Release.Name }}-operator{{- end -}}
{{- define "shopping-guide.labels" -}}
app.kubernetes.io/name: {{ include "shopping-guide.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "shopping-guide.selector" -}}
app.kubernetes.io/name: {{ include "shopping-guide.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "shopping-guide.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "shopping-guide.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}
