/*-------------------------------------------------------------------------
 *
 * source_stats.c
 *	  Counters of the store sources in shared memory, and the function
 *	  behind the kappa.stat_sources view.
 *
 * Counters are atomics (bumped by one worker, read by anyone); the text
 * fields sit behind a spinlock.  Counts start at zero when the server
 * starts, as in pg_stat_* views.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "sources/sources.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"

static SourceStats *source_slots = NULL;

Size
source_stats_shmem_size(void)
{
	return mul_size(sizeof(SourceStats), KAPPA_MAX_SOURCES);
}

void
source_stats_shmem_init(void)
{
	bool		found;

	source_slots = ShmemInitStruct("pg_kappa sources", source_stats_shmem_size(), &found);
	if (!found)
	{
		memset(source_slots, 0, source_stats_shmem_size());
		for (int i = 0; i < KAPPA_MAX_SOURCES; i++)
		{
			SpinLockInit(&source_slots[i].mutex);
			pg_atomic_init_u64(&source_slots[i].files_seen, 0);
			pg_atomic_init_u64(&source_slots[i].rows_ingested, 0);
			pg_atomic_init_u64(&source_slots[i].rows_rejected, 0);
			pg_atomic_init_u64(&source_slots[i].errors, 0);
		}
	}
}

SourceStats *
source_stats_attach(const char *name)
{
	SourceStats *result = NULL;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	for (int i = 0; i < KAPPA_MAX_SOURCES && result == NULL; i++)
	{
		if (strcmp(source_slots[i].name, name) == 0)
			result = &source_slots[i];
	}
	for (int i = 0; i < KAPPA_MAX_SOURCES && result == NULL; i++)
	{
		if (source_slots[i].name[0] == '\0')
		{
			result = &source_slots[i];
			strlcpy(result->name, name, sizeof(result->name));
		}
	}
	LWLockRelease(AddinShmemInitLock);
	if (result == NULL)
		elog(ERROR, "no room for source \"%s\" in shared memory", name);

	SpinLockAcquire(&result->mutex);
	result->pid = MyProcPid;
	SpinLockRelease(&result->mutex);
	return result;
}

/*
 * Copy src into dst of size bytes, cut at a character boundary: the views
 * show these texts, and half a UTF-8 character (a long file name cut by
 * bytes) would fail their output in other client encodings.
 */
static void
clip_copy(char *dst, const char *src, size_t size)
{
	int			srclen = strlen(src);
	int			len = pg_mbcliplen(src, srclen, Min((int) size - 1, srclen));

	memcpy(dst, src, len);
	dst[len] = '\0';
}

void
source_stats_set_state(SourceStats *stats, const char *fmt,...)
{
	char		buf[512];
	char		state[128];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	clip_copy(state, buf, Min(sizeof(state), sizeof(stats->state)));
	SpinLockAcquire(&stats->mutex);
	strlcpy(stats->state, state, sizeof(stats->state));
	SpinLockRelease(&stats->mutex);
	pgstat_report_activity(STATE_RUNNING, state);
}

void
source_stats_error(SourceStats *stats, const char *message)
{
	char		clipped[sizeof(stats->last_error)];

	clip_copy(clipped, message, sizeof(clipped));
	pg_atomic_fetch_add_u64(&stats->errors, 1);
	SpinLockAcquire(&stats->mutex);
	strlcpy(stats->last_error, clipped, sizeof(stats->last_error));
	stats->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&stats->mutex);
}

void
source_stats_success(SourceStats *stats, int64 files, int64 ingested, int64 rejected)
{
	if (files)
		pg_atomic_fetch_add_u64(&stats->files_seen, files);
	if (ingested)
		pg_atomic_fetch_add_u64(&stats->rows_ingested, ingested);
	if (rejected)
		pg_atomic_fetch_add_u64(&stats->rows_rejected, rejected);
	SpinLockAcquire(&stats->mutex);
	stats->last_success_at = GetCurrentTimestamp();
	SpinLockRelease(&stats->mutex);
}

/*
 * kappa.source_stats(): one row per source that has run since the server
 * started.
 */
PG_FUNCTION_INFO_V1(kappa_source_stats);

Datum
kappa_source_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < KAPPA_MAX_SOURCES; i++)
	{
		SourceStats *s = &source_slots[i];
		Datum		values[10];
		bool		nulls[10];
		char		name[32];
		char		state[128];
		char		last_error[512];
		TimestampTz last_error_at;
		TimestampTz last_success_at;
		pid_t		pid;

		SpinLockAcquire(&s->mutex);
		strlcpy(name, s->name, sizeof(name));
		strlcpy(state, s->state, sizeof(state));
		strlcpy(last_error, s->last_error, sizeof(last_error));
		last_error_at = s->last_error_at;
		last_success_at = s->last_success_at;
		pid = s->pid;
		SpinLockRelease(&s->mutex);
		if (name[0] == '\0')
			continue;

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(name);
		values[1] = Int32GetDatum(pid);
		nulls[1] = pid == 0;
		values[2] = CStringGetTextDatum(state);
		values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&s->files_seen));
		values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&s->rows_ingested));
		values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&s->rows_rejected));
		values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&s->errors));
		values[7] = CStringGetTextDatum(last_error);
		nulls[7] = last_error[0] == '\0';
		values[8] = TimestampTzGetDatum(last_error_at);
		nulls[8] = last_error_at == 0;
		values[9] = TimestampTzGetDatum(last_success_at);
		nulls[9] = last_success_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
