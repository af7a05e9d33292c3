/*-------------------------------------------------------------------------
 *
 * kafka.h
 *	  The one place pg_kappa talks to librdkafka about configuration,
 *	  logging and errors.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_KAFKA_H
#define KAPPA_KAFKA_H

#include <librdkafka/rdkafka.h>

#include "nodes/pg_list.h"

/*
 * A librdkafka client owned by one PostgreSQL process.  librdkafka's own
 * threads never call into PostgreSQL: logs and errors are put on the
 * client's main queue (log.queue), and the owning process serves them with
 * kafka_client_serve().  The queue signals a pipe when it becomes
 * non-empty, so a worker can sleep on its latch and the pipe together.
 */
typedef struct KafkaClient
{
	rd_kafka_t *rk;
	rd_kafka_type_t type;
	const char *role;			/* "cdc", "stream", ... for logs */
	void	   *owner;			/* the worker's state, for its callbacks */
	rd_kafka_queue_t *queue;	/* the queue that is served and watched */
	int			wake_fd[2];		/* pipe librdkafka writes to on new events */

	/* latest client-level error reported by librdkafka, for status views */
	rd_kafka_resp_err_t last_error;
	char		last_error_text[256];
	bool		error_pending;	/* last_error not yet taken by the owner */
	bool		fatal;			/* client unusable: must be recreated */
	uint64		settings;		/* kafka_settings_fingerprint() at creation */
} KafkaClient;

/*
 * A group of produced messages whose delivery a caller waits for (a CSV
 * file, a SOAP page, a batch of window results).  Producers created without
 * a delivery callback of their own count deliveries here: pass the group to
 * kafka_produce() and wait with kafka_wait_delivered().
 */
typedef struct KafkaDelivery
{
	int64		pending;		/* produced, not yet reported */
	int64		delivered;
	int64		failed;
	rd_kafka_resp_err_t error;	/* the first failure */
} KafkaDelivery;

/* kappa.kafka_options parsing and validation */
typedef struct KafkaOption
{
	char	   *key;
	char	   *value;
} KafkaOption;

extern List *kafka_options_parse(const char *options, char **error);
extern bool kafka_options_validate(const char *options, char **error);
extern bool kafka_option_is_secret(const char *key);

/* Client life cycle */
extern rd_kafka_conf_t *kafka_conf_for(rd_kafka_type_t type, const char *role);
extern KafkaClient *kafka_client_create(rd_kafka_conf_t *conf,
										rd_kafka_type_t type,
										const char *role, void *owner);
extern void kafka_client_destroy(KafkaClient *client, int flush_ms);
extern int	kafka_client_serve(KafkaClient *client, int timeout_ms);
extern void kafka_client_drain_wakeups(KafkaClient *client);
extern rd_kafka_topic_t *kafka_client_topic(KafkaClient *client,
											const char *topic);

/* Producing with delivery groups */
extern void kafka_produce(KafkaClient *client, const char *topic,
						  const char *key, size_t keylen,
						  const char *value, size_t len,
						  int64 timestamp_ms, KafkaDelivery *delivery);
extern bool kafka_produce_or_refuse(KafkaClient *client, const char *topic,
									const char *key, size_t keylen,
									const char *value, size_t len,
									int64 timestamp_ms, KafkaDelivery *delivery,
									bool refuse_too_large);
typedef enum KafkaProduceResult
{
	KAFKA_PRODUCE_QUEUED,		/* queued (or counted as a failed delivery) */
	KAFKA_PRODUCE_TOO_LARGE,	/* refused, larger than message.max.bytes */
	KAFKA_PRODUCE_QUEUE_FULL	/* the local queue stayed full: not queued */
} KafkaProduceResult;
extern KafkaProduceResult kafka_produce_within(KafkaClient *client, const char *topic,
											   const char *key, size_t keylen,
											   const char *value, size_t len,
											   int64 timestamp_ms, KafkaDelivery *delivery,
											   bool refuse_too_large, int queue_wait_ms);
extern int	kafka_max_message_bytes(KafkaClient *client);
extern uint64 kafka_settings_fingerprint(void);
extern bool kafka_client_settings_changed(KafkaClient *client);
extern bool kafka_wait_delivered(KafkaClient *client, KafkaDelivery *delivery,
								 int timeout_ms);

/* Errors */
extern int	kafka_sqlstate(rd_kafka_resp_err_t err);
extern bool kafka_error_refuses_message(rd_kafka_resp_err_t err);
extern void kafka_flush_log(void);

#endif							/* KAPPA_KAFKA_H */
