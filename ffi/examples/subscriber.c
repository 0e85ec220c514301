/*
 * Minimal cuframes subscriber in C: reads frames in place and prints them.
 *
 *   cc subscriber.c $(pkg-config --cflags --libs cuframes) -o subscriber
 *   ./subscriber cam0 [frames=0 (until closed)] [queue|newest]
 *
 * A frame points into shared memory: nothing is copied, and its slot is
 * kept for us until cuframes_frame_release().
 */
#include <cuframes.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s KEY [frames] [queue|newest]\n", argv[0]);
    return 2;
  }
  const char *key = argv[1];
  long want = argc > 2 ? atol(argv[2]) : 0;
  uint32_t mode = argc > 3 && strcmp(argv[3], "queue") == 0 ? CUFRAMES_MODE_QUEUE : CUFRAMES_MODE_NEWEST_ONLY;

  cuframes_subscriber_options_t opts;
  cuframes_subscriber_options_init(&opts);
  opts.connect_timeout_ms = 5000; /* the publisher may start a little later */

  cuframes_subscriber_t *sub = NULL;
  int rc = cuframes_subscriber_create(key, "c-example", mode, &opts, &sub);
  if (rc != CUFRAMES_OK) {
    fprintf(stderr, "connect %s: error %d (%s): %s\n", key, rc, cuframes_error_name(rc), cuframes_last_error_message());
    return rc;
  }
  long got = 0;
  while (want == 0 || got < want) {
    cuframes_frame_t *frame = NULL;
    rc = cuframes_subscriber_next(sub, 1000, &frame);
    if (rc == CUFRAMES_ERR_TIMEOUT) continue;
    if (rc != CUFRAMES_OK) break; /* CLOSED: the publisher is done; PUBLISHER_GONE: it died */
    const uint8_t *y = cuframes_frame_plane_data(frame, 0);
    uint32_t pitch = cuframes_frame_pitch(frame, 0), h = cuframes_frame_height(frame), w = cuframes_frame_width(frame);
    unsigned long sum = 0;
    for (uint32_t r = 0; r < h; r += 8) sum += y[(size_t)r * pitch + r % w]; /* a few luma samples */
    printf("seq %llu pts %.3f s %ux%u pitch %u/%u luma sample %lu\n", (unsigned long long)cuframes_frame_seq(frame),
           cuframes_frame_pts_ns(frame) / 1e9, w, h, pitch, cuframes_frame_pitch(frame, 1), sum / ((h + 7) / 8));
    cuframes_frame_release(frame);
    got++;
  }
  cuframes_subscriber_stats_t st;
  cuframes_subscriber_stats(sub, &st);
  printf("%ld frames, %llu skipped or dropped, last latency %.1f us (%s)\n", got, (unsigned long long)st.dropped,
         st.last_latency_ns / 1e3, rc == CUFRAMES_OK ? "done" : cuframes_strerror(rc));
  cuframes_subscriber_destroy(sub);
  return rc == CUFRAMES_OK || rc == CUFRAMES_ERR_CLOSED ? 0 : rc;
}
