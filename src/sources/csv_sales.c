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
 * it is UTC, the worker's time zone).  The usual spellings of amount and
 * sold_at, and country and currency values of exactly their length in
 * ASCII, are decoded here without the input function, to the same result
 * (see iso_timestamptz and fixed_char).  The results are then written with
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
#include "stream/event.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
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
	src->before_len = buf.len;

	initStringInfo(&buf);
	appendStringInfo(&buf, ",\"sha256\":\"%s\"},\"ts_ms\":", sha256_hex);
	src->after_line = buf.data;
	src->after_len = buf.len;
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
	const char *country;		/* the char(2) value, padded */
	int			country_len;
	const char *currency;		/* the char(3) value, padded; NULL: the default */
	int			currency_len;
	char	   *amount;			/* numeric_out of the numeric(12,2) value */
	char		amount_buf[16]; /* (where plain_amount writes it) */
	TimestampTz sold_at;
	bool		sold_at_iso;	/* read by iso_timestamptz: no words in it */
} CsvSalesValues;

/*
 * The spellings nearly every file uses, decoded directly.  Each accepts a
 * strict subset of what its input function accepts and gives exactly what
 * that function gives; anything else, every error included, is left to
 * the input function.  test/t/035_csv_values.pl compares both on edge
 * cases.  (The input functions are most of a row's cost: ParseDateTime,
 * DecodeDateTime and the timezone lookup alone were a fifth of the
 * worker's main thread.)
 *
 * sold_at: the ISO 8601 spellings timestamptz_in reads alike in every session:
 * YYYY-MM-DD, 'T' or ' ', HH:MM:SS, up to six fraction digits, and 'Z' or
 * an offset +HH, +HHMM or +HH:MM (the stream worker's parser, narrowed;
 * see iso_time_parse).  timestamptz_in looks 'T' and 'Z' up in the time
 * zone abbreviations too; csv_sales_check_settings makes sure they mean
 * here what they mean there.
 */
static bool
iso_timestamptz(const char *s, TimestampTz *result)
{
	return iso_time_parse(s, s + strlen(s), true, result);
}

/*
 * An optional sign, 1 to 10 integer digits (after leading zeros) and up to
 * 2 fraction digits: numeric(12,2) holds it without rounding, and
 * numeric_out would print it with the leading zeros dropped, exactly two
 * fraction digits and no sign on zero.  Writes that into out (at least
 * 15 bytes).
 */
static bool
plain_amount(const char *s, char *out)
{
	const char *digits;
	const char *frac = "";
	size_t		ndigits,
				nfrac = 0;
	bool		negative = false;
	bool		zero = true;
	char	   *o = out;

	if (*s == '-' || *s == '+')
		negative = (*s++ == '-');
	while (s[0] == '0' && s[1] >= '0' && s[1] <= '9')
		s++;
	digits = s;
	while (*s >= '0' && *s <= '9')
		s++;
	ndigits = s - digits;
	if (ndigits < 1 || ndigits > 10)
		return false;
	if (*s == '.')
	{
		frac = ++s;
		while (*s >= '0' && *s <= '9')
			s++;
		nfrac = s - frac;
		if (nfrac > 2)
			return false;
	}
	if (*s != '\0')
		return false;

	for (size_t i = 0; i < ndigits; i++)
		zero &= digits[i] == '0';
	for (size_t i = 0; i < nfrac; i++)
		zero &= frac[i] == '0';
	if (negative && !zero)
		*o++ = '-';
	memcpy(o, digits, ndigits);
	o += ndigits;
	*o++ = '.';
	*o++ = nfrac > 0 ? frac[0] : '0';
	*o++ = nfrac > 1 ? frac[1] : '0';
	*o = '\0';
	return true;
}

/*
 * Whether iso_timestamptz may be used: true when timestamptz_in, in the
 * settings now in effect, reads 'T' as the date-time separator and 'Z' as
 * UTC.  Every timezone_abbreviations set PostgreSQL ships has Z as UTC
 * and no T; a server's own set could say otherwise.
 */
static bool iso_spellings_agree = false;

/* Does timestamptz_in read probe as iso_timestamptz does? */
static bool
probe_agrees(const char *probe)
{
	MemoryContext cxt = CurrentMemoryContext;
	TimestampTz fast = 0;
	volatile TimestampTz slow = 0;
	volatile bool refused = false;

	if (!iso_timestamptz(probe, &fast))
		elog(ERROR, "iso_timestamptz refused \"%s\"", probe);
	PG_TRY();
	{
		slow = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, CStringGetDatum(probe),
													   ObjectIdGetDatum(InvalidOid),
													   Int32GetDatum(-1)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		if (ERRCODE_TO_CATEGORY(geterrcode()) != ERRCODE_DATA_EXCEPTION)
			PG_RE_THROW();
		FlushErrorState();
		refused = true;
	}
	PG_END_TRY();
	return !refused && slow == fast;
}

/*
 * Before a file: try spellings with T, Z and offsets on timestamptz_in and
 * compare.  (The settings can change at any reload; a file is read under
 * the ones of its start.)
 */
void
csv_sales_check_settings(void)
{
	static const char *const probes[] = {
		"2000-02-29T12:34:56.5Z", "2000-02-29 23:59:59Z",
		"2000-02-29T12:34:56+01:30", "2000-02-29 12:34:56-0130"
	};
	static bool warned = false;
	bool		agree = true;

	for (size_t i = 0; i < lengthof(probes) && agree; i++)
		agree = probe_agrees(probes[i]);
	if (!agree && !warned)
		ereport(LOG,
				(errmsg("pg_kappa csv inbox: time zone abbreviations give \"T\" or \"Z\" another meaning"),
				 errdetail("timestamptz_in does not read \"2000-02-29T12:34:56.5Z\" and the like as ISO 8601 does; every sold_at value now goes through it, which is slower."),
				 errhint("Check the file named by timezone_abbreviations.")));
	warned = !agree;
	iso_spellings_agree = agree;
}

/*
 * A char(n) column: a field of exactly n printable ASCII bytes is its own
 * value (bpcharin pads shorter values, trims trailing spaces past n and
 * counts characters, not bytes: those go through it).
 */
static void
fixed_char(const CsvRecord *rec, int field, int32 typmod, const char **value, int *len)
{
	const char *s = rec->fields[field];
	int			n = typmod - VARHDRSZ;
	BpChar	   *result;

	if (rec->lengths[field] == n)
	{
		int			i;

		for (i = 0; i < n; i++)
			if ((unsigned char) s[i] < 0x20 || (unsigned char) s[i] > 0x7e)
				break;
		if (i == n)
		{
			*value = s;
			*len = n;
			return;
		}
	}
	result = DatumGetBpCharPP(DirectFunctionCall3(bpcharin, CStringGetDatum(s),
												  ObjectIdGetDatum(InvalidOid),
												  Int32GetDatum(typmod)));
	*value = VARDATA_ANY(result);
	*len = VARSIZE_ANY_EXHDR(result);
}

static void
convert_values(const CsvSalesMap *map, const CsvRecord *rec, CsvSalesValues *v)
{
	Datum		amount;

#define FIELD(c) CStringGetDatum(rec->fields[map->field[c]])

	converting_column = CSV_COL_SALE_ID;
	v->sale_id = DatumGetInt64(DirectFunctionCall1(int8in, FIELD(CSV_COL_SALE_ID)));

	converting_column = CSV_COL_COUNTRY;
	fixed_char(rec, map->field[CSV_COL_COUNTRY], COUNTRY_TYPMOD, &v->country, &v->country_len);
	converting_column = CSV_COL_AMOUNT;
	if (plain_amount(rec->fields[map->field[CSV_COL_AMOUNT]], v->amount_buf))
		v->amount = v->amount_buf;
	else
	{
		amount = DirectFunctionCall3(numeric_in, FIELD(CSV_COL_AMOUNT),
									 ObjectIdGetDatum(InvalidOid),
									 Int32GetDatum(AMOUNT_TYPMOD));
		v->amount = DatumGetCString(DirectFunctionCall1(numeric_out, amount));
	}

	converting_column = CSV_COL_CURRENCY;
	v->currency = NULL;
	if (map->field[CSV_COL_CURRENCY] >= 0 &&
		!(rec->lengths[map->field[CSV_COL_CURRENCY]] == 0 &&
		  !rec->quoted[map->field[CSV_COL_CURRENCY]]))
		fixed_char(rec, map->field[CSV_COL_CURRENCY], CURRENCY_TYPMOD,
				   &v->currency, &v->currency_len);

	converting_column = CSV_COL_SOLD_AT;
	v->sold_at_iso = iso_spellings_agree &&
		iso_timestamptz(rec->fields[map->field[CSV_COL_SOLD_AT]], &v->sold_at);
	if (!v->sold_at_iso)
		v->sold_at = DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in, FIELD(CSV_COL_SOLD_AT),
															 ObjectIdGetDatum(InvalidOid),
															 Int32GetDatum(-1)));
#undef FIELD
}

/*
 * Writing the envelope.  Its size is bounded before it is written (an
 * escaped byte takes at most 6), so a row is written with plain copies into
 * a buffer enlarged once.  The JSON escaping and the timestamp format are
 * exactly those of envelope.c (envelope_append_json_string,
 * envelope_append_timestamptz); test/t/030_csv_inbox.pl compares the result
 * with the CDC publisher's output byte for byte.
 */
#define PUT_LITERAL(p, s) (memcpy((p), (s), sizeof(s) - 1), (p) += sizeof(s) - 1)

static inline char *
put_bytes(char *p, const char *s, size_t len)
{
	memcpy(p, s, len);
	return p + len;
}

static char *
put_json_string(char *p, const char *s, int len)
{
	static const char hex[] = "0123456789abcdef";

	*p++ = '"';
	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c >= 0x20 && c != '"' && c != '\\')
		{
			*p++ = c;
			continue;
		}
		*p++ = '\\';
		switch (c)
		{
			case '"':
			case '\\':
				*p++ = c;
				break;
			case '\n':
				*p++ = 'n';
				break;
			case '\r':
				*p++ = 'r';
				break;
			case '\t':
				*p++ = 't';
				break;
			case '\b':
				*p++ = 'b';
				break;
			case '\f':
				*p++ = 'f';
				break;
			default:
				p[0] = 'u';
				p[1] = '0';
				p[2] = '0';
				p[3] = hex[c >> 4];
				p[4] = hex[c & 15];
				p += 5;
				break;
		}
	}
	*p++ = '"';
	return p;
}

static inline char *
put_digits(char *p, int value, int width)
{
	for (int i = width - 1; i >= 0; i--)
	{
		p[i] = '0' + value % 10;
		value /= 10;
	}
	return p + width;
}

/* "2026-11-21T10:14:58.000000Z"; other years through envelope.c */
static char *
put_timestamptz(char *p, TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (!TIMESTAMP_NOT_FINITE(ts) &&
		timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) == 0 &&
		tm.tm_year >= 0 && tm.tm_year <= 9999)
	{
		*p++ = '"';
		p = put_digits(p, tm.tm_year, 4);
		*p++ = '-';
		p = put_digits(p, tm.tm_mon, 2);
		*p++ = '-';
		p = put_digits(p, tm.tm_mday, 2);
		*p++ = 'T';
		p = put_digits(p, tm.tm_hour, 2);
		*p++ = ':';
		p = put_digits(p, tm.tm_min, 2);
		*p++ = ':';
		p = put_digits(p, tm.tm_sec, 2);
		*p++ = '.';
		p = put_digits(p, (int) fsec, 6);
		*p++ = 'Z';
		*p++ = '"';
	}
	else
	{
		StringInfoData tmp;

		initStringInfo(&tmp);
		envelope_append_timestamptz(&tmp, ts);
		p = put_bytes(p, tmp.data, tmp.len);
		pfree(tmp.data);
	}
	return p;
}

static inline char *
put_text_field(char *p, const CsvRecord *rec, int field)
{
	return put_json_string(p, rec->fields[field], rec->lengths[field]);
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
	int			keylen;
	size_t		bound;
	char	   *p;

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
	if (!v.sold_at_iso && is_relative_time(rec->fields[map->field[CSV_COL_SOLD_AT]]))
		return psprintf("relative time \"%s\" is not accepted (column \"sold_at\"): a file must give the same events whenever it is read",
						rec->fields[map->field[CSV_COL_SOLD_AT]]);

	keylen = pg_lltoa(v.sale_id, num);
	resetStringInfo(key);
	appendBinaryStringInfo(key, num, keylen);

	/* the bound: escaped text, the fixed parts, numbers, the timestamp */
	bound = keylen + strlen(v.amount) + src->before_len + src->after_len + 400;
	for (int c = 0; c < CSV_NCOLUMNS; c++)
		bound += 6 * rec->lengths[map->field[c] >= 0 ? map->field[c] : 0];
	bound += 6 * (v.country_len + (v.currency ? v.currency_len : 0));
	resetStringInfo(value);
	enlargeStringInfo(value, bound);
	p = value->data;

	PUT_LITERAL(p, "{\"op\":\"c\",\"before\":null,\"after\":{\"sale_id\":\"");
	p = put_bytes(p, num, keylen);
	PUT_LITERAL(p, "\",\"store_id\":");
	p = put_text_field(p, rec, map->field[CSV_COL_STORE_ID]);
	PUT_LITERAL(p, ",\"seller_id\":");
	p = put_text_field(p, rec, map->field[CSV_COL_SELLER_ID]);
	PUT_LITERAL(p, ",\"seller_name\":");
	p = put_text_field(p, rec, map->field[CSV_COL_SELLER_NAME]);
	PUT_LITERAL(p, ",\"city\":");
	p = put_text_field(p, rec, map->field[CSV_COL_CITY]);
	PUT_LITERAL(p, ",\"country\":");
	p = put_json_string(p, v.country, v.country_len);
	PUT_LITERAL(p, ",\"amount\":\"");
	p = put_bytes(p, v.amount, strlen(v.amount));
	PUT_LITERAL(p, "\",\"currency\":");
	if (v.currency)
		p = put_json_string(p, v.currency, v.currency_len);
	else
		PUT_LITERAL(p, "\"" DEFAULT_CURRENCY "\"");
	PUT_LITERAL(p, ",\"sold_at\":");
	p = put_timestamptz(p, v.sold_at);
	p = put_bytes(p, src->before_line, src->before_len);
	p = put_bytes(p, num, pg_lltoa(rec->line, num));
	p = put_bytes(p, src->after_line, src->after_len);
	p = put_bytes(p, num, pg_lltoa(ts_ms, num));
	*p++ = '}';
	value->len = p - value->data;
	Assert((size_t) value->len < bound);
	value->data[value->len] = '\0';
	return NULL;
}
