/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The kappa.* configuration parameters and their check hooks.
 *
 * Infrastructure lives here (brokers, topics, the database the workers
 * serve, worker switches); pipelines and rankings live in tables.  Every
 * value a user can get wrong is validated by a check hook, so a bad
 * postgresql.conf line is rejected when it is loaded instead of surfacing
 * later as a worker error.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include <ctype.h>
#include <limits.h>

#include "kafka/kafka.h"
#include "pgtime.h"
#include "stream/stream.h"
#include "utils/guc.h"

char	   *kappa_brokers = NULL;
char	   *kappa_database = NULL;
char	   *kappa_kafka_options = NULL;
char	   *kappa_secrets_file = NULL;
char	   *kappa_sales_topic = NULL;
char	   *kappa_payments_topic = NULL;
char	   *kappa_top_sales_topic = NULL;
char	   *kappa_top_salesman_topic = NULL;
bool		kappa_cdc_enabled = true;
char	   *kappa_cdc_slot_name = NULL;
int			kappa_cdc_poll_interval = 200;
int			kappa_cdc_max_backoff = 60;
int			kappa_worker_restart_interval = 5;

/* the stream side (declared in stream/stream.h) */
char	   *kappa_window_time_zone = NULL;
int			kappa_default_grace = 600;
int			kappa_idle_timeout = 30;
int			kappa_row_memory_retention = 30 * 24 * 3600;
bool		kappa_stream_enabled = true;
int			kappa_stream_workers = 1;
char	   *kappa_stream_group = NULL;
int			kappa_stream_batch_size = 50000;
int			kappa_stream_batch_ms = 100;
char	   *kappa_instance_id = NULL;

/*
 * Kafka topic names: 1 to 249 characters from [a-zA-Z0-9._-], and not "."
 * or "..".
 */
bool
kappa_valid_topic_name(const char *name, const char **why)
{
	size_t		len = strlen(name);

	if (len == 0)
	{
		*why = "A topic name must not be empty.";
		return false;
	}
	if (len > 249)
	{
		*why = "A topic name has at most 249 characters.";
		return false;
	}
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
	{
		*why = "\".\" and \"..\" are not valid topic names.";
		return false;
	}
	for (const char *p = name; *p; p++)
	{
		if (!(isalnum((unsigned char) *p) || *p == '.' || *p == '_' || *p == '-'))
		{
			*why = "A topic name may contain only ASCII letters, digits, \".\", \"_\" and \"-\".";
			return false;
		}
	}
	return true;
}

static bool
check_topic(char **newval, void **extra, GucSource source)
{
	const char *why;

	if (!kappa_valid_topic_name(*newval, &why))
	{
		GUC_check_errdetail("%s", why);
		return false;
	}
	return true;
}

/*
 * A comma-separated list of host[:port] entries, optionally with a
 * protocol prefix (SSL://host:port) as librdkafka accepts them.
 */
static bool
check_brokers(char **newval, void **extra, GucSource source)
{
	const char *p = *newval;
	int			entries = 0;

	while (*p)
	{
		const char *start = p;
		const char *end;
		const char *colon = NULL;

		while (*p && *p != ',')
			p++;
		end = p;
		if (*p == ',')
			p++;

		/* trim */
		while (start < end && isspace((unsigned char) *start))
			start++;
		while (end > start && isspace((unsigned char) end[-1]))
			end--;
		if (start == end)
		{
			GUC_check_errdetail("The broker list has an empty entry.");
			return false;
		}
		for (const char *q = start; q < end; q++)
		{
			if (isspace((unsigned char) *q))
			{
				GUC_check_errdetail("A broker address must not contain white space.");
				return false;
			}
			if (*q == ':')
				colon = q;
		}
		/* the last colon starts the port, unless it belongs to "proto://" */
		if (colon && colon + 1 < end && colon[1] != '/')
		{
			for (const char *q = colon + 1; q < end; q++)
			{
				if (!isdigit((unsigned char) *q))
				{
					GUC_check_errdetail("Broker \"%.*s\" has a port that is not a number.",
										(int) (end - start), start);
					return false;
				}
			}
		}
		entries++;
	}
	if (entries == 0)
	{
		GUC_check_errdetail("At least one broker address (host:port) is required.");
		return false;
	}
	return true;
}

static bool
check_kafka_options(char **newval, void **extra, GucSource source)
{
	char	   *error = NULL;

	if (!kafka_options_validate(*newval, &error))
	{
		/*
		 * PostgreSQL's own message would quote the value, and with it any
		 * password someone put there; the detail names the option only.
		 */
		GUC_check_errmsg("invalid value for parameter \"kappa.kafka_options\"");
		GUC_check_errdetail("%s", error);
		return false;
	}
	return true;
}

static bool
check_slot_name(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (strlen(*newval) == 0 || strlen(*newval) >= NAMEDATALEN)
	{
		GUC_check_errdetail("A replication slot name has 1 to %d characters.",
							NAMEDATALEN - 1);
		return false;
	}
	for (p = *newval; *p; p++)
	{
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
		{
			GUC_check_errdetail("Replication slot names may only contain lower case letters, numbers, and the underscore character.");
			return false;
		}
	}
	return true;
}

static bool
check_time_zone(char **newval, void **extra, GucSource source)
{
	pg_tz	   *tz = pg_tzset(*newval);

	if (tz == NULL || !pg_tz_acceptable(tz))
	{
		GUC_check_errdetail("Time zone \"%s\" is not known to PostgreSQL (see pg_timezone_names).",
							*newval);
		return false;
	}
	return true;
}

/*
 * The secrets file: empty (none), or an absolute path.  A relative one
 * would be read from whichever directory a process happens to be in, and
 * the value is quoted in errors' DETAIL, where control characters would
 * forge log lines.  Whether the file exists and is private is checked when
 * it is read, where the error can say so.
 */
/* Does s hold a control character (which would forge lines of the log)? */
static bool
has_control_characters(const char *s)
{
	for (; *s; s++)
		if ((unsigned char) *s < 0x20 || *s == 0x7f)
			return true;
	return false;
}

/*
 * A file of the server named by a superuser-only setting: empty, or an
 * absolute path without control characters.  For check hooks.
 */
bool
kappa_check_server_file(const char *value, const char *name)
{
	if (value[0] == '\0')
		return true;
	if (!is_absolute_path(value))
	{
		GUC_check_errdetail("%s must be an absolute path.", name);
		return false;
	}
	if (has_control_characters(value))
	{
		GUC_check_errdetail("%s must not contain control characters.", name);
		return false;
	}
	return true;
}

static bool
check_secrets_file(char **newval, void **extra, GucSource source)
{
	return kappa_check_server_file(*newval, "kappa.secrets_file");
}

static bool
check_database(char **newval, void **extra, GucSource source)
{
	if (strlen(*newval) == 0 || strlen(*newval) >= NAMEDATALEN)
	{
		GUC_check_errdetail("A database name has 1 to %d characters.",
							NAMEDATALEN - 1);
		return false;
	}
	return true;
}

void
kappa_define_gucs(void)
{
	DefineCustomStringVariable("kappa.brokers",
							   "Kafka bootstrap servers (host:port, comma-separated).",
							   NULL,
							   &kappa_brokers,
							   "localhost:9092",
							   PGC_SIGHUP,
							   0,
							   check_brokers, NULL, NULL);

	DefineCustomStringVariable("kappa.database",
							   "Database the pg_kappa background workers connect to.",
							   "CREATE EXTENSION pg_kappa in this database.",
							   &kappa_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   check_database, NULL, NULL);

	/*
	 * librdkafka properties for SASL, TLS and tuning.  They describe the
	 * security setup, so only superusers see them, and they stay out of SHOW
	 * ALL and pg_settings.  Passwords are refused here (PostgreSQL logs
	 * changed parameter values): they go in kappa.secrets_file.
	 */
	DefineCustomStringVariable("kappa.kafka_options",
							   "Extra librdkafka properties as key=value pairs separated by semicolons.",
							   "Superuser-only.  Secrets such as sasl.password belong in kappa.secrets_file.",
							   &kappa_kafka_options,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   check_kafka_options, NULL, NULL);

	DefineCustomStringVariable("kappa.secrets_file",
							   "File with pg_kappa's secrets (Kafka and SOAP passwords).",
							   "Lines \"kafka.<librdkafka property> = value\" and \"soap.password = value\"; the file must be 0600 and owned by the server's user.",
							   &kappa_secrets_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   check_secrets_file, NULL, NULL);

	DefineCustomStringVariable("kappa.sales_topic",
							   "Topic of sale change events (CDC publisher, CSV inbox, other producers).",
							   NULL,
							   &kappa_sales_topic,
							   "sales-events",
							   PGC_SIGHUP, 0,
							   check_topic, NULL, NULL);

	DefineCustomStringVariable("kappa.payments_topic",
							   "Topic of payment confirmations (SOAP poller).",
							   NULL,
							   &kappa_payments_topic,
							   "payment-confirmations",
							   PGC_SIGHUP, 0,
							   check_topic, NULL, NULL);

	DefineCustomStringVariable("kappa.top_sales_topic",
							   "Topic of final top_sales_by_city window results.",
							   NULL,
							   &kappa_top_sales_topic,
							   "top-sales-by-city",
							   PGC_SIGHUP, 0,
							   check_topic, NULL, NULL);

	DefineCustomStringVariable("kappa.top_salesman_topic",
							   "Topic of final top_salesman_by_country window results.",
							   NULL,
							   &kappa_top_salesman_topic,
							   "top-salesman-by-country",
							   PGC_SIGHUP, 0,
							   check_topic, NULL, NULL);

	DefineCustomBoolVariable("kappa.cdc_enabled",
							 "Runs the CDC publisher (published tables to Kafka).",
							 "When off, the worker releases its replication slot and idles; WAL is retained until it is switched back on.",
							 &kappa_cdc_enabled,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("kappa.cdc_slot_name",
							   "Logical replication slot of the CDC publisher.",
							   NULL,
							   &kappa_cdc_slot_name,
							   "pg_kappa_cdc",
							   PGC_POSTMASTER, 0,
							   check_slot_name, NULL, NULL);

	DefineCustomIntVariable("kappa.cdc_poll_interval",
							"Longest time the CDC publisher sleeps before looking for new WAL.",
							"Commits in the published database wake it at once; this bounds the delay otherwise (for example with synchronous_commit = off).",
							&kappa_cdc_poll_interval,
							200, 1, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.cdc_max_backoff",
							"Longest wait between attempts after a Kafka delivery failure.",
							NULL,
							&kappa_cdc_max_backoff,
							60, 1, 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.worker_restart_interval",
							"Time before a failed pg_kappa worker is restarted.",
							NULL,
							&kappa_worker_restart_interval,
							5, 1, 3600,
							PGC_POSTMASTER, GUC_UNIT_S,
							NULL, NULL, NULL);

	/* ---- the stream side ---- */
	DefineCustomStringVariable("kappa.window_time_zone",
							   "Time zone of the calendar windows of rankings created without one (each ranking keeps its zone).",
							   NULL,
							   &kappa_window_time_zone,
							   "UTC",
							   PGC_SIGHUP, 0,
							   check_time_zone, NULL, NULL);

	DefineCustomIntVariable("kappa.default_grace",
							"How long after a window ends late events are still counted, for rankings that set no grace.",
							NULL,
							&kappa_default_grace,
							600, 0, INT_MAX / 2,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.idle_timeout",
							"After this long without records, a partition's stream time follows the wall clock.",
							"A quiet partition then no longer holds windows open; its stream time moves forward by the time that has passed, never to the current time.",
							&kappa_idle_timeout,
							30, 1, INT_MAX / 2,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.row_memory_retention",
							"How long the stream worker remembers a row after every window it fell in is final (-1: for ever).",
							"Remembered rows make updates, deletes and replays exact and list sales in kappa.sales_enriched. A change to a forgotten row is taken as a new sale: it counts only if its own window is still open.",
							&kappa_row_memory_retention,
							30 * 24 * 3600, -1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("kappa.stream_enabled",
							 "Runs the stream workers (rankings from sales-events).",
							 NULL,
							 &kappa_stream_enabled,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.stream_workers",
							"Number of stream workers, members of one Kafka consumer group.",
							NULL,
							&kappa_stream_workers,
							1, 0, 32,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("kappa.stream_group",
							   "Kafka consumer group of the stream workers (empty: pg_kappa-<kappa.database>).",
							   NULL,
							   &kappa_stream_group,
							   "",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.stream_batch_size",
							"Most messages a stream worker applies in one transaction.",
							NULL,
							&kappa_stream_batch_size,
							50000, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("kappa.stream_batch_ms",
							"Longest a stream worker gathers messages before applying them.",
							NULL,
							&kappa_stream_batch_ms,
							100, 1, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("kappa.instance_id",
							   "Name of this pg_kappa instance in the window results it produces (empty: <kappa.database>@<system identifier>).",
							   NULL,
							   &kappa_instance_id,
							   "",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	soap_define_gucs();
	csv_define_gucs();

	MarkGUCPrefixReserved("kappa");
}
