/*-------------------------------------------------------------------------
 *
 * workers.c
 *	  Registration of pg_kappa's background workers, and what they share:
 *	  attaching to kappa.database and waiting for CREATE EXTENSION.
 *
 * Every worker is registered at postmaster start and restarted by the
 * postmaster kappa.worker_restart_interval seconds after it fails, so a
 * worker error never takes the server down.  A worker whose switch
 * (kappa.cdc_enabled, ...) is off stays alive and idle, so switching it on
 * is a reload, not a restart.
 *
 * A kappa.database that does not exist (not created yet, or dropped) makes
 * the connection fail with FATAL.  Restarted every interval, four workers
 * would say so dozens of times a minute; instead, a worker whose last
 * connection failed waits connected to no database, says once why, looks
 * for the database every second, and exits to be restarted once it is
 * there.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "stream/stream.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/htup_details.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "postmaster/bgworker.h"
#include "postmaster/bgworker_internals.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shmem.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"

/*
 * Per worker: did its last attempt to connect to kappa.database end in
 * FATAL?  Set before the attempt and cleared after it, so a FATAL leaves
 * it set for the next start.  Indexed by worker_slot().
 */
typedef struct KappaWorkersShared
{
	pg_atomic_uint32 missing_reported;	/* said once, until found again */
	pg_atomic_uint32 connect_failed[FLEXIBLE_ARRAY_MEMBER];
} KappaWorkersShared;

#define KAPPA_FIXED_WORKERS 3	/* cdc publisher, soap poller, csv inbox */

static KappaWorkersShared *workers_shared = NULL;

static int
worker_slots(void)
{
	return KAPPA_FIXED_WORKERS + kappa_stream_workers;
}

Size
workers_shmem_size(void)
{
	return add_size(offsetof(KappaWorkersShared, connect_failed),
					mul_size(sizeof(pg_atomic_uint32), worker_slots()));
}

void
workers_shmem_init(void)
{
	bool		found;

	workers_shared = ShmemInitStruct("pg_kappa workers", workers_shmem_size(), &found);
	if (!found)
	{
		pg_atomic_init_u32(&workers_shared->missing_reported, 0);
		for (int i = 0; i < worker_slots(); i++)
			pg_atomic_init_u32(&workers_shared->connect_failed[i], 0);
	}
}

/*
 * How values are written out (dates, intervals, time zone, floats) and
 * names resolved, in every worker, and in kappa.publish_table() while it
 * writes a table's snapshot rows, so that an "r" event writes a value as
 * the events decoded later do.
 */
const char *const kappa_output_settings[][2] = {
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "iso_8601"},
	{"TimeZone", "UTC"},
	{"extra_float_digits", "1"},
	{"search_path", "pg_catalog, pg_temp"},
	{NULL, NULL}
};

static const char *const kappa_transaction_settings[][2] = {
	{"default_transaction_read_only", "off"},
	{"default_transaction_isolation", "read committed"},
	{"default_transaction_deferrable", "off"},
	{"statement_timeout", "0"},
	{"lock_timeout", "0"},
	{"idle_in_transaction_session_timeout", "0"},
	{"session_replication_role", "origin"},
	/* ALTER DATABASE ... SET role would have them run as that role */
	{"role", "none"},
	{NULL, NULL}
};

static void
register_worker(const char *function, const char *type, const char *name, int arg)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = kappa_worker_restart_interval;
	strlcpy(worker.bgw_library_name, KAPPA_EXTENSION_NAME, BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, function, BGW_MAXLEN);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s", name);
	worker.bgw_main_arg = Int32GetDatum(arg);
	strlcpy(worker.bgw_type, type, BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * PostgreSQL registers no more background workers than
 * max_worker_processes and only logs about each one it leaves out; the one
 * of each kind go first, so that more stream workers than fit leave out
 * stream workers, never a source, and the shortfall is said at start-up.
 */
void
kappa_register_workers(void)
{
	int			before = 0;
	slist_iter	iter;

	/* (the logical replication launcher, libraries preloaded before us) */
	slist_foreach(iter, &BackgroundWorkerList)
		before++;
	if (before + KAPPA_FIXED_WORKERS + kappa_stream_workers > max_worker_processes)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("pg_kappa needs %d background workers, more than max_worker_processes (%d) leaves",
						KAPPA_FIXED_WORKERS + kappa_stream_workers, max_worker_processes),
				 errdetail("kappa.stream_workers is %d; the CDC publisher, the SOAP poller and the CSV inbox take one each; %d other background worker(s) were registered before them.",
						   kappa_stream_workers, before),
				 errhint("Raise max_worker_processes (with room for parallel queries and other extensions) or lower kappa.stream_workers, then restart the server.")));
	register_worker("kappa_cdc_worker_main", "pg_kappa cdc publisher",
					"pg_kappa cdc publisher", 0);
	register_worker("kappa_soap_worker_main", "pg_kappa soap poller",
					"pg_kappa soap poller", 0);
	register_worker("kappa_csv_worker_main", "pg_kappa csv inbox",
					"pg_kappa csv inbox", 0);
	for (int i = 0; i < kappa_stream_workers; i++)
		register_worker("kappa_stream_worker_main", "pg_kappa stream worker",
						psprintf("pg_kappa stream worker %d", i), i);
}

/* This worker's place in KappaWorkersShared.connect_failed. */
static int
worker_slot(void)
{
	const char *fn = MyBgworkerEntry->bgw_function_name;

	if (strcmp(fn, "kappa_cdc_worker_main") == 0)
		return 0;
	if (strcmp(fn, "kappa_soap_worker_main") == 0)
		return 1;
	if (strcmp(fn, "kappa_csv_worker_main") == 0)
		return 2;
	return KAPPA_FIXED_WORKERS +
		Min(Max(DatumGetInt32(MyBgworkerEntry->bgw_main_arg), 0), kappa_stream_workers - 1);
}

/*
 * Why kappa.database cannot be connected to, or NULL if it now can.  In a
 * transaction of its own, connected to no database (shared catalogs only).
 */
static const char *
database_unusable(void)
{
	const char *why = NULL;
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;

	/*
	 * As InitPostgres looks a database up: pg_database's index can be used
	 * only once the shared catalogs' relcache entries are built (the server
	 * removes their init file at each start), else the scan reads the heap.
	 */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_database_datname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(kappa_database));
	scan = systable_beginscan(rel, DatabaseNameIndexId, criticalSharedRelcachesBuilt,
							  NULL, 1, &key);
	tup = systable_getnext(scan);
	if (!HeapTupleIsValid(tup))
		why = "does not exist";
	else
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (!db->datallowconn)
			why = "does not allow connections";
#ifdef DATCONNLIMIT_INVALID_DB
		else if (db->datconnlimit == DATCONNLIMIT_INVALID_DB)
			why = "is invalid (a DROP DATABASE was interrupted; drop it again)";
#endif
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return why;
}

/*
 * The last connection of this worker failed: wait, connected to no
 * database, until kappa.database can be connected to, then exit to be
 * restarted (a process connects to one database, once).  Never returns.
 */
static void
wait_for_database(const char *application_name, int slot)
{
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	SetConfigOption("application_name", application_name, PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname(application_name);

	for (;;)
	{
		const char *why = database_unusable();

		if (why == NULL)
		{
			pg_atomic_write_u32(&workers_shared->missing_reported, 0);
			pg_atomic_write_u32(&workers_shared->connect_failed[slot], 0);
			ereport(LOG,
					(errmsg("pg_kappa: database \"%s\" can be connected to; restarting the workers on it",
							kappa_database)));
			proc_exit(1);
		}
		/* one worker says it, once, until the database is found again */
		if (pg_atomic_exchange_u32(&workers_shared->missing_reported, 1) == 0)
			ereport(WARNING,
					(errcode(ERRCODE_UNDEFINED_DATABASE),
					 errmsg("pg_kappa workers cannot connect to database \"%s\"", kappa_database),
					 errdetail("Database \"%s\" (kappa.database) %s; the workers wait for it and look again every second.",
							   kappa_database, why),
					 errhint("Create the database and run CREATE EXTENSION pg_kappa in it, or set kappa.database in postgresql.conf and restart the server.")));

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}

/*
 * The start of every pg_kappa worker: signal handlers (SIGHUP reloads,
 * SIGTERM exits at the next CHECK_FOR_INTERRUPTS), a connection to
 * kappa.database, and session settings that make text output independent
 * of anyone's defaults (and no JIT).
 */
void
kappa_worker_begin(const char *application_name)
{
	int			slot;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	slot = worker_slot();
	if (pg_atomic_read_u32(&workers_shared->connect_failed[slot]) != 0)
		wait_for_database(application_name, slot);
	/* a FATAL in here leaves the flag set for the next start */
	pg_atomic_write_u32(&workers_shared->connect_failed[slot], 1);
	BackgroundWorkerInitializeConnection(kappa_database, NULL, 0);
	pg_atomic_write_u32(&workers_shared->connect_failed[slot], 0);

	/*
	 * The output settings; search_path too: the workers run as the
	 * bootstrap superuser, and their statements resolve names in pg_catalog
	 * only (every table they use is schema-qualified), so that nobody who
	 * can create objects in a schema of the default search_path (public,
	 * in a database they own) can put a function or operator of theirs in
	 * front of pg_catalog's and have it run with a superuser's rights.
	 */
	for (int i = 0; kappa_output_settings[i][0]; i++)
		SetConfigOption(kappa_output_settings[i][0], kappa_output_settings[i][1],
						PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", application_name, PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * How the workers' transactions behave is theirs to decide, whatever
	 * postgresql.conf, ALTER DATABASE or ALTER ROLE set for sessions: a
	 * database owner's default_transaction_read_only, lock_timeout or role
	 * (the bootstrap superuser is a member of every role) would otherwise
	 * stop every worker in a restart loop while the slot holds WAL, and
	 * session_replication_role = replica would skip the foreign keys of the
	 * extension's tables.  (statement_timeout and
	 * idle_in_transaction_session_timeout are armed by client backends
	 * only; they are set here too, should that change.)
	 */
	for (int i = 0; kappa_transaction_settings[i][0]; i++)
		SetConfigOption(kappa_transaction_settings[i][0], kappa_transaction_settings[i][1],
						PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The workers run the same short statements batch after batch, over
	 * arrays the planner cannot size: JIT compiled them anew every time, a
	 * tenth of the stream worker's time, for nothing.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	pgstat_report_appname(application_name);
}

/*
 * Is the extension installed in the database this worker is connected to?
 * Runs its own short transaction.
 */
bool
kappa_extension_installed(void)
{
	bool		installed;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	installed = OidIsValid(get_extension_oid(KAPPA_EXTENSION_NAME, true));
	PopActiveSnapshot();
	CommitTransactionCommand();
	return installed;
}

/*
 * The version of the extension's SQL objects in this worker's database
 * (pg_extension.extversion), palloc'd in the caller's memory context, or
 * NULL when it is not installed.  Runs its own short transaction.
 */
char *
kappa_extension_version(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *version = NULL;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum(KAPPA_EXTENSION_NAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = MemoryContextStrdup(cxt, TextDatumGetCString(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return version;
}
