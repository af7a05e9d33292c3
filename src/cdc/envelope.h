/*-------------------------------------------------------------------------
 *
 * envelope.h
 *	  Rows as JSON: the "before"/"after" objects and message keys of the
 *	  Debezium-compatible change envelope (see docs/message-formats.md).
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_ENVELOPE_H
#define KAPPA_ENVELOPE_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "access/xlogdefs.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/relcache.h"
#include "utils/timestamp.h"

typedef enum KappaValueKind
{
	KAPPA_VALUE_BOOL,
	KAPPA_VALUE_INT,			/* int2, int4, oid: JSON number */
	KAPPA_VALUE_INT8,			/* decimal string: JSON numbers lose precision */
	KAPPA_VALUE_FLOAT4,
	KAPPA_VALUE_FLOAT8,
	KAPPA_VALUE_NUMERIC,		/* exact decimal string */
	KAPPA_VALUE_TIMESTAMPTZ,	/* ISO-8601 UTC, microseconds, "Z" */
	KAPPA_VALUE_TIMESTAMP,		/* ISO-8601, microseconds, no zone */
	KAPPA_VALUE_DATE,			/* ISO-8601 date */
	KAPPA_VALUE_INTERVAL,		/* ISO-8601 duration ("P1Y2M3DT4H5M6S") */
	KAPPA_VALUE_JSON,			/* embedded as JSON */
	KAPPA_VALUE_JSONB,			/* embedded as JSON */
	KAPPA_VALUE_BYTEA,			/* base64 string */
	KAPPA_VALUE_ARRAY,			/* JSON array of the element encoding */
	KAPPA_VALUE_TEXT			/* type output function, as a JSON string */
} KappaValueKind;

typedef struct KappaValueEncoder
{
	KappaValueKind kind;
	Oid			typid;			/* after resolving domains */
	bool		varlena;
	FmgrInfo	output;			/* for KAPPA_VALUE_TEXT, NUMERIC, JSONB */
	/* arrays */
	struct KappaValueEncoder *element;
	int16		elmlen;
	bool		elmbyval;
	char		elmalign;
} KappaValueEncoder;

typedef struct KappaColumn
{
	int			attindex;		/* 0-based index in the tuple descriptor */
	char	   *name;			/* column name */
	char	   *name_json;		/* "name": already escaped */
	char	   *type_name;		/* for the readable form */
	bool		is_key;			/* part of the message key */
	bool		is_identity;	/* logged in old tuples (replica identity) */
	KappaValueEncoder value;
} KappaColumn;

/* How a table's rows are written.  Built once per table and cached. */
typedef struct KappaTableEncoder
{
	Oid			relid;
	char	   *schema;
	char	   *table;
	char	   *schema_json;	/* escaped JSON strings, quotes included */
	char	   *table_json;
	char		replident;		/* pg_class.relreplident */
	int			ncolumns;
	KappaColumn *columns;
	int			nkeys;
	int		   *keys;			/* indexes into columns, in key order */
} KappaTableEncoder;

extern KappaTableEncoder *envelope_table_encoder(Relation rel);
extern void envelope_append_row(StringInfo out, KappaTableEncoder *te,
								TupleDesc desc, HeapTuple tuple,
								bool identity_only, bool decoded);
extern void envelope_append_row_text(StringInfo out, KappaTableEncoder *te,
									 TupleDesc desc, HeapTuple tuple,
									 bool identity_only, bool decoded);
extern bool envelope_append_key(StringInfo out, KappaTableEncoder *te,
								TupleDesc desc, HeapTuple tuple);
extern HeapTuple envelope_inline_unchanged_toast(KappaTableEncoder *te, TupleDesc desc,
												HeapTuple oldtuple, HeapTuple newtuple);
extern bool envelope_keys_differ(KappaTableEncoder *te, TupleDesc desc,
								 HeapTuple oldtuple, HeapTuple newtuple);

/* Building blocks, also used by the sources and the stream worker */
extern void envelope_append_json_string(StringInfo out, const char *s, int len);
extern void envelope_append_timestamptz(StringInfo out, TimestampTz ts);
extern void envelope_append_lsn(StringInfo out, XLogRecPtr lsn);
extern int64 envelope_unix_ms(TimestampTz ts);

#endif							/* KAPPA_ENVELOPE_H */
