#!/usr/bin/env bash
# Checks the README's first command as a new user meets it: a fresh clone of this repository,
# cmake absent (masked in a private mount namespace: `unshare -m` and a bind mount over the
# binary, so neither the build nor `apt-get` can use it), a fresh target directory. It runs
# `./dev serve` and passes when the gateway answers `/healthz` on the embedded config's admin
# address (127.0.0.1:9090). Needs root (for the mount namespace) and network access to the
# package registries (crates.io, PyPI). A release build from scratch: ~10 minutes on 2 cores.
#
#   scripts/check-first-run.sh            # the repository this script is in, at HEAD
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$(id -u)" != "0" ]; then
  echo "check-first-run: needs root (unshare -m, mount --bind)" >&2
  exit 1
fi
if curl -s -o /dev/null "http://127.0.0.1:9090/healthz"; then
  echo "check-first-run: something already answers on 127.0.0.1:9090; stop it first" >&2
  exit 1
fi

git clone --quiet "$repo" "$work/isogate"
printf '#!/bin/sh\necho "cmake: masked by check-first-run" >&2\nexit 127\n' > "$work/no-cmake"
chmod +x "$work/no-cmake"

# The namespace's own view: every cmake on PATH is the failing stub; nothing leaks out.
unshare -m --propagation private bash -s "$work" > "$work/serve.log" 2>&1 <<'INNER' &
set -euo pipefail
work="$1"
IFS=: read -r -a dirs <<< "$PATH"
for dir in "${dirs[@]}"; do
  if [ -x "$dir/cmake" ]; then mount --bind "$work/no-cmake" "$dir/cmake"; fi
done
unset CMAKE
if cmake --version >/dev/null 2>&1; then echo "cmake is still usable" >&2; exit 1; fi
cd "$work/isogate"
export CARGO_TARGET_DIR="$work/target"
exec ./dev serve
INNER
server=$!

deadline=$((SECONDS + 3600))
until curl -sf -o /dev/null "http://127.0.0.1:9090/healthz"; do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "check-first-run: ./dev serve ended before /healthz answered; its output:" >&2
    tail -n 40 "$work/serve.log" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "check-first-run: no /healthz within an hour" >&2
    tail -n 40 "$work/serve.log" >&2
    exit 1
  fi
  sleep 5
done
grep -q "cmake is missing" "$work/serve.log" || {
  echo "check-first-run: the build did not meet a missing cmake (was it masked?)" >&2
  exit 1
}
echo "check-first-run: a fresh clone without cmake serves /healthz after ./dev serve"
