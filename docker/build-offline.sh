#!/usr/bin/env bash
# Builds every image the compose stack needs without pulling anything:
# - logsentinel:<crate version>, logsentinel:<git commit>, logsentinel:latest, from a static
#   binary built here (FROM scratch);
# - logsentinel-redis:local, from the host's redis-server and redis-cli (FROM scratch).
# Prints the image ids and sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

echo "== static binary"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu
mkdir -p "$context/app/tmp"
cp target/x86_64-unknown-linux-gnu/release/logsentinel "$context/app/logsentinel"
strip "$context/app/logsentinel"
docker build -q -f docker/Dockerfile.prebuilt -t "logsentinel:$version" -t "logsentinel:$commit" -t logsentinel:latest \
  "$context/app" >/dev/null

echo "== redis image from the host's redis-server"
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
rootfs="$context/redis/rootfs"
mkdir -p "$rootfs/usr/bin" "$rootfs/data" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
for program in redis-server redis-cli; do
  path=$(readlink -f "$(command -v "$program")")
  cp "$path" "$rootfs/usr/bin/$program"
  # the shared libraries and the dynamic loader, at the paths the binary expects
  for library in $(ldd "$path" | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$library")"
    cp -L "$library" "$rootfs$library"
  done
done
cp docker/Dockerfile.redis-local "$context/redis/Dockerfile"
docker build -q -t logsentinel-redis:local "$context/redis" >/dev/null

docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^logsentinel(-redis)?:' | sort
