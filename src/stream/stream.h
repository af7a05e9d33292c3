/*-------------------------------------------------------------------------
 *
 * stream.h
 *	  The stream side: windows, ranking definitions, change events, and the
 *	  stream worker that turns sales-events into windowed top-N results.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_STREAM_H
#define KAPPA_STREAM_H

#include "datatype/timestamp.h"
#include "pgtime.h"

/* kappa.* settings of the stream side (src/stream/stream_gucs.c) */
extern char *kappa_window_time_zone;
extern int	kappa_default_grace;	/* seconds */
extern int	kappa_idle_timeout;		/* seconds */
extern int	kappa_row_memory_retention; /* seconds, -1: for ever */
extern bool kappa_stream_enabled;
extern int	kappa_stream_workers;
extern char *kappa_stream_group;
extern int	kappa_stream_batch_size;
extern int	kappa_stream_batch_ms;
extern char *kappa_instance_id;

extern void stream_define_gucs(void);

/* ---- windows (window.c) ---- */
typedef struct KappaWindowSpec
{
	bool		calendar;
	/* fixed windows */
	int64		size_usecs;
	TimestampTz origin;
	/* calendar windows */
	int			months;			/* exactly one of months, days is > 0 */
	int			days;
	int			origin_jd;		/* local date of the origin (Julian day) */
	int			origin_month;	/* local month of the origin, year*12+month-1 */
	pg_tz	   *tz;
	char		tzname[64];
	/* the calendar window found last (empty until then): events come in runs */
	TimestampTz last_start;
	TimestampTz last_end;
} KappaWindowSpec;

extern bool window_spec_init(KappaWindowSpec *spec, const Interval *size,
							 bool calendar, bool origin_given,
							 TimestampTz origin, const char *time_zone,
							 const char **error);
extern bool window_for(const KappaWindowSpec *spec, TimestampTz t,
					   TimestampTz *start, TimestampTz *end);

#endif							/* KAPPA_STREAM_H */
