/*
 * A client for tinyinetd-sum --host-order, written the way UNIX Network
 * Programming's binary sum client (Fig. 5.19) is: the request is a struct of
 * two longs and the reply a struct of one, sent and read as they lie in
 * memory (this machine's byte order and long size), sizeof bytes at a time.
 *
 *     sum_host_order HOST PORT < lines of "A B"
 *
 * Prints one sum per line; "invalid input" for a line without two numbers.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct args {
    long arg1;
    long arg2;
};

struct result {
    long sum;
};

/* Write all n bytes, as the book's writen(). */
static int writen(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read exactly n bytes, as the book's readn(); 0 at EOF before n bytes. */
static ssize_t readn(int fd, void *buf, size_t n) {
    char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: sum_host_order HOST PORT\n");
        return 2;
    }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "sum_host_order: bad address %s\n", argv[1]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("sum_host_order: connect");
        return 1;
    }
    char line[4096];
    while (fgets(line, sizeof line, stdin) != NULL) {
        struct args args;
        struct result result;
        if (sscanf(line, "%ld%ld", &args.arg1, &args.arg2) != 2) {
            printf("invalid input\n");
            continue;
        }
        if (writen(fd, &args, sizeof args) < 0) {
            perror("sum_host_order: write");
            return 1;
        }
        ssize_t n = readn(fd, &result, sizeof result);
        if (n != (ssize_t)sizeof result) {
            fprintf(stderr, "sum_host_order: server terminated prematurely (%zd bytes)\n", n);
            return 1;
        }
        printf("%ld\n", result.sum);
    }
    close(fd);
    return 0;
}
