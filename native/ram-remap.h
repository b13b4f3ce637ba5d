/*
 * A spare QEMU's RAM given to it after it started (ram-remap.c). Used by qemu-zygote.c in each child.
 */
#ifndef EVOLVM_RAM_REMAP_H
#define EVOLVM_RAM_REMAP_H

/* Hidden: the shim is preloaded into QEMU, whose own symbols this must not shadow. */

/* With EVOLVM_RAM_REMAP set, listens there (on a thread) for the one request that remaps guest RAM. */
__attribute__((visibility("hidden"))) void ram_remap_listen_if_asked(void);

#endif
