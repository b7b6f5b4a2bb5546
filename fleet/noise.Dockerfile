# The garbage sender of the fault-injection suite (scenario 5): a static
# binary and nothing else, built by scripts/fleet image.
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/tessera-noise /tessera-noise
USER 65534:65534
ENTRYPOINT ["/tessera-noise"]
