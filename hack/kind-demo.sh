#!/usr/bin/env bash
# `make demo-kind`: the quickstart on a kind cluster with the real images (needs Docker and kind).
# Not runnable on machines without a Docker engine; `make demo` is the Docker-free equivalent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=${KIND_CLUSTER:-finetune-demo}
PY=${PY:-.venv/bin/python}
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "make demo-kind needs $tool on PATH" >&2; exit 1; }
done
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER"
docker build -f Dockerfile.operator -t ghcr.io/finetune-operator/operator:0.1.0 .
docker build -f Dockerfile.trainer -t ghcr.io/finetune-operator/trainer:0.1.0 .
kind load docker-image --name "$CLUSTER" ghcr.io/finetune-operator/operator:0.1.0 ghcr.io/finetune-operator/trainer:0.1.0
helm upgrade --install finetune-operator helm/finetune-operator -n finetune-system --create-namespace \
  --set devMinio.enabled=true --set settings.s3Secure=false --wait --timeout 5m
kubectl -n finetune-system rollout status deploy/finetune-operator-minio --timeout=5m
# The dev MinIO's credentials double as the storage Secret of the demo namespace.
creds() { kubectl -n finetune-system get secret finetune-operator-minio -o "jsonpath={.data.$1}" | base64 -d; }
kubectl create secret generic finetune-storage --from-literal=AWS_ACCESS_KEY_ID="$(creds AWS_ACCESS_KEY_ID)" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$(creds AWS_SECRET_ACCESS_KEY)" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n finetune-system port-forward svc/finetune-operator-minio 19000:9000 >/dev/null &
trap 'kill %1' EXIT
sleep 3
ASSETS=$(mktemp -d)
PYTHONPATH=hack "$PY" - "$ASSETS" "$(creds AWS_ACCESS_KEY_ID)" "$(creds AWS_SECRET_ACCESS_KEY)" <<'PYEOF'
import sys
from pathlib import Path
from minio import Minio
from tinymodel import make_quickstart
model, data = make_quickstart(Path(sys.argv[1]))
client = Minio("127.0.0.1:19000", access_key=sys.argv[2], secret_key=sys.argv[3], secure=False)
if not client.bucket_exists("finetune-demo"):
    client.make_bucket("finetune-demo")
for path in sorted(p for p in model.rglob("*") if p.is_file()):
    client.fput_object("finetune-demo", f"models/tiny-llama/{path.relative_to(model)}", str(path))
client.fput_object("finetune-demo", "datasets/support.jsonl", str(data))
for name in ("capitals-train.jsonl", "capitals-qa.jsonl"):
    client.fput_object("finetune-demo", f"datasets/{name}", str(data.parent / name))
PYEOF
kubectl apply -f examples/quickstart/finetunejob.yaml
kubectl wait --for=condition=Succeeded ftj/quickstart --timeout=15m
kubectl apply -f examples/evaluation/finetunejob-with-evaluation.yaml
kubectl wait --for=condition=Evaluated ftj/capitals --timeout=15m
kubectl get ftj quickstart -o wide
