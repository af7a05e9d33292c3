/*-------------------------------------------------------------------------
 *
 * sources.h
 *	  What the store sources (CSV inbox, SOAP payments, HTTP) share: their
 *	  counters in shared memory, behind the kappa.stat_sources view.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_SOURCES_H
#define KAPPA_SOURCES_H

#include "port/atomics.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#define KAPPA_MAX_SOURCES 8

typedef struct SourceStats
{
	char		name[32];		/* "csv", "soap", ...; empty: unused slot */
	slock_t		mutex;			/* protects the text fields and times */
	pid_t		pid;
	char		state[128];
	char		last_error[512];
	TimestampTz last_error_at;
	TimestampTz last_success_at;
	/* ingested_rows_total, failed_validations_total, ingestion_errors_total */
	pg_atomic_uint64 files_seen;
	pg_atomic_uint64 rows_ingested;
	pg_atomic_uint64 rows_rejected;
	pg_atomic_uint64 errors;
} SourceStats;

extern Size source_stats_shmem_size(void);
extern void source_stats_shmem_init(void);

/* A source's slot, created on first use; pid recorded. */
extern SourceStats *source_stats_attach(const char *name);
extern void source_stats_set_state(SourceStats *stats, const char *fmt,...) pg_attribute_printf(2, 3);
extern void source_stats_error(SourceStats *stats, const char *message);
extern void source_stats_success(SourceStats *stats, int64 files, int64 ingested,
								 int64 rejected);

#endif							/* KAPPA_SOURCES_H */
