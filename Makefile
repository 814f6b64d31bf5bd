# pgnd build. `make run` installs what is missing (as root), builds and starts pgnd;
# `make test` builds and runs every test; `make bench` compares with PyTorch.

CC      ?= gcc
# x86-64-v3 (AVX2+FMA) so valgrind can run our code; oneDNN dispatches AVX-512 itself at run time, as
# does nn/upsample_dwconv.c (target attribute and a CPU check).
ARCH    ?= -march=x86-64-v3
OPT     ?= -O2
# -fno-math-errno: sqrtf and the like may vectorise (nothing here reads errno after a math call;
# values are the same).
CFLAGS  += -std=gnu11 $(OPT) $(ARCH) -fno-math-errno -g -fopenmp -Wall -Wextra -Wno-unused-parameter -I. -MMD -MP
LDLIBS  += -ldnnl -lsqlite3 -lmicrohttpd -ljansson -lpng -ljpeg -lm -lpthread -fopenmp
B       := build

# Debian packages the build and tests need (kept in one place: .ci/run and `make deps` use it).
DEB_PKGS := gcc make pkg-config libdnnl-dev libmicrohttpd-dev libjansson-dev libsqlite3-dev \
            libpng-dev libjpeg62-turbo-dev libcmocka-dev \
            nodejs chromium fonts-dejavu-core curl
# (npm: Debian's `npm` package, unless the nodejs in use brings its own, as NodeSource's does;
# .ci/run installs it only when the npm command is missing.)

NN_SRC    := $(wildcard nn/*.c)
PGN_SRC   := $(wildcard pgn/*.c)
STORE_SRC := $(wildcard store/*.c)
API_SRC   := $(wildcard api/*.c)
# daemon/ goes into the library too (tests link it), except the entry point.
DAEMON_LIB_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
LIB_SRC   := $(NN_SRC) $(PGN_SRC) $(STORE_SRC) $(API_SRC) $(DAEMON_LIB_SRC)
# The SQL migrations are compiled into the binary (tools/embed_sql.sh turns them into C strings).
MIGRATIONS := $(sort $(wildcard migrations/*.sql))
GEN_MIGRATIONS := $(B)/gen/migrations.c
LIB_OBJ   := $(LIB_SRC:%.c=$(B)/%.o) $(if $(MIGRATIONS),$(B)/gen/migrations.o)
LIB       := $(B)/libpgnd.a

TEST_SRC  := $(wildcard tests/unit/test_*.c)
API_TEST_SRC := $(wildcard tests/api/test_*.c)
UNIT_TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(B)/tests/%)
API_TEST_BIN := $(API_TEST_SRC:tests/api/%.c=$(B)/tests/%)
TEST_BIN  := $(UNIT_TEST_BIN) $(API_TEST_BIN)
TEST_SUPPORT := $(filter-out $(TEST_SRC),$(wildcard tests/unit/*.c))
TEST_SUPPORT_OBJ := $(TEST_SUPPORT:%.c=$(B)/%.o)

BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(B)/bench/%)

DAEMON_OBJ := $(B)/daemon/main.o

.DELETE_ON_ERROR:
.PHONY: all test bench run deps clean print-deps install web teacher photos
all: $(LIB) $(TEST_BIN) $(BENCH_BIN) $(B)/pgnd

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(GEN_MIGRATIONS): $(MIGRATIONS) tools/embed_sql.sh
	@mkdir -p $(dir $@)
	tools/embed_sql.sh $(MIGRATIONS) > $@

$(B)/gen/migrations.o: $(GEN_MIGRATIONS)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(UNIT_TEST_BIN): $(B)/tests/%: $(B)/tests/unit/%.o $(TEST_SUPPORT_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS) -lcmocka

# API tests drive a real pgnd (built first) over loopback HTTP.
$(API_TEST_BIN): $(B)/tests/%: $(B)/tests/api/%.o $(B)/tests/api/client.o $(LIB) $(B)/pgnd
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(filter %.o %.a,$^) -o $@ $(LDLIBS) -lcmocka

$(B)/bench/%: $(B)/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

$(B)/pgnd: $(DAEMON_OBJ) $(LIB)
	$(CC) $(CFLAGS) $^ -o $@ $(LDLIBS)

# The inception3 teacher's weights (make teacher) and its tfjs reference (before `test`, which needs them).
INCEPTION3_DIR  := var/teachers/inception3-nsfwjs-4.4.0
INCEPTION3_TFJS := $(B)/fixtures/inception3_tfjs.safetensors

# The unit and API tests, then the dashboard's browser tests (tests/browser/, headless chromium);
# the target fails when either fails, and ends with both summary lines.
test: $(TEST_BIN) $(B)/pgnd web $(INCEPTION3_TFJS)
	$(B)/pgnd selfcheck
	@t=$$(mktemp -d); \
	{ tests/run_unit.sh $(TEST_BIN); echo $$? > $$t/unit.rc; } | tee $$t/unit.log; \
	{ node tests/browser/run.mjs; echo $$? > $$t/browser.rc; } | tee $$t/browser.log; \
	echo; grep '^tests: ' $$t/unit.log | tail -n 1; \
	grep '^browser tests: ' $$t/browser.log | tail -n 1 || echo "browser tests: did not finish"; \
	u=$$(cat $$t/unit.rc 2>/dev/null || echo 1); b=$$(cat $$t/browser.rc 2>/dev/null || echo 1); rm -rf $$t; \
	[ "$$u" -eq 0 ] && [ "$$b" -eq 0 ]

# The inception3 teacher's weights: nsfwjs 4.4.0's InceptionV3 (tfjs layers model), fetched with
# npm pack, checked against pinned checksums and cached under ./var (issue 7). Its fidelity test
# compares pgnd with @tensorflow/tfjs-layers on these weights: the reference file is made here.
teacher:
	@tools/fetch_inception3.sh $(INCEPTION3_DIR)

$(INCEPTION3_TFJS): tests/fidelity/inception3_tfjs.mjs node_modules/.package-lock.json | teacher
	@mkdir -p $(dir $@)
	node tests/fidelity/inception3_tfjs.mjs $(INCEPTION3_DIR) $@ 75 75

# Sample photographs (public domain / CC0, data/photos/SOURCES.md) for `make run` and the demo jobs.
PHOTOS_DIR := var/photos
photos:
	@tools/fetch_photos.sh $(PHOTOS_DIR)

# The dashboard (web/) is served by pgnd at /; its charting library comes from npm (package-lock.json)
# and is copied into web/vendor/, so the dashboard works offline, without any CDN.
WEB_VENDOR := web/vendor/uPlot.iife.min.js web/vendor/uPlot.min.css web/vendor/uPlot.LICENSE.txt
web: $(WEB_VENDOR)

node_modules/.package-lock.json: package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm is missing (apt-get install npm): it fetches the dashboard's uPlot"; exit 1; }
	npm ci --no-audit --no-fund

web/vendor/uPlot.LICENSE.txt: node_modules/.package-lock.json
	@mkdir -p $(dir $@)
	cp node_modules/uplot/LICENSE $@

web/vendor/uPlot.%: node_modules/.package-lock.json
	@mkdir -p $(dir $@)
	cp node_modules/uplot/dist/uPlot.$* $@

bench: $(BENCH_BIN)
	@bench/run.sh

deps:
	@tools/install_deps.sh $(DEB_PKGS)

print-deps:
	@echo $(DEB_PKGS)

# `make run`: the daemon on the embedded defaults (tools/run_demo.sh): state under ./var, loopback,
# the sample photographs, the inception3 teacher unless PGND_TEACHER_WEIGHTS names VGG-19 weights,
# and a demo fit job on the first start.
run: deps
	@$(MAKE) --no-print-directory $(B)/pgnd
	@$(MAKE) --no-print-directory web || echo "pgnd: no charts on the dashboard until \`make web\` works (it needs npm)"
	@B=$(B) tools/run_demo.sh

PREFIX ?= /usr/local
install: $(B)/pgnd web
	install -D -m 0755 $(B)/pgnd $(DESTDIR)$(PREFIX)/bin/pgnd
	install -D -m 0644 systemd/pgnd.service $(DESTDIR)/etc/systemd/system/pgnd.service
	install -D -m 0644 pgnd.conf.example $(DESTDIR)$(PREFIX)/share/pgnd/pgnd.conf.example
	mkdir -p $(DESTDIR)$(PREFIX)/share/pgnd/web && cp -r web/. $(DESTDIR)$(PREFIX)/share/pgnd/web/
	[ -e $(DESTDIR)/etc/pgnd/pgnd.conf ] || install -D -m 0644 pgnd.conf.example $(DESTDIR)/etc/pgnd/pgnd.conf
	sed -i 's|/usr/local/|$(PREFIX)/|g' $(DESTDIR)/etc/systemd/system/pgnd.service

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
