# Everything runs with the project's own Bun (node_modules/.bin/bun, pinned in
# package.json and package-lock.json); nothing is installed globally.
SHELL := bash
.SHELLFLAGS := -o pipefail -c
BUN := node_modules/.bin/bun
TSC := node_modules/.bin/tsc
STAMP := node_modules/.stamp

.PHONY: all deps test typecheck release release-check demo bench clean

all: test

# Debian packages (apt-get as root, else a hint) and the npm dependencies.
deps: $(STAMP)
	bash scripts/deps.sh

$(STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	@# Bun's postinstall links the platform binary; run it by hand if npm skipped scripts.
	$(BUN) --version >/dev/null 2>&1 || (cd node_modules/bun && node install.js)
	touch $@

typecheck: $(STAMP)
	$(TSC) --noEmit -p .

# The whole suite: type check, unit tests, CLI and PKI tests against the real program,
# and the arm64 release executable under qemu-user.
test: deps typecheck
	$(BUN) test --timeout 30000 2>&1 | tee .test.log
	@awk '/^ *[0-9]+ pass$$/{p=$$1} /^ *[0-9]+ fail$$/{f=$$1} END{printf "tests: %d passed, %d failed\n", p, f}' .test.log

# All 16 executables (4 targets x generic/onsite/master/relay), SHA256SUMS and SIZES.txt
# into dist/; `make release-linux-arm64` builds one target.
release: $(STAMP)
	$(BUN) build/release.ts

release-%: $(STAMP)
	$(BUN) build/release.ts --target $*

release-check:
	cd dist && sha256sum -c SHA256SUMS

demo: deps
	$(BUN) scripts/demo.ts

# Benchmarks (bench/*.bench.ts; `make bench B=nat` runs the ones whose name starts so).
# Each prints its figures as ratios to peers measured in the same run; tests never time.
bench: deps
	$(BUN) bench/index.ts $(B)

clean:
	rm -rf dist
