/* add.c: a tinyinetd handler in C (stdio).
 *
 * A line-based adding machine: each line holds integers separated by
 * spaces; the reply is their sum, or "ERROR not a number". At EOF it logs
 * how many lines it answered, and for whom (TCPREMOTEIP), to stderr.
 *
 *   cc -O2 -o /usr/local/libexec/tinyinetd/add add.c
 *
 *   [[service]]
 *   name = "add"
 *   listen = ["127.0.0.1:9883"]
 *   program = "/usr/local/libexec/tinyinetd/add"
 *   stderr = "log"        # stderr lines go to the daemon's log
 *
 * Buffering: stdio buffers stdout fully when it is not a terminal (a
 * socket is not one), so a reply would wait for 4 KiB or the exit and an
 * interactive client would hang. setvbuf(_IOLBF) below makes it line
 * buffered; fflush(stdout) after each reply does the same job. For a
 * program you cannot change, `stdbuf -oL PROGRAM` (coreutils) sets it from
 * outside.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    char line[4096];
    const char *peer = getenv("TCPREMOTEIP");
    unsigned long answered = 0;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (peer == NULL)
        peer = "?";
    while (fgets(line, sizeof line, stdin) != NULL) {
        long long sum = 0;
        int ok = 1;
        char *p = line, *end;

        for (;;) {
            while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
                p++;
            if (*p == '\0')
                break;
            errno = 0;
            long long v = strtoll(p, &end, 10);
            if (end == p || errno != 0) {
                ok = 0;
                break;
            }
            sum += v;
            p = end;
        }
        if (ok)
            printf("%lld\n", sum);
        else
            printf("ERROR not a number\n");
        answered++;
    }
    /* Input read to EOF: the client has sent everything; now say so. */
    fprintf(stderr, "add: answered %lu lines for %s\n", answered, peer);
    return 0;
}
