/*-------------------------------------------------------------------------
 *
 * payments.c
 *	  Payment confirmations consumed into kappa.payments (the latest status
 *	  of each sale) and kappa.payment_history (every confirmation once).
 *
 * The latest status is the one with the latest confirmation time, whatever
 * order the confirmations arrive in; a confirmation seen twice (overlapping
 * SOAP polls, a replayed page) is recognised by payment id, status and time
 * and changes nothing.  Confirmed-only rankings ask here whether a sale
 * counts (src/stream/stream_worker.c).
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
#include "utils/timestamp.h"

typedef struct PaymentEntry
{
	char	   *sale_id;		/* the key: any length a message key has */
	PaymentState state;
	bool		loaded;
} PaymentEntry;

typedef struct HistoryRow
{
	char	   *payment_id;
	char	   *status;
	char	   *sale_id;
	char	   *amount;
	char	   *currency;
	TimestampTz confirmed_at;
	char	   *source;
} HistoryRow;

static HTAB *payment_table = NULL;
static MemoryContext payment_cxt = NULL;
static List *history = NIL;

/* The table is keyed by a pointer to the sale id; these look through it. */
static uint32
sale_id_hash(const void *key, Size keysize)
{
	const char *id = *(const char *const *) key;

	return hash_bytes((const unsigned char *) id, (int) strlen(id));
}

static int
sale_id_match(const void *a, const void *b, Size keysize)
{
	return strcmp(*(const char *const *) a, *(const char *const *) b);
}

void
payments_reset(MemoryContext cxt)
{
	HASHCTL		ctl;

	payment_cxt = cxt;
	history = NIL;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(char *);
	ctl.entrysize = sizeof(PaymentEntry);
	ctl.hash = sale_id_hash;
	ctl.match = sale_id_match;
	ctl.hcxt = cxt;
	payment_table = hash_create("pg_kappa batch payments", 1024, &ctl,
								HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

void
payments_want(const char *sale_id)
{
	PaymentEntry *e;
	bool		found;

	e = hash_search(payment_table, &sale_id, HASH_ENTER, &found);
	if (!found)
	{
		e->sale_id = MemoryContextStrdup(payment_cxt, sale_id);
		memset(&e->state, 0, sizeof(PaymentState));
		e->state.sale_id = e->sale_id;
		e->loaded = false;
	}
}

PaymentState *
payments_get(const char *sale_id)
{
	PaymentEntry *e;

	e = hash_search(payment_table, &sale_id, HASH_FIND, NULL);
	return e ? &e->state : NULL;
}

void
payments_load(void)
{
	HASH_SEQ_STATUS status;
	PaymentEntry *e;
	ArrayBuildState *ids = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	int			n = 0;
	Oid			types[1] = {TEXTARRAYOID};
	Datum		args[1];
	MemoryContext old;

	hash_seq_init(&status, payment_table);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		if (!e->loaded)
		{
			accumArrayResult(ids, CStringGetTextDatum(e->sale_id), false, TEXTOID,
							 CurrentMemoryContext);
			e->loaded = true;
			n++;
		}
	}
	if (n == 0)
		return;
	args[0] = makeArrayResult(ids, CurrentMemoryContext);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT p.sale_id, p.payment_id, p.status, p.amount, p.currency, p.confirmed_at "
							  "  FROM (SELECT id FROM unnest($1) AS k(id) ORDER BY id COLLATE \"C\") k, "
							  "       LATERAL (SELECT * FROM kappa.payments x WHERE x.sale_id = k.id FOR UPDATE) p",
							  1, types, args, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read kappa.payments");
	old = MemoryContextSwitchTo(payment_cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		PaymentState *s = payments_get(SPI_getvalue(tuple, desc, 1));
		bool		isnull;

		if (s == NULL)
			continue;
		s->known = s->in_db = true;
		s->payment_id = SPI_getvalue(tuple, desc, 2);
		s->status = SPI_getvalue(tuple, desc, 3);
		s->amount = SPI_getvalue(tuple, desc, 4);
		s->currency = SPI_getvalue(tuple, desc, 5);
		s->confirmed_at = DatumGetTimestampTz(SPI_getbinval(tuple, desc, 6, &isnull));
	}
	MemoryContextSwitchTo(old);
	SPI_finish();
}

static char *
member_text(const JsonSpan *s)
{
	if (s->type != JSON_SPAN_STRING && s->type != JSON_SPAN_NUMBER)
		return NULL;
	return json_span_text(s);
}

/* of one confirmation time: a refund follows a confirmation, which ends a decline */
static int
status_rank(const char *status)
{
	return status[0] == 'R' ? 2 : status[0] == 'C' ? 1 : 0;
}

/*
 * Does confirmation h replace the sale's state s?  The latest confirmation
 * time wins; of one time, the status ranked higher, then the greater
 * payment id.  The state is then one of the confirmations seen, whatever
 * the order they came in, and one seen again changes nothing.
 */
static bool
supersedes(const HistoryRow *h, const PaymentState *s)
{
	int			c;

	if (h->confirmed_at != s->confirmed_at)
		return h->confirmed_at > s->confirmed_at;
	if ((c = status_rank(h->status) - status_rank(s->status)) != 0)
		return c > 0;
	return strcmp(h->payment_id, s->payment_id) > 0;
}

/*
 * Apply one payment-confirmations message, whose message key is key.
 * *state is the sale's payment state (wanted and loaded beforehand through
 * the key), *changed says whether its status changed.  A sale_id other
 * than the key is an error: the caller counts the sale the key names.
 */
bool
payments_record(const char *raw, size_t len, const char *source_topic, const char *key,
				PaymentState **state, TimestampTz *event_time, bool *changed,
				const char **error)
{
	static const char *const names[] = {"payment_id", "sale_id", "status", "amount", "currency", "confirmed_at"};
	static const int lens[] = {10, 7, 6, 6, 8, 12};
	KappaChange change;
	JsonSpan	f[6];
	HistoryRow *h;
	PaymentState *s;
	KappaDecimal amount;
	MemoryContext old;

	*changed = false;
	if (!change_parse(raw, len, &change, error))
		return false;
	if (change.after.type != JSON_SPAN_OBJECT)
	{
		*error = "a payment confirmation needs \"after\"";
		return false;
	}
	json_object_members(change.after.p, change.after.len, 6, names, lens, f);

	old = MemoryContextSwitchTo(payment_cxt);
	h = palloc0(sizeof(HistoryRow));
	h->payment_id = member_text(&f[0]);
	h->sale_id = member_text(&f[1]);
	h->status = member_text(&f[2]);
	h->currency = member_text(&f[4]);
	h->source = pstrdup(source_topic);
	MemoryContextSwitchTo(old);
	if (h->payment_id == NULL || h->sale_id == NULL || h->status == NULL)
	{
		*error = "a payment confirmation needs payment_id, sale_id and status";
		return false;
	}
	if (strcmp(h->status, "CONFIRMED") != 0 && strcmp(h->status, "DECLINED") != 0 &&
		strcmp(h->status, "REFUNDED") != 0)
	{
		*error = "unknown payment status (expected CONFIRMED, DECLINED or REFUNDED)";
		return false;
	}
	if (f[3].type != JSON_SPAN_MISSING && f[3].type != JSON_SPAN_NULL)
	{
		StringInfoData buf;

		if (!decimal_parse(&f[3], &amount))
		{
			*error = decimal_spelling(&f[3]) ?
				"the payment amount is a decimal of more than 36 significant digits or more than 36 after the point" :
				"the payment amount is not a decimal number";
			return false;
		}
		initStringInfo(&buf);
		decimal_append(&buf, &amount);
		h->amount = MemoryContextStrdup(payment_cxt, buf.data);
	}
	if (!timestamp_parse(&f[5], &h->confirmed_at))
	{
		*error = "confirmed_at is missing or not an ISO-8601 time with a zone";
		return false;
	}
	*event_time = h->confirmed_at;

	/* the key chose the sale whose rankings count it */
	if (strcmp(h->sale_id, key) != 0 || (s = payments_get(key)) == NULL)
	{
		*error = "the sale id of the confirmation differs from the message key";
		return false;
	}
	*state = s;
	history = lappend(history, h);

	if (!s->known || supersedes(h, s))
	{
		*changed = !s->known || strcmp(s->status, h->status) != 0;
		s->known = true;
		s->dirty = true;
		s->payment_id = h->payment_id;
		s->status = h->status;
		s->amount = h->amount;
		s->currency = h->currency;
		s->confirmed_at = h->confirmed_at;
	}
	return true;
}

static Datum
text_array(List *values)
{
	ArrayBuildState *a = initArrayResult(TEXTOID, CurrentMemoryContext, false);
	ListCell   *lc;

	foreach(lc, values)
	{
		char	   *v = lfirst(lc);

		accumArrayResult(a, v ? CStringGetTextDatum(v) : (Datum) 0, v == NULL,
						 TEXTOID, CurrentMemoryContext);
	}
	return makeArrayResult(a, CurrentMemoryContext);
}

static char *
timestamp_text(TimestampTz t)
{
	return DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(t)));
}

void
payments_flush(void)
{
	HASH_SEQ_STATUS status;
	PaymentEntry *e;
	List	   *cols[7] = {NIL};
	Oid			types[7];
	Datum		args[7];
	ListCell   *lc;

	for (int c = 0; c < 7; c++)
		types[c] = TEXTARRAYOID;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	if (history != NIL)
	{
		foreach(lc, history)
		{
			HistoryRow *h = lfirst(lc);

			cols[0] = lappend(cols[0], h->payment_id);
			cols[1] = lappend(cols[1], h->status);
			cols[2] = lappend(cols[2], h->sale_id);
			cols[3] = lappend(cols[3], h->amount);
			cols[4] = lappend(cols[4], h->currency);
			cols[5] = lappend(cols[5], timestamp_text(h->confirmed_at));
			cols[6] = lappend(cols[6], h->source);
		}
		for (int c = 0; c < 7; c++)
			args[c] = text_array(cols[c]);
		if (SPI_execute_with_args("INSERT INTO kappa.payment_history "
								  "       (payment_id, status, sale_id, amount, currency, confirmed_at, source) "
								  "SELECT p, s, i, a::numeric, c, t::timestamptz, o "
								  "  FROM unnest($1, $2, $3, $4, $5, $6, $7) AS u(p, s, i, a, c, t, o) "
								  "ON CONFLICT DO NOTHING",
								  7, types, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write kappa.payment_history");
	}

	for (int c = 0; c < 7; c++)
		cols[c] = NIL;
	hash_seq_init(&status, payment_table);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		PaymentState *s = &e->state;

		if (!s->dirty)
			continue;
		cols[0] = lappend(cols[0], s->sale_id);
		cols[1] = lappend(cols[1], s->payment_id);
		cols[2] = lappend(cols[2], s->status);
		cols[3] = lappend(cols[3], s->amount);
		cols[4] = lappend(cols[4], s->currency);
		cols[5] = lappend(cols[5], timestamp_text(s->confirmed_at));
	}
	if (cols[0] != NIL)
	{
		for (int c = 0; c < 6; c++)
			args[c] = text_array(cols[c]);
		if (SPI_execute_with_args("INSERT INTO kappa.payments AS p "
								  "       (sale_id, payment_id, status, amount, currency, confirmed_at) "
								  "SELECT i, p, s, a::numeric, c, t::timestamptz "
								  "  FROM unnest($1, $2, $3, $4, $5, $6) AS u(i, p, s, a, c, t) "
								  " ORDER BY i COLLATE \"C\" "
								  "ON CONFLICT (sale_id) DO UPDATE "
								  "   SET payment_id = EXCLUDED.payment_id, status = EXCLUDED.status, "
								  "       amount = EXCLUDED.amount, currency = EXCLUDED.currency, "
								  "       confirmed_at = EXCLUDED.confirmed_at, updated_at = now()",
								  6, types, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not write kappa.payments");
	}
	SPI_finish();
	history = NIL;
}
