/* echo1: the tiny static echo handler every system under test execs.
 * Reads from fd 0 until it has a whole line (or EOF), writes it to fd 1,
 * exits 0.
 *
 * On x86-64 it is built without libc (-nostdlib): its own _start and raw
 * system calls, so that starting it costs the exec and nothing else. A
 * static glibc program runs cpuid dozens of times at startup (cache and
 * feature detection), and in a virtual machine every cpuid is a VM exit:
 * in the VM the figures in BENCHMARKS.md come from, that made up most of
 * the CPU of the whole run, the same for every system, and flattened
 * the differences the benchmark exists to show. Elsewhere it falls back to
 * libc's read/write/_exit. */

#if defined(__x86_64__) && defined(ECHO1_NOLIBC)

static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall"
                     : "=a"(r)
                     : "a"(n), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return r;
}
#define SYS_read 0
#define SYS_write 1
#define SYS_exit_group 231
#define EINTR 4
static long rd(int fd, void *p, unsigned long n) { return sys3(SYS_read, fd, (long)p, (long)n); }
static long wr(int fd, const void *p, unsigned long n) { return sys3(SYS_write, fd, (long)p, (long)n); }
static void __attribute__((noreturn)) quit(int code) {
    for (;;) sys3(SYS_exit_group, code, 0, 0);
}
#define INTERRUPTED(n) ((n) == -EINTR)

#else

#include <errno.h>
#include <unistd.h>
static long rd(int fd, void *p, unsigned long n) { return read(fd, p, n); }
static long wr(int fd, const void *p, unsigned long n) { return write(fd, p, n); }
static void quit(int code) { _exit(code); }
#define INTERRUPTED(n) ((n) < 0 && errno == EINTR)

#endif

static int echo(void) {
    char buf[512];
    unsigned long got = 0;
    while (got < sizeof buf) {
        long n = rd(0, buf + got, sizeof buf - got);
        if (INTERRUPTED(n)) continue;
        if (n <= 0) break;
        got += (unsigned long)n;
        if (buf[got - 1] == '\n') break;
    }
    unsigned long off = 0;
    while (off < got) {
        long n = wr(1, buf + off, got - off);
        if (INTERRUPTED(n)) continue;
        if (n <= 0) return 1;
        off += (unsigned long)n;
    }
    return 0;
}

#if defined(__x86_64__) && defined(ECHO1_NOLIBC)
void echo1_start(void) __attribute__((noreturn, used));
void echo1_start(void) { quit(echo()); }
/* The kernel enters with %rsp 16-byte aligned; a call pushes the return
 * address, as the C ABI expects on entry to echo1_start. */
__asm__(".globl _start\n"
        "_start:\n"
        "  xor %ebp, %ebp\n"
        "  and $-16, %rsp\n"
        "  call echo1_start\n"
        "  hlt\n");
#else
int main(void) {
    quit(echo());
    return 0;
}
#endif
