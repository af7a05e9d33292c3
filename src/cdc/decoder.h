/*-------------------------------------------------------------------------
 *
 * decoder.h
 *	  The "pg_kappa" logical decoding output plugin, and what it tells an
 *	  in-process writer (the CDC publisher) about each message.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_DECODER_H
#define KAPPA_DECODER_H

#include "access/xlogdefs.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/hsearch.h"

/*
 * Rows that existed before a table was published travel through WAL as
 * transactional logical messages with this prefix, written by
 * kappa.publish_table() in the transaction that publishes the table.  They
 * are decoded, ordered and acknowledged like every other change of that
 * transaction, and come out as op "r".
 */
#define KAPPA_SNAPSHOT_PREFIX "pg_kappa.snapshot"
#define KAPPA_SNAPSHOT_VERSION 1

typedef struct KappaSnapshotHeader
{
	uint32		version;
	Oid			relid;
	uint32		keylen;			/* message key, follows the header */
	uint32		topiclen;		/* topic (0: kappa.sales_topic), after key */
	/* then the "after" JSON object up to the end of the message */
} KappaSnapshotHeader;

typedef enum KappaEmitKind
{
	KAPPA_EMIT_BEGIN,
	KAPPA_EMIT_CHANGE,
	KAPPA_EMIT_COMMIT
} KappaEmitKind;

/* A table whose kappa.published_tables row the transaction wrote. */
typedef struct KappaPublishing
{
	Oid			relid;
	char	   *topic;			/* NULL: kappa.sales_topic */
} KappaPublishing;

/* The plugin's private state (ctx->output_plugin_private). */
typedef struct KappaDecodingState
{
	MemoryContext change_cxt;	/* reset after every change */
	MemoryContext cache_cxt;	/* table descriptions */
	HTAB	   *tables;			/* relid -> KappaDecodedTable */

	/* options */
	bool		text_format;	/* format 'text': readable debug form */
	bool		include_transaction;	/* BEGIN/END markers */
	bool		published_only; /* filter and route by kappa.published_tables */
	bool		to_utf8;		/* convert output from the database encoding */
	List	   *table_patterns; /* "tables" option: KappaTablePattern */

	/* current transaction */
	bool		txn_started;	/* a BEGIN marker was due or written */
	List	   *publishing;		/* KappaPublishing: rows of published_tables it wrote */
	bool		forged_warned;	/* a foreign snapshot message was reported */
	int64		seq;			/* next change's position in the transaction */
	int64		decode_ms;		/* wall clock when decoding it, Unix ms */
	char	   *db_json;		/* database name, as a JSON string */
	uint64		system_id;		/* this cluster's, for source.system_id */
	TimeLineID	timeline;		/* the commit's WAL timeline, source.timeline */
	List	   *history;		/* the server's timeline history (in cache_cxt) */
	TimeLineID	history_tli;	/* the timeline it was read for */

	/*
	 * What the message being written is: read by the CDC publisher's write
	 * callback to route it to Kafka.
	 */
	KappaEmitKind emit_kind;
	StringInfoData key;
	bool		has_key;
	const char *topic;			/* NULL: kappa.sales_topic */
	XLogRecPtr	commit_lsn;		/* at BEGIN/COMMIT markers */
	XLogRecPtr	end_lsn;		/* at the COMMIT marker */
} KappaDecodingState;

#endif							/* KAPPA_DECODER_H */
