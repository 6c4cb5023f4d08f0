#!/usr/bin/env bash
# Run HERE, on a machine with apt and Debian's package mirror: download bubblewrap and the libraries it
# links against (not libc6: the target's own glibc is used) into .debs/ (git-ignored), for a machine
# with no internet and no bwrap. There, scripts/install_bwrap_local.sh unpacks them.
# The .debs are this machine's distribution's; this bwrap needs glibc >= the version printed below.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v apt-get >/dev/null || { echo "fetch_bwrap.sh: needs apt-get (Debian/Ubuntu)" >&2; exit 1; }
apt-cache show bubblewrap >/dev/null 2>&1 || apt-get update -qq
# bubblewrap and its Depends, recursively, minus libc6 and what only libc6 pulls in
skip='^(libc6|libgcc-s1|gcc-[0-9]+-base|libcrypt1)$'
pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
         --no-replaces --no-enhances --no-pre-depends bubblewrap \
       | awk '/^[a-z0-9]/ {print $1} /Depends:/ {print $2}' | tr -d '<>' | sort -u | grep -Ev "$skip")
mkdir -p .debs
rm -f .debs/*.deb
(cd .debs && apt-get download $pkgs >/dev/null)
echo "downloaded into .debs/:"
ls -1 .debs
if [ -x /usr/bin/bwrap ] && command -v objdump >/dev/null; then
  echo "this distribution's bwrap needs glibc >= $(objdump -T /usr/bin/bwrap | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2)"
fi
echo "next: carry .debs/ to the target and run scripts/install_bwrap_local.sh there"
