/*
 * _dl_find_object for static musl binaries linked with Debian's libgcc_eh.
 *
 * scripts/musl-build.sh links the musl targets with Debian's cross gcc and uses
 * its libgcc_eh.a as the unwinder (the `unwind` crate's -lunwind). That
 * libgcc_eh was built against glibc >= 2.35, so on aarch64 its _Unwind_Find_FDE
 * asks glibc's _dl_find_object (glibc 2.35, <dlfcn.h>) for the unwind tables
 * of the object holding an address; musl has no such function, only
 * dl_iterate_phdr. This file provides it on top of dl_iterate_phdr, for the
 * layout glibc uses on targets without DLFO_STRUCT_HAS_EH_DBASE and
 * DLFO_STRUCT_HAS_EH_COUNT (aarch64). It is compiled into libunwind.a only for
 * a target whose libgcc_eh.a references _dl_find_object (armhf's EHABI
 * unwinder uses musl's __gnu_Unwind_Find_exidx instead).
 *
 * Returns 0 and fills *result when ADDRESS lies in a PT_LOAD segment of a
 * loaded object, else -1, as glibc does. Used by backtraces (a panic with
 * RUST_BACKTRACE set); the release profile aborts on panic, so nothing unwinds.
 */
#include <link.h>
#include <stdint.h>

struct dl_find_object {
	unsigned long long dlfo_flags;
	void *dlfo_map_start;
	void *dlfo_map_end;
	void *dlfo_link_map;
	void *dlfo_eh_frame;
	unsigned long long dlfo_reserved[7];
};

struct query {
	uintptr_t address;
	struct dl_find_object *result;
};

static int visit(struct dl_phdr_info *info, size_t size, void *data)
{
	struct query *q = data;
	uintptr_t start = UINTPTR_MAX, end = 0;
	void *eh_frame = 0;
	int found = 0;
	(void)size;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t from = info->dlpi_addr + ph->p_vaddr;
		if (ph->p_type == PT_LOAD) {
			uintptr_t to = from + ph->p_memsz;
			if (from < start)
				start = from;
			if (to > end)
				end = to;
			if (q->address >= from && q->address < to)
				found = 1;
		} else if (ph->p_type == PT_GNU_EH_FRAME) {
			eh_frame = (void *)from;
		}
	}
	if (!found)
		return 0;
	*q->result = (struct dl_find_object){
		.dlfo_map_start = (void *)start,
		.dlfo_map_end = (void *)end,
		.dlfo_eh_frame = eh_frame,
	};
	return 1;
}

int _dl_find_object(void *address, struct dl_find_object *result)
{
	struct query q = { (uintptr_t)address, result };
	return dl_iterate_phdr(visit, &q) ? 0 : -1;
}
