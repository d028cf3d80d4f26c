#!/usr/bin/env bash
# kubectl-finetune as a krew archive: dist/kubectl-finetune-linux-amd64.tar.gz (a launcher, the package
# and its dependencies for CPython 3.11-3.13, Linux x86-64) and dist/finetune.yaml (the krew manifest,
# with its sha256). Usage: hack/plugin-dist.sh [OUT_DIR] [ARCHIVE_URI]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/dist}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
read -r -a PYTHONS <<<"${PLUGIN_PYTHONS:-3.11 3.12 3.13}"  # CPython versions whose wheels it bundles
PLATFORM=manylinux2014_x86_64
ARCHIVE="kubectl-finetune-linux-amd64.tar.gz"

# The plugin needs the package's base dependencies and the kubernetes client, at the versions pinned
# in pyproject.toml.
read -r VERSION KUBERNETES < <("$PY" - "$ROOT/pyproject.toml" <<'PYTHON'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(project["version"], next(d for d in project["optional-dependencies"]["operator"] if d.startswith("kubernetes==")))
PYTHON
)
URI="${2:-https://github.com/finetune-operator/finetune-operator/releases/download/v$VERSION/$ARCHIVE}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stage="$tmp/kubectl-finetune"
mkdir -p "$stage/lib" "$OUT"
"$PY" -m pip wheel -q --no-deps -w "$tmp/wheel" "$ROOT"
for version in "${PYTHONS[@]}"; do
  # One target per Python: their compiled modules (pydantic-core, PyYAML) differ only in file names,
  # so merging them keeps one of each pure file and every version's extension module.
  "$PY" -m pip install -q --target "$tmp/lib-$version" --only-binary=:all: --platform "$PLATFORM" \
    --python-version "$version" --implementation cp "$tmp"/wheel/*.whl "$KUBERNETES"
  cp -rn "$tmp/lib-$version/." "$stage/lib/"
done
# Console scripts of the target, the trainer, and the dependencies' own test suites.
rm -rf "$stage/lib/bin" "$stage/lib/finetune_trainer" "$stage/lib/kubernetes/test" "$stage/lib/kubernetes/e2e_test"
find "$stage/lib" -name __pycache__ -prune -exec rm -rf {} +
cp "$ROOT/LICENSE" "$stage/" 2>/dev/null || true
cat >"$stage/kubectl-finetune" <<'LAUNCHER'
#!/bin/sh
# kubectl-finetune from its krew archive: the bundled packages, the system's python3.
here=$(dirname "$(readlink -f "$0")")
PYTHONPATH="$here/lib${PYTHONPATH:+:$PYTHONPATH}" exec "${KUBECTL_FINETUNE_PYTHON:-python3}" -m finetune_operator.plugin.cli "$@"
LAUNCHER
chmod 0755 "$stage/kubectl-finetune"
tar -C "$tmp" -czf "$OUT/$ARCHIVE" kubectl-finetune
sha=$(sha256sum "$OUT/$ARCHIVE" | cut -d' ' -f1)
VERSION="$VERSION" URI="$URI" SHA256="$sha" \
  "$PY" -c 'import os, string, sys; print(string.Template(open(sys.argv[1]).read()).substitute(os.environ), end="")' \
  "$ROOT/hack/krew/finetune.yaml" >"$OUT/finetune.yaml"
echo "wrote $OUT/$ARCHIVE ($(du -h "$OUT/$ARCHIVE" | cut -f1), sha256 $sha) and $OUT/finetune.yaml"
