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
 *			(a "|" or "\" inside a value is written "\|" or "\\", so
 *			that values containing the separator cannot make two groups'
 *			keys equal; 0.1.5)
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
#include "common/hashfn.h"
#include "executor/spi.h"
#include "kafka/kafka.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "stream/stream_internal.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/*
 * "|" and a value of a result key, the separator and the escape character
 * inside the value escaped with a backslash.
 */
static void
append_key_part(StringInfo key, const char *value)
{
	appendStringInfoChar(key, '|');
	for (const char *p = value; *p; p++)
	{
		if (*p == '|' || *p == '\\')
			appendStringInfoChar(key, '\\');
		appendStringInfoChar(key, *p);
	}
}

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
 * A window whose results were produced: its delivery reports arrive when
 * the producer is served, possibly after the call that produced it gave
 * up waiting, so the counters they go to live in emit_cxt, never on a
 * caller's stack.  A window Kafka refused (a result too large, a topic
 * that does not exist, ...) waits EMIT_RETRY_MS before it is tried again,
 * so that it does not hold back the windows behind it.
 */
typedef struct EmitWindow
{
	char	   *ranking;
	TimestampTz window_start;
	KafkaDelivery delivery;
	bool		refused;		/* refused when produced (too large) */
	bool		incomplete;		/* not all its rows queued: produce again */
	TimestampTz retry_at;
	LOCKTAG		tag;			/* its session lock, while locked */
	bool		locked;
} EmitWindow;

/*
 * How long a call waits for acknowledgements, its transaction open.  Not
 * long: what is not acknowledged by then stays in flight, the window under
 * a session lock that keeps the other stream workers from producing it too,
 * and is settled by a later call while the stream goes on.
 */
#define EMIT_WAIT_MS	1000
#define EMIT_RETRY_MS	60000	/* before a refused window is tried again */
#define EMIT_BUSY_MS	1000	/* before one another worker has is looked at */

/*
 * Past this many windows, or messages, in flight, a call produces only
 * windows of rankings that have none in flight: the windows of one slow
 * results topic neither pile up without bound nor, once they fill the
 * allowance, hold back the rankings behind them.
 */
#define EMIT_MAX_IN_FLIGHT 500
#define EMIT_MAX_IN_FLIGHT_MESSAGES 50000
#define EMIT_QUEUE_WAIT_MS 1000 /* for room in a full producer queue */

static MemoryContext emit_cxt = NULL;
static List *emit_inflight = NIL;	/* produced, reports still pending */
static List *emit_refused = NIL;	/* refused or busy, until retry_at */
static List *emit_settled = NIL;	/* done: unlocked once committed */

/* Lists that outlive a call: their cells in emit_cxt too, not in SPI's. */
static List *
keep(List *list, EmitWindow *ew)
{
	MemoryContext old = MemoryContextSwitchTo(emit_cxt);

	list = lappend(list, ew);
	MemoryContextSwitchTo(old);
	return list;
}

static void
free_window(EmitWindow *ew)
{
	pfree(ew->ranking);
	pfree(ew);
}

/*
 * A window being produced is locked for the session, from its selection
 * until its reports are in and what they say is committed: the row lock of
 * the selection ends with the transaction, which does not wait for Kafka.
 * An advisory lock tag (classid "kapp", objsubid "ke"), keyed by a hash of
 * ranking and window start: two windows sharing a hash wait for each other,
 * nothing worse.  Returns false if another session holds it.
 */
static bool
lock_window(EmitWindow *ew)
{
	uint32		h = hash_bytes((const unsigned char *) ew->ranking, (int) strlen(ew->ranking));

	h = hash_combine(h, hash_bytes((const unsigned char *) &ew->window_start,
								   sizeof(ew->window_start)));
	SET_LOCKTAG_ADVISORY(ew->tag, MyDatabaseId, 0x6b617070, h, 0x6b65);
	switch (LockAcquire(&ew->tag, ExclusiveLock, true, true))
	{
		case LOCKACQUIRE_NOT_AVAIL:
			return false;
		case LOCKACQUIRE_ALREADY_HELD:
		case LOCKACQUIRE_ALREADY_CLEAR:
			/* (this session's own, a hash shared by two windows: not twice) */
			LockRelease(&ew->tag, ExclusiveLock, true);
			return false;
		default:
			ew->locked = true;
			return true;
	}
}

static void
unlock_window(EmitWindow *ew)
{
	if (ew->locked)
		LockRelease(&ew->tag, ExclusiveLock, true);
	ew->locked = false;
}

/* Unlock and free every window of *list, and empty it. */
static void
drop_windows(List **list)
{
	ListCell   *lc;

	foreach(lc, *list)
	{
		unlock_window(lfirst(lc));
		free_window(lfirst(lc));
	}
	list_free(*list);
	*list = NIL;
}

/* After the commit of what settle() found: their locks go. */
static void
release_settled(void)
{
	ListCell   *lc;

	drop_windows(&emit_settled);
	foreach(lc, emit_refused)
		unlock_window(lfirst(lc));
}

/* A transaction of its own with SPI, and its end. */
static void
begin_spi_transaction(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
commit_spi_transaction(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

static void
mark_produced(EmitWindow *ew)
{
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		args[2] = {CStringGetTextDatum(ew->ranking), TimestampTzGetDatum(ew->window_start)};

	if (SPI_execute_with_args("UPDATE kappa.ranking_windows SET produced_at = now() "
							  " WHERE ranking = $1 AND window_start = $2 AND produced_at IS NULL",
							  2, types, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update kappa.ranking_windows");
}

/*
 * Windows whose reports are all in: the acknowledged ones are marked
 * produced (the caller's transaction, SPI connected), the others wait to
 * be tried again.  Returns how many were marked; those settled leave list.
 */
static int
settle(List **list)
{
	List	   *pending = NIL;
	ListCell   *lc;
	int			marked = 0;
	int			failed = 0;
	EmitWindow *first_failed = NULL;

	foreach(lc, *list)
	{
		EmitWindow *ew = lfirst(lc);

		if (ew->delivery.pending > 0)
			pending = keep(pending, ew);
		else if (ew->incomplete)
			emit_settled = keep(emit_settled, ew);	/* still unproduced: the
													 * next call takes it */
		else if (ew->delivery.failed == 0 && !ew->refused)
		{
			mark_produced(ew);
			marked++;
			emit_settled = keep(emit_settled, ew);
		}
		else
		{
			if (failed++ == 0)
				first_failed = ew;
			ew->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), EMIT_RETRY_MS);
			emit_refused = keep(emit_refused, ew);
		}
	}
	if (failed > 0)
	{
		rd_kafka_resp_err_t err = first_failed->delivery.error;

		ereport(WARNING,
				(errcode(kafka_sqlstate(err)),
				 errmsg("pg_kappa stream worker: Kafka refused the final results of %d window(s)", failed),
				 errdetail("First: ranking \"%s\", window starting %s: %s.",
						   first_failed->ranking, timestamptz_to_str(first_failed->window_start),
						   rd_kafka_err2str(err)),
				 err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ?
				 errhint("Raise message.max.bytes in kappa.kafka_options (and the topic's max.message.bytes); the window is tried again every minute.") :
				 errhint("The window is tried again every minute; other windows are produced meanwhile.")));
	}
	list_free(*list);
	*list = pending;
	return marked;
}

/* How many windows wait for Kafka's acknowledgement. */
int
emit_windows_in_flight(void)
{
	return list_length(emit_inflight);
}

/*
 * The producer was destroyed (new Kafka settings).  Its flush served the
 * reports of what it had in flight: the windows acknowledged are marked
 * produced now, as the next call would have done (else they would be
 * produced a second time).  The reports that did not come never will, and
 * windows it refused may pass with the new settings: those are tried again
 * at once.  Runs its own transaction if a window is to be marked.  Returns
 * how many were marked.
 */
int
emit_producer_gone(void)
{
	int			marked = 0;

	if (emit_inflight != NIL)
	{
		begin_spi_transaction();
		marked = settle(&emit_inflight);
		commit_spi_transaction();
		release_settled();
	}
	drop_windows(&emit_inflight);
	drop_windows(&emit_refused);
	drop_windows(&emit_settled);
	return marked;
}

/*
 * Produce up to max_windows final windows that are not produced yet.
 * Returns how many windows were completed, -1 if some this call produced
 * wait for Kafka's acknowledgement (they are settled by a later call, while
 * other windows go).  Runs its own transaction.
 */
int
emit_final_results(KafkaClient *producer, int max_windows)
{
	int			windows;
	StringInfoData key;
	StringInfoData value;
	List	   *produced = NIL;
	int			marked;
	bool		queue_full = false;
	bool		crowded = false;
	TimestampTz deadline;
	MemoryContext cxt;
	MemoryContext row_cxt;

	if (emit_cxt == NULL)
		emit_cxt = AllocSetContextCreate(TopMemoryContext, "pg_kappa emitted windows",
										 ALLOCSET_SMALL_SIZES);

	/*
	 * What earlier calls left in flight: the windows whose reports are all
	 * in are settled, the others stay in flight while other windows go (a
	 * results topic whose leader is slow or away must not hold back the
	 * results of the others until its messages time out).
	 */
	if (emit_inflight != NIL)
	{
		ListCell   *lc;
		bool		some_in = false;

		kafka_client_serve(producer, 0);
		foreach(lc, emit_inflight)
			if (((EmitWindow *) lfirst(lc))->delivery.pending == 0)
				some_in = true;
		if (some_in)
		{
			begin_spi_transaction();
			(void) settle(&emit_inflight);
			commit_spi_transaction();
			release_settled();
		}
	}
	if (emit_inflight != NIL)
	{
		ListCell   *lc;
		int64		messages = 0;

		foreach(lc, emit_inflight)
			messages += ((EmitWindow *) lfirst(lc))->delivery.pending;
		crowded = list_length(emit_inflight) >= EMIT_MAX_IN_FLIGHT ||
			messages >= EMIT_MAX_IN_FLIGHT_MESSAGES;
	}

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	cxt = CurrentMemoryContext;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	{
		/*
		 * Windows in flight, refused less than EMIT_RETRY_MS ago, or held by
		 * another worker less than EMIT_BUSY_MS ago wait, and past the
		 * allowance of windows in flight every window of a ranking with
		 * some in flight: the LIMIT then reaches the windows after them.
		 */
		TimestampTz now = GetCurrentTimestamp();
		List	   *still = NIL;
		int			nskip = 0;
		int			room = list_length(emit_refused) + list_length(emit_inflight) + 1;
		Datum	   *skip_rankings = palloc(sizeof(Datum) * room);
		Datum	   *skip_starts = palloc(sizeof(Datum) * room);
		ListCell   *lc;
		Oid			types[4] = {INT4OID, TEXTARRAYOID, TIMESTAMPTZARRAYOID, TEXTARRAYOID};
		Datum		args[4];
		Datum	   *busy_rankings = palloc(sizeof(Datum) * room);
		int			nbusy = 0;
		const char *prev = NULL;

		foreach(lc, emit_inflight)
		{
			EmitWindow *ew = lfirst(lc);

			skip_rankings[nskip] = CStringGetTextDatum(ew->ranking);
			skip_starts[nskip] = TimestampTzGetDatum(ew->window_start);
			nskip++;
			/* (windows in flight come in runs of one ranking) */
			if (crowded && (prev == NULL || strcmp(prev, ew->ranking) != 0))
				busy_rankings[nbusy++] = skip_rankings[nskip - 1];
			prev = ew->ranking;
		}

		foreach(lc, emit_refused)
		{
			EmitWindow *ew = lfirst(lc);

			if (ew->retry_at > now)
			{
				skip_rankings[nskip] = CStringGetTextDatum(ew->ranking);
				skip_starts[nskip] = TimestampTzGetDatum(ew->window_start);
				nskip++;
				still = keep(still, ew);
			}
			else
				free_window(ew);
		}
		list_free(emit_refused);
		emit_refused = still;

		args[0] = Int32GetDatum(max_windows);
		args[1] = PointerGetDatum(construct_array(skip_rankings, nskip, TEXTOID, -1, false, TYPALIGN_INT));
		args[2] = PointerGetDatum(construct_array(skip_starts, nskip, TIMESTAMPTZOID, sizeof(TimestampTz),
												  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		args[3] = PointerGetDatum(construct_array(busy_rankings, nbusy, TEXTOID, -1, false, TYPALIGN_INT));
		if (SPI_execute_with_args("SELECT w.ranking, w.window_start, w.window_end, "
								  "       kappa.ranking_results_topic(w.ranking), r.group_by, r.item, r.item_label "
								  "  FROM kappa.ranking_windows w JOIN kappa.rankings r ON r.name = w.ranking "
								  " WHERE w.is_final AND w.produced_at IS NULL "
								  "   AND (w.ranking, w.window_start) NOT IN "
								  "       (SELECT * FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::timestamptz[]))) "
								  "   AND w.ranking <> ALL ($4::text[]) "
								  " ORDER BY w.ranking, w.window_start "
								  " LIMIT $1 FOR UPDATE OF w SKIP LOCKED",
								  4, types, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read kappa.ranking_windows");
	}
	windows = (int) SPI_processed;
	if (windows == 0)
	{
		commit_spi_transaction();
		return 0;
	}

	initStringInfo(&key);
	initStringInfo(&value);
	/* what each result row's message is made from (in SPI's memory, as key) */
	row_cxt = AllocSetContextCreate(CurrentMemoryContext, "pg_kappa emit row",
									ALLOCSET_SMALL_SIZES);
	{
		SPITupleTable *wins = SPI_tuptable;

		for (int w = 0; w < windows && !queue_full; w++)
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
			EmitWindow *ew = MemoryContextAllocZero(emit_cxt, sizeof(EmitWindow));

			ew->ranking = MemoryContextStrdup(emit_cxt, ranking);
			ew->window_start = ws;
			if (!lock_window(ew))
			{
				/* another worker has it in flight: look again in a while */
				ew->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), EMIT_BUSY_MS);
				emit_refused = keep(emit_refused, ew);
				continue;
			}
			produced = keep(produced, ew);
			if (topic == NULL)
				continue;		/* results of this ranking are not produced */

			if (SPI_execute_with_args("SELECT group_values, item, item_label, total, sale_count "
									  "  FROM kappa.ranking_results "
									  " WHERE ranking = $1 AND window_start = $2 "
									  " ORDER BY group_values, item",
									  2, types, args, NULL, true, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not read kappa.ranking_results");
			for (uint64 i = 0; i < SPI_processed && !ew->refused; i++)
			{
				HeapTuple	t = SPI_tuptable->vals[i];
				TupleDesc	d = SPI_tuptable->tupdesc;
				MemoryContext caller = MemoryContextSwitchTo(row_cxt);
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
					append_key_part(&key, TextDatumGetCString(vals[g]));
				if (item_field)
					append_key_part(&key, item);

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

				/*
				 * Refused at once (too large): the window waits, the rest go.
				 * The producer's queue full for a second (a broker away or
				 * slow): stop here rather than wait with this transaction
				 * open and the stream stopped; this window and the ones after
				 * it stay unproduced and are taken again on the next call.
				 */
				switch (kafka_produce_within(producer, topic, key.data, key.len, value.data, value.len,
											 0, &ew->delivery, true, EMIT_QUEUE_WAIT_MS))
				{
					case KAFKA_PRODUCE_QUEUED:
						break;
					case KAFKA_PRODUCE_TOO_LARGE:
						ew->refused = true;
						if (ew->delivery.failed++ == 0)
							ew->delivery.error = RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE;
						break;
					case KAFKA_PRODUCE_QUEUE_FULL:
						ew->incomplete = true;
						queue_full = true;
						break;
				}
				MemoryContextSwitchTo(caller);
				MemoryContextReset(row_cxt);
				if (queue_full)
					break;
			}
			/* one window's rows in memory at a time, not all the call's */
			SPI_freetuptable(SPI_tuptable);
		}
	}

	/*
	 * Wait for the acknowledgements, then mark what Kafka has.  After a full
	 * queue no wait: Kafka is not keeping up, and the reports are collected
	 * by the next calls while the stream goes on.
	 */
	if (queue_full)
		ereport(LOG,
				(errmsg("pg_kappa stream worker: the producer's queue is full, final results wait"),
				 errdetail("Window starting %s of ranking \"%s\" and the ones after it are produced once Kafka takes messages again.",
						   timestamptz_to_str(((EmitWindow *) llast(produced))->window_start),
						   ((EmitWindow *) llast(produced))->ranking),
				 errhint("Check that the brokers of the results topics are up; queue.buffering.max.messages in kappa.kafka_options sets the queue's size.")));
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), queue_full ? 0 : EMIT_WAIT_MS);
	{
		ListCell   *lc;

		foreach(lc, produced)
		{
			EmitWindow *ew = lfirst(lc);
			long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);

			(void) kafka_wait_delivered(producer, &ew->delivery, (int) Max(left, 0));
		}
	}
	MemoryContextSwitchTo(cxt);
	marked = settle(&produced);
	/* what has not been acknowledged yet (its cells in emit_cxt) */
	{
		ListCell   *lc;

		foreach(lc, produced)
			emit_inflight = keep(emit_inflight, lfirst(lc));
	}
	commit_spi_transaction();
	release_settled();
	if (produced != NIL)
	{
		ereport(LOG,
				(errmsg("pg_kappa stream worker: Kafka has not acknowledged the final results of %d window(s) yet",
						list_length(produced)),
				 errdetail("They are marked produced once it does, or produced again if it does not; other windows are produced meanwhile.")));
		list_free(produced);
		return -1;
	}
	return marked;
}
