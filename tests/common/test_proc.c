/* dhps_pid_listens_tcp (which process holds a listening port) and dhps_pid_cpu_ns (the CPU
 * time a process has used), src/common/proc.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <errno.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

/* A TCP socket bound to 127.0.0.1:0; listening when listen_it. Returns fd, sets *port. */
static int bound(bool listen_it, uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    if (listen_it)
        assert_int_equal(listen(fd, 4), 0);
    socklen_t l = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void owner_is_found(void **state)
{
    (void)state;
    uint16_t port;
    int fd = bound(true, &port);
    assert_true(dhps_pid_listens_tcp(getpid(), port));
    /* another process, alive, that does not hold the socket */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(fd);
        pause();
        _exit(0);
    }
    /* the child may still hold the inherited fd until its close: wait for it to drop it */
    bool held = true;
    for (int i = 0; i < 2000 && held; i++) {
        held = dhps_pid_listens_tcp(child, port);
        if (held)
            usleep(1000);
    }
    assert_false(held);
    assert_true(dhps_pid_listens_tcp(getpid(), port));
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    close(fd);
    assert_false(dhps_pid_listens_tcp(getpid(), port));
}

static void not_listening_or_no_process(void **state)
{
    (void)state;
    uint16_t port;
    int fd = bound(false, &port); /* bound, not listening */
    assert_false(dhps_pid_listens_tcp(getpid(), port));
    close(fd);
    assert_false(dhps_pid_listens_tcp(0, port));
    assert_false(dhps_pid_listens_tcp(-1, port));
    fd = bound(true, &port);
    pid_t gone = fork();
    if (gone == 0)
        _exit(0);
    waitpid(gone, NULL, 0); /* reaped: no /proc entry */
    assert_false(dhps_pid_listens_tcp(gone, port));
    close(fd);
}

/* A child spins until its own CPU clock shows 200 ms, says so on a pipe and waits: its
 * /proc time then holds at least that (less one tick of rounding), and no more than the
 * CPU this whole test has been given since. Gone and bad pids are errors. */
static void cpu_time_of_a_process(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    uint64_t before;
    assert_int_equal(dhps_pid_cpu_ns(getpid(), &before), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        close(fds[0]);
        while (dhps_clock_ns(CLOCK_PROCESS_CPUTIME_ID) < 200000000ull)
            ;
        char b = 1;
        if (write(fds[1], &b, 1) != 1)
            _exit(1);
        pause();
        _exit(0);
    }
    close(fds[1]);
    char b;
    assert_int_equal(read(fds[0], &b, 1), 1); /* the event: the child has spun */
    close(fds[0]);
    uint64_t ns = 0;
    assert_int_equal(dhps_pid_cpu_ns(child, &ns), 0);
    assert_true(ns >= 190000000ull);
    assert_true(ns <= 60000000000ull);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    assert_int_equal(dhps_pid_cpu_ns(child, &ns), -ESRCH); /* reaped */
    assert_int_equal(dhps_pid_cpu_ns(0, &ns), -EINVAL);
    assert_int_equal(dhps_pid_cpu_ns(-1, &ns), -EINVAL);
    /* this process: counts up (its threads, exited ones too) */
    uint64_t after;
    assert_int_equal(dhps_pid_cpu_ns(getpid(), &after), 0);
    assert_true(after >= before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cpu_time_of_a_process),
        cmocka_unit_test(owner_is_found),
        cmocka_unit_test(not_listening_or_no_process),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
