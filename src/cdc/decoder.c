/*-------------------------------------------------------------------------
 *
 * decoder.c
 *	  The "pg_kappa" logical decoding output plugin: one JSON change
 *	  envelope (Debezium-compatible, schemas off) per row change.
 *
 * Used three ways: by the CDC publisher in-process (src/cdc/cdc_worker.c,
 * which routes each message to Kafka), through the SQL functions
 * (pg_logical_slot_get_changes) and through the walsender (pg_recvlogical).
 *
 * Options:
 *	format				'json' (default) or 'text', a readable debug form
 *	include-transaction	emit BEGIN/END markers around each transaction
 *	tables				comma-separated schema.table patterns ('*' matches
 *						any schema or table); default: every table
 *	published-only		only tables in kappa.published_tables, routed to
 *						their topics (what the CDC publisher uses)
 *
 * Each message carries source.lsn (the transaction's commit LSN) and
 * source.seq (the message's position in the transaction): together a total
 * order in which a consumer can recognise replays.  Transactions without
 * any included change produce no output at all.
 *
 * Deciding whether a table is published reads kappa.published_tables under
 * the historic snapshot (it is a user_catalog_table), so a change is
 * published exactly when the table was published at its commit; publish and
 * unpublish send a relcache invalidation for the table, which resets the
 * cached decision at the right point in the stream.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xlog.h"
#include "access/timeline.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "cdc/decoder.h"
#include "cdc/envelope.h"
#include "commands/dbcommands.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/varlena.h"

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

typedef struct KappaTablePattern
{
	char	   *schema;			/* NULL: any */
	char	   *table;			/* NULL: any */
} KappaTablePattern;

/* What the decoder knows about one table, cached by relid. */
typedef struct KappaDecodedTable
{
	Oid			relid;			/* hash key */
	bool		valid;			/* false after a relcache invalidation */
	bool		included;
	bool		registry;		/* this is kappa.published_tables itself */
	char	   *topic;			/* NULL: kappa.sales_topic */
	KappaTableEncoder *encoder;
	MemoryContext cxt;			/* owns topic and encoder */
} KappaDecodedTable;

/*
 * The relcache callback cannot be unregistered, so it is registered once
 * per process and finds the live decoder's table cache through this.
 */
static HTAB *active_table_cache = NULL;
static bool relcache_callback_registered = false;

static void
decoder_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	KappaDecodedTable *entry;

	if (active_table_cache == NULL)
		return;
	if (OidIsValid(relid))
	{
		entry = hash_search(active_table_cache, &relid, HASH_FIND, NULL);
		if (entry)
			entry->valid = false;
		return;
	}
	hash_seq_init(&status, active_table_cache);
	while ((entry = hash_seq_search(&status)) != NULL)
		entry->valid = false;
}

/*
 * The table cache goes with its decoding context.  A decoding that ends in
 * an error (a cancelled pg_logical_slot_get_changes(), a publish_table()
 * cancelled while its slot waits for running transactions) never calls
 * decoder_shutdown: without this, the next invalidation in the process
 * would walk freed memory.
 */
static void
decoder_cache_gone(void *arg)
{
	if (active_table_cache == (HTAB *) arg)
		active_table_cache = NULL;
}

/* ---------------------------------------------------------------------
 * Options
 * ---------------------------------------------------------------------
 */
static bool
option_bool(DefElem *elem)
{
	bool		result;

	if (elem->arg == NULL)
		return true;			/* a bare option name means "on" */
	if (!parse_bool(strVal(elem->arg), &result))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not parse value \"%s\" for parameter \"%s\"",
						strVal(elem->arg), elem->defname),
				 errhint("Use a boolean: on or off.")));
	return result;
}

static char *
pattern_part(const char *s, int len)
{
	if (len == 1 && s[0] == '*')
		return NULL;
	if (len >= 2 && s[0] == '"' && s[len - 1] == '"')
		return pnstrdup(s + 1, len - 2);
	return pnstrdup(s, len);
}

static List *
parse_table_patterns(const char *value)
{
	List	   *result = NIL;
	char	   *copy = pstrdup(value);
	char	   *item;
	char	   *save;

	for (item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save))
	{
		KappaTablePattern *pat;
		char	   *dot;
		int			len;

		while (*item == ' ')
			item++;
		len = strlen(item);
		while (len > 0 && item[len - 1] == ' ')
			len--;
		item[len] = '\0';
		if (len == 0)
			continue;
		dot = strchr(item, '.');
		if (dot == NULL || dot == item || dot[1] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid table pattern \"%s\"", item),
					 errhint("Write schema.table; \"*\" matches any schema or any table.")));
		pat = palloc(sizeof(KappaTablePattern));
		pat->schema = pattern_part(item, dot - item);
		pat->table = pattern_part(dot + 1, strlen(dot + 1));
		result = lappend(result, pat);
	}
	if (result == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option \"tables\" names no table")));
	return result;
}

static void
decoder_startup(LogicalDecodingContext *ctx, OutputPluginOptions *opt,
				bool is_init)
{
	KappaDecodingState *data;
	ListCell   *lc;
	HASHCTL		hctl;

	data = palloc0(sizeof(KappaDecodingState));
	data->change_cxt = AllocSetContextCreate(ctx->context,
											 "pg_kappa change",
											 ALLOCSET_DEFAULT_SIZES);
	data->cache_cxt = AllocSetContextCreate(ctx->context,
											"pg_kappa table cache",
											ALLOCSET_DEFAULT_SIZES);
	initStringInfo(&data->key);
	data->system_id = GetSystemIdentifier();

	foreach(lc, ctx->output_plugin_options)
	{
		DefElem    *elem = lfirst(lc);

		if (strcmp(elem->defname, "format") == 0)
		{
			const char *v = elem->arg ? strVal(elem->arg) : "";

			if (strcmp(v, "json") == 0)
				data->text_format = false;
			else if (strcmp(v, "text") == 0)
				data->text_format = true;
			else
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid value \"%s\" for option \"format\"", v),
						 errhint("Use \"json\" or \"text\".")));
		}
		else if (strcmp(elem->defname, "include-transaction") == 0)
			data->include_transaction = option_bool(elem);
		else if (strcmp(elem->defname, "published-only") == 0)
			data->published_only = option_bool(elem);
		else if (strcmp(elem->defname, "tables") == 0)
		{
			if (elem->arg == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("option \"tables\" needs a value")));
			data->table_patterns = parse_table_patterns(strVal(elem->arg));
		}
		else if (strcmp(elem->defname, "utf8") == 0)
			data->to_utf8 = option_bool(elem);
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("option \"%s\" is not known to pg_kappa",
							elem->defname),
					 errhint("Known options: format, include-transaction, tables, published-only.")));
	}
	if (data->to_utf8 &&
		(GetDatabaseEncoding() == PG_UTF8 || GetDatabaseEncoding() == PG_SQL_ASCII))
		data->to_utf8 = false;

	memset(&hctl, 0, sizeof(hctl));
	hctl.keysize = sizeof(Oid);
	hctl.entrysize = sizeof(KappaDecodedTable);
	hctl.hcxt = data->cache_cxt;
	data->tables = hash_create("pg_kappa decoded tables", 64, &hctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	active_table_cache = data->tables;
	{
		MemoryContextCallback *cb = MemoryContextAlloc(data->cache_cxt,
													   sizeof(MemoryContextCallback));

		cb->func = decoder_cache_gone;
		cb->arg = data->tables;
		MemoryContextRegisterResetCallback(data->cache_cxt, cb);
	}
	if (!relcache_callback_registered)
	{
		CacheRegisterRelcacheCallback(decoder_relcache_callback, (Datum) 0);
		relcache_callback_registered = true;
	}

	opt->output_type = OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
	opt->receive_rewrites = false;
	ctx->output_plugin_private = data;
}

static void
decoder_shutdown(LogicalDecodingContext *ctx)
{
	KappaDecodingState *data = ctx->output_plugin_private;

	if (data && active_table_cache == data->tables)
		active_table_cache = NULL;
}

/* ---------------------------------------------------------------------
 * Which tables, and where to
 * ---------------------------------------------------------------------
 */
static bool
matches_patterns(List *patterns, const char *schema, const char *table)
{
	ListCell   *lc;

	foreach(lc, patterns)
	{
		KappaTablePattern *pat = lfirst(lc);

		if ((pat->schema == NULL || strcmp(pat->schema, schema) == 0) &&
			(pat->table == NULL || strcmp(pat->table, table) == 0))
			return true;
	}
	return false;
}

/*
 * Is relid in kappa.published_tables as of the change being decoded?  The
 * scan runs under the historic snapshot, which user_catalog_table allows.
 */
static bool
lookup_published(Oid relid, char **topic)
{
	Oid			nspid = get_namespace_oid(KAPPA_SCHEMA_NAME, true);
	Oid			tableid;
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	bool		found = false;

	*topic = NULL;
	if (!OidIsValid(nspid))
		return false;
	tableid = get_relname_relid("published_tables", nspid);
	if (!OidIsValid(tableid))
		return false;

	rel = table_open(tableid, AccessShareLock);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		value = heap_getattr(tuple, 2, RelationGetDescr(rel), &isnull);

		found = true;
		if (!isnull)
			*topic = TextDatumGetCString(value);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static KappaDecodedTable *
decoded_table(KappaDecodingState *data, Relation relation)
{
	Oid			relid = RelationGetRelid(relation);
	KappaDecodedTable *entry;
	bool		found;
	MemoryContext old;
	char	   *topic = NULL;
	bool		included;

	entry = hash_search(data->tables, &relid, HASH_ENTER, &found);
	if (found && entry->valid)
		return entry;
	if (found && entry->cxt)
		MemoryContextDelete(entry->cxt);
	entry->cxt = NULL;
	entry->encoder = NULL;
	entry->topic = NULL;
	entry->valid = false;

	if (data->published_only)
		included = lookup_published(relid, &topic);
	else if (data->table_patterns != NIL)
	{
		char	   *schema = get_namespace_name(RelationGetNamespace(relation));

		included = matches_patterns(data->table_patterns, schema,
									RelationGetRelationName(relation));
	}
	else
		included = true;

	entry->included = included;
	entry->registry =
		RelationGetNamespace(relation) == get_namespace_oid(KAPPA_SCHEMA_NAME, true) &&
		strcmp(RelationGetRelationName(relation), "published_tables") == 0;
	if (included)
	{
		entry->cxt = AllocSetContextCreate(data->cache_cxt, "pg_kappa table",
										   ALLOCSET_SMALL_SIZES);
		old = MemoryContextSwitchTo(entry->cxt);
		entry->encoder = envelope_table_encoder(relation);
		if (topic)
			entry->topic = pstrdup(topic);
		MemoryContextSwitchTo(old);
	}
	entry->valid = true;
	return entry;
}

/* ---------------------------------------------------------------------
 * Writing messages
 * ---------------------------------------------------------------------
 */

/* Convert ctx->out to UTF-8 when the database uses another encoding. */
static void
finish_message(LogicalDecodingContext *ctx, KappaDecodingState *data)
{
	if (data->to_utf8)
	{
		char	   *converted = pg_server_to_any(ctx->out->data, ctx->out->len, PG_UTF8);

		if (converted != ctx->out->data)
		{
			resetStringInfo(ctx->out);
			appendStringInfoString(ctx->out, converted);
		}
		if (data->has_key)
		{
			converted = pg_server_to_any(data->key.data, data->key.len, PG_UTF8);
			if (converted != data->key.data)
			{
				resetStringInfo(&data->key);
				appendStringInfoString(&data->key, converted);
			}
		}
	}
	OutputPluginWrite(ctx, true);
}

/*
 * The timeline a commit record at lsn was written on, from the server's
 * timeline history: changes replayed from WAL of before a promotion say the
 * old timeline, where they were first published.  (The reader's segment
 * timeline would not do: the segment holding a switch is read as the new
 * timeline's, old commits in it included.)  The history is read once per
 * timeline the server is on.  fallback: during recovery, which PostgreSQL 15
 * does not decode in.
 */
static TimeLineID
commit_timeline(KappaDecodingState *data, XLogRecPtr lsn, TimeLineID fallback)
{
	TimeLineID	current;

	if (RecoveryInProgress())
		return fallback;
	current = GetWALInsertionTimeLine();
	if (data->history == NIL || data->history_tli != current)
	{
		MemoryContext old = MemoryContextSwitchTo(data->cache_cxt);

		list_free_deep(data->history);
		data->history = readTimeLineHistory(current);
		data->history_tli = current;
		MemoryContextSwitchTo(old);
	}
	return tliOfPointInHistory(lsn, data->history);
}

static void
write_begin_if_needed(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	KappaDecodingState *data = ctx->output_plugin_private;

	if (data->txn_started)
		return;
	data->txn_started = true;
	if (data->db_json == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(data->cache_cxt);
		char	   *dbname = get_database_name(MyDatabaseId);
		StringInfoData buf;

		initStringInfo(&buf);
		envelope_append_json_string(&buf, dbname, strlen(dbname));
		data->db_json = buf.data;
		MemoryContextSwitchTo(old);
	}

	data->timeline = commit_timeline(data, txn->final_lsn, ctx->reader->seg.ws_tli);
	if (!data->include_transaction)
		return;

	OutputPluginPrepareWrite(ctx, true);
	data->emit_kind = KAPPA_EMIT_BEGIN;
	data->has_key = false;
	data->commit_lsn = txn->final_lsn;
	if (data->text_format)
		appendStringInfo(ctx->out, "BEGIN %u", txn->xid);
	else
		appendStringInfo(ctx->out,
						 "{\"status\":\"BEGIN\",\"id\":\"%u\",\"ts_ms\":" INT64_FORMAT "}",
						 txn->xid, envelope_unix_ms(txn->xact_time.commit_time));
	finish_message(ctx, data);
}

static void
append_source(StringInfo out, KappaDecodingState *data, KappaTableEncoder *te,
			  ReorderBufferTXN *txn)
{
	appendStringInfoString(out, ",\"source\":{\"connector\":\"postgres\",\"db\":");
	appendStringInfoString(out, data->db_json);
	appendStringInfoString(out, ",\"schema\":");
	appendStringInfoString(out, te->schema_json);
	appendStringInfoString(out, ",\"table\":");
	appendStringInfoString(out, te->table_json);
	/* as a string: JSON readers take numbers for doubles */
	appendStringInfo(out, ",\"system_id\":\"" UINT64_FORMAT "\"", data->system_id);
	if (data->timeline != 0)
		appendStringInfo(out, ",\"timeline\":%u", data->timeline);
	appendStringInfoString(out, ",\"lsn\":");
	envelope_append_lsn(out, txn->final_lsn);
	appendStringInfo(out, ",\"seq\":" INT64_FORMAT ",\"txid\":%u,\"ts_ms\":" INT64_FORMAT "}",
					 data->seq, txn->xid, envelope_unix_ms(txn->xact_time.commit_time));
	appendStringInfo(out, ",\"ts_ms\":" INT64_FORMAT "}", data->decode_ms);
}

static const char *
op_name(char op)
{
	switch (op)
	{
		case 'c':
			return "INSERT";
		case 'u':
			return "UPDATE";
		case 'd':
			return "DELETE";
		case 'r':
			return "SNAPSHOT";
		case 't':
			return "TRUNCATE";
	}
	return "?";
}

/*
 * One change message.  oldtuple/newtuple may be NULL; key_tuple gives the
 * message key.  after_json, for snapshot rows, is the already encoded row.
 */
static void
write_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			 KappaDecodedTable *entry, TupleDesc desc, char op,
			 HeapTuple oldtuple, HeapTuple newtuple,
			 const char *after_json, const char *key, const char *topic)
{
	KappaDecodingState *data = ctx->output_plugin_private;
	KappaTableEncoder *te = entry->encoder;
	StringInfo	out;
	bool		old_is_full = (te->replident == REPLICA_IDENTITY_FULL);

	write_begin_if_needed(ctx, txn);

	OutputPluginPrepareWrite(ctx, true);
	out = ctx->out;
	data->emit_kind = KAPPA_EMIT_CHANGE;
	data->topic = topic;
	resetStringInfo(&data->key);
	if (key)
	{
		appendStringInfoString(&data->key, key);
		data->has_key = true;
	}
	else if (op == 'd' && oldtuple)
		data->has_key = envelope_append_key(&data->key, te, desc, oldtuple);
	else if (newtuple)
		data->has_key = envelope_append_key(&data->key, te, desc, newtuple);
	else
		data->has_key = false;

	if (data->text_format)
	{
		appendStringInfo(out, "%s.%s %s seq " INT64_FORMAT,
						 te->schema, te->table, op_name(op), data->seq);
		if (data->has_key)
			appendStringInfo(out, " key %s", data->key.data);
		appendStringInfoChar(out, ':');
		if (oldtuple)
		{
			appendStringInfoString(out, old_is_full ? " old: " : " old-key: ");
			envelope_append_row_text(out, te, desc, oldtuple, !old_is_full, true);
		}
		if (newtuple)
		{
			appendStringInfoString(out, oldtuple ? " new: " : " ");
			envelope_append_row_text(out, te, desc, newtuple, false, true);
		}
		if (after_json)
		{
			appendStringInfoChar(out, ' ');
			appendStringInfoString(out, after_json);
		}
	}
	else
	{
		appendStringInfo(out, "{\"op\":\"%c\",\"before\":", op);
		if (oldtuple)
			envelope_append_row(out, te, desc, oldtuple, !old_is_full, true);
		else
			appendStringInfoString(out, "null");
		appendStringInfoString(out, ",\"after\":");
		if (newtuple)
			envelope_append_row(out, te, desc, newtuple, false, true);
		else if (after_json)
			appendStringInfoString(out, after_json);
		else
			appendStringInfoString(out, "null");
		append_source(out, data, te, txn);
	}
	finish_message(ctx, data);
	data->seq++;
}

/* ---------------------------------------------------------------------
 * Callbacks
 * ---------------------------------------------------------------------
 */
static void
decoder_begin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	KappaDecodingState *data = ctx->output_plugin_private;
	ListCell   *lc;

	data->txn_started = false;
	data->seq = 0;
	data->decode_ms = envelope_unix_ms(GetCurrentTimestamp());
	foreach(lc, data->publishing)
	{
		KappaPublishing *p = lfirst(lc);

		if (p->topic)
			pfree(p->topic);
	}
	list_free_deep(data->publishing);
	data->publishing = NIL;
	data->forged_warned = false;
}

/*
 * A change of kappa.published_tables in the transaction being decoded: the
 * table it names is being published (or published again) by
 * kappa.publish_table(), whose snapshot messages follow.
 */
static void
note_publishing(KappaDecodingState *data, Relation registry, ReorderBufferChange *change)
{
	HeapTuple	newtuple;
	bool		isnull;
	Datum		relid;
	Datum		topic;
	MemoryContext old;
	KappaPublishing *p;

	if (change->action != REORDER_BUFFER_CHANGE_INSERT &&
		change->action != REORDER_BUFFER_CHANGE_UPDATE)
		return;
	if (change->data.tp.newtuple == NULL)
		return;
	newtuple = &change->data.tp.newtuple->tuple;
	relid = heap_getattr(newtuple, 1, RelationGetDescr(registry), &isnull);
	if (isnull)
		return;
	topic = heap_getattr(newtuple, 2, RelationGetDescr(registry), &isnull);
	old = MemoryContextSwitchTo(data->cache_cxt);
	p = palloc(sizeof(KappaPublishing));
	p->relid = DatumGetObjectId(relid);
	p->topic = isnull ? NULL : TextDatumGetCString(topic);
	data->publishing = lappend(data->publishing, p);
	MemoryContextSwitchTo(old);
}

/*
 * Did this transaction write relid's kappa.published_tables row, with this
 * topic (NULL: kappa.sales_topic)?
 */
static bool
being_published(KappaDecodingState *data, Oid relid, const char *topic, size_t topiclen)
{
	ListCell   *lc;

	foreach(lc, data->publishing)
	{
		KappaPublishing *p = lfirst(lc);

		if (p->relid != relid)
			continue;
		if (p->topic == NULL ? topiclen == 0 :
			(strlen(p->topic) == topiclen && memcmp(p->topic, topic, topiclen) == 0))
			return true;
	}
	return false;
}

static void
decoder_commit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   XLogRecPtr commit_lsn)
{
	KappaDecodingState *data = ctx->output_plugin_private;

	if (!data->txn_started)
		return;					/* nothing of this transaction was included */
	data->txn_started = false;

	/*
	 * The in-process publisher always asks for markers: the END marker is
	 * where it learns that the transaction is complete.
	 */
	if (!data->include_transaction)
		return;
	OutputPluginPrepareWrite(ctx, true);
	data->emit_kind = KAPPA_EMIT_COMMIT;
	data->has_key = false;
	data->commit_lsn = txn->final_lsn;
	data->end_lsn = txn->end_lsn;
	if (data->text_format)
		appendStringInfo(ctx->out, "COMMIT %u (" INT64_FORMAT " changes)",
						 txn->xid, data->seq);
	else
	{
		appendStringInfo(ctx->out,
						 "{\"status\":\"END\",\"id\":\"%u\",\"event_count\":" INT64_FORMAT ",\"lsn\":",
						 txn->xid, data->seq);
		envelope_append_lsn(ctx->out, txn->final_lsn);
		appendStringInfo(ctx->out, ",\"ts_ms\":" INT64_FORMAT "}",
						 envelope_unix_ms(txn->xact_time.commit_time));
	}
	finish_message(ctx, data);
}

static void
decoder_change(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			   Relation relation, ReorderBufferChange *change)
{
	KappaDecodingState *data = ctx->output_plugin_private;
	KappaDecodedTable *entry = decoded_table(data, relation);
	TupleDesc	desc = RelationGetDescr(relation);
	HeapTuple	oldtuple;
	HeapTuple	newtuple;
	MemoryContext old;

	/*
	 * PostgreSQL replays a transaction's changes without an interrupt check
	 * between them: millions of changes of tables not published would hold
	 * off SIGTERM until the last.  (The publisher's own check, before it
	 * produces, is only reached by published tables.)
	 */
	CHECK_FOR_INTERRUPTS();
	if (entry->registry)
		note_publishing(data, relation, change);
	if (!entry->included)
		return;

	old = MemoryContextSwitchTo(data->change_cxt);
	oldtuple = change->data.tp.oldtuple ? &change->data.tp.oldtuple->tuple : NULL;
	newtuple = change->data.tp.newtuple ? &change->data.tp.newtuple->tuple : NULL;

	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			write_change(ctx, txn, entry, desc, 'c', NULL, newtuple, NULL, NULL, entry->topic);
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:

			/*
			 * A changed key moves the row to another message key: like
			 * Debezium, a delete of the old key and a create of the new one,
			 * so that every key's history stays in its own partition.
			 */
			if (oldtuple && newtuple)
				newtuple = envelope_inline_unchanged_toast(entry->encoder, desc, oldtuple, newtuple);
			if (oldtuple && newtuple &&
				envelope_keys_differ(entry->encoder, desc, oldtuple, newtuple))
			{
				write_change(ctx, txn, entry, desc, 'd', oldtuple, NULL, NULL, NULL, entry->topic);
				write_change(ctx, txn, entry, desc, 'c', NULL, newtuple, NULL, NULL, entry->topic);
			}
			else
				write_change(ctx, txn, entry, desc, 'u',
							 entry->encoder->replident == REPLICA_IDENTITY_FULL ? oldtuple : NULL,
							 newtuple, NULL, NULL, entry->topic);
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			write_change(ctx, txn, entry, desc, 'd', oldtuple, NULL, NULL, NULL, entry->topic);
			break;
		default:
			break;
	}

	MemoryContextSwitchTo(old);
	MemoryContextReset(data->change_cxt);
}

static void
decoder_truncate(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				 int nrelations, Relation relations[],
				 ReorderBufferChange *change)
{
	KappaDecodingState *data = ctx->output_plugin_private;
	MemoryContext old = MemoryContextSwitchTo(data->change_cxt);

	for (int i = 0; i < nrelations; i++)
	{
		KappaDecodedTable *entry = decoded_table(data, relations[i]);

		if (entry->included)
			write_change(ctx, txn, entry, RelationGetDescr(relations[i]), 't',
						 NULL, NULL, NULL, NULL, entry->topic);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(data->change_cxt);
}

/* Snapshot rows written by kappa.publish_table(). */
static void
decoder_message(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				XLogRecPtr message_lsn, bool transactional,
				const char *prefix, Size message_size, const char *message)
{
	KappaDecodingState *data = ctx->output_plugin_private;
	KappaSnapshotHeader hdr;
	Relation	relation;
	KappaDecodedTable *entry;
	MemoryContext old;
	char	   *key;
	char	   *topic = NULL;
	char	   *after;
	Size		fixed;

	if (!transactional || strcmp(prefix, KAPPA_SNAPSHOT_PREFIX) != 0)
		return;

	/*
	 * A snapshot row counts only in a transaction that wrote the table's
	 * kappa.published_tables row before it, as kappa.publish_table() does
	 * (that row may not be visible to the historic snapshot yet, so the
	 * change decoded earlier is what tells), in every mode: anyone may call
	 * pg_logical_emit_message(), and a message of our prefix from any other
	 * transaction would be a forged event for any table, or, malformed, an
	 * error that stops the slot for good (it meets the same record again).
	 */
	if (message_size >= sizeof(hdr))
		memcpy(&hdr, message, sizeof(hdr));
	if (message_size < sizeof(hdr) || hdr.version != KAPPA_SNAPSHOT_VERSION ||
		message_size < (Size) sizeof(hdr) + hdr.keylen + hdr.topiclen ||
		(Size) hdr.keylen + hdr.topiclen > message_size ||
		!being_published(data, hdr.relid, message + sizeof(hdr) + hdr.keylen, hdr.topiclen))
	{
		if (data->forged_warned)
			return;				/* once per transaction */
		data->forged_warned = true;
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("pg_kappa: ignored a snapshot message not written by kappa.publish_table()"),
				 errdetail("Transaction %u emitted a logical message with prefix \"%s\".",
						   txn->xid, KAPPA_SNAPSHOT_PREFIX)));
		return;
	}
	fixed = sizeof(hdr) + hdr.keylen + hdr.topiclen;

	relation = RelationIdGetRelation(hdr.relid);
	if (!RelationIsValid(relation))
		return;					/* dropped in the meantime */

	old = MemoryContextSwitchTo(data->change_cxt);
	entry = decoded_table(data, relation);

	if (entry->included || data->published_only)
	{
		if (entry->encoder == NULL)
		{
			MemoryContext cache_old;

			if (entry->cxt == NULL)
				entry->cxt = AllocSetContextCreate(data->cache_cxt, "pg_kappa table",
												   ALLOCSET_SMALL_SIZES);
			cache_old = MemoryContextSwitchTo(entry->cxt);
			entry->encoder = envelope_table_encoder(relation);
			MemoryContextSwitchTo(cache_old);
		}
		key = pnstrdup(message + sizeof(hdr), hdr.keylen);
		if (hdr.topiclen > 0)
			topic = pnstrdup(message + sizeof(hdr) + hdr.keylen, hdr.topiclen);
		after = pnstrdup(message + fixed, message_size - fixed);
		write_change(ctx, txn, entry, RelationGetDescr(relation), 'r',
					 NULL, NULL, after, key, topic ? topic : entry->topic);
	}
	RelationClose(relation);
	MemoryContextSwitchTo(old);
	MemoryContextReset(data->change_cxt);
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = decoder_startup;
	cb->begin_cb = decoder_begin;
	cb->change_cb = decoder_change;
	cb->truncate_cb = decoder_truncate;
	cb->commit_cb = decoder_commit;
	cb->message_cb = decoder_message;
	cb->shutdown_cb = decoder_shutdown;
}
