/*
 * Tests of the encoded-packet calls of the cuframes C ABI
 * (cuframes_packet_*), run by scripts/test-c.sh (also under valgrind and
 * with AddressSanitizer).
 *
 *   test_packets                       all tests; the lossless test runs the
 *                                      publisher and two subscribers as
 *                                      separate processes (this program)
 *   test_packets publish KEY N SUBS    child: waits for SUBS subscribers,
 *                                      publishes N packets, closes
 *   test_packets subscribe KEY N MODE  child: reads and checks packets
 *
 * Packet `seq` is pkt_len(seq) bytes: its seq in the first 8, then
 * pattern(seq, i). Every GOP-th packet (1, 1 + GOP, ...) is a keyframe;
 * timestamps and flags follow info_for(seq).
 */
#define _GNU_SOURCE
#include <cuframes.h>

#define KEY_PREFIX "ctest-pkt-"
#include "check.h"
#include "children.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAXP = 4096, GOP = 10 };

static size_t pkt_len(uint64_t seq) { return 8 + (size_t)((seq * 7919u) % (MAXP - 7)); }

static uint8_t pattern(uint64_t seq, size_t i) { return (uint8_t)(seq * 131u + i * 7u + (i >> 8)); }

static int is_key_seq(uint64_t seq) { return seq % GOP == 1; }

static cuframes_packet_info_t info_for(uint64_t seq) {
  cuframes_packet_info_t info;
  info.pts_ns = (int64_t)seq * 40000000;
  info.dts_ns = info.pts_ns - 1000;
  info.duration_ns = 40000000;
  info.flags = (is_key_seq(seq) ? CUFRAMES_PACKET_KEY : 0) | (seq == 1 ? CUFRAMES_PACKET_DISCONTINUITY : 0);
  return info;
}

static void fill(uint64_t seq, uint8_t *p) {
  size_t n = pkt_len(seq);
  for (size_t i = 8; i < n; i++) p[i] = pattern(seq, i);
  memcpy(p, &seq, sizeof seq);
}

/* Publishes packet `seq`: odd seqs written in place (loan/commit), even
 * ones copied in (publish). */
static int publish_packet(cuframes_packet_publisher_t *pub, uint64_t seq, uint8_t *buf) {
  cuframes_packet_info_t info = info_for(seq);
  uint64_t got = 0;
  int rc;
  if (seq % 2) {
    cuframes_packet_lease_t lease;
    if ((rc = cuframes_packet_publisher_loan(pub, &lease))) return rc;
    if (lease.seq != seq || lease.capacity < pkt_len(seq)) return CUFRAMES_ERR_INTERNAL;
    fill(seq, lease.data);
    rc = cuframes_packet_publisher_commit(pub, pkt_len(seq), &info, &got);
  } else {
    fill(seq, buf);
    rc = cuframes_packet_publisher_publish(pub, buf, pkt_len(seq), &info, &got);
  }
  return rc ? rc : (got == seq ? 0 : CUFRAMES_ERR_INTERNAL);
}

/* Checks a received packet: bytes, length and metadata; 0 when all right. */
static int verify_packet(const cuframes_packet_t *p) {
  uint64_t seq = cuframes_packet_seq(p), stamped;
  const uint8_t *d = cuframes_packet_data(p);
  size_t n = cuframes_packet_size(p);
  if (n != pkt_len(seq) || !d) {
    fprintf(stderr, "packet %llu: %zu bytes, want %zu\n", (unsigned long long)seq, n, pkt_len(seq));
    return -1;
  }
  memcpy(&stamped, d, sizeof stamped);
  if (stamped != seq) {
    fprintf(stderr, "packet %llu carries seq %llu\n", (unsigned long long)seq, (unsigned long long)stamped);
    return -1;
  }
  for (size_t i = 8; i < n; i++)
    if (d[i] != pattern(seq, i)) {
      fprintf(stderr, "packet %llu byte %zu: %u, want %u\n", (unsigned long long)seq, i, d[i], pattern(seq, i));
      return -1;
    }
  cuframes_packet_info_t got, want = info_for(seq);
  if (cuframes_packet_info(p, &got) || memcmp(&got, &want, sizeof got) != 0 || cuframes_packet_commit_ns(p) == 0) {
    fprintf(stderr, "packet %llu: wrong metadata\n", (unsigned long long)seq);
    return -1;
  }
  return 0;
}

static cuframes_packet_stream_t h264_stream(const uint8_t *extradata, size_t len) {
  cuframes_packet_stream_t s;
  memset(&s, 0, sizeof s);
  s.codec = CUFRAMES_CODEC_H264;
  s.width = 1920;
  s.height = 1080;
  s.max_packet = MAXP;
  s.extradata = extradata;
  s.extradata_len = len;
  return s;
}

static cuframes_packet_publisher_t *create_publisher(const char *key) {
  cuframes_packet_stream_t s = h264_stream(NULL, 0);
  cuframes_packet_publisher_t *pub = NULL;
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &pub), CUFRAMES_OK);
  return pub;
}

static cuframes_packet_subscriber_t *connect_sub(const char *key, uint32_t mode, uint32_t max_held) {
  cuframes_subscriber_options_t so = subscriber_options(1000);
  so.max_held = max_held;
  cuframes_packet_subscriber_t *sub = NULL;
  CHECK_RC(cuframes_packet_subscriber_create(key, "c-packets", mode, &so, &sub), CUFRAMES_OK);
  return sub;
}

/* Takes the next packet and returns its seq (0 on failure), releasing it. */
static uint64_t take(cuframes_packet_subscriber_t *sub, int *key) {
  cuframes_packet_t *p = NULL;
  int rc = cuframes_packet_subscriber_next(sub, 1000, &p);
  CHECK(rc == CUFRAMES_OK && p, "next: %s", cuframes_error_name(rc));
  if (!p) return 0;
  cuframes_packet_info_t info;
  cuframes_packet_info(p, &info);
  if (key) *key = (info.flags & CUFRAMES_PACKET_KEY) != 0;
  uint64_t seq = cuframes_packet_seq(p);
  cuframes_packet_release(p);
  return seq;
}

/* ---- child processes ---------------------------------------------------- */

DEFINE_SUBSCRIBERS_OF(cuframes_packet_publisher_stats)

static int publish_seq(void *pub, uint64_t seq, uint8_t *buf) { return publish_packet(pub, seq, buf); }

static int child_publish(const char *key, unsigned n, unsigned subs) {
  cuframes_publisher_options_t opts = child_publisher_options();
  cuframes_packet_stream_t s = h264_stream((const uint8_t *)"\0\0\0\1gSPS\0\0\0\1hPPS", 16);
  cuframes_packet_publisher_t *pub = NULL;
  int rc = cuframes_packet_publisher_create(key, &s, &opts, &pub);
  if (rc) return failed("publish", "create", 10 + rc);
  uint8_t *buf = malloc(MAXP);
  rc = publish_seqs(pub, n, subs, subscribers_of, publish_seq, buf, "packet");
  free(buf);
  cuframes_packet_publisher_destroy(pub);
  return rc;
}

static int child_subscribe(const char *key, unsigned n, unsigned mode) {
  cuframes_subscriber_options_t opts = subscriber_options(30000);
  cuframes_packet_subscriber_t *sub = NULL;
  int queue = mode == CUFRAMES_MODE_QUEUE;
  int rc = cuframes_packet_subscriber_create(key, queue ? "c-queue" : "c-newest", mode, &opts, &sub);
  if (rc) return failed("subscribe", "create", 10 + rc);
  const uint8_t *extradata = NULL;
  size_t extradata_len = 0;
  int bad = cuframes_packet_subscriber_extradata(sub, &extradata, &extradata_len) || extradata_len != 16 ||
            memcmp(extradata, "\0\0\0\1gSPS\0\0\0\1hPPS", 16) != 0;
  if (bad) fprintf(stderr, "subscribe: wrong extradata (%zu bytes)\n", extradata_len);
  uint64_t first = 0, last = 0, got = 0, jumps = 0;
  while (!bad) {
    cuframes_packet_t *p = NULL;
    rc = cuframes_packet_subscriber_next(sub, 30000, &p);
    if (rc == CUFRAMES_ERR_CLOSED) break;
    if (rc) {
      bad = failed("subscribe", "next", 1);
      break;
    }
    uint64_t seq = cuframes_packet_seq(p);
    /* Decodable: the first packet and the first after any skip are keyframes. */
    if (seq <= last || (queue && seq != last + 1) || (seq != last + 1 && !is_key_seq(seq))) {
      fprintf(stderr, "subscribe (%s): seq %llu after %llu\n", queue ? "queue" : "newest-only",
              (unsigned long long)seq, (unsigned long long)last);
      bad = 1;
    }
    if (verify_packet(p)) bad = 1;
    jumps += got > 0 && seq != last + 1;
    if (got == 0) first = seq;
    last = seq;
    got++;
    cuframes_packet_release(p);
  }
  cuframes_subscriber_stats_t st;
  cuframes_packet_subscriber_stats(sub, &st);
  cuframes_packet_subscriber_destroy(sub);
  /* n is a keyframe (see test_cross_process): however far a newest-only
   * reader lags, it ends on it. */
  bad |= check_received("subscribe", "packets", queue, got, last, n, st.dropped);
  printf("  subscriber (%s): %llu packets, first seq %llu, last %llu, %llu skipped in %llu jumps to a keyframe, "
         "every byte verified\n",
         queue ? "queue" : "newest-only", (unsigned long long)got, (unsigned long long)first,
         (unsigned long long)last, (unsigned long long)st.dropped, (unsigned long long)jumps);
  return bad;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_constants(void) {
  CHECK(CUFRAMES_CODEC_H264 == 1 && CUFRAMES_CODEC_HEVC == 2 && CUFRAMES_CODEC_AV1 == 3 && CUFRAMES_CODEC_VP9 == 4 &&
            CUFRAMES_CODEC_VP8 == 5 && CUFRAMES_CODEC_MJPEG == 6,
        "codec numbers are the protocol's");
  CHECK(CUFRAMES_PACKET_KEY == 1 && CUFRAMES_PACKET_DISCONTINUITY == 2, "flag bits");
  CHECK(CUFRAMES_PACKET_MAX_BYTES == 256u << 20 && CUFRAMES_PACKET_MAX_EXTRADATA == 1u << 20, "limits");
}

static void test_bad_arguments(void) {
  char key[64];
  make_key(key, sizeof key, "bad");
  cuframes_packet_publisher_t *pub = (cuframes_packet_publisher_t *)&pub; /* must be cleared */
  cuframes_packet_subscriber_t *sub = (cuframes_packet_subscriber_t *)&sub;
  cuframes_packet_t *pkt = (cuframes_packet_t *)&pkt;
  cuframes_packet_stream_t s = h264_stream(NULL, 0);
  cuframes_packet_info_t info = info_for(1);
  uint64_t seq = 7;
  uint8_t byte = 0;

  CHECK_RC(cuframes_packet_publisher_create(NULL, &s, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(pub == NULL, "out not cleared on failure");
  CHECK(strstr(cuframes_last_error_message(), "key is NULL") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_packet_publisher_create(key, NULL, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_publisher_create("../x", &s, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  s.codec = 0;
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  s.codec = 99;
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(strstr(cuframes_last_error_message(), "codec 99") != NULL, "%s", cuframes_last_error_message());
  s = h264_stream(NULL, 0);
  s.max_packet = 0;
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  s.max_packet = CUFRAMES_PACKET_MAX_BYTES + 1;
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  s = h264_stream(NULL, 0);
  cuframes_publisher_options_t po;
  cuframes_publisher_options_init(&po);
  po.policy = 9;
  CHECK_RC(cuframes_packet_publisher_create(key, &s, &po, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(pub == NULL, "no publisher on failure");

  CHECK_RC(cuframes_packet_publisher_publish(NULL, &byte, 1, &info, &seq), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(seq == 0, "seq not cleared on failure");
  CHECK_RC(cuframes_packet_publisher_commit(NULL, 1, &info, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_publisher_abort(NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_publisher_loan(NULL, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(cuframes_packet_publisher_max_packet(NULL) == 0, "max_packet of NULL");
  cuframes_packet_publisher_destroy(NULL);

  CHECK_RC(cuframes_packet_subscriber_create(NULL, "n", CUFRAMES_MODE_QUEUE, NULL, &sub),
           CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(sub == NULL, "out not cleared on failure");
  CHECK_RC(cuframes_packet_subscriber_create(key, "n", 7, NULL, &sub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_subscriber_next(NULL, 0, &pkt), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(pkt == NULL, "packet_out not cleared on failure");
  CHECK(cuframes_packet_subscriber_codec(NULL) == 0, "codec of NULL");
  cuframes_packet_subscriber_destroy(NULL);
  CHECK(cuframes_packet_seq(NULL) == 0 && cuframes_packet_size(NULL) == 0 && cuframes_packet_data(NULL) == NULL &&
            cuframes_packet_commit_ns(NULL) == 0,
        "accessors of NULL give 0");
  CHECK(strstr(cuframes_last_error_message(), "packet is NULL") != NULL, "%s", cuframes_last_error_message());
  cuframes_packet_release(NULL);

  cuframes_subscriber_options_t so = subscriber_options(20);
  CHECK_RC(cuframes_packet_subscriber_create(key, "n", CUFRAMES_MODE_QUEUE, &so, &sub), CUFRAMES_ERR_NOT_FOUND);
  CHECK(sub == NULL, "no subscriber on failure");
}

static void test_round_trip(void) {
  char key[64];
  make_key(key, sizeof key, "round");
  static const uint8_t sps_pps[] = {0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80};
  cuframes_packet_stream_t s = h264_stream(sps_pps, sizeof sps_pps);
  s.codec = CUFRAMES_CODEC_HEVC;
  cuframes_packet_publisher_t *pub = NULL;
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &pub), CUFRAMES_OK);
  if (!pub) return;
  cuframes_packet_publisher_t *second = NULL;
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &second), CUFRAMES_ERR_ALREADY_EXISTS);
  CHECK(cuframes_packet_publisher_max_packet(pub) == MAXP, "max_packet %zu", cuframes_packet_publisher_max_packet(pub));
  cuframes_packet_subscriber_t *sub = connect_sub(key, CUFRAMES_MODE_QUEUE, 1);
  if (!sub) return;

  cuframes_packet_stream_t got;
  CHECK_RC(cuframes_packet_subscriber_stream(sub, &got), CUFRAMES_OK);
  CHECK(got.codec == CUFRAMES_CODEC_HEVC && got.width == 1920 && got.height == 1080 && got.max_packet == MAXP &&
            got.extradata_len == sizeof sps_pps && got.extradata && memcmp(got.extradata, sps_pps, sizeof sps_pps) == 0,
        "stream as the subscriber sees it");
  CHECK(cuframes_packet_subscriber_codec(sub) == CUFRAMES_CODEC_HEVC, "codec");

  cuframes_packet_t *p = NULL;
  CHECK_RC(cuframes_packet_subscriber_try_next(sub, &p), CUFRAMES_ERR_WOULD_BLOCK);
  CHECK_RC(cuframes_packet_subscriber_next(sub, 20, &p), CUFRAMES_ERR_TIMEOUT);
  CHECK(p == NULL, "no packet on timeout");

  uint8_t buf[MAXP];
  for (uint64_t seq = 1; seq <= 4; seq++) CHECK_RC(publish_packet(pub, seq, buf), CUFRAMES_OK);
  /* Flags other than KEY and DISCONTINUITY are carried as given; so is an empty packet. */
  cuframes_packet_info_t odd = {-5, -7, 0, (uint64_t)1 << 40};
  uint64_t seq = 0;
  CHECK_RC(cuframes_packet_publisher_publish(pub, buf, 0, &odd, &seq), CUFRAMES_OK);
  CHECK(seq == 5, "seq %llu", (unsigned long long)seq);

  for (uint64_t want = 1; want <= 4; want++) {
    CHECK_RC(cuframes_packet_subscriber_next(sub, 1000, &p), CUFRAMES_OK);
    if (!p) return;
    CHECK(cuframes_packet_seq(p) == want && verify_packet(p) == 0, "packet %llu", (unsigned long long)want);
    if (want == 1) {
      /* max_held is 1: a second packet waits for the first. */
      cuframes_packet_t *q = NULL;
      CHECK_RC(cuframes_packet_subscriber_next(sub, 10, &q), CUFRAMES_ERR_CAPACITY);
    }
    cuframes_packet_release(p);
  }
  CHECK_RC(cuframes_packet_subscriber_try_next(sub, &p), CUFRAMES_OK);
  cuframes_packet_info_t info;
  CHECK_RC(cuframes_packet_info(p, &info), CUFRAMES_OK);
  CHECK(cuframes_packet_seq(p) == 5 && cuframes_packet_size(p) == 0 && cuframes_packet_data(p) != NULL &&
            memcmp(&info, &odd, sizeof info) == 0,
        "empty packet with unknown flags: size %zu flags %llx", cuframes_packet_size(p),
        (unsigned long long)info.flags);
  cuframes_packet_release(p);

  cuframes_subscriber_stats_t sst;
  CHECK_RC(cuframes_packet_subscriber_stats(sub, &sst), CUFRAMES_OK);
  CHECK(sst.frames_received == 5 && sst.last_seq == 5 && sst.dropped == 0 && sst.gap_count == 0 &&
            sst.last_frame_pts_ns == -5 && sst.timeouts == 1,
        "subscriber stats: received %llu last %llu", (unsigned long long)sst.frames_received,
        (unsigned long long)sst.last_seq);
  cuframes_publisher_stats_t pst;
  CHECK_RC(cuframes_packet_publisher_stats(pub, &pst), CUFRAMES_OK);
  CHECK(pst.published == 5 && pst.head_seq == 5 && pst.subscribers == 1 && pst.slot_count == 8 && pst.writing == 0,
        "publisher stats: published %llu subscribers %u", (unsigned long long)pst.published, pst.subscribers);

  /* Destroying the publisher closes the stream: drained, then CLOSED. */
  cuframes_packet_publisher_destroy(pub);
  CHECK_RC(cuframes_packet_subscriber_next(sub, 1000, &p), CUFRAMES_ERR_CLOSED);
  cuframes_packet_subscriber_destroy(sub);
}

static void test_late_joiner(void) {
  char key[64];
  make_key(key, sizeof key, "late");
  cuframes_packet_publisher_t *pub = create_publisher(key);
  if (!pub) return;
  /* K P P K P P: seqs 1..6 with keyframes at 1 and 4. */
  uint8_t data[16] = {0};
  cuframes_packet_info_t key_info = {0, 0, 0, CUFRAMES_PACKET_KEY}, delta = {0, 0, 0, 0};
  for (int i = 0; i < 6; i++)
    CHECK_RC(cuframes_packet_publisher_publish(pub, data, sizeof data, i % 3 == 0 ? &key_info : &delta, NULL),
             CUFRAMES_OK);
  cuframes_packet_subscriber_t *newest = connect_sub(key, CUFRAMES_MODE_NEWEST_ONLY, 1);
  cuframes_packet_subscriber_t *queue = connect_sub(key, CUFRAMES_MODE_QUEUE, 1);
  if (!newest || !queue) return;
  int k = 0;
  uint64_t s = take(newest, &k);
  CHECK(s == 4 && k, "newest-only late joiner starts at seq %llu (key %d), want the keyframe 4", (unsigned long long)s,
        k);
  s = take(queue, &k);
  CHECK(s == 4 && k, "queue late joiner starts at seq %llu (key %d), want the keyframe 4", (unsigned long long)s, k);
  CHECK(take(newest, NULL) == 5 && take(newest, NULL) == 6, "newest-only goes on in order");
  CHECK(take(queue, NULL) == 5 && take(queue, NULL) == 6, "queue goes on in order");
  cuframes_packet_t *p = NULL;
  CHECK_RC(cuframes_packet_subscriber_try_next(newest, &p), CUFRAMES_ERR_WOULD_BLOCK);

  /* P K P while both lag: newest-only jumps to the newer keyframe (8),
   * skipping 7; queue loses nothing. */
  CHECK_RC(cuframes_packet_publisher_publish(pub, data, sizeof data, &delta, NULL), CUFRAMES_OK);
  CHECK_RC(cuframes_packet_publisher_publish(pub, data, sizeof data, &key_info, NULL), CUFRAMES_OK);
  CHECK_RC(cuframes_packet_publisher_publish(pub, data, sizeof data, &delta, NULL), CUFRAMES_OK);
  s = take(newest, &k);
  CHECK(s == 8 && k, "newest-only read seq %llu (key %d) after lagging, want the keyframe 8", (unsigned long long)s, k);
  CHECK(take(newest, NULL) == 9, "then 9");
  CHECK(take(queue, NULL) == 7 && take(queue, NULL) == 8 && take(queue, NULL) == 9, "queue reads 7, 8, 9");
  cuframes_subscriber_stats_t st;
  cuframes_packet_subscriber_stats(newest, &st);
  CHECK(st.dropped == 1, "newest-only skipped %llu, want 1", (unsigned long long)st.dropped);
  cuframes_packet_subscriber_stats(queue, &st);
  CHECK(st.dropped == 0, "queue dropped %llu", (unsigned long long)st.dropped);
  cuframes_packet_subscriber_destroy(newest);
  cuframes_packet_subscriber_destroy(queue);
  cuframes_packet_publisher_destroy(pub);
}

static void test_oversize(void) {
  char key[64];
  make_key(key, sizeof key, "big");
  cuframes_packet_publisher_t *pub = create_publisher(key);
  cuframes_packet_subscriber_t *sub = pub ? connect_sub(key, CUFRAMES_MODE_QUEUE, 1) : NULL;
  if (!sub) return;
  uint8_t *buf = calloc(1, MAXP + 1);
  cuframes_packet_info_t key_info = {0, 0, 0, CUFRAMES_PACKET_KEY};
  uint64_t seq = 9;
  CHECK_RC(cuframes_packet_publisher_publish(pub, buf, MAXP + 1, &key_info, &seq), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(seq == 0, "seq %llu on failure", (unsigned long long)seq);
  CHECK(strstr(cuframes_last_error_message(), "larger") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_packet_publisher_publish(pub, NULL, 1, &key_info, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_publisher_publish(pub, buf, 1, NULL, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_publisher_stats_t pst;
  cuframes_packet_publisher_stats(pub, &pst);
  CHECK(pst.published == 0 && pst.writing == 0, "published %llu after refusals", (unsigned long long)pst.published);
  cuframes_packet_t *p = NULL;
  CHECK_RC(cuframes_packet_subscriber_try_next(sub, &p), CUFRAMES_ERR_WOULD_BLOCK);

  /* Too long at commit: refused, the loan stays pending until aborted. */
  cuframes_packet_lease_t lease;
  CHECK_RC(cuframes_packet_publisher_loan(pub, &lease), CUFRAMES_OK);
  CHECK_RC(cuframes_packet_publisher_commit(pub, MAXP + 1, &key_info, &seq), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_publisher_commit(pub, 1, NULL, &seq), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_publisher_loan(pub, &lease), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_publisher_abort(pub), CUFRAMES_OK);
  CHECK_RC(cuframes_packet_subscriber_try_next(sub, &p), CUFRAMES_ERR_WOULD_BLOCK);

  /* Exactly max_packet is fine. */
  memset(buf, 0xab, MAXP);
  CHECK_RC(cuframes_packet_publisher_publish(pub, buf, MAXP, &key_info, &seq), CUFRAMES_OK);
  CHECK(seq == 1, "seq %llu", (unsigned long long)seq);
  CHECK_RC(cuframes_packet_subscriber_next(sub, 1000, &p), CUFRAMES_OK);
  CHECK(p && cuframes_packet_seq(p) == 1 && cuframes_packet_size(p) == MAXP &&
            memcmp(cuframes_packet_data(p), buf, MAXP) == 0,
        "the largest packet");
  cuframes_packet_release(p);
  free(buf);
  cuframes_packet_subscriber_destroy(sub);
  cuframes_packet_publisher_destroy(pub);
}

static void test_incompatible(void) {
  char frames[64], packets[64];
  make_key(frames, sizeof frames, "frames");
  make_key(packets, sizeof packets, "packets");
  cuframes_publisher_t *fpub = NULL;
  CHECK_RC(cuframes_publisher_create(frames, CUFRAMES_FORMAT_GRAY8, 64, 64, NULL, &fpub), CUFRAMES_OK);
  cuframes_packet_publisher_t *ppub = create_publisher(packets);
  if (!fpub || !ppub) return;
  cuframes_subscriber_options_t so = subscriber_options(100);

  cuframes_packet_subscriber_t *psub = (cuframes_packet_subscriber_t *)&psub;
  CHECK_RC(cuframes_packet_subscriber_create(frames, "p", CUFRAMES_MODE_QUEUE, &so, &psub),
           CUFRAMES_ERR_INCOMPATIBLE);
  CHECK(psub == NULL, "no subscriber on failure");
  cuframes_subscriber_t *fsub = (cuframes_subscriber_t *)&fsub;
  CHECK_RC(cuframes_subscriber_create(packets, "f", CUFRAMES_MODE_QUEUE, &so, &fsub), CUFRAMES_ERR_INCOMPATIBLE);
  CHECK(fsub == NULL, "no subscriber on failure");

  cuframes_publisher_stats_t st;
  cuframes_publisher_stats(fpub, &st);
  CHECK(st.subscribers == 0, "the refused packet subscriber left a record (%u)", st.subscribers);
  cuframes_packet_publisher_stats(ppub, &st);
  CHECK(st.subscribers == 0, "the refused frame subscriber left a record (%u)", st.subscribers);
  cuframes_packet_publisher_destroy(ppub);
  cuframes_publisher_destroy(fpub);
}

static void test_zero_copy(void) {
  char key[64];
  make_key(key, sizeof key, "loan");
  cuframes_packet_publisher_t *pub = create_publisher(key);
  cuframes_packet_subscriber_t *sub = pub ? connect_sub(key, CUFRAMES_MODE_QUEUE, 1) : NULL;
  if (!sub) return;
  cuframes_packet_info_t key_info = {1, 2, 3, CUFRAMES_PACKET_KEY};
  uint64_t seq = 9;
  uint8_t byte = 1;
  CHECK_RC(cuframes_packet_publisher_commit(pub, 1, &key_info, &seq), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(seq == 0 && strstr(cuframes_last_error_message(), "no slot is loaned") != NULL, "%s",
        cuframes_last_error_message());
  CHECK_RC(cuframes_packet_publisher_abort(pub), CUFRAMES_ERR_INVALID_ARGUMENT);

  cuframes_packet_lease_t lease, lease2;
  CHECK_RC(cuframes_packet_publisher_loan(pub, &lease), CUFRAMES_OK);
  CHECK(lease.seq == 1 && lease.data != NULL && lease.capacity == MAXP, "lease: seq %llu capacity %zu",
        (unsigned long long)lease.seq, lease.capacity);
  memset(&lease2, 0xff, sizeof lease2);
  CHECK_RC(cuframes_packet_publisher_loan(pub, &lease2), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(lease2.data == NULL && lease2.capacity == 0 && lease2.seq == 0, "lease not zeroed on failure");
  CHECK(strstr(cuframes_last_error_message(), "already loaned") != NULL, "%s", cuframes_last_error_message());
  CHECK_RC(cuframes_packet_publisher_publish(pub, &byte, 1, &key_info, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_publisher_stats_t pst;
  cuframes_packet_publisher_stats(pub, &pst);
  CHECK(pst.writing == 1, "writing while loaned");
  memset(lease.data, 0x5a, lease.capacity);
  CHECK_RC(cuframes_packet_publisher_abort(pub), CUFRAMES_OK);
  CHECK_RC(cuframes_packet_publisher_abort(pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_packet_t *p = NULL;
  CHECK_RC(cuframes_packet_subscriber_try_next(sub, &p), CUFRAMES_ERR_WOULD_BLOCK);

  /* Written in place, the whole capacity, byte-exact on the other side. */
  CHECK_RC(cuframes_packet_publisher_loan(pub, &lease), CUFRAMES_OK);
  CHECK(lease.seq == 1, "an aborted loan used no seq (%llu)", (unsigned long long)lease.seq);
  for (size_t i = 0; i < lease.capacity; i++) lease.data[i] = pattern(1, i);
  CHECK_RC(cuframes_packet_publisher_commit(pub, lease.capacity, &key_info, &seq), CUFRAMES_OK);
  CHECK(seq == 1, "seq %llu", (unsigned long long)seq);
  CHECK_RC(cuframes_packet_subscriber_next(sub, 1000, &p), CUFRAMES_OK);
  if (p) {
    const uint8_t *d = cuframes_packet_data(p);
    int same = cuframes_packet_size(p) == MAXP;
    for (size_t i = 0; same && i < MAXP; i++) same = d[i] == pattern(1, i);
    cuframes_packet_info_t info;
    cuframes_packet_info(p, &info);
    CHECK(same && memcmp(&info, &key_info, sizeof info) == 0, "the packet written in place");
    cuframes_packet_release(p);
  }
  /* A loan left open is dropped unpublished by destroy. */
  CHECK_RC(cuframes_packet_publisher_loan(pub, &lease), CUFRAMES_OK);
  cuframes_packet_publisher_destroy(pub);
  CHECK_RC(cuframes_packet_subscriber_next(sub, 1000, &p), CUFRAMES_ERR_CLOSED);
  cuframes_packet_subscriber_destroy(sub);
}

static void test_extradata(void) {
  char key[64];
  make_key(key, sizeof key, "extra");
  cuframes_packet_publisher_t *pub = NULL;
  cuframes_packet_subscriber_t *sub;
  const uint8_t *data = (const uint8_t *)&data;
  size_t len = 7;

  /* None: NULL and 0. */
  pub = create_publisher(key);
  sub = pub ? connect_sub(key, CUFRAMES_MODE_NEWEST_ONLY, 1) : NULL;
  if (!sub) return;
  CHECK_RC(cuframes_packet_subscriber_extradata(sub, &data, &len), CUFRAMES_OK);
  CHECK(data == NULL && len == 0, "no extradata: %p, %zu", (const void *)data, len);
  CHECK_RC(cuframes_packet_subscriber_extradata(sub, NULL, &len), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK_RC(cuframes_packet_subscriber_extradata(sub, &data, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(data == NULL, "data cleared on failure");
  CHECK_RC(cuframes_packet_subscriber_stream(sub, NULL), CUFRAMES_ERR_INVALID_ARGUMENT);
  cuframes_packet_subscriber_destroy(sub);
  cuframes_packet_publisher_destroy(pub);

  /* The largest: 1 MiB, byte-exact; the publisher's buffer is copied. */
  size_t big = CUFRAMES_PACKET_MAX_EXTRADATA;
  uint8_t *bytes = malloc(big + 1);
  for (size_t i = 0; i <= big; i++) bytes[i] = pattern(99, i);
  cuframes_packet_stream_t s = h264_stream(bytes, big + 1);
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  CHECK(strstr(cuframes_last_error_message(), "at most") != NULL, "%s", cuframes_last_error_message());
  s.extradata = NULL;
  s.extradata_len = 4;
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &pub), CUFRAMES_ERR_INVALID_ARGUMENT);
  s = h264_stream(bytes, big);
  CHECK_RC(cuframes_packet_publisher_create(key, &s, NULL, &pub), CUFRAMES_OK);
  memset(bytes, 0, big);
  sub = pub ? connect_sub(key, CUFRAMES_MODE_QUEUE, 1) : NULL;
  if (!sub) return;
  for (size_t i = 0; i < big; i++) bytes[i] = pattern(99, i);
  /* The subscriber keeps its copy after the publisher is gone. */
  cuframes_packet_publisher_destroy(pub);
  CHECK_RC(cuframes_packet_subscriber_extradata(sub, &data, &len), CUFRAMES_OK);
  CHECK(len == big && data && memcmp(data, bytes, big) == 0, "1 MiB of extradata: %zu bytes", len);
  cuframes_packet_stream_t got;
  CHECK_RC(cuframes_packet_subscriber_stream(sub, &got), CUFRAMES_OK);
  CHECK(got.extradata == data && got.extradata_len == big, "stream gives the same extradata");
  cuframes_packet_subscriber_destroy(sub);
  free(bytes);
}

static void test_release_after_publisher_gone(void) {
  char key[64];
  make_key(key, sizeof key, "gone");
  cuframes_packet_publisher_t *pub = create_publisher(key);
  cuframes_packet_subscriber_t *sub = pub ? connect_sub(key, CUFRAMES_MODE_QUEUE, 2) : NULL;
  if (!sub) return;
  uint8_t buf[MAXP];
  CHECK_RC(publish_packet(pub, 1, buf), CUFRAMES_OK);
  CHECK_RC(publish_packet(pub, 2, buf), CUFRAMES_OK);
  cuframes_packet_t *a = NULL, *b = NULL, *c = NULL;
  CHECK_RC(cuframes_packet_subscriber_next(sub, 1000, &a), CUFRAMES_OK);
  CHECK_RC(cuframes_packet_subscriber_next(sub, 1000, &b), CUFRAMES_OK);
  if (!a || !b) return;
  cuframes_packet_publisher_destroy(pub);
  CHECK(verify_packet(a) == 0 && verify_packet(b) == 0, "packets held across the publisher's close");
  cuframes_packet_release(b);
  CHECK_RC(cuframes_packet_subscriber_next(sub, 1000, &c), CUFRAMES_ERR_CLOSED);
  CHECK(c == NULL, "no packet after the close");
  cuframes_packet_subscriber_destroy(sub);
  CHECK(cuframes_packet_seq(a) == 1 && verify_packet(a) == 0,
        "a packet held after its subscriber and publisher are gone");
  cuframes_packet_release(a);
}

static void test_cross_process(void) {
  /* The last packet is a keyframe (1 + 30 GOPs): it stays in the ring after
   * the close, so a newest-only reader that lags, and may not continue a
   * group of pictures whose packets were overwritten, still ends on it. */
  cross_process("301");
}

int main(int argc, char **argv) {
  self_path = argv[0];
  if (argc == 5 && strcmp(argv[1], "publish") == 0)
    return child_publish(argv[2], (unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]));
  if (argc == 5 && strcmp(argv[1], "subscribe") == 0)
    return child_subscribe(argv[2], (unsigned)atoi(argv[3]), (unsigned)atoi(argv[4]));
  if (argc != 1) {
    fprintf(stderr, "usage: %s [publish KEY N SUBS | subscribe KEY N MODE]\n", argv[0]);
    return 2;
  }
  printf("cuframes %s: packet streams\n", cuframes_version());
  run("constants", test_constants);
  run("bad_arguments", test_bad_arguments);
  run("round_trip", test_round_trip);
  run("late_joiner", test_late_joiner);
  run("oversize", test_oversize);
  run("incompatible", test_incompatible);
  run("zero_copy", test_zero_copy);
  run("extradata", test_extradata);
  run("release_after_gone", test_release_after_publisher_gone);
  run("cross_process", test_cross_process);
  return finish("test_packets");
}
