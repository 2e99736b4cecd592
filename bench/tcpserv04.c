/* tcpserv04 + exec: the simplest correct accept-fork-exec server, after
 * UNIX Network Programming's tcpserv04 (SIGCHLD handler reaping with
 * waitpid(-1, WNOHANG) in a loop; accept restarted on EINTR and
 * ECONNABORTED), with dup2 onto 0-2 and execv of a handler.
 * Usage: tcpserv04 IP PORT HANDLER */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void sig_chld(int signo) {
    (void)signo;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
    errno = saved;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: tcpserv04 IP PORT HANDLER\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int on = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) return 2;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, SOMAXCONN) < 0) {
        perror("bind/listen");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sig_chld;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    char *args[] = {argv[3], NULL};
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            perror("accept");
            return 1;
        }
        pid_t pid = fork();
        if (pid == 0) {
            close(lfd);
            signal(SIGCHLD, SIG_DFL);
            dup2(c, 0);
            dup2(c, 1);
            dup2(c, 2);
            if (c > 2) close(c);
            execv(args[0], args);
            _exit(127);
        }
        close(c);
    }
}
