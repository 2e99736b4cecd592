/* echo1: the tiny static echo handler every system under test execs.
 * Reads from fd 0 until it has a whole line (or EOF), writes it to fd 1,
 * exits 0. No libc stdio, so that startup cost is the exec itself. */
#include <errno.h>
#include <unistd.h>

int main(void) {
    char buf[512];
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = read(0, buf + got, sizeof buf - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
        if (buf[got - 1] == '\n') break;
    }
    size_t off = 0;
    while (off < got) {
        ssize_t n = write(1, buf + off, got - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 1;
        off += (size_t)n;
    }
    return 0;
}
