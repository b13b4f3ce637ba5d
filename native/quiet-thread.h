/*
 * A detached helper thread for the shims preloaded into QEMU (idle-malloc-trim.c, ram-remap.c), compiled into each.
 */
#ifndef EVOLVM_QUIET_THREAD_H
#define EVOLVM_QUIET_THREAD_H

#include <stdbool.h>

/* Hidden: the shims are preloaded into QEMU, whose own symbols this must not shadow. */

/*
 * Starts `run(arg)` on a detached thread with every signal blocked, as QEMU does for its own threads (signals
 * belong to QEMU's). Returns whether it started.
 */
__attribute__((visibility("hidden"))) bool start_quiet_thread(void *(*run)(void *), void *arg);

#endif
