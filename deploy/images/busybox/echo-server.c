/*
 * echo-server PORT: the port-forward target of the tests on a real node. Every connection gets back what it
 * sends, in its own process, and a half-close once the peer half-closes.
 *
 * Not busybox's `nc -ll -p PORT -e cat`, which the tests first used: it listens with a backlog of 2 (the
 * number of -l flags), dies on the first failed accept (ECONNABORTED when a queued peer gives up), and keeps
 * its first connection open forever. One CI run lost one of twenty concurrent port-forward connections to a
 * reset from the pod's side; which of these caused it was not established, so the server has none of them.
 *
 * Static, like /pause: gcc -Os -Wall -Werror -static -o echo-server echo-server.c
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void echo(int conn) {
	static char buf[64 * 1024];
	for (;;) {
		ssize_t n = read(conn, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			perror("echo-server: read");
			_exit(1);
		}
		if (n == 0)
			break;
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(conn, buf + off, (size_t)(n - off));
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				perror("echo-server: write");
				_exit(1);
			}
			off += w;
		}
	}
	shutdown(conn, SHUT_WR);
	close(conn);
	_exit(0);
}

int main(int argc, char **argv) {
	char *end;
	long port = argc == 2 ? strtol(argv[1], &end, 10) : 0;
	if (argc != 2 || *end != '\0' || port < 1 || port > 65535) {
		fprintf(stderr, "usage: echo-server PORT\n");
		return 2;
	}
	/* Children are reaped by the kernel; a writer to a gone peer gets EPIPE, not death. */
	signal(SIGCHLD, SIG_IGN);
	signal(SIGPIPE, SIG_IGN);
	int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int one = 1;
	struct sockaddr_in addr;
	memset(&addr, 0, sizeof addr);
	addr.sin_family = AF_INET;
	addr.sin_port = htons((unsigned short)port);
	addr.sin_addr.s_addr = htonl(INADDR_ANY);
	if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 1024) < 0) {
		perror("echo-server: listen");
		return 1;
	}
	fprintf(stderr, "echo-server: listening on %ld\n", port);
	for (;;) {
		int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0) {
			/* A peer that gave up while queued, or a transient shortage: the listener stays. */
			if (errno != EINTR && errno != ECONNABORTED)
				perror("echo-server: accept");
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
				usleep(10000);
			continue;
		}
		pid_t pid = fork();
		if (pid == 0) {
			close(listener);
			echo(conn);
		}
		if (pid < 0)
			perror("echo-server: fork");
		close(conn);
	}
}
