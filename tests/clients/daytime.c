/*
 * A classic daytime client, shaped like UNIX Network Programming's first
 * program (Fig. 1.5): connect, read until the server closes, print what
 * came.
 *
 *     daytime HOST PORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: daytime HOST PORT\n");
        return 2;
    }
    struct sockaddr_in servaddr;
    memset(&servaddr, 0, sizeof servaddr);
    servaddr.sin_family = AF_INET;
    servaddr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &servaddr.sin_addr) <= 0) {
        fprintf(stderr, "daytime: inet_pton error for %s\n", argv[1]);
        return 2;
    }
    int sockfd = socket(AF_INET, SOCK_STREAM, 0);
    if (sockfd < 0 || connect(sockfd, (struct sockaddr *)&servaddr, sizeof servaddr) < 0) {
        perror("daytime: connect");
        return 1;
    }
    char recvline[4097];
    ssize_t n;
    while ((n = read(sockfd, recvline, sizeof recvline - 1)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("daytime: read");
            return 1;
        }
        recvline[n] = 0;
        if (fputs(recvline, stdout) == EOF) {
            perror("daytime: fputs");
            return 1;
        }
    }
    return 0;
}
