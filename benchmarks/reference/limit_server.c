/* limit_server.c: the floor under benchmarks/servers.py, not a server anyone would run.
 *
 * One thread, one epoll loop, non-blocking sockets with TCP_NODELAY, listening on 127.0.0.1:PORT. It does
 * the least a WebSocket peer of the benchmark can do: the HTTP upgrade (any path and request; only
 * Sec-WebSocket-Key is read), client frames with 7-, 16- and 64-bit lengths, unmasked in place, partial
 * frames kept across reads, a close answered with a close (then the connection is shut down), a ping with
 * a pong. It does NOT parse JSON: a scan finds the "id" key and copies its value verbatim, the presence of
 * "jsonrpc" picks the reply's shape, and the result is always 3 (the benchmark only calls add_numbers(1, 2)):
 *   {"id": "17", "op": "call", "func": "add_numbers", "args": [1, 2]}      -> {"id":"17","result":3,"error":null}
 *   {"jsonrpc": "2.0", "id": 17, "method": "add_numbers", "params": [1, 2]} -> {"jsonrpc":"2.0","result":3,"id":17}
 *   {"func": "add_numbers", "args": [1, 2], "id": 0}                        -> {"id":0,"result":3,"error":null}
 * A message without an "id" gets no reply; a fragmented message closes the connection (1003).
 * So its figure is the socket, the framing and an id copy per call: what is left of a call on one core.
 * All the replies made from one read() go out in one send(); what the kernel does not take waits for
 * EPOLLOUT (and reading pauses until it is sent).
 *
 * Build: gcc -O2 -Wall -Wextra -o limit_server limit_server.c -lcrypto      Run: ./limit_server PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)
#define MAX_HEAD (16 * 1024)
#define MAX_FRAME (16u << 20)

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

typedef struct {
    int fd;
    int upgraded, closing, shut, writing; /* closing: a close (or a 400) is queued, input is dropped */
    buf_t in, out;
    size_t out_off;
} conn_t;

static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
static int epfd;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void reserve(buf_t *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    if (!(b->data = realloc(b->data, cap))) die("realloc");
    b->cap = cap;
}

static void append(buf_t *b, const void *data, size_t len) {
    reserve(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void frame_header(buf_t *b, unsigned opcode, size_t len) { /* a server frame: FIN, no mask */
    unsigned char h[10] = {0x80 | opcode};
    size_t n = 2;
    if (len < 126) {
        h[1] = len;
    } else if (len < 65536) {
        h[1] = 126, h[2] = len >> 8, h[3] = len & 0xff, n = 4;
    } else {
        h[1] = 127, n = 10;
        for (int i = 0; i < 8; i++) h[2 + i] = ((uint64_t)len >> (56 - 8 * i)) & 0xff;
    }
    append(b, h, n);
}

static void close_with(conn_t *c, const unsigned char code[2]) {
    frame_header(&c->out, 8, code ? 2 : 0);
    if (code) append(&c->out, code, 2);
    c->closing = 1;
}

static void drop(conn_t *c) {
    close(c->fd); /* also leaves the epoll set */
    free(c->in.data);
    free(c->out.data);
    free(c);
}

static void watch(conn_t *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl");
}

static int flush(conn_t *c) { /* send what is queued; 0: the connection is gone */
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->writing) c->writing = 1, watch(c, EPOLLOUT);
            return 1;
        }
        if (n < 0) {
            drop(c);
            return 0;
        }
        c->out_off += n;
    }
    c->out.len = c->out_off = 0;
    if (c->closing && !c->shut) c->shut = 1, shutdown(c->fd, SHUT_WR); /* then read until the peer closes */
    if (c->writing) c->writing = 0, watch(c, EPOLLIN);
    return 1;
}

static long handshake(conn_t *c) { /* bytes used by the request; 0: incomplete; -1: give up */
    char *end = memmem(c->in.data, c->in.len, "\r\n\r\n", 4), *key = NULL, *line;
    if (!end) return c->in.len > MAX_HEAD ? -1 : 0;
    *end = '\0'; /* the header block is a C string now (it is consumed whole) */
    for (line = strstr(c->in.data, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "sec-websocket-key:", 18) == 0) {
            key = line + 2 + 18;
            break;
        }
    }
    size_t key_len = 0;
    if (key) {
        key += strspn(key, " \t");
        key_len = strcspn(key, " \t\r");
    }
    if (key_len == 0 || key_len > 128) {
        static const char bad[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        append(&c->out, bad, sizeof bad - 1);
        c->closing = 1;
        return end + 4 - c->in.data;
    }
    char joined[128 + sizeof GUID], accept_key[32], reply[256];
    unsigned char digest[SHA_DIGEST_LENGTH];
    memcpy(joined, key, key_len);
    memcpy(joined + key_len, GUID, sizeof GUID - 1);
    SHA1((unsigned char *)joined, key_len + sizeof GUID - 1, digest);
    EVP_EncodeBlock((unsigned char *)accept_key, digest, SHA_DIGEST_LENGTH);
    int n = snprintf(reply, sizeof reply,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     accept_key);
    append(&c->out, reply, n);
    c->upgraded = 1;
    return end + 4 - c->in.data;
}

static int space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'; }

static void answer(conn_t *c, const char *msg, size_t len) { /* the scan, not a parse: see the top */
    const char *stop = msg + len, *id = NULL, *end = NULL;
    for (const char *p = msg; (p = memmem(p, stop - p, "\"id\"", 4)); p += 4) {
        const char *v = p + 4;
        while (v < stop && space(*v)) v++;
        if (v == stop || *v != ':') continue;
        for (v++; v < stop && space(*v); v++) {}
        const char *e = v;
        if (e < stop && *e == '"') { /* a string: to its closing quote, escapes skipped */
            for (e++; e < stop && *e != '"'; e++)
                if (*e == '\\') e++;
            if (e >= stop) continue;
            e++;
        } else {
            while (e < stop && *e != ',' && *e != '}' && !space(*e)) e++;
        }
        if (e > v) id = v, end = e;
        break;
    }
    if (!id) return;
    static const char rpc_head[] = "{\"jsonrpc\":\"2.0\",\"result\":3,\"id\":", rpc_tail[] = "}";
    static const char head[] = "{\"id\":", tail[] = ",\"result\":3,\"error\":null}";
    int rpc = memmem(msg, len, "\"jsonrpc\"", 9) != NULL;
    size_t head_len = rpc ? sizeof rpc_head - 1 : sizeof head - 1;
    size_t tail_len = rpc ? sizeof rpc_tail - 1 : sizeof tail - 1;
    frame_header(&c->out, 1, head_len + (end - id) + tail_len);
    append(&c->out, rpc ? rpc_head : head, head_len);
    append(&c->out, id, end - id);
    append(&c->out, rpc ? rpc_tail : tail, tail_len);
}

static size_t frames(conn_t *c, size_t pos) { /* handle the whole frames from pos; returns where the rest starts */
    static const unsigned char too_big[2] = {0x03, 0xf1}, unsupported[2] = {0x03, 0xeb}; /* 1009, 1003 */
    while (!c->closing) {
        unsigned char *f = (unsigned char *)c->in.data + pos;
        size_t avail = c->in.len - pos, head = 2;
        if (avail < 2) break;
        unsigned fin = f[0] & 0x80, opcode = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t len = f[1] & 0x7f;
        if (len == 126) {
            if (avail < 4) break;
            len = (uint64_t)f[2] << 8 | f[3], head = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            len = 0, head = 10;
            for (int i = 0; i < 8; i++) len = len << 8 | f[2 + i];
        }
        if (len > MAX_FRAME) {
            close_with(c, too_big);
            break;
        }
        const unsigned char *mask = f + head;
        if (masked) head += 4;
        if (avail < head + len) break;
        unsigned char *payload = f + head;
        if (masked)
            for (size_t i = 0; i < len; i++) payload[i] ^= mask[i & 3];
        pos += head + len;
        if (!fin || opcode == 0) {
            close_with(c, unsupported);
        } else if (opcode == 1 || opcode == 2) {
            answer(c, (const char *)payload, len);
        } else if (opcode == 8) {
            close_with(c, len >= 2 ? payload : NULL); /* the peer's code, echoed */
        } else if (opcode == 9) {
            frame_header(&c->out, 10, len);
            append(&c->out, payload, len);
        } /* a pong (10) or anything else: nothing */
    }
    return pos;
}

static void on_read(conn_t *c) {
    reserve(&c->in, READ_SIZE);
    ssize_t n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) { /* the peer closed (or failed) */
        drop(c);
        return;
    }
    if (c->closing) return;     /* after a close: what the peer still sends is dropped */
    c->in.len += n;
    size_t pos = 0;
    if (!c->upgraded) {
        long used = handshake(c);
        if (used < 0) {
            drop(c);
            return;
        }
        pos = used;
    }
    if (c->upgraded) pos = frames(c, pos);
    if (c->closing) pos = c->in.len;
    memmove(c->in.data, c->in.data + pos, c->in.len - pos); /* a partial frame waits for the next read */
    c->in.len -= pos;
    flush(c);
}

static void accept_all(int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK), one = 1;
        if (fd < 0) return; /* EAGAIN: all taken (or an error: tried again on the next event) */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        if (!c) die("calloc");
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (listener < 0) die("socket");
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(listener, 1024) < 0) die("listen");
    if ((epfd = epoll_create1(0)) < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}; /* NULL: the listener */
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev) < 0) die("epoll_ctl");
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(epfd, events, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int i = 0; i < n; i++) { /* an fd is at most once in a batch: a dropped conn is not seen again */
            conn_t *c = events[i].data.ptr;
            if (!c) {
                accept_all(listener);
                continue;
            }
            if (events[i].events & EPOLLERR) {
                drop(c);
                continue;
            }
            if ((events[i].events & EPOLLOUT) && !flush(c)) continue;
            if (events[i].events & (EPOLLIN | EPOLLHUP)) on_read(c);
        }
    }
}
