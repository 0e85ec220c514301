/*
 * Per-frame cost of the C API on a 1080p NV12 stream, in one thread:
 * publisher loan + commit, subscriber next + read one byte + release.
 * Prints ns per cycle and ns per next+release. The same loop through the
 * Rust API is `cargo run --release -p cuframes-ffi --example bench_rust`.
 *
 *   bench_next [iterations=200000]
 */
#define _POSIX_C_SOURCE 200809L
#include <cuframes.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define TRY(expr)                                                                              \
  do {                                                                                         \
    int rc_ = (expr);                                                                          \
    if (rc_) {                                                                                 \
      fprintf(stderr, "%s: %s\n", #expr, cuframes_last_error_message());                      \
      return 1;                                                                                \
    }                                                                                          \
  } while (0)

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 200000, warm = n / 10;
  char key[64];
  snprintf(key, sizeof key, "bench-c-%d", (int)getpid());
  cuframes_publisher_t *pub;
  cuframes_subscriber_t *sub;
  TRY(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, 1920, 1080, NULL, &pub));
  TRY(cuframes_subscriber_create(key, "bench", CUFRAMES_MODE_QUEUE, NULL, &sub));
  uint64_t sum = 0, in_next = 0, t0 = 0;
  for (long i = -warm; i < n; i++) {
    if (i == 0) in_next = 0, t0 = now_ns();
    cuframes_lease_t lease;
    TRY(cuframes_publisher_loan(pub, &lease));
    lease.planes[0][0] = (uint8_t)i;
    TRY(cuframes_publisher_commit(pub, i, NULL));
    uint64_t a = now_ns();
    cuframes_frame_t *f;
    TRY(cuframes_subscriber_next(sub, 0, &f));
    sum += cuframes_frame_plane_data(f, 0)[0] + cuframes_frame_seq(f);
    cuframes_frame_release(f);
    in_next += now_ns() - a;
  }
  uint64_t total = now_ns() - t0;
  printf("C    API, 1080p NV12, %ld frames: %.0f ns per loan+commit+next+release cycle, %.0f ns per next+release (checksum %llu)\n",
         n, (double)total / n, (double)in_next / n, (unsigned long long)(sum & 0xff));
  cuframes_subscriber_destroy(sub);
  cuframes_publisher_destroy(pub);
  return 0;
}
