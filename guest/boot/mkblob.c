/*
 * mkblob: joins an uncompressed x86-64 PVH vmlinux and an initramfs into the boot image pvh-loader reads
 * (kernel-blob.h). Usage: mkblob VMLINUX INITRAMFS IMAGE
 * Why: QEMU loads an ELF given with -kernel as ROM blobs, and every machine reset (which each snapshot-load
 * does) copies them back over guest RAM, invalidating the translated code in ~46 MiB of kernel pages one block
 * at a time. The initrd is copied once, and QEMU maps the file instead of reading it into fresh memory.
 */
#include <elf.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel-blob.h"

#define PAGE 4096u
#define XEN_ELFNOTE_PHYS32_ENTRY 18

static void die(const char *what) {
	fprintf(stderr, "mkblob: %s%s%s\n", what, errno ? ": " : "", errno ? strerror(errno) : "");
	exit(1);
}

static unsigned char *read_file(const char *path, size_t *size) {
	FILE *f = fopen(path, "rb");
	if (!f) die(path);
	if (fseek(f, 0, SEEK_END) != 0) die("seek");
	long length = ftell(f);
	if (length <= 0) die("empty file");
	rewind(f);
	unsigned char *data = malloc((size_t)length);
	if (!data || fread(data, 1, (size_t)length, f) != (size_t)length) die("read");
	fclose(f);
	*size = (size_t)length;
	return data;
}

/* The PVH entry point from the XEN_ELFNOTE_PHYS32_ENTRY note of a PT_NOTE segment, or 0. */
static uint64_t pvh_entry(const unsigned char *elf, size_t size, const Elf64_Phdr *phdr) {
	if (phdr->p_offset > size || phdr->p_filesz > size - phdr->p_offset) die("note segment outside the file");
	size_t at = phdr->p_offset, end = phdr->p_offset + phdr->p_filesz;
	while (at + sizeof(Elf64_Nhdr) <= end) {
		const Elf64_Nhdr *note = (const void *)(elf + at);
		size_t name = at + sizeof(*note), desc = name + ((note->n_namesz + 3u) & ~3u);
		size_t next = desc + ((note->n_descsz + 3u) & ~3u);
		if (next > end) break;
		if (note->n_type == XEN_ELFNOTE_PHYS32_ENTRY && note->n_namesz == 4 && !memcmp(elf + name, "Xen", 4)) {
			uint64_t entry = 0;
			memcpy(&entry, elf + desc, note->n_descsz < 8 ? note->n_descsz : 8);
			return entry;
		}
		at = next;
	}
	return 0;
}

static int zero_page(const unsigned char *p, size_t length) {
	for (size_t i = 0; i < length; i++)
		if (p[i]) return 0;
	return 1;
}

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: mkblob VMLINUX INITRAMFS IMAGE\n");
		return 2;
	}
	size_t initramfs_size;
	unsigned char *initramfs = read_file(argv[2], &initramfs_size);
	size_t size;
	unsigned char *elf = read_file(argv[1], &size);
	const Elf64_Ehdr *ehdr = (const void *)elf;
	if (size < sizeof *ehdr || memcmp(ehdr->e_ident, ELFMAG, SELFMAG) || ehdr->e_ident[EI_CLASS] != ELFCLASS64 || ehdr->e_machine != EM_X86_64)
		die("not an x86-64 ELF file");
	if (ehdr->e_phoff > size || (size_t)ehdr->e_phnum * sizeof(Elf64_Phdr) > size - ehdr->e_phoff) die("bad program headers");
	const Elf64_Phdr *phdrs = (const void *)(elf + ehdr->e_phoff);

	struct blob_header header = {.magic = BLOB_MAGIC};
	struct blob_run runs[BLOB_MAX_RUNS];
	const unsigned char *sources[BLOB_MAX_RUNS];
	for (int i = 0; i < ehdr->e_phnum; i++) {
		const Elf64_Phdr *phdr = &phdrs[i];
		if (phdr->p_type == PT_NOTE && !header.entry) header.entry = (uint32_t)pvh_entry(elf, size, phdr);
		if (phdr->p_type != PT_LOAD || phdr->p_filesz == 0) continue;
		if (phdr->p_offset > size || phdr->p_filesz > size - phdr->p_offset) die("segment outside the file");
		if (phdr->p_paddr + phdr->p_memsz > 0xffffffffu) die("segment above 4 GiB");
		/* Runs of non-zero pages; what is not carried (zero pages, memsz beyond filesz) stays zero in fresh RAM. */
		for (uint64_t off = 0; off < phdr->p_filesz; off += PAGE) {
			uint64_t length = phdr->p_filesz - off < PAGE ? phdr->p_filesz - off : PAGE;
			const unsigned char *page = elf + phdr->p_offset + off;
			if (zero_page(page, length)) continue;
			uint32_t address = (uint32_t)(phdr->p_paddr + off);
			struct blob_run *last = header.run_count ? &runs[header.run_count - 1] : NULL;
			if (last && last->address + last->length == address && sources[header.run_count - 1] + last->length == page) {
				last->length += (uint32_t)length;
				continue;
			}
			if (header.run_count == BLOB_MAX_RUNS) die("too many runs");
			sources[header.run_count] = page;
			runs[header.run_count++] = (struct blob_run){.address = address, .length = (uint32_t)length};
		}
	}
	if (!header.entry) die("no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)");

	uint64_t total = sizeof header + (uint64_t)header.run_count * sizeof runs[0];
	for (uint32_t i = 0; i < header.run_count; i++) total += runs[i].length;
	uint64_t offset = (total + BLOB_ALIGN - 1) / BLOB_ALIGN * BLOB_ALIGN;
	if (offset + initramfs_size > 0xffffffffu) die("image too large");
	header.initramfs_offset = (uint32_t)offset;

	FILE *out = fopen(argv[3], "wb");
	if (!out) die(argv[3]);
	if (fwrite(&header, sizeof header, 1, out) != 1) die("write");
	if (header.run_count && fwrite(runs, sizeof runs[0], header.run_count, out) != header.run_count) die("write");
	for (uint32_t i = 0; i < header.run_count; i++)
		if (fwrite(sources[i], 1, runs[i].length, out) != runs[i].length) die("write");
	static const unsigned char zeros[BLOB_ALIGN];
	if (fwrite(zeros, 1, offset - total, out) != offset - total) die("write");
	if (fwrite(initramfs, 1, initramfs_size, out) != initramfs_size) die("write");
	if (fclose(out) != 0) die("close");
	fprintf(stderr, "mkblob: kernel %u runs, %llu bytes, entry 0x%x; initramfs at %llu\n", header.run_count,
		(unsigned long long)total, header.entry, (unsigned long long)offset);
	return 0;
}
