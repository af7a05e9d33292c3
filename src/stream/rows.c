/*-------------------------------------------------------------------------
 *
 * rows.c
 *	  The stream worker's memory of each row it counted (kappa.stream_rows):
 *	  the row as last applied, its CDC position, and the rankings it counts
 *	  in.
 *
 * This memory is what makes updates and deletes exact without REPLICA
 * IDENTITY FULL (the old contribution is known), what recognises replays
 * (a CDC change at or before the row's position changes nothing; a
 * re-delivered identical row from a file changes nothing), and what lets a
 * payment confirmation add a sale that arrived earlier.
 *
 * A batch first names the rows it will touch (rows_want), loads and locks
 * them with one query per topic (rows_load), works on the in-memory copies,
 * and writes back the changed ones with one statement (rows_flush).
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "stream/stream_internal.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"

typedef struct RowKey
{
	const char *topic;
	const char *key;
} RowKey;

typedef struct RowEntry
{
	RowKey		hkey;
	RowState	state;
	bool		loaded;
} RowEntry;

static HTAB *row_table = NULL;
static MemoryContext row_cxt = NULL;

static uint32
row_hash(const void *key, Size keysize)
{
	const RowKey *k = key;

	return hash_combine(string_hash(k->topic, 0), string_hash(k->key, 0));
}

static int
row_match(const void *a, const void *b, Size keysize)
{
	const RowKey *x = a;
	const RowKey *y = b;

	return strcmp(x->key, y->key) != 0 || strcmp(x->topic, y->topic) != 0;
}

void
rows_reset(MemoryContext cxt)
{
	HASHCTL		ctl;

	row_cxt = cxt;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(RowKey);
	ctl.entrysize = sizeof(RowEntry);
	ctl.hash = row_hash;
	ctl.match = row_match;
	ctl.hcxt = cxt;
	row_table = hash_create("pg_kappa batch rows", 4096, &ctl,
							HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

void
rows_want(const char *topic, const char *key)
{
	RowKey		k = {topic, key};
	RowEntry   *e;
	bool		found;

	e = hash_search(row_table, &k, HASH_ENTER, &found);
	if (!found)
	{
		memset(&e->state, 0, sizeof(RowState));
		e->hkey.topic = e->state.topic = MemoryContextStrdup(row_cxt, topic);
		e->hkey.key = e->state.key = MemoryContextStrdup(row_cxt, key);
		e->loaded = false;
	}
}

RowState *
rows_get(const char *topic, const char *key)
{
	RowKey		k = {topic, key};
	RowEntry   *e = hash_search(row_table, &k, HASH_FIND, NULL);

	if (e == NULL)
		elog(ERROR, "row \"%s\" of topic \"%s\" was not loaded", key, topic);
	return &e->state;
}

static List *
int_list_from_array(Datum d)
{
	ArrayType  *arr = DatumGetArrayTypeP(d);
	Datum	   *elems;
	int			n;
	List	   *result = NIL;

	deconstruct_array(arr, INT4OID, 4, true, TYPALIGN_INT, &elems, NULL, &n);
	for (int i = 0; i < n; i++)
		result = lappend_int(result, DatumGetInt32(elems[i]));
	return result;
}

/* Load (and lock) every wanted row, one query per topic, in key order. */
void
rows_load(void)
{
	HASH_SEQ_STATUS status;
	RowEntry   *e;
	List	   *topics = NIL;
	ListCell   *lc;

	hash_seq_init(&status, row_table);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		if (!e->loaded && !list_member(topics, makeString((char *) e->hkey.topic)))
			topics = lappend(topics, makeString((char *) e->hkey.topic));
	}
	if (topics == NIL)
		return;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	foreach(lc, topics)
	{
		const char *topic = strVal(lfirst(lc));
		ArrayBuildState *keys = initArrayResult(TEXTOID, CurrentMemoryContext, false);
		Oid			types[2] = {TEXTOID, TEXTARRAYOID};
		Datum		args[2];
		MemoryContext old;

		hash_seq_init(&status, row_table);
		while ((e = hash_seq_search(&status)) != NULL)
		{
			if (!e->loaded && strcmp(e->hkey.topic, topic) == 0)
				accumArrayResult(keys, CStringGetTextDatum(e->hkey.key), false, TEXTOID,
								 CurrentMemoryContext);
		}
		args[0] = CStringGetTextDatum(topic);
		args[1] = makeArrayResult(keys, CurrentMemoryContext);
		if (SPI_execute_with_args("SELECT key, lsn, seq, deleted, row_data, counted, excluded "
								  "  FROM kappa.stream_rows "
								  " WHERE topic = $1 AND key = ANY ($2) "
								  " ORDER BY key FOR UPDATE",
								  2, types, args, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read kappa.stream_rows");

		old = MemoryContextSwitchTo(row_cxt);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			char	   *key = SPI_getvalue(tuple, desc, 1);
			RowState   *s = rows_get(topic, key);
			Datum		d;

			s->in_db = true;
			d = SPI_getbinval(tuple, desc, 2, &isnull);
			s->has_position = !isnull;
			if (!isnull)
			{
				s->lsn = DatumGetLSN(d);
				s->seq = DatumGetInt64(SPI_getbinval(tuple, desc, 3, &isnull));
			}
			s->deleted = DatumGetBool(SPI_getbinval(tuple, desc, 4, &isnull));
			s->row_data = SPI_getvalue(tuple, desc, 5);
			s->counted = int_list_from_array(SPI_getbinval(tuple, desc, 6, &isnull));
			s->excluded = int_list_from_array(SPI_getbinval(tuple, desc, 7, &isnull));
		}
		MemoryContextSwitchTo(old);

		hash_seq_init(&status, row_table);
		while ((e = hash_seq_search(&status)) != NULL)
		{
			if (strcmp(e->hkey.topic, topic) == 0)
				e->loaded = true;
		}
	}
	SPI_finish();
}

static void
append_int_list(StringInfo out, List *l)
{
	ListCell   *lc;

	appendStringInfoChar(out, '{');
	foreach(lc, l)
	{
		if (lc != list_head(l))
			appendStringInfoChar(out, ',');
		appendStringInfo(out, "%d", lfirst_int(lc));
	}
	appendStringInfoChar(out, '}');
}

/* Write every changed row back, with one statement. */
void
rows_flush(void)
{
	HASH_SEQ_STATUS status;
	RowEntry   *e;
	int			n = 0,
				i = 0;
	Datum	   *cols[8];
	bool	   *nulls[8];
	Oid			types[8];
	Datum		args[8];
	StringInfoData buf;

	hash_seq_init(&status, row_table);
	while ((e = hash_seq_search(&status)) != NULL)
		if (e->state.dirty)
			n++;
	if (n == 0)
		return;

	for (int c = 0; c < 8; c++)
	{
		cols[c] = palloc(sizeof(Datum) * n);
		nulls[c] = palloc0(sizeof(bool) * n);
		types[c] = TEXTARRAYOID;
	}
	initStringInfo(&buf);
	hash_seq_init(&status, row_table);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		RowState   *s = &e->state;

		if (!s->dirty)
			continue;
		cols[0][i] = CStringGetTextDatum(s->topic);
		cols[1][i] = CStringGetTextDatum(s->key);
		if (s->has_position)
		{
			resetStringInfo(&buf);
			appendStringInfo(&buf, "%X/%X", LSN_FORMAT_ARGS(s->lsn));
			cols[2][i] = CStringGetTextDatum(buf.data);
			resetStringInfo(&buf);
			appendStringInfo(&buf, INT64_FORMAT, s->seq);
			cols[3][i] = CStringGetTextDatum(buf.data);
		}
		else
			nulls[2][i] = nulls[3][i] = true;
		cols[4][i] = CStringGetTextDatum(s->deleted ? "t" : "f");
		if (s->row_data)
			cols[5][i] = CStringGetTextDatum(s->row_data);
		else
			nulls[5][i] = true;
		resetStringInfo(&buf);
		append_int_list(&buf, s->counted);
		cols[6][i] = CStringGetTextDatum(buf.data);
		resetStringInfo(&buf);
		append_int_list(&buf, s->excluded);
		cols[7][i] = CStringGetTextDatum(buf.data);
		i++;
	}
	for (int c = 0; c < 8; c++)
	{
		int			dims[1] = {n};
		int			lbs[1] = {1};

		args[c] = PointerGetDatum(construct_md_array(cols[c], nulls[c], 1, dims, lbs,
													 TEXTOID, -1, false, TYPALIGN_INT));
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(
							  "INSERT INTO kappa.stream_rows AS s "
							  "       (topic, key, lsn, seq, deleted, row_data, counted, excluded, updated_at) "
							  "SELECT t, k, l::pg_lsn, q::bigint, d::boolean, r, c::integer[], x::integer[], now() "
							  "  FROM unnest($1, $2, $3, $4, $5, $6, $7, $8) AS u(t, k, l, q, d, r, c, x) "
							  " ORDER BY 1, 2 "
							  "ON CONFLICT (topic, key) DO UPDATE "
							  "   SET lsn = EXCLUDED.lsn, seq = EXCLUDED.seq, deleted = EXCLUDED.deleted, "
							  "       row_data = EXCLUDED.row_data, counted = EXCLUDED.counted, "
							  "       excluded = EXCLUDED.excluded, updated_at = EXCLUDED.updated_at",
							  8, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write kappa.stream_rows");
	SPI_finish();
}
