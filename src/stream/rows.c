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
 * them from the primary key (rows_load), works on the in-memory copies,
 * and writes back the changed ones with one statement (rows_flush).
 *
 * A row is forgotten (rows_forget) once every ranking on its topic is final
 * past the latest end of the row's windows by kappa.row_memory_retention:
 * an event for it could then only fall in a final window, late whether or
 * not the row is remembered.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/tableam.h"
#include "access/genam.h"
#include "access/relscan.h"
#include "access/stratnum.h"
#include "utils/fmgroids.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/pg_locale.h"
#include "access/itup.h"
#include "miscadmin.h"
#include "utils/rel.h"
#include "catalog/namespace.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/lsyscache.h"
#include "stream/stream_internal.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
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
	uint64		prefix;			/* the key's first 8 bytes, for sorting */
	int			keylen;
} RowEntry;

/*
 * kappa.stream_rows' columns, as 0-based positions in a slot: what
 * rows_insert_new writes and row_from_slot reads (rows_load checks the
 * table still has this shape).
 */
enum
{
	SR_TOPIC,
	SR_KEY,
	SR_LSN,
	SR_SEQ,
	SR_DELETED,
	SR_ROW_DATA,
	SR_COUNTED,
	SR_EXCLUDED,
	SR_UPDATED_AT,
	SR_WINDOWS_END,
	SR_SYSTEM_ID,
	SR_TIMELINE,
	SR_NATTS
};

static HTAB *row_table = NULL;
static MemoryContext row_cxt = NULL;

/*
 * The batch's rows in the order of the primary key (key, topic), sorted
 * once by rows_load: probes and insertions then walk the index pages in
 * order.  Topic names are kept once each (a batch has one or two).
 */
static RowEntry **wanted = NULL;
static int	nwanted = 0;
static int	wanted_cap = 0;
static bool wanted_sorted = false;
static List *row_topics = NIL;

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
	wanted_cap = 4096;
	wanted = MemoryContextAlloc(cxt, sizeof(RowEntry *) * wanted_cap);
	nwanted = 0;
	wanted_sorted = false;
	row_topics = NIL;
}

/* The batch's own copy of a topic name, the same pointer for every row. */
static const char *
row_topic(const char *topic)
{
	ListCell   *lc;
	MemoryContext old;
	char	   *copy;

	foreach(lc, row_topics)
	{
		if (strcmp(lfirst(lc), topic) == 0)
			return lfirst(lc);
	}
	old = MemoryContextSwitchTo(row_cxt);
	copy = pstrdup(topic);
	row_topics = lappend(row_topics, copy);
	MemoryContextSwitchTo(old);
	return copy;
}

/* big-endian first 8 bytes: compares as strcmp does, as far as it goes */
static uint64
key_prefix(const char *key)
{
	uint64		p = 0;

	for (int i = 0; i < 8 && key[i] != '\0'; i++)
		p |= (uint64) (unsigned char) key[i] << (56 - 8 * i);
	return p;
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
		Assert(!wanted_sorted);
		memset(&e->state, 0, sizeof(RowState));
		e->state.windows_end = DT_NOBEGIN;
		e->hkey.topic = e->state.topic = (char *) row_topic(topic);
		e->hkey.key = e->state.key = MemoryContextStrdup(row_cxt, key);
		e->prefix = key_prefix(key);
		e->keylen = strlen(key);
		if (nwanted == wanted_cap)
		{
			wanted_cap *= 2;
			wanted = repalloc(wanted, sizeof(RowEntry *) * wanted_cap);
		}
		wanted[nwanted++] = e;
	}
}

RowState *
rows_get(const char *topic, const char *key)
{
	RowKey		k = {topic, key};
	RowEntry   *e = hash_search(row_table, &k, HASH_FIND, NULL);

	if (e == NULL || !wanted_sorted)
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

/* (key, topic), the primary key's order under the C collation */
static int
row_entry_cmp(const void *a, const void *b)
{
	const RowEntry *x = *(RowEntry *const *) a;
	const RowEntry *y = *(RowEntry *const *) b;
	int			c;

	if (x->prefix != y->prefix)
		return x->prefix < y->prefix ? -1 : 1;
	c = strcmp(x->hkey.key, y->hkey.key);
	if (c == 0 && x->hkey.topic != y->hkey.topic)
		c = strcmp(x->hkey.topic, y->hkey.topic);
	return c;
}

/*
 * Turn a planner method off until AtEOXact_GUC(true, <the result>): our
 * queries on kappa.stream_rows know better than a planner without
 * statistics.
 */
static int
plan_without(const char *method)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option(method, "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

static Oid
stream_rows_relid(void)
{
	return get_relname_relid("stream_rows", get_namespace_oid(KAPPA_SCHEMA_NAME, false));
}

/*
 * Copy one kappa.stream_rows tuple into the row's batch state.
 */
static void
row_from_slot(RowState *s, TupleTableSlot *slot)
{
	Datum	   *v;
	bool	   *isnull;
	MemoryContext old = MemoryContextSwitchTo(row_cxt);

	slot_getallattrs(slot);
	v = slot->tts_values;
	isnull = slot->tts_isnull;
	s->in_db = true;
	s->pos.known = !isnull[SR_LSN];
	if (!isnull[SR_LSN])
	{
		s->pos.lsn = DatumGetLSN(v[SR_LSN]);
		s->pos.seq = isnull[SR_SEQ] ? 0 : DatumGetInt64(v[SR_SEQ]);
		/* stored as PostgreSQL shows it: a bigint (pg_control_system()) */
		s->pos.system_id = isnull[SR_SYSTEM_ID] ? 0 : (uint64) DatumGetInt64(v[SR_SYSTEM_ID]);
		s->pos.timeline = isnull[SR_TIMELINE] ? 0 : (uint32) DatumGetInt32(v[SR_TIMELINE]);
	}
	s->deleted = DatumGetBool(v[SR_DELETED]);
	s->row_data = isnull[SR_ROW_DATA] ? NULL : TextDatumGetCString(v[SR_ROW_DATA]);
	s->counted = int_list_from_array(v[SR_COUNTED]);
	s->excluded = int_list_from_array(v[SR_EXCLUDED]);
	s->windows_end = isnull[SR_WINDOWS_END] ? DT_NOBEGIN : DatumGetTimestampTz(v[SR_WINDOWS_END]);
	MemoryContextSwitchTo(old);
}

/* What rows_load works with: kappa.stream_rows, its primary key, one scan. */
typedef struct RowLoad
{
	Relation	rel;
	Relation	idx;
	IndexScanDesc scan;
	TupleTableSlot *found;
	TupleTableSlot *locked;
	Snapshot	snapshot;
	CommandId	cid;
} RowLoad;

/*
 * Lock the latest version of the tuple in ld->found and load it into the
 * row's state.  A tuple deleted meanwhile was forgotten (rows_forget), which
 * leaves the row as new, as if it had been forgotten before the batch began.
 */
static void
row_lock_found(RowLoad *ld, RowEntry *e)
{
	TM_FailureData tmfd;
	TM_Result	res;

	res = table_tuple_lock(ld->rel, &ld->found->tts_tid, ld->snapshot, ld->locked, ld->cid,
						   LockTupleExclusive, LockWaitBlock,
						   TUPLE_LOCK_FLAG_FIND_LAST_VERSION, &tmfd);
	if (res == TM_Ok)
		row_from_slot(&e->state, ld->locked);
	else if (res != TM_Deleted)
		elog(ERROR, "could not lock row \"%s\" of kappa.stream_rows (%d)",
			 e->hkey.key, (int) res);
}

/* One B-tree descent for each wanted row from the first'th on. */
static void
rows_load_by_probes(RowLoad *ld, int first)
{
	ScanKeyData skey[2];

	if (first >= nwanted)
		return;
	ld->scan = index_beginscan(ld->rel, ld->idx, ld->snapshot, 2, 0);
	for (int i = first; i < nwanted; i++)
	{
		RowEntry   *e = wanted[i];

		ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_TEXTEQ,
					CStringGetTextDatum(e->hkey.key));
		skey[0].sk_collation = ld->idx->rd_indcollation[0];
		ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_TEXTEQ,
					CStringGetTextDatum(e->hkey.topic));
		skey[1].sk_collation = ld->idx->rd_indcollation[1];
		index_rescan(ld->scan, skey, 2, NULL, 0);
		if (index_getnext_slot(ld->scan, ForwardScanDirection, ld->found))
			row_lock_found(ld, e);
		CHECK_FOR_INTERRUPTS();
	}
	index_endscan(ld->scan);
}

/* An index column (text) against a string, as the C collation orders them. */
static int
index_text_cmp(IndexScanDesc scan, int attno, const char *s, int slen)
{
	bool		isnull;
	Datum		d = index_getattr(scan->xs_itup, attno, scan->xs_itupdesc, &isnull);
	text	   *t = DatumGetTextPP(d);
	int			tlen = VARSIZE_ANY_EXHDR(t);
	int			c = memcmp(VARDATA_ANY(t), s, Min(tlen, slen));

	if (c == 0 && tlen != slen)
		c = tlen < slen ? -1 : 1;
	return c;
}

/*
 * A wanted row more than this many index entries past the scan's position
 * is looked up with a descent of its own.
 */
#define WALK_MAX_STEPS 16

/*
 * Descents the walk makes before it judges the keys: past these, it gives
 * way to probes once more than every other wanted row needed one.
 */
#define WALK_FREE_DESCENTS 16

/*
 * The wanted rows in key order, merged with one forward scan of the primary
 * key from the first of them, descending again only to skip a long stretch
 * of other keys.  Keys that grow (a sequence, a time-ordered id) put a
 * batch's new sales past the end of the index, or between few others: one
 * descent tells them all apart.  Only for an index whose order is the
 * bytes' (the C collation), the order the wanted rows are sorted in.
 *
 * A descent here reads the rest of its leaf page (a scan for "key >= k"
 * matches all of it), more than a probe for one key does; so when the keys
 * are in no order (UUIDs) and more than every other row needs a descent of
 * its own, the walk stops and returns where the probes take over.
 */
static int
rows_load_by_walk(RowLoad *ld)
{
	ScanKeyData skey;
	int			i = 0;
	bool		positioned = false;
	bool		have = false;
	int			steps = 0;
	int			descents = 0;

	ld->scan = index_beginscan(ld->rel, ld->idx, ld->snapshot, 1, 0);
	ld->scan->xs_want_itup = true;	/* keys compared without the heap */
	while (i < nwanted)
	{
		RowEntry   *e = wanted[i];
		int			c;

		if (!positioned)
		{
			if (++descents > WALK_FREE_DESCENTS + i / 2)
				break;			/* keys in no order: probes from here */
			ScanKeyInit(&skey, 1, BTGreaterEqualStrategyNumber, F_TEXT_GE,
						CStringGetTextDatum(e->hkey.key));
			skey.sk_collation = ld->idx->rd_indcollation[0];
			index_rescan(ld->scan, &skey, 1, NULL, 0);
			have = index_getnext_tid(ld->scan, ForwardScanDirection) != NULL;
			positioned = true;
			steps = 0;
			CHECK_FOR_INTERRUPTS();
		}
		if (!have)
		{
			i = nwanted;		/* past the last key: the rest are new */
			break;
		}

		c = index_text_cmp(ld->scan, 1, e->hkey.key, e->keylen);
		if (c == 0)
			c = index_text_cmp(ld->scan, 2, e->hkey.topic, strlen(e->hkey.topic));
		if (c < 0)
		{
			/* an entry before the wanted row: step, or descend again */
			if (++steps > WALK_MAX_STEPS)
				positioned = false;
			else
				have = index_getnext_tid(ld->scan, ForwardScanDirection) != NULL;
			continue;
		}
		if (c == 0)
		{
			/*
			 * The row's entry, or one of a dead version of it (then the
			 * next entry may hold the live one).
			 */
			if (index_fetch_heap(ld->scan, ld->found))
			{
				row_lock_found(ld, e);
				i++;
				steps = 0;
			}
			have = index_getnext_tid(ld->scan, ForwardScanDirection) != NULL;
			continue;
		}
		/* the scan is past the wanted row: it is new */
		i++;
		steps = 0;
	}
	index_endscan(ld->scan);
	return i;
}

/*
 * Load (and lock, as SELECT ... FOR UPDATE would) every wanted row, in key
 * order, from the primary key.  Most wanted rows are not there (every new
 * sale is one), so telling them apart must cost next to nothing: no query
 * to plan or execute per key (through SPI, one LATERAL lookup per key cost
 * about three times a descent), and, when the keys grow, not even a
 * descent per key.
 */
void
rows_load(void)
{
	Oid			pkid;
	RowLoad		ld;

	Assert(!wanted_sorted);
	qsort(wanted, nwanted, sizeof(RowEntry *), row_entry_cmp);
	wanted_sorted = true;
	if (nwanted == 0)
		return;

	ld.rel = table_open(stream_rows_relid(), RowShareLock);
	pkid = RelationGetPrimaryKeyIndex(ld.rel);
	if (!OidIsValid(pkid) || RelationGetDescr(ld.rel)->natts != SR_NATTS)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("kappa.stream_rows does not have the columns this library expects"),
				 errhint("Run ALTER EXTENSION pg_kappa UPDATE.")));
	ld.idx = index_open(pkid, AccessShareLock);
	if (ld.idx->rd_index->indnkeyatts != 2 ||
		ld.idx->rd_index->indkey.values[0] != SR_KEY + 1 ||
		ld.idx->rd_index->indkey.values[1] != SR_TOPIC + 1)
		elog(ERROR, "the primary key of kappa.stream_rows is not (key, topic)");
	/* the walk merges it with rows sorted as bytes (0.1.4 made sure) */
	if (!lc_collate_is_c(ld.idx->rd_indcollation[0]) ||
		!lc_collate_is_c(ld.idx->rd_indcollation[1]))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the primary key of kappa.stream_rows does not compare keys as bytes"),
				 errhint("Run ALTER EXTENSION pg_kappa UPDATE: version 0.1.4 gives kappa.stream_rows.key and topic the collation \"C\".")));

	/* what is committed now, as a query would see it (read committed) */
	PushActiveSnapshot(GetTransactionSnapshot());
	ld.snapshot = GetActiveSnapshot();
	ld.cid = GetCurrentCommandId(false);
	ld.found = table_slot_create(ld.rel, NULL);
	ld.locked = table_slot_create(ld.rel, NULL);

	rows_load_by_probes(&ld, rows_load_by_walk(&ld));

	ExecDropSingleTupleTableSlot(ld.found);
	ExecDropSingleTupleTableSlot(ld.locked);
	PopActiveSnapshot();
	index_close(ld.idx, AccessShareLock);
	table_close(ld.rel, NoLock);
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

static Datum
int_list_array(List *l)
{
	int			n = list_length(l);
	Datum	   *elems = palloc(sizeof(Datum) * (n + 1));
	int			i = 0;
	ListCell   *lc;

	foreach(lc, l)
		elems[i++] = Int32GetDatum(lfirst_int(lc));
	return PointerGetDatum(construct_array(elems, n, INT4OID, 4, true, TYPALIGN_INT));
}

/*
 * Rows seen for the first time (most of them: every new sale) go in with
 * the heap's multi-insert, as COPY does, and one index insertion each, in
 * key order so that consecutive insertions land on the same index pages.
 * Their keys were looked up under lock in rows_load, so they are new; a
 * concurrent insert of the same key fails the unique index and the batch is
 * applied again.
 */
static void
rows_insert_new(void)
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleDesc	desc;
	RowState  **news;
	int			nnew = 0;
	TupleTableSlot **slots;
	int			cap = 1000;
	CommandId	cid = GetCurrentCommandId(true);
	TimestampTz now = GetCurrentTimestamp();

	/* in key order, as rows_load sorted them */
	news = palloc(sizeof(RowState *) * Max(nwanted, 1));
	for (int i = 0; i < nwanted; i++)
	{
		if (wanted[i]->state.dirty && !wanted[i]->state.in_db)
			news[nnew++] = &wanted[i]->state;
	}
	if (nnew == 0)
		return;

	rel = table_open(stream_rows_relid(), RowExclusiveLock);
	desc = RelationGetDescr(rel);
	/* every index of the table, as COPY maintains them */
	estate = CreateExecutorState();
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	slots = palloc(sizeof(TupleTableSlot *) * cap);
	for (int i = 0; i < cap; i++)
		slots[i] = table_slot_create(rel, NULL);

	for (int start = 0; start < nnew; start += cap)
	{
		int			n = Min(cap, nnew - start);

		for (int i = 0; i < n; i++)
		{
			RowState   *s = news[start + i];
			TupleTableSlot *slot = slots[i];

			ExecClearTuple(slot);
			memset(slot->tts_isnull, 0, sizeof(bool) * desc->natts);
			slot->tts_values[SR_TOPIC] = CStringGetTextDatum(s->topic);
			slot->tts_values[SR_KEY] = CStringGetTextDatum(s->key);
			slot->tts_values[SR_LSN] = LSNGetDatum(s->pos.lsn);
			slot->tts_values[SR_SEQ] = Int64GetDatum(s->pos.seq);
			slot->tts_isnull[SR_LSN] = slot->tts_isnull[SR_SEQ] = !s->pos.known;
			slot->tts_values[SR_SYSTEM_ID] = Int64GetDatum((int64) s->pos.system_id);
			slot->tts_isnull[SR_SYSTEM_ID] = !s->pos.known || s->pos.system_id == 0;
			slot->tts_values[SR_TIMELINE] = Int32GetDatum((int32) s->pos.timeline);
			slot->tts_isnull[SR_TIMELINE] = !s->pos.known || s->pos.timeline == 0;
			slot->tts_values[SR_DELETED] = BoolGetDatum(s->deleted);
			if (s->row_data)
				slot->tts_values[SR_ROW_DATA] = CStringGetTextDatum(s->row_data);
			else
				slot->tts_isnull[SR_ROW_DATA] = true;
			slot->tts_values[SR_COUNTED] = int_list_array(s->counted);
			slot->tts_values[SR_EXCLUDED] = int_list_array(s->excluded);
			slot->tts_values[SR_UPDATED_AT] = TimestampTzGetDatum(now);
			slot->tts_values[SR_WINDOWS_END] = TimestampTzGetDatum(s->windows_end);
			slot->tts_isnull[SR_WINDOWS_END] = (s->windows_end == DT_NOBEGIN);
			ExecStoreVirtualTuple(slot);
			s->dirty = false;
		}
		table_multi_insert(rel, slots, n, cid, 0, NULL);
		for (int i = 0; i < n; i++)
		{
			List	   *recheck;

			/* unique: a concurrent insert of the key fails the batch */
			recheck = ExecInsertIndexTuples(rri, slots[i], estate, false, false, NULL, NIL);
			list_free(recheck);
			ResetPerTupleExprContext(estate);
		}
		CHECK_FOR_INTERRUPTS();
	}
	for (int i = 0; i < cap; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	table_close(rel, NoLock);
	CommandCounterIncrement();
}

/* Write every changed row back: new ones in bulk, known ones with one statement. */
void
rows_flush(void)
{
	int			n = 0,
				i = 0;
	Datum	   *cols[11];
	bool	   *nulls[11];
	Oid			types[11];
	Datum		args[11];
	StringInfoData buf;

	rows_insert_new();

	for (int w = 0; w < nwanted; w++)
		if (wanted[w]->state.dirty)
			n++;
	if (n == 0)
		return;
	/* (only rows already in kappa.stream_rows are left dirty) */

	for (int c = 0; c < 11; c++)
	{
		cols[c] = palloc(sizeof(Datum) * n);
		nulls[c] = palloc0(sizeof(bool) * n);
		types[c] = TEXTARRAYOID;
	}
	initStringInfo(&buf);
	for (int w = 0; w < nwanted; w++)
	{
		RowState   *s = &wanted[w]->state;

		if (!s->dirty)
			continue;
		cols[0][i] = CStringGetTextDatum(s->topic);
		cols[1][i] = CStringGetTextDatum(s->key);
		if (s->pos.known)
		{
			resetStringInfo(&buf);
			appendStringInfo(&buf, "%X/%X", LSN_FORMAT_ARGS(s->pos.lsn));
			cols[2][i] = CStringGetTextDatum(buf.data);
			resetStringInfo(&buf);
			appendStringInfo(&buf, INT64_FORMAT, s->pos.seq);
			cols[3][i] = CStringGetTextDatum(buf.data);
		}
		else
			nulls[2][i] = nulls[3][i] = true;
		if (s->pos.known && s->pos.system_id != 0)
		{
			resetStringInfo(&buf);
			appendStringInfo(&buf, INT64_FORMAT, (int64) s->pos.system_id);
			cols[9][i] = CStringGetTextDatum(buf.data);
		}
		else
			nulls[9][i] = true;
		if (s->pos.known && s->pos.timeline != 0)
		{
			resetStringInfo(&buf);
			appendStringInfo(&buf, "%u", s->pos.timeline);
			cols[10][i] = CStringGetTextDatum(buf.data);
		}
		else
			nulls[10][i] = true;
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
		cols[8][i] = TimestampTzGetDatum(s->windows_end);
		nulls[8][i] = (s->windows_end == DT_NOBEGIN);
		i++;
	}
	for (int c = 0; c < 11; c++)
	{
		int			dims[1] = {n};
		int			lbs[1] = {1};

		if (c == 8)
			continue;			/* windows_end, below */

		args[c] = PointerGetDatum(construct_md_array(cols[c], nulls[c], 1, dims, lbs,
													 TEXTOID, -1, false, TYPALIGN_INT));
	}
	{
		int			dims[1] = {n};
		int			lbs[1] = {1};

		types[8] = TIMESTAMPTZARRAYOID;
		args[8] = PointerGetDatum(construct_md_array(cols[8], nulls[8], 1, dims, lbs,
													 TIMESTAMPTZOID, sizeof(TimestampTz),
													 FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args(
							  "INSERT INTO kappa.stream_rows AS s "
							  "       (topic, key, lsn, seq, deleted, row_data, counted, excluded, updated_at, windows_end, "
							  "        system_id, timeline) "
							  "SELECT t, k, l::pg_lsn, q::bigint, d::boolean, r, c::integer[], x::integer[], now(), "
							  "       w, o::bigint, tl::integer "
							  "  FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
							  "       AS u(t, k, l, q, d, r, c, x, w, o, tl) "
							  " ORDER BY k COLLATE \"C\", t COLLATE \"C\" "	/* the index's order */
							  "ON CONFLICT (topic, key) DO UPDATE "
							  "   SET lsn = EXCLUDED.lsn, seq = EXCLUDED.seq, system_id = EXCLUDED.system_id, "
							  "       timeline = EXCLUDED.timeline, deleted = EXCLUDED.deleted, "
							  "       row_data = EXCLUDED.row_data, counted = EXCLUDED.counted, "
							  "       excluded = EXCLUDED.excluded, updated_at = EXCLUDED.updated_at, "
							  "       windows_end = EXCLUDED.windows_end",
							  11, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write kappa.stream_rows");
	SPI_finish();
}

/*
 * Forget at most limit rows of topic whose windows all ended at or before
 * cutoff; returns how many.  Rows another worker holds for its batch are
 * skipped (SKIP LOCKED), so forgetting never waits for, nor deadlocks
 * with, a batch.  The caller runs this in its own transaction.
 */
int64
rows_forget(const char *topic, TimestampTz cutoff, int limit)
{
	Oid			types[3] = {TEXTOID, TIMESTAMPTZOID, INT4OID};
	Datum		args[3];
	int64		n;
	int			save_nestlevel;

	args[0] = CStringGetTextDatum(topic);
	args[1] = TimestampTzGetDatum(cutoff);
	args[2] = Int32GetDatum(limit);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/*
	 * Through the BRIN index on windows_end, never by reading the table;
	 * block ranges filled since the last pass are summarised first (else
	 * the index returns them all).
	 */
	if (SPI_execute("SELECT pg_catalog.brin_summarize_new_values('kappa.stream_rows_windows_end'::pg_catalog.regclass)",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not summarize kappa.stream_rows_windows_end");
	save_nestlevel = plan_without("enable_seqscan");
	/*
	 * "(topic = $1) IS TRUE" is not a condition the primary key can serve:
	 * without statistics the planner would otherwise read the whole topic
	 * through it.
	 */
	if (SPI_execute_with_args("DELETE FROM kappa.stream_rows "
							  " WHERE ctid = ANY (ARRAY(SELECT ctid FROM kappa.stream_rows "
							  "                          WHERE windows_end <= $2 AND (topic = $1) IS TRUE "
							  "                          LIMIT $3 FOR UPDATE SKIP LOCKED))",
							  3, types, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not forget rows of kappa.stream_rows");
	n = (int64) SPI_processed;
	AtEOXact_GUC(true, save_nestlevel);
	SPI_finish();
	return n;
}
