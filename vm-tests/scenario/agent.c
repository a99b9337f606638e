/*
 * The test agent of oknek's VM scenario: it tries the three actions the scenario's rules
 * block and prints, per action, what the kernel answered.
 *
 *   agent listen PORT
 *       Serve 127.0.0.1:PORT (accept and close, forever): the destination of the connect.
 *   agent try [--as UID] SECRET FORBIDDEN PORT
 *       Read SECRET, exec FORBIDDEN, connect to 127.0.0.1:PORT; print one line per action:
 *         AGENT open ok | AGENT open errno=N NAME
 *         AGENT exec ran exit=N | AGENT exec errno=N NAME
 *         AGENT connect ok | AGENT connect errno=N NAME
 *       --as UID first drops to UID/GID UID and re-executes itself, so that everything the
 *       process is (including an LD_PRELOAD shim loaded at start) runs as that user.
 *
 * FORBIDDEN is expected to exit 77 when it runs. The exec is judged through a close-on-exec
 * pipe: a refused execve writes its errno into the pipe; a successful one closes the pipe, and
 * only then is the exit status read. A program that was refused cannot produce "ran", and one
 * that ran cannot produce an errno.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static const char *errno_name(int e)
{
	switch (e) {
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case ENOENT: return "ENOENT";
	case ECONNREFUSED: return "ECONNREFUSED";
	case ETIMEDOUT: return "ETIMEDOUT";
	case ENOEXEC: return "ENOEXEC";
	default: return "other";
	}
}

static void report(const char *action, int err)
{
	if (err == 0)
		printf("AGENT %s ok\n", action);
	else
		printf("AGENT %s errno=%d %s\n", action, err, errno_name(err));
	fflush(stdout);
}

static int parse_port(const char *text)
{
	char *end;
	long port = strtol(text, &end, 10);
	if (*end != '\0' || port <= 0 || port > 65535) {
		fprintf(stderr, "agent: bad port '%s'\n", text);
		exit(2);
	}
	return (int)port;
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in addr;
	memset(&addr, 0, sizeof addr);
	addr.sin_family = AF_INET;
	addr.sin_port = htons((unsigned short)port);
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return addr;
}

static int listen_forever(int port)
{
	struct sockaddr_in addr = loopback(port);
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
	    bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 16) != 0) {
		perror("agent listen");
		return 1;
	}
	printf("AGENT listening 127.0.0.1:%d\n", port);
	fflush(stdout);
	for (;;) {
		int conn = accept(fd, NULL, NULL);
		if (conn >= 0)
			close(conn);
	}
}

static void try_open(const char *path)
{
	char byte;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		report("open", errno);
		return;
	}
	/* An open that succeeded must also read: a refusal may come at either step. */
	int err = read(fd, &byte, 1) < 0 ? errno : 0;
	close(fd);
	report("open", err);
}

static void try_exec(const char *path)
{
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) != 0) {
		perror("agent pipe2");
		exit(2);
	}
	fflush(stdout);
	pid_t child = fork();
	if (child < 0) {
		perror("agent fork");
		exit(2);
	}
	if (child == 0) {
		char *argv[] = {(char *)path, NULL};
		close(pipefd[0]);
		execve(path, argv, environ);
		int err = errno;
		if (write(pipefd[1], &err, sizeof err) != (ssize_t)sizeof err)
			_exit(126);
		_exit(127);
	}
	close(pipefd[1]);
	int err = 0;
	ssize_t got = read(pipefd[0], &err, sizeof err);
	close(pipefd[0]);
	int status = 0;
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	if (got == (ssize_t)sizeof err) {
		report("exec", err);
	} else if (WIFEXITED(status)) {
		printf("AGENT exec ran exit=%d\n", WEXITSTATUS(status));
	} else {
		printf("AGENT exec ran signal=%d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	}
	fflush(stdout);
}

static void try_connect(int port)
{
	struct sockaddr_in addr = loopback(port);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		report("connect", errno);
		return;
	}
	int err = connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0 ? errno : 0;
	close(fd);
	report("connect", err);
}

/* Drops to uid/gid UID, then re-executes this program without --as. */
static void become(const char *uid_text, int argc, char **argv)
{
	char *end;
	long uid = strtol(uid_text, &end, 10);
	if (*end != '\0' || uid <= 0) {
		fprintf(stderr, "agent: bad uid '%s'\n", uid_text);
		exit(2);
	}
	if (setgroups(0, NULL) != 0 || setgid((gid_t)uid) != 0 || setuid((uid_t)uid) != 0) {
		perror("agent: dropping privileges");
		exit(2);
	}
	if (getuid() != (uid_t)uid || geteuid() != (uid_t)uid) {
		fprintf(stderr, "agent: still uid %d after setuid\n", (int)geteuid());
		exit(2);
	}
	/* argv: agent try --as UID SECRET FORBIDDEN PORT → agent try SECRET FORBIDDEN PORT */
	char *again[8];
	int n = 0;
	again[n++] = argv[0];
	again[n++] = "try";
	for (int i = 4; i < argc && n < 7; i++)
		again[n++] = argv[i];
	again[n] = NULL;
	execve("/proc/self/exe", again, environ);
	perror("agent: re-executing after dropping privileges");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "listen") == 0)
		return listen_forever(parse_port(argv[2]));
	if (argc == 7 && strcmp(argv[1], "try") == 0 && strcmp(argv[2], "--as") == 0)
		become(argv[3], argc, argv);
	if (argc == 5 && strcmp(argv[1], "try") == 0) {
		printf("AGENT uid=%d gid=%d\n", (int)getuid(), (int)getgid());
		fflush(stdout);
		try_open(argv[2]);
		try_exec(argv[3]);
		try_connect(parse_port(argv[4]));
		return 0;
	}
	fprintf(stderr, "usage: agent listen PORT\n"
			"       agent try [--as UID] SECRET FORBIDDEN PORT\n");
	return 2;
}
