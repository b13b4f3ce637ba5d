#!/usr/bin/env bash
# Builds evolvm's host-side native helper: libevolvm-idle-malloc-trim.so, preloaded into QEMU to put off its
# malloc_trim calls until it is idle (idle-malloc-trim.c).
# evolvm works without it, only slower. Needs a C compiler (gcc). Output: native/out/.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p out
cc -O2 -shared -fPIC -Wall -Wextra -Werror -pthread -o out/libevolvm-idle-malloc-trim.so.tmp idle-malloc-trim.c -ldl
mv out/libevolvm-idle-malloc-trim.so.tmp out/libevolvm-idle-malloc-trim.so
echo "[native] built native/out/libevolvm-idle-malloc-trim.so"
