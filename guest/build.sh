#!/usr/bin/env bash
# Builds the evolvm guest for x86_64 from Debian packages: the cloud kernel (bzImage,
# plus the uncompressed PVH vmlinux when the kernel has the PVH entry note), and an
# initramfs holding the static init and agent, busybox and the virtio modules.
#
# Usage: guest/build.sh [--force]
# Output: guest/out/x86_64/{vmlinuz,vmlinux,initramfs.cpio,initramfs.cpio.gz,manifest.json}
# Needs (Debian bookworm, run as root): apt, dpkg, gcc, libc6-dev, libmsgpuck-dev,
# cpio, xz-utils, zstd, lz4, binutils (readelf; comes with gcc), gzip, coreutils.
set -Eeuo pipefail

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$GUEST_DIR"
ARCH=x86_64
DEB_ARCH=amd64
KERNEL_META=linux-image-cloud-amd64
BUSYBOX_PKG=busybox-static
OUT=$GUEST_DIR/out/$ARCH
STAGE=$GUEST_DIR/out/.$ARCH.staging
CACHE=$GUEST_DIR/cache
WORK=$GUEST_DIR/build/$ARCH
MANIFEST_SCHEMA=1
# Modules to load at boot (their dependencies come along). Optional ones may be
# missing from the kernel; built-in ones are skipped.
MODULES=(virtio_pci virtio_mmio virtio_console virtio_blk virtio_rng squashfs overlay ext4)
OPTIONAL_MODULES=" virtio_rng ext4 "
# Files hashed into the manifest's input_hash: a change to any of them rebuilds.
SOURCES=(build.sh init/init.c agent/*.h agent/*.c)
STEPS=9
step_no=0

die() { echo "guest/build.sh: error: $*" >&2; exit 1; }
trap 'die "line $LINENO: command failed (exit $?): $BASH_COMMAND"' ERR
step() { step_no=$((step_no + 1)); printf '[%d/%d] %s\n' "$step_no" "$STEPS" "$*"; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }

force=0
for arg in "$@"; do
	case $arg in
	--force) force=1 ;;
	-h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$arg' (usage: guest/build.sh [--force])" ;;
	esac
done

need() { # need COMMAND PACKAGE
	command -v "$1" >/dev/null 2>&1 || die "'$1' not found: apt-get install $2"
}
need apt-cache apt
need apt-get apt
need dpkg-deb dpkg
need gcc gcc
need readelf binutils
need cpio cpio
need xz xz-utils
need zstd zstd
need lz4 lz4
need gzip gzip
need sha256sum coreutils
[[ -f /usr/include/msgpuck.h ]] || die "msgpuck.h not found: apt-get install libmsgpuck-dev"
[[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || die "static libc not found: apt-get install libc6-dev"

# --- resolve package versions ------------------------------------------------
step "resolving Debian packages"
KERNEL_PKG=$(apt-cache depends "$KERNEL_META" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
[[ -n $KERNEL_PKG ]] || die "apt-cache knows no $KERNEL_META (is deb.debian.org in sources.list? run apt-get update)"
# One apt-cache call for both candidates (each call costs about a second).
declare -A PKG_VER PKG_SHA PKG_FILE
while read -r pkg ver sha filename; do
	[[ -z ${PKG_VER[$pkg]:-} ]] || continue
	PKG_VER[$pkg]=$ver
	PKG_SHA[$pkg]=$sha
	PKG_FILE[$pkg]=$CACHE/${filename##*/}
done < <(apt-cache show --no-all-versions "$KERNEL_PKG" "$BUSYBOX_PKG" 2>/dev/null | awk '
	$1 == "Package:" { p = $2 } $1 == "Version:" { v = $2 } $1 == "SHA256:" { s = $2 } $1 == "Filename:" { f = $2 }
	/^$/ { if (p != "") print p, v, s, f; p = v = s = f = "" }
	END { if (p != "") print p, v, s, f }')
for pkg in "$KERNEL_PKG" "$BUSYBOX_PKG"; do
	[[ -n ${PKG_VER[$pkg]:-} && -n ${PKG_SHA[$pkg]:-} && -n ${PKG_FILE[$pkg]:-} ]] ||
		die "apt-cache show $pkg gave no Version/SHA256/Filename (run apt-get update)"
	echo "    $pkg ${PKG_VER[$pkg]}"
done

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }
INPUT_HASH=$(
	for f in "${SOURCES[@]}"; do printf '== %s\n' "$f"; cat "$f"; done
	for pkg in "$KERNEL_PKG" "$BUSYBOX_PKG"; do printf 'deb %s %s %s\n' "$pkg" "${PKG_VER[$pkg]}" "${PKG_SHA[$pkg]}"; done
	printf 'gcc %s\nlibc6-dev %s\nlibmsgpuck-dev %s\n' "$(gcc -dumpfullversion)" "$(pkg_version libc6-dev)" "$(pkg_version libmsgpuck-dev)"
	printf 'modules %s\n' "${MODULES[*]}"
) 
INPUT_HASH=$(printf '%s' "$INPUT_HASH" | sha256sum | cut -d' ' -f1)

# --- up to date? -----------------------------------------------------------------
step "checking for an up-to-date build"
up_to_date() {
	[[ -f $OUT/manifest.json ]] || return 1
	grep -q "\"input_hash\": \"$INPUT_HASH\"" "$OUT/manifest.json" || return 1
	# each listed output must still exist with its recorded size
	local name size
	while read -r name size; do
		[[ -f $OUT/$name && $(stat -c %s "$OUT/$name") == "$size" ]] || return 1
	done < <(sed -n 's/^ *"\([^"]*\)": {"sha256": "[0-9a-f]*", "size": \([0-9]*\)}.*/\1 \2/p' "$OUT/manifest.json")
}
if ((force == 0)) && up_to_date; then
	echo "guest up to date ($OUT)"
	exit 0
fi

# --- download ------------------------------------------------------------------------
step "downloading .debs into guest/cache/"
mkdir -p "$CACHE"
for pkg in "$KERNEL_PKG" "$BUSYBOX_PKG"; do
	deb=${PKG_FILE[$pkg]}
	if [[ -f $deb && $(sha256 "$deb") == "${PKG_SHA[$pkg]}" ]]; then
		echo "    $pkg: cached"
		continue
	fi
	tmp=$(mktemp -d "$CACHE/.download.XXXXXX")
	(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=${PKG_VER[$pkg]}") ||
		{ rm -rf "$tmp"; die "apt-get download $pkg=${PKG_VER[$pkg]} failed"; }
	got=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n1)
	[[ -n $got && $(sha256 "$got") == "${PKG_SHA[$pkg]}" ]] ||
		{ rm -rf "$tmp"; die "$pkg: downloaded .deb does not match apt's SHA256 ${PKG_SHA[$pkg]}"; }
	mv "$got" "$deb"
	rm -rf "$tmp"
	echo "    $pkg: downloaded $(stat -c %s "$deb") bytes"
done

# --- extract -----------------------------------------------------------------------------
step "extracting packages"
rm -rf "$WORK"
mkdir -p "$WORK/kernel" "$WORK/busybox" "$WORK/bin"
dpkg-deb -x "${PKG_FILE[$KERNEL_PKG]}" "$WORK/kernel"
dpkg-deb -x "${PKG_FILE[$BUSYBOX_PKG]}" "$WORK/busybox"
KREL=${KERNEL_PKG#linux-image-}
MODROOT=$WORK/kernel/lib/modules/$KREL
BZIMAGE=$WORK/kernel/boot/vmlinuz-$KREL
[[ -f $BZIMAGE && -d $MODROOT ]] || die "$KERNEL_PKG has no boot/vmlinuz-$KREL or lib/modules/$KREL"
BUSYBOX=$WORK/busybox/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX_PKG has no bin/busybox"

# --- compile -------------------------------------------------------------------------------
step "compiling init and agent (gcc -static -Os)"
CFLAGS=(-static -Os -s -Wall -Wextra -D_GNU_SOURCE -ffunction-sections -fdata-sections -Wl,--gc-sections)
gcc "${CFLAGS[@]}" -o "$WORK/bin/init" init/init.c
gcc "${CFLAGS[@]}" -o "$WORK/bin/evolvm-agent" agent/*.c -lmsgpuck
PROTO_VERSION=$(sed -n 's/^#define PROTO_VERSION \([0-9]*\)$/\1/p' agent/agent.h)
AGENT_NAME=$(sed -n 's/^#define AGENT_NAME "\(.*\)"$/\1/p' agent/agent.h)
[[ -n $PROTO_VERSION && -n $AGENT_NAME ]] || die "cannot read PROTO_VERSION/AGENT_NAME from agent/agent.h"

# --- modules -----------------------------------------------------------------------------------
step "resolving kernel modules"
ROOT=$WORK/root
mkdir -p "$ROOT/lib/modules/$KREL"
declare -A MODPATH BUILTIN SEEN
while IFS= read -r -d '' f; do
	rel=${f#"$MODROOT"/}
	name=${rel##*/}; name=${name%%.ko*}; name=${name//-/_}
	MODPATH[$name]=$rel
done < <(find "$MODROOT/kernel" -name '*.ko*' -print0)
if [[ -f $MODROOT/modules.builtin ]]; then
	while read -r rel; do
		name=${rel##*/}; name=${name%%.ko*}; name=${name//-/_}
		BUILTIN[$name]=1
	done < "$MODROOT/modules.builtin"
fi
# Under TCG, checking a module's signature costs ~10 ms of boot per module; the kernel does not
# require signatures (it only marks itself tainted "E"), so the initramfs carries them stripped.
strip_signature() { # strip_signature FILE
	local f=$1 size b0 b1 b2 b3
	size=$(stat -c %s "$f")
	[[ $(tail -c 28 "$f") == "~Module signature appended~" ]] || return 0
	read -r b0 b1 b2 b3 < <(od -An -tu1 -j $((size - 28 - 4)) -N4 "$f")
	# struct module_signature (12 bytes, sig_len last, big-endian) sits before the marker
	truncate -s $((size - 28 - 12 - ((b0 << 24) | (b1 << 16) | (b2 << 8) | b3))) "$f"
}
LOAD_ORDER=()
MOD_NAMES=()
add_module() { # add_module NAME: adds NAME after its dependencies; fails if the kernel lacks it
	local name=${1//-/_} rel dst dep deps
	[[ -z ${SEEN[$name]:-} ]] || return 0
	SEEN[$name]=1
	if [[ -n ${BUILTIN[$name]:-} ]]; then
		echo "    $name: built in"
		return 0
	fi
	rel=${MODPATH[$name]:-}
	[[ -n $rel ]] || return 1
	dst=${rel%.xz}; dst=${dst%.zst}; dst=${dst%.gz}
	mkdir -p "$ROOT/lib/modules/$KREL/$(dirname "$dst")"
	case $rel in
	*.ko.xz) xz -dc "$MODROOT/$rel" >"$ROOT/lib/modules/$KREL/$dst" ;;
	*.ko.zst) zstd -dcq "$MODROOT/$rel" >"$ROOT/lib/modules/$KREL/$dst" ;;
	*.ko.gz) gzip -dc "$MODROOT/$rel" >"$ROOT/lib/modules/$KREL/$dst" ;;
	*.ko) cp "$MODROOT/$rel" "$ROOT/lib/modules/$KREL/$dst" ;;
	*) die "unexpected module file $rel" ;;
	esac
	strip_signature "$ROOT/lib/modules/$KREL/$dst"
	deps=$(readelf -p .modinfo "$ROOT/lib/modules/$KREL/$dst" | sed -n 's/^ *\[ *[0-9a-f]*\] *depends=//p' | head -n1)
	IFS=, read -ra deps <<<"$deps"
	for dep in "${deps[@]}"; do
		add_module "$dep" || die "module $name needs $dep, which $KERNEL_PKG lacks"
	done
	LOAD_ORDER+=("/lib/modules/$KREL/$dst")
	MOD_NAMES+=("$name")
}
for m in "${MODULES[@]}"; do
	if ! add_module "$m"; then
		[[ $OPTIONAL_MODULES == *" $m "* ]] || die "$KERNEL_PKG has no module $m (neither built in nor a .ko)"
		echo "    $m: not in this kernel (optional, skipped)"
	fi
done
printf '%s\n' "${LOAD_ORDER[@]}" >"$ROOT/lib/modules/load-order"
echo "    load order: ${MOD_NAMES[*]}"

# --- initramfs ---------------------------------------------------------------------------------
step "assembling the initramfs"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,root,proc,sys,dev,tmp,run}
install -m 0755 "$WORK/bin/init" "$ROOT/init"
install -m 0755 "$WORK/bin/evolvm-agent" "$ROOT/sbin/evolvm-agent"
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
while read -r applet; do
	[[ -n $applet && ! -e $ROOT/$applet && ! -L $ROOT/$applet ]] || continue
	mkdir -p "$ROOT/$(dirname "$applet")"
	ln -s /bin/busybox "$ROOT/$applet"
done < <("$BUSYBOX" --list-full)
[[ -L $ROOT/bin/sh ]] || die "busybox provides no bin/sh applet"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\ntty:x:5:\n' >"$ROOT/etc/group"
printf 'evolvm\n' >"$ROOT/etc/hostname"
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
find "$ROOT" -exec touch -h -d @0 {} +
mkdir -p "$STAGE"
rm -rf "${STAGE:?}"/*
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$STAGE/initramfs.cpio"
gzip -9 -n -c "$STAGE/initramfs.cpio" >"$STAGE/initramfs.cpio.gz"
echo "    initramfs.cpio $(stat -c %s "$STAGE/initramfs.cpio") bytes, .gz $(stat -c %s "$STAGE/initramfs.cpio.gz") bytes"

# --- kernel -----------------------------------------------------------------------------------------
step "extracting the kernel"
cp "$BZIMAGE" "$STAGE/vmlinuz"
# The bzImage header gives the compressed payload's offset and length (boot protocol >= 2.08).
read -r setup_sects < <(od -An -tu1 -j $((0x1f1)) -N1 "$BZIMAGE")
((setup_sects == 0)) && setup_sects=4
read -r payload_off payload_len < <(od -An -tu4 -j $((0x248)) -N8 "$BZIMAGE")
payload_start=$(((setup_sects + 1) * 512 + payload_off))
magic=$(od -An -tx1 -j "$payload_start" -N4 "$BZIMAGE" | tr -d ' ')
case $magic in
02214c18) decomp=(lz4 -dc) ;;
1f8b08*) decomp=(gzip -dc) ;;
fd377a58) decomp=(xz -dc) ;;
28b52ffd) decomp=(zstd -dcq) ;;
*) decomp=() ;;
esac
PVH=false
if ((${#decomp[@]})); then
	tail -c +$((payload_start + 1)) "$BZIMAGE" | head -c "$payload_len" | "${decomp[@]}" >"$WORK/vmlinux" 2>/dev/null || true
	# The Xen PVH entry point note (XEN_ELFNOTE_PHYS32_ENTRY, type 0x12) lets QEMU boot the ELF directly.
	if readelf -n "$WORK/vmlinux" 2>/dev/null | grep -Eq '^[[:space:]]*Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+Unknown note type: \(0x00000012\)'; then
		PVH=true
		mv "$WORK/vmlinux" "$STAGE/vmlinux"
		echo "    vmlinux: PVH entry note found ($(stat -c %s "$STAGE/vmlinux") bytes)"
	else
		echo "    vmlinux: no PVH entry note; shipping the bzImage only"
	fi
else
	echo "    unknown kernel compression (magic $magic); shipping the bzImage only"
fi

# --- manifest -----------------------------------------------------------------------------------
step "writing manifest.json"
BUSYBOX_VERSION=$("$BUSYBOX" --help 2>&1 | sed -n '1s/^BusyBox \(v[^ ]*\).*/\1/p')
json_list() { local first=1 x; for x in "$@"; do ((first)) || printf ', '; printf '"%s"' "$x"; first=0; done; }
{
	printf '{\n'
	printf '  "schema": %s,\n' "$MANIFEST_SCHEMA"
	printf '  "arch": "%s",\n' "$ARCH"
	printf '  "input_hash": "%s",\n' "$INPUT_HASH"
	printf '  "protocol_version": %s,\n' "$PROTO_VERSION"
	printf '  "agent": "%s",\n' "$AGENT_NAME"
	printf '  "port": "org.evolvm.agent",\n'
	printf '  "kernel": {"package": "%s", "version": "%s", "deb_sha256": "%s", "release": "%s", "pvh": %s},\n' \
		"$KERNEL_PKG" "${PKG_VER[$KERNEL_PKG]}" "${PKG_SHA[$KERNEL_PKG]}" "$KREL" "$PVH"
	printf '  "busybox": {"package": "%s", "version": "%s", "deb_sha256": "%s", "busybox_version": "%s"},\n' \
		"$BUSYBOX_PKG" "${PKG_VER[$BUSYBOX_PKG]}" "${PKG_SHA[$BUSYBOX_PKG]}" "$BUSYBOX_VERSION"
	printf '  "modules": [%s],\n' "$(json_list "${MOD_NAMES[@]}")"
	printf '  "files": {\n'
	first=1
	for f in vmlinuz vmlinux initramfs.cpio initramfs.cpio.gz; do
		[[ -f $STAGE/$f ]] || continue
		((first)) || printf ',\n'
		printf '    "%s": {"sha256": "%s", "size": %s}' "$f" "$(sha256 "$STAGE/$f")" "$(stat -c %s "$STAGE/$f")"
		first=0
	done
	printf '\n  }\n}\n'
} >"$STAGE/manifest.json"
sync "$STAGE"/* "$STAGE"
# The staging directory renamed into place is the commit point.
rm -rf "$OUT.old"
[[ -d $OUT ]] && mv "$OUT" "$OUT.old"
mv "$STAGE" "$OUT"
rm -rf "$OUT.old"
echo "guest built: $OUT"
ls -l "$OUT" | tail -n +2 | awk '{printf "    %-20s %10s\n", $9, $5}'
