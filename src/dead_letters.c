/*-------------------------------------------------------------------------
 *
 * dead_letters.c
 *	  Bad input goes to kappa.dead_letters, with where it came from and
 *	  why it was refused; the pipeline goes on.
 *
 * Every worker that refuses a record (a malformed CSV row, a message the
 * stream worker cannot read, a SOAP confirmation of an unexpected shape)
 * calls kappa_dead_letter() inside the transaction that records its
 * progress, so a refused record is stored exactly when its position is.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_kappa.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

static SPIPlanPtr dead_letter_plan = NULL;

/*
 * Store one refused record.  Must run inside a transaction; uses SPI (the
 * caller need not be connected).  Pass NULL / -1 for what does not apply.
 */
void
kappa_dead_letter(const KappaDeadLetter *dl)
{
	Oid			types[8] = {TEXTOID, TEXTOID, INT4OID, INT8OID, TEXTOID, INT8OID, BYTEAOID, TEXTOID};
	Datum		values[8];
	char		nulls[8];
	bytea	   *raw = NULL;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(dl->source);
	if (dl->topic)
		values[1] = CStringGetTextDatum(dl->topic);
	else
		nulls[1] = 'n';
	values[2] = Int32GetDatum(dl->partition);
	nulls[2] = dl->partition < 0 ? 'n' : ' ';
	values[3] = Int64GetDatum(dl->offset);
	nulls[3] = dl->offset < 0 ? 'n' : ' ';
	if (dl->file)
		values[4] = CStringGetTextDatum(dl->file);
	else
		nulls[4] = 'n';
	values[5] = Int64GetDatum(dl->line);
	nulls[5] = dl->line < 0 ? 'n' : ' ';
	if (dl->raw)
	{
		raw = palloc(VARHDRSZ + dl->rawlen);
		SET_VARSIZE(raw, VARHDRSZ + dl->rawlen);
		memcpy(VARDATA(raw), dl->raw, dl->rawlen);
		values[6] = PointerGetDatum(raw);
	}
	else
		nulls[6] = 'n';
	values[7] = CStringGetTextDatum(dl->error);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (dead_letter_plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare("INSERT INTO kappa.dead_letters "
									   "(source, topic, partition, \"offset\", file, line, raw, error) "
									   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
									   8, types);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the dead letter insert");
		dead_letter_plan = plan;
	}
	if (SPI_execute_plan(dead_letter_plan, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert into kappa.dead_letters");
	SPI_finish();
}
