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
# The admin /readyz of whichever runs here: the police (9464) or the agent (9465).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s CMD ["/logsentinel", "healthcheck", "--url", "http://127.0.0.1:9464/readyz,http://127.0.0.1:9465/readyz"]
ENTRYPOINT ["/logsentinel"]
