/*-------------------------------------------------------------------------
 *
 * cdc_worker.c
 *	  The CDC publisher: decodes its replication slot in-process with the
 *	  pg_kappa output plugin and produces every change to Kafka.
 *
 * The worker is a logical decoding session of its own, like a walsender
 * without the network hop: it reads WAL with read_local_xlog_page, feeds
 * the records to the reorder buffer and receives the plugin's messages
 * through its write callback, which hands them straight to an idempotent
 * librdkafka producer (keyed by primary key, so a key's changes stay in
 * one partition in commit order).  Large transactions are spilled to disk
 * by the reorder buffer and streamed out change by change; the producer's
 * bounded queue pushes back when Kafka is slower than decoding.
 *
 * The guarantee: the slot's confirmed position only moves past a
 * transaction once Kafka has acknowledged every one of its messages.  Each
 * decoded transaction is an entry in a FIFO with a count of unacknowledged
 * messages; delivery reports decrement it, and the slot is confirmed up to
 * the end of the oldest fully acknowledged prefix.  When nothing is pending
 * the slot is confirmed up to where decoding has read, so filtered or idle
 * stretches of WAL are released too.  If a delivery fails for good, the
 * worker drops its in-flight messages, waits (exponential backoff) and
 * decodes again from the confirmed position: nothing is skipped, and what
 * is sent twice carries the same source.lsn/seq.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogutils.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "cdc/decoder.h"
#include "funcapi.h"
#include "nodes/makefuncs.h"
#include "replication/decode.h"
#include "storage/pmsignal.h"
#include "kafka/kafka.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "cdc/cdc.h"

/* ---------------------------------------------------------------------
 * Shared state: the status view and the commit wake-up read it.
 * ---------------------------------------------------------------------
 */
typedef struct CdcShared
{
	slock_t		mutex;
	pid_t		pid;
	Oid			dboid;			/* database whose commits wake the worker */
	Latch	   *latch;			/* the worker's latch, NULL when not running */
	bool		slot_check_requested;	/* unpublish or DROP EXTENSION committed */
	XLogRecPtr	slot_check_lsn; /* the end of the latest such commit */
	char		state[128];
	char		slot_name[NAMEDATALEN];
	XLogRecPtr	decoded_lsn;
	XLogRecPtr	confirmed_lsn;
	int64		in_flight;
	int64		produced;
	int64		acknowledged;
	int64		transactions;
	int64		errors;
	int64		retries;
	char		last_error[512];
	TimestampTz last_error_at;
	TimestampTz started_at;
} CdcShared;

static CdcShared *cdc_shared = NULL;

Size
cdc_shmem_size(void)
{
	return MAXALIGN(sizeof(CdcShared));
}

void
cdc_shmem_init(void)
{
	bool		found;

	cdc_shared = ShmemInitStruct("pg_kappa cdc", sizeof(CdcShared), &found);
	if (!found)
	{
		memset(cdc_shared, 0, sizeof(CdcShared));
		SpinLockInit(&cdc_shared->mutex);
		strlcpy(cdc_shared->state, "not started", sizeof(cdc_shared->state));
	}
}

/* ---------------------------------------------------------------------
 * Commit wake-up: any backend committing a transaction that wrote in the
 * published database sets the worker's latch, so changes leave at once
 * instead of at the next poll.  A transaction that unpublished a table or
 * dropped the extension also asks the worker to check, after the commit,
 * whether its slot is still needed.
 * ---------------------------------------------------------------------
 */
static bool xact_wrote = false;
static bool xact_requests_slot_check = false;
static object_access_hook_type prev_object_access_hook = NULL;

void
cdc_request_slot_check_at_commit(void)
{
	xact_requests_slot_check = true;
}

static void
cdc_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				  int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == ExtensionRelationId)
	{
		char	   *name = get_extension_name(objectId);

		if (name && strcmp(name, KAPPA_EXTENSION_NAME) == 0)
			cdc_request_slot_check_at_commit();
	}

	/*
	 * A permanent table dropped may be the last one published (the event
	 * trigger takes it out of kappa.published_tables): the publisher looks
	 * after the commit whether its slot is still needed, as after
	 * kappa.unpublish_table().  Temporary tables, dropped all the time, are
	 * never published.
	 */
	if (access == OAT_DROP && classId == RelationRelationId && subId == 0 &&
		get_rel_relkind(objectId) == RELKIND_RELATION &&
		get_rel_persistence(objectId) == RELPERSISTENCE_PERMANENT &&
		cdc_table_is_published(objectId))
		cdc_request_slot_check_at_commit();
}

static void
cdc_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			xact_wrote = TransactionIdIsValid(GetTopTransactionIdIfAny());
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if ((xact_wrote || xact_requests_slot_check) && cdc_shared != NULL &&
				cdc_shared->dboid == MyDatabaseId)
			{
				Latch	   *latch = cdc_shared->latch;

				if (xact_requests_slot_check)
				{
					SpinLockAcquire(&cdc_shared->mutex);
					cdc_shared->slot_check_requested = true;
					cdc_shared->slot_check_lsn = Max(cdc_shared->slot_check_lsn,
													 XactLastCommitEnd);
					SpinLockRelease(&cdc_shared->mutex);
				}
				if (latch != NULL)
					SetLatch(latch);
			}
			xact_wrote = false;
			xact_requests_slot_check = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			xact_wrote = false;
			xact_requests_slot_check = false;
			break;
		default:
			break;
	}
}

void
cdc_register_commit_wakeup(void)
{
	RegisterXactCallback(cdc_xact_callback, NULL);
	prev_object_access_hook = object_access_hook;
	object_access_hook = cdc_object_access;
}

/* ---------------------------------------------------------------------
 * The worker's private state
 * ---------------------------------------------------------------------
 */

/* One decoded transaction whose messages are not all acknowledged yet. */
typedef struct PendingTxn
{
	uint64		id;
	XLogRecPtr	end_lsn;		/* valid once closed */
	int64		unacked;
	bool		closed;			/* its END marker was written */
	bool		failed;			/* a message of it could not be delivered */
} PendingTxn;

typedef struct CdcWorker
{
	KafkaClient *producer;
	LogicalDecodingContext *ctx;	/* NULL when the slot is not in use */
	WaitEventSet *waitset;

	/* FIFO of pending transactions (a ring that doubles when full) */
	PendingTxn *ring;
	int			ring_size;
	int			ring_head;
	int			ring_count;
	uint64		next_txn_id;

	XLogRecPtr	confirmed;		/* what we last confirmed to the slot */
	TimestampTz last_slot_save; /* when the slot was last written to disk */
	bool		delivery_failed;
	rd_kafka_resp_err_t delivery_error;
	char		refused[300];	/* why librdkafka refused a message, if it did */

	int64		produced;
	int64		acknowledged;
	int64		transactions;
	int64		errors;
	int64		retries;

	int			backoff_ms;
	TimestampTz retry_at;
} CdcWorker;

static CdcWorker worker;

#define CDC_BATCH_RECORDS	4096
#define CDC_BATCH_MS		100
#define CDC_SERVE_EVERY		1024	/* messages between delivery-report polls */
#define CDC_SLOT_SAVE_MS	1000

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

	SpinLockAcquire(&cdc_shared->mutex);
	strlcpy(cdc_shared->state, buf, sizeof(cdc_shared->state));
	SpinLockRelease(&cdc_shared->mutex);
	pgstat_report_activity(STATE_RUNNING, buf);
}

static void
record_error(const char *message)
{
	SpinLockAcquire(&cdc_shared->mutex);
	strlcpy(cdc_shared->last_error, message, sizeof(cdc_shared->last_error));
	cdc_shared->last_error_at = GetCurrentTimestamp();
	cdc_shared->errors++;
	SpinLockRelease(&cdc_shared->mutex);
}

static void
publish_counters(void)
{
	SpinLockAcquire(&cdc_shared->mutex);
	cdc_shared->produced = worker.produced;
	cdc_shared->acknowledged = worker.acknowledged;
	cdc_shared->in_flight = worker.produced - worker.acknowledged - worker.errors;
	cdc_shared->transactions = worker.transactions;
	cdc_shared->retries = worker.retries;
	cdc_shared->confirmed_lsn = worker.confirmed;
	if (worker.ctx)
		cdc_shared->decoded_lsn = worker.ctx->reader->EndRecPtr;
	SpinLockRelease(&cdc_shared->mutex);
}

/* ---------------------------------------------------------------------
 * The FIFO of pending transactions
 * ---------------------------------------------------------------------
 */
static PendingTxn *
pending_find(uint64 id)
{
	uint64		first;

	if (worker.ring_count == 0)
		return NULL;
	first = worker.ring[worker.ring_head].id;
	if (id < first || id - first >= (uint64) worker.ring_count)
		return NULL;
	return &worker.ring[(worker.ring_head + (int) (id - first)) % worker.ring_size];
}

static PendingTxn *
pending_newest(void)
{
	if (worker.ring_count == 0)
		return NULL;
	return &worker.ring[(worker.ring_head + worker.ring_count - 1) % worker.ring_size];
}

static void
pending_open(void)
{
	PendingTxn *txn;

	if (worker.ring_count == worker.ring_size)
	{
		int			newsize = worker.ring_size * 2;
		PendingTxn *ring = MemoryContextAlloc(TopMemoryContext, sizeof(PendingTxn) * newsize);

		for (int i = 0; i < worker.ring_count; i++)
			ring[i] = worker.ring[(worker.ring_head + i) % worker.ring_size];
		pfree(worker.ring);
		worker.ring = ring;
		worker.ring_size = newsize;
		worker.ring_head = 0;
	}
	txn = &worker.ring[(worker.ring_head + worker.ring_count) % worker.ring_size];
	worker.ring_count++;
	txn->id = worker.next_txn_id++;
	txn->end_lsn = InvalidXLogRecPtr;
	txn->unacked = 0;
	txn->closed = false;
	txn->failed = false;
}

static void
pending_reset(void)
{
	worker.ring_head = 0;
	worker.ring_count = 0;
}

/*
 * Confirm the slot up to the oldest fully acknowledged prefix, or up to
 * where decoding has read if nothing is pending.
 */
static void
confirm_acknowledged(void)
{
	XLogRecPtr	target = InvalidXLogRecPtr;

	while (worker.ring_count > 0)
	{
		PendingTxn *txn = &worker.ring[worker.ring_head];

		if (!txn->closed || txn->unacked > 0 || txn->failed)
			break;
		target = txn->end_lsn;
		worker.ring_head = (worker.ring_head + 1) % worker.ring_size;
		worker.ring_count--;
	}
	if (worker.ring_count == 0 && worker.ctx != NULL)
		target = Max(target, worker.ctx->reader->EndRecPtr);

	if (target != InvalidXLogRecPtr && target > worker.confirmed)
	{
		LogicalConfirmReceivedLocation(target);
		worker.confirmed = target;
		worker.backoff_ms = 0;	/* progress: the next failure starts over */

		/*
		 * The confirmed position reaches disk only at checkpoints otherwise;
		 * saving it about once a second keeps what a crash replays small.
		 */
		if (TimestampDifferenceExceeds(worker.last_slot_save, GetCurrentTimestamp(),
									   CDC_SLOT_SAVE_MS))
		{
			ReplicationSlotMarkDirty();
			ReplicationSlotSave();
			worker.last_slot_save = GetCurrentTimestamp();
		}
	}
}

/* ---------------------------------------------------------------------
 * Kafka
 * ---------------------------------------------------------------------
 */

/* Runs inside rd_kafka_poll on this process's thread; no PostgreSQL calls. */
static void
cdc_delivery_report(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	PendingTxn *txn = pending_find((uint64) (uintptr_t) msg->_private);

	if (msg->err)
	{
		worker.errors++;
		worker.delivery_failed = true;
		worker.delivery_error = msg->err;
		if (txn)
			txn->failed = true;
	}
	else
		worker.acknowledged++;
	if (txn)
		txn->unacked--;
}

static void
rebuild_waitset(void)
{
	if (worker.waitset)
		FreeWaitEventSet(worker.waitset);
	worker.waitset = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(worker.waitset, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(worker.waitset, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	if (worker.producer)
		AddWaitEventToSet(worker.waitset, WL_SOCKET_READABLE,
						  worker.producer->wake_fd[0], NULL, NULL);
}

static void
ensure_producer(void)
{
	rd_kafka_conf_t *conf;

	if (worker.producer)
		return;
	conf = kafka_conf_for(RD_KAFKA_PRODUCER, "cdc");
	rd_kafka_conf_set_dr_msg_cb(conf, cdc_delivery_report);
	worker.producer = kafka_client_create(conf, RD_KAFKA_PRODUCER, "cdc", &worker);
	rebuild_waitset();
}

static void
drop_producer(void)
{
	if (worker.producer == NULL)
		return;
	kafka_client_destroy(worker.producer, 0);
	worker.producer = NULL;
	rebuild_waitset();
}

/* Serve delivery reports and client errors without waiting. */
static void
serve_kafka(int timeout_ms)
{
	if (worker.producer == NULL)
		return;
	kafka_client_serve(worker.producer, timeout_ms);
	if (worker.producer->error_pending)
	{
		char		msg[400];

		snprintf(msg, sizeof(msg), "kafka: %s",
				 worker.producer->last_error_text);
		record_error(msg);
		worker.producer->error_pending = false;
	}
}

/* ---------------------------------------------------------------------
 * The output plugin's writer: messages go to Kafka
 * ---------------------------------------------------------------------
 */
static void
cdc_prepare_write(LogicalDecodingContext *ctx, XLogRecPtr lsn,
				  TransactionId xid, bool last_write)
{
	resetStringInfo(ctx->out);
}

static void
produce_message(KappaDecodingState *data, StringInfo value)
{
	const char *topic = data->topic ? data->topic : kappa_sales_topic;
	rd_kafka_topic_t *rkt = kafka_client_topic(worker.producer, topic);
	PendingTxn *txn = pending_newest();
	bool		waiting = false;

	Assert(txn != NULL && !txn->closed);

	/*
	 * Decoding has no interrupt check of its own between changes: without
	 * this, a transaction of millions of rows would hold off SIGTERM until
	 * its commit record.  (Exiting here is safe: nothing of it is
	 * confirmed, it is decoded again from the slot.)
	 */
	CHECK_FOR_INTERRUPTS();

	/* decoding stops and starts again from the slot: no use sending more */
	if (worker.delivery_failed)
		return;

	for (;;)
	{
		rd_kafka_resp_err_t err;

		if (rd_kafka_produce(rkt, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY,
							 value->data, value->len,
							 data->has_key ? data->key.data : NULL,
							 data->has_key ? data->key.len : 0,
							 (void *) (uintptr_t) txn->id) == 0)
			break;

		err = rd_kafka_last_error();

		/*
		 * A change larger than message.max.bytes: a failed delivery that
		 * librdkafka reports at once.  The publisher goes back to the
		 * slot's position and tries again after a backoff, saying why in
		 * kappa.cdc_status, as for a delivery the broker refuses: skipping
		 * the change would lose it, and exiting would only have the
		 * postmaster start it again on the same change.
		 */
		if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
		{
			snprintf(worker.refused, sizeof(worker.refused),
					 "a change of %d bytes with its key (topic \"%s\", transaction committed at %X/%X) is larger than message.max.bytes (%d): raise message.max.bytes in kappa.kafka_options (and the topic's max.message.bytes)",
					 (int) (value->len + (data->has_key ? data->key.len : 0)), topic,
					 LSN_FORMAT_ARGS(data->commit_lsn),
					 kafka_max_message_bytes(worker.producer));
			/* not produced, so not in flight: worker.errors counts reports */
			worker.delivery_failed = true;
			worker.delivery_error = err;
			txn->failed = true;
			return;
		}
		/*
		 * Any other refusal (a topic the cluster says does not exist, a
		 * partition gone, a fatal producer) is dealt with the same way:
		 * the topic may be created, the producer made anew, and exiting
		 * would only have the postmaster restart the publisher on the same
		 * change every few seconds, without backoff.
		 */
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
		{
			snprintf(worker.refused, sizeof(worker.refused),
					 "librdkafka refused a change for topic \"%s\" (transaction committed at %X/%X): %s",
					 topic, LSN_FORMAT_ARGS(data->commit_lsn), rd_kafka_err2str(err));
			worker.delivery_failed = true;
			worker.delivery_error = err;
			txn->failed = true;
			return;
		}

		/* Kafka is slower than decoding: wait for acknowledgements. */
		if (!waiting)
		{
			set_state("waiting for Kafka to acknowledge (producer queue full)");
			waiting = true;
		}
		serve_kafka(100);
		CHECK_FOR_INTERRUPTS();
		if (!PostmasterIsAlive())
			proc_exit(1);

		/*
		 * A delivery failed meanwhile: the publisher rewinds to the slot.
		 * Adding more would only give librdkafka later messages to send
		 * after the failed ones, out of commit order.
		 */
		if (worker.delivery_failed)
			return;
	}
	if (waiting)
		set_state("streaming");

	txn->unacked++;
	worker.produced++;
	if (worker.produced % CDC_SERVE_EVERY == 0)
	{
		serve_kafka(0);
		publish_counters();
	}
}

static void
cdc_write(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid,
		  bool last_write)
{
	KappaDecodingState *data = ctx->output_plugin_private;
	PendingTxn *txn;

	switch (data->emit_kind)
	{
		case KAPPA_EMIT_BEGIN:
			pending_open();
			break;
		case KAPPA_EMIT_CHANGE:
			produce_message(data, ctx->out);
			break;
		case KAPPA_EMIT_COMMIT:
			txn = pending_newest();
			Assert(txn != NULL && !txn->closed);
			txn->end_lsn = data->end_lsn;
			txn->closed = true;
			worker.transactions++;
			break;
	}
}

/* ---------------------------------------------------------------------
 * The slot
 * ---------------------------------------------------------------------
 */

typedef enum SlotUse
{
	SLOT_IN_USE,				/* a table is published */
	SLOT_UNUSED,				/* none, and everything before is confirmed */
	SLOT_BEHIND					/* none, but changes before are not confirmed */
} SlotUse;

static XLogRecPtr wal_written_end(void);
static bool tables_published_now(void);
static SlotUse slot_use(XLogRecPtr upto);
static SlotUse drop_slot_if_unused(XLogRecPtr upto);
static bool take_slot_check_request(XLogRecPtr *upto);
static void put_back_slot_check(XLogRecPtr upto);

static void
stop_decoding(void)
{
	if (worker.ctx)
	{
		FreeDecodingContext(worker.ctx);
		worker.ctx = NULL;
	}
	if (MyReplicationSlot != NULL)
		ReplicationSlotRelease();
	InvalidateSystemCaches();
	pending_reset();
}

/*
 * Acquire the slot and start decoding at its confirmed position.  Returns
 * false (with the reason in the status) when that cannot be done yet.
 */
static bool slot_missing_reported = false;

static bool
start_decoding(void)
{
	ReplicationSlot *slot;
	List	   *options;
	MemoryContext old;
	pid_t		active_pid;

	if (!kappa_extension_installed())
	{
		/* dropped with the extension: nothing is to be published any more */
		if (SearchNamedReplicationSlot(kappa_cdc_slot_name, true) != NULL)
			(void) drop_slot_if_unused(InvalidXLogRecPtr);
		set_state("waiting for CREATE EXTENSION pg_kappa in database \"%s\"",
				  kappa_database);
		return false;
	}

	/*
	 * A slot left over from tables unpublished while we were away, or whose
	 * last table was unpublished while Kafka was away: dropped only once
	 * every change before that is confirmed (changes committed while a
	 * table was published are published, whenever it is unpublished);
	 * otherwise decoding goes on and the check is made again when it has
	 * caught up.
	 */
	if (SearchNamedReplicationSlot(kappa_cdc_slot_name, true) != NULL)
	{
		XLogRecPtr	upto;

		if (!take_slot_check_request(&upto))
			upto = wal_written_end();
		if (drop_slot_if_unused(upto) == SLOT_BEHIND)
			put_back_slot_check(upto);
	}

	slot = SearchNamedReplicationSlot(kappa_cdc_slot_name, true);
	if (slot == NULL)
	{
		bool		published = tables_published_now();

		/*
		 * Tables published and no slot: a restore of a dump (the published
		 * tables are dumped, slots are not), a failover to a standby, or a
		 * slot dropped by hand.  Their changes are not being decoded; say
		 * so rather than wait as if nothing were published.
		 */
		if (published)
		{
			set_state("replication slot \"%s\" is missing: changes of the published tables are not published",
					  kappa_cdc_slot_name);
			if (!slot_missing_reported)
			{
				char		msg[300];

				snprintf(msg, sizeof(msg),
						 "replication slot \"%s\" is missing while tables are published; call kappa.publish_table() again for one of them (it makes the slot anew and sends the rows of every published table again)",
						 kappa_cdc_slot_name);
				record_error(msg);
				ereport(WARNING,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("pg_kappa cdc publisher: %s", msg)));
				slot_missing_reported = true;
			}
		}
		else
		{
			set_state("waiting for kappa.publish_table()");
			slot_missing_reported = false;
		}
		return false;
	}
	SpinLockAcquire(&slot->mutex);
	active_pid = slot->active_pid;
	SpinLockRelease(&slot->mutex);
	if (active_pid != 0)
	{
		set_state("slot \"%s\" is in use by PID %d", kappa_cdc_slot_name,
				  (int) active_pid);
		return false;
	}
	if (!SlotIsLogical(slot) || slot->data.database != MyDatabaseId ||
		strcmp(NameStr(slot->data.plugin), KAPPA_EXTENSION_NAME) != 0)
	{
		set_state("slot \"%s\" belongs to another database or plugin",
				  kappa_cdc_slot_name);
		record_error("replication slot named by kappa.cdc_slot_name is not a pg_kappa slot of this database; drop it or choose another kappa.cdc_slot_name");
		return false;
	}
	if (cdc_slot_invalidated(slot))
	{
		/*
		 * Decoding it would fail on WAL that is gone, again after every
		 * restart: say what was lost and how to go on, once.
		 */
		set_state("replication slot \"%s\" was invalidated: changes of the published tables are not published",
				  kappa_cdc_slot_name);
		if (!slot_missing_reported)
		{
			char		msg[400];

			snprintf(msg, sizeof(msg),
					 "replication slot \"%s\" was invalidated: PostgreSQL removed WAL it still needed (max_slot_wal_keep_size), and the changes in it were never published; call kappa.publish_table() again for one of the published tables (it makes the slot anew and sends the rows of every published table again)",
					 kappa_cdc_slot_name);
			record_error(msg);
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("pg_kappa cdc publisher: replication slot \"%s\" was invalidated",
							kappa_cdc_slot_name),
					 errdetail("PostgreSQL removed WAL the slot still needed (max_slot_wal_keep_size is %d MB); the changes in it were never published.",
							   max_slot_wal_keep_size_mb),
					 errhint("Call kappa.publish_table() again for one of the published tables: it makes the slot anew and sends the rows of every published table again.")));
			slot_missing_reported = true;
		}
		return false;
	}
	if (cdc_output_plugin_blocked() != NULL)
	{
		set_state("pg_kappa is not listed in output_plugin_libraries");
		record_error("pg_kappa is not allowed as an output plugin: add it to output_plugin_libraries in postgresql.conf and reload");
		return false;
	}

	ensure_producer();

	ReplicationSlotAcquire(kappa_cdc_slot_name, true);
	slot_missing_reported = false;
	options = list_make3(makeDefElem("published-only", (Node *) makeString("on"), -1),
						 makeDefElem("include-transaction", (Node *) makeString("on"), -1),
						 makeDefElem("utf8", (Node *) makeString("on"), -1));

	old = MemoryContextSwitchTo(TopMemoryContext);
	worker.ctx = CreateDecodingContext(InvalidXLogRecPtr, options, false,
									   XL_ROUTINE(.page_read = read_local_xlog_page,
												  .segment_open = wal_segment_open,
												  .segment_close = wal_segment_close),
									   cdc_prepare_write, cdc_write, NULL);
	MemoryContextSwitchTo(old);

	XLogBeginRead(worker.ctx->reader, MyReplicationSlot->data.restart_lsn);
	worker.confirmed = MyReplicationSlot->data.confirmed_flush;
	InvalidateSystemCaches();

	SpinLockAcquire(&cdc_shared->mutex);
	strlcpy(cdc_shared->slot_name, kappa_cdc_slot_name, NAMEDATALEN);
	SpinLockRelease(&cdc_shared->mutex);
	set_state("streaming");
	ereport(LOG,
			(errmsg("pg_kappa cdc publisher decoding slot \"%s\" from %X/%X",
					kappa_cdc_slot_name, LSN_FORMAT_ARGS(worker.confirmed))));
	return true;
}

/*
 * The end of the last WAL record written.  At the start of a page the
 * insert position is past the page's header, where no record ends (and
 * decoding never confirms): the record before ended at the page boundary.
 */
static XLogRecPtr
wal_written_end(void)
{
	XLogRecPtr	p = GetXLogInsertRecPtr();

	if (XLogSegmentOffset(p, wal_segment_size) == SizeOfXLogLongPHD)
		p -= SizeOfXLogLongPHD;
	else if (p % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		p -= SizeOfXLogShortPHD;
	return p;
}

/* Is any table published?  In a short transaction of its own. */
static bool
tables_published_now(void)
{
	bool		published;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	published = cdc_tables_published();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return published;
}

/* The slot's confirmed position, as its shared state has it. */
static XLogRecPtr
slot_confirmed(void)
{
	ReplicationSlot *slot;
	XLogRecPtr	confirmed = InvalidXLogRecPtr;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	slot = SearchNamedReplicationSlot(kappa_cdc_slot_name, false);
	if (slot != NULL)
	{
		SpinLockAcquire(&slot->mutex);
		confirmed = slot->data.confirmed_flush;
		SpinLockRelease(&slot->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	return confirmed;
}

/*
 * Is the slot still needed: a table published, or changes committed
 * before upto (the end of the unpublishing commit) not yet confirmed?
 * InvalidXLogRecPtr: whatever is not confirmed (the extension is gone).
 * The caller runs this outside a transaction.
 */
static SlotUse
slot_use(XLogRecPtr upto)
{
	if (tables_published_now())
		return SLOT_IN_USE;
	return slot_confirmed() >= upto ? SLOT_UNUSED : SLOT_BEHIND;
}

/*
 * Nothing left to publish (every table unpublished, or the extension
 * dropped) and everything published before confirmed: drop the slot so it
 * stops holding WAL.  Serialised with kappa.publish_table() by the
 * extension's KAPPA_LOCK_SLOT lock.  The slot must not be ours (stop_decoding) when it is dropped.
 */
static SlotUse
drop_slot_if_unused(XLogRecPtr upto)
{
	SlotUse		use;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	/*
	 * Lock first, then take the snapshot: taken before, it would not see a
	 * table that a publish_table() we waited for has just published, and the
	 * slot that call created would be dropped under it.
	 */
	cdc_lock_slot_lifecycle();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (cdc_tables_published())
		use = SLOT_IN_USE;
	else if (slot_confirmed() < upto)
		use = SLOT_BEHIND;
	else
	{
		use = SLOT_UNUSED;
		if (SearchNamedReplicationSlot(kappa_cdc_slot_name, true) != NULL)
		{
			ReplicationSlotDrop(kappa_cdc_slot_name, true);
			ereport(LOG,
					(errmsg("pg_kappa dropped replication slot \"%s\": no table is published",
							kappa_cdc_slot_name)));
		}
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	InvalidateSystemCaches();
	return use;
}

/* Take the pending request, if any, and the position it is about. */
static bool
take_slot_check_request(XLogRecPtr *upto)
{
	bool		requested;

	SpinLockAcquire(&cdc_shared->mutex);
	requested = cdc_shared->slot_check_requested;
	*upto = cdc_shared->slot_check_lsn;
	cdc_shared->slot_check_requested = false;
	cdc_shared->slot_check_lsn = InvalidXLogRecPtr;
	SpinLockRelease(&cdc_shared->mutex);
	return requested;
}

/* Ask again: the slot is to be dropped once upto is confirmed. */
static void
put_back_slot_check(XLogRecPtr upto)
{
	SpinLockAcquire(&cdc_shared->mutex);
	cdc_shared->slot_check_requested = true;
	cdc_shared->slot_check_lsn = Max(cdc_shared->slot_check_lsn, upto);
	SpinLockRelease(&cdc_shared->mutex);
}

/* ---------------------------------------------------------------------
 * Failure handling
 * ---------------------------------------------------------------------
 */

/*
 * A message could not be delivered (or the producer died): drop what is in
 * flight, stop decoding and schedule a new start from the confirmed
 * position after a backoff.
 */
static void
rewind_after_failure(void)
{
	char		msg[400];
	TimestampTz deadline;

	snprintf(msg, sizeof(msg), "kafka delivery failed: %s%s",
			 worker.refused[0] ? worker.refused :
			 worker.producer && worker.producer->fatal ?
			 worker.producer->last_error_text : rd_kafka_err2str(worker.delivery_error),
			 "; publishing again from the last confirmed position");
	worker.refused[0] = '\0';
	record_error(msg);
	ereport(LOG, (errmsg("pg_kappa cdc publisher: %s", msg)));
	worker.retries++;

	if (worker.producer)
	{
		rd_kafka_purge(worker.producer->rk,
					   RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10000);
		while (rd_kafka_outq_len(worker.producer->rk) > 0 &&
			   GetCurrentTimestamp() < deadline)
		{
			serve_kafka(100);
			CHECK_FOR_INTERRUPTS();
		}
		if (worker.producer->fatal || rd_kafka_outq_len(worker.producer->rk) > 0)
			drop_producer();
	}
	stop_decoding();

	worker.delivery_failed = false;
	worker.backoff_ms = worker.backoff_ms == 0 ? 1000 :
		Min(worker.backoff_ms * 2, kappa_cdc_max_backoff * 1000);
	worker.retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), worker.backoff_ms);
	set_state("retrying in %d ms after a Kafka delivery failure", worker.backoff_ms);
	publish_counters();
}

/* ---------------------------------------------------------------------
 * Main loop
 * ---------------------------------------------------------------------
 */

/* Decode what WAL has been flushed, for at most one batch.  True if caught up. */
static bool
decode_batch(void)
{
	XLogRecPtr	end_of_wal = GetFlushRecPtr(NULL);
	TimestampTz started = GetCurrentTimestamp();
	int			records = 0;
	bool		caught_up = true;
	MemoryContext old;

	/*
	 * The WAL reader allocates its buffers lazily in the current context, so
	 * decoding runs in the decoding context's own, never in the per-loop one.
	 */
	old = MemoryContextSwitchTo(worker.ctx->context);

	while (worker.ctx->reader->EndRecPtr < end_of_wal)
	{
		XLogRecord *record;
		char	   *errm = NULL;

		record = XLogReadRecord(worker.ctx->reader, &errm);
		if (errm)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not read WAL for logical decoding: %s", errm)));
		if (record != NULL)
			LogicalDecodingProcessRecord(worker.ctx, worker.ctx->reader);

		CHECK_FOR_INTERRUPTS();
		if (worker.delivery_failed)
		{
			caught_up = false;
			break;
		}
		if (++records % CDC_BATCH_RECORDS == 0)
		{
			if (!PostmasterIsAlive())
				proc_exit(1);
			if (TimestampDifferenceExceeds(started, GetCurrentTimestamp(), CDC_BATCH_MS))
			{
				caught_up = false;
				break;
			}
		}
	}
	MemoryContextSwitchTo(old);
	return caught_up;
}

static void
wait_for_work(long timeout_ms)
{
	WaitEvent	event;

	(void) WaitEventSetWait(worker.waitset, timeout_ms, &event, 1, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();

	/*
	 * The producer's wake-up pipe is in the wait set and stays readable
	 * until served: while not decoding (disabled, backing off, nothing
	 * published) its log and error events would make every wait return at
	 * once, a loop on a whole core.
	 */
	serve_kafka(0);
}

static void
cdc_worker_shutdown(int code, Datum arg)
{
	SpinLockAcquire(&cdc_shared->mutex);
	cdc_shared->latch = NULL;
	cdc_shared->pid = 0;
	strlcpy(cdc_shared->state, "stopped", sizeof(cdc_shared->state));
	SpinLockRelease(&cdc_shared->mutex);
	if (worker.producer)
	{
		/* deliver what is in flight, briefly: confirmation happens next run */
		kafka_client_destroy(worker.producer, 0);
		worker.producer = NULL;
	}

	/*
	 * PostgreSQL 15 writes a logical slot's confirmed position to disk only
	 * when something else changed in it (not at the shutdown checkpoint):
	 * save what was confirmed, or a server restart replays up to the last
	 * save (CDC_SLOT_SAVE_MS) again.
	 */
	if (MyReplicationSlot != NULL && worker.confirmed != InvalidXLogRecPtr)
	{
		ReplicationSlotMarkDirty();
		ReplicationSlotSave();
	}
}

static void
reload_configuration(void)
{
	char	   *old_brokers = pstrdup(kappa_brokers);
	char	   *old_options = pstrdup(kappa_kafka_options);

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);

	/* new connection settings or secrets: start over with a new producer */
	if (strcmp(old_brokers, kappa_brokers) != 0 ||
		strcmp(old_options, kappa_kafka_options) != 0 ||
		kafka_client_settings_changed(worker.producer))
	{
		ereport(LOG, (errmsg("pg_kappa cdc publisher: Kafka settings changed, reconnecting")));
		if (worker.ctx)
		{
			/* let in-flight messages finish before the producer goes */
			if (worker.producer)
				rd_kafka_flush(worker.producer->rk, 5000);
			serve_kafka(0);
			confirm_acknowledged();
			stop_decoding();
		}
		drop_producer();
	}
	pfree(old_brokers);
	pfree(old_options);
}

void
kappa_cdc_worker_main(Datum main_arg)
{
	MemoryContext loop_cxt;

	kappa_worker_begin("pg_kappa cdc publisher");

	memset(&worker, 0, sizeof(worker));
	worker.ring_size = 1024;
	worker.ring = MemoryContextAlloc(TopMemoryContext, sizeof(PendingTxn) * worker.ring_size);
	worker.next_txn_id = 1;
	rebuild_waitset();

	SpinLockAcquire(&cdc_shared->mutex);
	cdc_shared->pid = MyProcPid;
	cdc_shared->dboid = MyDatabaseId;
	cdc_shared->latch = MyLatch;
	cdc_shared->started_at = GetCurrentTimestamp();
	cdc_shared->produced = cdc_shared->acknowledged = cdc_shared->in_flight = 0;
	cdc_shared->transactions = 0;
	SpinLockRelease(&cdc_shared->mutex);
	before_shmem_exit(cdc_worker_shutdown, (Datum) 0);

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "pg_kappa cdc loop",
									 ALLOCSET_DEFAULT_SIZES);

	PG_TRY();
	{
		for (;;)
		{
			bool		caught_up;
			MemoryContext old;

			CHECK_FOR_INTERRUPTS();
			if (ConfigReloadPending)
				reload_configuration();
			MemoryContextReset(loop_cxt);
			old = MemoryContextSwitchTo(loop_cxt);

			if (!kappa_cdc_enabled)
			{
				if (worker.ctx)
				{
					serve_kafka(0);
					confirm_acknowledged();
					stop_decoding();
				}
				set_state("disabled (kappa.cdc_enabled = off)");
				MemoryContextSwitchTo(old);
				wait_for_work(5000);
				continue;
			}

			if (worker.ctx == NULL)
			{
				long		delay = 5000;

				if (worker.retry_at != 0 && GetCurrentTimestamp() < worker.retry_at)
					delay = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), worker.retry_at);
				else
				{
					worker.retry_at = 0;
					if (start_decoding())
						delay = 0;
				}
				MemoryContextSwitchTo(old);
				if (delay > 0)
					wait_for_work(delay);
				continue;
			}

			caught_up = decode_batch();
			serve_kafka(0);
			if (worker.delivery_failed || worker.producer->fatal)
			{
				rewind_after_failure();
				MemoryContextSwitchTo(old);
				continue;
			}
			confirm_acknowledged();
			publish_counters();
			MemoryContextSwitchTo(old);

			if (caught_up)
			{
				XLogRecPtr	upto;

				if (take_slot_check_request(&upto))
				{
					SlotUse		use;

					/* let what is in flight land, then see if the slot is needed */
					if (worker.producer && worker.ring_count > 0)
						rd_kafka_flush(worker.producer->rk, 1000);
					serve_kafka(0);
					confirm_acknowledged();
					use = slot_use(upto);
					if (use == SLOT_UNUSED)
					{
						stop_decoding();
						if (drop_slot_if_unused(upto) == SLOT_BEHIND)
							put_back_slot_check(upto);
						continue;
					}
					if (use == SLOT_BEHIND)
						put_back_slot_check(upto);	/* once acknowledged */
				}
				wait_for_work(kappa_cdc_poll_interval);
			}
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* keep the reason visible in kappa.cdc_status, then exit */
		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		record_error(edata->message);
		FreeErrorData(edata);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/* ---------------------------------------------------------------------
 * kappa.cdc_worker_status(): the row behind the kappa.cdc_status view
 * ---------------------------------------------------------------------
 */
PG_FUNCTION_INFO_V1(kappa_cdc_worker_status);

Datum
kappa_cdc_worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[14];
	bool		nulls[14];
	CdcShared	snap;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	SpinLockAcquire(&cdc_shared->mutex);
	memcpy(&snap, cdc_shared, sizeof(snap));
	SpinLockRelease(&cdc_shared->mutex);

	memset(nulls, 0, sizeof(nulls));
	values[0] = Int32GetDatum(snap.pid);
	nulls[0] = (snap.pid == 0);
	values[1] = CStringGetTextDatum(snap.state);
	values[2] = CStringGetTextDatum(snap.slot_name[0] ? snap.slot_name : kappa_cdc_slot_name);
	values[3] = LSNGetDatum(snap.decoded_lsn);
	nulls[3] = (snap.decoded_lsn == InvalidXLogRecPtr);
	values[4] = LSNGetDatum(snap.confirmed_lsn);
	nulls[4] = (snap.confirmed_lsn == InvalidXLogRecPtr);
	values[5] = Int64GetDatum(snap.in_flight);
	values[6] = Int64GetDatum(snap.produced);
	values[7] = Int64GetDatum(snap.acknowledged);
	values[8] = Int64GetDatum(snap.transactions);
	values[9] = Int64GetDatum(snap.errors);
	values[10] = Int64GetDatum(snap.retries);
	values[11] = CStringGetTextDatum(snap.last_error);
	nulls[11] = (snap.last_error[0] == '\0');
	values[12] = TimestampTzGetDatum(snap.last_error_at);
	nulls[12] = (snap.last_error_at == 0);
	values[13] = TimestampTzGetDatum(snap.started_at);
	nulls[13] = (snap.started_at == 0);

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
