# Shared by the benchmarks: a throwaway cluster and a dev broker.
#   bench_start TOPICS... ; psql -d bench ... ; (cleanup runs on exit)
pg_config=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
bindir=$($pg_config --bindir)
port=${BENCH_PORT:-55434}
here=$(cd "$(dirname "$0")/../.." && pwd)

if [ "$(id -u)" -eq 0 ]; then
	run() { runuser -u postgres -- "$@"; }
	owner=postgres
else
	run() { "$@"; }
	owner=$(id -un)
fi
work=$(mktemp -d /tmp/pg_kappa-bench.XXXXXX)
chown "$owner" "$work"
bench_cleanup() {
	run "$bindir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
	[ -n "${BENCH_KEEP_LOG:-}" ] && cp "$work/log" "$BENCH_KEEP_LOG" 2>/dev/null
	[ -n "${broker_pid:-}" ] && kill "$broker_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap bench_cleanup EXIT
psql() { run "$bindir/psql" -X -q -h "$work" -p "$port" -v ON_ERROR_STOP=1 "$@"; }

# bench_start "extra postgresql.conf lines" topic:partitions...
bench_start() {
	local conf=$1
	shift
	local args=()
	for t in "$@"; do args+=(--topic "$t"); done
	"$here/test/dev-broker" "${args[@]}" --bootstrap-file "$work/bootstrap" >/dev/null &
	broker_pid=$!
	for _ in $(seq 50); do [ -s "$work/bootstrap" ] && break; sleep 0.1; done
	bootstrap=$(cat "$work/bootstrap")
	run "$bindir/initdb" -D "$work/data" -A trust --encoding=UTF8 --locale="${BENCH_LOCALE:-C}" >/dev/null
	cat >> "$work/data/postgresql.conf" <<EOC
port = $port
unix_socket_directories = '$work'
listen_addresses = ''
shared_preload_libraries = 'pg_kappa'
wal_level = logical
output_plugin_libraries = 'pgoutput, pg_kappa, wal2json'
shared_buffers = 512MB
max_wal_size = 16GB
checkpoint_timeout = 30min
kappa.database = 'bench'
kappa.brokers = '$bootstrap'
kappa.worker_restart_interval = 1
$conf
EOC
	run "$bindir/pg_ctl" -D "$work/data" -l "$work/log" -w start >/dev/null
	psql -d postgres -c 'CREATE DATABASE bench'
	psql -d bench -c 'CREATE EXTENSION pg_kappa'
}

# percentile P of the numbers on stdin
percentile() { sort -n | awk -v p="$1" '{v[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print v[i]}'; }
