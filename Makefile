# hub: build, test, demo, release, install, ARM check.
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR    ?=
CARGO      ?= cargo

BIN := target/release/hub

.PHONY: all build check test-deps test demo bench release install uninstall arm-check fuzz fuzz-smoke clean

all: build

build:
	$(CARGO) build --release --locked

# The third-party tools the tests drive (mosquitto-clients, paho-mqtt 2.x, prometheus with promtool), when missing.
test-deps:
	scripts/test-deps.sh

# The quick loop: formatting, lints and every test.
check: test-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) test --locked

# What CI runs: the quick loop, a short fuzzing pass, then the ARM builds run under qemu.
test: check fuzz-smoke arm-check

# The main job end to end: PKI, a cloud, two gateways, messages both ways, a request.
demo:
	scripts/demo.sh

# Figures for hub and a Mosquitto bridge side by side (docs/benchmarks.md).
bench:
	scripts/bench.sh

# Static musl binaries for aarch64 and armv7, packaged in dist/: with `cross` when Docker or Podman
# runs, else with Debian's Rust 1.85 and musl (scripts/musl-build.sh; apt as root or sudo).
release:
	scripts/release.sh

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/hub
	ln -sf hub $(DESTDIR)$(PREFIX)/bin/cloudhub
	ln -sf hub $(DESTDIR)$(PREFIX)/bin/edgehub
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/hub
	@for f in cloudhub.yaml edgehub.yaml edgehub-quic.yaml; do \
	  if [ -e $(DESTDIR)$(SYSCONFDIR)/hub/$$f ]; then echo "keeping existing $(DESTDIR)$(SYSCONFDIR)/hub/$$f"; \
	  else install -m 0644 configs/$$f $(DESTDIR)$(SYSCONFDIR)/hub/$$f; fi; done
	@for u in cloudhub.service edgehub.service; do \
	  sed -e 's#/usr/local/bin/#$(PREFIX)/bin/#' -e 's#/etc/hub/#$(SYSCONFDIR)/hub/#' \
	      -e 's#/usr/local/share/#$(PREFIX)/share/#' configs/$$u > $$u.tmp && \
	  install -D -m 0644 $$u.tmp $(DESTDIR)$(PREFIX)/lib/systemd/system/$$u && rm -f $$u.tmp; done
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/hub/README.md

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/hub $(DESTDIR)$(PREFIX)/bin/cloudhub $(DESTDIR)$(PREFIX)/bin/edgehub
	rm -f $(DESTDIR)$(PREFIX)/lib/systemd/system/cloudhub.service $(DESTDIR)$(PREFIX)/lib/systemd/system/edgehub.service
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/hub

# Fuzzes the frame codec, the session, the config parsers and the MQTT decoder for SECONDS in all, shared by the
# targets (scripts/fuzz.sh; needs cargo-fuzz, installed if missing).
SECONDS ?= 600
fuzz:
	scripts/fuzz.sh $(SECONDS)

# A short fuzzing pass for CI: an unoptimized build, then every target for an equal share of 60 s.
fuzz-smoke:
	scripts/fuzz.sh --dev 60

# Builds and packages the musl release without Docker (Debian's Rust 1.85), checks both binaries
# are static and runs them under qemu: ARM edges over WebSocket and QUIC to a native cloud.
arm-check:
	scripts/arm-check.sh

clean:
	$(CARGO) clean
	rm -rf dist
