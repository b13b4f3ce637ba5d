#!/usr/bin/env bash
# Sets up a fresh Debian bookworm machine for evolvm: system packages, npm packages, the guest image.
# Idempotent: a second run installs nothing new and the guest build says "up to date".
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-system-x86 qemu-utils          # the VMM and qemu-img
  busybox-static                      # the guest's userland (downloaded as a .deb by the guest build)
  gcc musl-tools linux-libc-dev make libmsgpuck-dev # the guest's static init and agent (linked against musl)
  g++ cmake make libc6-dev dpkg-dev duktape-dev squashfs-tools # the guest's runtimes (glibc): wabt (built from its Debian source) and duktape
  binutils cpio xz-utils zstd lz4 gzip dpkg apt ca-certificates
  e2fsprogs                           # mkfs.ext4 for the tests' ext4 maps (priority required, so normally present)
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root for: $*" >&2; exit 1
  fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
echo "[setup] apt-get update"
# The guest build resolves the current kernel through apt, so the package lists must be fresh.
as_root apt-get update -q >/dev/null
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "[setup] npm install"
# npm install, not npm ci: npm 11 writes lock files without other platforms' optional packages (esbuild's,
# rollup's, msgpackr's native builds) and npm ci then refuses its own lock file as out of sync.
npm install --no-audit --no-fund --loglevel=error

echo "[setup] building the host shim for QEMU"
bash native/build.sh

echo "[setup] building the guest"
bash guest/build.sh

echo "[setup] done"
