/* Calls the libc entry points Python cannot reach directly (the execl family, popen, fexecve,
 * fopen, creat, the fortified open) so the tests can run them under the shim.
 * Usage: okcall MODE ARGS...; prints what happened; exit 0 when the call behaved as printed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int failed(const char *what) {
    printf("%s failed errno=%d\n", what, errno);
    return 3;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *m = argv[1];
    const char *a = argc > 2 ? argv[2] : "";
    const char *b = argc > 3 ? argv[3] : "";
    if (!strcmp(m, "execl9")) {
        /* More arguments than registers: the tail travels on the stack. */
        execl("/bin/echo", "echo", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9",
              (char *)0);
        return failed("execl");
    }
    if (!strcmp(m, "execl")) {
        execl(a, "x", b, (char *)0);
        return failed("execl");
    }
    if (!strcmp(m, "execlp")) {
        execlp(a, a, b, (char *)0);
        return failed("execlp");
    }
    if (!strcmp(m, "execle")) {
        char *envp[] = {"FOO=bar", 0};
        execle(a, "sh", "-c", "echo \"$FOO:$0:$1:$2:$3:$4\"", "x0", "x1", "x2", "x3", "x4",
               (char *)0, envp);
        return failed("execle");
    }
    if (!strcmp(m, "fexecve")) {
        int fd = open(a, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return failed("open");
        char *args[] = {"x", (char *)b, 0};
        fexecve(fd, args, environ);
        return failed("fexecve");
    }
    if (!strcmp(m, "vfork")) {
        /* The child shares the parent's memory until it execs: a refused exec in the child
         * must leave the parent's shim state (and its checks) intact. */
        pid_t pid = vfork();
        if (pid == 0) {
            execl(a, "x", (char *)0);
            _exit(errno);
        }
        int st;
        waitpid(pid, &st, 0);
        int fd = open(b, O_RDONLY);
        printf("child exit=%d parent open %s errno=%d\n", WEXITSTATUS(st), fd < 0 ? "failed" : "ok",
               fd < 0 ? errno : 0);
        return 0;
    }
    if (!strcmp(m, "popen")) {
        FILE *f = popen(a, "r");
        if (!f) return failed("popen");
        char buf[256];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        int st = pclose(f);
        printf("popen read=%s status=%d\n", buf, st);
        return 0;
    }
    if (!strcmp(m, "system")) {
        int st = system(a);
        if (st == -1) return failed("system");
        printf("system status=%d\n", st);
        return 0;
    }
    if (!strcmp(m, "spawnp")) {
        pid_t pid;
        char *args[] = {(char *)a, (char *)b, 0};
        int e = posix_spawnp(&pid, a, 0, 0, args, environ);
        if (e) {
            printf("posix_spawnp failed errno=%d\n", e);
            return 3;
        }
        int st;
        waitpid(pid, &st, 0);
        printf("spawned status=%d\n", st);
        return 0;
    }
    if (!strcmp(m, "fopen") || !strcmp(m, "fopen-w")) {
        FILE *f = fopen(a, m[5] ? "w" : "r");
        if (!f) return failed("fopen");
        printf("fopen ok\n");
        fclose(f);
        return 0;
    }
    if (!strcmp(m, "freopen")) {
        FILE *f = freopen(a, "r", stdin);
        if (!f) return failed("freopen");
        printf("freopen ok\n");
        return 0;
    }
    if (!strcmp(m, "creat")) {
        int fd = creat(a, 0644);
        if (fd < 0) return failed("creat");
        printf("creat ok\n");
        return 0;
    }
    if (!strcmp(m, "openat")) {
        int fd = openat(AT_FDCWD, a, O_RDONLY);
        if (fd < 0) return failed("openat");
        printf("openat ok\n");
        return 0;
    }
    if (!strcmp(m, "open2")) {
        /* Flags unknown at compile time: with _FORTIFY_SOURCE this calls __open_2. */
        int flags = atoi(b);
        int fd = open(a, flags);
        if (fd < 0) return failed("open");
        printf("open ok\n");
        return 0;
    }
    return 2;
}
