/*
 * Which of a QEMU zygote's own pages its children write (zygote-pages.c), so that a spare child can copy them
 * before it is needed. Used by qemu-zygote.c.
 */
#ifndef EVOLVM_ZYGOTE_PAGES_H
#define EVOLVM_ZYGOTE_PAGES_H

/* Hidden: the shim is preloaded into QEMU, whose own symbols these must not shadow. */

/* In the zygote, once QEMU is loaded: records its writable private mappings, in memory shared with its children. */
__attribute__((visibility("hidden"))) void zygote_pages_record(void);

/* In a child, before QEMU's main: while the zygote is still learning, reports the pages it wrote at its exit. */
__attribute__((visibility("hidden"))) void zygote_pages_learn_at_exit(void);

/* In a spare: copies the pages the first children wrote (one system call per run of them). */
__attribute__((visibility("hidden"))) void zygote_pages_populate(void);

#endif
