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
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "stream/stream.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"

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

void
kappa_register_workers(void)
{
	register_worker("kappa_cdc_worker_main", "pg_kappa cdc publisher",
					"pg_kappa cdc publisher", 0);
	for (int i = 0; i < kappa_stream_workers; i++)
		register_worker("kappa_stream_worker_main", "pg_kappa stream worker",
						psprintf("pg_kappa stream worker %d", i), i);
	register_worker("kappa_soap_worker_main", "pg_kappa soap poller",
					"pg_kappa soap poller", 0);
	register_worker("kappa_csv_worker_main", "pg_kappa csv inbox",
					"pg_kappa csv inbox", 0);
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
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(kappa_database, NULL, 0);

	SetConfigOption("DateStyle", "ISO, YMD", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("IntervalStyle", "iso_8601", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("TimeZone", "UTC", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("extra_float_digits", "1", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("application_name", application_name, PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The workers run as the bootstrap superuser: their statements resolve
	 * names in pg_catalog only (every table they use is schema-qualified),
	 * so that nobody who can create objects in a schema of the default
	 * search_path (public, in a database they own) can put a function or
	 * operator of theirs in front of pg_catalog's and have it run with a
	 * superuser's rights.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

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
