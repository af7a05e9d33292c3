/*-------------------------------------------------------------------------
 *
 * envelope.c
 *	  Rows as JSON for the change envelope, and the message key.
 *
 * The encoding is chosen once per column (KappaValueEncoder) and the
 * common types are written directly, without going through text output
 * functions whose results depend on session settings (DateStyle, TimeZone,
 * bytea_output):
 *
 *	boolean				true / false
 *	int2, int4, oid		JSON number
 *	int8				decimal string ("1001"): JSON numbers lose precision
 *	float4, float8		JSON number; NaN and infinities as strings
 *	numeric				exact decimal string ("129.90")
 *	timestamptz			"2026-11-21T10:15:03.120000Z" (UTC, microseconds)
 *	timestamp			"2026-11-21T10:15:03.120000"
 *	date				"2026-11-21"
 *	interval			ISO-8601 duration: "P1Y2M3DT4H5M6S"
 *	json, jsonb			embedded JSON
 *	bytea				base64 string
 *	arrays				JSON arrays (nested for several dimensions)
 *	anything else		the type's text output as a JSON string
 *	infinite times		"infinity" / "-infinity"
 *
 * In decoded tuples, a TOASTed value that the transaction did not change is
 * not in WAL; it is written as Debezium's "__debezium_unavailable_value"
 * marker and never fetched.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include <math.h>

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/sysattr.h"
#include "catalog/pg_type.h"
#include "cdc/envelope.h"
#include "common/base64.h"
#include "datatype/timestamp.h"
#include "nodes/bitmapset.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/float.h"
#include "miscadmin.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"

/* ---------------------------------------------------------------------
 * Building blocks
 * ---------------------------------------------------------------------
 */

/* A JSON string: the run-copying loop keeps plain text at memcpy speed. */
void
envelope_append_json_string(StringInfo out, const char *s, int len)
{
	int			run = 0;

	enlargeStringInfo(out, len + 2);
	appendStringInfoCharMacro(out, '"');
	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		if (i > run)
			appendBinaryStringInfo(out, s + run, i - run);
		run = i + 1;
		switch (c)
		{
			case '"':
				appendStringInfoString(out, "\\\"");
				break;
			case '\\':
				appendStringInfoString(out, "\\\\");
				break;
			case '\n':
				appendStringInfoString(out, "\\n");
				break;
			case '\r':
				appendStringInfoString(out, "\\r");
				break;
			case '\t':
				appendStringInfoString(out, "\\t");
				break;
			case '\b':
				appendStringInfoString(out, "\\b");
				break;
			case '\f':
				appendStringInfoString(out, "\\f");
				break;
			default:
				appendStringInfo(out, "\\u%04x", c);
				break;
		}
	}
	if (len > run)
		appendBinaryStringInfo(out, s + run, len - run);
	appendStringInfoCharMacro(out, '"');
}

static void
append_iso_year(StringInfo out, int year)
{
	/* astronomical numbering: year 0 is 1 BC, as ISO 8601 has it */
	if (year < 0)
		appendStringInfo(out, "-%04d", -year);
	else if (year > 9999)
		appendStringInfo(out, "+%d", year);
	else
		appendStringInfo(out, "%04d", year);
}

/* Timestamp (UTC for timestamptz) without quotes; false if not finite. */
static bool
append_timestamp_body(StringInfo out, Timestamp ts, bool utc)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_IS_NOBEGIN(ts))
	{
		appendStringInfoString(out, "-infinity");
		return false;
	}
	if (TIMESTAMP_IS_NOEND(ts))
	{
		appendStringInfoString(out, "infinity");
		return false;
	}
	if (timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp out of range")));
	append_iso_year(out, tm.tm_year);
	appendStringInfo(out, "-%02d-%02dT%02d:%02d:%02d.%06d%s",
					 tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
					 (int) fsec, utc ? "Z" : "");
	return true;
}

void
envelope_append_timestamptz(StringInfo out, TimestampTz ts)
{
	appendStringInfoCharMacro(out, '"');
	append_timestamp_body(out, ts, true);
	appendStringInfoCharMacro(out, '"');
}

static void
append_date_body(StringInfo out, DateADT d)
{
	int			year,
				mon,
				mday;

	if (DATE_IS_NOBEGIN(d))
	{
		appendStringInfoString(out, "-infinity");
		return;
	}
	if (DATE_IS_NOEND(d))
	{
		appendStringInfoString(out, "infinity");
		return;
	}
	j2date(d + POSTGRES_EPOCH_JDATE, &year, &mon, &mday);
	append_iso_year(out, year);
	appendStringInfo(out, "-%02d-%02d", mon, mday);
}

static void
append_interval_body(StringInfo out, Interval *span)
{
	struct pg_itm itm;
	char		buf[MAXDATELEN + 1];

	interval2itm(*span, &itm);
	EncodeInterval(&itm, INTSTYLE_ISO_8601, buf);
	appendStringInfoString(out, buf);
}

void
envelope_append_lsn(StringInfo out, XLogRecPtr lsn)
{
	appendStringInfo(out, "\"%X/%X\"", LSN_FORMAT_ARGS(lsn));
}

int64
envelope_unix_ms(TimestampTz ts)
{
	int64		us = ts + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;

	/* floor division: times before 1970 round down like Java's */
	return us >= 0 ? us / 1000 : -((-us + 999) / 1000);
}

/* ---------------------------------------------------------------------
 * Per-column encoders
 * ---------------------------------------------------------------------
 */
static void
value_encoder_init(KappaValueEncoder *enc, Oid typid)
{
	Oid			base = getBaseType(typid);
	Oid			outfn;
	Oid			elemtype;

	memset(enc, 0, sizeof(*enc));
	enc->typid = base;
	getTypeOutputInfo(base, &outfn, &enc->varlena);
	fmgr_info_cxt(outfn, &enc->output, CurrentMemoryContext);

	switch (base)
	{
		case BOOLOID:
			enc->kind = KAPPA_VALUE_BOOL;
			return;
		case INT2OID:
		case INT4OID:
		case OIDOID:
			enc->kind = KAPPA_VALUE_INT;
			return;
		case INT8OID:
			enc->kind = KAPPA_VALUE_INT8;
			return;
		case FLOAT4OID:
			enc->kind = KAPPA_VALUE_FLOAT4;
			return;
		case FLOAT8OID:
			enc->kind = KAPPA_VALUE_FLOAT8;
			return;
		case NUMERICOID:
			enc->kind = KAPPA_VALUE_NUMERIC;
			return;
		case TIMESTAMPTZOID:
			enc->kind = KAPPA_VALUE_TIMESTAMPTZ;
			return;
		case TIMESTAMPOID:
			enc->kind = KAPPA_VALUE_TIMESTAMP;
			return;
		case DATEOID:
			enc->kind = KAPPA_VALUE_DATE;
			return;
		case INTERVALOID:
			enc->kind = KAPPA_VALUE_INTERVAL;
			return;
		case JSONOID:
			enc->kind = KAPPA_VALUE_JSON;
			return;
		case JSONBOID:
			enc->kind = KAPPA_VALUE_JSONB;
			return;
		case BYTEAOID:
			enc->kind = KAPPA_VALUE_BYTEA;
			return;
	}

	elemtype = get_element_type(base);
	if (OidIsValid(elemtype))
	{
		enc->kind = KAPPA_VALUE_ARRAY;
		enc->element = palloc(sizeof(KappaValueEncoder));
		value_encoder_init(enc->element, elemtype);
		get_typlenbyvalalign(elemtype, &enc->elmlen, &enc->elmbyval, &enc->elmalign);
		return;
	}
	enc->kind = KAPPA_VALUE_TEXT;
}

static void append_value(StringInfo out, KappaValueEncoder *enc, Datum value,
						 bool decoded);

static void
append_float(StringInfo out, double d, bool is_float4, Datum value)
{
	if (isnan(d))
		appendStringInfoString(out, "\"NaN\"");
	else if (isinf(d))
		appendStringInfoString(out, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
	else if (is_float4)
		appendStringInfoString(out, DatumGetCString(DirectFunctionCall1(float4out, value)));
	else
		appendStringInfoString(out, float8out_internal(d));
}

/* Elements of dimension dim onwards, consuming *pos of the flat arrays. */
static void
append_array_dim(StringInfo out, KappaValueEncoder *elem, int ndim, int *dims,
				 int dim, Datum *values, bool *nulls, int *pos)
{
	appendStringInfoCharMacro(out, '[');
	for (int i = 0; i < dims[dim]; i++)
	{
		if (i > 0)
			appendStringInfoCharMacro(out, ',');
		if (dim + 1 < ndim)
			append_array_dim(out, elem, ndim, dims, dim + 1, values, nulls, pos);
		else
		{
			if (nulls[*pos])
				appendStringInfoString(out, "null");
			else
				append_value(out, elem, values[*pos], false);
			(*pos)++;
		}
	}
	appendStringInfoCharMacro(out, ']');
}

static void
append_array(StringInfo out, KappaValueEncoder *enc, Datum value)
{
	ArrayType  *arr = DatumGetArrayTypeP(value);
	Datum	   *values;
	bool	   *nulls;
	int			n;
	int			pos = 0;

	if (ARR_NDIM(arr) == 0)
	{
		appendStringInfoString(out, "[]");
		return;
	}
	deconstruct_array(arr, ARR_ELEMTYPE(arr), enc->elmlen, enc->elmbyval,
					  enc->elmalign, &values, &nulls, &n);
	append_array_dim(out, enc->element, ARR_NDIM(arr), ARR_DIMS(arr), 0,
					 values, nulls, &pos);
}

static void
append_bytea(StringInfo out, Datum value)
{
	bytea	   *b = DatumGetByteaPP(value);
	int			len = VARSIZE_ANY_EXHDR(b);
	int			enclen = pg_b64_enc_len(len);
	int			written;

	enlargeStringInfo(out, enclen + 2);
	out->data[out->len++] = '"';
	written = pg_b64_encode(VARDATA_ANY(b), len, out->data + out->len, enclen);
	if (written < 0)
		elog(ERROR, "could not encode bytea value as base64");
	out->len += written;
	out->data[out->len++] = '"';
	out->data[out->len] = '\0';
}

static void
append_value(StringInfo out, KappaValueEncoder *enc, Datum value, bool decoded)
{
	char		buf[32];
	char	   *s;

	if (decoded && enc->varlena && VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(value)))
	{
		appendStringInfoString(out, "\"" KAPPA_UNCHANGED_TOAST_MARKER "\"");
		return;
	}

	switch (enc->kind)
	{
		case KAPPA_VALUE_BOOL:
			appendStringInfoString(out, DatumGetBool(value) ? "true" : "false");
			break;
		case KAPPA_VALUE_INT:
			if (enc->typid == INT2OID)
				pg_ltoa(DatumGetInt16(value), buf);
			else if (enc->typid == INT4OID)
				pg_ltoa(DatumGetInt32(value), buf);
			else
				snprintf(buf, sizeof(buf), "%u", DatumGetObjectId(value));
			appendStringInfoString(out, buf);
			break;
		case KAPPA_VALUE_INT8:
			pg_lltoa(DatumGetInt64(value), buf);
			appendStringInfoCharMacro(out, '"');
			appendStringInfoString(out, buf);
			appendStringInfoCharMacro(out, '"');
			break;
		case KAPPA_VALUE_FLOAT4:
			append_float(out, DatumGetFloat4(value), true, value);
			break;
		case KAPPA_VALUE_FLOAT8:
			append_float(out, DatumGetFloat8(value), false, value);
			break;
		case KAPPA_VALUE_NUMERIC:
			s = OutputFunctionCall(&enc->output, value);
			appendStringInfoCharMacro(out, '"');
			appendStringInfoString(out, s);
			appendStringInfoCharMacro(out, '"');
			pfree(s);
			break;
		case KAPPA_VALUE_TIMESTAMPTZ:
			envelope_append_timestamptz(out, DatumGetTimestampTz(value));
			break;
		case KAPPA_VALUE_TIMESTAMP:
			appendStringInfoCharMacro(out, '"');
			append_timestamp_body(out, DatumGetTimestamp(value), false);
			appendStringInfoCharMacro(out, '"');
			break;
		case KAPPA_VALUE_DATE:
			appendStringInfoCharMacro(out, '"');
			append_date_body(out, DatumGetDateADT(value));
			appendStringInfoCharMacro(out, '"');
			break;
		case KAPPA_VALUE_INTERVAL:
			appendStringInfoCharMacro(out, '"');
			append_interval_body(out, DatumGetIntervalP(value));
			appendStringInfoCharMacro(out, '"');
			break;
		case KAPPA_VALUE_JSON:
		case KAPPA_VALUE_JSONB:
			s = OutputFunctionCall(&enc->output, value);
			appendStringInfoString(out, s);
			pfree(s);
			break;
		case KAPPA_VALUE_BYTEA:
			append_bytea(out, value);
			break;
		case KAPPA_VALUE_ARRAY:
			append_array(out, enc, value);
			break;
		case KAPPA_VALUE_TEXT:
			s = OutputFunctionCall(&enc->output, value);
			envelope_append_json_string(out, s, strlen(s));
			pfree(s);
			break;
	}
}

/*
 * A value as plain text, for message keys: what the JSON string would hold,
 * unescaped.  Types without a string encoding use their JSON form.
 */
static void
append_value_raw(StringInfo out, KappaValueEncoder *enc, Datum value)
{
	char		buf[32];
	char	   *s;

	switch (enc->kind)
	{
		case KAPPA_VALUE_INT8:
			pg_lltoa(DatumGetInt64(value), buf);
			appendStringInfoString(out, buf);
			break;
		case KAPPA_VALUE_NUMERIC:
		case KAPPA_VALUE_TEXT:
			s = OutputFunctionCall(&enc->output, value);
			appendStringInfoString(out, s);
			pfree(s);
			break;
		case KAPPA_VALUE_TIMESTAMPTZ:
			append_timestamp_body(out, DatumGetTimestampTz(value), true);
			break;
		case KAPPA_VALUE_TIMESTAMP:
			append_timestamp_body(out, DatumGetTimestamp(value), false);
			break;
		case KAPPA_VALUE_DATE:
			append_date_body(out, DatumGetDateADT(value));
			break;
		case KAPPA_VALUE_INTERVAL:
			append_interval_body(out, DatumGetIntervalP(value));
			break;
		default:
			append_value(out, enc, value, false);
			break;
	}
}

/* ---------------------------------------------------------------------
 * Tables
 * ---------------------------------------------------------------------
 */

/* Key columns in key order: the primary key, else the replica identity. */
static List *
table_key_attnums(Relation rel)
{
	Oid			indexoid = RelationGetPrimaryKeyIndex(rel);
	Relation	index;
	List	   *attnums = NIL;

	if (!OidIsValid(indexoid))
		indexoid = RelationGetReplicaIndex(rel);
	if (!OidIsValid(indexoid))
		return NIL;

	index = RelationIdGetRelation(indexoid);
	if (!RelationIsValid(index))
		return NIL;
	for (int i = 0; i < index->rd_index->indnkeyatts; i++)
		attnums = lappend_int(attnums, index->rd_index->indkey.values[i]);
	RelationClose(index);
	return attnums;
}

/*
 * Describe how to write rel's rows.  Allocates in CurrentMemoryContext,
 * which the caller keeps for as long as the encoder is cached.
 */
KappaTableEncoder *
envelope_table_encoder(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	KappaTableEncoder *te = palloc0(sizeof(KappaTableEncoder));
	Bitmapset  *identity;
	List	   *keyattnums;
	ListCell   *lc;
	StringInfoData buf;

	initStringInfo(&buf);
	te->relid = RelationGetRelid(rel);
	te->schema = get_namespace_name(RelationGetNamespace(rel));
	te->table = pstrdup(RelationGetRelationName(rel));
	envelope_append_json_string(&buf, te->schema, strlen(te->schema));
	te->schema_json = pstrdup(buf.data);
	resetStringInfo(&buf);
	envelope_append_json_string(&buf, te->table, strlen(te->table));
	te->table_json = pstrdup(buf.data);
	te->replident = rel->rd_rel->relreplident;

	identity = RelationGetIndexAttrBitmap(rel, INDEX_ATTR_BITMAP_IDENTITY_KEY);
	keyattnums = table_key_attnums(rel);

	te->columns = palloc0(sizeof(KappaColumn) * desc->natts);
	te->keys = palloc0(sizeof(int) * (list_length(keyattnums) + 1));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		KappaColumn *col;

		if (att->attisdropped || att->attnum <= 0)
			continue;
		col = &te->columns[te->ncolumns++];
		col->attindex = i;
		col->name = pstrdup(NameStr(att->attname));
		resetStringInfo(&buf);
		envelope_append_json_string(&buf, col->name, strlen(col->name));
		appendStringInfoChar(&buf, ':');
		col->name_json = pstrdup(buf.data);
		col->type_name = format_type_be(att->atttypid);
		col->is_identity = bms_is_member(att->attnum - FirstLowInvalidHeapAttributeNumber, identity);
		value_encoder_init(&col->value, att->atttypid);
	}

	/* key columns in the order of the key's index */
	foreach(lc, keyattnums)
	{
		AttrNumber	attnum = lfirst_int(lc);

		for (int c = 0; c < te->ncolumns; c++)
		{
			if (te->columns[c].attindex == attnum - 1)
			{
				te->columns[c].is_key = true;
				te->keys[te->nkeys++] = c;
				break;
			}
		}
	}
	pfree(buf.data);
	return te;
}

/*
 * The row as a JSON object.  identity_only writes just the replica identity
 * columns (an old tuple without REPLICA IDENTITY FULL has nothing else).
 * decoded: the tuple comes from WAL, so unchanged TOAST values are absent.
 */
void
envelope_append_row(StringInfo out, KappaTableEncoder *te, TupleDesc desc,
					HeapTuple tuple, bool identity_only, bool decoded)
{
	bool		first = true;

	appendStringInfoCharMacro(out, '{');
	for (int c = 0; c < te->ncolumns; c++)
	{
		KappaColumn *col = &te->columns[c];
		bool		isnull;
		Datum		value;

		if (identity_only && !col->is_identity)
			continue;
		if (!first)
			appendStringInfoCharMacro(out, ',');
		first = false;
		appendStringInfoString(out, col->name_json);
		value = heap_getattr(tuple, col->attindex + 1, desc, &isnull);
		if (isnull)
			appendStringInfoString(out, "null");
		else
			append_value(out, &col->value, value, decoded);
	}
	appendStringInfoCharMacro(out, '}');
}

/* The readable (debug) form: name=value pairs, text output, quoted text. */
void
envelope_append_row_text(StringInfo out, KappaTableEncoder *te, TupleDesc desc,
						 HeapTuple tuple, bool identity_only, bool decoded)
{
	bool		first = true;

	for (int c = 0; c < te->ncolumns; c++)
	{
		KappaColumn *col = &te->columns[c];
		bool		isnull;
		Datum		value;

		if (identity_only && !col->is_identity)
			continue;
		if (!first)
			appendStringInfoChar(out, ' ');
		first = false;
		appendStringInfo(out, "%s[%s]:", col->name, col->type_name);
		value = heap_getattr(tuple, col->attindex + 1, desc, &isnull);
		if (isnull)
			appendStringInfoString(out, "null");
		else if (decoded && col->value.varlena &&
				 VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(value)))
			appendStringInfoString(out, "unchanged-toast-datum");
		else
		{
			char	   *s;

			switch (col->value.kind)
			{
				case KAPPA_VALUE_BOOL:
				case KAPPA_VALUE_INT:
				case KAPPA_VALUE_INT8:
				case KAPPA_VALUE_FLOAT4:
				case KAPPA_VALUE_FLOAT8:
				case KAPPA_VALUE_NUMERIC:
					s = OutputFunctionCall(&col->value.output, value);
					appendStringInfoString(out, s);
					break;
				default:
					s = OutputFunctionCall(&col->value.output, value);
					appendStringInfoChar(out, '\'');
					for (const char *p = s; *p; p++)
					{
						if (*p == '\'')
							appendStringInfoChar(out, '\'');
						appendStringInfoChar(out, *p);
					}
					appendStringInfoChar(out, '\'');
					break;
			}
		}
	}
}

/*
 * The message key: the text of a one-column key ("1001"), a JSON object for
 * a composite key.  Returns false when the table has no key.
 */
bool
envelope_append_key(StringInfo out, KappaTableEncoder *te, TupleDesc desc,
					HeapTuple tuple)
{
	if (te->nkeys == 0)
		return false;

	if (te->nkeys == 1)
	{
		KappaColumn *col = &te->columns[te->keys[0]];
		bool		isnull;
		Datum		value = heap_getattr(tuple, col->attindex + 1, desc, &isnull);

		if (isnull)
			return false;
		append_value_raw(out, &col->value, value);
		return true;
	}

	appendStringInfoChar(out, '{');
	for (int k = 0; k < te->nkeys; k++)
	{
		KappaColumn *col = &te->columns[te->keys[k]];
		bool		isnull;
		Datum		value = heap_getattr(tuple, col->attindex + 1, desc, &isnull);

		if (k > 0)
			appendStringInfoChar(out, ',');
		appendStringInfoString(out, col->name_json);
		if (isnull)
			appendStringInfoString(out, "null");
		else
			append_value(out, &col->value, value, false);
	}
	appendStringInfoChar(out, '}');
	return true;
}

/*
 * An update that left a TOASTed column alone carries it in the new row as a
 * pointer to its TOAST value, which decoding does not read (the row would
 * show the unavailable marker, and a key would seem changed).  The old row
 * PostgreSQL logs has such values in line: the key columns always, every
 * column under REPLICA IDENTITY FULL (the others are null in a key-only old
 * row, and stay marked).  The new row, with those values put back in line.
 */
HeapTuple
envelope_inline_unchanged_toast(KappaTableEncoder *te, TupleDesc desc,
								HeapTuple oldtuple, HeapTuple newtuple)
{
	Datum	   *values = NULL;
	bool	   *nulls = NULL;

	for (int c = 0; c < te->ncolumns; c++)
	{
		KappaColumn *col = &te->columns[c];
		Form_pg_attribute att = TupleDescAttr(desc, col->attindex);
		bool		newnull,
					oldnull;
		Datum		newval,
					oldval;

		if (att->attlen != -1)
			continue;
		newval = heap_getattr(newtuple, col->attindex + 1, desc, &newnull);
		if (newnull || !VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(newval)))
			continue;
		oldval = heap_getattr(oldtuple, col->attindex + 1, desc, &oldnull);
		if (oldnull || VARATT_IS_EXTERNAL_ONDISK(DatumGetPointer(oldval)))
			continue;
		if (values == NULL)
		{
			values = palloc(sizeof(Datum) * desc->natts);
			nulls = palloc(sizeof(bool) * desc->natts);
			heap_deform_tuple(newtuple, desc, values, nulls);
		}
		values[col->attindex] = oldval;
	}
	return values ? heap_form_tuple(desc, values, nulls) : newtuple;
}

/* Did an update change the key?  (Binary comparison: the key text follows.) */
bool
envelope_keys_differ(KappaTableEncoder *te, TupleDesc desc,
					 HeapTuple oldtuple, HeapTuple newtuple)
{
	for (int k = 0; k < te->nkeys; k++)
	{
		KappaColumn *col = &te->columns[te->keys[k]];
		Form_pg_attribute att = TupleDescAttr(desc, col->attindex);
		bool		oldnull,
					newnull;
		Datum		oldval = heap_getattr(oldtuple, col->attindex + 1, desc, &oldnull);
		Datum		newval = heap_getattr(newtuple, col->attindex + 1, desc, &newnull);

		if (oldnull != newnull)
			return true;
		if (!oldnull && !datumIsEqual(oldval, newval, att->attbyval, att->attlen))
			return true;
	}
	return false;
}
