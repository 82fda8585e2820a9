# syntax=docker/dockerfile:1
# Multi-stage build: compile with the committed `.sqlx/` query data (no database needed), then
# ship the binary alone on a slim Debian image as an unprivileged user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that editing the code does not rebuild them.
# The workspace's other members (test support, benchmark) are only declared here: the image
# builds the product alone.
COPY Cargo.toml Cargo.lock ./
COPY crates/test-support/Cargo.toml crates/test-support/
COPY crates/bench/Cargo.toml crates/bench/
COPY .cargo .cargo
RUN mkdir -p src crates/test-support/src crates/bench/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && touch crates/test-support/src/lib.rs && echo 'fn main() {}' > crates/bench/src/main.rs \
    && cargo build --release --locked -p identity-sync \
    && rm -rf src
COPY .sqlx .sqlx
COPY migrations migrations
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked -p identity-sync

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home identity-sync
COPY --from=build /src/target/release/identity-sync /usr/local/bin/identity-sync
USER identity-sync
ENV IDSYNC__ADMIN__LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["identity-sync"]
CMD ["run"]
