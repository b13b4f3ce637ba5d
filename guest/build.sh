#!/usr/bin/env bash
# Builds the evolvm guest for x86_64 from Debian packages: the cloud kernel (bzImage,
# plus the uncompressed PVH vmlinux when the kernel has the PVH entry note, and then pvh-loader with
# boot.img, the vmlinux's bytes joined to the initramfs, which is what evolvm boots: boot/pvh-loader.c), an
# initramfs holding the static init and agent, busybox and the virtio modules, and a
# squashfs image of the runtimes (wasm: wabt's interpreter from Debian's wabt source
# package; js: duktape) that the host attaches as a read-only virtio-blk disk.
#
# Usage: guest/build.sh [--force]
# Output: guest/out/x86_64/{vmlinuz,vmlinux,pvh-loader.elf,boot.img,initramfs.cpio,initramfs.cpio.gz,
#         runtimes.squashfs,manifest.json}
# Needs (Debian bookworm, run as root): apt, dpkg, dpkg-dev, gcc, g++, make, cmake, libc6-dev, musl-tools,
# linux-libc-dev, libmsgpuck-dev, duktape-dev, cpio, xz-utils, zstd, lz4, squashfs-tools, binutils, gzip, coreutils.
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
# missing from the kernel; built-in ones are skipped. init deletes the .ko files once they are
# loaded (the initramfs is guest RAM).
MODULES=(virtio_pci virtio_mmio virtio_console virtio_blk virtio_rng squashfs ext4)
OPTIONAL_MODULES=" virtio_rng ext4 "
# Runtimes put under /opt/evolvm/runtimes/<name>/ (each built by build_runtime_<name> below).
# They go into runtimes.squashfs, not the initramfs: the initramfs lives in guest RAM (and so in
# every snapshot), the squashfs stays a host file that init mounts from the virtio-blk disk
# with serial evolvm-maps.
RUNTIMES=(wasm js)
# lz4 (high compression) decompresses fastest of the squashfs codecs the kernel has, which
# counts under TCG; the image is padded to 4 KiB. Timestamps, owners and xattrs are fixed or
# dropped, so the same runtimes give the same bytes.
SQUASHFS_FLAGS=(-noappend -all-root -no-xattrs -mkfs-time 0 -all-time 0 -reproducible -comp lz4 -Xhc -quiet -no-progress)
WABT_SRC_PKG=wabt
DUKTAPE_PKG=duktape-dev
DUKTAPE_DIR=/usr/share/duktape
# The interpreter library only; built once per wabt source version (see build_libwabt).
WABT_CMAKE_FLAGS=(-DBUILD_TESTS=OFF -DBUILD_TOOLS=OFF -DBUILD_LIBWASM=OFF -DCMAKE_BUILD_TYPE=Release)
DEB_SRC_LIST=/etc/apt/sources.list.d/evolvm-deb-src.sources
# Files hashed into the manifest's input_hash: a change to any of them rebuilds.
SOURCES=(build.sh init/init.c common/* agent/*.h agent/*.c runtimes/common/* runtimes/wasm/* runtimes/js/* boot/*)
# init and the agent are linked against musl: a static glibc binary is ten times the size, and both live
# in the initramfs, that is in guest RAM.
MUSL_GCC=musl-gcc
STEPS=13
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
need "$MUSL_GCC" musl-tools
need g++ g++
need make make
need cmake cmake
need dpkg-source dpkg-dev
need readelf binutils
need ld binutils
need cpio cpio
need xz xz-utils
need zstd zstd
need lz4 lz4
need gzip gzip
need mksquashfs squashfs-tools
need sha256sum coreutils
[[ -f /usr/include/msgpuck.h ]] || die "msgpuck.h not found: apt-get install libmsgpuck-dev"
[[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || die "static libc not found: apt-get install libc6-dev"
[[ -f /usr/include/linux/random.h ]] || die "linux/random.h not found: apt-get install linux-libc-dev"
[[ -f $DUKTAPE_DIR/duktape.c && -f $DUKTAPE_DIR/duktape.h ]] || die "$DUKTAPE_DIR/duktape.c not found: apt-get install $DUKTAPE_PKG"

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
# The wabt source package needs a deb-src entry; one is added (and apt-get update run) only when
# apt knows no source for it yet.
showsrc_wabt() { apt-cache showsrc --only-source "$WABT_SRC_PKG" 2>/dev/null; }
if ! WABT_SHOWSRC=$(showsrc_wabt) || [[ -z $WABT_SHOWSRC ]]; then
	if grep -Eqs '^[[:space:]]*(deb-src[[:space:]]|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/*; then
		die "apt has a deb-src entry but knows no source package $WABT_SRC_PKG (run apt-get update)"
	fi
	echo "    adding a deb-src entry ($DEB_SRC_LIST) and running apt-get update"
	printf '%s\n' 'Types: deb-src' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm' 'Components: main' \
		'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' >"$DEB_SRC_LIST"
	apt-get update -q >/dev/null || die "apt-get update failed"
	WABT_SHOWSRC=$(showsrc_wabt) || die "apt-cache showsrc $WABT_SRC_PKG failed after adding $DEB_SRC_LIST"
fi
# The first stanza: its version and the sha256 of each file (.dsc, .orig.tar.*, .debian.tar.*).
WABT_SRC_VER=$(awk '$1 == "Version:" { print $2; exit }' <<<"$WABT_SHOWSRC")
declare -A WABT_SRC_SHA
while read -r sha file; do WABT_SRC_SHA[$file]=$sha; done < <(awk '
	/^$/ { exit } /^[^ ]/ { in_sums = ($1 == "Checksums-Sha256:") } /^ / && in_sums { print $1, $3 }' <<<"$WABT_SHOWSRC")
WABT_UPSTREAM=${WABT_SRC_VER#*:}
WABT_UPSTREAM=${WABT_UPSTREAM%-*}
WABT_DSC=${WABT_SRC_PKG}_${WABT_SRC_VER#*:}.dsc
[[ -n $WABT_SRC_VER && -n ${WABT_SRC_SHA[$WABT_DSC]:-} ]] || die "apt-cache showsrc $WABT_SRC_PKG gave no Version or no sha256 for $WABT_DSC"
echo "    $WABT_SRC_PKG (source) $WABT_SRC_VER"
DUKTAPE_VER=$(dpkg-query -W -f='${Version}' "$DUKTAPE_PKG" 2>/dev/null) || die "$DUKTAPE_PKG is not installed"
DUK_VERSION_NUM=$(sed -n 's/^#define DUK_VERSION[[:space:]]*\([0-9]*\)L*$/\1/p' "$DUKTAPE_DIR/duktape.h")
[[ -n $DUK_VERSION_NUM ]] || die "cannot read DUK_VERSION from $DUKTAPE_DIR/duktape.h"
DUKTAPE_VERSION="$((DUK_VERSION_NUM / 10000)).$((DUK_VERSION_NUM / 100 % 100)).$((DUK_VERSION_NUM % 100))"
echo "    $DUKTAPE_PKG $DUKTAPE_VER (duktape $DUKTAPE_VERSION)"
declare -A RT_VERSION=([wasm]="wabt-$WABT_UPSTREAM" [js]="duktape-$DUKTAPE_VERSION")

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }
INPUT_HASH=$(
	for f in "${SOURCES[@]}"; do printf '== %s\n' "$f"; cat "$f"; done
	for pkg in "$KERNEL_PKG" "$BUSYBOX_PKG"; do printf 'deb %s %s %s\n' "$pkg" "${PKG_VER[$pkg]}" "${PKG_SHA[$pkg]}"; done
	printf 'gcc %s\nlibc6-dev %s\nlibmsgpuck-dev %s\n' "$(gcc -dumpfullversion)" "$(pkg_version libc6-dev)" "$(pkg_version libmsgpuck-dev)"
	printf 'musl-dev %s\nlinux-libc-dev %s\nbinutils %s\n' "$(pkg_version musl-dev)" "$(pkg_version linux-libc-dev)" "$(pkg_version binutils)"
	printf 'g++ %s\ncmake %s\nsquashfs-tools %s\n' "$(g++ -dumpfullversion)" "$(pkg_version cmake)" "$(pkg_version squashfs-tools)"
	printf 'squashfs %s\n' "${SQUASHFS_FLAGS[*]}"
	printf 'wabt-src %s %s\nduktape-dev %s\n' "$WABT_SRC_VER" "${WABT_SRC_SHA[$WABT_DSC]}" "$DUKTAPE_VER"
	printf 'modules %s\nruntimes %s\n' "${MODULES[*]}" "${RUNTIMES[*]}"
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
step "downloading .debs and the $WABT_SRC_PKG source into guest/cache/"
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
WABT_SRC_DIR=$CACHE/src/$WABT_SRC_PKG-$WABT_SRC_VER
wabt_src_cached() {
	local file
	for file in "${!WABT_SRC_SHA[@]}"; do
		[[ -f $WABT_SRC_DIR/$file && $(sha256 "$WABT_SRC_DIR/$file") == "${WABT_SRC_SHA[$file]}" ]] || return 1
	done
}
if wabt_src_cached; then
	echo "    $WABT_SRC_PKG source: cached"
else
	mkdir -p "$CACHE/src"
	tmp=$(mktemp -d "$CACHE/src/.download.XXXXXX")
	# apt checks each file against the signed Sources index.
	(cd "$tmp" && apt-get source --download-only -q -o APT::Sandbox::User=root "$WABT_SRC_PKG=$WABT_SRC_VER" >/dev/null) ||
		{ rm -rf "$tmp"; die "apt-get source --download-only $WABT_SRC_PKG=$WABT_SRC_VER failed"; }
	rm -rf "$WABT_SRC_DIR"
	mv "$tmp" "$WABT_SRC_DIR"
	wabt_src_cached || die "$WABT_SRC_PKG source files do not match apt's sha256"
	echo "    $WABT_SRC_PKG source: downloaded $(du -sb "$WABT_SRC_DIR" | cut -f1) bytes"
fi

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

# --- libwabt ---------------------------------------------------------------------------------
step "building libwabt (cached in guest/cache/)"
# Keyed by everything that goes into the library; a cache hit skips the ~2 minute build.
LIBWABT_KEY=$(printf 'dsc %s\ng++ %s\ncmake %s\nflags %s\n' "${WABT_SRC_SHA[$WABT_DSC]}" "$(g++ -dumpfullversion)" \
	"$(pkg_version cmake)" "${WABT_CMAKE_FLAGS[*]}" | sha256sum | cut -c1-16)
LIBWABT=$CACHE/libwabt-$LIBWABT_KEY
if [[ -f $LIBWABT/lib/libwabt.a && -f $LIBWABT/include/wabt/config.h ]]; then
	echo "    libwabt $WABT_SRC_VER: cached ($LIBWABT_KEY)"
else
	echo "    libwabt $WABT_SRC_VER: building (about 2 minutes on 2 cores; log in guest/build/wabt.log)"
	started=$SECONDS
	src=$GUEST_DIR/build/wabt-src
	rm -rf "$src"
	mkdir -p "$GUEST_DIR/build"
	log=$GUEST_DIR/build/wabt.log
	dpkg-source -x "$WABT_SRC_DIR/$WABT_DSC" "$src" >"$log" 2>&1 || die "dpkg-source -x $WABT_DSC failed (see $log)"
	(cd "$src" && mkdir -p build && cd build && cmake .. "${WABT_CMAKE_FLAGS[@]}" && make -j"$(nproc)" wabt) >>"$log" 2>&1 ||
		die "building libwabt failed (see $log)"
	tmp=$(mktemp -d "$CACHE/.libwabt.XXXXXX")
	mkdir -p "$tmp/lib" "$tmp/include"
	cp "$src/build/libwabt.a" "$tmp/lib/"
	cp -r "$src/include/wabt" "$tmp/include/"
	cp "$src/build/include/wabt/config.h" "$tmp/include/wabt/"
	rm -rf "$CACHE"/libwabt-*
	mv "$tmp" "$LIBWABT"
	rm -rf "$src"
	echo "    libwabt built in $((SECONDS - started)) s"
fi

# --- compile -------------------------------------------------------------------------------
step "compiling init and agent (musl-gcc -static -Os)"
# musl-gcc sees only musl's headers: the kernel's uapi headers and msgpuck.h (header-only with
# common/msgpuck.c) come from a folder of links.
MUSL_INC=$WORK/musl-include
mkdir -p "$MUSL_INC"
ln -sfn /usr/include/linux "$MUSL_INC/linux"
ln -sfn /usr/include/asm-generic "$MUSL_INC/asm-generic"
ln -sfn "/usr/include/$(gcc -print-multiarch)/asm" "$MUSL_INC/asm"
ln -sfn /usr/include/msgpuck.h "$MUSL_INC/msgpuck.h"
CFLAGS=(-static -Os -s -Wall -Wextra -Werror=implicit-function-declaration -D_GNU_SOURCE -ffunction-sections -fdata-sections -Wl,--gc-sections)
"$MUSL_GCC" "${CFLAGS[@]}" -o "$WORK/bin/init" init/init.c
"$MUSL_GCC" "${CFLAGS[@]}" -I"$MUSL_INC" -o "$WORK/bin/evolvm-agent" agent/*.c common/mpread.c common/msgpuck.c
PROTO_VERSION=$(sed -n 's/^#define PROTO_VERSION \([0-9]*\)$/\1/p' agent/agent.h)
AGENT_NAME=$(sed -n 's/^#define AGENT_NAME "\(.*\)"$/\1/p' agent/agent.h)
[[ -n $PROTO_VERSION && -n $AGENT_NAME ]] || die "cannot read PROTO_VERSION/AGENT_NAME from agent/agent.h"

# --- runtimes ------------------------------------------------------------------------------------
step "compiling the runtimes (${RUNTIMES[*]})"
RTFLAGS=(-static -O2 -s -Wall -Wextra -D_GNU_SOURCE -ffunction-sections -fdata-sections -Wl,--gc-sections)
mkdir -p "$WORK/rt"
gcc "${RTFLAGS[@]}" -c -o "$WORK/rt/rtchan.o" runtimes/common/rtchan.c
gcc "${RTFLAGS[@]}" -c -o "$WORK/rt/mpread.o" common/mpread.c
build_runtime_wasm() {
	g++ "${RTFLAGS[@]}" -std=c++17 -DRT_VERSION="\"${RT_VERSION[wasm]}\"" -isystem "$LIBWABT/include" \
		-o "$WORK/rt/evolvm-rt-wasm" runtimes/wasm/rt-wasm.cc "$WORK/rt/rtchan.o" "$WORK/rt/mpread.o" "$LIBWABT/lib/libwabt.a" -lmsgpuck
}
build_runtime_js() {
	# duktape.c is compiled on its own: its warnings are not ours.
	gcc -O2 -w -ffunction-sections -fdata-sections -c -o "$WORK/rt/duktape.o" "$DUKTAPE_DIR/duktape.c"
	gcc "${RTFLAGS[@]}" -DRT_VERSION="\"${RT_VERSION[js]}\"" -I"$DUKTAPE_DIR" \
		-o "$WORK/rt/evolvm-rt-js" runtimes/js/rt-js.c "$WORK/rt/rtchan.o" "$WORK/rt/mpread.o" "$WORK/rt/duktape.o" -lmsgpuck -lm
}
# In parallel: duktape.c alone takes ~15 s.
declare -A RT_PID
for rt in "${RUNTIMES[@]}"; do
	"build_runtime_$rt" &
	RT_PID[$rt]=$!
done
for rt in "${RUNTIMES[@]}"; do
	wait "${RT_PID[$rt]}" || die "compiling runtime $rt failed"
	echo "    $rt: ${RT_VERSION[$rt]}, $(stat -c %s "$WORK/rt/evolvm-rt-$rt") bytes"
done

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
# The mount point of runtimes.squashfs (init mounts it there).
mkdir -p "$ROOT/opt/evolvm/runtimes"
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

# --- runtimes image ------------------------------------------------------------------------------
step "assembling runtimes.squashfs"
RTROOT=$WORK/rtroot
rm -rf "$RTROOT"
for rt in "${RUNTIMES[@]}"; do
	mkdir -p "$RTROOT/$rt"
	install -m 0755 "$WORK/rt/evolvm-rt-$rt" "$RTROOT/$rt/evolvm-rt-$rt"
	printf 'name=%s\nexec=/opt/evolvm/runtimes/%s/evolvm-rt-%s\nabi=1\nversion=%s\n' "$rt" "$rt" "$rt" "${RT_VERSION[$rt]}" \
		>"$RTROOT/$rt/runtime.conf"
	chmod 0644 "$RTROOT/$rt/runtime.conf"
done
chmod 0755 "$RTROOT" "$RTROOT"/*
mksquashfs "$RTROOT" "$STAGE/runtimes.squashfs" "${SQUASHFS_FLAGS[@]}" >/dev/null
echo "    runtimes.squashfs $(stat -c %s "$STAGE/runtimes.squashfs") bytes ($(du -sb "$RTROOT" | cut -f1) bytes of runtimes)"

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

# --- boot image ------------------------------------------------------------------------------------
step "building pvh-loader and boot.img"
if [[ $PVH == true ]]; then
	# The loader is 32-bit freestanding code (entered in protected mode without paging); gcc -m32 needs no
	# 32-bit libc for it. mkblob runs here, on the build host.
	gcc -O2 -Wall -Wextra -o "$WORK/mkblob" boot/mkblob.c
	gcc -m32 -march=i686 -O2 -Wall -Wextra -ffreestanding -fno-pic -fno-pie -fno-stack-protector \
		-fno-asynchronous-unwind-tables -nostdlib -c boot/pvh-loader.c -o "$WORK/pvh-loader.o"
	ld -m elf_i386 -nostdlib -static --no-warn-rwx-segments -T boot/pvh-loader.ld "$WORK/pvh-loader.o" \
		-o "$STAGE/pvh-loader.elf"
	"$WORK/mkblob" "$STAGE/vmlinux" "$STAGE/initramfs.cpio" "$STAGE/boot.img"
	echo "    pvh-loader.elf $(stat -c %s "$STAGE/pvh-loader.elf") bytes, boot.img $(stat -c %s "$STAGE/boot.img") bytes"
else
	echo "    no PVH vmlinux: evolvm boots the bzImage"
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
	printf '  "runtimes": {"wasm": {"version": "%s", "source_package": "%s", "source_version": "%s"}, "js": {"version": "%s", "package": "%s", "package_version": "%s"}},\n' \
		"${RT_VERSION[wasm]}" "$WABT_SRC_PKG" "$WABT_SRC_VER" "${RT_VERSION[js]}" "$DUKTAPE_PKG" "$DUKTAPE_VER"
	printf '  "files": {\n'
	first=1
	for f in vmlinuz vmlinux pvh-loader.elf boot.img initramfs.cpio initramfs.cpio.gz runtimes.squashfs; do
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
