{{/*
Names. Every name is a DNS-1123 label: lower case, other characters as "-", trimmed.
fullname is at most 46 characters so that "<fullname>-cron" fits a CronJob's 52.
*/}}
{{- define "foundry.dns" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .text) "-" | trunc (int .max) | trimAll "-" -}}
{{- end -}}

{{- define "foundry.fullname" -}}
{{- include "foundry.dns" (dict "text" (.Values.fullnameOverride | default (printf "fdy-%s" .Release.Name)) "max" 46) -}}
{{- end -}}

{{- define "foundry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (printf "%s-driver" (include "foundry.fullname" .)) -}}
{{- else -}}
{{- required "serviceAccount.create is false: set serviceAccount.name to the existing ServiceAccount the driver should use" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* A label value from any text: at most 63 characters, starting and ending alphanumeric. */}}
{{- define "foundry.labelValue" -}}
{{- $text := regexReplaceAll "[^A-Za-z0-9._-]+" (toString .) "-" | trunc 63 -}}
{{- regexReplaceAll "^[^A-Za-z0-9]+|[^A-Za-z0-9]+$" $text "" -}}
{{- end -}}

{{/*
Labels. Pod templates get podLabels only: no chart or app version, so a chart upgrade never
changes a pod template (and so never a stage Job's name). Other objects get labels.
Arguments: dict "root" $ "component" NAME.
*/}}
{{- define "foundry.podLabels" -}}
app.kubernetes.io/name: foundry
app.kubernetes.io/instance: {{ include "foundry.labelValue" .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: foundry
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "foundry.labels" -}}
{{ include "foundry.podLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The restricted Pod Security Standard, for every pod. */}}
{{- define "foundry.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ int .Values.securityContext.runAsUser }}
runAsGroup: {{ int .Values.securityContext.runAsGroup }}
fsGroup: {{ int .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "foundry.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* image: repository@digest, else repository:tag (default: the chart's appVersion). */}}
{{- define "foundry.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
How pods reach the store. Credentials only ever by secretKeyRef: a rendered manifest names
the Secret and its keys, never a value.
*/}}
{{- define "foundry.storeEnv" -}}
{{- $store := .Values.store -}}
- name: FOUNDRY_STORE
  value: {{ $store.url | quote }}
{{- with $store.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with $store.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $store.credentials.secretName }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $store.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $store.credentials.secretAccessKeyKey }}
{{- end }}
{{- end -}}

{{/*
Resources in the pools' short form {cpu, memory, gpu, ephemeralStorage} as Kubernetes
requests and limits: CPU is requested, not limited (no throttling); memory, ephemeral
storage and GPUs are limited. Arguments: dict "resources" R "gpuResource" NAME.
*/}}
{{- define "foundry.resources" -}}
{{- $r := .resources -}}
requests:
  {{- with $r.cpu }}
  cpu: {{ toString . | quote }}
  {{- end }}
  {{- with $r.memory }}
  memory: {{ toString . | quote }}
  {{- end }}
  {{- with $r.ephemeralStorage }}
  ephemeral-storage: {{ toString . | quote }}
  {{- end }}
limits:
  {{- with $r.memory }}
  memory: {{ toString . | quote }}
  {{- end }}
  {{- with $r.ephemeralStorage }}
  ephemeral-storage: {{ toString . | quote }}
  {{- end }}
  {{- if and .gpuResource (gt (int ($r.gpu | default 0)) 0) }}
  {{ .gpuResource }}: {{ int $r.gpu | toString | quote }}
  {{- end }}
{{- end -}}

{{/*
podFailurePolicy shared by every Job: a disruption (eviction, preemption, node drain) is not
the workload's fault and is retried without counting; exit code 2 means bad input, which no
retry fixes, so the Job fails at once. Argument: the container's name.
*/}}
{{- define "foundry.podFailurePolicy" -}}
rules:
  - action: Ignore
    onPodConditions:
      - type: DisruptionTarget
        status: "True"
  - action: FailJob
    onExitCodes:
      containerName: {{ . }}
      operator: In
      values: [2]
{{- end -}}
