/*
 * Minimal cuframes publisher in C: a moving NV12 test pattern.
 *
 *   cc publisher.c $(pkg-config --cflags --libs cuframes) -o publisher
 *   ./publisher cam0 [frames=300] [fps=30] [width=1280] [height=720]
 *
 * Each frame is written in place into a loaned slot (zero copy), row by
 * row honouring the pitch, then committed.
 */
#define _POSIX_C_SOURCE 200809L
#include <cuframes.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s KEY [frames] [fps] [width] [height]\n", argv[0]);
    return 2;
  }
  const char *key = argv[1];
  long frames = argc > 2 ? atol(argv[2]) : 300;
  double fps = argc > 3 ? atof(argv[3]) : 30;
  uint32_t width = argc > 4 ? (uint32_t)atoi(argv[4]) : 1280, height = argc > 5 ? (uint32_t)atoi(argv[5]) : 720;

  cuframes_publisher_options_t opts;
  cuframes_publisher_options_init(&opts);
  opts.policy = CUFRAMES_POLICY_DROP_OLDEST; /* never stall on a slow reader */

  cuframes_publisher_t *pub = NULL;
  int rc = cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, width, height, &opts, &pub);
  if (rc != CUFRAMES_OK) {
    fprintf(stderr, "create %s: error %d (%s): %s\n", key, rc, cuframes_error_name(rc), cuframes_last_error_message());
    return rc;
  }
  printf("publishing %s: %ux%u NV12, %ld frames at %.0f fps\n", key, width, height, frames, fps);

  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < frames; i++) {
    cuframes_lease_t lease;
    rc = cuframes_publisher_loan(pub, &lease);
    if (rc != CUFRAMES_OK) {
      fprintf(stderr, "loan: %s\n", cuframes_last_error_message());
      break;
    }
    for (uint32_t r = 0; r < lease.rows[0]; r++) /* Y: a diagonal gradient that moves */
      for (uint32_t c = 0; c < lease.row_bytes[0]; c++) lease.planes[0][(size_t)r * lease.pitch[0] + c] = (uint8_t)(r + c + i);
    for (uint32_t r = 0; r < lease.rows[1]; r++) /* UV: neutral grey */
      memset(lease.planes[1] + (size_t)r * lease.pitch[1], 128, lease.row_bytes[1]);
    uint64_t seq;
    int64_t pts = (int64_t)(i * 1e9 / fps);
    rc = cuframes_publisher_commit(pub, pts, &seq);
    if (rc != CUFRAMES_OK) {
      fprintf(stderr, "commit: %s\n", cuframes_last_error_message());
      break;
    }
    /* Pace to fps. */
    struct timespec due = t0;
    double at = (i + 1) / fps;
    due.tv_sec += (time_t)at;
    due.tv_nsec += (long)((at - (double)(time_t)at) * 1e9);
    if (due.tv_nsec >= 1000000000L) due.tv_sec++, due.tv_nsec -= 1000000000L;
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL);
  }
  cuframes_publisher_destroy(pub); /* subscribers drain, then see CUFRAMES_ERR_CLOSED */
  return rc;
}
