/*-------------------------------------------------------------------------
 *
 * pg_kappa.h
 *	  Declarations shared by every part of pg_kappa: configuration
 *	  variables (the kappa.* GUCs), shared-memory registration and the
 *	  background-worker entry points.
 *
 * The extension is one shared library with several roles: the logical
 * decoding output plugin "pg_kappa" (src/cdc/decoder.c), the background
 * workers (CDC publisher, stream worker, store sources) and the SQL-callable
 * functions behind the kappa schema.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG_KAPPA_H
#define PG_KAPPA_H

#include "postgres.h"

#include "fmgr.h"
#include "nodes/pg_list.h"

#define KAPPA_EXTENSION_NAME	"pg_kappa"
#define KAPPA_SCHEMA_NAME		"kappa"

/*
 * Debezium's marker for an unchanged TOASTed value that a change does not
 * carry: the publisher writes it (as a JSON string), the stream worker
 * fills it in from an earlier version of the row.
 */
#define KAPPA_UNCHANGED_TOAST_MARKER "__debezium_unavailable_value"

/*
 * The extension's own heavyweight locks, transaction-scoped, in this
 * database.  They are advisory lock tags, but with a last field that SQL's
 * pg_advisory_lock() family never makes (it uses 1 and 2): no session can
 * take one of them and hold up the workers.  pg_locks shows them as
 * locktype advisory, classid 1801547888 ("kapp"), objid the lock below,
 * objsubid 27504 ("kp").  (The windows the stream workers have in flight
 * to Kafka take session locks of the same classid, objsubid 27493 ("ke"),
 * keyed by a hash of ranking and window: emit.c.)
 */
typedef enum KappaLock
{
	KAPPA_LOCK_SLOT = 1,		/* the replication slot's life (publish.c) */
	KAPPA_LOCK_SHARED_WRITES = 3,	/* results shared by stream workers */
	KAPPA_LOCK_FINALIZATION = 4,	/* making windows final */
	KAPPA_LOCK_FORGET = 5		/* forgetting remembered rows */
} KappaLock;

#define KAPPA_LOCK_TAG(tag, which) \
	SET_LOCKTAG_ADVISORY((tag), MyDatabaseId, 0x6b617070, (which), 0x6b70)

/* kappa.* configuration (src/guc.c) */
extern char *kappa_brokers;
extern char *kappa_database;
extern char *kappa_kafka_options;
extern char *kappa_secrets_file;
extern char *kappa_sales_topic;
extern char *kappa_payments_topic;
extern char *kappa_top_sales_topic;
extern char *kappa_top_salesman_topic;
extern bool kappa_cdc_enabled;
extern char *kappa_cdc_slot_name;
extern int	kappa_cdc_poll_interval;
extern int	kappa_cdc_max_backoff;
extern int	kappa_worker_restart_interval;

extern void kappa_define_gucs(void);
extern void soap_define_gucs(void);
extern void csv_define_gucs(void);	/* src/sources/csv_worker.c */

/* Secrets (src/secrets.c): KafkaOption pairs whose keys start with prefix */
extern List *kappa_read_secrets(const char *prefix);
extern int	errdetail_secrets_file(void);
extern bool kappa_valid_topic_name(const char *name, const char **why);
extern bool kappa_check_server_file(const char *value, const char *name);

/* Longest kappa.stream_group, in bytes */
#define KAPPA_NAME_MAX		(NAMEDATALEN * 2 - 1)

/* A refused record and where it came from (src/dead_letters.c) */
typedef struct KappaDeadLetter
{
	const char *source;			/* "stream", "csv", "soap", "payments", ... */
	const char *topic;			/* Kafka origin, or NULL */
	int32		partition;		/* -1 if none */
	int64		offset;			/* -1 if none */
	const char *file;			/* file origin, or NULL */
	int64		line;			/* -1 if none */
	const char *raw;			/* the record's bytes, or NULL */
	size_t		rawlen;
	const char *error;			/* why it was refused */
} KappaDeadLetter;

extern void kappa_dead_letter(const KappaDeadLetter *dl);

/* Shared memory: each module reserves its part (src/pg_kappa.c) */
typedef Size (*KappaShmemSizeFn) (void);
typedef void (*KappaShmemInitFn) (void);

extern Size cdc_shmem_size(void);
extern void cdc_shmem_init(void);
extern Size stream_shmem_size(void);
extern void stream_shmem_init(void);

/* Background workers (src/workers.c) */
extern void kappa_register_workers(void);
extern const char *const kappa_output_settings[][2];
extern Size workers_shmem_size(void);
extern void workers_shmem_init(void);
extern void kappa_worker_begin(const char *application_name);
extern bool kappa_extension_installed(void);
extern char *kappa_extension_version(void);

/* Entry points named in BackgroundWorker.bgw_function_name */
extern PGDLLEXPORT void kappa_cdc_worker_main(Datum main_arg);
extern PGDLLEXPORT void kappa_stream_worker_main(Datum main_arg);
extern PGDLLEXPORT void kappa_soap_worker_main(Datum main_arg);
extern PGDLLEXPORT void kappa_csv_worker_main(Datum main_arg);

/* CDC commit wake-up, installed in every backend (src/cdc/cdc_worker.c) */
extern void cdc_register_commit_wakeup(void);

#endif							/* PG_KAPPA_H */
