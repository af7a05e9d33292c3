/*-------------------------------------------------------------------------
 *
 * event.h
 *	  Spans of JSON messages, change envelopes, exact decimals and times
 *	  (src/stream/event.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_EVENT_H
#define KAPPA_EVENT_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"

typedef enum JsonSpanType
{
	JSON_SPAN_MISSING,
	JSON_SPAN_NULL,
	JSON_SPAN_STRING,			/* p points at the opening quote */
	JSON_SPAN_NUMBER,
	JSON_SPAN_BOOL,
	JSON_SPAN_OBJECT,
	JSON_SPAN_ARRAY
} JsonSpanType;

/* A value inside a message: where it starts and how long it is. */
typedef struct JsonSpan
{
	const char *p;
	int			len;
	JsonSpanType type;
} JsonSpan;

extern bool bytes_are_plain_ascii(const char *p, size_t len);
extern bool json_is_object(const char *p, int len);
extern void json_row_members(const char *row, int len, int n,
							 const char *const *names, const int *namelens,
							 JsonSpan *found);
extern void json_row_forget(void);
extern void json_object_members(const char *obj, int len, int n,
								const char *const *names, const int *namelens,
								JsonSpan *found);
extern char *json_span_text(const JsonSpan *s);
extern bool json_span_is_unavailable(const JsonSpan *s);
extern char *json_row_fill_unavailable(const char *row, int len,
									   const char *from, int fromlen,
									   int *newlen);

/*
 * Where a CDC change was committed: source.lsn and source.seq order the
 * changes of one cluster's WAL on one timeline.  source.system_id (the
 * cluster's pg_control system identifier) and source.timeline say which WAL
 * that is, so that a cluster restored from a dump, or a standby promoted
 * after an asynchronous failover, which write again at positions already
 * published, are not taken for replays (0.1.5).
 */
typedef struct SourcePosition
{
	bool		known;			/* source.lsn and source.seq present */
	uint64		system_id;		/* 0: not given (before 0.1.5, Debezium) */
	uint32		timeline;		/* 0: not given */
	XLogRecPtr	lsn;
	int64		seq;
} SourcePosition;

extern bool position_is_replay(const SourcePosition *event,
							   const SourcePosition *applied);

/* A change envelope (DESIGN.md) as spans into the message. */
typedef struct KappaChange
{
	char		op;				/* c, u, r, d, t */
	JsonSpan	before;			/* object, or type MISSING */
	JsonSpan	after;
	char		connector[32];
	SourcePosition pos;
	JsonSpan	file;			/* CSV origin, if any */
	int64		line;
	JsonSpan	table;
} KappaChange;

extern bool change_parse(const char *msg, size_t len, KappaChange *change,
						 const char **error);

/* An exact decimal: mantissa * 10^-scale. */
typedef struct KappaDecimal
{
	int128		mantissa;
	int			scale;
} KappaDecimal;

/*
 * What an event may carry, so that nothing it brings fails the batch that
 * writes it (and, the batch being applied again after a restart, every
 * batch after): a measure whose totals fit in 36 digits, group values and
 * items well inside the B-tree limit of the results' keys, a message key
 * well inside that of kappa.stream_rows.
 */
#define KAPPA_MAX_MEASURE_SCALE				18
#define KAPPA_MAX_MEASURE_INTEGER_DIGITS	18
#define KAPPA_MAX_GROUP_BYTES				1000
#define KAPPA_MAX_KEY_BYTES					1000

extern bool decimal_parse(const JsonSpan *s, KappaDecimal *d);
extern bool decimal_spelling(const JsonSpan *s);
extern bool decimal_fits(const KappaDecimal *d, int integer_digits, int max_scale);
extern bool decimal_add(KappaDecimal *a, const KappaDecimal *b, int sign);
extern bool decimal_equal(const KappaDecimal *a, const KappaDecimal *b);
extern void decimal_append(StringInfo out, const KappaDecimal *d);

extern bool iso_time_parse(const char *p, const char *end, bool as_timestamptz_in,
						   TimestampTz *result);
extern bool timestamp_parse(const JsonSpan *s, TimestampTz *result);

/* for spans of the row last given to json_row_members: read once */
extern bool json_row_timestamp(const JsonSpan *s, TimestampTz *result);
extern bool json_row_decimal(const JsonSpan *s, KappaDecimal *d);

#endif							/* KAPPA_EVENT_H */
