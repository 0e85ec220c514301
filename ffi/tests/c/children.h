/*
 * Streams and child processes of the C tests. Each test program runs
 * its publishers and subscribers as children: itself (`self_path`, which
 * main sets to argv[0]) re-executed with other arguments. Include after
 * check.h; define KEY_PREFIX first for keys other than "ctest-<pid>-...".
 * One test program per translation unit; helpers a program does not use
 * are static inline, so that they cost nothing.
 */
#ifndef CUFRAMES_TEST_CHILDREN_H
#define CUFRAMES_TEST_CHILDREN_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef KEY_PREFIX
#define KEY_PREFIX "ctest-"
#endif

static const char *self_path;

/* Subscriber options: the defaults, with a connect timeout of `connect_ms`. */
static inline cuframes_subscriber_options_t subscriber_options(uint32_t connect_ms) {
  cuframes_subscriber_options_t so;
  cuframes_subscriber_options_init(&so);
  so.connect_timeout_ms = connect_ms;
  return so;
}

/* The options of a frame or packet publisher child: a queue subscriber
 * under valgrind is slow. */
static inline cuframes_publisher_options_t child_publisher_options(void) {
  cuframes_publisher_options_t po;
  cuframes_publisher_options_init(&po);
  po.block_timeout_ms = 20000;
  return po;
}

/* Says in child `who` that its call `what` failed, with the library's
 * message; returns `status`. */
static inline int failed(const char *who, const char *what, int status) {
  fprintf(stderr, "%s: %s: %s\n", who, what, cuframes_last_error_message());
  return status;
}

/* A stream key of this process: KEY_PREFIX, the pid, then `what`. */
static inline void make_key(char *buf, size_t len, const char *what) {
  snprintf(buf, len, KEY_PREFIX "%d-%s", (int)getpid(), what);
}

/* Starts a child running this program with `argv`; returns its pid. */
static inline pid_t spawn(char *const argv[]) {
  pid_t pid = fork();
  if (pid == 0) {
    execv(self_path, argv);
    perror("execv");
    _exit(127);
  }
  return pid;
}

/* Waits for child `pid`: its exit status, or 128 + the signal that ended it. */
static inline int wait_exit(pid_t pid) {
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Runs a publisher, a queue subscriber and a newest-only subscriber child
 * at once (their argv) and checks that each exits 0; `what` starts the
 * failure messages. */
static inline void run_children(const char *what, char *const publisher[], char *const queue[],
                                char *const newest[]) {
  pid_t p = spawn(publisher), q = spawn(queue), s = spawn(newest);
  int rp = wait_exit(p), rq = wait_exit(q), rs = wait_exit(s);
  CHECK(rp == 0, "%spublisher process exited %d", what, rp);
  CHECK(rq == 0, "%squeue subscriber process exited %d", what, rq);
  CHECK(rs == 0, "%snewest-only subscriber process exited %d", what, rs);
}

/* The path of the file `fmt` ("cuframes.%s", ".cuframes.%s.lock", ...) of
 * stream `key` in the segment directory ($CUFRAMES_SHM_DIR, else
 * /dev/shm). */
static inline void stream_file(char *path, size_t len, const char *fmt, const char *key) {
  char name[160];
  const char *dir = getenv("CUFRAMES_SHM_DIR");
  snprintf(name, sizeof name, fmt, key);
  snprintf(path, len, "%s/%s", dir && *dir ? dir : "/dev/shm", name);
}

static inline int file_exists(const char *fmt, const char *key) {
  char path[256];
  stream_file(path, sizeof path, fmt, key);
  return access(path, F_OK) == 0;
}

static inline void remove_file(const char *fmt, const char *key) {
  char path[256];
  stream_file(path, sizeof path, fmt, key);
  unlink(path);
}

/* Removes the lock file a stream leaves behind. */
static inline void remove_lock(const char *key) { remove_file(".cuframes.%s.lock", key); }

/* The cross-process test of the frame and the packet tests: children
 * `publish KEY N 2`, `subscribe KEY N <queue>` and `subscribe KEY N
 * <newest-only>` (the CUFRAMES_MODE_* numbers). */
static inline void cross_process(const char *n) {
  char key[64], subs[] = "2", queue[8], newest[8];
  make_key(key, sizeof key, "xproc");
  snprintf(queue, sizeof queue, "%u", CUFRAMES_MODE_QUEUE);
  snprintf(newest, sizeof newest, "%u", CUFRAMES_MODE_NEWEST_ONLY);
  char *pa[] = {(char *)self_path, "publish", key, (char *)n, subs, NULL};
  char *qa[] = {(char *)self_path, "subscribe", key, (char *)n, queue, NULL};
  char *na[] = {(char *)self_path, "subscribe", key, (char *)n, newest, NULL};
  run_children("", pa, qa, na);
  remove_lock(key);
}

/* Defines `subscribers_of(pub)`, the `count` argument of the helpers below,
 * for the publisher type whose stats call is `stats_call`. */
#define DEFINE_SUBSCRIBERS_OF(stats_call)                                        \
  static unsigned subscribers_of(const void *pub) {                              \
    cuframes_publisher_stats_t st;                                               \
    stats_call(pub, &st);                                                        \
    return st.subscribers;                                                       \
  }

/* Waits up to 60 s for `subs` subscribers of a publisher child's stream
 * (`count` says how many are connected to `pub`); returns the last count. */
static inline unsigned wait_subscribers(unsigned (*count)(const void *pub), const void *pub, unsigned subs) {
  unsigned n;
  double deadline = now_ms() + 60000;
  do {
    if ((n = count(pub)) >= subs) break;
    usleep(2000);
  } while (now_ms() < deadline);
  return n;
}

/* A publisher child's work in the frame and the packet tests: waits for
 * `subs` subscribers, then publishes seqs 1..n with `publish` (`buf` is
 * its scratch memory), pausing every 16 so that a newest-only reader sees
 * some. Returns 0, 2 when the subscribers did not come, or 10 + the code
 * of the call that failed; `item` names what is published. */
static inline int publish_seqs(void *pub, unsigned n, unsigned subs, unsigned (*count)(const void *pub),
                               int (*publish)(void *pub, uint64_t seq, uint8_t *buf), uint8_t *buf,
                               const char *item) {
  unsigned came = wait_subscribers(count, pub, subs);
  if (came < subs) {
    fprintf(stderr, "publish: only %u of %u subscribers came\n", came, subs);
    return 2;
  }
  int rc = 0;
  for (uint64_t seq = 1; seq <= n; seq++) {
    rc = publish(pub, seq, buf);
    if (rc) {
      fprintf(stderr, "publish: %s %llu: %s\n", item, (unsigned long long)seq, cuframes_last_error_message());
      break;
    }
    if (seq % 16 == 0) usleep(1000); /* let the newest-only reader see some */
  }
  return rc ? 10 + rc : 0;
}

/* A subscriber child's verdict on what it read of a publisher's seqs 1..n:
 * `got` of them, the last `last`, `dropped` skipped (its stats). A queue
 * reader loses none; any reader ends on n. 1 when wrong (messages start
 * with `who` and name `items`), else 0. */
static inline int check_received(const char *who, const char *items, int queue, uint64_t got, uint64_t last,
                                  unsigned n, uint64_t dropped) {
  int bad = 0;
  if (queue && (got != n || dropped != 0)) {
    fprintf(stderr, "%s: queue got %llu of %u %s, %llu dropped\n", who, (unsigned long long)got, n, items,
            (unsigned long long)dropped);
    bad = 1;
  }
  if (got == 0 || last != n) {
    fprintf(stderr, "%s: got %llu %s, last %llu of %u\n", who, (unsigned long long)got, items,
            (unsigned long long)last, n);
    bad = 1;
  }
  return bad;
}

#endif
