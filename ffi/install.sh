#!/usr/bin/env bash
# Builds the C library and installs it under PREFIX:
#   PREFIX/include/cuframes.h
#   PREFIX/lib/libcuframes.so, PREFIX/lib/libcuframes.a
#   PREFIX/lib/pkgconfig/cuframes.pc
#
#   ffi/install.sh /usr/local            # then: pkg-config --cflags --libs cuframes
#   ffi/install.sh "$HOME/.local"        # PKG_CONFIG_PATH=$HOME/.local/lib/pkgconfig
#
# Set CUFRAMES_NO_BUILD=1 to install what target/release already holds.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 PREFIX" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="$(mkdir -p "$1" && cd "$1" && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
if [ "${CUFRAMES_NO_BUILD:-0}" = 0 ]; then
  (cd "$root" && cargo build --release -p cuframes-ffi)
fi
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -1)"
# What a static link needs besides libcuframes.a
# (`cargo rustc -p cuframes-ffi --release --crate-type staticlib -- --print native-static-libs`).
libs_private="-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc"

install -d "$prefix/include" "$prefix/lib/pkgconfig"
install -m 0644 "$root/ffi/include/cuframes.h" "$prefix/include/cuframes.h"
install -m 0755 "$target/release/libcuframes.so" "$prefix/lib/libcuframes.so"
install -m 0644 "$target/release/libcuframes.a" "$prefix/lib/libcuframes.a"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" -e "s|@LIBS_PRIVATE@|$libs_private|" \
  "$root/ffi/cuframes.pc.in" > "$prefix/lib/pkgconfig/cuframes.pc"
echo "installed cuframes $version C library under $prefix"
