# Shared by the quick-start scripts: installing what is missing, and timing steps.
# shellcheck shell=bash

herald_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# herald_need_packages PKG...: installs the Debian packages that are not installed yet.
# Without root/sudo or on a system without apt, prints the exact list and exits non-zero.
herald_need_packages() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "herald: installing missing packages: ${missing[*]}"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "herald: this is not a Debian/Ubuntu system; install these packages (or their equivalents) and rerun:" >&2
    echo "  ${missing[*]}" >&2
    exit 1
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "herald: not root and no passwordless sudo; install these packages and rerun:" >&2
      echo "  apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
  # An offline machine may still install from its package cache: only the install must succeed.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
    echo "herald: apt-get update failed; trying the package lists already on this machine" >&2
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}"; then
    echo "herald: could not install these packages; install them and rerun:" >&2
    echo "  ${missing[*]}" >&2
    exit 1
  fi
}

# herald_step NAME COMMAND...: runs one step, printing its name and how long it took.
herald_step() {
  local name="$1"
  shift
  local start=$SECONDS
  echo
  echo "=== herald: $name"
  "$@"
  echo "=== herald: $name: ok ($((SECONDS - start)) s)"
}
