/*-------------------------------------------------------------------------
 *
 * publish.c
 *	  kappa.publish_table() and kappa.unpublish_table(): which tables the
 *	  CDC publisher sends to Kafka, and the initial snapshot of a table's
 *	  existing rows.
 *
 * The snapshot is consistent with the stream without any de-duplication:
 * publish_table() takes a SHARE lock on the table, which waits for every
 * transaction that wrote to it and holds off new writers until the
 * publishing transaction commits.  Rows committed before that point are
 * read with a fresh snapshot and written into WAL as transactional logical
 * messages of the publishing transaction; changes committed after it are
 * decoded normally because the published_tables row (a user_catalog_table)
 * is visible to them.  So every row arrives once: as an "r" event in the
 * publishing transaction, then as its later changes.  The snapshot rows
 * travel through the same decode-produce-acknowledge path as any change,
 * so a crash mid-snapshot replays them like any other transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/catalog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "cdc/cdc.h"
#include "cdc/decoder.h"
#include "cdc/envelope.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "replication/logical.h"
#include "replication/message.h"
#include "replication/slot.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

PG_FUNCTION_INFO_V1(kappa_publish_table);
PG_FUNCTION_INFO_V1(kappa_unpublish_table);

void
cdc_lock_slot_lifecycle(void)
{
	LOCKTAG		tag;

	KAPPA_LOCK_TAG(tag, KAPPA_LOCK_SLOT);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

bool
cdc_tables_published(void)
{
	Oid			nspid = get_namespace_oid(KAPPA_SCHEMA_NAME, true);
	bool		published;

	if (!OidIsValid(nspid) ||
		!OidIsValid(get_relname_relid("published_tables", nspid)))
		return false;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT 1 FROM kappa.published_tables LIMIT 1", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read kappa.published_tables");
	published = SPI_processed > 0;
	SPI_finish();
	return published;
}

/*
 * Is relid in kappa.published_tables?  For the drop of any table, from the
 * object access hook: a plain scan of that small table, whoever drops
 * (no privilege on it is needed to drop one's own table).
 */
bool
cdc_table_is_published(Oid relid)
{
	Oid			nspid = get_namespace_oid(KAPPA_SCHEMA_NAME, true);
	Oid			tableid;
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	bool		found;

	if (!OidIsValid(nspid))
		return false;
	tableid = get_relname_relid("published_tables", nspid);
	if (!OidIsValid(tableid) || tableid == relid)
		return false;
	rel = try_table_open(tableid, AccessShareLock);
	if (rel == NULL)
		return false;			/* dropped meanwhile (DROP EXTENSION) */
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 1, &key);
	found = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * Run SPI statements on kappa.published_tables as the owner of that table
 * (the extension's owner): the caller's own rights were checked already.
 * The statements resolve names with pg_catalog only, and in a
 * security-restricted operation: the caller's search_path could otherwise
 * put a function or operator of theirs in front of pg_catalog's, to be run
 * with the owner's rights.
 */
typedef struct CatalogOwnerState
{
	Oid			save_userid;
	int			save_sec;
	int			save_nestlevel;
} CatalogOwnerState;

static void
become_catalog_owner(CatalogOwnerState *state)
{
	Oid			nspid = get_namespace_oid(KAPPA_SCHEMA_NAME, false);
	Oid			relid = get_relname_relid("published_tables", nspid);
	HeapTuple	tuple;
	Oid			owner;

	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);

	GetUserIdAndSecContext(&state->save_userid, &state->save_sec);
	SetUserIdAndSecContext(owner, state->save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	state->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

static void
restore_caller(CatalogOwnerState *state)
{
	AtEOXact_GUC(true, state->save_nestlevel);
	SetUserIdAndSecContext(state->save_userid, state->save_sec);
}

/*
 * Write relid's kappa.published_tables row again, unchanged: the decoder
 * takes snapshot rows only from a transaction that wrote their table's row.
 * Runs in the caller's SPI connection, as the catalog's owner.
 */
static void
touch_published_row(Oid relid)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1];

	args[0] = ObjectIdGetDatum(relid);
	if (SPI_execute_with_args("UPDATE kappa.published_tables SET topic = topic WHERE relid = $1",
							  1, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update kappa.published_tables");
}

static void
check_publish_privileges(Oid relid, const char *verb)
{
	/* (an oid given as a number, or of a table dropped since) */
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table with OID %u does not exist", relid)));
	if (!superuser() && !has_rolreplication(GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s table \"%s\"", verb,
						get_rel_name(relid)),
				 errdetail("Publishing reads the table's changes through a replication slot, which needs the REPLICATION attribute.")));
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER,
					   get_relkind_objtype(get_rel_relkind(relid)),
					   get_rel_name(relid));
}

/*
 * A topic whose messages the stream workers take for payment confirmations
 * or for another processor's ranking results: a role that may publish a
 * table of its own (REPLICATION, and EXECUTE granted) must not be able to
 * confirm payments or write results by publishing into it.  Only a
 * superuser may.  Called with SPI connected, as the catalog owner.
 */
static const char *
reserved_topic_role(const char *topic)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];

	if (strcmp(topic, kappa_payments_topic) == 0)
		return "payment confirmations (kappa.payments_topic)";
	if (strcmp(topic, kappa_top_sales_topic) == 0 ||
		strcmp(topic, kappa_top_salesman_topic) == 0)
		return "ranking results (kappa.top_sales_topic, kappa.top_salesman_topic)";
	args[0] = CStringGetTextDatum(topic);
	if (SPI_execute_with_args("SELECT 1 FROM kappa.rankings "
							  " WHERE results_topic = $1 OR (input = 'results' AND source_topic = $1)",
							  1, argtypes, args, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read kappa.rankings");
	if (SPI_processed > 0)
		return "ranking results (kappa.rankings)";
	return NULL;
}

static void
check_topic_not_reserved(const char *topic)
{
	const char *what = reserved_topic_role(topic);

	if (what)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to publish into topic \"%s\"", topic),
				 errdetail("The stream workers read the topic's messages as %s.", what),
				 errhint("Only a superuser may publish a table into it.")));
}

/* Can rel be published?  Errors say why not. */
static void
check_publishable(Relation rel)
{
	const char *name = RelationGetRelationName(rel);
	char	   *qualified = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)), name);

	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot publish partitioned table \"%s\"", name),
				 errhint("Publish its partitions; their changes are decoded per partition.")));
	if (rel->rd_rel->relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", name)));
	if (rel->rd_rel->relpersistence != RELPERSISTENCE_PERMANENT)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot publish temporary or unlogged table \"%s\"", name),
				 errdetail("Changes to it are not written to WAL, so they cannot be decoded.")));
	if (IsCatalogRelation(rel) ||
		RelationGetNamespace(rel) == get_namespace_oid(KAPPA_SCHEMA_NAME, true))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot publish system or pg_kappa table \"%s\"", name)));
	if (!OidIsValid(RelationGetPrimaryKeyIndex(rel)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key", name),
				 errdetail("Kafka messages are keyed by the primary key, so that the changes of a row stay in one partition, in order."),
				 errhint("Add one with ALTER TABLE %s ADD PRIMARY KEY (...).", qualified)));
	switch (rel->rd_rel->relreplident)
	{
		case REPLICA_IDENTITY_NOTHING:
		case REPLICA_IDENTITY_INDEX:
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("table \"%s\" has a replica identity other than its primary key", name),
					 errdetail("Deletes must carry the primary key, which is the message key."),
					 errhint("Run ALTER TABLE %s REPLICA IDENTITY DEFAULT (or FULL).", qualified)));
			break;
		default:
			break;
	}
}

static void
notice_partial_old_rows(Relation rel)
{
	if (rel->rd_rel->relreplident == REPLICA_IDENTITY_DEFAULT)
		ereport(NOTICE,
				(errmsg("updates and deletes of table \"%s\" are published without the full old row",
						RelationGetRelationName(rel)),
				 errdetail("With REPLICA IDENTITY DEFAULT, WAL holds only the primary key of an old row."),
				 errhint("For full \"before\" images, run ALTER TABLE %s REPLICA IDENTITY FULL.",
						 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
													RelationGetRelationName(rel)))));
}

/*
 * PostgreSQL 15 invalidates a slot whose WAL it removed (past
 * max_slot_wal_keep_size): the slot stays, without a restart_lsn, and
 * decoding it fails on the first WAL segment.  Changes in the removed WAL
 * were never decoded: as with a missing slot, publish_table() makes it anew
 * and sends the published tables' rows again.
 */
bool
cdc_slot_invalidated(ReplicationSlot *slot)
{
	XLogRecPtr	restart_lsn;
	XLogRecPtr	invalidated_at;

	SpinLockAcquire(&slot->mutex);
	restart_lsn = slot->data.restart_lsn;
	invalidated_at = slot->data.invalidated_at;
	SpinLockRelease(&slot->mutex);
	return !XLogRecPtrIsInvalid(invalidated_at) || XLogRecPtrIsInvalid(restart_lsn);
}

/* NULL when pg_kappa may serve as output plugin, else the current list. */
const char *
cdc_output_plugin_blocked(void)
{
	const char *allowed = GetConfigOption("output_plugin_libraries", true, false);
	List	   *names;
	ListCell   *lc;

	if (allowed == NULL)
		return NULL;
	if (!SplitIdentifierString(pstrdup(allowed), ',', &names))
		return allowed;
	foreach(lc, names)
	{
		if (strcmp(lfirst(lc), KAPPA_EXTENSION_NAME) == 0)
			return NULL;
	}
	return allowed;
}

static void
check_cdc_prerequisites(void)
{
	const char *blocked;
	char	   *dbname = get_database_name(MyDatabaseId);

	if (wal_level < WAL_LEVEL_LOGICAL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("publishing tables requires wal_level = logical"),
				 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
	blocked = cdc_output_plugin_blocked();
	if (blocked)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_kappa is not allowed as a logical decoding output plugin"),
				 errdetail("output_plugin_libraries is \"%s\".", blocked),
				 errhint("Add pg_kappa to output_plugin_libraries in postgresql.conf and reload the configuration.")));
	if (strcmp(dbname, kappa_database) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the pg_kappa workers serve database \"%s\", not \"%s\"",
						kappa_database, dbname),
				 errhint("Publish tables in database \"%s\", or set kappa.database and restart the server.",
						 kappa_database)));
}

/*
 * Make sure the publisher's slot exists, creating it if needed.  Must run
 * before this transaction writes anything (and before it locks the table:
 * creating a slot waits for running transactions).
 */
static void
ensure_cdc_slot(void)
{
	ReplicationSlot *slot = SearchNamedReplicationSlot(kappa_cdc_slot_name, true);
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];

	if (slot != NULL)
	{
		if (!SlotIsLogical(slot) || slot->data.database != MyDatabaseId ||
			strcmp(NameStr(slot->data.plugin), KAPPA_EXTENSION_NAME) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("replication slot \"%s\" exists but is not a pg_kappa slot of this database",
							kappa_cdc_slot_name),
					 errhint("Drop the slot, or set kappa.cdc_slot_name to another name and restart the server.")));
		if (!cdc_slot_invalidated(slot))
			return;
	}

	if (TransactionIdIsValid(GetTopTransactionIdIfAny()))
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("the first kappa.publish_table() must run before its transaction writes anything"),
				 errdetail("It creates replication slot \"%s\", which PostgreSQL does not allow after writes in the same transaction.",
						   kappa_cdc_slot_name),
				 errhint("Call kappa.publish_table() in a transaction of its own.")));

	args[0] = CStringGetTextDatum(kappa_cdc_slot_name);
	if (slot != NULL)
	{
		/* invalidated: it goes, and is made anew (the caller sends the rows) */
		if (SPI_execute_with_args("SELECT pg_catalog.pg_drop_replication_slot($1)",
								  1, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not drop replication slot \"%s\"", kappa_cdc_slot_name);
		ereport(NOTICE,
				(errmsg("dropped replication slot \"%s\", which PostgreSQL had invalidated",
						kappa_cdc_slot_name)));
	}
	if (SPI_execute_with_args("SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pg_kappa')",
							  1, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not create replication slot \"%s\"", kappa_cdc_slot_name);
	ereport(NOTICE,
			(errmsg("created replication slot \"%s\" for the pg_kappa publisher",
					kappa_cdc_slot_name)));
}

/*
 * Write every row of rel, as of now, into WAL as snapshot messages of this
 * transaction.  Returns the number of rows.
 */
static int64
snapshot_rows(Relation rel, const char *topic)
{
	MemoryContext row_cxt = AllocSetContextCreate(CurrentMemoryContext,
												  "pg_kappa snapshot row",
												  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old;
	KappaTableEncoder *te = envelope_table_encoder(rel);
	TupleDesc	desc = RelationGetDescr(rel);
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	TableScanDesc scan = table_beginscan(rel, snapshot, 0, NULL);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	int			topiclen = topic ? strlen(topic) : 0;
	StringInfoData msg;
	int64		rows = 0;

	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		KappaSnapshotHeader hdr;
		HeapTuple	tuple;
		bool		should_free;
		int			keystart;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(row_cxt);
		tuple = ExecFetchSlotHeapTuple(slot, false, &should_free);

		initStringInfo(&msg);
		appendBinaryStringInfo(&msg, (char *) &hdr, sizeof(hdr));	/* placeholder */
		keystart = msg.len;
		if (!envelope_append_key(&msg, te, desc, tuple))
			elog(ERROR, "row of table \"%s\" has no primary key value",
				 RelationGetRelationName(rel));
		hdr.version = KAPPA_SNAPSHOT_VERSION;
		hdr.relid = RelationGetRelid(rel);
		hdr.keylen = msg.len - keystart;
		hdr.topiclen = topiclen;
		if (topiclen > 0)
			appendBinaryStringInfo(&msg, topic, topiclen);
		envelope_append_row(&msg, te, desc, tuple, false, false);
		memcpy(msg.data, &hdr, sizeof(hdr));

		LogLogicalMessage(KAPPA_SNAPSHOT_PREFIX, msg.data, msg.len, true);
		if (should_free)
			heap_freetuple(tuple);
		MemoryContextSwitchTo(old);
		MemoryContextReset(row_cxt);
		rows++;
	}

	ExecDropSingleTupleTableSlot(slot);
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	MemoryContextDelete(row_cxt);
	return rows;
}

/*
 * The table's row of kappa.published_tables as committed now, whatever the
 * transaction's snapshot: its topic (NULL: kappa.sales_topic's), *found
 * false if there is none.  Inside SPI.
 */
static char *
published_topic_now(Oid relid, bool *found)
{
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};
	SPIPlanPtr	plan = SPI_prepare("SELECT topic FROM kappa.published_tables WHERE relid = $1",
								   1, argtypes);
	char	   *topic = NULL;

	if (plan == NULL ||
		SPI_execute_snapshot(plan, args, NULL, GetLatestSnapshot(), InvalidSnapshot,
							 true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read kappa.published_tables");
	*found = SPI_processed > 0;
	if (*found)
		topic = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	SPI_freeplan(plan);
	return topic;
}

/*
 * A publish or unpublish of the table committed after this REPEATABLE READ
 * or SERIALIZABLE transaction took its snapshot: fail as PostgreSQL does
 * on such a conflict, with an error to retry on.
 */
static void
report_concurrent_publish(const char *relname, bool published)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access due to a concurrent kappa.publish_table() or kappa.unpublish_table()"),
			 errdetail("Table \"%s\" was %s by a transaction that committed after this one took its snapshot.",
					   relname, published ? "published" : "unpublished"),
			 errhint("Retry the transaction.")));
}

/*
 * kappa.publish_table(tbl regclass, topic text DEFAULT NULL) RETURNS bigint
 *
 * Starts publishing tbl's changes to topic (NULL: kappa.sales_topic, read
 * when each change is published).  Returns the number of existing rows sent
 * as snapshot ("r") events, or NULL if the table was already published.
 */
Datum
kappa_publish_table(PG_FUNCTION_ARGS)
{
	Oid			relid;
	char	   *topic = NULL;
	Relation	rel;
	ReplicationSlot *slot;
	CatalogOwnerState owner_state;
	bool		republish = false;
	MemoryContext caller_cxt = CurrentMemoryContext;
	List	   *others = NIL;
	List	   *other_topics = NIL;
	Oid			argtypes[3] = {OIDOID, TEXTOID, NAMEOID};
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	int64		rows;
	int			nestlevel;
	bool		caller_is_superuser;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table must not be null")));
	relid = PG_GETARG_OID(0);
	if (!PG_ARGISNULL(1))
	{
		const char *why;

		topic = text_to_cstring(PG_GETARG_TEXT_PP(1));
		if (!kappa_valid_topic_name(topic, &why))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid Kafka topic name \"%s\"", topic),
					 errdetail("%s", why)));
	}

	check_publish_privileges(relid, "publish");
	caller_is_superuser = superuser();
	rel = table_open(relid, AccessShareLock);
	check_publishable(rel);
	check_cdc_prerequisites();

	cdc_lock_slot_lifecycle();

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	become_catalog_owner(&owner_state);
	if (!caller_is_superuser)
		check_topic_not_reserved(topic ? topic : kappa_sales_topic);

	/*
	 * already published?  (Read with a snapshot taken now, after the lock:
	 * a call that published the table while this one waited is seen, in
	 * READ COMMITTED.  ON CONFLICT is not for a user catalog table.)
	 */
	args[0] = ObjectIdGetDatum(relid);
	if (SPI_execute_with_args("SELECT topic FROM kappa.published_tables WHERE relid = $1",
							  1, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read kappa.published_tables");

	/*
	 * In REPEATABLE READ or SERIALIZABLE that snapshot is the transaction's,
	 * possibly taken before the lock: a call that published or unpublished
	 * the table while this one waited is not seen, and acting on the older
	 * picture would fail on the primary key or report a state that no longer
	 * is.  Compare with what has been committed since, and fail as
	 * PostgreSQL does on such a conflict, with an error to retry on.
	 */
	if (IsolationUsesXactSnapshot())
	{
		bool		found = SPI_processed > 0;
		char	   *seen = found ? SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) : NULL;
		bool		latest_found;
		char	   *latest = published_topic_now(relid, &latest_found);

		if (found != latest_found || (seen == NULL) != (latest == NULL) ||
			(seen && strcmp(seen, latest) != 0))
			report_concurrent_publish(RelationGetRelationName(rel), latest_found);
		/* the first query's result again, for what follows */
		if (SPI_execute_with_args("SELECT topic FROM kappa.published_tables WHERE relid = $1",
								  1, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read kappa.published_tables");
	}
	if (SPI_processed > 0)
	{
		char	   *current = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (current == NULL && topic != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("table \"%s\" is already published to the topic kappa.sales_topic names",
							RelationGetRelationName(rel)),
					 errdetail("Its changes go to the topic kappa.sales_topic names when each is published (now \"%s\"); a topic given by name does not follow the setting.",
							   kappa_sales_topic),
					 errhint("Call kappa.unpublish_table() first to give it a topic of its own.")));
		if ((current == NULL) != (topic == NULL) ||
			(current && strcmp(current, topic) != 0))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("table \"%s\" is already published to topic \"%s\"",
							RelationGetRelationName(rel),
							current ? current : kappa_sales_topic),
					 errhint("Call kappa.unpublish_table() first to change its topic.")));

		/*
		 * Published, but the slot is gone (a restore of a dump, a failover
		 * to a standby, pg_drop_replication_slot): changes since were not
		 * decoded.  Calling this again makes the slot anew and sends the
		 * rows of every published table again as a snapshot, as at their
		 * first call (one call: the next would find the slot).
		 */
		slot = SearchNamedReplicationSlot(kappa_cdc_slot_name, true);
		if (slot != NULL && !cdc_slot_invalidated(slot))
		{
			restore_caller(&owner_state);
			SPI_finish();
			table_close(rel, NoLock);
			ereport(NOTICE,
					(errmsg("table \"%s\" is already published", RelationGetRelationName(rel))));
			PG_RETURN_NULL();
		}
		republish = true;
		if (SPI_execute_with_args("SELECT relid::pg_catalog.oid, topic FROM kappa.published_tables "
								  " WHERE relid OPERATOR(pg_catalog.<>) $1 ORDER BY 1",
								  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read kappa.published_tables");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Oid			other = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
															   SPI_tuptable->tupdesc, 1, &isnull));
			char	   *other_topic = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
			MemoryContext old = MemoryContextSwitchTo(caller_cxt);

			others = lappend_oid(others, other);
			other_topics = lappend(other_topics, other_topic ? pstrdup(other_topic) : NULL);
			MemoryContextSwitchTo(old);
		}

		/*
		 * The snapshot writes every published table's rows into its topic,
		 * and the decoder takes snapshot messages for each of them from this
		 * transaction: not for a caller who may not publish into them.
		 */
		if (!caller_is_superuser)
		{
			for (int i = 0; i < list_length(others); i++)
			{
				const char *ot = list_nth(other_topics, i);
				const char *what = reserved_topic_role(ot ? ot : kappa_sales_topic);

				if (what)
					ereport(ERROR,
							(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
							 errmsg("permission denied to publish the published tables again"),
							 errdetail("Replication slot \"%s\" is lost, so publishing sends the rows of every published table again, and table \"%s\" is published into topic \"%s\", which the stream workers read as %s.",
									   kappa_cdc_slot_name, get_rel_name(list_nth_oid(others, i)),
									   ot ? ot : kappa_sales_topic, what),
							 errhint("A superuser must call kappa.publish_table() to make the slot anew.")));
			}
		}
		ereport(NOTICE,
				(errmsg(slot ? "table \"%s\" is published but replication slot \"%s\" was invalidated" :
						"table \"%s\" is published but replication slot \"%s\" is missing",
						RelationGetRelationName(rel), kappa_cdc_slot_name),
				 errdetail("Changes since the slot was lost were not published; the rows of the %d published table(s) are sent again as a snapshot.",
						   list_length(others) + 1)));
	}
	else
	{
		/*
		 * A table not published yet while the slot of the published ones is
		 * lost: making the slot anew here would send this table's rows only,
		 * and the changes the others had meanwhile would never be sent.
		 */
		slot = SearchNamedReplicationSlot(kappa_cdc_slot_name, true);
		if (slot == NULL || cdc_slot_invalidated(slot))
		{
			if (SPI_execute("SELECT 1 FROM kappa.published_tables LIMIT 1", true, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not read kappa.published_tables");
			if (SPI_processed > 0)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg(slot ? "replication slot \"%s\" was invalidated while tables are published" :
								"replication slot \"%s\" is missing while tables are published",
								kappa_cdc_slot_name),
						 errdetail("Publishing \"%s\" now would make the slot anew and send its rows only: what the published tables had while the slot was lost would never be sent.",
								   RelationGetRelationName(rel)),
						 errhint("Call kappa.publish_table() again for one of the published tables first: it makes the slot anew and sends the rows of every published table again.")));
		}
	}

	ensure_cdc_slot();

	/* no writer of the table from here until this transaction ends */
	LockRelationOid(relid, ShareLock);

	args[1] = topic ? CStringGetTextDatum(topic) : (Datum) 0;
	nulls[1] = topic ? ' ' : 'n';
	/* the caller, not the catalog's owner whose rights this runs with */
	args[2] = DirectFunctionCall1(namein,
								  CStringGetDatum(GetUserNameFromId(owner_state.save_userid, false)));
	if (!republish &&
		SPI_execute_with_args("INSERT INTO kappa.published_tables (relid, topic, published_by) VALUES ($1, $2, $3)",
							  3, argtypes, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert into kappa.published_tables");

	/*
	 * The decoder takes snapshot rows only from a transaction that wrote
	 * their tables' rows of kappa.published_tables (anyone can emit logical
	 * messages): a snapshot of tables published before writes their rows
	 * again, unchanged (each after its table is locked, the order DROP
	 * TABLE takes them in).
	 */
	if (republish)
		touch_published_row(relid);
	restore_caller(&owner_state);
	SPI_finish();

	/* decoders drop what they cached about this table at our commit */
	CacheInvalidateRelcacheByRelid(relid);
	notice_partial_old_rows(rel);

	/* the workers' output settings for the rows, as for the changes after */
	nestlevel = NewGUCNestLevel();
	for (int i = 0; kappa_output_settings[i][0]; i++)
		(void) set_config_option(kappa_output_settings[i][0], kappa_output_settings[i][1],
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	/* the ones the workers leave as the server has them */
	(void) set_config_option("lc_monetary", GetConfigOptionResetString("lc_monetary"),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("bytea_output", GetConfigOptionResetString("bytea_output"),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	rows = snapshot_rows(rel, topic);
	table_close(rel, NoLock);

	/* the other published tables, after a lost slot */
	for (int i = 0; i < list_length(others); i++)
	{
		Oid			other = list_nth_oid(others, i);
		Relation	orel = try_table_open(other, AccessShareLock);

		if (orel == NULL)
			continue;			/* dropped meanwhile */
		LockRelationOid(other, ShareLock);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		become_catalog_owner(&owner_state);
		touch_published_row(other);
		restore_caller(&owner_state);
		SPI_finish();
		rows += snapshot_rows(orel, (const char *) list_nth(other_topics, i));
		table_close(orel, NoLock);
	}
	AtEOXact_GUC(true, nestlevel);
	PG_RETURN_INT64(rows);
}

/*
 * kappa.unpublish_table(tbl regclass) RETURNS boolean
 *
 * Changes committed after this transaction are no longer published.  When
 * no table is left, the publisher drops its replication slot.
 */
Datum
kappa_unpublish_table(PG_FUNCTION_ARGS)
{
	Oid			relid;
	CatalogOwnerState owner_state;
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1];
	bool		removed;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("table must not be null")));
	relid = PG_GETARG_OID(0);
	check_publish_privileges(relid, "unpublish");

	/*
	 * As publish_table(): wait for the transactions writing the table and
	 * hold off new ones until this commits, so that a transaction is
	 * published whole or not at all (inclusion is decided at each change).
	 */
	LockRelationOid(relid, ShareLock);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	become_catalog_owner(&owner_state);
	args[0] = ObjectIdGetDatum(relid);
	if (SPI_execute_with_args("DELETE FROM kappa.published_tables WHERE relid = $1",
							  1, argtypes, args, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not delete from kappa.published_tables");
	removed = SPI_processed > 0;

	/*
	 * In REPEATABLE READ or SERIALIZABLE the DELETE used the transaction's
	 * snapshot: a publish_table() committed since is not seen, and "not
	 * published" would be false.  A row committed since is a conflict, as in
	 * publish_table().
	 */
	if (!removed && IsolationUsesXactSnapshot())
	{
		bool		published_now;

		(void) published_topic_now(relid, &published_now);
		if (published_now)
			report_concurrent_publish(get_rel_name(relid), true);
	}
	restore_caller(&owner_state);
	SPI_finish();

	if (!removed)
	{
		ereport(NOTICE,
				(errmsg("table \"%s\" is not published", get_rel_name(relid))));
		PG_RETURN_BOOL(false);
	}
	CacheInvalidateRelcacheByRelid(relid);
	cdc_request_slot_check_at_commit();
	PG_RETURN_BOOL(true);
}
