/*-------------------------------------------------------------------------
 *
 * aggregate.c
 *	  A batch's changes to the rankings, pre-aggregated in memory and
 *	  written to kappa.ranking_results with one statement.
 *
 * Ten thousand sales of one day in forty cities become forty row updates:
 * the batch sums each (ranking, window, group, item) in a hash table, then
 * upserts the sums.  Rows are written in key order, so stream workers that
 * touch the same groups lock them in the same order and never deadlock.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "stream/stream_internal.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

typedef struct AggKey
{
	int32		ranking_id;
	uint32		key_hash;		/* Contribution.key_hash */
	TimestampTz window_start;
	const char *group_key;		/* in one allocation with item */
	const char *item;
	int			group_len;
	int			item_len;
} AggKey;

typedef struct AggEntry
{
	AggKey		key;
	TimestampTz window_end;
	char	   *label;			/* the last one added */
	char	   *old_label;		/* the first one retracted */
	KappaDecimal total;
	int64		count;
} AggEntry;

static HTAB *agg_table = NULL;

/*
 * Stream workers write the shared results one at a time: concurrent
 * ON CONFLICT inserts of the same new windows can deadlock otherwise.  Held
 * until the batch commits; everything before (parsing, the rows' memory)
 * runs in parallel.
 */
void
stream_lock_shared_writes(void)
{
	LOCKTAG		tag;

	KAPPA_LOCK_TAG(tag, KAPPA_LOCK_SHARED_WRITES);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}
static MemoryContext agg_cxt = NULL;

/* (the strings' hash comes with the contribution: one pass over them) */
static uint32
agg_hash(const void *key, Size keysize)
{
	const AggKey *k = key;
	uint64		w = (uint64) k->window_start;

	return hash_combine(hash_combine(k->key_hash, (uint32) k->ranking_id),
						murmurhash32((uint32) w ^ (uint32) (w >> 32)));
}

static int
agg_match(const void *a, const void *b, Size keysize)
{
	const AggKey *x = a;
	const AggKey *y = b;

	if (x->ranking_id != y->ranking_id || x->window_start != y->window_start ||
		x->group_len != y->group_len || x->item_len != y->item_len)
		return 1;
	return memcmp(x->group_key, y->group_key, x->group_len) != 0 ||
		memcmp(x->item, y->item, x->item_len) != 0;
}

void
aggregate_reset(MemoryContext cxt)
{
	HASHCTL		ctl;

	agg_cxt = cxt;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(AggKey);
	ctl.entrysize = sizeof(AggEntry);
	ctl.hash = agg_hash;
	ctl.match = agg_match;
	ctl.hcxt = cxt;
	agg_table = hash_create("pg_kappa batch aggregates", 1024, &ctl,
							HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

int64
aggregate_count(void)
{
	return agg_table ? hash_get_num_entries(agg_table) : 0;
}

/* Add (sign +1) or retract (sign -1) a contribution. */
void
aggregate_add(const KappaRanking *r, const Contribution *c, int sign)
{
	AggKey		key;
	AggEntry   *e;
	bool		found;

	key.ranking_id = r->id;
	key.key_hash = c->key_hash;
	key.window_start = c->window_start;
	key.group_key = c->group_key;
	key.item = c->item;
	key.group_len = c->group_len;
	key.item_len = c->item_len;
	e = hash_search(agg_table, &key, HASH_ENTER, &found);
	if (!found)
	{
		char	   *k = MemoryContextAlloc(agg_cxt, c->group_len + c->item_len + 2);

		memcpy(k, c->group_key, c->group_len + 1);
		memcpy(k + c->group_len + 1, c->item, c->item_len + 1);
		e->key.group_key = k;
		e->key.item = k + c->group_len + 1;
		e->window_end = c->window_end;
		e->label = NULL;
		e->old_label = NULL;
		e->total.mantissa = 0;
		e->total.scale = 0;
		e->count = 0;
	}
	if (sign > 0 && c->label && (e->label == NULL || strcmp(e->label, c->label) != 0))
		e->label = MemoryContextStrdup(agg_cxt, c->label);
	else if (sign < 0 && c->label && e->old_label == NULL)
		e->old_label = MemoryContextStrdup(agg_cxt, c->label);
	if (!decimal_add(&e->total, &c->value, sign))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("ranking \"%s\": a total exceeds 36 digits", r->name)));
	e->count += sign;
}

static Datum
text_array(Datum *elems, bool *nulls, int n)
{
	int			dims[1] = {n};
	int			lbs[1] = {1};

	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
											  TEXTOID, -1, false, TYPALIGN_INT));
}

/* times as they are: no text form to print and parse again */
static Datum
timestamptz_array(Datum *elems, int n)
{
	return PointerGetDatum(construct_array(elems, n, TIMESTAMPTZOID,
										   sizeof(TimestampTz), FLOAT8PASSBYVAL,
										   TYPALIGN_DOUBLE));
}

static const char *
ranking_name(List *rankings, int id)
{
	ListCell   *lc;

	foreach(lc, rankings)
	{
		KappaRanking *r = lfirst(lc);

		if (r->id == id)
			return r->name;
	}
	elog(ERROR, "unknown ranking id %d", id);
	return NULL;
}

/*
 * Set the label of results whose sums the batch left as they were: an
 * update that changed only the label retracts and adds the same amount.
 * An UPDATE, not the upsert: such a result exists (its old contribution
 * was counted), and one that does not is not to be made with nothing in it.
 */
static void
relabel_results(List *rankings, List *entries)
{
	int			n = list_length(entries);
	Datum	   *cols[5];
	Datum		args[5];
	Oid			types[5];
	ListCell   *lc;
	int			i = 0;

	if (n == 0)
		return;
	for (int c = 0; c < 5; c++)
		cols[c] = palloc(sizeof(Datum) * n);
	foreach(lc, entries)
	{
		AggEntry   *e = lfirst(lc);

		cols[0][i] = CStringGetTextDatum(ranking_name(rankings, e->key.ranking_id));
		cols[1][i] = TimestampTzGetDatum(e->key.window_start);
		cols[2][i] = CStringGetTextDatum(e->key.group_key);
		cols[3][i] = CStringGetTextDatum(e->key.item);
		cols[4][i] = CStringGetTextDatum(e->label);
		i++;
	}
	for (int c = 0; c < 5; c++)
	{
		if (c == 1)
		{
			args[c] = timestamptz_array(cols[c], n);
			types[c] = TIMESTAMPTZARRAYOID;
		}
		else
		{
			args[c] = text_array(cols[c], NULL, n);
			types[c] = TEXTARRAYOID;
		}
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* (under the batch's shared-writes lock: no order needed against others) */
	if (SPI_execute_with_args(
							  "UPDATE kappa.ranking_results res "
							  "   SET item_label = d.l, updated_at = now() "
							  "  FROM unnest($1, $2, $3, $4, $5) AS d(r, ws, g, i, l) "
							  " WHERE res.ranking = d.r AND res.window_start = d.ws "
							  "   AND res.group_values = d.g::text[] AND res.item = d.i "
							  "   AND res.item_label IS DISTINCT FROM d.l",
							  5, types, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not write kappa.ranking_results");
	SPI_finish();
}

/*
 * Write the batch's sums: windows first (results reference them), then
 * results, then remove groups whose count fell to zero.  Inside the batch's
 * transaction.
 */
void
aggregate_flush(List *rankings)
{
	int			n = (int) hash_get_num_entries(agg_table);
	Datum	   *cols[8];
	bool	   *label_nulls;
	bool		any_retraction = false;
	List	   *relabel = NIL;
	HASH_SEQ_STATUS status;
	AggEntry   *e;
	int			i = 0;
	Datum		args[8];
	Oid			types[8];
	StringInfoData buf;

	if (n == 0)
		return;
	stream_lock_shared_writes();
	for (int c = 0; c < 8; c++)
	{
		cols[c] = palloc(sizeof(Datum) * n);
		types[c] = TEXTARRAYOID;
	}
	label_nulls = palloc0(sizeof(bool) * n);
	initStringInfo(&buf);

	hash_seq_init(&status, agg_table);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		/*
		 * Sums that net to zero write nothing (a row added and retracted
		 * within the batch), unless the label changed: an update of only
		 * the label (seller_name) retracts and adds the same amount.
		 */
		if (e->count == 0 && e->total.mantissa == 0)
		{
			if (e->label != NULL &&
				(e->old_label == NULL || strcmp(e->label, e->old_label) != 0))
				relabel = lappend(relabel, e);
			continue;
		}
		cols[0][i] = CStringGetTextDatum(ranking_name(rankings, e->key.ranking_id));
		cols[1][i] = TimestampTzGetDatum(e->key.window_start);
		cols[2][i] = TimestampTzGetDatum(e->window_end);
		cols[3][i] = CStringGetTextDatum(e->key.group_key);
		cols[4][i] = CStringGetTextDatum(e->key.item);
		if (e->label)
			cols[5][i] = CStringGetTextDatum(e->label);
		else
		{
			cols[5][i] = (Datum) 0;
			label_nulls[i] = true;
		}
		resetStringInfo(&buf);
		decimal_append(&buf, &e->total);
		cols[6][i] = CStringGetTextDatum(buf.data);
		resetStringInfo(&buf);
		appendStringInfo(&buf, INT64_FORMAT, e->count);
		cols[7][i] = CStringGetTextDatum(buf.data);
		if (e->count < 0)
			any_retraction = true;
		i++;
	}
	n = i;
	if (n == 0)
	{
		relabel_results(rankings, relabel);
		return;
	}
	for (int c = 0; c < 8; c++)
	{
		if (c == 1 || c == 2)
		{
			args[c] = timestamptz_array(cols[c], n);
			types[c] = TIMESTAMPTZARRAYOID;
		}
		else
			args[c] = text_array(cols[c], c == 5 ? label_nulls : NULL, n);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(
							  "INSERT INTO kappa.ranking_windows (ranking, window_start, window_end) "
							  "SELECT DISTINCT r, ws, we "
							  "  FROM unnest($1, $2, $3) AS d(r, ws, we) ORDER BY 1, 2 "
							  "ON CONFLICT DO NOTHING",
							  3, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write kappa.ranking_windows");
	if (SPI_execute_with_args(
							  "INSERT INTO kappa.ranking_results AS res "
							  "       (ranking, window_start, window_end, group_values, item, item_label, total, sale_count) "
							  "SELECT r, ws, we, g::text[], i, l, t::numeric, c::bigint "
							  "  FROM unnest($1, $2, $3, $4, $5, $6, $7, $8) AS d(r, ws, we, g, i, l, t, c) "
							  " ORDER BY 1, 2, 4, 5 "
							  "ON CONFLICT (ranking, window_start, group_values, item) DO UPDATE "
							  "   SET total = res.total + EXCLUDED.total, "
							  "       sale_count = res.sale_count + EXCLUDED.sale_count, "
							  "       item_label = coalesce(EXCLUDED.item_label, res.item_label), "
							  "       updated_at = now()",
							  8, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write kappa.ranking_results");
	if (any_retraction &&
		SPI_execute_with_args(
							  "DELETE FROM kappa.ranking_results res "
							  " USING unnest($1, $2, $4, $5) AS d(r, ws, g, i) "
							  " WHERE res.ranking = d.r AND res.window_start = d.ws "
							  "   AND res.group_values = d.g::text[] AND res.item = d.i "
							  "   AND res.sale_count = 0",
							  8, types, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not clean kappa.ranking_results");
	SPI_finish();
	relabel_results(rankings, relabel);
}
