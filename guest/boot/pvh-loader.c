/*
 * pvh-loader: a PVH "kernel" that QEMU boots with -kernel, given the boot image mkblob made as -initrd.
 * Entered like the real kernel (32-bit protected mode, paging off, %ebx = the hvm_start_info), it copies the
 * real kernel from the initrd's fw_cfg item into RAM with fw_cfg DMA, and enters the kernel's PVH entry with a
 * start info whose module is only the initramfs part of the image.
 * Why: QEMU keeps an ELF given with -kernel as ROM blobs and writes them back over guest RAM on every machine
 * reset, which every snapshot-load does; under TCG that write invalidates the translated code of ~46 MiB of
 * kernel pages one block at a time (~40 ms a devolve). This loader is the only ROM left (a few KiB). The
 * initrd, unlike a -fw_cfg file, is mapped by QEMU rather than read into fresh memory (~80 ms of page faults).
 * It runs once, on a fresh machine (RAM all zero: the image carries non-zero pages only); evolvm never resets.
 * Freestanding: no libc, 32-bit code, linked by pvh-loader.ld.
 */
#include <stdint.h>

#include "kernel-blob.h"

#define FW_CFG_PORT_SEL 0x510
#define FW_CFG_PORT_DATA 0x511
#define FW_CFG_PORT_DMA_HIGH 0x514
#define FW_CFG_PORT_DMA_LOW 0x518
#define FW_CFG_ID 0x01
#define FW_CFG_INITRD_SIZE 0x0b
#define FW_CFG_INITRD_DATA 0x12
#define FW_CFG_VERSION_DMA 0x2
#define FW_CFG_DMA_ERROR 0x01
#define FW_CFG_DMA_READ 0x02
#define FW_CFG_DMA_SELECT 0x08
#define SERIAL_PORT 0x3f8
#define HVM_START_MAGIC 0x336ec578

/* Xen's PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h). */
struct hvm_start_info {
	uint32_t magic;
	uint32_t version;
	uint32_t flags;
	uint32_t nr_modules;
	uint64_t modlist_paddr;
	uint64_t cmdline_paddr;
	uint64_t rsdp_paddr;
	uint64_t memmap_paddr; /* version >= 1 */
	uint32_t memmap_entries;
	uint32_t reserved;
};

struct hvm_modlist_entry {
	uint64_t paddr;
	uint64_t size;
	uint64_t cmdline_paddr;
	uint64_t reserved;
};

struct fw_cfg_dma {
	volatile uint32_t control; /* big-endian, as are length and address */
	uint32_t length;
	uint64_t address;
} __attribute__((aligned(16)));

static struct fw_cfg_dma dma;
static struct blob_run runs[BLOB_MAX_RUNS];
/* What the kernel is given instead of the firmware's: the same, with the module cut to the initramfs. */
static struct hvm_start_info start_info;
static struct hvm_modlist_entry module;

static inline void outb(uint16_t port, uint8_t value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t value) { __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t value) { __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
	uint8_t value;
	__asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
	return value;
}
static inline uint32_t be32(uint32_t v) { return __builtin_bswap32(v); }

/* Says why on the serial console (the machine's console log) and stops; evolvm's boot wait then fails. */
static void __attribute__((noreturn)) fail(const char *why) {
	for (const char *p = "evolvm pvh-loader: "; *p; p++) outb(SERIAL_PORT, (uint8_t)*p);
	for (const char *p = why; *p; p++) outb(SERIAL_PORT, (uint8_t)*p);
	outb(SERIAL_PORT, '\n');
	for (;;) __asm__ volatile("cli; hlt");
}

/* Reads a little-endian 32-bit fw_cfg item byte by byte through the data port. */
static uint32_t read_item32(uint16_t select) {
	outw(FW_CFG_PORT_SEL, select);
	uint32_t value = 0;
	for (int i = 0; i < 4; i++) value |= (uint32_t)inb(FW_CFG_PORT_DATA) << (8 * i);
	return value;
}

/* Reads `length` bytes of the item (selecting `select` first when non-zero) to physical `address`. */
static void dma_read(uint16_t select, void *address, uint32_t length) {
	dma.control = be32((select ? ((uint32_t)select << 16) | FW_CFG_DMA_SELECT : 0) | FW_CFG_DMA_READ);
	dma.length = be32(length);
	dma.address = (uint64_t)be32((uint32_t)(uintptr_t)address) << 32;
	__asm__ volatile("" ::: "memory");
	outl(FW_CFG_PORT_DMA_HIGH, 0);
	outl(FW_CFG_PORT_DMA_LOW, be32((uint32_t)(uintptr_t)&dma));
	uint32_t control;
	while ((control = be32(dma.control)) & ~FW_CFG_DMA_ERROR) __asm__ volatile("pause");
	if (control & FW_CFG_DMA_ERROR) fail("fw_cfg DMA error");
}

/* Copies the kernel into RAM and prepares the kernel's start info; returns the kernel's PVH entry. */
uint32_t load_kernel(const struct hvm_start_info *firmware) {
	if (firmware->magic != HVM_START_MAGIC) fail("bad hvm_start_info");
	if (firmware->nr_modules < 1) fail("no initrd: give the boot image with -initrd");
	if (!(read_item32(FW_CFG_ID) & FW_CFG_VERSION_DMA)) fail("fw_cfg has no DMA interface");
	uint32_t size = read_item32(FW_CFG_INITRD_SIZE);

	struct blob_header header;
	if (size < sizeof header) fail("initrd too small for a boot image");
	dma_read(FW_CFG_INITRD_DATA, &header, sizeof header);
	for (int i = 0; i < 8; i++)
		if (header.magic[i] != BLOB_MAGIC[i]) fail("initrd is not a boot image (bad magic)");
	if (header.run_count > BLOB_MAX_RUNS) fail("boot image has too many runs");
	dma_read(0, runs, header.run_count * sizeof runs[0]);
	uint64_t end = sizeof header + (uint64_t)header.run_count * sizeof runs[0];
	int entry_in_runs = 0;
	for (uint32_t i = 0; i < header.run_count; i++) {
		if (runs[i].length == 0) fail("boot image has an empty run");
		end += runs[i].length;
		if (header.entry >= runs[i].address && header.entry - runs[i].address < runs[i].length) entry_in_runs = 1;
	}
	if (end > header.initramfs_offset || header.initramfs_offset > size) fail("boot image runs overrun the initramfs");
	if (!entry_in_runs) fail("boot image entry is outside its runs");

	extern char __loader_start[], __loader_end[];
	for (uint32_t i = 0; i < header.run_count; i++) {
		uint32_t start = runs[i].address, stop = start + runs[i].length;
		if (stop < start || (start < (uint32_t)(uintptr_t)__loader_end && stop > (uint32_t)(uintptr_t)__loader_start))
			fail("boot image run overlaps the loader");
		dma_read(0, (void *)(uintptr_t)start, runs[i].length);
	}

	const struct hvm_modlist_entry *initrd = (const void *)(uintptr_t)firmware->modlist_paddr;
	if (initrd->size != size) fail("initrd module size differs from fw_cfg's");
	start_info = *firmware;
	if (start_info.version < 1) start_info.memmap_paddr = 0, start_info.memmap_entries = 0, start_info.reserved = 0;
	module = *initrd;
	module.paddr += header.initramfs_offset;
	module.size -= header.initramfs_offset;
	start_info.nr_modules = 1;
	start_info.modlist_paddr = (uint32_t)(uintptr_t)&module;
	return header.entry;
}

/* Entry: a stack of our own (PVH gives none); the kernel gets our start info in %ebx. */
__asm__(
	".section .text.entry, \"ax\"\n"
	".code32\n"
	".globl pvh_entry\n"
	"pvh_entry:\n"
	"  cld\n"
	"  mov $__stack_top, %esp\n"
	"  push %ebx\n"
	"  call load_kernel\n"
	"  mov $start_info, %ebx\n"
	"  jmp *%eax\n"
	".previous\n");

/* XEN_ELFNOTE_PHYS32_ENTRY: how QEMU finds the PVH entry point. */
__asm__(
	".pushsection .note.Xen, \"a\", @note\n"
	".balign 4\n"
	".long 4, 4, 18\n"
	".asciz \"Xen\"\n"
	".long pvh_entry\n"
	".popsection\n");
