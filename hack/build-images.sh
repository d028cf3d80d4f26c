#!/usr/bin/env bash
# Builds the operator and trainer images from Dockerfile.operator and Dockerfile.trainer, air-gapped,
# for the local node (hack/devcluster/node.py), a pause image for its pod sandboxes, and the
# integration tests' stand-in trainer image (tests/integration/stand-in.Dockerfile, on the operator's), and
# an image of the Kueue manager that hack/build-tools.sh built from its Go module (tests/e2e/test_kueue.py).
#
#   base        Debian 12 made by mmdebstrap from Debian's packages (no registry is reachable here)
#   build base  base + a wheelhouse downloaded on the host; pip inside installs with --no-index
#   images      `docker build` of our Dockerfiles with --build-arg BASE/BUILD_BASE/PYTHON and
#               --network none, then `docker save` into the cache as archives the node imports
#
# Everything is keyed by content, so an unchanged tree reuses what is built: the base by its package
# list, the wheelhouse by pyproject's pins, each image by the hash of its Dockerfile, pyproject,
# README and source. The Docker engine runs as a process with its own data root and socket under the
# cache, and is stopped again at the end. Prints the image references as NAME=REF lines on stdout
# (also written to $CACHE/images/refs.env).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CACHE="${FINETUNE_CACHE:-$HOME/.cache/finetune-operator}"
IMAGES="$CACHE/images"
PY="${PY:-$ROOT/.venv/bin/python}"
REPO="finetune.local"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES="python3,python3-venv,python3.11-venv,ca-certificates,python-is-python3"
# dpkg's path-exclude takes shell globs without braces: one option per folder.
BASE_EXCLUDES=('/usr/share/doc/*' '/usr/share/man/*' '/usr/share/locale/*' '/usr/share/info/*')
LOCAL_PYTHON=python3.11 # Debian 12's Python; the trainer's GPU default (Ubuntu 24.04) has 3.12
log() { echo "build-images: $*" >&2; }
die() { echo "build-images: error: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "needs root (mmdebstrap and the Docker engine); run as root or use kind (make demo-kind)"
for tool in mmdebstrap dockerd docker gcc; do
  command -v "$tool" >/dev/null || die "'$tool' is missing: apt-get install mmdebstrap docker.io gcc libc6-dev"
done
mkdir -p "$IMAGES"
started_dockerd=""
disk_report() { df -h "$CACHE" >&2; du -sh "$CACHE"/* 2>/dev/null | sort -h >&2; }
cleanup() {  # stop our engine; a failed build also says how full the disk is, the usual cause
  local rc=$?
  [[ -n $started_dockerd ]] && { kill "$started_dockerd" && wait "$started_dockerd"; } 2>/dev/null || true
  ((rc == 0)) || { log "failed (exit $rc); the disk under $CACHE:"; disk_report; }
}
trap cleanup EXIT

hash_of() { cat "$@" | sha256sum | cut -c1-12; } # contents only: any clone's path gives the same key
tree_hash() {  # what an image's COPY lines take in, its Dockerfile, and the bases it is built on
  (cd "$ROOT" && git ls-files -co --exclude-standard -- "$1" .dockerignore pyproject.toml README.md operator \
    trainer_image | grep -v '__pycache__' | sort | xargs sha256sum | cat - <(echo "$BUILD_BASE_REF") \
    | sha256sum | cut -c1-12)
}

# 1. The Debian base. Its apt sources are emptied, so `apt-get update` inside a build is a no-op
#    and `apt-get install` of a package the base already has succeeds with no network.
BASE_APT=('APT::Install-Recommends "false"')
# /usr merged by mmdebstrap's own hook, not by the usrmerge package, which would pull in perl (50 MB).
BASE_HOOKS=(/usr/share/mmdebstrap/hooks/merged-usr)
BASE_KEY=$(echo "$SUITE $BASE_PACKAGES ${BASE_EXCLUDES[*]} ${BASE_APT[*]} ${BASE_HOOKS[*]}" | sha256sum | cut -c1-12)
BASE_TAR="$IMAGES/base-$BASE_KEY.tar"
if [[ ! -s $BASE_TAR ]]; then
  log "making the Debian $SUITE base with mmdebstrap ($BASE_PACKAGES)"
  rm -f "$IMAGES"/base-*.tar
  mmdebstrap --quiet --format=tar --variant=minbase --include="$BASE_PACKAGES" \
    "${BASE_EXCLUDES[@]/#/--dpkgopt=path-exclude=}" "${BASE_APT[@]/#/--aptopt=}" \
    "${BASE_HOOKS[@]/#/--hook-dir=}" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*; : > "$1"/etc/apt/sources.list; rm -f "$1"/etc/apt/sources.list.d/*' \
    "$SUITE" "$BASE_TAR.part" "$MIRROR"
  mv "$BASE_TAR.part" "$BASE_TAR"
fi

# 2. The wheelhouse: every pinned requirement of both images as wheels (sdists built here once). Only
#    its key is needed up front; the wheels are fetched when the build base is built (step 4) and
#    dropped once it holds them, so the gigabytes of torch's CUDA wheels are not kept twice.
WHEEL_KEY=$(hash_of "$ROOT/pyproject.toml" "$ROOT/Dockerfile.trainer")
WHEELS="$CACHE/wheelhouse/$WHEEL_KEY"
fetch_wheels() {
  log "downloading the images' wheels into $WHEELS"
  mkdir -p "$WHEELS"
  "$PY" - "$ROOT" >"$WHEELS/requirements.txt" <<'PYEOF'
import re, sys, tomllib
from pathlib import Path
root = Path(sys.argv[1])
project = tomllib.loads((root / "pyproject.toml").read_text())
extras = project["project"]["optional-dependencies"]
requirements = [*project["build-system"]["requires"], *project["project"]["dependencies"], *extras["operator"], *extras["trainer"]]
text = (root / "Dockerfile.trainer").read_text()  # what the Dockerfile adds by name on its pip line
requirements += re.findall(r'"([A-Za-z0-9_.-]+==[^"]+)"', text.split('pip install ".[trainer]"', 1)[1].splitlines()[0])
print("\n".join(dict.fromkeys(requirements)))
PYEOF
  (cd "$ROOT" && "$PY" -m pip wheel -q -w "$WHEELS" -r "$WHEELS/requirements.txt")
}

# 3. What the images are called: by content, so an unchanged tree needs no engine at all.
BASE_REF="$REPO/base:$BASE_KEY"
BUILD_BASE_REF="$REPO/build-base:$BASE_KEY-$WHEEL_KEY"
PAUSE_REF="$REPO/pause:$(hash_of "$HERE/node/pause.c")"
OPERATOR_REF="$REPO/operator:$(tree_hash Dockerfile.operator)"
TRAINER_REF="$REPO/trainer:$(tree_hash Dockerfile.trainer)"
STAND_IN="$ROOT/tests/integration"
STAND_IN_REF="$REPO/stand-in-trainer:$(hash_of "$STAND_IN/stand-in.Dockerfile" "$STAND_IN/stand_in_trainer.py" \
  <(echo "$OPERATOR_REF"))"
KUEUE_BIN="${FINETUNE_BIN_DIR:-$CACHE/bin}/kueue"
[[ -x $KUEUE_BIN ]] || die "$KUEUE_BIN is missing; run hack/build-tools.sh (make tools) first"
KUEUE_REF="$REPO/kueue:$(hash_of "$KUEUE_BIN")"
archive_of() { local ref=${1#"$REPO/"}; echo "$IMAGES/${ref%%:*}-${ref##*:}.tar"; }
refs() {
  for name in PAUSE OPERATOR TRAINER STAND_IN KUEUE; do
    local ref_var="${name}_REF"
    echo "${name}_IMAGE=${!ref_var}"
    echo "${name}_ARCHIVE=$(archive_of "${!ref_var}")"
    echo "${name}_ID=$(cat "$(archive_of "${!ref_var}").id")"
  done
}
built() { [[ -s $(archive_of "$1") && -s $(archive_of "$1").id ]]; }
if built "$PAUSE_REF" && built "$OPERATOR_REF" && built "$TRAINER_REF" && built "$STAND_IN_REF" \
  && built "$KUEUE_REF"; then
  refs | tee "$IMAGES/refs.env"
  exit 0
fi

# 4. A Docker engine of our own for the build.
RUN_DIR="$CACHE/run"
DOCKER_SOCK="$RUN_DIR/docker.sock"
export DOCKER_HOST="unix://$DOCKER_SOCK" DOCKER_BUILDKIT=1
DOCKER=/usr/bin/docker
[[ -x $DOCKER ]] || DOCKER=docker
if ! $DOCKER info >/dev/null 2>&1; then
  mkdir -p "$RUN_DIR"
  log "starting dockerd (data root $CACHE/docker)"
  dockerd --data-root "$CACHE/docker" --exec-root "$RUN_DIR/docker-exec" --pidfile "$RUN_DIR/dockerd.pid" \
    --host "$DOCKER_HOST" --iptables=false --ip-masq=false --bridge=none --storage-driver=overlay2 \
    --exec-opt native.cgroupdriver=cgroupfs --containerd-namespace fo-docker \
    --containerd-plugins-namespace fo-docker-plugins >"$RUN_DIR/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.5; done
  $DOCKER info >/dev/null 2>&1 || die "dockerd did not start; see $RUN_DIR/dockerd.log"
fi

drop_stale_archives() {  # ref: the cache's archives of earlier content hashes, before a build needs the room
  local name=${1#"$REPO/"}
  name=${name%%:*}
  find "$IMAGES" -name "$name-*.tar*" -not -name "$(basename "$(archive_of "$1")")*" -delete
}
keep_only() {  # ref: drop the engine's and the cache's copies of earlier content hashes
  local name=${1#"$REPO/"}
  name=${name%%:*}
  drop_stale_archives "$1"
  $DOCKER images "$REPO/$name" --format '{{.Repository}}:{{.Tag}}' | { grep -vx "$1" || true; } | xargs -r $DOCKER rmi >/dev/null
}
NODE_LOCK=/run/finetune-node/lock # hack/devcluster/node.py holds it while a node runs (its RUN_DIR)
drop_node_images() {
  # The node's containerd keeps the previous trainer build twice (content and unpacked layers) until
  # the next node imports the new one; so it goes before the build, unless a node is using it. The
  # next node imports every image it then lacks from the archives.
  local root="$CACHE/containerd" fd
  [[ -d $root ]] || return 0
  if grep -qsF "$root/" /proc/mounts; then
    log "containers run from $root; its earlier images stay until the node imports the new build"
    return 0
  fi
  mkdir -p "$(dirname "$NODE_LOCK")"
  exec {fd}>>"$NODE_LOCK"
  if flock -n "$fd"; then
    log "dropping the node's imported images ($(du -sh "$root" | cut -f1) in $root) to make room"
    rm -rf "$root"
  else
    log "a node is running ($(cat "$NODE_LOCK")); its imported images stay"
  fi
  exec {fd}>&-
}
TRAINER_BUILD_GB=18 # its 5.8 GB about three times over: the built layers, docker save's staging copy, the archive
check_room() {
  local free_gb
  free_gb=$(df -BG --output=avail "$CACHE" | tail -1 | tr -dc 0-9)
  ((free_gb >= TRAINER_BUILD_GB)) && return
  log "warning: ${free_gb} GB free under $CACHE; the trainer build needs about $TRAINER_BUILD_GB GB, and" \
    "importing it into the node twice its size again (FINETUNE_CACHE may point at a larger disk)"
  disk_report
}
has_image() { $DOCKER image inspect "$1" >/dev/null 2>&1; }
if ! has_image "$BASE_REF"; then
  log "importing $BASE_REF"
  $DOCKER import "$BASE_TAR" "$BASE_REF" >/dev/null
  keep_only "$BASE_REF"
fi
if ! has_image "$BUILD_BASE_REF"; then
  fetch_wheels
  log "building $BUILD_BASE_REF (base + wheelhouse, pip --no-index)"
  printf 'FROM %s\nCOPY . /wheelhouse/\nENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse\n' "$BASE_REF" \
    | $DOCKER build --network none -q -t "$BUILD_BASE_REF" -f - "$WHEELS" >/dev/null
  keep_only "$BUILD_BASE_REF"
fi
rm -rf "$CACHE/wheelhouse" # the build base holds the wheels; a new build base fetches them again anyway

# 5. The images, each saved as an archive the node imports.
save() {  # ref: the archive and its ID; then the engine's copy goes (the archive is what the node imports)
  local archive
  archive=$(archive_of "$1")
  $DOCKER save "$1" -o "$archive.part"
  mv "$archive.part" "$archive"
  # The image ID (its config's digest) is what the kubelet reports as a container's imageID.
  $DOCKER image inspect --format '{{.Id}}' "$1" >"$archive.id"
  keep_only "$1"
  $DOCKER rmi "$1" >/dev/null
}
build() {  # ref, dockerfile, extra build args...
  local ref=$1 dockerfile=$2
  shift 2
  built "$ref" && return
  drop_stale_archives "$ref"
  log "building $ref from $dockerfile"
  (cd "$ROOT" && $DOCKER build --network none -q -f "$dockerfile" -t "$ref" \
    --build-arg BASE="$BASE_REF" --build-arg BUILD_BASE="$BUILD_BASE_REF" "$@" . >/dev/null)
  # The build stage's layers (the trainer's whole virtualenv) go before `docker save` needs the room.
  $DOCKER builder prune -af >/dev/null
  save "$ref"
}

static_image() {  # ref, binary, path in the image, user: one static binary on scratch
  local ref=$1 binary=$2 path=$3 user=$4 ctx
  built "$ref" && return
  log "building $ref"
  ctx=$(mktemp -d)
  cp "$binary" "$ctx/binary"
  printf 'FROM scratch\nCOPY binary %s\nUSER %s\nENTRYPOINT ["%s"]\n' "$path" "$user" "$path" \
    | $DOCKER build --network none -q -t "$ref" -f - "$ctx" >/dev/null
  rm -rf "$ctx"
  save "$ref"
}
if ! built "$PAUSE_REF"; then
  pause_bin=$(mktemp)
  gcc -static -Os -o "$pause_bin" "$HERE/node/pause.c"
  static_image "$PAUSE_REF" "$pause_bin" /pause 65535:65535
  rm -f "$pause_bin"
fi
# Where Kueue's own manifests expect its manager binary; 65532 is the nonroot user of its release image.
static_image "$KUEUE_REF" "$KUEUE_BIN" /manager 65532:65532
build "$OPERATOR_REF" Dockerfile.operator
if ! built "$TRAINER_REF"; then
  drop_node_images
  drop_stale_archives "$TRAINER_REF"
  check_room
  build "$TRAINER_REF" Dockerfile.trainer --build-arg PYTHON="$LOCAL_PYTHON"
fi
if ! built "$STAND_IN_REF"; then
  log "building $STAND_IN_REF from tests/integration/stand-in.Dockerfile"
  has_image "$OPERATOR_REF" || $DOCKER load -q -i "$(archive_of "$OPERATOR_REF")" >/dev/null
  $DOCKER build --network none -q -f "$STAND_IN/stand-in.Dockerfile" -t "$STAND_IN_REF" \
    --build-arg BASE="$OPERATOR_REF" "$STAND_IN" >/dev/null
  save "$STAND_IN_REF"
  $DOCKER rmi "$OPERATOR_REF" >/dev/null
fi
$DOCKER builder prune -af >/dev/null
$DOCKER image prune -f >/dev/null
refs | tee "$IMAGES/refs.env"
