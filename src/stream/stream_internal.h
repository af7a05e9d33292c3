/*-------------------------------------------------------------------------
 *
 * stream_internal.h
 *	  What the parts of the stream worker share: ranking definitions,
 *	  contributions, the batch's aggregates and the memory of counted rows.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_STREAM_INTERNAL_H
#define KAPPA_STREAM_INTERNAL_H

#include "nodes/pg_list.h"
#include "stream/event.h"
#include "stream/stream.h"
#include "utils/hsearch.h"

struct KafkaClient;

/* ---- ranking.c ---- */
typedef struct KappaRanking
{
	int			id;
	char	   *name;
	bool		results_input;	/* fed by window results (sink) */
	char	   *source_topic;
	int			ngroups;
	char	  **group_fields;
	char	   *item_field;
	char	   *label_field;
	bool		measure_sum;
	char	   *measure_field;
	char	   *time_field;
	KappaWindowSpec window;
	int64		grace_usecs;
	bool		confirmed_only;
	bool		row_memory;		/* false: undo from "before", replays by position */
	char	   *results_topic;	/* NULL: results are not produced */
	TimestampTz finalized_through;	/* windows ending at or before are final */

	/* the row fields to look up, and where each role finds its value */
	int			nfields;
	char	  **fields;
	int		   *fieldlens;
	int		   *group_index;
	int			item_index;
	int			label_index;
	int			measure_index;
	int			time_index;

	/* counters of the batch being applied */
	int64		batch_applied;
	int64		batch_late;
} KappaRanking;

/* What one row contributes to one ranking. */
typedef struct Contribution
{
	bool		valid;
	TimestampTz event_time;
	TimestampTz window_start;
	TimestampTz window_end;
	char	   *group_key;		/* the group values as an array literal */
	char	   *item;			/* "" when the ranking has no item */
	char	   *label;
	int			group_len;		/* strlen(group_key) */
	int			item_len;		/* strlen(item) */
	uint32		key_hash;		/* of group_key and item */
	KappaDecimal value;			/* the amount, or 1 for a count */
} Contribution;

extern List *rankings_load(MemoryContext cxt);
extern bool contribution_compute(const KappaRanking *r, const char *row, int rowlen,
								 bool strict, Contribution *c, const char **error);
extern void contribution_strings_reset(void);
extern bool contribution_equal(const Contribution *a, const Contribution *b);

/* ---- aggregate.c: the batch's changes to ranking_results ---- */
extern void aggregate_reset(MemoryContext cxt);
extern void aggregate_add(const KappaRanking *r, const Contribution *c, int sign);
extern void aggregate_flush(List *rankings);
extern int64 aggregate_count(void);
extern void stream_lock_shared_writes(void);

/* ---- rows.c: what was counted for each row ---- */
typedef struct RowState
{
	char	   *topic;
	char	   *key;
	bool		in_db;			/* a stream_rows row exists */
	bool		dirty;
	bool		deleted;
	SourcePosition pos;			/* of the change last applied */
	char	   *row_data;		/* the row as JSON, NULL when deleted/unknown */
	List	   *counted;		/* ranking ids it currently counts in */
	List	   *excluded;		/* ranking ids that froze it (late) */
	TimestampTz windows_end;	/* latest end of its windows; DT_NOBEGIN: none */
} RowState;

extern void rows_reset(MemoryContext cxt);
extern void rows_want(const char *topic, const char *key);
extern void rows_load(void);
extern RowState *rows_get(const char *topic, const char *key);
extern void rows_flush(void);
extern int64 rows_forget(const char *topic, TimestampTz cutoff, int limit);

/* ---- payments.c: payment status per sale ---- */
typedef struct PaymentState
{
	char	   *sale_id;
	bool		known;
	bool		in_db;
	bool		dirty;
	char	   *payment_id;
	char	   *status;
	char	   *amount;
	char	   *currency;
	TimestampTz confirmed_at;
} PaymentState;

extern void payments_reset(MemoryContext cxt);
extern void payments_want(const char *sale_id);
extern void payments_load(void);
extern PaymentState *payments_get(const char *sale_id);
extern bool payments_record(const char *raw, size_t len, const char *source_topic, const char *key,
							PaymentState **state, TimestampTz *event_time,
							bool *changed, const char **error);
extern void payments_flush(void);

/* ---- emit.c: final window results to Kafka ---- */
extern int	emit_final_results(struct KafkaClient *producer, int max_windows);
extern int	emit_producer_gone(void);
extern int	emit_windows_in_flight(void);
extern const char *kappa_instance_name(void);

/* ---- sink.c: window results of another processor ---- */
extern bool sink_apply(const KappaRanking *r, const char *raw, size_t len,
					   const char **error);
extern void sink_flush(void);
extern void sink_reset(MemoryContext cxt);

/* shared by the worker parts */
extern void stream_array_literal_append(StringInfo out, const char *s);

#endif							/* KAPPA_STREAM_INTERNAL_H */
