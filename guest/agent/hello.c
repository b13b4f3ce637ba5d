/* The hello message, sent on start and on reconnect, and the hello/ping ops. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <unistd.h>
#include "agent.h"

const char *const agent_ops[] = {
	"ping", "hello", "exec", "file_write", "file_read", "set_clock", "reseed", "refresh", "shutdown", "rt_start", "rt_req",
};
const unsigned agent_nops = sizeof agent_ops / sizeof agent_ops[0];

static struct utsname uts;
static char boot_id[64];
/* Fixed for a machine's life (no memory or CPU hotplug): read once, so that the hello a restored guest sends
 * runs no syscall for them on its flushed translation cache. */
static uint64_t mem_kib;
static long cpus;

void hello_init(void)
{
	uname(&uts);
	int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, boot_id, sizeof boot_id - 1);
		close(fd);
		if (n > 0) {
			boot_id[n] = 0;
			boot_id[strcspn(boot_id, "\n")] = 0;
		}
	}
	struct sysinfo si;
	if (sysinfo(&si) == 0)
		mem_kib = (uint64_t)si.totalram * si.mem_unit / 1024;
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
}

/* The hello map's fields after t; 9 pairs. */
void write_hello_fields(void)
{
	oq_str("v"); oq_uint(PROTO_VERSION);
	oq_str("agent"); oq_str(AGENT_NAME);
	oq_str("kernel"); oq_str(uts.release);
	oq_str("arch"); oq_str(uts.machine);
	oq_str("boot_id"); oq_str(boot_id);
	oq_str("max_frame"); oq_uint(MAX_FRAME);
	oq_str("ops"); oq_array(agent_nops);
	for (unsigned i = 0; i < agent_nops; i++)
		oq_str(agent_ops[i]);
	oq_str("mem_kib"); oq_uint(mem_kib);
	oq_str("cpus"); oq_uint(cpus > 0 ? (uint64_t)cpus : 1);
}

void send_hello(void)
{
	oq_begin();
	oq_map(10);
	oq_str("t"); oq_str("hello");
	write_hello_fields();
	oq_end();
}

void op_hello(uint64_t id, const char *args)
{
	(void)args;
	res_ok_begin(id, 9);
	write_hello_fields();
	oq_end();
}

void op_ping(uint64_t id, const char *args)
{
	(void)args;
	res_ok_empty(id);
}
