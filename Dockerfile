# A Tessera node: nothing but the statically linked binary. No base image is
# pulled (FROM scratch), so the image builds with no registry; the binary
# resolves names from the /etc/hosts and /etc/resolv.conf docker mounts in.
#
# Build it with scripts/fleet image: the static binary
#   RUSTFLAGS='-C target-feature=+crt-static' \
#     cargo build --release --target x86_64-unknown-linux-gnu --bin tessera
# a copy of /etc/ssl/certs/ca-certificates.crt in target/docker/ and an empty
# target/docker/root/data (mode 700), then
#   docker build -t tessera:dev .
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/tessera /tessera
# ECS discovery calls the ECS API over HTTPS and trusts the system's roots:
# the build machine's CA bundle, copied to target/docker by scripts/fleet.
COPY target/docker/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# Listen on every interface of the container; --advertise says which address
# the others use. Gossip 7946/udp and peer 7947/tcp follow the listen host.
ENV TESSERA_LISTEN=0.0.0.0:7070
# Tickets and votes are kept in /data: mount a volume there (the compose fleet
# mounts a directory per node; on ECS see deploy/ecs/README.md). Without one
# they survive a restart of the container, not its replacement. The image's
# /data belongs to the node's user, readable by it only (a directory others
# can read is refused: it holds credentials).
COPY --chown=65534:65534 target/docker/root/ /
ENV TESSERA_DATA_DIR=/data
EXPOSE 7070/tcp 7946/udp 7947/tcp
USER 65534:65534
# Healthy = ready: joined the cluster and caught up (or alone by design).
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/tessera", "health", "--timeout", "2s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/tessera"]
CMD ["serve"]
