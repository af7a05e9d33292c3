/*-------------------------------------------------------------------------
 *
 * soap_client.c
 *	  The SOAP poller's HTTP side: the GetPaymentConfirmations request
 *	  (with its WS-Security UsernameToken) and one POST through libcurl.
 *
 * The transfer is driven by a curl multi handle in steps of at most
 * 100 ms, with CHECK_FOR_INTERRUPTS between steps, so SIGTERM ends the
 * worker promptly even while a slow service is answering (pg_net does the
 * same).  Every transfer has a total timeout (kappa.soap_timeout) and a
 * size limit (kappa.soap_max_response_size), is restricted to http and
 * https, follows no redirects and verifies TLS certificates.  libcurl's
 * error codes become ereports in one place, raise_transfer_error().
 *
 * The request carries the password from kappa.secrets_file: it is never
 * logged, and the request buffer is wiped once the transfer is over.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <curl/curl.h>

#include "miscadmin.h"
#include "sources/soap.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "utils/datetime.h"
#include "utils/memutils.h"

/* What one transfer collects; its callbacks only copy bytes. */
typedef struct SoapTransfer
{
	SoapResponse *resp;
	size_t		capacity;
	size_t		max_bytes;
	bool		too_large;
	bool		out_of_memory;
} SoapTransfer;

static CURLM *soap_multi = NULL;
static CURL *soap_easy = NULL;
static bool soap_easy_added = false;
static struct curl_slist *soap_headers = NULL;

/* the request being sent: wiped after the transfer (it holds a password) */
static char *soap_request_data = NULL;
static size_t soap_request_len = 0;

/*
 * Has the parsed URL this part (with nonempty, not an empty one)?
 * (libcurl's copy is freed.)
 */
static bool
url_has_part(CURLU *u, CURLUPart what, bool nonempty)
{
	char	   *part = NULL;
	bool		has;

	has = curl_url_get(u, what, &part, 0) == CURLUE_OK && part != NULL &&
		(!nonempty || part[0] != '\0');
	if (part)
		curl_free(part);
	return has;
}

/* ---------------------------------------------------------------------
 * kappa.soap_url: an absolute http or https URL without credentials
 * ---------------------------------------------------------------------
 */
bool
soap_url_is_valid(const char *url, const char **why)
{
	CURLU	   *u;
	bool		ok = true;

	for (const char *p = url; *p; p++)
	{
		if ((unsigned char) *p <= ' ' || (unsigned char) *p == 0x7f)
		{
			*why = "The URL must not contain white space or control characters.";
			return false;
		}
	}
	if (pg_strncasecmp(url, "http://", 7) != 0 && pg_strncasecmp(url, "https://", 8) != 0)
	{
		*why = "The URL must start with http:// or https://.";
		return false;
	}
	if (strchr(url, ':')[3] == '/' || strchr(url, ':')[3] == '\0')
	{
		*why = "The URL has no host.";
		return false;
	}

	u = curl_url();
	if (u == NULL)
	{
		*why = "Out of memory.";
		return false;
	}
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
	{
		*why = "libcurl cannot parse the URL.";
		ok = false;
	}
	else if (url_has_part(u, CURLUPART_USER, false) ||
			 url_has_part(u, CURLUPART_PASSWORD, false))
	{
		/* it would be logged, shown in views and put in every message */
		*why = "The URL must not contain a user name or password: set kappa.soap_username and put soap.password in kappa.secrets_file.";
		ok = false;
	}
	else if (!url_has_part(u, CURLUPART_HOST, true))
	{
		*why = "The URL has no host.";
		ok = false;
	}
	else if (url_has_part(u, CURLUPART_FRAGMENT, false))
	{
		*why = "The URL must not have a fragment (#...).";
		ok = false;
	}
	curl_url_cleanup(u);
	return ok;
}

/*
 * Whether a URL's host names this machine: "localhost", an IPv4 address
 * in 127.0.0.0/8, or ::1 (libcurl gives IPv6 hosts in brackets).  The
 * address is parsed, not matched by prefix: "127.example.com" is a name
 * that DNS may point anywhere.
 */
static bool
host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;
	char		buf[INET6_ADDRSTRLEN + 2];
	size_t		len = strlen(host);

	if (pg_strcasecmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (len > 2 && len - 2 < sizeof(buf) &&
		host[0] == '[' && host[len - 1] == ']')
	{
		memcpy(buf, host + 1, len - 2);
		buf[len - 2] = '\0';
		if (inet_pton(AF_INET6, buf, &a6) == 1)
			return IN6_IS_ADDR_LOOPBACK(&a6);
	}
	return false;
}

/*
 * The host of an http:// URL that is not this machine (palloc'd), or NULL:
 * an https:// URL, or one to localhost or a loopback address, whose
 * traffic does not leave the machine.
 */
char *
soap_url_plain_remote_host(const char *url)
{
	CURLU	   *u;
	char	   *host = NULL;
	char	   *result = NULL;

	if (pg_strncasecmp(url, "http://", 7) != 0 || (u = curl_url()) == NULL)
		return NULL;
	if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && host != NULL)
	{
		if (!host_is_loopback(host))
			result = pstrdup(host);
		curl_free(host);
	}
	curl_url_cleanup(u);
	return result;
}

/* ---------------------------------------------------------------------
 * The request
 * ---------------------------------------------------------------------
 */

/*
 * xsd:dateTime in UTC: "2026-11-21T10:00:00Z", with microseconds when
 * there are any ("2026-11-21T09:16:41.250000Z").
 */
void
soap_format_datetime(StringInfo out, TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(ts) ||
		timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0 ||
		tm.tm_year < 1 || tm.tm_year > 9999)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("SOAP watermark is out of range"),
				 errdetail("Since must be a time between the years 1 and 9999."),
				 errhint("Correct the \"since\" column of kappa.soap_state.")));
	appendStringInfo(out, "%04d-%02d-%02dT%02d:%02d:%02d",
					 tm.tm_year, tm.tm_mon, tm.tm_mday,
					 tm.tm_hour, tm.tm_min, tm.tm_sec);
	if (fsec != 0)
		appendStringInfo(out, ".%06d", (int) fsec);
	appendStringInfoChar(out, 'Z');
}

/*
 * Append s with XML's special characters escaped.  False if s holds a
 * character XML 1.0 cannot carry at all (control characters).
 */
static bool
append_xml_text(StringInfo out, const char *s)
{
	for (const char *p = s; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		switch (c)
		{
			case '&':
				appendStringInfoString(out, "&amp;");
				break;
			case '<':
				appendStringInfoString(out, "&lt;");
				break;
			case '>':
				appendStringInfoString(out, "&gt;");
				break;
			case '"':
				appendStringInfoString(out, "&quot;");
				break;
			case '\'':
				appendStringInfoString(out, "&apos;");
				break;
			case '\t':
			case '\n':
			case '\r':
				appendStringInfo(out, "&#%d;", c);
				break;
			default:
				if (c < 0x20 || c == 0x7f)
					return false;
				appendStringInfoChar(out, (char) c);
		}
	}
	return true;
}

static void
append_request_value(StringInfo out, const char *value, const char *what)
{
	if (!append_xml_text(out, value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s contains a control character", what),
				 errdetail("XML 1.0 cannot carry control characters, so it cannot be sent to the SOAP service.")));
}

/*
 * The GetPaymentConfirmations request, as test/fixtures/soap_request.xml
 * shows it (document/literal, WS-Security UsernameToken with a
 * PasswordText password).
 */
void
soap_build_request(StringInfo out, const SoapRequest *req)
{
	appendStringInfoString(out,
						   "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
						   "<soapenv:Envelope xmlns:soapenv=\"" SOAP_ENVELOPE_NS "\""
						   " xmlns:pay=\"" SOAP_PAYMENTS_NS "\""
						   " xmlns:wsse=\"" SOAP_WSSE_NS "\">\n");
	if (req->username && req->username[0] != '\0')
	{
		appendStringInfoString(out,
							   "<soapenv:Header>\n"
							   "<wsse:Security soapenv:mustUnderstand=\"1\">\n"
							   "<wsse:UsernameToken>\n"
							   "<wsse:Username>");
		append_request_value(out, req->username, "kappa.soap_username");
		appendStringInfoString(out,
							   "</wsse:Username>\n"
							   "<wsse:Password Type=\"" SOAP_PASSWORD_TEXT "\">");
		append_request_value(out, req->password ? req->password : "",
							 "soap.password in kappa.secrets_file");
		appendStringInfoString(out,
							   "</wsse:Password>\n"
							   "</wsse:UsernameToken>\n"
							   "</wsse:Security>\n"
							   "</soapenv:Header>\n");
	}
	appendStringInfoString(out,
						   "<soapenv:Body>\n"
						   "<pay:GetPaymentConfirmations>\n"
						   "<pay:Since>");
	soap_format_datetime(out, req->since);
	appendStringInfoString(out, "</pay:Since>\n");
	if (req->page_token && req->page_token[0] != '\0')
	{
		appendStringInfoString(out, "<pay:PageToken>");
		append_request_value(out, req->page_token, "the page token");
		appendStringInfoString(out, "</pay:PageToken>\n");
	}
	appendStringInfo(out,
					 "<pay:PageSize>%d</pay:PageSize>\n"
					 "</pay:GetPaymentConfirmations>\n"
					 "</soapenv:Body>\n"
					 "</soapenv:Envelope>\n",
					 req->page_size);
}

/* ---------------------------------------------------------------------
 * libcurl callbacks: they run inside curl_multi_perform on this thread,
 * and must not ereport (a longjmp through libcurl would leave it broken).
 * ---------------------------------------------------------------------
 */
static size_t
soap_write_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	SoapTransfer *t = userdata;
	SoapResponse *resp = t->resp;
	size_t		n = size * nmemb;

	if (resp->body_len + n > t->max_bytes)
	{
		t->too_large = true;
		return 0;				/* CURLE_WRITE_ERROR */
	}
	if (resp->body_len + n + 1 > t->capacity)
	{
		size_t		newcap = Max(t->capacity * 2, resp->body_len + n + 1);
		char	   *buf;

		newcap = Max(newcap, 65536);
		newcap = Min(newcap, t->max_bytes + 1);
		buf = palloc_extended(newcap, MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
		if (buf == NULL)
		{
			t->out_of_memory = true;
			return 0;
		}
		if (resp->body_len > 0)
			memcpy(buf, resp->body, resp->body_len);
		if (resp->body)
			pfree(resp->body);
		resp->body = buf;
		t->capacity = newcap;
	}
	memcpy(resp->body + resp->body_len, ptr, n);
	resp->body_len += n;
	resp->body[resp->body_len] = '\0';
	return n;
}

/* Keep the last status line ("HTTP/1.1 200 OK"), for error messages. */
static size_t
soap_read_header(char *buffer, size_t size, size_t nitems, void *userdata)
{
	SoapTransfer *t = userdata;
	size_t		n = size * nitems;

	if (n >= 5 && memcmp(buffer, "HTTP/", 5) == 0)
	{
		size_t		len = Min(n, sizeof(t->resp->status_line) - 1);

		while (len > 0 && (buffer[len - 1] == '\r' || buffer[len - 1] == '\n'))
			len--;
		memcpy(t->resp->status_line, buffer, len);
		t->resp->status_line[len] = '\0';
	}
	return n;
}

/* ---------------------------------------------------------------------
 * Errors: the one mapping from libcurl's codes to ereport
 * ---------------------------------------------------------------------
 */
static void
raise_transfer_error(CURLcode code, const char *errbuf, const SoapRequest *req,
					 const SoapTransfer *t)
{
	const char *why = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(code);

	if (t->too_large || code == CURLE_FILESIZE_EXCEEDED)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("SOAP response larger than kappa.soap_max_response_size (%lld kB)",
						(long long) (req->max_response_bytes / 1024)),
				 errdetail("The service at %s sent more than %lld bytes; the transfer was stopped.",
						   req->url, (long long) req->max_response_bytes),
				 errhint("Lower kappa.soap_page_size or raise kappa.soap_max_response_size.")));
	if (t->out_of_memory)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory while receiving the SOAP response"),
				 errdetail("%zu bytes were received from %s.", t->resp->body_len, req->url)));

	switch (code)
	{
		case CURLE_OPERATION_TIMEDOUT:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("timeout after %d ms waiting for the SOAP service", req->timeout_ms),
					 errdetail("%s: %s", req->url, why),
					 errhint("The service is slower than kappa.soap_timeout allows.")));
			break;
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_SSL_ISSUER_ERROR:
		case CURLE_SSL_INVALIDCERTSTATUS:
		case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not establish a verified TLS connection to the SOAP service"),
					 errdetail("%s: %s", req->url, why),
					 errhint("If the service's certificate is issued by a private CA, set kappa.soap_ca_file to that CA's certificate.")));
			break;
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_RESOLVE_PROXY:
		case CURLE_COULDNT_CONNECT:
			ereport(ERROR,
					(errcode(ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION),
					 errmsg("could not connect to the SOAP service"),
					 errdetail("%s: %s", req->url, why),
					 errhint("Check kappa.soap_url.")));
			break;
		case CURLE_UNSUPPORTED_PROTOCOL:
		case CURLE_URL_MALFORMAT:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("libcurl cannot use the SOAP service's URL"),
					 errdetail("%s: %s", req->url, why),
					 errhint("Check kappa.soap_url.")));
			break;
		case CURLE_OUT_OF_MEMORY:
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory in libcurl"),
					 errdetail("%s", why)));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("SOAP request failed: %s", curl_easy_strerror(code)),
					 errdetail("%s: %s", req->url, why)));
	}
}

/* HTTP status outside 2xx, when the body is not a SOAP Fault. */
void
soap_raise_http_error(const SoapResponse *resp, const char *url)
{
	const char *reason = "";
	char		excerpt[161];
	size_t		n = Min(resp->body_len, sizeof(excerpt) - 1);

	/* "HTTP/1.1 500 Internal Server Error" -> "Internal Server Error" */
	if (resp->status_line[0] != '\0')
	{
		const char *p = strchr(resp->status_line, ' ');

		if (p)
			p = strchr(p + 1, ' ');
		if (p)
			reason = p + 1;
	}
	/* printable ASCII only: the body is the service's, not ours */
	for (size_t i = 0; i < n; i++)
	{
		unsigned char c = (unsigned char) resp->body[i];

		excerpt[i] = (c >= 0x20 && c < 0x7f) ? (char) c : ' ';
	}
	excerpt[n] = '\0';

	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("http %ld%s%s from the SOAP service", resp->http_status,
					reason[0] ? " " : "", reason),
			 resp->body_len > 0 ?
			 errdetail("%s answered with HTTP status %ld and no SOAP Fault; the response begins with \"%s\".",
					   url, resp->http_status, excerpt) :
			 errdetail("%s answered with HTTP status %ld and an empty body.",
					   url, resp->http_status),
			 (resp->http_status >= 300 && resp->http_status < 400) ?
			 errhint("Redirects are not followed: set kappa.soap_url to the service's final address.") : 0));
}

/* ---------------------------------------------------------------------
 * The transfer
 * ---------------------------------------------------------------------
 */
static void
ensure_handles(void)
{
	if (soap_multi == NULL)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not initialize libcurl")));
		soap_multi = curl_multi_init();
		if (soap_multi == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl multi handle")));
	}
	if (soap_easy == NULL)
	{
		soap_easy = curl_easy_init();
		if (soap_easy == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
	}
	if (soap_headers == NULL)
	{
		struct curl_slist *h = NULL;
		struct curl_slist *next;

		/* SOAP 1.1 quotes the SOAPAction value; "Expect:" drops 100-continue */
		const char *const lines[] = {
			"Content-Type: text/xml; charset=utf-8",
			"SOAPAction: \"" SOAP_ACTION "\"",
			"Accept: text/xml",
			"Expect:",
		};

		for (size_t i = 0; i < lengthof(lines); i++)
		{
			next = curl_slist_append(h, lines[i]);
			if (next == NULL)
			{
				curl_slist_free_all(h);
				ereport(ERROR,
						(errcode(ERRCODE_OUT_OF_MEMORY),
						 errmsg("out of memory")));
			}
			h = next;
		}
		soap_headers = h;
	}
}

static void
wipe_request(void)
{
	if (soap_request_data)
	{
		explicit_bzero(soap_request_data, soap_request_len);
		soap_request_data = NULL;
		soap_request_len = 0;
	}
}

/*
 * After an error anywhere in a poll: detach the transfer and wipe the
 * request.  The handles stay for the next poll (and their connections).
 */
void
soap_client_abort(void)
{
	if (soap_easy_added)
	{
		/*
		 * The error buffer is soap_call()'s, whose frame an error has left:
		 * libcurl must not write there while it lets the transfer go.
		 */
		(void) curl_easy_setopt(soap_easy, CURLOPT_ERRORBUFFER, NULL);
		curl_multi_remove_handle(soap_multi, soap_easy);
		soap_easy_added = false;
	}
	wipe_request();
}

#define setopt(opt, val) \
	do { \
		CURLcode	rc_ = curl_easy_setopt(soap_easy, opt, val); \
		if (rc_ != CURLE_OK) \
			ereport(ERROR, \
					(errcode(ERRCODE_INTERNAL_ERROR), \
					 errmsg("could not set libcurl option %s: %s", #opt, \
							curl_easy_strerror(rc_)))); \
	} while (0)

/*
 * POST the request and collect the response.  Transport failures,
 * timeouts and the size limit are raised as errors; the HTTP status is
 * left to the caller (a SOAP Fault comes with status 500).
 */
void
soap_call(const SoapRequest *req, SoapResponse *resp)
{
	StringInfoData body;
	SoapTransfer transfer;
	char		errbuf[CURL_ERROR_SIZE];
	CURLcode	result = CURLE_OK;
	CURLMsg    *msg;
	int			running = 1;
	int			pending;
	bool		done = false;

	ensure_handles();
	soap_client_abort();

	memset(resp, 0, sizeof(*resp));
	memset(&transfer, 0, sizeof(transfer));
	transfer.resp = resp;
	transfer.max_bytes = (size_t) req->max_response_bytes;
	errbuf[0] = '\0';

	/*
	 * Sized so that it never moves while it is built: a buffer left behind
	 * by repalloc would keep a copy of the password.  Escaping grows a
	 * value at most six times.
	 */
	initStringInfo(&body);
	enlargeStringInfo(&body, 2048 +
					  6 * (strlen(req->username ? req->username : "") +
						   strlen(req->password ? req->password : "") +
						   strlen(req->page_token ? req->page_token : "")));
	soap_request_data = body.data;
	soap_request_len = body.maxlen;
	soap_build_request(&body, req);
	Assert(body.data == soap_request_data);

	curl_easy_reset(soap_easy);
	setopt(CURLOPT_URL, req->url);
	setopt(CURLOPT_POST, 1L);
	setopt(CURLOPT_POSTFIELDS, body.data);
	setopt(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body.len);
	setopt(CURLOPT_HTTPHEADER, soap_headers);
	setopt(CURLOPT_USERAGENT, "pg_kappa-soap-poller");
	setopt(CURLOPT_WRITEFUNCTION, soap_write_body);
	setopt(CURLOPT_WRITEDATA, &transfer);
	setopt(CURLOPT_HEADERFUNCTION, soap_read_header);
	setopt(CURLOPT_HEADERDATA, &transfer);
	setopt(CURLOPT_ERRORBUFFER, errbuf);
	setopt(CURLOPT_NOSIGNAL, 1L);
	setopt(CURLOPT_TIMEOUT_MS, (long) req->timeout_ms);
	setopt(CURLOPT_CONNECTTIMEOUT_MS, (long) req->timeout_ms);
	setopt(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t) req->max_response_bytes);
	setopt(CURLOPT_ACCEPT_ENCODING, "");
	setopt(CURLOPT_FOLLOWLOCATION, 0L);
#if LIBCURL_VERSION_NUM >= 0x075500
	setopt(CURLOPT_PROTOCOLS_STR, "http,https");
	setopt(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
	setopt(CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
	setopt(CURLOPT_REDIR_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	setopt(CURLOPT_SSL_VERIFYPEER, 1L);
	setopt(CURLOPT_SSL_VERIFYHOST, 2L);
	if (req->ca_file && req->ca_file[0] != '\0')
		setopt(CURLOPT_CAINFO, req->ca_file);

	if (curl_multi_add_handle(soap_multi, soap_easy) != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not start the SOAP request")));
	soap_easy_added = true;

	while (!done)
	{
		CURLMcode	mc;

		mc = curl_multi_perform(soap_multi, &running);
		if (mc != CURLM_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("libcurl failed: %s", curl_multi_strerror(mc))));
		while ((msg = curl_multi_info_read(soap_multi, &pending)) != NULL)
		{
			if (msg->msg == CURLMSG_DONE && msg->easy_handle == soap_easy)
			{
				result = msg->data.result;
				done = true;
			}
		}
		if (done || running == 0)
			break;

		/* short steps: SIGTERM and postmaster death are noticed quickly */
		mc = curl_multi_poll(soap_multi, NULL, 0, 100, NULL);
		if (mc != CURLM_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("libcurl failed: %s", curl_multi_strerror(mc))));
		CHECK_FOR_INTERRUPTS();
		if (!PostmasterIsAlive())
			proc_exit(1);
	}

	curl_easy_getinfo(soap_easy, CURLINFO_RESPONSE_CODE, &resp->http_status);
	soap_client_abort();

	if (result != CURLE_OK)
		raise_transfer_error(result, errbuf, req, &transfer);
	if (resp->body == NULL)
		resp->body = palloc0(1);
}
