/* hello: the example service of deploy/examples, an HTTP/1.1 endpoint with a health check.
 *
 *   GET /        200 "hello from <VARIANT>"   (VARIANT from the environment)
 *   GET /healthz 200 "ok"
 *   anything else 404
 *
 * `hello --check` is the health check itself: it asks 127.0.0.1:$PORT/healthz and exits 0 on a
 * 200, so a HEALTHCHECK works in an image with no shell and no curl (the minimal variant).
 * One connection at a time, each bounded by a receive timeout: the point is the image around
 * it, not the server. Plain C and libc only, so it links statically for the minimal image.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int port(void) {
    const char *p = getenv("PORT");
    int n = p ? atoi(p) : 0;
    return n > 0 && n < 65536 ? n : 8080;
}

static void on_term(int sig) {
    (void)sig;
    /* PID 1 in a container ignores SIGTERM unless it handles it: stop at once. */
    _exit(0);
}

static void set_timeout(int fd, int seconds) {
    struct timeval tv = {.tv_sec = seconds, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void reply(int fd, int status, const char *body) {
    char head[256];
    const char *text = status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request";
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, text, strlen(body));
    if (write(fd, head, (size_t)n) == n) {
        ssize_t ignored = write(fd, body, strlen(body));
        (void)ignored;
    }
}

static void serve_one(int fd, const char *hello) {
    char buf[4096];
    size_t len = 0;
    set_timeout(fd, 2);
    while (len < sizeof buf - 1) {
        ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
        if (n <= 0) return;
        len += (size_t)n;
        buf[len] = '\0';
        if (strstr(buf, "\r\n\r\n")) break;
    }
    if (strncmp(buf, "GET ", 4) != 0 && strncmp(buf, "HEAD ", 5) != 0) {
        reply(fd, 400, "bad request\n");
        return;
    }
    char *path = strchr(buf, ' ') + 1;
    char *end = strchr(path, ' ');
    if (end) *end = '\0';
    char *query = strchr(path, '?');
    if (query) *query = '\0';
    if (strcmp(path, "/healthz") == 0)
        reply(fd, 200, "ok\n");
    else if (strcmp(path, "/") == 0)
        reply(fd, 200, hello);
    else
        reply(fd, 404, "not found\n");
}

static int check(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port())};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    set_timeout(fd, 2);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) return 1;
    const char req[] = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) return 1;
    char buf[64] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 12 && strncmp(buf + 9, "200", 3) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--check") == 0) return check();
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);
    const char *variant = getenv("VARIANT");
    char hello[128];
    snprintf(hello, sizeof hello, "hello from %s\n", variant && *variant ? variant : "hello");

    int lfd = socket(AF_INET6, SOCK_STREAM, 0);
    int one = 1, zero = 0;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* One socket for both families: IPv4 clients arrive as ::ffff:a.b.c.d. */
    setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    struct sockaddr_in6 addr = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port())};
    addr.sin6_addr = in6addr_any;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 128) != 0) {
        fprintf(stderr, "hello: cannot listen on port %d: %s\n", port(), strerror(errno));
        return 1;
    }
    fprintf(stderr, "hello: listening on :%d\n", port());
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        serve_one(fd, hello);
        close(fd);
    }
}
