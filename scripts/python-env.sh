# Sourced by the test scripts: a virtualenv under target/ with scripts/requirements.txt, so
# nothing is installed into the system interpreter. Sets VENV and puts its bin/ first on PATH.
VENV="${VENV:-$PWD/target/test-venv}"
if [ ! -x "$VENV/bin/python3" ]; then
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 keeps venv in a separate package.
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
fi
# Reinstall only when the requirements changed.
if ! cmp -s scripts/requirements.txt "$VENV/.requirements"; then
  "$VENV/bin/python3" -m pip install -q --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt "$VENV/.requirements"
fi
export VENV PATH="$VENV/bin:$PATH"
# The SDK interop test runs the Python SDK with this interpreter.
export TS_SDK_PYTHON="$VENV/bin/python3"
