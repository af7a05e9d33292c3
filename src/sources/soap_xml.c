/*-------------------------------------------------------------------------
 *
 * soap_xml.c
 *	  The SOAP poller's parser: a GetPaymentConfirmationsResponse (or a
 *	  SOAP Fault) read with libxml2 into plain C structures.
 *
 * The response comes from outside the database, so the parser is locked
 * down per document, without touching libxml2's process-wide settings
 * (the backend's xml type uses libxml2 too):
 *
 *	- a document type declaration is refused outright: the parser stops
 *	  at "<!DOCTYPE" (SAX internalSubset callback), before any entity is
 *	  declared, so neither entity expansion ("billion laughs") nor external
 *	  entities (XXE: files, URLs) nor external DTDs are possible;
 *	- XML_PARSE_NONET, and no XML_PARSE_NOENT, XML_PARSE_DTDLOAD,
 *	  XML_PARSE_DTDATTR, XML_PARSE_DTDVALID, XML_PARSE_XINCLUDE or
 *	  XML_PARSE_HUGE (libxml2's default limits on depth and text size stay);
 *	- errors go to a per-parser structured handler and become one ereport
 *	  with the line and libxml2's reason.
 *
 * Elements are matched by namespace URI and local name, never by prefix:
 * the service's messages use different prefixes from page to page.  The
 * document (libxml2 allocates with malloc) is freed when the memory
 * context the page was parsed in goes away, errors included.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include <libxml/parser.h>
#include <libxml/parserInternals.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>

#include "mb/pg_wchar.h"
#include "sources/soap.h"
#include "utils/memutils.h"

typedef struct SoapParseState
{
	bool		doctype;		/* a DOCTYPE was met: parsing stopped */
	bool		failed;
	int			line;
	char		message[256];	/* the first error */
} SoapParseState;

static bool soap_xml_initialized = false;

void
soap_xml_init(void)
{
	/* idempotent; never xmlCleanupParser(): the backend may use libxml2 */
	if (!soap_xml_initialized)
	{
		xmlInitParser();
		soap_xml_initialized = true;
	}
}

/* ---------------------------------------------------------------------
 * Parser callbacks (per parser context, not global)
 * ---------------------------------------------------------------------
 */
static void
refuse_doctype(void *ctx, const xmlChar *name, const xmlChar *external_id,
			   const xmlChar *system_id)
{
	xmlParserCtxtPtr ctxt = ctx;
	SoapParseState *st = ctxt->_private;

	st->doctype = true;
	xmlStopParser(ctxt);
}

static xmlParserInputPtr
refuse_entity(void *ctx, const xmlChar *public_id, const xmlChar *system_id)
{
	return NULL;
}

static void collect_stray_error(void *ctx, xmlErrorPtr error);

static void
collect_error(void *ctx, xmlErrorPtr error)
{
	xmlParserCtxtPtr ctxt = ctx;

	collect_stray_error(ctxt ? ctxt->_private : NULL, error);
}

/*
 * Errors libxml2 raises without a parser context (converting the input from
 * the encoding it declares, I/O, memory) go to the process-wide handlers,
 * which print them on stderr: outside the server's log format, and lost for
 * the error we report (a document with bytes invalid in its encoding would
 * say only "Premature end of data").  While we call libxml2 they are
 * collected with the parser's own errors instead, and the handlers that
 * were there (PostgreSQL's, if the backend used its xml functions) are put
 * back afterwards.  Old-style generic messages, which a structured handler
 * leaves unused but for libxml2's debugging output, are dropped.
 */
typedef struct SoapXmlHandlers
{
	xmlStructuredErrorFunc structured;
	void	   *structured_ctx;
	xmlGenericErrorFunc generic;
	void	   *generic_ctx;
} SoapXmlHandlers;

static void
collect_stray_error(void *ctx, xmlErrorPtr error)
{
	SoapParseState *st = ctx;
	size_t		len;

	if (st == NULL || error == NULL || error->level < XML_ERR_ERROR || st->failed)
		return;
	st->failed = true;
	st->line = error->line;
	strlcpy(st->message, error->message ? error->message : "unknown error",
			sizeof(st->message));
	len = strlen(st->message);
	while (len > 0 && (st->message[len - 1] == '\n' || st->message[len - 1] == ' '))
		st->message[--len] = '\0';
}

static void
drop_generic_error(void *ctx, const char *msg,...)
{
}

static void
xml_handlers_push(SoapXmlHandlers *saved, SoapParseState *st)
{
	saved->structured = xmlStructuredError;
	saved->structured_ctx = xmlStructuredErrorContext;
	saved->generic = xmlGenericError;
	saved->generic_ctx = xmlGenericErrorContext;
	xmlSetStructuredErrorFunc(st, collect_stray_error);
	xmlSetGenericErrorFunc(NULL, drop_generic_error);
}

static void
xml_handlers_pop(const SoapXmlHandlers *saved)
{
	xmlSetStructuredErrorFunc(saved->structured_ctx, saved->structured);
	xmlSetGenericErrorFunc(saved->generic_ctx, saved->generic);
}

static void
free_doc(void *arg)
{
	xmlFreeDoc((xmlDocPtr) arg);
}

/* ---------------------------------------------------------------------
 * Tree helpers
 * ---------------------------------------------------------------------
 */
static bool
is_element(xmlNodePtr node, const char *ns, const char *name)
{
	return node->type == XML_ELEMENT_NODE &&
		node->ns != NULL && node->ns->href != NULL &&
		strcmp((const char *) node->ns->href, ns) == 0 &&
		strcmp((const char *) node->name, name) == 0;
}

static xmlNodePtr
first_element(xmlNodePtr node)
{
	for (; node != NULL; node = node->next)
		if (node->type == XML_ELEMENT_NODE)
			return node;
	return NULL;
}

/* "{urn:x}Name", for messages */
static char *
element_name(xmlNodePtr node)
{
	/* the service's text, in error details: a bounded piece of it */
	const char *ns = node->ns && node->ns->href ? (const char *) node->ns->href : NULL;
	const char *name = (const char *) node->name;
	int			nsclip = ns ? pg_mbcliplen(ns, strlen(ns), 200) : 0;
	int			nameclip = pg_mbcliplen(name, strlen(name), 200);

	if (ns)
		return psprintf("{%.*s}%.*s", nsclip, ns, nameclip, name);
	return pnstrdup(name, nameclip);
}

static bool
is_xml_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/*
 * The text content of a leaf element, trimmed of XML white space.  NULL
 * with *why set if the element has element children.
 */
static char *
leaf_text(xmlNodePtr element, const char **why)
{
	xmlNodePtr child = element->children;
	const char *only = NULL;
	StringInfoData buf;
	bool		several = false;
	const char *s;
	size_t		len;

	for (xmlNodePtr n = child; n != NULL; n = n->next)
	{
		if (n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE)
		{
			if (only != NULL)
				several = true;
			else
				only = n->content ? (const char *) n->content : "";
		}
		else if (n->type == XML_COMMENT_NODE || n->type == XML_PI_NODE)
			continue;
		else
		{
			*why = "has child elements";
			return NULL;
		}
	}
	if (several)
	{
		initStringInfo(&buf);
		for (xmlNodePtr n = child; n != NULL; n = n->next)
			if ((n->type == XML_TEXT_NODE || n->type == XML_CDATA_SECTION_NODE) && n->content)
				appendStringInfoString(&buf, (const char *) n->content);
		s = buf.data;
	}
	else
		s = only ? only : "";

	while (is_xml_space(*s))
		s++;
	len = strlen(s);
	while (len > 0 && is_xml_space(s[len - 1]))
		len--;
	return pnstrdup(s, len);
}

/* ---------------------------------------------------------------------
 * Confirmations
 * ---------------------------------------------------------------------
 */
static void
read_confirmation(xmlNodePtr element, SoapConfirmation *c)
{
	static const char *const names[] = {
		"PaymentId", "SaleId", "Status", "Amount", "ConfirmedAt"
	};
	char	  **fields[] = {
		&c->payment_id, &c->sale_id, &c->status, &c->amount, &c->confirmed_at
	};

	memset(c, 0, sizeof(*c));
	c->node = element;
	c->line = (int) xmlGetLineNo(element);

	for (xmlNodePtr n = element->children; n != NULL; n = n->next)
	{
		if (n->type != XML_ELEMENT_NODE)
			continue;
		for (size_t i = 0; i < lengthof(names); i++)
		{
			const char *why = NULL;
			char	   *text;

			if (!is_element(n, SOAP_PAYMENTS_NS, names[i]))
				continue;
			if (*fields[i] != NULL)
			{
				if (c->shape_error == NULL)
					c->shape_error = psprintf("Confirmation has more than one %s element", names[i]);
				break;
			}
			text = leaf_text(n, &why);
			if (text == NULL)
			{
				if (c->shape_error == NULL)
					c->shape_error = psprintf("%s %s", names[i], why);
				text = "";
			}
			*fields[i] = text;
			if (i == 3)
			{
				xmlChar    *currency = xmlGetNoNsProp(n, (const xmlChar *) "currency");

				if (currency)
				{
					c->currency = pstrdup((const char *) currency);
					xmlFree(currency);
				}
			}
			break;
		}
		/* other elements: ignored, as later versions of the service may add some */
	}
}

/* ---------------------------------------------------------------------
 * The document
 * ---------------------------------------------------------------------
 */
static void
shape_error(const char *detail) pg_attribute_noreturn();

static void
shape_error(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_XML_DOCUMENT),
			 errmsg("unexpected SOAP response"),
			 errdetail("%s", detail)));
}

static void
read_fault(xmlNodePtr fault, SoapPage *page)
{
	page->is_fault = true;
	for (xmlNodePtr n = fault->children; n != NULL; n = n->next)
	{
		const char *why = NULL;

		if (n->type != XML_ELEMENT_NODE)
			continue;
		/* SOAP 1.1 fault parts are unqualified; accept qualified ones too */
		if (n->ns != NULL && strcmp((const char *) n->ns->href, SOAP_ENVELOPE_NS) != 0)
			continue;
		if (strcmp((const char *) n->name, "faultcode") == 0)
			page->fault_code = leaf_text(n, &why);
		else if (strcmp((const char *) n->name, "faultstring") == 0)
			page->fault_string = leaf_text(n, &why);
	}
	if (page->fault_string == NULL || page->fault_string[0] == '\0')
		page->fault_string = "(the fault has no faultstring)";
	if (page->fault_code == NULL)
		page->fault_code = "";
}

static void
read_response(xmlNodePtr response, SoapPage *page)
{
	int			n = 0;

	for (xmlNodePtr c = response->children; c != NULL; c = c->next)
		if (is_element(c, SOAP_PAYMENTS_NS, "Confirmation"))
			n++;
	page->confirmations = n > 0 ? palloc_extended(sizeof(SoapConfirmation) * n, MCXT_ALLOC_HUGE) : NULL;

	n = 0;
	for (xmlNodePtr c = response->children; c != NULL; c = c->next)
	{
		if (is_element(c, SOAP_PAYMENTS_NS, "Confirmation"))
			read_confirmation(c, &page->confirmations[n++]);
		else if (is_element(c, SOAP_PAYMENTS_NS, "NextPageToken"))
		{
			const char *why = NULL;
			char	   *token = leaf_text(c, &why);

			if (token == NULL)
				shape_error("NextPageToken has child elements.");
			if (page->next_page_token != NULL)
				shape_error("The response has more than one NextPageToken.");
			/* an empty token is the same as none: the last page */
			page->next_page_token = token[0] != '\0' ? token : NULL;
		}
	}
	page->nconfirmations = n;
}

/*
 * Parse a response body.  A SOAP Fault is returned as such (is_fault);
 * a document that is not well-formed XML, has a DOCTYPE, or is not a SOAP
 * 1.1 envelope around a GetPaymentConfirmationsResponse is an error.
 */
SoapPage *
soap_parse_response(const char *data, size_t len, bool is_utf8)
{
	xmlParserCtxtPtr ctxt;
	SoapParseState st;
	SoapXmlHandlers saved;
	xmlDocPtr	doc;
	bool		well_formed;
	MemoryContextCallback *cb;
	SoapPage   *page;
	xmlNodePtr	root;
	xmlNodePtr	body = NULL;
	xmlNodePtr	content;

	soap_xml_init();
	memset(&st, 0, sizeof(st));

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_XML_DOCUMENT),
				 errmsg("could not parse the SOAP response"),
				 errdetail("The response is empty.")));
	if (len > (size_t) INT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("SOAP response is too large to parse")));

	/* allocated first: once parsed, the document must not leak */
	cb = palloc(sizeof(MemoryContextCallback));
	page = palloc0(sizeof(SoapPage));

	xml_handlers_push(&saved, &st);
	ctxt = xmlCreateMemoryParserCtxt(data, (int) len);
	if (ctxt == NULL)
	{
		xml_handlers_pop(&saved);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create an XML parser")));
	}

	/* this parser's own handlers: the process-wide defaults stay as they are */
	ctxt->_private = &st;
	ctxt->sax->internalSubset = refuse_doctype;
	ctxt->sax->externalSubset = NULL;
	ctxt->sax->resolveEntity = refuse_entity;
	ctxt->sax->serror = collect_error;
	ctxt->sax->error = NULL;
	ctxt->sax->warning = NULL;
	ctxt->sax->fatalError = NULL;
	ctxt->vctxt.error = NULL;
	ctxt->vctxt.warning = NULL;
	/*
	 * is_utf8: the text was converted already (kappa.soap_decode), and an
	 * encoding declaration in it no longer says what its bytes are.
	 */
	xmlCtxtUseOptions(ctxt, (is_utf8 ? XML_PARSE_IGNORE_ENC : 0) | XML_PARSE_NONET | XML_PARSE_NOCDATA | XML_PARSE_COMPACT |
					   XML_PARSE_BIG_LINES);
	ctxt->replaceEntities = 0;
	ctxt->loadsubset = 0;
	ctxt->validate = 0;

	xmlParseDocument(ctxt);
	doc = ctxt->myDoc;
	ctxt->myDoc = NULL;
	well_formed = ctxt->wellFormed && !st.failed;
	xmlFreeParserCtxt(ctxt);
	xml_handlers_pop(&saved);

	if (st.doctype || (doc != NULL && (doc->intSubset != NULL || doc->extSubset != NULL)))
	{
		if (doc)
			xmlFreeDoc(doc);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_XML_DOCUMENT),
				 errmsg("SOAP response has a document type declaration"),
				 errdetail("Document type declarations (and with them entity declarations and external DTDs) are refused in SOAP messages; nothing was expanded or loaded.")));
	}
	if (!well_formed || doc == NULL)
	{
		if (doc)
			xmlFreeDoc(doc);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_XML_DOCUMENT),
				 errmsg("could not parse the SOAP response"),
				 st.failed && st.line > 0 ?
				 errdetail("Line %d: %s.", st.line, st.message) :
				 st.failed ?
				 errdetail("%s.", st.message) :
				 errdetail("The response is not well-formed XML.")));
	}

	/* from here on, the document goes with the memory context */
	cb->func = free_doc;
	cb->arg = doc;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, cb);
	page->doc = doc;

	root = xmlDocGetRootElement(doc);
	if (root == NULL)
		shape_error("The document has no element.");
	if (!is_element(root, SOAP_ENVELOPE_NS, "Envelope"))
	{
		if (root->ns && strcmp((const char *) root->ns->href,
							   "http://www.w3.org/2003/05/soap-envelope") == 0)
			shape_error("The response is a SOAP 1.2 envelope; the service speaks SOAP 1.1.");
		shape_error(psprintf("The document element is %s, not a SOAP 1.1 Envelope.",
							 element_name(root)));
	}
	for (xmlNodePtr n = first_element(root->children); n != NULL; n = first_element(n->next))
	{
		if (is_element(n, SOAP_ENVELOPE_NS, "Body"))
		{
			body = n;
			break;
		}
	}
	if (body == NULL)
		shape_error("The SOAP Envelope has no Body.");

	content = first_element(body->children);
	if (content == NULL)
		shape_error("The SOAP Body is empty.");
	if (is_element(content, SOAP_ENVELOPE_NS, "Fault"))
		read_fault(content, page);
	else if (is_element(content, SOAP_PAYMENTS_NS, "GetPaymentConfirmationsResponse"))
		read_response(content, page);
	else
		shape_error(psprintf("The SOAP Body holds %s, not {%s}GetPaymentConfirmationsResponse.",
							 element_name(content), SOAP_PAYMENTS_NS));
	return page;
}

/*
 * The Confirmation element as XML text, for kappa.dead_letters: a document
 * of its own, with the namespaces it uses that were declared further up
 * (a copy into a new document declares them on its root), so that the
 * dead letter can be read, or sent again, by itself.
 */
char *
soap_confirmation_xml(SoapPage *page, int i, size_t *len)
{
	SoapParseState st;
	SoapXmlHandlers saved;
	xmlBufferPtr buf;
	xmlDocPtr	alone;
	xmlNodePtr	copy;
	int			dumped;
	char	   *result;

	memset(&st, 0, sizeof(st));
	xml_handlers_push(&saved, &st);
	buf = xmlBufferCreate();
	alone = xmlNewDoc((const xmlChar *) "1.0");
	copy = alone ? xmlDocCopyNode((xmlNodePtr) page->confirmations[i].node, alone, 1) : NULL;
	if (buf == NULL || copy == NULL)
	{
		if (buf)
			xmlBufferFree(buf);
		if (alone)
			xmlFreeDoc(alone);
		xml_handlers_pop(&saved);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	}
	xmlDocSetRootElement(alone, copy);
	dumped = xmlNodeDump(buf, alone, copy, 0, 0);
	xml_handlers_pop(&saved);
	if (dumped < 0)
	{
		xmlBufferFree(buf);
		xmlFreeDoc(alone);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not write a payment confirmation as XML"),
				 st.failed ? errdetail("%s.", st.message) : 0));
	}
	*len = xmlBufferLength(buf);
	result = palloc(*len + 1);
	memcpy(result, xmlBufferContent(buf), *len);
	result[*len] = '\0';
	xmlBufferFree(buf);
	xmlFreeDoc(alone);
	return result;
}
