/*-------------------------------------------------------------------------
 *
 * cdc.h
 *	  What the CDC publisher worker and the publish functions share.
 *
 *-------------------------------------------------------------------------
 */
#ifndef KAPPA_CDC_H
#define KAPPA_CDC_H

/* Serialises slot creation (publish_table) and removal (the worker). */
extern void cdc_lock_slot_lifecycle(void);

/* Is any table published?  Needs a transaction. */
extern bool cdc_tables_published(void);
extern bool cdc_table_is_published(Oid relid);

/*
 * Was the slot invalidated (PostgreSQL removed WAL it still needed)?  It
 * stays, but decodes nothing ever again.
 */
struct ReplicationSlot;
extern bool cdc_slot_invalidated(struct ReplicationSlot *slot);

/* NULL when pg_kappa may serve as output plugin, else the allowed list. */
extern const char *cdc_output_plugin_blocked(void);

/* After this transaction commits, the publisher checks whether its slot is needed. */
extern void cdc_request_slot_check_at_commit(void);

#endif							/* KAPPA_CDC_H */
