/* spawn_ceiling: the no-network ceiling. Starts the handler with stdin and
 * stdout on /dev/null, waits for it, for SECS seconds; prints spawns per
 * second and the loop's own CPU time (user + system, children excluded) per
 * 1,000 spawns: the least CPU a parent can be charged for starting and
 * reaping one process per connection on this machine.
 *
 * Usage: spawn_ceiling HANDLER SECS [fork|vfork]   (default fork) */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_ms(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e3 +
           (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e3;
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "fork") != 0 &&
                                 strcmp(argv[3], "vfork") != 0)) {
        fprintf(stderr, "usage: spawn_ceiling HANDLER SECS [fork|vfork]\n");
        return 2;
    }
    double secs = atof(argv[2]);
    int use_vfork = argc == 4 && strcmp(argv[3], "vfork") == 0;
    char *args[] = {argv[1], NULL};
    /* Opened once: the child only dup2()s it (all a vfork child may do). */
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0) {
        perror("/dev/null");
        return 1;
    }
    long n = 0;
    double c0 = cpu_ms();
    double t0 = now();
    while (now() - t0 < secs) {
        pid_t pid = use_vfork ? vfork() : fork();
        if (pid == 0) {
            dup2(null, 0);
            dup2(null, 1);
            execv(args[0], args);
            _exit(127);
        }
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        int st;
        waitpid(pid, &st, 0);
        n++;
    }
    double t = now() - t0;
    printf("%.0f %.1f\n", (double)n / t, (cpu_ms() - c0) * 1000.0 / (double)n);
    return 0;
}
