/*-------------------------------------------------------------------------
 *
 * stream_worker.c
 *	  The stream worker: consumes sales-events (and payment confirmations,
 *	  and window results for sink rankings) as a member of a Kafka consumer
 *	  group, and keeps the rankings in PostgreSQL, exactly once.
 *
 * Exactly once: the offsets consumed live in kappa.stream_offsets and are
 * written in the same transaction as everything a batch changes (ranking
 * results, the memory of counted rows, payments, late events, dead
 * letters).  On assignment the worker seeks to the stored offsets; a
 * revoked partition's messages not yet applied are dropped (their offsets
 * were not stored, so its next owner reads them again); and
 * every offset update checks that the stored offset is still the one this
 * worker started from, so a worker that lost a partition without noticing
 * (a "zombie") cannot apply it twice.
 *
 * A batch: poll up to kappa.stream_batch_size messages or for
 * kappa.stream_batch_ms, load and lock the rows they touch with one query
 * per topic, apply the messages in order in memory (pre-aggregating the
 * ranking changes), then write everything back with a few set-based
 * statements and commit once.
 *
 * Time: each partition's stream time is the highest event time seen in it.
 * An event is late for a ranking when its window ended more than the grace
 * before its partition's stream time, or when the window is already final;
 * late events are recorded in kappa.late_events and change nothing.  A
 * window becomes final when the lowest stream time over all partitions of
 * the topic has passed window_end + grace (so a backlog read one partition
 * after the other never turns on-time events late); a partition idle for
 * kappa.idle_timeout then moves forward with the wall clock.  Final windows
 * are produced to the ranking's results topic (emit.c).
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "kafka/kafka.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/pmsignal.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "stream/stream_internal.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define MAX_STREAM_WORKERS	32
#define TICK_MS				1000	/* finalization and idle checks */
#define RANKINGS_RELOAD_MS	2000	/* noticing new or dropped rankings */
#define FORGET_MS			60000	/* looking for rows to forget */
#define FORGET_LIMIT		50000	/* rows forgotten per transaction */
#define BATCH_ATTEMPTS		5	/* applying a batch, when others conflict */
#define START_RETRY_MS		1000	/* asking again where a partition starts, */
#define START_RETRY_MAX_MS	30000	/* doubling up to this */
#define PRODUCER_FLUSH_MS	5000	/* for the reports of results in flight */
#define TOPIC_METADATA_MS	2000	/* how many partitions a topic has */

/* ---------------------------------------------------------------------
 * Shared state, for kappa.stat_consumers
 * ---------------------------------------------------------------------
 */
typedef struct StreamWorkerStatus
{
	slock_t		mutex;
	pid_t		pid;
	char		state[128];
	char		group[KAPPA_NAME_MAX + 1];
	int			partitions;
	int64		messages;
	int64		applied;
	int64		duplicates;
	int64		late;
	int64		dead_letters;
	int64		batches;
	TimestampTz last_batch_at;
	char		last_error[512];
	TimestampTz last_error_at;
	TimestampTz started_at;
} StreamWorkerStatus;

static StreamWorkerStatus *stream_status = NULL;

Size
stream_shmem_size(void)
{
	return mul_size(sizeof(StreamWorkerStatus), MAX_STREAM_WORKERS);
}

void
stream_shmem_init(void)
{
	bool		found;

	stream_status = ShmemInitStruct("pg_kappa stream workers", stream_shmem_size(), &found);
	if (!found)
	{
		memset(stream_status, 0, stream_shmem_size());
		for (int i = 0; i < MAX_STREAM_WORKERS; i++)
			SpinLockInit(&stream_status[i].mutex);
	}
}

/* ---------------------------------------------------------------------
 * The worker's private state
 * ---------------------------------------------------------------------
 */
typedef struct PartitionState
{
	char	   *topic;
	int32		partition;
	int64		committed;		/* next offset as stored (the fence) */
	int64		next;			/* next offset once the batch is applied */
	TimestampTz stream_time;	/* DT_NOBEGIN: no event yet */
	TimestampTz last_record_at;
	bool		caught_up;
	int64		high_watermark;
	bool		touched;		/* in the batch being applied */
	int64		unread_from;	/* >= 0: left from here, nothing reads it */
	bool		put_back;		/* messages left unread, not read again since */
	bool		idle_dirty;		/* caught_up/high watermark changed */
	int64		lost_offset;	/* >= 0: the broker no longer has it */
	TimestampTz start_retry_at; /* > 0: where the partition starts could
								 * not be asked; ask again then */
	int			start_retry_ms; /* the wait after the next failure */
	bool		payments;		/* of kappa.payments_topic */
	/* latest CDC position applied, for topics without row memory */
	SourcePosition position;
} PartitionState;

typedef struct LateEvent
{
	const char *ranking;
	PartitionState *ps;
	int64		offset;
	char	   *key;
	Contribution c;
	TimestampTz stream_time;
	const char *reason;
} LateEvent;

static struct
{
	int			index;
	StreamWorkerStatus *status;
	char		group[KAPPA_NAME_MAX + 1];
	KafkaClient *consumer;
	KafkaClient *producer;
	WaitEventSet *waitset;
	List	   *partitions;		/* PartitionState *, assigned */
	PartitionState *last_partition; /* found last (NULL when they change) */
	List	   *subscribed;		/* topic names (String) */

	MemoryContext rankings_cxt;
	List	   *rankings;
	TimestampTz rankings_loaded_at;

	rd_kafka_message_t **batch;
	int			batch_count;
	int			batch_cap;
	TimestampTz batch_started;
	MemoryContext batch_cxt;

	TimestampTz last_tick;
	TimestampTz last_forget;
	bool		forget_more;	/* the last pass stopped at FORGET_LIMIT */

	/* the batch's late events and counters */
	List	   *late;
	int64		applied;
	int64		duplicates;
	int64		dead;
	rd_kafka_resp_err_t assign_error;	/* from a rebalance callback */

	/*
	 * Partitions the group gave us, to be assigned once librdkafka's call
	 * that ran the rebalance callback has returned (take_assignment).
	 */
	rd_kafka_topic_partition_list_t *pending_assignment;
	uint64		revocations;	/* counted, for collect */
} sw;

static void apply_batch(void);
static void apply_batch_once(void);

/* a WARNING was given for SQL objects of another version than the library */
static bool version_warned = false;

static void
set_state(const char *fmt,...) pg_attribute_printf(1, 2);

static void
set_state(const char *fmt,...)
{
	char		buf[128];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	SpinLockAcquire(&sw.status->mutex);
	strlcpy(sw.status->state, buf, sizeof(sw.status->state));
	SpinLockRelease(&sw.status->mutex);
	pgstat_report_activity(STATE_RUNNING, buf);
}

static void
record_error(const char *message)
{
	SpinLockAcquire(&sw.status->mutex);
	strlcpy(sw.status->last_error, message, sizeof(sw.status->last_error));
	sw.status->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&sw.status->mutex);
}

static PartitionState *
find_partition(const char *topic, int32 partition)
{
	ListCell   *lc;

	/* a batch holds runs of messages of one partition */
	if (sw.last_partition && sw.last_partition->partition == partition &&
		strcmp(sw.last_partition->topic, topic) == 0)
		return sw.last_partition;
	foreach(lc, sw.partitions)
	{
		PartitionState *ps = lfirst(lc);

		if (ps->partition == partition && strcmp(ps->topic, topic) == 0)
			return sw.last_partition = ps;
	}
	return NULL;
}

/* ---------------------------------------------------------------------
 * Rankings and the topics they need
 * ---------------------------------------------------------------------
 */

/*
 * Batches hold this lock shared and finalization exclusively: a window is
 * never made final while a batch that read it as open is in flight.
 */
static void
lock_finalization(LOCKMODE mode)
{
	LOCKTAG		tag;

	KAPPA_LOCK_TAG(tag, KAPPA_LOCK_FINALIZATION);
	(void) LockAcquire(&tag, mode, false, false);
}

/* Load rankings (and where their windows are final) in this transaction. */
static void
load_rankings(void)
{
	lock_finalization(ShareLock);
	MemoryContextReset(sw.rankings_cxt);
	sw.rankings = rankings_load(sw.rankings_cxt);
	sw.rankings_loaded_at = GetCurrentTimestamp();
}

static List *
wanted_topics(void)
{
	List	   *topics = NIL;
	ListCell   *lc;

	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);

		if (!list_member(topics, makeString(r->source_topic)))
			topics = lappend(topics, makeString(pstrdup(r->source_topic)));
	}
	if (topics != NIL && !list_member(topics, makeString(kappa_payments_topic)))
		topics = lappend(topics, makeString(pstrdup(kappa_payments_topic)));
	return topics;
}

static bool
topics_equal(List *a, List *b)
{
	ListCell   *lc;

	if (list_length(a) != list_length(b))
		return false;
	foreach(lc, a)
		if (!list_member(b, lfirst(lc)))
			return false;
	return true;
}

static void
subscribe(List *topics)
{
	rd_kafka_topic_partition_list_t *list;
	rd_kafka_resp_err_t err;
	ListCell   *lc;
	MemoryContext old;

	if (topics == NIL)
	{
		rd_kafka_unsubscribe(sw.consumer->rk);
		set_state("waiting for a ranking");
	}
	else
	{
		list = rd_kafka_topic_partition_list_new(list_length(topics));
		foreach(lc, topics)
			rd_kafka_topic_partition_list_add(list, strVal(lfirst(lc)), RD_KAFKA_PARTITION_UA);
		err = rd_kafka_subscribe(sw.consumer->rk, list);
		rd_kafka_topic_partition_list_destroy(list);
		if (err)
			ereport(ERROR,
					(errcode(kafka_sqlstate(err)),
					 errmsg("could not subscribe to the ranking topics: %s", rd_kafka_err2str(err))));
		set_state("consuming");
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	sw.subscribed = NIL;
	foreach(lc, topics)
		sw.subscribed = lappend(sw.subscribed, makeString(pstrdup(strVal(lfirst(lc)))));
	MemoryContextSwitchTo(old);
}

static bool
is_payments_topic(const char *topic)
{
	return strcmp(topic, kappa_payments_topic) == 0;
}

/* ---------------------------------------------------------------------
 * Assignment: offsets come from PostgreSQL
 * ---------------------------------------------------------------------
 */

/*
 * rd_kafka_assign, which refuses with an error under the cooperative
 * protocol (partition.assignment.strategy = cooperative-sticky in
 * kappa.kafka_options): the worker would otherwise fetch nothing, silently.
 */
static void
assign_or_error(rd_kafka_topic_partition_list_t *parts)
{
	rd_kafka_resp_err_t err = rd_kafka_assign(sw.consumer->rk, parts);

	/* raised once librdkafka's call that ran the callback has returned */
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR && sw.assign_error == RD_KAFKA_RESP_ERR_NO_ERROR)
		sw.assign_error = err;
}

static void
check_assign_error(void)
{
	if (sw.assign_error != RD_KAFKA_RESP_ERR_NO_ERROR)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not assign the partitions of group \"%s\": %s",
						sw.group, rd_kafka_err2str(sw.assign_error)),
				 errhint("The stream workers use the eager rebalance protocol; remove partition.assignment.strategy = cooperative-sticky from kappa.kafka_options, if it is there.")));
}
/*
 * Give every partition of the topic a row, from the first assignment of
 * any of them on.  A topic's watermark is the least stream time of its
 * rows: a partition without one (its owner has not taken its assignment
 * yet, a member of the group that is not a stream worker reads it, it is
 * new) would be left out, and a backlog read on the other partitions would
 * make windows final before its events are read, which would then all be
 * late.  With a row and no stream time it holds the watermark back until
 * a stream worker has read it, as the other partitions do.  SPI connected.
 */
static void
record_topic_partitions(const char *topic)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(sw.consumer->rk, topic, NULL);
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
	int			count = -1;

	if (rkt)
		err = rd_kafka_metadata(sw.consumer->rk, 0, rkt, &md, TOPIC_METADATA_MS);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		err = md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			count = md->topics[0].partition_cnt;
	}
	if (md)
		rd_kafka_metadata_destroy(md);
	if (rkt)
		rd_kafka_topic_destroy(rkt);
	if (count < 0)
	{
		/* the partitions assigned still get theirs; the others once read */
		ereport(LOG,
				(errmsg("pg_kappa stream worker %d: could not learn the partitions of topic \"%s\": %s",
						sw.index, topic, rd_kafka_err2str(err))));
		return;
	}
	{
		Oid			types[3] = {TEXTOID, TEXTOID, INT4OID};
		Datum		args[3] = {CStringGetTextDatum(sw.group), CStringGetTextDatum(topic),
		Int32GetDatum(count)};

		if (SPI_execute_with_args("INSERT INTO kappa.stream_offsets (consumer_group, topic, partition, next_offset) "
								  "SELECT $1, $2, p, -2 FROM pg_catalog.generate_series(0, $3 - 1) p "
								  "ON CONFLICT (consumer_group, topic, partition) DO NOTHING",
								  3, types, args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not insert into kappa.stream_offsets");
	}
}

static void
assign_partitions(rd_kafka_topic_partition_list_t *parts)
{
	MemoryContext old;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	for (int i = 0; i < parts->cnt; i++)
	{
		bool		seen = false;

		for (int j = 0; j < i && !seen; j++)
			seen = strcmp(parts->elems[j].topic, parts->elems[i].topic) == 0;
		if (!seen)
			record_topic_partitions(parts->elems[i].topic);
	}
	for (int i = 0; i < parts->cnt; i++)
	{
		rd_kafka_topic_partition_t *tp = &parts->elems[i];
		Oid			types[4] = {TEXTOID, TEXTOID, INT4OID, INT4OID};
		Datum		args[4] = {CStringGetTextDatum(sw.group), CStringGetTextDatum(tp->topic),
		Int32GetDatum(tp->partition), Int32GetDatum(MyProcPid)};
		PartitionState *ps;
		bool		isnull;
		Datum		d;

		/*
		 * A partition is idle only once this owner has seen it caught up: a
		 * caught_up stored before a stop or a crash would count the time
		 * the worker was away as idle before the backlog is read.
		 */
		if (SPI_execute_with_args("INSERT INTO kappa.stream_offsets AS o "
								  "       (consumer_group, topic, partition, next_offset, owner_pid, assigned_at) "
								  "VALUES ($1, $2, $3, -2, $4, now()) "
								  "ON CONFLICT (consumer_group, topic, partition) DO UPDATE "
								  "   SET owner_pid = EXCLUDED.owner_pid, assigned_at = now(), "
								  "       caught_up = false "
								  "RETURNING next_offset, stream_time, last_record_at, position_lsn, position_seq, "
								  "          position_system_id, position_timeline",
								  4, types, args, NULL, false, 0) != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not read kappa.stream_offsets");

		old = MemoryContextSwitchTo(TopMemoryContext);
		ps = palloc0(sizeof(PartitionState));
		ps->topic = pstrdup(tp->topic);
		ps->partition = tp->partition;
		ps->payments = is_payments_topic(ps->topic);
		ps->committed = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		ps->next = ps->committed;
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		ps->stream_time = isnull ? DT_NOBEGIN : DatumGetTimestampTz(d);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		ps->last_record_at = isnull ? 0 : DatumGetTimestampTz(d);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull);
		ps->position.known = !isnull;
		if (!isnull)
		{
			ps->position.lsn = DatumGetLSN(d);
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull);
			ps->position.seq = isnull ? 0 : DatumGetInt64(d);
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull);
			ps->position.system_id = isnull ? 0 : (uint64) DatumGetInt64(d);
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 7, &isnull);
			ps->position.timeline = isnull ? 0 : (uint32) DatumGetInt32(d);
		}
		ps->high_watermark = -1;
		ps->lost_offset = -1;
		ps->unread_from = -1;
		sw.partitions = lappend(sw.partitions, ps);
		MemoryContextSwitchTo(old);

		tp->offset = ps->committed >= 0 ? ps->committed : RD_KAFKA_OFFSET_BEGINNING;
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	assign_or_error(parts);
	SpinLockAcquire(&sw.status->mutex);
	sw.status->partitions = list_length(sw.partitions);
	SpinLockRelease(&sw.status->mutex);
	ereport(LOG,
			(errmsg("pg_kappa stream worker %d: assigned %d partitions of group \"%s\"",
					sw.index, parts->cnt, sw.group)));
}

/*
 * Messages read but not applied are dropped: their offsets were not stored,
 * so the partitions' next owner reads them again.
 */
static void
revoke_partitions(void)
{
	for (int i = 0; i < sw.batch_count; i++)
		rd_kafka_message_destroy(sw.batch[i]);
	sw.batch_count = 0;
	sw.revocations++;
	assign_or_error(NULL);
	sw.last_partition = NULL;
	list_free_deep(sw.partitions);
	sw.partitions = NIL;
	SpinLockAcquire(&sw.status->mutex);
	sw.status->partitions = 0;
	SpinLockRelease(&sw.status->mutex);
}

static void
drop_pending_assignment(void)
{
	if (sw.pending_assignment)
		rd_kafka_topic_partition_list_destroy(sw.pending_assignment);
	sw.pending_assignment = NULL;
}

/*
 * Runs inside rd_kafka_consume_batch_queue (or rd_kafka_consumer_close), on
 * this process's thread.  Reading the stored offsets is a transaction that
 * can wait for a lock, fail, or be ended by SIGTERM, and none of that may
 * unwind through librdkafka's frames or close the consumer from inside its
 * own callback: the callback only keeps the partitions, and collect assigns
 * them when librdkafka has returned (librdkafka waits for rd_kafka_assign
 * from any place, heartbeating meanwhile, within max.poll.interval.ms).
 */
static void
stream_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
					rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	drop_pending_assignment();
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
		sw.pending_assignment = rd_kafka_topic_partition_list_copy(parts);
	else
		revoke_partitions();
}

static void
take_assignment(void)
{
	rd_kafka_topic_partition_list_t *parts = sw.pending_assignment;

	if (parts == NULL)
		return;
	assign_partitions(parts);
	/* (an error above leaves the list to the process's exit) */
	sw.pending_assignment = NULL;
	rd_kafka_topic_partition_list_destroy(parts);
}

/* ---------------------------------------------------------------------
 * Applying one change event
 * ---------------------------------------------------------------------
 */
static bool
list_has(List *l, int id)
{
	return list_member_int(l, id);
}

static bool
window_final(const KappaRanking *r, TimestampTz window_end, const PartitionState *ps)
{
	if (window_end <= r->finalized_through)
		return true;

	/*
	 * A confirmation counts or uncounts a sale in the sale's window, which
	 * the sales' watermark closes, not the confirmations' own times: until
	 * the ranking finalized it, that window is open.
	 */
	if (ps->payments)
		return false;
	return ps->stream_time != DT_NOBEGIN &&
		window_end <= ps->stream_time - r->grace_usecs;
}

static void
note_late(const KappaRanking *r, PartitionState *ps, int64 offset, const char *key,
		  const Contribution *c, const char *reason)
{
	LateEvent  *le = palloc(sizeof(LateEvent));

	le->ranking = r->name;
	le->ps = ps;
	le->offset = offset;
	le->key = pstrdup(key);
	le->c = *c;
	/* (only its times are stored: its strings last until the next event) */
	le->c.group_key = le->c.item = le->c.label = NULL;
	le->stream_time = ps->stream_time;
	le->reason = reason;
	sw.late = lappend(sw.late, le);
	((KappaRanking *) r)->batch_late++;
}

static void
dead_letter(rd_kafka_message_t *msg, const char *error)
{
	KappaDeadLetter dl = {
		.source = "stream",
		.topic = rd_kafka_topic_name(msg->rkt),
		.partition = msg->partition,
		.offset = msg->offset,
		.file = NULL,
		.line = -1,
		.raw = msg->payload,
		.rawlen = msg->len,
		.error = error
	};

	kappa_dead_letter(&dl);
	sw.dead++;
}

/* The sale's payment status lets it count in confirmed-only rankings. */
static bool
payment_confirmed(const char *key)
{
	PaymentState *p = payments_get(key);

	return p && p->known && strcmp(p->status, "CONFIRMED") == 0;
}

/*
 * Move row s of ranking r from its old contribution (if it counts) to new
 * (if given).  Lateness: if the old contribution is in a final window the
 * row is frozen for this ranking; if the new one is, it is not counted.
 */
static void
move_contribution(KappaRanking *r, RowState *s, const Contribution *oldc,
				  const Contribution *newc, PartitionState *ps, int64 offset)
{
	if (list_has(s->excluded, r->id))
	{
		note_late(r, ps, offset, s->key, newc ? newc : oldc,
				  "the row was frozen in a final window of this ranking");
		return;
	}
	if (oldc && newc && contribution_equal(oldc, newc))
		return;
	if (oldc && window_final(r, oldc->window_end, ps))
	{
		note_late(r, ps, offset, s->key, oldc, "the window the row counted in is final");
		s->counted = list_delete_int(s->counted, r->id);
		s->excluded = lappend_int(s->excluded, r->id);
		return;
	}
	if (oldc)
	{
		aggregate_add(r, oldc, -1);
		s->counted = list_delete_int(s->counted, r->id);
	}
	if (newc && window_final(r, newc->window_end, ps))
	{
		note_late(r, ps, offset, s->key, newc, "the event's window is final");
		return;
	}
	if (newc)
	{
		aggregate_add(r, newc, +1);
		s->counted = lappend_int(s->counted, r->id);
	}
	r->batch_applied++;
}

/*
 * What the rankings make of a topic, worked out once per batch and topic
 * rather than by comparing names for every message.  Known by librdkafka's
 * name pointer, which is the same for every message of a topic; forgotten at
 * each batch's start, when the rankings are reloaded.
 */
typedef struct TopicRankings
{
	const char *topic;
	bool	   *events;			/* per ranking of sw.rankings: counts its events */
	KappaRanking *first;		/* the first of them: its time is stream time */
	bool		any_events;
	bool		any_sink;		/* a sink ranking reads it */
	bool		confirmed_only;
	bool		without_memory; /* all its rankings go without row memory
								 * (create_ranking keeps them alike) */
} TopicRankings;

static TopicRankings topic_cache;

static const TopicRankings *
topic_rankings(const char *topic)
{
	ListCell   *lc;
	int			i = 0;
	bool		memory = false;

	if (topic_cache.topic == topic)
		return &topic_cache;
	if (topic_cache.events)
		pfree(topic_cache.events);
	memset(&topic_cache, 0, sizeof(topic_cache));
	topic_cache.events = MemoryContextAllocZero(sw.batch_cxt,
												sizeof(bool) * (list_length(sw.rankings) + 1));
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);

		if (strcmp(r->source_topic, topic) == 0)
		{
			if (r->results_input)
				topic_cache.any_sink = true;
			else
			{
				topic_cache.events[i] = true;
				if (topic_cache.first == NULL)
					topic_cache.first = r;
				topic_cache.any_events = true;
				topic_cache.confirmed_only |= r->confirmed_only;
				memory |= r->row_memory;
			}
		}
		i++;
	}
	topic_cache.without_memory = topic_cache.any_events && !memory;
	topic_cache.topic = topic;
	return &topic_cache;
}

/* Event time of a row, by the first ranking on the topic, for stream time. */
static bool
row_event_time(const char *topic, const char *row, int rowlen, TimestampTz *t)
{
	KappaRanking *r = topic_rankings(topic)->first;
	JsonSpan	span;

	if (r == NULL)
		return false;
	/* (the ranking's own field list: json_row_members knows where it is) */
	json_row_members(row, rowlen, 1, (const char *const *) &r->fields[r->time_index],
					 &r->fieldlens[r->time_index], &span);
	return json_row_timestamp(&span, t);
}

/*
 * Zeroed room for one contribution per ranking, old and new, reused from
 * event to event (an event's contributions are used before the next one).
 */
static void
contribution_scratch(int nrank, Contribution **olds, Contribution **news)
{
	static Contribution *scratch = NULL;
	static int	scratch_n = 0;

	if (nrank > scratch_n)
	{
		if (scratch)
			pfree(scratch);
		scratch_n = Max(nrank, 8);
		scratch = MemoryContextAlloc(TopMemoryContext, sizeof(Contribution) * 2 * scratch_n);
	}
	memset(scratch, 0, sizeof(Contribution) * 2 * nrank);
	contribution_strings_reset();
	*olds = scratch;
	*news = scratch + nrank;
}

/* End of the window of ranking r that a row falls in. */
static bool
row_window_end(const KappaRanking *r, const char *row, int rowlen, TimestampTz *end)
{
	JsonSpan	span;
	const char *name = r->time_field;
	int			len = strlen(name);
	TimestampTz t;
	TimestampTz start;

	json_row_members(row, rowlen, 1, &name, &len, &span);
	return json_row_timestamp(&span, &t) && window_for(&r->window, t, &start, end);
}

/*
 * row with the values it left out taken from from (an object span, or
 * none): see json_row_fill_unavailable.  Returns row itself when nothing
 * changed.
 */
static const char *
fill_unavailable(const char *row, int *len, const JsonSpan *from)
{
	char	   *filled;
	int			filledlen;

	if (from->type != JSON_SPAN_OBJECT)
		return row;
	filled = json_row_fill_unavailable(row, *len, from->p, from->len, &filledlen);
	if (filled == NULL)
		return row;
	*len = filledlen;
	return filled;
}

static void
apply_change(rd_kafka_message_t *msg, const char *topic, const char *key,
			 const KappaChange *ch, PartitionState *ps)
{
	RowState   *s = rows_get(topic, key);
	const char *newrow = ch->after.type == JSON_SPAN_OBJECT ? ch->after.p : NULL;
	int			newlen = ch->after.len;
	Contribution *olds;
	Contribution *news;
	int			nrank = list_length(sw.rankings);
	ListCell   *lc;
	int			i;
	const char *error = NULL;
	TimestampTz t;
	const bool *counts = topic_rankings(topic)->events;

	/* replays change nothing */
	if (position_is_replay(&ch->pos, &s->pos))
	{
		sw.duplicates++;
		return;
	}

	/*
	 * Values an update left out (unchanged TOASTed columns, under REPLICA
	 * IDENTITY DEFAULT) are those of the row it changed: in "before" if the
	 * event has it, else in the row remembered.  (Only updates: a create
	 * has no earlier version, a deleted row is none of a new one.)
	 */
	if (newrow && ch->op == 'u')
	{
		newrow = fill_unavailable(newrow, &newlen, &ch->before);
		if (s->row_data && !s->deleted)
		{
			JsonSpan	remembered = {s->row_data, (int) strlen(s->row_data), JSON_SPAN_OBJECT};

			newrow = fill_unavailable(newrow, &newlen, &remembered);
		}
	}

	if (!ch->pos.known && newrow && s->row_data && !s->deleted &&
		(int) strlen(s->row_data) == newlen && memcmp(s->row_data, newrow, newlen) == 0)
	{
		sw.duplicates++;
		return;
	}
	if (ch->op == 't')
	{
		dead_letter(msg, "TRUNCATE events are not applied to rankings; rebuild them from the source if needed");
		return;
	}
	if (ch->op == 'd')
		newrow = NULL;

	/* every ranking's new contribution must be computable, or nothing happens */
	contribution_scratch(nrank, &olds, &news);
	i = 0;
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);

		if (counts[i])
		{
			if (list_has(s->counted, r->id) && s->row_data &&
				!contribution_compute(r, s->row_data, strlen(s->row_data), false, &olds[i], &error))
				olds[i].valid = false;
			/*
			 * A confirmed-only ranking checks the sale now too, paid or
			 * not: its confirmation may come after the sale is gone from
			 * the batch, with nothing left to dead-letter.
			 */
			if (newrow && !contribution_compute(r, newrow, newlen, true, &news[i], &error))
			{
				char	   *reason = psprintf("ranking \"%s\": %s", r->name, error);

				dead_letter(msg, reason);
				return;
			}
			if (newrow && r->confirmed_only && !payment_confirmed(key))
				news[i].valid = false;	/* counted once it is paid */
		}
		i++;
	}

	/* stream time first (as Kafka Streams does), then lateness */
	if (newrow && row_event_time(topic, newrow, newlen, &t) && t > ps->stream_time)
		ps->stream_time = t;

	i = 0;
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);

		if (counts[i] && (olds[i].valid || news[i].valid))
			move_contribution(r, s, olds[i].valid ? &olds[i] : NULL,
							  news[i].valid ? &news[i] : NULL, ps, msg->offset);
		i++;
	}

	/* the latest window the row has been in, for forgetting it */
	i = 0;
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);
		TimestampTz end;

		if (newrow && counts[i])
		{
			if (news[i].valid)
				end = news[i].window_end;
			else if (!row_window_end(r, newrow, newlen, &end))
				end = DT_NOBEGIN;
			if (end > s->windows_end)
				s->windows_end = end;
		}
		i++;
	}

	s->row_data = newrow ? pnstrdup(newrow, newlen) : NULL;
	s->deleted = (newrow == NULL);
	if (ch->pos.known)
		s->pos = ch->pos;
	s->dirty = true;
}

/*
 * A change on a topic without row memory: what the row counted before is
 * taken from the event's "before" row (REPLICA IDENTITY FULL), and a replay
 * is an event at or before the partition's latest CDC position (a CDC
 * producer writes each partition in commit order).  A row version counts
 * where its window was open when it arrived, so "before" is undone where
 * its window is still open and is late where it is final.
 */
static void
apply_change_without_memory(rd_kafka_message_t *msg, const char *topic, const char *key,
							const KappaChange *ch, PartitionState *ps)
{
	const char *oldrow = NULL;
	const char *newrow = NULL;
	int			oldlen = 0;
	int			newlen = 0;
	Contribution *olds;
	Contribution *news;
	int			nrank = list_length(sw.rankings);
	ListCell   *lc;
	int			i;
	const char *error = NULL;
	TimestampTz t;
	const bool *counts = topic_rankings(topic)->events;

	if (!ch->pos.known)
	{
		dead_letter(msg, "the rankings of this topic have no row memory, so an event needs source.lsn and source.seq (a CDC change) for replays to be recognised");
		return;
	}
	if (position_is_replay(&ch->pos, &ps->position))
	{
		sw.duplicates++;
		return;
	}
	ps->position = ch->pos;

	if (ch->op == 't')
	{
		dead_letter(msg, "TRUNCATE events are not applied to rankings; rebuild them from the source if needed");
		return;
	}
	if (ch->op == 'u' || ch->op == 'd')
	{
		if (ch->before.type != JSON_SPAN_OBJECT)
		{
			dead_letter(msg, "an update or delete needs the old row in \"before\" when the rankings of the topic have no row memory (publish the table with REPLICA IDENTITY FULL)");
			return;
		}
		oldrow = ch->before.p;
		oldlen = ch->before.len;
	}
	if (ch->op != 'd' && ch->after.type == JSON_SPAN_OBJECT)
	{
		newrow = ch->after.p;
		newlen = ch->after.len;
		/* values an update left out (unchanged TOASTed columns) */
		if (ch->op == 'u')
			newrow = fill_unavailable(newrow, &newlen, &ch->before);
	}

	/* every contribution must be computable, or nothing happens */
	contribution_scratch(nrank, &olds, &news);
	i = 0;
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);

		if (counts[i])
		{
			if (oldrow && !contribution_compute(r, oldrow, oldlen, false, &olds[i], &error))
			{
				dead_letter(msg, psprintf("ranking \"%s\": the old row in \"before\": %s (publish the table with REPLICA IDENTITY FULL)",
										  r->name, error));
				return;
			}
			if (newrow && !contribution_compute(r, newrow, newlen, true, &news[i], &error))
			{
				dead_letter(msg, psprintf("ranking \"%s\": %s", r->name, error));
				return;
			}
		}
		i++;
	}

	if (newrow && row_event_time(topic, newrow, newlen, &t) && t > ps->stream_time)
		ps->stream_time = t;

	i = 0;
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);
		const Contribution *oldc = olds[i].valid ? &olds[i] : NULL;
		const Contribution *newc = news[i].valid ? &news[i] : NULL;

		if (!counts[i++] || (oldc == NULL && newc == NULL))
			continue;
		if (oldc && newc && contribution_equal(oldc, newc))
			continue;
		if (oldc && window_final(r, oldc->window_end, ps))
			note_late(r, ps, msg->offset, pstrdup(key), oldc, "the window the old row counted in is final");
		else if (oldc)
			aggregate_add(r, oldc, -1);
		if (newc && window_final(r, newc->window_end, ps))
			note_late(r, ps, msg->offset, pstrdup(key), newc, "the event's window is final");
		else if (newc)
			aggregate_add(r, newc, +1);
		r->batch_applied++;
	}
}

/* A payment confirmation: record it, and count or uncount the sale. */
static void
apply_payment(rd_kafka_message_t *msg, const char *key, PartitionState *ps)
{
	PaymentState *p = NULL;
	TimestampTz event_time;
	bool		changed;
	const char *error;
	ListCell   *lc;

	if (!payments_record(msg->payload, msg->len, rd_kafka_topic_name(msg->rkt), key,
						 &p, &event_time, &changed, &error))
	{
		dead_letter(msg, error);
		return;
	}
	if (event_time > ps->stream_time)
		ps->stream_time = event_time;
	if (!changed)
		return;

	contribution_strings_reset();
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);
		RowState   *s;
		bool		should = strcmp(p->status, "CONFIRMED") == 0;
		bool		counted;
		Contribution c;

		if (!r->confirmed_only || r->results_input)
			continue;
		s = rows_get(r->source_topic, key);
		if (s->row_data == NULL || s->deleted)
		{
			/*
			 * The sale has not arrived yet: it is counted when it does,
			 * from the payment stored now.  Unless its batch is committing
			 * in another worker (the topics' partitions are shared out),
			 * which saw no payment and which this one cannot see: a
			 * deleted row for the key, inserted now, makes the two
			 * transactions collide on the key, and the one that loses is
			 * applied again and sees the other's.
			 */
			if (!s->in_db && !s->dirty)
			{
				s->deleted = true;
				s->dirty = true;
				/* forgotten with the windows of its time, like any row */
				s->windows_end = event_time;
			}
			continue;
		}
		counted = list_has(s->counted, r->id);
		if (should == counted)
			continue;
		if (!contribution_compute(r, s->row_data, strlen(s->row_data), should, &c, &error))
			continue;			/* the sale was dead-lettered for this ranking */
		if (should)
			move_contribution(r, s, NULL, &c, ps, msg->offset);
		else
			move_contribution(r, s, &c, NULL, ps, msg->offset);
		if (c.window_end > s->windows_end)
			s->windows_end = c.window_end;
		s->dirty = true;
	}
}

/* ---------------------------------------------------------------------
 * Batches
 * ---------------------------------------------------------------------
 */

static const char *
skip_space(const char *p, const char *end)
{
	while (p < end && isspace((unsigned char) *p))
		p++;
	return p;
}

/* The message key as text: a JSON key object {"sale_id":1001} gives "1001". */
static char *
message_key(rd_kafka_message_t *msg)
{
	const char *k = msg->key;
	size_t		len = msg->key_len;

	if (k == NULL || len == 0 || len > INT_MAX ||
		(!bytes_are_plain_ascii(k, len) &&
		 (memchr(k, '\0', len) != NULL || !pg_verifymbstr(k, (int) len, true))))
		return NULL;
	if (k[0] == '{' && json_is_object(k, (int) len))
	{
		JsonSpan	s;
		const char *end = k + len;
		const char *p = k + 1;

		/*
		 * One member ({"sale_id":1001}, Debezium's key): its value.  More
		 * (a composite primary key, {"b":"x","a":1}): the key as sent, so
		 * that rows differing in any column stay apart.
		 */
		p = skip_space(p, end);
		if (p < end && *p == '"')
		{
			const char *name = p + 1;
			const char *q = memchr(name, '"', end - name);

			if (q)
			{
				int			nlen = q - name;
				const char *v = skip_space(q + 1, end);

				if (v < end && *v == ':')
					v = skip_space(v + 1, end);
				json_object_members(k, (int) len, 1, &name, &nlen, &s);
				if (s.type != JSON_SPAN_MISSING && s.p == v)
				{
					const char *after = skip_space(s.p + s.len, end);

					if (after < end && *after == ',')
						return pnstrdup(k, len);	/* more members */
					if (s.type == JSON_SPAN_STRING || s.type == JSON_SPAN_NUMBER)
						return json_span_text(&s);
				}
			}
		}
		return NULL;
	}
	return pnstrdup(k, len);
}

typedef struct Parsed
{
	int			kind;			/* 0 skip or done, 1 change, 2 payment,
								 * 3 sink */
	char	   *key;
	KappaChange change;
	PartitionState *ps;
} Parsed;

static void
store_offsets(void)
{
	ArrayBuildState *cols[12];
	Oid			types[12];
	Datum		args[12];
	int			n = 0;
	ListCell   *lc;
	StringInfoData buf;

	initStringInfo(&buf);
	for (int c = 0; c < 12; c++)
	{
		cols[c] = initArrayResult(TEXTOID, CurrentMemoryContext, false);
		types[c] = TEXTARRAYOID;
	}
	foreach(lc, sw.partitions)
	{
		PartitionState *ps = lfirst(lc);
		char	   *v[12];

		if (!ps->touched && !ps->idle_dirty)
			continue;
		v[0] = ps->topic;
		v[1] = psprintf("%d", ps->partition);
		v[2] = psprintf(INT64_FORMAT, ps->committed);
		v[3] = psprintf(INT64_FORMAT, ps->next);
		v[4] = ps->stream_time == DT_NOBEGIN ? NULL :
			DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(ps->stream_time)));
		v[5] = ps->last_record_at == 0 ? NULL :
			DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(ps->last_record_at)));
		v[6] = ps->caught_up ? "t" : "f";
		v[7] = ps->high_watermark < 0 ? NULL : psprintf(INT64_FORMAT, ps->high_watermark);
		v[8] = ps->position.known ? psprintf("%X/%X", LSN_FORMAT_ARGS(ps->position.lsn)) : NULL;
		v[9] = ps->position.known ? psprintf(INT64_FORMAT, ps->position.seq) : NULL;
		v[10] = ps->position.known && ps->position.system_id != 0 ?
			psprintf(INT64_FORMAT, (int64) ps->position.system_id) : NULL;
		v[11] = ps->position.known && ps->position.timeline != 0 ?
			psprintf("%u", ps->position.timeline) : NULL;
		for (int c = 0; c < 12; c++)
			accumArrayResult(cols[c], v[c] ? CStringGetTextDatum(v[c]) : (Datum) 0, v[c] == NULL,
							 TEXTOID, CurrentMemoryContext);
		n++;
	}
	if (n == 0)
		return;
	for (int c = 0; c < 12; c++)
		args[c] = makeArrayResult(cols[c], CurrentMemoryContext);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	{
		Oid			all[13];
		Datum		allargs[13];

		memcpy(all, types, sizeof(types));
		memcpy(allargs, args, sizeof(args));
		all[12] = TEXTOID;
		allargs[12] = CStringGetTextDatum(sw.group);
		if (SPI_execute_with_args("UPDATE kappa.stream_offsets o "
								  "   SET next_offset = u.nx::bigint, stream_time = u.st::timestamptz, "
								  "       last_record_at = u.lr::timestamptz, caught_up = u.cu::boolean, "
								  "       high_watermark = u.hw::bigint, position_lsn = u.pl::pg_lsn, "
								  "       position_seq = u.ps::bigint, position_system_id = u.po::bigint, "
								  "       position_timeline = u.ptl::integer, updated_at = now() "
								  "  FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
								  "       AS u(t, p, ex, nx, st, lr, cu, hw, pl, ps, po, ptl) "
								  " WHERE o.consumer_group = $13 AND o.topic = u.t AND o.partition = u.p::int "
								  "   AND o.next_offset = u.ex::bigint",
								  13, all, allargs, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not write kappa.stream_offsets");
	}
	if ((int) SPI_processed != n)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("stream worker %d lost ownership of a partition", sw.index),
				 errdetail("Another member of consumer group \"%s\" stored offsets for it since this worker read them; the batch is discarded and read again.",
						   sw.group)));
	SPI_finish();
}

static void
store_late_events(void)
{
	ArrayBuildState *cols[10];
	Oid			types[10];
	Datum		args[10];
	ListCell   *lc;

	if (sw.late == NIL)
		return;
	for (int c = 0; c < 10; c++)
	{
		cols[c] = initArrayResult(TEXTOID, CurrentMemoryContext, false);
		types[c] = TEXTARRAYOID;
	}
	foreach(lc, sw.late)
	{
		LateEvent  *le = lfirst(lc);
		char	   *v[10];

		v[0] = (char *) le->ranking;
		v[1] = le->ps->topic;
		v[2] = psprintf("%d", le->ps->partition);
		v[3] = psprintf(INT64_FORMAT, le->offset);
		v[4] = le->key;
		v[5] = DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(le->c.event_time)));
		v[6] = DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(le->c.window_start)));
		v[7] = DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(le->c.window_end)));
		v[8] = le->stream_time == DT_NOBEGIN ? NULL :
			DatumGetCString(DirectFunctionCall1(timestamptz_out, TimestampTzGetDatum(le->stream_time)));
		v[9] = (char *) le->reason;
		for (int c = 0; c < 10; c++)
			accumArrayResult(cols[c], v[c] ? CStringGetTextDatum(v[c]) : (Datum) 0, v[c] == NULL,
							 TEXTOID, CurrentMemoryContext);
	}
	for (int c = 0; c < 10; c++)
		args[c] = makeArrayResult(cols[c], CurrentMemoryContext);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("INSERT INTO kappa.late_events "
							  "       (ranking, topic, partition, \"offset\", key, event_time, "
							  "        window_start, window_end, stream_time, reason) "
							  "SELECT r, t, p::int, o::bigint, k, e::timestamptz, ws::timestamptz, "
							  "       we::timestamptz, st::timestamptz, re "
							  "  FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
							  "       AS u(r, t, p, o, k, e, ws, we, st, re)",
							  10, types, args, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write kappa.late_events");
	SPI_finish();
}

static void
store_ranking_counters(void)
{
	ListCell   *lc;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);
		Oid			types[3] = {TEXTOID, INT8OID, INT8OID};
		Datum		args[3];

		if (r->batch_applied == 0 && r->batch_late == 0)
			continue;
		stream_lock_shared_writes();
		args[0] = CStringGetTextDatum(r->name);
		args[1] = Int64GetDatum(r->batch_applied);
		args[2] = Int64GetDatum(r->batch_late);
		if (SPI_execute_with_args("UPDATE kappa.ranking_state "
								  "   SET events_applied = events_applied + $2, "
								  "       late_events = late_events + $3, last_event_at = now() "
								  " WHERE ranking = $1",
								  3, types, args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update kappa.ranking_state");
		r->batch_applied = r->batch_late = 0;
	}
	SPI_finish();
}

/*
 * Apply the messages held in sw.batch in one transaction, then let them go.
 */
/*
 * Messages left unapplied because nothing reads their topic any more (see
 * the first pass of apply_batch_once): the fetch position goes back to the
 * first of them, so that if the topic is read again before the
 * subscription drops it (a setting set back at once), they are fetched
 * again, and the subscription is looked at again at once.
 */
static void
rewind_unread(void)
{
	rd_kafka_topic_partition_list_t *list = NULL;
	rd_kafka_error_t *error;
	ListCell   *lc;

	foreach(lc, sw.partitions)
	{
		PartitionState *ps = lfirst(lc);

		if (ps->unread_from < 0)
			continue;
		if (list == NULL)
			list = rd_kafka_topic_partition_list_new(1);
		rd_kafka_topic_partition_list_add(list, ps->topic, ps->partition)->offset = ps->unread_from;
		ps->unread_from = -1;
	}
	if (list == NULL)
		return;
	error = rd_kafka_seek_partitions(sw.consumer->rk, list, 5000);
	if (error)
	{
		ereport(DEBUG1,
				(errmsg_internal("pg_kappa stream worker %d: could not seek back to unread messages: %s",
								 sw.index, rd_kafka_error_string(error))));
		rd_kafka_error_destroy(error);
	}
	rd_kafka_topic_partition_list_destroy(list);
	sw.rankings_loaded_at = 0;
}

/* the reason a message of bytes not of the database's encoding is refused */
static char *utf8_error = NULL;

static void
apply_batch_once(void)
{
	MemoryContext old = MemoryContextSwitchTo(sw.batch_cxt);
	Parsed	   *parsed = palloc(sizeof(Parsed) * sw.batch_count);
	int			count = sw.batch_count;
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz t_parsed,
				t_loaded,
				t_applied,
				t_aggregated,
				t_written;

	set_state("applying %d messages", count);
	sw.late = NIL;
	sw.applied = sw.duplicates = sw.dead = 0;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	/* the batch's working memory outlives the transaction until it is let go */
	MemoryContextSwitchTo(sw.batch_cxt);
	load_rankings();
	topic_cache.topic = NULL;	/* the rankings are new */
	topic_cache.events = NULL;	/* (in the batch memory, reset) */
	json_row_forget();			/* the last batch's rows are gone */
	aggregate_reset(sw.batch_cxt);
	rows_reset(sw.batch_cxt);
	payments_reset(sw.batch_cxt);
	sink_reset(sw.batch_cxt);

	if (utf8_error == NULL)
		utf8_error = MemoryContextStrdup(TopMemoryContext,
										 psprintf("message value is not valid %s (the database's encoding)",
												  GetDatabaseEncodingName()));

	/* first pass: parse, and name the rows and payments to load */
	for (int i = 0; i < count; i++)
	{
		rd_kafka_message_t *msg = sw.batch[i];
		const char *topic = rd_kafka_topic_name(msg->rkt);
		Parsed	   *p = &parsed[i];
		const char *error = NULL;
		const TopicRankings *tr;
		KappaChange change;		/* an event applied at once */
		bool		events_topic;
		bool		payments_topic;
		bool		sink_topic;
		bool		confirmed_only;

		p->kind = 0;
		p->key = NULL;
		p->ps = find_partition(topic, msg->partition);
		if (p->ps == NULL)
			continue;			/* revoked meanwhile: not ours to apply */
		if (msg->offset < p->ps->next)
		{
			/* read before a reassignment moved the position back */
			p->ps = NULL;
			continue;
		}
		tr = topic_rankings(topic);
		sink_topic = tr->any_sink;
		events_topic = tr->any_events;
		confirmed_only = tr->confirmed_only;
		payments_topic = is_payments_topic(topic);
		if (!events_topic && !sink_topic && !payments_topic)
		{
			/*
			 * Nothing reads the topic any more (kappa.payments_topic or
			 * kappa.sales_topic changed, or its rankings were dropped, since
			 * it was fetched; the subscription follows): its offset stays,
			 * so that whoever reads it again starts with this message.
			 */
			if (p->ps->unread_from < 0)
				p->ps->unread_from = msg->offset;
			p->ps->put_back = true;
			p->ps = NULL;
			continue;
		}
		p->ps->touched = true;
		p->ps->next = msg->offset + 1;
		p->ps->start_retry_ms = 0;	/* it reads: a failure from now is new */
		/* read again after a put-back: the fetch position counts again */
		if (p->ps->unread_from < 0)
			p->ps->put_back = false;
		p->ps->last_record_at = now;

		if (events_topic || payments_topic)
		{
			if (msg->payload == NULL || msg->len == 0)
				error = "message has no value";
			else if (msg->key_len > KAPPA_MAX_KEY_BYTES)
				error = "message key is longer than " CppAsString2(KAPPA_MAX_KEY_BYTES) " bytes";
			else if ((p->key = message_key(msg)) == NULL)
				error = "message has no usable key (the row's primary key, as text)";
		}

		/*
		 * Its strings become text in the database as they are: bytes that
		 * are not of its encoding (messages are UTF-8) would be stored, and
		 * fail every client that reads them back, and every dump.
		 */
		if (error == NULL && msg->payload != NULL && msg->len > 0 &&
			(msg->len > INT_MAX ||
			 (!bytes_are_plain_ascii(msg->payload, msg->len) &&
			  !pg_verifymbstr(msg->payload, (int) msg->len, true))))
			error = utf8_error;
		if (error == NULL && events_topic)
		{
			if (tr->without_memory)
			{
				/*
				 * Nothing to load first: applied now, while the message is
				 * in the cache (a second pass over a large batch reads
				 * every payload from memory again).
				 */
				if (change_parse(msg->payload, msg->len, &change, &error))
					apply_change_without_memory(msg, topic, p->key, &change, p->ps);
			}
			else if (change_parse(msg->payload, msg->len, &p->change, &error))
			{
				p->kind = 1;
				rows_want(topic, p->key);
				if (confirmed_only)
					payments_want(p->key);
			}
		}
		else if (error == NULL && payments_topic)
		{
			p->kind = 2;
			payments_want(p->key);
			foreach(lc, sw.rankings)
			{
				KappaRanking *r = lfirst(lc);

				if (r->confirmed_only && !r->results_input)
					rows_want(r->source_topic, p->key);
			}
		}
		else if (error == NULL && sink_topic)
			p->kind = 3;

		if (error)
		{
			dead_letter(msg, error);
			p->kind = 0;
		}
	}

	t_parsed = GetCurrentTimestamp();
	rows_load();
	payments_load();
	t_loaded = GetCurrentTimestamp();

	/* second pass: apply in order */
	for (int i = 0; i < count; i++)
	{
		rd_kafka_message_t *msg = sw.batch[i];
		Parsed	   *p = &parsed[i];
		const char *error;

		switch (p->kind)
		{
			case 1:
				apply_change(msg, rd_kafka_topic_name(msg->rkt), p->key, &p->change, p->ps);
				break;
			case 2:
				apply_payment(msg, p->key, p->ps);
				break;
			case 3:
				foreach(lc, sw.rankings)
				{
					KappaRanking *r = lfirst(lc);

					/*
					 * (a message one sink ranking of the topic refuses may
					 * suit another: each takes it or says why not)
					 */
					if (r->results_input && strcmp(r->source_topic, rd_kafka_topic_name(msg->rkt)) == 0 &&
						!sink_apply(r, msg->payload, msg->len, &error))
						dead_letter(msg, psprintf("ranking \"%s\": %s", r->name, error));
				}
				break;
			default:
				break;
		}
		CHECK_FOR_INTERRUPTS();
	}

	t_applied = GetCurrentTimestamp();

	/* rows of this worker's own partitions first: no other worker waits */
	rows_flush();
	payments_flush();
	store_late_events();
	t_aggregated = GetCurrentTimestamp();

	/* then what workers share, one worker at a time (aggregate_flush locks) */
	aggregate_flush(sw.rankings);
	sink_flush();
	foreach(lc, sw.rankings)
		sw.applied += ((KappaRanking *) lfirst(lc))->batch_applied;
	store_ranking_counters();
	store_offsets();

	t_written = GetCurrentTimestamp();
	PopActiveSnapshot();
	CommitTransactionCommand();
	ereport(DEBUG1,
			(errmsg_internal("pg_kappa stream worker %d: batch of %d: parse %ld ms, load %ld ms, apply %ld ms, rows %ld ms, results and offsets %ld ms, commit %ld ms",
							 sw.index, count,
							 TimestampDifferenceMilliseconds(now, t_parsed),
							 TimestampDifferenceMilliseconds(t_parsed, t_loaded),
							 TimestampDifferenceMilliseconds(t_loaded, t_applied),
							 TimestampDifferenceMilliseconds(t_applied, t_aggregated),
							 TimestampDifferenceMilliseconds(t_aggregated, t_written),
							 TimestampDifferenceMilliseconds(t_written, GetCurrentTimestamp()))));

	/* committed: the stored offsets are ours now */
	foreach(lc, sw.partitions)
	{
		PartitionState *ps = lfirst(lc);

		if (ps->touched || ps->idle_dirty)
			ps->committed = ps->next;
		ps->touched = ps->idle_dirty = false;
	}
	rewind_unread();
	for (int i = 0; i < count; i++)
		rd_kafka_message_destroy(sw.batch[i]);
	sw.batch_count = 0;

	SpinLockAcquire(&sw.status->mutex);
	sw.status->messages += count;
	sw.status->applied += sw.applied;
	sw.status->duplicates += sw.duplicates;
	sw.status->late += list_length(sw.late);
	sw.status->dead_letters += sw.dead;
	sw.status->batches++;
	sw.status->last_batch_at = GetCurrentTimestamp();
	SpinLockRelease(&sw.status->mutex);

	MemoryContextSwitchTo(old);
	MemoryContextReset(sw.batch_cxt);
	sw.late = NIL;
	set_state("consuming");
}

/*
 * Errors that another transaction caused and that applying the same batch
 * again, with a new snapshot, resolves: another worker's batch that took
 * the same key as new (see apply_payment), a deadlock between two batches'
 * row locks, a lock not available.
 */
static bool
conflict_error(int sqlerrcode)
{
	/*
	 * (Not serialization_failure: the batches run in READ COMMITTED, and
	 * store_offsets raises it for a partition another member took over,
	 * which no new attempt mends.)
	 */
	return sqlerrcode == ERRCODE_UNIQUE_VIOLATION ||
		sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE;
}

/*
 * Apply the batch held, in one transaction.  A conflict with another
 * transaction rolls it back and applies the same messages again, in this
 * process: before, the worker exited, and its partitions waited for the
 * group to notice (the session timeout) and for the restart.  Only the
 * partitions' positions outlive a rolled-back attempt; they are put back.
 * Any other error, or a conflict BATCH_ATTEMPTS times, ends the worker
 * as before.
 */
static void
apply_batch(void)
{
	int			nparts = list_length(sw.partitions);
	PartitionState *saved = MemoryContextAlloc(TopMemoryContext,
											   sizeof(PartitionState) * Max(nparts, 1));
	ListCell   *lc;
	int			i = 0;

	foreach(lc, sw.partitions)
		saved[i++] = *(PartitionState *) lfirst(lc);

	for (int attempt = 1;; attempt++)
	{
		MemoryContext cxt = CurrentMemoryContext;

		PG_TRY();
		{
			apply_batch_once();
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			/* (no transaction is open around a batch's own) */
			MemoryContextSwitchTo(TopMemoryContext);
			edata = CopyErrorData();
			if (attempt >= BATCH_ATTEMPTS || !conflict_error(edata->sqlerrcode))
				PG_RE_THROW();
			FlushErrorState();
			AbortCurrentTransaction();
			MemoryContextSwitchTo(cxt);
			MemoryContextReset(sw.batch_cxt);
			i = 0;
			foreach(lc, sw.partitions)
				*(PartitionState *) lfirst(lc) = saved[i++];
			ereport(LOG,
					(errmsg("pg_kappa stream worker %d: applying a batch of %d messages again after a conflict with another transaction",
							sw.index, sw.batch_count),
					 errdetail_internal("%s", edata->message)));
			FreeErrorData(edata);
			continue;
		}
		PG_END_TRY();
		break;
	}
	pfree(saved);
}

/* ---------------------------------------------------------------------
 * The tick: idle partitions, finalization, final results
 * ---------------------------------------------------------------------
 */

/*
 * Has the consumer read a partition up to hi, though what was applied ends
 * before it?  A transactional producer's commit or abort marker takes an
 * offset that no message has, so after its last message the high
 * watermark stays one past what the worker applied.  librdkafka's fetch
 * position steps over markers (and, read_committed, over aborted
 * messages); it counts only while every message delivered was applied
 * (between batches, nothing left unread: a seek resets it).
 */
static bool
read_past_markers(PartitionState *ps, int64 hi)
{
	rd_kafka_topic_partition_list_t *list;
	int64		position;

	if (ps->next != ps->committed || ps->put_back || ps->lost_offset >= 0)
		return false;
	list = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(list, ps->topic, ps->partition);
	if (rd_kafka_position(sw.consumer->rk, list) != RD_KAFKA_RESP_ERR_NO_ERROR ||
		list->elems[0].err != RD_KAFKA_RESP_ERR_NO_ERROR)
		position = -1;
	else
		position = list->elems[0].offset;	/* < 0: nothing read yet */
	rd_kafka_topic_partition_list_destroy(list);
	return position >= 0 && position >= hi;
}

/*
 * Note which partitions are caught up (for the idle rule).  Between
 * batches only: the batch held so far is applied.
 */
static bool
refresh_watermarks(void)
{
	ListCell   *lc;
	bool		changed = false;

	Assert(sw.batch_count == 0);
	foreach(lc, sw.partitions)
	{
		PartitionState *ps = lfirst(lc);
		int64		lo,
					hi;
		bool		caught_up;

		if (rd_kafka_get_watermark_offsets(sw.consumer->rk, ps->topic, ps->partition,
										   &lo, &hi) != RD_KAFKA_RESP_ERR_NO_ERROR ||
			hi < 0)
			continue;			/* not fetched yet: unknown, not idle */
		/* (next, not committed: after a resume at an unknown start it is -1) */
		caught_up = ps->next >= 0 ? ps->next >= hi : hi == lo;
		if (!caught_up)
			caught_up = read_past_markers(ps, hi);
		if (caught_up != ps->caught_up || hi != ps->high_watermark)
		{
			ps->caught_up = caught_up;
			ps->high_watermark = hi;
			ps->idle_dirty = true;
			changed = true;
		}
	}
	return changed;
}

/*
 * Store idle-state changes, then finalize windows of every events ranking
 * whose topic's watermark passed window_end + grace.  Own transaction.
 */
static void
finalize_windows(void)
{
	ListCell   *lc;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	lock_finalization(ExclusiveLock);
	PushActiveSnapshot(GetTransactionSnapshot());
	store_offsets();
	foreach(lc, sw.partitions)
	{
		PartitionState *ps = lfirst(lc);

		/* (an error below ends the worker: what was stored does not count) */
		if (ps->idle_dirty)
			ps->committed = ps->next;
		ps->idle_dirty = false;
	}
	MemoryContextReset(sw.rankings_cxt);
	sw.rankings = rankings_load(sw.rankings_cxt);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);
		Oid			types[4] = {TEXTOID, TEXTOID, INT4OID, INT8OID};
		Datum		args[4];
		bool		isnull;
		TimestampTz watermark;
		TimestampTz cutoff;
		Datum		d;

		if (r->results_input)
			continue;
		args[0] = CStringGetTextDatum(sw.group);
		args[1] = CStringGetTextDatum(r->source_topic);
		args[2] = Int32GetDatum(kappa_idle_timeout);
		args[3] = Int64GetDatum(r->grace_usecs);
		if (SPI_execute_with_args(
								  "SELECT min(CASE WHEN o.caught_up AND now() - coalesce(o.last_record_at, o.assigned_at) "
								  "                                   > make_interval(secs => $3) "
								  "                THEN coalesce(o.stream_time + (now() - coalesce(o.last_record_at, o.assigned_at)), "
								  "                              'infinity') "
								  "                ELSE coalesce(o.stream_time, '-infinity') END) "
								  "  FROM kappa.stream_offsets o WHERE o.consumer_group = $1 AND o.topic = $2",
								  4, types, args, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read kappa.stream_offsets");
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (isnull)
			continue;
		watermark = DatumGetTimestampTz(d);
		if (TIMESTAMP_NOT_FINITE(watermark))
			continue;
		cutoff = watermark - r->grace_usecs;
		if (cutoff <= r->finalized_through)
			continue;
		{
			Oid			ftypes[2] = {TEXTOID, TIMESTAMPTZOID};
			Datum		fargs[2] = {CStringGetTextDatum(r->name), TimestampTzGetDatum(cutoff)};

			if (SPI_execute_with_args("UPDATE kappa.ranking_state "
									  "   SET finalized_through = greatest(coalesce(finalized_through, '-infinity'), $2) "
									  " WHERE ranking = $1",
									  2, ftypes, fargs, NULL, false, 0) != SPI_OK_UPDATE ||
				SPI_execute_with_args("WITH f AS (UPDATE kappa.ranking_windows "
									  "              SET is_final = true, finalized_at = now() "
									  "            WHERE ranking = $1 AND NOT is_final AND window_end <= $2 "
									  "        RETURNING window_start) "
									  "UPDATE kappa.ranking_results res SET is_final = true "
									  "  FROM f WHERE res.ranking = $1 AND res.window_start = f.window_start",
									  2, ftypes, fargs, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not finalize windows of ranking \"%s\"", r->name);
		}
		r->finalized_through = cutoff;
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * Forget rows whose windows, in every ranking on their topic, have been
 * final for kappa.row_memory_retention (rows.c says why that is safe).
 * Once a minute, or at once while there is a backlog; one worker at a time.
 */
static void
forget_rows(void)
{
	List	   *topics = NIL;
	ListCell   *lc;
	LOCKTAG		tag;

	if (kappa_row_memory_retention < 0 ||
		(!sw.forget_more &&
		 !TimestampDifferenceExceeds(sw.last_forget, GetCurrentTimestamp(), FORGET_MS)))
		return;
	sw.last_forget = GetCurrentTimestamp();
	sw.forget_more = false;

	set_state("forgetting rows of final windows");
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	/* (in the transaction's memory) */
	foreach(lc, sw.rankings)
	{
		KappaRanking *r = lfirst(lc);

		if (!r->results_input && !list_member(topics, makeString(r->source_topic)))
			topics = lappend(topics, makeString(r->source_topic));
	}
	KAPPA_LOCK_TAG(tag, KAPPA_LOCK_FORGET);
	if (topics != NIL &&
		LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL)
	{
		foreach(lc, topics)
		{
			const char *topic = strVal(lfirst(lc));
			TimestampTz cutoff = DT_NOEND;
			ListCell   *rc;
			int64		n;

			/* the least final ranking on the topic decides */
			foreach(rc, sw.rankings)
			{
				KappaRanking *r = lfirst(rc);

				if (!r->results_input && strcmp(r->source_topic, topic) == 0 &&
					r->finalized_through < cutoff)
					cutoff = r->finalized_through;
			}
			if (TIMESTAMP_NOT_FINITE(cutoff))
				continue;
			cutoff -= (int64) kappa_row_memory_retention * USECS_PER_SEC;
			n = rows_forget(topic, cutoff, FORGET_LIMIT);
			if (n == FORGET_LIMIT)
				sw.forget_more = true;
			if (n > 0)
				ereport(DEBUG1,
						(errmsg_internal("pg_kappa stream worker %d: forgot %lld rows of topic \"%s\" whose windows were final by %s",
										 sw.index, (long long) n, topic, timestamptz_to_str(cutoff))));
		}
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	set_state("consuming");
}

static void
ensure_producer(void)
{
	if (sw.producer == NULL)
		sw.producer = kafka_client_create(kafka_conf_for(RD_KAFKA_PRODUCER, "stream"),
										  RD_KAFKA_PRODUCER, "stream", NULL);
}

static void
tick(void)
{
	int			n;

	refresh_watermarks();
	finalize_windows();
	forget_rows();
	ensure_producer();
	do
	{
		n = emit_final_results(sw.producer, 100);
		CHECK_FOR_INTERRUPTS();
	} while (n == 100);
	sw.last_tick = GetCurrentTimestamp();
}

/* ---------------------------------------------------------------------
 * Polling
 * ---------------------------------------------------------------------
 */
static void
handle_consumer_error(rd_kafka_message_t *msg)
{
	char		buf[512];

	if (msg->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
		msg->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE)
	{
		/* handled once the messages fetched with it are in the batch */
		PartitionState *ps = msg->rkt ?
			find_partition(rd_kafka_topic_name(msg->rkt), msg->partition) : NULL;

		if (ps && msg->offset >= 0)
			ps->lost_offset = msg->offset;
		else if (ps)
		{
			/*
			 * Not a lost offset: librdkafka could not ask the broker where
			 * the partition starts (offset BEGINNING, for a partition with
			 * nothing stored), and stopped fetching it.  Nothing was lost;
			 * it is assigned again in a while (resume_after_lost_offsets),
			 * the wait doubling while it fails without reading anything.
			 */
			if (ps->start_retry_at == 0)
			{
				/* (each retry assigns every partition again: not too often) */
				if (ps->start_retry_ms == 0)
					ps->start_retry_ms = START_RETRY_MS;
				snprintf(buf, sizeof(buf), "kafka: %s; asking again in %d s",
						 rd_kafka_message_errstr(msg), ps->start_retry_ms / 1000);
				record_error(buf);
				ps->start_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																 ps->start_retry_ms);
				ps->start_retry_ms = Min(ps->start_retry_ms * 2, START_RETRY_MAX_MS);
			}
		}
		return;
	}
	snprintf(buf, sizeof(buf), "kafka: %s", rd_kafka_message_errstr(msg));
	if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
		record_error(buf);
}

/*
 * The broker deleted the offset a partition was to be read from (retention,
 * or a recreated topic): librdkafka stops fetching it (auto.offset.reset is
 * "error" so that this is never silent).  Say so everywhere it will be seen
 * -- the log, the status, a dead letter naming the lost range -- and go on
 * from the earliest offset the broker still has.  The assignment is issued
 * again: a partition stopped this way takes no seek.  The other partitions
 * resume where this worker is; what the batch already holds is skipped when
 * fetched again.
 */
static void
resume_after_lost_offsets(void)
{
	ListCell   *lc;
	bool		any = false;
	rd_kafka_topic_partition_list_t *list;

	foreach(lc, sw.partitions)
	{
		PartitionState *ps = lfirst(lc);

		any |= ps->lost_offset >= 0 ||
			(ps->start_retry_at != 0 && GetCurrentTimestamp() >= ps->start_retry_at);
	}
	if (!any)
		return;

	/*
	 * Apply what the batch holds first: messages fetched before the lost
	 * range lie below it, and the stored offset is about to move past them.
	 */
	if (sw.batch_count > 0)
		apply_batch();

	list = rd_kafka_topic_partition_list_new(list_length(sw.partitions));
	foreach(lc, sw.partitions)
	{
		PartitionState *ps = lfirst(lc);
		int64		lo = -1,
					hi = -1;
		rd_kafka_resp_err_t err;
		char		buf[512];

		if (ps->lost_offset < 0)
		{
			/* (a partition waiting to ask where it starts asks now) */
			ps->start_retry_at = 0;
			rd_kafka_topic_partition_list_add(list, ps->topic, ps->partition)->offset =
				ps->next >= 0 ? ps->next : RD_KAFKA_OFFSET_BEGINNING;
			continue;
		}
		ps->start_retry_at = 0;

		err = rd_kafka_query_watermark_offsets(sw.consumer->rk, ps->topic, ps->partition,
											   &lo, &hi, 5000);
		if (!err && lo > ps->lost_offset)
			snprintf(buf, sizeof(buf),
					 "offsets " INT64_FORMAT " to " INT64_FORMAT " of %s[%d] no longer exist at the broker (retention): they were never applied; resuming at offset " INT64_FORMAT,
					 ps->lost_offset, lo - 1, ps->topic, ps->partition, lo);
		else if (!err)
			snprintf(buf, sizeof(buf),
					 "offset " INT64_FORMAT " of %s[%d] does not exist at the broker (it holds " INT64_FORMAT " to " INT64_FORMAT "): resuming at offset " INT64_FORMAT,
					 ps->lost_offset, ps->topic, ps->partition, lo, hi - 1, lo);
		else
			snprintf(buf, sizeof(buf),
					 "offset " INT64_FORMAT " of %s[%d] does not exist at the broker: resuming at its earliest offset (%s)",
					 ps->lost_offset, ps->topic, ps->partition, rd_kafka_err2str(err));
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("pg_kappa stream worker %d: %s", sw.index, buf),
				 errhint("Consume faster than the topic's retention, or raise its retention.ms.")));
		record_error(buf);

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		{
			KappaDeadLetter dl = {.source = "stream",.topic = ps->topic,.partition = ps->partition,
				.offset = ps->lost_offset,.file = NULL,.line = -1,.raw = NULL,.rawlen = 0,
			.error = buf};

			kappa_dead_letter(&dl);
		}

		/*
		 * The stored offset moves to where the worker resumes, with its dead
		 * letter: else a restart before this partition's next batch is
		 * applied (or a partition that gets nothing more) would seek to the
		 * lost offset again, and report it again.  Past the lost range
		 * (retention), or back to the start of a recreated topic that holds
		 * fewer messages than were read: its messages are new, and left
		 * below the worker's position they would be skipped as read
		 * already.  Fenced like store_offsets: nothing moves if another
		 * member stored an offset meanwhile.
		 */
		if (!err && lo != ps->committed)
		{
			Oid			types[5] = {TEXTOID, TEXTOID, INT4OID, INT8OID, INT8OID};
			Datum		args[5];

			args[0] = CStringGetTextDatum(sw.group);
			args[1] = CStringGetTextDatum(ps->topic);
			args[2] = Int32GetDatum(ps->partition);
			args[3] = Int64GetDatum(ps->committed);
			args[4] = Int64GetDatum(lo);
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			if (SPI_execute_with_args("UPDATE kappa.stream_offsets SET next_offset = $5, updated_at = now() "
									  " WHERE consumer_group = $1 AND topic = $2 AND partition = $3 "
									  "   AND next_offset = $4",
									  5, types, args, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not update kappa.stream_offsets");
			if (SPI_processed == 1)
				ps->committed = ps->next = lo;
			SPI_finish();
		}
		PopActiveSnapshot();
		CommitTransactionCommand();

		rd_kafka_topic_partition_list_add(list, ps->topic, ps->partition)->offset =
			err ? RD_KAFKA_OFFSET_BEGINNING : lo;

		/*
		 * Where the earliest offset is, unknown, may be below the position
		 * (a recreated topic): it is taken as the next message's, so that
		 * what is read from there is applied, as when lo is known.  The
		 * stored offset stays until the next batch or idle-state change
		 * stores -1 (a restart then starts at the earliest offset); a
		 * restart before that reports the loss again.
		 */
		if (err)
			ps->next = -1;
		ps->lost_offset = -1;
	}
	assign_or_error(list);
	rd_kafka_topic_partition_list_destroy(list);
}

/*
 * Wake the broker threads so that they look at the consumer queue again.
 * librdkafka (2.0) stops fetching while the queue is over
 * queued.min.messages or queued.max.messages.kbytes, and a broker thread
 * with nothing in flight then sleeps until something reaches it, up to a
 * second: draining the queue does not wake it.  Working through a backlog
 * the worker then waits for fetches with nothing to apply (a tenth to a
 * fifth of the time in test/bench/stream_throughput.sh).  Asking the
 * leaders for the partitions' latest offsets reaches every broker thread
 * concerned; the answer is not waited for (timeout 0) and not needed.
 */
static void
wake_fetchers(void)
{
	ListCell   *lc;
	rd_kafka_topic_partition_list_t *list;

	if (sw.partitions == NIL)
		return;
	list = rd_kafka_topic_partition_list_new(list_length(sw.partitions));
	foreach(lc, sw.partitions)
	{
		PartitionState *ps = lfirst(lc);

		/* (for offsets_for_times the offset field is the time; -1: latest) */
		rd_kafka_topic_partition_list_add(list, ps->topic, ps->partition)->offset = -1;
	}
	(void) rd_kafka_offsets_for_times(sw.consumer->rk, list, 0);
	rd_kafka_topic_partition_list_destroy(list);
}

/* Gather messages; returns true when a batch is ready. */
static bool
collect(void)
{
	int			base = sw.batch_count;
	uint64		revocations = sw.revocations;
	ssize_t		n;

	kafka_client_drain_wakeups(sw.consumer);
	n = rd_kafka_consume_batch_queue(sw.consumer->queue, 0, sw.batch + base,
									 sw.batch_cap - base);
	kafka_flush_log();
	if (n < 0)
		n = 0;

	/*
	 * A revocation inside that call dropped the batch held so far (see
	 * revoke_partitions), and what the call returned goes too: it was
	 * fetched under the assignment revoked (librdkafka drops what was
	 * fetched before an assign once it is made).  Kept, a message could be
	 * applied after the partition came back, above the messages dropped
	 * with the batch: the partition's position would pass them and their
	 * second fetch would be skipped as read already.
	 */
	if (sw.revocations != revocations)
	{
		for (ssize_t i = 0; i < n; i++)
			rd_kafka_message_destroy(sw.batch[base + i]);
		n = 0;
		base = sw.batch_count;
	}
	check_assign_error();
	take_assignment();
	check_assign_error();
	for (ssize_t i = 0; i < n; i++)
	{
		rd_kafka_message_t *msg = sw.batch[base + i];

		if (msg->err)
		{
			handle_consumer_error(msg);
			rd_kafka_message_destroy(msg);
			/* keep the array dense */
			memmove(&sw.batch[base + i], &sw.batch[base + i + 1],
					sizeof(rd_kafka_message_t *) * (n - i - 1));
			n--;
			i--;
		}
	}

	/*
	 * The queue had all we asked for and holds less than two more batches:
	 * a backlog, and the fetchers may have paused on a full queue.
	 */
	if (n == sw.batch_cap - base &&
		rd_kafka_queue_length(sw.consumer->queue) < (size_t) 2 * sw.batch_cap)
		wake_fetchers();

	if (n > 0 && base == 0)
		sw.batch_started = GetCurrentTimestamp();
	sw.batch_count = base + (int) n;
	resume_after_lost_offsets();

	return sw.batch_count >= sw.batch_cap ||
		(sw.batch_count > 0 &&
		 TimestampDifferenceExceeds(sw.batch_started, GetCurrentTimestamp(), kappa_stream_batch_ms));
}

static void
wait_for_messages(long timeout_ms)
{
	WaitEvent	event;

	(void) WaitEventSetWait(sw.waitset, timeout_ms, &event, 1, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * The consumer's own settings go over kappa.kafka_options; a value there
 * for one of them is said to be ignored rather than refused by the check
 * hook: refused in postgresql.conf at start, it would drop every other
 * option (TLS, SASL) with it.
 */
static void
warn_overridden_options(void)
{
	char	   *error = NULL;
	ListCell   *lc;

	foreach(lc, kafka_options_parse(kappa_kafka_options, &error))
	{
		KafkaOption *opt = lfirst(lc);

		if (strcmp(opt->key, "group.id") == 0 ||
			strcmp(opt->key, "auto.offset.reset") == 0 ||
			strcmp(opt->key, "isolation.level") == 0)
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("pg_kappa stream worker %d: property \"%s\" in kappa.kafka_options is ignored",
							sw.index, opt->key),
					 errdetail("The stream workers use group.id = kappa.stream_group (\"%s\"), auto.offset.reset = error and isolation.level = read_committed.",
							   sw.group),
					 errhint("Remove it from kappa.kafka_options.")));
	}
}

static void
create_consumer(void)
{
	rd_kafka_conf_t *conf = kafka_conf_for(RD_KAFKA_CONSUMER, "stream");
	char		errstr[256];
	char		value[32];
	size_t		size = sizeof(value);

	/*
	 * librdkafka (2.0) stops fetching while the consumer queue holds
	 * queued.min.messages or queued.max.messages.kbytes, and looks again
	 * only when its broker thread next wakes (see wake_fetchers).  A deeper
	 * queue than librdkafka's default keeps a backlog flowing between
	 * wake-ups: 20 batches and 128 MB, unless kappa.kafka_options sets them.
	 */
	if (rd_kafka_conf_get(conf, "queued.min.messages", value, &size) == RD_KAFKA_CONF_OK &&
		strcmp(value, "100000") == 0)
	{
		snprintf(value, sizeof(value), "%d", Min(10000000, Max(100000, 20 * kappa_stream_batch_size)));
		if (rd_kafka_conf_set(conf, "queued.min.messages", value, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
			ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s", errstr)));
	}
	size = sizeof(value);
	if (rd_kafka_conf_get(conf, "queued.max.messages.kbytes", value, &size) == RD_KAFKA_CONF_OK &&
		strcmp(value, "65536") == 0 &&
		rd_kafka_conf_set(conf, "queued.max.messages.kbytes", "131072", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s", errstr)));

	warn_overridden_options();
	if (rd_kafka_conf_set(conf, "group.id", sw.group, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "auto.offset.reset", "error", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "isolation.level", "read_committed", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s", errstr)));
	rd_kafka_conf_set_rebalance_cb(conf, stream_rebalance_cb);
	sw.consumer = kafka_client_create(conf, RD_KAFKA_CONSUMER, "stream", NULL);

	if (sw.waitset)
		FreeWaitEventSet(sw.waitset);
	sw.waitset = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(sw.waitset, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(sw.waitset, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(sw.waitset, WL_SOCKET_READABLE, sw.consumer->wake_fd[0], NULL, NULL);
}

/*
 * Apply what is held and leave the group: the consumer goes, and with it the
 * partitions and the subscription, which the next consumer makes again.
 */
static void
leave_group(void)
{
	if (sw.batch_count > 0)
		apply_batch();
	kafka_client_destroy(sw.consumer, 0);
	sw.consumer = NULL;
	drop_pending_assignment();
	sw.last_partition = NULL;
	list_free_deep(sw.partitions);
	sw.partitions = NIL;
	sw.subscribed = NIL;
	sw.rankings_loaded_at = 0;
}

static void
stream_worker_shutdown(int code, Datum arg)
{
	SpinLockAcquire(&sw.status->mutex);
	sw.status->pid = 0;
	sw.status->partitions = 0;
	strlcpy(sw.status->state, "stopped", sizeof(sw.status->state));
	SpinLockRelease(&sw.status->mutex);
	/* leave the group at once instead of after the session timeout */
	if (sw.consumer)
		kafka_client_destroy(sw.consumer, 0);
	sw.consumer = NULL;
}

void
kappa_stream_worker_main(Datum main_arg)
{
	sw.index = DatumGetInt32(main_arg);
	sw.status = &stream_status[sw.index];
	kappa_worker_begin(psprintf("pg_kappa stream worker %d", sw.index));

	/*
	 * A crash can lose the last batches committed, but only whole
	 * transactions: their results and their offsets go together, and the
	 * messages are read again.  Exactly once holds without waiting for WAL
	 * flushes.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	SpinLockAcquire(&sw.status->mutex);
	sw.status->pid = MyProcPid;
	sw.status->started_at = GetCurrentTimestamp();
	sw.status->messages = sw.status->applied = sw.status->duplicates = 0;
	sw.status->late = sw.status->dead_letters = sw.status->batches = 0;
	SpinLockRelease(&sw.status->mutex);
	before_shmem_exit(stream_worker_shutdown, (Datum) 0);

	/*
	 * Refused here, not by a check hook: a value a hook refuses at server
	 * start is replaced by the default with a WARNING, and the workers would
	 * then read every topic again under another group.
	 */
	if (strlen(kappa_stream_group) > KAPPA_NAME_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("kappa.stream_group is longer than %d bytes", KAPPA_NAME_MAX),
				 errdetail("The stream workers keep their offsets under the group's name, of at most %d bytes.",
						   KAPPA_NAME_MAX),
				 errhint("Set a shorter kappa.stream_group and restart the server.")));
	if (kappa_stream_group[0])
		strlcpy(sw.group, kappa_stream_group, sizeof(sw.group));
	else
		snprintf(sw.group, sizeof(sw.group), "pg_kappa-%s", kappa_database);
	SpinLockAcquire(&sw.status->mutex);
	strlcpy(sw.status->group, sw.group, sizeof(sw.status->group));
	SpinLockRelease(&sw.status->mutex);

	/*
	 * Each batch allocates and frees a few hundred megabytes.  By default
	 * glibc hands that back to the kernel after every batch and the next one
	 * faults it in again, zeroed (a sixth of the worker's time).  Keep it: the
	 * worker's memory stays at its largest batch, which is bounded by
	 * kappa.stream_batch_size.
	 */
#ifdef M_TRIM_THRESHOLD
	mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
	mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
#endif

	sw.rankings_cxt = AllocSetContextCreate(TopMemoryContext, "pg_kappa rankings",
											ALLOCSET_DEFAULT_SIZES);
	sw.batch_cxt = AllocSetContextCreate(TopMemoryContext, "pg_kappa stream batch",
										 ALLOCSET_DEFAULT_SIZES);

	PG_TRY();
	{
		/* wait for the extension */
		sw.waitset = CreateWaitEventSet(TopMemoryContext, 2);
		AddWaitEventToSet(sw.waitset, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(sw.waitset, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		for (;;)
		{
			char	   *version = kappa_extension_version();

			if (!kappa_stream_enabled)
				set_state("disabled (kappa.stream_enabled = off)");
			else if (version == NULL)
				set_state("waiting for CREATE EXTENSION pg_kappa");
			else if (strcmp(version, PG_KAPPA_VERSION) != 0)
			{
				/*
				 * The library was installed and the server restarted, but
				 * the SQL objects are another version's: their tables lack
				 * what this library writes.  Wait for the update rather than
				 * fail every batch.
				 */
				set_state("waiting for ALTER EXTENSION pg_kappa UPDATE (SQL objects %s, library %s)",
						  version, PG_KAPPA_VERSION);
				if (!version_warned)
					ereport(WARNING,
							(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							 errmsg("stream worker %d waits: pg_kappa's SQL objects are version %s, its library %s",
									sw.index, version, PG_KAPPA_VERSION),
							 errhint("Run ALTER EXTENSION pg_kappa UPDATE in database \"%s\".",
									 kappa_database)));
				version_warned = true;
			}
			else
				break;
			if (version)
				pfree(version);
			wait_for_messages(5000);
			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
		}

		sw.batch_cap = kappa_stream_batch_size;
		sw.batch = MemoryContextAlloc(TopMemoryContext, sizeof(rd_kafka_message_t *) * sw.batch_cap);
		create_consumer();

		for (;;)
		{
			bool		ready;

			CHECK_FOR_INTERRUPTS();
			if (ConfigReloadPending)
			{
				bool		resized = false;
				bool		reconnected = false;

				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);

				/* a new kappa.stream_batch_size: apply what is held, resize */
				if (kappa_stream_batch_size != sw.batch_cap)
				{
					if (sw.batch_count > 0)
						apply_batch();
					sw.batch_cap = kappa_stream_batch_size;
					sw.batch = repalloc(sw.batch, sizeof(rd_kafka_message_t *) * sw.batch_cap);
					resized = true;
				}

				/*
				 * New brokers, options or secrets: apply what is held, leave
				 * the group and join it again with a new consumer, which
				 * seeks to the stored offsets as after any assignment.
				 */
				/*
				 * The results' producer may have windows in flight: its
				 * flush serves their reports, emit_producer_gone() marks the
				 * ones acknowledged produced and lets the others be produced
				 * again (same keys and values).
				 */
				if (kafka_client_settings_changed(sw.producer))
				{
					int			in_flight = emit_windows_in_flight();
					int			marked;

					if (in_flight > 0)
						ereport(LOG,
								(errmsg("pg_kappa stream worker %d: Kafka settings changed, waiting up to %d s for the acknowledgement of %d window(s) in flight",
										sw.index, PRODUCER_FLUSH_MS / 1000, in_flight)));
					kafka_client_destroy(sw.producer, PRODUCER_FLUSH_MS);
					sw.producer = NULL;
					marked = emit_producer_gone();
					if (in_flight > 0)
						ereport(LOG,
								(errmsg("pg_kappa stream worker %d: %d of %d window(s) in flight acknowledged and marked produced, the others are produced again",
										sw.index, marked, in_flight)));
				}
				if (kappa_stream_enabled && kafka_client_settings_changed(sw.consumer))
				{
					ereport(LOG,
							(errmsg("pg_kappa stream worker %d: Kafka settings changed, reconnecting",
									sw.index)));
					leave_group();
					create_consumer();
					reconnected = true;
				}

				/*
				 * Logged last, once the whole reload has been acted on (tests
				 * wait for it before checking what a reload left alone).
				 */
				if (resized)
					ereport(LOG,
							(errmsg("pg_kappa stream worker %d: batches of at most %d messages from now on",
									sw.index, sw.batch_cap)));
				if (reconnected)
					continue;
			}
			if (!kappa_stream_enabled)
			{
				/* switched off: apply what is held, leave the group, idle */
				leave_group();
				FreeWaitEventSet(sw.waitset);
				sw.waitset = CreateWaitEventSet(TopMemoryContext, 2);
				AddWaitEventToSet(sw.waitset, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
				AddWaitEventToSet(sw.waitset, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
				while (!kappa_stream_enabled)
				{
					set_state("disabled (kappa.stream_enabled = off)");
					wait_for_messages(5000);
					if (ConfigReloadPending)
					{
						ConfigReloadPending = false;
						ProcessConfigFile(PGC_SIGHUP);
					}
				}
				create_consumer();
				continue;
			}

			/* new or dropped rankings change the subscription */
			if (sw.rankings_loaded_at == 0 ||
				TimestampDifferenceExceeds(sw.rankings_loaded_at, GetCurrentTimestamp(), RANKINGS_RELOAD_MS))
			{
				List	   *topics;

				if (sw.batch_count > 0)
					apply_batch();
				SetCurrentStatementStartTimestamp();
				StartTransactionCommand();
				PushActiveSnapshot(GetTransactionSnapshot());
				load_rankings();
				topics = wanted_topics();
				if (!topics_equal(topics, sw.subscribed))
					subscribe(topics);
				PopActiveSnapshot();
				CommitTransactionCommand();
			}

			ready = collect();
			if (ready)
				apply_batch();

			if (TimestampDifferenceExceeds(sw.last_tick, GetCurrentTimestamp(), TICK_MS) &&
				sw.batch_count == 0)
				tick();

			if (!ready)
			{
				long		timeout = 100;

				if (sw.batch_count > 0)
					timeout = Max(1, kappa_stream_batch_ms -
								  TimestampDifferenceMilliseconds(sw.batch_started, GetCurrentTimestamp()));
				wait_for_messages(timeout);
			}
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		record_error(edata->message);
		FreeErrorData(edata);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* ---------------------------------------------------------------------
 * kappa.stream_worker_status(): one row per stream worker
 * ---------------------------------------------------------------------
 */
PG_FUNCTION_INFO_V1(kappa_stream_worker_status);

Datum
kappa_stream_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < kappa_stream_workers && i < MAX_STREAM_WORKERS; i++)
	{
		StreamWorkerStatus s;
		Datum		values[15];
		bool		nulls[15];

		SpinLockAcquire(&stream_status[i].mutex);
		memcpy(&s, &stream_status[i], sizeof(s));
		SpinLockRelease(&stream_status[i].mutex);

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(i);
		values[1] = Int32GetDatum(s.pid);
		nulls[1] = s.pid == 0;
		values[2] = CStringGetTextDatum(s.state[0] ? s.state : "not started");
		values[3] = CStringGetTextDatum(s.group);
		nulls[3] = s.group[0] == '\0';
		values[4] = Int32GetDatum(s.partitions);
		values[5] = Int64GetDatum(s.messages);
		values[6] = Int64GetDatum(s.applied);
		values[7] = Int64GetDatum(s.duplicates);
		values[8] = Int64GetDatum(s.late);
		values[9] = Int64GetDatum(s.dead_letters);
		values[10] = Int64GetDatum(s.batches);
		values[11] = TimestampTzGetDatum(s.last_batch_at);
		nulls[11] = s.last_batch_at == 0;
		values[12] = CStringGetTextDatum(s.last_error);
		nulls[12] = s.last_error[0] == '\0';
		values[13] = TimestampTzGetDatum(s.last_error_at);
		nulls[13] = s.last_error_at == 0;
		values[14] = TimestampTzGetDatum(s.started_at);
		nulls[14] = s.started_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
