/*
 * Minimal cuframes GPU subscriber in C: takes frames that live in GPU
 * memory and prints where they are.
 *
 *   cc cuda_subscriber.c $(pkg-config --cflags --libs cuframes) -o cuda_subscriber
 *   ./cuda_subscriber cam0 [frames=0 (until closed)] [queue|newest]
 *
 * A frame is a device pointer per plane (CUdeviceptr values) with its
 * pitch, valid until cuframes_cuda_frame_release(). Work that reads it is
 * enqueued on the consumer stream (here the legacy default stream, 0):
 * cuframes_cuda_subscriber_next made that stream wait for the publisher's
 * writes, and the release is ordered after what was enqueued before it.
 * This example has no kernels: every 10th frame it copies the picture to
 * host memory (cuframes_cuda_frame_copy_to_host, which waits for the GPU)
 * to print a luma sample.
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

  cuframes_cuda_subscriber_t *sub = NULL;
  int rc = cuframes_cuda_subscriber_create(key, "c-gpu-example", mode, CUFRAMES_CUDA_DEVICE_AUTO,
                                           0 /* consumer stream: legacy default */, &opts, &sub);
  if (rc != CUFRAMES_OK) {
    fprintf(stderr, "connect %s: error %d (%s): %s\n", key, rc, cuframes_error_name(rc), cuframes_last_error_message());
    return rc;
  }
  printf("reading %s on GPU %d (%s)\n", key, cuframes_cuda_subscriber_device(sub),
         cuframes_cuda_subscriber_export_mode(sub) == CUFRAMES_CUDA_EXPORT_IPC ? "ipc" : "vmm-fd");
  uint8_t *host = NULL;
  size_t host_len = 0;
  long got = 0;
  while (want == 0 || got < want) {
    cuframes_cuda_frame_t *frame = NULL;
    rc = cuframes_cuda_subscriber_next(sub, 1000, &frame);
    if (rc == CUFRAMES_ERR_TIMEOUT) continue;
    if (rc != CUFRAMES_OK) break; /* CLOSED: the publisher is done; PUBLISHER_GONE: it died */
    uint32_t w = cuframes_cuda_frame_width(frame), h = cuframes_cuda_frame_height(frame);
    printf("seq %llu pts %.3f s %ux%u Y at %#llx pitch %u, UV at %#llx pitch %u",
           (unsigned long long)cuframes_cuda_frame_seq(frame), cuframes_cuda_frame_pts_ns(frame) / 1e9, w, h,
           (unsigned long long)cuframes_cuda_frame_device_ptr(frame, 0), cuframes_cuda_frame_pitch(frame, 0),
           (unsigned long long)cuframes_cuda_frame_device_ptr(frame, 1), cuframes_cuda_frame_pitch(frame, 1));
    /* launch_kernel(y, pitch, w, h, stream 0) would go here */
    if (got % 10 == 0) {
      size_t len = (size_t)w * h * 3 / 2; /* NV12, packed */
      if (len != host_len) host = realloc(host, host_len = len);
      if (host && cuframes_cuda_frame_copy_to_host(frame, host, len) == CUFRAMES_OK)
        printf(" luma[0] %u", host[0]);
    }
    printf("\n");
    cuframes_cuda_frame_release(frame); /* ordered after the work enqueued on the consumer stream */
    got++;
  }
  cuframes_subscriber_stats_t st;
  cuframes_cuda_subscriber_stats(sub, &st);
  printf("%ld frames, %llu skipped or dropped (%s)\n", got, (unsigned long long)st.dropped,
         rc == CUFRAMES_OK ? "done" : cuframes_strerror(rc));
  cuframes_cuda_subscriber_destroy(sub);
  free(host);
  return rc == CUFRAMES_OK || rc == CUFRAMES_ERR_CLOSED ? 0 : rc;
}
