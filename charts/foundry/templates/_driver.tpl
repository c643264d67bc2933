{{/*
The driver's pod: the only pod with an API token, since it creates and watches the stage
Jobs. It reads its plan from the ConfigMap mounted at /etc/foundry/plan, so it needs no
permission on ConfigMaps. Arguments: dict "root" $ "recipe" NAME "configMap" NAME "args" LIST.
*/}}
{{- define "foundry.driverPodTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "foundry.podLabels" (dict "root" $root "component" "driver") | nindent 4 }}
    foundry.dev/recipe: {{ include "foundry.labelValue" .recipe }}
  {{- with $v.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "foundry.serviceAccountName" $root }}
  automountServiceAccountToken: true
  restartPolicy: Never
  enableServiceLinks: false
  {{- with $v.driver.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.driver.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "foundry.podSecurityContext" $root | nindent 4 }}
  containers:
    - name: driver
      image: {{ include "foundry.image" (dict "root" $root "image" $v.pools.cpu.image) }}
      imagePullPolicy: {{ $v.pools.cpu.image.pullPolicy }}
      command:
        {{- toYaml $v.driver.command | nindent 8 }}
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        - name: FOUNDRY_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: FOUNDRY_RUN
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['batch.kubernetes.io/job-name']
        - name: HOME
          value: /tmp
        - name: TMPDIR
          value: /tmp
        {{- include "foundry.storeEnv" $root | nindent 8 }}
      resources:
        {{- include "foundry.resources" (dict "resources" $v.driver.resources "gpuResource" "") | nindent 8 }}
      securityContext:
        {{- include "foundry.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: plan
          mountPath: /etc/foundry/plan
          readOnly: true
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: plan
      configMap:
        name: {{ .configMap }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ $v.driver.resources.ephemeralStorage | toString | quote }}
{{- end -}}

{{- define "foundry.driverJobSpec" -}}
{{- $v := .root.Values -}}
backoffLimit: {{ int $v.driver.backoffLimit }}
activeDeadlineSeconds: {{ int $v.driver.activeDeadlineSeconds }}
ttlSecondsAfterFinished: {{ int $v.driver.ttlSecondsAfterFinished }}
podFailurePolicy:
  {{- include "foundry.podFailurePolicy" "driver" | nindent 2 }}
template:
  {{- include "foundry.driverPodTemplate" . | nindent 2 }}
{{- end -}}
