/* spawn_ceiling: the no-network ceiling. Forks, execs the handler with
 * stdin from /dev/null and stdout to /dev/null, waits, for SECS seconds;
 * prints spawns per second. Usage: spawn_ceiling HANDLER SECS */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: spawn_ceiling HANDLER SECS\n");
        return 2;
    }
    double secs = atof(argv[2]);
    char *args[] = {argv[1], NULL};
    long n = 0;
    double t0 = now();
    while (now() - t0 < secs) {
        pid_t pid = fork();
        if (pid == 0) {
            int fd = open("/dev/null", O_RDWR);
            dup2(fd, 0);
            dup2(fd, 1);
            execv(args[0], args);
            _exit(127);
        }
        int st;
        waitpid(pid, &st, 0);
        n++;
    }
    printf("%.0f\n", (double)n / (now() - t0));
    return 0;
}
