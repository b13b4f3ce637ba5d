#!/usr/bin/env bash
# Builds evolvm's host-side native helpers, both preloaded into QEMU:
# - libevolvm-idle-malloc-trim.so puts off QEMU's malloc_trim calls until it is idle (idle-malloc-trim.c);
# - libevolvm-qemu-zygote.so makes a QEMU a zygote that forks QEMUs without a fresh exec (qemu-zygote.c).
# evolvm works without it, only slower. Needs a C compiler (gcc). Output: native/out/.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p out
cc -O2 -shared -fPIC -Wall -Wextra -Werror -pthread -o out/libevolvm-idle-malloc-trim.so.tmp idle-malloc-trim.c quiet-thread.c -ldl
mv out/libevolvm-idle-malloc-trim.so.tmp out/libevolvm-idle-malloc-trim.so
cc -O2 -shared -fPIC -Wall -Wextra -Werror -pthread -o out/libevolvm-qemu-zygote.so.tmp qemu-zygote.c zygote-pages.c ram-remap.c quiet-thread.c -ldl
mv out/libevolvm-qemu-zygote.so.tmp out/libevolvm-qemu-zygote.so
echo "[native] built native/out/libevolvm-idle-malloc-trim.so and native/out/libevolvm-qemu-zygote.so"
