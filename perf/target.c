/* Ground-truth HTTP target for `make bench`: answers every request exactly DELAY_US after its
 * last header byte, in one write() of the whole response, so the response is one packet at a
 * known time. Single-threaded epoll; a FIFO of due times works because the delay is constant.
 * A request with "Connection: close" gets its response and then the server's FIN, as a
 * new-connection prober (blackbox_exporter, failover_exporter) expects.
 *
 * usage: target ADDR PORT DELAY_US
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 65536
#define QLEN 262144

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";

struct conn {
    char buf[2048];
    int len;
    int close_after;
    unsigned gen;
};

static struct conn *conns;
static struct {
    int fd;
    unsigned gen;
    long long due;
    int close_after;
} queue[QLEN];
static long qhead, qtail;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void drop(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    conns[fd].len = 0;
    conns[fd].gen++;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s ADDR PORT DELAY_US\n", argv[0]);
        return 2;
    }
    long long delay = atoll(argv[3]) * 1000LL;
    signal(SIGPIPE, SIG_IGN);
    conns = calloc(MAXFD, sizeof *conns);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 8192)) {
        perror("bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("ready\n");
    fflush(stdout);
    struct epoll_event events[256];
    for (;;) {
        struct timespec ts, *tsp = NULL;
        if (qhead != qtail) {
            long long wait = queue[qhead % QLEN].due - now_ns();
            if (wait < 0) wait = 0;
            ts.tv_sec = wait / 1000000000LL;
            ts.tv_nsec = wait % 1000000000LL;
            tsp = &ts;
        }
        int n = epoll_pwait2(ep, events, 256, tsp, NULL);
        if (n < 0 && errno != EINTR) {
            perror("epoll_pwait2");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (c >= MAXFD) {
                        close(c);
                        continue;
                    }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[c].len = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            struct conn *k = &conns[fd];
            ssize_t r = read(fd, k->buf + k->len, sizeof k->buf - 1 - k->len);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                drop(ep, fd);
                continue;
            }
            k->len += r;
            k->buf[k->len] = 0;
            char *end = strstr(k->buf, "\r\n\r\n");
            if (end == NULL) {
                if (k->len >= (int)sizeof k->buf - 1) drop(ep, fd);
                continue;
            }
            long slot = qtail++ % QLEN;
            queue[slot].fd = fd;
            queue[slot].gen = k->gen;
            queue[slot].due = now_ns() + delay;
            queue[slot].close_after = strcasestr(k->buf, "connection: close") != NULL;
            /* One request per connection at a time: keep-alive probers wait for the answer. */
            k->len = 0;
        }
        long long t = now_ns();
        while (qhead != qtail && queue[qhead % QLEN].due <= t) {
            long slot = qhead++ % QLEN;
            int fd = queue[slot].fd;
            if (conns[fd].gen != queue[slot].gen) continue; /* closed meanwhile */
            if (write(fd, RESPONSE, sizeof RESPONSE - 1) < 0 || queue[slot].close_after)
                drop(ep, fd);
        }
    }
}
