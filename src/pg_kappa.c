/*-------------------------------------------------------------------------
 *
 * pg_kappa.c
 *	  Module load: refuse to run unless preloaded, define the kappa.* GUCs,
 *	  reserve shared memory and register the background workers.
 *
 * Everything pg_kappa does runs in background workers started by the
 * postmaster, and every backend needs the GUCs and the commit wake-up hook,
 * so the library must be loaded through shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "sources/sources.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* One line per module that keeps state in shared memory. */
static const struct
{
	KappaShmemSizeFn size;
	KappaShmemInitFn init;
}			kappa_shmem_parts[] =
{
	{cdc_shmem_size, cdc_shmem_init},
	{source_stats_shmem_size, source_stats_shmem_init},
	{stream_shmem_size, stream_shmem_init},
	{workers_shmem_size, workers_shmem_init},
};

static void
kappa_shmem_request(void)
{
	Size		total = 0;

	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	for (size_t i = 0; i < lengthof(kappa_shmem_parts); i++)
		total = add_size(total, kappa_shmem_parts[i].size());
	RequestAddinShmemSpace(total);
}

static void
kappa_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	for (size_t i = 0; i < lengthof(kappa_shmem_parts); i++)
		kappa_shmem_parts[i].init();
	LWLockRelease(AddinShmemInitLock);
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_kappa must be loaded via shared_preload_libraries"),
				 errhint("Add pg_kappa to shared_preload_libraries in postgresql.conf and restart the server.")));

	kappa_define_gucs();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = kappa_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = kappa_shmem_startup;

	cdc_register_commit_wakeup();
	kappa_register_workers();
}
