/*-------------------------------------------------------------------------
 *
 * soap.h
 *	  The SOAP payment poller: its settings, the HTTP client
 *	  (soap_client.c), the response parser (soap_xml.c) and the worker
 *	  (soap_poller.c).  See docs/soap-payments.md.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_SOAP_H
#define KAPPA_SOAP_H

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/timestamp.h"

#define SOAP_ENVELOPE_NS	"http://schemas.xmlsoap.org/soap/envelope/"
#define SOAP_PAYMENTS_NS	"urn:electrored:payments:v1"
#define SOAP_WSSE_NS		"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
#define SOAP_PASSWORD_TEXT	"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText"
#define SOAP_ACTION			"urn:electrored:payments:v1#GetPaymentConfirmations"

/* kappa.soap_* settings (soap_poller.c) */
extern bool kappa_soap_enabled;
extern char *kappa_soap_url;
extern char *kappa_soap_username;
extern int	kappa_soap_poll_interval;	/* ms */
extern int	kappa_soap_timeout;		/* ms */
extern int	kappa_soap_page_size;
extern int	kappa_soap_max_response_size;	/* kB */
extern char *kappa_soap_ca_file;
extern bool kappa_soap_allow_plain_http;
extern int	kappa_soap_max_backoff; /* s */

/* ---------------------------------------------------------------------
 * The HTTP client (soap_client.c)
 * ---------------------------------------------------------------------
 */
typedef struct SoapRequest
{
	const char *url;
	const char *username;		/* "" or NULL: no WS-Security header */
	const char *password;
	TimestampTz since;
	const char *page_token;		/* NULL or "": the first page */
	int			page_size;
	int			timeout_ms;
	int64		max_response_bytes;
	const char *ca_file;		/* NULL or "": the system's CAs */
} SoapRequest;

typedef struct SoapResponse
{
	long		http_status;
	char		status_line[128];	/* "HTTP/1.1 500 Internal Server Error" */
	char	   *body;			/* NUL-terminated (palloc'd) */
	size_t		body_len;
} SoapResponse;

extern bool soap_url_is_valid(const char *url, const char **why);
extern char *soap_url_plain_remote_host(const char *url);
extern void soap_format_datetime(StringInfo out, TimestampTz ts);
extern void soap_build_request(StringInfo out, const SoapRequest *req);
extern void soap_call(const SoapRequest *req, SoapResponse *resp);
extern void soap_raise_http_error(const SoapResponse *resp, const char *url);
extern void soap_client_abort(void);

/* ---------------------------------------------------------------------
 * The response parser (soap_xml.c)
 * ---------------------------------------------------------------------
 */

/* One Confirmation element, its fields as text (NULL when absent). */
typedef struct SoapConfirmation
{
	char	   *payment_id;
	char	   *sale_id;
	char	   *status;
	char	   *amount;
	char	   *currency;
	char	   *confirmed_at;
	const char *shape_error;	/* the element itself is malformed */
	int			line;			/* of the element in the response */
	void	   *node;			/* the element, for soap_confirmation_xml() */
} SoapConfirmation;

typedef struct SoapPage
{
	int			nconfirmations;
	SoapConfirmation *confirmations;
	char	   *next_page_token;	/* NULL: the last page */
	bool		is_fault;
	char	   *fault_code;
	char	   *fault_string;
	void	   *doc;			/* freed when the memory context goes */
} SoapPage;

extern void soap_xml_init(void);
extern SoapPage *soap_parse_response(const char *data, size_t len, bool is_utf8);
extern char *soap_confirmation_xml(SoapPage *page, int i, size_t *len);

/* ---------------------------------------------------------------------
 * Confirmations as change envelopes (soap_poller.c)
 * ---------------------------------------------------------------------
 */

/* A confirmation checked and normalised, or the reason it was refused. */
typedef struct SoapPayment
{
	const char *error;			/* NULL: valid */
	bool		has_time;		/* confirmed_at could be read */
	TimestampTz confirmed_at;
	char	   *amount;			/* numeric_out of the sent amount */
} SoapPayment;

extern void soap_check_confirmation(SoapConfirmation *c, SoapPayment *p);
extern char *soap_source_json(const char *endpoint, const char *page_token);
extern void soap_append_envelope(StringInfo out, SoapConfirmation *c,
								 SoapPayment *p, const char *source_json,
								 int64 ts_ms);
extern bool soap_parse_datetime(const char *s, TimestampTz *result,
								const char **why);
extern void soap_raise_fault(SoapPage *page, const SoapResponse *resp,
							 const char *url);

#endif							/* KAPPA_SOAP_H */
