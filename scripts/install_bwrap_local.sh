#!/usr/bin/env bash
# Run THERE, on a machine without bwrap or internet: unpack the .debs that scripts/fetch_bwrap.sh
# downloaded into PREFIX (nothing outside it is touched), make PREFIX/bin/bwrap, and probe it.
#   scripts/install_bwrap_local.sh [PREFIX=/tmp/bwrap] [DEBS=<repo>/.debs]
# Libraries: a library that bwrap (or a library it loads) needs and this system lacks is taken from the
# unpacked packages into PREFIX/lib, and PREFIX/bin/bwrap is a wrapper that adds only that folder to
# LD_LIBRARY_PATH (the sandbox clears the environment of the program it runs). A library the system has
# is never shadowed. Exit status 0 only when `bwrap --version`, a namespace probe and (when python and
# this repo's src/ are here) the grader's own sandbox probe all pass; otherwise the reason is printed.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:-/tmp/bwrap}"
debs="${2:-$repo/.debs}"
ls "$debs"/*.deb >/dev/null 2>&1 || { echo "install_bwrap_local.sh: no .deb in $debs (run scripts/fetch_bwrap.sh where apt works)" >&2; exit 1; }
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
rm -rf "$prefix/root" "$prefix/lib" "$prefix/bin"
mkdir -p "$prefix/root" "$prefix/lib" "$prefix/bin"
for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$prefix/root"; done
real="$prefix/root/usr/bin/bwrap"
[ -x "$real" ] || { echo "install_bwrap_local.sh: no usr/bin/bwrap in the .debs of $debs" >&2; exit 1; }
for _ in 1 2 3 4 5; do  # a copied library may itself need another missing one
  missing=$(LD_LIBRARY_PATH="$prefix/lib" ldd "$real" 2>&1 | awk '/not found/ {print $1}' | sort -u)
  [ -z "$missing" ] && break
  for lib in $missing; do
    found=$(find "$prefix/root" -name "$lib" \( -type f -o -type l \) | head -n 1)
    [ -n "$found" ] || { echo "install_bwrap_local.sh: bwrap needs $lib, which neither this system nor $debs has" >&2; exit 1; }
    cp -L "$found" "$prefix/lib/"
    echo "library from the .debs: $lib"
  done
done
if [ -n "$(ls -A "$prefix/lib")" ]; then
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' "$prefix" "$real" > "$prefix/bin/bwrap"
else
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$real" > "$prefix/bin/bwrap"
fi
chmod 755 "$prefix/bin/bwrap"
bw="$prefix/bin/bwrap"

echo "bwrap --version: $("$bw" --version)"
user=()
[ "$(id -u)" = 0 ] || user=(--unshare-user)
if ! out=$("$bw" "${user[@]}" --unshare-net --unshare-pid --unshare-ipc --unshare-uts --ro-bind / / \
             --proc /proc --dev /dev --tmpfs /tmp /bin/sh -c 'echo "pid $$ in a new pid namespace"' 2>&1); then
  echo "namespace probe FAILED: $out" >&2
  echo "(bwrap needs CAP_SYS_ADMIN or unprivileged user namespaces; in a container, the runtime may forbid both)" >&2
  exit 1
fi
echo "namespace probe: $out"
python="${PYTHON:-$(command -v python3 || true)}"
if [ -n "$python" ] && [ -f "$repo/src/projected_grpo/env/sandbox.py" ]; then
  PATH="$prefix/bin:$PATH" PYTHONPATH="$repo/src" "$python" -c '
import shutil
from projected_grpo.env.sandbox import resolve_backend
print("grader sandbox probe:", resolve_backend("bwrap"), "with", shutil.which("bwrap"))'
fi
echo "use it: export PATH=\"$prefix/bin:\$PATH\""
