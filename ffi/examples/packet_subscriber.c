/*
 * Minimal cuframes packet subscriber in C: reads the encoded packets of a
 * stream (H.264, HEVC, ...) in place, prints them, and optionally writes
 * the codec configuration followed by every packet to a file (for Annex-B
 * streams, an elementary stream ffplay or ffmpeg can read).
 *
 *   cc packet_subscriber.c $(pkg-config --cflags --libs cuframes) -o packet_subscriber
 *   ./packet_subscriber cam0.h264 [packets=0 (until closed)] [queue|newest] [out.h264]
 *
 * The first packet is a keyframe, and so is the next one after any skip:
 * what it writes is decodable from the start.
 */
#include <cuframes.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *codec_name(uint32_t codec) {
  switch (codec) {
    case CUFRAMES_CODEC_H264: return "h264";
    case CUFRAMES_CODEC_HEVC: return "hevc";
    case CUFRAMES_CODEC_AV1: return "av1";
    case CUFRAMES_CODEC_VP9: return "vp9";
    case CUFRAMES_CODEC_VP8: return "vp8";
    case CUFRAMES_CODEC_MJPEG: return "mjpeg";
    default: return "unknown";
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s KEY [packets] [queue|newest] [out-file]\n", argv[0]);
    return 2;
  }
  const char *key = argv[1];
  long want = argc > 2 ? atol(argv[2]) : 0;
  uint32_t mode = argc > 3 && strcmp(argv[3], "queue") == 0 ? CUFRAMES_MODE_QUEUE : CUFRAMES_MODE_NEWEST_ONLY;
  FILE *out = NULL;
  if (argc > 4 && !(out = fopen(argv[4], "wb"))) {
    perror(argv[4]);
    return 2;
  }

  cuframes_subscriber_options_t opts;
  cuframes_subscriber_options_init(&opts);
  opts.connect_timeout_ms = 5000; /* the publisher may start a little later */

  cuframes_packet_subscriber_t *sub = NULL;
  int rc = cuframes_packet_subscriber_create(key, "c-packet-example", mode, &opts, &sub);
  if (rc != CUFRAMES_OK) {
    fprintf(stderr, "connect %s: error %d (%s): %s\n", key, rc, cuframes_error_name(rc), cuframes_last_error_message());
    if (out) fclose(out);
    return rc;
  }
  cuframes_packet_stream_t stream;
  cuframes_packet_subscriber_stream(sub, &stream);
  printf("%s: %s %ux%u, packets up to %zu bytes, %zu bytes of codec configuration\n", key, codec_name(stream.codec),
         stream.width, stream.height, stream.max_packet, stream.extradata_len);
  if (out && stream.extradata_len) fwrite(stream.extradata, 1, stream.extradata_len, out);

  long got = 0;
  unsigned long long bytes = 0;
  while (want == 0 || got < want) {
    cuframes_packet_t *pkt = NULL;
    rc = cuframes_packet_subscriber_next(sub, 1000, &pkt);
    if (rc == CUFRAMES_ERR_TIMEOUT) continue;
    if (rc != CUFRAMES_OK) break; /* CLOSED: the publisher is done; PUBLISHER_GONE: it died */
    cuframes_packet_info_t info;
    cuframes_packet_info(pkt, &info);
    const uint8_t *data = cuframes_packet_data(pkt); /* in shared memory, no copy */
    size_t size = cuframes_packet_size(pkt);
    printf("seq %llu size %zu pts %.3f s dts %.3f s%s%s\n", (unsigned long long)cuframes_packet_seq(pkt), size,
           info.pts_ns / 1e9, info.dts_ns / 1e9, info.flags & CUFRAMES_PACKET_KEY ? " key" : "",
           info.flags & CUFRAMES_PACKET_DISCONTINUITY ? " discontinuity" : "");
    if (out && size && fwrite(data, 1, size, out) != size) {
      perror("write");
      cuframes_packet_release(pkt);
      break;
    }
    bytes += size;
    cuframes_packet_release(pkt); /* the slot may be reused now */
    got++;
  }
  cuframes_subscriber_stats_t st;
  cuframes_packet_subscriber_stats(sub, &st);
  printf("%ld packets, %llu bytes, %llu skipped to reach a keyframe (%s)\n", got, bytes,
         (unsigned long long)st.dropped, rc == CUFRAMES_OK ? "done" : cuframes_strerror(rc));
  cuframes_packet_subscriber_destroy(sub);
  if (out) fclose(out);
  return rc == CUFRAMES_OK || rc == CUFRAMES_ERR_CLOSED ? 0 : rc;
}
