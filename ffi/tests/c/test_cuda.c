/*
 * Tests of the GPU calls of the cuframes C ABI (cuframes_cuda_*), run by
 * scripts/test-c.sh under the CUDA driver simulator (scripts/cuda-sim.sh,
 * docs/cuda-sim.md), or on a machine with an NVIDIA GPU:
 *
 *   test_cuda                          all tests; publishers and subscribers
 *                                      run as separate processes (this
 *                                      program, re-executed)
 *   test_cuda publish KEY N MODE SUBS  child: CUDA publisher (MODE ipc,
 *                                      vmm-fd or auto), waits for SUBS
 *                                      subscribers, publishes N frames
 *   test_cuda subscribe KEY N QMODE    child: CUDA subscriber (QMODE queue or
 *                                      newest), checks every byte of what it
 *                                      reads
 *   test_cuda bench N                  per-frame cost of the C GPU calls
 *
 * Without a driver it prints "skipped" and succeeds, unless CUFRAMES_GPU=1
 * (which scripts/cuda-sim.sh sets): then it fails.
 *
 * Frames are written four ways (the frame's seq picks one): the C ABI's
 * copy from host memory; in place on the lease's stream with the driver's
 * own cuMemcpy2DAsync; the C ABI's copy from device memory (a staging
 * buffer written on another stream); and in place on a stream given with
 * cuframes_cuda_publisher_set_stream. They are read back three ways: the C
 * ABI's copy to host; the driver's cuMemcpy2DAsync on the consumer stream
 * into page-locked memory, released before the copy has run; the same on
 * a second stream given to cuframes_cuda_frame_use_on. The simulator's
 * streams run with random delays, so a release or a publish that is not
 * ordered on the GPU shows up as wrong bytes.
 *
 * The driver is reached through dlopen("libcuda.so.1"): no CUDA headers or
 * toolkit are needed to build this file.
 */
#define _GNU_SOURCE
#include <cuframes.h>

#include "check.h"
#include "children.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { W = 320, H = 240 };
#define PACKED ((size_t)W * H * 3 / 2)

/* ---- the few driver calls this test makes itself ------------------------ */

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef unsigned long long CUdeviceptr;
enum { CU_MEMORYTYPE_HOST = 1, CU_MEMORYTYPE_DEVICE = 2, CU_STREAM_NON_BLOCKING = 1 };
typedef struct {
  size_t srcXInBytes, srcY;
  int srcMemoryType;
  const void *srcHost;
  CUdeviceptr srcDevice;
  void *srcArray;
  size_t srcPitch;
  size_t dstXInBytes, dstY;
  int dstMemoryType;
  void *dstHost;
  CUdeviceptr dstDevice;
  void *dstArray;
  size_t dstPitch;
  size_t WidthInBytes, Height;
} CUDA_MEMCPY2D;

static struct {
  CUresult (*Init)(unsigned);
  CUresult (*DeviceGet)(CUdevice *, int);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*DevicePrimaryCtxRelease)(CUdevice);
  CUresult (*CtxPushCurrent)(CUcontext);
  CUresult (*CtxPopCurrent)(CUcontext *);
  CUresult (*StreamCreate)(CUstream *, unsigned);
  CUresult (*StreamDestroy)(CUstream);
  CUresult (*StreamSynchronize)(CUstream);
  CUresult (*MemAlloc)(CUdeviceptr *, size_t);
  CUresult (*MemFree)(CUdeviceptr);
  CUresult (*MemAllocHost)(void **, size_t);
  CUresult (*MemFreeHost)(void *);
  CUresult (*Memcpy2DAsync)(const CUDA_MEMCPY2D *, CUstream);
  CUresult (*GetErrorName)(CUresult, const char **);
} cu;

static CUdevice cu_dev;
static CUcontext cu_ctx;

static const char *cu_name(CUresult rc) {
  const char *s = NULL;
  if (cu.GetErrorName && cu.GetErrorName(rc, &s) == 0 && s) return s;
  return "CUDA_ERROR_?";
}

/* Loads the driver and makes device 0's primary context (the one the
 * library uses) current on this thread. 0 on success. */
static int cu_load(void) {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) lib = dlopen("libcuda.so", RTLD_NOW);
  if (!lib) {
    fprintf(stderr, "dlopen libcuda: %s\n", dlerror());
    return -1;
  }
  struct {
    void **fn;
    const char *name;
  } syms[] = {
      {(void **)&cu.Init, "cuInit"},
      {(void **)&cu.DeviceGet, "cuDeviceGet"},
      {(void **)&cu.DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain"},
      {(void **)&cu.DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2"},
      {(void **)&cu.CtxPushCurrent, "cuCtxPushCurrent_v2"},
      {(void **)&cu.CtxPopCurrent, "cuCtxPopCurrent_v2"},
      {(void **)&cu.StreamCreate, "cuStreamCreate"},
      {(void **)&cu.StreamDestroy, "cuStreamDestroy_v2"},
      {(void **)&cu.StreamSynchronize, "cuStreamSynchronize"},
      {(void **)&cu.MemAlloc, "cuMemAlloc_v2"},
      {(void **)&cu.MemFree, "cuMemFree_v2"},
      {(void **)&cu.MemAllocHost, "cuMemAllocHost_v2"},
      {(void **)&cu.MemFreeHost, "cuMemFreeHost"},
      {(void **)&cu.Memcpy2DAsync, "cuMemcpy2DAsync_v2"},
      {(void **)&cu.GetErrorName, "cuGetErrorName"},
  };
  for (size_t i = 0; i < sizeof syms / sizeof *syms; i++) {
    /* POSIX: dlsym's result converted through an object pointer. */
    *syms[i].fn = dlsym(lib, syms[i].name);
    if (!*syms[i].fn) {
      fprintf(stderr, "libcuda has no %s\n", syms[i].name);
      return -1;
    }
  }
  CUresult rc;
  if ((rc = cu.Init(0)) || (rc = cu.DeviceGet(&cu_dev, 0)) || (rc = cu.DevicePrimaryCtxRetain(&cu_ctx, cu_dev)) ||
      (rc = cu.CtxPushCurrent(cu_ctx))) {
    fprintf(stderr, "CUDA setup: %s\n", cu_name(rc));
    return -1;
  }
  return 0;
}

static void cu_unload(void) {
  CUcontext popped;
  cu.CtxPopCurrent(&popped);
  cu.DevicePrimaryCtxRelease(cu_dev);
}

static CUstream new_stream(unsigned flags) {
  CUstream s = NULL;
  CUresult rc = cu.StreamCreate(&s, flags);
  if (rc) fprintf(stderr, "cuStreamCreate: %s\n", cu_name(rc));
  return s;
}

/* ---- checks and the frame pattern ---------------------------------------- */

#define CHECK_CU(expr)                                                           \
  do {                                                                           \
    CUresult cu_ = (expr);                                                       \
    CHECK(cu_ == 0, "%s = %s", #expr, cu_name(cu_));                             \
  } while (0)

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* NV12 planes of a tightly packed frame. */
static const uint32_t plane_rows[2] = {H, H / 2};
static size_t plane_offset(unsigned p) { return p ? (size_t)W * H : 0; }

/* Packed NV12 frame `seq`: every byte is a function of (seq, plane, row,
 * column), and the first 8 bytes hold the seq. */
static void fill_packed(uint64_t seq, uint8_t *packed) {
  for (unsigned p = 0; p < 2; p++)
    for (unsigned r = 0; r < plane_rows[p]; r++)
      for (unsigned c = 0; c < W; c++)
        packed[plane_offset(p) + (size_t)r * W + c] = (uint8_t)(seq * 31u + p * 7u + r * 3u + c);
  memcpy(packed, &seq, sizeof seq);
}

/* 0 when `got` is packed frame `seq`; otherwise says where it differs. */
static int compare_packed(const char *who, uint64_t seq, const uint8_t *got) {
  static uint8_t want[PACKED];
  fill_packed(seq, want);
  if (memcmp(want, got, PACKED) == 0) return 0;
  size_t i = 0;
  while (want[i] == got[i]) i++;
  fprintf(stderr, "%s: frame %llu differs at byte %zu: %u, want %u\n", who, (unsigned long long)seq, i, got[i],
          want[i]);
  return -1;
}

/* Enqueues on `stream` copies between packed host memory and pitched
 * planes in device memory (to_device: host -> device). */
static CUresult copy_planes(int to_device, uint8_t *host, const uint64_t *dev, const uint32_t *pitch,
                            CUstream stream) {
  for (unsigned p = 0; p < 2; p++) {
    CUDA_MEMCPY2D c;
    memset(&c, 0, sizeof c);
    if (to_device) {
      c.srcMemoryType = CU_MEMORYTYPE_HOST, c.srcHost = host + plane_offset(p), c.srcPitch = W;
      c.dstMemoryType = CU_MEMORYTYPE_DEVICE, c.dstDevice = dev[p], c.dstPitch = pitch[p];
    } else {
      c.srcMemoryType = CU_MEMORYTYPE_DEVICE, c.srcDevice = dev[p], c.srcPitch = pitch[p];
      c.dstMemoryType = CU_MEMORYTYPE_HOST, c.dstHost = host + plane_offset(p), c.dstPitch = W;
    }
    c.WidthInBytes = W;
    c.Height = plane_rows[p];
    CUresult rc = cu.Memcpy2DAsync(&c, stream);
    if (rc) return rc;
  }
  return 0;
}

static uint32_t export_mode_of(const char *name) {
  if (strcmp(name, "ipc") == 0) return CUFRAMES_CUDA_EXPORT_IPC;
  if (strcmp(name, "vmm-fd") == 0) return CUFRAMES_CUDA_EXPORT_VMM_FD;
  return CUFRAMES_CUDA_EXPORT_AUTO;
}

/* ---- child: publisher ------------------------------------------------------ */

DEFINE_SUBSCRIBERS_OF(cuframes_cuda_publisher_stats)

#define FAILP(...)                                                               \
  do {                                                                           \
    fprintf(stderr, "gpu-publish: " __VA_ARGS__);                                \
    fprintf(stderr, " [%s]\n", cuframes_last_error_message());                   \
    bad = 1;                                                                     \
    goto out;                                                                    \
  } while (0)

static int child_publish(const char *key, unsigned n, const char *mode, unsigned subs) {
  if (cu_load()) return 3;
  int bad = 0, rc;
  cuframes_cuda_publisher_options_t o;
  cuframes_cuda_publisher_options_init(&o);
  o.export_mode = export_mode_of(mode);
  o.slot_count = 4; /* slots are reused often: ordering mistakes show */
  o.block_timeout_ms = 30000;
  o.close_grace_ms = 20000;
  cuframes_cuda_publisher_t *pub = NULL;
  CUstream side = new_stream(CU_STREAM_NON_BLOCKING), user = new_stream(0);
  CUdeviceptr staging = 0;
  uint8_t *packed = malloc(PACKED);
  if ((rc = cuframes_cuda_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &o, &pub))) FAILP("create: %d", rc);
  if (o.export_mode != CUFRAMES_CUDA_EXPORT_AUTO && cuframes_cuda_publisher_export_mode(pub) != o.export_mode)
    FAILP("export mode %u, asked for %s", cuframes_cuda_publisher_export_mode(pub), mode);
  if (cuframes_cuda_publisher_packed_size(pub) != PACKED) FAILP("packed size %zu", cuframes_cuda_publisher_packed_size(pub));
  const uintptr_t own = cuframes_cuda_publisher_stream(pub);
  /* A staging picture in device memory, pitched like a decoder's surface. */
  const uint32_t spitch[2] = {W + 64, W + 64};
  if (cu.MemAlloc(&staging, (size_t)spitch[0] * (H + H / 2))) FAILP("cuMemAlloc");
  const uint64_t sptr[2] = {staging, staging + (uint64_t)spitch[0] * H};

  unsigned came = wait_subscribers(subscribers_of, pub, subs);
  if (came < subs) FAILP("only %u of %u subscribers came", came, subs);

  for (uint64_t seq = 1; seq <= n; seq++) {
    fill_packed(seq, packed);
    uint64_t got = 0;
    cuframes_cuda_lease_t lease;
    CUresult cr;
    switch (seq % 4) {
    case 1: /* the C ABI's copy from host memory */
      if ((rc = cuframes_cuda_publisher_publish_from_host(pub, packed, PACKED, (int64_t)seq * 1000, &got)))
        FAILP("publish_from_host %llu: %d", (unsigned long long)seq, rc);
      break;
    case 2: /* in place, as a decoder would: our own copy on lease.stream */
      if ((rc = cuframes_cuda_publisher_loan(pub, &lease))) FAILP("loan %llu: %d", (unsigned long long)seq, rc);
      if (lease.seq != seq || lease.stream != own || lease.plane_count != 2 || lease.pitch[0] % 512 ||
          lease.row_bytes[1] != W || lease.rows[1] != H / 2 || lease.device != 0 || lease.device_ptr[2] != 0)
        FAILP("lease %llu: seq %llu stream %#lx pitch %u", (unsigned long long)seq, (unsigned long long)lease.seq,
              (unsigned long)lease.stream, lease.pitch[0]);
      /* From pageable memory the driver stages the source at the call. */
      if ((cr = copy_planes(1, packed, lease.device_ptr, lease.pitch, (CUstream)lease.stream)))
        FAILP("cuMemcpy2DAsync: %s", cu_name(cr));
      if ((rc = cuframes_cuda_publisher_commit(pub, (int64_t)seq * 1000, &got))) FAILP("commit: %d", rc);
      break;
    case 3: /* the C ABI's copy from device memory written on another stream */
      /* The previous copy out of the staging buffer ran on the publisher's
       * stream: let it finish before the buffer is rewritten. */
      if ((cr = cu.StreamSynchronize((CUstream)cuframes_cuda_publisher_stream(pub))))
        FAILP("cuStreamSynchronize: %s", cu_name(cr));
      if ((cr = copy_planes(1, packed, sptr, spitch, side))) FAILP("staging copy: %s", cu_name(cr));
      if ((rc = cuframes_cuda_publisher_publish_from_device(pub, sptr, spitch, 2, (uintptr_t)side,
                                                            (int64_t)seq * 1000, &got)))
        FAILP("publish_from_device %llu: %d", (unsigned long long)seq, rc);
      break;
    default: /* in place on a stream of ours, given with set_stream */
      if ((rc = cuframes_cuda_publisher_set_stream(pub, (uintptr_t)user))) FAILP("set_stream: %d", rc);
      if ((rc = cuframes_cuda_publisher_loan(pub, &lease))) FAILP("loan %llu: %d", (unsigned long long)seq, rc);
      if (lease.stream != (uintptr_t)user) FAILP("lease stream %#lx, not ours", (unsigned long)lease.stream);
      if (cuframes_cuda_publisher_set_stream(pub, own) != CUFRAMES_ERR_INVALID_ARGUMENT)
        FAILP("set_stream while a slot is loaned was accepted");
      if ((cr = copy_planes(1, packed, lease.device_ptr, lease.pitch, user))) FAILP("cuMemcpy2DAsync: %s", cu_name(cr));
      if ((rc = cuframes_cuda_publisher_commit(pub, (int64_t)seq * 1000, &got))) FAILP("commit: %d", rc);
      /* Back to the publisher's own stream, after ours has finished (work
       * on the old stream is not ordered before the new one). */
      if ((cr = cu.StreamSynchronize(user))) FAILP("cuStreamSynchronize: %s", cu_name(cr));
      if ((rc = cuframes_cuda_publisher_set_stream(pub, own))) FAILP("set_stream back: %d", rc);
      break;
    }
    if (got != seq) FAILP("frame %llu published as %llu", (unsigned long long)seq, (unsigned long long)got);
    if (seq % 16 == 0) usleep(1000); /* let the newest-only reader see some */
  }
out:
  cuframes_cuda_publisher_destroy(pub); /* finishes the stream, closes the ring */
  if (staging) cu.MemFree(staging);
  if (side) cu.StreamDestroy(side);
  if (user) cu.StreamDestroy(user);
  free(packed);
  cu_unload();
  return bad;
}

/* ---- child: subscriber ----------------------------------------------------- */

static int child_subscribe(const char *key, unsigned n, const char *qmode) {
  if (cu_load()) return 3;
  int queue = strcmp(qmode, "queue") == 0, bad = 0, rc;
  CUstream consumer = new_stream(CU_STREAM_NON_BLOCKING), reader = new_stream(CU_STREAM_NON_BLOCKING);
  uint8_t *pinned = NULL, *host = malloc(PACKED);
  if (cu.MemAllocHost((void **)&pinned, PACKED)) {
    fprintf(stderr, "cuMemAllocHost failed\n");
    return 3;
  }
  cuframes_subscriber_options_t so = subscriber_options(30000);
  cuframes_cuda_subscriber_t *sub = NULL;
  rc = cuframes_cuda_subscriber_create(key, queue ? "c-gpu-queue" : "c-gpu-newest",
                                       queue ? CUFRAMES_MODE_QUEUE : CUFRAMES_MODE_NEWEST_ONLY,
                                       CUFRAMES_CUDA_DEVICE_AUTO, (uintptr_t)consumer, &so, &sub);
  if (rc) return failed("gpu-subscribe", "create", 10 + rc);
  if (cuframes_cuda_subscriber_consumer_stream(sub) != (uintptr_t)consumer || cuframes_cuda_subscriber_device(sub) != 0) {
    fprintf(stderr, "gpu-subscribe: consumer stream / device\n");
    bad = 1;
  }
  uint64_t last = 0, got = 0, ways[3] = {0, 0, 0};
  for (;;) {
    cuframes_cuda_frame_t *f = NULL;
    rc = cuframes_cuda_subscriber_next(sub, 30000, &f);
    if (rc == CUFRAMES_ERR_CLOSED) break;
    if (rc) {
      bad = failed("gpu-subscribe", "next", 1);
      break;
    }
    uint64_t seq = cuframes_cuda_frame_seq(f);
    if (queue ? seq != last + 1 : seq <= last) {
      fprintf(stderr, "gpu-subscribe: seq %llu after %llu\n", (unsigned long long)seq, (unsigned long long)last);
      bad = 1;
    }
    uint64_t ptr[2] = {cuframes_cuda_frame_device_ptr(f, 0), cuframes_cuda_frame_device_ptr(f, 1)};
    uint32_t pitch[2] = {cuframes_cuda_frame_pitch(f, 0), cuframes_cuda_frame_pitch(f, 1)};
    if (cuframes_cuda_frame_pts_ns(f) != (int64_t)seq * 1000 || cuframes_cuda_frame_width(f) != W ||
        cuframes_cuda_frame_height(f) != H || cuframes_cuda_frame_format(f) != CUFRAMES_FORMAT_NV12 ||
        cuframes_cuda_frame_plane_count(f) != 2 || cuframes_cuda_frame_device(f) != 0 || ptr[0] == 0 ||
        ptr[1] <= ptr[0] || pitch[0] < W || pitch[0] % 512 || cuframes_cuda_frame_rows(f, 1) != H / 2 ||
        cuframes_cuda_frame_row_bytes(f, 0) != W || cuframes_cuda_frame_commit_ns(f) == 0 ||
        cuframes_cuda_frame_consumer_stream(f) != (uintptr_t)consumer || cuframes_cuda_frame_device_ptr(f, 2) != 0) {
      fprintf(stderr, "gpu-subscribe: frame %llu accessors are wrong\n", (unsigned long long)seq);
      bad = 1;
    }
    CUresult cr = 0;
    int way = (int)(seq % 3);
    if (way == 0) {
      /* The C ABI's copy to host (synchronous). */
      rc = cuframes_cuda_frame_copy_to_host(f, host, PACKED);
      cuframes_cuda_frame_release(f);
      if (rc) {
        fprintf(stderr, "gpu-subscribe: copy_to_host: %s\n", cuframes_last_error_message());
        bad = 1;
      } else if (compare_packed("gpu-subscribe (copy_to_host)", seq, host))
        bad = 1;
    } else {
      /* Our own asynchronous read into page-locked memory, on the consumer
       * stream or on another stream given to use_on; the frame is released
       * before the read has run: the release must wait for it. */
      CUstream s = consumer;
      if (way == 2) {
        s = reader;
        if ((rc = cuframes_cuda_frame_use_on(f, (uintptr_t)reader))) {
          fprintf(stderr, "gpu-subscribe: use_on: %s\n", cuframes_last_error_message());
          bad = 1;
        }
      }
      memset(pinned, 0, PACKED);
      cr = copy_planes(0, pinned, ptr, pitch, s);
      cuframes_cuda_frame_release(f);
      if (!cr) cr = cu.StreamSynchronize(s);
      if (cr) {
        fprintf(stderr, "gpu-subscribe: read: %s\n", cu_name(cr));
        bad = 1;
      } else if (compare_packed(way == 1 ? "gpu-subscribe (consumer stream)" : "gpu-subscribe (use_on stream)", seq,
                                pinned))
        bad = 1;
    }
    ways[way]++;
    last = seq;
    got++;
    if (bad) break;
  }
  cuframes_subscriber_stats_t st;
  cuframes_cuda_subscriber_stats(sub, &st);
  uint32_t export_mode = cuframes_cuda_subscriber_export_mode(sub);
  cuframes_cuda_subscriber_destroy(sub); /* synchronises the consumer stream */
  bad |= check_received("gpu-subscribe", "frames", queue, got, last, n, st.dropped);
  printf("  subscriber (%s, %s): %llu frames, last seq %llu, every byte verified (%llu by copy_to_host, %llu on the "
         "consumer stream, %llu on a use_on stream)\n",
         qmode, export_mode == CUFRAMES_CUDA_EXPORT_IPC ? "ipc" : "vmm-fd", (unsigned long long)got,
         (unsigned long long)last, (unsigned long long)ways[0], (unsigned long long)ways[1],
         (unsigned long long)ways[2]);
  cu.MemFreeHost(pinned);
  cu.StreamDestroy(consumer);
  cu.StreamDestroy(reader);
  free(host);
  cu_unload();
  return bad;
}

/* ---- child: per-frame cost ------------------------------------------------- */

static int child_bench(long n) {
  char key[64];
  make_key(key, sizeof key, "bench");
  cuframes_cuda_publisher_t *pub = NULL;
  cuframes_cuda_subscriber_t *sub = NULL;
  if (cuframes_cuda_publisher_create(key, CUFRAMES_FORMAT_NV12, 1920, 1080, NULL, &pub) ||
      cuframes_cuda_subscriber_create(key, "bench", CUFRAMES_MODE_QUEUE, CUFRAMES_CUDA_DEVICE_AUTO, 0, NULL, &sub)) {
    fprintf(stderr, "bench: %s\n", cuframes_last_error_message());
    return 1;
  }
  long warm = n / 10;
  uint64_t in_loan = 0, in_next = 0, sum = 0;
  for (long i = -warm; i < n; i++) {
    if (i == 0) in_loan = in_next = 0;
    cuframes_cuda_lease_t lease;
    cuframes_cuda_frame_t *f;
    uint64_t a = now_ns();
    if (cuframes_cuda_publisher_loan(pub, &lease) || cuframes_cuda_publisher_commit(pub, i, NULL)) {
      fprintf(stderr, "bench: publish: %s\n", cuframes_last_error_message());
      return 1;
    }
    uint64_t b = now_ns();
    if (cuframes_cuda_subscriber_next(sub, 1000, &f)) {
      fprintf(stderr, "bench: next: %s\n", cuframes_last_error_message());
      return 1;
    }
    sum += cuframes_cuda_frame_seq(f) + cuframes_cuda_frame_device_ptr(f, 0);
    cuframes_cuda_frame_release(f);
    uint64_t c = now_ns();
    in_loan += b - a;
    in_next += c - b;
  }
  printf("C    GPU API, 1080p NV12, %ld frames: %.0f ns per loan+commit, %.0f ns per next+release "
         "(%s; checksum %llu)\n",
         n, (double)in_loan / n, (double)in_next / n,
         getenv("CUFRAMES_GPU_BACKEND") && strcmp(getenv("CUFRAMES_GPU_BACKEND"), "sim") == 0
             ? "simulator: call overhead only, not a GPU figure"
             : "GPU",
         (unsigned long long)(sum & 0xff));
  cuframes_cuda_subscriber_destroy(sub);
  cuframes_cuda_publisher_destroy(pub);
  remove_lock(key);
  return 0;
}

/* ---- tests ------------------------------------------------------------------ */

/* A C publisher process and two C subscriber processes (queue, newest-only)
 * in export mode `mode`. */
static void round_trip(const char *mode) {
  char key[64], n[] = "60", subs[] = "2";
  char what[32];
  snprintf(what, sizeof what, "gpu-%s", mode);
  make_key(key, sizeof key, what);
  char *pa[] = {(char *)self_path, "publish", key, n, (char *)mode, subs, NULL};
  char *qa[] = {(char *)self_path, "subscribe", key, n, "queue", NULL};
  char *na[] = {(char *)self_path, "subscribe", key, n, "newest", NULL};
  char who[40];
  snprintf(who, sizeof who, "%s: ", mode);
  run_children(who, pa, qa, na);
  CHECK(!file_exists("cuframes.%s", key), "segment of %s left behind", key);
  CHECK(!file_exists(".cuframes.%s.sock", key), "socket of %s left behind", key);
  remove_lock(key);
}

static void test_round_trip_ipc(void) { round_trip("ipc"); }
static void test_round_trip_vmm_fd(void) { round_trip("vmm-fd"); }

static void test_driver(void) {
  int version = 0;
  uint32_t count = 0;
  CHECK(cuframes_cuda_available() == 1, "no CUDA driver: %s", cuframes_last_error_message());
  CHECK_RC(cuframes_cuda_driver_version(&version), CUFRAMES_OK);
  CHECK(version >= 10020, "driver version %d", version);
  CHECK_RC(cuframes_cuda_device_count(&count), CUFRAMES_OK);
  CHECK(count >= 1, "%u devices", count);
  CHECK_RC(cuframes_cuda_driver_version(NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
}

/* The calls that fail, with a driver: codes and messages. */
static void test_errors(void) {
  char key[64];
  make_key(key, sizeof key, "gpu-err");
  cuframes_cuda_publisher_options_t o;
  cuframes_cuda_publisher_options_init(&o);
  CHECK(o.device == 0 && o.export_mode == CUFRAMES_CUDA_EXPORT_AUTO && o.pitch_align == 512 && o.slot_count == 8 &&
            o.policy == CUFRAMES_POLICY_BLOCK && o.close_grace_ms == 2000 && o.evict_lagging == 1,
        "CUDA publisher defaults");
  cuframes_cuda_publisher_t *pub = (cuframes_cuda_publisher_t *)&pub;

  /* Wrong device index: a driver error, nothing left behind. */
  o.device = 99;
  CHECK_RC(cuframes_cuda_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &o, &pub), CUFRAMES_ERR_CUDA);
  CHECK(pub == NULL, "out not cleared on failure");
  CHECK(strstr(cuframes_last_error_message(), "device 99") != NULL, "%s", cuframes_last_error_message());
  CHECK(!file_exists("cuframes.%s", key), "segment of %s left behind", key);
  cuframes_cuda_publisher_options_init(&o);
  o.export_mode = 9;
  CHECK_RC(cuframes_cuda_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &o, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_cuda_publisher_options_init(&o);
  o.pitch_align = 64;
  CHECK_RC(cuframes_cuda_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &o, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_create(key, 99, W, H, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_create("../x", CUFRAMES_FORMAT_NV12, W, H, NULL, &pub),
           CUFRAMES_ERR_INVALID_ARGUMENT);

  cuframes_cuda_publisher_options_init(&o);
  o.export_mode = CUFRAMES_CUDA_EXPORT_VMM_FD;
  o.block_timeout_ms = 50;
  CHECK_RC(cuframes_cuda_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &o, &pub), CUFRAMES_OK);
  if (!pub) return;
  cuframes_cuda_publisher_t *second = NULL;
  CHECK_RC(cuframes_cuda_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &o, &second),
           CUFRAMES_ERR_ALREADY_EXISTS);

  /* The host-only subscriber call on a GPU stream. */
  cuframes_subscriber_options_t so = subscriber_options(200);
  cuframes_subscriber_t *host = (cuframes_subscriber_t *)&host;
  CHECK_RC(cuframes_subscriber_create(key, "host", CUFRAMES_MODE_QUEUE, &so, &host), CUFRAMES_ERR_INCOMPATIBLE);
  CHECK(host == NULL, "out not cleared on failure");
  CHECK(strstr(cuframes_last_error_message(), "CUDA subscriber") != NULL, "%s", cuframes_last_error_message());

  /* Wrong device index, invalid stream handles. */
  cuframes_cuda_subscriber_t *sub = (cuframes_cuda_subscriber_t *)&sub;
  uint32_t count = 0;
  cuframes_cuda_device_count(&count);
  if (count >= 2) {
    CHECK_RC(cuframes_cuda_subscriber_create(key, "dev1", CUFRAMES_MODE_QUEUE, 1, 0, &so, &sub), CUFRAMES_ERR_CUDA);
    CHECK(strstr(cuframes_last_error_message(), "not the publisher's GPU") != NULL, "%s",
          cuframes_last_error_message());
  }
  CHECK_RC(cuframes_cuda_subscriber_create(key, "dev99", CUFRAMES_MODE_QUEUE, 99, 0, &so, &sub), CUFRAMES_ERR_CUDA);
  CHECK(strstr(cuframes_last_error_message(), "device 99") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_cuda_subscriber_create(key, "dev-2", CUFRAMES_MODE_QUEUE, -2, 0, &so, &sub),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_subscriber_create(key, "ptds", CUFRAMES_MODE_QUEUE, CUFRAMES_CUDA_DEVICE_AUTO,
                                           CUFRAMES_CUDA_STREAM_PER_THREAD, &so, &sub),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(strstr(cuframes_last_error_message(), "per-thread") != NULL, "%s", cuframes_last_error_message());
  CHECK(sub == NULL, "out not cleared on failure");
  cuframes_publisher_stats_t pst;
  CHECK_RC(cuframes_cuda_publisher_stats(pub, &pst), CUFRAMES_OK);
  CHECK(pst.subscribers == 0, "refused subscribers left %u records", pst.subscribers);

  CHECK_RC(cuframes_cuda_subscriber_create(key, "ok", CUFRAMES_MODE_QUEUE, CUFRAMES_CUDA_DEVICE_AUTO,
                                           CUFRAMES_CUDA_STREAM_LEGACY, &so, &sub),
           CUFRAMES_OK);
  if (!sub) {
    cuframes_cuda_publisher_destroy(pub);
    return;
  }
  CHECK(cuframes_cuda_subscriber_export_mode(sub) == CUFRAMES_CUDA_EXPORT_VMM_FD &&
            cuframes_cuda_publisher_export_mode(pub) == CUFRAMES_CUDA_EXPORT_VMM_FD,
        "export modes %u %u", cuframes_cuda_subscriber_export_mode(sub), cuframes_cuda_publisher_export_mode(pub));
  CHECK_RC(cuframes_cuda_subscriber_set_consumer_stream(sub, CUFRAMES_CUDA_STREAM_PER_THREAD),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(cuframes_cuda_subscriber_consumer_stream(sub) == CUFRAMES_CUDA_STREAM_LEGACY, "consumer stream changed");
  CHECK_RC(cuframes_cuda_subscriber_set_consumer_stream(sub, 0), CUFRAMES_OK);
  CHECK(cuframes_cuda_subscriber_consumer_stream(sub) == 0, "consumer stream not set");
  CHECK_RC(cuframes_cuda_publisher_set_stream(pub, CUFRAMES_CUDA_STREAM_PER_THREAD), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_cuda_frame_t *f = (cuframes_cuda_frame_t *)&f;
  CHECK_RC(cuframes_cuda_subscriber_try_next(sub, &f), CUFRAMES_ERR_WOULD_BLOCK);
  CHECK(f == NULL, "frame_out not cleared");
  CHECK_RC(cuframes_cuda_subscriber_next(sub, 20, &f), CUFRAMES_ERR_TIMEOUT);

  /* Lease misuse. */
  cuframes_cuda_lease_t lease, lease2;
  uint64_t seq = 0, ptrs[2] = {0, 0};
  uint32_t pitches[2] = {W, W};
  uint8_t *packed = calloc(1, PACKED);
  CHECK_RC(cuframes_cuda_publisher_commit(pub, 0, &seq), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_abort(pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_copy_from_device(pub, ptrs, pitches, 2, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(strstr(cuframes_last_error_message(), "no slot is loaned") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_cuda_publisher_publish_from_host(pub, packed, PACKED - 1, 0, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_loan(pub, &lease), CUFRAMES_OK);
  CHECK(lease.seq == 1 && lease.plane_count == 2 && lease.stream == cuframes_cuda_publisher_stream(pub) &&
            lease.stream != 0,
        "lease: seq %llu stream %#lx", (unsigned long long)lease.seq, (unsigned long)lease.stream);
  CHECK_RC(cuframes_cuda_publisher_loan(pub, &lease2), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(lease2.seq == 0 && lease2.device_ptr[0] == 0 && lease2.stream == 0, "failed lease not zeroed");
  CHECK_RC(cuframes_cuda_publisher_set_stream(pub, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_publish_from_host(pub, packed, PACKED, 0, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_publish_from_device(pub, lease.device_ptr, lease.pitch, 2, 0, 0, NULL),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_copy_from_device(pub, lease.device_ptr, lease.pitch, 1, 0),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_copy_from_device(pub, ptrs, pitches, 2, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(strstr(cuframes_last_error_message(), "src_ptr[0] is 0") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_cuda_publisher_copy_from_device(pub, NULL, pitches, 2, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  uint32_t narrow[2] = {W - 1, W};
  CHECK_RC(cuframes_cuda_publisher_copy_from_device(pub, lease.device_ptr, narrow, 2, 0),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_abort(pub), CUFRAMES_OK);
  CHECK_RC(cuframes_cuda_subscriber_try_next(sub, &f), CUFRAMES_ERR_WOULD_BLOCK);

  /* One frame: accessors, bad plane, bad copy length, max_held. */
  fill_packed(1, packed);
  CHECK_RC(cuframes_cuda_publisher_publish_from_host(pub, packed, PACKED, 7, &seq), CUFRAMES_OK);
  CHECK(seq == 1, "seq %llu", (unsigned long long)seq);
  fill_packed(2, packed);
  CHECK_RC(cuframes_cuda_publisher_publish_from_host(pub, packed, PACKED, 8, &seq), CUFRAMES_OK);
  CHECK_RC(cuframes_cuda_subscriber_next(sub, 1000, &f), CUFRAMES_OK);
  if (f) {
    uint8_t *got = malloc(PACKED);
    CHECK(cuframes_cuda_frame_seq(f) == 1 && cuframes_cuda_frame_pts_ns(f) == 7 &&
              cuframes_cuda_frame_consumer_stream(f) == 0,
          "frame 1");
    CHECK(cuframes_cuda_frame_device_ptr(f, 2) == 0 && cuframes_cuda_frame_pitch(f, 7) == 0 &&
              cuframes_cuda_frame_rows(f, 4) == 0 && cuframes_cuda_frame_row_bytes(f, 4000000000u) == 0,
          "bad plane index");
    CHECK(strstr(cuframes_last_error_message(), "plane 4000000000") != NULL, "%s", cuframes_last_error_message());
    CHECK_RC(cuframes_cuda_frame_copy_to_host(f, got, PACKED + 1), CUFRAMES_ERR_INVALID_ARGUMENT);
    CHECK_RC(cuframes_cuda_frame_copy_to_host(f, NULL, PACKED), CUFRAMES_ERR_INVALID_ARGUMENT);
    CHECK_RC(cuframes_cuda_frame_copy_to_host(f, got, PACKED), CUFRAMES_OK);
    CHECK(compare_packed("errors", 1, got) == 0, "frame 1 bytes");
    CHECK_RC(cuframes_cuda_frame_use_on(f, 0), CUFRAMES_OK); /* the consumer stream itself */
    cuframes_cuda_frame_t *g = NULL;
    CHECK_RC(cuframes_cuda_subscriber_next(sub, 10, &g), CUFRAMES_ERR_CAPACITY);
    /* A frame outlives its subscriber. */
    cuframes_cuda_subscriber_destroy(sub);
    sub = NULL;
    memset(got, 0, PACKED);
    CHECK_RC(cuframes_cuda_frame_copy_to_host(f, got, PACKED), CUFRAMES_OK);
    CHECK(compare_packed("errors (after destroy)", 1, got) == 0, "frame 1 bytes after its subscriber");
    cuframes_cuda_frame_release(f);
    free(got);
  }
  cuframes_cuda_subscriber_destroy(sub);
  free(packed);
  cuframes_cuda_publisher_destroy(pub);
  CHECK(!file_exists("cuframes.%s", key), "segment of %s left behind", key);
  CHECK(!file_exists(".cuframes.%s.sock", key), "socket of %s left behind", key);

  /* A CUDA subscriber on a host-memory stream. */
  cuframes_publisher_t *hp = NULL;
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, NULL, &hp), CUFRAMES_OK);
  sub = (cuframes_cuda_subscriber_t *)&sub;
  CHECK_RC(cuframes_cuda_subscriber_create(key, "gpu", CUFRAMES_MODE_QUEUE, CUFRAMES_CUDA_DEVICE_AUTO, 0, &so, &sub),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(sub == NULL && strstr(cuframes_last_error_message(), "host memory") != NULL, "%s",
        cuframes_last_error_message());
  cuframes_publisher_destroy(hp);
  remove_lock(key);
}

int main(int argc, char **argv) {
  self_path = argv[0];
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc == 6 && strcmp(argv[1], "publish") == 0)
    return child_publish(argv[2], (unsigned)atoi(argv[3]), argv[4], (unsigned)atoi(argv[5]));
  if (argc == 5 && strcmp(argv[1], "subscribe") == 0)
    return child_subscribe(argv[2], (unsigned)atoi(argv[3]), argv[4]);
  if (argc == 3 && strcmp(argv[1], "bench") == 0) return child_bench(atol(argv[2]));
  if (argc != 1) {
    fprintf(stderr, "usage: %s [publish KEY N MODE SUBS | subscribe KEY N queue|newest | bench N]\n", argv[0]);
    return 2;
  }
  printf("cuframes %s, GPU calls\n", cuframes_version());
  if (!cuframes_cuda_available()) {
    const char *gpu = getenv("CUFRAMES_GPU");
    printf("no CUDA driver: %s\n", cuframes_last_error_message());
    if (gpu && strcmp(gpu, "1") == 0) {
      fprintf(stderr, "CUFRAMES_GPU=1 but the CUDA driver did not load\n");
      return 1;
    }
    printf("test_cuda: skipped (run it under scripts/cuda-sim.sh, or with a GPU)\n");
    return 0;
  }
  run("driver", test_driver);
  run("round_trip_ipc", test_round_trip_ipc);
  run("round_trip_vmm_fd", test_round_trip_vmm_fd);
  run("errors", test_errors);
  return finish("test_cuda");
}
