/*-------------------------------------------------------------------------
 *
 * csv_sales.c
 *	  Rows of a store's CSV file as sales change envelopes, byte for byte
 *	  what the CDC publisher writes for the same row of the sales table.
 *
 * The header names the columns, in any order and any letter case; other
 * columns are ignored.  Each value goes through the input function of its
 * column's type in the reference table, with the column's type modifier,
 * so a value means what it would mean in an INSERT: sale_id bigint,
 * country char(2) and currency char(3) (padded, or refused when too long),
 * amount numeric(12,2) (rounded to cents, refused when it does not fit),
 * sold_at timestamptz (any spelling PostgreSQL accepts; without an offset
 * it is UTC, the worker's time zone).  The results are then written with
 * the same encoders as the CDC publisher's: the stream worker cannot tell
 * the sources apart.
 *
 * A row that the table would refuse (an input function's error, a NULL in
 * a NOT NULL column, too few or too many fields) is not sent: its reason
 * is returned for kappa.dead_letters.  Relative times ("now", "today",
 * ...) are refused too: read again after a crash, the same file must give
 * the same events.
 *
 * The input functions report bad values by throwing.  PostgreSQL 15 has no
 * soft error reporting, so the conversion runs under PG_TRY; that is safe
 * here because these functions are pure (no locks, buffers or files held
 * when they throw), and only data exceptions (class 22) are caught: any
 * other error goes up and restarts the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "cdc/envelope.h"
#include "sources/csv.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/timestamp.h"

static const char *const csv_column_names[CSV_NCOLUMNS] = {
	"sale_id", "store_id", "seller_id", "seller_name", "city",
	"country", "amount", "currency", "sold_at"
};

/* typmods of the reference table's constrained columns */
#define COUNTRY_TYPMOD	(2 + VARHDRSZ)	/* char(2) */
#define CURRENCY_TYPMOD (3 + VARHDRSZ)	/* char(3) */
#define AMOUNT_TYPMOD	(((12 << 16) | 2) + VARHDRSZ)	/* numeric(12,2) */

#define DEFAULT_CURRENCY "EUR"

static bool
csv_column_required(int col)
{
	return col != CSV_COL_CURRENCY;
}

/*
 * Map the header's fields to the table's columns.  Returns NULL, or why the
 * file cannot be read.
 */
char *
csv_map_header(const CsvRecord *header, CsvSalesMap *map)
{
	StringInfoData missing;

	if (header->error)
		return psprintf("the header row (line %lld) is malformed: %s",
						(long long) header->line, header->error);

	map->nfields = header->nfields;
	for (int c = 0; c < CSV_NCOLUMNS; c++)
		map->field[c] = -1;

	for (int i = 0; i < header->nfields; i++)
	{
		const char *name = header->fields[i];
		int			len = header->lengths[i];

		while (len > 0 && (*name == ' ' || *name == '\t'))
		{
			name++;
			len--;
		}
		while (len > 0 && (name[len - 1] == ' ' || name[len - 1] == '\t'))
			len--;

		for (int c = 0; c < CSV_NCOLUMNS; c++)
		{
			if (strlen(csv_column_names[c]) == (size_t) len &&
				pg_strncasecmp(name, csv_column_names[c], len) == 0)
			{
				if (map->field[c] >= 0)
					return psprintf("column \"%s\" appears more than once in the header",
									csv_column_names[c]);
				map->field[c] = i;
			}
		}
	}

	initStringInfo(&missing);
	for (int c = 0; c < CSV_NCOLUMNS; c++)
	{
		if (map->field[c] < 0 && csv_column_required(c))
			appendStringInfo(&missing, "%s%s", missing.len ? ", " : "",
							 csv_column_names[c]);
	}
	if (missing.len > 0)
		return psprintf("the header (line %lld) lacks the required column(s) %s",
						(long long) header->line, missing.data);
	pfree(missing.data);
	return NULL;
}

/* The parts of "source" that are the same for every row of a file. */
void
csv_envelope_source(CsvEnvelopeSource *src, const char *file,
					const char *sha256_hex)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "},\"source\":{\"connector\":\"csv\",\"file\":");
	envelope_append_json_string(&buf, file, strlen(file));
	appendStringInfoString(&buf, ",\"line\":");
	src->before_line = buf.data;

	initStringInfo(&buf);
	appendStringInfo(&buf, ",\"sha256\":\"%s\"},\"ts_ms\":", sha256_hex);
	src->after_line = buf.data;
}

/*
 * "now", "today", "tomorrow" and "yesterday" (alone or with a time) depend
 * on when the file is read.
 */
static bool
is_relative_time(const char *s)
{
	static const char *const words[] = {"now", "today", "tomorrow", "yesterday"};

	while (*s)
	{
		const char *start;
		size_t		len;

		while (*s && !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')))
			s++;
		start = s;
		while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z'))
			s++;
		len = s - start;
		for (size_t i = 0; i < lengthof(words); i++)
		{
			if (len == strlen(words[i]) && pg_strncasecmp(start, words[i], len) == 0)
				return true;
		}
	}
	return false;
}

/*
 * The column being converted, for the error message.  A global and
 * volatile: it must be read from memory after the input function threw
 * (a local could be held in a register that longjmp restores).
 */
static volatile int converting_column = -1;

/* The typed values of one row. */
typedef struct CsvSalesValues
{
	char	   *refused;		/* why the row is refused, or NULL */
	int64		sale_id;
	BpChar	   *country;
	BpChar	   *currency;		/* NULL: the default */
	char	   *amount;			/* numeric_out of the numeric(12,2) value */
	TimestampTz sold_at;
} CsvSalesValues;

static void
convert_values(const CsvSalesMap *map, const CsvRecord *rec, CsvSalesValues *v)
{
	Datum		amount;

#define FIELD(c) CStringGetDatum(rec->fields[map->field[c]])

	converting_column = CSV_COL_SALE_ID;
	v->sale_id = DatumGetInt64(DirectFunctionCall1(int8in, FIELD(CSV_COL_SALE_ID)));

	converting_column = CSV_COL_COUNTRY;
	v->country = DatumGetBpCharPP(DirectFunctionCall3(bpcharin, FIELD(CSV_COL_COUNTRY),
													  ObjectIdGetDatum(InvalidOid),
													  Int32GetDatum(COUNTRY_TYPMOD)));
	converting_column = CSV_COL_AMOUNT;
	amount = DirectFunctionCall3(numeric_in, FIELD(CSV_COL_AMOUNT),
								 ObjectIdGetDatum(InvalidOid),
								 Int32GetDatum(AMOUNT_TYPMOD));
	v->amount = DatumGetCString(DirectFunctionCall1(numeric_out, amount));

	converting_column = CSV_COL_CURRENCY;
	v->currency = NULL;
	if (map->field[CSV_COL_CURRENCY] >= 0 &&
		!(rec->lengths[map->field[CSV_COL_CURRENCY]] == 0 &&
		  !rec->quoted[map->field[CSV_COL_CURRENCY]]))
		v->currency = DatumGetBpCharPP(DirectFunctionCall3(bpcharin, FIELD(CSV_COL_CURRENCY),
														   ObjectIdGetDatum(InvalidOid),
														   Int32GetDatum(CURRENCY_TYPMOD)));

	converting_column = CSV_COL_SOLD_AT;
	v->sold_at = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, FIELD(CSV_COL_SOLD_AT),
														 ObjectIdGetDatum(InvalidOid),
														 Int32GetDatum(-1)));
#undef FIELD
}

static inline void
append_text_field(StringInfo out, const CsvRecord *rec, int field)
{
	envelope_append_json_string(out, rec->fields[field], rec->lengths[field]);
}

/*
 * The row as a change envelope: key (sale_id) and value.  Returns NULL, or
 * why the row is refused; then key and value are not to be used.  Runs in a
 * short-lived memory context of the caller's.
 */
char *
csv_sales_envelope(const CsvSalesMap *map, const CsvRecord *rec,
				   const CsvEnvelopeSource *src, int64 ts_ms,
				   StringInfo key, StringInfo value)
{
	MemoryContext cxt = CurrentMemoryContext;
	CsvSalesValues v;
	char		num[MAXINT8LEN + 1];

	if (rec->error)
		return pstrdup(rec->error);
	if (rec->nfields < map->nfields)
	{
		for (int c = 0; c < CSV_NCOLUMNS; c++)
		{
			if (map->field[c] >= rec->nfields)
				return psprintf("missing data for column \"%s\": the row has %d fields, the header %d",
								csv_column_names[c], rec->nfields, map->nfields);
		}
		return psprintf("missing data: the row has %d fields, the header %d",
						rec->nfields, map->nfields);
	}
	if (rec->nfields > map->nfields)
		return psprintf("extra data after the last column: the row has %d fields, the header %d",
						rec->nfields, map->nfields);

	for (int c = 0; c < CSV_NCOLUMNS; c++)
	{
		int			f = map->field[c];

		if (csv_column_required(c) && rec->lengths[f] == 0 && !rec->quoted[f])
			return psprintf("null value in column \"%s\" violates not-null constraint",
							csv_column_names[c]);
	}
	converting_column = -1;
	v.refused = NULL;
	PG_TRY();
	{
		convert_values(map, rec, &v);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		if (ERRCODE_TO_CATEGORY(geterrcode()) != ERRCODE_DATA_EXCEPTION)
			PG_RE_THROW();
		edata = CopyErrorData();
		FlushErrorState();
		if (converting_column >= 0)
			v.refused = psprintf("%s (column \"%s\")", edata->message,
								 csv_column_names[converting_column]);
		else
			v.refused = pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	if (v.refused)
		return v.refused;
	/* valid, but it would change with the day the file is read */
	if (is_relative_time(rec->fields[map->field[CSV_COL_SOLD_AT]]))
		return psprintf("relative time \"%s\" is not accepted (column \"sold_at\"): a file must give the same events whenever it is read",
						rec->fields[map->field[CSV_COL_SOLD_AT]]);

	pg_lltoa(v.sale_id, num);
	resetStringInfo(key);
	appendStringInfoString(key, num);

	resetStringInfo(value);
	appendStringInfoString(value, "{\"op\":\"c\",\"before\":null,\"after\":{\"sale_id\":\"");
	appendStringInfoString(value, num);
	appendStringInfoString(value, "\",\"store_id\":");
	append_text_field(value, rec, map->field[CSV_COL_STORE_ID]);
	appendStringInfoString(value, ",\"seller_id\":");
	append_text_field(value, rec, map->field[CSV_COL_SELLER_ID]);
	appendStringInfoString(value, ",\"seller_name\":");
	append_text_field(value, rec, map->field[CSV_COL_SELLER_NAME]);
	appendStringInfoString(value, ",\"city\":");
	append_text_field(value, rec, map->field[CSV_COL_CITY]);
	appendStringInfoString(value, ",\"country\":");
	envelope_append_json_string(value, VARDATA_ANY(v.country),
								VARSIZE_ANY_EXHDR(v.country));
	appendStringInfoString(value, ",\"amount\":\"");
	appendStringInfoString(value, v.amount);
	appendStringInfoString(value, "\",\"currency\":");
	if (v.currency)
		envelope_append_json_string(value, VARDATA_ANY(v.currency),
									VARSIZE_ANY_EXHDR(v.currency));
	else
		appendStringInfoString(value, "\"" DEFAULT_CURRENCY "\"");
	appendStringInfoString(value, ",\"sold_at\":");
	envelope_append_timestamptz(value, v.sold_at);
	appendStringInfoString(value, src->before_line);
	pg_lltoa(rec->line, num);
	appendStringInfoString(value, num);
	appendStringInfoString(value, src->after_line);
	pg_lltoa(ts_ms, num);
	appendStringInfoString(value, num);
	appendStringInfoCharMacro(value, '}');
	return NULL;
}
