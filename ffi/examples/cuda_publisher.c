/*
 * Minimal cuframes GPU publisher in C: a moving NV12 test pattern in GPU
 * memory.
 *
 *   cc cuda_publisher.c $(pkg-config --cflags --libs cuframes) -o cuda_publisher
 *   ./cuda_publisher cam0 [frames=300] [fps=30] [auto|ipc|vmm-fd] [device=0]
 *
 * Needs an NVIDIA driver at run time (or the driver simulator:
 * scripts/cuda-sim.sh), not at build time: no CUDA header is included.
 * Each frame is drawn in host memory and copied into a slot on the
 * publisher's stream (cuframes_cuda_publisher_publish_from_host). A decoder
 * would instead loan a slot (cuframes_cuda_publisher_loan), write the
 * planes at lease.device_ptr[p] with lease.pitch[p] on lease.stream, and
 * commit; see docs/c-api.md.
 */
#define _POSIX_C_SOURCE 200809L
#include <cuframes.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s KEY [frames] [fps] [auto|ipc|vmm-fd] [device]\n", argv[0]);
    return 2;
  }
  const char *key = argv[1];
  long frames = argc > 2 ? atol(argv[2]) : 300;
  double fps = argc > 3 ? atof(argv[3]) : 30;
  const char *mode = argc > 4 ? argv[4] : "auto";
  const uint32_t width = 640, height = 360;

  cuframes_cuda_publisher_options_t opts;
  cuframes_cuda_publisher_options_init(&opts);
  opts.export_mode = strcmp(mode, "ipc") == 0      ? CUFRAMES_CUDA_EXPORT_IPC
                     : strcmp(mode, "vmm-fd") == 0 ? CUFRAMES_CUDA_EXPORT_VMM_FD
                                                   : CUFRAMES_CUDA_EXPORT_AUTO;
  opts.device = argc > 5 ? (uint32_t)atoi(argv[5]) : 0;
  opts.policy = CUFRAMES_POLICY_DROP_OLDEST; /* never stall on a slow reader */

  cuframes_cuda_publisher_t *pub = NULL;
  int rc = cuframes_cuda_publisher_create(key, CUFRAMES_FORMAT_NV12, width, height, &opts, &pub);
  if (rc != CUFRAMES_OK) {
    fprintf(stderr, "create %s: error %d (%s): %s\n", key, rc, cuframes_error_name(rc), cuframes_last_error_message());
    return rc;
  }
  printf("publishing %s on GPU %u (%s): %ux%u NV12, %ld frames at %.0f fps\n", key, opts.device,
         cuframes_cuda_publisher_export_mode(pub) == CUFRAMES_CUDA_EXPORT_IPC ? "ipc" : "vmm-fd", width, height,
         frames, fps);

  size_t len = cuframes_cuda_publisher_packed_size(pub); /* width*height*3/2: rows back to back */
  uint8_t *packed = malloc(len);
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long i = 0; i < frames; i++) {
    for (uint32_t r = 0; r < height; r++) /* Y: a diagonal gradient that moves */
      for (uint32_t c = 0; c < width; c++) packed[(size_t)r * width + c] = (uint8_t)(r + c + i);
    memset(packed + (size_t)width * height, 128, (size_t)width * height / 2); /* UV: neutral grey */
    uint64_t seq;
    rc = cuframes_cuda_publisher_publish_from_host(pub, packed, len, (int64_t)(i * 1e9 / fps), &seq);
    if (rc != CUFRAMES_OK) {
      fprintf(stderr, "publish: %s\n", cuframes_last_error_message());
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
  free(packed);
  cuframes_cuda_publisher_destroy(pub); /* finishes the GPU work; subscribers drain, then see CLOSED */
  return rc;
}
