/*-------------------------------------------------------------------------
 *
 * soap_poller.c
 *	  The SOAP payment poller: a background worker that calls the legacy
 *	  payment service's GetPaymentConfirmations every
 *	  kappa.soap_poll_interval and produces each confirmation to the
 *	  payment-confirmations topic.  Also the kappa.soap_* settings.
 *
 * A poll asks for the confirmations since the endpoint's watermark (table
 * kappa.soap_state) and pages through NextPageToken.  Each page is
 * produced to Kafka and, once Kafka has acknowledged every message of it,
 * one transaction stores the page's dead letters and the progress: the
 * next page token, or, after the last page, the new watermark (the latest
 * ConfirmedAt seen) with the ids of the confirmations at exactly that
 * time.  The watermark is inclusive, so a confirmation that arrives later
 * with the same ConfirmedAt is not missed; the stored ids let the next
 * poll skip the ones already sent.  A crash between Kafka's acknowledgement
 * and the commit sends that page again: consumers drop such replays by
 * payment_id (docs/soap-payments.md).
 *
 * HTTP errors, timeouts, SOAP Faults, unreadable responses and Kafka
 * failures end the poll with an error in kappa.stat_sources and a retry
 * after an exponential backoff (1 s doubling up to kappa.soap_max_backoff);
 * the worker stays up.  Bad confirmations go to kappa.dead_letters and the
 * page goes on.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "cdc/envelope.h"
#include "executor/spi.h"
#include "kafka/kafka.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "sources/soap.h"
#include "sources/sources.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

bool		kappa_soap_enabled = true;
char	   *kappa_soap_url = NULL;
char	   *kappa_soap_username = NULL;
int			kappa_soap_poll_interval = 300000;
int			kappa_soap_timeout = 30000;
int			kappa_soap_page_size = 500;
int			kappa_soap_max_response_size = 16384;
char	   *kappa_soap_ca_file = NULL;
bool		kappa_soap_allow_plain_http = false;
int			kappa_soap_max_backoff = 300;

#define SOAP_MAX_TOKEN_LEN		4096
#define SOAP_MAX_PAGES_PER_POLL 10000	/* a service whose tokens never end */
#define SOAP_FUTURE_TOLERANCE_S (24 * 3600) /* ConfirmedAt ahead of our clock */
#define SOAP_MAX_REFUSED_REMEMBERED 10000
#define SOAP_MAX_SEEN_REMEMBERED 1000000 /* confirmations of one run of pages */
#define SOAP_FIRST_BACKOFF_MS	1000
#define SOAP_SERVE_EVERY		1000	/* messages between delivery-report polls */

/* ---------------------------------------------------------------------
 * Settings
 * ---------------------------------------------------------------------
 */
static bool
check_soap_ca_file(char **newval, void **extra, GucSource source)
{
	return kappa_check_server_file(*newval, "kappa.soap_ca_file");
}

static bool
check_soap_url(char **newval, void **extra, GucSource source)
{
	const char *why;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (!soap_url_is_valid(*newval, &why))
	{
		/* not quoted: a refused URL may hold a password */
		GUC_check_errmsg("invalid value for parameter \"kappa.soap_url\"");
		GUC_check_errdetail("%s", why);
		return false;
	}
	return true;
}

void
soap_define_gucs(void)
{
	DefineCustomBoolVariable("kappa.soap_enabled",
							 "Runs the SOAP payment poller.",
							 "The poller idles while kappa.soap_url is empty.",
							 &kappa_soap_enabled,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("kappa.soap_url",
							   "URL of the payment-confirmation SOAP service (http:// or https://).",
							   "Empty: the poller idles.  Credentials do not belong in the URL.",
							   &kappa_soap_url,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_soap_url, NULL, NULL);

	DefineCustomStringVariable("kappa.soap_username",
							   "User name of the WS-Security UsernameToken sent to the SOAP service.",
							   "The password goes in kappa.secrets_file as \"soap.password = ...\".  Empty: no WS-Security header.",
							   &kappa_soap_username,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.soap_poll_interval",
							"Time between the starts of two polls of the SOAP service.",
							NULL,
							&kappa_soap_poll_interval,
							300000, 100, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.soap_timeout",
							"Longest time one SOAP request may take, connection included.",
							NULL,
							&kappa_soap_timeout,
							30000, 100, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.soap_page_size",
							"Number of confirmations asked for per SOAP request (PageSize).",
							NULL,
							&kappa_soap_page_size,
							500, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.soap_max_response_size",
							"Largest SOAP response accepted; larger ones are an error.",
							NULL,
							&kappa_soap_max_response_size,
							16384, 1, 524288,
							PGC_SIGHUP, GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomStringVariable("kappa.soap_ca_file",
							   "File of CA certificates that sign the SOAP service's TLS certificate.",
							   "Empty: the system's CA store.  Certificates are always verified.",
							   &kappa_soap_ca_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_soap_ca_file, NULL, NULL);

	DefineCustomBoolVariable("kappa.soap_allow_plain_http",
							 "Sends the WS-Security password over http:// to another machine.",
							 "Off: with kappa.soap_username set, an http:// kappa.soap_url must name this machine (localhost, a loopback address); use https:// otherwise.",
							 &kappa_soap_allow_plain_http,
							 false,
							 PGC_SIGHUP,
							 GUC_SUPERUSER_ONLY,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.soap_max_backoff",
							"Longest wait before polling again after a failed SOAP poll.",
							"The wait starts at one second and doubles with each failure in a row.",
							&kappa_soap_max_backoff,
							300, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
}

/* ---------------------------------------------------------------------
 * The worker's state
 * ---------------------------------------------------------------------
 */

/* An endpoint's watermark (kappa.soap_state) and the poll under way. */
typedef struct SoapPollState
{
	char	   *endpoint;
	TimestampTz since;			/* the watermark: inclusive */
	char	  **since_ids;		/* payment ids sent at exactly since, sorted */
	int			nsince_ids;
	char	   *page_token;		/* the page to ask for; NULL: the first */
	int			page_number;	/* within this run of the poll, for the status */
	List	   *tokens_asked;	/* every page token asked for in this run */
	/*
	 * The latest ConfirmedAt seen in this poll that is no later than this
	 * server's clock when the page was asked for (clock_cap), and the ids
	 * at that time
	 */
	TimestampTz clock_cap;
	bool		has_max;
	TimestampTz max_at;
	char	  **max_ids;
	int			nmax_ids;
	int			max_ids_size;
} SoapPollState;

typedef struct SoapWorker
{
	SourceStats *stats;
	KafkaClient *producer;
	WaitEventSet *waitset;
	MemoryContext poll_cxt;		/* one poll: state, password */
	MemoryContext page_cxt;		/* one page: response, document, messages */
	char	   *password;		/* in poll_cxt; wiped after each poll */
	int			backoff_ms;		/* 0: the last poll succeeded */
	int			failures;		/* polls failed in a row */
	TimestampTz last_poll_start;	/* 0: poll at once */
	TimestampTz retry_at;		/* when backing off */

	/*
	 * The page tokens a poll cut short by an error had asked for, carried
	 * into the attempts that go on from its stored token (same endpoint
	 * and watermark) until a poll completes: a cycle of tokens is then
	 * found before any of its pages is sent again.  In carry_cxt, with:
	 */
	MemoryContext carry_cxt;
	char	   *carry_endpoint;
	TimestampTz carry_since;
	List	   *carry_tokens;

	/*
	 * the confirmations sent since the watermark in this run of pages (a
	 * hash of each one's content): a page with nothing new on it is a
	 * service whose tokens change but do not advance.
	 */
	HTAB	   *carry_seen;

	/*
	 * Confirmations already made dead letters ("endpoint|hash of the
	 * content", the latest last): one dated in the future stays above the
	 * watermark, and one without a PaymentId at the watermark, which is
	 * inclusive, cannot be told from the others sent at it, so each poll
	 * gets them again.  Kept for the process's life, at most
	 * SOAP_MAX_REFUSED_REMEMBERED.
	 */
	List	   *refused;
} SoapWorker;

static SoapWorker soap;

/*
 * Delivery reports of a page.  Static, not on a stack frame: after an
 * error, reports of messages still in flight arrive later.
 */
static KafkaDelivery soap_delivery;

static SPIPlanPtr save_state_plan = NULL;

/* ---------------------------------------------------------------------
 * Kafka
 * ---------------------------------------------------------------------
 */
static void
rebuild_waitset(void)
{
	if (soap.waitset)
		FreeWaitEventSet(soap.waitset);
	soap.waitset = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(soap.waitset, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(soap.waitset, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	if (soap.producer)
		AddWaitEventToSet(soap.waitset, WL_SOCKET_READABLE,
						  soap.producer->wake_fd[0], NULL, NULL);
}

static void
drop_producer(void)
{
	if (soap.producer == NULL)
		return;
	kafka_client_destroy(soap.producer, 0);
	soap.producer = NULL;
	/* its reports will never come: nothing is pending any more */
	memset(&soap_delivery, 0, sizeof(soap_delivery));
	rebuild_waitset();
}

static void
ensure_producer(void)
{
	rd_kafka_conf_t *conf;

	if (soap.producer && soap.producer->fatal)
		drop_producer();
	if (soap.producer)
		return;
	conf = kafka_conf_for(RD_KAFKA_PRODUCER, "soap");
	soap.producer = kafka_client_create(conf, RD_KAFKA_PRODUCER, "soap", &soap);
	rebuild_waitset();
}

/* ---------------------------------------------------------------------
 * kappa.soap_state
 * ---------------------------------------------------------------------
 */
static int
compare_strings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Sort and drop duplicates; returns the new count. */
static int
sort_unique(char **ids, int n)
{
	int			out = 0;

	if (n <= 1)
		return n;
	qsort(ids, n, sizeof(char *), compare_strings);
	for (int i = 0; i < n; i++)
		if (out == 0 || strcmp(ids[out - 1], ids[i]) != 0)
			ids[out++] = ids[i];
	return out;
}

/* A text[] from SPI, copied into the current memory context. */
static char **
copy_text_array(Datum value, bool isnull, int *n)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			count;
	char	  **result;
	int			out = 0;

	*n = 0;
	if (isnull)
		return NULL;
	arr = DatumGetArrayTypeP(value);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &count);
	if (count == 0)
		return NULL;
	result = palloc(sizeof(char *) * count);
	for (int i = 0; i < count; i++)
		if (!nulls[i])
			result[out++] = TextDatumGetCString(elems[i]);
	*n = sort_unique(result, out);
	return result;
}

static Datum
make_text_array(char **ids, int n)
{
	Datum	   *elems;

	if (n == 0)
		return PointerGetDatum(construct_empty_array(TEXTOID));
	elems = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
		elems[i] = CStringGetTextDatum(ids[i]);
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

static void
begin_transaction(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
commit_transaction(MemoryContext caller)
{
	PopActiveSnapshot();
	CommitTransactionCommand();
	/* the commit leaves TopMemoryContext current */
	MemoryContextSwitchTo(caller);
}

/*
 * Read the endpoint's watermark (creating its row on first use) and note
 * the start of a poll.  Runs its own short transaction.
 */
static void
load_state(SoapPollState *ps)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	begin_transaction();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	args[0] = CStringGetTextDatum(ps->endpoint);
	if (SPI_execute_with_args("INSERT INTO kappa.soap_state AS s (endpoint, last_poll_at) "
							  "VALUES ($1, now()) "
							  "ON CONFLICT (endpoint) DO UPDATE SET last_poll_at = now() "
							  "RETURNING since, since_payment_ids, page_token, "
							  "poll_max_confirmed_at, poll_max_payment_ids",
							  1, argtypes, args, NULL, false, 1) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not read kappa.soap_state");

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	MemoryContextSwitchTo(caller);
	ps->since = DatumGetTimestampTz(SPI_getbinval(tup, desc, 1, &isnull));
	d = SPI_getbinval(tup, desc, 2, &isnull);
	ps->since_ids = copy_text_array(d, isnull, &ps->nsince_ids);
	d = SPI_getbinval(tup, desc, 3, &isnull);
	ps->page_token = isnull ? NULL : TextDatumGetCString(d);
	d = SPI_getbinval(tup, desc, 4, &isnull);
	ps->has_max = !isnull;
	ps->max_at = isnull ? 0 : DatumGetTimestampTz(d);
	d = SPI_getbinval(tup, desc, 5, &isnull);
	ps->max_ids = copy_text_array(d, isnull, &ps->nmax_ids);
	ps->max_ids_size = ps->nmax_ids;

	SPI_finish();
	commit_transaction(caller);
}

/*
 * The page is in Kafka: store its dead letters and the progress in one
 * transaction.  next_token NULL: the poll is complete, the watermark moves
 * to the latest ConfirmedAt seen.
 */
static void
save_progress(SoapPollState *ps, const char *next_token, List *dead_letters)
{
	MemoryContext caller = CurrentMemoryContext;
	Oid			argtypes[6] = {TEXTOID, TIMESTAMPTZOID, TEXTARRAYOID, TEXTOID,
	TIMESTAMPTZOID, TEXTARRAYOID};
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	ListCell   *lc;

	begin_transaction();
	foreach(lc, dead_letters)
		kappa_dead_letter((KappaDeadLetter *) lfirst(lc));

	args[0] = CStringGetTextDatum(ps->endpoint);
	ps->nmax_ids = sort_unique(ps->max_ids, ps->nmax_ids);
	if (next_token)
	{
		/* mid-poll: the watermark stays, the poll's maximum so far is kept */
		args[1] = TimestampTzGetDatum(ps->since);
		args[2] = make_text_array(ps->since_ids, ps->nsince_ids);
		args[3] = CStringGetTextDatum(next_token);
		args[4] = TimestampTzGetDatum(ps->max_at);
		nulls[4] = ps->has_max ? ' ' : 'n';
		args[5] = make_text_array(ps->max_ids, ps->nmax_ids);
	}
	else
	{
		TimestampTz since = ps->since;
		char	  **ids = ps->since_ids;
		int			nids = ps->nsince_ids;

		if (ps->has_max && ps->max_at > ps->since)
		{
			since = ps->max_at;
			ids = ps->max_ids;
			nids = ps->nmax_ids;
		}
		else if (ps->has_max && ps->max_at == ps->since && ps->nmax_ids > 0)
		{
			ids = palloc(sizeof(char *) * (ps->nsince_ids + ps->nmax_ids));
			if (ps->nsince_ids > 0)
				memcpy(ids, ps->since_ids, sizeof(char *) * ps->nsince_ids);
			memcpy(ids + ps->nsince_ids, ps->max_ids, sizeof(char *) * ps->nmax_ids);
			nids = sort_unique(ids, ps->nsince_ids + ps->nmax_ids);
		}
		args[1] = TimestampTzGetDatum(since);
		args[2] = make_text_array(ids, nids);
		nulls[3] = 'n';
		nulls[4] = 'n';
		args[5] = make_text_array(NULL, 0);
	}

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (save_state_plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare("INSERT INTO kappa.soap_state AS s "
									   "(endpoint, since, since_payment_ids, page_token, "
									   " poll_max_confirmed_at, poll_max_payment_ids, "
									   " last_poll_at, last_success_at) "
									   "VALUES ($1, $2, $3, $4, $5, $6, now(), now()) "
									   "ON CONFLICT (endpoint) DO UPDATE SET "
									   " since = EXCLUDED.since, "
									   " since_payment_ids = EXCLUDED.since_payment_ids, "
									   " page_token = EXCLUDED.page_token, "
									   " poll_max_confirmed_at = EXCLUDED.poll_max_confirmed_at, "
									   " poll_max_payment_ids = EXCLUDED.poll_max_payment_ids, "
									   " last_success_at = now()",
									   6, argtypes);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the kappa.soap_state update");
		save_state_plan = plan;
	}
	if (SPI_execute_plan(save_state_plan, args, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not update kappa.soap_state");
	SPI_finish();
	commit_transaction(caller);
}

/* ---------------------------------------------------------------------
 * One poll
 * ---------------------------------------------------------------------
 */

/* Was this confirmation sent by an earlier poll (at exactly the watermark)? */
static bool
already_sent(SoapPollState *ps, TimestampTz t, const char *payment_id)
{
	if (t != ps->since || payment_id == NULL || ps->nsince_ids == 0)
		return false;
	return bsearch(&payment_id, ps->since_ids, ps->nsince_ids, sizeof(char *),
				   compare_strings) != NULL;
}

/* Keep the latest ConfirmedAt of the poll and the payment ids at it. */
static void
note_confirmed_at(SoapPollState *ps, TimestampTz t, const char *payment_id)
{
	MemoryContext old;

	/*
	 * A time ahead of our clock (a service node whose clock is fast) does
	 * not move the watermark: it would pass confirmations still to be made
	 * or not yet visible, between the newest real one and that time (or
	 * our clock, were it stopped there).  Such a confirmation is asked for
	 * again, and sent again, until our clock reaches it (the stream worker
	 * drops the repeats).
	 */
	if (t > ps->clock_cap)
		return;
	if (!ps->has_max || t > ps->max_at)
	{
		ps->has_max = true;
		ps->max_at = t;
		ps->nmax_ids = 0;
	}
	else if (t < ps->max_at)
		return;
	if (payment_id == NULL || payment_id[0] == '\0')
		return;

	old = MemoryContextSwitchTo(soap.poll_cxt);
	if (ps->nmax_ids == ps->max_ids_size)
	{
		ps->max_ids_size = Max(16, ps->max_ids_size * 2);
		ps->max_ids = ps->max_ids ?
			repalloc(ps->max_ids, sizeof(char *) * ps->max_ids_size) :
			palloc(sizeof(char *) * ps->max_ids_size);
	}
	ps->max_ids[ps->nmax_ids++] = pstrdup(payment_id);
	MemoryContextSwitchTo(old);
}

/* Is token one of tokens (strings)? */
static bool
list_member_token(List *tokens, const char *token)
{
	ListCell   *lc;

	foreach(lc, tokens)
	{
		if (strcmp((char *) lfirst(lc), token) == 0)
			return true;
	}
	return false;
}

/*
 * The response as a page of confirmations.  A SOAP Fault (with HTTP 200
 * or, as SOAP 1.1 has it, 500) is raised as "soap fault: ..."; any other
 * status outside 2xx as an HTTP error.
 */
static SoapPage *
read_page(const SoapResponse *resp, const char *url)
{
	SoapPage   *volatile page = NULL;

	if (resp->http_status >= 200 && resp->http_status < 300)
		page = soap_parse_response(resp->body, resp->body_len, false);
	else
	{
		MemoryContext cxt = CurrentMemoryContext;

		/* the parser only allocates memory: its error can be dropped */
		if (resp->body_len > 0)
		{
			PG_TRY();
			{
				page = soap_parse_response(resp->body, resp->body_len, false);
			}
			PG_CATCH();
			{
				MemoryContextSwitchTo(cxt);
				FlushErrorState();
				page = NULL;
			}
			PG_END_TRY();
		}
		if (page == NULL || !page->is_fault)
			soap_raise_http_error(resp, url);
	}
	if (page->is_fault)
		soap_raise_fault(page, resp, url);
	return page;
}

/* A confirmation's content, as the service sent it, in 64 bits. */
static uint64
confirmation_hash(const SoapConfirmation *c)
{
	const char *fields[6] = {c->payment_id, c->sale_id, c->status, c->amount, c->currency,
	c->confirmed_at};
	uint64		h = 0;

	for (int i = 0; i < 6; i++)
		h = hash_bytes_extended((const unsigned char *) (fields[i] ? fields[i] : "\x1e"),
								fields[i] ? strlen(fields[i]) : 1, h + i);
	return h;
}

static void
carry_forget(void)
{
	MemoryContextReset(soap.carry_cxt);
	soap.carry_endpoint = NULL;
	soap.carry_tokens = NIL;
	soap.carry_seen = NULL;
}

/* Is what is carried this run's (endpoint and watermark)? */
static bool
carry_is_for(SoapPollState *ps)
{
	return soap.carry_endpoint != NULL && strcmp(soap.carry_endpoint, ps->endpoint) == 0 &&
		soap.carry_since == ps->since;
}

/* Make what is carried this run's: kept if it is, else begun with its tokens so far. */
static void
carry_claim(SoapPollState *ps)
{
	MemoryContext old;
	ListCell   *lc;

	if (carry_is_for(ps))
		return;
	carry_forget();
	old = MemoryContextSwitchTo(soap.carry_cxt);
	soap.carry_endpoint = pstrdup(ps->endpoint);
	soap.carry_since = ps->since;
	foreach(lc, ps->tokens_asked)
		soap.carry_tokens = lappend(soap.carry_tokens, pstrdup(lfirst(lc)));
	MemoryContextSwitchTo(old);
}

/*
 * A page is stored as done and its next token is to be asked for: an error
 * from here on carries it with the tokens before it.  At most
 * SOAP_MAX_PAGES_PER_POLL are carried (a cycle longer than that is found by
 * the page limit; a poll that never ends does not grow the list).
 */
static void
carry_remember(SoapPollState *ps)
{
	MemoryContext old;

	carry_claim(ps);
	if (list_length(soap.carry_tokens) >= SOAP_MAX_PAGES_PER_POLL ||
		list_member_token(soap.carry_tokens, ps->page_token))
		return;
	old = MemoryContextSwitchTo(soap.carry_cxt);
	soap.carry_tokens = lappend(soap.carry_tokens, pstrdup(ps->page_token));
	MemoryContextSwitchTo(old);
}

/* Is every confirmation of the page one sent before in this run? */
static bool
page_all_seen(SoapPollState *ps, SoapPage *page)
{
	if (page->nconfirmations == 0 || !carry_is_for(ps) || soap.carry_seen == NULL)
		return false;
	for (int i = 0; i < page->nconfirmations; i++)
	{
		uint64		h = confirmation_hash(&page->confirmations[i]);

		if (hash_search(soap.carry_seen, &h, HASH_FIND, NULL) == NULL)
			return false;
	}
	return true;
}

/* The page is stored as sent: remember its confirmations. */
static void
seen_remember(SoapPollState *ps, SoapPage *page)
{
	carry_claim(ps);
	if (soap.carry_seen == NULL)
	{
		HASHCTL		ctl = {0};

		ctl.keysize = sizeof(uint64);
		ctl.entrysize = sizeof(uint64);
		ctl.hcxt = soap.carry_cxt;
		soap.carry_seen = hash_create("pg_kappa soap confirmations seen", 1024, &ctl,
									  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	for (int i = 0; i < page->nconfirmations; i++)
	{
		uint64		h = confirmation_hash(&page->confirmations[i]);

		if (hash_get_num_entries(soap.carry_seen) >= SOAP_MAX_SEEN_REMEMBERED)
			break;
		(void) hash_search(soap.carry_seen, &h, HASH_ENTER, NULL);
	}
}

/*
 * Fetch, produce and record one page.  Returns the next page's token, or
 * NULL after the last page.
 */
static char *
poll_page(SoapPollState *ps)
{
	SoapRequest req;
	SoapResponse resp;
	SoapPage   *page;
	SoapPayment *payments;
	List	   *dead_letters = NIL;
	char	   *source_json;
	int64		ts_ms;
	int64		produced = 0;
	int64		skipped = 0;
	StringInfoData buf;
	const char *page_label;
	ListCell   *lc;
	TimestampTz too_late;
	List	   *refused_now = NIL;	/* dead letters made on this page */

	ps->page_number++;
	source_stats_set_state(soap.stats, "polling: page %d", ps->page_number);

	memset(&req, 0, sizeof(req));
	req.url = ps->endpoint;
	req.username = kappa_soap_username;
	req.password = soap.password;
	req.since = ps->since;
	req.page_token = ps->page_token;
	req.page_size = kappa_soap_page_size;
	req.timeout_ms = kappa_soap_timeout;
	req.max_response_bytes = (int64) kappa_soap_max_response_size * 1024;
	req.ca_file = kappa_soap_ca_file;
	if (req.username && req.username[0] != '\0' && !kappa_soap_allow_plain_http)
	{
		char	   *host = soap_url_plain_remote_host(req.url);

		if (host != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("refusing to send the SOAP password over plain http"),
					 errdetail("kappa.soap_url is an http:// URL to host \"%s\", not this machine: the WS-Security password would cross the network unencrypted.",
							   host),
					 errhint("Use an https:// URL, or set kappa.soap_allow_plain_http = on if the network between is trusted.")));
	}
	ps->clock_cap = GetCurrentTimestamp();
	soap_call(&req, &resp);
	CHECK_FOR_INTERRUPTS();

	page = read_page(&resp, ps->endpoint);
	pfree(resp.body);

	if (page->next_page_token)
	{
		if (strlen(page->next_page_token) > SOAP_MAX_TOKEN_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("SOAP NextPageToken is longer than %d bytes", SOAP_MAX_TOKEN_LEN)));
		if (ps->page_token && strcmp(ps->page_token, page->next_page_token) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("the SOAP service returned the page token it was asked for"),
					 errdetail("Page token \"%s\" would be asked for forever.",
							   page->next_page_token)));
		/* a cycle of tokens (A, B, A, ...) would resend its pages forever */
		if (list_member_token(ps->tokens_asked, page->next_page_token))
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("the SOAP service returned a page token it was asked for earlier in this poll"),
					 errdetail("Page token \"%s\" was asked for on an earlier page; its pages would be asked for forever.",
							   page->next_page_token)));
		if (ps->page_number >= SOAP_MAX_PAGES_PER_POLL)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("the SOAP service returned more than %d pages in one poll",
							SOAP_MAX_PAGES_PER_POLL),
					 errdetail("Page %d has a NextPageToken again.", ps->page_number),
					 errhint("Check that the service ends its pages; the poll goes on from the stored page token after a backoff.")));
	}

	page_label = ps->page_token ? psprintf("page \"%s\"", ps->page_token) : "first page";

	/*
	 * Tokens that change but do not advance (t1, t2, ... for one page)
	 * would send the page again until the page limit, and again after each
	 * backoff.  (A poll from the watermark may get again what an earlier
	 * one sent, at exactly the watermark: that is an earlier run.)
	 */
	if (ps->page_token != NULL && page_all_seen(ps, page))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the SOAP service returned a page whose confirmations it had all returned earlier in this poll"),
				 errdetail("The %d confirmations of %s were on earlier pages; its next page tokens would be asked for forever.",
						   page->nconfirmations, page_label),
				 errhint("Check the service's paging; the poll goes on from the stored page token after a backoff.")));

	/* the previous page's stragglers, if an error cut it short */
	ensure_producer();
	if (soap_delivery.pending > 0)
		kafka_wait_delivered(soap.producer, &soap_delivery, -1);
	memset(&soap_delivery, 0, sizeof(soap_delivery));

	source_json = soap_source_json(ps->endpoint, ps->page_token);
	ts_ms = envelope_unix_ms(GetCurrentTimestamp());
	payments = page->nconfirmations > 0 ?
		palloc_extended(sizeof(SoapPayment) * page->nconfirmations, MCXT_ALLOC_HUGE) : NULL;
	initStringInfo(&buf);
	too_late = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   (int64) SOAP_FUTURE_TOLERANCE_S * 1000);

	for (int i = 0; i < page->nconfirmations; i++)
	{
		SoapConfirmation *c = &page->confirmations[i];
		SoapPayment *p = &payments[i];

		soap_check_confirmation(c, p);

		/*
		 * A ConfirmedAt far ahead of our clock (a service node's clock, or
		 * garbage) would move the watermark past every real confirmation
		 * to come: it is refused, and does not move the watermark.
		 */
		if (p->has_time && p->confirmed_at > too_late)
		{
			if (p->error == NULL)
				p->error = psprintf("ConfirmedAt %s is more than %d hours ahead of this server's clock",
									timestamptz_to_str(p->confirmed_at),
									SOAP_FUTURE_TOLERANCE_S / 3600);
		}
		else if (p->has_time)
		{
			if (already_sent(ps, p->confirmed_at, c->payment_id))
			{
				skipped++;
				continue;
			}
			note_confirmed_at(ps, p->confirmed_at, c->payment_id);
		}
		if (p->error)
		{
			KappaDeadLetter *dl;
			size_t		len;
			char	   *key = psprintf("%s|" UINT64_FORMAT, ps->endpoint, confirmation_hash(c));
			bool		seen = false;

			foreach(lc, soap.refused)
			{
				if (strcmp((char *) lfirst(lc), key) == 0)
				{
					seen = true;
					break;
				}
			}
			if (seen)
			{
				skipped++;		/* its dead letter was written by an earlier poll */
				continue;
			}
			refused_now = lappend(refused_now, key);
			dl = palloc0(sizeof(KappaDeadLetter));

			dl->source = "soap";
			dl->partition = -1;
			dl->offset = -1;
			dl->file = ps->endpoint;
			dl->line = c->line;
			dl->raw = soap_confirmation_xml(page, i, &len);
			dl->rawlen = len;
			dl->error = psprintf("%s (%s)", p->error, page_label);
			dead_letters = lappend(dead_letters, dl);
			continue;
		}

		resetStringInfo(&buf);
		soap_append_envelope(&buf, c, p, source_json, ts_ms);
		kafka_produce(soap.producer, kappa_payments_topic,
					  c->sale_id, strlen(c->sale_id), buf.data, buf.len,
					  ts_ms, &soap_delivery);
		if (++produced % SOAP_SERVE_EVERY == 0)
		{
			kafka_client_serve(soap.producer, 0);
			CHECK_FOR_INTERRUPTS();
		}
	}

	if (soap_delivery.pending > 0)
	{
		source_stats_set_state(soap.stats, "polling: waiting for Kafka to acknowledge page %d",
							   ps->page_number);
		kafka_wait_delivered(soap.producer, &soap_delivery, -1);
	}
	if (soap_delivery.failed > 0)
		ereport(ERROR,
				(errcode(kafka_sqlstate(soap_delivery.error)),
				 errmsg("kafka delivery failed: %s", rd_kafka_err2str(soap_delivery.error)),
				 errdetail("%lld of the %lld messages of the %s were not acknowledged by Kafka; the page will be fetched and sent again.",
						   (long long) soap_delivery.failed, (long long) produced, page_label)));

	save_progress(ps, page->next_page_token, dead_letters);
	source_stats_success(soap.stats, 1, produced, list_length(dead_letters));
	if (page->next_page_token)
		seen_remember(ps, page);

	/* their dead letters are stored: not again */
	foreach(lc, refused_now)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		soap.refused = lappend(soap.refused, pstrdup((char *) lfirst(lc)));
		if (list_length(soap.refused) > SOAP_MAX_REFUSED_REMEMBERED)
		{
			pfree(linitial(soap.refused));
			soap.refused = list_delete_first(soap.refused);
		}
		MemoryContextSwitchTo(old);
	}
	if (skipped > 0)
		ereport(DEBUG1,
				(errmsg_internal("pg_kappa soap poller: skipped %lld confirmations sent by an earlier poll",
								 (long long) skipped)));

	return page->next_page_token;
}

/* The password from kappa.secrets_file, if a user name is set. */
static void
read_password(void)
{
	ListCell   *lc;

	soap.password = NULL;
	if (kappa_soap_username == NULL || kappa_soap_username[0] == '\0')
		return;
	foreach(lc, kappa_read_secrets("soap."))
	{
		KafkaOption *opt = lfirst(lc);

		if (strcmp(opt->key, "password") == 0)
			soap.password = opt->value;
		else
			explicit_bzero(opt->value, strlen(opt->value));
	}
	if (soap.password == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PASSWORD),
				 errmsg("no password for the SOAP service"),
				 errdetail("kappa.soap_username is set, but kappa.secrets_file has no \"soap.password\" line."),
				 errhint("Add \"soap.password = ...\" to the file named by kappa.secrets_file.")));
}

static void
wipe_password(void)
{
	if (soap.password)
		explicit_bzero(soap.password, strlen(soap.password));
	soap.password = NULL;
}

static void reload_configuration(void);

/* One poll: every page from the watermark (or the stored page token) on. */
static void
poll_endpoint(void)
{
	SoapPollState *ps;
	char	   *next;

	MemoryContextSwitchTo(soap.poll_cxt);
	ps = palloc0(sizeof(SoapPollState));
	ps->endpoint = pstrdup(kappa_soap_url);
	read_password();
	load_state(ps);
	if (ps->page_token)
	{
		/* going on from a poll cut short: what it asked for counts */
		if (carry_is_for(ps))
		{
			ListCell   *lc;

			foreach(lc, soap.carry_tokens)
				ps->tokens_asked = lappend(ps->tokens_asked, pstrdup(lfirst(lc)));
		}
		else
			carry_forget();
		if (!list_member_token(ps->tokens_asked, ps->page_token))
			ps->tokens_asked = lappend(ps->tokens_asked, pstrdup(ps->page_token));
	}
	else
		carry_forget();			/* a poll from the watermark */

	for (;;)
	{
		MemoryContextReset(soap.page_cxt);
		MemoryContextSwitchTo(soap.page_cxt);
		next = poll_page(ps);
		MemoryContextSwitchTo(soap.poll_cxt);
		if (next == NULL)
		{
			carry_forget();		/* the poll is complete */
			break;
		}
		ps->page_token = pstrdup(next);
		ps->tokens_asked = lappend(ps->tokens_asked, ps->page_token);
		carry_remember(ps);

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload_configuration();
		/* switched off or to another endpoint: the token is stored, stop */
		if (!kappa_soap_enabled || strcmp(ps->endpoint, kappa_soap_url) != 0)
			break;
	}
	MemoryContextReset(soap.page_cxt);
}

/*
 * Run a poll; an error ends it, not the worker: it is recorded in
 * kappa.stat_sources and logged, and the next attempt backs off.
 */
static bool
run_poll(void)
{
	MemoryContext caller = CurrentMemoryContext;
	volatile bool ok = true;

	MemoryContextReset(soap.poll_cxt);
	PG_TRY();
	{
		poll_endpoint();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		soap_client_abort();
		wipe_password();

		soap.failures++;
		soap.backoff_ms = soap.backoff_ms == 0 ? SOAP_FIRST_BACKOFF_MS :
			Min((int64) soap.backoff_ms * 2, (int64) kappa_soap_max_backoff * 1000);
		soap.backoff_ms = Min(soap.backoff_ms, kappa_soap_max_backoff * 1000);
		source_stats_error(soap.stats, edata->message);
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg_internal("%s", edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 edata->hint ? errhint("%s", edata->hint) : 0,
				 errcontext("pg_kappa soap poller, retrying in %d ms", soap.backoff_ms)));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();

	MemoryContextSwitchTo(caller);
	wipe_password();
	/* (a page an error cut short is not kept through the backoff) */
	MemoryContextReset(soap.page_cxt);
	MemoryContextReset(soap.poll_cxt);
	return ok;
}

/* ---------------------------------------------------------------------
 * Main loop
 * ---------------------------------------------------------------------
 */
static void
reload_configuration(void)
{
	char	   *old_url = pstrdup(kappa_soap_url);
	char	   *old_brokers = pstrdup(kappa_brokers);
	char	   *old_options = pstrdup(kappa_kafka_options);

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);

	/* another endpoint: poll it at once */
	if (strcmp(old_url, kappa_soap_url) != 0)
	{
		soap.last_poll_start = 0;
		soap.backoff_ms = 0;
		soap.retry_at = 0;
		soap.failures = 0;
	}
	/* new Kafka settings: a new producer (between pages, nothing is pending) */
	if ((strcmp(old_brokers, kappa_brokers) != 0 ||
		 strcmp(old_options, kappa_kafka_options) != 0 ||
		 kafka_client_settings_changed(soap.producer)) &&
		soap.producer != NULL && soap_delivery.pending == 0)
		drop_producer();
	pfree(old_url);
	pfree(old_brokers);
	pfree(old_options);
}

static void
wait_for_work(long timeout_ms)
{
	WaitEvent	event;

	if (timeout_ms < 0)
		timeout_ms = 0;
	(void) WaitEventSetWait(soap.waitset, timeout_ms, &event, 1, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	if (soap.producer)
		kafka_client_serve(soap.producer, 0);
}

static void
soap_worker_shutdown(int code, Datum arg)
{
	if (soap.producer)
	{
		/* what is in flight was not recorded as sent: it is sent again */
		kafka_client_destroy(soap.producer, 0);
		soap.producer = NULL;
	}
	if (soap.stats)
	{
		SpinLockAcquire(&soap.stats->mutex);
		strlcpy(soap.stats->state, "stopped", sizeof(soap.stats->state));
		soap.stats->pid = 0;
		SpinLockRelease(&soap.stats->mutex);
	}
}

void
kappa_soap_worker_main(Datum main_arg)
{
	kappa_worker_begin("pg_kappa soap poller");

	memset(&soap, 0, sizeof(soap));
	soap.stats = source_stats_attach("soap");
	soap.carry_cxt = AllocSetContextCreate(TopMemoryContext, "pg_kappa soap carried run",
										   ALLOCSET_SMALL_SIZES);
	soap.poll_cxt = AllocSetContextCreate(TopMemoryContext, "pg_kappa soap poll",
										  ALLOCSET_DEFAULT_SIZES);
	soap.page_cxt = AllocSetContextCreate(TopMemoryContext, "pg_kappa soap page",
										  ALLOCSET_DEFAULT_SIZES);
	rebuild_waitset();
	before_shmem_exit(soap_worker_shutdown, (Datum) 0);
	soap_xml_init();

	for (;;)
	{
		TimestampTz now;
		TimestampTz due;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			reload_configuration();

		if (!kappa_soap_enabled)
		{
			source_stats_set_state(soap.stats, "disabled (kappa.soap_enabled = off)");
			wait_for_work(60000);
			continue;
		}
		if (kappa_soap_url[0] == '\0')
		{
			source_stats_set_state(soap.stats, "idle (kappa.soap_url is not set)");
			wait_for_work(60000);
			continue;
		}

		now = GetCurrentTimestamp();
		due = soap.backoff_ms > 0 ? soap.retry_at :
			TimestampTzPlusMilliseconds(soap.last_poll_start, kappa_soap_poll_interval);
		if (soap.last_poll_start != 0 && now < due)
		{
			wait_for_work(TimestampDifferenceMilliseconds(now, due));
			continue;
		}

		if (!kappa_extension_installed())
		{
			source_stats_set_state(soap.stats,
								   "waiting for CREATE EXTENSION pg_kappa in database \"%s\"",
								   kappa_database);
			wait_for_work(5000);
			continue;
		}

		soap.last_poll_start = now;
		if (run_poll())
		{
			if (soap.failures > 0)
				ereport(LOG,
						(errmsg("pg_kappa soap poller: polling succeeded after %d failed attempts",
								soap.failures)));
			soap.failures = 0;
			soap.backoff_ms = 0;
			soap.retry_at = 0;
			source_stats_set_state(soap.stats, "waiting for the next poll");
		}
		else
		{
			soap.retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), soap.backoff_ms);
			source_stats_set_state(soap.stats, "retrying in %d ms after an error",
								   soap.backoff_ms);
		}
	}
}
