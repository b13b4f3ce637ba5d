#!/usr/bin/env bash
# Builds evolvm's host-side native helper: libevolvm-no-malloc-trim.so, preloaded into QEMU (no-malloc-trim.c).
# evolvm works without it, only slower. Needs a C compiler (gcc). Output: native/out/.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p out
cc -O2 -shared -fPIC -Wall -Wextra -Werror -o out/libevolvm-no-malloc-trim.so.tmp no-malloc-trim.c
mv out/libevolvm-no-malloc-trim.so.tmp out/libevolvm-no-malloc-trim.so
echo "[native] built native/out/libevolvm-no-malloc-trim.so"
