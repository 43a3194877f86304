#!/usr/bin/env bash
# Builds every image the compose stack needs without pulling anything:
# - logsentinel:<crate version>, logsentinel:<git commit>, logsentinel:latest, from a static
#   binary built here (FROM scratch);
# - logsentinel-redis:local, from the host's redis-server and redis-cli (FROM scratch);
# - logsentinel-alertmanager:local, from the host's prometheus-alertmanager and amtool
#   (FROM scratch), for the compose profile "alerting".
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

echo "== alertmanager image from the host's prometheus-alertmanager"
command -v prometheus-alertmanager >/dev/null \
  || { echo "prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)" >&2; exit 1; }
rootfs="$context/alertmanager/rootfs"
mkdir -p "$rootfs/bin" "$rootfs/etc/alertmanager" "$rootfs/tmp" "$context/alertmanager/storage"
chmod 1777 "$rootfs/tmp"
for pair in prometheus-alertmanager:alertmanager amtool:amtool; do
  path=$(readlink -f "$(command -v "${pair%%:*}")")
  cp "$path" "$rootfs/bin/${pair##*:}"
  for library in $(ldd "$path" | grep -o '/[^ ]*'); do
    mkdir -p "$rootfs$(dirname "$library")"
    cp -L "$library" "$rootfs$library"
  done
done
# Debian's build reads its notification templates from here at start
if [ -d /usr/share/prometheus/alertmanager ]; then
  mkdir -p "$rootfs/usr/share/prometheus"
  cp -r /usr/share/prometheus/alertmanager "$rootfs/usr/share/prometheus/"
fi
cp docker/alertmanager.yml "$rootfs/etc/alertmanager/alertmanager.yml"
cp docker/Dockerfile.alertmanager-local "$context/alertmanager/Dockerfile"
docker build -q -t logsentinel-alertmanager:local "$context/alertmanager" >/dev/null

docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^logsentinel(-redis|-alertmanager)?:' | sort
