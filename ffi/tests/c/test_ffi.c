/*
 * Tests of the cuframes C ABI, run by scripts/test-c.sh (also under
 * valgrind and with AddressSanitizer).
 *
 *   test_ffi                     all tests; publisher and subscribers run as
 *                                separate processes (this program, re-executed)
 *   test_ffi publish KEY N SUBS  child: waits for SUBS subscribers, publishes N frames
 *   test_ffi subscribe KEY N MODE child: reads and checks frames
 *   test_ffi hold KEY            child: creates KEY and sleeps until killed
 *
 * The GPU calls (cuframes_cuda_*) are checked here without a driver:
 * argument checks, the error without one, refusals; their GPU tests are
 * test_cuda.c. With CUFRAMES_GPU=1, or where a driver loads, the
 * no-driver checks are skipped.
 *
 * Every frame carries its seq in its pixels: the first 8 bytes of plane 0
 * hold it, every other byte is pattern(seq, plane, row, column).
 */
#define _GNU_SOURCE
#include <cuframes.h>

#include "check.h"
#include "children.h"

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The test hook of the library (not in the header): panics inside the
 * boundary guard when code != 0. */
int cuframes_testing_panic(int code);

enum { W = 320, H = 240 };

static uint8_t pattern(uint64_t seq, unsigned plane, unsigned row, unsigned col) {
  return (uint8_t)(seq * 31u + plane * 7u + row * 3u + col);
}

/* Writes frame `seq` into planes described by pointers/pitches/rows/row_bytes. */
static void fill_planes(uint64_t seq, unsigned n, uint8_t *const *planes, const uint32_t *pitch,
                        const uint32_t *rows, const uint32_t *row_bytes) {
  for (unsigned p = 0; p < n; p++)
    for (unsigned r = 0; r < rows[p]; r++)
      for (unsigned c = 0; c < row_bytes[p]; c++) planes[p][(size_t)r * pitch[p] + c] = pattern(seq, p, r, c);
  memcpy(planes[0], &seq, sizeof seq);
}

/* Checks a received frame's pixels; returns 0 when every byte is right. */
static int verify_frame(const cuframes_frame_t *f) {
  uint64_t seq = cuframes_frame_seq(f), stamped;
  memcpy(&stamped, cuframes_frame_plane_data(f, 0), sizeof stamped);
  if (stamped != seq) {
    fprintf(stderr, "frame %llu carries seq %llu\n", (unsigned long long)seq, (unsigned long long)stamped);
    return -1;
  }
  for (unsigned p = 0; p < cuframes_frame_plane_count(f); p++) {
    const uint8_t *d = cuframes_frame_plane_data(f, p);
    uint32_t pitch = cuframes_frame_pitch(f, p), rows = cuframes_frame_rows(f, p);
    uint32_t rb = cuframes_frame_row_bytes(f, p);
    for (unsigned r = 0; r < rows; r++)
      for (unsigned c = (p == 0 && r == 0) ? 8 : 0; c < rb; c++)
        if (d[(size_t)r * pitch + c] != pattern(seq, p, r, c)) {
          fprintf(stderr, "frame %llu plane %u row %u col %u: %u, want %u\n", (unsigned long long)seq, p, r, c,
                  d[(size_t)r * pitch + c], pattern(seq, p, r, c));
          return -1;
        }
  }
  return 0;
}

/* Publishes frame `seq`: odd seqs through loan/commit, even ones packed. */
static int publish_one(cuframes_publisher_t *pub, uint64_t seq, uint8_t *packed) {
  if (seq % 2) {
    cuframes_lease_t lease;
    int rc = cuframes_publisher_loan(pub, &lease);
    if (rc) return rc;
    if (lease.seq != seq) return CUFRAMES_ERR_INTERNAL;
    fill_planes(seq, lease.plane_count, lease.planes, lease.pitch, lease.rows, lease.row_bytes);
    uint64_t got = 0;
    rc = cuframes_publisher_commit(pub, (int64_t)seq * 1000, &got);
    return rc ? rc : (got == seq ? 0 : CUFRAMES_ERR_INTERNAL);
  }
  /* NV12 packed: W*H bytes of Y, then W*H/2 of UV. */
  uint8_t *planes[2] = {packed, packed + W * H};
  uint32_t pitch[2] = {W, W}, rows[2] = {H, H / 2}, rb[2] = {W, W};
  fill_planes(seq, 2, planes, pitch, rows, rb);
  return cuframes_publisher_publish(pub, packed, (size_t)W * H * 3 / 2, (int64_t)seq * 1000);
}

/* ---- child processes ---------------------------------------------------- */

DEFINE_SUBSCRIBERS_OF(cuframes_publisher_stats)

static int publish_frame(void *pub, uint64_t seq, uint8_t *packed) { return publish_one(pub, seq, packed); }

static int child_publish(const char *key, unsigned n, unsigned subs) {
  cuframes_publisher_options_t opts = child_publisher_options();
  cuframes_publisher_t *pub = NULL;
  int rc = cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &opts, &pub);
  if (rc) return failed("publish", "create", 10 + rc);
  uint8_t *packed = malloc(cuframes_publisher_packed_size(pub));
  rc = publish_seqs(pub, n, subs, subscribers_of, publish_frame, packed, "frame");
  free(packed);
  cuframes_publisher_destroy(pub);
  return rc;
}

static int child_subscribe(const char *key, unsigned n, unsigned mode) {
  cuframes_subscriber_options_t opts = subscriber_options(30000);
  cuframes_subscriber_t *sub = NULL;
  int rc = cuframes_subscriber_create(key, mode == CUFRAMES_MODE_QUEUE ? "c-queue" : "c-newest", mode, &opts, &sub);
  if (rc) return failed("subscribe", "create", 10 + rc);
  uint64_t last = 0, got = 0;
  int bad = 0;
  for (;;) {
    cuframes_frame_t *f = NULL;
    rc = cuframes_subscriber_next(sub, 30000, &f);
    if (rc == CUFRAMES_ERR_CLOSED) break;
    if (rc) {
      bad = failed("subscribe", "next", 1);
      break;
    }
    uint64_t seq = cuframes_frame_seq(f);
    if (mode == CUFRAMES_MODE_QUEUE ? seq != last + 1 : seq <= last) {
      fprintf(stderr, "subscribe: seq %llu after %llu\n", (unsigned long long)seq, (unsigned long long)last);
      bad = 1;
    }
    if (cuframes_frame_pts_ns(f) != (int64_t)seq * 1000 || cuframes_frame_width(f) != W ||
        cuframes_frame_height(f) != H || cuframes_frame_format(f) != CUFRAMES_FORMAT_NV12 || verify_frame(f)) {
      fprintf(stderr, "subscribe: frame %llu is wrong\n", (unsigned long long)seq);
      bad = 1;
    }
    last = seq;
    got++;
    cuframes_frame_release(f);
    if (bad) break;
  }
  cuframes_subscriber_stats_t st;
  cuframes_subscriber_stats(sub, &st);
  cuframes_subscriber_destroy(sub);
  bad |= check_received("subscribe", "frames", mode == CUFRAMES_MODE_QUEUE, got, last, n, st.dropped);
  printf("subscriber (%s): %llu frames, last seq %llu, %llu skipped, all pixels verified\n",
         mode == CUFRAMES_MODE_QUEUE ? "queue" : "newest-only", (unsigned long long)got, (unsigned long long)last,
         (unsigned long long)st.dropped);
  return bad;
}

static int child_hold(const char *key) {
  cuframes_publisher_t *pub = NULL;
  if (cuframes_publisher_create(key, CUFRAMES_FORMAT_GRAY8, 64, 64, NULL, &pub)) return 1;
  for (;;) pause();
}

/* ---- tests ---------------------------------------------------------------- */

static void test_strings(void) {
  static const char *names[] = {"Ok",         "Timeout",    "NotFound", "Closed",    "PublisherGone", "InvalidArgument",
                                "Incompatible", "Capacity", "Permission", "Cuda",  "Io",            "Corrupt",
                                "Released",   "WouldBlock", "Internal", "AlreadyExists", "Lagged"};
  CHECK(strcmp(cuframes_version(), "") != 0, "version is empty");
  CHECK(strcmp(cuframes_last_error_message(), "") == 0, "a fresh thread has no error: %s", cuframes_last_error_message());
  for (int code = 0; code <= 16; code++) {
    const char *s = cuframes_strerror(code);
    CHECK(s && *s && strcmp(s, "unknown error code") != 0, "strerror(%d) = %s", code, s);
    CHECK(strcmp(cuframes_error_name(code), names[code]) == 0, "error_name(%d) = %s", code, cuframes_error_name(code));
    for (int other = 0; other < code; other++)
      CHECK(strcmp(s, cuframes_strerror(other)) != 0, "strerror(%d) == strerror(%d)", code, other);
  }
  CHECK(strcmp(cuframes_strerror(CUFRAMES_ERR_TIMEOUT), "timed out") == 0, "%s", cuframes_strerror(1));
  CHECK(strcmp(cuframes_strerror(0), "success") == 0, "%s", cuframes_strerror(0));
  CHECK(strcmp(cuframes_strerror(17), "unknown error code") == 0, "%s", cuframes_strerror(17));
  CHECK(strcmp(cuframes_strerror(-1), "unknown error code") == 0, "%s", cuframes_strerror(-1));
  CHECK(CUFRAMES_ERR_TIMEOUT == 1 && CUFRAMES_ERR_NOT_FOUND == 2 && CUFRAMES_ERR_INVALID_ARGUMENT == 5 &&
            CUFRAMES_ERR_RELEASED == 12 && CUFRAMES_ERR_INTERNAL == 14 && CUFRAMES_ERR_ALREADY_EXISTS == 15 && CUFRAMES_ERR_LAGGED == 16,
        "codes match docs/errors.md");
}

static void test_null_arguments(void) {
  cuframes_publisher_t *pub = (cuframes_publisher_t *)&pub; /* must be cleared */
  cuframes_subscriber_t *sub = (cuframes_subscriber_t *)&sub;
  cuframes_frame_t *frame = (cuframes_frame_t *)&frame;
  cuframes_lease_t lease;
  cuframes_publisher_stats_t pst;
  cuframes_subscriber_stats_t sst;
  uint8_t byte = 0;

  CHECK_RC(cuframes_publisher_options_init(NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_subscriber_options_init(NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_create(NULL, CUFRAMES_FORMAT_NV12, W, H, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(pub == NULL, "out not cleared on failure");
  CHECK(strstr(cuframes_last_error_message(), "key is NULL") != NULL, "message: %s", cuframes_last_error_message());
  CHECK_RC(cuframes_publisher_create("ctest-null", CUFRAMES_FORMAT_NV12, W, H, NULL, NULL),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_loan(NULL, &lease), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(lease.data == NULL && lease.size == 0, "lease not zeroed on failure");
  CHECK_RC(cuframes_publisher_loan(NULL, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_commit(NULL, 0, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_abort(NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_publish(NULL, &byte, 1, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_stats(NULL, &pst), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_stats(NULL, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(cuframes_publisher_packed_size(NULL) == 0, "packed size of NULL");
  cuframes_publisher_destroy(NULL);

  CHECK_RC(cuframes_subscriber_create(NULL, "n", CUFRAMES_MODE_QUEUE, NULL, &sub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(sub == NULL, "out not cleared on failure");
  CHECK_RC(cuframes_subscriber_create("ctest-null", NULL, CUFRAMES_MODE_QUEUE, NULL, &sub),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_subscriber_create("ctest-null", "n", CUFRAMES_MODE_QUEUE, NULL, NULL),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_subscriber_next(NULL, 0, &frame), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(frame == NULL, "frame_out not cleared on failure");
  CHECK_RC(cuframes_subscriber_next(NULL, 0, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_subscriber_try_next(NULL, &frame), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_subscriber_stats(NULL, &sst), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_subscriber_destroy(NULL);

  CHECK(cuframes_frame_seq(NULL) == 0 && cuframes_frame_pts_ns(NULL) == 0 && cuframes_frame_width(NULL) == 0 &&
            cuframes_frame_height(NULL) == 0 && cuframes_frame_format(NULL) == 0 &&
            cuframes_frame_plane_count(NULL) == 0 && cuframes_frame_size(NULL) == 0 &&
            cuframes_frame_commit_ns(NULL) == 0 && cuframes_frame_pitch(NULL, 0) == 0 &&
            cuframes_frame_rows(NULL, 0) == 0 && cuframes_frame_row_bytes(NULL, 0) == 0 &&
            cuframes_frame_data(NULL) == NULL && cuframes_frame_plane_data(NULL, 0) == NULL,
        "accessors of NULL give 0");
  CHECK(strstr(cuframes_last_error_message(), "frame is NULL") != NULL, "message: %s", cuframes_last_error_message());
  cuframes_frame_release(NULL);
}

static void test_bad_arguments(void) {
  cuframes_publisher_t *pub = NULL;
  cuframes_subscriber_t *sub = NULL;
  static const char *bad_keys[] = {"../x", "", "a/b", "x y",
                                   "k123456789012345678901234567890123456789012345678901234567890123456789"};
  for (unsigned i = 0; i < sizeof bad_keys / sizeof *bad_keys; i++) {
    CHECK_RC(cuframes_publisher_create(bad_keys[i], CUFRAMES_FORMAT_NV12, W, H, NULL, &pub),
             CUFRAMES_ERR_INVALID_ARGUMENT);
    CHECK_RC(cuframes_subscriber_create(bad_keys[i], "n", CUFRAMES_MODE_QUEUE, NULL, &sub),
             CUFRAMES_ERR_INVALID_ARGUMENT);
  }
  char key[64];
  make_key(key, sizeof key, "bad");
  CHECK_RC(cuframes_publisher_create(key, 99, W, H, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, 321, H, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, 0, 0, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_publisher_options_t po;
  cuframes_publisher_options_init(&po);
  CHECK(po.slot_count == 8 && po.policy == CUFRAMES_POLICY_BLOCK && po.mode == 0600 && po.pitch_align == 64,
        "publisher defaults");
  po.policy = 9;
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &po, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_publisher_options_init(&po);
  po.pitch_align = 3;
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &po, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_publisher_options_init(&po);
  po.mode = 0666;
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &po, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_publisher_options_init(&po);
  po.slot_count = 1000;
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &po, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(pub == NULL, "no publisher on failure");
  cuframes_subscriber_options_t so;
  cuframes_subscriber_options_init(&so);
  CHECK(so.max_held == 1 && so.connect_timeout_ms == 2000, "subscriber defaults");
  so.connect_timeout_ms = 10;
  CHECK_RC(cuframes_subscriber_create(key, "n", 7, &so, &sub), CUFRAMES_ERR_INVALID_ARGUMENT);
  so.max_held = 0;
  CHECK_RC(cuframes_subscriber_create(key, "n", CUFRAMES_MODE_QUEUE, &so, &sub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(sub == NULL, "no subscriber on failure");
}

static void test_not_found(void) {
  cuframes_subscriber_options_t so = subscriber_options(50);
  cuframes_subscriber_t *sub = NULL;
  char key[64];
  make_key(key, sizeof key, "absent");
  double t0 = now_ms();
  CHECK_RC(cuframes_subscriber_create(key, "n", CUFRAMES_MODE_NEWEST_ONLY, &so, &sub), CUFRAMES_ERR_NOT_FOUND);
  CHECK(now_ms() - t0 >= 45, "gave up after %.1f ms, before the connect timeout", now_ms() - t0);
  CHECK(sub == NULL, "no subscriber on failure");
  CHECK(strstr(cuframes_last_error_message(), key) != NULL, "message names the key: %s",
        cuframes_last_error_message());
}

static void test_in_process(void) {
  char key[64];
  make_key(key, sizeof key, "local");
  cuframes_publisher_options_t po;
  cuframes_publisher_options_init(&po);
  po.block_timeout_ms = 50;
  cuframes_publisher_t *pub = NULL, *second = NULL;
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &po, &pub), CUFRAMES_OK);
  if (!pub) return;
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, &po, &second), CUFRAMES_ERR_ALREADY_EXISTS);
  CHECK(cuframes_publisher_packed_size(pub) == (size_t)W * H * 3 / 2, "packed size %zu",
        cuframes_publisher_packed_size(pub));

  cuframes_subscriber_t *sub = NULL;
  CHECK_RC(cuframes_subscriber_create(key, "local", CUFRAMES_MODE_QUEUE, NULL, &sub), CUFRAMES_OK);
  if (!sub) return;
  cuframes_publisher_stats_t pst;
  CHECK_RC(cuframes_publisher_stats(pub, &pst), CUFRAMES_OK);
  CHECK(pst.subscribers == 1 && pst.published == 0 && pst.slot_count == 8, "publisher stats");

  cuframes_frame_t *f = NULL;
  double t0 = now_ms();
  CHECK_RC(cuframes_subscriber_next(sub, 30, &f), CUFRAMES_ERR_TIMEOUT);
  CHECK(now_ms() - t0 >= 25, "timed out after %.1f ms", now_ms() - t0);
  CHECK(f == NULL, "no frame on timeout");
  CHECK(strstr(cuframes_last_error_message(), "timed out") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_subscriber_try_next(sub, &f), CUFRAMES_ERR_WOULD_BLOCK);

  /* Lease misuse. */
  cuframes_lease_t lease, lease2;
  uint64_t seq = 0;
  CHECK_RC(cuframes_publisher_commit(pub, 0, &seq), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_abort(pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_loan(pub, &lease), CUFRAMES_OK);
  CHECK(lease.seq == 1 && lease.plane_count == 2 && lease.width == W && lease.height == H &&
            lease.format == CUFRAMES_FORMAT_NV12 && lease.pitch[0] == W && lease.rows[1] == H / 2 &&
            lease.planes[0] == lease.data && lease.planes[1] > lease.planes[0] && lease.planes[2] == NULL &&
            lease.size >= (size_t)W * H * 3 / 2,
        "lease geometry");
  CHECK_RC(cuframes_publisher_loan(pub, &lease2), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(strstr(cuframes_last_error_message(), "already loaned") != NULL, "%s", cuframes_last_error_message());
  uint8_t *packed = calloc(1, (size_t)W * H * 3 / 2);
  CHECK_RC(cuframes_publisher_publish(pub, packed, (size_t)W * H * 3 / 2, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_abort(pub), CUFRAMES_OK);
  CHECK_RC(cuframes_subscriber_try_next(sub, &f), CUFRAMES_ERR_WOULD_BLOCK);

  /* Two frames: one loaned, one packed. */
  CHECK_RC(publish_one(pub, 1, packed), CUFRAMES_OK);
  CHECK_RC(cuframes_publisher_publish(pub, packed, 7, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_publisher_publish(pub, NULL, 7, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(publish_one(pub, 2, packed), CUFRAMES_OK);

  CHECK_RC(cuframes_subscriber_next(sub, 1000, &f), CUFRAMES_OK);
  if (f) {
    CHECK(cuframes_frame_seq(f) == 1 && cuframes_frame_pts_ns(f) == 1000 && cuframes_frame_width(f) == W &&
              cuframes_frame_height(f) == H && cuframes_frame_format(f) == CUFRAMES_FORMAT_NV12 &&
              cuframes_frame_plane_count(f) == 2 && cuframes_frame_pitch(f, 0) == W &&
              cuframes_frame_rows(f, 1) == H / 2 && cuframes_frame_row_bytes(f, 1) == W &&
              cuframes_frame_plane_data(f, 0) == cuframes_frame_data(f) && cuframes_frame_commit_ns(f) > 0 &&
              cuframes_frame_size(f) >= (size_t)W * H * 3 / 2,
          "frame accessors");
    CHECK(verify_frame(f) == 0, "frame 1 pixels");
    /* A plane the format lacks: 0/NULL and a message, no crash. */
    CHECK(cuframes_frame_plane_data(f, 2) == NULL && cuframes_frame_pitch(f, 2) == 0 &&
              cuframes_frame_rows(f, 9) == 0 && cuframes_frame_row_bytes(f, 4000000000u) == 0,
          "bad plane index");
    CHECK(strstr(cuframes_last_error_message(), "plane 4000000000") != NULL, "%s", cuframes_last_error_message());
    /* max_held is 1: a second frame must wait for the first. */
    cuframes_frame_t *g = NULL;
    CHECK_RC(cuframes_subscriber_next(sub, 10, &g), CUFRAMES_ERR_CAPACITY);
    cuframes_frame_release(f);
  }
  CHECK_RC(cuframes_subscriber_try_next(sub, &f), CUFRAMES_OK);
  CHECK(f && cuframes_frame_seq(f) == 2 && verify_frame(f) == 0, "frame 2");

  cuframes_subscriber_stats_t sst;
  CHECK_RC(cuframes_subscriber_stats(sub, &sst), CUFRAMES_OK);
  CHECK(sst.frames_received == 2 && sst.last_seq == 2 && sst.timeouts == 1 && sst.gap_count == 0 &&
            sst.last_frame_pts_ns == 2000 && sst.slot_count == 8 && sst.ring_occupancy >= 1,
        "subscriber stats: received %llu timeouts %llu occupancy %u", (unsigned long long)sst.frames_received,
        (unsigned long long)sst.timeouts, sst.ring_occupancy);

  /* A frame outlives its subscriber; the stream drains, then reports Closed. */
  cuframes_subscriber_destroy(sub);
  CHECK(f && verify_frame(f) == 0, "frame after its subscriber is gone");
  cuframes_frame_release(f);

  cuframes_subscriber_t *late = NULL;
  CHECK_RC(cuframes_subscriber_create(key, "late", CUFRAMES_MODE_QUEUE, NULL, &late), CUFRAMES_OK);
  CHECK_RC(publish_one(pub, 3, packed), CUFRAMES_OK);
  CHECK_RC(cuframes_publisher_loan(pub, &lease), CUFRAMES_OK); /* dropped by destroy */
  cuframes_publisher_destroy(pub);
  /* A queue subscriber starts at the newest frame when it connects (2). */
  uint64_t last = 0;
  int rc;
  while ((rc = cuframes_subscriber_next(late, 1000, &f)) == CUFRAMES_OK) {
    CHECK(cuframes_frame_seq(f) > last && verify_frame(f) == 0, "drained frame %llu",
          (unsigned long long)cuframes_frame_seq(f));
    last = cuframes_frame_seq(f);
    cuframes_frame_release(f);
  }
  CHECK(rc == CUFRAMES_ERR_CLOSED && last == 3, "drain ended with %s after seq %llu", cuframes_error_name(rc),
        (unsigned long long)last);
  cuframes_subscriber_destroy(late);
  free(packed);
}

static void test_panic_guard(void) {
  CHECK_RC(cuframes_testing_panic(0), CUFRAMES_OK);
  CHECK_RC(cuframes_testing_panic(42), CUFRAMES_ERR_INTERNAL);
  CHECK(strstr(cuframes_last_error_message(), "panic") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_testing_panic(0), CUFRAMES_OK); /* still usable */
}

static void test_publisher_killed(void) {
  char key[64];
  make_key(key, sizeof key, "killed");
  char *argv[] = {(char *)self_path, "hold", key, NULL};
  pid_t pid = spawn(argv);
  cuframes_subscriber_options_t so = subscriber_options(30000);
  so.liveness_interval_ms = 20;
  cuframes_subscriber_t *sub = NULL;
  CHECK_RC(cuframes_subscriber_create(key, "orphan", CUFRAMES_MODE_QUEUE, &so, &sub), CUFRAMES_OK);
  kill(pid, SIGKILL);
  wait_exit(pid);
  if (!sub) return;
  cuframes_frame_t *f = NULL;
  CHECK_RC(cuframes_subscriber_next(sub, 5000, &f), CUFRAMES_ERR_PUBLISHER_GONE);
  cuframes_subscriber_destroy(sub);
  /* The dead publisher's segment is left behind; remove it. */
  remove_file("cuframes.%s", key);
  remove_lock(key);
}

static void test_cross_process(void) { cross_process("150"); }

/* ---- GPU calls without a driver ------------------------------------------- */

static void test_cuda_without_driver(void) {
  /* Argument checks come before the driver is needed. */
  cuframes_cuda_publisher_t *pub = (cuframes_cuda_publisher_t *)&pub; /* must be cleared */
  cuframes_cuda_subscriber_t *sub = (cuframes_cuda_subscriber_t *)&sub;
  cuframes_cuda_frame_t *frame = (cuframes_cuda_frame_t *)&frame;
  cuframes_cuda_lease_t lease;
  memset(&lease, 0xff, sizeof lease);
  uint64_t ptr = 1;
  uint32_t pitch = 1;
  uint8_t byte = 0;
  CHECK_RC(cuframes_cuda_publisher_options_init(NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_create(NULL, CUFRAMES_FORMAT_NV12, W, H, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(pub == NULL, "out not cleared on failure");
  CHECK_RC(cuframes_cuda_publisher_loan(NULL, &lease), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(lease.seq == 0 && lease.device_ptr[0] == 0 && lease.stream == 0, "lease not zeroed on failure");
  CHECK_RC(cuframes_cuda_publisher_commit(NULL, 0, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_abort(NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_publish_from_host(NULL, &byte, 1, 0, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_copy_from_device(NULL, &ptr, &pitch, 1, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_publish_from_device(NULL, &ptr, &pitch, 1, 0, 0, NULL),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_publisher_set_stream(NULL, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(cuframes_cuda_publisher_stream(NULL) == 0 && cuframes_cuda_publisher_export_mode(NULL) == 0 &&
            cuframes_cuda_publisher_packed_size(NULL) == 0,
        "publisher accessors of NULL");
  cuframes_cuda_publisher_destroy(NULL);
  CHECK_RC(cuframes_cuda_subscriber_create("ctest-null", "n", CUFRAMES_MODE_QUEUE, -2, 0, NULL, &sub),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(sub == NULL, "out not cleared on failure");
  CHECK_RC(cuframes_cuda_subscriber_create("ctest-null", "n", CUFRAMES_MODE_QUEUE, CUFRAMES_CUDA_DEVICE_AUTO,
                                           CUFRAMES_CUDA_STREAM_PER_THREAD, NULL, &sub),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(strstr(cuframes_last_error_message(), "per-thread") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_cuda_subscriber_next(NULL, 0, &frame), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(frame == NULL, "frame_out not cleared on failure");
  CHECK_RC(cuframes_cuda_subscriber_set_consumer_stream(NULL, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_cuda_subscriber_destroy(NULL);
  CHECK(cuframes_cuda_frame_device_ptr(NULL, 0) == 0 && cuframes_cuda_frame_pitch(NULL, 0) == 0 &&
            cuframes_cuda_frame_seq(NULL) == 0 && cuframes_cuda_frame_device(NULL) == -1 &&
            cuframes_cuda_frame_consumer_stream(NULL) == 0,
        "frame accessors of NULL");
  CHECK_RC(cuframes_cuda_frame_use_on(NULL, 0), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_cuda_frame_copy_to_host(NULL, &byte, 1), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_cuda_frame_release(NULL);

  /* A CUDA subscriber refuses a host-memory stream before touching the driver. */
  char key[64];
  make_key(key, sizeof key, "cuda-host");
  cuframes_publisher_t *hp = NULL;
  CHECK_RC(cuframes_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, NULL, &hp), CUFRAMES_OK);
  cuframes_subscriber_options_t so = subscriber_options(100);
  sub = (cuframes_cuda_subscriber_t *)&sub;
  CHECK_RC(cuframes_cuda_subscriber_create(key, "gpu", CUFRAMES_MODE_QUEUE, CUFRAMES_CUDA_DEVICE_AUTO, 0, &so, &sub),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(sub == NULL && strstr(cuframes_last_error_message(), "host memory") != NULL, "%s",
        cuframes_last_error_message());
  cuframes_publisher_stats_t pst;
  CHECK_RC(cuframes_publisher_stats(hp, &pst), CUFRAMES_OK);
  CHECK(pst.subscribers == 0, "the refused subscriber left its record (%u)", pst.subscribers);
  cuframes_publisher_destroy(hp);

  const char *gpu = getenv("CUFRAMES_GPU");
  if ((gpu && strcmp(gpu, "1") == 0) || cuframes_cuda_available()) {
    printf("  (a CUDA driver is present: the no-driver checks are skipped; test_cuda runs the GPU tests)\n");
    return;
  }
  int version = 7;
  uint32_t count = 7;
  CHECK_RC(cuframes_cuda_driver_version(&version), CUFRAMES_ERR_CUDA);
  CHECK(version == 0, "version %d not zeroed", version);
  CHECK(strstr(cuframes_last_error_message(), "libcuda") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_cuda_device_count(&count), CUFRAMES_ERR_CUDA);
  CHECK(count == 0, "count %u not zeroed", count);
  make_key(key, sizeof key, "cuda-nodrv");
  pub = (cuframes_cuda_publisher_t *)&pub;
  CHECK_RC(cuframes_cuda_publisher_create(key, CUFRAMES_FORMAT_NV12, W, H, NULL, &pub), CUFRAMES_ERR_CUDA);
  CHECK(pub == NULL, "no publisher on failure");
  CHECK(strstr(cuframes_last_error_message(), "libcuda") != NULL, "%s", cuframes_last_error_message());
  CHECK(!file_exists("cuframes.%s", key), "segment of %s left behind", key);
  CHECK(!file_exists(".cuframes.%s.sock", key), "socket of %s left behind", key);
  /* A host publisher's stream stays usable; a CUDA subscriber of a missing
   * stream says NOT_FOUND as the host one does. */
  so.connect_timeout_ms = 20;
  CHECK_RC(cuframes_cuda_subscriber_create(key, "gpu", CUFRAMES_MODE_QUEUE, CUFRAMES_CUDA_DEVICE_AUTO, 0, &so, &sub),
           CUFRAMES_ERR_NOT_FOUND);
}

int main(int argc, char **argv) {
  self_path = argv[0];
  if (argc == 5 && strcmp(argv[1], "publish") == 0)
    return child_publish(argv[2], (unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]));
  if (argc == 5 && strcmp(argv[1], "subscribe") == 0)
    return child_subscribe(argv[2], (unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]));
  if (argc == 3 && strcmp(argv[1], "hold") == 0) return child_hold(argv[2]);
  if (argc != 1) {
    fprintf(stderr, "usage: %s [publish KEY N SUBS | subscribe KEY N MODE | hold KEY]\n", argv[0]);
    return 2;
  }
  printf("cuframes %s\n", cuframes_version());
  run("strings", test_strings);
  run("null_arguments", test_null_arguments);
  run("bad_arguments", test_bad_arguments);
  run("not_found", test_not_found);
  run("in_process", test_in_process);
  run("panic_guard", test_panic_guard);
  run("publisher_killed", test_publisher_killed);
  run("cross_process", test_cross_process);
  run("cuda_without_driver", test_cuda_without_driver);
  return finish("test_ffi");
}
