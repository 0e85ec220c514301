#!/usr/bin/env python3
"""Decodes an encoded packet stream with PyAV (FFmpeg's decoders).

    python decode_packets.py KEY [--mode queue|newest] [--frames N]

Subscribes to the packet stream KEY (published by ``cuframes.PacketPublisher``
or any other cuframes packet publisher), opens a decoder for its codec with
the stream's codec configuration (``extradata``), feeds it every packet and
prints how many frames it decoded and their size when the stream closes
(or after ``--frames N``). The subscriber always starts at a keyframe and
skips only to keyframes, so the decoder never sees a broken group of
pictures; with ``--mode newest`` (the default) a decoder that falls behind
jumps to the newest keyframe instead of building up latency, with
``--mode queue`` it gets every packet.

Needs PyAV: ``pip install av``.
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from typing import Any, Iterable, List, Optional, Tuple

import av

import cuframes

NANOSECONDS = Fraction(1, 1_000_000_000)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("key", help="the packet stream's key")
    parser.add_argument("--name", default="decode_packets", help="subscriber name (cuframes ls shows it)")
    parser.add_argument("--mode", choices=["newest", "queue"], default="newest")
    parser.add_argument("--frames", type=int, default=0, help="stop after this many decoded frames (0: at the end)")
    parser.add_argument("--connect-timeout-ms", type=int, default=5000)
    args = parser.parse_args(argv)
    mode = cuframes.SubscriberMode.QUEUE if args.mode == "queue" else cuframes.SubscriberMode.NEWEST_ONLY

    with cuframes.subscribe_packets(args.key, args.name, mode, connect_timeout_ms=args.connect_timeout_ms) as sub:
        decoder = av.CodecContext.create(sub.codec, "r")
        if sub.extradata:
            decoder.extradata = sub.extradata
        decoded = 0
        size: Optional[Tuple[int, int]] = None

        def count(frames: Iterable[Any]) -> None:
            nonlocal decoded, size
            for frame in frames:
                decoded += 1
                size = (frame.width, frame.height)

        for packet in sub:
            with packet:
                # PyAV copies the bytes into its own AVPacket: the slot goes
                # back to the publisher at the end of this block.
                av_packet = av.Packet(packet.data)
                av_packet.time_base = NANOSECONDS
                av_packet.pts = packet.pts_ns
                av_packet.dts = packet.dts_ns
                av_packet.is_keyframe = packet.is_key
            count(decoder.decode(av_packet))
            if args.frames and decoded >= args.frames:
                break
        else:
            count(decoder.decode(None))  # the stream closed: flush the decoder
        dims = "x".join(map(str, size)) if size else "?"
        print(f"decoded {decoded} frames of {dims} ({sub.codec}); packets dropped to stay on keyframes: {sub.dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
