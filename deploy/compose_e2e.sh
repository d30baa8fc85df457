#!/usr/bin/env bash
# End-to-end test of the compose deployment on a build machine (docs/DEPLOY.md, /work/shared/CONTAINERS.md):
# a private Docker engine (own data/exec root and socket, overlay2, no iptables, no default bridge),
# a locally made base image (debootstrap + docker import, cached), the fedtree image (classic builder),
# `docker-compose up -d`, then from the host through the published 127.0.0.1 Admin API: wait for 2
# closed rounds, read the tree and the workers, wait for every worker to exit 0. Always tears down.
#
#   sudo deploy/compose_e2e.sh            # or: make compose-e2e
#
# Env: FEDTREE_CACHE (~/.cache/fedtree) base/deps image tarballs; TORCH_WHEEL_SRC (/opt/wheels);
#      PYTHON (python3, needs the project importable for the admin CLI); E2E_TIMEOUT_S (720);
#      KEEP_CACHE=0 to not write tarballs; DEBIAN_MIRROR (from apt sources, else deb.debian.org);
#      E2E_TMPFS (auto: the engine's data on a 6 GB tmpfs when > 12 GB of memory is available).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
CACHE=${FEDTREE_CACHE:-$HOME/.cache/fedtree}
TORCH_WHEEL_SRC=${TORCH_WHEEL_SRC:-/opt/wheels}
E2E_TIMEOUT_S=${E2E_TIMEOUT_S:-720}
ROUNDS_TO_WAIT=2
WORKERS=(worker-0 worker-1 worker-2 worker-3)
DOCKER=/usr/bin/docker          # the Debian CLI matching dockerd 20.10 (a newer one may be first on PATH)
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)
T0=$(date +%s)
declare -A AT=()   # phase key -> seconds since start
phase() { AT[$1]=$(( $(date +%s) - T0 )); echo "=== [${AT[$1]}s] $2" >&2; }
die() { echo "compose-e2e: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (starts its own dockerd)"
for tool in dockerd docker-compose debootstrap; do command -v "$tool" >/dev/null || die "$tool missing (apt-get install docker.io docker-compose debootstrap)"; done

D=$(mktemp -d /tmp/fedtree-e2e.XXXXXX)
export DOCKER_HOST=unix://$D/docker.sock DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
export COMPOSE_PROJECT_NAME=fedtree-e2e-$$
export COMPOSE_FILE=$ROOT/docker-compose.yml
export FEDTREE_ADMIN_TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
export FEDTREE_WORKER_TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
export FEDTREE_IMAGE=fedtree:e2e FEDTREE_BASE_IMAGE=local/bookworm-py:latest

cleanup() {
  local rc=$?
  set +e
  if [ -S "$D/docker.sock" ]; then
    if [ "$rc" != 0 ]; then
      echo "---- compose ps / logs (failure) ----" >&2
      docker-compose ps >&2
      docker-compose logs --no-color --tail=60 >&2
    fi
    timeout 120 docker-compose down -v --remove-orphans -t 5 >/dev/null 2>&1
    for net in $("$DOCKER" network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" 2>/dev/null); do
      "$DOCKER" network rm "$net" >/dev/null 2>&1
    done
  fi
  if [ -f "$D/dockerd.pid" ]; then
    local pid; pid=$(cat "$D/dockerd.pid")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null
  fi
  # anything dockerd left mounted under $D (netns first), deepest first
  umount "$D/exec/netns/default" 2>/dev/null
  awk -v d="$D" 'index($2, d) == 1 && $2 != d {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  if awk -v d="$D" '$2 == d {found = 1} END {exit !found}' /proc/mounts; then umount -l "$D"; fi   # the tmpfs
  rm -rf "$D"
  [ "$rc" = 0 ] || echo "compose-e2e: FAILED (rc=$rc) after $(( $(date +%s) - T0 )) s" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- engine -------------------------------------------------------------------------------
phase engine "start dockerd in $D"
# Engine data on a tmpfs when memory allows (E2E_TMPFS=auto|1|0): deleting ~2 GB of overlay
# layers from disk takes over a minute on a busy 2-core machine, from a tmpfs no time at all.
avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
if [ "${E2E_TMPFS:-auto}" = 1 ] || { [ "${E2E_TMPFS:-auto}" = auto ] && [ "${avail_kb:-0}" -gt $((12 * 1024 * 1024)) ]; }; then
  mount -t tmpfs -o size=6g,mode=0711 fedtree-e2e "$D"
fi
mkdir -p "$D/data" "$D/exec"
dockerd --data-root "$D/data" --exec-root "$D/exec" -H "unix://$D/docker.sock" --pidfile "$D/dockerd.pid" \
  --storage-driver=overlay2 --iptables=false --ip6tables=false --ip-forward=false --bridge=none --ip-masq=false \
  >"$D/dockerd.log" 2>&1 &
for _ in $(seq 1 120); do "$DOCKER" version >/dev/null 2>&1 && break; sleep 0.5; done
"$DOCKER" version >/dev/null 2>&1 || { tail -30 "$D/dockerd.log" >&2; die "dockerd did not come up"; }

# ---- base image (no registry here): debootstrap + import, cached as a tarball ----------------
mkdir -p "$CACHE"
BASE_TAR=$CACHE/bookworm-py.tar.gz
if [ -s "$BASE_TAR" ]; then
  phase base "load base image from $BASE_TAR"
  gzip -dc "$BASE_TAR" | "$DOCKER" load -q >/dev/null
else
  phase base "make base image (debootstrap)"
  mirror=${DEBIAN_MIRROR:-$( (grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true) | awk '{print $2}' | head -1)}
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$D/rootfs
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$rootfs" "$mirror" >"$D/debootstrap.log" 2>&1 \
    || { tail -20 "$D/debootstrap.log" >&2; die "debootstrap failed"; }
  # HTTPS here may pass a TLS-inspecting proxy: trust the machine's locally added CAs inside the image.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "$DOCKER" import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' - local/bookworm-py:latest >/dev/null
  rm -rf "$rootfs"
  [ "${KEEP_CACHE:-1}" = 0 ] || { "$DOCKER" save local/bookworm-py:latest | gzip -1 >"$BASE_TAR.tmp" && mv "$BASE_TAR.tmp" "$BASE_TAR"; }
fi

# ---- fedtree image ----------------------------------------------------------------------------
mkdir -p wheels
compgen -G "wheels/torch-2.13.0*.whl" >/dev/null || cp "$TORCH_WHEEL_SRC"/torch-2.13.0*.whl wheels/ \
  || die "no torch-2.13.0 CPU wheel in ./wheels or $TORCH_WHEEL_SRC"
# the deps stage depends on the Dockerfile, pyproject.toml, the wheel and the base image only
DEPS_KEY=$(cat Dockerfile .dockerignore pyproject.toml <(ls wheels/torch-2.13.0*.whl) <("$DOCKER" image inspect -f '{{.Id}}' local/bookworm-py:latest) | sha256sum | cut -c1-16)
DEPS_TAR=$CACHE/deps-$DEPS_KEY.tar
cache_from=()
if [ -s "$DEPS_TAR" ]; then
  phase deps_load "load cached deps image $DEPS_TAR"
  "$DOCKER" load -q -i "$DEPS_TAR" >/dev/null
  cache_from=(--cache-from "fedtree-deps:$DEPS_KEY")
fi
build=("$DOCKER" build -q --network host --force-rm --build-arg BASE_IMAGE=local/bookworm-py:latest --build-arg TORCH_WHEEL_DIR=wheels "${cache_from[@]}")
phase deps "build deps stage (key $DEPS_KEY)"
"${build[@]}" --target deps -t "fedtree-deps:$DEPS_KEY" . >/dev/null
if [ ! -s "$DEPS_TAR" ] && [ "${KEEP_CACHE:-1}" != 0 ]; then
  phase deps_save "save deps image to $DEPS_TAR"
  rm -f "$CACHE"/deps-*.tar
  "$DOCKER" save -o "$DEPS_TAR.tmp" "fedtree-deps:$DEPS_KEY" && mv "$DEPS_TAR.tmp" "$DEPS_TAR"
fi
phase image "build image $FEDTREE_IMAGE"
"${build[@]}" -t "$FEDTREE_IMAGE" . >/dev/null
IMAGE_SIZE=$("$DOCKER" image inspect -f '{{.Size}}' "$FEDTREE_IMAGE")

# ---- federation ---------------------------------------------------------------------------
phase certs "mTLS certificates in $D/certs"
export FEDTREE_CERTS_DIR=$D/certs
"$PYTHON" -m coordinator.certs --out "$FEDTREE_CERTS_DIR" --workers client-0,client-1,client-2,client-3 \
  --coordinator-names coordinator,localhost,127.0.0.1 >/dev/null
# the containers run as uid 10001 and read their own key (mode 0600)
(cd "$FEDTREE_CERTS_DIR" && chown 10001:10001 coordinator.key admin.key client-*.key)
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export FEDTREE_GRPC_PORT=$(free_port) FEDTREE_DASHBOARD_PORT=$(free_port)
TARGET=127.0.0.1:$FEDTREE_GRPC_PORT
phase up "docker-compose up -d (admin API on $TARGET, dashboard on 127.0.0.1:$FEDTREE_DASHBOARD_PORT)"
docker-compose up -d --no-build >&2

admin() {
  "$PYTHON" -m coordinator.admin_cli admin "$@" --coordinator "$TARGET" --token "$FEDTREE_ADMIN_TOKEN" \
    --tls-ca "$FEDTREE_CERTS_DIR/ca.pem" --tls-cert "$FEDTREE_CERTS_DIR/admin.pem" --tls-key "$FEDTREE_CERTS_DIR/admin.key" \
    --tls-server-name coordinator
}
cid() { docker-compose ps -q "$1"; }
state_of() { "$DOCKER" inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(cid "$1")"; }

phase healthy "coordinator healthy, workers started; wait for $ROUNDS_TO_WAIT closed rounds"
closed=0
while :; do
  [ $(( $(date +%s) - T0 )) -lt "$E2E_TIMEOUT_S" ] || die "timeout: $closed of $ROUNDS_TO_WAIT rounds closed"
  for w in "${WORKERS[@]}"; do
    read -r st code <<<"$(state_of "$w")"
    [ "$st" != exited ] || [ "$code" = 0 ] || die "$w exited with $code before round $ROUNDS_TO_WAIT closed"
  done
  if status=$(admin status --json 2>/dev/null); then
    closed=$("$PYTHON" -c 'import json, sys; print(int(json.loads(sys.stdin.read()).get("lastClosedRound", 0)))' <<<"$status")
    [ "$closed" -ge "$ROUNDS_TO_WAIT" ] && break
  fi
  sleep 3
done
phase rounds "round $closed closed; reading the Admin API"
admin status
admin tree
admin workers
workers_json=$(admin workers --json)
"$PYTHON" - "$workers_json" <<'PY'
import json, sys
ws = {w["workerId"] for w in json.loads(sys.argv[1]).get("workers", [])}
want = {f"client-{i}" for i in range(4)}
sys.exit(f"workers seen by the coordinator: {sorted(ws)}, want {sorted(want)}" if ws != want else 0)
PY
rounds_txt=$(admin rounds)
# the dashboard: HTTPS with the coordinator's certificate; /api needs the admin token (401 without it)
curl_ok=$("$PYTHON" - "$FEDTREE_DASHBOARD_PORT" "$FEDTREE_CERTS_DIR/ca.pem" "$FEDTREE_ADMIN_TOKEN" <<'PY' 2>&1 || echo unreachable
import ssl, sys, urllib.error, urllib.request as u
port, ca, token = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False  # dialled as 127.0.0.1 through the published port; the chain is still verified
base = f"https://127.0.0.1:{port}"
def get(path, token=None):
    req = u.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        return u.urlopen(req, timeout=5, context=ctx).status
    except urllib.error.HTTPError as exc:
        return exc.code
got = (get("/healthz"), get("/api/status"), get("/api/status", token))
print(f"https: /healthz {got[0]}, /api/status without token {got[1]}, with the admin token {got[2]}")
sys.exit(0 if got == (200, 401, 200) else 1)
PY
)

phase exit "wait for the workers to exit"
for w in "${WORKERS[@]}"; do
  while [ "$(state_of "$w" | cut -d' ' -f1)" != exited ]; do
    [ $(( $(date +%s) - T0 )) -lt "$E2E_TIMEOUT_S" ] || die "timeout waiting for $w to exit"
    sleep 2
  done
done
failed=0
for w in "${WORKERS[@]}"; do
  code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$(cid "$w")")
  echo "$w exit code $code"
  [ "$code" = 0 ] || failed=1
done
[ "$failed" = 0 ] || die "a worker exited non-zero"
phase done "all workers exited 0"

cat <<SUMMARY

===== compose-e2e summary =====
image            $FEDTREE_IMAGE  $(( IMAGE_SIZE / 1000000 )) MB
rounds closed    $closed (tree + workers read through the Admin API on $TARGET, mTLS)
dashboard        $curl_ok
workers          ${WORKERS[*]}: all exited 0
$rounds_txt
timeline (s)     base image ready ${AT[deps]}, image built ${AT[certs]}, coordinator healthy ${AT[healthy]}, $closed rounds closed ${AT[rounds]}, workers exited ${AT[done]} (teardown follows)
compose-e2e: OK
SUMMARY
