/*-------------------------------------------------------------------------
 *
 * kafka.c
 *	  Kafka glue: librdkafka configurations built from the kappa.* GUCs,
 *	  librdkafka errors mapped to SQLSTATEs, and librdkafka's logs and
 *	  errors carried to the owning PostgreSQL process.
 *
 * librdkafka runs threads of its own.  Those threads must never call a
 * PostgreSQL function (ereport, palloc, ...): PostgreSQL's backend code is
 * single-threaded.  So every client is created with log.queue=true and its
 * log and error callbacks only copy the text into a small process-local ring;
 * they run inside rd_kafka_poll() on the owner's thread, and the owner turns
 * the ring into ereport(LOG) lines after polling (kafka_flush_log).
 * Delivery reports are served the same way, by rd_kafka_poll.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include "kafka/kafka.h"
#include "common/hashfn.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/pmsignal.h"
#include "utils/timestamp.h"
#include "utils/elog.h"
#include "utils/memutils.h"

/* ---------------------------------------------------------------------
 * kappa.kafka_options: "key=value; key=value".  A backslash escapes the
 * next character, so a value may contain ";" or "=" as "\;" and "\=".
 * ---------------------------------------------------------------------
 */

/* Properties pg_kappa sets itself; overriding them would break it. */
static const char *const kafka_reserved_options[] = {
	"bootstrap.servers",		/* kappa.brokers */
	"metadata.broker.list",		/* alias of bootstrap.servers */
	"log.queue",				/* keeps librdkafka threads out of PG code */
	"enable.auto.commit",		/* offsets live in PostgreSQL */
	"enable.auto.offset.store",
	NULL
};

static bool
kafka_option_is_reserved(const char *key)
{
	for (int i = 0; kafka_reserved_options[i]; i++)
	{
		if (strcmp(key, kafka_reserved_options[i]) == 0)
			return true;
	}
	return false;
}

static char *
trim_copy(StringInfo buf)
{
	int			start = 0;
	int			end = buf->len;

	while (start < end && isspace((unsigned char) buf->data[start]))
		start++;
	while (end > start && isspace((unsigned char) buf->data[end - 1]))
		end--;
	return pnstrdup(buf->data + start, end - start);
}

List *
kafka_options_parse(const char *options, char **error)
{
	List	   *result = NIL;
	StringInfoData key;
	StringInfoData value;
	bool		in_value = false;
	const char *p = options ? options : "";

	initStringInfo(&key);
	initStringInfo(&value);

	for (;;)
	{
		char		c = *p;

		if (c == '\\' && p[1] != '\0')
		{
			appendStringInfoChar(in_value ? &value : &key, p[1]);
			p += 2;
			continue;
		}
		if (c == '=' && !in_value)
		{
			in_value = true;
			p++;
			continue;
		}
		if (c == ';' || c == '\n' || c == '\0')
		{
			char	   *k = trim_copy(&key);

			if (k[0] != '\0' || in_value)
			{
				KafkaOption *opt;

				if (!in_value || k[0] == '\0')
				{
					/*
					 * Not quoted: a missing "=" leaves a password typed
					 * after its key (or pasted alone) in the text.
					 */
					*error = psprintf("Option %d is not of the form key=value.",
									  list_length(result) + 1);
					return NIL;
				}
				opt = palloc(sizeof(KafkaOption));
				opt->key = k;
				opt->value = trim_copy(&value);
				result = lappend(result, opt);
			}
			resetStringInfo(&key);
			resetStringInfo(&value);
			in_value = false;
			if (c == '\0')
				break;
			p++;
			continue;
		}
		appendStringInfoChar(in_value ? &value : &key, c);
		p++;
	}
	return result;
}

/*
 * Check every pair against librdkafka itself, so that unknown properties
 * and bad values are rejected when the configuration is loaded.  Values are
 * never quoted back: they may be passwords.
 */
/* Properties that hold secrets: refused in kappa.kafka_options. */
bool
kafka_option_is_secret(const char *key)
{
	return strstr(key, "password") != NULL ||
		strstr(key, "secret") != NULL ||
		strcmp(key, "ssl.key.pem") == 0 ||
		strcmp(key, "ssl_key") == 0 ||
		strcmp(key, "sasl.oauthbearer.config") == 0;
}

bool
kafka_options_validate(const char *options, char **error)
{
	List	   *opts;
	ListCell   *lc;
	rd_kafka_conf_t *conf;
	bool		ok = true;

	*error = NULL;
	opts = kafka_options_parse(options, error);
	if (*error)
		return false;

	conf = rd_kafka_conf_new();
	foreach(lc, opts)
	{
		KafkaOption *opt = lfirst(lc);
		char		errstr[512];

		if (kafka_option_is_reserved(opt->key))
		{
			*error = psprintf("Property \"%s\" is managed by pg_kappa and cannot be set in kappa.kafka_options.",
							  opt->key);
			ok = false;
			break;
		}
		if (kafka_option_is_secret(opt->key))
		{
			*error = psprintf("Property \"%s\" holds a secret: put it in the file named by kappa.secrets_file as \"kafka.%s = ...\" (PostgreSQL writes parameter values to the server log).",
							  opt->key, opt->key);
			ok = false;
			break;
		}
		if (rd_kafka_conf_set(conf, opt->key, opt->value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		{
			bool		unknown = strstr(errstr, "No such configuration property") != NULL;

			if (unknown)
				*error = psprintf("librdkafka has no configuration property \"%s\".", opt->key);
			else
				*error = psprintf("librdkafka rejected the value of property \"%s\".", opt->key);
			ok = false;
			break;
		}
	}

	/*
	 * librdkafka takes a message larger than the producer's queue
	 * (queue.buffering.max.kbytes, 65536 by pg_kappa's default) for a full
	 * queue, for ever: a producer would wait on such a change without end.
	 */
	if (ok)
	{
		double		max_message = 1000000;
		double		queue_kbytes = 65536;

		foreach(lc, opts)
		{
			KafkaOption *opt = lfirst(lc);

			if (strcmp(opt->key, "message.max.bytes") == 0)
				max_message = strtod(opt->value, NULL);
			else if (strcmp(opt->key, "queue.buffering.max.kbytes") == 0)
				queue_kbytes = strtod(opt->value, NULL);
		}
		if (max_message > queue_kbytes * 1024)
		{
			*error = psprintf("Property \"message.max.bytes\" (%.0f) is larger than the producer queue, \"queue.buffering.max.kbytes\" (%.0f kB): a message that large would wait for room for ever.",
							  max_message, queue_kbytes);
			ok = false;
		}
	}
	rd_kafka_conf_destroy(conf);
	return ok;
}

/* ---------------------------------------------------------------------
 * The log ring: filled by librdkafka callbacks (on the owner's thread,
 * inside rd_kafka_poll), emptied by kafka_flush_log().
 * ---------------------------------------------------------------------
 */
#define KAFKA_LOG_RING_SIZE 32

typedef struct KafkaLogLine
{
	int			elevel;
	char		text[480];
} KafkaLogLine;

static KafkaLogLine kafka_log_ring[KAFKA_LOG_RING_SIZE];
static int	kafka_log_head = 0;		/* next to emit */
static int	kafka_log_count = 0;
static int	kafka_log_dropped = 0;

static void
kafka_log_push(int elevel, const char *role, const char *fac, const char *buf)
{
	KafkaLogLine *line;

	if (kafka_log_count == KAFKA_LOG_RING_SIZE)
	{
		kafka_log_dropped++;
		return;
	}
	line = &kafka_log_ring[(kafka_log_head + kafka_log_count) % KAFKA_LOG_RING_SIZE];
	line->elevel = elevel;
	snprintf(line->text, sizeof(line->text), "kafka %s: %s: %s", role, fac, buf);
	kafka_log_count++;
}

void
kafka_flush_log(void)
{
	while (kafka_log_count > 0)
	{
		KafkaLogLine *line = &kafka_log_ring[kafka_log_head];

		ereport(line->elevel, (errmsg_internal("%s", line->text)));
		kafka_log_head = (kafka_log_head + 1) % KAFKA_LOG_RING_SIZE;
		kafka_log_count--;
	}
	if (kafka_log_dropped > 0)
	{
		ereport(LOG, (errmsg("%d librdkafka log lines were dropped", kafka_log_dropped)));
		kafka_log_dropped = 0;
	}
}

/* syslog levels (0 = emergency ... 7 = debug) to PostgreSQL levels */
static int
kafka_log_elevel(int level)
{
	if (level <= 4)
		return LOG;
	if (level <= 6)
		return DEBUG1;
	return DEBUG2;
}

static void
kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	KafkaClient *client = rd_kafka_opaque(rk);

	kafka_log_push(kafka_log_elevel(level), client ? client->role : "?", fac, buf);
}

static void
kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	KafkaClient *client = opaque;

	if (client == NULL)
		return;
	client->last_error = err;
	strlcpy(client->last_error_text, reason, sizeof(client->last_error_text));
	client->error_pending = true;
	if (err == RD_KAFKA_RESP_ERR__FATAL)
	{
		char		fatal[256];

		client->fatal = true;
		client->last_error = rd_kafka_fatal_error(rk, fatal, sizeof(fatal));
		strlcpy(client->last_error_text, fatal, sizeof(client->last_error_text));
	}
	/* librdkafka logs the same through log_cb; only a fatal error is new */
	if (client->fatal)
		kafka_log_push(WARNING, client->role, rd_kafka_err2name(err), reason);
}

/*
 * The default delivery report: counts into the message's KafkaDelivery.
 * Runs inside rd_kafka_poll on the owner's thread; no PostgreSQL calls.
 */
static void
kafka_delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	KafkaDelivery *delivery = msg->_private;

	if (delivery == NULL)
		return;
	delivery->pending--;
	if (msg->err)
	{
		if (delivery->failed++ == 0)
			delivery->error = msg->err;
	}
	else
		delivery->delivered++;
}

/* ---------------------------------------------------------------------
 * Configurations
 * ---------------------------------------------------------------------
 */
static void
conf_set_or_error(rd_kafka_conf_t *conf, const char *key, const char *value,
				  const char *source)
{
	char		errstr[512];

	if (rd_kafka_conf_set(conf, key, value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		rd_kafka_conf_destroy(conf);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid Kafka client property \"%s\"", key),
				 source ? errhint("Check %s.", source) : 0));
	}
}

/* ---------------------------------------------------------------------
 * Which clients a property concerns.  kappa.kafka_options (and the secrets
 * file) serve every client of the instance, producers and consumers alike;
 * handed a producer property, a consumer logs a CONFWARN at every start
 * (and a producer for a consumer property).  So each property goes only to
 * the clients it concerns, as librdkafka's own property table says: the
 * "C/P" column of rd_kafka_conf_properties_show(), read once per process.
 * A property missing from the table goes to every client, as before.
 * ---------------------------------------------------------------------
 */
#define KAFKA_SCOPE_CONSUMER	0x1
#define KAFKA_SCOPE_PRODUCER	0x2
#define KAFKA_SCOPE_ALL			(KAFKA_SCOPE_CONSUMER | KAFKA_SCOPE_PRODUCER)

typedef struct KafkaPropertyScope
{
	char	   *name;
	int			scope;
} KafkaPropertyScope;

static List *kafka_scopes = NIL;	/* of KafkaPropertyScope, in TopMemoryContext */
static bool kafka_scopes_read = false;

/* One row of the table: "name | C/P | range | default | ...". */
static void
kafka_scope_parse_line(const char *line, int len, List **rows)
{
	const char *bar = memchr(line, '|', len);
	const char *bar2;
	const char *p;
	int			namelen;
	int			scope = 0;
	KafkaPropertyScope *row;
	ListCell   *lc;

	if (bar == NULL)
		return;
	namelen = bar - line;
	while (namelen > 0 && line[namelen - 1] == ' ')
		namelen--;
	if (namelen == 0 || memchr(line, ' ', namelen) != NULL ||
		strncmp(line, "Property", namelen) == 0 || line[0] == '-')
		return;
	bar2 = memchr(bar + 1, '|', len - (bar + 1 - line));
	if (bar2 == NULL)
		return;
	for (p = bar + 1; p < bar2; p++)
	{
		if (*p == '*')
			scope |= KAFKA_SCOPE_ALL;
		else if (*p == 'C')
			scope |= KAFKA_SCOPE_CONSUMER;
		else if (*p == 'P')
			scope |= KAFKA_SCOPE_PRODUCER;
		else if (*p != ' ')
			return;
	}
	if (scope == 0)
		return;
	/* global and topic tables may both list a property: join the scopes */
	foreach(lc, *rows)
	{
		KafkaPropertyScope *prev = lfirst(lc);

		if (strlen(prev->name) == (size_t) namelen &&
			strncmp(prev->name, line, namelen) == 0)
		{
			prev->scope |= scope;
			return;
		}
	}
	row = palloc(sizeof(KafkaPropertyScope));
	row->name = pnstrdup(line, namelen);
	row->scope = scope;
	*rows = lappend(*rows, row);
}

static void
kafka_scopes_load(void)
{
	char	   *text = NULL;
	size_t		size = 0;
	FILE	   *fp;
	MemoryContext old;

	kafka_scopes_read = true;
	fp = open_memstream(&text, &size);
	if (fp != NULL)
	{
		rd_kafka_conf_properties_show(fp);
		if (fclose(fp) != 0)
			size = 0;
	}

	old = MemoryContextSwitchTo(TopMemoryContext);
	for (const char *line = text; text != NULL && line < text + size;)
	{
		const char *nl = memchr(line, '\n', text + size - line);
		int			len = nl ? (int) (nl - line) : (int) (text + size - line);

		kafka_scope_parse_line(line, len, &kafka_scopes);
		line += len + 1;
	}
	MemoryContextSwitchTo(old);
	free(text);
	if (kafka_scopes == NIL)
		ereport(LOG,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("pg_kappa kafka: could not read librdkafka's property table"),
				 errdetail("Every property of kappa.kafka_options goes to every Kafka client.")));
}

/*
 * Properties librdkafka 2.0's table marks as the producer's that every
 * client uses: retry.backoff.ms spaces the retries of any protocol request,
 * a consumer's included (later releases mark it "*").
 */
static const char *const kafka_all_clients_options[] = {
	"retry.backoff.ms",
	NULL
};

/*
 * Does property name concern a client of this type?  Names may carry
 * librdkafka's "topic." prefix for topic properties.
 */
static bool
kafka_property_concerns(const char *name, rd_kafka_type_t type)
{
	int			want = type == RD_KAFKA_PRODUCER ? KAFKA_SCOPE_PRODUCER : KAFKA_SCOPE_CONSUMER;
	ListCell   *lc;

	if (!kafka_scopes_read)
		kafka_scopes_load();
	if (strncmp(name, "topic.", 6) == 0)
		name += 6;
	for (int i = 0; kafka_all_clients_options[i]; i++)
		if (strcmp(name, kafka_all_clients_options[i]) == 0)
			return true;
	foreach(lc, kafka_scopes)
	{
		KafkaPropertyScope *row = lfirst(lc);

		if (strcmp(row->name, name) == 0)
			return (row->scope & want) != 0;
	}
	return true;
}

/* Set a property from kappa.kafka_options or the secrets file, if it concerns the client. */
static void
conf_set_option(rd_kafka_conf_t *conf, rd_kafka_type_t type, const char *role,
				const KafkaOption *opt, const char *source)
{
	if (!kafka_property_concerns(opt->key, type))
	{
		elog(DEBUG1, "pg_kappa: %s property \"%s\" from %s not given to the %s client \"%s\"",
			 type == RD_KAFKA_PRODUCER ? "consumer" : "producer", opt->key, source,
			 type == RD_KAFKA_PRODUCER ? "producer" : "consumer", role);
		return;
	}
	conf_set_or_error(conf, opt->key, opt->value, source);
}

/*
 * A librdkafka configuration for one client of this process: our defaults
 * for the client type, then kappa.brokers, then kappa.kafka_options (which
 * win over the defaults, except for the properties pg_kappa owns).
 */
rd_kafka_conf_t *
kafka_conf_for(rd_kafka_type_t type, const char *role)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	List	   *opts;
	List	   *secrets;
	ListCell   *lc;
	char	   *error = NULL;
	char		client_id[128];

	snprintf(client_id, sizeof(client_id), "pg_kappa-%s", role);
	conf_set_or_error(conf, "client.id", client_id, NULL);
	conf_set_or_error(conf, "bootstrap.servers", kappa_brokers, NULL);
	conf_set_or_error(conf, "log.queue", "true", NULL);
	conf_set_or_error(conf, "socket.keepalive.enable", "true", NULL);

	if (type == RD_KAFKA_PRODUCER)
	{
		/*
		 * Idempotent: retries never duplicate or reorder within a partition.
		 * murmur2 partitions keys like the Java client, so topics we write
		 * are co-partitioned with what Kafka Streams and Connect write.  The
		 * local queue is bounded (64 MB): when Kafka is slower than the
		 * source, the producer pushes back instead of growing.
		 */
		conf_set_or_error(conf, "enable.idempotence", "true", NULL);
		conf_set_or_error(conf, "partitioner", "murmur2_random", NULL);
		conf_set_or_error(conf, "compression.type", "lz4", NULL);
		conf_set_or_error(conf, "linger.ms", "5", NULL);
		conf_set_or_error(conf, "batch.num.messages", "10000", NULL);
		conf_set_or_error(conf, "queue.buffering.max.messages", "100000", NULL);
		conf_set_or_error(conf, "queue.buffering.max.kbytes", "65536", NULL);
	}
	else
	{
		conf_set_or_error(conf, "enable.auto.commit", "false", NULL);
		conf_set_or_error(conf, "enable.auto.offset.store", "false", NULL);
		conf_set_or_error(conf, "enable.partition.eof", "false", NULL);
		conf_set_or_error(conf, "auto.offset.reset", "earliest", NULL);
		/* rankings are read while they change: do not sit on an idle fetch */
		conf_set_or_error(conf, "fetch.wait.max.ms", "100", NULL);

		/*
		 * A worker that ends without leaving the group (an error, a crash)
		 * holds its partitions until the coordinator gives up on it: 45 s
		 * by librdkafka's default, during which the worker started again
		 * waits to be assigned them.  Heartbeats come from librdkafka's own
		 * thread, so a long batch does not miss them.
		 */
		conf_set_or_error(conf, "session.timeout.ms", "10000", NULL);
	}

	opts = kafka_options_parse(kappa_kafka_options, &error);
	if (error)
	{
		rd_kafka_conf_destroy(conf);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for parameter \"kappa.kafka_options\""),
				 errdetail("%s", error)));
	}
	foreach(lc, opts)
		conf_set_option(conf, type, role, lfirst(lc), "kappa.kafka_options");
	secrets = kappa_read_secrets("kafka.");
	foreach(lc, secrets)
	{
		KafkaOption *opt = lfirst(lc);

		/* the properties pg_kappa owns, there as in kappa.kafka_options */
		if (kafka_option_is_reserved(opt->key))
		{
			rd_kafka_conf_destroy(conf);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("property \"%s\" in the secrets file is managed by pg_kappa",
							opt->key),
					 errdetail_secrets_file(),
					 errhint("Remove the line \"kafka.%s\" from the secrets file.", opt->key)));
		}
		conf_set_option(conf, type, role, opt, "kappa.secrets_file");
	}

	/*
	 * What exactly once rests on: a message is acknowledged once every
	 * in-sync replica has it, and retries neither duplicate nor reorder it.
	 * Not left to kappa.kafka_options (a value there is said to be ignored
	 * rather than refused by the check hook, which at server start would
	 * drop every other option, TLS and SASL included).
	 */
	if (type == RD_KAFKA_PRODUCER)
	{
		List	   *given = list_concat_copy(opts, secrets);

		foreach(lc, given)
		{
			KafkaOption *opt = lfirst(lc);
			bool		unsafe;

			if (strcmp(opt->key, "enable.idempotence") == 0)
				unsafe = strcmp(opt->value, "true") != 0;
			else if (strcmp(opt->key, "acks") == 0 ||
					 strcmp(opt->key, "request.required.acks") == 0)
				unsafe = strcmp(opt->value, "all") != 0 && strcmp(opt->value, "-1") != 0;
			else
				continue;
			if (unsafe)
				ereport(WARNING,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("pg_kappa: \"%s=%s\" is ignored for the %s producer",
								opt->key, opt->value, role),
						 errdetail("pg_kappa's producers are idempotent and wait for acks=all: what the slot and the ledgers confirm must not be lost or reordered.")));
		}
		conf_set_or_error(conf, "enable.idempotence", "true", NULL);
		conf_set_or_error(conf, "acks", "all", NULL);
	}

	rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
	rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
	if (type == RD_KAFKA_PRODUCER)
		rd_kafka_conf_set_dr_msg_cb(conf, kafka_delivery_report);
	return conf;
}

/*
 * Create the client.  Takes ownership of conf.  The caller may have set
 * more callbacks (delivery reports, rebalance) on conf; their opaque is the
 * returned KafkaClient, whose owner field points back to the caller's state.
 */
KafkaClient *
kafka_client_create(rd_kafka_conf_t *conf, rd_kafka_type_t type,
					const char *role, void *owner)
{
	KafkaClient *client;
	char		errstr[512];

	client = MemoryContextAllocZero(TopMemoryContext, sizeof(KafkaClient));
	client->type = type;
	client->role = MemoryContextStrdup(TopMemoryContext, role);
	client->owner = owner;
	client->wake_fd[0] = client->wake_fd[1] = -1;
	client->settings = kafka_settings_fingerprint();

	rd_kafka_conf_set_opaque(conf, client);
	client->rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
	if (client->rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		pfree(client);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not create Kafka %s client: %s",
						type == RD_KAFKA_PRODUCER ? "producer" : "consumer",
						errstr),
				 errhint("Check kappa.brokers and kappa.kafka_options.")));
	}

	/* Logs and, for consumers, everything else: served by the owner. */
	if (type == RD_KAFKA_CONSUMER)
	{
		rd_kafka_poll_set_consumer(client->rk);
		client->queue = rd_kafka_queue_get_consumer(client->rk);
	}
	else
		client->queue = rd_kafka_queue_get_main(client->rk);
	rd_kafka_set_log_queue(client->rk, NULL);

	if (pipe2(client->wake_fd, O_NONBLOCK | O_CLOEXEC) != 0)
	{
		kafka_client_destroy(client, 0);
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create pipe for Kafka events: %m")));
	}
	rd_kafka_queue_io_event_enable(client->queue, client->wake_fd[1], "k", 1);
	return client;
}

static void kafka_forget_topics(KafkaClient *client);

void
kafka_client_destroy(KafkaClient *client, int flush_ms)
{
	if (client == NULL)
		return;
	kafka_forget_topics(client);
	if (client->rk)
	{
		if (client->queue)
		{
			rd_kafka_queue_io_event_enable(client->queue, -1, NULL, 0);
			rd_kafka_queue_destroy(client->queue);
		}
		if (client->type == RD_KAFKA_PRODUCER && flush_ms > 0)
			rd_kafka_flush(client->rk, flush_ms);
		else if (client->type == RD_KAFKA_CONSUMER)
			rd_kafka_consumer_close(client->rk);
		rd_kafka_destroy(client->rk);
	}
	if (client->wake_fd[0] >= 0)
		close(client->wake_fd[0]);
	if (client->wake_fd[1] >= 0)
		close(client->wake_fd[1]);
	kafka_flush_log();
	pfree(client);
}

/* Empty the wake-up pipe; call before serving the queue. */
void
kafka_client_drain_wakeups(KafkaClient *client)
{
	char		buf[64];

	while (read(client->wake_fd[0], buf, sizeof(buf)) > 0)
		;
}

/*
 * Serve events of a producer (delivery reports, logs, errors), waiting at
 * most timeout_ms for the first one.  Returns the number served.
 */
int
kafka_client_serve(KafkaClient *client, int timeout_ms)
{
	int			served = 0;
	int			n;

	kafka_client_drain_wakeups(client);
	n = rd_kafka_poll(client->rk, timeout_ms);
	while (n > 0)
	{
		served += n;
		n = rd_kafka_poll(client->rk, 0);
	}
	kafka_flush_log();
	return served;
}

/* Cached topic handles, one list per process: a handful of topics. */
typedef struct KafkaTopicHandle
{
	KafkaClient *client;
	char	   *name;
	rd_kafka_topic_t *rkt;
} KafkaTopicHandle;

static List *kafka_topic_handles = NIL;

rd_kafka_topic_t *
kafka_client_topic(KafkaClient *client, const char *topic)
{
	ListCell   *lc;
	KafkaTopicHandle *h;
	MemoryContext old;

	foreach(lc, kafka_topic_handles)
	{
		h = lfirst(lc);
		if (h->client == client && strcmp(h->name, topic) == 0)
			return h->rkt;
	}

	old = MemoryContextSwitchTo(TopMemoryContext);
	h = palloc(sizeof(KafkaTopicHandle));
	h->client = client;
	h->name = pstrdup(topic);
	h->rkt = rd_kafka_topic_new(client->rk, topic, NULL);
	if (h->rkt == NULL)
	{
		rd_kafka_resp_err_t err = rd_kafka_last_error();

		MemoryContextSwitchTo(old);
		ereport(ERROR,
				(errcode(kafka_sqlstate(err)),
				 errmsg("could not open Kafka topic \"%s\": %s",
						topic, rd_kafka_err2str(err))));
	}
	kafka_topic_handles = lappend(kafka_topic_handles, h);
	MemoryContextSwitchTo(old);
	return h->rkt;
}

/*
 * Produce one message (copied) into delivery's group, with the record
 * timestamp given (milliseconds since the epoch; 0: librdkafka reads the
 * clock).  Callers pass their envelope's ts_ms, which they read once per
 * many messages, saving librdkafka's gettimeofday per message; the record
 * then says when the envelope was made, which can be a little before it is
 * enqueued when the local queue is full.  When librdkafka's
 * local queue is full this waits for deliveries, so memory stays bounded
 * whatever the input rate.  Other errors are raised.
 */
void
kafka_produce(KafkaClient *client, const char *topic,
			  const char *key, size_t keylen,
			  const char *value, size_t len,
			  int64 timestamp_ms, KafkaDelivery *delivery)
{
	(void) kafka_produce_or_refuse(client, topic, key, keylen, value, len,
								   timestamp_ms, delivery, false);
}

/*
 * Like kafka_produce, but when refuse_too_large a refusal is not an error:
 * a message librdkafka finds larger than message.max.bytes returns false
 * and nothing is produced, so that the caller can keep it as a dead letter
 * and go on; any other refusal (a topic the cluster does not have, a
 * producer in a fatal state) counts as a failed delivery of the group,
 * which the caller handles as it handles the broker's refusals (backoff,
 * send again), not as a fault of what it was sending.
 */
bool
kafka_produce_or_refuse(KafkaClient *client, const char *topic,
						const char *key, size_t keylen,
						const char *value, size_t len,
						int64 timestamp_ms, KafkaDelivery *delivery,
						bool refuse_too_large)
{
	return kafka_produce_within(client, topic, key, keylen, value, len,
								timestamp_ms, delivery, refuse_too_large,
								-1) == KAFKA_PRODUCE_QUEUED;
}

/*
 * Like kafka_produce_or_refuse, but a local queue still full after
 * queue_wait_ms (-1: however long it takes) returns KAFKA_PRODUCE_QUEUE_FULL
 * with nothing produced, for a caller that would rather give up and come
 * back than wait for a broker that may be away for long, for instance with
 * a transaction open.
 */
KafkaProduceResult
kafka_produce_within(KafkaClient *client, const char *topic,
					 const char *key, size_t keylen,
					 const char *value, size_t len,
					 int64 timestamp_ms, KafkaDelivery *delivery,
					 bool refuse_too_large, int queue_wait_ms)
{
	rd_kafka_topic_t *rkt = kafka_client_topic(client, topic);
	TimestampTz give_up = 0;

	for (;;)
	{
		rd_kafka_resp_err_t err;

		err = rd_kafka_producev(client->rk,
								RD_KAFKA_V_RKT(rkt),
								RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_VALUE((void *) value, len),
								RD_KAFKA_V_KEY(key, keylen),
								RD_KAFKA_V_TIMESTAMP(timestamp_ms),
								RD_KAFKA_V_OPAQUE(delivery),
								RD_KAFKA_V_END);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			break;
		if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE && refuse_too_large)
			return KAFKA_PRODUCE_TOO_LARGE;
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL && refuse_too_large && delivery)
		{
			if (delivery->failed++ == 0)
				delivery->error = err;
			return KAFKA_PRODUCE_QUEUED;
		}
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			ereport(ERROR,
					(errcode(kafka_sqlstate(err)),
					 errmsg("could not produce to Kafka topic \"%s\": %s",
							topic, rd_kafka_err2str(err)),
					 err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ?
					 errhint("Raise message.max.bytes in kappa.kafka_options (and the topic's max.message.bytes).") : 0));
		if (queue_wait_ms >= 0)
		{
			TimestampTz now = GetCurrentTimestamp();

			if (give_up == 0)
				give_up = TimestampTzPlusMilliseconds(now, queue_wait_ms);
			else if (now >= give_up)
				return KAFKA_PRODUCE_QUEUE_FULL;
		}
		kafka_client_serve(client, 100);
		CHECK_FOR_INTERRUPTS();
		if (!PostmasterIsAlive())
			proc_exit(1);		/* a full queue with the broker away lasts */
	}
	if (delivery)
		delivery->pending++;
	return KAFKA_PRODUCE_QUEUED;
}

/*
 * A hash of what a client is made from: kappa.brokers, kappa.kafka_options,
 * kappa.secrets_file and its "kafka." secrets (never logged; a new SOAP
 * password changes nothing here).  A worker compares it after a reload with
 * its client's, so that a new broker list, option or password (a rotated
 * SASL password is a new line in the secrets file, and a reload) takes
 * effect.  A secrets file that cannot be read only changes the hash: the
 * error is raised where the client is made anew.
 */
uint64
kafka_settings_fingerprint(void)
{
	MemoryContext caller = CurrentMemoryContext;
	StringInfo	buf = makeStringInfo(); /* a pointer: kept across PG_TRY */
	uint64		h;

	appendStringInfo(buf, "%s\n%s\n%s\n", kappa_brokers ? kappa_brokers : "",
					 kappa_kafka_options ? kappa_kafka_options : "",
					 kappa_secrets_file ? kappa_secrets_file : "");
	PG_TRY();
	{
		ListCell   *lc;

		foreach(lc, kappa_read_secrets("kafka."))
		{
			KafkaOption *opt = lfirst(lc);

			appendStringInfo(buf, "%s=%s\n", opt->key, opt->value);
			explicit_bzero(opt->value, strlen(opt->value));
		}
	}
	PG_CATCH();
	{
		/* unreadable: a change too, reported when the client is made */
		MemoryContextSwitchTo(caller);
		FlushErrorState();
		appendStringInfoString(buf, "unreadable\n");
	}
	PG_END_TRY();
	h = hash_bytes_extended((const unsigned char *) buf->data, buf->len, 0);
	explicit_bzero(buf->data, buf->len);
	pfree(buf->data);
	pfree(buf);
	return h;
}

bool
kafka_client_settings_changed(KafkaClient *client)
{
	return client != NULL && client->settings != kafka_settings_fingerprint();
}

/* The producer's message.max.bytes, as librdkafka applies it. */
int
kafka_max_message_bytes(KafkaClient *client)
{
	char		buf[32];
	size_t		size = sizeof(buf);

	if (rd_kafka_conf_get(rd_kafka_conf(client->rk), "message.max.bytes", buf, &size) != RD_KAFKA_CONF_OK)
		return 0;
	return atoi(buf);
}

/*
 * Serve delivery reports until every message of the group is reported, or
 * timeout_ms passes (-1: no limit).  True when nothing is pending.  Exits
 * if the postmaster dies; honours interrupts.
 */
bool
kafka_wait_delivered(KafkaClient *client, KafkaDelivery *delivery, int timeout_ms)
{
	TimestampTz deadline = timeout_ms < 0 ? 0 :
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	while (delivery->pending > 0)
	{
		if (deadline != 0 && GetCurrentTimestamp() >= deadline)
			return false;
		kafka_client_serve(client, 50);
		CHECK_FOR_INTERRUPTS();
		if (!PostmasterIsAlive())
			proc_exit(1);
	}
	return true;
}

/* Forget (and destroy) the topic handles of a client about to go away. */
static void
kafka_forget_topics(KafkaClient *client)
{
	ListCell   *lc;

	foreach(lc, kafka_topic_handles)
	{
		KafkaTopicHandle *h = lfirst(lc);

		if (h->client == client)
		{
			rd_kafka_topic_destroy(h->rkt);
			kafka_topic_handles = foreach_delete_current(kafka_topic_handles, lc);
		}
	}
}

/* ---------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------
 */
/*
 * Does the broker refuse the messages themselves, so that sending them
 * again cannot succeed?  (librdkafka treats these as permanent and does
 * not retry them.)
 */
bool
kafka_error_refuses_message(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
		case RD_KAFKA_RESP_ERR_INVALID_MSG:
		case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
			return true;
		default:
			return false;
	}
}

int
kafka_sqlstate(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR__TRANSPORT:
		case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
		case RD_KAFKA_RESP_ERR__RESOLVE:
		case RD_KAFKA_RESP_ERR__TIMED_OUT:
		case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
		case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
		case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
		case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
		case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
			return ERRCODE_CONNECTION_FAILURE;
		case RD_KAFKA_RESP_ERR__AUTHENTICATION:
		case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
			return ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
		case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
		case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
		case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
			return ERRCODE_UNDEFINED_OBJECT;
		case RD_KAFKA_RESP_ERR__QUEUE_FULL:
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
			return ERRCODE_PROGRAM_LIMIT_EXCEEDED;
		case RD_KAFKA_RESP_ERR__INVALID_ARG:
		case RD_KAFKA_RESP_ERR__INVALID_TYPE:
			return ERRCODE_INVALID_PARAMETER_VALUE;
		case RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE:
			return ERRCODE_DATA_EXCEPTION;
		default:
			return ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
	}
}
