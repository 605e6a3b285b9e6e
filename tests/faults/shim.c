/*
 * A storage fault injector for the fault tests, loaded with LD_PRELOAD into `spg99 serve`.
 *
 * While the file named by SPG99_FAULT_TRIGGER exists, calls on files whose path contains
 * SPG99_FAULT_PATH (default: every file) fail:
 *   - SPG99_FAULT_OP=sync:   fsync, fdatasync        -> EIO
 *   - SPG99_FAULT_OP=write:  write, pwrite, pwritev  -> ENOSPC
 *   - SPG99_FAULT_OP=alloc:  fallocate, posix_fallocate, and ftruncate growing a file -> ENOSPC
 * Everything else passes through. The trigger is checked on each call, so a test turns the
 * fault on and off by creating and removing one file, while the server runs.
 *
 * Built by the tests: cc -shared -fPIC -O2 -o libspg99fault.so shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int op_is(const char *op) {
    const char *want = getenv("SPG99_FAULT_OP");
    return want && strcmp(want, op) == 0;
}

static int triggered(void) {
    const char *t = getenv("SPG99_FAULT_TRIGGER");
    return t && access(t, F_OK) == 0;
}

/* Whether fd is a file the fault applies to. */
static int matches(int fd) {
    const char *part = getenv("SPG99_FAULT_PATH");
    if (!part || !*part) return 1;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = 0;
    return strstr(path, part) != NULL;
}

static int fault(const char *op, int fd) {
    return op_is(op) && triggered() && matches(fd);
}

#define REAL(ret, name, ...) \
    static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = (ret (*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);

int fsync(int fd) {
    REAL(int, fsync, int);
    if (fault("sync", fd)) { errno = EIO; return -1; }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(int, fdatasync, int);
    if (fault("sync", fd)) { errno = EIO; return -1; }
    return real_fdatasync(fd);
}

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(ssize_t, write, int, const void *, size_t);
    if (fd > 2 && fault("write", fd)) { errno = ENOSPC; return -1; }
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    REAL(ssize_t, pwrite, int, const void *, size_t, off_t);
    if (fault("write", fd)) { errno = ENOSPC; return -1; }
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    REAL(ssize_t, pwrite64, int, const void *, size_t, off_t);
    if (fault("write", fd)) { errno = ENOSPC; return -1; }
    return real_pwrite64(fd, buf, n, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t);
    if (fault("write", fd)) { errno = ENOSPC; return -1; }
    return real_pwritev(fd, iov, cnt, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(ssize_t, writev, int, const struct iovec *, int);
    if (fd > 2 && fault("write", fd)) { errno = ENOSPC; return -1; }
    return real_writev(fd, iov, cnt);
}

int fallocate(int fd, int mode, off_t off, off_t len) {
    REAL(int, fallocate, int, int, off_t, off_t);
    if (fault("alloc", fd)) { errno = ENOSPC; return -1; }
    return real_fallocate(fd, mode, off, len);
}

int fallocate64(int fd, int mode, off_t off, off_t len) {
    REAL(int, fallocate64, int, int, off_t, off_t);
    if (fault("alloc", fd)) { errno = ENOSPC; return -1; }
    return real_fallocate64(fd, mode, off, len);
}

int posix_fallocate(int fd, off_t off, off_t len) {
    REAL(int, posix_fallocate, int, off_t, off_t);
    if (fault("alloc", fd)) return ENOSPC;
    return real_posix_fallocate(fd, off, len);
}

int posix_fallocate64(int fd, off_t off, off_t len) {
    REAL(int, posix_fallocate64, int, off_t, off_t);
    if (fault("alloc", fd)) return ENOSPC;
    return real_posix_fallocate64(fd, off, len);
}

int ftruncate(int fd, off_t len) {
    REAL(int, ftruncate, int, off_t);
    if (fault("alloc", fd)) {
        struct stat st;
        if (fstat(fd, &st) == 0 && len > st.st_size) { errno = ENOSPC; return -1; }
    }
    return real_ftruncate(fd, len);
}

int ftruncate64(int fd, off_t len) {
    REAL(int, ftruncate64, int, off_t);
    if (fault("alloc", fd)) {
        struct stat st;
        if (fstat(fd, &st) == 0 && len > st.st_size) { errno = ENOSPC; return -1; }
    }
    return real_ftruncate64(fd, len);
}
