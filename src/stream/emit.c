/*-------------------------------------------------------------------------
 *
 * emit.c
 *	  Final window results to Kafka (top-sales-by-city,
 *	  top-salesman-by-country, or a ranking's own results topic).
 *
 * kappa.ranking_windows is the outbox: a window becomes final in the same
 * transaction that applies the events which closed it, and is produced
 * afterwards; produced_at is set only once Kafka acknowledged every row of
 * the window.  A crash in between produces the window again with the same
 * keys and values, so consumers keeping the latest value per key see no
 * difference.
 *
 *	key:	<window_start>|<group values...>[|<item>]
 *	value:	{"ranking":"top_sales_by_city","window_start":"...","window_end":"...",
 *			 "group":{"city":"Madrid"},"total_sales":"1234.50","sale_count":17,
 *			 "final":true,"producer":"<instance>"}
 *			(rankings with an item add "item":{"seller_id":..,"seller_name":..})
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "cdc/envelope.h"
#include "executor/spi.h"
#include "kafka/kafka.h"
#include "miscadmin.h"
#include "stream/stream_internal.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"

const char *
kappa_instance_name(void)
{
	static char name[NAMEDATALEN * 2 + 32];

	if (kappa_instance_id && kappa_instance_id[0])
		return kappa_instance_id;
	if (name[0] == '\0')
		snprintf(name, sizeof(name), "%s@" UINT64_FORMAT, kappa_database,
				 GetSystemIdentifier());
	return name;
}

static void
append_group_object(StringInfo out, Datum groups, Datum values)
{
	Datum	   *names;
	Datum	   *vals;
	int			nnames,
				nvals;

	deconstruct_array(DatumGetArrayTypeP(groups), TEXTOID, -1, false, TYPALIGN_INT,
					  &names, NULL, &nnames);
	deconstruct_array(DatumGetArrayTypeP(values), TEXTOID, -1, false, TYPALIGN_INT,
					  &vals, NULL, &nvals);
	appendStringInfoChar(out, '{');
	for (int i = 0; i < nnames && i < nvals; i++)
	{
		char	   *n = TextDatumGetCString(names[i]);
		char	   *v = TextDatumGetCString(vals[i]);

		if (i > 0)
			appendStringInfoChar(out, ',');
		envelope_append_json_string(out, n, strlen(n));
		appendStringInfoChar(out, ':');
		envelope_append_json_string(out, v, strlen(v));
	}
	appendStringInfoChar(out, '}');
}

/*
 * Produce up to max_windows final windows that are not produced yet.
 * Returns how many windows were completed, -1 if Kafka did not acknowledge
 * (they are tried again next time).  Runs its own transaction.
 */
int
emit_final_results(KafkaClient *producer, int max_windows)
{
	KafkaDelivery delivery = {0};
	int			windows;
	StringInfoData key;
	StringInfoData value;
	List	   *done = NIL;
	bool		delivered;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	{
		Oid			types[1] = {INT4OID};
		Datum		args[1] = {Int32GetDatum(max_windows)};

		if (SPI_execute_with_args("SELECT w.ranking, w.window_start, w.window_end, "
								  "       kappa.ranking_results_topic(w.ranking), r.group_by, r.item, r.item_label "
								  "  FROM kappa.ranking_windows w JOIN kappa.rankings r ON r.name = w.ranking "
								  " WHERE w.is_final AND w.produced_at IS NULL "
								  " ORDER BY w.ranking, w.window_start "
								  " LIMIT $1 FOR UPDATE OF w SKIP LOCKED",
								  1, types, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read kappa.ranking_windows");
	}
	windows = (int) SPI_processed;
	if (windows == 0)
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		return 0;
	}

	initStringInfo(&key);
	initStringInfo(&value);
	{
		SPITupleTable *wins = SPI_tuptable;

		for (int w = 0; w < windows; w++)
		{
			HeapTuple	wt = wins->vals[w];
			TupleDesc	wd = wins->tupdesc;
			char	   *ranking = SPI_getvalue(wt, wd, 1);
			bool		isnull;
			TimestampTz ws = DatumGetTimestampTz(SPI_getbinval(wt, wd, 2, &isnull));
			TimestampTz we = DatumGetTimestampTz(SPI_getbinval(wt, wd, 3, &isnull));
			char	   *topic = SPI_getvalue(wt, wd, 4);
			Datum		groups = SPI_getbinval(wt, wd, 5, &isnull);
			char	   *item_field = SPI_getvalue(wt, wd, 6);
			char	   *label_field = SPI_getvalue(wt, wd, 7);
			Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
			Datum		args[2] = {CStringGetTextDatum(ranking), TimestampTzGetDatum(ws)};

			done = lappend(done, list_make2(makeString(ranking), makeString(SPI_getvalue(wt, wd, 2))));
			if (topic == NULL)
				continue;		/* results of this ranking are not produced */

			if (SPI_execute_with_args("SELECT group_values, item, item_label, total, sale_count "
									  "  FROM kappa.ranking_results "
									  " WHERE ranking = $1 AND window_start = $2 "
									  " ORDER BY group_values, item",
									  2, types, args, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not read kappa.ranking_results");
			for (uint64 i = 0; i < SPI_processed; i++)
			{
				HeapTuple	t = SPI_tuptable->vals[i];
				TupleDesc	d = SPI_tuptable->tupdesc;
				Datum		gv = SPI_getbinval(t, d, 1, &isnull);
				char	   *item = SPI_getvalue(t, d, 2);
				char	   *label = SPI_getvalue(t, d, 3);
				Datum	   *vals;
				int			nvals;

				resetStringInfo(&key);
				resetStringInfo(&value);
				/* key: window start, group values, item */
				envelope_append_timestamptz(&key, ws);
				memmove(key.data, key.data + 1, key.len - 2);	/* unquote */
				key.len -= 2;
				key.data[key.len] = '\0';
				deconstruct_array(DatumGetArrayTypeP(gv), TEXTOID, -1, false, TYPALIGN_INT,
								  &vals, NULL, &nvals);
				for (int g = 0; g < nvals; g++)
					appendStringInfo(&key, "|%s", TextDatumGetCString(vals[g]));
				if (item_field)
					appendStringInfo(&key, "|%s", item);

				appendStringInfoString(&value, "{\"ranking\":");
				envelope_append_json_string(&value, ranking, strlen(ranking));
				appendStringInfoString(&value, ",\"window_start\":");
				envelope_append_timestamptz(&value, ws);
				appendStringInfoString(&value, ",\"window_end\":");
				envelope_append_timestamptz(&value, we);
				appendStringInfoString(&value, ",\"group\":");
				append_group_object(&value, groups, gv);
				if (item_field)
				{
					appendStringInfoString(&value, ",\"item\":{");
					envelope_append_json_string(&value, item_field, strlen(item_field));
					appendStringInfoChar(&value, ':');
					envelope_append_json_string(&value, item, strlen(item));
					if (label_field && label)
					{
						appendStringInfoChar(&value, ',');
						envelope_append_json_string(&value, label_field, strlen(label_field));
						appendStringInfoChar(&value, ':');
						envelope_append_json_string(&value, label, strlen(label));
					}
					appendStringInfoChar(&value, '}');
				}
				appendStringInfo(&value, ",\"total_sales\":\"%s\",\"sale_count\":%s,\"final\":true,\"producer\":",
								 SPI_getvalue(t, d, 4), SPI_getvalue(t, d, 5));
				envelope_append_json_string(&value, kappa_instance_name(), strlen(kappa_instance_name()));
				appendStringInfoChar(&value, '}');

				kafka_produce(producer, topic, key.data, key.len, value.data, value.len, 0, &delivery);
			}
		}
	}

	delivered = kafka_wait_delivered(producer, &delivery, 30000) && delivery.failed == 0;
	if (delivered)
	{
		ListCell   *lc;

		foreach(lc, done)
		{
			List	   *w = lfirst(lc);
			Oid			types[2] = {TEXTOID, TEXTOID};
			Datum		args[2] = {CStringGetTextDatum(strVal(linitial(w))),
			CStringGetTextDatum(strVal(lsecond(w)))};

			if (SPI_execute_with_args("UPDATE kappa.ranking_windows SET produced_at = now() "
									  " WHERE ranking = $1 AND window_start = $2::timestamptz",
									  2, types, args, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not update kappa.ranking_windows");
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	if (!delivered)
	{
		ereport(LOG,
				(errmsg("pg_kappa stream worker: Kafka did not acknowledge final window results: %s",
						delivery.failed ? rd_kafka_err2str(delivery.error) : "timeout"),
				 errdetail("They are produced again on the next attempt.")));
		return -1;
	}
	return windows;
}
