/*-------------------------------------------------------------------------
 *
 * sink.c
 *	  Sink rankings: window results computed elsewhere (a Kafka Streams
 *	  application, or other pg_kappa instances that each aggregate their
 *	  share of the partitions) written into kappa.ranking_results.
 *
 * Each producer's latest value per (window, group, item) is kept in
 * kappa.sink_partials; the ranking's result is their sum.  Replacing a
 * producer's value is idempotent, and the consumed offsets are stored in
 * the same transaction, so a result counts exactly once.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "stream/stream_internal.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

typedef struct SinkRow
{
	char	   *ranking;
	char	   *window_start;
	char	   *window_end;
	char	   *group_key;
	char	   *item;
	char	   *label;
	char	   *producer;
	char	   *total;
	char	   *count;
	bool		final;
} SinkRow;

static List *sink_rows = NIL;
static MemoryContext sink_cxt = NULL;

void
sink_reset(MemoryContext cxt)
{
	sink_cxt = cxt;
	sink_rows = NIL;
}

static char *
ts_text(TimestampTz t)
{
	return DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(t)));
}

bool
sink_apply(const KappaRanking *r, const char *raw, size_t len, const char **error)
{
	static const char *const names[] = {"window_start", "window_end", "group", "item",
	"total_sales", "sale_count", "final", "producer", "total"};
	static const int lens[] = {12, 10, 5, 4, 11, 10, 5, 8, 5};
	JsonSpan	f[9];
	TimestampTz ws,
				we;
	KappaDecimal total;
	StringInfoData group;
	StringInfoData buf;
	SinkRow    *row;
	MemoryContext old;

	if (len > INT_MAX || !json_is_object(raw, (int) len))
	{
		*error = "message is not a JSON object";
		return false;
	}
	json_object_members(raw, (int) len, 9, names, lens, f);
	if (!timestamp_parse(&f[0], &ws) || !timestamp_parse(&f[1], &we))
	{
		*error = "window_start and window_end must be ISO-8601 times with a zone";
		return false;
	}
	if (f[2].type != JSON_SPAN_OBJECT)
	{
		*error = "\"group\" is missing or not an object";
		return false;
	}
	if (!decimal_parse(f[4].type != JSON_SPAN_MISSING ? &f[4] : &f[8], &total))
	{
		*error = "total_sales is missing or not a decimal number";
		return false;
	}
	/*
	 * 15 digits: the producers' counts of a row are summed into a bigint,
	 * which more than 9 000 of them at 10^15 sales each would overflow (at
	 * 18 digits, ten did, and the batch failed at every attempt).
	 */
	if (f[5].type != JSON_SPAN_NUMBER || f[5].len > 15 + (f[5].p[0] == '-') ||
		strspn(f[5].p + (f[5].p[0] == '-'), "0123456789") != (size_t) f[5].len - (f[5].p[0] == '-'))
	{
		*error = "sale_count is missing or not an integer of at most 15 digits";
		return false;
	}

	old = MemoryContextSwitchTo(sink_cxt);
	row = palloc0(sizeof(SinkRow));
	initStringInfo(&group);
	appendStringInfoChar(&group, '{');
	for (int g = 0; g < r->ngroups; g++)
	{
		JsonSpan	v;
		const char *gname = r->group_fields[g];
		int			glen = strlen(gname);
		char	   *text;

		json_object_members(f[2].p, f[2].len, 1, &gname, &glen, &v);
		if ((v.type != JSON_SPAN_STRING && v.type != JSON_SPAN_NUMBER) ||
			(text = json_span_text(&v)) == NULL)
		{
			MemoryContextSwitchTo(old);
			*error = "a group-by field of the ranking is missing from \"group\"";
			return false;
		}
		if (g > 0)
			appendStringInfoChar(&group, ',');
		stream_array_literal_append(&group, text);
	}
	appendStringInfoChar(&group, '}');
	if (group.len > KAPPA_MAX_GROUP_BYTES)
	{
		MemoryContextSwitchTo(old);
		*error = "the group-by values are longer than " CppAsString2(KAPPA_MAX_GROUP_BYTES) " bytes together";
		return false;
	}
	row->group_key = group.data;
	row->item = "";
	if (r->item_field == NULL && f[3].type != JSON_SPAN_MISSING && f[3].type != JSON_SPAN_NULL)
	{
		/* results per item, summed as one per group, would keep one item's */
		MemoryContextSwitchTo(old);
		*error = "the message has an \"item\" but the ranking has no item field";
		return false;
	}
	if (r->item_field)
	{
		JsonSpan	v[2];
		const char *inames[2] = {r->item_field, r->label_field ? r->label_field : ""};
		int			ilens[2] = {(int) strlen(r->item_field), r->label_field ? (int) strlen(r->label_field) : 0};

		if (f[3].type != JSON_SPAN_OBJECT)
		{
			MemoryContextSwitchTo(old);
			*error = "\"item\" is missing or not an object";
			return false;
		}
		json_object_members(f[3].p, f[3].len, 2, inames, ilens, v);
		if ((row->item = json_span_text(&v[0])) == NULL || v[0].type == JSON_SPAN_OBJECT)
		{
			MemoryContextSwitchTo(old);
			*error = "the item field of the ranking is missing from \"item\"";
			return false;
		}
		if (strlen(row->item) > KAPPA_MAX_GROUP_BYTES)
		{
			MemoryContextSwitchTo(old);
			*error = "the item is longer than " CppAsString2(KAPPA_MAX_GROUP_BYTES) " bytes";
			return false;
		}
		if (r->label_field && v[1].type == JSON_SPAN_STRING)
			row->label = json_span_text(&v[1]);
	}
	row->ranking = pstrdup(r->name);
	row->window_start = ts_text(ws);
	row->window_end = ts_text(we);
	row->producer = f[7].type == JSON_SPAN_STRING ? json_span_text(&f[7]) : pstrdup("");
	if (row->producer == NULL || strlen(row->producer) > KAPPA_MAX_GROUP_BYTES)
	{
		MemoryContextSwitchTo(old);
		*error = row->producer == NULL ? "\"producer\" is not a valid string" :
			"\"producer\" is longer than " CppAsString2(KAPPA_MAX_GROUP_BYTES) " bytes";
		return false;
	}
	initStringInfo(&buf);
	decimal_append(&buf, &total);
	row->total = buf.data;
	row->count = pnstrdup(f[5].p, f[5].len);
	/* a producer that does not say its value is final has not said so */
	row->final = f[6].type == JSON_SPAN_BOOL && f[6].p[0] == 't';
	sink_rows = lappend(sink_rows, row);
	MemoryContextSwitchTo(old);
	return true;
}

void
sink_flush(void)
{
	ArrayBuildState *cols[10];
	Oid			types[10];
	Datum		args[10];
	ListCell   *lc;

	if (sink_rows == NIL)
		return;
	stream_lock_shared_writes();
	for (int c = 0; c < 10; c++)
	{
		cols[c] = initArrayResult(TEXTOID, CurrentMemoryContext, false);
		types[c] = TEXTARRAYOID;
	}
	foreach(lc, sink_rows)
	{
		SinkRow    *s = lfirst(lc);
		char	   *v[10] = {s->ranking, s->window_start, s->window_end, s->group_key, s->item,
		s->label, s->producer, s->total, s->count, s->final ? "t" : "f"};

		for (int c = 0; c < 10; c++)
			accumArrayResult(cols[c], v[c] ? CStringGetTextDatum(v[c]) : (Datum) 0,
							 v[c] == NULL, TEXTOID, CurrentMemoryContext);
	}
	for (int c = 0; c < 10; c++)
		args[c] = makeArrayResult(cols[c], CurrentMemoryContext);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(
							  "INSERT INTO kappa.sink_partials AS p "
							  "       (ranking, window_start, window_end, group_values, item, item_label, "
							  "        producer, total, sale_count, final) "
							  "SELECT DISTINCT ON (1, 2, 4, 5, 7) r, ws::timestamptz, we::timestamptz, g::text[], i, l, "
							  "       pr, t::numeric, c::bigint, f::boolean "
							  "  FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) WITH ORDINALITY "
							  "       AS u(r, ws, we, g, i, l, pr, t, c, f, n) "
							  " ORDER BY 1, 2, 4, 5, 7, n DESC "
							  "ON CONFLICT (ranking, window_start, group_values, item, producer) DO UPDATE "
							  "   SET window_end = EXCLUDED.window_end, item_label = EXCLUDED.item_label, "
							  "       total = EXCLUDED.total, sale_count = EXCLUDED.sale_count, "
							  "       final = EXCLUDED.final, updated_at = now()",
							  10, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write kappa.sink_partials");
	if (SPI_execute_with_args(
							  "INSERT INTO kappa.ranking_windows (ranking, window_start, window_end) "
							  "SELECT DISTINCT r, ws::timestamptz, we::timestamptz FROM unnest($1, $2, $3) AS u(r, ws, we) "
							  "ON CONFLICT DO NOTHING",
							  10, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write kappa.ranking_windows");
	if (SPI_execute_with_args(
							  "INSERT INTO kappa.ranking_results AS res "
							  "       (ranking, window_start, window_end, group_values, item, item_label, "
							  "        total, sale_count, is_final) "
							  "SELECT p.ranking, p.window_start, max(p.window_end), p.group_values, p.item, "
							  "       max(p.item_label), sum(p.total), "
							  "       greatest(least(sum(p.sale_count), 9223372036854775807), -9223372036854775808)::bigint, "
							  "       bool_and(p.final) "
							  "  FROM kappa.sink_partials p "
							  "  JOIN (SELECT DISTINCT r, ws::timestamptz AS ws, g::text[] AS g, i "
							  "          FROM unnest($1, $2, $4, $5) AS u(r, ws, g, i)) t "
							  "    ON p.ranking = t.r AND p.window_start = t.ws AND p.group_values = t.g AND p.item = t.i "
							  " GROUP BY p.ranking, p.window_start, p.group_values, p.item "
							  " ORDER BY 1, 2, 4, 5 "
							  "ON CONFLICT (ranking, window_start, group_values, item) DO UPDATE "
							  "   SET window_end = EXCLUDED.window_end, item_label = EXCLUDED.item_label, "
							  "       total = EXCLUDED.total, sale_count = EXCLUDED.sale_count, "
							  "       is_final = EXCLUDED.is_final, updated_at = now()",
							  10, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write kappa.ranking_results");
	/* a window is final when every producer said so; sinks produce nothing further */
	if (SPI_execute_with_args(
							  "UPDATE kappa.ranking_windows w "
							  "   SET is_final = true, finalized_at = now(), produced_at = now() "
							  "  FROM (SELECT DISTINCT r, ws::timestamptz AS ws FROM unnest($1, $2) AS u(r, ws)) t "
							  " WHERE w.ranking = t.r AND w.window_start = t.ws AND NOT w.is_final "
							  "   AND NOT EXISTS (SELECT FROM kappa.sink_partials p "
							  "                    WHERE p.ranking = w.ranking AND p.window_start = w.window_start "
							  "                      AND NOT p.final)",
							  10, types, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update kappa.ranking_windows");
	SPI_finish();
	sink_rows = NIL;
}
