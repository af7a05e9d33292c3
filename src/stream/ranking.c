/*-------------------------------------------------------------------------
 *
 * ranking.c
 *	  Ranking definitions as the stream worker uses them, and what one row
 *	  contributes to one ranking: which window, group and item, how much.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "stream/event.h"
#include "stream/stream.h"
#include "stream/stream_internal.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

static void
add_field(KappaRanking *r, const char *name, int *index)
{
	for (int i = 0; i < r->nfields; i++)
	{
		if (strcmp(r->fields[i], name) == 0)
		{
			*index = i;
			return;
		}
	}
	r->fields[r->nfields] = pstrdup(name);
	r->fieldlens[r->nfields] = strlen(name);
	*index = r->nfields++;
}

static char *
getvalue_or_null(HeapTuple tuple, TupleDesc desc, int col)
{
	return SPI_getvalue(tuple, desc, col);
}

/*
 * Read every ranking (and where its windows are final) into cxt.  Runs in
 * the caller's transaction, through SPI.
 */
List *
rankings_load(MemoryContext cxt)
{
	List	   *result = NIL;
	MemoryContext old;
	bool		stateless = false;	/* a ranking without its state row */

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT r.id, r.name, r.input, "
					"       coalesce(r.source_topic, current_setting('kappa.sales_topic')), "
					"       r.group_by, r.item, r.item_label, r.measure, r.measure_field, "
					"       r.event_time_field, r.window_size, r.calendar, r.window_origin, r.time_zone, "
					"       extract(epoch FROM coalesce(r.grace, current_setting('kappa.default_grace')::interval)), "
					"       r.confirmed_only, kappa.ranking_results_topic(r.name), s.finalized_through, "
					"       r.row_memory, s.ranking IS NULL "
					"  FROM kappa.rankings r LEFT JOIN kappa.ranking_state s ON s.ranking = r.name "
					" ORDER BY r.id", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read kappa.rankings");

	old = MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		KappaRanking *r = palloc0(sizeof(KappaRanking));
		bool		isnull;
		Datum		groups;
		Datum	   *elems;
		int			nelems;
		char	   *s;
		const char *error;
		bool		calendar;
		Datum		d;

		r->id = DatumGetInt32(SPI_getbinval(tuple, desc, 1, &isnull));
		r->name = SPI_getvalue(tuple, desc, 2);
		r->results_input = strcmp(SPI_getvalue(tuple, desc, 3), "results") == 0;
		r->source_topic = SPI_getvalue(tuple, desc, 4);
		groups = SPI_getbinval(tuple, desc, 5, &isnull);
		deconstruct_array(DatumGetArrayTypeP(groups), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, NULL, &nelems);
		r->ngroups = nelems;
		r->nfields = 0;
		r->fields = palloc0(sizeof(char *) * (nelems + 4));
		r->fieldlens = palloc0(sizeof(int) * (nelems + 4));
		r->group_fields = palloc(sizeof(char *) * nelems);
		r->group_index = palloc(sizeof(int) * nelems);
		for (int g = 0; g < nelems; g++)
		{
			r->group_fields[g] = TextDatumGetCString(elems[g]);
			add_field(r, r->group_fields[g], &r->group_index[g]);
		}
		r->item_index = r->label_index = r->measure_index = -1;
		if ((s = getvalue_or_null(tuple, desc, 6)) != NULL)
		{
			r->item_field = s;
			add_field(r, s, &r->item_index);
		}
		if ((s = getvalue_or_null(tuple, desc, 7)) != NULL)
		{
			r->label_field = s;
			add_field(r, s, &r->label_index);
		}
		r->measure_sum = strcmp(SPI_getvalue(tuple, desc, 8), "sum") == 0;
		if ((s = getvalue_or_null(tuple, desc, 9)) != NULL)
		{
			r->measure_field = s;
			add_field(r, s, &r->measure_index);
		}
		r->time_field = SPI_getvalue(tuple, desc, 10);
		add_field(r, r->time_field, &r->time_index);

		calendar = DatumGetBool(SPI_getbinval(tuple, desc, 12, &isnull));
		d = SPI_getbinval(tuple, desc, 13, &isnull);

		/*
		 * (a fixed window's zone is not used: one stored before 0.1.5
		 * checked it must not stop the rankings from loading)
		 */
		if (!window_spec_init(&r->window,
							  DatumGetIntervalP(SPI_getbinval(tuple, desc, 11, &isnull)),
							  calendar, !isnull, isnull ? 0 : DatumGetTimestampTz(d),
							  calendar ? SPI_getvalue(tuple, desc, 14) : NULL, &error))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("ranking \"%s\" has an invalid window", r->name),
					 errdetail("%s", error)));
		r->grace_usecs = (int64) (strtod(SPI_getvalue(tuple, desc, 15), NULL) * USECS_PER_SEC);
		r->confirmed_only = DatumGetBool(SPI_getbinval(tuple, desc, 16, &isnull));
		r->results_topic = getvalue_or_null(tuple, desc, 17);
		d = SPI_getbinval(tuple, desc, 18, &isnull);
		r->finalized_through = isnull ? DT_NOBEGIN : DatumGetTimestampTz(d);
		r->row_memory = DatumGetBool(SPI_getbinval(tuple, desc, 19, &isnull));
		stateless |= DatumGetBool(SPI_getbinval(tuple, desc, 20, &isnull));
		result = lappend(result, r);
	}
	MemoryContextSwitchTo(old);

	/*
	 * A ranking restored from a dump comes without its state, which is not
	 * dumped (it is rebuilt from the topic, as the windows are): give it
	 * the row create_ranking() would have made, or its counters and where
	 * its windows are final would be updated nowhere.
	 */
	if (stateless &&
		SPI_execute("INSERT INTO kappa.ranking_state (ranking) "
					"SELECT r.name FROM kappa.rankings r "
					" WHERE NOT EXISTS (SELECT FROM kappa.ranking_state s WHERE s.ranking = r.name) "
					"ON CONFLICT DO NOTHING", false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not add the state of restored rankings");
	SPI_finish();
	return result;
}

/* Append s as one element of a PostgreSQL array literal, always quoted. */
void
stream_array_literal_append(StringInfo out, const char *s)
{
	appendStringInfoChar(out, '"');
	for (;;)
	{
		size_t		plain = strcspn(s, "\"\\");

		appendBinaryStringInfo(out, s, (int) plain);
		s += plain;
		if (*s == '\0')
			break;
		appendStringInfoChar(out, '\\');
		appendStringInfoChar(out, *s++);
	}
	appendStringInfoChar(out, '"');
}

static bool
span_is_value(const JsonSpan *s)
{
	return s->type == JSON_SPAN_STRING || s->type == JSON_SPAN_NUMBER ||
		s->type == JSON_SPAN_BOOL;
}

/*
 * Where an event's contributions keep their strings (group key, item,
 * label): every event computes a few contributions, and the batch adds up
 * the ones it keeps (aggregate_add copies what it stores), so a palloc'd
 * copy of each, freed only with the batch, is work and memory for nothing.
 * contribution_strings_reset() starts an event; what does not fit is
 * palloc'd as before.
 */
#define CONTRIBUTION_STRINGS_SIZE 65536

static char *cstrings = NULL;
static Size cstrings_used = 0;

void
contribution_strings_reset(void)
{
	cstrings_used = 0;
}

static char *
contribution_reserve(Size n)
{
	char	   *p;

	if (cstrings == NULL)
		cstrings = MemoryContextAlloc(TopMemoryContext, CONTRIBUTION_STRINGS_SIZE);
	if (n > CONTRIBUTION_STRINGS_SIZE - cstrings_used)
		return palloc(n);
	p = cstrings + cstrings_used;
	cstrings_used += n;
	return p;
}

/* Give back the end of the last reservation that was not used. */
static void
contribution_unreserve(char *p, Size reserved, Size used)
{
	if (p >= cstrings && p < cstrings + CONTRIBUTION_STRINGS_SIZE &&
		p + reserved == cstrings + cstrings_used)
		cstrings_used -= reserved - used;
}

/*
 * The text of a value span (string, number, boolean) as a C string, NULL
 * where json_span_text gives NULL; unescaped strings are copied as they
 * are.
 */
static char *
contribution_text(const JsonSpan *s, int *len)
{
	char	   *v;

	if (s->type == JSON_SPAN_STRING && memchr(s->p + 1, '\\', s->len - 2) == NULL)
	{
		v = contribution_reserve(s->len - 1);
		memcpy(v, s->p + 1, s->len - 2);
		v[s->len - 2] = '\0';
		*len = s->len - 2;
		return v;
	}
	if (s->type == JSON_SPAN_NUMBER || s->type == JSON_SPAN_BOOL)
	{
		v = contribution_reserve(s->len + 1);
		memcpy(v, s->p, s->len);
		v[s->len] = '\0';
		*len = s->len;
		return v;
	}
	v = json_span_text(s);
	if (v)
		*len = strlen(v);
	return v;
}

/*
 * Append value span s to the array literal at out as one quoted element;
 * out has room for 2 * s->len + 3 more bytes, as many as the text of s can
 * need escaped.  False where json_span_text gives NULL.
 */
static bool
group_element_append(char **out, const JsonSpan *s)
{
	char	   *o = *out;

	*o++ = '"';
	if (s->type == JSON_SPAN_NUMBER || s->type == JSON_SPAN_BOOL ||
		(s->type == JSON_SPAN_STRING && memchr(s->p + 1, '\\', s->len - 2) == NULL))
	{
		/* no quote or backslash in it: as it is */
		int			skip = s->type == JSON_SPAN_STRING ? 1 : 0;

		memcpy(o, s->p + skip, s->len - 2 * skip);
		o += s->len - 2 * skip;
	}
	else
	{
		/* unescaped, then escaped for the array literal */
		char	   *v = json_span_text(s);

		if (v == NULL)
			return false;
		for (; *v; v++)
		{
			if (*v == '"' || *v == '\\')
				*o++ = '\\';
			*o++ = *v;
		}
	}
	*o++ = '"';
	*out = o;
	return true;
}

/*
 * What row (a JSON object: the event's "after") contributes to ranking r.
 * False with *error when a field the ranking needs is missing or of the
 * wrong type; the caller dead-letters the event.  The strings of *c last
 * until contribution_strings_reset().
 */
bool
contribution_compute(const KappaRanking *r, const char *row, int rowlen,
					 bool strict, Contribution *c, const char **error)
{
	JsonSpan	spans[16];
	Size		room = 3;
	char	   *group;
	char	   *o;
	uint32		h;

	Assert(r->nfields <= 16);
	json_row_members(row, rowlen, r->nfields, (const char *const *) r->fields,
					 r->fieldlens, spans);

	/*
	 * A value the change left out (an unchanged TOASTed column) that no
	 * earlier version of the row filled in: counting the marker as a city
	 * or a seller would be silently wrong.  A label is only shown, so a
	 * missing one keeps the label the results have.
	 */
	if (strict)
	{
		int			unavailable = -1;

		if (json_span_is_unavailable(&spans[r->time_index]))
			unavailable = r->time_index;
		for (int g = 0; g < r->ngroups; g++)
			if (json_span_is_unavailable(&spans[r->group_index[g]]))
				unavailable = r->group_index[g];
		if (r->item_index >= 0 && json_span_is_unavailable(&spans[r->item_index]))
			unavailable = r->item_index;
		if (r->measure_sum && json_span_is_unavailable(&spans[r->measure_index]))
			unavailable = r->measure_index;
		if (unavailable >= 0)
		{
			*error = psprintf("field \"%s\" holds \"" KAPPA_UNCHANGED_TOAST_MARKER "\", an unchanged TOASTed value that the change does not carry, and no earlier version of the row has it",
							  r->fields[unavailable]);
			return false;
		}
	}

	if (!json_row_timestamp(&spans[r->time_index], &c->event_time))
	{
		*error = spans[r->time_index].type == JSON_SPAN_MISSING ?
			"the event time field is missing" :
			"the event time is not an ISO-8601 time with a zone";
		return false;
	}
	if (!window_for(&r->window, c->event_time, &c->window_start, &c->window_end))
	{
		*error = "the event time has no window (infinite or out of range)";
		return false;
	}

	/*
	 * The group values as an array literal, every element quoted: escaping
	 * at most doubles a value's text, which is never longer than its JSON.
	 */
	for (int g = 0; g < r->ngroups; g++)
		room += 2 * (Size) spans[r->group_index[g]].len + 3;
	o = group = contribution_reserve(room);
	*o++ = '{';
	for (int g = 0; g < r->ngroups; g++)
	{
		JsonSpan   *s = &spans[r->group_index[g]];

		if (g > 0)
			*o++ = ',';
		if (!span_is_value(s) || !group_element_append(&o, s))
		{
			*error = s->type == JSON_SPAN_MISSING ? "a group-by field is missing" :
				"a group-by field is null or not a scalar";
			return false;
		}
	}
	*o++ = '}';
	*o = '\0';
	c->group_len = (int) (o - group);
	contribution_unreserve(group, room, c->group_len + 1);
	if (strict && c->group_len > KAPPA_MAX_GROUP_BYTES)
	{
		*error = "the group-by values are longer than " CppAsString2(KAPPA_MAX_GROUP_BYTES) " bytes together";
		return false;
	}
	c->group_key = group;

	c->item = "";
	c->item_len = 0;
	c->label = NULL;
	if (r->item_index >= 0)
	{
		JsonSpan   *s = &spans[r->item_index];

		if (!span_is_value(s) || (c->item = contribution_text(s, &c->item_len)) == NULL)
		{
			*error = "the item field is missing, null or not a scalar";
			return false;
		}
		if (strict && c->item_len > KAPPA_MAX_GROUP_BYTES)
		{
			*error = "the item is longer than " CppAsString2(KAPPA_MAX_GROUP_BYTES) " bytes";
			return false;
		}
	}
	if (r->label_index >= 0 && span_is_value(&spans[r->label_index]) &&
		!json_span_is_unavailable(&spans[r->label_index]))
	{
		int			len;

		c->label = contribution_text(&spans[r->label_index], &len);
	}

	/* what the batch's sums are found by (aggregate_add) */
	h = hash_bytes((const unsigned char *) c->group_key, c->group_len);
	if (c->item_len > 0)
		h = hash_combine(h, hash_bytes((const unsigned char *) c->item, c->item_len));
	c->key_hash = h;

	if (r->measure_sum)
	{
#define MEASURE_TOO_LARGE "the measure has more than " CppAsString2(KAPPA_MAX_MEASURE_INTEGER_DIGITS) \
			" digits before the point or more than " CppAsString2(KAPPA_MAX_MEASURE_SCALE) " after it"

		if (!json_row_decimal(&spans[r->measure_index], &c->value))
		{
			/* (a decimal past 36 digits, or 36 after the point, is refused too) */
			*error = spans[r->measure_index].type == JSON_SPAN_MISSING ?
				"the measure field is missing" :
				decimal_spelling(&spans[r->measure_index]) ? MEASURE_TOO_LARGE :
				"the measure is not a decimal number";
			return false;
		}

		/*
		 * Totals are kept in 36 digits at the largest scale of what they
		 * sum: one value with 40 digits after the point would make every
		 * total of its group overflow, and the batch fail again at each
		 * restart.  Trailing zeros do not count.  Not for what a row
		 * counted before (strict false): it was accepted then, and must be
		 * taken out as it went in.
		 */
		while (c->value.scale > KAPPA_MAX_MEASURE_SCALE && c->value.mantissa % 10 == 0)
		{
			c->value.mantissa /= 10;
			c->value.scale--;
		}
		if (strict &&
			!decimal_fits(&c->value, KAPPA_MAX_MEASURE_INTEGER_DIGITS, KAPPA_MAX_MEASURE_SCALE))
		{
			*error = MEASURE_TOO_LARGE;
			return false;
		}
	}
	else
	{
		c->value.mantissa = 1;
		c->value.scale = 0;
	}
	c->valid = true;
	return true;
}

/* Same window, group, item and value? */
bool
contribution_equal(const Contribution *a, const Contribution *b)
{
	return a->window_start == b->window_start &&
		a->group_len == b->group_len && a->item_len == b->item_len &&
		memcmp(a->group_key, b->group_key, a->group_len) == 0 &&
		memcmp(a->item, b->item, a->item_len) == 0 &&
		decimal_equal(&a->value, &b->value) &&
		((a->label == NULL && b->label == NULL) ||
		 (a->label && b->label && strcmp(a->label, b->label) == 0));
}
