/* Reading one HTTP/1.1 answer out of what a connection has read so far:
 * plain C, no I/O, no state (the loop calls it again when more has come). */
#define _GNU_SOURCE
#include "_engine.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_HEAD 65536
#define MAX_BODY (64 << 20)

/* One chunk's size line at `p`: the size, and where its data starts; -1 for
 * anything but hex digits (strtoll alone would skip white space). */
static long long chunk_size(const char *p, const char *end, const char **data) {
    const char *eol = memmem(p, end - p, "\r\n", 2);
    if (!eol) return -2;  /* more is needed */
    if (!isxdigit((unsigned char)*p)) return -1;
    long long size = strtoll(p, NULL, 16);
    *data = eol + 2;
    return size > MAX_BODY ? -1 : size;
}

/* 1 with the decoded size and the answer's end when the chunked body from `p`
 * is whole, 0 when more is needed, -1 when it is not chunked data. */
static int scan_chunks(const char *p, const char *end, size_t *decoded, const char **msg_end) {
    size_t total = 0;
    for (;;) {
        const char *data;
        long long size = chunk_size(p, end, &data);
        if (size == -2) return 0;
        if (size < 0 || total + size > MAX_BODY) return -1;
        if (size == 0) {  /* the last chunk, then trailers up to an empty line */
            const char *trailers_end = memmem(data - 2, end - (data - 2), "\r\n\r\n", 4);
            if (!trailers_end) return 0;
            *decoded = total, *msg_end = trailers_end + 4;
            return 1;
        }
        if (end - data < size + 2) return 0;
        if (memcmp(data + size, "\r\n", 2) != 0) return -1;
        total += size;
        p = data + size + 2;
    }
}

size_t http_dechunk(const char *p, const char *end, char *out) {
    size_t total = 0;
    for (;;) {
        const char *data;
        long long size = chunk_size(p, end, &data);
        if (size <= 0) return total;  /* the last chunk (scan_chunks has checked the rest) */
        memcpy(out + total, data, size);
        total += size;
        p = data + size + 2;
    }
}

int http_answer(const char *buf, size_t len, int eof, Answer *a) {
    const char *start = buf, *end = buf + len, *head_end;
    int status, minor;
    for (;;) {  /* interim answers (100 Continue) first: skipped */
        head_end = end - start >= 4 ? memmem(start, end - start, "\r\n\r\n", 4) : NULL;
        if (!head_end) return eof || end - start > MAX_HEAD ? -1 : 0;
        head_end += 4;
        if (head_end - start < 16 || memcmp(start, "HTTP/1.", 7) != 0 || start[8] != ' ') return -1;
        minor = start[7] - '0', status = atoi(start + 9);
        if (status < 100 || status > 999) return -1;
        if (status >= 200) break;
        start = head_end;
    }
    long long length = -1;
    int chunked = 0, close_it = 0, keep = 0;
    for (const char *line = (const char *)memchr(start, '\n', head_end - start) + 1; line < head_end - 2;) {
        const char *eol = memchr(line, '\n', head_end - line), *colon = memchr(line, ':', eol - line);
        if (colon) {
            size_t name = colon - line;
            const char *value = colon + 1;
            while (value < eol && (*value == ' ' || *value == '\t')) value++;
            size_t vlen = eol - value;
            if (name == 14 && strncasecmp(line, "content-length", 14) == 0) {
                if (!isdigit((unsigned char)*value)) return -1;
                length = atoll(value);
            } else if (name == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                chunked = vlen >= 7 && memmem(value, vlen, "chunked", 7) != NULL;
            } else if (name == 10 && strncasecmp(line, "connection", 10) == 0) {
                close_it = vlen >= 5 && strncasecmp(value, "close", 5) == 0;
                keep = vlen >= 10 && strncasecmp(value, "keep-alive", 10) == 0;
            }
        }
        line = eol + 1;
    }
    *a = (Answer){.status = status, .keep_alive = minor >= 1 ? !close_it : keep, .body_off = head_end - buf};
    if (status == 204 || status == 304) {
        a->msg_len = head_end - buf;
    } else if (chunked) {
        const char *msg_end;
        int whole = scan_chunks(head_end, end, &a->body_len, &msg_end);
        if (whole <= 0) return whole < 0 || eof ? -1 : 0;
        a->chunked = 1, a->msg_len = msg_end - buf;
    } else if (length >= 0) {
        if (length > MAX_BODY) return -1;
        if (end - head_end < length) return eof ? -1 : 0;
        a->body_len = length, a->msg_len = (head_end - buf) + length;
    } else {  /* no length: the body runs to the connection's close */
        if (!eof) return end - head_end > MAX_BODY ? -1 : 0;
        a->body_len = end - head_end, a->msg_len = len, a->keep_alive = 0;
    }
    return 1;
}
