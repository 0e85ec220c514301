/*
 * Check helpers of the C tests: CHECK counts a condition and reports a
 * failure with the library's last error message; CHECK_RC compares a
 * status code with the expected one by name. Include after <cuframes.h>;
 * one test program per translation unit (the counters are static).
 */
#ifndef CUFRAMES_TEST_CHECK_H
#define CUFRAMES_TEST_CHECK_H

#include <stdio.h>
#include <time.h>

static int checks, failures;

#define CHECK(cond, ...)                                                         \
  do {                                                                           \
    checks++;                                                                    \
    if (!(cond)) {                                                               \
      failures++;                                                                \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
      fprintf(stderr, __VA_ARGS__);                                              \
      fprintf(stderr, " [last error: %s]\n", cuframes_last_error_message());     \
    }                                                                            \
  } while (0)

#define CHECK_RC(expr, want)                                                     \
  do {                                                                           \
    int rc_ = (expr);                                                            \
    CHECK(rc_ == (want), "%s = %d (%s), want %d (%s)", #expr, rc_,               \
          cuframes_error_name(rc_), (want), cuframes_error_name(want));          \
  } while (0)

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Runs one test function and prints whether its checks passed. */
static void run(const char *name, void (*test)(void)) {
  int before = failures;
  double t0 = now_ms();
  test();
  printf("%-24s %s (%.0f ms)\n", name, failures == before ? "ok" : "FAILED", now_ms() - t0);
  fflush(stdout);
}

/* Prints the totals of test program `name`; returns its exit status (1 if
 * any check failed). */
static int finish(const char *name) {
  printf("%s: %d checks, %d passed, %d failed\n", name, checks, checks - failures, failures);
  return failures ? 1 : 0;
}

#endif
