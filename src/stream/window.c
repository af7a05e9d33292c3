/*-------------------------------------------------------------------------
 *
 * window.c
 *	  Window arithmetic: which tumbling window an event time falls in.
 *
 * Two kinds of windows:
 *
 *	fixed		a fixed length of time aligned to an origin, as Kafka Streams
 *				does (the default origin is the Unix epoch): '30 days' means
 *				exactly 30 * 24 hours, whatever the calendar says.  A day is
 *				24 hours here.
 *	calendar	whole local days, weeks or months in a time zone: a '1 day'
 *				window runs from local midnight to the next local midnight
 *				(23 or 25 hours on DST days), '1 month' from the 1st to the
 *				1st.  Multiples count from the origin's local date (weeks
 *				start on the origin's weekday: the default origin,
 *				1970-01-05, is a Monday).
 *
 * Both are half-open: [window_start, window_end).  Times before the origin
 * fall in windows before it (floor division).  Infinite times have no
 * window.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "common/int.h"

#include "funcapi.h"
#include "pgtime.h"
#include "stream/stream.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

/* Default origins: the Unix epoch (fixed), Monday 1970-01-05 (calendar). */
#define FIXED_DEFAULT_ORIGIN	((TimestampTz) -(int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY)

static int64
floor_div(int64 a, int64 b)
{
	int64		q = a / b;

	if ((a % b != 0) && ((a < 0) != (b < 0)))
		q--;
	return q;
}

#define UNKNOWN_ZONE "The time zone is not known to PostgreSQL (see pg_timezone_names)."

/* The zone of that name, or NULL if PostgreSQL does not know it. */
static pg_tz *
known_zone(const char *name)
{
	pg_tz	   *tz = pg_tzset(name);

	return tz != NULL && pg_tz_acceptable(tz) ? tz : NULL;
}

/*
 * Prepare a window specification.  Returns false with *error set when the
 * combination is not a valid window (the caller raises it).
 */
bool
window_spec_init(KappaWindowSpec *spec, const Interval *size, bool calendar,
				 bool origin_given, TimestampTz origin, const char *time_zone,
				 const char **error)
{
	memset(spec, 0, sizeof(*spec));
	spec->calendar = calendar;

	if (!calendar)
	{
		int64		usecs;

		if (size->month != 0)
		{
			*error = "A fixed window cannot be measured in months; use a calendar window for \"1 month\".";
			return false;
		}
		if (pg_mul_s64_overflow((int64) size->day, USECS_PER_DAY, &usecs) ||
			pg_add_s64_overflow(usecs, size->time, &usecs) || usecs <= 0)
		{
			*error = "A window size must be positive.";
			return false;
		}
		spec->size_usecs = usecs;
		spec->origin = origin_given ? origin : FIXED_DEFAULT_ORIGIN;
		if (TIMESTAMP_NOT_FINITE(spec->origin))
		{
			*error = "The window origin must be finite.";
			return false;
		}

		/*
		 * A fixed window does not use its zone, but the ranking keeps it
		 * (and shows it): a zone PostgreSQL does not know is refused here
		 * as for a calendar window, not stored.
		 */
		if (time_zone && known_zone(time_zone) == NULL)
		{
			*error = UNKNOWN_ZONE;
			return false;
		}
		return true;
	}

	if (size->time != 0 || (size->month != 0) == (size->day != 0) ||
		size->month < 0 || size->day < 0)
	{
		*error = "A calendar window is a whole number of days, weeks or months (for example '1 day', '1 week', '1 month').";
		return false;
	}
	spec->months = size->month;
	spec->days = size->day;

	strlcpy(spec->tzname, time_zone ? time_zone : "UTC", sizeof(spec->tzname));
	spec->tz = known_zone(spec->tzname);
	if (spec->tz == NULL)
	{
		*error = UNKNOWN_ZONE;
		return false;
	}

	if (origin_given)
	{
		struct pg_tm tm;
		fsec_t		fsec;
		int			tzoff;

		if (TIMESTAMP_NOT_FINITE(origin) ||
			timestamp2tm(origin, &tzoff, &tm, &fsec, NULL, spec->tz) != 0)
		{
			*error = "The window origin must be finite.";
			return false;
		}
		spec->origin_jd = date2j(tm.tm_year, tm.tm_mon, tm.tm_mday);
		spec->origin_month = tm.tm_year * 12 + (tm.tm_mon - 1);
	}
	else
	{
		spec->origin_jd = date2j(1970, 1, 5);
		spec->origin_month = 1970 * 12;
	}
	return true;
}

/* Julian day of the 1st of a month counted as year * 12 + (month - 1). */
static int
first_of_month(int month_index)
{
	int			year = (int) floor_div(month_index, 12);

	return date2j(year, month_index - year * 12 + 1, 1);
}

/*
 * Local midnight of Julian day jd in the spec's zone, as timestamptz: the
 * first instant of that local date.  Where clocks are set back across
 * midnight (Cuba in November: 01:00 daylight time becomes 00:00), midnight
 * happens twice and DetermineTimeZoneOffset takes the later; the day starts
 * at the earlier, given by the offset in effect the day before.  Where
 * midnight is skipped, the local day starts when the clocks jump.
 */
static bool
local_midnight(const KappaWindowSpec *spec, int jd, TimestampTz *result)
{
	struct pg_tm tm;
	struct pg_tm other;
	fsec_t		fsec;
	int			tzoff;
	int			before_off;
	TimestampTz earlier;

	memset(&tm, 0, sizeof(tm));
	j2date(jd, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
	tzoff = DetermineTimeZoneOffset(&tm, spec->tz);
	if (tm2timestamp(&tm, 0, &tzoff, result) != 0)
		return false;

	if (*result - USECS_PER_DAY < MIN_TIMESTAMP)
		return true;

	/*
	 * Midnight skipped: the day starts when the clocks jump.  Where they
	 * jumped to 00:00 or later that is what DetermineTimeZoneOffset gave;
	 * where they jumped across midnight (Toronto, 1919: 23:30 became 00:30)
	 * it gave a later instant, and the day starts at the jump itself.
	 */
	if (timestamp2tm(*result, &before_off, &other, &fsec, NULL, spec->tz) == 0 &&
		(other.tm_hour != 0 || other.tm_min != 0 || other.tm_sec != 0 || fsec != 0))
	{
		pg_time_t	from = timestamptz_to_time_t(*result - USECS_PER_DAY);
		pg_time_t	boundary;
		long int	before_gmtoff,
					after_gmtoff;
		int			before_isdst,
					after_isdst;

		if (pg_next_dst_boundary(&from, &before_gmtoff, &before_isdst, &boundary,
								 &after_gmtoff, &after_isdst, spec->tz) == 1)
		{
			earlier = time_t_to_timestamptz(boundary);
			if (earlier < *result &&
				timestamp2tm(earlier, &before_off, &other, &fsec, NULL, spec->tz) == 0 &&
				date2j(other.tm_year, other.tm_mon, other.tm_mday) == jd)
				*result = earlier;
		}
		return true;
	}

	if (timestamp2tm(*result - USECS_PER_DAY, &before_off, &other, &fsec, NULL, spec->tz) != 0 ||
		before_off == tzoff)
		return true;
	memset(&tm, 0, sizeof(tm));
	j2date(jd, &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
	if (tm2timestamp(&tm, 0, &before_off, &earlier) == 0 && earlier < *result &&
		timestamp2tm(earlier, &before_off, &other, &fsec, NULL, spec->tz) == 0 &&
		other.tm_hour == 0 && other.tm_min == 0 && other.tm_sec == 0 && fsec == 0 &&
		date2j(other.tm_year, other.tm_mon, other.tm_mday) == jd)
		*result = earlier;
	return true;
}

/*
 * Does the zone keep one UTC offset from a day before start to a day after
 * end?  Then local time is UTC shifted throughout, the window's midnights
 * are unambiguous, and every time in [start, end) has its local date in the
 * window: the window may be remembered.  Near a transition (a DST change at
 * midnight can repeat or skip local dates) each time is worked out anew.
 */
static bool
steady_offset(const KappaWindowSpec *spec, TimestampTz start, TimestampTz end)
{
	pg_time_t	from = timestamptz_to_time_t(start - USECS_PER_DAY);
	pg_time_t	boundary;
	long int	before_gmtoff,
				after_gmtoff;
	int			before_isdst,
				after_isdst;
	int			r;

	r = pg_next_dst_boundary(&from, &before_gmtoff, &before_isdst, &boundary,
							 &after_gmtoff, &after_isdst, spec->tz);
	if (r == 0)
		return true;			/* no transition after from */
	return r > 0 && boundary > timestamptz_to_time_t(end + USECS_PER_DAY);
}

/*
 * The window containing t.  False when t is infinite (or the window would
 * be out of the timestamp range).
 */
/* The k-th calendar window from the origin (k < 0: before it). */
static bool
calendar_window(const KappaWindowSpec *spec, int64 k, TimestampTz *start, TimestampTz *end)
{
	if (spec->months > 0)
	{
		int			first = spec->origin_month + (int) (k * spec->months);

		return local_midnight(spec, first_of_month(first), start) &&
			local_midnight(spec, first_of_month(first + spec->months), end);
	}
	else
	{
		int			first = spec->origin_jd + (int) (k * spec->days);

		return local_midnight(spec, first, start) &&
			local_midnight(spec, first + spec->days, end);
	}
}

bool
window_for(const KappaWindowSpec *spec, TimestampTz t,
		   TimestampTz *start, TimestampTz *end)
{
	if (TIMESTAMP_NOT_FINITE(t))
		return false;

	if (!spec->calendar)
	{
		int64		diff;
		int64		offset;

		/* (an origin far from t could overflow any of these) */
		if (pg_sub_s64_overflow(t, spec->origin, &diff) ||
			pg_mul_s64_overflow(floor_div(diff, spec->size_usecs), spec->size_usecs, &offset) ||
			pg_add_s64_overflow(spec->origin, offset, start) ||
			pg_add_s64_overflow(*start, spec->size_usecs, end))
			return false;
		/* a window reaching out of PostgreSQL's range could not be stored */
		return IS_VALID_TIMESTAMP(*start) && IS_VALID_TIMESTAMP(*end);
	}
	else
	{
		struct pg_tm tm;
		fsec_t		fsec;
		int			tzoff;
		KappaWindowSpec *cache = unconstify(KappaWindowSpec *, spec);
		bool		found;
		int64		k;

		/*
		 * A time inside the window found last is in that window (see
		 * steady_offset): no time zone arithmetic for a run of events of
		 * one day.
		 */
		if (t >= spec->last_start && t < spec->last_end)
		{
			*start = spec->last_start;
			*end = spec->last_end;
			return true;
		}
		if (timestamp2tm(t, &tzoff, &tm, &fsec, NULL, spec->tz) != 0)
			return false;

		/*
		 * The window of t's local date; where a local midnight happens twice
		 * (clocks going back less than an hour after it, as in St. John's
		 * until 2011) t's local date can lie in the window before or after,
		 * so the window is moved until it holds t: windows must cover time
		 * without gaps or overlaps, whatever the dates say.
		 */
		if (spec->months > 0)
			k = floor_div(tm.tm_year * 12 + (tm.tm_mon - 1) - spec->origin_month, spec->months);
		else
			k = floor_div(date2j(tm.tm_year, tm.tm_mon, tm.tm_mday) - spec->origin_jd, spec->days);
		for (int tries = 0;; tries++)
		{
			found = calendar_window(spec, k, start, end);
			if (!found || tries == 2 || (*start <= t && t < *end))
				break;
			k += t >= *end ? 1 : -1;
		}
		if (!found || !(*start <= t && t < *end))
			return false;
		if (steady_offset(spec, *start, *end))
		{
			cache->last_start = *start;
			cache->last_end = *end;
		}
		return true;
	}
}

/*
 * kappa.window_bounds(ts, size, calendar, origin, time_zone)
 *	  -> (window_start, window_end); NULLs for an infinite ts.
 */
PG_FUNCTION_INFO_V1(kappa_window_bounds);

Datum
kappa_window_bounds(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	KappaWindowSpec spec;
	const char *error = NULL;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	TimestampTz start,
				end;
	char	   *tz = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	if (!window_spec_init(&spec, PG_GETARG_INTERVAL_P(1),
						  PG_ARGISNULL(2) ? PG_GETARG_INTERVAL_P(1)->month != 0 : PG_GETARG_BOOL(2),
						  !PG_ARGISNULL(3), PG_ARGISNULL(3) ? 0 : PG_GETARG_TIMESTAMPTZ(3),
						  tz ? tz : kappa_window_time_zone, &error))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid window"),
				 errdetail("%s", error)));

	if (!window_for(&spec, PG_GETARG_TIMESTAMPTZ(0), &start, &end))
		nulls[0] = nulls[1] = true;
	else
	{
		values[0] = TimestampTzGetDatum(start);
		values[1] = TimestampTzGetDatum(end);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
