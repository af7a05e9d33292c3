/*-------------------------------------------------------------------------
 *
 * soap_payments.c
 *	  Payment confirmations as change envelopes: each Confirmation of a
 *	  response is checked, normalised (exact decimal amount, UTC time) and
 *	  written as a payment-confirmations message, or refused with a reason
 *	  for kappa.dead_letters.
 *
 * Also kappa.soap_decode(), which runs a response through the same parser
 * and checks without any network or Kafka: for tests, and for operators
 * who want to see what the poller makes of a captured response.
 *
 * Values are read by their XML Schema types (xsd:decimal, xsd:dateTime),
 * strictly: PostgreSQL's input functions accept more ("now", "epoch",
 * time zone names, exponents), which a remote service must not be able to
 * send, and in PostgreSQL 15 they can only fail by raising an error.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "cdc/envelope.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "sources/soap.h"
#include "stream/event.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"

#define SOAP_MAX_ID_LEN		256
#define SOAP_MAX_AMOUNT_LEN 100

/* A value quoted in a reason: at most 60 bytes, cut on a character. */
static char *
quote_value(const char *s)
{
	int			len = strlen(s);
	int			clip = pg_mbcliplen(s, len, 60);

	return psprintf("\"%.*s%s\"", clip, s, clip < len ? "..." : "");
}

static bool
read_digits(const char **p, int n, int *value)
{
	int			v = 0;

	for (int i = 0; i < n; i++)
	{
		if ((*p)[i] < '0' || (*p)[i] > '9')
			return false;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*value = v;
	return true;
}

static bool
read_char(const char **p, char c)
{
	if (**p != c)
		return false;
	(*p)++;
	return true;
}

/*
 * xsd:dateTime, "YYYY-MM-DDThh:mm:ss[.s+][Z|(+|-)hh:mm]", to a timestamptz.
 * Years 0001 to 9999.  A time without a zone is taken as UTC (the service
 * is expected to send one; docs/soap-payments.md says so).  Digits beyond
 * microseconds are dropped, not rounded: rounding up would put the
 * inclusive watermark after the service's own time of the confirmation,
 * and another confirmed in the same microsecond but seen by a later poll
 * would be asked for with a Since after it.  On failure, *why says what is
 * wrong.
 */
bool
soap_parse_datetime(const char *s, TimestampTz *result, const char **why)
{
	const char *p = s;
	int			year,
				mon,
				mday,
				hour,
				min,
				sec;
	int64		usec = 0;
	int			zone_sec = 0;
	TimestampTz ts;

	if (!read_digits(&p, 4, &year) || !read_char(&p, '-') ||
		!read_digits(&p, 2, &mon) || !read_char(&p, '-') ||
		!read_digits(&p, 2, &mday) || !read_char(&p, 'T') ||
		!read_digits(&p, 2, &hour) || !read_char(&p, ':') ||
		!read_digits(&p, 2, &min) || !read_char(&p, ':') ||
		!read_digits(&p, 2, &sec))
	{
		*why = "not an xsd:dateTime (YYYY-MM-DDThh:mm:ss[.fff][Z|+hh:mm])";
		return false;
	}
	if (read_char(&p, '.'))
	{
		int			ndigits = 0;
		int64		scale = 100000;

		while (*p >= '0' && *p <= '9')
		{
			if (ndigits < 6)
			{
				usec += (*p - '0') * scale;
				scale /= 10;
			}
			ndigits++;
			p++;
		}
		if (ndigits == 0)
		{
			*why = "not an xsd:dateTime (a fraction of a second needs digits)";
			return false;
		}
	}
	if (read_char(&p, 'Z'))
		zone_sec = 0;
	else if (*p == '+' || *p == '-')
	{
		int			sign = *p == '-' ? -1 : 1;
		int			zh,
					zm;

		p++;
		if (!read_digits(&p, 2, &zh) || !read_char(&p, ':') || !read_digits(&p, 2, &zm))
		{
			*why = "not an xsd:dateTime (the time zone must be Z or +hh:mm)";
			return false;
		}
		if (zm > 59 || zh > 14 || (zh == 14 && zm != 0))
		{
			*why = "time zone offset out of range";
			return false;
		}
		zone_sec = sign * (zh * 3600 + zm * 60);
	}
	if (*p != '\0')
	{
		*why = "not an xsd:dateTime (unexpected characters at the end)";
		return false;
	}

	if (year < 1 || mon < 1 || mon > 12)
	{
		*why = "date out of range";
		return false;
	}
	if (mday < 1 || mday > day_tab[isleap(year)][mon - 1])
	{
		*why = "day out of range";
		return false;
	}
	/* 24:00:00 is the end of the day, as in XML Schema 1.0 */
	if (min > 59 || sec > 59 || hour > 24 ||
		(hour == 24 && (min != 0 || sec != 0 || usec != 0)))
	{
		*why = "time out of range";
		return false;
	}

	ts = (TimestampTz) (date2j(year, mon, mday) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY;
	ts += ((int64) ((hour * 60 + min) * 60 + sec - zone_sec)) * USECS_PER_SEC + usec;
	if (!IS_VALID_TIMESTAMP(ts))
	{
		*why = "date out of range";
		return false;
	}
	*result = ts;
	return true;
}

/* xsd:decimal: an optional sign, digits, an optional fraction. */
static bool
is_xsd_decimal(const char *s)
{
	const char *p = s;
	int			digits = 0;

	if (*p == '+' || *p == '-')
		p++;
	while (*p >= '0' && *p <= '9')
		p++, digits++;
	if (*p == '.')
	{
		p++;
		while (*p >= '0' && *p <= '9')
			p++, digits++;
	}
	return *p == '\0' && digits > 0;
}

static bool
is_currency_code(const char *s)
{
	return strlen(s) == 3 &&
		s[0] >= 'A' && s[0] <= 'Z' &&
		s[1] >= 'A' && s[1] <= 'Z' &&
		s[2] >= 'A' && s[2] <= 'Z';
}

static const char *
check_id(const char *value, const char *name)
{
	if (value == NULL)
		return psprintf("Confirmation has no %s", name);
	if (value[0] == '\0')
		return psprintf("%s is empty", name);
	if (strlen(value) > SOAP_MAX_ID_LEN)
		return psprintf("%s is longer than %d bytes", name, SOAP_MAX_ID_LEN);
	return NULL;
}

/*
 * Can the stream workers read this amount (numeric_out's spelling)?  Asked
 * of the stream's own decimal reader, so that the limit lives in one place.
 */
static bool
amount_fits_stream(const char *amount)
{
	JsonSpan	span = {amount, (int) strlen(amount), JSON_SPAN_NUMBER};
	KappaDecimal d;

	return decimal_parse(&span, &d);
}

/*
 * Check one confirmation.  The time is read first and kept even when
 * another field is wrong: the poller's watermark counts every confirmation
 * the service sent.
 */
void
soap_check_confirmation(SoapConfirmation *c, SoapPayment *p)
{
	const char *why = NULL;

	memset(p, 0, sizeof(*p));

	if (c->confirmed_at != NULL && c->confirmed_at[0] != '\0')
	{
		if (soap_parse_datetime(c->confirmed_at, &p->confirmed_at, &why))
			p->has_time = true;
	}

	if (c->shape_error)
	{
		p->error = c->shape_error;
		return;
	}
	if ((p->error = check_id(c->payment_id, "PaymentId")) != NULL)
		return;
	if ((p->error = check_id(c->sale_id, "SaleId")) != NULL)
		return;
	if (c->status == NULL)
	{
		p->error = "Confirmation has no Status";
		return;
	}
	if (strcmp(c->status, "CONFIRMED") != 0 &&
		strcmp(c->status, "DECLINED") != 0 &&
		strcmp(c->status, "REFUNDED") != 0)
	{
		p->error = psprintf("invalid Status %s: expected CONFIRMED, DECLINED or REFUNDED",
							quote_value(c->status));
		return;
	}
	if (c->amount == NULL)
	{
		p->error = "Confirmation has no Amount";
		return;
	}
	if (!is_xsd_decimal(c->amount) || strlen(c->amount) > SOAP_MAX_AMOUNT_LEN)
	{
		p->error = psprintf("invalid Amount %s: not an xsd:decimal", quote_value(c->amount));
		return;
	}
	if (c->currency == NULL)
	{
		p->error = "Amount has no currency attribute";
		return;
	}
	if (!is_currency_code(c->currency))
	{
		p->error = psprintf("invalid currency %s: not a three-letter ISO 4217 code",
							quote_value(c->currency));
		return;
	}
	if (c->confirmed_at == NULL)
	{
		p->error = "Confirmation has no ConfirmedAt";
		return;
	}
	if (!p->has_time)
	{
		p->error = psprintf("invalid ConfirmedAt %s: %s", quote_value(c->confirmed_at),
							why ? why : "empty");
		return;
	}

	/* exact, as sent ("129.90", "-49.99"): cannot fail after the check */
	p->amount = DatumGetCString(DirectFunctionCall1(numeric_out,
												   DirectFunctionCall3(numeric_in,
																	   CStringGetDatum(c->amount),
																	   ObjectIdGetDatum(InvalidOid),
																	   Int32GetDatum(-1))));

	/*
	 * The stream workers compute in 36 digits: an amount they cannot carry
	 * is refused here, saying so, rather than sent to be refused there as
	 * "not a decimal number".
	 */
	if (!amount_fits_stream(p->amount))
	{
		p->error = psprintf("invalid Amount %s: more than 36 significant digits or more than 36 after the point",
							quote_value(c->amount));
		p->amount = NULL;
	}
}

/*
 * The source part of a page's messages, up to the value of ts_ms:
 * ,"source":{"connector":"soap","endpoint":"...","page":"..."},"ts_ms":
 */
char *
soap_source_json(const char *endpoint, const char *page_token)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, ",\"source\":{\"connector\":\"soap\",\"endpoint\":");
	envelope_append_json_string(&buf, endpoint, strlen(endpoint));
	appendStringInfoString(&buf, ",\"page\":");
	page_token = page_token ? page_token : "";
	envelope_append_json_string(&buf, page_token, strlen(page_token));
	appendStringInfoString(&buf, "},\"ts_ms\":");
	return buf.data;
}

/* The change envelope of a checked confirmation (p->error == NULL). */
void
soap_append_envelope(StringInfo out, SoapConfirmation *c, SoapPayment *p,
					 const char *source_json, int64 ts_ms)
{
	appendStringInfoString(out, "{\"op\":\"c\",\"before\":null,\"after\":{\"payment_id\":");
	envelope_append_json_string(out, c->payment_id, strlen(c->payment_id));
	appendStringInfoString(out, ",\"sale_id\":");
	envelope_append_json_string(out, c->sale_id, strlen(c->sale_id));
	appendStringInfoString(out, ",\"status\":");
	envelope_append_json_string(out, c->status, strlen(c->status));
	appendStringInfoString(out, ",\"amount\":");
	envelope_append_json_string(out, p->amount, strlen(p->amount));
	appendStringInfoString(out, ",\"currency\":");
	envelope_append_json_string(out, c->currency, strlen(c->currency));
	appendStringInfoString(out, ",\"confirmed_at\":");
	envelope_append_timestamptz(out, p->confirmed_at);
	appendStringInfoChar(out, '}');
	appendStringInfoString(out, source_json);
	appendStringInfo(out, INT64_FORMAT "}", ts_ms);
}

/*
 * A SOAP Fault as an error: "soap fault: <faultstring>".  resp may be
 * NULL (kappa.soap_decode).
 */
void
soap_raise_fault(SoapPage *page, const SoapResponse *resp, const char *url)
{
	const char *fs = page->fault_string;
	const char *fc = page->fault_code;
	int			clip = pg_mbcliplen(fs, strlen(fs), 300);
	int			codeclip = pg_mbcliplen(fc, strlen(fc), 200);	/* the service's text */

	ereport(ERROR,
			(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
			 errmsg("soap fault: %.*s", clip, fs),
			 resp ?
			 errdetail("Fault code \"%.*s\", HTTP status %ld, from %s.",
					   codeclip, fc, resp->http_status, url) :
			 errdetail("Fault code \"%.*s\".", codeclip, fc)));
}

/*
 * kappa.soap_decode(response text, endpoint text, page text): what the
 * poller makes of one response, as rows (kind, key, value, error):
 *	message		key = sale_id, value = the change envelope
 *	dead_letter	value = the Confirmation element, error = why
 *	next_page	value = the NextPageToken
 * A fault or a malformed document is an error, as in the poller.
 */
PG_FUNCTION_INFO_V1(kappa_soap_decode);

Datum
kappa_soap_decode(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	text	   *response;
	char	   *endpoint = PG_ARGISNULL(1) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *page_token = PG_ARGISNULL(2) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(2));
	char	   *utf8;
	SoapPage   *page;
	char	   *source_json;
	int64		ts_ms = envelope_unix_ms(GetCurrentTimestamp());
	StringInfoData buf;

	InitMaterializedSRF(fcinfo, 0);

	/*
	 * No response, no rows.  (The function is not STRICT so that a NULL
	 * endpoint or page reads as the empty default, not as no answer.)
	 */
	if (PG_ARGISNULL(0))
		return (Datum) 0;
	response = PG_GETARG_TEXT_PP(0);
	utf8 = text_to_cstring(response);
	utf8 = pg_server_to_any(utf8, strlen(utf8), PG_UTF8);
	page = soap_parse_response(utf8, strlen(utf8), true);
	if (page->is_fault)
		soap_raise_fault(page, NULL, NULL);

	source_json = soap_source_json(endpoint, page_token);
	initStringInfo(&buf);
	for (int i = 0; i < page->nconfirmations; i++)
	{
		SoapConfirmation *c = &page->confirmations[i];
		SoapPayment p;
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		soap_check_confirmation(c, &p);
		values[0] = CStringGetTextDatum(p.error ? "dead_letter" : "message");
		if (p.error)
		{
			size_t		len;
			char	   *raw = soap_confirmation_xml(page, i, &len);

			nulls[1] = true;
			values[2] = PointerGetDatum(cstring_to_text_with_len(raw, len));
			values[3] = CStringGetTextDatum(p.error);
		}
		else
		{
			resetStringInfo(&buf);
			soap_append_envelope(&buf, c, &p, source_json, ts_ms);
			values[1] = CStringGetTextDatum(c->sale_id);
			values[2] = PointerGetDatum(cstring_to_text_with_len(buf.data, buf.len));
			nulls[3] = true;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	if (page->next_page_token)
	{
		Datum		values[4];
		bool		nulls[4] = {false, true, false, true};

		values[0] = CStringGetTextDatum("next_page");
		values[1] = (Datum) 0;
		values[2] = CStringGetTextDatum(page->next_page_token);
		values[3] = (Datum) 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
