# LogSentinel image for machines with internet access:
#   docker build -t logsentinel:latest .
# Where no registry is reachable, build with docker/build-offline.sh instead (same runtime image).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# A static binary: the runtime image holds nothing else.
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target x86_64-unknown-linux-gnu \
 && mkdir -p /out/tmp && cp target/x86_64-unknown-linux-gnu/release/logsentinel /out/logsentinel

FROM scratch
COPY --from=builder /out/logsentinel /logsentinel
COPY --from=builder --chown=65532:65532 /out/tmp /tmp
USER 65532:65532
ENV LOGSENTINEL_HEALTH_FILE=/tmp/logsentinel.alive
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s CMD ["/logsentinel", "healthcheck"]
ENTRYPOINT ["/logsentinel"]
