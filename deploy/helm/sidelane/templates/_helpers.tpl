{{/*
Whether OVN's databases are reached over TLS (Kube-OVN's networking.ENABLE_SSL).
*/}}
{{- define "sidelane.ssl" -}}
{{- if and .Values.networking .Values.networking.ENABLE_SSL }}true{{ end -}}
{{- end }}

{{/*
An OVSDB address with `tcp:` made `ssl:` when TLS is on.
*/}}
{{- define "sidelane.ovsdbAddr" -}}
{{- if include "sidelane.ssl" .root }}{{ regexReplaceAll "^tcp:" .addr "ssl:" }}{{ else }}{{ .addr }}{{ end -}}
{{- end }}

{{/*
The TLS flags OVN's tools take (`--private-key`, `--certificate`, `--ca-cert`), with the files
of the kube-ovn-tls Secret at /var/run/tls.
*/}}
{{- define "sidelane.ovnTlsFlags" -}}
--private-key=/var/run/tls/key --certificate=/var/run/tls/cert --ca-cert=/var/run/tls/cacert
{{- end }}
