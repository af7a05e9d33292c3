# pg_kappa: PGXS build.
#
#   make                  build the extension (and the dev broker used by tests)
#   make install          install it into the PostgreSQL found by pg_config
#   make installcheck     pg_regress (temporary instance) + TAP tests (dev broker)
#
# test/run-tests does all of this, packages included, from a fresh machine.

EXTENSION = pg_kappa
EXTVERSION = $(shell sed -n "s/^default_version = '\(.*\)'/\1/p" pg_kappa.control)
MODULE_big = pg_kappa

# The install script is assembled from the SQL of each component, which
# lives next to its C code; released versions' scripts and the upgrade
# scripts between them are kept in sql/ as they are.
SQL_PARTS = src/pg_kappa.sql \
	src/cdc/cdc.sql \
	src/sources/sources.sql \
	src/stream/stream.sql \
	src/sources/soap.sql \
	src/sources/csv.sql
DATA_built = sql/pg_kappa--$(EXTVERSION).sql
DATA = $(filter-out $(DATA_built),$(wildcard sql/pg_kappa--*.sql))

SRCS = $(wildcard src/*.c src/*/*.c)
OBJS = $(SRCS:.c=.o)
HEADERS = $(wildcard src/*.h src/*/*.h)

PG_CONFIG ?= pg_config

# The server headers are included as system headers so that -Wextra judges
# our code, not PostgreSQL's inline functions.  Unused parameters are allowed:
# PostgreSQL and librdkafka fix the signatures of the callbacks we implement.
PG_CPPFLAGS = -I$(srcdir)/src -isystem $(shell $(PG_CONFIG) --includedir-server) \
	$(shell xml2-config --cflags 2>/dev/null) \
	-DPG_KAPPA_VERSION='"$(EXTVERSION)"'
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -std=gnu99
SHLIB_LINK = -lrdkafka -lcurl $(shell xml2-config --libs 2>/dev/null || echo -lxml2)

# pg_regress: everything that needs no broker, in a temporary instance
# configured for logical decoding.
REGRESS = guc install decoder_types decoder_changes decoder_options publish windows rankings soap csv_inbox upgrade
REGRESS_OPTS = --temp-instance=$(CURDIR)/tmp_regress \
	--temp-config=$(srcdir)/test/regress.conf --encoding=UTF8 --no-locale

# TAP: real clusters (PostgreSQL::Test::Cluster) against the dev broker.
TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

EXTRA_CLEAN = test/dev-broker tmp_regress results regression.diffs regression.out

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# (after PGXS, which resets it)
PROVE_FLAGS += -I $(srcdir)/test/perl --timer

$(OBJS): $(HEADERS)

# The development broker: librdkafka's in-memory mock cluster behind a CLI.
# Tests and the demo use it; the extension never links it.
all: test/dev-broker
test/dev-broker: test/dev_broker.c
	$(CC) $(CFLAGS) -Wall -Wextra -Werror -o $@ $< -lrdkafka

installcheck: test/dev-broker

sql/pg_kappa--$(EXTVERSION).sql: $(SQL_PARTS)
	cat $^ > $@
