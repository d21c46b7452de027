# Sourced by the test scripts: `have CMD` and `apt_install PACKAGE…` (root, or sudo). Only the
# steps that need system packages call apt_install: curl (the dev test), nginx, HAProxy, wrk
# and valgrind (the load smoke run), python3-venv where Debian's python3 lacks it.
have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  if ! have apt-get; then
    echo "please install: $*" >&2
    return 1
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
