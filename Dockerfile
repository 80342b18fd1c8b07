# prescale: multi-stage build. The runtime image has no shell and runs as a non-root user.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY models models
COPY src src
COPY tests/fixtures tests/fixtures
RUN cargo build --release --locked --bin prescale \
 && strip target/release/prescale

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/prescale /usr/local/bin/prescale
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/prescale"]
CMD ["serve"]
